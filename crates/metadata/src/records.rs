//! The metadata log's records and their binary encoding: a version byte, a type byte, then the
//! fields big-endian, strings and lists length-prefixed. Decoding never panics.

use bytes::{Buf, BufMut};
use uuid::Uuid;

/// One change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRecord {
    RegisterBroker {
        broker_id: i32,
        incarnation_id: Uuid,
        epoch: i64,
        host: String,
        port: u16,
        rack: Option<String>,
    },
    FenceBroker {
        broker_id: i32,
        epoch: i64,
    },
    UnfenceBroker {
        broker_id: i32,
        epoch: i64,
    },
    Topic {
        name: String,
        topic_id: Uuid,
    },
    Partition {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
    },
    /// A change to an existing partition; `None` fields keep their value. A new leader bumps
    /// the leader epoch; every change bumps the partition epoch.
    PartitionChange {
        topic_id: Uuid,
        partition: i32,
        isr: Option<Vec<i32>>,
        leader: Option<i32>,
        replicas: Option<Vec<i32>>,
    },
    Config {
        resource_type: i8,
        resource_name: String,
        key: String,
        value: Option<String>,
    },
    RemoveTopic {
        topic_id: Uuid,
    },
    /// A partition reassignment in progress (KIP-455): the replicas being added and those
    /// to be removed once the added ones are in sync; both empty when none is. Changes no
    /// epoch (the controller commits it with the PartitionChange of the replicas).
    PartitionReassignment {
        topic_id: Uuid,
        partition: i32,
        adding: Vec<i32>,
        removing: Vec<i32>,
    },
    /// A client quota (Kafka's `QuotaRecord`): `entity` is its (entity type, name) pairs
    /// sorted by type (`user`, `client-id`, `ip`), a `None` name standing for the type's
    /// default; `value` `None` removes the key.
    ClientQuota {
        entity: QuotaEntity,
        key: String,
        value: Option<QuotaValue>,
    },
    /// A block of producer ids handed to a broker (Kafka's `ProducerIdsRecord`, KIP-730):
    /// the broker owns the ids from the previous `next_producer_id` up to this one
    /// (excluded), and no other broker is ever given them. `next_producer_id` only grows.
    /// A snapshot writes it with broker id and epoch -1 (no broker asked).
    ProducerIds {
        broker_id: i32,
        broker_epoch: i64,
        next_producer_id: i64,
    },
}

/// A client quota entity: (entity type, name) pairs sorted by type; a `None` name is the
/// default of its type.
pub type QuotaEntity = Vec<(String, Option<String>)>;

/// A quota value (a double, as Kafka keeps them), stored by its bits so that records and
/// images compare exactly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaValue(u64);

impl QuotaValue {
    pub fn new(value: f64) -> QuotaValue {
        QuotaValue(value.to_bits())
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl std::fmt::Debug for QuotaValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable metadata record: {0}")]
pub struct DecodeError(pub &'static str);

const VERSION: u8 = 0;
/// Longest list or string a record may hold (a replica list, a config value).
pub const FIELD_LEN_MAX: usize = 1 << 20;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[i32]) {
    out.put_u32(ids.len() as u32);
    for id in ids {
        out.put_i32(*id);
    }
}

fn put_opt_ids(out: &mut Vec<u8>, ids: Option<&[i32]>) {
    match ids {
        Some(ids) => {
            out.put_u8(1);
            put_ids(out, ids);
        }
        None => out.put_u8(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn i8(&mut self) -> Result<i8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_i8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn len(&mut self) -> Result<usize, DecodeError> {
        self.need(4)?;
        let len = self.0.get_u32() as usize;
        if len > FIELD_LEN_MAX {
            return Err(DecodeError("field too long"));
        }
        Ok(len)
    }
    fn uuid(&mut self) -> Result<Uuid, DecodeError> {
        self.need(16)?;
        let mut raw = [0u8; 16];
        self.0.copy_to_slice(&mut raw);
        Ok(Uuid::from_bytes(raw))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.len()?;
        self.need(len)?;
        let s = String::from_utf8(self.0[..len].to_vec())
            .map_err(|_| DecodeError("string is not UTF-8"))?;
        self.0.advance(len);
        Ok(s)
    }
    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(DecodeError("bad option tag")),
        }
    }
    fn quota_entity(&mut self) -> Result<QuotaEntity, DecodeError> {
        let len = self.len()?;
        // Each pair takes at least 5 bytes: a length and an option tag.
        self.need(len * 5)?;
        (0..len)
            .map(|_| Ok((self.string()?, self.opt_string()?)))
            .collect()
    }
    fn ids(&mut self) -> Result<Vec<i32>, DecodeError> {
        let len = self.len()?;
        self.need(len * 4)?;
        (0..len).map(|_| self.i32()).collect()
    }
    fn opt_ids(&mut self) -> Result<Option<Vec<i32>>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.ids().map(Some),
            _ => Err(DecodeError("bad option tag")),
        }
    }
}

impl MetadataRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                epoch,
                host,
                port,
                rack,
            } => {
                out.put_u8(0);
                out.put_i32(*broker_id);
                out.put_slice(incarnation_id.as_bytes());
                out.put_i64(*epoch);
                put_str(&mut out, host);
                out.put_u16(*port);
                put_opt_str(&mut out, rack.as_deref());
            }
            MetadataRecord::FenceBroker { broker_id, epoch } => {
                out.put_u8(1);
                out.put_i32(*broker_id);
                out.put_i64(*epoch);
            }
            MetadataRecord::UnfenceBroker { broker_id, epoch } => {
                out.put_u8(2);
                out.put_i32(*broker_id);
                out.put_i64(*epoch);
            }
            MetadataRecord::Topic { name, topic_id } => {
                out.put_u8(3);
                put_str(&mut out, name);
                out.put_slice(topic_id.as_bytes());
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
                out.put_u8(4);
                out.put_slice(topic_id.as_bytes());
                out.put_i32(*partition);
                put_ids(&mut out, replicas);
                put_ids(&mut out, isr);
                out.put_i32(*leader);
                out.put_i32(*leader_epoch);
                out.put_i32(*partition_epoch);
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                isr,
                leader,
                replicas,
            } => {
                out.put_u8(5);
                out.put_slice(topic_id.as_bytes());
                out.put_i32(*partition);
                put_opt_ids(&mut out, isr.as_deref());
                match leader {
                    Some(l) => {
                        out.put_u8(1);
                        out.put_i32(*l);
                    }
                    None => out.put_u8(0),
                }
                put_opt_ids(&mut out, replicas.as_deref());
            }
            MetadataRecord::Config {
                resource_type,
                resource_name,
                key,
                value,
            } => {
                out.put_u8(6);
                out.put_i8(*resource_type);
                put_str(&mut out, resource_name);
                put_str(&mut out, key);
                put_opt_str(&mut out, value.as_deref());
            }
            MetadataRecord::RemoveTopic { topic_id } => {
                out.put_u8(7);
                out.put_slice(topic_id.as_bytes());
            }
            MetadataRecord::PartitionReassignment {
                topic_id,
                partition,
                adding,
                removing,
            } => {
                out.put_u8(8);
                out.put_slice(topic_id.as_bytes());
                out.put_i32(*partition);
                put_ids(&mut out, adding);
                put_ids(&mut out, removing);
            }
            MetadataRecord::ClientQuota { entity, key, value } => {
                out.put_u8(9);
                out.put_u32(entity.len() as u32);
                for (entity_type, name) in entity {
                    put_str(&mut out, entity_type);
                    put_opt_str(&mut out, name.as_deref());
                }
                put_str(&mut out, key);
                match value {
                    Some(v) => {
                        out.put_u8(1);
                        out.put_u64(v.0);
                    }
                    None => out.put_u8(0),
                }
            }
            MetadataRecord::ProducerIds {
                broker_id,
                broker_epoch,
                next_producer_id,
            } => {
                out.put_u8(10);
                out.put_i32(*broker_id);
                out.put_i64(*broker_epoch);
                out.put_i64(*next_producer_id);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown record version"));
        }
        let record = match r.u8()? {
            0 => MetadataRecord::RegisterBroker {
                broker_id: r.i32()?,
                incarnation_id: r.uuid()?,
                epoch: r.i64()?,
                host: r.string()?,
                port: r.u16()?,
                rack: r.opt_string()?,
            },
            1 => MetadataRecord::FenceBroker {
                broker_id: r.i32()?,
                epoch: r.i64()?,
            },
            2 => MetadataRecord::UnfenceBroker {
                broker_id: r.i32()?,
                epoch: r.i64()?,
            },
            3 => MetadataRecord::Topic {
                name: r.string()?,
                topic_id: r.uuid()?,
            },
            4 => MetadataRecord::Partition {
                topic_id: r.uuid()?,
                partition: r.i32()?,
                replicas: r.ids()?,
                isr: r.ids()?,
                leader: r.i32()?,
                leader_epoch: r.i32()?,
                partition_epoch: r.i32()?,
            },
            5 => MetadataRecord::PartitionChange {
                topic_id: r.uuid()?,
                partition: r.i32()?,
                isr: r.opt_ids()?,
                leader: match r.u8()? {
                    0 => None,
                    1 => Some(r.i32()?),
                    _ => return Err(DecodeError("bad option tag")),
                },
                replicas: r.opt_ids()?,
            },
            6 => MetadataRecord::Config {
                resource_type: r.i8()?,
                resource_name: r.string()?,
                key: r.string()?,
                value: r.opt_string()?,
            },
            7 => MetadataRecord::RemoveTopic {
                topic_id: r.uuid()?,
            },
            8 => MetadataRecord::PartitionReassignment {
                topic_id: r.uuid()?,
                partition: r.i32()?,
                adding: r.ids()?,
                removing: r.ids()?,
            },
            9 => MetadataRecord::ClientQuota {
                entity: r.quota_entity()?,
                key: r.string()?,
                value: match r.u8()? {
                    0 => None,
                    1 => {
                        r.need(8)?;
                        Some(QuotaValue(r.0.get_u64()))
                    }
                    _ => return Err(DecodeError("bad option tag")),
                },
            },
            10 => MetadataRecord::ProducerIds {
                broker_id: r.i32()?,
                broker_epoch: r.i64()?,
                next_producer_id: r.i64()?,
            },
            _ => return Err(DecodeError("unknown record type")),
        };
        if r.0.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(record)
    }
}

#[cfg(test)]
pub(crate) mod strategy {
    use super::*;
    use proptest::prelude::*;

    pub fn uuid() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    pub fn record() -> impl Strategy<Value = MetadataRecord> {
        let ids = proptest::collection::vec(0i32..10, 0..5);
        prop_oneof![
            (
                0i32..10,
                uuid(),
                any::<i64>(),
                "[a-z.]{1,12}",
                any::<u16>(),
                proptest::option::of("[a-z]{1,4}")
            )
                .prop_map(|(broker_id, incarnation_id, epoch, host, port, rack)| {
                    MetadataRecord::RegisterBroker {
                        broker_id,
                        incarnation_id,
                        epoch,
                        host,
                        port,
                        rack,
                    }
                }),
            (0i32..10, any::<i64>())
                .prop_map(|(broker_id, epoch)| MetadataRecord::FenceBroker { broker_id, epoch }),
            (0i32..10, any::<i64>())
                .prop_map(|(broker_id, epoch)| MetadataRecord::UnfenceBroker { broker_id, epoch }),
            ("[a-z]{1,8}", uuid())
                .prop_map(|(name, topic_id)| MetadataRecord::Topic { name, topic_id }),
            (
                uuid(),
                0i32..8,
                ids.clone(),
                ids.clone(),
                -1i32..10,
                0i32..100,
                0i32..100
            )
                .prop_map(
                    |(
                        topic_id,
                        partition,
                        replicas,
                        isr,
                        leader,
                        leader_epoch,
                        partition_epoch,
                    )| MetadataRecord::Partition {
                        topic_id,
                        partition,
                        replicas,
                        isr,
                        leader,
                        leader_epoch,
                        partition_epoch
                    }
                ),
            (
                uuid(),
                0i32..8,
                proptest::option::of(ids.clone()),
                proptest::option::of(-1i32..10),
                proptest::option::of(ids)
            )
                .prop_map(|(topic_id, partition, isr, leader, replicas)| {
                    MetadataRecord::PartitionChange {
                        topic_id,
                        partition,
                        isr,
                        leader,
                        replicas,
                    }
                }),
            (
                any::<i8>(),
                "[a-z]{0,8}",
                "[a-z.]{1,12}",
                proptest::option::of("[0-9]{1,6}")
            )
                .prop_map(|(resource_type, resource_name, key, value)| {
                    MetadataRecord::Config {
                        resource_type,
                        resource_name,
                        key,
                        value,
                    }
                }),
            uuid().prop_map(|topic_id| MetadataRecord::RemoveTopic { topic_id }),
            (
                uuid(),
                0..64i32,
                proptest::collection::vec(0..8i32, 0..3),
                proptest::collection::vec(0..8i32, 0..3)
            )
                .prop_map(|(topic_id, partition, adding, removing)| {
                    MetadataRecord::PartitionReassignment {
                        topic_id,
                        partition,
                        adding,
                        removing,
                    }
                }),
            (
                proptest::collection::vec(
                    ("[a-z-]{1,9}", proptest::option::of("[a-z0-9]{1,6}")),
                    0..3
                ),
                "[a-z_]{1,18}",
                proptest::option::of(any::<f64>())
            )
                .prop_map(|(entity, key, value)| MetadataRecord::ClientQuota {
                    entity,
                    key,
                    value: value.map(QuotaValue::new),
                }),
            (
                -1i32..10,
                any::<i64>(),
                prop_oneof![0i64..10_000, any::<i64>()]
            )
                .prop_map(|(broker_id, broker_epoch, next_producer_id)| {
                    MetadataRecord::ProducerIds {
                        broker_id,
                        broker_epoch,
                        next_producer_id,
                    }
                }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(record in strategy::record()) {
            prop_assert_eq!(MetadataRecord::decode(&record.encode()), Ok(record));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = MetadataRecord::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(record in strategy::record(), cut in 0usize..64) {
            let bytes = record.encode();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(MetadataRecord::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_hostile_length_is_refused_before_allocating() {
        let mut bytes = vec![VERSION, 3];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            MetadataRecord::decode(&bytes),
            Err(DecodeError("field too long"))
        );
    }
}
