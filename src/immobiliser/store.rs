//! The immobiliser's storage port: what the actor persists (one transaction per decision,
//! written before the decision is acted on, so a command is durable before it reaches a
//! device), what it starts from after a restart, and the audit trail the API serves.
//! Implemented by `crate::storage` for each backend.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::machine::ReasonEntry;
use super::{BlockReason, Command, ImmobState};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::StorageError;

/// One vehicle's immobiliser as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct VehicleImmobRow {
    pub vehicle_id: VehicleId,
    pub state: ImmobState,
    pub since: DateTime<Utc>,
    pub reasons: BTreeMap<BlockReason, ReasonEntry>,
}

/// The tracker a vehicle is registered with: where its commands go, in which protocol.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fitting {
    pub device: Option<DeviceId>,
    pub protocol: Option<String>,
}

/// One audit record: what happened to which car, who did it, and where the car was.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub vehicle_id: VehicleId,
    /// `reason_added`, `reason_lifted`, `state_changed`, `command_<status>`, `force_refused`,
    /// `zone_change_forced` (a zone change applied with `force=true` moved this car out of
    /// the service area; written by the geofences API).
    pub event: String,
    pub reason: Option<String>,
    pub actor: String,
    pub comment: Option<String>,
    pub state_from: Option<String>,
    pub state_to: Option<String>,
    pub command_id: Option<i64>,
    pub forced: bool,
    /// The vehicle's last fix at that moment.
    pub position: Option<AuditPosition>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuditPosition {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub ignition: Option<bool>,
}

/// Everything one decision changed, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct ImmobChanges {
    pub vehicles: Vec<VehicleImmobRow>,
    pub commands: Vec<Command>,
    pub audit: Vec<AuditEntry>,
}

impl ImmobChanges {
    pub fn is_empty(&self) -> bool {
        self.vehicles.is_empty() && self.commands.is_empty() && self.audit.is_empty()
    }
}

/// What the immobiliser starts from after a restart.
#[derive(Clone, Debug, Default)]
pub struct ImmobSnapshot {
    pub vehicles: Vec<VehicleImmobRow>,
    /// Commands not finished (queued, sent) or acknowledged and awaiting confirmation.
    pub open_commands: Vec<Command>,
}

#[derive(Clone, Debug)]
pub struct AuditQuery {
    pub vehicle: Option<VehicleId>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub limit: u32,
}

#[async_trait]
pub trait ImmobiliserStore: Send + Sync {
    async fn immobiliser_load(&self) -> Result<ImmobSnapshot, StorageError>;
    /// Write one decision in one transaction. Audit records get their ids from the database
    /// (the `id` given is ignored); commands keep theirs (see [`Self::reserve_command_ids`]).
    async fn immobiliser_apply(&self, changes: &ImmobChanges) -> Result<(), StorageError>;
    /// One vehicle's stored immobiliser and its open commands (as [`Self::immobiliser_load`]
    /// returns them), for an instance taking the vehicle over from another.
    async fn immobiliser_vehicle(
        &self,
        vehicle: &VehicleId,
    ) -> Result<(Option<VehicleImmobRow>, Vec<Command>), StorageError> {
        // Backends for one instance need no take-over; this is correct, just not minimal.
        let snap = self.immobiliser_load().await?;
        Ok((
            snap.vehicles.into_iter().find(|v| &v.vehicle_id == vehicle),
            snap.open_commands
                .into_iter()
                .filter(|c| &c.vehicle_id == vehicle)
                .collect(),
        ))
    }
    /// The tracker registered on a vehicle (`None`: no such vehicle).
    async fn fitting(&self, vehicle: &VehicleId) -> Result<Option<Fitting>, StorageError>;
    /// The vehicle a device is fitted to.
    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError>;
    /// Reserve `n` command ids no other process sharing the database will ever get.
    async fn reserve_command_ids(&self, n: u32) -> Result<Vec<i64>, StorageError>;
    /// A vehicle's commands, newest first.
    async fn commands(&self, vehicle: &VehicleId, limit: u32)
        -> Result<Vec<Command>, StorageError>;
    async fn command(&self, id: i64) -> Result<Option<Command>, StorageError>;
    /// Audit records with `from <= time < to`, oldest first.
    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError>;
}
