//! A flood of valid UDP datagrams neither grows memory without bound nor starves TCP trackers
//! (issue #21: 1.73 M datagrams in 20 s took RSS from 0.6 to 3.2 GB, never returned, and TCP
//! acks fell ~97 %). Loopback only, bounded in time.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::process::{rss_kib, spawn, teltonika_only, wait_ready};
use common::teltonika::{login, rec, send_records};
use fleetgate::protocols::teltonika::{encode_avl_packet, CODEC_8E};

const FLOOD: Duration = Duration::from_secs(10);
/// The table size the test configures: small, so the flood's sources churn through it.
const MAX_SOURCES: usize = 1000;

/// A Teltonika UDP datagram from `imei` with one record `ago_ms` before now.
fn datagram(packet_id: u16, imei: &str, ago_ms: i64) -> Vec<u8> {
    let mut r = rec(0, 30, true, None);
    r.time = chrono::Utc::now() - chrono::Duration::milliseconds(ago_ms);
    let tcp = encode_avl_packet(CODEC_8E, &[r]);
    let avl = &tcp[8..tcp.len() - 4];
    let mut b = BytesMut::new();
    b.put_u16((2 + 1 + 1 + 2 + imei.len() + avl.len()) as u16);
    b.put_u16(packet_id);
    b.put_u8(0x01);
    b.put_u8(packet_id as u8);
    b.put_u16(imei.len() as u16);
    b.put_slice(imei.as_bytes());
    b.put_slice(avl);
    b.to_vec()
}

/// Blocking sender thread: `per_source` datagrams from each fresh socket (a new source port),
/// until `stop`. Returns datagrams sent.
fn flooder(target: SocketAddr, per_source: usize, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut sent = 0u64;
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        for _ in 0..per_source {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            k += 1;
            let imei = format!("3520930{:08}", seed * 100 + k % 50);
            let pkt = datagram(k as u16, &imei, (k % 3_000_000) as i64);
            if sock.send_to(&pkt, target).is_ok() {
                sent += 1;
            }
        }
    }
    sent
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
async fn a_udp_flood_keeps_memory_bounded_and_tcp_acks_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let setup = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}/fg.db\"", dir.path().display()),
    );
    let mut cfg = std::fs::read_to_string(&setup.config).unwrap();
    cfg.push_str(&format!("[limits]\nudp_max_sources = {MAX_SOURCES}\n"));
    std::fs::write(&setup.config, cfg).unwrap();
    let mut child = spawn(&setup.config);
    wait_ready(&setup.api).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", setup.tracker_port).parse().unwrap();

    // Warm up both paths, then take the baseline.
    let mut car = login(addr, "356307042441013").await;
    let mut quiet = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        send_records(&mut car, &[rec(600 - i, 40, true, None)]).await;
        quiet.push(t.elapsed());
    }
    quiet.sort();
    let warm = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    warm.send_to(&datagram(1, "352093000000001", 0), addr)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(&child);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let pid = child.id();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(k) = rss_of(pid) {
                    peak.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // One hot source (over its rate) and one churning through many sources.
    let hot = {
        let stop = stop.clone();
        std::thread::spawn(move || flooder(addr, usize::MAX, 1, stop))
    };
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || flooder(addr, 20, 2, stop))
    };

    // The TCP tracker keeps sending while the flood lasts, one record at a time.
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut i = 0;
    while started.elapsed() < FLOOD {
        i += 1;
        let t = Instant::now();
        send_records(&mut car, &[rec(500 - i, 40, true, None)]).await;
        lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = hot.join().unwrap() + churn.join().unwrap();
    sampler.join().unwrap();
    let peak_growth = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;

    // After the flood: memory settles near the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(&child).saturating_sub(baseline) / 1024;

    lat.sort();
    let p50 = lat[lat.len() / 2];
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    let max = *lat.last().unwrap();
    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let api = &setup.api;
        async move { common::metric(api, name, labels).await }
    };
    let rate_limited = m(
        "fleetgate_ingest_udp_dropped_total",
        &[("reason", "rate_limited")],
    )
    .await;
    let queue_full = m(
        "fleetgate_ingest_udp_dropped_total",
        &[("reason", "queue_full")],
    )
    .await;
    let evicted = m("fleetgate_ingest_udp_sources_evicted_total", &[]).await;
    let sources = m("fleetgate_ingest_udp_sources", &[]).await;
    let records = m(
        "fleetgate_ingest_records_total",
        &[("protocol", "teltonika")],
    )
    .await;
    eprintln!(
        "flood: {sent} datagrams in {FLOOD:?}; RSS baseline {baseline} KiB, peak +{peak_growth} MiB, \
         +{after} MiB after; TCP acks {} (p50 {p50:?}, p99 {p99:?}, max {max:?}; before the \
         flood p50 {:?}); \
         dropped rate_limited {rate_limited}, queue_full {queue_full}; evicted {evicted}; \
         sources {sources}; records decoded {records}",
        lat.len(),
        quiet[quiet.len() / 2]
    );
    let _ = child.kill();
    let _ = child.wait();

    assert!(sent > 50_000, "not a flood: {sent} datagrams");
    assert!(rate_limited > 0.0, "the hot source was never limited");
    assert!(evicted > 0.0, "the source table never filled");
    assert!(sources <= MAX_SOURCES as f64, "{sources} sources kept");
    assert!(
        peak_growth < 150,
        "RSS grew by {peak_growth} MiB during the flood"
    );
    assert!(
        after < 100,
        "RSS still {after} MiB above baseline after the flood"
    );
    // Before: acks fell ~97 % and took 17 s. A loaded 2-core CI machine (the flooders share
    // it) commits in ~0.1 s; the bounds leave it room.
    assert!(lat.len() >= 20, "only {} TCP acks in {FLOOD:?}", lat.len());
    assert!(p50 < Duration::from_millis(500), "TCP ack p50 {p50:?}");
    assert!(max < Duration::from_secs(2), "TCP ack max {max:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_udp_queue_cap_frames_are_dropped_unacked_and_counted() {
    use fleetgate::protocols::{Protocol, Transport};
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "[limits]\nudp_max_queued = 4\n").await;
    let api = common::Api::new(daemon.api_addr);
    let addr = daemon.addr(Protocol::Teltonika, Transport::Udp).unwrap();
    let imei = "352093081111111";
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 64];
    // Registered first, so the device lookup needs no write.
    sock.send_to(&datagram(1, imei, 100_000), addr)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), sock.recv_from(&mut buf))
        .await
        .expect("first datagram acked")
        .unwrap();

    // Storage stalls (another process holds SQLite's write lock): four frames wait for their
    // commit, the other sixteen find the queue full.
    let db = dir.path().join("fleetgate.db");
    let mut held = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut held)
        .await
        .unwrap();
    for i in 0..20u16 {
        let pkt = datagram(100 + i, imei, 50_000 - i64::from(i) * 1000);
        sock.send_to(&pkt, addr).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let full = loop {
        let n = common::metric(
            &api,
            "fleetgate_ingest_udp_dropped_total",
            &[("protocol", "teltonika"), ("reason", "queue_full")],
        )
        .await;
        if n >= 16.0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(full, 16.0);
    sqlx::query("COMMIT").execute(&mut held).await.unwrap();
    held.close().await.ok();

    // The four queued ones are committed and acked; the dropped ones never are.
    let mut acks = 0;
    while let Ok(n) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await {
        assert_eq!(n.unwrap().0, 7);
        acks += 1;
    }
    assert_eq!(acks, 4);
    let (_, track) = api
        .get(&format!(
            "/api/v1/vehicles/{imei}/track?from=2020-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(track.as_array().unwrap().len(), 5, "{track}");
    daemon.stop().await;
}
