//! The archive on PostgreSQL: `position_chunks` is partitioned by UTC day (`partitions.rs`):
//! the group commit adds one small chunk per packet and day (`kind` 1), compaction merges a
//! device-day into one (`kind` 0). `positions` (hot rows, partitioned by day too) holds what
//! versions before 0011 wrote; a database made before migration 0010 keeps its rows in
//! `positions_legacy` until they are packed ([`Layout`]). Reads include both meanwhile.
//! Compaction of one device-day is one transaction under an advisory lock on that device-day
//! (the daemon and `fleetgate storage compact` may meet there); it deletes exactly the chunks
//! (by `id`) and rows (by fix time) it read, so whatever a group commit adds meanwhile stays.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::partitions::{self, Parent};
use super::PostgresStore;
use crate::archive::store::{
    ArchiveStore, Compacted, DailySummary, Day, DeviceDay, Expiring, PartitionStats, Tier,
};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StoredPosition, TrackColumns, TrackPoint};
use crate::storage::archive::{
    self as shared, merge, Layout, CHUNK_FORMAT, KIND_COMMIT, KIND_PACKED,
};
use crate::storage::reads;
use crate::storage::sql::{self, Dialect};
use crate::storage::{millis, StorageError};

const SQL: Dialect = Dialect::Postgres;
const LEGACY: &str = "positions_legacy";
/// Legacy rows deleted per statement by expiry.
const EXPIRE_BATCH: i64 = 10_000;

/// `positions_legacy` is gone (dropped by a migration in another process).
pub(super) fn undefined_table(e: &StorageError) -> bool {
    matches!(e, StorageError::Db(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42P01"))
}

/// The chunks of `device` overlapping `[from, to)`, in day order and, within a day, in the
/// order of storage; with their kind.
async fn chunks(
    pool: &PgPool,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DeviceDay, i64, Vec<u8>)>, StorageError> {
    let (first, last) = shared::days_of(from, to);
    let rows: Vec<(i32, i16, Vec<u8>)> = sqlx::query_as(
        "SELECT day, kind, data FROM position_chunks WHERE device_id = $1 AND day >= $2 \
         AND day <= $3 AND first_ms < $4 AND last_ms >= $5 ORDER BY day, kind, id",
    )
    .bind(device.as_str())
    .bind(first.0)
    .bind(last.0)
    .bind(millis(to))
    .bind(millis(from))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(day, kind, data)| {
            (
                DeviceDay {
                    device: device.clone(),
                    day: Day(day),
                },
                i64::from(kind),
                data,
            )
        })
        .collect())
}

impl PostgresStore {
    /// Run `read` on the legacy table while there is one; a legacy table dropped meanwhile
    /// reads as empty from then on.
    async fn read_legacy<T, F, Fut>(&self, read: F) -> Result<Vec<T>, StorageError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, StorageError>>,
    {
        if !self.legacy.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        match read().await {
            Err(e) if undefined_table(&e) => {
                self.legacy.store(false, Ordering::Relaxed);
                Ok(Vec::new())
            }
            r => r,
        }
    }

    pub(super) async fn track_tiers(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
        cols: TrackColumns,
    ) -> Result<Vec<StoredPosition>, StorageError> {
        let packed = chunks(&self.pool, device, from, to).await?;
        let range = (from, to, limit);
        let legacy = self
            .read_legacy(|| reads::track_in(&self.pool, SQL, LEGACY, device, range, cols))
            .await?;
        let hot = reads::track_in(&self.pool, SQL, shared::HOT, device, range, cols).await?;
        if packed.is_empty() && legacy.is_empty() {
            return Ok(hot);
        }
        let (rows, _) = merge(legacy, hot);
        let (points, fresh) =
            shared::decode_kinds(&packed, |data, dd| shared::decode(data, dd, cols))?;
        Ok(shared::track_of(points, rows, fresh, from, to, limit))
    }

    pub(super) async fn track_points_tiers(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TrackPoint>, StorageError> {
        let packed = chunks(&self.pool, device, from, to).await?;
        let legacy = self
            .read_legacy(|| reads::track_points_in(&self.pool, LEGACY, device, from, to, limit))
            .await?;
        let hot = reads::track_points(&self.pool, device, from, to, limit).await?;
        if packed.is_empty() && legacy.is_empty() {
            return Ok(hot);
        }
        let (rows, _) = merge(legacy, hot);
        let (points, fresh) = shared::decode_kinds(&packed, shared::decode_points)?;
        Ok(shared::track_of(points, rows, fresh, from, to, limit))
    }

    /// Distinct devices of `t` by a loose index scan of its primary key.
    async fn devices_in(&self, t: &str) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(&format!(
            "WITH RECURSIVE d(id) AS (SELECT MIN(device_id) FROM {t} UNION ALL \
             SELECT (SELECT MIN(device_id) FROM {t} WHERE device_id > d.id) FROM d \
             WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Devices of chunk partition `t` with a chunk of the group commit: a loose index scan,
    /// one probe per device (a packed device-day has one chunk).
    async fn commit_chunk_devices(&self, t: &str) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(&format!(
            "WITH RECURSIVE d(id) AS (SELECT MIN(device_id) FROM {t} UNION ALL \
             SELECT (SELECT MIN(device_id) FROM {t} WHERE device_id > d.id) FROM d \
             WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL AND EXISTS \
             (SELECT 1 FROM {t} WHERE device_id = d.id AND kind = {KIND_COMMIT})"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn compact_once(&self, dd: &DeviceDay) -> Result<Compacted, StorageError> {
        let legacy = self.legacy.load(Ordering::Relaxed);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), $2)")
            .bind(dd.device.as_str())
            .bind(dd.day.0)
            .execute(&mut *tx)
            .await?;
        let blobs: Vec<(i64, i16, Vec<u8>)> = sqlx::query_as(
            "SELECT id, kind, data FROM position_chunks WHERE device_id = $1 AND day = $2 \
             ORDER BY kind, id",
        )
        .bind(dd.device.as_str())
        .bind(dd.day.0)
        .fetch_all(&mut *tx)
        .await?;
        let (mut packed, mut fresh) = (Vec::new(), Vec::new());
        let mut packed_chunks = 0;
        for (_, kind, b) in &blobs {
            if i64::from(*kind) == KIND_PACKED {
                packed_chunks += 1;
                packed.extend(shared::decode(b, dd, TrackColumns::All)?);
            } else {
                fresh.extend(shared::decode(b, dd, TrackColumns::All)?);
            }
        }
        let old = if legacy {
            rows_of(&mut tx, LEGACY, dd).await?
        } else {
            Vec::new()
        };
        let hot = rows_of(&mut tx, "positions", dd).await?;
        if old.is_empty() && hot.is_empty() && fresh.is_empty() && packed_chunks <= 1 {
            return Ok(Compacted {
                positions: packed,
                ..Default::default()
            });
        }
        let old_times: Vec<i64> = old.iter().map(|p| millis(p.time)).collect();
        let hot_times: Vec<i64> = hot.iter().map(|p| millis(p.time)).collect();
        let moved = (old.len() + hot.len() + fresh.len()) as u64;
        let (rows, d1) = merge(old, hot);
        let (positions, d2) = shared::merge_tiers(packed, rows, fresh);
        let data = crate::storage::chunk::encode(&positions);
        let ids: Vec<i64> = blobs.iter().map(|b| b.0).collect();
        sqlx::query(
            "DELETE FROM position_chunks WHERE device_id = $1 AND day = $2 AND id = ANY($3)",
        )
        .bind(dd.device.as_str())
        .bind(dd.day.0)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        if let (Some(first), Some(last)) = (positions.first(), positions.last()) {
            sqlx::query(
                "INSERT INTO position_chunks (device_id, day, first_ms, last_ms, n, format, \
                 kind, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(dd.device.as_str())
            .bind(dd.day.0)
            .bind(millis(first.time))
            .bind(millis(last.time))
            .bind(positions.len() as i32)
            .bind(CHUNK_FORMAT as i16)
            .bind(KIND_PACKED as i16)
            .bind(&data)
            .execute(&mut *tx)
            .await?;
        }
        for (t, times) in [(LEGACY, &old_times), ("positions", &hot_times)] {
            if times.is_empty() {
                continue;
            }
            sqlx::query(&format!(
                "DELETE FROM {t} WHERE device_id = $1 AND fix_time >= $2 AND fix_time < $3 \
                 AND fix_time = ANY($4)"
            ))
            .bind(dd.device.as_str())
            .bind(dd.day.start_ms())
            .bind(dd.day.end_ms())
            .bind(times)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Compacted {
            positions,
            packed: moved,
            duplicates: d1 + d2,
            bytes: data.len() as u64,
        })
    }

    async fn meta(&self, key: &str) -> Result<Option<i64>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM archive_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

async fn rows_of(
    tx: &mut Transaction<'_, Postgres>,
    t: &str,
    dd: &DeviceDay,
) -> Result<Vec<StoredPosition>, StorageError> {
    let q = format!(
        "SELECT {} FROM {t} WHERE device_id = $1 AND fix_time >= $2 AND fix_time < $3 \
         ORDER BY fix_time",
        sql::position_columns(SQL, TrackColumns::All)
    );
    let rows = sqlx::query(&q)
        .bind(dd.device.as_str())
        .bind(dd.day.start_ms())
        .bind(dd.day.end_ms())
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.iter().map(sql::position).collect::<Result<_, _>>()?)
}

#[async_trait]
impl ArchiveStore for PostgresStore {
    /// Chunk partitions only: the group commit no longer writes hot rows (the hot partitions
    /// of an older version are read and drained as they are).
    async fn ensure_partitions(&self, from: Day, to: Day) -> Result<(), StorageError> {
        let days: Vec<Day> = (from.0..=to.0).map(Day).collect();
        self.parts.ensure(&self.pool, Parent::Chunks, days).await
    }

    /// Device-days with hot rows or with chunks of the group commit.
    async fn unpacked_days(&self, before: Day, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        let mut out = Vec::new();
        let mut parts: Vec<(Day, String, bool)> = partitions::list(&self.pool, Parent::Hot)
            .await?
            .into_iter()
            .map(|(d, t, a)| (d, t, a, false))
            .chain(
                partitions::list(&self.pool, Parent::Chunks)
                    .await?
                    .into_iter()
                    .map(|(d, t, a)| (d, t, a, true)),
            )
            .filter(|p| p.0 < before && p.2)
            .map(|(d, t, _, chunks)| (d, t, chunks))
            .collect();
        parts.sort_by_key(|p| p.0);
        for (day, t, chunks) in parts {
            if out.len() >= limit as usize && out.last().is_some_and(|l: &DeviceDay| l.day < day) {
                break;
            }
            let devices = if chunks {
                self.commit_chunk_devices(&t).await?
            } else {
                self.devices_in(&t).await?
            };
            out.extend(devices.into_iter().map(|dev| DeviceDay {
                device: DeviceId(dev),
                day,
            }));
        }
        out.sort_by(|a, b| (a.day, &a.device).cmp(&(b.day, &b.device)));
        out.dedup();
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn compact_day(&self, dd: &DeviceDay) -> Result<Compacted, StorageError> {
        self.parts
            .ensure(&self.pool, Parent::Chunks, [dd.day])
            .await?;
        let c = match self.compact_once(dd).await {
            Err(e) if undefined_table(&e) => {
                self.legacy.store(false, Ordering::Relaxed);
                self.compact_once(dd).await
            }
            Err(StorageError::Db(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("23514") =>
            {
                // The chunk partition was dropped under the cache (expiry elsewhere).
                self.parts.forget();
                self.parts
                    .ensure(&self.pool, Parent::Chunks, [dd.day])
                    .await?;
                self.compact_once(dd).await
            }
            r => r,
        }?;
        metrics::counter!("fleetgate_storage_compacted_positions_total").increment(c.packed);
        Ok(c)
    }

    async fn expire_days(&self, before: Day) -> Result<Vec<Day>, StorageError> {
        sqlx::query(
            "INSERT INTO archive_meta (key, value) VALUES ('retained_from', $1) \
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(archive_meta.value, excluded.value)",
        )
        .bind(i64::from(before.0))
        .execute(&self.pool)
        .await?;
        let mut days = std::collections::BTreeSet::new();
        for parent in [Parent::Hot, Parent::Chunks] {
            for (day, t, attached) in partitions::list(&self.pool, parent).await? {
                if day < before {
                    partitions::drop_partition(&self.pool, parent, &t, attached).await?;
                    days.insert(day);
                }
            }
        }
        self.parts.forget();
        let legacy: Vec<i64> = self
            .read_legacy(|| async {
                let mut gone = Vec::new();
                loop {
                    let v: Vec<i64> = sqlx::query_scalar(
                        "DELETE FROM positions_legacy WHERE ctid IN (SELECT ctid FROM \
                         positions_legacy WHERE fix_time < $1 LIMIT $2) RETURNING fix_time",
                    )
                    .bind(before.start_ms())
                    .bind(EXPIRE_BATCH)
                    .fetch_all(&self.pool)
                    .await?;
                    let n = v.len() as i64;
                    gone.extend(v);
                    if n < EXPIRE_BATCH {
                        return Ok(gone);
                    }
                }
            })
            .await?;
        days.extend(legacy.into_iter().map(Day::of_ms));
        Ok(days.into_iter().collect())
    }

    async fn retained_from(&self) -> Result<Option<Day>, StorageError> {
        let watermark = self.meta("retained_from").await?;
        let mut oldest: Option<Day> = None;
        for parent in [Parent::Hot, Parent::Chunks] {
            if let Some((d, _, _)) = partitions::list(&self.pool, parent).await?.first() {
                oldest = Some(oldest.map_or(*d, |o| o.min(*d)));
            }
        }
        let legacy = self
            .read_legacy(|| async {
                let v: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(fix_time) FROM positions_legacy")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(v.into_iter().collect())
            })
            .await?;
        if let Some(ms) = legacy.first() {
            let d = Day::of_ms(*ms);
            oldest = Some(oldest.map_or(d, |o| o.min(d)));
        }
        Ok(shared::retained_from(watermark, oldest))
    }

    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StorageError> {
        let mut out = Vec::new();
        for (day, t, attached) in partitions::list(&self.pool, Parent::Hot).await? {
            if !attached {
                continue;
            }
            let (n, bytes): (i64, i64) = sqlx::query_as(&format!(
                "SELECT COUNT(*)::int8, pg_total_relation_size('{t}'::regclass) FROM {t}"
            ))
            .fetch_one(&self.pool)
            .await?;
            out.push(PartitionStats {
                day,
                tier: Tier::Hot,
                table: t,
                positions: n as u64,
                bytes: bytes as u64,
            });
        }
        for (day, t, attached) in partitions::list(&self.pool, Parent::Chunks).await? {
            if !attached {
                continue;
            }
            let kinds: Vec<(i64, i64, i64)> = sqlx::query_as(&format!(
                "SELECT kind::int8, SUM(n)::int8, SUM(pg_column_size(data))::int8 FROM {t} \
                 GROUP BY kind"
            ))
            .fetch_all(&self.pool)
            .await?;
            let bytes: i64 =
                sqlx::query_scalar(&format!("SELECT pg_total_relation_size('{t}'::regclass)"))
                    .fetch_one(&self.pool)
                    .await?;
            out.extend(shared::kind_stats(day, &t, &kinds, bytes.max(0) as u64));
        }
        let legacy = self
            .read_legacy(|| async {
                let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
                    "SELECT floor(fix_time / 86400000.0)::int8, COUNT(*)::int8, \
                     pg_total_relation_size('positions_legacy'::regclass) \
                     FROM positions_legacy GROUP BY 1 ORDER BY 1",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            })
            .await?;
        let total: i64 = legacy.iter().map(|r| r.1).sum();
        for (day, n, bytes) in legacy {
            out.push(PartitionStats {
                day: Day(day as i32),
                tier: Tier::Hot,
                table: LEGACY.into(),
                positions: n as u64,
                // One table for every legacy day: its size shared out by rows.
                bytes: (bytes as f64 * n as f64 / total.max(1) as f64).round() as u64,
            });
        }
        out.sort_by(|a, b| {
            (a.day, a.tier.as_str(), &a.table).cmp(&(b.day, b.tier.as_str(), &b.table))
        });
        Ok(out)
    }

    async fn expire_rows(
        &self,
        t: Expiring,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StorageError> {
        shared::expire_rows_in(&self.pool, t, before, batch).await
    }

    async fn put_summaries(&self, rows: &[DailySummary]) -> Result<(), StorageError> {
        shared::put_summaries_in(&self.pool, rows).await
    }

    async fn summaries(
        &self,
        vehicle: &VehicleId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailySummary>, StorageError> {
        shared::summaries_in(&self.pool, vehicle, from, to).await
    }
}

#[async_trait]
impl Layout for PostgresStore {
    async fn old_layout(&self) -> Result<bool, StorageError> {
        let there: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('positions_legacy')::text")
                .fetch_one(&self.pool)
                .await?;
        self.legacy.store(there.is_some(), Ordering::Relaxed);
        Ok(there.is_some())
    }

    /// Each device's oldest legacy day (the next call finds the next one).
    async fn old_days(&self, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        let devices = self.read_legacy(|| self.devices_in(LEGACY)).await?;
        let mut out = Vec::new();
        for dev in devices {
            let first: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(fix_time) FROM positions_legacy WHERE device_id = $1",
            )
            .bind(&dev)
            .fetch_one(&self.pool)
            .await?;
            if let Some(ms) = first {
                out.push(DeviceDay {
                    device: DeviceId(dev),
                    day: Day::of_ms(ms),
                });
            }
        }
        out.sort_by_key(|dd| (dd.day, dd.device.clone()));
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn finish_migration(&self) -> Result<(), StorageError> {
        if self.old_layout().await? {
            let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM positions_legacy)")
                .fetch_one(&self.pool)
                .await?;
            if !left {
                sqlx::query("DROP TABLE IF EXISTS positions_legacy")
                    .execute(&self.pool)
                    .await?;
                self.legacy.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
