//! Storage adapters: SQLite (the embedded default) and PostgreSQL, each implementing the core
//! store (`crate::pipeline::store::Store`: positions, device states, vehicles) and the ports
//! the features own (`geofence::store::ZoneStore`, `crm::store::CrmStore`,
//! `immobiliser::store::ImmobiliserStore`, `archive::store::ArchiveStore`). Storage depends
//! on the features, never the reverse; [`open`] hands out one database as [`Stores`], one
//! handle per port, every call through it under a deadline ([`deadline`]).

pub mod archive;
pub mod chunk;
pub mod config;
pub mod crm;
pub mod deadline;
pub mod immobiliser;
pub mod postgres;
mod reads;
mod sql;
pub mod sqlite;
pub mod zones;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::archive::store::ArchiveStore;
use crate::crm::store::CrmStore;
use crate::geofence::store::ZoneStore;
use crate::immobiliser::store::ImmobiliserStore;
use crate::model::DeviceId;
pub use crate::pipeline::store::{
    DeviceState, NewPosition, Packed, StorageError, Store, StoredPosition, TrackPoint, Vehicle,
    VehicleUpdate, WriteItem,
};
pub use config::{Backend, StorageConfig};

/// One open database seen through each port, all on the same connections: each task gets
/// the one port it uses, never the whole database.
#[derive(Clone)]
pub struct Stores {
    /// Positions, device states and vehicles (the pipeline, the API, admission).
    pub core: Arc<dyn Store>,
    /// Zones, memberships and zone events (the zone stage, the geofences API).
    pub zones: Arc<dyn ZoneStore>,
    /// Rule state and the outbox (the CRM rules and outbox worker).
    pub crm: Arc<dyn CrmStore>,
    /// Vehicle states, commands and the audit trail (the immobiliser actor).
    pub immobiliser: Arc<dyn ImmobiliserStore>,
    /// Day partitions, compaction, expiry and daily summaries (the archive actor, the
    /// `fleetgate storage` commands).
    pub archive: Arc<dyn ArchiveStore>,
    /// The conversion of a database made before the archive (`fleetgate migrate`, start-up).
    pub layout: Arc<dyn archive::Layout>,
}

impl Stores {
    fn of<S: Store + ZoneStore + CrmStore + ImmobiliserStore + ArchiveStore + archive::Layout>(
        store: S,
    ) -> Stores {
        let store = Arc::new(store);
        Stores {
            core: store.clone(),
            zones: store.clone(),
            crm: store.clone(),
            immobiliser: store.clone(),
            archive: store.clone(),
            layout: store,
        }
    }
}

/// Open the store named by `[storage] url` and run its migrations (which have no deadline:
/// one may rewrite a large table). Every call through the returned [`Stores`] has one.
pub async fn open(cfg: &StorageConfig) -> Result<Stores, StorageError> {
    let d = cfg.deadlines();
    if cfg.url.starts_with("sqlite:") {
        let s = sqlite::SqliteStore::open(cfg).await?;
        Ok(Stores::of(deadline::Timed::new(s, d)))
    } else if cfg.url.starts_with("postgres://") || cfg.url.starts_with("postgresql://") {
        let s = postgres::PostgresStore::open(cfg).await?;
        Ok(Stores::of(deadline::Timed::new(s, d)))
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
