//! Real librdkafka clients against a real `strom` process: data written with every
//! compression codec reads back byte-identical and in order per partition.

mod common;

use common::clients::{consume_all, create_topic, produce_all, Rec};
use common::Broker;

const PARTITIONS: i32 = 6;

fn record(i: usize) -> Rec {
    // Varied sizes and contents so compression has something to do and bugs show.
    let value: Vec<u8> = (0..(i * 7919) % 700)
        .map(|j| ((i * 31 + j * 17) % 251) as u8)
        .collect();
    Rec {
        key: format!("key-{}", i % 977).into_bytes(),
        value,
        headers: vec![
            ("seq".into(), i.to_string().into_bytes()),
            ("h2".into(), vec![i as u8; i % 5]),
        ],
    }
}

fn round_trip(compression: &str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let topic = format!("codec-{compression}");
    create_topic(&broker.addr, &topic, PARTITIONS);
    let records: Vec<Rec> = (0..100_000).map(record).collect();
    let expected = produce_all(&broker.addr, &topic, compression, &records, "1");
    assert_eq!(
        expected.len(),
        PARTITIONS as usize,
        "keys spread over every partition"
    );
    let counts = expected.iter().map(|(p, r)| (*p, r.len())).collect();
    let got = consume_all(&broker.addr, &topic, &counts);
    for (p, recs) in &expected {
        let read = &got[p];
        let offsets: Vec<i64> = read.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..recs.len() as i64).collect::<Vec<_>>(),
            "partition {p} offsets dense and ordered"
        );
        let values: Vec<&Rec> = read.iter().map(|(_, r)| r).collect();
        assert!(
            values.iter().copied().eq(recs.iter()),
            "partition {p} reads back byte-identical in order"
        );
    }
    // The batches on disk carry the producer's codec: librdkafka did compress (it only does
    // when the broker advertises Produce v0-v2, KAFKA-18659) and the broker stored verbatim.
    let segment = std::fs::read(
        broker
            .data_dir
            .join("logs")
            .join(format!("{topic}-0"))
            .join("00000000000000000000.log"),
    )
    .unwrap();
    let codec = i16::from_be_bytes([segment[21], segment[22]]) & 0x07;
    let expected_codec = ["none", "gzip", "snappy", "lz4", "zstd"]
        .iter()
        .position(|c| *c == compression)
        .unwrap() as i16;
    assert_eq!(
        codec, expected_codec,
        "first stored batch's compression codec"
    );
}

#[test]
fn uncompressed_records_with_keys_and_headers_read_back_identical_and_in_order() {
    round_trip("none");
}

#[test]
fn gzip_records_read_back_identical_and_in_order() {
    round_trip("gzip");
}

#[test]
fn snappy_records_read_back_identical_and_in_order() {
    round_trip("snappy");
}

#[test]
fn lz4_records_read_back_identical_and_in_order() {
    round_trip("lz4");
}

#[test]
fn zstd_records_read_back_identical_and_in_order() {
    round_trip("zstd");
}
