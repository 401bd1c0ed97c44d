//! The immobiliser actor: the one owner of every vehicle's [`Machine`] and open [`Command`].
//! It is fed by committed batches (speed, ignition, outputs — never a fix that could still be
//! lost), by session events (device online/offline, command written, command answered), by
//! [`ImmobiliserHandle`] requests and by a clock tick (retries, expiry). Each decision is
//! persisted in one transaction before any command goes to a device.
//!
//! With several instances on one PostgreSQL (`Some(cluster)`), an actor keeps in memory only
//! the vehicles whose tracker is connected to its instance: it takes a vehicle over from the
//! database when the tracker connects (or a request for a vehicle connected nowhere arrives)
//! and lets it go once the tracker is gone and the decision is stored. See `super::cluster`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cluster::Forwarded;
use super::command::NewCommand;
use super::config::ImmobiliserConfig;
use super::handle::{machine_of, Request, Routing};
pub use super::handle::{ImmobView, ImmobiliserHandle, ReasonChange, ReasonView};
use super::machine::{ReasonEntry, Step};
use super::safety::{DeviceEvidence, FixSnapshot};
use super::store::{AuditEntry, AuditPosition, ImmobChanges, ImmobiliserStore, VehicleImmobRow};
use super::{
    Command, CommandStatus, ImmobError, ImmobState, Intent, Machine, RetryPolicy, SafetyRules,
};
use crate::cluster::Cluster;
use crate::ingest::sessions::{Outbound, SessionEvent, Sessions};
use crate::model::{DeviceId, Origin, Position, VehicleId};
use crate::pipeline::store::{DeviceState, StorageError};
use crate::pipeline::Committed;
use crate::protocols::{CommandBody, CommandResponse, DeviceCommand};

/// Requests a handle can queue before callers wait.
const REQUEST_QUEUE: usize = 256;
/// Longest one database step of the actor may take (see the constant's own doc).
const STEP_TIMEOUT: std::time::Duration = crate::pipeline::writer::SUBSCRIBER_STEP_TIMEOUT;

/// `fut`, or a timeout error after [`STEP_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StorageError::Timeout {
            what: format!("immobiliser: {what}"),
            after: STEP_TIMEOUT,
        }),
    }
}
/// The actor's name in the audit when a fix (not a person) moved the state.
const SYSTEM: &str = "immobiliser";
/// Command ids are reserved from the database this many at a time, and topped up before an
/// event is handled whenever fewer than [`ID_LOW`] are left. One event issues at most two
/// commands (a change or a fix of one vehicle), so the pool never runs dry between top-ups.
const ID_BLOCK: u32 = 32;
const ID_LOW: usize = 8;
/// Retired commands remembered while a connection may still report writing them.
const RETIRED_IN_FLIGHT: usize = 4096;

/// The running actor; stop it after the pipeline has drained.
pub struct ImmobiliserTask {
    shutdown: CancellationToken,
    join: JoinHandle<()>,
}

impl ImmobiliserTask {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.join.await;
    }
}

/// Load the stored state and start the actor. `states` seeds each device's safety tracker
/// with its last stored fix.
pub async fn start(
    config: &ImmobiliserConfig,
    store: Arc<dyn ImmobiliserStore>,
    sessions: Arc<Sessions>,
    states: &[DeviceState],
    events: mpsc::Receiver<SessionEvent>,
    committed: mpsc::Receiver<Arc<Committed>>,
    cluster: Option<Arc<Cluster>>,
) -> Result<(ImmobiliserHandle, ImmobiliserTask), StorageError> {
    // In a cluster nothing is held at start: vehicles are taken over as trackers connect.
    let snapshot = match cluster {
        None => store.immobiliser_load().await?,
        Some(_) => Default::default(),
    };
    let rules = config.safety();
    let mut actor = Actor {
        cfg: config.clone(),
        rules,
        policy: config.retry(),
        store: store.clone(),
        sessions,
        machines: HashMap::new(),
        device_vehicle: HashMap::new(),
        vehicle_device: HashMap::new(),
        vehicle_protocol: HashMap::new(),
        evidence: HashMap::new(),
        commands: BTreeMap::new(),
        in_flight: HashMap::new(),
        awaiting: HashMap::new(),
        triggers: HashMap::new(),
        retired_in_flight: HashMap::new(),
        ids: VecDeque::new(),
        cluster: cluster.clone(),
        release: BTreeSet::new(),
        changes: ImmobChanges::default(),
        dirty_vehicles: BTreeSet::new(),
        gauges_dirty: true,
        reported_reasons: HashSet::new(),
    };
    // No evidence survives a restart: a block waits for fixes on the device's new session.
    let _ = states;
    for v in snapshot.vehicles {
        let at = store.fitting(&v.vehicle_id).await?.unwrap_or_default();
        actor.bind(&v.vehicle_id, at.device, at.protocol);
        actor.machines.insert(
            v.vehicle_id,
            Machine {
                state: v.state,
                since: v.since,
                reasons: v.reasons,
            },
        );
    }
    actor.top_up_ids().await?;
    let now = Utc::now();
    for mut c in snapshot.open_commands {
        // Written before the restart and never answered: write again on the next connection.
        if c.connection_lost(&actor.policy, now).is_some() {
            actor.changes.commands.push(c.clone());
        }
        actor.commands.insert(c.id, c);
    }
    actor.flush().await?;
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(actor.run(rx, events, committed, shutdown.clone()));
    let routing = cluster.map(|cluster| Routing { cluster, store });
    Ok((
        ImmobiliserHandle { tx, routing },
        ImmobiliserTask { shutdown, join },
    ))
}

struct Actor {
    cfg: ImmobiliserConfig,
    rules: SafetyRules,
    policy: RetryPolicy,
    store: Arc<dyn ImmobiliserStore>,
    sessions: Arc<Sessions>,
    machines: HashMap<VehicleId, Machine>,
    device_vehicle: HashMap<DeviceId, VehicleId>,
    vehicle_device: HashMap<VehicleId, DeviceId>,
    /// The protocol each vehicle's tracker speaks, for per-protocol command profiles.
    vehicle_protocol: HashMap<VehicleId, String>,
    /// Per device, each session's evidence and which session carries its commands.
    evidence: HashMap<DeviceId, DeviceEvidence>,
    /// Open commands: queued, sent, or acknowledged and awaiting confirmation.
    commands: BTreeMap<i64, Command>,
    /// Handed to a connection (by id), not yet reported written; the flag withdraws it.
    in_flight: HashMap<i64, (u64, Arc<AtomicBool>)>,
    /// Per device, commands written and not yet answered, in write order (answers without
    /// a sequence number are matched first in, first out).
    awaiting: HashMap<DeviceId, VecDeque<i64>>,
    /// Commands retired while handed to a connection: a write reported later is still
    /// audited (every byte sent to a device has its `command_sent` row).
    retired_in_flight: HashMap<i64, Command>,
    /// When the fix that triggered a block reached the gateway (latency metric).
    triggers: HashMap<i64, DateTime<Utc>>,
    /// Command ids reserved from the database (unique across instances sharing it).
    ids: VecDeque<i64>,
    /// Several instances share the database: hold only vehicles whose tracker is here.
    cluster: Option<Arc<Cluster>>,
    /// Vehicles to let go after the next successful flush, unless their tracker is here.
    release: BTreeSet<VehicleId>,
    changes: ImmobChanges,
    dirty_vehicles: BTreeSet<VehicleId>,
    gauges_dirty: bool,
    reported_reasons: HashSet<String>,
}

impl Actor {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut events: mpsc::Receiver<SessionEvent>,
        mut committed: mpsc::Receiver<Arc<Committed>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.cfg.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ids_retry_at = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= ids_retry_at {
                if let Err(e) = bounded("reserving command ids", self.top_up_ids()).await {
                    tracing::error!(error = %e, "immobiliser: command ids not reserved");
                    ids_retry_at = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                }
            }
            // Committed fixes first: a request then sees every fix acked before it was made.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(c) = committed.recv() => self.on_committed(&c),
                Some(ev) = events.recv() => {
                    // The cluster bookkeeping of a session heals at the next heartbeat.
                    if tokio::time::timeout(STEP_TIMEOUT, self.on_session(&ev)).await.is_err() {
                        tracing::error!("immobiliser: session bookkeeping timed out");
                    }
                    self.on_event(ev)
                }
                Some(req) = requests.recv() => {
                    // A request that times out drops its reply: the API answers with an error.
                    if tokio::time::timeout(2 * STEP_TIMEOUT, self.on_request(req)).await.is_err() {
                        tracing::error!("immobiliser: request timed out on storage");
                    }
                    continue;
                }
                _ = tick.tick() => self.on_tick(),
            }
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, "immobiliser state not persisted; commands held back");
                continue;
            }
            self.dispatch();
            self.release_unheld();
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "immobiliser state not persisted at shutdown");
        }
        tracing::debug!("immobiliser stopped");
    }

    /// Keep a few command ids in hand: `issue` is synchronous and takes one from the pool.
    async fn top_up_ids(&mut self) -> Result<(), StorageError> {
        if self.ids.len() < ID_LOW {
            let ids = self.store.reserve_command_ids(ID_BLOCK).await?;
            self.ids.extend(ids);
        }
        Ok(())
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Change { change, reply } => {
                let vehicle = change.vehicle.clone();
                // Not held here (cluster): start from what the database says now.
                let foreign = self.cluster.is_some() && !self.holds(&vehicle);
                if foreign {
                    if let Err(e) = self.adopt(&vehicle).await {
                        let _ = reply.send(Err(ImmobError::Storage(e.to_string())));
                        return;
                    }
                    self.release.insert(vehicle.clone());
                }
                let result = self.change(change).await;
                let result = match self.flush().await {
                    Ok(()) => {
                        self.dispatch();
                        self.release_unheld();
                        result
                    }
                    // Kept in memory and retried; nothing goes to a device until stored.
                    Err(e) => Err(ImmobError::Storage(e.to_string())),
                };
                let _ = reply.send(result);
                if foreign {
                    self.hand_over(&vehicle).await;
                }
            }
            Request::Adopt { vehicle, reply } => {
                let result = if self.holds(&vehicle) {
                    self.adopt(&vehicle)
                        .await
                        .map_err(|e| ImmobError::Storage(e.to_string()))
                } else {
                    Ok(())
                };
                if result.is_ok() {
                    self.dispatch();
                }
                let _ = reply.send(result);
            }
            Request::Rebind { vehicle, reply } => {
                let result = match self.store.fitting(&vehicle).await {
                    Ok(at) => {
                        let at = at.unwrap_or_default();
                        self.bind(&vehicle, at.device, at.protocol);
                        // Commands of the old pairing are retired here, before anything goes out.
                        self.dispatch();
                        match self.flush().await {
                            Ok(()) => Ok(()),
                            Err(e) => Err(ImmobError::Storage(e.to_string())),
                        }
                    }
                    Err(e) => Err(ImmobError::Storage(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Request::View { vehicle, reply } => {
                let _ = reply.send(ImmobView::of(self.machines.get(&vehicle)));
            }
            Request::Views { reply } => {
                let all = self
                    .machines
                    .iter()
                    .map(|(v, m)| (v.clone(), ImmobView::of(Some(m))))
                    .collect();
                let _ = reply.send(all);
            }
        }
    }

    /// Whether this instance holds the vehicle's tracker connection.
    fn holds(&self, vehicle: &VehicleId) -> bool {
        self.vehicle_device
            .get(vehicle)
            .is_some_and(|d| self.sessions.is_online(d))
    }

    /// Cluster bookkeeping for a session event, before the event itself is handled: record
    /// where the device is connected and take its vehicle over from the database.
    async fn on_session(&mut self, ev: &SessionEvent) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        match ev {
            SessionEvent::Online { device, conn, .. } => {
                if let Err(e) = cluster.session_online(device, *conn).await {
                    tracing::warn!(%device, error = %e, "cluster: session not recorded");
                }
                match self.store.vehicle_of(device).await {
                    Ok(Some(v)) => {
                        if let Err(e) = self.adopt(&v).await {
                            tracing::error!(vehicle = %v, error = %e, "immobiliser: vehicle not taken over");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(%device, error = %e, "immobiliser: vehicle not read"),
                }
            }
            SessionEvent::Offline { device, conn } => {
                if let Err(e) = cluster.session_offline(device, *conn).await {
                    tracing::warn!(%device, error = %e, "cluster: session not cleared");
                }
                if let Some(v) = self.device_vehicle.get(device) {
                    self.release.insert(v.clone());
                }
            }
            _ => {}
        }
    }

    /// Replace what is held about a vehicle with what the database says (another instance
    /// may have changed it). Commands still in a connection's queue stay there only if the
    /// database still has them open.
    async fn adopt(&mut self, vehicle: &VehicleId) -> Result<(), StorageError> {
        let at = self.store.fitting(vehicle).await?.unwrap_or_default();
        let (state, open) = self.store.immobiliser_vehicle(vehicle).await?;
        self.bind(vehicle, at.device, at.protocol);
        self.forget(vehicle);
        if let Some(v) = state {
            self.machines.insert(vehicle.clone(), machine_of(v));
        }
        for c in open {
            self.commands.insert(c.id, c);
        }
        self.withdraw_retired();
        self.gauges_dirty = true;
        Ok(())
    }

    /// Drop a vehicle's machine and commands from memory (they are stored).
    fn forget(&mut self, vehicle: &VehicleId) {
        self.machines.remove(vehicle);
        self.commands.retain(|_, c| &c.vehicle_id != vehicle);
    }

    /// Withdraw hand-offs to connections of commands no longer held. (Awaited answers stay:
    /// an answer to a retired command must still be matched to it, not to a newer one.)
    fn withdraw_retired(&mut self) {
        let commands = &self.commands;
        self.in_flight.retain(|id, (_, flag)| {
            let keep = commands.contains_key(id);
            if !keep {
                flag.store(false, Ordering::Release);
            }
            keep
        });
    }

    /// Let go of vehicles whose tracker is not here (cluster), now that they are stored.
    fn release_unheld(&mut self) {
        if self.release.is_empty() || !self.changes.is_empty() {
            return;
        }
        for v in std::mem::take(&mut self.release) {
            if !self.holds(&v) {
                self.forget(&v);
                self.gauges_dirty = true;
            }
        }
        self.withdraw_retired();
    }

    /// After changing a vehicle whose tracker is not here: if it connected to another
    /// instance meanwhile, that instance must reload what was just stored.
    async fn hand_over(&mut self, vehicle: &VehicleId) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        match cluster.owner_of(vehicle).await {
            Ok(Some(owner)) if owner != cluster.instance() => {
                let msg = Forwarded::Adopt {
                    vehicle: vehicle.clone(),
                };
                if let Err(e) = cluster.send(&owner, &msg).await {
                    tracing::warn!(%vehicle, %owner, error = %e, "cluster: hand-over not sent");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%vehicle, error = %e, "cluster: owner not read"),
        }
    }

    fn bind(&mut self, vehicle: &VehicleId, device: Option<DeviceId>, protocol: Option<String>) {
        if let Some(old) = self.vehicle_device.remove(vehicle) {
            self.device_vehicle.remove(&old);
        }
        match protocol {
            Some(p) => self.vehicle_protocol.insert(vehicle.clone(), p),
            None => self.vehicle_protocol.remove(vehicle),
        };
        if let Some(d) = device {
            // The tracker moved here from another vehicle: that one no longer has it.
            if let Some(prev) = self.device_vehicle.insert(d.clone(), vehicle.clone()) {
                if &prev != vehicle && self.vehicle_device.get(&prev) == Some(&d) {
                    self.vehicle_device.remove(&prev);
                }
            }
            self.vehicle_device.insert(vehicle.clone(), d);
        }
    }

    async fn change(&mut self, ch: ReasonChange) -> Result<ImmobView, ImmobError> {
        let at = self
            .store
            .fitting(&ch.vehicle)
            .await
            .map_err(|e| ImmobError::Storage(e.to_string()))?
            .ok_or_else(|| ImmobError::UnknownVehicle(ch.vehicle.0.clone()))?;
        self.bind(&ch.vehicle, at.device, at.protocol);
        let now = Utc::now();
        let safe = self.safe_conn(&ch.vehicle).is_some();
        let vehicle = ch.vehicle.clone();
        let machine = self
            .machines
            .entry(vehicle.clone())
            .or_insert_with(|| Machine::new(now));
        if ch.active {
            let Some(reason) = ch.reason.clone() else {
                return Err(ImmobError::BadReason("all".into()));
            };
            let entry = ReasonEntry {
                since: now,
                actor: ch.actor.clone(),
                comment: ch.comment.clone(),
            };
            let result =
                machine.add_reason(reason.clone(), entry, ch.force, self.cfg.allow_force, safe);
            match result {
                Err(e) => {
                    self.audit(&vehicle, "force_refused", &ch.actor, |a| {
                        a.reason = Some(reason.to_string());
                        a.comment = ch.comment.clone();
                        a.forced = true;
                    });
                    metrics::counter!("fleetgate_immobiliser_force_refused_total").increment(1);
                    return Err(e);
                }
                Ok((added, step)) => {
                    if added {
                        self.dirty_vehicles.insert(vehicle.clone());
                        self.audit(&vehicle, "reason_added", &ch.actor, |a| {
                            a.reason = Some(reason.to_string());
                            a.comment = ch.comment.clone();
                            a.forced = ch.force;
                        });
                    }
                    self.apply(&vehicle, step, &ch.actor, ch.comment.as_deref(), None);
                }
            }
        } else {
            let (lifted, step) = match &ch.reason {
                Some(r) => {
                    let (was, step) = machine.lift_reason(r, safe, now);
                    (if was { vec![r.clone()] } else { Vec::new() }, step)
                }
                None => {
                    let (lifted, mut step) = machine.lift_all(safe, now);
                    if lifted.is_empty()
                        && step.command.is_none()
                        && machine.state != ImmobState::Running
                    {
                        // Nothing stood but the car is not known free (a failed unblock): an
                        // operator's unblock sends the unblock again.
                        step = machine.reissue_unblock(now);
                    }
                    (lifted, step)
                }
            };
            for r in &lifted {
                self.dirty_vehicles.insert(vehicle.clone());
                self.audit(&vehicle, "reason_lifted", &ch.actor, |a| {
                    a.reason = Some(r.to_string());
                    a.comment = ch.comment.clone();
                });
            }
            self.apply(&vehicle, step, &ch.actor, ch.comment.as_deref(), None);
        }
        self.gauges_dirty = true;
        Ok(ImmobView::of(self.machines.get(&vehicle)))
    }

    fn machine(&mut self, vehicle: &VehicleId) -> &mut Machine {
        let now = Utc::now();
        self.machines
            .entry(vehicle.clone())
            .or_insert_with(|| Machine::new(now))
    }

    /// The connection a block may go to now: the vehicle's tracker's command path, when its
    /// own fixes show the car safe to stop.
    fn safe_conn(&self, vehicle: &VehicleId) -> Option<u64> {
        let d = self.vehicle_device.get(vehicle)?;
        self.evidence.get(d)?.safe_conn(&self.rules)
    }

    fn position_of(&self, vehicle: &VehicleId) -> Option<AuditPosition> {
        let d = self.vehicle_device.get(vehicle)?;
        let last = self.evidence.get(d)?.holder_evidence()?.last.as_ref()?;
        Some(AuditPosition {
            time: last.time,
            lat: last.lat,
            lon: last.lon,
            speed_kmh: last.speed_kmh,
            ignition: last.ignition,
        })
    }

    fn audit(
        &mut self,
        vehicle: &VehicleId,
        event: &str,
        actor: &str,
        fill: impl FnOnce(&mut AuditEntry),
    ) {
        let mut a = AuditEntry {
            // Allocated by the database when stored.
            id: 0,
            time: Utc::now(),
            vehicle_id: vehicle.clone(),
            event: event.to_string(),
            reason: None,
            actor: actor.to_string(),
            comment: None,
            state_from: None,
            state_to: None,
            command_id: None,
            forced: false,
            position: self.position_of(vehicle),
        };
        fill(&mut a);
        tracing::info!(vehicle = %vehicle, event, actor, reason = ?a.reason, from = ?a.state_from, to = ?a.state_to, command = ?a.command_id, "immobiliser");
        self.changes.audit.push(a);
    }

    fn reasons_text(&self, vehicle: &VehicleId) -> String {
        self.machines
            .get(vehicle)
            .map(|m| {
                m.reasons
                    .keys()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    /// Record a machine step: audit its transitions, issue its command.
    fn apply(
        &mut self,
        vehicle: &VehicleId,
        step: Step,
        actor: &str,
        comment: Option<&str>,
        trigger: Option<DateTime<Utc>>,
    ) {
        if step.transitions.is_empty() && step.command.is_none() {
            return;
        }
        self.dirty_vehicles.insert(vehicle.clone());
        self.gauges_dirty = true;
        let reasons = self.reasons_text(vehicle);
        for (from, to) in &step.transitions {
            self.audit(vehicle, "state_changed", actor, |a| {
                a.state_from = Some(from.to_string());
                a.state_to = Some(to.to_string());
                a.reason = (!reasons.is_empty()).then(|| reasons.clone());
                a.comment = comment.map(str::to_string);
                a.forced = step.forced && *to == ImmobState::Blocking;
            });
        }
        if let Some(intent) = step.command {
            self.issue(vehicle, intent, step.forced, actor, trigger);
        }
    }

    /// Create a command, superseding every unfinished one of the vehicle (last intent wins).
    fn issue(
        &mut self,
        vehicle: &VehicleId,
        intent: Intent,
        forced: bool,
        actor: &str,
        trigger: Option<DateTime<Utc>>,
    ) {
        let now = Utc::now();
        let older: Vec<i64> = self
            .commands
            .values()
            .filter(|c| &c.vehicle_id == vehicle)
            .map(|c| c.id)
            .collect();
        for id in older {
            self.retire(id, now, actor);
        }
        let device = self.vehicle_device.get(vehicle).cloned();
        let protocol = self.vehicle_protocol.get(vehicle).cloned();
        let profile = self.cfg.profile_for(
            &vehicle.0,
            device.as_ref().map(|d| d.as_str()),
            protocol.as_deref(),
        );
        let text = profile.and_then(|p| match intent {
            Intent::Block => p.block.clone(),
            Intent::Unblock => p.unblock.clone(),
        });
        let output = profile.and_then(|p| p.output).unwrap_or(1);
        let Some(id) = self.ids.pop_front() else {
            // Only when the database refused every top-up since the pool was last filled.
            tracing::error!(vehicle = %vehicle, intent = intent.as_str(), "no command id reserved (storage unavailable); command not issued");
            return;
        };
        let cmd = Command::new(
            id,
            NewCommand {
                vehicle_id: vehicle.clone(),
                device_id: device,
                intent,
                text,
                output,
                forced,
                reasons: self.reasons_text(vehicle),
                actor: actor.to_string(),
            },
            &self.policy,
            now,
        );
        self.audit(vehicle, "command_queued", actor, |a| {
            a.command_id = Some(id);
            a.forced = forced;
            a.reason = (!cmd.reasons.is_empty()).then(|| cmd.reasons.clone());
            a.comment = Some(intent.as_str().to_string());
        });
        if let Some(t) = trigger {
            self.triggers.insert(id, t);
        }
        self.changes.commands.push(cmd.clone());
        self.commands.insert(id, cmd);
    }

    /// A newer intent replaces command `id`: a pending one is superseded (and withdrawn from
    /// its connection's queue); an acknowledged one stops waiting for confirmation.
    fn retire(&mut self, id: i64, now: DateTime<Utc>, actor: &str) {
        let Some(mut c) = self.commands.remove(&id) else {
            return;
        };
        self.triggers.remove(&id);
        if let Some((_, flag)) = self.in_flight.remove(&id) {
            flag.store(false, Ordering::Release);
            // The connection may be writing it right now; its report still gets audited.
            if self.retired_in_flight.len() >= RETIRED_IN_FLIGHT {
                self.retired_in_flight.clear();
            }
            self.retired_in_flight.insert(id, c.clone());
        }
        if c.status.is_pending() {
            c.supersede(now);
            count_outcome(&c);
            let vehicle = c.vehicle_id.clone();
            self.audit(&vehicle, "command_superseded", actor, |a| {
                a.command_id = Some(id);
                a.comment = Some(c.intent.as_str().to_string());
            });
            self.changes.commands.push(c);
        }
    }

    fn on_committed(&mut self, c: &Committed) {
        let device = &c.item.device;
        let origin = match c.item.origin {
            Origin::Session(conn) => Some(conn),
            Origin::Sessionless => None,
        };
        let evidence = self.evidence.entry(device.clone()).or_default();
        evidence.observe(
            origin,
            c.item.positions.iter().map(|p| snapshot(&p.position)),
            c.item.server_time,
            &self.rules,
        );
        // Only the command path's own telemetry can confirm a command.
        let from_holder = origin.is_some() && origin == evidence.holder;
        let Some(vehicle) = self.device_vehicle.get(device).cloned() else {
            return;
        };
        let safe = self.safe_conn(&vehicle).is_some();
        let Some(machine) = self.machines.get_mut(&vehicle) else {
            return;
        };
        let now = Utc::now();
        let step = machine.on_fix(safe, now);
        self.apply(&vehicle, step, SYSTEM, None, Some(c.item.server_time));

        // A block still queued (tracker offline, or back online with fixes showing the car
        // no longer safe) goes back to waiting for safe conditions.
        if self.machines.get(&vehicle).map(|m| m.state) == Some(ImmobState::Blocking) && !safe {
            let queued: Vec<i64> = self
                .commands
                .values()
                .filter(|c| {
                    c.vehicle_id == vehicle
                        && c.intent == Intent::Block
                        && c.status == CommandStatus::Queued
                        && !c.forced
                })
                .map(|c| c.id)
                .collect();
            if !queued.is_empty() {
                for id in queued {
                    self.retire(id, now, SYSTEM);
                }
                let step = self.machine(&vehicle).hold(now);
                self.apply(
                    &vehicle,
                    step,
                    SYSTEM,
                    Some("car moving before delivery"),
                    None,
                );
            }
        }

        // Telemetry confirms the newest command when it shows the output as commanded.
        let newest = self
            .commands
            .values()
            .rev()
            .find(|c| c.vehicle_id == vehicle)
            .map(|c| c.id);
        if let Some(id) = newest.filter(|_| from_holder) {
            let confirmed = c.item.positions.iter().any(|p| match p.position.outputs {
                Some(bits) => self
                    .commands
                    .get(&id)
                    .is_some_and(|cmd| cmd.confirms(bits, p.position.fix_time)),
                None => false,
            });
            if confirmed {
                self.finish_command(id, |cmd, now| cmd.confirm(now), true);
            }
        }
    }

    /// Move a command to a final or acknowledged status and tell its vehicle's machine.
    fn finish_command(
        &mut self,
        id: i64,
        change: impl FnOnce(&mut Command, DateTime<Utc>),
        done: bool,
    ) {
        let now = Utc::now();
        let Some(cmd) = self.commands.get_mut(&id) else {
            return;
        };
        change(cmd, now);
        let cmd = cmd.clone();
        count_outcome(&cmd);
        let vehicle = cmd.vehicle_id.clone();
        self.audit(
            &vehicle,
            &format!("command_{}", cmd.status.as_str()),
            SYSTEM,
            |a| {
                a.command_id = Some(id);
                a.comment = Some(match (&cmd.response, &cmd.error) {
                    (_, Some(e)) if !done => format!("{}: {e}", cmd.intent.as_str()),
                    (Some(r), _) => format!("{}: {r}", cmd.intent.as_str()),
                    _ => cmd.intent.as_str().to_string(),
                });
            },
        );
        if !matches!(cmd.status, CommandStatus::Acknowledged) {
            self.commands.remove(&id);
            self.in_flight.remove(&id);
            if let Some(dev) = &cmd.device_id {
                if let Some(q) = self.awaiting.get_mut(dev) {
                    q.retain(|x| *x != id);
                }
            }
        }
        self.changes.commands.push(cmd.clone());
        let step = self.machine(&vehicle).on_command(cmd.intent, done, now);
        self.apply(&vehicle, step, SYSTEM, None, None);
    }

    /// The device's command path changed (to `keep`, or to none): commands handed to other
    /// connections must not be written there late, and commands written there will not be
    /// answered on another one, so they are written again.
    fn connection_changed(&mut self, device: DeviceId, keep: Option<u64>) {
        let now = Utc::now();
        self.awaiting.remove(&device);
        let ids: Vec<i64> = self
            .commands
            .values()
            .filter(|c| c.device_id.as_ref() == Some(&device))
            .map(|c| c.id)
            .collect();
        self.in_flight.retain(|id, (c, flag)| {
            let keep = !ids.contains(id) || Some(*c) == keep;
            if !keep {
                // Still in an old connection's queue: it must not write it late.
                flag.store(false, Ordering::Release);
            }
            keep
        });
        for id in ids {
            let changed = self.commands.get_mut(&id).and_then(|c| {
                c.connection_lost(&self.policy, now)
                    .map(|st| (st, c.clone()))
            });
            match changed {
                Some((CommandStatus::Failed, _)) => self.finish_command(id, |_, _| {}, false),
                Some((_, c)) => self.changes.commands.push(c),
                None => {}
            }
        }
    }

    fn on_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Online {
                device,
                conn,
                epoch,
                ..
            } => {
                let e = self.evidence.entry(device.clone()).or_default();
                if epoch < e.epoch {
                    return;
                }
                e.set_holder(conn, epoch);
                self.connection_changed(device, Some(conn))
            }
            SessionEvent::Offline { device, conn } => {
                if let Some(e) = self.evidence.get_mut(&device) {
                    e.closed(conn);
                    if e.holder.is_none() {
                        self.evidence.remove(&device);
                    }
                }
                self.connection_changed(device, None)
            }
            SessionEvent::Written { device, id, at } => {
                self.in_flight.remove(&id);
                let Some(c) = self.commands.get_mut(&id) else {
                    // Superseded while already in the connection's hands: the device got it
                    // all the same, and the audit says so.
                    if let Some(mut c) = self.retired_in_flight.remove(&id) {
                        c.attempts += 1;
                        // Its answer must be matched to it, not to the newer command.
                        self.awaiting.entry(device).or_default().push_back(id);
                        metrics::counter!("fleetgate_immobiliser_commands_sent_total", "intent" => c.intent.as_str())
                            .increment(1);
                        let vehicle = c.vehicle_id.clone();
                        self.audit(&vehicle, "command_sent", SYSTEM, |a| {
                            a.command_id = Some(id);
                            a.forced = c.forced;
                            a.comment = Some(format!(
                                "{} (attempt {}; superseded before the write, the device got it)",
                                c.intent.as_str(),
                                c.attempts
                            ));
                        });
                    } else {
                        tracing::warn!(command = id, "a command unknown here was written");
                    }
                    return;
                };
                c.sent(at);
                let c = c.clone();
                self.awaiting.entry(device).or_default().push_back(id);
                if let Some(t) = self.triggers.remove(&id) {
                    let secs = (at - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    metrics::histogram!("fleetgate_immobiliser_fix_to_command_seconds")
                        .record(secs);
                }
                metrics::counter!("fleetgate_immobiliser_commands_sent_total", "intent" => c.intent.as_str())
                    .increment(1);
                self.audit(&c.vehicle_id, "command_sent", SYSTEM, |a| {
                    a.command_id = Some(id);
                    a.forced = c.forced;
                    a.comment = Some(format!("{} (attempt {})", c.intent.as_str(), c.attempts));
                });
                self.changes.commands.push(c);
            }
            SessionEvent::NotWritten { id, error, io, .. } => {
                self.in_flight.remove(&id);
                self.retired_in_flight.remove(&id);
                if !io {
                    self.finish_command(id, |c, now| c.unsendable(error, now), false);
                }
            }
            SessionEvent::Answer { device, response } => self.on_answer(device, response),
        }
    }

    fn on_answer(&mut self, device: DeviceId, response: CommandResponse) {
        let q = self.awaiting.entry(device.clone()).or_default();
        // By the echoed sequence number when it is one of ours, else first in, first out.
        let by_seq = response
            .seq
            .and_then(|seq| q.iter().position(|id| *id as u32 == seq));
        let id = match by_seq {
            Some(i) => q.remove(i),
            None => q.pop_front(),
        };
        let Some(id) = id else {
            tracing::info!(%device, text = %response.text, "answer to no command of ours");
            return;
        };
        let refused = response.success == Some(false);
        let text = response.text.clone();
        self.finish_command(
            id,
            move |c, now| {
                c.answered(&text, response.success, now);
            },
            !refused,
        );
    }

    fn on_tick(&mut self) {
        let now = Utc::now();
        let ids: Vec<i64> = self.commands.keys().copied().collect();
        for id in ids {
            let Some(c) = self.commands.get_mut(&id) else {
                continue;
            };
            if c.status == CommandStatus::Acknowledged && now >= c.expires_at {
                // Answered but never seen in telemetry: stays acknowledged.
                self.commands.remove(&id);
                continue;
            }
            let changed = c.tick(&self.policy, now).map(|st| (st, c.clone()));
            match changed {
                Some((CommandStatus::Queued, c)) => {
                    if let Some(q) = c.device_id.as_ref().and_then(|d| self.awaiting.get_mut(d)) {
                        q.retain(|x| *x != id);
                    }
                    self.changes.commands.push(c);
                }
                Some(_) => self.finish_command(id, |_, _| {}, false),
                None => {}
            }
        }
    }

    /// Hand every due command to its device's live connection.
    fn dispatch(&mut self) {
        let now = Utc::now();
        let mut handed = Vec::new();
        let mut stale = Vec::new();
        for c in self.commands.values() {
            if !c.is_due(now) || self.in_flight.contains_key(&c.id) {
                continue;
            }
            let Some(device) = &c.device_id else {
                continue;
            };
            // A command belongs to its vehicle and the tracker it was issued for: a tracker
            // moved to another car never gets the old car's command.
            if self.vehicle_device.get(&c.vehicle_id) != Some(device) {
                stale.push(c.id);
                continue;
            }
            let mut live_conn = None;
            if c.intent == Intent::Block && !c.forced {
                // Judged only on the command path's own fixes: never on UDP, another
                // connection claiming the IMEI, or what the car did before this session.
                let Some(conn) = self
                    .evidence
                    .get(device)
                    .and_then(|e| e.safe_conn(&self.rules))
                else {
                    continue;
                };
                live_conn = Some(conn);
            }
            let body = match (&c.text, c.intent) {
                (Some(t), _) => CommandBody::Text(t.clone()),
                (None, Intent::Block) => CommandBody::EngineStop,
                (None, Intent::Unblock) => CommandBody::EngineResume,
            };
            let out = Outbound::new(
                c.id,
                DeviceCommand {
                    seq: c.id as u32,
                    body,
                },
            );
            let flag = out.live.clone();
            // A safety-judged block goes only to the connection the evidence came on.
            let sent = match live_conn {
                Some(conn) => self.sessions.send_to(device, conn, out),
                None => self.sessions.send(device, out),
            };
            if let Ok(conn) = sent {
                handed.push((c.id, (conn, flag)));
            }
        }
        self.in_flight.extend(handed);
        for id in stale {
            self.unpair(id, now);
        }
    }

    /// Retire command `id`, issued for a tracker no longer in its vehicle; the vehicle waits
    /// for its own tracker (or none) again.
    fn unpair(&mut self, id: i64, now: DateTime<Utc>) {
        let Some(vehicle) = self.commands.get(&id).map(|c| c.vehicle_id.clone()) else {
            return;
        };
        tracing::warn!(command = id, %vehicle, "command's tracker left the vehicle: superseded");
        self.retire(id, now, SYSTEM);
        let step = self.machine(&vehicle).hold(now);
        self.apply(&vehicle, step, SYSTEM, Some("tracker re-assigned"), None);
    }

    /// Persist everything changed since the last flush, in one transaction.
    async fn flush(&mut self) -> Result<(), StorageError> {
        for v in std::mem::take(&mut self.dirty_vehicles) {
            if let Some(m) = self.machines.get(&v) {
                self.changes.vehicles.push(VehicleImmobRow {
                    vehicle_id: v.clone(),
                    state: m.state,
                    since: m.since,
                    reasons: m.reasons.clone(),
                });
            }
        }
        if self.gauges_dirty {
            self.update_gauges();
        }
        if self.changes.is_empty() {
            return Ok(());
        }
        let mut changes = std::mem::take(&mut self.changes);
        // Keep each command's last version only.
        let mut seen = HashSet::new();
        changes.commands.reverse();
        changes.commands.retain(|c| seen.insert(c.id));
        changes.commands.reverse();
        match bounded("storing state", self.store.immobiliser_apply(&changes)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Keep them for the next flush; nothing is dispatched until they are stored.
                self.changes = changes;
                Err(e)
            }
        }
    }

    fn update_gauges(&mut self) {
        self.gauges_dirty = false;
        let mut blocked: HashMap<String, usize> = HashMap::new();
        let mut pending = 0usize;
        for m in self.machines.values() {
            match m.state {
                ImmobState::Blocked => {
                    for r in m.reasons.keys() {
                        *blocked.entry(r.to_string()).or_default() += 1;
                    }
                }
                ImmobState::BlockPending => pending += 1,
                _ => {}
            }
        }
        for r in self.reported_reasons.iter() {
            if !blocked.contains_key(r) {
                metrics::gauge!("fleetgate_immobiliser_blocked_vehicles", "reason" => r.clone())
                    .set(0.0);
            }
        }
        for (r, n) in blocked {
            metrics::gauge!("fleetgate_immobiliser_blocked_vehicles", "reason" => r.clone())
                .set(n as f64);
            self.reported_reasons.insert(r);
        }
        metrics::gauge!("fleetgate_immobiliser_pending_blocks").set(pending as f64);
    }
}

fn count_outcome(c: &Command) {
    metrics::counter!("fleetgate_immobiliser_commands_total", "intent" => c.intent.as_str(), "outcome" => c.status.as_str())
        .increment(1);
}

fn snapshot(p: &Position) -> FixSnapshot {
    FixSnapshot {
        time: p.fix_time,
        lat: p.lat,
        lon: p.lon,
        speed_kmh: p.speed_kmh,
        ignition: p.ignition,
        outputs: p.outputs,
    }
}
