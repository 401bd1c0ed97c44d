//! MQTT devices in the session registry. A device that publishes gets a session just like a
//! TCP connection's, so the command lifecycle (safety judged on the session's own records,
//! retries, answers, supersede) treats both alike: its commands are published on
//! `[mqtt] command_topic`, its answers come back as [`SessionEvent::Answer`]. The session ends
//! when the device has been silent for `[mqtt] session_idle_s` (a newer registration, e.g. the
//! device moving to a TCP connection, ends it at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::commands::MqttCommands;
use crate::ingest::sessions::{Outbound, Registration, SessionEvent, Sessions};
use crate::model::DeviceId;
use crate::protocols::{CommandResponse, Protocol};

/// The MQTT devices with a live session; cheap to clone.
#[derive(Clone)]
pub struct Links {
    sessions: Arc<Sessions>,
    commands: MqttCommands,
    idle: Duration,
    live: Arc<Mutex<HashMap<DeviceId, Arc<Link>>>>,
}

struct Link {
    protocol: Protocol,
    /// The session's connection id: the origin of the device's positions.
    conn: u64,
    touched: Mutex<Instant>,
    /// Set by the link's task as it ends; the next message registers afresh.
    closed: std::sync::atomic::AtomicBool,
}

impl Link {
    fn touched(&self) -> Instant {
        *self.touched.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Links {
    pub fn new(sessions: Arc<Sessions>, commands: MqttCommands, idle: Duration) -> Self {
        Links {
            sessions,
            commands,
            idle,
            live: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Arc<Link>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `device` published (before its records go to the pipeline, so that they count as
    /// this session's own evidence): keep its session alive, or open one. Returns the
    /// session's connection id.
    pub async fn touch(&self, device: &DeviceId, protocol: Protocol) -> u64 {
        {
            let live = self.lock();
            if let Some(l) = live.get(device) {
                if !l.is_closed() && l.protocol == protocol {
                    *l.touched.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    return l.conn;
                }
            }
        }
        let reg = self
            .sessions
            .register(device.clone(), protocol, "mqtt")
            .await;
        let conn = reg.conn();
        let link = Arc::new(Link {
            protocol,
            conn,
            touched: Mutex::new(Instant::now()),
            closed: Default::default(),
        });
        self.lock().insert(device.clone(), link.clone());
        metrics::gauge!("fleetgate_mqtt_device_sessions").increment(1.0);
        tokio::spawn(run(reg, link, self.clone()));
        conn
    }

    /// A device answered a command (on its response topic, or inside its telemetry).
    pub async fn answer(&self, device: DeviceId, response: CommandResponse) {
        tracing::info!(%device, text = %response.text, "command response over MQTT");
        self.sessions
            .event(SessionEvent::Answer { device, response })
            .await;
    }
}

/// Publish the session's commands until it is replaced or idle.
async fn run(mut reg: Registration, link: Arc<Link>, links: Links) {
    let device = reg.device().clone();
    loop {
        let idle_at = link.touched() + links.idle;
        tokio::select! {
            out = reg.commands.recv() => match out {
                Some(out) => publish(&reg, &links.commands, out).await,
                None => break,
            },
            _ = tokio::time::sleep_until(idle_at) => {
                if link.touched() + links.idle <= Instant::now() {
                    tracing::debug!(%device, "MQTT device silent: session closed");
                    break;
                }
            }
        }
    }
    link.closed
        .store(true, std::sync::atomic::Ordering::Release);
    {
        let mut live = links.lock();
        if live.get(&device).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            live.remove(&device);
        }
    }
    metrics::gauge!("fleetgate_mqtt_device_sessions").decrement(1.0);
    // Dropping `reg` unregisters the session (if still the newest) and reports it offline.
}

async fn publish(reg: &Registration, commands: &MqttCommands, out: Box<Outbound>) {
    let device = reg.device().clone();
    if !out.is_live() {
        tracing::debug!(
            command = out.id,
            "command superseded before it was published"
        );
        return;
    }
    let ev = match commands.send(&device, &out.command).await {
        Ok(()) => {
            tracing::info!(command = out.id, %device, "command published over MQTT");
            SessionEvent::Written {
                device,
                id: out.id,
                at: Utc::now(),
            }
        }
        Err(e) => {
            tracing::warn!(command = out.id, %device, error = %e, "command not published");
            let io = matches!(e, super::MqttCommandError::Client(_));
            SessionEvent::NotWritten {
                device,
                id: out.id,
                error: e.to_string(),
                io,
            }
        }
    };
    reg.sessions().event(ev).await;
}
