//! PostgreSQL stopped for 30 s under tracker traffic: no ack while it is down, the daemon stays
//! up (`/healthz` 200, `/readyz` 503), and once it is back every batch the trackers keep
//! resending is acked and stored exactly once.
//!
//! Ignored by default: it stops the machine's PostgreSQL, which other tests may be using.
//! Run it alone, naming how to stop and start the server:
//!
//! ```text
//! FLEETGATE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//! FLEETGATE_TEST_PG_STOP='pg_ctlcluster 15 main stop' \
//! FLEETGATE_TEST_PG_START='pg_ctlcluster 15 main start' \
//! cargo test --test storage_outage_postgres -- --ignored --nocapture
//! ```
//!
//! It needs the PostgreSQL backend (`storage::open` accepting `postgres://`), which the
//! pgmqtt track adds; until then the daemon refuses the URL and the test says so.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::Api;
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};
use fleetgate::protocols::{Protocol, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .expect("sh");
    assert!(st.success(), "{cmd} failed");
}

/// Deliver `batches` like a real device: resend each batch until acked, reconnecting as needed.
async fn deliver(
    addr: SocketAddr,
    imei: String,
    batches: Vec<Vec<AvlRecord>>,
    acks: Arc<Mutex<Vec<Instant>>>,
) {
    let mut conn: Option<TcpStream> = None;
    for batch in batches {
        let packet = encode_avl_packet(CODEC_8, &batch);
        loop {
            if conn.is_none() {
                if let Ok(mut s) = TcpStream::connect(addr).await {
                    let mut one = [0u8; 1];
                    if s.write_all(&encode_imei(&imei)).await.is_ok()
                        && tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut one))
                            .await
                            .is_ok_and(|r| r.is_ok())
                        && one == [1]
                    {
                        conn = Some(s);
                    }
                }
            }
            if let Some(s) = conn.as_mut() {
                let mut ack = [0u8; 4];
                let ok = s.write_all(&packet).await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    && u32::from_be_bytes(ack) as usize == batch.len();
                if ok {
                    acks.lock().unwrap().push(Instant::now());
                    break;
                }
                conn = None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops PostgreSQL: run alone, see the module docs"]
async fn postgres_down_for_30_s_acks_nothing_then_loses_nothing() {
    let (Ok(stop), Ok(start)) = (
        std::env::var("FLEETGATE_TEST_PG_STOP"),
        std::env::var("FLEETGATE_TEST_PG_START"),
    ) else {
        panic!("set FLEETGATE_TEST_PG_STOP and FLEETGATE_TEST_PG_START (see the module docs)");
    };
    let url = std::env::var("FLEETGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), "");
    config.storage.url = url;
    let d = match fleetgate::app::start(config).await {
        Ok(d) => d,
        Err(e) => panic!("daemon did not start on PostgreSQL (is the pgmqtt backend merged?): {e}"),
    };
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let run = Utc::now().timestamp();
    let t0 = Utc.timestamp_opt(run - 3600, 0).unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let imeis: Vec<String> = (0..5)
        .map(|i| format!("35{:011}{i}", run % 100_000_000_000))
        .collect();
    let mut expected = BTreeSet::new();
    let tasks: Vec<_> = imeis
        .iter()
        .map(|imei| {
            let batches: Vec<Vec<AvlRecord>> = (0..60)
                .map(|b| {
                    (0..3)
                        .map(|k| AvlRecord {
                            time: t0 + chrono::Duration::seconds(b * 10 + k),
                            lat: 55.7,
                            lon: 37.6,
                            speed_kmh: 10,
                            course: 0,
                            altitude: 100,
                            satellites: 8,
                            io: vec![],
                        })
                        .collect()
                })
                .collect();
            for b in &batches {
                for r in b {
                    expected.insert((imei.clone(), r.time.timestamp_millis()));
                }
            }
            tokio::spawn(deliver(addr, imei.clone(), batches, acks.clone()))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(3)).await;
    sh(&stop);
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(api.text("/healthz").await.0, 200, "alive during the outage");
    assert_eq!(
        api.text("/readyz").await.0,
        503,
        "not ready without storage"
    );
    tokio::time::sleep(Duration::from_secs(28)).await;
    sh(&start);
    let up = Instant::now();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("delivered after recovery")
            .unwrap();
    }
    // Acks stop within the retry budget of the last commit in flight, and restart only after.
    let during = acks
        .lock()
        .unwrap()
        .iter()
        .filter(|&&a| a > down + Duration::from_secs(6) && a < up)
        .count();
    assert_eq!(during, 0, "acked while PostgreSQL was down");
    for imei in &imeis {
        let (status, track) = api.get(&format!("/api/v1/vehicles/{imei}/track?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=100000")).await;
        assert_eq!(status, 200);
        let got: Vec<i64> = track
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis()
            })
            .collect();
        let unique: BTreeSet<_> = got.iter().copied().collect();
        assert_eq!(got.len(), unique.len(), "{imei}: stored twice");
        for (_, t) in expected.iter().filter(|(i, _)| i == imei) {
            assert!(unique.contains(t), "{imei}: acked fix {t} lost");
        }
    }
    d.stop().await;
}
