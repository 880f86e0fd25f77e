//! InitProducerId (v0–v5): a producer id and epoch for an idempotent or transactional
//! producer.
//!
//! As Kafka's `KafkaApis` and `TransactionCoordinator.handleInitProducerId`: a producer id
//! and epoch (v3+, KIP-360) must be given both or neither (INVALID_REQUEST); without a
//! transactional id the producer gets a fresh id from [`crate::producer_ids`] with epoch 0
//! — even when it names its current id and epoch, as Kafka does for idempotent producers;
//! an empty transactional id is INVALID_REQUEST; a transactional id goes to the transaction
//! coordinator.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tracing::debug;

use super::Ctx;
use crate::Broker;

const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

pub async fn handle(
    broker: &Broker,
    req: InitProducerIdRequest,
    ctx: &Ctx,
) -> InitProducerIdResponse {
    if let Err(code) = current_producer(&req) {
        return error_response(code);
    }
    match req.transactional_id.as_deref().map(|id| id.as_str()) {
        None => idempotent(broker, ctx).await,
        Some("") => error_response(ResponseError::InvalidRequest.code()),
        Some(_) => transactional(broker, req, ctx).await,
    }
}

/// A producer without a transactional id: a new producer id at epoch 0.
async fn idempotent(broker: &Broker, ctx: &Ctx) -> InitProducerIdResponse {
    match broker.producer_ids.generate().await {
        Ok(producer_id) => {
            debug!(producer_id, client_id = %ctx.client_id, "new idempotent producer");
            InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(0)
        }
        Err(code) => error_response(code),
    }
}

/// A transactional producer: the transaction coordinator's (Kafka's
/// `TransactionCoordinator.handleInitProducerId`).
async fn transactional(
    broker: &Broker,
    req: InitProducerIdRequest,
    ctx: &Ctx,
) -> InitProducerIdResponse {
    crate::api::txn::init_producer_id(broker, req, ctx).await
}

/// The producer id and epoch the request names (v3+), or INVALID_REQUEST when only one of
/// them is given.
fn current_producer(req: &InitProducerIdRequest) -> Result<Option<(i64, i16)>, i16> {
    match (req.producer_id.0, req.producer_epoch) {
        (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => Ok(None),
        (NO_PRODUCER_ID, _) | (_, NO_PRODUCER_EPOCH) => Err(ResponseError::InvalidRequest.code()),
        (id, epoch) => Ok(Some((id, epoch))),
    }
}

fn error_response(code: i16) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(NO_PRODUCER_ID))
        .with_producer_epoch(NO_PRODUCER_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(producer_id: i64, producer_epoch: i16) -> InitProducerIdRequest {
        InitProducerIdRequest::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
    }

    #[test]
    fn a_producer_id_and_epoch_come_both_or_neither() {
        assert_eq!(current_producer(&request(-1, -1)), Ok(None));
        assert_eq!(current_producer(&request(7, 3)), Ok(Some((7, 3))));
        for (id, epoch) in [(-1, 0), (7, -1)] {
            assert_eq!(
                current_producer(&request(id, epoch)),
                Err(ResponseError::InvalidRequest.code()),
                "{id}/{epoch}"
            );
        }
    }

    #[test]
    fn errors_carry_no_producer() {
        let response = error_response(ResponseError::CoordinatorLoadInProgress.code());
        assert_eq!((response.producer_id.0, response.producer_epoch), (-1, -1));
    }
}
