//! The geofences' storage port: API-managed zones, per-device debounced membership, and the
//! confirmed enter/exit events. Implemented by `crate::storage` for each backend.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::StorageError;

/// A zone as stored: its GeoJSON Feature text.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredZone {
    pub name: String,
    pub kind: String,
    pub feature: serde_json::Value,
}

/// A device's debounced membership, restored at start.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMembership {
    pub device_id: DeviceId,
    pub last_fix: DateTime<Utc>,
    pub zones: Vec<String>,
}

/// One device's new membership and the events that led to it, stored together.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneChange {
    pub membership: StoredMembership,
    pub events: Vec<StoredZoneEvent>,
}

/// A confirmed zone event.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredZoneEvent {
    pub id: i64,
    pub vehicle: Option<VehicleId>,
    pub device_id: DeviceId,
    /// `enter` or `exit` (the column `type`).
    pub kind: String,
    pub zone: String,
    pub zone_kind: String,
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
}

/// Filters of `GET /api/v1/events`.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub vehicle: Option<VehicleId>,
    pub kind: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: u32,
}

#[async_trait]
pub trait ZoneStore: Send + Sync {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError>;
    async fn put_zone(&self, zone: &StoredZone) -> Result<(), StorageError>;
    /// True when a stored zone was deleted.
    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError>;
    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError>;
    /// Store each device's new membership and the events that changed it, all in one
    /// transaction (the zone stage hands over what one step of commits produced).
    async fn save_zone_changes(&self, changes: &[ZoneChange]) -> Result<(), StorageError>;
    /// One device's change on its own.
    async fn save_zone_change(
        &self,
        membership: &StoredMembership,
        events: &[StoredZoneEvent],
    ) -> Result<(), StorageError> {
        self.save_zone_changes(&[ZoneChange {
            membership: membership.clone(),
            events: events.to_vec(),
        }])
        .await
    }
    /// The vehicle a device is fitted to (zone events name it).
    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError>;
    async fn zone_events(&self, q: &EventQuery) -> Result<Vec<StoredZoneEvent>, StorageError>;
}
