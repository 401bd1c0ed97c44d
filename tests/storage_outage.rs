//! SQLite busy/locked: another process holds the database's write lock. Meanwhile no tracker
//! is acked, nothing crashes, and the daemon's memory stays bounded (each connection has at
//! most one frame in flight; the shard and writer queues are bounded channels; a flooding
//! tracker is held back by TCP flow control). When the lock goes, everything resumes and
//! nothing acknowledged is lost.

mod common;

use common::process::{rss_kib, spawn, teltonika_only, wait_ready, TeltonikaOnly};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::{Api, Tracker};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};
use fleetgate::protocols::{Protocol, Transport};
use sqlx::{Connection, SqliteConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn records(start_s: i64, n: usize) -> Vec<AvlRecord> {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 21, 6, 0, 0).unwrap();
    (0..n)
        .map(|i| AvlRecord {
            time: t0 + chrono::Duration::seconds(start_s + i as i64),
            lat: 55.75 + i as f64 * 1e-5,
            lon: 37.61,
            speed_kmh: 20,
            course: 90,
            altitude: 150,
            satellites: 10,
            io: vec![],
        })
        .collect()
}

/// Hold SQLite's write lock from another connection (as another process would).
async fn lock(db: &std::path::Path) -> SqliteConnection {
    let mut c = SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("second connection");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut c)
        .await
        .expect("write lock");
    c
}

async fn unlock(mut c: SqliteConnection) {
    sqlx::query("COMMIT").execute(&mut c).await.expect("commit");
    c.close().await.ok();
}

async fn stored(api: &Api, imei: &str) -> usize {
    let (status, track) = api
        .get(&format!(
            "/api/v1/vehicles/{imei}/track?from=2026-11-21T00:00:00Z&to=2026-11-22T00:00:00Z&limit=100000"
        ))
        .await;
    assert_eq!(status, 200, "{track}");
    track.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lock_delays_acks_until_the_commit_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(dir.path(), "").await;
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let imeis = ["356307042441201", "356307042441202", "356307042441203"];
    let mut trackers = Vec::new();
    for imei in imeis {
        let mut t = Tracker::connect(addr).await;
        t.send(&encode_imei(imei)).await;
        assert_eq!(t.read(1).await, [1]);
        t.send(&encode_avl_packet(CODEC_8, &records(0, 3))).await;
        assert_eq!(t.read(4).await, [0, 0, 0, 3]);
        trackers.push(t);
    }

    let held = lock(&dir.path().join("fleetgate.db")).await;
    let locked_at = Instant::now();
    for t in &mut trackers {
        t.send(&encode_avl_packet(CODEC_8, &records(100, 4))).await;
    }
    for t in &mut trackers {
        assert!(
            t.read_for(700).await.is_empty(),
            "no ack while storage is locked"
        );
    }
    let (status, _) = api.text("/healthz").await;
    assert_eq!(status, 200, "the daemon is alive during the outage");
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(locked_at.elapsed())).await;
    unlock(held).await;

    for t in &mut trackers {
        assert_eq!(t.read(4).await, [0, 0, 0, 4], "acked once committed");
    }
    assert!(locked_at.elapsed() >= Duration::from_secs(3));
    for imei in imeis {
        assert_eq!(stored(&api, imei).await, 7, "{imei}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_past_the_busy_timeout_fails_unacked_and_the_resend_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(dir.path(), "").await;
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let imei = "356307042441204";
    let errors_before = common::metric(&api, "fleetgate_storage_commit_errors_total", &[]).await;

    // Registered and served before the outage (logins then need no write).
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1]);
    t.send(&encode_avl_packet(CODEC_8, &records(100, 1))).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 1]);

    let held = lock(&dir.path().join("fleetgate.db")).await;
    let locked_at = Instant::now();
    let batch = encode_avl_packet(CODEC_8, &records(0, 5));
    t.send(&batch).await;
    // SQLite's busy timeout (10 s) expires: the batch fails, is not acked, the tracker is
    // disconnected so that it resends.
    let mut reply = vec![0u8; 16];
    // 10 s busy timeout per attempt plus the writer's retry window: allow for a loaded CI box.
    let n = tokio::time::timeout(Duration::from_secs(60), t.stream.read(&mut reply))
        .await
        .expect("the connection ends within 60 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an ack: {:?}", &reply[..n]);
    assert!(locked_at.elapsed() >= Duration::from_secs(9));
    unlock(held).await;
    assert!(
        common::metric(&api, "fleetgate_storage_commit_errors_total", &[]).await
            >= errors_before + 1.0
    );

    // The tracker reconnects and resends the same batch: acked and stored exactly once.
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1]);
    t.send(&batch).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 5]);
    t.send(&batch).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 5]);
    assert_eq!(stored(&api, imei).await, 6);
    d.stop().await;
}

/// A logged-in tracker connection.
async fn login(port: u16, imei: String) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&encode_imei(&imei)).await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    assert_eq!(one, [1]);
    s
}

/// A tracker that never waits for acks: writes 60-record batches as fast as the socket
/// takes them.
async fn flood(s: TcpStream, until: Instant) -> usize {
    common::teltonika::flood(s, until, |k| {
        encode_avl_packet(CODEC_8, &records(k * 60, 60))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_storage_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let TeltonikaOnly {
        config: cfg_path,
        tracker_port: tport,
        api,
    } = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}/fg.db\"", dir.path().display()),
    );
    let mut child = spawn(&cfg_path);
    wait_ready(&api).await;
    let before = rss_kib(&child);

    let mut conns = Vec::new();
    for i in 0..40 {
        conns.push(login(tport, format!("3563070424413{i:02}")).await);
    }
    let held = lock(&dir.path().join("fg.db")).await;
    let until = Instant::now() + Duration::from_secs(4);
    let floods: Vec<_> = conns
        .into_iter()
        .map(|s| tokio::spawn(flood(s, until)))
        .collect();
    let mut written = 0;
    for f in floods {
        written += f.await.unwrap();
    }
    let during = rss_kib(&child);
    unlock(held).await;

    // After the outage a well-behaved tracker is served at once.
    let mut t = Tracker::connect(format!("127.0.0.1:{tport}").parse().unwrap()).await;
    t.send(&encode_imei("356307042441399")).await;
    assert_eq!(t.read(1).await, [1]);
    t.send(&encode_avl_packet(CODEC_8, &records(0, 2))).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 2], "resumed after the lock");
    let after = rss_kib(&child);
    println!(
        "flooders wrote {} KiB during a 4 s lock; daemon RSS {before} KiB before, {during} KiB during, {after} KiB after",
        written / 1024
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // 40 connections × (one frame in flight + a 64 KiB read buffer) is a few MiB; a daemon
    // that kept reading into a queue would take in hundreds of MiB from loopback flooders.
    assert!(
        during.saturating_sub(before) < 16 * 1024,
        "daemon grew by {} KiB while locked",
        during.saturating_sub(before)
    );
}
