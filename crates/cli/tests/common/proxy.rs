//! A TCP proxy in front of one broker that the test controls: it reads the first request of
//! each connection, recognises a follower by its client id (`strom-replica-fetcher-<id>`),
//! and can cut chosen followers off this broker (closing their connections and refusing new
//! ones) while clients and other followers pass — a network partition between brokers. It
//! can also cut every client connection open at the moment (followers' stay), as a flaky
//! network does to producers; clients then reconnect through it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const FETCHER_PREFIX: &str = "strom-replica-fetcher-";

#[derive(Default)]
struct State {
    cut: BTreeSet<i32>,
    /// Follower id and both sockets of each open follower connection.
    open: Vec<(i32, TcpStream, TcpStream)>,
    /// Both sockets of each client (not follower) connection opened since the last cut.
    clients: Vec<(TcpStream, TcpStream)>,
}

pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// Listens on a free port and forwards to `target_port` on 127.0.0.1.
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || forward(client, target_port, &state));
            }
        });
        Proxy { port, state }
    }

    /// Cuts follower `broker` off the broker behind this proxy.
    pub fn cut(&self, broker: i32) {
        let mut state = self.state.lock().unwrap();
        state.cut.insert(broker);
        for (id, a, b) in &state.open {
            if *id == broker {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        state.open.retain(|(id, _, _)| *id != broker);
    }

    pub fn heal(&self, broker: i32) {
        self.state.lock().unwrap().cut.remove(&broker);
    }

    /// Closes every client connection open now, mid-request or not; returns how many.
    pub fn cut_clients(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        for (a, b) in &state.clients {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        std::mem::take(&mut state.clients).len()
    }
}

/// The follower id in a request frame's header, if its client id names one. Header: api key,
/// version, correlation id, then the client id as a nullable i16-length string.
fn follower_of(frame: &[u8]) -> Option<i32> {
    let len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let client_id = std::str::from_utf8(frame.get(10..10 + usize::try_from(len).ok()?)?).ok()?;
    client_id.strip_prefix(FETCHER_PREFIX)?.parse().ok()
}

fn forward(mut client: TcpStream, target_port: u16, state: &Mutex<State>) {
    let mut size = [0u8; 4];
    if client.read_exact(&mut size).is_err() {
        return;
    }
    let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    if client.read_exact(&mut frame).is_err() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target_port)) else {
        return;
    };
    let sockets = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    match follower_of(&frame) {
        Some(id) => {
            let mut state = state.lock().unwrap();
            if state.cut.contains(&id) {
                return;
            }
            state.open.push((id, sockets.0, sockets.1));
        }
        None => state.lock().unwrap().clients.push(sockets),
    }
    if server.write_all(&size).is_err() || server.write_all(&frame).is_err() {
        return;
    }
    let (mut c2, mut s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut server);
    let _ = server.shutdown(Shutdown::Both);
}
