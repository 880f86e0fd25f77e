//! Kafka protocol requests from this broker to another: one framed request and its
//! response over a connection the caller owns (the follower fetcher, the transaction marker
//! sender, the transaction verifier). The response's size is checked before anything is
//! reserved for it.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to another broker, opened on first use, again after a failed exchange, and
/// again when the broker's endpoint changed.
#[derive(Default)]
pub(crate) struct PeerConnection {
    open: Option<((String, u16), TcpStream)>,
}

impl PeerConnection {
    /// [`exchange`] with the broker at `endpoint`: connecting and the exchange each within
    /// `timeout`; a failure closes the connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn exchange<Req, Resp>(
        &mut self,
        endpoint: (String, u16),
        api_key: ApiKey,
        version: i16,
        client_id: &str,
        correlation_id: i32,
        request: &Req,
        response_bytes_max: usize,
        timeout: Duration,
    ) -> anyhow::Result<Resp>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        if self.open.as_ref().is_some_and(|(at, _)| *at != endpoint) {
            self.open = None;
        }
        let (_, stream) = match &mut self.open {
            Some(open) => open,
            None => {
                let (host, port) = (endpoint.0.as_str(), endpoint.1);
                let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
                    .await
                    .map_err(|_| anyhow::anyhow!("connecting to {host}:{port} timed out"))??;
                let _ = stream.set_nodelay(true);
                self.open.insert((endpoint, stream))
            }
        };
        let exchanged = tokio::time::timeout(
            timeout,
            exchange(
                stream,
                api_key,
                version,
                client_id,
                correlation_id,
                request,
                response_bytes_max,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{api_key:?} timed out"))
        .and_then(|r| r);
        if exchanged.is_err() {
            self.open = None;
        }
        exchanged
    }
}

/// One request of `api_key` at `version` and its response (at most `response_bytes_max`).
pub(crate) async fn exchange<Req, Resp>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    client_id: &str,
    correlation_id: i32,
    request: &Req,
    response_bytes_max: usize,
) -> anyhow::Result<Resp>
where
    Req: Encodable + HeaderVersion,
    Resp: Decodable + HeaderVersion,
{
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let mut body = BytesMut::new();
    header.encode(&mut body, Req::header_version(version))?;
    request.encode(&mut body, version)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(i32::try_from(body.len())?);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    let size = stream.read_i32().await?;
    let size = usize::try_from(size).map_err(|_| anyhow::anyhow!("negative frame size"))?;
    anyhow::ensure!(
        size <= response_bytes_max,
        "{api_key:?} response of {size} bytes"
    );
    let mut buf = vec![0u8; size];
    stream.read_exact(&mut buf).await?;
    let mut buf = Bytes::from(buf);
    let header = ResponseHeader::decode(&mut buf, Resp::header_version(version))?;
    anyhow::ensure!(
        header.correlation_id == correlation_id,
        "response to request {} while waiting for {correlation_id}",
        header.correlation_id
    );
    Resp::decode(&mut buf, version)
}
