//! SQLite backend: the zero-set-up default. WAL journal, one writer connection (SQLite allows
//! one writer at a time anyway) fed by the group-commit writer, a small pool of readers.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::config::StorageConfig;
use super::{
    from_millis, millis, DeviceState, StorageError, Store, StoredPosition, TrackPoint, Vehicle,
    VehicleUpdate, WriteItem,
};
use crate::model::{DeviceId, VehicleId};

mod batch;

/// Run `f`, a stretch of blocking SQLite work, on this thread: on the multi-threaded runtime
/// the thread's other tasks move to another worker meanwhile; a current-thread runtime (unit
/// tests) just runs it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub struct SqliteStore {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
}

impl SqliteStore {
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    pub async fn open(cfg: &StorageConfig) -> Result<Self, StorageError> {
        let path = cfg
            .url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = std::path::Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StorageError::Invalid(format!(
                        "storage.url: cannot create {}: {e}",
                        dir.display()
                    ))
                })?;
            }
        }
        let sync = SqliteSynchronous::from_str(&cfg.sqlite_synchronous)
            .map_err(|e| StorageError::Invalid(format!("storage.sqlite_synchronous: {e}")))?;
        let opts = SqliteConnectOptions::from_str(&cfg.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // The writer keeps the hot B-tree pages of `positions` in its own cache (8 MiB: the
        // leaf pages every connected device appends to, and the interior pages above them)
        // instead of re-reading them from the OS page cache on every commit — no larger,
        // because SQLite scans the whole cache's hash table at the end of every write
        // transaction (64 MiB made that 4.5 % of a commit, docs/performance.md) — and checkpoints
        // the WAL every 10,000 pages (40 MiB) instead of 1,000: a hot page rewritten by many
        // commits is copied into the database once per checkpoint.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .after_release(|conn, _| Box::pin(released_clean(conn)))
            .connect_with(
                opts.clone()
                    .pragma("cache_size", "-8192")
                    .pragma("wal_autocheckpoint", "10000"),
            )
            .await
            .map_err(|e| {
                // sqlx says "unable to open database file" without the file: name it.
                StorageError::Invalid(format!(
                    "storage.url: cannot open SQLite database {path}: {e}"
                ))
            })?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }
}

/// Whether the writer connection may go back to the pool: not when a transaction is still
/// open on it. SQLite rolls a transaction back by itself on some errors (a full disk among
/// them), so sqlx's ROLLBACK then fails and its transaction count goes wrong; its next
/// "transaction" is a SAVEPOINT whose rollback leaves the connection inside a transaction,
/// and every later BEGIN fails with `cannot start a transaction within a transaction` (#21).
/// Closing the connection rolls back whatever is open; the pool opens a fresh one.
async fn released_clean(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is valid while sqlx's lock on it is held (`handle` lives on).
    let open =
        unsafe { rusqlite::ffi::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) } == 0;
    if open {
        metrics::counter!("fleetgate_storage_connections_replaced_total").increment(1);
        tracing::warn!("writer connection left inside a transaction: replaced by a fresh one");
    }
    Ok(!open)
}

const POSITION_COLUMNS: &str =
    "fix_time, server_time, valid, lat, lon, speed_kmh, course, altitude, satellites, \
     ignition, motion, odometer_m, gps_odometer_m, inputs, outputs, power_v, alarm, attributes";

fn position_from_row(r: &SqliteRow, offset: usize) -> Result<StoredPosition, sqlx::Error> {
    let attrs: String = r.try_get(offset + 17)?;
    Ok(StoredPosition {
        time: from_millis(r.try_get(offset)?),
        server_time: from_millis(r.try_get(offset + 1)?),
        valid: r.try_get(offset + 2)?,
        lat: r.try_get(offset + 3)?,
        lon: r.try_get(offset + 4)?,
        speed_kmh: r.try_get(offset + 5)?,
        course: r.try_get(offset + 6)?,
        altitude: r.try_get(offset + 7)?,
        satellites: r.try_get::<Option<i64>, _>(offset + 8)?.map(|v| v as u16),
        ignition: r.try_get(offset + 9)?,
        motion: r.try_get(offset + 10)?,
        odometer_m: r.try_get(offset + 11)?,
        gps_odometer_m: r.try_get(offset + 12)?,
        inputs: r.try_get::<Option<i64>, _>(offset + 13)?.map(|v| v as u32),
        outputs: r.try_get::<Option<i64>, _>(offset + 14)?.map(|v| v as u32),
        power_v: r.try_get(offset + 15)?,
        alarm: r.try_get(offset + 16)?,
        attributes: serde_json::from_str(&attrs).unwrap_or(serde_json::Value::Null),
    })
}

fn state_from_row(r: &SqliteRow) -> Result<DeviceState, sqlx::Error> {
    let fix: Option<i64> = r.try_get(3)?;
    let position = match fix {
        Some(_) => {
            // device_state has no server_time/alarm columns: reuse last_seen and none.
            let attrs: Option<String> = r.try_get(17)?;
            Some(StoredPosition {
                time: from_millis(r.try_get(3)?),
                server_time: from_millis(r.try_get(2)?),
                valid: r.try_get(4)?,
                lat: r.try_get(5)?,
                lon: r.try_get(6)?,
                speed_kmh: r.try_get(7)?,
                course: r.try_get(8)?,
                altitude: r.try_get(9)?,
                satellites: r.try_get::<Option<i64>, _>(10)?.map(|v| v as u16),
                ignition: r.try_get(11)?,
                motion: r.try_get(12)?,
                odometer_m: r.try_get(13)?,
                gps_odometer_m: r.try_get(14)?,
                inputs: r.try_get::<Option<i64>, _>(15)?.map(|v| v as u32),
                outputs: r.try_get::<Option<i64>, _>(16)?.map(|v| v as u32),
                power_v: r.try_get(18)?,
                alarm: None,
                attributes: attrs
                    .and_then(|a| serde_json::from_str(&a).ok())
                    .unwrap_or(serde_json::Value::Null),
            })
        }
        None => None,
    };
    Ok(DeviceState {
        device_id: DeviceId(r.try_get(0)?),
        protocol: r.try_get(1)?,
        last_seen: from_millis(r.try_get(2)?),
        position,
        gps_odometer_m: r.try_get(14)?,
    })
}

const STATE_SELECT: &str = "SELECT device_id, protocol, last_seen, fix_time, valid, lat, lon, speed_kmh, course, altitude, \
     satellites, ignition, motion, odometer_m, gps_odometer_m, inputs, outputs, attributes, power_v FROM device_state";

fn vehicle_from_row(r: &SqliteRow) -> Result<Vehicle, sqlx::Error> {
    Ok(Vehicle {
        id: VehicleId(r.try_get(0)?),
        device_id: r.try_get::<Option<String>, _>(1)?.map(DeviceId),
        protocol: r.try_get(2)?,
        plate: r.try_get(3)?,
        driver_id: r.try_get(4)?,
        crm_deal_id: r.try_get(5)?,
        status: r.try_get(6)?,
        created_at: from_millis(r.try_get(7)?),
        updated_at: from_millis(r.try_get(8)?),
    })
}

const VEHICLE_SELECT: &str =
    "SELECT id, device_id, protocol, plate, driver_id, crm_deal_id, status, created_at, updated_at FROM vehicles";

#[async_trait]
impl Store for SqliteStore {
    async fn write_batch(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        let mut conn = self.writer.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        // SAFETY: sqlx's lock on the connection is held until `handle` drops, after this.
        blocking(|| unsafe { batch::write(db, items) })
    }

    async fn device_states(&self) -> Result<Vec<DeviceState>, StorageError> {
        let rows = sqlx::query(STATE_SELECT).fetch_all(&self.reader).await?;
        Ok(rows.iter().map(state_from_row).collect::<Result<_, _>>()?)
    }

    async fn device_state(&self, device: &DeviceId) -> Result<Option<DeviceState>, StorageError> {
        let row = sqlx::query(&format!("{STATE_SELECT} WHERE device_id = ?"))
            .bind(device.as_str())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(state_from_row).transpose()?)
    }

    async fn track(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredPosition>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {POSITION_COLUMNS} FROM positions WHERE device_id = ? AND fix_time >= ? AND fix_time < ? \
             ORDER BY fix_time LIMIT ?"
        ))
        .bind(device.as_str())
        .bind(millis(from))
        .bind(millis(to))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .iter()
            .map(|r| position_from_row(r, 0))
            .collect::<Result<_, _>>()?)
    }

    async fn track_points(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TrackPoint>, StorageError> {
        let rows = sqlx::query(
            "SELECT fix_time, lat, lon FROM positions WHERE device_id = ? AND fix_time >= ? \
             AND fix_time < ? ORDER BY fix_time LIMIT ?",
        )
        .bind(device.as_str())
        .bind(millis(from))
        .bind(millis(to))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TrackPoint {
                    time: from_millis(r.try_get("fix_time")?),
                    lat: r.try_get("lat")?,
                    lon: r.try_get("lon")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StorageError::from)
    }

    async fn vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        let rows = sqlx::query(&format!("{VEHICLE_SELECT} ORDER BY id"))
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .iter()
            .map(vehicle_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn vehicle(&self, id: &VehicleId) -> Result<Option<Vehicle>, StorageError> {
        let row = sqlx::query(&format!("{VEHICLE_SELECT} WHERE id = ?"))
            .bind(&id.0)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(vehicle_from_row).transpose()?)
    }

    async fn vehicle_by_device(&self, device: &DeviceId) -> Result<Option<Vehicle>, StorageError> {
        let row = sqlx::query(&format!("{VEHICLE_SELECT} WHERE device_id = ?"))
            .bind(device.as_str())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(vehicle_from_row).transpose()?)
    }

    async fn upsert_vehicle(
        &self,
        id: &VehicleId,
        u: &VehicleUpdate,
    ) -> Result<Vehicle, StorageError> {
        let now = millis(Utc::now());
        let mut tx = self.writer.begin().await?;
        if let Some(dev) = &u.device_id {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT id FROM vehicles WHERE device_id = ? AND id <> ?")
                    .bind(dev)
                    .bind(&id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(owner) = owner {
                return Err(StorageError::DeviceTaken(dev.clone(), owner));
            }
        }
        sqlx::query(
            "INSERT INTO vehicles (id, device_id, protocol, plate, driver_id, crm_deal_id, status, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, 'available'), ?, ?) \
             ON CONFLICT(id) DO UPDATE SET device_id = COALESCE(excluded.device_id, vehicles.device_id), \
             protocol = COALESCE(excluded.protocol, vehicles.protocol), plate = COALESCE(excluded.plate, vehicles.plate), \
             driver_id = COALESCE(excluded.driver_id, vehicles.driver_id), \
             crm_deal_id = COALESCE(excluded.crm_deal_id, vehicles.crm_deal_id), \
             status = COALESCE(?, vehicles.status), updated_at = excluded.updated_at",
        )
        .bind(&id.0)
        .bind(&u.device_id)
        .bind(&u.protocol)
        .bind(&u.plate)
        .bind(&u.driver_id)
        .bind(&u.crm_deal_id)
        .bind(&u.status)
        .bind(now)
        .bind(now)
        .bind(&u.status)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!("{VEHICLE_SELECT} WHERE id = ?"))
            .bind(&id.0)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(vehicle_from_row(&row)?)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
