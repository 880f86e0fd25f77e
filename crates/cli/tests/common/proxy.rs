//! A TCP proxy in front of one broker that the test controls: it reads the first request of
//! each connection, recognises a follower by its client id (`strom-replica-fetcher-<id>`),
//! and can cut chosen followers off this broker (closing their connections and refusing new
//! ones) while clients and other followers pass — a network partition between brokers.

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
    if let Some(id) = follower_of(&frame) {
        let mut state = state.lock().unwrap();
        if state.cut.contains(&id) {
            return;
        }
        state.open.push((
            id,
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        ));
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
