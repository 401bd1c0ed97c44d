//! PostgreSQL backend, for production fleets and for several fleetgate instances sharing one
//! database. A group commit is one transaction: every packet's positions as one small chunk
//! per UTC day (packed by its shard, `Store::pack`) in ONE `INSERT … SELECT FROM
//! UNNEST(arrays)` into the day partitions of `position_chunks` (a round trip per batch, one
//! tuple per packet), then every device state in one UNNEST upsert. A fix time stored twice is
//! resolved by reads and compaction: first stored wins (`storage::archive`). Migrations live in `migrations/postgres` and are numbered like the SQLite ones.
//!
//! Other stores (commands, CRM outbox, zones) add their own trait implementations for
//! [`PostgresStore`] in files under `src/storage/postgres/`, using `self.pool`.

mod archive;
mod arrays;
mod crm;
mod immobiliser;
mod partitions;
mod zones;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::config::StorageConfig;
use super::reads;
use super::sql::{self, Dialect};
use super::{
    DeviceState, StorageError, Store, StoredPosition, TrackPoint, Vehicle, VehicleUpdate, WriteItem,
};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::TrackColumns;
use arrays::{ChunkArrays, StateArrays};

pub struct PostgresStore {
    /// Shared by every trait implementation of this backend.
    pub(crate) pool: PgPool,
    /// Day partitions known to exist (the group commit creates a missing one first).
    parts: partitions::Partitions,
    /// Whether `positions_legacy` (a database from before migration 0010) is still there:
    /// reads include it until the migration has packed and dropped it.
    legacy: AtomicBool,
}

impl PostgresStore {
    /// Connect with `[storage] url` (libpq-style options such as
    /// `?options=-c%20search_path%3Dfleet` pass through) and apply the migrations. Several
    /// instances may start at once: sqlx serialises migrations with an advisory lock.
    pub async fn open(cfg: &StorageConfig) -> Result<Self, StorageError> {
        let opts = PgConnectOptions::from_str(&cfg.url)?.application_name("fleetgate");
        let opts = super::deadline::server_bounds(opts, cfg.deadlines());
        // "pool timed out" alone does not say which server: name it (never the password).
        let server = format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        // A connection handed back after an abandoned query is closed, not kept, when the
        // path is silent (super::deadline, point 2).
        let release_bound = cfg.deadlines().call;
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_release(move |conn, _| {
                Box::pin(super::deadline::released_alive(conn, release_bound))
            })
            .connect_with(opts)
            .await
            .map_err(|e| {
                StorageError::Invalid(format!(
                    "storage.url: cannot connect to PostgreSQL at {server}: {e}"
                ))
            })?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let store = PostgresStore::from_pool(pool);
        let legacy: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('positions_legacy')::text")
                .fetch_one(&store.pool)
                .await?;
        store.legacy.store(legacy.is_some(), Ordering::Relaxed);
        Ok(store)
    }

    /// A store on an existing pool (migrations applied by the caller).
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresStore {
            pool,
            parts: partitions::Partitions::default(),
            // Until a read finds it gone.
            legacy: AtomicBool::new(true),
        }
    }
}

const SQL: Dialect = Dialect::Postgres;

/// The batch's chunks, `id` drawn in array order (the order of storage among a device-day's
/// chunks: the writer is serial, so it is the order of the commits and, within one, of the
/// packets).
const INSERT_CHUNKS: &str = "INSERT INTO position_chunks (device_id, day, first_ms, last_ms, n, format, kind, \
     data) SELECT d, dy, f, l, n, $6, $7, b FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::int8[], \
     $5::int4[], $8::bytea[]) WITH ORDINALITY AS t(d, dy, f, l, n, b, o) ORDER BY o";

const UPSERT_STATES: &str = "INSERT INTO device_state AS ds (device_id, protocol, last_seen, fix_time, valid, lat, lon, \
     speed_kmh, course, altitude, satellites, ignition, motion, odometer_m, gps_odometer_m, inputs, outputs, power_v, \
     attributes) \
     SELECT d, p, ls, f, v, la, lo, sp, co, al, sa, ig, mo, od, go, i, o, pw, at::jsonb FROM UNNEST(\
     $1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::float8[], $7::float8[], $8::float8[], \
     $9::float8[], $10::float8[], $11::int4[], $12::bool[], $13::bool[], $14::float8[], $15::float8[], $16::int8[], \
     $17::int8[], $18::float8[], $19::text[]) \
     AS t(d, p, ls, f, v, la, lo, sp, co, al, sa, ig, mo, od, go, i, o, pw, at) \
     ON CONFLICT (device_id) DO UPDATE SET protocol = excluded.protocol, last_seen = excluded.last_seen, \
     fix_time = excluded.fix_time, valid = excluded.valid, lat = excluded.lat, lon = excluded.lon, \
     speed_kmh = excluded.speed_kmh, course = excluded.course, altitude = excluded.altitude, \
     satellites = excluded.satellites, ignition = excluded.ignition, motion = excluded.motion, \
     odometer_m = excluded.odometer_m, gps_odometer_m = excluded.gps_odometer_m, inputs = excluded.inputs, \
     outputs = excluded.outputs, power_v = excluded.power_v, attributes = excluded.attributes \
     WHERE excluded.last_seen >= ds.last_seen";

#[async_trait]
impl Store for PostgresStore {
    async fn write_batch(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        let a = ChunkArrays::from_items(items);
        let states = super::latest_states(items);
        let days = batch_days(&a.day);
        self.parts
            .ensure(&self.pool, partitions::Parent::Chunks, days.iter().copied())
            .await?;
        match self.write_once(&a, &states).await {
            Err(StorageError::Db(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("23514") =>
            {
                // "no partition of relation found for row": a day partition was dropped
                // under the cache (expiry in another process); late data is still stored.
                self.parts.forget();
                self.parts
                    .ensure(&self.pool, partitions::Parent::Chunks, days)
                    .await?;
                self.write_once(&a, &states).await
            }
            r => r,
        }
    }

    fn pack(&self, item: &mut WriteItem) {
        item.packed = crate::storage::archive::pack(item);
    }

    async fn device_states(&self) -> Result<Vec<DeviceState>, StorageError> {
        reads::device_states(&self.pool, SQL).await
    }

    async fn device_state(&self, device: &DeviceId) -> Result<Option<DeviceState>, StorageError> {
        reads::device_state(&self.pool, SQL, device).await
    }

    async fn track_columns(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
        cols: TrackColumns,
    ) -> Result<Vec<StoredPosition>, StorageError> {
        self.track_tiers(device, from, to, limit, cols).await
    }

    async fn track_points(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TrackPoint>, StorageError> {
        self.track_points_tiers(device, from, to, limit).await
    }

    async fn vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        reads::vehicles(&self.pool).await
    }

    async fn vehicle(&self, id: &VehicleId) -> Result<Option<Vehicle>, StorageError> {
        reads::vehicle_where(&self.pool, "id", &id.0).await
    }

    async fn vehicle_by_device(&self, device: &DeviceId) -> Result<Option<Vehicle>, StorageError> {
        reads::vehicle_where(&self.pool, "device_id", device.as_str()).await
    }

    async fn upsert_vehicle(
        &self,
        id: &VehicleId,
        u: &VehicleUpdate,
    ) -> Result<Vehicle, StorageError> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        if let Some(dev) = &u.device_id {
            if let Some(owner) = device_owner(&mut tx, dev, &id.0).await? {
                return Err(StorageError::DeviceTaken(dev.clone(), owner));
            }
        }
        let upserted = sql::bind_vehicle(sqlx::query(sql::UPSERT_VEHICLE), id, u, now)
            .execute(&mut *tx)
            .await;
        if let Err(e) = upserted {
            // Another instance fitted the device between our check and our insert.
            let unique =
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"));
            drop(tx);
            if let (true, Some(dev)) = (unique, &u.device_id) {
                let mut tx = self.pool.begin().await?;
                if let Some(owner) = device_owner(&mut tx, dev, &id.0).await? {
                    return Err(StorageError::DeviceTaken(dev.clone(), owner));
                }
            }
            return Err(e.into());
        }
        let row = sqlx::query(&format!("{} WHERE id = $1", sql::VEHICLE_SELECT))
            .bind(&id.0)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sql::vehicle(&row)?)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

impl PostgresStore {
    /// One group commit's transaction.
    async fn write_once(
        &self,
        a: &ChunkArrays,
        states: &[&DeviceState],
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        if !a.device.is_empty() {
            sqlx::query(INSERT_CHUNKS)
                .bind(&a.device)
                .bind(&a.day)
                .bind(&a.first)
                .bind(&a.last)
                .bind(&a.n)
                .bind(super::archive::CHUNK_FORMAT as i16)
                .bind(super::archive::KIND_COMMIT as i16)
                .bind(&a.data)
                .execute(&mut *tx)
                .await?;
        }
        if !states.is_empty() {
            let s = StateArrays::from_states(states);
            sqlx::query(UPSERT_STATES)
                .bind(&s.device)
                .bind(&s.protocol)
                .bind(&s.last_seen)
                .bind(&s.fix)
                .bind(&s.valid)
                .bind(&s.lat)
                .bind(&s.lon)
                .bind(&s.speed)
                .bind(&s.course)
                .bind(&s.altitude)
                .bind(&s.satellites)
                .bind(&s.ignition)
                .bind(&s.motion)
                .bind(&s.odometer)
                .bind(&s.gps_odometer)
                .bind(&s.inputs)
                .bind(&s.outputs)
                .bind(&s.power)
                .bind(&s.attributes)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The distinct UTC days of a batch's chunks (almost always one).
fn batch_days(day: &[i32]) -> Vec<crate::archive::store::Day> {
    let mut days: Vec<crate::archive::store::Day> = Vec::with_capacity(1);
    for d in day {
        let d = crate::archive::store::Day(*d);
        if !days.contains(&d) {
            days.push(d);
        }
    }
    days
}

async fn device_owner(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    device: &str,
    except: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(sql::DEVICE_OWNER)
        .bind(device)
        .bind(except)
        .fetch_optional(&mut **tx)
        .await
}

/// `url` with its password replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgres://fg:s3cret@db:5432/fleet"),
            "postgres://fg:***@db:5432/fleet"
        );
        assert_eq!(redact("postgres://fg@db/fleet"), "postgres://fg@db/fleet");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
