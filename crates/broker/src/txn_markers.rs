//! How the transaction marker sender ([`strom_coordinator::txn_markers`]) reaches partition
//! leaders from this broker: the leader and its endpoint come from the applied metadata; a
//! WriteTxnMarkers (v1) goes to each other broker over one connection per broker (Kafka's
//! `TransactionMarkerChannelManager` network client), and partitions this broker leads
//! itself are written locally through [`crate::api::write_txn_markers::write_marker`] —
//! what the leader side of the API serves remote requests with — without the network.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use strom_coordinator::transaction::BoxFuture;
use strom_coordinator::txn_markers::{
    MarkerDestination, MarkerResults, MarkerTransport, TxnMarker,
};

use crate::peer::PeerConnection;
use crate::Broker;

/// The WriteTxnMarkers version sent (the only one Kafka 4 serves).
pub const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// The sender's client id, followed by this broker's id (Kafka's
/// `broker-<id>-txn-marker-sender`).
pub const CLIENT_ID_PREFIX: &str = "strom-txn-marker-sender-";
/// Longest wait for a connection or an answer (Kafka's `request.timeout.ms` default).
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Largest WriteTxnMarkers answer accepted (an error code per partition).
const RESPONSE_BYTES_MAX: usize = 16 << 20;

/// The marker sender's transport on a broker.
pub struct BrokerMarkerTransport {
    broker: Arc<Broker>,
    /// One connection per destination broker; the sender has at most one request in flight
    /// to each, so the lock is never contended.
    connections: parking_lot::Mutex<HashMap<i32, Arc<tokio::sync::Mutex<PeerConnection>>>>,
    correlation_id: AtomicI32,
    client_id: String,
}

impl BrokerMarkerTransport {
    pub fn new(broker: Arc<Broker>) -> BrokerMarkerTransport {
        let client_id = format!("{CLIENT_ID_PREFIX}{}", broker.node_id);
        BrokerMarkerTransport {
            broker,
            connections: parking_lot::Mutex::new(HashMap::new()),
            correlation_id: AtomicI32::new(0),
            client_id,
        }
    }

    async fn send_remote(
        &self,
        broker_id: i32,
        request: &WriteTxnMarkersRequest,
    ) -> Result<WriteTxnMarkersResponse, String> {
        let endpoint = self.broker.topics.live_endpoint(broker_id);
        let Some((host, port)) = endpoint else {
            return Err(format!("broker {broker_id} is not live"));
        };
        let connection = Arc::clone(self.connections.lock().entry(broker_id).or_default());
        let correlation_id = self.correlation_id.fetch_add(1, Ordering::Relaxed);
        let mut connection = connection.lock().await;
        connection
            .exchange(
                (host, port),
                ApiKey::WriteTxnMarkers,
                WRITE_TXN_MARKERS_VERSION,
                &self.client_id,
                correlation_id,
                request,
                RESPONSE_BYTES_MAX,
                Duration::from_millis(REQUEST_TIMEOUT_MS),
            )
            .await
            .map_err(|e| format!("WriteTxnMarkers to broker {broker_id}: {e}"))
    }
}

/// The request carrying the markers.
pub fn request(markers: Vec<TxnMarker>) -> WriteTxnMarkersRequest {
    let markers = markers
        .into_iter()
        .map(|m| {
            let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in m.partitions {
                topics.entry(topic).or_default().push(partition);
            }
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(m.producer_id))
                .with_producer_epoch(m.producer_epoch)
                .with_transaction_result(m.commit)
                .with_coordinator_epoch(m.coordinator_epoch)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(name, partitions)| {
                            WritableTxnMarkerTopic::default()
                                .with_name(TopicName(StrBytes::from_string(name)))
                                .with_partition_indexes(partitions)
                        })
                        .collect(),
                )
        })
        .collect();
    WriteTxnMarkersRequest::default().with_markers(markers)
}

/// The error code of every partition of the answer, by producer id.
pub fn results(response: &WriteTxnMarkersResponse) -> MarkerResults {
    response
        .markers
        .iter()
        .map(|m| {
            let partitions = m
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(move |p| ((t.name.to_string(), p.partition_index), p.error_code))
                })
                .collect();
            (m.producer_id.0, partitions)
        })
        .collect()
}

/// Writes markers to partitions this broker leads, as a WriteTxnMarkers from itself would.
async fn write_locally(broker: &Broker, markers: Vec<TxnMarker>) -> MarkerResults {
    let mut results = Vec::with_capacity(markers.len());
    for marker in markers {
        let codes = crate::api::write_txn_markers::write_marker(broker, &marker).await;
        results.push((
            marker.producer_id,
            marker.partitions.into_iter().zip(codes).collect(),
        ));
    }
    results
}

impl MarkerTransport for BrokerMarkerTransport {
    fn destination(&self, topic: &str, partition: i32) -> MarkerDestination {
        let Some(t) = self.broker.topics.get(topic) else {
            return MarkerDestination::Gone;
        };
        let Some(state) = usize::try_from(partition)
            .ok()
            .and_then(|i| t.states.get(i))
        else {
            return MarkerDestination::Gone;
        };
        if state.leader < 0 {
            return MarkerDestination::Unavailable;
        }
        let image = self.broker.topics.image();
        match image.image.brokers.get(&state.leader) {
            Some(b) if !b.fenced => MarkerDestination::Broker(b.id),
            _ => MarkerDestination::Unavailable,
        }
    }

    fn send(
        &self,
        broker_id: i32,
        markers: Vec<TxnMarker>,
    ) -> BoxFuture<'_, Result<MarkerResults, String>> {
        Box::pin(async move {
            if broker_id == self.broker.node_id {
                return Ok(write_locally(&self.broker, markers).await);
            }
            let response = self.send_remote(broker_id, &request(markers)).await?;
            Ok(results(&response))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };

    #[test]
    fn markers_become_one_entry_per_transaction_with_partitions_by_topic_and_answers_come_back_by_producer(
    ) {
        let req = request(vec![
            TxnMarker {
                producer_id: 7,
                producer_epoch: 3,
                commit: true,
                coordinator_epoch: 5,
                partitions: vec![("b".into(), 1), ("a".into(), 2), ("b".into(), 0)],
            },
            TxnMarker {
                producer_id: 8,
                producer_epoch: 0,
                commit: false,
                coordinator_epoch: 5,
                partitions: vec![("a".into(), 0)],
            },
        ]);
        assert_eq!(req.markers.len(), 2);
        let m = &req.markers[0];
        assert_eq!(
            (
                m.producer_id.0,
                m.producer_epoch,
                m.transaction_result,
                m.coordinator_epoch
            ),
            (7, 3, true, 5)
        );
        let topics: Vec<(&str, &[i32])> = m
            .topics
            .iter()
            .map(|t| (t.name.as_str(), t.partition_indexes.as_slice()))
            .collect();
        assert_eq!(topics, vec![("a", &[2][..]), ("b", &[1, 0][..])]);
        assert!(!req.markers[1].transaction_result);

        let answer = WriteTxnMarkersResponse::default().with_markers(vec![
            WritableTxnMarkerResult::default()
                .with_producer_id(ProducerId(7))
                .with_topics(vec![WritableTxnMarkerTopicResult::default()
                    .with_name(TopicName(StrBytes::from_static_str("b")))
                    .with_partitions(vec![
                        WritableTxnMarkerPartitionResult::default().with_partition_index(1),
                        WritableTxnMarkerPartitionResult::default()
                            .with_partition_index(0)
                            .with_error_code(6),
                    ])]),
        ]);
        assert_eq!(
            results(&answer),
            vec![(
                7,
                vec![(("b".to_string(), 1), 0), (("b".to_string(), 0), 6)]
            )]
        );
    }
}
