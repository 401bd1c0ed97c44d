//! PostgreSQL unreachable for 30 s under tracker traffic, without touching the shared server:
//! the daemon (the real binary) reaches PostgreSQL through an in-test TCP proxy
//! (`tests/common/proxy.rs`), and the proxy is cut while commits are in flight. First half:
//! every open connection goes silent for good (no FIN, no RST: a path that died — the hard
//! case, only a client-side timeout notices; `FLEETGATE_OUTAGE_CLOSE=1` closes them instead)
//! and new connections are black-holed (accepted, never answered); second half: new
//! connections are refused. Meanwhile:
//!
//! - no tracker is acked (once the commits in flight at the cut have returned),
//! - the daemon stays up (`/healthz` 200, `/readyz` 503), counts the failed commits,
//! - its memory stays bounded although flooding trackers keep writing (RSS from
//!   `/proc/<pid>/status`),
//!
//! and once the proxy relays again, every tracker is acked again without a restart (the pool
//! reconnects), every record any tracker saw acked is stored, and the batches sent unacked
//! during the outage and resent afterwards are stored exactly once.

mod common;

use common::process::{rss_kib, spawn, teltonika_only, wait_ready, TeltonikaOnly};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::proxy::{Mode, Proxy};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OUTAGE: Duration = Duration::from_secs(30);

fn record(t_s: i64) -> AvlRecord {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 21, 6, 0, 0).unwrap();
    AvlRecord {
        time: t0 + chrono::Duration::seconds(t_s),
        lat: 55.75 + (t_s % 100) as f64 * 1e-5,
        lon: 37.61,
        speed_kmh: 20,
        course: 90,
        altitude: 150,
        satellites: 10,
        io: vec![],
    }
}

#[derive(Default)]
struct Log {
    /// Fix times (s) of every record the tracker saw acked.
    acked: BTreeMap<String, BTreeSet<i64>>,
    /// When each ack arrived.
    ack_times: Vec<Instant>,
    /// Sends that got no ack (the batch was resent later).
    unacked_sends: u64,
}

async fn login(addr: (&str, u16), imei: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(&encode_imei(imei)).await.ok()?;
    let mut one = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut one)).await {
        Ok(Ok(_)) if one == [1] => Some(s),
        _ => None,
    }
}

/// A well-behaved device: 3-record batches, each resent (reconnecting as needed) until acked;
/// stops starting new batches once `stop` is set.
async fn deliver(port: u16, imei: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let mut conn: Option<TcpStream> = None;
    let mut next = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<AvlRecord> = (next..next + 3).map(record).collect();
        next += 3;
        let packet = encode_avl_packet(CODEC_8, &batch);
        loop {
            if conn.is_none() {
                conn = login(("127.0.0.1", port), &imei).await;
            }
            if let Some(s) = conn.as_mut() {
                let mut ack = [0u8; 4];
                let ok = s.write_all(&packet).await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    && u32::from_be_bytes(ack) as usize == batch.len();
                let mut log = log.lock().unwrap();
                if ok {
                    log.ack_times.push(Instant::now());
                    let set = log.acked.entry(imei.clone()).or_default();
                    set.extend(batch.iter().map(|r| r.time.timestamp()));
                    break;
                }
                log.unacked_sends += 1;
                drop(log);
                conn = None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A device that never waits for acks: writes 60-record batches as fast as the socket takes
/// them until `until`. Returns the bytes it got into the socket.
async fn flood(port: u16, imei: String, until: Instant) -> usize {
    let Some(s) = login(("127.0.0.1", port), &imei).await else {
        return 0;
    };
    common::teltonika::flood(s, until, |k| {
        let batch: Vec<AvlRecord> = (k * 60..k * 60 + 60).map(record).collect();
        encode_avl_packet(CODEC_8, &batch)
    })
    .await
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_30_s_acks_nothing_then_loses_nothing() {
    let schema = common::pg::PgSchema::create().await;
    let upstream = "127.0.0.1:5432";
    assert!(
        schema.url.contains(upstream),
        "the test proxies {upstream}; FLEETGATE_TEST_PG_URL points elsewhere: {}",
        common::pg::base_url()
    );
    let proxy = Proxy::start(upstream.parse().unwrap()).await;
    let url = schema.url.replace(upstream, &proxy.addr.to_string());

    let dir = tempfile::tempdir().unwrap();
    let TeltonikaOnly {
        config: cfg_path,
        tracker_port: tport,
        api,
    } = teltonika_only(
        dir.path(),
        // A small pool, the hard case: before every storage call had a deadline and a silent
        // connection was closed on release (src/storage/deadline.rs), the connections a freeze
        // stranded took all four and ingest never recovered (docs/reliability.md).
        &format!("url = \"{url}\"\nmax_connections = 4"),
    );
    let mut child = spawn(&cfg_path);
    wait_ready(&api).await;

    let imeis: Vec<String> = (0..5).map(|i| format!("35630704244150{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let deliverers: Vec<_> = imeis
        .iter()
        .map(|imei| tokio::spawn(deliver(tport, imei.clone(), stop.clone(), log.clone())))
        .collect();
    // Flooders log in (and are registered) before the outage.
    let flood_imeis: Vec<String> = (0..20).map(|i| format!("3563070424416{i:02}")).collect();
    for imei in &flood_imeis {
        let mut t = login(("127.0.0.1", tport), imei).await.expect("login");
        t.write_all(&encode_avl_packet(CODEC_8, &[record(0)]))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        t.read_exact(&mut ack).await.unwrap();
    }
    wait_for("every tracker acked before the outage", 60, || {
        let l = log.lock().unwrap();
        imeis
            .iter()
            .all(|i| l.acked.get(i).is_some_and(|s| s.len() >= 6))
    })
    .await;
    let errors_before = common::metric(&api, "fleetgate_storage_commit_errors_total", &[]).await;
    let before = rss_kib(&child);

    // The flooders start first, so that commits are in flight when the path dies.
    let flooders: Vec<_> = flood_imeis
        .iter()
        .map(|imei| tokio::spawn(flood(tport, imei.clone(), Instant::now() + OUTAGE)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The outage: the open connections go silent for good (or, with
    // FLEETGATE_OUTAGE_CLOSE set, are closed), new ones are black-holed; then refused.
    let first = if std::env::var("FLEETGATE_OUTAGE_CLOSE").is_ok() {
        Mode::BlackHole
    } else {
        Mode::Freeze
    };
    proxy.set(first);
    let down = Instant::now();
    tokio::time::sleep(OUTAGE / 2).await;
    proxy.set(Mode::Refuse);
    let (status, _) = api.text("/healthz").await;
    assert_eq!(status, 200, "alive during the outage");
    let (status, _) = api.text("/readyz").await;
    assert_eq!(status, 503, "not ready without storage");
    let mut written = 0;
    for f in flooders {
        written += f.await.unwrap();
    }
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let during = rss_kib(&child);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon survived the outage"
    );
    let acks_at_cut = log.lock().unwrap().ack_times.len();
    proxy.set(Mode::Up);
    let up = Instant::now();

    // Everyone is served again without a restart.
    wait_for("acks after recovery", 120, || {
        let l = log.lock().unwrap();
        l.ack_times.iter().filter(|&&a| a >= up).count() >= 3 * imeis.len()
    })
    .await;
    let resumed = log
        .lock()
        .unwrap()
        .ack_times
        .iter()
        .find(|&&a| a >= up)
        .map(|&a| a - up);
    stop.store(true, Ordering::Relaxed);
    for d in deliverers {
        tokio::time::timeout(Duration::from_secs(120), d)
            .await
            .expect("deliverer finishes its last batch")
            .unwrap();
    }
    let after = rss_kib(&child);
    let errors_after = common::metric(&api, "fleetgate_storage_commit_errors_total", &[]).await;
    let timeouts = common::metric(&api, "fleetgate_storage_timeouts_total", &[]).await as u64;
    let abandoned =
        common::metric(&api, "fleetgate_storage_connections_abandoned_total", &[]).await as u64;
    let (status, _) = api.text("/readyz").await;
    assert_eq!(status, 200, "ready again");

    // What is in PostgreSQL, read directly (not through the daemon).
    let rows = common::stored::fix_times(&schema.url).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let log = log.lock().unwrap();
    let during_acks = log
        .ack_times
        .iter()
        .filter(|&&a| a > down + Duration::from_secs(5) && a < up)
        .count();
    let mut stored: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut dupes = 0;
    for (dev, ms) in &rows {
        if !stored.entry(dev.clone()).or_default().insert(ms / 1000) {
            dupes += 1;
        }
    }
    let acked_total: usize = log.acked.values().map(|s| s.len()).sum();
    println!(
        "outage {}s ({first:?}, then refused): proxy held {} and refused {} connection attempts; {} commit errors; \
         acks before the cut {acks_at_cut}, during {during_acks}, total {}; {} unacked sends resent; \
         {acked_total} records acked, {} rows stored; flooders wrote {} KiB; \
         RSS {before} KiB before, {during} KiB during, {after} KiB after; {timeouts} storage calls \
         timed out, {abandoned} silent connections closed on release; first ack {resumed:?} after \
         the path came back",
        OUTAGE.as_secs(),
        proxy.held.load(Ordering::Relaxed),
        proxy.refused.load(Ordering::Relaxed),
        errors_after - errors_before,
        log.ack_times.len(),
        log.unacked_sends,
        rows.len(),
        written / 1024,
    );
    assert_eq!(during_acks, 0, "acked while PostgreSQL was unreachable");
    assert!(
        proxy.held.load(Ordering::Relaxed) + proxy.refused.load(Ordering::Relaxed) > 0,
        "the daemon tried to reach PostgreSQL during the outage"
    );
    assert!(errors_after > errors_before, "failed commits are counted");
    assert!(
        log.unacked_sends > 0,
        "trackers sent during the outage and were not acked"
    );
    assert_eq!(dupes, 0, "a record stored twice");
    for (imei, acked) in &log.acked {
        let got = stored.get(imei).cloned().unwrap_or_default();
        let lost: Vec<_> = acked.difference(&got).collect();
        assert!(lost.is_empty(), "{imei}: acked but not stored: {lost:?}");
    }
    // One frame in flight per connection, bounded channels: no queue of what the flooders
    // wrote. A daemon that kept reading would hold most of it.
    assert!(
        during.saturating_sub(before) < 24 * 1024,
        "daemon grew by {} KiB during the outage",
        during.saturating_sub(before)
    );
    drop(schema);
}
