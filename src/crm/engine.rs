//! The CRM rules actor: the one owner of shift, balance and inspection state. It reads
//! committed fixes and API commands, runs the pure state machines, writes each state change
//! together with the events it causes (one transaction), and only then adds or lifts block
//! reasons through [`BlockReasons`](super::BlockReasons).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use super::blocks::{self, Shown};
use super::connector::BalanceQuery;
use super::event::{NewEvent, Payload, StageName};
use super::handback::{self, Transition};
use super::mileage::MileageState;
use super::rules::{BalanceOutcome, BalanceSource, BalanceState, InspectionRules, InspectionState};
use super::shift::{FixInput, ShiftEvent, ShiftRules, ShiftState};
use super::store::{CrmStore, StateWrite};
use super::{RulesConfig, Wiring, REASON_INSPECTION, REASON_LOW_BALANCE};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StorageError, Vehicle};
use crate::pipeline::Committed;

#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the CRM rules are shutting down")]
    Closed,
}

/// Which events the rules write to the outbox.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Emit {
    /// A CRM is configured (`[crm] kind` is not `off`).
    pub on: bool,
    /// Events for vehicles without `crm_deal_id` are still sent (webhook mode).
    pub without_deal: bool,
}

/// An inspection command from the API.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InspectionOp {
    Schedule {
        due_date: Option<NaiveDate>,
        due_odometer_km: Option<f64>,
    },
    Postpone {
        due_date: Option<NaiveDate>,
        due_odometer_km: Option<f64>,
        /// Why (stored, and shown in the CRM note).
        #[serde(default)]
        reason: Option<String>,
    },
    Complete {
        odometer_km: f64,
    },
    Documents {
        documents: BTreeMap<String, Option<NaiveDate>>,
    },
    Get,
}

/// Result of a return request.
#[derive(Clone, Debug, Serialize)]
pub struct ReturnOutcome {
    pub vehicle_id: VehicleId,
    pub wants_to_return: bool,
    /// False when the deal was already moved this shift.
    pub moved: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BalanceView {
    pub driver_id: String,
    /// The driver's balance now (the offered one, or a newer one known before it).
    pub balance_rub: Option<f64>,
    /// The balance's own time.
    pub as_of: Option<DateTime<Utc>>,
    /// False when the offered balance was older than the one known.
    pub applied: bool,
    pub low: bool,
    pub vehicles: Vec<VehicleId>,
}

type Reply<T> = oneshot::Sender<Result<T, CrmError>>;

pub enum Cmd {
    ReturnRequest {
        vehicle: VehicleId,
        actor: String,
        reply: Reply<ReturnOutcome>,
    },
    Balance {
        driver: String,
        balance_rub: f64,
        /// The balance's own time; `None` = now.
        as_of: Option<DateTime<Utc>>,
        source: BalanceSource,
        actor: String,
        reply: Option<Reply<BalanceView>>,
    },
    Inspection {
        vehicle: VehicleId,
        op: InspectionOp,
        actor: String,
        reply: Reply<InspectionState>,
    },
    Shifts {
        reply: oneshot::Sender<HashMap<VehicleId, ShiftState>>,
    },
    /// Drivers to check periodically: of every issued vehicle, and every driver whose cars
    /// carry `low_balance`, whatever their shift.
    BalanceTargets {
        reply: oneshot::Sender<Vec<BalanceQuery>>,
    },
    /// Re-read the vehicle list now (a status or driver changed); answers when done.
    Refresh { done: oneshot::Sender<()> },
}

/// The actor of the reasons the balance rule adds and lifts (as `rule:service_area` for zones).
pub const RULE_LOW_BALANCE: &str = "rule:low_balance";

/// Handle to the rules actor; cheap to clone.
#[derive(Clone)]
pub struct CrmHandle {
    tx: mpsc::Sender<Cmd>,
    pub store: Arc<dyn CrmStore>,
    pub wiring: Wiring,
    /// The CRM itself, for reading deals back after an inbound webhook (`None`: `kind = off`).
    pub connector: Option<Arc<dyn super::connector::Connector>>,
    /// Inbound webhook bodies already acted on (`[crm.inbound] dedup_s`).
    pub inbound_seen: Arc<std::sync::Mutex<super::inbound::Seen>>,
    /// `[crm]` as started (inbound webhooks read their secrets, stages and fields here).
    pub config: Arc<super::CrmConfig>,
}

impl CrmHandle {
    async fn ask<T>(&self, f: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, CrmError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| CrmError::Closed)?;
        rx.await.unwrap_or(Err(CrmError::Closed))
    }

    pub async fn return_request(
        &self,
        vehicle: VehicleId,
        actor: &str,
    ) -> Result<ReturnOutcome, CrmError> {
        let actor = actor.to_string();
        self.ask(|reply| Cmd::ReturnRequest {
            vehicle,
            actor,
            reply,
        })
        .await
    }

    /// A pushed balance; `as_of` is its own time (`None` = now).
    pub async fn set_balance(
        &self,
        driver: &str,
        balance_rub: f64,
        as_of: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Result<BalanceView, CrmError> {
        let (driver, actor) = (driver.to_string(), actor.to_string());
        self.ask(|reply| Cmd::Balance {
            driver,
            balance_rub,
            as_of,
            source: BalanceSource::Pushed,
            actor,
            reply: Some(reply),
        })
        .await
    }

    /// A pulled balance: no answer awaited.
    pub async fn pulled_balance(
        &self,
        driver: &str,
        balance_rub: f64,
        as_of: Option<DateTime<Utc>>,
    ) {
        let _ = self
            .tx
            .send(Cmd::Balance {
                driver: driver.to_string(),
                balance_rub,
                as_of,
                source: BalanceSource::Pulled,
                actor: "crm-balance-check".into(),
                reply: None,
            })
            .await;
    }

    pub async fn inspection(
        &self,
        vehicle: VehicleId,
        op: InspectionOp,
        actor: &str,
    ) -> Result<InspectionState, CrmError> {
        let actor = actor.to_string();
        self.ask(|reply| Cmd::Inspection {
            vehicle,
            op,
            actor,
            reply,
        })
        .await
    }

    pub async fn shifts(&self) -> HashMap<VehicleId, ShiftState> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Shifts { reply }).await.is_err() {
            return HashMap::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Who the periodic balance check asks about (see [`Cmd::BalanceTargets`]).
    pub async fn balance_targets(&self) -> Vec<BalanceQuery> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::BalanceTargets { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Re-read the vehicle list now, and wait until the rules have: a vehicle returned to the
    /// fleet (`status` no longer `issued`) ends its shift before the next change is read.
    pub async fn refresh(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Refresh { done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

pub struct Engine {
    store: Arc<dyn CrmStore>,
    wiring: Wiring,
    rules: RulesConfig,
    emit: Emit,
    ttl: chrono::Duration,
    wake: Arc<Notify>,
    shifts: HashMap<VehicleId, ShiftState>,
    balances: HashMap<String, BalanceState>,
    inspections: HashMap<VehicleId, InspectionState>,
    /// The newest odometers per vehicle: the tracker's (km) if it reports one, the GPS sum (m).
    odometers: HashMap<VehicleId, (Option<f64>, f64)>,
    /// What the CRM knows of each vehicle's mileage (see [`mileage`](super::mileage)).
    mileage: HashMap<VehicleId, MileageState>,
    last_pos: HashMap<VehicleId, (f64, f64)>,
    /// Fix time of the location last written to each car's card (a stage move or a
    /// [`Payload::Location`]): a moving car's next one is due `location_every` later.
    loc_written: HashMap<VehicleId, DateTime<Utc>>,
    /// `[crm] location_interval_min` (see [`Engine::car_card`]); `None`: no location field.
    location_every: Option<chrono::Duration>,
    /// `[crm] car_entity`.
    car_entity: super::config::CarEntity,
    /// What each vehicle's deal was last told of its block (see [`blocks`]).
    shown: HashMap<VehicleId, Shown>,
    by_device: HashMap<DeviceId, VehicleId>,
    vehicles: HashMap<VehicleId, Vehicle>,
    misses: HashMap<DeviceId, tokio::time::Instant>,
    /// Other instances write the same rule state (several instances on one PostgreSQL):
    /// re-read a vehicle's and its driver's state before deciding for them.
    shared: bool,
}

/// How often the vehicle list is re-read, and date rules (inspection, documents) re-checked.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const STEP: Duration = crate::pipeline::writer::SUBSCRIBER_STEP_TIMEOUT;
const DATES_EVERY: Duration = Duration::from_secs(3600);
/// How often the immobiliser's snapshot is read for confirmed blocks and unblocks: one
/// in-memory read of every vehicle's state (1 500 cars: well under a millisecond), and a
/// confirmation reaches the outbox within 2 s.
const BLOCKS_EVERY: Duration = Duration::from_secs(2);

/// Build the actor and its handle; run it with [`Engine::run`].
pub fn new(
    store: Arc<dyn CrmStore>,
    wiring: Wiring,
    rules: RulesConfig,
    emit: Emit,
    ttl: chrono::Duration,
    wake: Arc<Notify>,
) -> (Engine, CrmHandle, mpsc::Receiver<Cmd>) {
    let (tx, rx) = mpsc::channel(256);
    let handle = CrmHandle {
        tx,
        store: store.clone(),
        wiring: wiring.clone(),
        connector: None,
        config: Arc::new(super::CrmConfig::default()),
        inbound_seen: Arc::new(std::sync::Mutex::new(super::inbound::Seen::new(
            std::time::Duration::from_secs(3600),
            100_000,
        ))),
    };
    let engine = Engine {
        store,
        wiring,
        rules,
        emit,
        ttl,
        wake,
        shifts: HashMap::new(),
        balances: HashMap::new(),
        inspections: HashMap::new(),
        odometers: HashMap::new(),
        mileage: HashMap::new(),
        last_pos: HashMap::new(),
        loc_written: HashMap::new(),
        location_every: None,
        car_entity: super::config::CarEntity::Deal,
        shown: HashMap::new(),
        by_device: HashMap::new(),
        vehicles: HashMap::new(),
        misses: HashMap::new(),
        shared: false,
    };
    (engine, handle, rx)
}

fn load<T: serde::de::DeserializeOwned>(rows: Vec<(String, String)>) -> HashMap<String, T> {
    rows.into_iter()
        .filter_map(|(id, json)| match serde_json::from_str(&json) {
            Ok(v) => Some((id, v)),
            Err(e) => {
                tracing::warn!(id, error = %e, "crm: unreadable rule state ignored");
                None
            }
        })
        .collect()
}

fn state<T: Serialize>(scope: &'static str, id: &str, v: &T) -> StateWrite {
    StateWrite {
        scope,
        id: id.to_string(),
        state: serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
    }
}

impl Engine {
    /// The database is shared with other instances (PostgreSQL): see [`Engine::reload`].
    pub fn shared_database(mut self, shared: bool) -> Engine {
        self.shared = shared;
        self
    }

    /// Where car facts go (`[crm] car_entity`) and how often a moving car's location is
    /// written (`[crm] location_interval_min`; `None`: never, there is no field for it).
    pub fn car_card(
        mut self,
        entity: super::config::CarEntity,
        location_every: Option<std::time::Duration>,
    ) -> Engine {
        self.car_entity = entity;
        self.location_every = location_every.and_then(|d| chrono::Duration::from_std(d).ok());
        self
    }

    /// Re-read the stored rule state of a vehicle and/or a driver (shared database only):
    /// another instance may have decided for them since this one last did (a return request
    /// made through its API, a balance pushed there), and every decision is stored with its
    /// events, so the stored state is the latest.
    async fn reload(&mut self, vehicle: Option<&VehicleId>, driver: Option<&str>) {
        if !self.shared {
            return;
        }
        fn put<K: std::hash::Hash + Eq, T: serde::de::DeserializeOwned>(
            map: &mut HashMap<K, T>,
            key: K,
            row: Option<String>,
        ) {
            match row {
                Some(s) => match serde_json::from_str(&s) {
                    Ok(v) => {
                        map.insert(key, v);
                    }
                    Err(e) => tracing::warn!(error = %e, "crm rules: unreadable stored state"),
                },
                None => {
                    map.remove(&key);
                }
            }
        }
        // Every row this step depends on, in one round trip.
        let mut keys: Vec<(&str, &str)> = Vec::with_capacity(5);
        if let Some(v) = vehicle {
            for scope in ["shift", "inspection", "mileage", "block_shown"] {
                keys.push((scope, v.0.as_str()));
            }
        }
        if let Some(d) = driver {
            keys.push(("balance", d));
        }
        if keys.is_empty() {
            return;
        }
        let mut rows = match self.store.crm_state_many(&keys).await {
            Ok(rows) => rows.into_iter(),
            Err(e) => {
                tracing::warn!(error = %e, "crm rules: state not re-read");
                return;
            }
        };
        if let Some(v) = vehicle {
            // The shift's progress on the fix stream is not stored on every fix: merge.
            let mut stored = HashMap::new();
            put(&mut stored, v.clone(), rows.next().flatten());
            match (stored.remove(v), self.shifts.get_mut(v)) {
                (Some(s), Some(mine)) => mine.adopt_durable(&s),
                (Some(s), None) => {
                    self.shifts.insert(v.clone(), s);
                }
                (None, _) => {}
            }
            put(&mut self.inspections, v.clone(), rows.next().flatten());
            put(&mut self.mileage, v.clone(), rows.next().flatten());
            put(&mut self.shown, v.clone(), rows.next().flatten());
        }
        if let Some(d) = driver {
            put(&mut self.balances, d.to_string(), rows.next().flatten());
        }
    }

    fn shift_rules(&self) -> ShiftRules {
        ShiftRules {
            min_moving: chrono::Duration::seconds(self.rules.on_line_after as i64),
            min_distance_m: self.rules.on_line_min_km * 1000.0,
            window: chrono::Duration::seconds(self.rules.on_line_window as i64),
            moving_kmh: self.rules.moving_kmh,
            shift_gap: chrono::Duration::seconds(self.rules.shift_gap as i64),
        }
    }

    fn inspection_rules(&self) -> InspectionRules {
        InspectionRules {
            max_postponements: self.rules.inspection_max_postponements,
            grace_days: self.rules.inspection_grace_days,
            grace_km: self.rules.inspection_grace_km,
            warn_days: self.rules.document_warn_days,
            inspection_warn_days: self.rules.inspection_warn_days,
            inspection_warn_km: self.rules.inspection_warn_km,
        }
    }

    /// Run until the committed-fixes channel closes (the pipeline's writer has finished).
    pub async fn run(
        mut self,
        mut fixes: mpsc::Receiver<Arc<Committed>>,
        mut cmds: mpsc::Receiver<Cmd>,
    ) {
        if let Err(e) = self.startup().await {
            tracing::error!(error = %e, "crm rules: cannot load state; starting empty");
        }
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let mut dates = tokio::time::interval(DATES_EVERY);
        let mut blocks = tokio::time::interval(BLOCKS_EVERY);
        blocks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        dates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Every step is bounded (`SUBSCRIBER_STEP_TIMEOUT`): one abandoned on a silent
            // database connection counts like a failed commit, and the fixes keep flowing.
            let step = STEP;
            let done = tokio::select! {
                c = fixes.recv() => match c {
                    Some(c) => {
                        // One storage commit for the shift states of all that is queued.
                        let batch = crate::pipeline::writer::with_queued(c, &mut fixes);
                        tokio::time::timeout(step, self.on_committed(&batch)).await
                    }
                    None => break,
                },
                Some(m) = cmds.recv() => tokio::time::timeout(step, self.on_cmd(m)).await,
                _ = refresh.tick() => tokio::time::timeout(step, self.refresh()).await,
                _ = dates.tick() => tokio::time::timeout(step, self.check_dates()).await,
                _ = blocks.tick() => tokio::time::timeout(step, self.watch_blocks()).await,
            };
            if done.is_err() {
                metrics::counter!("fleetgate_crm_step_timeouts_total").increment(1);
                tracing::error!("crm rules: a step timed out on storage and was abandoned");
            }
        }
        tracing::info!("crm rules stopped");
    }

    async fn startup(&mut self) -> Result<(), StorageError> {
        self.shifts = load::<ShiftState>(self.store.crm_states("shift").await?)
            .into_iter()
            .map(|(k, v)| (VehicleId(k), v))
            .collect();
        self.balances = load(self.store.crm_states("balance").await?);
        self.mileage = load::<MileageState>(self.store.crm_states("mileage").await?)
            .into_iter()
            .map(|(k, v)| (VehicleId(k), v))
            .collect();
        self.inspections = load::<InspectionState>(self.store.crm_states("inspection").await?)
            .into_iter()
            .map(|(k, v)| (VehicleId(k), v))
            .collect();
        self.shown = load::<Shown>(self.store.crm_states("block_shown").await?)
            .into_iter()
            .map(|(k, v)| (VehicleId(k), v))
            .collect();
        self.refresh().await;
        // The immobiliser may have restarted too: re-assert every reason the rules hold.
        let mut assert = Vec::new();
        for v in self.vehicles.values() {
            if self.driver_low(v) {
                assert.push((v.id.clone(), REASON_LOW_BALANCE));
            }
            if self.inspections.get(&v.id).is_some_and(|i| i.blocked) {
                assert.push((v.id.clone(), REASON_INSPECTION));
            }
        }
        for (v, r) in assert {
            self.reason(&v, r, true, "crm-rules", "re-asserted at start")
                .await;
        }
        Ok(())
    }

    async fn refresh(&mut self) {
        let list = match self.store.crm_vehicles().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "crm rules: cannot read vehicles");
                return;
            }
        };
        let changes: Vec<(Vehicle, Vehicle, Transition)> = list
            .iter()
            .filter_map(|v| {
                let old = self.vehicles.get(&v.id)?;
                let t = handback::transition(old, v);
                (t != Transition::default()).then(|| (old.clone(), v.clone(), t))
            })
            .collect();
        self.misses.clear();
        self.by_device = list
            .iter()
            .filter_map(|v| v.device_id.clone().map(|d| (d, v.id.clone())))
            .collect();
        self.vehicles = list.into_iter().map(|v| (v.id.clone(), v)).collect();
        for (old, new, t) in changes {
            self.hand_over(&old, &new, &t).await;
        }
    }

    /// Act on a car leaving its driver or deal (see [`handback`]).
    async fn hand_over(&mut self, old: &Vehicle, new: &Vehicle, t: &Transition) {
        let id = &new.id;
        if let Some(keep) = &t.drop_pending_except {
            let why = format!(
                "dropped: the car left deal {} (status {})",
                handback::current_deal(old).unwrap_or("-"),
                new.status
            );
            match self.store.outbox_drop(id, keep.as_deref(), &why).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("fleetgate_crm_events_dropped_total", "cause" => "handed_back")
                        .increment(n);
                    tracing::info!(vehicle = %id, n, "crm: pending events of the old deal dropped");
                }
                Err(e) => {
                    tracing::error!(vehicle = %id, error = %e, "crm: old deal's events not dropped")
                }
            }
        }
        if t.drop_pending_except.is_some() && self.shown.get(id).is_some_and(|s| s.blocked) {
            // The next deal starts clean: a car still blocked is shown there once confirmed.
            let clean = Shown::default();
            if self
                .commit(vec![state("block_shown", &id.0, &clean)], Vec::new())
                .await
                .is_ok()
            {
                self.shown.insert(id.clone(), clean);
            }
        }
        if t.end_shift {
            // Back from the driver or on another deal: a new shift may start.
            if let Some(mut st) = self.shifts.get(id).cloned() {
                st.end_shift();
                if self
                    .commit(vec![state("shift", &id.0, &st)], Vec::new())
                    .await
                    .is_ok()
                {
                    self.shifts.insert(id.clone(), st);
                }
            }
        }
        if t.driver_changed {
            // `low_balance` follows the driver: the next driver is not blocked for the last
            // one's debt, and a driver in debt is blocked in any car.
            let (was, is) = (self.driver_low(old), self.driver_low(new));
            if was != is {
                let comment = if is {
                    "the new driver's balance is low"
                } else {
                    "another driver took the car"
                };
                self.reason(id, REASON_LOW_BALANCE, is, "crm-rules", comment)
                    .await;
            }
        }
    }

    /// A vehicle for an API command: re-read, so a deal or driver set just before counts.
    async fn vehicle(&mut self, id: &VehicleId) -> Result<Vehicle, CrmError> {
        self.refresh().await;
        self.vehicles
            .get(id)
            .cloned()
            .ok_or_else(|| CrmError::NotFound(format!("vehicle '{id}' not found")))
    }

    async fn vehicle_by_device(&mut self, d: &DeviceId) -> Option<Vehicle> {
        if !self.by_device.contains_key(d) {
            // A device without a vehicle re-reads the list at most every few seconds.
            let recent = self
                .misses
                .get(d)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
            if !recent {
                self.refresh().await;
                if !self.by_device.contains_key(d) {
                    self.misses.insert(d.clone(), tokio::time::Instant::now());
                }
            }
        }
        self.by_device
            .get(d)
            .and_then(|id| self.vehicles.get(id))
            .cloned()
    }

    /// The vehicle's odometer now, km: the tracker's, else calibrated (see `mileage`).
    fn odometer_now(&self, id: &VehicleId) -> Option<f64> {
        let (tracker, gps) = self.odometers.get(id).copied()?;
        self.mileage
            .get(id)
            .cloned()
            .unwrap_or_default()
            .odometer_km(tracker, gps)
    }

    fn driver_low(&self, v: &Vehicle) -> bool {
        v.driver_id
            .as_ref()
            .and_then(|d| self.balances.get(d))
            .is_some_and(|b| b.low)
    }

    fn event(&self, v: &Vehicle, payload: Payload) -> Option<NewEvent> {
        if !self.emit.on {
            return None;
        }
        // A car not issued has no current deal: nothing goes to the last driver's. Its company
        // card still takes the car's own facts.
        let deal = handback::current_deal(v).map(str::to_string);
        let on_card = self.car_entity == super::config::CarEntity::Company
            && v.crm_company_id.is_some()
            && payload.about_car()
            && !matches!(payload, Payload::StageChanged { .. });
        if deal.is_none() && !self.emit.without_deal && !on_card {
            metrics::counter!("fleetgate_crm_events_skipped_total", "kind" => payload.kind())
                .increment(1);
            tracing::debug!(vehicle = %v.id, kind = payload.kind(), "no crm_deal_id: event not sent");
            return None;
        }
        Some(NewEvent {
            vehicle_id: v.id.clone(),
            deal_id: deal,
            payload,
        })
    }

    async fn commit(&self, states: Vec<StateWrite>, events: Vec<NewEvent>) -> Result<(), CrmError> {
        self.store
            .crm_commit(&states, &events, Utc::now(), self.ttl)
            .await?;
        for e in &events {
            metrics::counter!("fleetgate_crm_events_total", "kind" => e.payload.kind())
                .increment(1);
        }
        if !events.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn reason(&self, v: &VehicleId, reason: &str, active: bool, actor: &str, comment: &str) {
        if let Err(e) = self
            .wiring
            .reasons
            .set_reason(v, reason, active, actor, comment)
            .await
        {
            metrics::counter!("fleetgate_crm_reason_errors_total").increment(1);
            tracing::error!(vehicle = %v, reason, active, error = %e, "crm rules: cannot set block reason");
        }
    }

    /// Committed packets, in commit order: advance each vehicle's shift over its fixes, then
    /// store every shift state whose durable part changed, with the stage events it caused,
    /// in one commit. A failed commit leaves those vehicles' shifts as they were, so their next
    /// fixes reach the same stages again.
    async fn on_committed(&mut self, batch: &[Arc<Committed>]) {
        // Per vehicle, in order of first appearance: its shift as the batch leaves it, and the
        // shift as stored before it (to tell whether it must be written).
        let mut touched: Vec<(Vehicle, ShiftState, ShiftState)> = Vec::new();
        let mut events = Vec::new();
        // Mileage states changed by this batch, as they were before it.
        let mut miles_before: HashMap<VehicleId, MileageState> = HashMap::new();
        for c in batch {
            let item = &c.item;
            let Some(v) = self.vehicle_by_device(&item.device).await else {
                continue;
            };
            if let Some(p) = &item.state.position {
                let tracker_km = p.odometer_m.map(|m| m / 1000.0);
                self.odometers
                    .insert(v.id.clone(), (tracker_km, item.state.gps_odometer_m));
                self.last_pos.insert(v.id.clone(), (p.lat, p.lon));
            }
            let at = match touched.iter().position(|(t, _, _)| t.id == v.id) {
                Some(i) => i,
                None => {
                    // Re-read what other instances stored once per vehicle and step: later
                    // packets of the same vehicle continue from the batch's own copy.
                    self.reload(Some(&v.id), v.driver_id.as_deref()).await;
                    let before = self.shifts.get(&v.id).cloned().unwrap_or_default();
                    touched.push((v.clone(), before.clone(), before));
                    touched.len() - 1
                }
            };
            let mut st = touched[at].1.clone();
            let old_miles = self.mileage.get(&v.id).cloned().unwrap_or_default();
            let mut miles = old_miles.clone();
            let mut payloads = self.shift_over(&v, item, &mut st, &mut miles).await;
            self.locations(&v.id, item, &mut payloads);
            for payload in payloads {
                events.extend(self.event(&v, payload));
            }
            if miles != old_miles {
                miles_before.entry(v.id.clone()).or_insert(old_miles);
                self.mileage.insert(v.id.clone(), miles);
            }
            touched[at].1 = st;
        }
        let mut writes: Vec<StateWrite> = touched
            .iter()
            .filter(|(_, st, before)| st.durable_differs(before))
            .map(|(v, st, _)| state("shift", &v.id.0, st))
            .collect();
        for id in miles_before.keys() {
            if let Some(m) = self.mileage.get(id) {
                writes.push(state("mileage", &id.0, m));
            }
        }
        let stored = if writes.is_empty() && events.is_empty() {
            true
        } else {
            match self.commit(writes, events).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "crm rules: cannot store shift states");
                    // The mileage events were not written: the CRM knows what it knew.
                    for (id, m) in miles_before {
                        self.mileage.insert(id, m);
                    }
                    false
                }
            }
        };
        for (v, st, before) in touched {
            // Progress that needs no write is kept either way; a change that had to be
            // stored counts only once it is.
            if !stored && st.durable_differs(&before) {
                continue;
            }
            self.shifts.insert(v.id.clone(), st);
            if self
                .inspections
                .get(&v.id)
                .is_some_and(|i| i.due_odometer_km.is_some())
            {
                if let Err(e) = self.inspection_step(&v, None, "crm-rules").await {
                    tracing::error!(vehicle = %v.id, error = %e, "crm rules: inspection check failed");
                }
            }
        }
    }

    /// The location of a moving car, at most once per `location_every` of fix time; a stage
    /// move carries the location too and restarts the interval. A car standing still
    /// (`rules.moving_kmh` or slower) writes nothing.
    fn locations(
        &mut self,
        id: &VehicleId,
        item: &crate::pipeline::store::WriteItem,
        payloads: &mut Vec<Payload>,
    ) {
        if let Some(at) = payloads
            .iter()
            .filter_map(|p| match p {
                Payload::StageChanged { at, .. } => Some(*at),
                _ => None,
            })
            .max()
        {
            self.loc_written.insert(id.clone(), at);
        }
        let Some(every) = self.location_every else {
            return;
        };
        for np in &item.positions {
            let p = &np.position;
            if p.speed_kmh <= self.rules.moving_kmh {
                continue;
            }
            let due = self
                .loc_written
                .get(id)
                .map_or(true, |t| p.fix_time - *t >= every);
            if due {
                self.loc_written.insert(id.clone(), p.fix_time);
                payloads.push(Payload::Location {
                    lat: p.lat,
                    lon: p.lon,
                    at: p.fix_time,
                });
            }
        }
    }

    /// Advance `st` over the fixes of one committed packet; the stage events it reached.
    async fn shift_over(
        &self,
        v: &Vehicle,
        item: &crate::pipeline::store::WriteItem,
        st: &mut ShiftState,
        miles: &mut MileageState,
    ) -> Vec<Payload> {
        let signal = self.rules.return_signals.get(item.protocol.name()).cloned();
        let rules = self.shift_rules();
        let mut payloads = Vec::new();
        for np in &item.positions {
            let p = &np.position;
            let return_signal = signal.as_ref().is_some_and(|s| {
                s.input
                    .is_some_and(|n| p.inputs.is_some_and(|m| m & (1u32 << (n - 1)) != 0))
                    || s.alarm.as_deref().is_some_and(|a| p.alarm == Some(a))
            });
            let fix = FixInput {
                time: p.fix_time,
                ignition: p.ignition,
                speed_kmh: p.speed_kmh,
                inside_service_area: self
                    .wiring
                    .zones
                    .inside_service_area(&v.id, p.lat, p.lon)
                    .await,
                return_signal,
                issued: v.status == handback::ISSUED,
                odometer_m: p.odometer_m,
                gps_odometer_m: np.gps_odometer_m,
            };
            for ev in st.on_fix(&fix, &rules) {
                let (stage, at) = match ev {
                    ShiftEvent::OnLine { at } => (StageName::OnLine, at),
                    ShiftEvent::WantsToReturn { at } => (StageName::WantsToReturn, at),
                };
                tracing::info!(vehicle = %v.id, ?stage, %at, "crm: stage reached");
                let tracker_km = p.odometer_m.map(|m| m / 1000.0);
                let odometer_km = miles.to_write(tracker_km, np.gps_odometer_m);
                if let Some(km) = odometer_km {
                    miles.written(km, np.gps_odometer_m);
                }
                payloads.push(Payload::StageChanged {
                    stage,
                    at,
                    source: "tracker".into(),
                    lat: Some(p.lat),
                    lon: Some(p.lon),
                    odometer_km,
                });
            }
        }
        payloads
    }

    async fn on_cmd(&mut self, m: Cmd) {
        match m {
            Cmd::ReturnRequest {
                vehicle,
                actor,
                reply,
            } => {
                let driver = self.driver_of(&vehicle);
                self.reload(Some(&vehicle), driver.as_deref()).await;
                let _ = reply.send(self.return_request(&vehicle, &actor).await);
            }
            Cmd::Balance {
                driver,
                balance_rub,
                as_of,
                source,
                actor,
                reply,
            } => {
                let cars: Vec<VehicleId> = self
                    .vehicles
                    .values()
                    .filter(|v| v.driver_id.as_deref() == Some(driver.as_str()))
                    .map(|v| v.id.clone())
                    .collect();
                self.reload(None, Some(&driver)).await;
                for c in &cars {
                    self.reload(Some(c), None).await;
                }
                let r = self
                    .balance(&driver, balance_rub, as_of, source, &actor)
                    .await;
                if let Err(e) = &r {
                    tracing::error!(driver, error = %e, "crm rules: balance not applied");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Cmd::Inspection {
                vehicle,
                op,
                actor,
                reply,
            } => {
                let r = match self.vehicle(&vehicle).await {
                    Ok(v) => {
                        self.reload(Some(&v.id), v.driver_id.as_deref()).await;
                        self.inspection_step(&v, Some(op), &actor).await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Cmd::Shifts { reply } => {
                let _ = reply.send(self.shifts.clone());
            }
            Cmd::BalanceTargets { reply } => {
                // Issued cars first: their deal is the driver's current one.
                let mut cars: Vec<&Vehicle> = self
                    .vehicles
                    .values()
                    .filter(|v| v.status == "issued" || self.driver_low(v))
                    .collect();
                cars.sort_by_key(|v| (v.status != "issued", v.crm_deal_id.is_none(), &v.id.0));
                let mut seen = std::collections::BTreeSet::new();
                let out = cars
                    .into_iter()
                    .filter_map(|v| {
                        let d = v.driver_id.clone()?;
                        seen.insert(d.clone()).then(|| BalanceQuery {
                            driver_id: d,
                            vehicle_id: v.id.0.clone(),
                            deal_id: v.crm_deal_id.clone(),
                        })
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Cmd::Refresh { done } => {
                self.refresh().await;
                let _ = done.send(());
            }
        }
    }

    fn driver_of(&self, vehicle: &VehicleId) -> Option<String> {
        self.vehicles.get(vehicle).and_then(|v| v.driver_id.clone())
    }

    async fn return_request(
        &mut self,
        id: &VehicleId,
        actor: &str,
    ) -> Result<ReturnOutcome, CrmError> {
        let v = self.vehicle(id).await?;
        let mut st = self.shifts.get(id).cloned().unwrap_or_default();
        let now = Utc::now();
        // A car already handed back has no driver to return it.
        let moved = v.status == handback::ISSUED && st.request_return(now).is_some();
        if moved {
            let (lat, lon) = self.last_pos.get(id).copied().unzip();
            let mut miles = self.mileage.get(id).cloned().unwrap_or_default();
            let odometer_km = self
                .odometers
                .get(id)
                .and_then(|(t, gps)| miles.to_write(*t, *gps));
            let mut states = vec![state("shift", &id.0, &st)];
            if let (Some(km), Some((_, gps))) = (odometer_km, self.odometers.get(id)) {
                miles.written(km, *gps);
                states.push(state("mileage", &id.0, &miles));
            }
            let payload = Payload::StageChanged {
                stage: StageName::WantsToReturn,
                at: now,
                source: "api".into(),
                lat,
                lon,
                odometer_km,
            };
            let events = self.event(&v, payload).into_iter().collect();
            self.commit(states, events).await?;
            self.mileage.insert(id.clone(), miles);
            tracing::info!(vehicle = %id, actor, "crm: return requested");
            self.shifts.insert(id.clone(), st);
        }
        Ok(ReturnOutcome {
            vehicle_id: id.clone(),
            wants_to_return: true,
            moved,
        })
    }

    async fn balance(
        &mut self,
        driver: &str,
        rub: f64,
        as_of: Option<DateTime<Utc>>,
        source: BalanceSource,
        actor: &str,
    ) -> Result<BalanceView, CrmError> {
        if !rub.is_finite() {
            return Err(CrmError::BadRequest("balance_rub must be a number".into()));
        }
        let now = Utc::now();
        // A clock ahead would make this balance win over every later one.
        if as_of.is_some_and(|t| t - now > chrono::Duration::minutes(5)) {
            return Err(CrmError::BadRequest("as_of is in the future".into()));
        }
        if source == BalanceSource::Pushed {
            // A driver set on a car just before the push counts. A pulled balance comes from
            // the list the rules just gave: no re-read per driver (1 500 per check otherwise).
            self.refresh().await;
        }
        let min = self.rules.balance_min_rub;
        let old = self.balances.get(driver).cloned().unwrap_or_default();
        let mut st = old.clone();
        let outcome = st.offer(rub, as_of.unwrap_or(now), source, now, min);
        let flip = match outcome {
            BalanceOutcome::Applied(flip) => flip,
            BalanceOutcome::Stale => {
                tracing::info!(
                    driver,
                    rub,
                    ?source,
                    "crm: balance older than the known one, ignored"
                );
                None
            }
        };
        let cars: Vec<Vehicle> = self
            .vehicles
            .values()
            .filter(|v| v.driver_id.as_deref() == Some(driver))
            .cloned()
            .collect();
        self.balances.insert(driver.to_string(), st.clone());
        let mut events = Vec::new();
        // The deal's blocked field follows the car's confirmation (`watch_blocks`); the
        // driver is warned at once.
        if flip == Some(true) {
            for v in &cars {
                events.extend(self.event(
                    v,
                    Payload::DriverMessage {
                        driver_id: Some(driver.to_string()),
                        reason: REASON_LOW_BALANCE.into(),
                        text: self.rules.messages.low_balance(rub, min),
                    },
                ));
            }
        }
        if st != old {
            if let Err(e) = self
                .commit(vec![state("balance", driver, &st)], events)
                .await
            {
                self.balances.insert(driver.to_string(), old);
                return Err(e);
            }
        }
        let comment = format!(
            "баланс {}, минимум {}",
            super::messages::rub(rub),
            super::messages::rub(min)
        );
        for v in &cars {
            // A low balance is re-asserted on every update: a car handed over since is covered.
            if outcome != BalanceOutcome::Stale && (st.low || flip == Some(false)) {
                // The reason is the rule's; who reported the balance goes in the comment.
                let comment = format!("{comment}; источник: {actor}");
                self.reason(
                    &v.id,
                    REASON_LOW_BALANCE,
                    st.low,
                    RULE_LOW_BALANCE,
                    &comment,
                )
                .await;
            }
        }
        Ok(BalanceView {
            driver_id: driver.to_string(),
            balance_rub: st.balance_rub,
            as_of: st.as_of,
            applied: outcome != BalanceOutcome::Stale,
            low: st.low,
            vehicles: cars.into_iter().map(|v| v.id).collect(),
        })
    }

    /// Apply an inspection command (or none: re-check), then the block rule and documents.
    async fn inspection_step(
        &mut self,
        v: &Vehicle,
        op: Option<InspectionOp>,
        actor: &str,
    ) -> Result<InspectionState, CrmError> {
        let old = self.inspections.get(&v.id).cloned().unwrap_or_default();
        let mut st = old.clone();
        let old_miles = self.mileage.get(&v.id).cloned().unwrap_or_default();
        let mut miles = old_miles.clone();
        let mut payloads = Vec::new();
        let now = Utc::now();
        match op {
            None | Some(InspectionOp::Get) => {}
            Some(InspectionOp::Schedule {
                due_date,
                due_odometer_km,
            }) => {
                if due_date.is_none() && due_odometer_km.is_none() {
                    return Err(CrmError::BadRequest(
                        "give due_date and/or due_odometer_km".into(),
                    ));
                }
                st.schedule(due_date, due_odometer_km);
            }
            Some(InspectionOp::Postpone {
                due_date,
                due_odometer_km,
                reason,
            }) => {
                let reason = reason
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty());
                if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
                    return Err(CrmError::BadRequest(
                        "reason: at most 500 characters".into(),
                    ));
                }
                st.postpone(due_date, due_odometer_km);
                st.note_postponement(super::rules::Postponement {
                    at: now,
                    actor: actor.to_string(),
                    reason: reason.clone(),
                    due_date,
                    due_odometer_km,
                });
                // A postponement with a reason is a note (and refreshes the days/km field);
                // one without says nothing new to the managers.
                if reason.is_some() {
                    let left = st.left(now.date_naive(), self.odometer_now(&v.id));
                    payloads.push(Payload::InspectionDue {
                        left_days: left.days,
                        left_km: left.km,
                        left_text: left.text_ru(),
                        note: super::messages::postponed_ru(
                            st.postponements,
                            reason.as_deref(),
                            st.due_date,
                            st.due_odometer_km,
                        ),
                    });
                }
            }
            Some(InspectionOp::Complete { odometer_km }) => {
                if !odometer_km.is_finite() || odometer_km < 0.0 {
                    return Err(CrmError::BadRequest(
                        "odometer_km must be a positive number".into(),
                    ));
                }
                st.complete(now, odometer_km);
                // The entered mileage calibrates an odometer-less tracker; it is written
                // only if it does not lower the CRM's.
                let gps = self.odometers.get(&v.id).map_or(0.0, |(_, g)| *g);
                let grows = miles.crm_km.map_or(true, |c| odometer_km >= c);
                miles.written(odometer_km, gps);
                if grows {
                    payloads.push(Payload::Mileage {
                        odometer_km,
                        at: now,
                    });
                }
            }
            Some(InspectionOp::Documents { documents }) => {
                for (name, date) in documents {
                    if name.is_empty() || name.len() > 64 {
                        return Err(CrmError::BadRequest(
                            "document names are 1 to 64 characters".into(),
                        ));
                    }
                    st.set_document(&name, date);
                }
            }
        }
        let r = self.inspection_rules();
        let today = now.date_naive();
        let flip = st.evaluate(today, self.odometer_now(&v.id), &r);
        if let Some(left) = st.warning(today, self.odometer_now(&v.id), &r) {
            payloads.push(Payload::InspectionDue {
                left_days: left.days,
                left_km: left.km,
                left_text: left.text_ru(),
                note: format!(
                    "Скоро ТО: {}.",
                    left.text_ru()
                        .trim_start_matches("до ТО: ")
                        .trim_end_matches('.')
                ),
            });
        }
        for n in st.document_notices(today, &r) {
            payloads.push(Payload::DocumentExpiring {
                document: n.document,
                expires_on: n.expires_on,
                days_left: n.days_left,
            });
        }
        if st == old && payloads.is_empty() {
            return Ok(st);
        }
        self.inspections.insert(v.id.clone(), st.clone());
        if let Some((active, cause)) = &flip {
            if *active {
                payloads.push(Payload::DriverMessage {
                    driver_id: v.driver_id.clone(),
                    reason: REASON_INSPECTION.into(),
                    text: self.rules.messages.inspection(cause),
                });
            }
        }
        let events = payloads
            .into_iter()
            .filter_map(|p| self.event(v, p))
            .collect();
        if let Err(e) = self
            .commit(
                if miles != old_miles {
                    vec![
                        state("inspection", &v.id.0, &st),
                        state("mileage", &v.id.0, &miles),
                    ]
                } else {
                    vec![state("inspection", &v.id.0, &st)]
                },
                events,
            )
            .await
        {
            self.inspections.insert(v.id.clone(), old);
            return Err(e);
        }
        self.mileage.insert(v.id.clone(), miles);
        if let Some((active, cause)) = flip {
            self.reason(&v.id, REASON_INSPECTION, active, actor, &cause)
                .await;
        }
        Ok(st)
    }

    /// Tell each deal what its car confirmed (see [`blocks`]): blocked with the reasons named
    /// in Russian, or unblocked. A car without a current deal waits for one.
    async fn watch_blocks(&mut self) {
        if !self.emit.on {
            return;
        }
        let snap = self.wiring.reasons.snapshot().await;
        let ids: Vec<VehicleId> = self.vehicles.keys().cloned().collect();
        for id in ids {
            let shown = self.shown.get(&id).cloned().unwrap_or_default();
            if blocks::next(&shown, snap.get(&id)).is_none() {
                continue;
            }
            // Another instance may have told the deal already.
            self.reload(Some(&id), None).await;
            let shown = self.shown.get(&id).cloned().unwrap_or_default();
            let view = snap.get(&id);
            let Some(next) = blocks::next(&shown, view) else {
                continue;
            };
            let Some(v) = self.vehicles.get(&id).cloned() else {
                continue;
            };
            if handback::current_deal(&v).is_none() && !self.emit.without_deal {
                continue;
            }
            let text = if next.blocked {
                let named: Vec<(String, Option<String>)> = next
                    .reasons
                    .iter()
                    .map(|r| (r.clone(), view.and_then(|w| w.comments.get(r).cloned())))
                    .collect();
                self.rules.messages.blocked(&named)
            } else {
                self.rules.messages.unblocked()
            };
            let payload = Payload::BlockState {
                blocked: next.blocked,
                reasons: next.reasons.clone(),
                text,
            };
            let events = self.event(&v, payload).into_iter().collect();
            match self
                .commit(vec![state("block_shown", &id.0, &next)], events)
                .await
            {
                Ok(()) => {
                    tracing::info!(vehicle = %id, blocked = next.blocked, reasons = ?next.reasons, "crm: confirmed block state sent to the deal");
                    self.shown.insert(id, next);
                }
                Err(e) => {
                    tracing::error!(vehicle = %id, error = %e, "crm rules: block state not stored")
                }
            }
        }
    }

    async fn check_dates(&mut self) {
        let ids: Vec<VehicleId> = self.inspections.keys().cloned().collect();
        for id in ids {
            let Some(v) = self.vehicles.get(&id).cloned() else {
                continue;
            };
            self.reload(Some(&v.id), v.driver_id.as_deref()).await;
            if !self.inspections.contains_key(&v.id) {
                continue;
            }
            if let Err(e) = self.inspection_step(&v, None, "crm-rules").await {
                tracing::error!(vehicle = %id, error = %e, "crm rules: date check failed");
            }
        }
    }
}
