//! The core store, the pipeline's port: positions written by the group commit, each device's
//! latest state, the vehicle registry, and [`StorageError`], which every port returns. Feature
//! ports (`geofence::store`, `crm::store`, `immobiliser::store`) sit above this one; `storage`
//! implements them all. A batch is one transaction, and its positions count as acknowledged
//! only once [`Store::write_batch`] has returned.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{DeviceId, Position, VehicleId};
use crate::protocols::Protocol;

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
}

impl NewPosition {
    pub fn new(position: Position, gps_odometer_m: f64) -> Self {
        NewPosition {
            position,
            gps_odometer_m,
        }
    }
}

/// One packet's positions of one UTC day packed in the store's own format (a position
/// chunk), made where the packet was accepted ([`Store::pack`], called by its shard) so that
/// the serial group commit only inserts bytes: one row per packet and day instead of one per
/// position.
#[derive(Clone, Debug)]
pub struct Packed {
    /// Fix times of the first and last position, Unix ms (same UTC day).
    pub first_ms: i64,
    pub last_ms: i64,
    /// Positions in it (one per fix time).
    pub n: u32,
    pub data: Vec<u8>,
}

/// Where a device was at one fix time and how fast it went: a track read without the rest of
/// the row (a summary's fold, a GeoJSON line), decoded without building a position per fix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackPoint {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
}

impl From<&StoredPosition> for TrackPoint {
    fn from(p: &StoredPosition) -> Self {
        TrackPoint {
            time: p.time,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: p.speed_kmh,
        }
    }
}

/// The latest state of one device after a batch.
#[derive(Clone, Debug, PartialEq)]
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
    /// `positions` as the store writes them, per UTC day ([`Store::pack`]); empty when not
    /// packed yet (the store then packs them inside the commit).
    pub packed: Vec<Packed>,
}

impl WriteItem {
    pub fn rows(&self) -> usize {
        self.positions.len()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Write every item in one transaction: positions and states. A fix time stored before
    /// keeps its first copy: reads and compaction honour the order of storage.
    async fn write_batch(&self, items: &[WriteItem]) -> Result<(), StorageError>;
    /// Fill `item.packed` from `item.positions` (pure CPU, no I/O): the shard that accepted
    /// the packet calls it, off the single writer. A store with nothing to pack leaves it.
    fn pack(&self, _item: &mut WriteItem) {}
    /// Latest state of every device, for the pipeline to start from after a restart.
    async fn device_states(&self) -> Result<Vec<DeviceState>, StorageError>;
    async fn device_state(&self, device: &DeviceId) -> Result<Option<DeviceState>, StorageError>;
    /// Positions of `device` with `from <= fix_time < to`, in fix-time order: every column
    /// ([`Store::track_columns`] with [`TrackColumns::All`]).
    async fn track(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredPosition>, StorageError> {
        self.track_columns(device, from, to, limit, TrackColumns::All)
            .await
    }
    /// [`Store::track`] with only `cols` filled in ([`StoredPosition::project`]): CSV and GPX
    /// show no attributes, which are most of a packed chunk's bytes, and packed chunks
    /// are read only up to the last column asked for.
    async fn track_columns(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
        cols: TrackColumns,
    ) -> Result<Vec<StoredPosition>, StorageError>;
    /// Fix time, coordinates and speed only of the same positions as [`Store::track`]: what a
    /// fold over a whole track needs (`/track/summary`) and what a GeoJSON line shows, without
    /// decoding every column.
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

/// Which columns a track read fills in (a projection: packed chunks stop reading after the
/// last column asked for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackColumns {
    All,
    /// Everything but `attributes` (left `null`): CSV.
    WithoutAttributes,
    /// What a line on a map shows: fix time, validity, coordinates, speed, course, altitude, GPS
    /// odometer and satellites; the rest unknown (`None`, `attributes` `null`, server time the fix
    /// time). GPX (GeoJSON reads less: [`Store::track_points`]).
    Map,
}

/// A stored fix (the API serves it as `api::rows::Position`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPosition {
    pub time: DateTime<Utc>,
    pub server_time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: f64,
    pub altitude: f64,
    pub satellites: Option<u16>,
    pub ignition: Option<bool>,
    pub motion: Option<bool>,
    pub odometer_m: Option<f64>,
    pub gps_odometer_m: f64,
    pub inputs: Option<u32>,
    pub outputs: Option<u32>,
    pub power_v: Option<f64>,
    pub alarm: Option<String>,
    pub attributes: AttrsJson,
}

/// A stored position's `attributes` as JSON text: exactly what serde_json writes for the value
/// (compact, object keys sorted). Kept as text because a track read only passes it on: building
/// a `serde_json::Map` per position was most of a packed car-day's read (docs/performance.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrsJson(std::borrow::Cow<'static, str>);

impl AttrsJson {
    /// The text of `v`.
    pub fn new(v: &serde_json::Value) -> Self {
        AttrsJson(v.to_string().into())
    }

    /// Attributes as a database gave them back (SQLite's text as the decoder wrote it,
    /// PostgreSQL's `jsonb` output with its own spacing and key order), made canonical; `null`
    /// when absent or not JSON.
    pub fn from_stored(text: Option<&str>) -> Self {
        match text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
            Some(v) => AttrsJson::new(&v),
            None => AttrsJson::null(),
        }
    }

    /// Text the caller has written as serde_json would (the chunk decoder).
    pub(crate) fn from_canonical(text: String) -> Self {
        AttrsJson(text.into())
    }

    /// No attributes known (a read that left them out): no allocation.
    pub fn null() -> Self {
        AttrsJson(std::borrow::Cow::Borrowed("null"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value, for code that looks inside (packing a chunk, tests).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl Default for AttrsJson {
    fn default() -> Self {
        AttrsJson::null()
    }
}

impl From<serde_json::Value> for AttrsJson {
    fn from(v: serde_json::Value) -> Self {
        AttrsJson::new(&v)
    }
}

impl StoredPosition {
    /// The position with what `cols` leaves out unknown, as a packed chunk's projected read
    /// returns it (so rows and chunks of one track look alike).
    pub fn project(mut self, cols: TrackColumns) -> Self {
        if cols != TrackColumns::All {
            self.attributes = AttrsJson::null();
        }
        if cols == TrackColumns::Map {
            self.server_time = self.time;
            self.ignition = None;
            self.motion = None;
            self.odometer_m = None;
            self.inputs = None;
            self.outputs = None;
            self.power_v = None;
            self.alarm = None;
        }
        self
    }

    pub fn from_position(p: &Position, server_time: DateTime<Utc>, gps_odometer_m: f64) -> Self {
        StoredPosition {
            attributes: AttrsJson::new(&p.attrs.to_json()),
            ..StoredPosition::without_attributes(p, server_time, gps_odometer_m)
        }
    }

    /// [`StoredPosition::from_position`] with `attributes` left `null` (for a caller that
    /// handles them itself).
    pub fn without_attributes(
        p: &Position,
        server_time: DateTime<Utc>,
        gps_odometer_m: f64,
    ) -> Self {
        StoredPosition {
            time: p.fix_time,
            server_time,
            valid: p.valid,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: p.speed_kmh,
            course: p.course,
            altitude: p.altitude,
            satellites: p.satellites,
            ignition: p.ignition,
            motion: p.motion,
            odometer_m: p.odometer_m,
            gps_odometer_m,
            inputs: p.inputs,
            outputs: p.outputs,
            power_v: p.power_v,
            alarm: p.alarm.map(str::to_string),
            attributes: AttrsJson::null(),
        }
    }
}

/// A vehicle as registered.
#[derive(Clone, Debug, PartialEq)]
pub struct Vehicle {
    pub id: VehicleId,
    pub device_id: Option<DeviceId>,
    pub protocol: Option<String>,
    pub plate: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    /// The car's company card in the CRM.
    pub crm_company_id: Option<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A vehicle's fields to set (`None` keeps a field's value).
#[derive(Clone, Debug, Default)]
pub struct VehicleUpdate {
    pub device_id: Option<String>,
    pub protocol: Option<String>,
    pub plate: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    pub crm_company_id: Option<String>,
    /// `available`, `issued` or `in_repair`.
    pub status: Option<String>,
}

pub const VEHICLE_STATUSES: &[&str] = &["available", "issued", "in_repair"];
