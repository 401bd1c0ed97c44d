//! SQLite backend: the zero-set-up default. WAL journal, one writer connection (SQLite allows
//! one writer at a time anyway) fed by the group-commit writer, a small pool of readers.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::config::StorageConfig;
use super::reads;
use super::sql::{self, Dialect};
use super::{
    DeviceState, StorageError, Store, StoredPosition, TrackPoint, Vehicle, VehicleUpdate, WriteItem,
};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::TrackColumns;

mod archive;
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
        archive::upgrade_chunk_tables(&writer).await?;
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

const SQL: Dialect = Dialect::Sqlite;

#[async_trait]
impl Store for SqliteStore {
    async fn write_batch(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        let mut conn = self.writer.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        // SAFETY: sqlx's lock on the connection is held until `handle` drops, after this.
        blocking(|| unsafe { batch::write(db, items) })
    }

    fn pack(&self, item: &mut WriteItem) {
        item.packed = crate::storage::archive::pack(item);
    }

    async fn device_states(&self) -> Result<Vec<DeviceState>, StorageError> {
        reads::device_states(&self.reader, SQL).await
    }

    async fn device_state(&self, device: &DeviceId) -> Result<Option<DeviceState>, StorageError> {
        reads::device_state(&self.reader, SQL, device).await
    }

    async fn track_columns(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
        cols: TrackColumns,
    ) -> Result<Vec<StoredPosition>, StorageError> {
        archive::track(self, device, from, to, limit, cols).await
    }

    async fn track_points(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TrackPoint>, StorageError> {
        archive::track_points(self, device, from, to, limit).await
    }

    async fn vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        reads::vehicles(&self.reader).await
    }

    async fn vehicle(&self, id: &VehicleId) -> Result<Option<Vehicle>, StorageError> {
        reads::vehicle_where(&self.reader, "id", &id.0).await
    }

    async fn vehicle_by_device(&self, device: &DeviceId) -> Result<Option<Vehicle>, StorageError> {
        reads::vehicle_where(&self.reader, "device_id", device.as_str()).await
    }

    async fn upsert_vehicle(
        &self,
        id: &VehicleId,
        u: &VehicleUpdate,
    ) -> Result<Vehicle, StorageError> {
        let now = Utc::now();
        let mut tx = self.writer.begin().await?;
        if let Some(dev) = &u.device_id {
            let owner: Option<String> = sqlx::query_scalar(sql::DEVICE_OWNER)
                .bind(dev)
                .bind(&id.0)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(owner) = owner {
                return Err(StorageError::DeviceTaken(dev.clone(), owner));
            }
        }
        sql::bind_vehicle(sqlx::query(sql::UPSERT_VEHICLE), id, u, now)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("{} WHERE id = $1", sql::VEHICLE_SELECT))
            .bind(&id.0)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sql::vehicle(&row)?)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
