//! The driver: polls rumqttc's event loop and nothing else may make it wait. It answers the
//! broker's keep-alive, writes the processor's PUBACKs (the same poll reads and writes),
//! reconnects with exponential backoff and re-subscribes, and hands PUBLISHes to the
//! processor through [`Intake`] without ever awaiting the processor.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::MqttConfig;
use super::intake::{Intake, Offered};

/// Messages the driver holds for the processor beyond its queue: about 5 MB of typical JSON
/// positions. Past it the rest waits at the broker (see [`Intake`]).
pub const HOLD_MAX: usize = 10_000;

/// Poll until the processor's DISCONNECT has gone out (or the connection is down at
/// shutdown). `done` is cancelled as the driver ends.
pub async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    cfg: MqttConfig,
    tx: mpsc::Sender<Publish>,
    shutdown: CancellationToken,
    done: CancellationToken,
) {
    let min = Duration::from_millis(cfg.reconnect_min_ms);
    let max = Duration::from_millis(cfg.reconnect_max_ms);
    let mut backoff = min;
    let subs = cfg.subscriptions();
    let mut intake = Intake::new(HOLD_MAX);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff = min;
                metrics::gauge!("fleetgate_mqtt_connected").set(1.0);
                tracing::info!(url = %cfg.url, client_id = %cfg.client_id, session_present = ack.session_present, "MQTT connected");
                // Subscribing again is harmless when the broker kept the session, and needed
                // when it did not (expired, broker restarted without persistence).
                let filters = subs
                    .iter()
                    .map(|s| rumqttc::SubscribeFilter::new(s.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::warn!(error = %e, "MQTT subscribe not queued");
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                tracing::debug!(?ack.return_codes, "MQTT subscribed");
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(filters = ?subs, "broker refused a subscription (ACL? $share support?)");
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if shutdown.is_cancelled() {
                    // Stopping: not acked, so the broker redelivers it to the next session.
                    abandoned("shutdown", 1);
                } else {
                    let first = !intake.resyncing();
                    if intake.offer(p) == Offered::Abandoned {
                        if first {
                            tracing::warn!(held = intake.len(), "MQTT messages arrive faster than they commit: the excess is left to the broker until the held ones are stored");
                        }
                        abandoned("buffer_full", 1);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                metrics::gauge!("fleetgate_mqtt_connected").set(0.0);
                done.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                metrics::gauge!("fleetgate_mqtt_connected").set(0.0);
                metrics::counter!("fleetgate_mqtt_connection_errors_total").increment(1);
                abandoned("connection_lost", intake.connection_lost());
                if shutdown.is_cancelled() {
                    done.cancel();
                    return;
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = shutdown.cancelled() => { done.cancel(); return; }
                }
                backoff = (backoff * 2).min(max);
            }
        }
        intake.forward(|p| {
            tx.try_send(p).map_err(|e| match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            })
        });
        if tx.is_closed() {
            // The processor has stopped: what is held will be redelivered.
            abandoned("shutdown", intake.connection_lost());
        }
        metrics::gauge!("fleetgate_mqtt_buffered_messages")
            .set((intake.len() + tx.max_capacity() - tx.capacity()) as f64);
        if intake.take_resync(tx.capacity() == tx.max_capacity()) {
            // Dropping the connection (no DISCONNECT needed: the session is persistent) makes
            // the broker redeliver the abandoned messages on the next one, which starts now.
            tracing::info!("MQTT buffer drained after abandoning messages: reconnecting so that the broker redelivers them");
            metrics::gauge!("fleetgate_mqtt_connected").set(0.0);
            eventloop.clean();
        }
    }
}

/// Messages not acked on purpose; the broker redelivers them.
fn abandoned(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("fleetgate_mqtt_abandoned_total", "reason" => reason).increment(n as u64);
    }
}

/// ±20 % so that many instances do not reconnect in lockstep after a broker restart.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + rand::random::<f64>() * 0.4)
}
