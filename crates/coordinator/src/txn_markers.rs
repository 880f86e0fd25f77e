//! Writing the markers of completing transactions (Kafka's
//! `TransactionMarkerChannelManager` and its completion handler): for every partition of a
//! transaction in PrepareCommit or PrepareAbort, a WriteTxnMarkers to the partition's
//! current leader, the partitions of all transactions grouped per broker with at most one
//! request in flight to each; once every partition has its marker, the transaction's
//! CompleteCommit or CompleteAbort is written.
//!
//! Errors as Kafka handles them: a lost connection or a partition that moved
//! (NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS, …) is retried after
//! [`TxnConfig::retry_backoff_ms`] with the leader the metadata names then; a partition
//! whose topic is gone is dropped from the transaction; INVALID_PRODUCER_EPOCH or
//! TRANSACTION_COORDINATOR_FENCED means a newer producer or coordinator took over and the
//! transaction's markers stop; UNSUPPORTED_FOR_MESSAGE_FORMAT counts as written. Markers of
//! a `__transaction_state` partition stop when it is unloaded, and a coordinator that loads
//! it resumes them.
//!
//! The network is behind [`MarkerTransport`]: the broker sends the requests (or writes
//! locally for partitions it leads itself).
//!
//! [`TxnConfig::retry_backoff_ms`]: crate::transaction::TxnConfig

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::transaction::{
    BoxFuture, TopicPartition, TransactionCoordinator, TransactionMetadata, TxnState,
};

/// Where the markers of a partition go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerDestination {
    /// The leader's broker id.
    Broker(i32),
    /// The partition exists but has no reachable leader now: try again later.
    Unavailable,
    /// The topic or partition no longer exists: no marker is needed.
    Gone,
}

/// One transaction's marker for the partitions a broker leads (an entry of
/// WriteTxnMarkers v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// true: commit, false: abort (WriteTxnMarkers' `transaction_result`).
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub partitions: Vec<TopicPartition>,
}

/// The error code of every partition of one marker, by producer id.
pub type MarkerResults = Vec<(i64, Vec<(TopicPartition, i16)>)>;

/// How the sender reaches partition leaders.
pub trait MarkerTransport: Send + Sync + 'static {
    /// The current leader of a partition, by the metadata this broker has applied.
    fn destination(&self, topic: &str, partition: i32) -> MarkerDestination;

    /// Sends one WriteTxnMarkers request to a broker (this broker itself included) and
    /// returns its answer, or `Err` when none came (connection refused or lost, timed out).
    fn send(
        &self,
        broker: i32,
        markers: Vec<TxnMarker>,
    ) -> BoxFuture<'_, Result<MarkerResults, String>>;
}

#[derive(Debug, Clone, Copy)]
struct PartitionProgress {
    in_flight: bool,
    /// A retry waits until then.
    not_before: Option<Instant>,
}

/// A transaction whose markers are being written (Kafka's `PendingCompleteTxn`).
#[derive(Debug)]
pub(crate) struct PendingMarkers {
    pub(crate) txn_partition: i32,
    pub(crate) coordinator_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    /// The partitions still without their marker.
    partitions: BTreeMap<TopicPartition, PartitionProgress>,
    /// Written once every marker is: CompleteCommit or CompleteAbort.
    pub(crate) complete: TransactionMetadata,
}

impl PendingMarkers {
    /// The markers of a prepared transaction (`prepared` is in PrepareCommit or
    /// PrepareAbort with its partitions) and the completion to write after them.
    pub(crate) fn new(
        txn_partition: i32,
        coordinator_epoch: i32,
        prepared: &TransactionMetadata,
        complete: TransactionMetadata,
    ) -> PendingMarkers {
        PendingMarkers {
            txn_partition,
            coordinator_epoch,
            producer_id: prepared.producer_id,
            producer_epoch: prepared.producer_epoch,
            commit: prepared.state == TxnState::PrepareCommit,
            partitions: prepared
                .partitions
                .iter()
                .map(|tp| {
                    (
                        tp.clone(),
                        PartitionProgress {
                            in_flight: false,
                            not_before: None,
                        },
                    )
                })
                .collect(),
            complete,
        }
    }
}

/// Markers of one transaction sent in a request.
#[derive(Debug)]
struct Sent {
    transactional_id: String,
    coordinator_epoch: i32,
    producer_id: i64,
    partitions: Vec<TopicPartition>,
}

/// What one planning pass found to do.
#[derive(Default)]
struct Plan {
    requests: BTreeMap<i32, (Vec<TxnMarker>, Vec<Sent>)>,
    /// Transactions whose markers are all written: (coordinator epoch, completion).
    completions: Vec<(i32, TransactionMetadata)>,
    next_retry: Option<Instant>,
}

/// How the sender handles a partition's error code (Kafka's completion handler).
enum Outcome {
    Written,
    Retry,
    /// A newer producer or coordinator took over: stop this transaction's markers.
    Fenced,
}

fn outcome(code: i16) -> Outcome {
    let is = |e: E| code == e.code();
    if code == 0 || is(E::UnsupportedForMessageFormat) || is(E::UnsupportedVersion) {
        Outcome::Written
    } else if is(E::InvalidProducerEpoch) || is(E::TransactionCoordinatorFenced) {
        Outcome::Fenced
    } else {
        if !(is(E::UnknownTopicOrPartition)
            || is(E::NotLeaderOrFollower)
            || is(E::NotEnoughReplicas)
            || is(E::NotEnoughReplicasAfterAppend)
            || is(E::RequestTimedOut)
            || is(E::KafkaStorageError))
        {
            // Kafka treats these as fatal; retrying keeps the transaction visible.
            error!(
                code,
                "unexpected error writing a transaction marker; retrying"
            );
        }
        Outcome::Retry
    }
}

impl TransactionCoordinator {
    /// Sends the markers of completing transactions until `shutdown` flips to true. Runs
    /// as one task per broker.
    pub async fn run_marker_sender(
        self: Arc<Self>,
        transport: Arc<dyn MarkerTransport>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut in_flight: JoinSet<(i32, Vec<Sent>, Result<MarkerResults, String>)> =
            JoinSet::new();
        let mut busy: HashSet<i32> = HashSet::new();
        loop {
            let added = self.markers_added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let plan = self.plan_markers(&*transport, &busy);
            for (coordinator_epoch, complete) in plan.completions {
                tokio::spawn(Arc::clone(&self).write_completion(coordinator_epoch, complete));
            }
            for (broker, (markers, sent)) in plan.requests {
                busy.insert(broker);
                let transport = Arc::clone(&transport);
                in_flight.spawn(async move {
                    let answer = transport.send(broker, markers).await;
                    (broker, sent, answer)
                });
            }
            let retry = plan.next_retry;
            tokio::select! {
                _ = &mut added => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                    Ok((broker, sent, answer)) => {
                        busy.remove(&broker);
                        self.on_marker_answer(broker, sent, answer);
                    }
                    Err(e) => {
                        // A panicking transport: its broker stays busy, the others go on.
                        error!(error = %e, "a transaction marker request failed");
                    }
                },
                _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Under the lock: the markers to send now, grouped by broker (skipping brokers with a
    /// request in flight), partitions dropped whose topic is gone, completed transactions.
    fn plan_markers(&self, transport: &dyn MarkerTransport, busy: &HashSet<i32>) -> Plan {
        let now = Instant::now();
        let backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let mut plan = Plan::default();
        let mut state = self.state.lock();
        let mut done = Vec::new();
        for (id, pending) in state.markers.iter_mut() {
            let mut by_broker: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
            pending.partitions.retain(|tp, progress| {
                if progress.in_flight {
                    return true;
                }
                if let Some(at) = progress.not_before.filter(|at| *at > now) {
                    plan.next_retry = Some(plan.next_retry.map_or(at, |r| r.min(at)));
                    return true;
                }
                match transport.destination(&tp.0, tp.1) {
                    MarkerDestination::Gone => {
                        info!(transactional_id = %id, topic = %tp.0, partition = tp.1, "no marker for a deleted partition");
                        false
                    }
                    MarkerDestination::Unavailable => {
                        let at = now + backoff;
                        progress.not_before = Some(at);
                        plan.next_retry = Some(plan.next_retry.map_or(at, |r| r.min(at)));
                        true
                    }
                    MarkerDestination::Broker(b) if busy.contains(&b) => true,
                    MarkerDestination::Broker(b) => {
                        progress.in_flight = true;
                        progress.not_before = None;
                        by_broker.entry(b).or_default().push(tp.clone());
                        true
                    }
                }
            });
            for (broker, partitions) in by_broker {
                let (markers, sent) = plan.requests.entry(broker).or_default();
                markers.push(TxnMarker {
                    producer_id: pending.producer_id,
                    producer_epoch: pending.producer_epoch,
                    commit: pending.commit,
                    coordinator_epoch: pending.coordinator_epoch,
                    partitions: partitions.clone(),
                });
                sent.push(Sent {
                    transactional_id: id.clone(),
                    coordinator_epoch: pending.coordinator_epoch,
                    producer_id: pending.producer_id,
                    partitions,
                });
            }
            if pending.partitions.is_empty() {
                done.push(id.clone());
            }
        }
        for id in done {
            if let Some(pending) = state.markers.remove(&id) {
                plan.completions
                    .push((pending.coordinator_epoch, pending.complete));
            }
        }
        plan
    }

    /// Applies a WriteTxnMarkers answer (or its absence) to the transactions it carried.
    fn on_marker_answer(
        &self,
        broker: i32,
        sent: Vec<Sent>,
        answer: Result<MarkerResults, String>,
    ) {
        let retry_at = Instant::now() + Duration::from_millis(self.config.retry_backoff_ms);
        if let Err(e) = &answer {
            debug!(broker, error = %e, "transaction markers got no answer; retrying");
        }
        let mut state = self.state.lock();
        for s in sent {
            let Some(pending) = state.markers.get_mut(&s.transactional_id).filter(|p| {
                p.coordinator_epoch == s.coordinator_epoch && p.producer_id == s.producer_id
            }) else {
                // Unloaded, reloaded or fenced meanwhile.
                continue;
            };
            let codes: HashMap<&TopicPartition, i16> = match &answer {
                Ok(results) => results
                    .iter()
                    .filter(|(pid, _)| *pid == s.producer_id)
                    .flat_map(|(_, ps)| ps.iter().map(|(tp, code)| (tp, *code)))
                    .collect(),
                Err(_) => HashMap::new(),
            };
            let mut fenced = false;
            for tp in &s.partitions {
                let code = codes.get(tp).copied();
                let outcome = match code {
                    Some(code) => outcome(code),
                    None => Outcome::Retry,
                };
                match outcome {
                    Outcome::Written => {
                        pending.partitions.remove(tp);
                    }
                    Outcome::Retry => {
                        if let Some(p) = pending.partitions.get_mut(tp) {
                            p.in_flight = false;
                            p.not_before = Some(retry_at);
                        }
                    }
                    Outcome::Fenced => {
                        info!(
                            transactional_id = %s.transactional_id,
                            topic = %tp.0,
                            partition = tp.1,
                            code = code.unwrap_or_default(),
                            "transaction markers fenced; no more are sent"
                        );
                        fenced = true;
                    }
                }
            }
            if fenced {
                state.markers.remove(&s.transactional_id);
            }
        }
    }

    /// Writes CompleteCommit or CompleteAbort once every marker is written, retrying while
    /// the log is unavailable (COORDINATOR_NOT_AVAILABLE) as long as this coordinator still
    /// owns the partition in the same epoch.
    async fn write_completion(
        self: Arc<Self>,
        coordinator_epoch: i32,
        complete: TransactionMetadata,
    ) {
        let not_available = E::CoordinatorNotAvailable.code();
        let backoff = Duration::from_millis(self.config.retry_backoff_ms);
        loop {
            match self
                .write_transition(coordinator_epoch, complete.clone(), Some(not_available))
                .await
            {
                Ok(()) => {
                    debug!(transactional_id = %complete.transactional_id, state = ?complete.state, "transaction completed");
                    return;
                }
                Err(code) if code == not_available => tokio::time::sleep(backoff).await,
                Err(code) => {
                    warn!(transactional_id = %complete.transactional_id, code, "not completing the transaction");
                    return;
                }
            }
        }
    }

    /// How many transactions have markers still to write.
    pub fn pending_marker_count(&self) -> usize {
        self.state.lock().markers.len()
    }
}
