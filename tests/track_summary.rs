//! `/track/summary` over a long track stays in bounded memory and gives the right answer on
//! both backends (issue #21: 1 M positions took +2.6 GB when the whole track was loaded).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{rss_kib, spawn, teltonika_only, wait_ready};
use fleetgate::pipeline::filter::haversine_m;

/// Positions of the long track: 1 M, as in the issue.
const ROWS: i64 = 1_000_000;
/// First fix: 2026-01-01T00:00:00Z, one fix a second.
const T0_MS: i64 = 1_767_225_600_000;

/// Rows alternate between two latitudes 0.001° apart, so every step has the same length.
fn expected_km(rows: i64) -> f64 {
    (rows - 1) as f64 * haversine_m(55.0, 37.6, 55.001, 37.6) / 1000.0
}

/// The insert both backends accept: `n` fixes of `dev-long` from `T0_MS`, one a second.
fn insert_sql(n: i64, series: &str, attrs: &str) -> String {
    format!(
        "INSERT INTO positions (device_id, fix_time, server_time, valid, lat, lon, speed_kmh, \
         course, altitude, satellites, gps_odometer_m, attributes) \
         SELECT 'dev-long', {T0_MS} + i * 1000, {T0_MS} + i * 1000, TRUE, \
         55.0 + (i % 2) * 0.001, 37.6, 40.0, 90.0, 150.0, 9, 0.0, {attrs} FROM {series}",
        series = series.replace("{n}", &(n - 1).to_string())
    )
}

fn check(s: &serde_json::Value, rows: i64) {
    assert_eq!(s["count"], rows, "{s}");
    let km = s["distance_km"].as_f64().unwrap();
    let want = expected_km(rows);
    assert!(
        (km - want).abs() < want * 1e-9,
        "distance {km} km, want {want}"
    );
    assert_eq!(s["first"]["time"], "2026-01-01T00:00:00Z");
    let last = chrono::DateTime::from_timestamp_millis(T0_MS + (rows - 1) * 1000).unwrap();
    assert_eq!(
        s["last"]["time"].as_str().unwrap(),
        last.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(s["last"]["lat"], if rows % 2 == 0 { 55.001 } else { 55.0 });
}

const RANGE: &str = "from=2025-12-31T00:00:00Z&to=2026-02-01T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_of_a_million_positions_is_right_in_bounded_memory_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleetgate.db");
    let setup = teltonika_only(dir.path(), &format!("url = \"sqlite://{}\"", db.display()));
    let mut child = spawn(&setup.config);
    wait_ready(&setup.api).await;
    let (st, _) = setup
        .api
        .put(
            "/api/v1/vehicles/car-long",
            serde_json::json!({"device_id": "dev-long"}),
        )
        .await;
    assert_eq!(st, 200);

    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let started = Instant::now();
    sqlx::query(&insert_sql(
        ROWS,
        "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s)",
        "'{}'",
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    eprintln!("inserted {ROWS} rows in {:?}", started.elapsed());

    // Sample the daemon's RSS while it answers.
    let baseline = rss_kib(&child);
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let pid = child.id();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_of(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let r = setup
        .api
        .client
        .get(format!(
            "{}/api/v1/vehicles/car-long/track/summary?{RANGE}",
            setup.api.base
        ))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = r.json().await.unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;
    eprintln!(
        "summary of {ROWS} positions: {took:?}, RSS {baseline} KiB + {growth_mib} MiB at peak"
    );
    check(&s, ROWS);
    // One page of 10,000 points at a time (20 MiB measured, SQLite's caches included); the
    // whole track was ~2.6 GB.
    assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB");
    let _ = child.kill();
    let _ = child.wait();
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_across_many_pages_is_right_on_postgres() {
    let schema = common::pg::PgSchema::create().await;
    let daemon = common::start_with_storage(&schema.url, "").await;
    let api = common::Api::new(daemon.api_addr);
    let (st, _) = api
        .put(
            "/api/v1/vehicles/car-long",
            serde_json::json!({"device_id": "dev-long"}),
        )
        .await;
    assert_eq!(st, 200);
    // Several pages and a partial last one.
    let rows = 45_001;
    // Rows as versions before the small chunks wrote them (one per position, read and
    // compacted as they are): the hot table is partitioned by day, and nothing creates its
    // partitions any more, so the day's is made here as those versions made it.
    let first = fleetgate::archive::store::Day::of_ms(T0_MS);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&schema.url)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE positions_d{} PARTITION OF positions FOR VALUES FROM ({}) TO ({})",
        first.date().format("%Y%m%d"),
        first.start_ms(),
        first.end_ms()
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&insert_sql(
        rows,
        "generate_series(0, {n}) AS s(i)",
        "'{}'::jsonb",
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (st, s) = api
        .get(&format!("/api/v1/vehicles/car-long/track/summary?{RANGE}"))
        .await;
    assert_eq!(st, 200, "{s}");
    check(&s, rows);
    // A range that cuts the track: [T0 + 10 s, T0 + 20 s) holds ten fixes.
    let (_, s) = api
        .get("/api/v1/vehicles/car-long/track/summary?from=2026-01-01T00:00:10Z&to=2026-01-01T00:00:20Z")
        .await;
    assert_eq!(s["count"], 10, "{s}");
    assert_eq!(s["first"]["time"], "2026-01-01T00:00:10Z");
    assert_eq!(s["last"]["time"], "2026-01-01T00:00:19Z");
    daemon.stop().await;
}
