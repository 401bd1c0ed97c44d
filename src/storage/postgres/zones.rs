//! [`ZoneStore`] on PostgreSQL: the statements and row decoders shared with SQLite
//! (`storage::zones`), JSONB for the GeoJSON feature and the membership list, and the events of one change
//! inserted with one UNNEST statement.

use async_trait::async_trait;
use chrono::Utc;

use super::PostgresStore;
use crate::geofence::store::{
    EventQuery, StoredMembership, StoredZone, StoredZoneEvent, ZoneChange, ZoneStore,
};
use crate::model::{DeviceId, VehicleId};
use crate::storage::reads;
use crate::storage::sql::Dialect;
use crate::storage::zones::{put_zone, upsert_membership, zone_event, DELETE_ZONE, EVENT_SELECT};
use crate::storage::{millis, StorageError, Store};

const SQL: Dialect = Dialect::Postgres;

#[async_trait]
impl ZoneStore for PostgresStore {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError> {
        reads::zones(&self.pool, SQL).await
    }

    async fn put_zone(&self, zone: &StoredZone) -> Result<(), StorageError> {
        sqlx::query(&put_zone(SQL))
            .bind(&zone.name)
            .bind(&zone.kind)
            .bind(zone.feature.to_string())
            .bind(millis(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError> {
        let r = sqlx::query(DELETE_ZONE)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError> {
        reads::memberships(&self.pool, SQL).await
    }

    async fn save_zone_changes(&self, changes: &[ZoneChange]) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
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
        let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(EVENT_SELECT);
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
        rows.iter().map(zone_event).collect()
    }
}
