//! The active controller's producer id decisions (Kafka's `ProducerIdControlManager`,
//! KIP-730): a broker asks for a block of ids (AllocateProducerIds) and gets the next
//! [`BLOCK_SIZE`] ids no broker has had, recorded as one `ProducerIds` record.
//!
//! The image's `next_producer_id` only moves forward (the image refuses a record that does
//! not move it), and the block is answered only once its record is committed, so no two
//! brokers are ever handed the same id — across controller failovers and restarts too, as
//! snapshots keep `next_producer_id`.

use serde::{Deserialize, Serialize};
use strom_metadata::{MetadataImage, MetadataRecord};

use crate::service::code;

/// Ids per block, as Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`.
pub const BLOCK_SIZE: i32 = 1000;

/// A block of producer ids: `first_producer_id` and the `count` ids after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdsBlock {
    pub first_producer_id: i64,
    pub count: i32,
}

impl ProducerIdsBlock {
    /// The first id after the block.
    pub fn end(&self) -> i64 {
        self.first_producer_id + i64::from(self.count)
    }
}

/// The next block for `broker_id` and the record that hands it out, or Kafka's error:
/// STALE_BROKER_EPOCH when the broker is not registered with that epoch, UNKNOWN_SERVER_ERROR
/// when the id space is exhausted.
pub fn allocate(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
) -> Result<(ProducerIdsBlock, MetadataRecord), (i16, String)> {
    match image.brokers.get(&broker_id) {
        None => {
            return Err((
                code::STALE_BROKER_EPOCH,
                format!("No broker registration found for broker id {broker_id}"),
            ))
        }
        Some(b) if b.epoch != broker_epoch => {
            return Err((
                code::STALE_BROKER_EPOCH,
                format!(
                    "Expected broker epoch {}, but got broker epoch {broker_epoch}",
                    b.epoch
                ),
            ))
        }
        Some(_) => {}
    }
    let first_producer_id = image.next_producer_id;
    if first_producer_id > i64::MAX - i64::from(BLOCK_SIZE) {
        return Err((
            code::UNKNOWN_SERVER_ERROR,
            format!(
                "Exhausted all producer ids: a block from {first_producer_id} would pass the largest id"
            ),
        ));
    }
    let block = ProducerIdsBlock {
        first_producer_id,
        count: BLOCK_SIZE,
    };
    let record = MetadataRecord::ProducerIds {
        broker_id,
        broker_epoch,
        next_producer_id: block.end(),
    };
    Ok((block, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn image_with_brokers() -> MetadataImage {
        let register = |broker_id: i32| MetadataRecord::RegisterBroker {
            broker_id,
            incarnation_id: Uuid::from_u128(broker_id as u128),
            epoch: i64::from(broker_id) * 10,
            host: "127.0.0.1".into(),
            port: 9000,
            rack: None,
        };
        MetadataImage::default()
            .apply(&[register(1), register(2)])
            .unwrap()
    }

    #[test]
    fn blocks_follow_each_other_whichever_broker_asks() {
        let mut image = image_with_brokers();
        let mut blocks = Vec::new();
        for broker_id in [1, 2, 1, 1, 2] {
            let (block, record) = allocate(&image, broker_id, i64::from(broker_id) * 10).unwrap();
            image = image.apply(&[record]).unwrap();
            blocks.push(block);
        }
        let firsts: Vec<i64> = blocks.iter().map(|b| b.first_producer_id).collect();
        assert_eq!(firsts, vec![0, 1000, 2000, 3000, 4000]);
        assert!(blocks.iter().all(|b| b.count == BLOCK_SIZE));
        assert_eq!(image.next_producer_id, 5000);
    }

    #[test]
    fn a_stale_or_unknown_broker_epoch_gets_stale_broker_epoch() {
        let image = image_with_brokers();
        for (broker_id, epoch) in [(1, 11), (1, -1), (3, 30)] {
            let (code, _) = allocate(&image, broker_id, epoch).unwrap_err();
            assert_eq!(code, code::STALE_BROKER_EPOCH, "broker {broker_id}");
        }
    }

    #[test]
    fn the_id_space_runs_out_with_kafkas_unknown_server_error() {
        let image = image_with_brokers()
            .apply(&[MetadataRecord::ProducerIds {
                broker_id: 1,
                broker_epoch: 10,
                next_producer_id: i64::MAX - i64::from(BLOCK_SIZE),
            }])
            .unwrap();
        let (last, record) = allocate(&image, 1, 10).unwrap();
        assert_eq!(last.end(), i64::MAX);
        let image = image.apply(&[record]).unwrap();
        let (code, message) = allocate(&image, 1, 10).unwrap_err();
        assert_eq!(code, code::UNKNOWN_SERVER_ERROR, "{message}");
    }
}
