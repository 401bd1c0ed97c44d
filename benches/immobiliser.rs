//! Fix in → engine-block command on the wire, end to end: a daemon on loopback with its own
//! SQLite file, a simulated Teltonika tracker, and a vehicle in `block_pending` (reason added
//! while it drives). The timed part is one Codec 8E packet with a stopped fix going in until
//! the Codec 12 `setdigout 1` has been read back: decode, group commit, the immobiliser's
//! decision and its durable write, the write to the socket. Each iteration then answers,
//! unblocks and answers again (untimed) to start from `running`.
//!
//! Run: `cargo bench --bench immobiliser` (prints p50/p99 of the timed part after criterion).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use fleetgate::config::Config;
use fleetgate::protocols::teltonika::{
    encode_avl_packet, encode_codec12_response, encode_imei, io, AvlRecord, CODEC_8E,
};
use fleetgate::protocols::{Protocol, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static SAMPLES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

/// Fix times strictly increasing (milliseconds, as Teltonika sends them): two records of one device with the same
/// fix time are one record resent (a duplicate, acked but not evaluated again), and with a
/// fast commit two sends can fall in the same millisecond.
fn next_time() -> chrono::DateTime<Utc> {
    static LAST_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = Utc::now().timestamp_millis();
    let prev = LAST_MS
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |last| Some(now.max(last + 1)),
        )
        .unwrap_or(now);
    chrono::DateTime::from_timestamp_millis(now.max(prev + 1)).unwrap_or_else(Utc::now)
}

fn rec(speed: u16) -> AvlRecord {
    AvlRecord {
        time: next_time(),
        lat: 55.75,
        lon: 37.62,
        speed_kmh: speed,
        course: 0,
        altitude: 150,
        satellites: 10,
        io: vec![(io::IGNITION, 1, 1)],
    }
}

async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .expect("reply within 5 s")
        .expect("read");
    b
}

/// Read one Codec 12 packet; returns its length.
async fn read_command(s: &mut TcpStream) -> usize {
    let head = read_exact(s, 8).await;
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    read_exact(s, len + 4).await;
    len
}

async fn send_rec(s: &mut TcpStream, speed: u16) {
    s.write_all(&encode_avl_packet(CODEC_8E, &[rec(speed)]))
        .await
        .expect("send");
    read_exact(s, 4).await;
}

async fn post(client: &reqwest::Client, url: String, body: serde_json::Value) -> String {
    let r = client.post(url).json(&body).send().await.expect("POST");
    assert!(r.status().is_success(), "{}", r.status());
    let v: serde_json::Value = r.json().await.expect("json");
    v["immobiliser"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn fix_to_command(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[listeners]\nteltonika = \"127.0.0.1:0\"\n{}\
         [storage]\nurl = \"sqlite://{}/bench.db\"\n[immobiliser]\nsafe_for = 0\n",
        Protocol::ALL
            .iter()
            .filter(|p| **p != Protocol::Teltonika)
            .map(|p| format!("{} = \"off\"\n", p.name()))
            .collect::<String>(),
        dir.path().display()
    );
    let config = Config::from_toml_with_env(&text, "bench", Vec::new()).expect("config");
    let (daemon, mut tracker, client, base) = rt.block_on(async {
        let daemon = fleetgate::app::start(config).await.expect("daemon");
        let addr = daemon
            .addr(Protocol::Teltonika, Transport::Tcp)
            .expect("listener");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(&encode_imei("356307042449999"))
            .await
            .expect("imei");
        read_exact(&mut s, 1).await;
        let base = format!("http://{}/api/v1/vehicles/356307042449999", daemon.api_addr);
        (daemon, s, reqwest::Client::new(), base)
    });

    c.bench_function("immobiliser/fix_to_command_on_wire", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    send_rec(&mut tracker, 60).await;
                    let state = post(
                        &client,
                        format!("{base}/block"),
                        serde_json::json!({"reason": "manual"}),
                    )
                    .await;
                    assert_eq!(state, "block_pending", "the car drives: the block waits");
                    let started = Instant::now();
                    tracker
                        .write_all(&encode_avl_packet(CODEC_8E, &[rec(0)]))
                        .await
                        .expect("send");
                    read_exact(&mut tracker, 4).await;
                    read_command(&mut tracker).await;
                    let took = started.elapsed();
                    total += took;
                    SAMPLES.lock().expect("samples").push(took);
                    tracker
                        .write_all(&encode_codec12_response(b"DOUT1:1"))
                        .await
                        .expect("answer");
                    post(
                        &client,
                        format!("{base}/unblock"),
                        serde_json::json!({"reason": "all"}),
                    )
                    .await;
                    read_command(&mut tracker).await;
                    tracker
                        .write_all(&encode_codec12_response(b"DOUT1:0"))
                        .await
                        .expect("answer");
                    // Let the unblock's answer land so the next block starts from `running`.
                    loop {
                        let v: serde_json::Value = client
                            .get(&base)
                            .send()
                            .await
                            .expect("GET")
                            .json()
                            .await
                            .expect("json");
                        if v["immobiliser"]["state"] == "running" {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                total
            })
        })
    });

    let mut s = SAMPLES.lock().expect("samples").clone();
    s.sort();
    if !s.is_empty() {
        let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
        println!(
            "fix_to_command_on_wire: n={} p50={:?} p99={:?} max={:?}",
            s.len(),
            pct(0.50),
            pct(0.99),
            s[s.len() - 1]
        );
    }
    rt.block_on(daemon.stop());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fix_to_command
}
criterion_main!(benches);
