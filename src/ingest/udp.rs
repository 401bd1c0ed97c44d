//! UDP listener: one task per socket decodes datagrams with a per-source session and spawns
//! the commit-then-reply step, so one slow commit never holds up other sources.
//!
//! Bounded under any flood (issue #21: 1.73 M datagrams in 20 s took RSS from 0.6 to 3.2 GB
//! and starved TCP acks): the source table is capped in entries with LRU eviction, each source
//! has a datagram rate, and at most `max_queued` frames per listener are being committed at
//! once. Anything beyond is dropped unacked and counted (`fleetgate_ingest_udp_dropped_total`):
//! a tracker resends what was not acked, and the kernel's socket buffer drops the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::udp_sources::{Admit, Sources};
use super::{count_decode_error, process, IngestCtx, Link};
use crate::protocols::MessageKind;
use crate::protocols::{DecodeCtx, FrameCut, Protocol, Session, Transport};

/// Sources not heard from for this long lose their session state.
const PEER_TTL: Duration = Duration::from_secs(900);
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const MAX_DATAGRAM: usize = 65_536;

/// `[limits] udp_*`: what one UDP listener may hold.
#[derive(Clone, Copy, Debug)]
pub struct UdpLimits {
    /// Sources (`ip:port`) whose sessions are kept; the least recently heard is evicted.
    pub max_sources: usize,
    /// Datagrams per second one source may send (bursts up to one second's worth).
    pub datagrams_per_s: u32,
    /// Frames being committed at once; more are dropped unacked.
    pub max_queued: usize,
}

/// Why a datagram or frame was dropped, as the `reason` label.
const RATE_LIMITED: &str = "rate_limited";
const QUEUE_FULL: &str = "queue_full";

fn dropped(protocol: Protocol, reason: &'static str) {
    metrics::counter!("fleetgate_ingest_udp_dropped_total", "protocol" => protocol.name(), "reason" => reason)
        .increment(1);
}

pub async fn serve(
    socket: UdpSocket,
    protocol: Protocol,
    ctx: Arc<IngestCtx>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let socket = Arc::new(socket);
    let limits = ctx.udp;
    let mut sources: Sources<Box<dyn Session>> =
        Sources::new(limits.max_sources, PEER_TTL, limits.datagrams_per_s);
    let queued = Arc::new(Semaphore::new(limits.max_queued.max(1)));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_sweep = Instant::now();
    let gauge = metrics::gauge!("fleetgate_ingest_udp_sources", "protocol" => protocol.name());
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
        let now = Instant::now();
        if now.duration_since(last_sweep) > SWEEP_EVERY {
            sources.sweep(now);
            last_sweep = now;
        }
        let (verdict, evicted) = sources.admit(peer, now, || {
            ctx.protocols.session(protocol, Transport::Udp)
        });
        if evicted > 0 {
            metrics::counter!("fleetgate_ingest_udp_sources_evicted_total", "protocol" => protocol.name())
                .increment(evicted as u64);
        }
        gauge.set(sources.len() as f64);
        if verdict == Admit::RateLimited {
            dropped(protocol, RATE_LIMITED);
            continue;
        }
        let Some(session) = sources.state(&peer) else {
            continue;
        };
        on_datagram(
            &buf[..n],
            peer,
            session.as_mut(),
            protocol,
            &ctx,
            &socket,
            &queued,
            &tasks,
        );
    }
}

/// Cut one datagram into frames, decode each, and spawn its commit-then-reply step while a
/// queue slot is free.
#[allow(clippy::too_many_arguments)]
fn on_datagram(
    mut data: &[u8],
    peer: SocketAddr,
    session: &mut dyn Session,
    protocol: Protocol,
    ctx: &Arc<IngestCtx>,
    socket: &Arc<UdpSocket>,
    queued: &Arc<Semaphore>,
    tasks: &TaskTracker,
) {
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
                    crate::protocols::DecodeReason::Truncated,
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
        // Taken before decoding: a full queue costs no decode work.
        let Ok(permit) = queued.clone().try_acquire_owned() else {
            dropped(protocol, QUEUE_FULL);
            continue;
        };
        match session.decode(frame, &DecodeCtx::now()) {
            Ok(decoded) => {
                if decoded.kind == MessageKind::Other {
                    super::violation::info_limited(protocol, "other", &peer);
                }
                let ctx = ctx.clone();
                let socket = socket.clone();
                let reject = session.reject_reply();
                tasks.spawn(async move {
                    let mut device = None;
                    let link = Link::Udp { peer };
                    let step = process(&ctx, protocol, &mut device, link, reject, decoded).await;
                    if let Some(reply) = step.reply {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                count_decode_error(protocol, &e);
                tracing::debug!(%peer, error = %e, "datagram frame dropped");
            }
        }
    }
}
