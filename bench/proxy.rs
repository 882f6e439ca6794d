//! A TCP proxy that puts a fixed delay on every chunk in each direction (a network between the
//! runner and the database) and counts round trips: a round trip is a turn of the
//! conversation, the client sending after the server has answered (pipelined messages sent
//! before any answer share one). A client's goodbye (a lone Terminate message, which nothing
//! answers) is not one.
//!
//! Threads rather than tokio tasks: tokio's timer has millisecond granularity, which would
//! turn a 1 ms delay into 1-2 ms; a thread's sleep is within tens of microseconds.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The protocol's Terminate message: 'X' and its length.
const TERMINATE: &[u8] = b"X\0\0\0\x04";

pub struct Proxy {
    pub port: u16,
    trips: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to the host and port of `url`, each
    /// way after `one_way`.
    pub fn start(url: &str, one_way: Duration) -> Proxy {
        let upstream = upstream_of(url);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let trips = Arc::new(AtomicU64::new(0));
        let counted = trips.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // Whether the server has said something since the client last did.
                let answered = Arc::new(AtomicBool::new(true));
                let up = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(up.0, up.1, one_way, {
                    let answered = answered.clone();
                    let trips = counted.clone();
                    move |chunk: &[u8]| {
                        if chunk != TERMINATE && answered.swap(false, Ordering::SeqCst) {
                            trips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                pipe(server, client, one_way, move |_: &[u8]| {
                    answered.store(true, Ordering::SeqCst)
                });
            }
        });
        Proxy { port, trips }
    }

    /// `url` pointed at the proxy instead.
    pub fn url(&self, url: &str) -> String {
        let (head, rest) = url.split_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap_or(rest.len())..];
        format!("{head}@127.0.0.1:{}{path}", self.port)
    }

    /// Round trips since the last call.
    pub fn take_trips(&self) -> u64 {
        self.trips.swap(0, Ordering::Relaxed)
    }
}

fn upstream_of(url: &str) -> SocketAddr {
    let rest = url.split_once('@').map_or(url, |x| x.1);
    let hostport = &rest[..rest.find('/').unwrap_or(rest.len())];
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    hostport.to_socket_addrs().unwrap().next().unwrap()
}

/// Copies `from` to `to`, each chunk delivered `delay` after it was read; `on_chunk` runs as
/// each chunk is read.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    on_chunk: impl Fn(&[u8]) + Send + 'static,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    on_chunk(&buf[..n]);
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
