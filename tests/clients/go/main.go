// Drives a running broker with franz-go (an independent Go implementation of the protocol):
// admin through kadm, a producer with zstd and acks=all, a direct consumer from the start.
// Usage: go run . BOOTSTRAP   (exit code 1 with a message on any mismatch)
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func expect(cond bool, what string, args ...any) {
	if !cond {
		fmt.Fprintf(os.Stderr, "FAILED: "+what+"\n", args...)
		os.Exit(1)
	}
}

func main() {
	bootstrap := os.Args[1]
	topic := "franz-check"
	const n = 5000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	admin, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	expect(err == nil, "admin client: %v", err)
	adm := kadm.NewClient(admin)
	created, err := adm.CreateTopic(ctx, 3, 1, map[string]*string{}, topic)
	expect(err == nil && created.Err == nil, "create topic: %v %v", err, created.Err)
	meta, err := adm.Metadata(ctx, topic)
	expect(err == nil && len(meta.Brokers) == 1, "metadata: %v", err)
	expect(len(meta.Topics[topic].Partitions) == 3, "three partitions")

	producer, err := kgo.NewClient(
		kgo.SeedBrokers(bootstrap),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.DisableIdempotentWrite(), // InitProducerId is not served yet
		kgo.ProducerBatchCompression(kgo.ZstdCompression()),
	)
	expect(err == nil, "producer: %v", err)
	expected := map[int32][]string{}
	for i := 0; i < n; i++ {
		r := &kgo.Record{Topic: topic, Key: []byte(fmt.Sprintf("k%d", i%13)), Value: []byte(fmt.Sprintf("v%d", i)),
			Headers: []kgo.RecordHeader{{Key: "i", Value: []byte(fmt.Sprint(i))}}}
		res := producer.ProduceSync(ctx, r)
		expect(res.FirstErr() == nil, "produce: %v", res.FirstErr())
		expect(int(r.Offset) == len(expected[r.Partition]), "dense offsets")
		expected[r.Partition] = append(expected[r.Partition], string(r.Value))
	}
	producer.Close()

	offsets := map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart(), 1: kgo.NewOffset().AtStart(), 2: kgo.NewOffset().AtStart()}}
	consumer, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumePartitions(offsets))
	expect(err == nil, "consumer: %v", err)
	got := map[int32][]string{}
	count := 0
	for count < n {
		fetches := consumer.PollFetches(ctx)
		expect(ctx.Err() == nil, "consumed %d of %d before the deadline", count, n)
		fetches.EachError(func(t string, p int32, err error) { expect(false, "fetch %s/%d: %v", t, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			got[r.Partition] = append(got[r.Partition], string(r.Value))
			count++
		})
	}
	consumer.Close()
	for p, values := range expected {
		expect(fmt.Sprint(values) == fmt.Sprint(got[p]), "partition %d reads back in order", p)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	expect(err == nil, "list end offsets: %v", err)
	total := int64(0)
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	expect(total == n, "end offsets sum %d", total)
	deleted, err := adm.DeleteTopics(ctx, topic)
	expect(err == nil && deleted[topic].Err == nil, "delete: %v", err)
	admin.Close()
	fmt.Println("FRANZ-GO-OK")
}
