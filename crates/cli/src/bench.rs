//! `strom bench`: drives a Kafka-compatible broker (Strom or any other) with librdkafka and
//! prints throughput and latency percentiles. Nothing here is Strom-specific, so the same
//! command measures Apache Kafka side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::Mutex;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Produce records as fast as the client can and report throughput and ack latency.
    Produce(ProduceArgs),
    /// Read a topic from the start and report throughput (and broker CPU with --broker-pid).
    Consume(ConsumeArgs),
    /// Time a consumer group's first rebalance: N consumers subscribe at once.
    Rebalance(RebalanceArgs),
    /// Commit many offsets (COMMITS rounds over every partition of a topic) for one group.
    Commit(CommitArgs),
    /// Create many topics, one CreateTopics request after another.
    Topics(crate::bench_cluster::TopicsArgs),
    /// Ask for the metadata of every topic, repeatedly.
    Metadata(crate::bench_cluster::MetadataArgs),
    /// Kill the active controller and time until a topic can be created again.
    Failover(crate::bench_cluster::FailoverArgs),
    /// Time the log cleaner compacting a log written in process (no broker needed).
    Compaction(crate::bench_compaction::CompactionArgs),
}

#[derive(clap::Args)]
struct RebalanceArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    #[arg(long, default_value_t = 100)]
    partitions: i32,
}

#[derive(clap::Args)]
struct CommitArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    partitions: i32,
    #[arg(long, default_value_t = 1000)]
    commits: i64,
    #[arg(long, default_value = "strom-bench-commits")]
    group: String,
}

#[derive(clap::Args)]
struct Common {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "strom-bench")]
    topic: String,
    /// PID of the broker process, to report the CPU it used during the run.
    #[arg(long)]
    broker_pid: Option<u32>,
}

#[derive(clap::Args)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    #[arg(long, default_value = "1")]
    acks: String,
    /// Partitions of the topic, created if missing.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    #[arg(long, default_value_t = 1_048_576)]
    batch_bytes: u32,
    #[arg(long, default_value = "none")]
    compression: String,
    /// Producer instances, each on its own thread with its share of the records (one
    /// librdkafka producer tops out near 1M small records/s).
    #[arg(long, default_value_t = 1)]
    producers: u64,
    /// Records per second to offer (0: as fast as the client can). A fixed rate below
    /// saturation measures latency rather than queueing.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Replicas of the topic, when it is created.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// The topic's `min.insync.replicas`, when it is created (0: the broker default).
    #[arg(long, default_value_t = 0)]
    min_insync_replicas: i32,
    /// A config of the topic when it is created, `key=value`; may be repeated
    /// (`--topic-config cleanup.policy=compact`).
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    topic_configs: Vec<String>,
    /// An idempotent producer (`enable.idempotence=true`, which needs `--acks all`).
    #[arg(long)]
    idempotence: bool,
    /// A transactional producer committing a transaction every N records (0: none);
    /// reports the commit latency too.
    #[arg(long, default_value_t = 0)]
    transaction_records: u64,
    /// A librdkafka producer setting, `key=value`, applied after the others; may be
    /// repeated (`--producer-config retry.backoff.ms=20`, `--producer-config debug=eos`).
    #[arg(long = "producer-config", value_name = "KEY=VALUE")]
    producer_configs: Vec<String>,
}

#[derive(clap::Args)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Consumer instances, each on its own thread with a share of the partitions.
    #[arg(long, default_value_t = 1)]
    consumers: u64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Produce(a) => produce(a),
        Mode::Consume(a) => consume(a),
        Mode::Rebalance(a) => rebalance(a),
        Mode::Commit(a) => commit(a),
        Mode::Topics(a) => crate::bench_cluster::topics(a),
        Mode::Metadata(a) => crate::bench_cluster::metadata(a),
        Mode::Failover(a) => crate::bench_cluster::failover(a),
        Mode::Compaction(a) => crate::bench_compaction::compaction(a),
    }
}

struct LatencyContext {
    histogram: Arc<Mutex<Histogram<u64>>>,
    failures: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: Self::DeliveryOpaque) {
        if result.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let micros = sent_at.elapsed().as_micros() as u64;
        if let Ok(mut h) = self.histogram.lock() {
            let _ = h.record(micros.max(1));
        }
    }
}

fn ensure_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    ensure_replicated_topic(bootstrap, topic, partitions, 1, None, &[])
}

/// Creates the topic with `replication_factor` replicas (and `min.insync.replicas` when
/// given) unless it exists.
fn ensure_replicated_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    min_insync_replicas: Option<&str>,
    configs: &[String],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut new_topic = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    if let Some(min) = min_insync_replicas {
        new_topic = new_topic.set("min.insync.replicas", min);
    }
    for config in configs {
        let Some((key, value)) = config.split_once('=') else {
            bail!("--topic-config {config}: expected key=value");
        };
        new_topic = new_topic.set(key, value);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(60)))
        .request_timeout(Some(Duration::from_secs(90)));
    let results = rt.block_on(admin.create_topics(&[new_topic], &options))?;
    for r in results {
        if let Err((name, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating topic {name} failed: {code}");
            }
        }
    }
    Ok(())
}

/// Waits until every partition of `topic` has a leader and `replication_factor` in-sync
/// replicas, so that a run measures steady state, not the topic's first moments.
fn wait_until_replicated(
    bootstrap: &str,
    topic: &str,
    replication_factor: i32,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let ready = metadata.topics().iter().any(|t| {
            !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.isr().len() >= replication_factor.max(1) as usize)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("topic {topic} is not fully replicated after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let min_insync = a.min_insync_replicas.to_string();
    ensure_replicated_topic(
        &a.common.bootstrap,
        &a.common.topic,
        a.partitions,
        a.replication_factor,
        (a.min_insync_replicas > 0).then_some(min_insync.as_str()),
        &a.topic_configs,
    )?;
    wait_until_replicated(&a.common.bootstrap, &a.common.topic, a.replication_factor)?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let commits = Arc::new(Mutex::new(CommitTimes {
        commit: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        end_txn: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    }));
    let producers = a.producers.max(1);
    // Producers are created and ready before the clock starts: an idempotent librdkafka
    // producer asks for its producer id only on a 500 ms retry timer when no connection is
    // up yet, which would otherwise show as a half-second stall at the start of every run.
    let ready: Vec<_> = (0..producers)
        .map(|n| {
            let context = LatencyContext {
                histogram: Arc::clone(&histogram),
                failures: Arc::clone(&failures),
            };
            ready_producer(&a, n, context)
        })
        .collect::<anyhow::Result<_>>()?;
    if failures.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        bail!("a warm-up record was not delivered");
    }
    histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram poisoned"))?
        .reset();
    let cpu_before = a.common.broker_pid.and_then(process_cpu_seconds);
    let started = Instant::now();
    // The producers come back from their threads and are dropped only after the clock
    // stops: dropping a ThreadedProducer joins its polling thread, which can take up to
    // the 100 ms of that thread's poll.
    let finished = std::thread::scope(|scope| -> anyhow::Result<Vec<_>> {
        let workers: Vec<_> = ready
            .into_iter()
            .zip(0..producers)
            .map(|(producer, n)| {
                let records = a.records / producers + u64::from(n < a.records % producers);
                let a = &a;
                let commits = Arc::clone(&commits);
                scope.spawn(move || {
                    produce_share(a, &producer, records, started, &commits).map(|()| producer)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("producer thread panicked"))?
            })
            .collect()
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(finished);
    let cpu = cpu_used(a.common.broker_pid, cpu_before, elapsed);
    let h = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram poisoned"))?;
    let bytes = a.records as f64 * a.record_bytes as f64;
    let mode = match (a.transaction_records, a.idempotence) {
        (0, false) => String::new(),
        (0, true) => " idempotent".to_string(),
        (n, _) => {
            let c = commits
                .lock()
                .map_err(|_| anyhow::anyhow!("histogram poisoned"))?;
            format!(
                " transactional records_per_txn={n} transactions={} commit_ms p50={:.2} p99={:.2} max={:.2} \
                 end_txn_ms p50={:.2} p99={:.2} max={:.2}",
                c.commit.len(),
                c.commit.value_at_quantile(0.5) as f64 / 1000.0,
                c.commit.value_at_quantile(0.99) as f64 / 1000.0,
                c.commit.max() as f64 / 1000.0,
                c.end_txn.value_at_quantile(0.5) as f64 / 1000.0,
                c.end_txn.value_at_quantile(0.99) as f64 / 1000.0,
                c.end_txn.max() as f64 / 1000.0,
            )
        }
    };
    println!(
        "produce{} records={} record_bytes={} acks={} compression={} producers={} rate={} elapsed_s={:.2} records_per_s={:.0} \
         mb_per_s={:.1} latency_ms p50={:.2} p99={:.2} p99.9={:.2} max={:.2} failed={}{}",
        mode,
        a.records,
        a.record_bytes,
        a.acks,
        a.compression,
        producers,
        if a.rate > 0 { a.rate.to_string() } else { "max".into() },
        elapsed,
        a.records as f64 / elapsed,
        bytes / elapsed / 1e6,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        failures.load(std::sync::atomic::Ordering::Relaxed),
        cpu,
    );
    Ok(())
}

const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long transaction commits took, in microseconds: `commit` from the call until the
/// commit is acknowledged (waiting for the transaction's outstanding records included, as
/// an application sees it), `end_txn` only the EndTxn exchange once nothing is outstanding.
struct CommitTimes {
    commit: Histogram<u64>,
    end_txn: Histogram<u64>,
}

/// Producer `n` of the run (which names its transactional id), ready to send: a
/// transactional one has its producer id from `init_transactions`, any other has delivered
/// one warm-up record to the topic (so its connection, metadata and, when idempotent, its
/// producer id are in place). The warm-up record is not among the `--records` measured.
fn ready_producer(
    a: &ProduceArgs,
    n: u64,
    context: LatencyContext,
) -> anyhow::Result<ThreadedProducer<LatencyContext>> {
    let transactional = a.transaction_records > 0;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &a.common.bootstrap)
        .set("acks", &a.acks)
        .set("linger.ms", a.linger_ms.to_string())
        .set("batch.size", a.batch_bytes.to_string())
        .set("compression.type", &a.compression)
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set(
            "enable.idempotence",
            (a.idempotence || transactional).to_string(),
        );
    if transactional {
        config.set("transactional.id", format!("strom-bench-{n}"));
    }
    for setting in &a.producer_configs {
        let (key, value) = setting
            .split_once('=')
            .with_context(|| format!("--producer-config {setting}: expected KEY=VALUE"))?;
        config.set(key, value);
    }
    let producer: ThreadedProducer<LatencyContext> = config
        .create_with_context(context)
        .context("creating producer")?;
    if transactional {
        producer.init_transactions(TXN_TIMEOUT)?;
        return Ok(producer);
    }
    let key = n.to_be_bytes();
    producer
        .send(
            BaseRecord::with_opaque_to(&a.common.topic, Box::new(Instant::now()))
                .payload(&b"warm-up"[..])
                .key(&key[..]),
        )
        .map_err(|(e, _)| anyhow::anyhow!("warm-up record: {e}"))?;
    producer.flush(TXN_TIMEOUT)?;
    Ok(producer)
}

/// One producer's share: `records` records at `rate / producers` per second, a transaction
/// committed every `--transaction-records` when the producer is transactional; commit times
/// go to `commits`.
fn produce_share(
    a: &ProduceArgs,
    producer: &ThreadedProducer<LatencyContext>,
    records: u64,
    started: Instant,
    commits: &Mutex<CommitTimes>,
) -> anyhow::Result<()> {
    let transactional = a.transaction_records > 0;
    if transactional {
        producer.begin_transaction()?;
    }
    let commit = |producer: &ThreadedProducer<LatencyContext>| -> anyhow::Result<()> {
        let start = Instant::now();
        wait_delivered(producer, TXN_TIMEOUT)?;
        let end_txn_start = Instant::now();
        producer.commit_transaction(TXN_TIMEOUT)?;
        let micros = |since: Instant| (since.elapsed().as_micros() as u64).max(1);
        if let Ok(mut c) = commits.lock() {
            let _ = c.commit.record(micros(start));
            let _ = c.end_txn.record(micros(end_txn_start));
        }
        Ok(())
    };
    let payload = vec![b'x'; a.record_bytes];
    let rate = a.rate as f64 / a.producers.max(1) as f64;
    for i in 0..records {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let key = (i % 1024).to_be_bytes();
        let mut record = BaseRecord::with_opaque_to(&a.common.topic, Box::new(Instant::now()))
            .payload(&payload[..])
            .key(&key[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, returned)) => {
                    if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        bail!("produce failed: {e}");
                    }
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        if transactional && (i + 1).is_multiple_of(a.transaction_records) {
            commit(producer)?;
            if i + 1 < records {
                producer.begin_transaction()?;
            }
        }
    }
    if transactional && !records.is_multiple_of(a.transaction_records) {
        commit(producer)?;
    }
    wait_delivered(producer, Duration::from_secs(300))?;
    producer.flush(Duration::from_secs(300))?;
    Ok(())
}

/// Waits until every record sent has been delivered and its report served. rust-rdkafka's
/// `flush`, which `commit_transaction` calls first, polls for up to 100 ms whenever a record
/// is still outstanding, and on a `ThreadedProducer` the reports are served by the
/// producer's own thread, so that poll sleeps the whole 100 ms: every commit would take
/// 100 ms more on any broker (and every run's end up to 100 ms late). With nothing
/// outstanding its flush returns at once.
fn wait_delivered(
    producer: &ThreadedProducer<LatencyContext>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            bail!("records still in flight after {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

fn consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strom-bench-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        .create()
        .context("creating consumer")
}

fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    let probe = consumer(&a.common.bootstrap)?;
    let metadata = probe.fetch_metadata(Some(&a.common.topic), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .first()
        .context("topic missing from metadata")?;
    let consumers = a.consumers.max(1) as usize;
    // Each consumer thread reads the partitions p with p % consumers == its index.
    let mut shares: Vec<(TopicPartitionList, u64)> = (0..consumers)
        .map(|_| (TopicPartitionList::new(), 0))
        .collect();
    for p in topic.partitions() {
        let (low, high) =
            probe.fetch_watermarks(&a.common.topic, p.id(), Duration::from_secs(10))?;
        let share = &mut shares[p.id() as usize % consumers];
        share
            .0
            .add_partition_offset(&a.common.topic, p.id(), Offset::Beginning)?;
        share.1 += (high - low) as u64;
    }
    let total: u64 = shares.iter().map(|s| s.1).sum();
    if total == 0 {
        bail!("topic {} is empty", a.common.topic);
    }
    let cpu_before = a.common.broker_pid.and_then(process_cpu_seconds);
    let started = Instant::now();
    let (records, bytes) = std::thread::scope(|scope| -> anyhow::Result<(u64, u64)> {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|(assignment, target)| {
                let bootstrap = a.common.bootstrap.clone();
                scope.spawn(move || consume_share(&bootstrap, &assignment, target, started))
            })
            .collect();
        let mut sums = (0, 0);
        for w in workers {
            let (r, b) = w
                .join()
                .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
            sums = (sums.0 + r, sums.1 + b);
        }
        Ok(sums)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_used(a.common.broker_pid, cpu_before, elapsed);
    println!(
        "consume records={} consumers={} elapsed_s={:.2} records_per_s={:.0} mb_per_s={:.1}{}",
        records,
        consumers,
        elapsed,
        records as f64 / elapsed,
        bytes as f64 / elapsed / 1e6,
        cpu,
    );
    Ok(())
}

/// Reads one consumer's partitions until `target` records arrived; returns records and bytes.
fn consume_share(
    bootstrap: &str,
    assignment: &TopicPartitionList,
    target: u64,
    started: Instant,
) -> anyhow::Result<(u64, u64)> {
    let consumer = consumer(bootstrap)?;
    consumer.assign(assignment)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < target {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("consumed only {records} of {target} records in 600 s");
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64 + m.key().map_or(0, |k| k.len()) as u64;
            }
            Some(Err(e)) => bail!("consume failed: {e}"),
            None => {}
        }
    }
    Ok((records, bytes))
}

/// User+system CPU seconds of a process, from /proc.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

fn cpu_used(pid: Option<u32>, before: Option<f64>, elapsed: f64) -> String {
    match (pid, before) {
        (Some(pid), Some(before)) => match process_cpu_seconds(pid) {
            Some(after) => format!(" broker_cpu_cores={:.2}", (after - before) / elapsed),
            None => String::new(),
        },
        _ => String::new(),
    }
}

fn rebalance(a: RebalanceArgs) -> anyhow::Result<()> {
    ensure_topic(&a.common.bootstrap, &a.common.topic, a.partitions)?;
    let group = format!("strom-bench-rebalance-{}", std::process::id());
    let consumers: Vec<BaseConsumer> = (0..a.consumers)
        .map(|_| {
            ClientConfig::new()
                .set("bootstrap.servers", &a.common.bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .context("creating consumer")
        })
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    for c in &consumers {
        c.subscribe(&[&a.common.topic])?;
    }
    let fair = a.partitions as usize / a.consumers.max(1);
    loop {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the group did not settle in 120 s");
        }
        for c in &consumers {
            if let Some(Err(e)) = c.poll(Duration::from_millis(1)) {
                bail!("consumer error: {e}");
            }
        }
        let counts: Vec<usize> = consumers
            .iter()
            .map(|c| c.assignment().map(|t| t.count()).unwrap_or(0))
            .collect();
        if counts.iter().sum::<usize>() == a.partitions as usize
            && counts.iter().all(|n| *n >= fair)
        {
            break;
        }
    }
    println!(
        "rebalance consumers={} partitions={} first_assignment_s={:.3}",
        a.consumers,
        a.partitions,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn commit(a: CommitArgs) -> anyhow::Result<()> {
    ensure_topic(&a.common.bootstrap, &a.common.topic, a.partitions)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.common.bootstrap)
        .set("group.id", &a.group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating consumer")?;
    let started = Instant::now();
    for round in 0..a.commits {
        let mut offsets = TopicPartitionList::new();
        for p in 0..a.partitions {
            offsets.add_partition_offset(&a.common.topic, p, Offset::Offset(round))?;
        }
        consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = a.commits * i64::from(a.partitions);
    println!(
        "commit offsets={total} elapsed_s={elapsed:.2} offsets_per_s={:.0}",
        total as f64 / elapsed
    );
    Ok(())
}
