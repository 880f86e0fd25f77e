//! A cluster of real `strom` processes on 127.0.0.1: each node gets free ports, its own
//! data directory and `server.properties`, is formatted with one cluster id by
//! `strom storage format`, and is started with `strom server --config`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::describe_quorum_response::PartitionData as PartitionData_;
use kafka_protocol::messages::{
    ApiKey, DescribeQuorumRequest, DescribeQuorumResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{Broker, RawClient};

/// Settings that make fencing and failover quick enough for tests.
const FAST_FAILURE_DETECTION: &[&str] = &[
    "broker.session.timeout.ms=2000",
    "broker.heartbeat.interval.ms=200",
];

/// Ports handed to nodes come from here, below Linux's ephemeral range (32768–60999): a
/// port the OS hands out for port 0 is also what it gives the next outgoing connection of any
/// test, which could take it before the node binds it ("Address already in use").
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port no other node of this test process has had, and free when checked. Each process
/// starts at its own place in [`PORTS`], so test processes run side by side rarely meet.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = PORTS.start + ((start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// One node of the cluster.
pub struct Node {
    pub id: i32,
    pub roles: &'static str,
    pub client_port: Option<u16>,
    pub controller_port: Option<u16>,
    pub process: Broker,
}

impl Node {
    pub fn is_broker(&self) -> bool {
        self.roles.contains("broker")
    }

    pub fn is_controller(&self) -> bool {
        self.roles.contains("controller")
    }

    /// The client address of a broker.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port.expect("a broker"))
    }
}

/// A running cluster; its processes are killed when it is dropped.
pub struct Cluster {
    pub nodes: BTreeMap<i32, Node>,
    pub dir: PathBuf,
    /// With [`Cluster::combined_proxied`]: the proxy every broker is advertised behind.
    pub proxies: BTreeMap<i32, super::proxy::Proxy>,
}

impl Cluster {
    /// `n` nodes, each broker and controller.
    pub fn combined(dir: &Path, n: i32) -> Cluster {
        Cluster::combined_with(dir, n, &[])
    }

    /// `n` combined nodes with extra `key=value` settings on every node.
    pub fn combined_with(dir: &Path, n: i32, settings: &[&str]) -> Cluster {
        let layout = (1..=n).map(|id| (id, "broker,controller")).collect();
        Cluster::start(dir, layout, settings, false)
    }

    /// `n` combined nodes, each advertised behind a [`super::proxy::Proxy`] the test controls,
    /// so that followers can be cut off leaders while clients still reach every broker.
    pub fn combined_proxied(dir: &Path, n: i32, settings: &[&str]) -> Cluster {
        let layout = (1..=n).map(|id| (id, "broker,controller")).collect();
        Cluster::start(dir, layout, settings, true)
    }

    /// `controllers` controller-only nodes (ids 1..) and `brokers` broker-only nodes (ids
    /// after them).
    pub fn split(dir: &Path, controllers: i32, brokers: i32) -> Cluster {
        Cluster::split_with(dir, controllers, brokers, &[])
    }

    /// A split cluster with extra `key=value` settings on every node.
    pub fn split_with(dir: &Path, controllers: i32, brokers: i32, settings: &[&str]) -> Cluster {
        let layout = (1..=controllers)
            .map(|id| (id, "controller"))
            .chain((controllers + 1..=controllers + brokers).map(|id| (id, "broker")))
            .collect();
        Cluster::start(dir, layout, settings, false)
    }

    fn start(
        dir: &Path,
        layout: Vec<(i32, &'static str)>,
        settings: &[&str],
        proxied: bool,
    ) -> Cluster {
        let cluster_id = strom(&["storage", "random-uuid"]).trim().to_string();
        let ports: Vec<(i32, &str, Option<u16>, Option<u16>)> = layout
            .iter()
            .map(|(id, roles)| {
                let client = roles.contains("broker").then(free_port);
                let controller = roles.contains("controller").then(free_port);
                (*id, *roles, client, controller)
            })
            .collect();
        let voters: Vec<String> = ports
            .iter()
            .filter_map(|(id, _, _, c)| c.map(|c| format!("{id}@127.0.0.1:{c}")))
            .collect();
        let mut nodes = BTreeMap::new();
        let mut proxies = BTreeMap::new();
        for (id, roles, client, controller) in ports {
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut listeners = Vec::new();
            if let Some(p) = client {
                listeners.push(format!("PLAINTEXT://127.0.0.1:{p}"));
            }
            if let Some(p) = controller {
                listeners.push(format!("CONTROLLER://127.0.0.1:{p}"));
            }
            let mut properties = format!(
                "node.id={id}\nprocess.roles={roles}\nlisteners={}\ncontroller.listener.names=CONTROLLER\ncontroller.quorum.voters={}\nlog.dirs={}\n",
                listeners.join(","),
                voters.join(","),
                node_dir.join("logs").display()
            );
            for setting in FAST_FAILURE_DETECTION.iter().chain(settings) {
                properties.push_str(setting);
                properties.push('\n');
            }
            if let Some(port) = client.filter(|_| proxied) {
                let proxy = super::proxy::Proxy::start(port);
                properties.push_str(&format!(
                    "advertised.listeners=PLAINTEXT://127.0.0.1:{}\n",
                    proxy.port
                ));
                proxies.insert(id, proxy);
            }
            let config = node_dir.join("server.properties");
            std::fs::write(&config, properties).expect("write config");
            strom(&[
                "storage",
                "format",
                "--cluster-id",
                &cluster_id,
                "--config",
                config.to_str().expect("utf-8 path"),
            ]);
            let process = Broker::spawn_configured(&node_dir, &config);
            nodes.insert(
                id,
                Node {
                    id,
                    roles,
                    client_port: client,
                    controller_port: controller,
                    process,
                },
            );
        }
        for node in nodes.values_mut() {
            node.process.wait_ready();
        }
        Cluster {
            nodes,
            dir: dir.to_path_buf(),
            proxies,
        }
    }

    pub fn brokers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.is_broker())
    }

    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers().map(|n| n.id).collect()
    }

    /// Every broker's address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.brokers().map(Node::addr).collect::<Vec<_>>().join(",")
    }

    pub fn addr(&self, id: i32) -> String {
        self.nodes[&id].addr()
    }

    pub fn kill9(&mut self, id: i32) {
        self.nodes.get_mut(&id).expect("node").process.kill9();
    }

    /// Stops node `id` with SIGTERM (a controlled shutdown) and waits for it to exit.
    pub fn stop(&mut self, id: i32) {
        let status = self.nodes.get_mut(&id).expect("node").process.terminate();
        assert!(status.success(), "node {id} exited with {status}");
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to node `id`.
    pub fn signal(&self, id: i32, signal: i32) {
        let pid = self.nodes[&id].process.pid();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// The bytes of a partition's log on node `id`: its segments concatenated in offset
    /// order. Replicas that agree hold the same bytes (followers store the leader's batches
    /// verbatim), whatever their segment boundaries.
    pub fn log_bytes(&self, id: i32, topic: &str, partition: i32) -> Vec<u8> {
        let dir = self
            .dir
            .join(format!("node-{id}"))
            .join("logs")
            .join(format!("{topic}-{partition}"));
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        segments.sort();
        segments
            .iter()
            .flat_map(|p| std::fs::read(p).expect("read segment"))
            .collect()
    }

    /// Starts a stopped node again on the same ports and waits until it serves.
    pub fn restart(&mut self, id: i32) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.process.respawn();
        node.process.wait_ready();
    }

    /// Metadata for all topics as broker `id` answers it.
    pub fn metadata(&self, id: i32) -> MetadataResponse {
        let mut client = RawClient::connect(&self.addr(id));
        client.send(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        );
        client.recv(12)
    }

    /// The active controller, as broker `via` learns it with DescribeQuorum.
    pub fn active_controller(&self, via: i32) -> i32 {
        self.quorum(via).leader_id.0
    }

    /// The metadata quorum as broker `via` reports it (DescribeQuorum).
    pub fn quorum(&self, via: i32) -> PartitionData_ {
        let mut client = RawClient::connect(&self.addr(via));
        let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
        client.send(ApiKey::DescribeQuorum, 1, &request);
        let response: DescribeQuorumResponse = client.recv(1);
        let partition = response.topics[0].partitions[0].clone();
        assert_eq!(partition.error_code, 0, "{response:?}");
        partition
    }

    /// Polls `check` every 50 ms until it holds; panics after `timeout` naming `what`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `strom` with `args`, asserting success; returns stdout.
pub fn strom(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_strom"))
        .args(args)
        .output()
        .expect("run strom");
    assert!(
        out.status.success(),
        "strom {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
