//! The records of `__consumer_offsets`, in Kafka's own layouts so that the topic reads the
//! same to Kafka's tools: offset commits (key v1, value v3) and group metadata (key v2,
//! value v3). A null value is a tombstone.

use bytes::{Buf, BufMut};

/// One decoded record of the offsets topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    Group {
        group: String,
        value: Option<GroupValue>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// What survives a coordinator restart of a group: its protocol and generation (members
/// rejoin after a failover, as in Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

fn put_nullable_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

fn get_string(buf: &mut &[u8]) -> Option<String> {
    get_nullable_string(buf)?
}

fn get_nullable_string(buf: &mut &[u8]) -> Option<Option<String>> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_i16();
    if len < 0 {
        return Some(None);
    }
    let len = len as usize;
    if buf.remaining() < len {
        return None;
    }
    let s = String::from_utf8(buf[..len].to_vec()).ok()?;
    buf.advance(len);
    Some(Some(s))
}

impl OffsetsRecord {
    /// The record's key and value bytes.
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut key = Vec::new();
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                key.put_i16(1);
                put_string(&mut key, group);
                put_string(&mut key, topic);
                key.put_i32(*partition);
                let value = value.as_ref().map(|v| {
                    let mut out = Vec::new();
                    out.put_i16(3);
                    out.put_i64(v.offset);
                    out.put_i32(v.leader_epoch);
                    put_string(&mut out, &v.metadata);
                    out.put_i64(v.commit_timestamp_ms);
                    out
                });
                (key, value)
            }
            OffsetsRecord::Group { group, value } => {
                key.put_i16(2);
                put_string(&mut key, group);
                let value = value.as_ref().map(|v| {
                    let mut out = Vec::new();
                    out.put_i16(3);
                    put_string(&mut out, &v.protocol_type);
                    out.put_i32(v.generation);
                    put_nullable_string(&mut out, v.protocol.as_deref());
                    put_nullable_string(&mut out, v.leader.as_deref());
                    out.put_i64(v.state_timestamp_ms);
                    out.put_i32(0); // members: they rejoin after a restart
                    out
                });
                (key, value)
            }
        }
    }

    /// Decodes a key and value; `None` for records of kinds Strom does not keep (or corrupt).
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
        let mut k = key;
        if k.remaining() < 2 {
            return None;
        }
        match k.get_i16() {
            0 | 1 => {
                let group = get_string(&mut k)?;
                let topic = get_string(&mut k)?;
                if k.remaining() < 4 {
                    return None;
                }
                let partition = k.get_i32();
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        if v.remaining() < 2 + 8 {
                            return None;
                        }
                        let version = v.get_i16();
                        let offset = v.get_i64();
                        let leader_epoch = if version >= 3 && v.remaining() >= 4 {
                            v.get_i32()
                        } else {
                            -1
                        };
                        let metadata = get_string(&mut v)?;
                        let commit_timestamp_ms = if v.remaining() >= 8 { v.get_i64() } else { -1 };
                        Some(OffsetValue {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp_ms,
                        })
                    }
                };
                Some(OffsetsRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group = get_string(&mut k)?;
                let value = match value {
                    None => None,
                    Some(mut v) => {
                        if v.remaining() < 2 {
                            return None;
                        }
                        let _version = v.get_i16();
                        let protocol_type = get_string(&mut v)?;
                        if v.remaining() < 4 {
                            return None;
                        }
                        let generation = v.get_i32();
                        let protocol = get_nullable_string(&mut v)?;
                        let leader = get_nullable_string(&mut v)?;
                        let state_timestamp_ms = if v.remaining() >= 8 { v.get_i64() } else { -1 };
                        Some(GroupValue {
                            protocol_type,
                            generation,
                            protocol,
                            leader,
                            state_timestamp_ms,
                        })
                    }
                };
                Some(OffsetsRecord::Group { group, value })
            }
            _ => None,
        }
    }
}

/// Kafka's partition of the offsets topic for a group: `abs(javaHashCode(group)) % n`.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let hash = if hash == i32::MIN { 0 } else { hash.abs() };
    hash % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_matches_kafkas_java_hash() {
        // Java: "test-group".hashCode() == 627841412, "my-group".hashCode() == -1906497762.
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("group-a", 50), 47);
        assert_eq!(partition_for("", 50), 0);
    }

    proptest! {
        #[test]
        fn records_round_trip(group in ".{0,20}", topic in "[a-z]{1,10}", partition in 0i32..100, offset in 0i64..1_000_000, meta in ".{0,10}") {
            let r = OffsetsRecord::Offset { group: group.clone(), topic, partition, value: Some(OffsetValue { offset, leader_epoch: 3, metadata: meta, commit_timestamp_ms: 7 }) };
            let (k, v) = r.encode();
            prop_assert_eq!(OffsetsRecord::decode(&k, v.as_deref()), Some(r));
            let g = OffsetsRecord::Group { group, value: Some(GroupValue { protocol_type: "consumer".into(), generation: 4, protocol: Some("range".into()), leader: None, state_timestamp_ms: 9 }) };
            let (k, v) = g.encode();
            prop_assert_eq!(OffsetsRecord::decode(&k, v.as_deref()), Some(g));
        }

        #[test]
        fn arbitrary_bytes_never_panic(k in proptest::collection::vec(any::<u8>(), 0..40), v in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = OffsetsRecord::decode(&k, Some(&v));
            let _ = OffsetsRecord::decode(&k, None);
        }
    }
}
