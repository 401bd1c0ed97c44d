//! Nothing acknowledged is lost: the real binary under load from several trackers is killed
//! with SIGKILL at random moments and restarted; every record any tracker saw acked must be
//! in storage afterwards.

mod common;

use common::process::{spawn, teltonika_only, wait_ready, TeltonikaOnly};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send batches until the connection breaks; record each batch's fix times once acked.
async fn tracker(
    port: u16,
    imei: String,
    start_ms: i64,
    acked: Arc<Mutex<BTreeSet<(String, i64)>>>,
) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    if s.write_all(&encode_imei(&imei)).await.is_err() {
        return;
    }
    let mut one = [0u8; 1];
    if s.read_exact(&mut one).await.is_err() || one[0] != 1 {
        return;
    }
    let mut t = start_ms;
    loop {
        let recs: Vec<_> = (0..5)
            .map(|i| {
                t += 1000;
                AvlRecord {
                    time: Utc.timestamp_millis_opt(t).unwrap(),
                    lat: 55.7 + (i as f64) * 1e-4,
                    lon: 37.6,
                    speed_kmh: 30,
                    course: 0,
                    altitude: 100,
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
        match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack)).await {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let TeltonikaOnly {
        config: cfg_path,
        tracker_port: tport,
        api,
    } = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}/fg.db\"", dir.path().display()),
    );
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let base = Utc
        .with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();

    for round in 0..4i64 {
        let mut child = spawn(&cfg_path);
        wait_ready(&api).await;
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let imei = format!("35000000000{i:04}");
                // Each round continues later in time so fix times never collide.
                tokio::spawn(tracker(
                    tport,
                    imei,
                    base + round * 100_000_000,
                    acked.clone(),
                ))
            })
            .collect();
        let wait = rand::thread_rng().gen_range(200..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
    }

    let mut child = spawn(&cfg_path);
    wait_ready(&api).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "load produced acks: {}", acked.len());
    let mut missing = Vec::new();
    for i in 0..6 {
        let imei = format!("35000000000{i:04}");
        let (status, track) = api.get(&format!("/api/v1/vehicles/{imei}/track?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z&limit=100000")).await;
        assert_eq!(status, 200);
        let stored: BTreeSet<i64> = track
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis()
            })
            .collect();
        for (_, t) in acked.iter().filter(|(d, _)| *d == imei) {
            if !stored.contains(t) {
                missing.push((imei.clone(), *t));
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    println!("acked records: {}, missing: {}", acked.len(), missing.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}
