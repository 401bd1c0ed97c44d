//! [`ZoneStore`] on PostgreSQL: the SQLite implementation's statements with `$n` parameters,
//! JSONB for the GeoJSON feature and the membership list, and the events of one change
//! inserted with one UNNEST statement.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;

use super::PostgresStore;
use crate::model::{DeviceId, VehicleId};
use crate::geofence::store::{
    EventQuery, StoredMembership, StoredZone, StoredZoneEvent, ZoneChange, ZoneStore,
};
use crate::storage::{from_millis, millis, StorageError, Store};

#[async_trait]
impl ZoneStore for PostgresStore {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError> {
        let rows = sqlx::query("SELECT name, kind, feature::text FROM zones ORDER BY name")
            .fetch_all(&self.pool)
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
            "INSERT INTO zones (name, kind, feature, updated_at) VALUES ($1, $2, $3::jsonb, $4) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, feature = excluded.feature, \
             updated_at = excluded.updated_at",
        )
        .bind(&zone.name)
        .bind(&zone.kind)
        .bind(zone.feature.to_string())
        .bind(millis(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError> {
        let r = sqlx::query("DELETE FROM zones WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError> {
        let rows = sqlx::query("SELECT device_id, last_fix, zones::text FROM zone_state")
            .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        for ZoneChange {
            membership: m,
            events,
        } in changes
        {
            sqlx::query(
                "INSERT INTO zone_state (device_id, last_fix, zones) VALUES ($1, $2, $3::jsonb) \
                 ON CONFLICT (device_id) DO UPDATE SET last_fix = excluded.last_fix, zones = excluded.zones",
            )
            .bind(m.device_id.as_str())
            .bind(millis(m.last_fix))
            .bind(serde_json::to_string(&m.zones).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
            if !events.is_empty() {
                sqlx::query(
                    "INSERT INTO zone_events (vehicle_id, device_id, type, zone, zone_kind, time, lat, lon) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::int8[], $7::float8[], $8::float8[])",
                )
                .bind(events.iter().map(|e| e.vehicle.as_ref().map(|v| v.0.clone())).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.device_id.0.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.zone.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.zone_kind.clone()).collect::<Vec<_>>())
                .bind(events.iter().map(|e| millis(e.time)).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.lat).collect::<Vec<_>>())
                .bind(events.iter().map(|e| e.lon).collect::<Vec<_>>())
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
        let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
        let rows = b.build().fetch_all(&self.pool).await?;
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
