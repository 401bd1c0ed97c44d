//! The CRM's statements and row decoders, shared by both backends, and [`CrmStore`] on
//! SQLite: rule state and the outbox.

use super::reads;
use super::sql::{Bind, Cols};
use super::sqlite::SqliteStore;
use super::{from_millis, millis, StorageError, Store};
use crate::crm::event::{NewEvent, OutboxEvent, Payload, Status};
use crate::crm::store::{CrmStore, StateWrite};
use crate::model::VehicleId;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

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

pub(crate) fn outbox_event(r: &impl Cols) -> Result<OutboxEvent, StorageError> {
    let payload: Payload = serde_json::from_str(&r.text("payload")?)
        .map_err(|e| StorageError::Invalid(format!("crm_outbox.payload: {e}")))?;
    Ok(OutboxEvent {
        id: r.int("id")?,
        key: r.text("idem_key")?,
        vehicle_id: VehicleId(r.text("vehicle_id")?),
        deal_id: r.opt_text("deal_id")?,
        payload,
        status: Status::parse(&r.text("status")?).unwrap_or(Status::Pending),
        attempts: r.int("attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        next_attempt_at: r.time("next_attempt_at")?,
        last_error: r.opt_text("last_error")?,
        delivered_at: r.opt_time("delivered_at")?,
        company_id: None,
    })
}

/// [`CrmStore::crm_commit`] inside the transaction `conn` is in, on either backend.
pub(crate) async fn commit<DB>(
    conn: &mut DB::Connection,
    states: &[StateWrite],
    events: &[NewEvent],
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> Result<(), StorageError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>: Bind<'q>,
{
    for s in states {
        sqlx::query::<DB>(UPSERT_STATE)
            .text(s.scope)
            .text(&s.id)
            .text(&s.state)
            .int(millis(now))
            .execute(&mut *conn)
            .await?;
    }
    for e in events {
        let payload = serde_json::to_string(&e.payload)
            .map_err(|err| StorageError::Invalid(format!("crm event: {err}")))?;
        if e.payload.coalesces() {
            // One pending write of this kind per car: an older one not yet sent is dropped (one
            // already in flight is still marked delivered when it lands; the newer one follows).
            sqlx::query::<DB>(COALESCE)
                .text(crate::crm::event::COALESCED)
                .text(&e.vehicle_id.0)
                .text(e.payload.kind())
                .execute(&mut *conn)
                .await?;
        }
        let key = new_key(&e.vehicle_id, now);
        sqlx::query::<DB>(ENQUEUE)
            .text(&key)
            .text(&e.vehicle_id.0)
            .opt_text(e.deal_id.as_deref())
            .text(e.payload.kind())
            .text(&payload)
            .int(millis(now))
            .int(millis(now + ttl))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Write one rule state: `$1` scope, `$2` id, `$3` JSON, `$4` now.
pub(crate) const UPSERT_STATE: &str =
    "INSERT INTO crm_state (scope, id, state, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (scope, id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at";

/// Drop the pending events of vehicle `$2` and kind `$3`, `$1` the reason.
pub(crate) const COALESCE: &str = "UPDATE crm_outbox SET status = 'dropped', last_error = $1 \
     WHERE vehicle_id = $2 AND kind = $3 AND status = 'pending'";

/// Remember the car's company card found through its deal: `$1` company, `$2` now, `$3`
/// vehicle; a company set meanwhile (by an operator) is kept.
pub(crate) const SET_COMPANY: &str = "UPDATE vehicles SET crm_company_id = $1, updated_at = $2 \
     WHERE id = $3 AND crm_company_id IS NULL";

/// Every rule state of scope `$1`.
pub(crate) const STATES_OF_SCOPE: &str =
    "SELECT id, state FROM crm_state WHERE scope = $1 ORDER BY id";

/// Enqueue one event: `$1` key, `$2` vehicle, `$3` deal, `$4` kind, `$5` payload, `$6` now
/// (created and first due), `$7` expiry.
pub(crate) const ENQUEUE: &str =
    "INSERT INTO crm_outbox (idem_key, vehicle_id, deal_id, kind, payload, status, \
     attempts, created_at, expires_at, next_attempt_at) \
     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $6)";

/// Events, newest first, of status `$1` and vehicle `$2` (either `NULL`: any), at most `$3`.
pub(crate) fn outbox_list() -> String {
    format!(
        "SELECT {OUTBOX_COLUMNS} FROM crm_outbox WHERE (CAST($1 AS TEXT) IS NULL OR status = $1) \
         AND (CAST($2 AS TEXT) IS NULL OR vehicle_id = $2) ORDER BY id DESC LIMIT $3"
    )
}

/// Count per status.
pub(crate) const COUNTS: &str = "SELECT status, COUNT(*) AS n FROM crm_outbox GROUP BY status";

pub(crate) fn counts(rows: &[impl Cols]) -> Result<Vec<(Status, u64)>, StorageError> {
    let mut out = Vec::new();
    for r in rows {
        if let Some(s) = Status::parse(&r.text("status")?) {
            out.push((s, r.int("n")?.max(0) as u64));
        }
    }
    Ok(out)
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
        commit::<sqlx::Sqlite>(&mut tx, states, events, now, ttl).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn crm_states(&self, scope: &str) -> Result<Vec<(String, String)>, StorageError> {
        reads::crm_states(self.reader(), scope).await
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
        rows.iter().map(outbox_event).collect()
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
        reads::outbox_list(self.reader(), status, vehicle, limit).await
    }

    async fn outbox_counts(&self) -> Result<Vec<(Status, u64)>, StorageError> {
        reads::outbox_counts(self.reader()).await
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

    async fn crm_set_company(
        &self,
        vehicle: &VehicleId,
        company: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let r = sqlx::query::<sqlx::Sqlite>(SET_COMPANY)
            .text(company)
            .int(millis(now))
            .text(&vehicle.0)
            .execute(self.writer())
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
