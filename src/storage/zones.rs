//! The geofences' statements and row decoders, shared by both backends, and [`ZoneStore`]
//! on SQLite: API-managed zones, per-device debounced membership, and the
//! confirmed enter/exit events.

use super::reads;
use super::sql::{Cols, Dialect};
use super::sqlite::SqliteStore;
use super::{millis, StorageError, Store};
use crate::geofence::store::{
    EventQuery, StoredMembership, StoredZone, StoredZoneEvent, ZoneChange, ZoneStore,
};
use crate::model::{DeviceId, VehicleId};
use async_trait::async_trait;
use chrono::Utc;

/// Every stored zone, by name.
pub(crate) fn zones(d: Dialect) -> String {
    format!(
        "SELECT name, kind, {} FROM zones ORDER BY name",
        d.json("feature")
    )
}

/// Store zone `$1` of kind `$2` with Feature `$3` (JSON text) at `$4`.
pub(crate) fn put_zone(d: Dialect) -> String {
    format!(
        "INSERT INTO zones (name, kind, feature, updated_at) VALUES ($1, $2, {}, $4) \
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, feature = excluded.feature, \
         updated_at = excluded.updated_at",
        d.json_param(3)
    )
}

pub(crate) const DELETE_ZONE: &str = "DELETE FROM zones WHERE name = $1";

pub(crate) fn memberships(d: Dialect) -> String {
    format!(
        "SELECT device_id, last_fix, {} FROM zone_state",
        d.json("zones")
    )
}

/// Store device `$1`'s membership: last fix `$2`, zone names `$3` (a JSON array).
pub(crate) fn upsert_membership(d: Dialect) -> String {
    format!(
        "INSERT INTO zone_state (device_id, last_fix, zones) VALUES ($1, $2, {}) \
         ON CONFLICT (device_id) DO UPDATE SET last_fix = excluded.last_fix, zones = excluded.zones",
        d.json_param(3)
    )
}

/// The columns [`zone_event`] reads.
pub(crate) const EVENT_SELECT: &str =
    "SELECT id, vehicle_id, device_id, type, zone, zone_kind, time, lat, lon FROM zone_events WHERE 1 = 1";

pub(crate) fn zone(r: &impl Cols) -> Result<StoredZone, StorageError> {
    Ok(StoredZone {
        name: r.text("name")?,
        kind: r.text("kind")?,
        feature: serde_json::from_str(&r.text("feature")?)
            .map_err(|e| StorageError::Invalid(format!("stored zone: {e}")))?,
    })
}

pub(crate) fn membership(r: &impl Cols) -> Result<StoredMembership, StorageError> {
    Ok(StoredMembership {
        device_id: DeviceId(r.text("device_id")?),
        last_fix: r.time("last_fix")?,
        zones: serde_json::from_str(&r.text("zones")?).unwrap_or_default(),
    })
}

pub(crate) fn zone_event(r: &impl Cols) -> Result<StoredZoneEvent, StorageError> {
    Ok(StoredZoneEvent {
        id: r.int("id")?,
        vehicle: r.opt_text("vehicle_id")?.map(VehicleId),
        device_id: DeviceId(r.text("device_id")?),
        kind: r.text("type")?,
        zone: r.text("zone")?,
        zone_kind: r.text("zone_kind")?,
        time: r.time("time")?,
        lat: r.real("lat")?,
        lon: r.real("lon")?,
    })
}

const SQL: Dialect = Dialect::Sqlite;

#[async_trait]
impl ZoneStore for SqliteStore {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError> {
        reads::zones(self.reader(), SQL).await
    }

    async fn put_zone(&self, zone: &StoredZone) -> Result<(), StorageError> {
        sqlx::query(&put_zone(SQL))
            .bind(&zone.name)
            .bind(&zone.kind)
            .bind(zone.feature.to_string())
            .bind(millis(Utc::now()))
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError> {
        let r = sqlx::query(DELETE_ZONE)
            .bind(name)
            .execute(self.writer())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError> {
        reads::memberships(self.reader(), SQL).await
    }

    async fn save_zone_changes(&self, changes: &[ZoneChange]) -> Result<(), StorageError> {
        let mut tx = self.writer().begin().await?;
        for ZoneChange {
            membership: m,
            events,
        } in changes
        {
            sqlx::query(&upsert_membership(SQL))
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

    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError> {
        Ok(Store::vehicle_by_device(self, device).await?.map(|v| v.id))
    }

    async fn zone_events(&self, q: &EventQuery) -> Result<Vec<StoredZoneEvent>, StorageError> {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(EVENT_SELECT);
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
        rows.iter().map(zone_event).collect()
    }
}
