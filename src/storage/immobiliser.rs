//! [`ImmobiliserStore`] on SQLite: vehicle states with their reason sets, commands and the
//! audit trail. Written by the immobiliser actor (and, audit records only, by a forced zone
//! change), one transaction per decision.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::{from_millis, millis, StorageError, Store};
use crate::immobiliser::machine::ReasonEntry;
use crate::immobiliser::store::{
    AuditEntry, AuditPosition, AuditQuery, Fitting, ImmobChanges, ImmobSnapshot,
    ImmobiliserStore, VehicleImmobRow,
};
use crate::immobiliser::{BlockReason, Command, CommandStatus, ImmobState, Intent};
use crate::model::{DeviceId, VehicleId};

pub(crate) const COMMAND_SELECT: &str = "SELECT id, vehicle_id, device_id, intent, text, output, status, forced, reasons, actor, \
     attempts, created_at, next_attempt_at, sent_at, acknowledged_at, confirmed_at, finished_at, expires_at, response, error \
     FROM immobiliser_commands";

fn opt_time(r: &SqliteRow, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(i)?.map(from_millis))
}

fn bad(what: &str, v: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} '{v}'").into())
}

fn command_from_row(r: &SqliteRow) -> Result<Command, sqlx::Error> {
    let intent: String = r.try_get(3)?;
    let status: String = r.try_get(6)?;
    Ok(Command {
        id: r.try_get(0)?,
        vehicle_id: VehicleId(r.try_get(1)?),
        device_id: r.try_get::<Option<String>, _>(2)?.map(DeviceId),
        intent: Intent::parse(&intent).ok_or_else(|| bad("intent", &intent))?,
        text: r.try_get(4)?,
        output: r.try_get::<i64, _>(5)?.clamp(1, 32) as u8,
        status: CommandStatus::parse(&status).ok_or_else(|| bad("status", &status))?,
        forced: r.try_get(7)?,
        reasons: r.try_get(8)?,
        actor: r.try_get(9)?,
        attempts: r.try_get::<i64, _>(10)?.max(0) as u32,
        created_at: from_millis(r.try_get(11)?),
        next_attempt_at: from_millis(r.try_get(12)?),
        sent_at: opt_time(r, 13)?,
        acknowledged_at: opt_time(r, 14)?,
        confirmed_at: opt_time(r, 15)?,
        finished_at: opt_time(r, 16)?,
        expires_at: from_millis(r.try_get(17)?),
        response: r.try_get(18)?,
        error: r.try_get(19)?,
    })
}

pub(crate) const AUDIT_SELECT: &str = "SELECT id, time, vehicle_id, event, reason, actor, comment, state_from, state_to, command_id, \
     forced, fix_time, lat, lon, speed_kmh, ignition FROM audit_log";

fn audit_from_row(r: &SqliteRow) -> Result<AuditEntry, sqlx::Error> {
    let fix: Option<i64> = r.try_get(11)?;
    let position = match fix {
        Some(t) => Some(AuditPosition {
            time: from_millis(t),
            lat: r.try_get::<Option<f64>, _>(12)?.unwrap_or_default(),
            lon: r.try_get::<Option<f64>, _>(13)?.unwrap_or_default(),
            speed_kmh: r.try_get::<Option<f64>, _>(14)?.unwrap_or_default(),
            ignition: r.try_get(15)?,
        }),
        None => None,
    };
    Ok(AuditEntry {
        id: r.try_get(0)?,
        time: from_millis(r.try_get(1)?),
        vehicle_id: VehicleId(r.try_get(2)?),
        event: r.try_get(3)?,
        reason: r.try_get(4)?,
        actor: r.try_get(5)?,
        comment: r.try_get(6)?,
        state_from: r.try_get(7)?,
        state_to: r.try_get(8)?,
        command_id: r.try_get(9)?,
        forced: r.try_get(10)?,
        position,
    })
}

#[async_trait]
impl ImmobiliserStore for SqliteStore {
    async fn immobiliser_load(&self) -> Result<ImmobSnapshot, StorageError> {
        let mut vehicles: BTreeMap<String, VehicleImmobRow> = BTreeMap::new();
        let rows = sqlx::query("SELECT vehicle_id, state, since FROM immobiliser_state")
            .fetch_all(&self.writer)
            .await?;
        for r in rows {
            let id: String = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let state = ImmobState::parse(&state).ok_or_else(|| bad("state", &state))?;
            vehicles.insert(
                id.clone(),
                VehicleImmobRow {
                    vehicle_id: VehicleId(id),
                    state,
                    since: from_millis(r.try_get(2)?),
                    reasons: BTreeMap::new(),
                },
            );
        }
        let rows = sqlx::query(
            "SELECT vehicle_id, reason, since, actor, comment FROM immobiliser_reasons",
        )
        .fetch_all(&self.writer)
        .await?;
        for r in rows {
            let id: String = r.try_get(0)?;
            let reason: String = r.try_get(1)?;
            let Ok(reason) = BlockReason::parse(&reason) else {
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
            v.reasons.insert(
                reason,
                ReasonEntry {
                    since: from_millis(r.try_get(2)?),
                    actor: r.try_get(3)?,
                    comment: r.try_get(4)?,
                },
            );
        }
        let rows = sqlx::query(&format!(
            "{COMMAND_SELECT} WHERE status IN ('queued', 'sent') \
             OR (status = 'acknowledged' AND expires_at > ?) ORDER BY id"
        ))
        .bind(millis(Utc::now()))
        .fetch_all(&self.writer)
        .await?;
        let open_commands = rows
            .iter()
            .map(command_from_row)
            .collect::<Result<_, _>>()?;
        Ok(ImmobSnapshot {
            vehicles: vehicles.into_values().collect(),
            open_commands,
        })
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
            sqlx::query(
                "INSERT INTO immobiliser_state (vehicle_id, state, since, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT(vehicle_id) DO UPDATE SET state = excluded.state, since = excluded.since, \
                 updated_at = excluded.updated_at",
            )
            .bind(&v.vehicle_id.0)
            .bind(v.state.as_str())
            .bind(millis(v.since))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM immobiliser_reasons WHERE vehicle_id = ?")
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
            sqlx::query(
                "INSERT INTO immobiliser_commands (id, vehicle_id, device_id, intent, text, output, status, forced, \
                 reasons, actor, attempts, created_at, next_attempt_at, sent_at, acknowledged_at, confirmed_at, \
                 finished_at, expires_at, response, error) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, \
                 next_attempt_at = excluded.next_attempt_at, sent_at = excluded.sent_at, \
                 acknowledged_at = excluded.acknowledged_at, confirmed_at = excluded.confirmed_at, \
                 finished_at = excluded.finished_at, response = excluded.response, error = excluded.error",
            )
            .bind(c.id)
            .bind(&c.vehicle_id.0)
            .bind(c.device_id.as_ref().map(|d| d.as_str()))
            .bind(c.intent.as_str())
            .bind(&c.text)
            .bind(i64::from(c.output))
            .bind(c.status.as_str())
            .bind(c.forced)
            .bind(&c.reasons)
            .bind(&c.actor)
            .bind(i64::from(c.attempts))
            .bind(millis(c.created_at))
            .bind(millis(c.next_attempt_at))
            .bind(c.sent_at.map(millis))
            .bind(c.acknowledged_at.map(millis))
            .bind(c.confirmed_at.map(millis))
            .bind(c.finished_at.map(millis))
            .bind(millis(c.expires_at))
            .bind(&c.response)
            .bind(&c.error)
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
        let rows = sqlx::query(&format!(
            "{COMMAND_SELECT} WHERE vehicle_id = ? ORDER BY id DESC LIMIT ?"
        ))
        .bind(&vehicle.0)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .iter()
            .map(command_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn command(&self, id: i64) -> Result<Option<Command>, StorageError> {
        let row = sqlx::query(&format!("{COMMAND_SELECT} WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(command_from_row).transpose()?)
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
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }
}
