// Drives a running broker with kafkajs (a pure JavaScript implementation of the protocol):
// admin, a gzip producer with acks=-1, a consumer reading from the start by assignment.
// Usage: node check.js BOOTSTRAP   (exit code 1 with a message on any mismatch)
const { Kafka, CompressionTypes, logLevel } = require('kafkajs')

function expect(cond, what) {
  if (!cond) {
    console.error('FAILED: ' + what)
    process.exit(1)
  }
}

async function main() {
  const kafka = new Kafka({ clientId: 'kafkajs-check', brokers: [process.argv[2]], logLevel: logLevel.ERROR })
  const topic = 'kafkajs-check'
  const n = 3000
  const admin = kafka.admin()
  await admin.connect()
  expect(await admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }] }), 'topic created')
  const cluster = await admin.describeCluster()
  expect(cluster.brokers.length === 1, 'one broker')

  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await producer.connect()
  const expected = {}
  for (let i = 0; i < n; i += 100) {
    const messages = []
    for (let j = i; j < i + 100; j++) messages.push({ key: 'k' + (j % 7), value: 'v' + j, headers: { seq: String(j) } })
    const results = await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages })
    for (const r of results) expect(r.errorCode === 0, 'produce error ' + r.errorCode)
  }
  await producer.disconnect()
  const offsets = await admin.fetchTopicOffsets(topic)
  const total = offsets.reduce((sum, o) => sum + Number(o.high), 0)
  expect(total === n, 'high watermarks sum to ' + total)

  const byTime = await admin.fetchTopicOffsetsByTimestamp(topic, 0)
  for (const o of byTime) expect(o.offset === '0', 'offset by timestamp 0 is the first record of ' + o.partition)
  // A consumer group: every record once, then the committed offsets cover them all.
  const consumer = kafka.consumer({ groupId: 'kafkajs-check-group', sessionTimeout: 10000, heartbeatInterval: 1000 })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const seen = new Set()
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('consumed ' + seen.size + ' of ' + n)), 60000)
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        seen.add(partition + '/' + message.offset)
        if (seen.size === n) {
          clearTimeout(timer)
          resolve()
        }
      },
    })
  })
  await consumer.disconnect()
  expect(seen.size === n, 'the group read every record once')
  const committed = await admin.fetchOffsets({ groupId: 'kafkajs-check-group', topics: [topic] })
  const sum = committed[0].partitions.reduce((s, p) => s + Number(p.offset), 0)
  expect(sum === n, 'committed offsets sum to ' + sum)
  await admin.deleteGroups(['kafkajs-check-group'])
  await admin.deleteTopics({ topics: [topic] })
  const topics = await admin.listTopics()
  expect(!topics.includes(topic), 'topic deleted')
  await admin.disconnect()
  console.log('KAFKAJS-OK')
}

main().catch((e) => {
  console.error('FAILED: ' + e.stack)
  process.exit(1)
})
