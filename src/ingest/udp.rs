//! UDP listener: one task per socket decodes datagrams with a per-peer session and spawns
//! the commit-then-reply step, so one slow commit never holds up other peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{count_decode_error, process, IngestCtx, Link};
use crate::protocols::{DecodeCtx, FrameCut, Protocol, Session, Transport};

/// Peers not heard from for this long lose their session state.
const PEER_TTL: Duration = Duration::from_secs(900);
const MAX_DATAGRAM: usize = 65_536;

pub async fn serve(
    socket: UdpSocket,
    protocol: Protocol,
    ctx: Arc<IngestCtx>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let socket = Arc::new(socket);
    let mut peers: HashMap<SocketAddr, (Box<dyn Session>, Instant)> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_sweep = Instant::now();
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        metrics::counter!("fleetgate_ingest_bytes_total", "protocol" => protocol.name())
            .increment(n as u64);
        if last_sweep.elapsed() > Duration::from_secs(60) {
            peers.retain(|_, (_, seen)| seen.elapsed() < PEER_TTL);
            last_sweep = Instant::now();
        }
        let (session, seen) = peers.entry(peer).or_insert_with(|| {
            (
                ctx.protocols.session(protocol, Transport::Udp),
                Instant::now(),
            )
        });
        *seen = Instant::now();
        let mut data = &buf[..n];
        while !data.is_empty() {
            let len = match session.next_frame(data) {
                Ok(FrameCut::Frame(len)) => len.clamp(1, data.len()),
                Ok(FrameCut::Skip(k)) => {
                    data = &data[k.clamp(1, data.len())..];
                    continue;
                }
                Ok(FrameCut::NeedMore) => {
                    let e = crate::protocols::DecodeError::new(
                        protocol.name(),
                        "truncated",
                        0,
                        "datagram ends inside a frame",
                    );
                    count_decode_error(protocol, &e);
                    break;
                }
                Err(e) => {
                    count_decode_error(protocol, &e);
                    break;
                }
            };
            let (frame, rest) = data.split_at(len);
            data = rest;
            match session.decode(frame, &DecodeCtx::now()) {
                Ok(decoded) => {
                    let ctx = ctx.clone();
                    let socket = socket.clone();
                    let reject = session.reject_reply();
                    tasks.spawn(async move {
                        let mut device = None;
                        let link = Link::Udp { peer };
                        let step =
                            process(&ctx, protocol, &mut device, link, reject, decoded).await;
                        if let Some(reply) = step.reply {
                            let _ = socket.send_to(&reply, peer).await;
                        }
                    });
                }
                Err(e) => {
                    count_decode_error(protocol, &e);
                    tracing::debug!(%peer, error = %e, "datagram frame dropped");
                }
            }
        }
    }
}
