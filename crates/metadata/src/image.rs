//! [`MetadataImage`]: the cluster as the metadata log describes it after applying records in
//! order. Images are values: applying records returns a new image and never changes the old
//! one, so readers keep a consistent view while a delta is applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::records::{MetadataRecord, QuotaEntity, QuotaValue};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerImage {
    pub id: i32,
    pub incarnation_id: Uuid,
    pub epoch: i64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Fenced brokers lead nothing and are not listed to clients.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionImage {
    /// During a reassignment: the target replicas followed by those being removed.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// A reassignment in progress: replicas joining (not yet in sync) and replicas leaving
    /// once they are. Both empty otherwise.
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

impl PartitionImage {
    /// The replicas a reassignment is moving to (all replicas when none is in progress).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing.contains(r))
            .collect()
    }

    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub partitions: BTreeMap<i32, PartitionImage>,
}

/// A record that cannot apply to the image: the controller wrote something inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("unknown topic id {0}")]
    UnknownTopic(Uuid),
    #[error("unknown partition {1} of topic {0}")]
    UnknownPartition(Uuid, i32),
    /// Kafka's replay refuses it too: blocks handed out must never be handed out again.
    #[error("producer id block ending at {next} does not follow the blocks up to {current}")]
    ProducerIdsNotIncreasing { current: i64, next: i64 },
}

/// The cluster metadata at some point of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Records applied so far.
    pub records_applied: u64,
    pub brokers: BTreeMap<i32, BrokerImage>,
    /// Topics are shared between successive images: a change copies only the topics it
    /// touches, so applying a record costs the size of its topic, not of the cluster, and a
    /// reader finds unchanged topics with `Arc::ptr_eq`.
    pub topics: BTreeMap<Uuid, Arc<TopicImage>>,
    pub topic_ids: BTreeMap<String, Uuid>,
    /// (resource type, resource name) → key → value.
    pub configs: BTreeMap<(i8, String), BTreeMap<String, String>>,
    /// Client quota entity → quota key → value.
    pub client_quotas: BTreeMap<QuotaEntity, BTreeMap<String, QuotaValue>>,
    /// The first producer id no broker has been given yet: every id below it belongs to a
    /// block some broker was handed (`ProducerIds` records).
    pub next_producer_id: i64,
}

impl MetadataImage {
    /// The image after `records`; `self` is unchanged.
    pub fn apply(&self, records: &[MetadataRecord]) -> Result<MetadataImage, ApplyError> {
        let mut next = self.clone();
        for record in records {
            next.apply_one(record)?;
            next.records_applied += 1;
        }
        Ok(next)
    }

    fn apply_one(&mut self, record: &MetadataRecord) -> Result<(), ApplyError> {
        match record {
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                epoch,
                host,
                port,
                rack,
            } => {
                // A (re-)registered broker is fenced until it has caught up with the log.
                self.brokers.insert(
                    *broker_id,
                    BrokerImage {
                        id: *broker_id,
                        incarnation_id: *incarnation_id,
                        epoch: *epoch,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                        fenced: true,
                    },
                );
            }
            MetadataRecord::FenceBroker { broker_id, epoch }
            | MetadataRecord::UnfenceBroker { broker_id, epoch } => {
                let fence = matches!(record, MetadataRecord::FenceBroker { .. });
                // A fence for an older registration is stale and changes nothing.
                if let Some(broker) = self
                    .brokers
                    .get_mut(broker_id)
                    .filter(|b| b.epoch == *epoch)
                {
                    broker.fenced = fence;
                }
            }
            MetadataRecord::Topic { name, topic_id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(topic_id) {
                    return Err(ApplyError::TopicExists(name.clone()));
                }
                self.topic_ids.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    Arc::new(TopicImage {
                        name: name.clone(),
                        id: *topic_id,
                        partitions: BTreeMap::new(),
                    }),
                );
            }
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
            } => {
                let topic = Arc::make_mut(
                    self.topics
                        .get_mut(topic_id)
                        .ok_or(ApplyError::UnknownTopic(*topic_id))?,
                );
                topic.partitions.insert(
                    *partition,
                    PartitionImage {
                        replicas: replicas.clone(),
                        isr: isr.clone(),
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        partition_epoch: *partition_epoch,
                        adding: Vec::new(),
                        removing: Vec::new(),
                    },
                );
            }
            MetadataRecord::PartitionReassignment {
                topic_id,
                partition,
                adding,
                removing,
            } => {
                let p = self.partition_mut(topic_id, *partition)?;
                p.adding = adding.clone();
                p.removing = removing.clone();
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                isr,
                leader,
                replicas,
            } => {
                let p = self.partition_mut(topic_id, *partition)?;
                if let Some(isr) = isr {
                    p.isr = isr.clone();
                }
                if let Some(replicas) = replicas {
                    p.replicas = replicas.clone();
                }
                if let Some(leader) = leader {
                    if *leader != p.leader {
                        p.leader = *leader;
                        p.leader_epoch += 1;
                    }
                }
                p.partition_epoch += 1;
            }
            MetadataRecord::Config {
                resource_type,
                resource_name,
                key,
                value,
            } => {
                let entry = self
                    .configs
                    .entry((*resource_type, resource_name.clone()))
                    .or_default();
                match value {
                    Some(v) => {
                        entry.insert(key.clone(), v.clone());
                    }
                    None => {
                        entry.remove(key);
                    }
                }
            }
            MetadataRecord::ClientQuota { entity, key, value } => match value {
                Some(v) => {
                    self.client_quotas
                        .entry(entity.clone())
                        .or_default()
                        .insert(key.clone(), *v);
                }
                None => {
                    if let Some(values) = self.client_quotas.get_mut(entity) {
                        values.remove(key);
                        if values.is_empty() {
                            self.client_quotas.remove(entity);
                        }
                    }
                }
            },
            MetadataRecord::ProducerIds {
                next_producer_id, ..
            } => {
                if *next_producer_id <= self.next_producer_id {
                    return Err(ApplyError::ProducerIdsNotIncreasing {
                        current: self.next_producer_id,
                        next: *next_producer_id,
                    });
                }
                self.next_producer_id = *next_producer_id;
            }
            MetadataRecord::RemoveTopic { topic_id } => {
                let topic = self
                    .topics
                    .remove(topic_id)
                    .ok_or(ApplyError::UnknownTopic(*topic_id))?;
                self.topic_ids.remove(&topic.name);
                self.configs.remove(&(2, topic.name.clone()));
            }
        }
        Ok(())
    }

    /// A partition to change (its topic copied first if another image shares it).
    fn partition_mut(
        &mut self,
        topic_id: &Uuid,
        partition: i32,
    ) -> Result<&mut PartitionImage, ApplyError> {
        let topic = Arc::make_mut(
            self.topics
                .get_mut(topic_id)
                .ok_or(ApplyError::UnknownTopic(*topic_id))?,
        );
        topic
            .partitions
            .get_mut(&partition)
            .ok_or(ApplyError::UnknownPartition(*topic_id, partition))
    }

    /// The image as records that rebuild it from an empty image (a snapshot's content).
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for b in self.brokers.values() {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: b.id,
                incarnation_id: b.incarnation_id,
                epoch: b.epoch,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
            });
            if !b.fenced {
                records.push(MetadataRecord::UnfenceBroker {
                    broker_id: b.id,
                    epoch: b.epoch,
                });
            }
        }
        for t in self.topics.values() {
            records.push(MetadataRecord::Topic {
                name: t.name.clone(),
                topic_id: t.id,
            });
            for (partition, p) in &t.partitions {
                records.push(MetadataRecord::Partition {
                    topic_id: t.id,
                    partition: *partition,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                });
                if p.reassigning() {
                    records.push(MetadataRecord::PartitionReassignment {
                        topic_id: t.id,
                        partition: *partition,
                        adding: p.adding.clone(),
                        removing: p.removing.clone(),
                    });
                }
            }
        }
        for ((resource_type, resource_name), entries) in &self.configs {
            for (key, value) in entries {
                records.push(MetadataRecord::Config {
                    resource_type: *resource_type,
                    resource_name: resource_name.clone(),
                    key: key.clone(),
                    value: Some(value.clone()),
                });
            }
        }
        for (entity, values) in &self.client_quotas {
            for (key, value) in values {
                records.push(MetadataRecord::ClientQuota {
                    entity: entity.clone(),
                    key: key.clone(),
                    value: Some(*value),
                });
            }
        }
        if self.next_producer_id > 0 {
            records.push(MetadataRecord::ProducerIds {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id: self.next_producer_id,
            });
        }
        records
    }

    /// Brokers clients may use: registered and not fenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerImage> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids
            .get(name)
            .and_then(|id| self.topics.get(id).map(|t| &**t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::strategy;
    use proptest::prelude::*;

    fn topic(name: &str) -> (Uuid, MetadataRecord) {
        let id = Uuid::new_v4();
        (
            id,
            MetadataRecord::Topic {
                name: name.into(),
                topic_id: id,
            },
        )
    }

    #[test]
    fn a_topic_with_partitions_then_a_leader_change_bumps_the_epochs() {
        let (id, t) = topic("orders");
        let image = MetadataImage::default()
            .apply(&[
                MetadataRecord::RegisterBroker {
                    broker_id: 1,
                    incarnation_id: Uuid::nil(),
                    epoch: 5,
                    host: "h".into(),
                    port: 1,
                    rack: None,
                },
                MetadataRecord::UnfenceBroker {
                    broker_id: 1,
                    epoch: 5,
                },
                t,
                MetadataRecord::Partition {
                    topic_id: id,
                    partition: 0,
                    replicas: vec![1, 2],
                    isr: vec![1, 2],
                    leader: 1,
                    leader_epoch: 0,
                    partition_epoch: 0,
                },
            ])
            .unwrap();
        assert_eq!(image.live_brokers().count(), 1);
        let changed = image
            .apply(&[
                MetadataRecord::PartitionChange {
                    topic_id: id,
                    partition: 0,
                    isr: Some(vec![2]),
                    leader: Some(2),
                    replicas: None,
                },
                MetadataRecord::FenceBroker {
                    broker_id: 1,
                    epoch: 4,
                },
            ])
            .unwrap();
        let p = &changed.topic_by_name("orders").unwrap().partitions[&0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone()),
            (2, 1, 1, vec![2])
        );
        assert!(
            !changed.brokers[&1].fenced,
            "a fence for a stale epoch changes nothing"
        );
        assert_eq!(
            image.topic_by_name("orders").unwrap().partitions[&0].leader,
            1,
            "the old image is unchanged"
        );
        assert_eq!(changed.records_applied, 6);
    }

    #[test]
    fn inconsistent_records_are_errors() {
        let (id, t) = topic("a");
        let image = MetadataImage::default()
            .apply(std::slice::from_ref(&t))
            .unwrap();
        assert_eq!(image.apply(&[t]), Err(ApplyError::TopicExists("a".into())));
        let change = MetadataRecord::PartitionChange {
            topic_id: id,
            partition: 3,
            isr: None,
            leader: None,
            replicas: None,
        };
        assert_eq!(
            image.apply(&[change]),
            Err(ApplyError::UnknownPartition(id, 3))
        );
        let removed = image
            .apply(&[MetadataRecord::RemoveTopic { topic_id: id }])
            .unwrap();
        assert!(removed.topic_by_name("a").is_none());
    }

    #[test]
    fn producer_id_blocks_only_move_forward_and_survive_a_snapshot() {
        let block = |broker_id, next_producer_id| MetadataRecord::ProducerIds {
            broker_id,
            broker_epoch: 7,
            next_producer_id,
        };
        let image = MetadataImage::default()
            .apply(&[block(1, 1000), block(2, 2000)])
            .unwrap();
        assert_eq!(image.next_producer_id, 2000);
        for next in [2000, 1000] {
            assert_eq!(
                image.apply(&[block(3, next)]),
                Err(ApplyError::ProducerIdsNotIncreasing {
                    current: 2000,
                    next
                }),
                "a block handed out already is never handed out again"
            );
        }
        let snapshot = image.to_records();
        assert_eq!(
            snapshot,
            vec![MetadataRecord::ProducerIds {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id: 2000,
            }]
        );
        let restored = MetadataImage::default().apply(&snapshot).unwrap();
        assert_eq!(restored.next_producer_id, 2000);
        assert!(
            MetadataImage::default().to_records().is_empty(),
            "no block handed out: nothing to write"
        );
    }

    proptest! {
        /// Applying a log in one step or record by record gives the same image, and leader
        /// epochs never go back.
        #[test]
        fn applying_in_steps_equals_applying_at_once(records in proptest::collection::vec(strategy::record(), 0..40)) {
            let mut stepwise = MetadataImage::default();
            let mut applied = Vec::new();
            for record in &records {
                if let Ok(next) = stepwise.apply(std::slice::from_ref(record)) {
                        for (id, topic) in &stepwise.topics {
                            for (p, before) in &topic.partitions {
                                if let Some(after) = next.topics.get(id).and_then(|t| t.partitions.get(p)) {
                                    let rewritten = matches!(record, MetadataRecord::Partition { .. });
                                    prop_assert!(rewritten || after.leader_epoch >= before.leader_epoch);
                                }
                            }
                        }
                        stepwise = next;
                        applied.push(record.clone());
                }
            }
            let rebuilt = MetadataImage::default().apply(&applied).unwrap();
            prop_assert_eq!(&rebuilt, &stepwise);
            // A snapshot (the image as records) rebuilds the same brokers, topics and configs.
            let mut from_snapshot = MetadataImage::default().apply(&stepwise.to_records()).unwrap();
            from_snapshot.records_applied = stepwise.records_applied;
            from_snapshot.configs.retain(|_, entries| !entries.is_empty());
            let mut expected = stepwise.clone();
            expected.configs.retain(|_, entries| !entries.is_empty());
            prop_assert_eq!(from_snapshot, expected);
        }
    }
}
