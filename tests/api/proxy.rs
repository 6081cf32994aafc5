//! A TCP proxy in front of the shared Redis, so one test can lose "its" Redis without
//! stopping the server every other test uses.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

use crate::helpers::until;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Bytes flow both ways.
    Forward = 0,
    /// Connections are accepted and then closed at once: Redis is down.
    Refuse = 1,
    /// Connections are accepted and nothing ever comes back: Redis hangs.
    Blackhole = 2,
    /// Bytes flow, but every chunk Redis sends back waits `SLOW_MS` first: a far Redis.
    Slow = 3,
}

/// The delay of [`Mode::Slow`] per chunk of replies.
pub const SLOW_MS: u64 = 50;

pub struct Proxy {
    pub url: String,
    mode: Arc<AtomicU8>,
    /// Bumped on every mode change: connections of an older generation close.
    generation: Arc<AtomicU64>,
    /// Connections open now, by the generation they were born in.
    open: Open,
}

type Open = Arc<Mutex<HashMap<u64, usize>>>;

/// Counts a connection as open in its generation while it lives.
struct Counted(Open, u64);

impl Counted {
    fn new(open: &Open, born: u64) -> Counted {
        *open.lock().unwrap().entry(born).or_default() += 1;
        Counted(open.clone(), born)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Ok(mut open) = self.0.lock() {
            if let Some(n) = open.get_mut(&self.1) {
                *n -= 1;
            }
        }
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(Mode::Forward as u8));
        let generation = Arc::new(AtomicU64::new(0));
        let open = Open::default();
        let upstream = upstream.to_string();
        let (m, g, o) = (mode.clone(), generation.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (m, g, upstream) = (m.clone(), g.clone(), upstream.clone());
                let born = g.load(Ordering::SeqCst);
                let counted = Counted::new(&o, born);
                tokio::spawn(async move {
                    let _counted = counted;
                    match m.load(Ordering::SeqCst) {
                        0 => {
                            if let Ok(server) = TcpStream::connect(&upstream).await {
                                pipe(client, server, g, born).await;
                            }
                        }
                        1 => drop(client),
                        3 => {
                            if let Ok(server) = TcpStream::connect(&upstream).await {
                                slow(client, server, g, born).await;
                            }
                        }
                        _ => hold(client, g, born).await,
                    }
                });
            }
        });
        Proxy {
            url: format!("redis://{addr}"),
            mode,
            generation,
            open,
        }
    }

    /// Switches mode and drops every open connection (requests in flight are lost, as
    /// when a server dies); returns once they are closed, so that no call made after it
    /// still goes through an old connection in the old mode.
    pub async fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        let now = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // Each old connection notices within 20 ms.
        let old_open = || {
            let open = self.open.lock().unwrap();
            open.iter().any(|(born, n)| *born < now && *n > 0)
        };
        until(
            std::time::Duration::from_secs(5),
            "old connections still open",
            || async { !old_open() },
        )
        .await;
    }
}

async fn stale(g: &AtomicU64, born: u64) {
    while g.load(Ordering::SeqCst) == born {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn pipe(mut client: TcpStream, mut server: TcpStream, g: Arc<AtomicU64>, born: u64) {
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = stale(&g, born) => {}
    }
}

/// Forwards both ways; what comes back arrives `SLOW_MS` after Redis sent it (a constant
/// latency: chunks in flight overlap, as on a long wire).
async fn slow(client: TcpStream, server: TcpStream, g: Arc<AtomicU64>, born: u64) {
    use tokio::io::AsyncWriteExt;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now(), buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at + std::time::Duration::from_millis(SLOW_MS)).await;
            if client_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = async { tokio::join!(read, write) } => {}
        _ = stale(&g, born) => {}
    }
}

async fn hold(mut client: TcpStream, g: Arc<AtomicU64>, born: u64) {
    let swallow = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = client.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = swallow => {}
        _ = stale(&g, born) => {}
    }
}
