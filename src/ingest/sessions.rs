//! The outbound path to devices: which device is connected where, and a bounded command
//! channel into each live TCP connection. The connection task encodes a command with its
//! own session's `encode_command` and writes it between frames (never inside a reply); what
//! happened (written, refused by the codec, answered, connection gone) flows back to the
//! command owner (the immobiliser) as [`SessionEvent`]s on one bounded channel.
//!
//! Touched on logins, logouts and commands only, never per record: a lock is fine here.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
    /// A session got the device's command path (it identified itself, or took over from a
    /// session that closed or fell silent): pending commands can go to it now.
    Online {
        device: DeviceId,
        protocol: Protocol,
        /// Connection ids grow: a higher one is a later connection.
        conn: u64,
        /// When the connection got the command path.
        at: DateTime<Utc>,
        /// Orders command-path changes (a promoted rival can have a lower `conn`).
        epoch: u64,
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
    #[error("two sessions claim the device; commands are held until one leaves")]
    Conflict,
}

/// What to do when a second session claims a device whose session is live and active
/// (`[devices] identity_conflict`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The established session keeps the command path; the newcomer never gets a command while
    /// the conflict lasts (it takes over once the established one closes or falls silent).
    #[default]
    KeepEstablished,
    /// No command goes to either session while the conflict lasts.
    Hold,
    /// The newest session wins at once (fleetgate before 2026-12; not safe against impostors).
    Newest,
}

impl ConflictPolicy {
    pub fn name(self) -> &'static str {
        match self {
            ConflictPolicy::KeepEstablished => "keep_established",
            ConflictPolicy::Hold => "hold",
            ConflictPolicy::Newest => "newest",
        }
    }
}

/// How the registry treats several sessions claiming one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    pub conflict: ConflictPolicy,
    /// A live session silent for this long is taken to be dead (a NAT binding gone, a modem
    /// reset): a new session for its device takes over without a conflict.
    pub takeover_silence: chrono::Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            conflict: ConflictPolicy::KeepEstablished,
            takeover_silence: chrono::Duration::seconds(300),
        }
    }
}

/// One identity conflict as the API shows it (`GET /api/v1/identity-conflicts`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConflictRecord {
    pub device_id: DeviceId,
    pub protocol: String,
    /// `second_connection`, `udp` or `relogin`.
    pub kind: &'static str,
    /// The session holding the command path when it was seen (connection id).
    pub established_conn: Option<u64>,
    pub established_peer: Option<String>,
    /// Who else claimed the device: the other connection's or datagram's address.
    pub other_peer: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub count: u64,
    /// Both claimants are still there.
    pub active: bool,
}

/// Conflict records kept for the API (oldest dropped first).
const CONFLICT_RECORDS: usize = 1000;

struct Live {
    conn: u64,
    peer: String,
    tx: CommandTx,
    /// Unix milliseconds of the session's last frame.
    last_frame: Arc<AtomicI64>,
    holder: Arc<AtomicBool>,
}

impl Live {
    fn silent_since(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.last_frame.load(Ordering::Relaxed)).unwrap_or_default()
    }
}

/// Every session claiming one device: the holder carries its commands.
struct Claims {
    holder: Live,
    others: Vec<Live>,
    /// Two sessions are speaking for this device at once.
    conflicted: bool,
}

/// The registry of live sessions; one per daemon, shared by every connection task.
pub struct Sessions {
    live: RwLock<HashMap<DeviceId, Claims>>,
    events: mpsc::Sender<SessionEvent>,
    next_conn: AtomicU64,
    /// Orders command-path changes: a higher epoch is the later change.
    epoch: AtomicU64,
    policy: SessionPolicy,
    conflicts: Mutex<VecDeque<ConflictRecord>>,
}

/// A connection's registration; dropping it unregisters the device (if still this one's).
pub struct Registration {
    sessions: Arc<Sessions>,
    device: DeviceId,
    conn: u64,
    protocol: Protocol,
    last_frame: Arc<AtomicI64>,
    holder: Arc<AtomicBool>,
    pub commands: CommandRx,
}

impl Sessions {
    pub fn new(events: mpsc::Sender<SessionEvent>) -> Arc<Sessions> {
        Self::with_policy(events, SessionPolicy::default())
    }

    pub fn with_policy(events: mpsc::Sender<SessionEvent>, policy: SessionPolicy) -> Arc<Sessions> {
        Arc::new(Sessions {
            live: RwLock::new(HashMap::new()),
            events,
            next_conn: AtomicU64::new(1),
            epoch: AtomicU64::new(1),
            policy,
            conflicts: Mutex::new(VecDeque::new()),
        })
    }

    fn online(&self, device: &DeviceId, protocol: Protocol, conn: u64) -> SessionEvent {
        SessionEvent::Online {
            device: device.clone(),
            protocol,
            conn,
            at: Utc::now(),
            epoch: self.epoch.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A device identified itself on a connection from `peer`. With no other live session it
    /// gets the command path; a live session that has been silent for
    /// `takeover_silence` is taken over; a live and active one is an identity conflict, settled
    /// by the policy (the newcomer never gets commands under the safe default).
    pub async fn register(
        self: &Arc<Self>,
        device: DeviceId,
        protocol: Protocol,
        peer: impl Into<String>,
    ) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        let (tx, rx) = command_queue::channel(PER_CONNECTION);
        let last_frame = Arc::new(AtomicI64::new(now.timestamp_millis()));
        let holder = Arc::new(AtomicBool::new(false));
        let me = Live {
            conn,
            peer: peer.into(),
            tx,
            last_frame: last_frame.clone(),
            holder: holder.clone(),
        };
        let mut conflict = None;
        let event = {
            let mut live = self.live.write().expect("not poisoned");
            match live.get_mut(&device) {
                None => {
                    holder.store(true, Ordering::Release);
                    live.insert(
                        device.clone(),
                        Claims {
                            holder: me,
                            others: Vec::new(),
                            conflicted: false,
                        },
                    );
                    Some(self.online(&device, protocol, conn))
                }
                Some(claims) => {
                    let silent = now - claims.holder.silent_since() >= self.policy.takeover_silence;
                    if self.policy.conflict == ConflictPolicy::Newest {
                        holder.store(true, Ordering::Release);
                        let old = std::mem::replace(&mut claims.holder, me);
                        old.holder.store(false, Ordering::Release);
                        // The old connection's command channel closes with `old`.
                        Some(self.online(&device, protocol, conn))
                    } else if silent {
                        tracing::info!(%device, conn, old = claims.holder.conn, "a new session takes over from a silent one");
                        holder.store(true, Ordering::Release);
                        let old = std::mem::replace(&mut claims.holder, me);
                        old.holder.store(false, Ordering::Release);
                        claims.others.push(old);
                        Some(self.online(&device, protocol, conn))
                    } else {
                        claims.conflicted = true;
                        conflict = Some((
                            claims.holder.conn,
                            claims.holder.peer.clone(),
                            me.peer.clone(),
                        ));
                        claims.others.push(me);
                        None
                    }
                }
            }
        };
        if let Some((established, established_peer, other)) = conflict {
            self.record_conflict(
                &device,
                protocol,
                "second_connection",
                Some((established, established_peer)),
                other,
            );
        }
        if let Some(ev) = event {
            self.event(ev).await;
        }
        Registration {
            sessions: self.clone(),
            device,
            conn,
            protocol,
            last_frame,
            holder,
            commands: rx,
        }
    }

    /// A UDP datagram (which never carries commands) claimed `device`: an identity conflict
    /// when a session holds the device and has spoken within `takeover_silence`.
    pub fn datagram(&self, device: &DeviceId, protocol: Protocol, peer: &str) -> bool {
        let established = {
            let live = self.live.read().expect("not poisoned");
            live.get(device).and_then(|c| {
                (Utc::now() - c.holder.silent_since() < self.policy.takeover_silence)
                    .then(|| (c.holder.conn, c.holder.peer.clone()))
            })
        };
        match established {
            Some(e) => {
                self.record_conflict(device, protocol, "udp", Some(e), peer.to_string());
                true
            }
            None => false,
        }
    }

    /// A connection that already identified as `device` sent a login for another identity.
    pub fn relogin(&self, device: &DeviceId, other: &DeviceId, protocol: Protocol, peer: &str) {
        self.record_conflict(
            other,
            protocol,
            "relogin",
            None,
            format!("{peer} (as {device})"),
        );
    }

    fn record_conflict(
        &self,
        device: &DeviceId,
        protocol: Protocol,
        kind: &'static str,
        established: Option<(u64, String)>,
        other_peer: String,
    ) {
        metrics::counter!("fleetgate_ingest_identity_conflicts_total", "protocol" => protocol.name(), "kind" => kind)
            .increment(1);
        let now = Utc::now();
        let mut list = self.conflicts.lock().unwrap_or_else(|e| e.into_inner());
        let same = list.iter_mut().rev().find(|r| {
            r.device_id == *device && r.kind == kind && r.other_peer == other_peer && r.active
        });
        if let Some(r) = same {
            r.last_seen = now;
            r.count += 1;
            return;
        }
        // Logged once per claimant, not per frame: a flood must not become a log flood.
        tracing::warn!(
            %device,
            protocol = protocol.name(),
            kind,
            established = ?established.as_ref().map(|e| e.0),
            other = ?other_peer,
            "identity conflict: another source claims this device; it gets no commands"
        );
        if list.len() >= CONFLICT_RECORDS {
            list.pop_front();
        }
        list.push_back(ConflictRecord {
            device_id: device.clone(),
            protocol: protocol.name().to_string(),
            kind,
            established_conn: established.as_ref().map(|e| e.0),
            established_peer: established.map(|e| e.1),
            other_peer,
            first_seen: now,
            last_seen: now,
            count: 1,
            active: true,
        });
    }

    /// Identity conflicts seen, newest first; `active` ones first of all.
    pub fn conflicts(&self) -> Vec<ConflictRecord> {
        let ttl = self.policy.takeover_silence;
        let now = Utc::now();
        let list = self.conflicts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ConflictRecord> = list
            .iter()
            .rev()
            .cloned()
            .map(|mut r| {
                // A datagram or relogin claim is "active" while it keeps coming.
                if r.kind != "second_connection" {
                    r.active = now - r.last_seen < ttl;
                }
                r
            })
            .collect();
        out.sort_by_key(|r| !r.active);
        out
    }

    /// Whether `device` has more than one session speaking for it now.
    pub fn in_conflict(&self, device: &DeviceId) -> bool {
        self.live
            .read()
            .expect("not poisoned")
            .get(device)
            .is_some_and(|c| c.conflicted)
    }

    fn holder_tx<'a>(&self, claims: &'a Claims) -> Result<&'a Live, SendError> {
        if claims.conflicted && self.policy.conflict == ConflictPolicy::Hold {
            return Err(SendError::Conflict);
        }
        Ok(&claims.holder)
    }

    /// Hand a command to the device's command-path session; returns that connection's id.
    pub fn send(&self, device: &DeviceId, cmd: Outbound) -> Result<u64, SendError> {
        let live = self.live.read().expect("not poisoned");
        let l = self.holder_tx(live.get(device).ok_or(SendError::Offline)?)?;
        l.tx.try_send(Box::new(cmd)).map_err(|e| match e {
            TrySendError::Full => SendError::Busy,
            TrySendError::Closed => SendError::Offline,
        })?;
        Ok(l.conn)
    }

    /// Like [`Sessions::send`], but only to connection `conn`: a command judged safe on one
    /// connection's evidence is never written on another one.
    pub fn send_to(&self, device: &DeviceId, conn: u64, cmd: Outbound) -> Result<u64, SendError> {
        let live = self.live.read().expect("not poisoned");
        let l = self.holder_tx(live.get(device).ok_or(SendError::Offline)?)?;
        if l.conn != conn {
            return Err(SendError::Replaced);
        }
        l.tx.try_send(Box::new(cmd)).map_err(|e| match e {
            TrySendError::Full => SendError::Busy,
            TrySendError::Closed => SendError::Offline,
        })?;
        Ok(l.conn)
    }

    /// Every device with a live session, with its command path's connection id.
    pub fn live(&self) -> Vec<(DeviceId, u64)> {
        self.live
            .read()
            .expect("not poisoned")
            .iter()
            .map(|(d, c)| (d.clone(), c.holder.conn))
            .collect()
    }

    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.live.read().expect("not poisoned").contains_key(device)
    }

    /// Report to the command owner; waits when its queue is full (bounded, like ingest).
    pub async fn event(&self, ev: SessionEvent) {
        let _ = self.events.send(ev).await;
    }

    fn event_now(&self, ev: SessionEvent) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.events.try_send(ev) {
            let events = self.events.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = events.send(ev).await;
                });
            }
        }
    }

    /// A session that is not the holder spoke: it takes the command path over when the holder
    /// has fallen silent; otherwise the conflict goes on (and is recorded).
    fn contender_spoke(&self, device: &DeviceId, protocol: Protocol, conn: u64) {
        let mut conflict = None;
        let event = {
            let mut live = self.live.write().expect("not poisoned");
            let Some(claims) = live.get_mut(device) else {
                return;
            };
            let Some(i) = claims.others.iter().position(|l| l.conn == conn) else {
                return;
            };
            let now = Utc::now();
            if now - claims.holder.silent_since() >= self.policy.takeover_silence {
                let me = claims.others.remove(i);
                me.holder.store(true, Ordering::Release);
                let old = std::mem::replace(&mut claims.holder, me);
                old.holder.store(false, Ordering::Release);
                claims.others.push(old);
                tracing::info!(%device, conn, "the command path moves to a session whose rival fell silent");
                Some(self.online(device, protocol, conn))
            } else {
                claims.conflicted = true;
                conflict = Some((
                    (claims.holder.conn, claims.holder.peer.clone()),
                    claims.others[i].peer.clone(),
                ));
                None
            }
        };
        if let Some((established, other)) = conflict {
            self.record_conflict(
                device,
                protocol,
                "second_connection",
                Some(established),
                other,
            );
        }
        if let Some(ev) = event {
            self.event_now(ev);
        }
    }

    fn unregister(&self, device: &DeviceId, conn: u64, protocol: Protocol) {
        let event = {
            let mut live = self.live.write().expect("not poisoned");
            let Some(claims) = live.get_mut(device) else {
                return;
            };
            if claims.holder.conn == conn {
                if claims.others.is_empty() {
                    live.remove(device);
                    Some(SessionEvent::Offline {
                        device: device.clone(),
                        conn,
                    })
                } else {
                    // The most recently active rival carries the commands from now on (and
                    // gives its own evidence from now on).
                    let i = (0..claims.others.len())
                        .max_by_key(|&i| claims.others[i].last_frame.load(Ordering::Relaxed))
                        .unwrap_or(0);
                    let next = claims.others.remove(i);
                    next.holder.store(true, Ordering::Release);
                    let next_conn = next.conn;
                    claims.holder = next;
                    if claims.others.is_empty() {
                        claims.conflicted = false;
                    }
                    Some(self.online(device, protocol, next_conn))
                }
            } else {
                claims.others.retain(|l| l.conn != conn);
                if claims.others.is_empty() && claims.conflicted {
                    claims.conflicted = false;
                    tracing::info!(%device, "identity conflict over: one session left");
                }
                None
            }
        };
        if !self.in_conflict(device) {
            let mut list = self.conflicts.lock().unwrap_or_else(|e| e.into_inner());
            for r in list
                .iter_mut()
                .filter(|r| r.device_id == *device && r.kind == "second_connection")
            {
                r.active = false;
            }
        }
        if let Some(ev) = event {
            self.event_now(ev);
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
    /// The connection id: what positions from this session carry as their origin.
    pub fn conn(&self) -> u64 {
        self.conn
    }
    /// Whether this session carries the device's commands now.
    pub fn is_holder(&self) -> bool {
        self.holder.load(Ordering::Acquire)
    }
    /// The session received a frame (before its records go to the pipeline).
    pub fn touch(&self, protocol: Protocol) {
        self.last_frame
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        if !self.is_holder() {
            self.sessions
                .contender_spoke(&self.device, protocol, self.conn);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions
            .unregister(&self.device, self.conn, self.protocol);
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
    async fn under_the_newest_policy_a_newer_connection_replaces_the_live_one() {
        let (etx, mut erx) = mpsc::channel(16);
        let s = Sessions::with_policy(
            etx,
            SessionPolicy {
                conflict: ConflictPolicy::Newest,
                ..Default::default()
            },
        );
        let d = DeviceId::new("dev");
        assert_eq!(s.send(&d, cmd(1)).unwrap_err(), SendError::Offline);
        let mut old = s.register(d.clone(), Protocol::Teltonika, "peer").await;
        assert!(matches!(
            erx.recv().await,
            Some(SessionEvent::Online { .. })
        ));
        s.send(&d, cmd(2)).unwrap();
        assert_eq!(old.commands.recv().await.unwrap().id, 2);
        let mut new = s.register(d.clone(), Protocol::Teltonika, "peer").await;
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
        let s = Sessions::with_policy(
            etx,
            SessionPolicy {
                conflict: ConflictPolicy::Newest,
                ..Default::default()
            },
        );
        let d = DeviceId::new("dev");
        let _first = s.register(d.clone(), Protocol::Teltonika, "peer").await;
        let Some(SessionEvent::Online {
            conn: first, at, ..
        }) = erx.recv().await
        else {
            panic!("online event");
        };
        assert!(at <= Utc::now());
        let mut second = s.register(d.clone(), Protocol::Teltonika, "peer").await;
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

    fn online_conn(ev: Option<SessionEvent>) -> u64 {
        match ev {
            Some(SessionEvent::Online { conn, .. }) => conn,
            other => panic!("expected Online, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_second_live_login_is_a_conflict_and_never_gets_the_commands() {
        let (etx, mut erx) = mpsc::channel(16);
        let s = Sessions::new(etx);
        let d = DeviceId::new("352093081234567");
        let mut car = s
            .register(d.clone(), Protocol::Teltonika, "10.0.0.1:5000")
            .await;
        let car_conn = online_conn(erx.recv().await);
        let mut impostor = s
            .register(d.clone(), Protocol::Teltonika, "6.6.6.6:4000")
            .await;
        assert!(erx.try_recv().is_err(), "no change of the command path");
        assert!(s.in_conflict(&d));
        assert!(!impostor.is_holder());
        let c = s.conflicts();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].other_peer, "6.6.6.6:4000");
        assert_eq!(c[0].established_conn, Some(car_conn));
        assert!(c[0].active);
        // The unblock reaches the real car, not the impostor.
        assert_eq!(s.send(&d, cmd(1)).unwrap(), car_conn);
        assert_eq!(car.commands.recv().await.unwrap().id, 1);
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(20),
                impostor.commands.recv()
            )
            .await
            .is_err(),
            "nothing for the impostor"
        );
        // Every frame of the impostor keeps the conflict visible, logged once.
        impostor.touch(Protocol::Teltonika);
        assert_eq!(s.conflicts()[0].count, 2);
        drop(impostor);
        assert!(!s.in_conflict(&d));
        assert!(!s.conflicts()[0].active);
        assert_eq!(s.send(&d, cmd(2)).unwrap(), car_conn);
    }

    #[tokio::test]
    async fn under_hold_no_command_goes_anywhere_while_two_sessions_claim_a_device() {
        let (etx, mut erx) = mpsc::channel(16);
        let s = Sessions::with_policy(
            etx,
            SessionPolicy {
                conflict: ConflictPolicy::Hold,
                ..Default::default()
            },
        );
        let d = DeviceId::new("dev");
        let _car = s.register(d.clone(), Protocol::Gt06, "a").await;
        online_conn(erx.recv().await);
        let other = s.register(d.clone(), Protocol::Gt06, "b").await;
        assert_eq!(s.send(&d, cmd(1)).unwrap_err(), SendError::Conflict);
        drop(other);
        assert!(s.send(&d, cmd(2)).is_ok());
    }

    #[tokio::test]
    async fn a_session_silent_past_takeover_is_replaced_and_the_rival_is_promoted_on_close() {
        let (etx, mut erx) = mpsc::channel(16);
        let s = Sessions::with_policy(
            etx,
            SessionPolicy {
                conflict: ConflictPolicy::KeepEstablished,
                takeover_silence: chrono::Duration::milliseconds(50),
            },
        );
        let d = DeviceId::new("dev");
        let old = s.register(d.clone(), Protocol::Teltonika, "a").await;
        let first = online_conn(erx.recv().await);
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        // A NAT binding gone: the old connection fell silent; the new one takes over.
        let new = s.register(d.clone(), Protocol::Teltonika, "b").await;
        let second = online_conn(erx.recv().await);
        assert_ne!(first, second);
        assert!(new.is_holder() && !old.is_holder());
        assert!(!s.in_conflict(&d));
        // The old one speaks again while the new one is active: now it is a conflict.
        old.touch(Protocol::Teltonika);
        assert!(s.in_conflict(&d));
        // The holder leaves: the rival gets the command path (and starts its own evidence).
        drop(new);
        assert_eq!(online_conn(erx.recv().await), first);
        assert!(old.is_holder());
        assert!(!s.in_conflict(&d));
        drop(old);
        assert!(matches!(
            erx.recv().await,
            Some(SessionEvent::Offline { .. })
        ));
    }

    #[tokio::test]
    async fn udp_claims_of_a_live_device_are_conflicts() {
        let (etx, _erx) = mpsc::channel(16);
        let s = Sessions::new(etx);
        let d = DeviceId::new("dev");
        assert!(
            !s.datagram(&d, Protocol::Teltonika, "1.2.3.4:9"),
            "nobody holds it"
        );
        let _car = s.register(d.clone(), Protocol::Teltonika, "a").await;
        assert!(s.datagram(&d, Protocol::Teltonika, "1.2.3.4:9"));
        assert!(s.datagram(&d, Protocol::Teltonika, "1.2.3.4:9"));
        let c = s.conflicts();
        assert_eq!((c.len(), c[0].kind, c[0].count), (1, "udp", 2));
    }
}
