//! One client connection: frames are read and served strictly in order (Kafka's rule: the
//! next request of a connection starts after the previous one finished), while a separate
//! task writes responses, coalescing small ones and sending record bytes with `sendfile`.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;
use strom_protocol::frame::{self, HeaderPrefix};
use strom_protocol::versions;
use strom_storage::FileSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::api::{self, Outcome};
use crate::quotas::QuotaKind;
use crate::response::{Part, Response};
use crate::Broker;

/// Responses waiting for the writer; the reader pauses when it is full.
const RESPONSES_QUEUED_MAX: usize = 32;
/// Bytes the writer gathers before writing them out.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Largest read into a frame buffer at once: a frame's buffer grows with the bytes that
/// actually arrived, never to its declared size up front.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Serves a connection until the peer closes it, it misbehaves, or the broker shuts down.
pub async fn serve(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel(RESPONSES_QUEUED_MAX);
    let writer_task = tokio::spawn(write_loop(writer, rx));
    match read_loop(&mut reader, &broker, &tx, peer).await {
        Ok(()) => debug!(%peer, "connection closed"),
        Err(reason) => warn!(%peer, %reason, "closing connection"),
    }
    drop(tx);
    if let Ok(Err(e)) = writer_task.await {
        debug!(%peer, error = %e, "writing to connection failed");
    }
}

async fn read_loop(
    reader: &mut OwnedReadHalf,
    broker: &Broker,
    tx: &mpsc::Sender<Response>,
    peer: SocketAddr,
) -> Result<(), String> {
    let mut shutdown = broker.shutdown.clone();
    let max_bytes = broker.config.socket_request_max_bytes as usize;
    loop {
        let mut prefix = [0u8; 4];
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            read = reader.read_exact(&mut prefix) => match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(format!("read failed: {e}")),
            },
        }
        let length = frame::request_frame_length(prefix, max_bytes).map_err(|e| e.to_string())?;
        // Held until the request is served: the bytes of a request count against the budget
        // from the moment its buffer may grow until its response is built.
        let _memory = match &broker.request_memory {
            Some(budget) => {
                let permits = u32::try_from(length)
                    .unwrap_or(u32::MAX)
                    .min(budget_capacity(broker));
                Some(
                    Arc::clone(budget)
                        .acquire_many_owned(permits)
                        .await
                        .map_err(|_| "shutting down".to_string())?,
                )
            }
            None => None,
        };
        let body = read_body(reader, length).await?;
        let Some(header) = HeaderPrefix::parse(&body) else {
            return Err("frame shorter than a request header".into());
        };
        let Ok(api_key) = ApiKey::try_from(header.api_key) else {
            return Err(format!("unknown api key {}", header.api_key));
        };
        if !versions::is_served(header.api_key, header.api_version) {
            if api_key == ApiKey::ApiVersions {
                send(tx, api::unsupported_version_response(header.correlation_id)).await?;
                continue;
            }
            return Err(format!(
                "unsupported version {} of {api_key:?}",
                header.api_version
            ));
        }
        let mut rest = body;
        let request_header =
            api::decode_header(&mut rest, api_key, header.api_version).map_err(|e| {
                format!(
                    "{api_key:?} v{} header does not decode: {e}",
                    header.api_version
                )
            })?;
        debug!(
            client_id = request_header.client_id.as_deref().unwrap_or(""),
            api = ?api_key,
            version = header.api_version,
            "request"
        );
        // Without any client quota (the usual case) requests are not metered at all.
        let metered = !broker.topics.image().image.client_quotas.is_empty();
        let client_id = metered.then(|| {
            request_header
                .client_id
                .as_deref()
                .unwrap_or("")
                .to_string()
        });
        let handling = api::handle(broker, api_key, request_header, rest, peer);
        let (handled, busy) = if metered {
            BusyTime::new(handling).await
        } else {
            (handling.await, Duration::ZERO)
        };
        match handled.outcome {
            Outcome::Respond(response) => send(tx, response).await?,
            Outcome::NoResponse => {}
            Outcome::Close(reason) => return Err(reason),
        }
        let request_throttle_ms =
            client_id.map_or(0, |client_id| request_throttle_ms(broker, &client_id, busy));
        let throttle_ms = handled.throttle_ms.max(request_throttle_ms);
        if throttle_ms > 0 {
            // KIP-219: the answer went out at once; the connection is muted meanwhile.
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(throttle_ms as u64)) => {}
            }
        }
    }
}

/// Records the time a request kept a worker busy against the client's `request_percentage`
/// quota (brokers' own fetches are exempt, as Kafka exempts cluster actions) and returns its
/// throttle time.
fn request_throttle_ms(broker: &Broker, client_id: &str, busy: Duration) -> i32 {
    if client_id.starts_with(crate::fetcher::FETCHER_CLIENT_ID_PREFIX) {
        return 0;
    }
    let image = broker.topics.image();
    // Percent-seconds of one thread: a second of work is 100.
    let value = busy.as_secs_f64() * 100.0;
    broker.quotas.record(
        &image.image.client_quotas,
        QuotaKind::Request,
        client_id,
        value,
        crate::topics::now_ms(),
    )
}

/// A future's output and the time spent inside its `poll`s: the time it kept a worker busy,
/// not the time it was parked waiting (Kafka's request thread time).
struct BusyTime<F> {
    inner: Pin<Box<F>>,
    busy: Duration,
}

impl<F: Future> BusyTime<F> {
    fn new(inner: F) -> BusyTime<F> {
        BusyTime {
            inner: Box::pin(inner),
            busy: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for BusyTime<F> {
    type Output = (F::Output, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        self.busy += started.elapsed();
        polled.map(|output| (output, self.busy))
    }
}

/// The configured size of the request-memory budget (a request larger than the whole budget
/// takes all of it rather than waiting forever).
fn budget_capacity(broker: &Broker) -> u32 {
    u32::try_from(broker.config.queued_max_request_bytes)
        .unwrap_or(u32::MAX)
        .max(1)
}

async fn send(tx: &mpsc::Sender<Response>, response: Response) -> Result<(), String> {
    tx.send(response)
        .await
        .map_err(|_| "the writer stopped".to_string())
}

/// Reads a frame body of `length` bytes, growing the buffer only as bytes arrive.
async fn read_body(reader: &mut OwnedReadHalf, length: usize) -> Result<bytes::Bytes, String> {
    let mut body = BytesMut::with_capacity(length.min(READ_CHUNK_BYTES));
    while body.len() < length {
        let want = (length - body.len()).min(READ_CHUNK_BYTES);
        body.reserve(want);
        let read = (&mut *reader)
            .take(want as u64)
            .read_buf(&mut body)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if read == 0 {
            return Err(format!(
                "peer closed the connection mid-frame ({} of {length} bytes)",
                body.len()
            ));
        }
    }
    Ok(body.freeze())
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Response>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUFFER_BYTES);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(response) = next.take() {
            for part in response.parts {
                match part {
                    Part::Bytes(bytes) if bytes.len() >= WRITE_BUFFER_BYTES => {
                        flush(&mut writer, &mut buf).await?;
                        writer.write_all(&bytes).await?;
                    }
                    Part::Bytes(bytes) => buf.extend_from_slice(&bytes),
                    Part::File(slice) => {
                        flush(&mut writer, &mut buf).await?;
                        send_file(&writer, &slice).await?;
                    }
                }
            }
            if buf.len() >= WRITE_BUFFER_BYTES {
                flush(&mut writer, &mut buf).await?;
            }
            next = rx.try_recv().ok();
        }
        flush(&mut writer, &mut buf).await?;
    }
    Ok(())
}

async fn flush(writer: &mut OwnedWriteHalf, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if !buf.is_empty() {
        writer.write_all(buf).await?;
        buf.clear();
    }
    Ok(())
}

/// Sends a segment file range to the socket with `sendfile(2)`: the bytes never enter user
/// space. A file that ends early (deleted under us) fails the connection, since the frame
/// length was already promised.
async fn send_file(writer: &OwnedWriteHalf, slice: &FileSlice) -> std::io::Result<()> {
    let stream: &TcpStream = writer.as_ref();
    let socket_fd = stream.as_raw_fd();
    let file_fd = slice.segment.raw_fd();
    let mut offset = slice.position as libc::off_t;
    let mut remaining = slice.len;
    while remaining > 0 {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call (the slice holds
            // the segment, the write half holds the socket); `offset` is a valid pointer.
            let n = unsafe { libc::sendfile(socket_fd, file_fd, &mut offset, remaining) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment ended before the promised bytes",
                ))
            }
            Ok(n) => remaining -= n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
