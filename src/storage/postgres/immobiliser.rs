//! [`ImmobiliserStore`] on PostgreSQL: the SQLite implementation's statements with `$n`
//! parameters and native types (BOOLEAN flags, DOUBLE PRECISION coordinates). One decision is
//! one transaction, as on SQLite; a vehicle's reasons and a decision's audit records go in one
//! UNNEST statement each. Ids come from sequences (`0005_ids.sql`), so instances sharing the
//! database never collide: audit ids on insert, command ids reserved ahead by the immobiliser.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::PostgresStore;
use crate::immobiliser::machine::ReasonEntry;
use crate::immobiliser::{BlockReason, Command, CommandStatus, ImmobState, Intent};
use crate::model::{DeviceId, VehicleId};
use crate::immobiliser::store::{
    AuditEntry, AuditPosition, AuditQuery, Fitting, ImmobChanges, ImmobSnapshot,
    ImmobiliserStore, VehicleImmobRow,
};
use crate::storage::immobiliser::{AUDIT_SELECT, COMMAND_SELECT};
use crate::storage::{from_millis, millis, StorageError, Store};

fn opt_time(r: &PgRow, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(i)?.map(from_millis))
}

fn bad(what: &str, v: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} '{v}'").into())
}

fn command_from_row(r: &PgRow) -> Result<Command, sqlx::Error> {
    let intent: String = r.try_get(3)?;
    let status: String = r.try_get(6)?;
    Ok(Command {
        id: r.try_get(0)?,
        vehicle_id: VehicleId(r.try_get(1)?),
        device_id: r.try_get::<Option<String>, _>(2)?.map(DeviceId),
        intent: Intent::parse(&intent).ok_or_else(|| bad("intent", &intent))?,
        text: r.try_get(4)?,
        output: r.try_get::<i32, _>(5)?.clamp(1, 32) as u8,
        status: CommandStatus::parse(&status).ok_or_else(|| bad("status", &status))?,
        forced: r.try_get(7)?,
        reasons: r.try_get(8)?,
        actor: r.try_get(9)?,
        attempts: r.try_get::<i64, _>(10)?.clamp(0, i64::from(u32::MAX)) as u32,
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

fn audit_from_row(r: &PgRow) -> Result<AuditEntry, sqlx::Error> {
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
impl ImmobiliserStore for PostgresStore {
    async fn immobiliser_load(&self) -> Result<ImmobSnapshot, StorageError> {
        let mut vehicles: BTreeMap<String, VehicleImmobRow> = BTreeMap::new();
        let rows = sqlx::query("SELECT vehicle_id, state, since FROM immobiliser_state")
            .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
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
             OR (status = 'acknowledged' AND expires_at > $1) ORDER BY id"
        ))
        .bind(millis(Utc::now()))
        .fetch_all(&self.pool)
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

    async fn immobiliser_vehicle(
        &self,
        vehicle: &VehicleId,
    ) -> Result<(Option<VehicleImmobRow>, Vec<Command>), StorageError> {
        let state = sqlx::query("SELECT state, since FROM immobiliser_state WHERE vehicle_id = $1")
            .bind(&vehicle.0)
            .fetch_optional(&self.pool)
            .await?;
        let reasons = sqlx::query(
            "SELECT reason, since, actor, comment FROM immobiliser_reasons WHERE vehicle_id = $1",
        )
        .bind(&vehicle.0)
        .fetch_all(&self.pool)
        .await?;
        let mut row = match state {
            Some(r) => {
                let state: String = r.try_get(0)?;
                Some(VehicleImmobRow {
                    vehicle_id: vehicle.clone(),
                    state: ImmobState::parse(&state).ok_or_else(|| bad("state", &state))?,
                    since: from_millis(r.try_get(1)?),
                    reasons: BTreeMap::new(),
                })
            }
            None if reasons.is_empty() => None,
            None => Some(VehicleImmobRow {
                vehicle_id: vehicle.clone(),
                state: ImmobState::Running,
                since: DateTime::<Utc>::default(),
                reasons: BTreeMap::new(),
            }),
        };
        if let Some(v) = row.as_mut() {
            for r in reasons {
                let reason: String = r.try_get(0)?;
                let Ok(reason) = BlockReason::parse(&reason) else {
                    continue;
                };
                v.reasons.insert(
                    reason,
                    ReasonEntry {
                        since: from_millis(r.try_get(1)?),
                        actor: r.try_get(2)?,
                        comment: r.try_get(3)?,
                    },
                );
            }
        }
        let rows = sqlx::query(&format!(
            "{COMMAND_SELECT} WHERE vehicle_id = $1 AND (status IN ('queued', 'sent') \
             OR (status = 'acknowledged' AND expires_at > $2)) ORDER BY id"
        ))
        .bind(&vehicle.0)
        .bind(millis(Utc::now()))
        .fetch_all(&self.pool)
        .await?;
        let commands = rows
            .iter()
            .map(command_from_row)
            .collect::<Result<_, _>>()?;
        Ok((row, commands))
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
        Ok(sqlx::query_scalar(
            "SELECT nextval('immobiliser_command_ids') FROM generate_series(1, $1)",
        )
        .bind(i32::try_from(n.max(1)).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn immobiliser_apply(&self, ch: &ImmobChanges) -> Result<(), StorageError> {
        if ch.is_empty() {
            return Ok(());
        }
        let now = millis(Utc::now());
        let mut tx = self.pool.begin().await?;
        for v in &ch.vehicles {
            sqlx::query(
                "INSERT INTO immobiliser_state (vehicle_id, state, since, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (vehicle_id) DO UPDATE SET state = excluded.state, since = excluded.since, \
                 updated_at = excluded.updated_at",
            )
            .bind(&v.vehicle_id.0)
            .bind(v.state.as_str())
            .bind(millis(v.since))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM immobiliser_reasons WHERE vehicle_id = $1")
                .bind(&v.vehicle_id.0)
                .execute(&mut *tx)
                .await?;
            if !v.reasons.is_empty() {
                let reasons = &v.reasons;
                sqlx::query(
                    "INSERT INTO immobiliser_reasons (vehicle_id, reason, since, actor, comment) \
                     SELECT $1, r, s, a, c FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[]) \
                     AS t(r, s, a, c)",
                )
                .bind(&v.vehicle_id.0)
                .bind(reasons.keys().map(|r| r.as_str()).collect::<Vec<_>>())
                .bind(reasons.values().map(|e| millis(e.since)).collect::<Vec<_>>())
                .bind(reasons.values().map(|e| e.actor.as_str()).collect::<Vec<_>>())
                .bind(
                    reasons
                        .values()
                        .map(|e| e.comment.as_deref())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        // One statement per command, in order, as on SQLite: should a decision carry the same
        // id twice, the last version wins (one UNNEST upsert would fail on it instead).
        for c in &ch.commands {
            sqlx::query(
                "INSERT INTO immobiliser_commands (id, vehicle_id, device_id, intent, text, output, status, forced, \
                 reasons, actor, attempts, created_at, next_attempt_at, sent_at, acknowledged_at, confirmed_at, \
                 finished_at, expires_at, response, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, \
                 next_attempt_at = excluded.next_attempt_at, sent_at = excluded.sent_at, \
                 acknowledged_at = excluded.acknowledged_at, confirmed_at = excluded.confirmed_at, \
                 finished_at = excluded.finished_at, response = excluded.response, error = excluded.error",
            )
            .bind(c.id)
            .bind(&c.vehicle_id.0)
            .bind(c.device_id.as_ref().map(|d| d.as_str()))
            .bind(c.intent.as_str())
            .bind(&c.text)
            .bind(i32::from(c.output))
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
        if !ch.audit.is_empty() {
            // Ids from the sequence, in the order given (WITH ORDINALITY).
            let a = &ch.audit;
            let pos = |f: fn(&AuditPosition) -> Option<f64>| -> Vec<Option<f64>> {
                a.iter().map(|e| e.position.as_ref().and_then(f)).collect()
            };
            sqlx::query(
                "INSERT INTO audit_log (time, vehicle_id, event, reason, actor, comment, state_from, state_to, \
                 command_id, forced, fix_time, lat, lon, speed_kmh, ignition) \
                 SELECT t, v, e, r, a, c, sf, st, ci, f, ft, la, lo, sp, ig FROM UNNEST($1::int8[], \
                 $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                 $9::int8[], $10::bool[], $11::int8[], $12::float8[], $13::float8[], $14::float8[], \
                 $15::bool[]) WITH ORDINALITY AS u(t, v, e, r, a, c, sf, st, ci, f, ft, la, lo, sp, ig, n) \
                 ORDER BY n",
            )
            .bind(a.iter().map(|e| millis(e.time)).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.vehicle_id.0.as_str()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.event.as_str()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.reason.as_deref()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.comment.as_deref()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.state_from.as_deref()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.state_to.as_deref()).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.command_id).collect::<Vec<_>>())
            .bind(a.iter().map(|e| e.forced).collect::<Vec<_>>())
            .bind(
                a.iter()
                    .map(|e| e.position.as_ref().map(|p| millis(p.time)))
                    .collect::<Vec<_>>(),
            )
            .bind(pos(|p| Some(p.lat)))
            .bind(pos(|p| Some(p.lon)))
            .bind(pos(|p| Some(p.speed_kmh)))
            .bind(
                a.iter()
                    .map(|e| e.position.as_ref().and_then(|p| p.ignition))
                    .collect::<Vec<_>>(),
            )
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
            "{COMMAND_SELECT} WHERE vehicle_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(&vehicle.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(command_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn command(&self, id: i64) -> Result<Option<Command>, StorageError> {
        let row = sqlx::query(&format!("{COMMAND_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(command_from_row).transpose()?)
    }

    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(AUDIT_SELECT);
        b.push(" WHERE time >= ")
            .push_bind(millis(q.from))
            .push(" AND time < ")
            .push_bind(millis(q.to));
        if let Some(v) = &q.vehicle {
            b.push(" AND vehicle_id = ").push_bind(v.0.clone());
        }
        b.push(" ORDER BY time, id LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = b.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }
}
