//! In-memory implementations of the CRM seams: block reasons that record every call, zones
//! as a bounding box, and a [`CrmStore`] for tests on tokio's paused clock
//! (`tests/crm_balance.rs`). [`super::start`] falls back to the first when
//! `Seams::reasons` is unset; the daemon always sets it to the immobiliser.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::event::{NewEvent, OutboxEvent, Status};
use super::store::{CrmStore, StateWrite};
use super::{BlockReasons, BlockView, FleetZones};
use crate::model::VehicleId;
use crate::pipeline::store::{StorageError, Vehicle};

/// One `set_reason` call as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReasonCall {
    pub vehicle: VehicleId,
    pub reason: String,
    pub active: bool,
    pub actor: String,
    pub comment: String,
}

#[derive(Default)]
pub struct MemoryBlockReasons {
    calls: Mutex<Vec<ReasonCall>>,
    /// Active reasons with their comments.
    active: Mutex<HashMap<VehicleId, BTreeMap<String, String>>>,
}

impl MemoryBlockReasons {
    pub fn calls(&self) -> Vec<ReasonCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
    pub fn active(&self, vehicle: &VehicleId) -> BTreeSet<String> {
        self.active
            .lock()
            .ok()
            .and_then(|a| a.get(vehicle).map(|r| r.keys().cloned().collect()))
            .unwrap_or_default()
    }
}

#[async_trait]
impl BlockReasons for MemoryBlockReasons {
    async fn set_reason(
        &self,
        vehicle: &VehicleId,
        reason: &str,
        active: bool,
        actor: &str,
        comment: &str,
    ) -> Result<(), super::ReasonError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(ReasonCall {
                vehicle: vehicle.clone(),
                reason: reason.into(),
                active,
                actor: actor.into(),
                comment: comment.into(),
            });
        }
        if let Ok(mut a) = self.active.lock() {
            let set = a.entry(vehicle.clone()).or_default();
            if active {
                set.insert(reason.into(), comment.into());
            } else {
                set.remove(reason);
            }
        }
        Ok(())
    }

    async fn snapshot(&self) -> HashMap<VehicleId, BlockView> {
        let a = self.active.lock().map(|a| a.clone()).unwrap_or_default();
        a.into_iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(v, r)| {
                (
                    v,
                    // No relay to wait for: a reason is in effect at once.
                    BlockView {
                        reasons: r.keys().cloned().collect(),
                        pending: false,
                        confirmed: true,
                        comments: r.into_iter().filter(|(_, c)| !c.is_empty()).collect(),
                    },
                )
            })
            .collect()
    }
}

/// Every place is inside the service area (no zones configured).
pub struct Everywhere;

#[async_trait]
impl FleetZones for Everywhere {
    async fn inside_service_area(&self, _: &VehicleId, _: f64, _: f64) -> bool {
        true
    }
}

/// A rectangular service area, with optional rectangular parking lots.
#[derive(Clone, Debug, Default)]
pub struct BoxZones {
    /// (min_lat, min_lon, max_lat, max_lon)
    pub area: (f64, f64, f64, f64),
    pub lots: Vec<(String, (f64, f64, f64, f64))>,
}

fn in_box(b: &(f64, f64, f64, f64), lat: f64, lon: f64) -> bool {
    lat >= b.0 && lon >= b.1 && lat <= b.2 && lon <= b.3
}

#[async_trait]
impl FleetZones for BoxZones {
    async fn inside_service_area(&self, _: &VehicleId, lat: f64, lon: f64) -> bool {
        in_box(&self.area, lat, lon)
    }
    async fn parking_lot(&self, _: &VehicleId, lat: f64, lon: f64) -> Option<String> {
        self.lots
            .iter()
            .find(|(_, b)| in_box(b, lat, lon))
            .map(|(n, _)| n.clone())
    }
}

/// `CrmStore` in memory: for tests that run on tokio's paused clock (a database pool's
/// timers would fire early there).
#[derive(Default)]
pub struct MemoryCrmStore {
    inner: Mutex<MemInner>,
    pub vehicles: Mutex<Vec<Vehicle>>,
}

#[derive(Default)]
struct MemInner {
    states: HashMap<(String, String), String>,
    outbox: Vec<OutboxEvent>,
}

impl MemoryCrmStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemInner>, StorageError> {
        self.inner
            .lock()
            .map_err(|_| StorageError::Invalid("memory store poisoned".into()))
    }
    /// Every event ever enqueued, oldest first.
    pub fn events(&self) -> Vec<OutboxEvent> {
        self.lock().map(|i| i.outbox.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl CrmStore for MemoryCrmStore {
    async fn crm_commit(
        &self,
        states: &[StateWrite],
        events: &[NewEvent],
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<(), StorageError> {
        let mut i = self.lock()?;
        for s in states {
            i.states
                .insert((s.scope.to_string(), s.id.clone()), s.state.clone());
        }
        for e in events {
            if e.payload.coalesces() {
                let kind = e.payload.kind();
                for o in i.outbox.iter_mut().filter(|o| {
                    o.vehicle_id == e.vehicle_id
                        && o.status == Status::Pending
                        && o.payload.kind() == kind
                }) {
                    o.status = Status::Dropped;
                    o.last_error = Some(super::event::COALESCED.into());
                }
            }
            let id = i.outbox.len() as i64 + 1;
            i.outbox.push(OutboxEvent {
                id,
                key: format!("mem-{id}"),
                vehicle_id: e.vehicle_id.clone(),
                deal_id: e.deal_id.clone(),
                payload: e.payload.clone(),
                status: Status::Pending,
                attempts: 0,
                created_at: now,
                expires_at: now + ttl,
                next_attempt_at: now,
                last_error: None,
                delivered_at: None,
                company_id: None,
            });
        }
        Ok(())
    }
    async fn crm_states(&self, scope: &str) -> Result<Vec<(String, String)>, StorageError> {
        Ok(self
            .lock()?
            .states
            .iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, id), v)| (id.clone(), v.clone()))
            .collect())
    }
    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let i = self.lock()?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for e in i.outbox.iter().filter(|e| e.status == Status::Pending) {
            if seen.insert(e.vehicle_id.clone()) && e.next_attempt_at <= now {
                out.push(e.clone());
            }
        }
        out.truncate(limit as usize);
        Ok(out)
    }
    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError> {
        Ok(self
            .lock()?
            .outbox
            .iter()
            .filter(|e| e.status == Status::Pending)
            .map(|e| e.next_attempt_at)
            .min())
    }
    async fn outbox_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        if let Some(e) = self.lock()?.outbox.iter_mut().find(|e| e.id == id) {
            e.status = Status::Delivered;
            e.delivered_at = Some(at);
            e.attempts += 1;
        }
        Ok(())
    }
    async fn outbox_retry(
        &self,
        id: i64,
        attempts: u32,
        next: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StorageError> {
        if let Some(e) = self.lock()?.outbox.iter_mut().find(|e| e.id == id) {
            e.attempts = attempts;
            e.next_attempt_at = next;
            e.last_error = Some(error.into());
        }
        Ok(())
    }
    async fn outbox_dead(&self, id: i64, attempts: u32, error: &str) -> Result<(), StorageError> {
        if let Some(e) = self.lock()?.outbox.iter_mut().find(|e| e.id == id) {
            e.status = Status::Dead;
            e.attempts = attempts;
            e.last_error = Some(error.into());
        }
        Ok(())
    }
    async fn outbox_drop(
        &self,
        vehicle: &VehicleId,
        keep_deal: Option<&str>,
        why: &str,
    ) -> Result<u64, StorageError> {
        let mut n = 0;
        for e in self.lock()?.outbox.iter_mut().filter(|e| {
            e.status == Status::Pending
                && e.vehicle_id == *vehicle
                && e.deal_id.is_some()
                && keep_deal.map_or(true, |k| e.deal_id.as_deref() != Some(k))
        }) {
            e.status = Status::Dropped;
            e.last_error = Some(why.into());
            n += 1;
        }
        Ok(n)
    }
    async fn outbox_drop_one(&self, id: i64, why: &str) -> Result<(), StorageError> {
        if let Some(e) = self
            .lock()?
            .outbox
            .iter_mut()
            .find(|e| e.id == id && e.status == Status::Pending)
        {
            e.status = Status::Dropped;
            e.last_error = Some(why.into());
        }
        Ok(())
    }
    async fn outbox_requeue(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StorageError> {
        Ok(
            match self
                .lock()?
                .outbox
                .iter_mut()
                .find(|e| e.id == id && e.status == Status::Dead)
            {
                Some(e) => {
                    e.status = Status::Pending;
                    e.next_attempt_at = now;
                    true
                }
                None => false,
            },
        )
    }
    async fn outbox_list(
        &self,
        status: Option<Status>,
        vehicle: Option<&VehicleId>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        Ok(self
            .lock()?
            .outbox
            .iter()
            .rev()
            .filter(|e| status.map_or(true, |s| s == e.status))
            .filter(|e| vehicle.map_or(true, |v| *v == e.vehicle_id))
            .take(limit as usize)
            .cloned()
            .collect())
    }
    async fn outbox_counts(&self) -> Result<Vec<(Status, u64)>, StorageError> {
        let i = self.lock()?;
        Ok([
            Status::Pending,
            Status::Delivered,
            Status::Dead,
            Status::Dropped,
        ]
        .into_iter()
        .map(|s| (s, i.outbox.iter().filter(|e| e.status == s).count() as u64))
        .collect())
    }
    async fn outbox_purge(&self, _before: DateTime<Utc>) -> Result<u64, StorageError> {
        Ok(0)
    }
    async fn crm_set_company(
        &self,
        vehicle: &VehicleId,
        company: &str,
        _now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let mut vs = self
            .vehicles
            .lock()
            .map_err(|_| StorageError::Invalid("poisoned".into()))?;
        Ok(match vs.iter_mut().find(|v| &v.id == vehicle) {
            Some(v) if v.crm_company_id.is_none() => {
                v.crm_company_id = Some(company.to_string());
                true
            }
            _ => false,
        })
    }
    async fn crm_vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        Ok(self.vehicles.lock().map(|v| v.clone()).unwrap_or_default())
    }
}
