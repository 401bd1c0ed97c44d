//! [`ImmobiliserStore`] on PostgreSQL: the statements and row decoders shared with SQLite
//! (`storage::immobiliser`), native types (BOOLEAN flags, DOUBLE PRECISION coordinates). One decision is
//! one transaction, as on SQLite; a vehicle's reasons and a decision's audit records go in one
//! UNNEST statement each. Ids come from sequences (`0005_ids.sql`), so instances sharing the
//! database never collide: audit ids on insert, command ids reserved ahead by the immobiliser.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PostgresStore;
use crate::immobiliser::store::{
    AuditEntry, AuditPosition, AuditQuery, Fitting, ImmobChanges, ImmobSnapshot, ImmobiliserStore,
    VehicleImmobRow,
};
use crate::immobiliser::{BlockReason, Command, ImmobState};
use crate::model::{DeviceId, VehicleId};
use crate::storage::immobiliser::{
    audit, bind_command, command, open_commands, reason_entry, snapshot, AUDIT_SELECT,
    COMMAND_SELECT, DELETE_REASONS, REASONS, STATES, UPSERT_COMMAND, UPSERT_STATE,
};
use crate::storage::reads;
use crate::storage::sql::{unknown, Cols};
use crate::storage::{millis, StorageError, Store};

#[async_trait]
impl ImmobiliserStore for PostgresStore {
    async fn immobiliser_load(&self) -> Result<ImmobSnapshot, StorageError> {
        let states = sqlx::query(STATES).fetch_all(&self.pool).await?;
        let reasons = sqlx::query(REASONS).fetch_all(&self.pool).await?;
        let commands = sqlx::query(&open_commands())
            .bind(millis(Utc::now()))
            .fetch_all(&self.pool)
            .await?;
        Ok(snapshot(&states, &reasons, &commands)?)
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
                let state = r.text("state")?;
                Some(VehicleImmobRow {
                    vehicle_id: vehicle.clone(),
                    state: ImmobState::parse(&state).ok_or_else(|| unknown("state", &state))?,
                    since: r.time("since")?,
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
                let Ok(reason) = BlockReason::parse(&r.text("reason")?) else {
                    continue;
                };
                v.reasons.insert(reason, reason_entry(&r)?);
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
        let commands = rows.iter().map(command).collect::<Result<_, _>>()?;
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
            bind_command(sqlx::query(UPSERT_COMMAND), c)
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
        reads::commands(&self.pool, vehicle, limit).await
    }

    async fn command(&self, id: i64) -> Result<Option<Command>, StorageError> {
        reads::command(&self.pool, id).await
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
        Ok(rows.iter().map(audit).collect::<Result<_, _>>()?)
    }
}
