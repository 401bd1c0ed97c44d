//! Persistence of geofences: API-managed zones, per-device debounced membership, and the
//! confirmed enter/exit events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::{from_millis, millis, StorageError};
use crate::model::{DeviceId, VehicleId};

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

/// A confirmed zone event as the API lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredZoneEvent {
    pub id: i64,
    pub vehicle: Option<VehicleId>,
    pub device_id: DeviceId,
    #[serde(rename = "type")]
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
pub trait ZoneStore {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError>;
    async fn put_zone(&self, zone: &StoredZone) -> Result<(), StorageError>;
    /// True when a stored zone was deleted.
    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError>;
    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError>;
    /// Save a device's membership and the events that changed it, in one transaction.
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
    async fn zone_events(&self, q: &EventQuery) -> Result<Vec<StoredZoneEvent>, StorageError>;
}

#[async_trait]
impl ZoneStore for SqliteStore {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError> {
        let rows = sqlx::query("SELECT name, kind, feature FROM zones ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                let feature: String = r.try_get(2)?;
                Ok(StoredZone {
                    name: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    feature: serde_json::from_str(&feature)
                        .map_err(|e| StorageError::Invalid(format!("stored zone: {e}")))?,
                })
            })
            .collect()
    }

    async fn put_zone(&self, zone: &StoredZone) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO zones (name, kind, feature, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, feature = excluded.feature, \
             updated_at = excluded.updated_at",
        )
        .bind(&zone.name)
        .bind(&zone.kind)
        .bind(zone.feature.to_string())
        .bind(millis(Utc::now()))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError> {
        let r = sqlx::query("DELETE FROM zones WHERE name = ?")
            .bind(name)
            .execute(self.writer())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError> {
        let rows = sqlx::query("SELECT device_id, last_fix, zones FROM zone_state")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                let zones: String = r.try_get(2)?;
                Ok(StoredMembership {
                    device_id: DeviceId(r.try_get(0)?),
                    last_fix: from_millis(r.try_get(1)?),
                    zones: serde_json::from_str(&zones).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn save_zone_changes(&self, changes: &[ZoneChange]) -> Result<(), StorageError> {
        let mut tx = self.writer().begin().await?;
        for ZoneChange {
            membership: m,
            events,
        } in changes
        {
            sqlx::query(
                "INSERT INTO zone_state (device_id, last_fix, zones) VALUES (?, ?, ?) \
                 ON CONFLICT(device_id) DO UPDATE SET last_fix = excluded.last_fix, zones = excluded.zones",
            )
            .bind(m.device_id.as_str())
            .bind(millis(m.last_fix))
            .bind(serde_json::to_string(&m.zones).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
            for e in events {
                sqlx::query(
                    "INSERT INTO zone_events (vehicle_id, device_id, type, zone, zone_kind, time, lat, lon) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(e.vehicle.as_ref().map(|v| v.0.as_str()))
                .bind(e.device_id.as_str())
                .bind(&e.kind)
                .bind(&e.zone)
                .bind(&e.zone_kind)
                .bind(millis(e.time))
                .bind(e.lat)
                .bind(e.lon)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn zone_events(&self, q: &EventQuery) -> Result<Vec<StoredZoneEvent>, StorageError> {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT id, vehicle_id, device_id, type, zone, zone_kind, time, lat, lon FROM zone_events WHERE 1 = 1",
        );
        if let Some(v) = &q.vehicle {
            b.push(" AND vehicle_id = ").push_bind(v.0.clone());
        }
        if let Some(k) = &q.kind {
            b.push(" AND type = ").push_bind(k.clone());
        }
        if let Some(f) = q.from {
            b.push(" AND time >= ").push_bind(millis(f));
        }
        if let Some(t) = q.to {
            b.push(" AND time < ").push_bind(millis(t));
        }
        b.push(" ORDER BY time, id LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = b.build().fetch_all(self.reader()).await?;
        rows.iter()
            .map(|r| {
                Ok(StoredZoneEvent {
                    id: r.try_get(0)?,
                    vehicle: r.try_get::<Option<String>, _>(1)?.map(VehicleId),
                    device_id: DeviceId(r.try_get(2)?),
                    kind: r.try_get(3)?,
                    zone: r.try_get(4)?,
                    zone_kind: r.try_get(5)?,
                    time: from_millis(r.try_get(6)?),
                    lat: r.try_get(7)?,
                    lon: r.try_get(8)?,
                })
            })
            .collect()
    }
}
