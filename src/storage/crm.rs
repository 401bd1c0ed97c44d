//! [`CrmStore`] on SQLite: rule state and the outbox.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::{from_millis, millis, StorageError, Store};
use crate::crm::event::{NewEvent, OutboxEvent, Payload, Status};
use crate::crm::store::{CrmStore, StateWrite};
use crate::model::VehicleId;

/// A fresh idempotency key: vehicle, creation time and 64 random bits.
pub(crate) fn new_key(vehicle: &VehicleId, now: DateTime<Utc>) -> String {
    format!(
        "fg-{}-{}-{:016x}",
        vehicle.0,
        millis(now),
        rand::random::<u64>()
    )
}

pub(crate) const OUTBOX_COLUMNS: &str =
    "id, idem_key, vehicle_id, deal_id, payload, status, attempts, \
     created_at, expires_at, next_attempt_at, last_error, delivered_at";

fn event_from_row(r: &SqliteRow) -> Result<OutboxEvent, StorageError> {
    let payload: String = r.try_get(4)?;
    let payload: Payload = serde_json::from_str(&payload)
        .map_err(|e| StorageError::Invalid(format!("crm_outbox.payload: {e}")))?;
    let status: String = r.try_get(5)?;
    Ok(OutboxEvent {
        id: r.try_get(0)?,
        key: r.try_get(1)?,
        vehicle_id: VehicleId(r.try_get(2)?),
        deal_id: r.try_get(3)?,
        payload,
        status: Status::parse(&status).unwrap_or(Status::Pending),
        attempts: r.try_get::<i64, _>(6)? as u32,
        created_at: from_millis(r.try_get(7)?),
        expires_at: from_millis(r.try_get(8)?),
        next_attempt_at: from_millis(r.try_get(9)?),
        last_error: r.try_get(10)?,
        delivered_at: r.try_get::<Option<i64>, _>(11)?.map(from_millis),
    })
}

#[async_trait]
impl CrmStore for SqliteStore {
    async fn crm_commit(
        &self,
        states: &[StateWrite],
        events: &[NewEvent],
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<(), StorageError> {
        let mut tx = self.writer().begin().await?;
        for s in states {
            sqlx::query(
                "INSERT INTO crm_state (scope, id, state, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (scope, id) DO UPDATE SET state = excluded.state, \
                 updated_at = excluded.updated_at",
            )
            .bind(s.scope)
            .bind(&s.id)
            .bind(&s.state)
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        }
        for e in events {
            let payload = serde_json::to_string(&e.payload)
                .map_err(|err| StorageError::Invalid(format!("crm event: {err}")))?;
            sqlx::query(
                "INSERT INTO crm_outbox (idem_key, vehicle_id, deal_id, kind, payload, status, \
                 attempts, created_at, expires_at, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            )
            .bind(new_key(&e.vehicle_id, now))
            .bind(&e.vehicle_id.0)
            .bind(&e.deal_id)
            .bind(e.payload.kind())
            .bind(payload)
            .bind(millis(now))
            .bind(millis(now + ttl))
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn crm_states(&self, scope: &str) -> Result<Vec<(String, String)>, StorageError> {
        let rows = sqlx::query("SELECT id, state FROM crm_state WHERE scope = ? ORDER BY id")
            .bind(scope)
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM crm_outbox o WHERE status = 'pending' \
             AND id = (SELECT MIN(id) FROM crm_outbox p WHERE p.status = 'pending' \
                       AND p.vehicle_id = o.vehicle_id) \
             AND next_attempt_at <= ? ORDER BY id LIMIT ?"
        ))
        .bind(millis(now))
        .bind(limit as i64)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM crm_outbox o WHERE status = 'pending' \
             AND id = (SELECT MIN(id) FROM crm_outbox p WHERE p.status = 'pending' \
                       AND p.vehicle_id = o.vehicle_id)",
        )
        .fetch_one(self.reader())
        .await?;
        Ok(next.map(from_millis))
    }

    async fn outbox_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1, \
             last_error = NULL WHERE id = ?",
        )
        .bind(millis(at))
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn outbox_retry(
        &self,
        id: i64,
        attempts: u32,
        next: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? \
             WHERE id = ? AND status = 'pending'",
        )
        .bind(attempts as i64)
        .bind(millis(next))
        .bind(error)
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn outbox_dead(&self, id: i64, attempts: u32, error: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET status = 'dead', attempts = ?, last_error = ? \
             WHERE id = ? AND status = 'pending'",
        )
        .bind(attempts as i64)
        .bind(error)
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn outbox_drop(
        &self,
        vehicle: &VehicleId,
        keep_deal: Option<&str>,
        why: &str,
    ) -> Result<u64, StorageError> {
        let r = sqlx::query(
            "UPDATE crm_outbox SET status = 'dropped', last_error = ? \
             WHERE vehicle_id = ? AND status = 'pending' AND deal_id IS NOT NULL \
             AND (? IS NULL OR deal_id <> ?)",
        )
        .bind(why)
        .bind(&vehicle.0)
        .bind(keep_deal)
        .bind(keep_deal)
        .execute(self.writer())
        .await?;
        Ok(r.rows_affected())
    }

    async fn outbox_drop_one(&self, id: i64, why: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET status = 'dropped', last_error = ? \
             WHERE id = ? AND status = 'pending'",
        )
        .bind(why)
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn outbox_requeue(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StorageError> {
        let r = sqlx::query(
            "UPDATE crm_outbox SET status = 'pending', next_attempt_at = ?, \
             expires_at = MAX(expires_at, ?) WHERE id = ? AND status = 'dead'",
        )
        .bind(millis(now))
        .bind(millis(now + chrono::Duration::days(1)))
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn outbox_list(
        &self,
        status: Option<Status>,
        vehicle: Option<&VehicleId>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM crm_outbox WHERE (? IS NULL OR status = ?) \
             AND (? IS NULL OR vehicle_id = ?) ORDER BY id DESC LIMIT ?"
        ))
        .bind(status.map(Status::as_str))
        .bind(status.map(Status::as_str))
        .bind(vehicle.map(|v| v.0.as_str()))
        .bind(vehicle.map(|v| v.0.as_str()))
        .bind(limit as i64)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn outbox_counts(&self) -> Result<Vec<(Status, u64)>, StorageError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM crm_outbox GROUP BY status")
            .fetch_all(self.reader())
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let s: String = r.try_get(0)?;
            if let Some(s) = Status::parse(&s) {
                out.push((s, r.try_get::<i64, _>(1)? as u64));
            }
        }
        Ok(out)
    }

    async fn outbox_purge(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        let r = sqlx::query(
            "DELETE FROM crm_outbox WHERE (status = 'delivered' AND delivered_at < ?) \
                 OR (status = 'dropped' AND created_at < ?)",
        )
        .bind(millis(before))
        .bind(millis(before))
        .execute(self.writer())
        .await?;
        Ok(r.rows_affected())
    }

    async fn crm_vehicles(&self) -> Result<Vec<super::Vehicle>, StorageError> {
        Store::vehicles(self).await
    }
}
