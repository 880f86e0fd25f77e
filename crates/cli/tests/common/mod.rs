//! Test harness: starts the real `strom` binary on a free port with its own data directory,
//! and a minimal raw Kafka client for requests real clients would never send.

#![allow(dead_code)]

pub mod clients;
pub mod cluster;
pub mod proxy;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

/// How long a test waits for the broker to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `strom server` process.
pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    extra: Vec<String>,
    /// Started with `--config` (a cluster node) instead of the embedded default.
    config: Option<PathBuf>,
    ready: Option<mpsc::Receiver<String>>,
}

impl Broker {
    /// Starts a broker on 127.0.0.1 with an OS-chosen port and the given data directory.
    pub fn start(data_dir: &Path, overrides: &[&str]) -> Broker {
        let extra: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let mut broker = Broker {
            child: None,
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.join("strom.log"),
            extra,
            config: None,
            ready: None,
        };
        broker.launch();
        broker
    }

    /// Spawns `strom server --config <config>` without waiting for it to listen (a cluster
    /// node waits for its quorum); see [`Broker::wait_ready`].
    pub fn spawn_configured(data_dir: &Path, config: &Path) -> Broker {
        let mut broker = Broker {
            child: None,
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.join("strom.log"),
            extra: Vec::new(),
            config: Some(config.to_path_buf()),
            ready: None,
        };
        broker.spawn();
        broker
    }

    fn launch(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Waits for the listening line; panics with the log if it does not come.
    pub fn wait_ready(&mut self) {
        let rx = self.ready.take().expect("spawned");
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!(
                    "strom did not start; log:\n{}",
                    std::fs::read_to_string(&self.log_path).unwrap_or_default()
                );
            }
        }
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strom"));
        cmd.arg("server");
        match &self.config {
            Some(config) => {
                cmd.arg("--config").arg(config);
            }
            None => {
                cmd.arg("--override")
                    .arg("listeners=PLAINTEXT://127.0.0.1:0")
                    .arg("--override")
                    .arg(format!("log.dirs={}", self.data_dir.join("logs").display()));
            }
        }
        for o in &self.extra {
            cmd.arg("--override").arg(o);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn strom");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("strom listening on ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        self.ready = Some(rx);
        self.child = Some(child);
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait")
    }

    /// SIGKILL: the process dies without flushing anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        self.launch();
    }

    /// Starts again without waiting for the listening line.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().map(|s| s.is_none()).unwrap_or(false))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A bare TCP connection speaking Kafka frames.
pub struct RawClient {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl RawClient {
    pub fn connect(addr: &str) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        RawClient {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends one request and returns its correlation id.
    pub fn send<R: Encodable + HeaderVersion>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &R,
    ) -> i32 {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("raw-test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, R::header_version(version))
            .expect("encode header");
        body.encode(&mut buf, version).expect("encode body");
        self.send_frame(&buf);
        self.correlation_id
    }

    pub fn send_frame(&mut self, body: &[u8]) {
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).expect("write frame");
    }

    /// Reads one response frame; `None` if the broker closed the connection.
    pub fn recv_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    /// Reads and decodes one response of the given kind.
    pub fn recv<R: Decodable + HeaderVersion>(&mut self, version: i16) -> R {
        let mut frame = self
            .recv_frame()
            .expect("a response, not a closed connection");
        let header = ResponseHeader::decode(&mut frame, R::header_version(version))
            .expect("response header");
        assert_eq!(header.correlation_id, self.correlation_id);
        let response = R::decode(&mut frame, version).expect("response body");
        assert_eq!(frame.remaining(), 0, "trailing bytes in response");
        response
    }

    /// True if the broker closes the connection (read returns EOF or reset).
    pub fn is_closed_by_broker(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}
