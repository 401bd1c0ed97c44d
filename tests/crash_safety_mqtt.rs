//! MQTT crash safety: the real binary is SIGKILLed at random moments while a device publishes
//! QoS 1 fixes to the real Mosquitto (127.0.0.1:1883), and restarted with the same client id.
//!
//! fleetgate reaches the broker through an in-test proxy that reads the MQTT packets going by
//! (it forwards every byte unchanged): PUBLISHes from the broker (packet id → fix) and
//! fleetgate's PUBACKs. So the test knows exactly which messages fleetgate acknowledged, and
//! right after each kill, before the restart, it reads the SQLite file directly: every
//! PUBACKed message must already be stored. At the end every message the broker accepted
//! from the publisher (the persistent session redelivers what was never PUBACKed) is stored
//! exactly once. Topics and client ids are unique per run.

mod common;

use common::process::{free_port, spawn, wait_ready};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mqtt::{forget_sessions, unique};
use common::Api;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BROKER: &str = "127.0.0.1:1883";
/// Fix times start here (Unix ms); message `i` carries `T0 + i * 1000`.
const T0: i64 = 1_790_000_000_000;

/// One complete MQTT packet at the start of `buf`: (first byte, body range, total length).
fn packet(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let first = *buf.first()?;
    let (mut len, mut mul, mut i) = (0usize, 1usize, 1usize);
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7f) as usize * mul;
        mul *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        assert!(i <= 4, "malformed remaining length");
    }
    (buf.len() >= i + len).then_some((first, i..i + len, i + len))
}

#[derive(Default)]
struct Seen {
    /// Fix times (ms) of the messages fleetgate PUBACKed.
    pubacked: BTreeSet<i64>,
    publishes: usize,
    /// PUBACKs for a packet id the proxy never saw published (must stay 0).
    unknown_pubacks: usize,
}

/// Copy `from` → `to`, calling `on_packet` for each complete packet before forwarding the
/// bytes that complete it (so a PUBLISH is recorded before fleetgate can answer it).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut on_packet: impl FnMut(u8, &[u8]),
) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some((first, body, total)) = packet(&pending) {
            on_packet(first, &pending[body]);
            pending.drain(..total);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The MQTT-reading proxy in front of the broker.
async fn proxy(seen: Arc<Mutex<Seen>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((gw, _)) = listener.accept().await {
            let Ok(broker) = TcpStream::connect(BROKER).await else {
                continue;
            };
            // Packet ids are per connection.
            let ids: Arc<Mutex<HashMap<u16, i64>>> = Arc::default();
            let (gw_r, gw_w) = gw.into_split();
            let (br_r, br_w) = broker.into_split();
            let (ids2, seen2) = (ids.clone(), seen.clone());
            tokio::spawn(pump(br_r, gw_w, move |first, body| {
                // PUBLISH with QoS 1: topic, packet id, payload.
                if first >> 4 == 3 && (first >> 1) & 3 == 1 {
                    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let pid = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
                    let payload: serde_json::Value =
                        serde_json::from_slice(&body[4 + tl..]).expect("test payload");
                    ids2.lock()
                        .unwrap()
                        .insert(pid, payload["time"].as_i64().unwrap());
                    seen2.lock().unwrap().publishes += 1;
                }
            }));
            let seen3 = seen.clone();
            tokio::spawn(pump(gw_r, br_w, move |first, body| {
                if first >> 4 == 4 {
                    let pid = u16::from_be_bytes([body[0], body[1]]);
                    let t = ids.lock().unwrap().get(&pid).copied();
                    let mut seen = seen3.lock().unwrap();
                    match t {
                        Some(t) => {
                            seen.pubacked.insert(t);
                        }
                        None => seen.unknown_pubacks += 1,
                    }
                }
            }));
        }
    });
    port
}

/// Fix times stored for `device`, read from the SQLite file (the daemon may be dead).
async fn stored(db: &std::path::Path, device: &str) -> Vec<i64> {
    common::stored::device_fix_times(&format!("sqlite://{}", db.display()), device).await
}

fn fix(i: i64) -> Vec<u8> {
    serde_json::json!({"time": T0 + i * 1000, "lat": 55.7 + i as f64 * 1e-5, "lon": 37.6})
        .to_string()
        .into_bytes()
}

/// A QoS 1 publisher straight to the broker; returns each message once the broker PUBACKed it.
struct Publisher {
    client: AsyncClient,
    acks: tokio::sync::mpsc::Receiver<()>,
}

impl Publisher {
    async fn connect(id: &str) -> Publisher {
        let mut o = MqttOptions::new(id, "127.0.0.1", 1883);
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, acks) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        let _ = tx.send(()).await;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Publisher { client, acks }
    }

    async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
        tokio::time::timeout(Duration::from_secs(30), self.acks.recv())
            .await
            .expect("broker PUBACK within 30 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_pubacked_mqtt_message() {
    let seed: u64 = std::env::var("FLEETGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (FLEETGATE_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fg.db");
    let prefix = unique("fgk");
    let gw_id = format!("{prefix}-gw");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pport = proxy(seen.clone()).await;
    let aport = free_port();
    let mut cfg = format!(
        "[api]\nlisten = \"127.0.0.1:{aport}\"\n[storage]\nurl = \"sqlite://{}\"\n[listeners]\n",
        db.display()
    );
    for p in fleetgate::protocols::Protocol::ALL {
        cfg.push_str(&format!("{} = \"off\"\n", p.name()));
    }
    cfg.push_str(&format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{pport}\"\nclient_id = \"{gw_id}\"\ntopics = [\"{prefix}/+/telemetry\"]\n\
         command_topic = \"{prefix}/{{device}}/commands\"\nresponse_topic = \"{prefix}/{{device}}/responses\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 1000\n"
    ));
    let cfg_path = dir.path().join("fleetgate.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let api = Api::new(format!("127.0.0.1:{aport}").parse().unwrap());

    let mut gw = spawn(&cfg_path);
    wait_ready(&api).await;
    let device = unique("car");
    let topic = format!("{prefix}/{device}/telemetry");
    let mut publisher = Publisher::connect(&unique("pub")).await;
    // The persistent session exists once fleetgate has subscribed: publish fix 0 until stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        publisher.publish(&topic, fix(0)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !stored(&db, &device).await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "fleetgate never subscribed");
    }

    const N: i64 = 600;
    const ROUNDS: i64 = 5;
    let broker_acked = Arc::new(Mutex::new(BTreeSet::new()));
    let acked = broker_acked.clone();
    let topic2 = topic.clone();
    let publishing = tokio::spawn(async move {
        for i in 1..=N {
            publisher.publish(&topic2, fix(i)).await;
            acked.lock().unwrap().insert(T0 + i * 1000);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let mut checked = 0;
    for round in 0..ROUNDS {
        // Kill at a random point of the stream, spread over it (the broker keeps accepting
        // while fleetgate is down, so a kill may also hit the redelivery after a restart).
        let target = (N * (round + 1) / (ROUNDS + 1) + rng.gen_range(0..N / 12)) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while broker_acked.lock().unwrap().len() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gw.kill().expect("SIGKILL");
        gw.wait().unwrap();
        // What fleetgate PUBACKed before it died must be on disk now, before any restart.
        let pubacked = seen.lock().unwrap().pubacked.clone();
        let on_disk: BTreeSet<i64> = stored(&db, &device).await.into_iter().collect();
        let lost: Vec<_> = pubacked.difference(&on_disk).collect();
        assert!(
            lost.is_empty(),
            "round {round}: PUBACKed by fleetgate but not stored: {lost:?}"
        );
        checked = pubacked.len();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        gw = spawn(&cfg_path);
        wait_ready(&api).await;
    }
    tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publisher finished")
        .unwrap();

    // The broker redelivers everything fleetgate never acknowledged.
    let expected: BTreeSet<i64> = broker_acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    let times = loop {
        let times = stored(&db, &device).await;
        let set: BTreeSet<i64> = times.iter().copied().collect();
        let all_acked = expected.is_subset(&seen.lock().unwrap().pubacked);
        if (expected.is_subset(&set) && all_acked) || Instant::now() > deadline {
            break times;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    gw.kill().unwrap();
    gw.wait().unwrap();
    forget_sessions(std::slice::from_ref(&gw_id)).await;
    let set: BTreeSet<i64> = times.iter().copied().collect();
    let s = seen.lock().unwrap();
    println!(
        "{} messages published and broker-acked; fleetgate got {} PUBLISHes (redeliveries \
         included) and PUBACKed {}; {checked} PUBACKed by the last kill, all on disk; {} stored",
        expected.len(),
        s.publishes,
        s.pubacked.len(),
        times.len()
    );
    assert_eq!(times.len(), set.len(), "a message stored twice");
    let missing: Vec<_> = expected.difference(&set).collect();
    assert!(
        missing.is_empty(),
        "broker-acked but never stored: {missing:?}"
    );
    assert!(
        s.pubacked.is_superset(&expected),
        "every message was eventually PUBACKed"
    );
    assert_eq!(s.unknown_pubacks, 0, "PUBACKs the proxy could not match");
}
