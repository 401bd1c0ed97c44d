//! The CRM track's storage port: rule state and the outbox. Rule state and the events it
//! causes are written in one transaction ([`CrmStore::crm_commit`]), so an event exists
//! exactly when its state change does — the outbox worker then delivers it at least once.
//! Implemented by `crate::storage` for each backend, and in memory by
//! [`super::memory::MemoryCrmStore`] for paused-clock tests.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::event::{NewEvent, OutboxEvent, Status};
use crate::model::VehicleId;
use crate::pipeline::store::{StorageError, Vehicle};

/// One rule-state row: `scope` (`shift`, `balance`, `inspection`), id, JSON state.
#[derive(Clone, Debug, PartialEq)]
pub struct StateWrite {
    pub scope: &'static str,
    pub id: String,
    pub state: String,
}

#[async_trait]
pub trait CrmStore: Send + Sync + 'static {
    /// Write rule states and enqueue events, in one transaction. `ttl` bounds delivery.
    async fn crm_commit(
        &self,
        states: &[StateWrite],
        events: &[NewEvent],
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<(), StorageError>;
    /// Every rule state of a scope: (id, JSON).
    async fn crm_states(&self, scope: &str) -> Result<Vec<(String, String)>, StorageError>;
    /// One rule state (JSON), for an instance re-reading what another one decided.
    async fn crm_state(&self, scope: &str, id: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .crm_states(scope)
            .await?
            .into_iter()
            .find(|(k, _)| k == id)
            .map(|(_, s)| s))
    }
    /// Several rule states at once, `(scope, id)` each, answered in the order asked: what an
    /// instance re-reads before deciding for a vehicle another one may have decided for.
    async fn crm_state_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<Vec<Option<String>>, StorageError> {
        let mut out = Vec::with_capacity(keys.len());
        for (scope, id) in keys {
            out.push(self.crm_state(scope, id).await?);
        }
        Ok(out)
    }
    /// The oldest pending event of each vehicle, if due by `now`; at most `limit`.
    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError>;
    /// Claim the due head events for `claimer` for `lease` and return them (several
    /// instances on one database then deliver each event once, see docs/scaling.md). A
    /// backend for one instance only (SQLite) has nothing to claim against: `outbox_due`.
    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claimer: &str,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let _ = (claimer, lease);
        self.outbox_due(now, limit).await
    }
    /// When the next pending head event falls due (None: nothing pending).
    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError>;
    async fn outbox_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StorageError>;
    async fn outbox_retry(
        &self,
        id: i64,
        attempts: u32,
        next: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StorageError>;
    async fn outbox_dead(&self, id: i64, attempts: u32, error: &str) -> Result<(), StorageError>;
    /// Drop the pending events of `vehicle` about a deal other than `keep_deal` (any deal when
    /// `None`): the car left that deal. Events about no deal stay. Returns how many.
    async fn outbox_drop(
        &self,
        vehicle: &VehicleId,
        keep_deal: Option<&str>,
        why: &str,
    ) -> Result<u64, StorageError>;
    /// Drop one pending event (superseded: the CRM or a newer event moved its deal since).
    async fn outbox_drop_one(&self, id: i64, why: &str) -> Result<(), StorageError>;
    /// Put a dead event back in the queue (operator's retry); false if it was not dead.
    async fn outbox_requeue(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StorageError>;
    /// Events, newest first, optionally of one status and/or vehicle.
    async fn outbox_list(
        &self,
        status: Option<Status>,
        vehicle: Option<&VehicleId>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError>;
    /// Count per status.
    async fn outbox_counts(&self) -> Result<Vec<(Status, u64)>, StorageError>;
    /// Delete delivered events older than `before`; returns how many.
    async fn outbox_purge(&self, before: DateTime<Utc>) -> Result<u64, StorageError>;
    /// Vehicles, for the rules (the same rows as `crate::pipeline::store::Store::vehicles`).
    async fn crm_vehicles(&self) -> Result<Vec<Vehicle>, StorageError>;
    /// Remember the car's company card found through its deal's link (`[crm] car_entity =
    /// "company"`); a company already set is kept. True when it was stored.
    async fn crm_set_company(
        &self,
        vehicle: &VehicleId,
        company: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError>;
}
