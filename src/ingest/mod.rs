//! Sources: TCP and UDP listeners per protocol. A connection task owns its socket and buffer,
//! hands bytes to the protocol codec, sends positions into the pipeline, and writes the
//! protocol's reply only once those positions are committed.

pub mod admission;
pub mod command_queue;
pub mod config;
pub mod limits;
pub mod mqtt;
pub mod sessions;
pub mod tcp;
pub mod udp;
pub mod udp_sources;
pub mod violation;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::model::{DeviceId, Origin};
use crate::pipeline::Pipeline;
use crate::protocols::{Decoded, Protocol};

pub use admission::Admission;
pub use limits::ConnLimits;
pub use sessions::{SessionEvent, Sessions};

/// What every connection task shares.
pub struct IngestCtx {
    pub pipeline: Pipeline,
    pub admission: Arc<Admission>,
    pub limits: Arc<ConnLimits>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Live sessions: commands out, command answers back.
    pub sessions: Arc<Sessions>,
    /// How each connection's protocol session is built (`[protocols.*]`).
    pub protocols: crate::protocols::options::ProtocolOptions,
    /// What each UDP listener may hold (`[limits] udp_*`).
    pub udp: udp::UdpLimits,
}

/// What the connection must do after one frame.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Bytes to write back (already safe to send: positions are committed).
    pub reply: Option<Bytes>,
    /// Close the connection after writing the reply.
    pub close: bool,
}

/// Where a frame came from.
pub enum Link<'a> {
    /// A TCP connection from `peer`: it registers its device as a session on identification,
    /// and its positions are evidence for that session's commands.
    Tcp {
        registration: &'a mut Option<sessions::Registration>,
        peer: std::net::SocketAddr,
    },
    /// A UDP datagram from `peer`: never carries commands, never evidence for one.
    Udp { peer: std::net::SocketAddr },
}

/// Act on one decoded frame: identify the device, commit positions, choose the reply.
/// `device` is the connection's current identity; `reject` the protocol's refusal reply.
pub async fn process(
    ctx: &IngestCtx,
    protocol: Protocol,
    device: &mut Option<DeviceId>,
    mut link: Link<'_>,
    reject: Option<Bytes>,
    mut d: Decoded,
) -> Step {
    let started = Instant::now();
    let proto = protocol.name();
    metrics::counter!("fleetgate_ingest_messages_total", "protocol" => proto, "kind" => d.kind.as_str())
        .increment(1);
    // Messages of kind `other` are logged by the caller, which holds the per-connection
    // log budget (a flood of them must not flood the journal).
    if let Some(id) = d.device {
        if let Some(current) = device.as_ref().filter(|c| **c != id) {
            // One connection is one tracker: a second identity on it is an impostor's sweep
            // (or a confused device), never a reason to move a car's command path.
            if let Link::Tcp { peer, .. } = &link {
                ctx.sessions
                    .relogin(current, &id, protocol, &peer.to_string());
            }
            return Step {
                reply: reject,
                close: true,
            };
        }
        if device.is_none() {
            match ctx.admission.admit(&id, protocol).await {
                Ok(Some(_vehicle)) => {
                    tracing::debug!(device = %id, "device identified");
                    match &mut link {
                        Link::Tcp { registration, peer } => {
                            tracing::Span::current().record("device", tracing::field::display(&id));
                            **registration = Some(
                                ctx.sessions
                                    .register(id.clone(), protocol, peer.to_string())
                                    .await,
                            );
                        }
                        Link::Udp { peer } => {
                            ctx.sessions.datagram(&id, protocol, &peer.to_string());
                        }
                    }
                    *device = Some(id);
                }
                Ok(None) => {
                    tracing::info!(device = ?id.as_str(), protocol = proto, "device refused: no vehicle has it, and it is not registered ([devices] register_unknown, or a malformed id)");
                    metrics::counter!("fleetgate_ingest_devices_refused_total", "protocol" => proto).increment(1);
                    return Step {
                        reply: reject,
                        close: true,
                    };
                }
                Err(e) => {
                    tracing::error!(device = %id, error = %e, "cannot look up device; closing");
                    return Step {
                        reply: None,
                        close: true,
                    };
                }
            }
        }
    }
    let origin = match &link {
        Link::Tcp {
            registration: Some(reg),
            ..
        } => {
            reg.touch(protocol);
            Origin::Session(reg.conn())
        }
        _ => Origin::Sessionless,
    };
    if let (Some(response), Some(dev)) = (d.command_response.take(), device.as_ref()) {
        ctx.sessions
            .event(SessionEvent::Answer {
                device: dev.clone(),
                response,
            })
            .await;
    }
    if !d.positions.is_empty() {
        let Some(dev) = device.as_ref() else {
            metrics::counter!("fleetgate_ingest_unidentified_total", "protocol" => proto)
                .increment(1);
            tracing::warn!(
                protocol = proto,
                "positions before the device identified itself; closing"
            );
            return Step {
                reply: None,
                close: true,
            };
        };
        let n = d.positions.len();
        metrics::counter!("fleetgate_ingest_records_total", "protocol" => proto)
            .increment(n as u64);
        return match ctx
            .pipeline
            .ingest(dev, protocol, origin, d.positions)
            .await
        {
            Ok(_) => {
                metrics::histogram!("fleetgate_ingest_ack_seconds", "protocol" => proto)
                    .record(started.elapsed().as_secs_f64());
                Step {
                    reply: d.reply,
                    close: false,
                }
            }
            Err(e) => {
                tracing::warn!(device = %dev, error = %e, "positions not committed; not acking");
                Step {
                    reply: None,
                    close: true,
                }
            }
        };
    }
    if let Some(dev) = device.as_ref() {
        ctx.pipeline.seen(dev, protocol).await;
    }
    Step {
        reply: d.reply,
        close: false,
    }
}

/// Count and log a frame the codec could not decode.
pub fn count_decode_error(protocol: Protocol, e: &crate::protocols::DecodeError) {
    metrics::counter!("fleetgate_ingest_decode_errors_total", "protocol" => protocol.name(), "reason" => e.reason.as_str())
        .increment(1);
}
