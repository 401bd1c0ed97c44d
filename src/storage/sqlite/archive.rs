//! The archive on SQLite: chunks live in one table per day (`position_chunks_dYYYYMMDD`,
//! created by the day's first group commit or compaction), so expiring a day is a
//! `DROP TABLE`. The group commit adds one small chunk per packet and day (`kind` 1);
//! compaction merges a device-day into one chunk (`kind` 0). The `positions` table holds the
//! rows written by versions before that (read, then drained by compaction). Writes (compaction, expiry) go through the
//! writer connection, each in a short `BEGIN IMMEDIATE` transaction driven through rusqlite as
//! the group commit is, so they queue with the commits instead of failing beside them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use sqlx::SqlitePool;

use super::{blocking, SqliteStore};
use crate::archive::store::{
    ArchiveStore, Compacted, DailySummary, Day, DeviceDay, Expiring, PartitionStats, Tier,
};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{AttrsJson, StoredPosition, TrackColumns, TrackPoint};
use crate::storage::archive::{
    self as shared, day_of_table, table, Layout, CHUNKS, CHUNK_FORMAT, HOT, KIND_COMMIT,
    KIND_PACKED,
};
use crate::storage::sql::{self, Dialect};
use crate::storage::{from_millis, millis, StorageError};

/// Hot rows deleted per transaction by expiry.
const EXPIRE_BATCH: i64 = 5_000;

/// A day's chunk table: `kind` ([`KIND_PACKED`], [`KIND_COMMIT`]) and the rowid are the order
/// of storage that reads and compaction honour (a new rowid is always above every rowid in
/// the table); the index finds a device's chunks by time.
pub(super) fn create_chunks(t: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (device_id TEXT NOT NULL, first_ms INTEGER NOT NULL, \
         last_ms INTEGER NOT NULL, n INTEGER NOT NULL, format INTEGER NOT NULL, \
         kind INTEGER NOT NULL, data BLOB NOT NULL); \
         CREATE INDEX IF NOT EXISTS {t}_device ON {t} (device_id, first_ms)"
    )
}

/// Rebuild the day tables made before the group commit wrote chunks (primary key
/// `(device_id, first_ms)`, no `kind`): two small chunks of one device may start at the same
/// fix time now. Their chunks were all made by compaction, so they become [`KIND_PACKED`]. One
/// transaction per table; run at open.
pub(super) async fn upgrade_chunk_tables(writer: &SqlitePool) -> Result<(), StorageError> {
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT m.name FROM sqlite_master m WHERE m.type = 'table' \
         AND m.name LIKE 'position\\_chunks\\_d%' ESCAPE '\\' \
         AND NOT EXISTS (SELECT 1 FROM pragma_table_info(m.name) WHERE name = 'kind')",
    )
    .fetch_all(writer)
    .await?;
    for t in old {
        if day_of_table(CHUNKS, &t).is_none() {
            continue;
        }
        let mut tx = writer.begin().await?;
        sqlx::raw_sql(&format!(
            "ALTER TABLE {t} RENAME TO {t}_old; {} ; \
             INSERT INTO {t} (device_id, first_ms, last_ms, n, format, kind, data) \
             SELECT device_id, first_ms, last_ms, n, format, {KIND_PACKED}, data FROM {t}_old \
             ORDER BY device_id, first_ms; DROP TABLE {t}_old",
            create_chunks(&t)
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            table = t,
            "storage: chunk table upgraded to the small-chunk layout"
        );
    }
    Ok(())
}

/// The day tables of chunks, oldest first.
async fn chunk_tables(
    pool: &SqlitePool,
    from: Day,
    to: Day,
) -> Result<Vec<(Day, String)>, StorageError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name >= $1 AND name <= $2 \
         ORDER BY name",
    )
    .bind(table(CHUNKS, from))
    .bind(table(CHUNKS, to))
    .fetch_all(pool)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|n| day_of_table(CHUNKS, &n).map(|d| (d, n)))
        .collect())
}

fn no_such_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.message().contains("no such table"))
}

/// The chunks of `device` overlapping `[from, to)`, in day order and, within a day, in the
/// order of storage; with their kind.
async fn chunks(
    pool: &SqlitePool,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DeviceDay, i64, Vec<u8>)>, StorageError> {
    let (first, last) = shared::days_of(from, to);
    let mut out = Vec::new();
    for (day, t) in chunk_tables(pool, first, last).await? {
        let q = format!(
            "SELECT kind, data FROM {t} WHERE device_id = $1 AND first_ms < $2 AND last_ms >= $3 \
             ORDER BY kind, rowid"
        );
        let rows: Result<Vec<(i64, Vec<u8>)>, _> = sqlx::query_as(&q)
            .bind(device.as_str())
            .bind(millis(to))
            .bind(millis(from))
            .fetch_all(pool)
            .await;
        match rows {
            Ok(rows) => out.extend(rows.into_iter().map(|(kind, d)| {
                (
                    DeviceDay {
                        device: device.clone(),
                        day,
                    },
                    kind,
                    d,
                )
            })),
            // Expired between the listing and the read.
            Err(e) if no_such_table(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

pub(super) async fn track(
    s: &SqliteStore,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
    cols: TrackColumns,
) -> Result<Vec<StoredPosition>, StorageError> {
    let packed = chunks(&s.reader, device, from, to).await?;
    let rows = crate::storage::reads::track_in(
        &s.reader,
        Dialect::Sqlite,
        shared::HOT,
        device,
        (from, to, limit),
        cols,
    )
    .await?;
    if packed.is_empty() {
        return Ok(rows);
    }
    let (points, fresh) = shared::decode_kinds(&packed, |data, dd| shared::decode(data, dd, cols))?;
    Ok(shared::track_of(points, rows, fresh, from, to, limit))
}

pub(super) async fn track_points(
    s: &SqliteStore,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<TrackPoint>, StorageError> {
    let packed = chunks(&s.reader, device, from, to).await?;
    let rows = crate::storage::reads::track_points(&s.reader, device, from, to, limit).await?;
    if packed.is_empty() {
        return Ok(rows);
    }
    let (points, fresh) = shared::decode_kinds(&packed, shared::decode_points)?;
    Ok(shared::track_of(points, rows, fresh, from, to, limit))
}

impl SqliteStore {
    /// Run `f` inside one `BEGIN IMMEDIATE` transaction on the writer connection.
    async fn write_tx<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut conn = self.writer.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        // SAFETY: sqlx's lock on the connection is held until `handle` drops, after this.
        blocking(|| unsafe { super::batch::in_tx(db, f) })
    }

    /// Device-days with hot rows before `before`: the devices by a loose index scan of the
    /// primary key, then each one's days by seeks (no index on fix time alone: it would cost
    /// the group commit a second B-tree insert per position).
    async fn hot_days(&self, before: Day, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        let devices: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE d(id) AS (SELECT MIN(device_id) FROM positions UNION ALL \
             SELECT (SELECT MIN(device_id) FROM positions WHERE device_id > d.id) FROM d \
             WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::new();
        for dev in devices {
            let mut cursor = i64::MIN;
            for _ in 0..limit {
                let next: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(fix_time) FROM positions WHERE device_id = $1 AND fix_time >= $2 \
                     AND fix_time < $3",
                )
                .bind(&dev)
                .bind(cursor)
                .bind(before.start_ms())
                .fetch_one(&self.reader)
                .await?;
                let Some(ms) = next else { break };
                let day = Day::of_ms(ms);
                out.push(DeviceDay {
                    device: DeviceId(dev.clone()),
                    day,
                });
                cursor = day.end_ms();
            }
        }
        out.sort_by_key(|dd| (dd.day, dd.device.clone()));
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn meta(&self, key: &str) -> Result<Option<i64>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM archive_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.reader)
                .await?,
        )
    }
}

fn stored_position(r: &Row<'_>) -> rusqlite::Result<StoredPosition> {
    let attributes: Option<String> = r.get(17)?;
    Ok(StoredPosition {
        time: from_millis(r.get(0)?),
        server_time: from_millis(r.get(1)?),
        valid: r.get(2)?,
        lat: r.get(3)?,
        lon: r.get(4)?,
        speed_kmh: r.get(5)?,
        course: r.get(6)?,
        altitude: r.get(7)?,
        satellites: r.get::<_, Option<i64>>(8)?.map(|v| v as u16),
        ignition: r.get(9)?,
        motion: r.get(10)?,
        odometer_m: r.get(11)?,
        gps_odometer_m: r.get(12)?,
        inputs: r.get::<_, Option<i64>>(13)?.map(|v| v as u32),
        outputs: r.get::<_, Option<i64>>(14)?.map(|v| v as u32),
        power_v: r.get(15)?,
        alarm: r.get(16)?,
        attributes: AttrsJson::from_stored(attributes.as_deref()),
    })
}

fn table_exists(conn: &Connection, t: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [t],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// [`ArchiveStore::compact_day`] inside the writer's transaction: nobody else writes meanwhile,
/// so the chunks and hot rows deleted are exactly the ones read.
fn compact(conn: &Connection, dd: &DeviceDay) -> Result<Compacted, StorageError> {
    let t = table(CHUNKS, dd.day);
    let dev = dd.device.as_str();
    let (mut packed, mut fresh) = (Vec::new(), Vec::new());
    let mut packed_chunks = 0;
    if table_exists(conn, &t)? {
        let mut q = conn.prepare(&format!(
            "SELECT kind, data FROM {t} WHERE device_id = ?1 ORDER BY kind, rowid"
        ))?;
        let blobs = q
            .query_map([dev], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (kind, b) in &blobs {
            if *kind == KIND_PACKED {
                packed_chunks += 1;
                packed.extend(shared::decode(b, dd, TrackColumns::All)?);
            } else {
                fresh.extend(shared::decode(b, dd, TrackColumns::All)?);
            }
        }
    }
    let cols = sql::position_columns(Dialect::Sqlite, TrackColumns::All);
    let mut q = conn.prepare(&format!(
        "SELECT {cols} FROM positions WHERE device_id = ?1 AND fix_time >= ?2 AND fix_time < ?3 \
         ORDER BY fix_time"
    ))?;
    let hot = q
        .query_map(
            params![dev, dd.day.start_ms(), dd.day.end_ms()],
            stored_position,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if hot.is_empty() && fresh.is_empty() && packed_chunks <= 1 {
        return Ok(Compacted {
            positions: packed,
            ..Default::default()
        });
    }
    let moved = (hot.len() + fresh.len()) as u64;
    let (positions, duplicates) = shared::merge_tiers(packed, hot, fresh);
    let data = crate::storage::chunk::encode(&positions);
    conn.execute_batch(&create_chunks(&t))?;
    conn.execute(&format!("DELETE FROM {t} WHERE device_id = ?1"), [dev])?;
    if let (Some(first), Some(last)) = (positions.first(), positions.last()) {
        conn.execute(
            &format!(
                "INSERT INTO {t} (device_id, first_ms, last_ms, n, format, kind, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                dev,
                millis(first.time),
                millis(last.time),
                positions.len() as i64,
                CHUNK_FORMAT,
                KIND_PACKED,
                data
            ],
        )?;
    }
    conn.execute(
        "DELETE FROM positions WHERE device_id = ?1 AND fix_time >= ?2 AND fix_time < ?3",
        params![dev, dd.day.start_ms(), dd.day.end_ms()],
    )?;
    Ok(Compacted {
        positions,
        packed: moved,
        duplicates,
        bytes: data.len() as u64,
    })
}

fn raise_watermark(conn: &Connection, before: Day) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO archive_meta (key, value) VALUES ('retained_from', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
        [i64::from(before.0)],
    )?;
    Ok(())
}

#[async_trait]
impl ArchiveStore for SqliteStore {
    /// Nothing to create ahead: a day's chunk table appears with its first compaction.
    async fn ensure_partitions(&self, _from: Day, _to: Day) -> Result<(), StorageError> {
        Ok(())
    }

    /// Device-days with hot rows or with chunks of the group commit.
    async fn unpacked_days(&self, before: Day, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        let mut out = self.hot_days(before, limit).await?;
        for (day, t) in chunk_tables(&self.reader, Day(i32::MIN), Day(before.0 - 1)).await? {
            if out.len() >= limit as usize && out.last().is_some_and(|l| l.day < day) {
                break;
            }
            // Each device by a loose scan of the index; one probe tells whether it has a
            // commit chunk (a packed device-day has one chunk).
            let devices: Result<Vec<String>, _> = sqlx::query_scalar(&format!(
                "WITH RECURSIVE d(id) AS (SELECT MIN(device_id) FROM {t} UNION ALL \
                 SELECT (SELECT MIN(device_id) FROM {t} WHERE device_id > d.id) FROM d \
                 WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL AND EXISTS \
                 (SELECT 1 FROM {t} WHERE device_id = d.id AND kind = {KIND_COMMIT})"
            ))
            .fetch_all(&self.reader)
            .await;
            let devices = match devices {
                Ok(v) => v,
                Err(e) if no_such_table(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            out.extend(devices.into_iter().map(|d| DeviceDay {
                device: DeviceId(d),
                day,
            }));
        }
        out.sort_by(|a, b| (a.day, &a.device).cmp(&(b.day, &b.device)));
        out.dedup();
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn compact_day(&self, dd: &DeviceDay) -> Result<Compacted, StorageError> {
        let c = self.write_tx(|conn| compact(conn, dd)).await?;
        metrics::counter!("fleetgate_storage_compacted_positions_total").increment(c.packed);
        Ok(c)
    }

    async fn expire_days(&self, before: Day) -> Result<Vec<Day>, StorageError> {
        let mut days = std::collections::BTreeSet::new();
        self.write_tx(|conn| Ok(raise_watermark(conn, before)?))
            .await?;
        for (day, t) in chunk_tables(&self.reader, Day(i32::MIN), Day(before.0 - 1)).await? {
            self.write_tx(|conn| Ok(conn.execute_batch(&format!("DROP TABLE IF EXISTS {t}"))?))
                .await?;
            days.insert(day);
        }
        loop {
            let gone: Vec<i64> = self
                .write_tx(|conn| {
                    let mut q = conn.prepare(
                        "DELETE FROM positions WHERE (device_id, fix_time) IN \
                         (SELECT device_id, fix_time FROM positions WHERE fix_time < ?1 LIMIT ?2) \
                         RETURNING fix_time",
                    )?;
                    let v = q
                        .query_map(params![before.start_ms(), EXPIRE_BATCH], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<i64>>>()?;
                    Ok(v)
                })
                .await?;
            days.extend(gone.iter().map(|ms| Day::of_ms(*ms)));
            if (gone.len() as i64) < EXPIRE_BATCH {
                break;
            }
        }
        Ok(days.into_iter().collect())
    }

    async fn retained_from(&self) -> Result<Option<Day>, StorageError> {
        let watermark = self.meta("retained_from").await?;
        let oldest_chunk = chunk_tables(&self.reader, Day(i32::MIN), Day(i32::MAX))
            .await?
            .first()
            .map(|(d, _)| *d);
        let oldest_hot: Option<i64> = sqlx::query_scalar("SELECT MIN(fix_time) FROM positions")
            .fetch_one(&self.reader)
            .await?;
        let oldest = match (oldest_chunk, oldest_hot.map(Day::of_ms)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(shared::retained_from(watermark, oldest))
    }

    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StorageError> {
        let mut out = Vec::new();
        let hot: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT fix_time / 86400000 - (fix_time < 0 AND fix_time % 86400000 <> 0) AS day, \
             COUNT(*) FROM positions GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.reader)
        .await?;
        let hot_bytes = table_bytes(&self.reader, HOT).await?;
        let hot_total: i64 = hot.iter().map(|(_, n)| n).sum();
        for (day, n) in hot {
            out.push(PartitionStats {
                day: Day(day as i32),
                tier: Tier::Hot,
                table: HOT.into(),
                positions: n as u64,
                // One table for every hot day: its size shared out by rows.
                bytes: (hot_bytes as f64 * n as f64 / hot_total.max(1) as f64).round() as u64,
            });
        }
        for (day, t) in chunk_tables(&self.reader, Day(i32::MIN), Day(i32::MAX)).await? {
            // Positions and chunk bytes per kind; the table's pages shared out by those bytes.
            let kinds: Result<Vec<(i64, i64, i64)>, _> = sqlx::query_as(&format!(
                "SELECT kind, SUM(n), SUM(length(data)) FROM {t} GROUP BY kind"
            ))
            .fetch_all(&self.reader)
            .await;
            let kinds = match kinds {
                Ok(k) => k,
                Err(e) if no_such_table(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            let bytes = table_bytes(&self.reader, &t).await?;
            out.extend(shared::kind_stats(day, &t, &kinds, bytes));
        }
        out.sort_by(|a, b| (a.day, a.tier.as_str()).cmp(&(b.day, b.tier.as_str())));
        Ok(out)
    }

    async fn expire_rows(
        &self,
        t: Expiring,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StorageError> {
        shared::expire_rows_in(&self.writer, t, before, batch).await
    }

    async fn put_summaries(&self, rows: &[DailySummary]) -> Result<(), StorageError> {
        shared::put_summaries_in(&self.writer, rows).await
    }

    async fn summaries(
        &self,
        vehicle: &VehicleId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailySummary>, StorageError> {
        shared::summaries_in(&self.reader, vehicle, from, to).await
    }
}

/// Pages of table `t` and its indexes, in bytes.
async fn table_bytes(pool: &SqlitePool, t: &str) -> Result<u64, StorageError> {
    let b: Option<i64> = sqlx::query_scalar(
        "SELECT SUM(pgsize) FROM dbstat WHERE name = $1 OR name = $1 || '_device' \
         OR name LIKE 'sqlite_autoindex_' || $1 || '_%'",
    )
    .bind(t)
    .fetch_one(pool)
    .await?;
    Ok(b.unwrap_or(0).max(0) as u64)
}

#[async_trait]
impl Layout for SqliteStore {
    /// A database that had positions when migration 0007 ran keeps a `migrate_before` mark
    /// until its closed days are packed.
    async fn old_layout(&self) -> Result<bool, StorageError> {
        Ok(self.meta("migrate_before").await?.is_some())
    }

    /// Every closed day still hot (the old `positions` table is the hot tier).
    async fn old_days(&self, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        self.hot_days(Day::of(Utc::now()), limit).await
    }

    async fn finish_migration(&self) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM archive_meta WHERE key = 'migrate_before'")
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
