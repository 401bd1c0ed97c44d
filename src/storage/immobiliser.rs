//! The immobiliser's statements and row decoders, shared by both backends, and
//! [`ImmobiliserStore`] on SQLite: vehicle states with their reason sets, commands and the
//! audit trail. Written by the immobiliser actor (and, audit records only, by a forced zone
//! change), one transaction per decision.

use std::collections::BTreeMap;

use super::reads;
use super::sql::{unknown, Bind, Cols};
use super::sqlite::SqliteStore;
use super::{from_millis, millis, StorageError, Store};
use crate::immobiliser::machine::ReasonEntry;
use crate::immobiliser::store::{
    AuditEntry, AuditPosition, AuditQuery, Fitting, ImmobChanges, ImmobSnapshot, ImmobiliserStore,
    VehicleImmobRow,
};
use crate::immobiliser::{BlockReason, Command, CommandStatus, ImmobState, Intent};
use crate::model::{DeviceId, VehicleId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub(crate) const COMMAND_SELECT: &str = "SELECT id, vehicle_id, device_id, intent, text, output, status, forced, reasons, actor, \
     attempts, created_at, next_attempt_at, sent_at, acknowledged_at, confirmed_at, finished_at, expires_at, response, error \
     FROM immobiliser_commands";

/// Every vehicle's state, for [`snapshot`].
pub(crate) const STATES: &str = "SELECT vehicle_id, state, since FROM immobiliser_state";
/// Every vehicle's reasons, for [`snapshot`].
pub(crate) const REASONS: &str =
    "SELECT vehicle_id, reason, since, actor, comment FROM immobiliser_reasons";

/// Commands still open at `$1`: not finished, or acknowledged and awaiting confirmation.
pub(crate) fn open_commands() -> String {
    format!(
        "{COMMAND_SELECT} WHERE status IN ('queued', 'sent') \
         OR (status = 'acknowledged' AND expires_at > $1) ORDER BY id"
    )
}

/// What [`ImmobiliserStore::immobiliser_load`] returns, from the rows of [`STATES`],
/// [`REASONS`] and [`open_commands`]. A reason this version cannot parse is skipped.
pub(crate) fn snapshot<R: Cols>(
    states: &[R],
    reasons: &[R],
    commands: &[R],
) -> Result<ImmobSnapshot, sqlx::Error> {
    let mut vehicles: BTreeMap<String, VehicleImmobRow> = BTreeMap::new();
    for r in states {
        let id = r.text("vehicle_id")?;
        let state = r.text("state")?;
        let state = ImmobState::parse(&state).ok_or_else(|| unknown("state", &state))?;
        vehicles.insert(
            id.clone(),
            VehicleImmobRow {
                vehicle_id: VehicleId(id),
                state,
                since: r.time("since")?,
                reasons: BTreeMap::new(),
            },
        );
    }
    for r in reasons {
        let id = r.text("vehicle_id")?;
        let Ok(reason) = BlockReason::parse(&r.text("reason")?) else {
            continue;
        };
        let v = vehicles
            .entry(id.clone())
            .or_insert_with(|| VehicleImmobRow {
                vehicle_id: VehicleId(id),
                state: ImmobState::Running,
                since: DateTime::<Utc>::default(),
                reasons: BTreeMap::new(),
            });
        v.reasons.insert(reason, reason_entry(r)?);
    }
    Ok(ImmobSnapshot {
        vehicles: vehicles.into_values().collect(),
        open_commands: commands.iter().map(command).collect::<Result<_, _>>()?,
    })
}

pub(crate) fn reason_entry(r: &impl Cols) -> Result<ReasonEntry, sqlx::Error> {
    Ok(ReasonEntry {
        since: r.time("since")?,
        actor: r.text("actor")?,
        comment: r.opt_text("comment")?,
    })
}

pub(crate) fn command(r: &impl Cols) -> Result<Command, sqlx::Error> {
    let intent = r.text("intent")?;
    let status = r.text("status")?;
    Ok(Command {
        id: r.int("id")?,
        vehicle_id: VehicleId(r.text("vehicle_id")?),
        device_id: r.opt_text("device_id")?.map(DeviceId),
        intent: Intent::parse(&intent).ok_or_else(|| unknown("intent", &intent))?,
        text: r.opt_text("text")?,
        output: r.int("output")?.clamp(1, 32) as u8,
        status: CommandStatus::parse(&status).ok_or_else(|| unknown("status", &status))?,
        forced: r.flag("forced")?,
        reasons: r.text("reasons")?,
        actor: r.text("actor")?,
        attempts: r.int("attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        created_at: r.time("created_at")?,
        next_attempt_at: r.time("next_attempt_at")?,
        sent_at: r.opt_time("sent_at")?,
        acknowledged_at: r.opt_time("acknowledged_at")?,
        confirmed_at: r.opt_time("confirmed_at")?,
        finished_at: r.opt_time("finished_at")?,
        expires_at: r.time("expires_at")?,
        response: r.opt_text("response")?,
        error: r.opt_text("error")?,
    })
}

/// Insert a command or update its progress: `$1`…`$20` in the order of the column list.
pub(crate) const UPSERT_COMMAND: &str =
    "INSERT INTO immobiliser_commands (id, vehicle_id, device_id, intent, text, output, status, forced, \
     reasons, actor, attempts, created_at, next_attempt_at, sent_at, acknowledged_at, confirmed_at, \
     finished_at, expires_at, response, error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
     ON CONFLICT (id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, \
     next_attempt_at = excluded.next_attempt_at, sent_at = excluded.sent_at, \
     acknowledged_at = excluded.acknowledged_at, confirmed_at = excluded.confirmed_at, \
     finished_at = excluded.finished_at, response = excluded.response, error = excluded.error";

/// [`UPSERT_COMMAND`] for command `c`.
pub(crate) fn bind_command<'q, Q: Bind<'q>>(q: Q, c: &'q Command) -> Q {
    q.int(c.id)
        .text(&c.vehicle_id.0)
        .opt_text(c.device_id.as_ref().map(|d| d.as_str()))
        .text(c.intent.as_str())
        .opt_text(c.text.as_deref())
        .int(i64::from(c.output))
        .text(c.status.as_str())
        .flag(c.forced)
        .text(&c.reasons)
        .text(&c.actor)
        .int(i64::from(c.attempts))
        .int(millis(c.created_at))
        .int(millis(c.next_attempt_at))
        .opt_int(c.sent_at.map(millis))
        .opt_int(c.acknowledged_at.map(millis))
        .opt_int(c.confirmed_at.map(millis))
        .opt_int(c.finished_at.map(millis))
        .int(millis(c.expires_at))
        .opt_text(c.response.as_deref())
        .opt_text(c.error.as_deref())
}

/// Insert or replace a vehicle's state: `$1` vehicle, `$2` state, `$3` since, `$4` now.
pub(crate) const DELETE_REASONS: &str = "DELETE FROM immobiliser_reasons WHERE vehicle_id = $1";

pub(crate) const UPSERT_STATE: &str =
    "INSERT INTO immobiliser_state (vehicle_id, state, since, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (vehicle_id) DO UPDATE SET state = excluded.state, since = excluded.since, \
     updated_at = excluded.updated_at";

pub(crate) const AUDIT_SELECT: &str = "SELECT id, time, vehicle_id, event, reason, actor, comment, state_from, state_to, command_id, \
     forced, fix_time, lat, lon, speed_kmh, ignition FROM audit_log";

pub(crate) fn audit(r: &impl Cols) -> Result<AuditEntry, sqlx::Error> {
    let position = match r.opt_int("fix_time")? {
        Some(t) => Some(AuditPosition {
            time: from_millis(t),
            lat: r.opt_real("lat")?.unwrap_or_default(),
            lon: r.opt_real("lon")?.unwrap_or_default(),
            speed_kmh: r.opt_real("speed_kmh")?.unwrap_or_default(),
            ignition: r.opt_flag("ignition")?,
        }),
        None => None,
    };
    Ok(AuditEntry {
        id: r.int("id")?,
        time: r.time("time")?,
        vehicle_id: VehicleId(r.text("vehicle_id")?),
        event: r.text("event")?,
        reason: r.opt_text("reason")?,
        actor: r.text("actor")?,
        comment: r.opt_text("comment")?,
        state_from: r.opt_text("state_from")?,
        state_to: r.opt_text("state_to")?,
        command_id: r.opt_int("command_id")?,
        forced: r.flag("forced")?,
        position,
    })
}

#[async_trait]
impl ImmobiliserStore for SqliteStore {
    async fn immobiliser_load(&self) -> Result<ImmobSnapshot, StorageError> {
        let states = sqlx::query(STATES).fetch_all(&self.writer).await?;
        let reasons = sqlx::query(REASONS).fetch_all(&self.writer).await?;
        let commands = sqlx::query(&open_commands())
            .bind(millis(Utc::now()))
            .fetch_all(&self.writer)
            .await?;
        Ok(snapshot(&states, &reasons, &commands)?)
    }

    async fn fitting(&self, vehicle: &VehicleId) -> Result<Option<Fitting>, StorageError> {
        Ok(Store::vehicle(self, vehicle).await?.map(|v| Fitting {
            device: v.device_id,
            protocol: v.protocol,
        }))
    }

    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError> {
        Ok(Store::vehicle_by_device(self, device).await?.map(|v| v.id))
    }

    async fn reserve_command_ids(&self, n: u32) -> Result<Vec<i64>, StorageError> {
        let n = i64::from(n.max(1));
        let end: i64 = sqlx::query_scalar(
            "UPDATE id_counters SET next = next + ? WHERE name = 'immobiliser_commands' RETURNING next",
        )
        .bind(n)
        .fetch_one(&self.writer)
        .await?;
        Ok((end - n..end).collect())
    }

    async fn immobiliser_apply(&self, ch: &ImmobChanges) -> Result<(), StorageError> {
        if ch.is_empty() {
            return Ok(());
        }
        let now = millis(Utc::now());
        let mut tx = self.writer.begin().await?;
        for v in &ch.vehicles {
            sqlx::query(UPSERT_STATE)
                .bind(&v.vehicle_id.0)
                .bind(v.state.as_str())
                .bind(millis(v.since))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_REASONS)
                .bind(&v.vehicle_id.0)
                .execute(&mut *tx)
                .await?;
            for (reason, e) in &v.reasons {
                sqlx::query(
                    "INSERT INTO immobiliser_reasons (vehicle_id, reason, since, actor, comment) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&v.vehicle_id.0)
                .bind(reason.as_str())
                .bind(millis(e.since))
                .bind(&e.actor)
                .bind(&e.comment)
                .execute(&mut *tx)
                .await?;
            }
        }
        for c in &ch.commands {
            bind_command(sqlx::query(UPSERT_COMMAND), c)
                .execute(&mut *tx)
                .await?;
        }
        for a in &ch.audit {
            let p = a.position.as_ref();
            sqlx::query(
                "INSERT INTO audit_log (time, vehicle_id, event, reason, actor, comment, state_from, state_to, \
                 command_id, forced, fix_time, lat, lon, speed_kmh, ignition) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(millis(a.time))
            .bind(&a.vehicle_id.0)
            .bind(&a.event)
            .bind(&a.reason)
            .bind(&a.actor)
            .bind(&a.comment)
            .bind(&a.state_from)
            .bind(&a.state_to)
            .bind(a.command_id)
            .bind(a.forced)
            .bind(p.map(|p| millis(p.time)))
            .bind(p.map(|p| p.lat))
            .bind(p.map(|p| p.lon))
            .bind(p.map(|p| p.speed_kmh))
            .bind(p.and_then(|p| p.ignition))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn commands(
        &self,
        vehicle: &VehicleId,
        limit: u32,
    ) -> Result<Vec<Command>, StorageError> {
        reads::commands(&self.reader, vehicle, limit).await
    }

    async fn command(&self, id: i64) -> Result<Option<Command>, StorageError> {
        reads::command(&self.reader, id).await
    }

    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = match &q.vehicle {
            Some(v) => {
                sqlx::query(&format!(
                    "{AUDIT_SELECT} WHERE vehicle_id = ? AND time >= ? AND time < ? ORDER BY time, id LIMIT ?"
                ))
                .bind(&v.0)
                .bind(millis(q.from))
                .bind(millis(q.to))
                .bind(i64::from(q.limit))
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{AUDIT_SELECT} WHERE time >= ? AND time < ? ORDER BY time, id LIMIT ?"
                ))
                .bind(millis(q.from))
                .bind(millis(q.to))
                .bind(i64::from(q.limit))
                .fetch_all(&self.reader)
                .await?
            }
        };
        Ok(rows.iter().map(audit).collect::<Result<_, _>>()?)
    }
}
