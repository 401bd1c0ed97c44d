//! TCP listener and per-connection task. The task holds no read buffer while the device is
//! idle (thousands of mostly-silent trackers stay cheap) and handles one frame at a time:
//! the device waits for its ack anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::limits::ConnSlot;
use super::sessions::{Outbound, Registration, SessionEvent};
use super::{count_decode_error, process, IngestCtx, Link};
use crate::model::DeviceId;
use crate::ops::ratelimit::Budget;
use crate::protocols::codec::{FrameError, SessionCodec};
use crate::protocols::{DecodeReason, MessageKind};
use crate::protocols::{Decoded, Protocol, Transport};

/// Bytes read per wakeup; the buffer grows for larger frames and is freed when drained.
const READ_CHUNK: usize = 4096;

/// Accept connections until `shutdown`; every connection task is tracked by `tasks`.
pub async fn serve(
    listener: TcpListener,
    protocol: Protocol,
    ctx: Arc<IngestCtx>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, protocol = protocol.name(), "accept failed");
                metrics::counter!("fleetgate_ingest_accept_errors_total", "protocol" => protocol.name()).increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match ctx.limits.acquire(peer.ip()) {
            Ok(s) => s,
            Err(limit) => {
                metrics::counter!("fleetgate_ingest_connections_refused_total", "protocol" => protocol.name(), "limit" => limit)
                    .increment(1);
                super::violation::record(protocol, limit, peer);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("conn", protocol = protocol.name(), %peer, device = tracing::field::Empty);
        let conn = connection(stream, peer, protocol, ctx.clone(), shutdown.clone(), slot);
        tasks.spawn(conn.instrument(span));
    }
}

/// Serve one tracker connection until it ends; `slot` is its place under the limits.
///
/// This future is what a silent tracker costs while idle, so it keeps only what the idle wait
/// needs: an `async move` block (an `async fn` keeps a second copy of its arguments), and
/// everything a frame needs only while it is handled lives in the boxed [`on_frame`].
#[allow(clippy::manual_async_fn)] // deliberate: see above
fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    ctx: Arc<IngestCtx>,
    shutdown: CancellationToken,
    slot: ConnSlot,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        metrics::gauge!("fleetgate_ingest_connections", "protocol" => protocol.name())
            .increment(1.0);
        let ctx = &*ctx;
        let mut codec = SessionCodec::new(
            ctx.protocols.session(protocol, Transport::Tcp),
            protocol.max_frame(),
        );
        let mut buf = BytesMut::new();
        let mut device: Option<DeviceId> = None;
        let mut registration: Option<Registration> = None;
        // Repeated per-frame lines (a tracker sending only messages fleetgate does not use).
        let mut chatter = Budget::default();
        let opened = tokio::time::Instant::now();
        let reason: &'static str = 'conn: loop {
            // Handle every whole frame already buffered.
            loop {
                // The frame is moved into the boxed future within this statement, so that the
                // decode result is not kept in this future across the await.
                let handled = match codec.decode(&mut buf) {
                    Ok(Some(Ok(decoded))) => {
                        if decoded.kind == MessageKind::Other {
                            if let Some(suppressed) = chatter.allow(std::time::Instant::now()) {
                                tracing::info!(
                                    device = ?device.as_ref().or(decoded.device.as_ref()),
                                    acked = decoded.reply.is_some(),
                                    suppressed,
                                    "{}",
                                    super::violation::UNUSED_MESSAGE
                                );
                            }
                        }
                        let reject = codec.session().reject_reply();
                        Box::pin(on_frame(
                            ctx,
                            protocol,
                            peer,
                            &mut stream,
                            &mut device,
                            &mut registration,
                            reject,
                            decoded,
                        ))
                    }
                    Ok(Some(Err(e))) => {
                        count_decode_error(protocol, &e);
                        super::violation::warn_limited(
                            protocol,
                            "decode",
                            &e,
                            "frame dropped, not acked",
                        );
                        continue;
                    }
                    Ok(None) => break,
                    Err(FrameError::Decode(e)) => {
                        count_decode_error(protocol, &e);
                        if e.reason == DecodeReason::TooLarge {
                            super::violation::record(protocol, super::violation::MAX_FRAME, peer);
                            break 'conn "max_frame";
                        }
                        super::violation::warn_limited(
                            protocol,
                            "framing",
                            &e,
                            "unframeable input; closing",
                        );
                        break 'conn "framing error";
                    }
                    Err(FrameError::Io(_)) => break 'conn "io error",
                };
                if let Err(reason) = handled.await {
                    break 'conn reason;
                }
            }
            if buf.is_empty() && buf.capacity() > 0 {
                buf = BytesMut::new();
            }
            let limit = if device.is_none() {
                ctx.handshake_timeout.saturating_sub(opened.elapsed())
            } else {
                ctx.idle_timeout
            };
            let ready = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'conn "shutdown",
                Some(out) = next_command(&mut registration) => {
                    if let Some(reg) = &registration {
                        if !Box::pin(write_command(&mut stream, &mut codec, reg, out)).await {
                            break 'conn "write failed";
                        }
                    }
                    continue;
                }
                r = tokio::time::timeout(limit, stream.readable()) => r,
            };
            match ready {
                Err(_) => {
                    let which = if device.is_none() {
                        "handshake_timeout"
                    } else {
                        "idle_timeout"
                    };
                    metrics::counter!("fleetgate_ingest_timeouts_total", "protocol" => protocol.name(), "kind" => which)
                        .increment(1);
                    super::violation::record(protocol, which, peer);
                    break 'conn which;
                }
                Ok(Err(_)) => break 'conn "io error",
                Ok(Ok(())) => {}
            }
            buf.reserve(READ_CHUNK);
            match stream.try_read_buf(&mut buf) {
                Ok(0) => break 'conn "eof",
                Ok(n) => {
                    metrics::counter!("fleetgate_ingest_bytes_total", "protocol" => protocol.name())
                        .increment(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break 'conn "io error",
            }
        };
        metrics::gauge!("fleetgate_ingest_connections", "protocol" => protocol.name())
            .decrement(1.0);
        let suppressed = chatter.finish();
        if suppressed > 0 {
            tracing::info!(
                reason,
                suppressed,
                "connection closed; repeated lines were counted, not logged"
            );
        }
        tracing::debug!(reason, "connection closed");
        drop(slot);
    }
}

/// Act on one decoded frame: process it, register the device when it just identified
/// itself, write the reply. `Err` carries why the connection must close.
#[allow(clippy::too_many_arguments)]
async fn on_frame(
    ctx: &IngestCtx,
    protocol: Protocol,
    peer: SocketAddr,
    stream: &mut TcpStream,
    device: &mut Option<DeviceId>,
    registration: &mut Option<Registration>,
    reject: Option<Bytes>,
    decoded: Decoded,
) -> Result<(), &'static str> {
    let link = Link::Tcp { registration, peer };
    let step = process(ctx, protocol, device, link, reject, decoded).await;
    if let Some(reply) = step.reply {
        if stream.write_all(&reply).await.is_err() {
            return Err("write failed");
        }
    }
    if step.close {
        return Err("closed by protocol");
    }
    Ok(())
}

/// The next command for this connection; never resolves before the device identified itself.
async fn next_command(reg: &mut Option<Registration>) -> Option<Outbound> {
    match reg {
        Some(r) => r.commands.recv().await.map(|b| *b),
        None => std::future::pending().await,
    }
}

/// Encode a command with this connection's session and write it; false when the socket failed.
async fn write_command(
    stream: &mut TcpStream,
    codec: &mut SessionCodec,
    reg: &Registration,
    out: Outbound,
) -> bool {
    let device = reg.device().clone();
    if !out.is_live() {
        tracing::debug!(
            command = out.id,
            "command superseded before it was written; dropped"
        );
        return true;
    }
    let bytes = match codec.session_mut().encode_command(&out.command) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(command = out.id, error = %e, "command not encodable");
            reg_event(
                reg,
                SessionEvent::NotWritten {
                    device,
                    id: out.id,
                    error: e.to_string(),
                    io: false,
                },
            )
            .await;
            return true;
        }
    };
    if let Err(e) = stream.write_all(&bytes).await {
        reg_event(
            reg,
            SessionEvent::NotWritten {
                device,
                id: out.id,
                error: e.to_string(),
                io: true,
            },
        )
        .await;
        return false;
    }
    tracing::info!(command = out.id, bytes = bytes.len(), "command written");
    reg_event(
        reg,
        SessionEvent::Written {
            device,
            id: out.id,
            at: chrono::Utc::now(),
        },
    )
    .await;
    true
}

async fn reg_event(reg: &Registration, ev: SessionEvent) {
    reg.sessions().event(ev).await;
}
