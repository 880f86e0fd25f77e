//! Transaction verification on the partition leader (KIP-890 part 1, Kafka's
//! `AddPartitionsToTxnManager`, `transaction.partition.verification.enable`): before a
//! producer's first transactional batch of a transaction is appended to a partition, the
//! leader asks the transaction coordinator of the producer's transactional id —
//! AddPartitionsToTxn v4 with `verify_only` — whether the partition is in the producer's
//! ongoing transaction, and appends only with the guard the log handed out for that
//! question ([`strom_storage::VerificationGuard`]). A batch the coordinator does not know
//! of (one that arrives after its transaction ended, or one sent without
//! AddPartitionsToTxn) is answered INVALID_TXN_STATE and never opens a transaction that
//! no coordinator will end, which would hold the partition's last stable offset back for
//! good.
//!
//! Questions to one coordinator broker go one request at a time over one connection, each
//! request carrying every question that queued meanwhile, one per transactional id (a
//! second question for the same id waits for the next request). A coordinator on this
//! broker is asked directly.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use strom_coordinator::transaction::TopicPartition;
use strom_coordinator::txn_records::group_by_topic;
use strom_metadata::MetadataImage;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::config::BrokerConfig;
use crate::dynamic_config::{BrokerDefaults, DynamicBrokerConfigs};
use crate::peer::PeerConnection;
use crate::transaction_state;
use crate::Broker;

/// The broker config that turns verification on (a dynamic one).
pub const ENABLE_KEY: &str = "transaction.partition.verification.enable";
/// The AddPartitionsToTxn version brokers send (the first with `verify_only`).
const VERSION: i16 = 4;
/// The sender's client id, followed by this broker's id.
const CLIENT_ID_PREFIX: &str = "strom-txn-verifier-";
/// Longest wait for a connection or an answer (Kafka's `request.timeout.ms` default).
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Largest answer accepted (an error code per partition asked about).
const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Most transactional ids asked about in one request.
const QUESTIONS_PER_REQUEST_MAX: usize = 1000;

/// Each partition asked about and the coordinator's answer for it: 0 when it is in the
/// producer's ongoing transaction, else the coordinator's error code.
pub type Answers = Vec<(TopicPartition, i16)>;

/// One producer's question to a remote coordinator.
struct Question {
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: BTreeSet<TopicPartition>,
    endpoint: (String, u16),
    answer: oneshot::Sender<Answers>,
}

/// The leader side of transaction verification, one per broker.
pub struct Verifier {
    /// `transaction.partition.verification.enable` as last applied.
    enabled: AtomicBool,
    client_id: String,
    /// One queue per coordinator broker, each drained by its own task.
    queues: parking_lot::Mutex<HashMap<i32, mpsc::UnboundedSender<Question>>>,
}

impl Verifier {
    pub fn new(config: &BrokerConfig) -> Verifier {
        Verifier {
            enabled: AtomicBool::new(config.transaction_partition_verification_enable),
            client_id: format!("{CLIENT_ID_PREFIX}{}", config.node_id),
            queues: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Whether transactional batches are verified.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Follows the dynamic config in newly applied metadata (per broker, cluster default,
    /// static, default).
    pub fn refresh(&self, config: &BrokerConfig, image: &MetadataImage) {
        let dynamic = DynamicBrokerConfigs::from_image(image, config.node_id);
        let enabled = match BrokerDefaults::new(config, &dynamic).lookup(ENABLE_KEY) {
            Some((value, _)) => value.eq_ignore_ascii_case("true"),
            None => config.transaction_partition_verification_enable,
        };
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Asks the coordinator of `transactional_id` whether `partitions` are in the
    /// transaction of `producer_id` in `producer_epoch`.
    pub async fn verify(
        &self,
        broker: &Broker,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: BTreeSet<TopicPartition>,
    ) -> Answers {
        let all = |code: E| {
            partitions
                .iter()
                .map(|tp| (tp.clone(), code.code()))
                .collect()
        };
        let Some(state_topic) = broker.topics.get(transaction_state::TOPIC) else {
            // No transactional producer exists without the topic.
            return all(E::CoordinatorNotAvailable);
        };
        let (coordinator, _) = state_topic.leader_of(broker.txns.partition_for(transactional_id));
        if coordinator == broker.node_id {
            return crate::api::txn::verify_local(
                broker,
                transactional_id,
                producer_id,
                producer_epoch,
                &partitions,
            );
        }
        let Some(endpoint) = broker.topics.live_endpoint(coordinator) else {
            return all(E::CoordinatorNotAvailable);
        };
        let (answer, answered) = oneshot::channel();
        let question = Question {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
            partitions: partitions.clone(),
            endpoint,
            answer,
        };
        {
            let mut queues = self.queues.lock();
            let queue = queues.entry(coordinator).or_insert_with(|| {
                let (queue, questions) = mpsc::unbounded_channel();
                tokio::spawn(ask_loop(coordinator, self.client_id.clone(), questions));
                queue
            });
            if queue.send(question).is_err() {
                queues.remove(&coordinator);
                return all(E::NetworkException);
            }
        }
        answered.await.unwrap_or_else(|_| all(E::NetworkException))
    }
}

/// What a produce answers for a partition whose verification failed with `code` (Kafka's
/// translation for producers, which do not expect coordinator errors from a produce): a
/// fenced producer's INVALID_PRODUCER_EPOCH; INVALID_TXN_STATE for a partition outside the
/// transaction; NOT_ENOUGH_REPLICAS, which producers retry without refreshing metadata,
/// when the coordinator could not answer (moving, loading, unreachable, or the
/// transaction ending).
pub fn produce_error(code: i16) -> (i16, Option<String>) {
    let code = if code == E::ProducerFenced.code() {
        E::InvalidProducerEpoch.code()
    } else if code == E::TransactionAbortable.code() || code == E::ClusterAuthorizationFailed.code()
    {
        E::InvalidTxnState.code()
    } else {
        code
    };
    let underlying = [
        E::NetworkException,
        E::CoordinatorLoadInProgress,
        E::CoordinatorNotAvailable,
        E::NotCoordinator,
        E::ConcurrentTransactions,
    ]
    .into_iter()
    .find(|e| e.code() == code);
    if let Some(underlying) = underlying {
        return (
            E::NotEnoughReplicas.code(),
            Some(format!(
                "Unable to verify the partition has been added to the transaction. Underlying \
                 error: {}",
                kafka_error_name(underlying)
            )),
        );
    }
    if code == E::InvalidTxnState.code() {
        return (
            code,
            Some("Partition was not added to the transaction".into()),
        );
    }
    (code, None)
}

/// Kafka's name of an error (`Errors.name()`).
fn kafka_error_name(e: E) -> String {
    let mut name = String::new();
    for (i, c) in format!("{e:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Sends the questions for one coordinator broker, one request at a time, until the
/// verifier goes.
async fn ask_loop(node: i32, client_id: String, mut questions: mpsc::UnboundedReceiver<Question>) {
    let mut connection = PeerConnection::default();
    let mut waiting: VecDeque<Question> = VecDeque::new();
    let mut correlation_id: i32 = 0;
    loop {
        if waiting.is_empty() {
            match questions.recv().await {
                Some(q) => waiting.push_back(q),
                None => return,
            }
        }
        while let Ok(q) = questions.try_recv() {
            waiting.push_back(q);
        }
        let mut batch = Vec::new();
        let mut ids = HashSet::new();
        for q in std::mem::take(&mut waiting) {
            if batch.len() < QUESTIONS_PER_REQUEST_MAX && ids.insert(q.transactional_id.clone()) {
                batch.push(q);
            } else {
                waiting.push_back(q);
            }
        }
        correlation_id = correlation_id.wrapping_add(1);
        match ask(&mut connection, &client_id, correlation_id, &batch).await {
            Ok(response) => answer(batch, &response),
            Err(e) => {
                warn!(coordinator = node, error = %e, "transaction verification failed");
                for q in batch {
                    let answers = q
                        .partitions
                        .iter()
                        .map(|tp| (tp.clone(), E::NetworkException.code()))
                        .collect();
                    let _ = q.answer.send(answers);
                }
            }
        }
    }
}

/// One AddPartitionsToTxn (`verify_only`) for `batch`, to the newest question's endpoint.
async fn ask(
    connection: &mut PeerConnection,
    client_id: &str,
    correlation_id: i32,
    batch: &[Question],
) -> anyhow::Result<AddPartitionsToTxnResponse> {
    let endpoint = batch
        .last()
        .map(|q| q.endpoint.clone())
        .ok_or_else(|| anyhow::anyhow!("no question"))?;
    let request = AddPartitionsToTxnRequest::default().with_transactions(
        batch
            .iter()
            .map(|q| {
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_string(
                        q.transactional_id.clone(),
                    )))
                    .with_producer_id(ProducerId(q.producer_id))
                    .with_producer_epoch(q.producer_epoch)
                    .with_verify_only(true)
                    .with_topics(topics_of(&q.partitions))
            })
            .collect(),
    );
    connection
        .exchange(
            endpoint,
            ApiKey::AddPartitionsToTxn,
            VERSION,
            client_id,
            correlation_id,
            &request,
            RESPONSE_BYTES_MAX,
            Duration::from_millis(REQUEST_TIMEOUT_MS),
        )
        .await
}

fn topics_of(partitions: &BTreeSet<TopicPartition>) -> Vec<AddPartitionsToTxnTopic> {
    group_by_topic(partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(partitions)
        })
        .collect()
}

/// Hands each question its answers: a request-level error answers all of it; a partition
/// the coordinator left out of its answer is not verified.
fn answer(batch: Vec<Question>, response: &AddPartitionsToTxnResponse) {
    for q in batch {
        let result = response
            .results_by_transaction
            .iter()
            .find(|r| r.transactional_id.as_str() == q.transactional_id);
        let answers = q
            .partitions
            .iter()
            .map(|tp| {
                let code = if response.error_code != 0 {
                    response.error_code
                } else {
                    result
                        .and_then(|r| r.topic_results.iter().find(|t| t.name.as_str() == tp.0))
                        .and_then(|t| {
                            t.results_by_partition
                                .iter()
                                .find(|p| p.partition_index == tp.1)
                        })
                        .map_or(E::NetworkException.code(), |p| p.partition_error_code)
                };
                (tp.clone(), code)
            })
            .collect();
        let _ = q.answer.send(answers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_errors_become_the_errors_producers_handle() {
        let cases = [
            (0, 0, false),
            (
                E::ProducerFenced.code(),
                E::InvalidProducerEpoch.code(),
                false,
            ),
            (
                E::TransactionAbortable.code(),
                E::InvalidTxnState.code(),
                true,
            ),
            (E::InvalidTxnState.code(), E::InvalidTxnState.code(), true),
            (
                E::ClusterAuthorizationFailed.code(),
                E::InvalidTxnState.code(),
                true,
            ),
            (
                E::NetworkException.code(),
                E::NotEnoughReplicas.code(),
                true,
            ),
            (
                E::CoordinatorLoadInProgress.code(),
                E::NotEnoughReplicas.code(),
                true,
            ),
            (
                E::CoordinatorNotAvailable.code(),
                E::NotEnoughReplicas.code(),
                true,
            ),
            (E::NotCoordinator.code(), E::NotEnoughReplicas.code(), true),
            (
                E::ConcurrentTransactions.code(),
                E::NotEnoughReplicas.code(),
                true,
            ),
            (
                E::InvalidProducerIdMapping.code(),
                E::InvalidProducerIdMapping.code(),
                false,
            ),
        ];
        for (from, to, with_message) in cases {
            let (code, message) = produce_error(from);
            assert_eq!(code, to, "{from}");
            assert_eq!(message.is_some(), with_message, "{from}");
        }
        assert_eq!(
            produce_error(E::CoordinatorLoadInProgress.code())
                .1
                .unwrap(),
            "Unable to verify the partition has been added to the transaction. Underlying \
             error: COORDINATOR_LOAD_IN_PROGRESS"
        );
    }

    #[test]
    fn one_request_carries_each_partition_under_its_topic() {
        let partitions: BTreeSet<TopicPartition> =
            [("a".into(), 2), ("a".into(), 0), ("b".into(), 1)].into();
        let topics = topics_of(&partitions);
        let got: Vec<(String, Vec<i32>)> = topics
            .iter()
            .map(|t| (t.name.to_string(), t.partitions.clone()))
            .collect();
        assert_eq!(
            got,
            vec![("a".to_string(), vec![0, 2]), ("b".to_string(), vec![1])]
        );
    }
}
