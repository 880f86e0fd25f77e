//! A seeded simulation of the controller quorum: three controllers on the in-process network
//! with random delays and lost messages, crashed and restarted, cut apart and healed, while a
//! client writes metadata and two brokers follow the log by deltas, as `strom` brokers do.
//!
//! After every step the checkers hold: at most one leader per term; every command a node
//! applied at an index is the same command every other node applied there; each broker
//! applies the log in index order and its image is the committed log applied up to its
//! index. At the end, with the network healed and every node up, every acknowledged write is
//! in every controller's and every broker's image.
//!
//! Time is tokio's paused clock on one thread and every random choice (faults, delays,
//! losses) comes from the seed; openraft's own randomness is pinned by an election timeout
//! range of one millisecond. A failing run prints its seed; `STROM_SIM_SEED=<seed>` replays
//! it, `STROM_SIM_SEEDS=<n>` runs more seeds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, ServerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strom_controller::router::{Router, Weather};
use strom_controller::{
    Changes, Command, LogStore, MetadataImage, MetadataRecord, NodeId, Raft, StateMachine,
};

const NODES: u64 = 3;
const BROKERS: usize = 2;
const STEPS: usize = 300;
const STEP_MS: u64 = 40;
const SEEDS_DEFAULT: u64 = 24;

struct Node {
    raft: Raft,
    state: StateMachine,
}

/// A broker following the log: its index, its image, and the indexes it applied.
#[derive(Default)]
struct Broker {
    index: u64,
    image: MetadataImage,
    applied: Vec<u64>,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    router: Router,
    stores: BTreeMap<NodeId, LogStore>,
    nodes: BTreeMap<NodeId, Node>,
    brokers: Vec<Broker>,
    /// Term → the node that led it.
    leaders: BTreeMap<u64, NodeId>,
    /// Index → the records applied there (by whichever node was seen first).
    committed: BTreeMap<u64, Vec<MetadataRecord>>,
    acknowledged: Vec<String>,
    trace: Vec<String>,
    next_topic: u32,
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        // One value only: openraft draws the timeout from its own unseeded generator.
        election_timeout_max: 301,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let router = Router::seeded(
            seed,
            Weather {
                delay_ms_max: 20,
                loss_percent: 3,
            },
        );
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            router,
            stores: BTreeMap::new(),
            nodes: BTreeMap::new(),
            brokers: (0..BROKERS).map(|_| Broker::default()).collect(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            acknowledged: Vec::new(),
            trace: Vec::new(),
            next_topic: 0,
        };
        for id in 1..=NODES {
            sim.stores.insert(id, LogStore::default());
            sim.start(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> =
            (1..=NODES).map(|id| (id, BasicNode::new(""))).collect();
        for node in sim.nodes.values() {
            let _ = node.raft.initialize(members.clone()).await;
        }
        sim
    }

    /// Starts a node over its (durable) log store with a fresh state machine.
    async fn start(&mut self, id: NodeId) {
        let state = StateMachine::default();
        let raft = Raft::new(
            id,
            raft_config(),
            self.router.network_for(id),
            self.stores[&id].clone(),
            state.clone(),
        )
        .await
        .expect("raft");
        self.router.add(id, raft.clone()).await;
        self.nodes.insert(id, Node { raft, state });
    }

    async fn crash(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            self.router.remove(id).await;
            let _ = node.raft.shutdown().await;
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {}: {what}\ntrace:\n{}\nreplay with STROM_SIM_SEED={}",
            self.seed,
            self.trace.join("\n"),
            self.seed
        );
    }

    async fn step(&mut self, step: usize) {
        let roll = self.rng.gen_range(0..100);
        let target = self.rng.gen_range(1..=NODES);
        match roll {
            0..=4 => {
                let leader = self
                    .nodes
                    .iter()
                    .find(|(_, n)| n.raft.metrics().borrow().state == ServerState::Leader);
                if let Some((id, _)) = leader {
                    let id = *id;
                    self.trace.push(format!("{step}: crash leader {id}"));
                    self.crash(id).await;
                }
            }
            5..=7 => {
                if self.nodes.contains_key(&target) {
                    self.trace.push(format!("{step}: crash {target}"));
                    self.crash(target).await;
                }
            }
            8..=19 => {
                if !self.nodes.contains_key(&target) {
                    self.trace.push(format!("{step}: restart {target}"));
                    self.start(target).await;
                }
            }
            20..=25 => {
                let other = self.rng.gen_range(1..=NODES);
                if other != target {
                    self.trace.push(format!("{step}: cut {target}-{other}"));
                    self.router.cut(target, other).await;
                }
            }
            26..=33 => {
                self.trace.push(format!("{step}: heal"));
                self.router.heal().await;
            }
            _ => self.write(step).await,
        }
        tokio::time::sleep(Duration::from_millis(STEP_MS)).await;
        self.observe().await;
        self.follow(step).await;
    }

    /// Writes a new topic through whichever node believes it leads.
    async fn write(&mut self, step: usize) {
        let leader = self.nodes.iter().find(|(id, n)| {
            let m = n.raft.metrics().borrow().clone();
            m.state == ServerState::Leader && m.current_leader == Some(**id)
        });
        let Some((id, node)) = leader else {
            return;
        };
        let name = format!("topic-{}", self.next_topic);
        self.next_topic += 1;
        let record = MetadataRecord::Topic {
            name: name.clone(),
            topic_id: uuid::Uuid::from_u128(u128::from(self.next_topic)),
        };
        let write = node.raft.client_write(Command::new(&[record]));
        match tokio::time::timeout(Duration::from_millis(500), write).await {
            Ok(Ok(r)) if r.data.error.is_none() => {
                self.trace.push(format!(
                    "{step}: {id} committed {name} at {}",
                    r.log_id.index
                ));
                self.acknowledged.push(name);
            }
            _ => self
                .trace
                .push(format!("{step}: {id} did not commit {name}")),
        }
    }

    /// Checks one leader per term and that nodes agree on every applied index.
    async fn observe(&mut self) {
        let mut views = Vec::new();
        for (id, node) in &self.nodes {
            let m = node.raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                views.push((*id, m.current_term));
            }
        }
        for (id, term) in views {
            match self.leaders.get(&term) {
                Some(other) if *other != id => {
                    self.fail(format!("two leaders in term {term}: {other} and {id}"))
                }
                _ => {
                    self.leaders.insert(term, id);
                }
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let changes = self.nodes[&id].state.changes_since(0).await;
            if let Changes::Deltas(deltas) = changes {
                for (index, records) in deltas {
                    match self.committed.get(&index) {
                        Some(seen) if *seen != records => self.fail(format!(
                            "node {id} applied {records:?} at {index}, another node {seen:?}"
                        )),
                        Some(_) => {}
                        None => {
                            self.committed.insert(index, records);
                        }
                    }
                }
            }
        }
    }

    /// Each broker asks a random live node for the changes after its index and applies them.
    async fn follow(&mut self, step: usize) {
        for b in 0..BROKERS {
            if self.nodes.is_empty() {
                return;
            }
            let pick = self.rng.gen_range(0..self.nodes.len());
            let (id, node) = self.nodes.iter().nth(pick).expect("a node");
            let id = *id;
            let changes = node.state.changes_since(self.brokers[b].index).await;
            self.apply_to_broker(b, id, step, changes);
        }
    }

    fn apply_to_broker(&mut self, b: usize, from: NodeId, step: usize, changes: Changes) {
        let deltas = match changes {
            Changes::None => return,
            Changes::Deltas(deltas) => deltas,
            Changes::Image { index, .. } => self.fail(format!(
                "broker {b} got a whole image at {index}; none was taken"
            )),
        };
        for (index, records) in deltas {
            let broker = &self.brokers[b];
            if index <= broker.index {
                self.fail(format!(
                    "broker {b} got index {index} after {}",
                    broker.index
                ));
            }
            if self.committed.get(&index).is_some_and(|c| *c != records) {
                self.fail(format!(
                    "broker {b} got other records at {index} from {from}"
                ));
            }
            let image = match broker.image.apply(&records) {
                Ok(image) => image,
                Err(e) => self.fail(format!("broker {b}: {e} at {index}")),
            };
            let broker = &mut self.brokers[b];
            broker.image = image;
            broker.index = index;
            broker.applied.push(index);
        }
        self.trace.push(format!(
            "{step}: broker {b} at {} from {from}",
            self.brokers[b].index
        ));
        // The broker's image is the committed log applied in order up to its index.
        let expected = self
            .committed
            .range(..=self.brokers[b].index)
            .try_fold(MetadataImage::default(), |image, (_, records)| {
                image.apply(records)
            });
        match expected {
            Ok(image) if image.topics == self.brokers[b].image.topics => {}
            other => self.fail(format!(
                "broker {b} image differs from the committed log: {other:?}"
            )),
        }
    }

    /// Heals everything, waits for every node to apply the same log, and checks that every
    /// acknowledged write reached every controller and broker.
    async fn settle(&mut self) {
        self.router.heal().await;
        for id in 1..=NODES {
            if !self.nodes.contains_key(&id) {
                self.start(id).await;
            }
        }
        let mut last = 0;
        for round in 0..400 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.observe().await;
            let indexes: Vec<u64> = self
                .nodes
                .values()
                .map(|n| n.state.subscribe().borrow().index)
                .collect();
            let leader = self
                .nodes
                .values()
                .any(|n| n.raft.metrics().borrow().state == ServerState::Leader);
            last = indexes[0];
            if leader && indexes.iter().all(|i| *i == last) && round > 10 {
                break;
            }
        }
        for b in 0..BROKERS {
            let (id, node) = self.nodes.iter().next().expect("a node");
            let changes = node.state.changes_since(self.brokers[b].index).await;
            let id = *id;
            self.apply_to_broker(b, id, STEPS, changes);
        }
        for (id, node) in &self.nodes {
            let image = node.state.image().await;
            for name in &self.acknowledged {
                if image.topic_by_name(name).is_none() {
                    self.fail(format!("acknowledged {name} missing on node {id}"));
                }
            }
        }
        for (b, broker) in self.brokers.iter().enumerate() {
            for name in &self.acknowledged {
                if broker.image.topic_by_name(name).is_none() {
                    self.fail(format!(
                        "acknowledged {name} missing on broker {b} at {} (last {last})",
                        broker.index
                    ));
                }
            }
        }
        for node in self.nodes.values() {
            let _ = node.raft.shutdown().await;
        }
    }
}

fn run(seed: u64) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut sim = Sim::new(seed).await;
        for step in 0..STEPS {
            sim.step(step).await;
        }
        sim.settle().await;
        let count = |what: &str| sim.trace.iter().filter(|t| t.contains(what)).count();
        eprintln!(
            "seed {seed}: {} writes acknowledged, {} terms, {} crashes, {} cuts, {} broker catch-ups",
            sim.acknowledged.len(),
            sim.leaders.len(),
            count(": crash"),
            count(": cut"),
            count(": broker")
        );
        assert!(
            !sim.acknowledged.is_empty(),
            "seed {seed}: nothing was ever committed:\n{}",
            sim.trace.join("\n")
        );
        sim.trace
    })
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("STROM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("STROM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    (0..count).collect()
}

#[test]
fn the_quorum_keeps_one_leader_per_term_and_brokers_apply_every_committed_record_in_order() {
    for seed in seeds() {
        run(seed);
    }
}

#[test]
fn a_seed_replays_the_same_run() {
    assert_eq!(run(7), run(7), "the same seed gives the same run");
}
