//! Storage behind one small trait, so SQLite (the embedded default) and PostgreSQL are two
//! implementations of the same behaviour. Writes come in batches from the group-commit writer
//! (`crate::pipeline::writer`); a batch is one transaction, and its positions count as
//! acknowledged only once `write_batch` has returned.

pub mod config;
pub mod crm;
pub mod immobiliser;
pub mod postgres;
pub mod row;
pub mod sqlite;
pub mod zones;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{DeviceId, Position, VehicleId};
use crate::protocols::Protocol;
pub use config::{Backend, StorageConfig};

pub use crm::CrmStore;
pub use immobiliser::ImmobiliserStore;
pub use row::{StoredPosition, Vehicle, VehicleUpdate};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// From the SQLite group commit, which drives the writer connection directly.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    #[error("device {0} is already fitted to vehicle {1}")]
    DeviceTaken(String, String),
    /// A step given a deadline did not finish in time (the retry policy tries again).
    #[error("{what} took over {}s", after.as_secs())]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
}

/// A position with what the pipeline computed for it.
#[derive(Clone, Debug)]
pub struct NewPosition {
    pub position: Position,
    /// Cumulative distance between accepted fixes, metres.
    pub gps_odometer_m: f64,
    /// `position.attrs` as the JSON stored with it, rendered by the shard that accepted it
    /// rather than inside the single writer's commit, where every microsecond is serial.
    pub attributes_json: String,
}

impl NewPosition {
    pub fn new(position: Position, gps_odometer_m: f64) -> Self {
        let attributes_json = position.attrs.to_json_string();
        NewPosition {
            position,
            gps_odometer_m,
            attributes_json,
        }
    }
}

/// Where a device was at one fix time (a track read without the rest of the row).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackPoint {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
}

/// The latest state of one device after a batch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceState {
    pub device_id: DeviceId,
    pub protocol: String,
    pub last_seen: DateTime<Utc>,
    pub position: Option<StoredPosition>,
    pub gps_odometer_m: f64,
}

/// One device's share of a group commit.
#[derive(Clone, Debug)]
pub struct WriteItem {
    pub device: DeviceId,
    pub protocol: Protocol,
    pub server_time: DateTime<Utc>,
    /// The session the positions came on (evidence for the immobiliser; not stored).
    pub origin: crate::model::Origin,
    pub positions: Vec<NewPosition>,
    /// The device's latest state after these positions.
    pub state: DeviceState,
}

impl WriteItem {
    pub fn rows(&self) -> usize {
        self.positions.len()
    }
}

#[async_trait]
pub trait Store: zones::ZoneStore + CrmStore + ImmobiliserStore + Send + Sync + 'static {
    /// Write every item in one transaction: positions (ignoring ones already stored) and states.
    async fn write_batch(&self, items: &[WriteItem]) -> Result<(), StorageError>;
    /// Latest state of every device, for the pipeline to start from after a restart.
    async fn device_states(&self) -> Result<Vec<DeviceState>, StorageError>;
    async fn device_state(&self, device: &DeviceId) -> Result<Option<DeviceState>, StorageError>;
    /// Positions of `device` with `from <= fix_time < to`, in fix-time order.
    async fn track(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredPosition>, StorageError>;
    /// Fix time and coordinates only of the same positions as [`Store::track`]: what a fold
    /// over a whole track needs (`/track/summary`), without decoding every column.
    async fn track_points(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TrackPoint>, StorageError>;
    async fn vehicles(&self) -> Result<Vec<Vehicle>, StorageError>;
    async fn vehicle(&self, id: &VehicleId) -> Result<Option<Vehicle>, StorageError>;
    async fn vehicle_by_device(&self, device: &DeviceId) -> Result<Option<Vehicle>, StorageError>;
    /// Create or update a vehicle; returns it as stored.
    async fn upsert_vehicle(
        &self,
        id: &VehicleId,
        update: &VehicleUpdate,
    ) -> Result<Vehicle, StorageError>;
    /// Readiness probe.
    async fn ping(&self) -> Result<(), StorageError>;
    /// Backend name for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// Open the store named by `[storage] url` and run its migrations.
pub async fn open(cfg: &StorageConfig) -> Result<Arc<dyn Store>, StorageError> {
    if cfg.url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(cfg).await?))
    } else if cfg.url.starts_with("postgres://") || cfg.url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(cfg).await?))
    } else {
        Err(StorageError::Invalid(format!(
            "storage.url: unsupported backend in '{}'",
            cfg.url
        )))
    }
}

/// The states to upsert: one per device (an upsert may not touch a row twice), the one a
/// sequential replay would leave — the latest `last_seen`, later items winning ties.
pub(crate) fn latest_states(items: &[WriteItem]) -> Vec<&DeviceState> {
    let mut by_device: std::collections::HashMap<&DeviceId, &DeviceState> =
        std::collections::HashMap::with_capacity(items.len());
    for it in items {
        let s = &it.state;
        match by_device.get(&s.device_id) {
            Some(prev) if prev.last_seen > s.last_seen => {}
            _ => {
                by_device.insert(&s.device_id, s);
            }
        }
    }
    by_device.into_values().collect()
}

pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
