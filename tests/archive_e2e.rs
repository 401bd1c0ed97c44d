//! The archive with the real binary: `fleetgate storage compact` beside a live daemon leaves
//! every track as it was (within the chunk codec's precision) and `storage stats` shows it
//! packed; `kill -9` of a compaction or of a migration loses and duplicates nothing acked.

mod common;

use common::process::{dies_with_test, spawn, teltonika_only, wait_ready};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Acked = Arc<Mutex<BTreeSet<(String, i64)>>>;

/// Send `packets` packets of 5 records `step_ms` apart from `start_ms`, each after the
/// previous one's ack; record what was acked.
async fn tracker(
    port: u16,
    imei: String,
    start_ms: i64,
    step_ms: i64,
    packets: usize,
    acked: Acked,
) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    s.write_all(&encode_imei(&imei)).await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    let mut t = start_ms;
    for _ in 0..packets {
        let recs: Vec<_> = (0..5)
            .map(|i| {
                t += step_ms;
                AvlRecord {
                    time: Utc.timestamp_millis_opt(t).unwrap(),
                    lat: 55.7 + (t % 1_000_000) as f64 * 1e-7 + i as f64 * 1e-5,
                    lon: 37.6 - (t % 777_777) as f64 * 1e-7,
                    speed_kmh: (t % 90) as u16,
                    course: (t % 360) as u16,
                    altitude: 150,
                    satellites: 9,
                    io: vec![],
                }
            })
            .collect();
        if s.write_all(&encode_avl_packet(CODEC_8E, &recs))
            .await
            .is_err()
        {
            return;
        }
        let mut ack = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack)).await {
            Ok(Ok(_)) if ack == [0, 0, 0, 5] => {
                let mut a = acked.lock().unwrap();
                for r in &recs {
                    a.insert((imei.clone(), r.time.timestamp_millis()));
                }
            }
            _ => return,
        }
    }
}

fn fleetgate(args: &[&str], config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    dies_with_test(&mut cmd);
    cmd
}

/// Every stored position of `imei` through the API: (time ms, lat, lon, speed).
async fn api_track(api: &common::Api, imei: &str) -> Vec<(i64, f64, f64, f64)> {
    let (status, track) = api
        .get(&format!(
            "/api/v1/vehicles/{imei}/track?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z&limit=100000"
        ))
        .await;
    assert_eq!(status, 200, "{track}");
    track
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis(),
                p["lat"].as_f64().unwrap(),
                p["lon"].as_f64().unwrap(),
                p["speed_kmh"].as_f64().unwrap_or_default(),
            )
        })
        .collect()
}

fn base_ms() -> i64 {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}

const DEVICES: usize = 6;

fn imei(i: usize) -> String {
    format!("35100000000{i:04}")
}

/// Ingest three days of fixes from DEVICES trackers into the daemon behind `t`.
async fn ingest(port: u16, acked: &Acked, packets: usize, offset_ms: i64) {
    let tasks: Vec<_> = (0..DEVICES)
        .map(|i| {
            tokio::spawn(tracker(
                port,
                imei(i),
                base_ms() + offset_ms,
                // 5 records of 3 minutes: 100 packets span ~25 hours.
                180_000,
                packets,
                acked.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_compact_beside_a_live_daemon_keeps_every_track() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/fg.db", dir.path().display());
    compact_beside_a_live_daemon(dir.path(), &url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_compact_beside_a_live_daemon_keeps_every_track_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let schema = common::pg::PgSchema::create().await;
    compact_beside_a_live_daemon(dir.path(), &schema.url, "postgres").await;
    drop(schema);
}

async fn compact_beside_a_live_daemon(dir: &std::path::Path, url: &str, backend: &str) {
    let t = teltonika_only(dir, &format!("url = \"{url}\""));
    let mut daemon = spawn(&t.config);
    wait_ready(&t.api).await;
    let acked: Acked = Default::default();
    ingest(t.tracker_port, &acked, 120, 0).await;
    let mut before = Vec::new();
    for i in 0..DEVICES {
        before.push(api_track(&t.api, &imei(i)).await);
    }
    assert_eq!(
        before.iter().map(Vec::len).sum::<usize>(),
        acked.lock().unwrap().len()
    );

    // Compaction while the trackers keep sending (later fixes, same days).
    let more = {
        let (port, a2) = (t.tracker_port, acked.clone());
        tokio::spawn(async move { ingest(port, &a2, 40, 130 * 5 * 180_000).await })
    };
    let out = fleetgate(&["storage", "compact"], &t.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("compacted ({backend})")), "{said}");
    more.await.unwrap();

    for (i, old) in before.iter().enumerate() {
        let now = api_track(&t.api, &imei(i)).await;
        let now_first: Vec<_> = now.iter().take(old.len()).collect();
        assert_eq!(now_first.len(), old.len());
        for (a, b) in old.iter().zip(now_first) {
            assert_eq!(a.0, b.0, "fix times identical");
            assert!(
                (a.1 - b.1).abs() < 1e-6 && (a.2 - b.2).abs() < 1e-6,
                "{a:?} vs {b:?}"
            );
            assert!((a.3 - b.3).abs() < 0.5, "{a:?} vs {b:?}");
        }
        let times: BTreeSet<i64> = now.iter().map(|p| p.0).collect();
        assert_eq!(times.len(), now.len(), "no fix time twice");
    }
    let stored: usize = {
        let mut n = 0;
        for i in 0..DEVICES {
            n += api_track(&t.api, &imei(i)).await.len();
        }
        n
    };
    assert_eq!(stored, acked.lock().unwrap().len());

    // Every day `storage compact` packed has its daily summary, as if the daemon had packed
    // it (it will never see that day hot again): each device's summaries cover at least the
    // fixes stored before the compaction started.
    for (i, old) in before.iter().enumerate() {
        let (status, v) = t
            .api
            .get(&format!(
                "/api/v1/vehicles/{}/summaries?from=2026-05-31&to=2026-06-05",
                imei(i)
            ))
            .await;
        assert_eq!(status, 200, "{v}");
        let days = v["days"].as_array().unwrap();
        assert!(
            !days.is_empty(),
            "no daily summary after storage compact: {v}"
        );
        let positions: u64 = days.iter().map(|d| d["positions"].as_u64().unwrap()).sum();
        assert!(
            positions >= old.len() as u64,
            "{positions} < {}: {v}",
            old.len()
        );
        assert!(
            days.iter().all(|d| d["distance_m"].as_f64().unwrap() > 0.0),
            "{v}"
        );
    }

    let out = fleetgate(&["storage", "stats"], &t.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(
        stats.lines().next().unwrap().contains("bytes/pos"),
        "{stats}"
    );
    assert!(
        stats.contains("packed") && stats.contains("position_chunks_d2026060"),
        "{stats}"
    );
    let total = stats.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(total.contains(&stored.to_string()), "{stats}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

common::both_backends!(sigkill_during_compaction_loses_and_duplicates_nothing);
async fn sigkill_during_compaction_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = teltonika_only(
        dir.path(),
        &format!("url = \"{}\"", common::storage_url(dir.path())),
    );
    let mut daemon = spawn(&t.config);
    wait_ready(&t.api).await;
    let acked: Acked = Default::default();
    ingest(t.tracker_port, &acked, 150, 0).await;
    for round in 0..4 {
        let mut child = fleetgate(&["storage", "compact"], &t.config)
            .spawn()
            .unwrap();
        let ingesting = {
            let (port, a) = (t.tracker_port, acked.clone());
            tokio::spawn(async move {
                let off = (200 + round * 20) as i64 * 5 * 180_000;
                tracker(port, imei(round), base_ms() + off, 180_000, 10, a).await
            })
        };
        let wait = rand::thread_rng().gen_range(30..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let _ = child.kill();
        child.wait().unwrap();
        ingesting.await.unwrap();
    }
    // Whatever was left, packed now.
    let out = fleetgate(&["storage", "compact"], &t.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked = acked.lock().unwrap().clone();
    for i in 0..DEVICES {
        let track = api_track(&t.api, &imei(i)).await;
        let times: Vec<i64> = track.iter().map(|p| p.0).collect();
        let unique: BTreeSet<i64> = times.iter().copied().collect();
        assert_eq!(unique.len(), times.len(), "duplicated fix times");
        let mine: BTreeSet<i64> = acked
            .iter()
            .filter(|(d, _)| *d == imei(i))
            .map(|(_, t)| *t)
            .collect();
        let missing: Vec<_> = mine.difference(&unique).collect();
        assert!(missing.is_empty(), "acked but lost: {missing:?}");
        assert_eq!(unique, mine, "stored = acked");
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// Positions of the fixture database (made by main before the archive), as (device, ms).
fn fixture_rows(file: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(file).unwrap();
    let mut q = conn
        .prepare("SELECT device_id, fix_time FROM positions ORDER BY device_id, fix_time")
        .unwrap();
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_migration_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fg.db");
    std::fs::copy("tests/fixtures/sqlite_main_d346fd1.db", &file).unwrap();
    // More closed days for the migration to chew on: the fixture's rows copied 40 days back.
    {
        let conn = rusqlite::Connection::open(&file).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE k(n) AS (SELECT 4 UNION ALL SELECT n + 1 FROM k WHERE n < 44) \
             INSERT INTO positions SELECT device_id, fix_time - 86400000 * n, server_time, valid, \
             lat, lon, speed_kmh, course, altitude, satellites, ignition, motion, odometer_m, \
             gps_odometer_m, inputs, outputs, power_v, alarm, attributes \
             FROM positions, k WHERE fix_time > (SELECT MAX(fix_time) FROM positions) - 3600000",
        )
        .unwrap();
    }
    let raw = fixture_rows(&file);
    let t = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}\"", file.display()),
    );
    for _ in 0..4 {
        let mut child = fleetgate(&["migrate"], &t.config).spawn().unwrap();
        let wait = rand::thread_rng().gen_range(20..300);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let _ = child.kill();
        child.wait().unwrap();
    }
    let out = fleetgate(&["migrate"], &t.config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied (sqlite)"));

    // The daemon on the converted database: every row there once.
    let mut daemon = spawn(&t.config);
    wait_ready(&t.api).await;
    let devices: BTreeSet<&String> = raw.iter().map(|r| &r.0).collect();
    let mut seen = Vec::new();
    for d in devices {
        let (status, track) = t
            .api
            .get(&format!(
                "/api/v1/vehicles/{d}/track?from=1970-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=100000"
            ))
            .await;
        assert_eq!(status, 200);
        for p in track.as_array().unwrap() {
            let ms = chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            seen.push((d.clone(), ms));
        }
    }
    seen.sort();
    assert_eq!(seen.len(), raw.len(), "nothing lost, nothing twice");
    assert_eq!(seen, raw);
    let out = fleetgate(&["storage", "stats"], &t.config)
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(stats.contains("packed"), "{stats}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// The daemon started on an old database says so and converts it by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_converts_an_old_database_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fg.db");
    std::fs::copy("tests/fixtures/sqlite_main_d346fd1.db", &file).unwrap();
    let raw = fixture_rows(&file);
    let t = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}\"", file.display()),
    );
    let log = dir.path().join("daemon.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
    cmd.args(["run", "--config"])
        .arg(&t.config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    dies_with_test(&mut cmd);
    let mut daemon = cmd.spawn().unwrap();
    wait_ready(&t.api).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("old layout converted") {
            assert!(
                text.contains("found positions in the layout of an older fleetgate"),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no conversion: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = &raw[0].0;
    let (status, track) = t
        .api
        .get(&format!(
            "/api/v1/vehicles/{d}/track?from=1970-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=100000"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        track.as_array().unwrap().len(),
        raw.iter().filter(|r| &r.0 == d).count()
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// PostgreSQL: `fleetgate migrate` moving `positions_legacy` into chunks, killed at random
/// moments and run again: every row there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_postgres_migration_loses_and_duplicates_nothing() {
    use fleetgate::model::DeviceId;
    let dir = tempfile::tempdir().unwrap();
    let schema = common::pg::PgSchema::create().await;
    let cfg = fleetgate::config::StorageConfig {
        url: schema.url.clone(),
        max_connections: 2,
        ..Default::default()
    };
    // Migrations applied, then the layout of a database from before migration 0010: rows in
    // one unpartitioned table (written by SQL: the group commit no longer writes rows).
    let stores = fleetgate::storage::open(&cfg).await.unwrap();
    drop(stores);
    let mut written = BTreeSet::new();
    for dev in 0..8 {
        for day in 0..20i64 {
            for i in 0..50i64 {
                written.insert((
                    format!("dev-{dev}"),
                    base_ms() + day * 86_400_000 + i * 60_000,
                ));
            }
        }
    }
    let pool = sqlx::PgPool::connect(&cfg.url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE positions_legacy (LIKE positions INCLUDING ALL); \
         INSERT INTO positions_legacy (device_id, fix_time, server_time, valid, lat, lon, \
         speed_kmh, course, altitude, gps_odometer_m, attributes) \
         SELECT 'dev-' || dev, {b} + day * 86400000 + i * 60000, {b} + day * 86400000 + i * 60000, \
         true, 55.7 + i * 1e-4, 37.6, 0, 0, 0, 0, '{{}}'::jsonb \
         FROM generate_series(0, 7) dev, generate_series(0, 19) day, generate_series(0, 49) i",
        b = base_ms()
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let config = dir.path().join("fg.toml");
    std::fs::write(&config, format!("[storage]\nurl = \"{}\"\n", schema.url)).unwrap();
    let mut interrupted = 0;
    for _ in 0..4 {
        let mut child = fleetgate(&["migrate"], &config).spawn().unwrap();
        let wait = rand::thread_rng().gen_range(40..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
    }
    let out = fleetgate(&["migrate"], &config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "interrupted {interrupted} times; last run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stores = fleetgate::storage::open(&cfg).await.unwrap();
    assert!(!stores.layout.old_layout().await.unwrap());
    let mut seen = Vec::new();
    for dev in 0..8 {
        let device = format!("dev-{dev}");
        let t = stores
            .core
            .track(
                &DeviceId::new(device.as_str()),
                Utc.timestamp_millis_opt(base_ms() - 86_400_000).unwrap(),
                Utc.timestamp_millis_opt(base_ms() + 40 * 86_400_000)
                    .unwrap(),
                1_000_000,
            )
            .await
            .unwrap();
        seen.extend(
            t.iter()
                .map(|p| (device.clone(), p.time.timestamp_millis())),
        );
    }
    assert_eq!(seen.len(), written.len(), "nothing lost, nothing twice");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), written);
    drop(schema);
}

common::both_backends!(sigkill_during_a_partition_drop_loses_and_duplicates_nothing);
/// `[retention] positions_days` drops old day partitions in the daemon's archive pass (the
/// first one runs at start-up). Killed with SIGKILL during start-up passes and while trackers
/// upload recent fixes, then started again: every recent fix acked is stored once, and the
/// expired days are gone once a start-up finishes its pass.
async fn sigkill_during_a_partition_drop_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = teltonika_only(
        dir.path(),
        &format!("url = \"{}\"", common::storage_url(dir.path())),
    );
    // Old days first, kept: June, one fix an hour for ~8 days per device, packed by day.
    let mut daemon = spawn(&t.config);
    wait_ready(&t.api).await;
    let old: Acked = Default::default();
    let tasks: Vec<_> = (0..DEVICES)
        .map(|i| {
            tokio::spawn(tracker(
                t.tracker_port,
                imei(i),
                base_ms(),
                3_600_000,
                40,
                old.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(old.lock().unwrap().len(), DEVICES * 200);
    let june = api_track(&t.api, &imei(0)).await;
    assert!(
        june.len() > 100,
        "June is stored before it expires: {}",
        june.len()
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let out = fleetgate(&["storage", "compact"], &t.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Now positions older than 30 days expire.
    let mut cfg = std::fs::read_to_string(&t.config).unwrap();
    cfg.push_str("[retention]\npositions_days = 30\n");
    std::fs::write(&t.config, cfg).unwrap();
    let recent: Acked = Default::default();
    // Recent fixes 3 minutes apart (the fixtures' coordinates wrap every 777,777 ms: closer
    // fixes would jump kilometres in a second and be filtered out, acked but not stored).
    let start = Utc::now().timestamp_millis() - 30 * 3_600_000;
    for round in 0..4usize {
        let mut child = spawn(&t.config);
        let ingesting = if round % 2 == 1 {
            wait_ready(&t.api).await;
            let (port, a) = (t.tracker_port, recent.clone());
            let from = start + round as i64 * 6 * 3_600_000;
            Some(tokio::spawn(async move {
                tracker(port, imei(round), from, 180_000, 20, a).await
            }))
        } else {
            None
        };
        let wait = rand::thread_rng().gen_range(0..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let _ = child.kill();
        child.wait().unwrap();
        if let Some(i) = ingesting {
            i.await.unwrap();
        }
    }

    let mut daemon = spawn(&t.config);
    wait_ready(&t.api).await;
    let recent = recent.lock().unwrap().clone();
    for i in 0..DEVICES {
        let mine: BTreeSet<i64> = recent
            .iter()
            .filter(|(d, _)| *d == imei(i))
            .map(|(_, t)| *t)
            .collect();
        // The start-up pass runs beside the API: wait until no June fix is served any more.
        let mut track = api_track(&t.api, &imei(i)).await;
        for _ in 0..100 {
            if track.iter().all(|p| p.0 >= start) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            track = api_track(&t.api, &imei(i)).await;
        }
        let times: Vec<i64> = track.iter().map(|p| p.0).collect();
        let unique: BTreeSet<i64> = times.iter().copied().collect();
        assert_eq!(unique.len(), times.len(), "duplicated fix times");
        assert!(
            times.iter().all(|t| *t >= start),
            "an expired fix is still served"
        );
        assert_eq!(
            unique,
            mine,
            "stored = acked for the recent fixes of {}",
            imei(i)
        );
    }
    let (status, body) = api_get_june(&t.api).await;
    assert_eq!(status, 410, "{body}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// The first device's track for June, all expired.
async fn api_get_june(api: &common::Api) -> (u16, serde_json::Value) {
    let (status, body) = api
        .get(&format!(
            "/api/v1/vehicles/{}/track?from=2026-06-01T00:00:00Z&to=2026-06-30T00:00:00Z",
            imei(0)
        ))
        .await;
    (status, body)
}
