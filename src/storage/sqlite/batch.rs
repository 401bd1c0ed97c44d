//! The group commit on SQLite, written through the writer connection's own handle.
//!
//! Each packet's positions go in as one small chunk per UTC day (packed by its shard,
//! `Store::pack`) into that day's chunk table, created by the first commit of the day: one
//! row per packet instead of one per position, so far fewer B-tree inserts, pages and WAL
//! bytes per record (docs/archive.md, docs/performance.md). The writer connection is locked
//! away from sqlx's worker for the length of one transaction and driven through rusqlite:
//! sqlx's per-value argument vectors and its hop to a worker thread cost more than SQLite's
//! own work on a commit. Same connection, same pool: the other stores' writes still queue
//! behind a commit exactly as before.

use std::collections::HashMap;

use rusqlite::{params, Connection, Statement};

use crate::archive::store::Day;
use crate::storage::archive::{packed_of, table, CHUNKS, CHUNK_FORMAT, KIND_COMMIT};
use crate::storage::{millis, DeviceState, StorageError, WriteItem};

const UPSERT_STATE: &str = "INSERT INTO device_state (device_id, protocol, last_seen, fix_time, \
     valid, lat, lon, speed_kmh, course, altitude, satellites, ignition, motion, odometer_m, \
     gps_odometer_m, inputs, outputs, power_v, attributes) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
     ON CONFLICT(device_id) DO UPDATE SET protocol = excluded.protocol, \
     last_seen = excluded.last_seen, fix_time = excluded.fix_time, valid = excluded.valid, \
     lat = excluded.lat, lon = excluded.lon, speed_kmh = excluded.speed_kmh, \
     course = excluded.course, altitude = excluded.altitude, satellites = excluded.satellites, \
     ignition = excluded.ignition, motion = excluded.motion, odometer_m = excluded.odometer_m, \
     gps_odometer_m = excluded.gps_odometer_m, inputs = excluded.inputs, \
     outputs = excluded.outputs, power_v = excluded.power_v, attributes = excluded.attributes \
     WHERE excluded.last_seen >= device_state.last_seen";

/// Write `items` in one transaction on the connection behind `db`.
///
/// # Safety
/// As [`in_tx`].
pub(super) unsafe fn write(
    db: *mut rusqlite::ffi::sqlite3,
    items: &[WriteItem],
) -> Result<(), StorageError> {
    in_tx(db, |conn| write_in_tx(conn, items))
}

/// Run `f` in one `BEGIN IMMEDIATE` transaction on the connection behind `db`: committed when
/// it returns `Ok`, rolled back otherwise.
///
/// # Safety
/// `db` must be an open SQLite connection that nothing else uses until this returns (the
/// caller holds sqlx's lock on it).
pub(super) unsafe fn in_tx<T>(
    db: *mut rusqlite::ffi::sqlite3,
    f: impl FnOnce(&Connection) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    // Not owned: dropping it finalizes the statements prepared here and leaves the
    // connection open for sqlx.
    let conn = Connection::from_handle(db)?;
    if !conn.is_autocommit() {
        // Someone's failed transaction (see `released_clean`): nothing in it was committed,
        // and BEGIN would fail on it for good.
        tracing::warn!("writer connection inside a stale transaction: rolled back");
        conn.execute_batch("ROLLBACK")?;
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f(&conn) {
        Ok(v) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(v),
            Err(e) => {
                rollback(&conn);
                Err(e.into())
            }
        },
        Err(e) => {
            rollback(&conn);
            Err(e)
        }
    }
}

fn rollback(conn: &Connection) {
    // Fails only when SQLite already rolled back by itself (e.g. on a full disk).
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

fn write_in_tx(conn: &Connection, items: &[WriteItem]) -> Result<(), StorageError> {
    // One insert statement per day table the batch touches (almost always one).
    let mut inserts: HashMap<Day, Statement<'_>> = HashMap::with_capacity(1);
    for it in items {
        for c in packed_of(it).iter() {
            let day = crate::storage::archive::clamp(Day::of_ms(c.first_ms));
            let insert = match inserts.entry(day) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let t = table(CHUNKS, day);
                    // A no-op once the day has its table: a schema lookup per commit.
                    conn.execute_batch(&super::archive::create_chunks(&t))?;
                    e.insert(conn.prepare(&format!(
                        "INSERT INTO {t} (device_id, first_ms, last_ms, n, format, kind, data) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ))?)
                }
            };
            insert.execute(params![
                it.device.as_str(),
                c.first_ms,
                c.last_ms,
                c.n,
                CHUNK_FORMAT,
                KIND_COMMIT,
                c.data
            ])?;
        }
    }
    drop(inserts);
    let mut upsert = conn.prepare(UPSERT_STATE)?;
    for s in crate::storage::latest_states(items) {
        upsert_state(&mut upsert, s)?;
    }
    Ok(())
}

fn upsert_state(stmt: &mut Statement<'_>, s: &DeviceState) -> rusqlite::Result<()> {
    let p = s.position.as_ref();
    stmt.execute(params![
        s.device_id.as_str(),
        s.protocol.as_str(),
        millis(s.last_seen),
        p.map(|p| millis(p.time)),
        p.map(|p| p.valid),
        p.map(|p| p.lat),
        p.map(|p| p.lon),
        p.map(|p| p.speed_kmh),
        p.map(|p| p.course),
        p.map(|p| p.altitude),
        p.and_then(|p| p.satellites),
        p.and_then(|p| p.ignition),
        p.and_then(|p| p.motion),
        p.and_then(|p| p.odometer_m),
        s.gps_odometer_m,
        p.and_then(|p| p.inputs),
        p.and_then(|p| p.outputs),
        p.and_then(|p| p.power_v),
        p.map(|p| p.attributes.as_str()),
    ])?;
    Ok(())
}
