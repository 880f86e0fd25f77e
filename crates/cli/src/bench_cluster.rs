//! `strom bench topics | metadata | failover`: the cluster's metadata path, measured with
//! Kafka's own requests over a plain connection (no client library in the way), so the same
//! commands measure Apache Kafka.
//!
//! - `topics`: creates many topics, one CreateTopics request after another, and reports the
//!   total time and each request's latency.
//! - `metadata`: asks for the metadata of every topic, repeatedly, and reports latency and
//!   size of the answer.
//! - `failover`: kills the active controller (`kill -9` of the PID given for it), then times
//!   until a topic can be created again through a surviving broker.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeQuorumRequest, DescribeQuorumResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

/// Longest answer accepted from the broker.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

#[derive(clap::Args)]
pub struct TopicsArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value_t = 1000)]
    topics: usize,
    #[arg(long, default_value_t = 10)]
    partitions: i32,
    /// Topics per CreateTopics request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value = "strom-bench-topic")]
    prefix: String,
    /// Delete the topics again afterwards.
    #[arg(long)]
    delete: bool,
}

#[derive(clap::Args)]
pub struct MetadataArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value_t = 200)]
    requests: u64,
}

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Brokers to talk to (comma-separated); one that is not on the killed node is used.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The controllers' node ids and PIDs: `1:4242,2:4243,3:4244`.
    #[arg(long)]
    controllers: String,
}

/// One connection speaking Kafka's framing.
struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    fn connect(addr: &str) -> anyhow::Result<Raw> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Raw {
            stream,
            correlation_id: 0,
        })
    }

    fn call<Req, Resp>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        req: &Req,
    ) -> anyhow::Result<(Resp, usize)>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("strom-bench")));
        let mut body = BytesMut::new();
        header.encode(&mut body, Req::header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_u32(body.len() as u32);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > RESPONSE_BYTES_MAX {
            bail!("answer of {len} bytes");
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf)?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, Resp::header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!("answer to another request");
        }
        let response = Resp::decode(&mut buf, version)?;
        if buf.has_remaining() {
            bail!("{} bytes left after the answer", buf.remaining());
        }
        Ok((response, len + 4))
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn percentiles_ms(h: &Histogram<u64>) -> String {
    format!(
        "p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn create(
    raw: &mut Raw,
    names: &[String],
    partitions: i32,
    timeout_ms: i32,
) -> anyhow::Result<Vec<i16>> {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(
            names
                .iter()
                .map(|n| {
                    CreatableTopic::default()
                        .with_name(name(n))
                        .with_num_partitions(partitions)
                        .with_replication_factor(1)
                })
                .collect(),
        );
    let (resp, _): (CreateTopicsResponse, _) = raw.call(ApiKey::CreateTopics, 7, &req)?;
    Ok(resp.topics.iter().map(|t| t.error_code).collect())
}

pub fn topics(a: TopicsArgs) -> anyhow::Result<()> {
    let addr = a.bootstrap.split(',').next().unwrap_or_default();
    let mut raw = Raw::connect(addr)?;
    let names: Vec<String> = (0..a.topics).map(|i| format!("{}-{i}", a.prefix)).collect();
    let mut latency = histogram();
    let mut failed = 0usize;
    let started = Instant::now();
    for chunk in names.chunks(a.batch.max(1)) {
        let sent = Instant::now();
        let codes = create(&mut raw, chunk, a.partitions, 30_000)?;
        latency.record(sent.elapsed().as_micros().max(1) as u64)?;
        failed += codes.iter().filter(|c| **c != 0).count();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "topics created={} partitions_each={} batch={} failed={failed} elapsed_s={elapsed:.2} topics_per_s={:.0} request {}",
        a.topics,
        a.partitions,
        a.batch,
        a.topics as f64 / elapsed,
        percentiles_ms(&latency)
    );
    if a.delete {
        let started = Instant::now();
        for chunk in names.chunks(100) {
            let req = DeleteTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(
                    chunk
                        .iter()
                        .map(|n| DeleteTopicState::default().with_name(Some(name(n))))
                        .collect(),
                );
            let _: (DeleteTopicsResponse, _) = raw.call(ApiKey::DeleteTopics, 6, &req)?;
        }
        println!(
            "topics deleted={} elapsed_s={:.2}",
            a.topics,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub fn metadata(a: MetadataArgs) -> anyhow::Result<()> {
    let addr = a.bootstrap.split(',').next().unwrap_or_default();
    let mut raw = Raw::connect(addr)?;
    let req = MetadataRequest::default().with_topics(None);
    let mut latency = histogram();
    let mut partitions = 0;
    let mut topics = 0;
    let mut bytes = 0;
    for _ in 0..a.requests {
        let sent = Instant::now();
        let (resp, size): (MetadataResponse, usize) = raw.call(ApiKey::Metadata, 12, &req)?;
        latency.record(sent.elapsed().as_micros().max(1) as u64)?;
        topics = resp.topics.len();
        partitions = resp
            .topics
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>();
        bytes = size;
    }
    println!(
        "metadata requests={} topics={topics} partitions={partitions} response_bytes={bytes} {}",
        a.requests,
        percentiles_ms(&latency)
    );
    Ok(())
}

fn active_controller(raw: &mut Raw) -> anyhow::Result<i32> {
    let req = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(name("__cluster_metadata"))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let (resp, _): (DescribeQuorumResponse, _) = raw.call(ApiKey::DescribeQuorum, 1, &req)?;
    let partition = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("empty DescribeQuorum answer")?;
    if partition.error_code != 0 {
        bail!("DescribeQuorum error {}", partition.error_code);
    }
    Ok(partition.leader_id.0)
}

pub fn failover(a: FailoverArgs) -> anyhow::Result<()> {
    let pids: BTreeMap<i32, i32> = a
        .controllers
        .split(',')
        .map(|pair| {
            let (id, pid) = pair.split_once(':').context("id:pid")?;
            Ok((id.trim().parse()?, pid.trim().parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let bootstrap: Vec<&str> = a.bootstrap.split(',').collect();
    let mut raw = Raw::connect(bootstrap[0])?;
    let (metadata, _): (MetadataResponse, _) = raw.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![])),
    )?;
    let active = active_controller(&mut raw)?;
    let pid = *pids
        .get(&active)
        .context("no PID given for the active controller")?;
    // Talk to a broker that does not share the killed node.
    let survivor = metadata
        .brokers
        .iter()
        .find(|b| b.node_id.0 != active)
        .map(|b| format!("{}:{}", b.host.as_str(), b.port))
        .context("no broker besides the active controller's node")?;
    let mut raw = Raw::connect(&survivor)?;
    // SAFETY: sending a signal to a process id the operator named.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid} failed: {}", std::io::Error::last_os_error());
    }
    let killed = Instant::now();
    let topic = format!("strom-bench-failover-{}", std::process::id());
    loop {
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("no topic could be created within 120 s");
        }
        match create(&mut raw, std::slice::from_ref(&topic), 1, 1_000) {
            Ok(codes) if codes == [0] => break,
            Ok(_) => {}
            Err(_) => raw = Raw::connect(&survivor)?,
        }
    }
    let writable = killed.elapsed();
    let next = active_controller(&mut raw)?;
    println!(
        "failover killed_controller={active} new_controller={next} metadata_writable_after_ms={:.0}",
        writable.as_secs_f64() * 1000.0
    );
    Ok(())
}
