//! Responses as the connection writes them: a list of parts, either bytes already encoded
//! or a [`FileSlice`] of a segment sent with `sendfile`.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion};
use strom_storage::FileSlice;

/// One piece of a response frame.
#[derive(Debug, Clone)]
pub enum Part {
    Bytes(Bytes),
    File(FileSlice),
}

/// A complete response frame, size prefix included.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub parts: Vec<Part>,
}

impl Response {
    pub fn from_bytes(bytes: Bytes) -> Response {
        Response {
            parts: vec![Part::Bytes(bytes)],
        }
    }

    pub fn len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len(),
                Part::File(f) => f.len,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes a response message with its header and size prefix.
pub fn encode<R: Encodable + HeaderVersion>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Response, crate::BrokerError> {
    let header_version = api_key.response_header_version(api_version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encode_error =
        |e: anyhow::Error| crate::BrokerError::Encode(format!("{api_key:?} v{api_version}: {e}"));
    let size = header.compute_size(header_version).map_err(encode_error)?
        + body.compute_size(api_version).map_err(encode_error)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header
        .encode(&mut buf, header_version)
        .map_err(encode_error)?;
    body.encode(&mut buf, api_version).map_err(encode_error)?;
    Ok(Response::from_bytes(buf.freeze()))
}

/// Writes a response header (after a size prefix placeholder the caller fills in).
pub fn put_header(buf: &mut BytesMut, api_key: ApiKey, api_version: i16, correlation_id: i32) {
    buf.put_i32(correlation_id);
    if api_key.response_header_version(api_version) >= 1 {
        buf.put_u8(0); // no tagged fields
    }
}
