//! MQTT source: fleetgate subscribes to the fleet's telemetry topics at a broker, like a
//! tracker connection but with the broker in between. QoS 1 with manual acks: a message's
//! PUBACK goes out only after its positions are committed, and the session is persistent
//! (clean session off, stable `client_id`), so the broker keeps — and redelivers — whatever
//! fleetgate had not acknowledged when it stopped, crashed or lost the connection.
//!
//! Two tasks: the driver ([`driver`]) polls rumqttc's event loop and never waits for anything
//! else (the same poll writes our PUBACKs and keep-alives), reconnects with exponential
//! backoff and re-subscribes; the processor commits up to `max_inflight` messages at once and
//! acks them in arrival order (MQTT 3.1.1 §4.6) as their commits complete. A message whose
//! commit fails is retried, never acked. At shutdown the processor stops taking messages,
//! gives the ones being committed [`STOP_GRACE`] and abandons the rest (the broker redelivers
//! them), then the DISCONNECT gets [`DISCONNECT_TIMEOUT`] to go out.
//!
//! MQTT 3.1.1 is used: shared subscriptions (`$share/<group>/…`) are an MQTT 5 feature that
//! Mosquitto (≥ 1.6), EMQX, HiveMQ and VerneMQ also grant to 3.1.1 clients; a broker without
//! them treats `$share/…` as an ordinary topic and delivers nothing (docs/scaling.md).

pub mod commands;
pub mod config;
mod driver;
pub mod intake;
pub mod link;
pub mod topic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use rumqttc::{AsyncClient, MqttOptions, Publish};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sessions::Sessions;
use super::Admission;
use crate::model::DeviceId;
use crate::pipeline::{Pipeline, PipelineError};
use crate::protocols::DecodeReason;
use crate::protocols::{mqtt_json, DecodeCtx, DecodeError, Decoded, FrameCut, Protocol, Transport};

pub use commands::{MqttCommandError, MqttCommands};
pub use config::MqttConfig;
pub use link::Links;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("mqtt.ca_file: cannot read {0}: {1}")]
    CaFile(String, std::io::Error),
}

/// The running MQTT source.
pub struct MqttIngest {
    /// Ends after a graceful stop: in-flight messages committed and acked, then DISCONNECT.
    pub task: JoinHandle<()>,
    /// Publish commands to MQTT devices (the command lifecycle goes through their sessions).
    pub commands: MqttCommands,
}

/// Queue between the driver and the processor (the driver holds more, see [`intake`]).
const QUEUE: usize = 256;
/// rumqttc's request queue: our PUBACKs (at most one per message in the queue or being
/// committed) and command publishes. The processor may wait for room, the driver never does.
const REQUESTS: usize = 1024;
/// At shutdown, how long the messages being committed get before they are abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest a graceful stop then waits for the PUBACKs and the DISCONNECT to go out.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Ctx {
    cfg: MqttConfig,
    pipeline: Pipeline,
    admission: Arc<Admission>,
    commands: MqttCommands,
    links: Links,
    response_filter: String,
}

/// Start the MQTT source when `[mqtt] url` is set.
pub fn start(
    cfg: &MqttConfig,
    admission: Arc<Admission>,
    pipeline: Pipeline,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) -> Result<Option<MqttIngest>, MqttError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let options = options(cfg)?;
    let (client, eventloop) = AsyncClient::new(options, REQUESTS);
    let commands = MqttCommands::new(client.clone(), cfg.command_topic.clone());
    let links = Links::new(
        sessions,
        commands.clone(),
        Duration::from_secs(cfg.session_idle_s),
    );
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        pipeline,
        admission,
        commands: commands.clone(),
        links,
        response_filter: topic::template_filter(&cfg.response_topic),
    });
    let (tx, rx) = mpsc::channel(QUEUE);
    let stop_driver = CancellationToken::new();
    let driver = tokio::spawn(driver::drive(
        eventloop,
        client.clone(),
        cfg.clone(),
        tx,
        shutdown.clone(),
        stop_driver.clone(),
    ));
    let task = tokio::spawn(async move {
        process(ctx, client, rx, shutdown).await;
        // The acks and the DISCONNECT are queued; let the driver send them.
        if tokio::time::timeout(DISCONNECT_TIMEOUT, stop_driver.cancelled())
            .await
            .is_err()
        {
            tracing::warn!("MQTT disconnect not confirmed; unacked messages will be redelivered");
        }
        driver.abort();
        let _ = driver.await;
        tracing::info!("MQTT source stopped");
    });
    Ok(Some(MqttIngest { task, commands }))
}

fn options(cfg: &MqttConfig) -> Result<MqttOptions, MqttError> {
    let addr = config::parse_url(&cfg.url).map_err(MqttError::Url)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), addr.host, addr.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_max_packet_size(mqtt_json::MAX_FRAME + 1024, mqtt_json::MAX_FRAME + 1024);
    if !cfg.username.is_empty() {
        o.set_credentials(cfg.username.clone(), cfg.password.clone());
    }
    if addr.tls {
        let transport = if cfg.ca_file.is_empty() {
            rumqttc::Transport::tls_with_default_config()
        } else {
            let ca = std::fs::read(&cfg.ca_file)
                .map_err(|e| MqttError::CaFile(cfg.ca_file.clone(), e))?;
            rumqttc::Transport::tls(ca, None, None)
        };
        o.set_transport(transport);
    }
    Ok(o)
}

/// Commit messages concurrently, ack in arrival order; at shutdown finish what is in flight
/// within [`STOP_GRACE`], then queue the DISCONNECT.
async fn process(
    ctx: Arc<Ctx>,
    client: AsyncClient,
    mut rx: mpsc::Receiver<Publish>,
    shutdown: CancellationToken,
) {
    let mut inflight = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some((p, ack)) = inflight.next(), if !inflight.is_empty() => {
                if ack {
                    // Waits only while rumqttc's request queue is full; the driver empties it.
                    tokio::select! {
                        r = client.ack(&p) => if let Err(e) = r {
                            tracing::warn!(error = %e, "PUBACK not queued; the broker will redeliver");
                        },
                        _ = shutdown.cancelled() => try_ack(&client, &p),
                    }
                }
            }
            _ = shutdown.cancelled() => break,
            p = rx.recv(), if inflight.len() < ctx.cfg.max_inflight => match p {
                Some(p) => inflight.push_back(handle(ctx.clone(), p, shutdown.clone())),
                None => break,
            },
        }
    }
    // Stop taking messages: what is queued is redelivered by the broker.
    drop(rx);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    loop {
        match tokio::time::timeout_at(deadline, inflight.next()).await {
            Ok(Some((p, true))) => try_ack(&client, &p),
            Ok(Some((_, false))) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    messages = inflight.len(),
                    "MQTT messages not committed within {STOP_GRACE:?} of the stop: abandoned, the broker redelivers them"
                );
                break;
            }
        }
    }
    if let Err(e) = client.try_disconnect() {
        tracing::warn!(error = %e, "MQTT DISCONNECT not queued");
    }
}

/// Never waits (shutdown): a PUBACK that cannot be queued means a redelivery, not a loss.
fn try_ack(client: &AsyncClient, p: &Publish) {
    if let Err(e) = client.try_ack(p) {
        tracing::warn!(error = %e, "PUBACK not queued; the broker will redeliver");
    }
}

/// What became of one message.
enum Outcome {
    /// Committed, or not worth redelivering (undecodable, refused device): ack it.
    Done,
    /// Not committed (storage down, shutting down): do not ack.
    Retry(String),
}

/// Handle one message until it can be acked; gives up (no ack) only at shutdown.
async fn handle(ctx: Arc<Ctx>, p: Publish, shutdown: CancellationToken) -> (Publish, bool) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(ctx.cfg.reconnect_min_ms);
    loop {
        match handle_once(&ctx, &p).await {
            Outcome::Done => {
                metrics::histogram!("fleetgate_mqtt_ack_seconds")
                    .record(started.elapsed().as_secs_f64());
                return (p, true);
            }
            Outcome::Retry(why) => {
                if shutdown.is_cancelled() {
                    return (p, false);
                }
                tracing::warn!(topic = %p.topic, error = %why, retry_in = ?backoff, "MQTT message not committed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return (p, false),
                }
                backoff = (backoff * 2).min(Duration::from_millis(ctx.cfg.reconnect_max_ms));
            }
        }
    }
}

fn dropped(reason: &'static str) -> Outcome {
    metrics::counter!("fleetgate_mqtt_dropped_total", "reason" => reason).increment(1);
    Outcome::Done
}

async fn handle_once(ctx: &Ctx, p: &Publish) -> Outcome {
    let topic = p.topic.as_str();
    if let Some(dev) = topic::device_level(&ctx.response_filter, topic) {
        metrics::counter!("fleetgate_mqtt_messages_total", "kind" => "response").increment(1);
        ctx.links
            .answer(DeviceId::new(dev), mqtt_json::decode_response(&p.payload))
            .await;
        return Outcome::Done;
    }
    let Some(filter) = ctx.cfg.topics.iter().find(|f| topic::matches(f, topic)) else {
        return dropped("unmatched_topic");
    };
    let (protocol, decoded) = match decode_payload(&p.payload) {
        Ok(x) => x,
        Err(e) => {
            metrics::counter!("fleetgate_ingest_decode_errors_total", "protocol" => "mqtt", "reason" => e.reason.as_str()).increment(1);
            tracing::warn!(topic, error = %e, "MQTT payload dropped");
            return dropped("decode");
        }
    };
    metrics::counter!("fleetgate_mqtt_messages_total", "kind" => decoded.kind.as_str())
        .increment(1);
    let device = match (topic::device_level(filter, topic), &decoded.device) {
        (Some(t), Some(b)) if t != b.as_str() => {
            tracing::warn!(topic, body = %b, "device id in the body differs from the topic's");
            return dropped("device_mismatch");
        }
        (Some(t), _) => DeviceId::new(t),
        (None, Some(b)) => b.clone(),
        (None, None) => {
            tracing::warn!(topic, "no device id in the topic or the body");
            return dropped("no_device");
        }
    };
    match ctx.admission.admit(&device, protocol).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::info!(%device, "unknown device refused (devices.register_unknown = false)");
            return dropped("refused");
        }
        Err(e) => return Outcome::Retry(e.to_string()),
    }
    ctx.commands.saw(&device, protocol);
    let conn = ctx.links.touch(&device, protocol).await;
    if let Some(r) = decoded.command_response {
        ctx.links.answer(device.clone(), r).await;
    }
    if decoded.positions.is_empty() {
        ctx.pipeline.seen(&device, protocol).await;
        return Outcome::Done;
    }
    let n = decoded.positions.len() as u64;
    match ctx
        .pipeline
        .ingest(
            &device,
            protocol,
            crate::model::Origin::Session(conn),
            decoded.positions,
        )
        .await
    {
        Ok(_) => {
            metrics::counter!("fleetgate_ingest_records_total", "protocol" => protocol.name())
                .increment(n);
            Outcome::Done
        }
        Err(PipelineError::Closed) => Outcome::Retry("pipeline closed".into()),
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// A JSON position (`{`/`[`) or a Teltonika AVL packet as its devices send it over TCP
/// (four zero bytes, data length, codec 8/8E/16 records, CRC).
pub fn decode_payload(payload: &[u8]) -> Result<(Protocol, Decoded), DecodeError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') | Some(b'[') => Ok((Protocol::Mqtt, mqtt_json::decode(payload)?)),
        _ if payload.starts_with(&[0, 0, 0, 0]) => {
            let mut s = Protocol::Teltonika.session(Transport::Tcp);
            match s.next_frame(payload)? {
                FrameCut::Frame(n) if n == payload.len() => {
                    Ok((Protocol::Teltonika, s.decode(payload, &DecodeCtx::now())?))
                }
                _ => Err(DecodeError::new(
                    "teltonika",
                    DecodeReason::Framing,
                    0,
                    "payload is not exactly one AVL packet",
                )),
            }
        }
        _ => Err(DecodeError::new(
            "mqtt",
            DecodeReason::UnknownPayload,
            0,
            "neither a JSON position nor a Teltonika AVL packet",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::teltonika::{encode_avl_packet, AvlRecord, CODEC_8E};
    use chrono::{TimeZone, Utc};

    #[test]
    fn payloads_are_told_apart() {
        let (p, d) = decode_payload(br#" {"time":0,"lat":1,"lon":2}"#).unwrap();
        assert_eq!((p, d.positions.len()), (Protocol::Mqtt, 1));
        let rec = AvlRecord {
            time: Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap(),
            lat: 55.7,
            lon: 37.6,
            speed_kmh: 10,
            course: 0,
            altitude: 0,
            satellites: 9,
            io: vec![],
        };
        let pkt = encode_avl_packet(CODEC_8E, &[rec.clone(), rec]);
        let (p, d) = decode_payload(&pkt).unwrap();
        assert_eq!((p, d.positions.len()), (Protocol::Teltonika, 2));
        assert!(decode_payload(&pkt[..pkt.len() - 1]).is_err(), "truncated");
        let mut two = pkt.to_vec();
        two.extend_from_slice(&pkt);
        assert!(decode_payload(&two).is_err(), "trailing bytes");
        assert!(decode_payload(b"hello").is_err());
        assert!(decode_payload(b"").is_err());
    }
}
