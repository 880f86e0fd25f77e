//! Producer state expiry, as Kafka's broker runs it: every
//! `producer.id.expiration.check.interval.ms`, each local replica, leader or follower, forgets
//! the producers that have not written for `producer.id.expiration.ms` (storage keeps those
//! with a transaction open). A forgotten producer that writes again starts afresh; its
//! retries from before can no longer be recognised, which is why the default is a day.
//!
//! `producer.id.expiration.ms` is a dynamic broker config: each pass reads its current
//! value (per-broker, cluster default, static, default).

use std::sync::Arc;

use tracing::warn;

use crate::dynamic_config::{BrokerDefaults, DynamicBrokerConfigs};
use crate::topics::{now_ms, TopicManager};
use crate::Broker;

const EXPIRATION_KEY: &str = "producer.id.expiration.ms";

/// One pass over every local replica; the number of producers forgotten.
pub fn remove_expired_producers(topics: &TopicManager, now_ms: i64, expiration_ms: i64) -> usize {
    let mut removed = 0;
    for topic in topics.all() {
        for partition in topic.local_partitions() {
            // The log says which producers went (one line per partition, when any did).
            removed += partition
                .log
                .remove_expired_producers(now_ms, expiration_ms);
        }
    }
    removed
}

/// The `producer.id.expiration.ms` in force: the dynamic value if one is set, else the
/// static one.
pub fn expiration_ms(defaults: &BrokerDefaults<'_>) -> i64 {
    let configured = defaults
        .lookup(EXPIRATION_KEY)
        .and_then(|(value, _)| value.parse::<i64>().ok());
    match configured {
        Some(ms) if ms >= 1 => ms,
        other => {
            if other.is_some() {
                warn!(value = ?other, "ignoring an invalid {EXPIRATION_KEY}");
            }
            i64::from(defaults.config.producer_id_expiration_ms.max(1))
        }
    }
}

/// Runs [`remove_expired_producers`] every `producer.id.expiration.check.interval.ms`, off
/// the async workers.
pub async fn expiration_loop(broker: Arc<Broker>) {
    let interval_ms = broker
        .config
        .producer_id_expiration_check_interval_ms
        .max(1) as u64;
    crate::server::every_blocking(broker, interval_ms, |broker| {
        let dynamic = DynamicBrokerConfigs::applied(broker);
        let expiration_ms = expiration_ms(&BrokerDefaults::new(&broker.config, &dynamic));
        remove_expired_producers(&broker.topics, now_ms(), expiration_ms);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    #[test]
    fn the_expiration_follows_the_dynamic_value_then_the_static_one() {
        let (config, _) =
            BrokerConfig::from_properties("producer.id.expiration.ms=5000\n", &[]).unwrap();
        let mut dynamic = DynamicBrokerConfigs::default();
        assert_eq!(expiration_ms(&BrokerDefaults::new(&config, &dynamic)), 5000);
        dynamic
            .cluster_default
            .insert(EXPIRATION_KEY.into(), "2000".into());
        assert_eq!(expiration_ms(&BrokerDefaults::new(&config, &dynamic)), 2000);
        dynamic
            .per_broker
            .insert(EXPIRATION_KEY.into(), "1000".into());
        assert_eq!(expiration_ms(&BrokerDefaults::new(&config, &dynamic)), 1000);
        let (defaults, _) = BrokerConfig::from_properties("", &[]).unwrap();
        assert_eq!(
            expiration_ms(&BrokerDefaults::static_only(&defaults)),
            86_400_000,
            "Kafka's default: a day"
        );
    }
}
