//! Issue #17: expiring a month of positions on a loaded store takes ≤ 1 s, and the ack latency
//! p99 during the drop stays ≤ 1.5× the p99 just before. An ack waits for its group commit, so
//! the latency measured here is the commit's (`Store::write_batch`), the part a drop can stall.
//!
//! 1. Seed: `--days` old UTC days (default 30, ending 31 days ago) for `--devices` cars (default
//!    1,500, the customer's fleet), each device-day one car-day of 8,640 fixes with six IO
//!    elements packed by the archive (`write_batch` + `ArchiveStore::compact_day` for one car,
//!    then its chunk row copied to the others by SQL): about the bytes of a real fleet month.
//! 2. Load: `--commits` group commits a second (default 20), each 200 devices × 5 records of
//!    today (20,000 records/s), paced, for `--warm` seconds (default 10).
//! 3. Drop: `ArchiveStore::expire_days` for the month, as the archive actor calls it, while the
//!    load goes on for `--after` seconds more (default 10).
//!
//! Prints the drop's wall time and commit latency p50/p99/max before, during (commits that
//! overlapped the drop) and in the second after it started; for SQLite (a temp dir) and
//! PostgreSQL (a throwaway schema, when reachable). `cargo bench --bench retention_drop`;
//! figures in docs/performance.md.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use fleetgate::archive::store::{Day, DeviceDay, Tier};
use fleetgate::config::StorageConfig;
use fleetgate::model::{AttrKey, AttrValue, DeviceId, Position};
use fleetgate::protocols::Protocol;
use fleetgate::storage::{self, DeviceState, NewPosition, StoredPosition, Stores, WriteItem};
use sqlx::Connection;

#[path = "common/pg.rs"]
mod pg;

const DAY_FIXES: usize = 8_640;
const LOAD_DEVICES: usize = 200;
const LOAD_RECORDS: usize = 5;

struct Opts {
    devices: usize,
    days: i32,
    commits: u32,
    warm: u64,
    after: u64,
}

fn opts() -> Opts {
    let mut o = Opts {
        devices: 1_500,
        days: 30,
        commits: 20,
        warm: 10,
        after: 10,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), v) {
            ("--devices", Some(v)) => o.devices = v as usize,
            ("--days", Some(v)) => o.days = v as i32,
            ("--commits", Some(v)) => o.commits = v as u32,
            ("--warm", Some(v)) => o.warm = v,
            ("--after", Some(v)) => o.after = v,
            // cargo bench passes `--bench`; anything else is ignored the same way.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn device(i: usize) -> DeviceId {
    DeviceId::new(format!("35630704{i:07}"))
}

/// Fix `k` of a car-day starting at `start`: moving, six Teltonika IO elements.
fn fix(start: DateTime<Utc>, k: usize, step_ms: i64) -> Position {
    let t = start + Duration::milliseconds(k as i64 * step_ms);
    let mut p = Position::new(
        t,
        true,
        55.70 + (k % DAY_FIXES) as f64 * 0.000_013_7,
        37.50 + (k % DAY_FIXES) as f64 * 0.000_021_3,
    );
    p.speed_kmh = (k % 90) as f64;
    p.course = (k % 360) as f64;
    p.altitude = 150.0 + (k % 7) as f64;
    p.satellites = Some(9 + (k % 5) as u16);
    p.ignition = Some(k % 50 != 0);
    p.odometer_m = Some(1_250_000.0 + k as f64 * 97.0);
    p.power_v = Some(12.6);
    for (io, v) in [(239, 1), (240, 1), (21, 4), (69, 1)] {
        p.attrs.push(AttrKey::Io(io), AttrValue::Int(v));
    }
    p.attrs
        .push(AttrKey::Io(66), AttrValue::Int(12_800 + (k % 40) as i64));
    p.attrs
        .push(AttrKey::Io(16), AttrValue::Int(1_250_000 + k as i64 * 97));
    p
}

fn item(dev: DeviceId, positions: Vec<Position>) -> WriteItem {
    let last = positions.last().expect("a non-empty batch").fix_time;
    WriteItem {
        origin: Default::default(),
        device: dev.clone(),
        protocol: Protocol::Teltonika,
        server_time: last,
        packed: Vec::new(),
        state: DeviceState {
            device_id: dev,
            protocol: "teltonika".into(),
            last_seen: last,
            position: Some(StoredPosition::from_position(
                positions.last().expect("non-empty"),
                last,
                0.0,
            )),
            gps_odometer_m: 0.0,
        },
        positions: positions
            .into_iter()
            .map(|p| NewPosition::new(p, 0.0))
            .collect(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One car-day per old day packed through the store, then copied to every other device.
async fn seed(stores: &Stores, url: &str, backend: Backend, o: &Opts, first: Day) {
    let template = device(0);
    for d in 0..o.days {
        let day = Day(first.0 + d);
        let start = DateTime::from_timestamp_millis(day.start_ms()).expect("a day");
        for part in (0..DAY_FIXES).step_by(1_000) {
            let batch = (part..(part + 1_000).min(DAY_FIXES))
                .map(|k| fix(start, k, 10_000))
                .collect();
            stores
                .core
                .write_batch(&[item(template.clone(), batch)])
                .await
                .expect("write_batch");
        }
        let dd = DeviceDay {
            device: template.clone(),
            day,
        };
        let c = stores.archive.compact_day(&dd).await.expect("compact_day");
        assert_eq!(c.packed, DAY_FIXES as u64);
    }
    let copy = |table: String, filter: String| async move {
        // `SELECT *` into a temp table and back: the copy does not depend on the chunk table's
        // columns beyond `device_id`.
        match backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
                copy_rows(&mut c, &table, &filter, o.devices).await;
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
                copy_rows(&mut c, &table, &filter, o.devices).await;
            }
        }
    };
    for d in 0..o.days {
        let day = Day(first.0 + d);
        let ymd = day.date().format("%Y%m%d");
        match backend {
            Backend::Sqlite => {
                copy(
                    format!("position_chunks_d{ymd}"),
                    format!("device_id = '{}'", template.as_str()),
                )
                .await
            }
            Backend::Postgres => {
                copy(
                    "position_chunks".into(),
                    format!("device_id = '{}' AND day = {}", template.as_str(), day.0),
                )
                .await
            }
        }
    }
}

async fn copy_rows<C>(c: &mut C, table: &str, filter: &str, devices: usize)
where
    for<'c> &'c mut C: sqlx::Executor<'c>,
    C: Connection,
{
    let mut statements = vec![
        "BEGIN".to_string(),
        format!("CREATE TEMP TABLE seed AS SELECT * FROM {table} WHERE {filter}"),
    ];
    for i in 1..devices {
        statements.push(format!(
            "UPDATE seed SET device_id = '{}'",
            device(i).as_str()
        ));
        statements.push(format!("INSERT INTO {table} SELECT * FROM seed"));
    }
    statements.push("DROP TABLE seed".into());
    statements.push("COMMIT".into());
    for q in statements {
        sqlx::raw_sql(&q).execute(&mut *c).await.expect(&q);
    }
}

/// One commit of today's load: LOAD_DEVICES × LOAD_RECORDS new fixes from `seq` on.
fn load_batch(now: DateTime<Utc>, seq: usize) -> Vec<WriteItem> {
    (0..LOAD_DEVICES)
        .map(|d| {
            let positions = (0..LOAD_RECORDS)
                .map(|r| fix(now, seq * LOAD_RECORDS + r, 1))
                .collect();
            item(device(100_000 + d), positions)
        })
        .collect()
}

struct Sample {
    start: Instant,
    latency: StdDuration,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn line(name: &str, samples: &[&Sample]) -> String {
    let mut ms: Vec<f64> = samples
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1e3)
        .collect();
    let max = ms.iter().copied().fold(f64::NAN, f64::max);
    format!(
        "{name}: {} commits, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        pct(&mut ms, 0.5),
        pct(&mut ms, 0.99),
        max
    )
}

async fn run(stores: Stores, url: &str, backend: Backend, o: &Opts) {
    let today = Day::of(Utc::now());
    let first = Day(today.0 - 31 - o.days + 1);
    let t = Instant::now();
    seed(&stores, url, backend, o, first).await;
    let stats = stores.archive.partition_stats().await.expect("stats");
    let (positions, bytes) = stats
        .iter()
        .filter(|p| p.day.0 < today.0 - 30 && p.tier == Tier::Packed)
        .fold((0u64, 0u64), |(n, b), p| (n + p.positions, b + p.bytes));
    println!(
        "seeded {} days × {} devices in {:.0} s: {positions} positions, {:.0} MB packed",
        o.days,
        o.devices,
        t.elapsed().as_secs_f64(),
        bytes as f64 / 1e6
    );
    stores
        .archive
        .ensure_partitions(today, Day(today.0 + 1))
        .await
        .expect("partitions");

    let stores = Arc::new(stores);
    let load = {
        let stores = stores.clone();
        let (commits, secs) = (o.commits, o.warm + o.after);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(StdDuration::from_secs_f64(1.0 / commits as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (begin, now) = (Instant::now(), Utc::now());
            let mut samples = Vec::new();
            let mut seq = 0;
            while begin.elapsed().as_secs() < secs {
                tick.tick().await;
                let batch = load_batch(now, seq);
                seq += 1;
                let start = Instant::now();
                stores.core.write_batch(&batch).await.expect("load commit");
                samples.push(Sample {
                    start,
                    latency: start.elapsed(),
                });
            }
            samples
        })
    };
    tokio::time::sleep(StdDuration::from_secs(o.warm)).await;
    let drop_start = Instant::now();
    let dropped = stores
        .archive
        .expire_days(Day(today.0 - 30))
        .await
        .expect("expire_days");
    let drop_end = Instant::now();
    let samples = load.await.expect("load task");
    assert_eq!(dropped.len(), o.days as usize, "every old day dropped");

    let before: Vec<&Sample> = samples.iter().filter(|s| s.start < drop_start).collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start < drop_end && s.start + s.latency > drop_start)
        .collect();
    let second: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.start + s.latency > drop_start && s.start < drop_start + StdDuration::from_secs(1)
        })
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.start >= drop_end).collect();
    println!(
        "dropped {} days in {:.0} ms",
        dropped.len(),
        (drop_end - drop_start).as_secs_f64() * 1e3
    );
    println!("  {}", line("before the drop", &before));
    println!("  {}", line("overlapping the drop", &during));
    println!("  {}", line("first second from the drop", &second));
    println!("  {}", line("after the drop", &after));
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "retention_drop: {} devices × {} days, load {} commits/s of {}×{} records; load average {}",
        o.devices,
        o.days,
        o.commits,
        LOAD_DEVICES,
        LOAD_RECORDS,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/fleetgate.db", dir.path().display());
    let cfg = StorageConfig {
        url: url.clone(),
        ..Default::default()
    };
    println!("SQLite ({})", dir.path().display());
    let stores = rt.block_on(storage::open(&cfg)).expect("open sqlite");
    rt.block_on(run(stores, &url, Backend::Sqlite, &o));

    match pg::Schema::create(&rt, "fgdrop") {
        Ok(schema) => {
            println!("PostgreSQL");
            let cfg = StorageConfig {
                url: schema.url.clone(),
                ..Default::default()
            };
            let stores = rt.block_on(storage::open(&cfg)).expect("open postgres");
            rt.block_on(run(stores, &schema.url, Backend::Postgres, &o));
            schema.drop(&rt);
        }
        Err(e) => println!("PostgreSQL: skipped ({e})"),
    }
}
