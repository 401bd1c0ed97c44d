//! [`CrmStore`] on PostgreSQL: the statements and row decoders shared with SQLite
//! (`storage::crm`), plus claims (`locked_by`, `locked_until`, `0006_outbox_lease.sql`) so that instances
//! sharing the database deliver each event once and a vehicle's events in order.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PostgresStore;
use crate::crm::event::{NewEvent, OutboxEvent, Status};
use crate::crm::store::{CrmStore, StateWrite};
use crate::model::VehicleId;
use crate::storage::crm::{commit, outbox_event, OUTBOX_COLUMNS};
use crate::storage::reads;
use crate::storage::sql::Cols;
use crate::storage::{from_millis, millis, StorageError, Store, Vehicle};

const HEADS: &str = "status = 'pending' AND id = (SELECT MIN(id) FROM crm_outbox p \
     WHERE p.status = 'pending' AND p.vehicle_id = o.vehicle_id)";

#[async_trait]
impl CrmStore for PostgresStore {
    async fn crm_commit(
        &self,
        states: &[StateWrite],
        events: &[NewEvent],
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        commit::<sqlx::Postgres>(&mut tx, states, events, now, ttl).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn crm_states(&self, scope: &str) -> Result<Vec<(String, String)>, StorageError> {
        reads::crm_states(&self.pool, scope).await
    }

    async fn crm_state(&self, scope: &str, id: &str) -> Result<Option<String>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT state FROM crm_state WHERE scope = $1 AND id = $2")
                .bind(scope)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// One round trip for all of them (the rules re-read five rows per vehicle per step).
    async fn crm_state_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<Vec<Option<String>>, StorageError> {
        let rows = sqlx::query(
            "SELECT s.scope, s.id, s.state FROM crm_state s \
             JOIN UNNEST($1::text[], $2::text[]) AS k(scope, id) ON s.scope = k.scope AND s.id = k.id",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            found.insert((r.text("scope")?, r.text("id")?), r.text("state")?);
        }
        Ok(keys
            .iter()
            .map(|(s, i)| found.get(&(s.to_string(), i.to_string())).cloned())
            .collect())
    }

    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM crm_outbox o WHERE {HEADS} \
             AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
        ))
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_event).collect()
    }

    /// Only a vehicle's oldest pending event is ever claimable, and it stays pending while
    /// claimed, so a later event of that vehicle waits wherever it would be delivered.
    /// `SKIP LOCKED` lets instances claiming at the same moment take disjoint rows; one that
    /// read the row before another's claim committed re-checks the lease on the new version.
    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claimer: &str,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let columns = OUTBOX_COLUMNS
            .split(',')
            .map(|c| format!("o.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "WITH heads AS (SELECT o.id FROM crm_outbox o WHERE {HEADS} \
             AND o.next_attempt_at <= $1 AND (o.locked_until IS NULL OR o.locked_until <= $1) \
             ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE crm_outbox o SET locked_by = $3, locked_until = $4 \
             FROM heads WHERE o.id = heads.id RETURNING {columns}"
        ))
        .bind(millis(now))
        .bind(i64::from(limit))
        .bind(claimer)
        .bind(millis(now + lease))
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(outbox_event)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError> {
        // A head claimed by another instance is due again when its lease runs out.
        let next: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(GREATEST(next_attempt_at, COALESCE(locked_until, 0))) FROM crm_outbox o \
             WHERE {HEADS}"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(from_millis))
    }

    async fn outbox_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET status = 'delivered', delivered_at = $1, \
             attempts = attempts + 1, last_error = NULL, locked_by = NULL, locked_until = NULL \
             WHERE id = $2",
        )
        .bind(millis(at))
        .bind(id)
        .execute(&self.pool)
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
            "UPDATE crm_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, \
             locked_by = NULL, locked_until = NULL WHERE id = $4 AND status = 'pending'",
        )
        .bind(attempts as i32)
        .bind(millis(next))
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_dead(&self, id: i64, attempts: u32, error: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET status = 'dead', attempts = $1, last_error = $2, \
             locked_by = NULL, locked_until = NULL WHERE id = $3 AND status = 'pending'",
        )
        .bind(attempts as i32)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
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
            "UPDATE crm_outbox SET status = 'dropped', last_error = $1, locked_by = NULL, \
             locked_until = NULL WHERE vehicle_id = $2 AND status = 'pending' \
             AND deal_id IS NOT NULL AND ($3::TEXT IS NULL OR deal_id <> $3)",
        )
        .bind(why)
        .bind(&vehicle.0)
        .bind(keep_deal)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn outbox_drop_one(&self, id: i64, why: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE crm_outbox SET status = 'dropped', last_error = $1, locked_by = NULL, \
             locked_until = NULL WHERE id = $2 AND status = 'pending'",
        )
        .bind(why)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_requeue(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StorageError> {
        let r = sqlx::query(
            "UPDATE crm_outbox SET status = 'pending', next_attempt_at = $1, \
             expires_at = GREATEST(expires_at, $2), locked_by = NULL, locked_until = NULL \
             WHERE id = $3 AND status = 'dead'",
        )
        .bind(millis(now))
        .bind(millis(now + chrono::Duration::days(1)))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn outbox_list(
        &self,
        status: Option<Status>,
        vehicle: Option<&VehicleId>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        reads::outbox_list(&self.pool, status, vehicle, limit).await
    }

    async fn outbox_counts(&self) -> Result<Vec<(Status, u64)>, StorageError> {
        reads::outbox_counts(&self.pool).await
    }

    async fn outbox_purge(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        let r = sqlx::query(
            "DELETE FROM crm_outbox WHERE (status = 'delivered' AND delivered_at < $1) \
                 OR (status = 'dropped' AND created_at < $1)",
        )
        .bind(millis(before))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn crm_vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        Store::vehicles(self).await
    }

    async fn crm_set_company(
        &self,
        vehicle: &VehicleId,
        company: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let r = sqlx::query(crate::storage::crm::SET_COMPANY)
            .bind(company)
            .bind(millis(now))
            .bind(&vehicle.0)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
