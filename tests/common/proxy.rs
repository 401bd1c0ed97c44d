//! An in-test TCP proxy that can be cut, to simulate a server outage without touching the
//! shared server: fleetgate talks to the proxy, the proxy to the real server.
//!
//! - [`Mode::Up`]: every accepted connection is relayed to the upstream address.
//! - [`Mode::BlackHole`]: existing relays are closed; new connections are accepted and held
//!   without an answer (a partition: the client only learns by its own timeout).
//! - [`Mode::Refuse`]: existing relays are closed; new connections are closed at once.
//! - [`Mode::Freeze`]: existing relays go silent for good — nothing is forwarded or closed
//!   ever again, even after the proxy is back up (a path that died without FIN or RST); new
//!   connections are held as in a black hole.
//!
//! Held connections are closed when the mode changes again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    BlackHole,
    Refuse,
    Freeze,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections accepted in each mode, for the test to show the outage was exercised.
    pub relayed: Arc<AtomicU64>,
    pub held: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Up);
        let (relayed, held, refused) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let m = mode.clone();
        let (r, h, f) = (relayed.clone(), held.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = m.subscribe();
                let now = *rx.borrow_and_update();
                match now {
                    Mode::Refuse => {
                        f.fetch_add(1, Ordering::Relaxed);
                        drop(client);
                    }
                    Mode::BlackHole | Mode::Freeze => {
                        h.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let _ = rx.changed().await;
                            drop(client);
                        });
                    }
                    Mode::Up => {
                        r.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(relay(client, upstream, rx));
                    }
                }
            }
        });
        Proxy {
            addr,
            mode,
            relayed,
            held,
            refused,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        m = rx.wait_for(|m| *m != Mode::Up) => m.ok().map(|m| *m),
    };
    if cut == Some(Mode::Freeze) {
        // Keep both sockets open and unread until the test process ends.
        std::future::pending::<()>().await;
    }
    // Otherwise both sides are dropped, so both see the connection end.
}
