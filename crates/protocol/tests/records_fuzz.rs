//! The record reader never panics on peer bytes: arbitrary bytes, and valid batches of every
//! codec with bytes flipped or cut, give records or an error. Batches the builder writes
//! read back as the records that went in.

use proptest::prelude::*;
use strom_protocol::batch::{self, Compression};
use strom_protocol::records::testing::{batch as build_batch, TestRecord};
use strom_protocol::records::{keyless_records, RecordReader};

/// Generous enough for every generated batch, small enough that a hostile length is refused.
const LIMIT_BYTES: usize = 1 << 20;

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Snappy),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
    ]
}

/// Key, value (None: tombstone), timestamp offset.
type Generated = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

fn records() -> impl Strategy<Value = Vec<Generated>> {
    proptest::collection::vec(
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            -1000i64..1000,
        ),
        1..20,
    )
}

fn encode(base_offset: i64, generated: &[Generated], codec: Compression) -> Vec<u8> {
    let records: Vec<TestRecord<'_>> = generated
        .iter()
        .map(|(k, v, t)| (k.as_deref(), v.as_deref(), 1_700_000_000_000 + t))
        .collect();
    build_batch(base_offset, &records, codec)
}

/// Reads every record until the end or the first error; never panics.
fn drain(bytes: &[u8]) -> Result<usize, strom_protocol::records::RecordsError> {
    let mut reader = RecordReader::new(bytes, LIMIT_BYTES)?;
    let mut count = 0;
    while reader.next_record()?.is_some() {
        count += 1;
    }
    Ok(count)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = drain(&bytes);
        if let Ok(batches) = batch::validate_produce(&bytes, 1 << 20) {
            let _ = keyless_records(&bytes, &batches);
        }
    }

    #[test]
    fn flipped_bytes_of_a_valid_batch_never_panic(
        generated in records(),
        codec in codec(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode(0, &generated, codec);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = drain(&bytes);
    }

    #[test]
    fn arbitrary_offsets_and_timestamps_never_panic(
        generated in records(),
        codec in codec(),
        base_offset in any::<i64>(),
        base_timestamp in any::<i64>(),
        last_offset_delta in any::<i32>(),
    ) {
        let mut bytes = encode(0, &generated, codec);
        bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        bytes[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        bytes[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
        let _ = drain(&bytes);
    }

    #[test]
    fn a_cut_valid_batch_never_panics(generated in records(), codec in codec(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(0, &generated, codec);
        let cut = cut.index(bytes.len());
        let mut short = bytes[..cut].to_vec();
        if short.len() >= 12 {
            // Keep the framing consistent so the reader gets past the header check.
            let length = (short.len() - 12) as i32;
            short[8..12].copy_from_slice(&length.to_be_bytes());
        }
        let _ = drain(&short);
    }

    #[test]
    fn written_batches_read_back_as_the_records_that_went_in(
        generated in records(),
        codec in codec(),
        base_offset in 0i64..1_000_000,
    ) {
        let bytes = encode(base_offset, &generated, codec);
        prop_assert!(batch::check_stored(&bytes).is_ok());
        let mut reader = RecordReader::new(&bytes, LIMIT_BYTES).unwrap();
        for (i, (key, value, t)) in generated.iter().enumerate() {
            let record = reader.next_record().unwrap().expect("a record per input");
            prop_assert_eq!(record.offset, base_offset + i as i64);
            prop_assert_eq!(record.key, key.as_deref());
            prop_assert_eq!(record.value, value.as_deref());
            prop_assert_eq!(record.timestamp, 1_700_000_000_000 + t);
        }
        prop_assert!(reader.next_record().unwrap().is_none());
    }
}
