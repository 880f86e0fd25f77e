//! ApiVersions: the versions Strom serves (KIP-511: an unknown version is answered at v0
//! with UNSUPPORTED_VERSION and the full list, so the client can pick a version).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::Encodable;
use kafka_protocol::ResponseError;
use strom_protocol::versions::SUPPORTED;

use crate::response::Response;
use crate::Broker;

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.advertised_min)
                .with_max_version(s.max)
        })
        .collect()
}

pub fn handle(_broker: &Broker, _req: &ApiVersionsRequest, version: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default().with_api_keys(api_keys());
    if version >= 3 {
        response.finalized_features_epoch = -1;
    }
    response
}

/// The answer to an ApiVersions request at a version newer than served: v0 layout (header
/// v0), error UNSUPPORTED_VERSION, and the supported ranges.
pub fn unsupported_version_response(correlation_id: i32) -> Response {
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys());
    let size = body.compute_size(0).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(8 + size);
    buf.put_i32((4 + size) as i32);
    buf.put_i32(correlation_id);
    if body.encode(&mut buf, 0).is_err() {
        return Response::from_bytes(Bytes::new());
    }
    Response::from_bytes(buf.freeze())
}
