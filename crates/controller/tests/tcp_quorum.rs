//! Three controllers over TCP on 127.0.0.1: brokers register through any voter, topics are
//! placed over the unfenced brokers, a silent broker is fenced, the quorum survives losing
//! its active controller, a restarted controller catches up from its own log, and producer
//! id blocks never overlap through failovers, snapshots and restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strom_controller::client::ControllerClient;
use strom_controller::producer_ids::{ProducerIdsBlock, BLOCK_SIZE};
use strom_controller::service::{
    code, Controller, ControllerConfig, ControllerRequest, ControllerResponse, NewTopic,
};
use strom_controller::NodeId;
use tokio::net::TcpListener;

const CALL: Duration = Duration::from_secs(20);
const CLUSTER: &str = "tcp-quorum-test";

fn config(
    id: NodeId,
    voters: &BTreeMap<NodeId, String>,
    dir: &std::path::Path,
) -> ControllerConfig {
    ControllerConfig {
        node_id: id,
        cluster_id: CLUSTER.into(),
        voters: voters.clone(),
        dir: dir.join(format!("node-{id}")),
        election_timeout_ms: 300,
        broker_session_timeout_ms: 1_500,
        leader_rebalance_interval_ms: None,
    }
}

async fn free_listeners(n: usize) -> (Vec<TcpListener>, BTreeMap<NodeId, String>) {
    let mut listeners = Vec::new();
    let mut voters = BTreeMap::new();
    for id in 1..=n as NodeId {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        voters.insert(id, l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    (listeners, voters)
}

/// `n` controllers on free ports of 127.0.0.1, each with its data under `dir`.
async fn start_quorum(
    dir: &std::path::Path,
    n: usize,
) -> (BTreeMap<NodeId, Arc<Controller>>, BTreeMap<NodeId, String>) {
    let (listeners, voters) = free_listeners(n).await;
    let mut nodes = BTreeMap::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let node = Controller::start(config(id, &voters, dir), Some(listener))
            .await
            .expect("start controller");
        nodes.insert(id, node);
    }
    (nodes, voters)
}

async fn register(client: &ControllerClient, broker_id: i32) -> i64 {
    let answer = client
        .call(
            ControllerRequest::RegisterBroker {
                broker_id,
                incarnation_id: broker_id as u128,
                host: "127.0.0.1".into(),
                port: 9000 + broker_id as u16,
                rack: None,
            },
            CALL,
        )
        .await;
    let ControllerResponse::Registered { broker_epoch } = answer else {
        panic!("registration failed: {answer:?}");
    };
    broker_epoch
}

async fn heartbeat(client: &ControllerClient, broker_id: i32, epoch: i64) -> ControllerResponse {
    client
        .call(
            ControllerRequest::BrokerHeartbeat {
                broker_id,
                broker_epoch: epoch,
                metadata_index: u64::MAX,
                want_shutdown: false,
            },
            CALL,
        )
        .await
}

async fn create(client: &ControllerClient, name: &str, partitions: i32) -> ControllerResponse {
    client
        .call(
            ControllerRequest::CreateTopics {
                topics: vec![NewTopic {
                    name: name.into(),
                    num_partitions: partitions,
                    replication_factor: 1,
                    assignments: Vec::new(),
                    configs: Vec::new(),
                }],
                validate_only: false,
            },
            CALL,
        )
        .await
}

fn created(answer: &ControllerResponse) -> bool {
    matches!(answer, ControllerResponse::Topics(r) if r.len() == 1 && r[0].error_code == code::NONE)
}

async fn active(nodes: &BTreeMap<NodeId, Arc<Controller>>) -> NodeId {
    for _ in 0..400 {
        for (id, node) in nodes {
            if node.leader() == Some(*id) {
                return *id;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no active controller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_quorum_places_topics_fences_silent_brokers_and_survives_losing_its_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, voters) = start_quorum(dir.path(), 3).await;
    let client = ControllerClient::new(&voters, CLUSTER, None);
    let mut epochs = BTreeMap::new();
    for broker in 1..=3 {
        epochs.insert(broker, register(&client, broker).await);
    }
    for (broker, epoch) in &epochs {
        let answer = heartbeat(&client, *broker, *epoch).await;
        assert!(
            matches!(answer, ControllerResponse::Heartbeat { fenced: false }),
            "{answer:?}"
        );
    }
    // A second process claiming a live broker's id is refused while that session lives.
    let duplicate = client
        .call(
            ControllerRequest::RegisterBroker {
                broker_id: 1,
                incarnation_id: 999,
                host: "127.0.0.1".into(),
                port: 9999,
                rack: None,
            },
            CALL,
        )
        .await;
    assert!(
        matches!(
            duplicate,
            ControllerResponse::Error {
                code: code::DUPLICATE_BROKER_REGISTRATION,
                ..
            }
        ),
        "{duplicate:?}"
    );
    let answer = create(&client, "orders", 6).await;
    assert!(created(&answer), "{answer:?}");
    let leader = active(&nodes).await;
    let image = nodes[&leader].state_machine().image().await;
    let topic = image.topic_by_name("orders").expect("topic");
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for p in topic.partitions.values() {
        *led.entry(p.leader).or_default() += 1;
    }
    assert_eq!(
        led,
        BTreeMap::from([(1, 2), (2, 2), (3, 2)]),
        "two leaders per broker"
    );

    // Broker 3 goes silent: it is fenced and its partitions lose their leader.
    for _ in 0..12 {
        for broker in [1, 2] {
            heartbeat(&client, broker, epochs[&broker]).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let leader = active(&nodes).await;
    let image = nodes[&leader].state_machine().image().await;
    assert!(image.brokers[&3].fenced, "the silent broker is fenced");
    assert!(!image.brokers[&1].fenced && !image.brokers[&2].fenced);
    let topic = image.topic_by_name("orders").expect("topic");
    assert!(topic.partitions.values().all(|p| p.leader != 3));
    // It comes back: unfenced, and it leads its partitions again.
    let answer = heartbeat(&client, 3, epochs[&3]).await;
    assert!(
        matches!(answer, ControllerResponse::Heartbeat { fenced: false }),
        "{answer:?}"
    );

    // The active controller dies: another takes over and metadata changes work again.
    let old = active(&nodes).await;
    nodes[&old].shutdown().await;
    let survivors: BTreeMap<NodeId, Arc<Controller>> = nodes
        .iter()
        .filter(|(id, _)| **id != old)
        .map(|(id, n)| (*id, Arc::clone(n)))
        .collect();
    let new = active(&survivors).await;
    assert_ne!(new, old);
    let answer = create(&client, "payments", 3).await;
    assert!(created(&answer), "{answer:?}");

    // The old leader restarts from its files on the same address and catches up.
    nodes.remove(&old);
    let listener = TcpListener::bind(&voters[&old]).await.expect("rebind");
    let restarted = Controller::start(config(old, &voters, dir.path()), Some(listener))
        .await
        .expect("restart");
    let target = survivors[&new].state_machine().subscribe().borrow().index;
    let mut caught_up = restarted.state_machine().subscribe();
    tokio::time::timeout(CALL, caught_up.wait_for(|p| p.index >= target))
        .await
        .expect("the restarted controller catches up")
        .expect("state machine alive");
    let image = restarted.state_machine().image().await;
    assert!(image.topic_by_name("payments").is_some() && image.topic_by_name("orders").is_some());
    assert!(!image.brokers[&3].fenced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_behind_the_purged_log_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, voters) = start_quorum(dir.path(), 3).await;
    let client = ControllerClient::new(&voters, CLUSTER, None);
    let epoch = register(&client, 1).await;
    heartbeat(&client, 1, epoch).await;
    let leader = active(&nodes).await;
    let behind = if leader == 3 { 2 } else { 3 };
    nodes[&behind].shutdown().await;
    nodes.remove(&behind);
    for i in 0..20 {
        let answer = create(&client, &format!("topic-{i}"), 1).await;
        assert!(created(&answer), "{answer:?}");
    }
    // The leader snapshots and drops its log: the returning node cannot be sent entries.
    let leader = active(&nodes).await;
    let raft = nodes[&leader].raft();
    raft.trigger().snapshot().await.expect("snapshot");
    let index = nodes[&leader].state_machine().subscribe().borrow().index;
    // (A metrics borrow must not live across an await: it would block the Raft core.)
    raft.wait(Some(CALL))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= index),
            "snapshot built",
        )
        .await
        .expect("the leader builds a snapshot");
    raft.trigger().purge_log(index).await.expect("purge");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let listener = TcpListener::bind(&voters[&behind]).await.expect("rebind");
    let restarted = Controller::start(config(behind, &voters, dir.path()), Some(listener))
        .await
        .expect("restart");
    let mut caught_up = restarted.state_machine().subscribe();
    tokio::time::timeout(CALL, caught_up.wait_for(|p| p.index >= index))
        .await
        .expect("the restarted controller catches up")
        .expect("state machine alive");
    let image = restarted.state_machine().image().await;
    assert_eq!(
        image.topics.len(),
        20,
        "every topic arrived through the snapshot"
    );
    assert!(
        dir.path()
            .join(format!("node-{behind}/snapshot/snapshot.bin"))
            .exists(),
        "the snapshot was installed and kept on disk"
    );
}

/// Reads until the peer closes; true if it closed (rather than answering or timing out).
async fn closed_by_peer(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_listener_refuses_other_clusters_and_garbage_and_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut listeners, voters) = free_listeners(1).await;
    let node = Controller::start(config(1, &voters, dir.path()), listeners.pop())
        .await
        .expect("start controller");
    active(&BTreeMap::from([(1, Arc::clone(&node))])).await;

    let stranger = ControllerClient::new(&voters, "another-cluster", None);
    let refused = stranger
        .call(ControllerRequest::DescribeQuorum, Duration::from_secs(5))
        .await;
    assert!(
        matches!(
            refused,
            ControllerResponse::Error {
                code: code::INCONSISTENT_CLUSTER_ID,
                ..
            }
        ),
        "{refused:?}"
    );

    // A frame longer than the limit is refused before anything is read or reserved.
    let mut huge = tokio::net::TcpStream::connect(&voters[&1])
        .await
        .expect("connect");
    huge.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    assert!(
        closed_by_peer(&mut huge).await,
        "an oversized frame closes the connection"
    );
    // A body that is not a request.
    let mut garbage = tokio::net::TcpStream::connect(&voters[&1])
        .await
        .expect("connect");
    garbage.write_all(&5u32.to_be_bytes()).await.expect("write");
    garbage.write_all(b"hello").await.expect("write");
    assert!(
        closed_by_peer(&mut garbage).await,
        "garbage closes the connection"
    );

    // The controller still serves its own cluster.
    let client = ControllerClient::new(&voters, CLUSTER, None);
    let epoch = register(&client, 1).await;
    assert!(epoch > 0);
}

async fn allocate(client: &ControllerClient, broker_id: i32, epoch: i64) -> ControllerResponse {
    client
        .call(
            ControllerRequest::AllocateProducerIds {
                broker_id,
                broker_epoch: epoch,
            },
            CALL,
        )
        .await
}

/// Asks for `count` blocks, one after another, as broker `broker_id` with its own client.
async fn allocate_blocks(
    voters: BTreeMap<NodeId, String>,
    broker_id: i32,
    epoch: i64,
    count: usize,
) -> Vec<ProducerIdsBlock> {
    let client = ControllerClient::new(&voters, CLUSTER, None);
    let mut blocks = Vec::new();
    while blocks.len() < count {
        match allocate(&client, broker_id, epoch).await {
            ControllerResponse::ProducerIds(block) => blocks.push(block),
            // A failover may refuse or time out a request; the broker asks again.
            ControllerResponse::Error {
                code: code::REQUEST_TIMED_OUT | code::NOT_CONTROLLER,
                ..
            } => {}
            other => panic!("broker {broker_id}: {other:?}"),
        }
    }
    blocks
}

/// Every block has Kafka's size and no id is in two blocks.
fn assert_disjoint(blocks: &[ProducerIdsBlock]) {
    let mut sorted = blocks.to_vec();
    sorted.sort_by_key(|b| b.first_producer_id);
    for pair in sorted.windows(2) {
        assert!(
            pair[0].end() <= pair[1].first_producer_id,
            "overlapping blocks {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(sorted.iter().all(|b| b.count == BLOCK_SIZE));
    assert!(sorted.first().is_none_or(|b| b.first_producer_id >= 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_id_blocks_never_overlap_across_brokers_failovers_snapshots_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, voters) = start_quorum(dir.path(), 3).await;
    let client = ControllerClient::new(&voters, CLUSTER, None);
    let mut epochs = BTreeMap::new();
    for broker in 1..=3 {
        epochs.insert(broker, register(&client, broker).await);
    }

    // Three brokers ask at once: every block is distinct, and the first ones are the first
    // ids in order.
    let ask_together = |count: usize| {
        let tasks: Vec<_> = epochs
            .iter()
            .map(|(b, e)| tokio::spawn(allocate_blocks(voters.clone(), *b, *e, count)))
            .collect();
        async move {
            let mut blocks = Vec::new();
            for task in tasks {
                blocks.extend(task.await.expect("allocating task"));
            }
            blocks
        }
    };
    let mut blocks = ask_together(4).await;
    assert_disjoint(&blocks);
    let mut firsts: Vec<i64> = blocks.iter().map(|b| b.first_producer_id).collect();
    firsts.sort_unstable();
    assert_eq!(firsts, (0..12).map(|i| i * 1000).collect::<Vec<_>>());

    // A stale or unknown registration is refused and moves nothing.
    for (broker, epoch) in [(1, epochs[&1] + 1), (1, epochs[&1] - 1), (9, 1)] {
        let answer = allocate(&client, broker, epoch).await;
        assert!(
            matches!(
                answer,
                ControllerResponse::Error {
                    code: code::STALE_BROKER_EPOCH,
                    ..
                }
            ),
            "broker {broker} epoch {epoch}: {answer:?}"
        );
    }

    // The active controller dies while brokers ask: its successor goes on after the last
    // committed block.
    let asking = ask_together(20);
    let old = active(&nodes).await;
    nodes[&old].shutdown().await;
    let next_at_failover = nodes[&old].state_machine().image().await.next_producer_id;
    blocks.extend(asking.await);
    assert_disjoint(&blocks);
    assert!(
        blocks
            .iter()
            .any(|b| b.first_producer_id >= next_at_failover),
        "the successor handed out blocks too"
    );
    let listener = TcpListener::bind(&voters[&old]).await.expect("rebind");
    nodes.insert(
        old,
        Controller::start(config(old, &voters, dir.path()), Some(listener))
            .await
            .expect("restart"),
    );

    // The active controller snapshots and purges its log, then every controller stops and
    // starts again from its files: the snapshot keeps the next free id.
    let leader = active(&nodes).await;
    let raft = nodes[&leader].raft();
    raft.trigger().snapshot().await.expect("snapshot");
    let index = nodes[&leader].state_machine().subscribe().borrow().index;
    raft.wait(Some(CALL))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= index),
            "snapshot built",
        )
        .await
        .expect("the leader builds a snapshot");
    raft.trigger().purge_log(index).await.expect("purge");
    let next_before = nodes[&leader]
        .state_machine()
        .image()
        .await
        .next_producer_id;
    let handed_out = blocks.iter().map(ProducerIdsBlock::end).max().unwrap_or(0);
    assert!(
        next_before >= handed_out,
        "every block answered was committed: next id {next_before}, handed out up to {handed_out}"
    );
    for node in nodes.values() {
        node.shutdown().await;
    }
    nodes.clear();
    for id in voters.keys() {
        let listener = TcpListener::bind(&voters[id]).await.expect("rebind");
        nodes.insert(
            *id,
            Controller::start(config(*id, &voters, dir.path()), Some(listener))
                .await
                .expect("restart"),
        );
    }
    let after_restart = allocate_blocks(voters.clone(), 2, epochs[&2], 1).await;
    assert_eq!(after_restart[0].first_producer_id, next_before);
    blocks.extend(after_restart);
    assert_disjoint(&blocks);
}
