//! Three controllers on an in-process network: one leader is elected, committed metadata
//! records reach every live node in the same order, a new leader takes over when the leader
//! is cut off, and the cut-off node catches up when it returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config};
use strom_controller::router::Router;
use strom_controller::{Command, LogStore, MetadataRecord, NodeId, Raft, StateMachine, TypeConfig};

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    raft: Raft,
    state: StateMachine,
}

async fn start(router: &Router, id: NodeId) -> Node {
    start_with(router, id, LogStore::default()).await
}

async fn start_on_disk(router: &Router, id: NodeId, dir: &std::path::Path) -> Node {
    start_with(
        router,
        id,
        strom_controller::FileLogStore::open(dir).expect("open log"),
    )
    .await
}

async fn start_with<S: RaftLogStorage<TypeConfig>>(router: &Router, id: NodeId, store: S) -> Node {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("valid raft config"));
    let state = StateMachine::default();
    let raft = Raft::new(id, config, router.network_for(id), store, state.clone())
        .await
        .expect("raft");
    router.add(id, raft.clone()).await;
    Node { raft, state }
}

fn topic(name: &str) -> MetadataRecord {
    MetadataRecord::Topic {
        name: name.to_string(),
        topic_id: uuid::Uuid::new_v4(),
    }
}

async fn leader_of(nodes: &BTreeMap<NodeId, Node>, among: &[NodeId]) -> NodeId {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for id in among {
            let metrics = nodes[id].raft.metrics().borrow().clone();
            if metrics.current_leader == Some(*id) {
                return *id;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader elected among {among:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_applied(node: &Node, index: u64) {
    node.raft
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .expect("the node applies the committed entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_reach_every_node_in_order_across_a_leader_change() {
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&router, id).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(id.to_string())))
        .collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("initialize");

    let first = leader_of(&nodes, &[1, 2, 3]).await;
    let written = nodes[&first]
        .raft
        .client_write(Command::new(&[topic("orders"), topic("payments")]))
        .await
        .expect("write");
    assert_eq!(written.data.error, None);
    for node in nodes.values() {
        wait_applied(node, written.log_id.index).await;
    }
    let image = nodes[&1].state.image().await;
    assert!(image.topic_by_name("orders").is_some() && image.topic_by_name("payments").is_some());
    for node in nodes.values() {
        assert_eq!(
            node.state.image().await,
            image,
            "every node applied the same records"
        );
    }

    // An inconsistent command is refused by the image on every node alike.
    let dup = nodes[&first]
        .raft
        .client_write(Command::new(&[topic("orders")]))
        .await
        .expect("write");
    assert!(dup.data.error.is_some());

    // The leader is cut off: the other two elect a new leader and keep committing.
    router.down(first).await;
    let survivors: Vec<NodeId> = (1..=3).filter(|id| *id != first).collect();
    let second = leader_of(&nodes, &survivors).await;
    assert_ne!(second, first);
    let more = nodes[&second]
        .raft
        .client_write(Command::new(&[topic("refunds")]))
        .await
        .expect("write after failover");
    for id in &survivors {
        wait_applied(&nodes[id], more.log_id.index).await;
        assert!(nodes[id]
            .state
            .image()
            .await
            .topic_by_name("refunds")
            .is_some());
    }

    // The old leader returns and catches up with everything committed without it.
    router.up(first).await;
    wait_applied(&nodes[&first], more.log_id.index).await;
    let caught_up = nodes[&first].state.image().await;
    assert_eq!(
        caught_up.topic_ids.keys().collect::<Vec<_>>(),
        vec!["orders", "payments", "refunds"]
    );
    assert_eq!(caught_up, nodes[&second].state.image().await);
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_recovers_its_durable_log_and_catches_up() {
    let router = Router::default();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(
            id,
            start_on_disk(&router, id, dirs[id as usize - 1].path()).await,
        );
    }
    let members: BTreeMap<NodeId, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(id.to_string())))
        .collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("initialize");
    let leader = leader_of(&nodes, &[1, 2, 3]).await;
    let first = nodes[&leader]
        .raft
        .client_write(Command::new(&[topic("a")]))
        .await
        .expect("write");
    for node in nodes.values() {
        wait_applied(node, first.log_id.index).await;
    }
    // Stop a follower, write without it, then restart it from its files with a torn record
    // appended to its log (a crash mid-append): it cuts the tail, recovers and catches up.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    router.down(follower).await;
    nodes
        .remove(&follower)
        .unwrap()
        .raft
        .shutdown()
        .await
        .expect("shutdown");
    let second = nodes[&leader]
        .raft
        .client_write(Command::new(&[topic("b")]))
        .await
        .expect("write with one node down");
    let log = dirs[follower as usize - 1].path().join("raft.log");
    let mut torn = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut torn, &[0, 0, 0, 200, b'{']).unwrap();
    drop(torn);
    let restarted = start_on_disk(&router, follower, dirs[follower as usize - 1].path()).await;
    router.up(follower).await;
    wait_applied(&restarted, second.log_id.index).await;
    let image = restarted.state.image().await;
    assert!(image.topic_by_name("a").is_some() && image.topic_by_name("b").is_some());
    assert_eq!(image, nodes[&leader].state.image().await);
    restarted.raft.shutdown().await.expect("shutdown");
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}
