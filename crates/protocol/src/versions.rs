//! The API versions Strom implements. A version is listed only when every field of it is
//! honoured (DESIGN.md); the table is the single source for ApiVersions and for refusing
//! requests at unsupported versions.

use kafka_protocol::messages::ApiKey;

/// One API: the versions advertised in ApiVersions and the versions actually served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSupport {
    pub key: ApiKey,
    /// Lowest version advertised in ApiVersions.
    pub advertised_min: i16,
    /// Lowest version served; may be above `advertised_min` (see Produce).
    pub served_min: i16,
    pub max: i16,
}

/// Everything Strom serves.
///
/// Produce advertises v0–v2 but serves only v3+ (message format v2), exactly as Kafka 4 does
/// (KAFKA-18659): librdkafka's compression feature detection looks for Produce v0..v2 and
/// otherwise silently produces uncompressed; clients pick the highest common version, so
/// nobody actually sends v0–v2.
pub const SUPPORTED: &[ApiSupport] = &[
    api(ApiKey::Produce, 0, 3, 11),
    api(ApiKey::Fetch, 4, 4, 17),
    api(ApiKey::ListOffsets, 1, 1, 9),
    api(ApiKey::Metadata, 0, 0, 12),
    api(ApiKey::OffsetCommit, 2, 2, 9),
    api(ApiKey::OffsetFetch, 1, 1, 9),
    api(ApiKey::FindCoordinator, 0, 0, 6),
    api(ApiKey::JoinGroup, 0, 0, 9),
    api(ApiKey::Heartbeat, 0, 0, 4),
    api(ApiKey::LeaveGroup, 0, 0, 5),
    api(ApiKey::SyncGroup, 0, 0, 5),
    api(ApiKey::DescribeGroups, 0, 0, 5),
    api(ApiKey::ListGroups, 0, 0, 5),
    api(ApiKey::ApiVersions, 0, 0, 4),
    api(ApiKey::CreateTopics, 2, 2, 7),
    api(ApiKey::DeleteTopics, 1, 1, 6),
    api(ApiKey::DeleteRecords, 0, 0, 2),
    api(ApiKey::DescribeClientQuotas, 0, 0, 1),
    api(ApiKey::AlterClientQuotas, 0, 0, 1),
    api(ApiKey::ListConfigResources, 0, 0, 1),
    api(ApiKey::DescribeConfigs, 1, 1, 4),
    api(ApiKey::AlterConfigs, 0, 0, 2),
    api(ApiKey::IncrementalAlterConfigs, 0, 0, 1),
    api(ApiKey::DescribeLogDirs, 1, 1, 4),
    api(ApiKey::DescribeTopicPartitions, 0, 0, 0),
    api(ApiKey::DescribeCluster, 0, 0, 1),
    api(ApiKey::CreatePartitions, 0, 0, 3),
    api(ApiKey::DescribeQuorum, 0, 0, 2),
    api(ApiKey::OffsetForLeaderEpoch, 2, 2, 4),
    api(ApiKey::ElectLeaders, 0, 0, 2),
    api(ApiKey::AlterPartitionReassignments, 0, 0, 1),
    api(ApiKey::ListPartitionReassignments, 0, 0, 0),
    api(ApiKey::DeleteGroups, 0, 0, 2),
    api(ApiKey::OffsetDelete, 0, 0, 0),
    api(ApiKey::TxnOffsetCommit, 0, 0, 4),
    api(ApiKey::WriteTxnMarkers, 1, 1, 1),
    api(ApiKey::ConsumerGroupHeartbeat, 0, 0, 1),
    api(ApiKey::ConsumerGroupDescribe, 0, 0, 1),
    // InitProducerId v5: KIP-360 producer id and epoch from v3, TRANSACTION_ABORTABLE
    // understood from v5 (v6 is KIP-939's two-phase commit).
    api(ApiKey::InitProducerId, 0, 0, 5),
    // v0-v3 from clients, v4-v5 batched from partition leaders (verify_only, KIP-890 part 1).
    api(ApiKey::AddPartitionsToTxn, 0, 0, 5),
    api(ApiKey::AddOffsetsToTxn, 0, 0, 4),
    // v5 bumps the epoch on every transaction (KIP-890 part 2, transaction.version 2),
    // which Strom does not do.
    api(ApiKey::EndTxn, 0, 0, 4),
    api(ApiKey::DescribeTransactions, 0, 0, 0),
    // v2 adds a transactional id pattern filter.
    api(ApiKey::ListTransactions, 0, 0, 1),
    api(ApiKey::DescribeProducers, 0, 0, 0),
];

const fn api(key: ApiKey, advertised_min: i16, served_min: i16, max: i16) -> ApiSupport {
    ApiSupport {
        key,
        advertised_min,
        served_min,
        max,
    }
}

/// The support entry of an API key, if Strom serves it at all.
pub fn support(api_key: i16) -> Option<&'static ApiSupport> {
    SUPPORTED.iter().find(|s| s.key as i16 == api_key)
}

/// Whether a request of this key and version can be served.
pub fn is_served(api_key: i16, api_version: i16) -> bool {
    support(api_key).is_some_and(|s| (s.served_min..=s.max).contains(&api_version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn every_served_version_is_known_to_the_schema_crate() {
        for s in SUPPORTED {
            let valid = s.key.valid_versions();
            assert!(
                s.served_min >= valid.min && s.max <= valid.max,
                "{:?}",
                s.key
            );
            assert!(s.advertised_min <= s.served_min);
        }
        assert_eq!(
            kafka_protocol::messages::ProduceRequest::VERSIONS.min,
            3,
            "the schema crate cannot decode Produce v0-v2, which is why they are not served"
        );
    }

    #[test]
    fn produce_v2_is_advertised_but_not_served() {
        assert!(!is_served(0, 2));
        assert!(is_served(0, 3));
        assert!(!is_served(0, 12));
        assert!(!is_served(9999, 0));
    }
}
