//! Fuzzes every request decoder Strom serves with arbitrary and mutated bytes: decoding must
//! return an error or a value, never panic or abort (hostile array counts included, which is
//! why this test binary installs the same guarded allocator as `strom`).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, ProduceRequest, RequestHeader, RequestKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use proptest::prelude::*;
use strom_protocol::alloc_guard::GuardedAllocator;
use strom_protocol::batch;
use strom_protocol::frame::HeaderPrefix;
use strom_protocol::versions::{is_served, SUPPORTED};

#[global_allocator]
static ALLOCATOR: GuardedAllocator = GuardedAllocator;

/// The broker's decode path for one frame body: prefix, header, body, batch validation.
fn decode_like_the_broker(body: &[u8]) {
    let Some(prefix) = HeaderPrefix::parse(body) else {
        return;
    };
    let Ok(api_key) = ApiKey::try_from(prefix.api_key) else {
        return;
    };
    if !is_served(prefix.api_key, prefix.api_version) {
        return;
    }
    let mut rest = Bytes::copy_from_slice(body);
    let Ok(_) = RequestHeader::decode(
        &mut rest,
        api_key.request_header_version(prefix.api_version),
    ) else {
        return;
    };
    if let Ok(RequestKind::Produce(req)) =
        RequestKind::decode(api_key, &mut rest, prefix.api_version)
    {
        for topic in req.topic_data {
            for partition in topic.partition_data {
                if let Some(records) = partition.records {
                    let _ = batch::validate_produce(&records, 1 << 20);
                }
            }
        }
    }
}

fn header(api_key: i16, version: i16) -> Vec<u8> {
    let mut out = BytesMut::new();
    let key = ApiKey::try_from(api_key).expect("served key");
    RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(&mut out, key.request_header_version(version))
        .expect("header");
    out.to_vec()
}

fn served() -> impl Strategy<Value = (i16, i16)> {
    proptest::sample::select(
        SUPPORTED
            .iter()
            .flat_map(|s| (s.served_min..=s.max).map(move |v| (s.key as i16, v)))
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// A valid header for every served API and version, then arbitrary body bytes.
    #[test]
    fn arbitrary_bodies_never_panic((api_key, version) in served(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = header(api_key, version);
        frame.extend_from_slice(&body);
        decode_like_the_broker(&frame);
    }

    /// Valid produce requests with bytes overwritten: lengths and counts become hostile.
    #[test]
    fn mutated_valid_requests_never_panic(
        version in 3i16..=11,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let produce = ProduceRequest::default().with_acks(1).with_timeout_ms(1000).with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(kafka_protocol::messages::TopicName("t".into()))
                .with_partition_data(vec![kafka_protocol::messages::produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(batch::testing::batch(&[b"a", b"bc"], 5))))]),
        ]);
        let mut frame = header(0, version);
        let mut body = BytesMut::new();
        produce.encode(&mut body, version).expect("encode");
        frame.put_slice(&body);
        for (index, byte) in flips {
            let at = index.index(frame.len());
            frame[at] = byte;
        }
        decode_like_the_broker(&frame);
    }
}

#[test]
fn a_hostile_array_count_fails_to_decode_instead_of_aborting() {
    let mut frame = header(3, 4);
    frame.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 1]);
    let mut rest = Bytes::from(frame);
    let _ = RequestHeader::decode(&mut rest, 1).expect("header");
    assert!(MetadataRequest::decode(&mut rest, 4).is_err());
}
