//! The records of `__transaction_state`, in Kafka's own layouts so that the topic reads the
//! same to Kafka's tools: key version 0 (the transactional id) and value version 0
//! (producer id, epoch, timeout, status, partitions, last update and start timestamps). A
//! null value is a tombstone: the transactional id expired.
//!
//! Values of version 1 (Kafka 4's flexible layout, KIP-890 part 2) are read too, their tagged
//! fields skipped, so a log written by a newer Kafka loads; Strom writes version 0.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut};

/// The key version (Kafka's `CoordinatorRecordType.TRANSACTION_LOG`).
const KEY_VERSION: i16 = 0;
/// The value version Strom writes.
const VALUE_VERSION: i16 = 0;
/// Longest array a value may declare (partitions of a transaction, topics): a corrupt count
/// is refused before anything is reserved for it.
const ARRAY_LEN_MAX: usize = 1 << 20;

/// A transaction's persisted state: Kafka's `TransactionLogValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnLogValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    /// Kafka's state id: 0 Empty … 7 PrepareEpochFence.
    pub status: i8,
    /// Sorted; empty (written as null) in the Empty state.
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_timestamp_ms: i64,
    pub start_timestamp_ms: i64,
}

/// One record of the transaction log: a transactional id and its state, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub value: Option<TxnLogValue>,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnRecordError {
    #[error("not a transaction log key (key version {0})")]
    NotATransactionKey(i16),
    #[error("unknown transaction log value version {0}")]
    UnknownValueVersion(i16),
    #[error("truncated or malformed transaction log record")]
    Malformed,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.put_i16(len);
    out.put_slice(&s.as_bytes()[..len as usize]);
}

fn get_string(buf: &mut &[u8]) -> Result<String, TxnRecordError> {
    if buf.remaining() < 2 {
        return Err(TxnRecordError::Malformed);
    }
    let len = usize::try_from(buf.get_i16()).map_err(|_| TxnRecordError::Malformed)?;
    take_utf8(buf, len)
}

fn take_utf8(buf: &mut &[u8], len: usize) -> Result<String, TxnRecordError> {
    if buf.remaining() < len {
        return Err(TxnRecordError::Malformed);
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| TxnRecordError::Malformed)?
        .to_string();
    buf.advance(len);
    Ok(s)
}

fn need(buf: &[u8], bytes: usize) -> Result<(), TxnRecordError> {
    if buf.remaining() < bytes {
        return Err(TxnRecordError::Malformed);
    }
    Ok(())
}

fn get_uvarint(buf: &mut &[u8]) -> Result<u64, TxnRecordError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        need(buf, 1)?;
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(TxnRecordError::Malformed)
}

/// A compact array or string length (`N + 1`, 0 for null); `None` for null.
fn get_compact_len(buf: &mut &[u8]) -> Result<Option<usize>, TxnRecordError> {
    let n = get_uvarint(buf)?;
    if n == 0 {
        return Ok(None);
    }
    let len = usize::try_from(n - 1).map_err(|_| TxnRecordError::Malformed)?;
    if len > ARRAY_LEN_MAX {
        return Err(TxnRecordError::Malformed);
    }
    Ok(Some(len))
}

fn skip_tagged_fields(buf: &mut &[u8]) -> Result<(), TxnRecordError> {
    let count = get_uvarint(buf)?;
    for _ in 0..count.min(ARRAY_LEN_MAX as u64) {
        let _tag = get_uvarint(buf)?;
        let size = usize::try_from(get_uvarint(buf)?).map_err(|_| TxnRecordError::Malformed)?;
        need(buf, size)?;
        buf.advance(size);
    }
    Ok(())
}

fn get_array_len(buf: &mut &[u8]) -> Result<Option<usize>, TxnRecordError> {
    need(buf, 4)?;
    let n = buf.get_i32();
    if n < 0 {
        return Ok(None);
    }
    let n = n as usize;
    // Each element takes at least 2 bytes (a string length or half an int32).
    if n > ARRAY_LEN_MAX || n > buf.remaining() {
        return Err(TxnRecordError::Malformed);
    }
    Ok(Some(n))
}

impl TxnLogValue {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_i16(VALUE_VERSION);
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.timeout_ms);
        out.put_i8(self.status);
        if self.status == 0 {
            // Empty: Kafka writes null partitions.
            out.put_i32(-1);
        } else {
            let topics = group_by_topic(&self.partitions);
            out.put_i32(topics.len() as i32);
            for (topic, partitions) in topics {
                put_string(&mut out, topic);
                out.put_i32(partitions.len() as i32);
                for p in partitions {
                    out.put_i32(p);
                }
            }
        }
        out.put_i64(self.last_update_timestamp_ms);
        out.put_i64(self.start_timestamp_ms);
        out
    }

    fn decode(mut v: &[u8]) -> Result<TxnLogValue, TxnRecordError> {
        need(v, 2)?;
        let version = v.get_i16();
        match version {
            0 => Self::decode_v0(v),
            1 => Self::decode_v1(v),
            other => Err(TxnRecordError::UnknownValueVersion(other)),
        }
    }

    fn decode_v0(mut v: &[u8]) -> Result<TxnLogValue, TxnRecordError> {
        need(v, 8 + 2 + 4 + 1)?;
        let producer_id = v.get_i64();
        let producer_epoch = v.get_i16();
        let timeout_ms = v.get_i32();
        let status = v.get_i8();
        let mut partitions = BTreeSet::new();
        if let Some(topics) = get_array_len(&mut v)? {
            for _ in 0..topics {
                let topic = get_string(&mut v)?;
                let count = get_array_len(&mut v)?.unwrap_or(0);
                need(v, count * 4)?;
                for _ in 0..count {
                    partitions.insert((topic.clone(), v.get_i32()));
                }
            }
        }
        need(v, 16)?;
        Ok(TxnLogValue {
            producer_id,
            producer_epoch,
            timeout_ms,
            status,
            partitions,
            last_update_timestamp_ms: v.get_i64(),
            start_timestamp_ms: v.get_i64(),
        })
    }

    /// The flexible layout: compact strings and arrays, tagged fields (previous and next
    /// producer ids, client transaction version) skipped.
    fn decode_v1(mut v: &[u8]) -> Result<TxnLogValue, TxnRecordError> {
        need(v, 8 + 2 + 4 + 1)?;
        let producer_id = v.get_i64();
        let producer_epoch = v.get_i16();
        let timeout_ms = v.get_i32();
        let status = v.get_i8();
        let mut partitions = BTreeSet::new();
        if let Some(topics) = get_compact_len(&mut v)? {
            for _ in 0..topics {
                let len = get_compact_len(&mut v)?.ok_or(TxnRecordError::Malformed)?;
                let topic = take_utf8(&mut v, len)?;
                let count = get_compact_len(&mut v)?.unwrap_or(0);
                need(v, count * 4)?;
                for _ in 0..count {
                    partitions.insert((topic.clone(), v.get_i32()));
                }
                skip_tagged_fields(&mut v)?;
            }
        }
        need(v, 16)?;
        let last_update_timestamp_ms = v.get_i64();
        let start_timestamp_ms = v.get_i64();
        skip_tagged_fields(&mut v)?;
        Ok(TxnLogValue {
            producer_id,
            producer_epoch,
            timeout_ms,
            status,
            partitions,
            last_update_timestamp_ms,
            start_timestamp_ms,
        })
    }
}

/// Partitions by topic, in order.
pub fn group_by_topic(partitions: &BTreeSet<(String, i32)>) -> Vec<(&str, Vec<i32>)> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in partitions {
        match topics.last_mut() {
            Some((t, ps)) if *t == topic.as_str() => ps.push(*partition),
            _ => topics.push((topic.as_str(), vec![*partition])),
        }
    }
    topics
}

impl TxnRecord {
    /// The key bytes of a transactional id.
    pub fn key(transactional_id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(4 + transactional_id.len());
        key.put_i16(KEY_VERSION);
        put_string(&mut key, transactional_id);
        key
    }

    /// The record's key and value bytes (`None`: a tombstone).
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        (
            TxnRecord::key(&self.transactional_id),
            self.value.as_ref().map(TxnLogValue::encode),
        )
    }

    /// Reads a key and value; an error for records of other kinds or corrupt bytes.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<TxnRecord, TxnRecordError> {
        let mut k = key;
        need(k, 2)?;
        let version = k.get_i16();
        if version != KEY_VERSION {
            return Err(TxnRecordError::NotATransactionKey(version));
        }
        let transactional_id = get_string(&mut k)?;
        let value = value.map(TxnLogValue::decode).transpose()?;
        Ok(TxnRecord {
            transactional_id,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value(status: i8, partitions: &[(&str, i32)]) -> TxnLogValue {
        TxnLogValue {
            producer_id: 4000,
            producer_epoch: 3,
            timeout_ms: 60_000,
            status,
            partitions: partitions
                .iter()
                .map(|(t, p)| (t.to_string(), *p))
                .collect(),
            last_update_timestamp_ms: 1_700_000_000_123,
            start_timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn key_and_value_have_kafkas_version_0_layout() {
        let record = TxnRecord {
            transactional_id: "tx".into(),
            value: Some(value(1, &[("a", 1), ("a", 0), ("b", 2)])),
        };
        let (key, value) = record.encode();
        assert_eq!(key, vec![0, 0, 0, 2, b't', b'x']);
        let value = value.unwrap();
        let mut expected = vec![0, 0]; // version
        expected.extend_from_slice(&4000i64.to_be_bytes());
        expected.extend_from_slice(&3i16.to_be_bytes());
        expected.extend_from_slice(&60_000i32.to_be_bytes());
        expected.push(1); // Ongoing
        expected.extend_from_slice(&2i32.to_be_bytes()); // two topics
        expected.extend_from_slice(&[0, 1, b'a']);
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(&0i32.to_be_bytes());
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.extend_from_slice(&[0, 1, b'b']);
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_123i64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        assert_eq!(value, expected);
    }

    #[test]
    fn an_empty_transaction_writes_null_partitions() {
        let (_, v) = TxnRecord {
            transactional_id: "tx".into(),
            value: Some(value(0, &[])),
        }
        .encode();
        let v = v.unwrap();
        assert_eq!(&v[2 + 8 + 2 + 4 + 1..2 + 8 + 2 + 4 + 1 + 4], &[0xff; 4]);
        assert_eq!(
            TxnRecord::decode(&TxnRecord::key("tx"), Some(&v))
                .unwrap()
                .value
                .unwrap(),
            value(0, &[])
        );
    }

    #[test]
    fn a_tombstone_decodes_to_no_value() {
        let record = TxnRecord::decode(&TxnRecord::key("gone"), None).unwrap();
        assert_eq!(record.transactional_id, "gone");
        assert_eq!(record.value, None);
    }

    #[test]
    fn a_flexible_version_1_value_is_read_with_its_tagged_fields_skipped() {
        let mut v = vec![0, 1];
        v.extend_from_slice(&7i64.to_be_bytes());
        v.extend_from_slice(&2i16.to_be_bytes());
        v.extend_from_slice(&1000i32.to_be_bytes());
        v.push(2); // PrepareCommit
        v.push(2); // one topic
        v.push(2); // topic name "t"
        v.push(b't');
        v.push(3); // two partitions
        v.extend_from_slice(&5i32.to_be_bytes());
        v.extend_from_slice(&6i32.to_be_bytes());
        v.push(0); // the topic's tagged fields
        v.extend_from_slice(&11i64.to_be_bytes());
        v.extend_from_slice(&10i64.to_be_bytes());
        v.push(1); // one tagged field: previous producer id
        v.push(0);
        v.push(8);
        v.extend_from_slice(&6i64.to_be_bytes());
        let record = TxnRecord::decode(&TxnRecord::key("t1"), Some(&v)).unwrap();
        let value = record.value.unwrap();
        assert_eq!(value.producer_id, 7);
        assert_eq!(value.status, 2);
        assert_eq!(
            value.partitions,
            [("t".to_string(), 5), ("t".to_string(), 6)].into()
        );
        assert_eq!(value.last_update_timestamp_ms, 11);
        assert_eq!(value.start_timestamp_ms, 10);
    }

    #[test]
    fn other_keys_and_versions_are_refused() {
        assert_eq!(
            TxnRecord::decode(&[0, 1, 0, 0], None),
            Err(TxnRecordError::NotATransactionKey(1))
        );
        assert_eq!(
            TxnRecord::decode(&TxnRecord::key("x"), Some(&[0, 9])),
            Err(TxnRecordError::UnknownValueVersion(9))
        );
        assert_eq!(
            TxnRecord::decode(&TxnRecord::key("x"), Some(&[0, 0, 1])),
            Err(TxnRecordError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn records_round_trip(
            id in ".{0,30}",
            producer_id in any::<i64>(),
            epoch in any::<i16>(),
            timeout in any::<i32>(),
            status in 0i8..8,
            partitions in proptest::collection::btree_set(("[a-z]{1,5}", 0i32..50), 0..10),
            last in any::<i64>(),
            start in any::<i64>(),
        ) {
            let partitions = if status == 0 { BTreeSet::new() } else { partitions };
            let record = TxnRecord {
                transactional_id: id,
                value: Some(TxnLogValue {
                    producer_id,
                    producer_epoch: epoch,
                    timeout_ms: timeout,
                    status,
                    partitions,
                    last_update_timestamp_ms: last,
                    start_timestamp_ms: start,
                }),
            };
            let (k, v) = record.encode();
            prop_assert_eq!(TxnRecord::decode(&k, v.as_deref()), Ok(record));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            k in proptest::collection::vec(any::<u8>(), 0..40),
            v in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = TxnRecord::decode(&k, Some(&v));
            let _ = TxnRecord::decode(&k, None);
            let mut prefixed = vec![0u8, 1];
            prefixed.extend_from_slice(&v);
            let _ = TxnRecord::decode(&TxnRecord::key("x"), Some(&prefixed));
        }
    }
}
