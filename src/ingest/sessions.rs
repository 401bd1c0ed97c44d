//! The outbound path to devices: which device is connected where, and a bounded command
//! channel into each live TCP connection. The connection task encodes a command with its
//! own session's `encode_command` and writes it between frames (never inside a reply); what
//! happened (written, refused by the codec, answered, connection gone) flows back to the
//! command owner (the immobiliser) as [`SessionEvent`]s on one bounded channel.
//!
//! Touched on logins, logouts and commands only, never per record: a lock is fine here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::command_queue::{self, CommandRx, CommandTx, TrySendError};
use crate::model::DeviceId;
use crate::protocols::{CommandResponse, DeviceCommand, Protocol};

/// Commands one connection buffers before `send` reports it busy.
const PER_CONNECTION: usize = 8;

/// A command for a connection to encode and write; `id` is the owner's command id.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub id: i64,
    pub command: DeviceCommand,
    /// Cleared by the owner when the command is superseded while still queued here: the
    /// connection then drops it unwritten.
    pub live: Arc<AtomicBool>,
}

impl Outbound {
    pub fn new(id: i64, command: DeviceCommand) -> Self {
        Outbound {
            id,
            command,
            live: Arc::new(AtomicBool::new(true)),
        }
    }
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// What the connections report about devices and commands.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// A device identified itself on a new connection: pending commands can go now.
    Online {
        device: DeviceId,
        protocol: Protocol,
        /// Connection ids grow: a higher one is a later connection.
        conn: u64,
        /// When the connection identified itself: records received from then on are
        /// evidence of what the car does now.
        at: DateTime<Utc>,
    },
    /// The device's connection closed; commands written on it will not be answered there.
    Offline { device: DeviceId, conn: u64 },
    /// The command's bytes were written to the socket.
    Written {
        device: DeviceId,
        id: i64,
        at: DateTime<Utc>,
    },
    /// The session could not encode the command (or the write failed: `io`).
    NotWritten {
        device: DeviceId,
        id: i64,
        error: String,
        io: bool,
    },
    /// The device answered a command.
    Answer {
        device: DeviceId,
        response: CommandResponse,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("device is not connected")]
    Offline,
    #[error("device's command queue is full")]
    Busy,
    #[error("device reconnected on a newer connection")]
    Replaced,
}

struct Live {
    conn: u64,
    tx: CommandTx,
}

/// The registry of live sessions; one per daemon, shared by every connection task.
pub struct Sessions {
    live: RwLock<HashMap<DeviceId, Live>>,
    events: mpsc::Sender<SessionEvent>,
    next_conn: AtomicU64,
}

/// A connection's registration; dropping it unregisters the device (if still this one's).
pub struct Registration {
    sessions: Arc<Sessions>,
    device: DeviceId,
    conn: u64,
    pub commands: CommandRx,
}

impl Sessions {
    pub fn new(events: mpsc::Sender<SessionEvent>) -> Arc<Sessions> {
        Arc::new(Sessions {
            live: RwLock::new(HashMap::new()),
            events,
            next_conn: AtomicU64::new(1),
        })
    }

    /// A device identified itself on a connection. A newer connection of the same device
    /// replaces the older one (whose command channel then closes).
    pub async fn register(self: &Arc<Self>, device: DeviceId, protocol: Protocol) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let at = Utc::now();
        let (tx, rx) = command_queue::channel(PER_CONNECTION);
        self.live
            .write()
            .expect("not poisoned")
            .insert(device.clone(), Live { conn, tx });
        self.event(SessionEvent::Online {
            device: device.clone(),
            protocol,
            conn,
            at,
        })
        .await;
        Registration {
            sessions: self.clone(),
            device,
            conn,
            commands: rx,
        }
    }

    /// Hand a command to the device's live connection; returns that connection's id.
    pub fn send(&self, device: &DeviceId, cmd: Outbound) -> Result<u64, SendError> {
        let live = self.live.read().expect("not poisoned");
        let l = live.get(device).ok_or(SendError::Offline)?;
        l.tx.try_send(Box::new(cmd)).map_err(|e| match e {
            TrySendError::Full => SendError::Busy,
            TrySendError::Closed => SendError::Offline,
        })?;
        Ok(l.conn)
    }

    /// Like [`Sessions::send`], but only to connection `conn`: a command judged safe on one
    /// connection's evidence is never written on a newer one the caller has not seen yet.
    pub fn send_to(&self, device: &DeviceId, conn: u64, cmd: Outbound) -> Result<u64, SendError> {
        let live = self.live.read().expect("not poisoned");
        let l = live.get(device).ok_or(SendError::Offline)?;
        if l.conn != conn {
            return Err(SendError::Replaced);
        }
        l.tx.try_send(Box::new(cmd)).map_err(|e| match e {
            TrySendError::Full => SendError::Busy,
            TrySendError::Closed => SendError::Offline,
        })?;
        Ok(l.conn)
    }

    /// Every device with a live connection, with that connection's id.
    pub fn live(&self) -> Vec<(DeviceId, u64)> {
        self.live
            .read()
            .expect("not poisoned")
            .iter()
            .map(|(d, l)| (d.clone(), l.conn))
            .collect()
    }

    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.live.read().expect("not poisoned").contains_key(device)
    }

    /// Report to the command owner; waits when its queue is full (bounded, like ingest).
    pub async fn event(&self, ev: SessionEvent) {
        let _ = self.events.send(ev).await;
    }

    fn unregister(&self, device: &DeviceId, conn: u64) {
        let removed = {
            let mut live = self.live.write().expect("not poisoned");
            match live.get(device) {
                Some(l) if l.conn == conn => live.remove(device).is_some(),
                _ => false,
            }
        };
        if removed {
            let ev = SessionEvent::Offline {
                device: device.clone(),
                conn,
            };
            if let Err(mpsc::error::TrySendError::Full(ev)) = self.events.try_send(ev) {
                let events = self.events.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = events.send(ev).await;
                    });
                }
            }
        }
    }
}

impl Registration {
    pub fn device(&self) -> &DeviceId {
        &self.device
    }
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.unregister(&self.device, self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::CommandBody;

    fn cmd(id: i64) -> Outbound {
        Outbound::new(
            id,
            DeviceCommand {
                seq: id as u32,
                body: CommandBody::EngineStop,
            },
        )
    }

    #[tokio::test]
    async fn commands_reach_the_live_connection_and_a_newer_one_replaces_it() {
        let (etx, mut erx) = mpsc::channel(16);
        let s = Sessions::new(etx);
        let d = DeviceId::new("dev");
        assert_eq!(s.send(&d, cmd(1)).unwrap_err(), SendError::Offline);
        let mut old = s.register(d.clone(), Protocol::Teltonika).await;
        assert!(matches!(
            erx.recv().await,
            Some(SessionEvent::Online { .. })
        ));
        s.send(&d, cmd(2)).unwrap();
        assert_eq!(old.commands.recv().await.unwrap().id, 2);
        let mut new = s.register(d.clone(), Protocol::Teltonika).await;
        assert!(matches!(
            erx.recv().await,
            Some(SessionEvent::Online { .. })
        ));
        assert!(old.commands.recv().await.is_none(), "old channel closed");
        drop(old);
        assert!(
            s.is_online(&d),
            "the old connection's end does not unregister the new"
        );
        s.send(&d, cmd(3)).unwrap();
        assert_eq!(new.commands.recv().await.unwrap().id, 3);
        for i in 0..PER_CONNECTION as i64 {
            s.send(&d, cmd(10 + i)).unwrap();
        }
        assert_eq!(s.send(&d, cmd(99)).unwrap_err(), SendError::Busy);
        drop(new);
        assert!(!s.is_online(&d));
        assert!(matches!(
            erx.recv().await,
            Some(SessionEvent::Offline { .. })
        ));
    }

    #[tokio::test]
    async fn send_to_refuses_a_connection_the_caller_has_not_seen() {
        let (etx, mut erx) = mpsc::channel(16);
        let s = Sessions::new(etx);
        let d = DeviceId::new("dev");
        let _first = s.register(d.clone(), Protocol::Teltonika).await;
        let Some(SessionEvent::Online {
            conn: first, at, ..
        }) = erx.recv().await
        else {
            panic!("online event");
        };
        assert!(at <= Utc::now());
        let mut second = s.register(d.clone(), Protocol::Teltonika).await;
        let Some(SessionEvent::Online { conn: newer, .. }) = erx.recv().await else {
            panic!("online event");
        };
        assert!(newer > first);
        assert_eq!(
            s.send_to(&d, first, cmd(1)).unwrap_err(),
            SendError::Replaced
        );
        assert_eq!(s.send_to(&d, newer, cmd(2)).unwrap(), newer);
        assert_eq!(second.commands.recv().await.unwrap().id, 2);
        assert_eq!(
            s.send_to(&DeviceId::new("other"), newer, cmd(3))
                .unwrap_err(),
            SendError::Offline
        );
    }
}
