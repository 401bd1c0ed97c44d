//! Fix in → engine-block command on the wire, end to end: a daemon on loopback with its own
//! SQLite file, a simulated Teltonika tracker, and a vehicle in `block_pending` (reason added
//! while it drives). The timed part is one Codec 8E packet with a stopped fix going in until
//! the Codec 12 `setdigout 1` has been read back: decode, group commit, the immobiliser's
//! decision and its durable write, the write to the socket. Each iteration then answers,
//! unblocks and answers again (untimed) to start from `running`.
//!
//! The same is then timed again under background traffic from `fleetgate sim` into the same
//! daemon: the customer's fleet (1,500 cars, a fix every 5 s each) and half the most it ingests
//! (200 trackers × 25-record packets × 20/s = 100,000 records/s).
//!
//! Run: `cargo bench --bench immobiliser` (prints p50/p99 of the timed part after criterion,
//! and the load the simulator achieved).

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
         [storage]\nurl = \"sqlite://{}/bench.db\"\n",
        Protocol::ALL
            .iter()
            .filter(|p| **p != Protocol::Teltonika)
            .map(|p| format!("{} = \"off\"\n", p.name()))
            .collect::<String>(),
        dir.path().display()
    );
    let mut config = Config::from_toml_with_env(&text, "bench", Vec::new()).expect("config");
    // The bench times the path, not the wait: an operator's config may not set 0 (refused by
    // validation), the harness may.
    config.immobiliser.safe_for = 0;
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

    let addr = daemon
        .addr(Protocol::Teltonika, Transport::Tcp)
        .expect("listener");
    let mut run = |c: &mut Criterion, name: &str| {
        let mut samples = Vec::new();
        c.bench_function(&format!("immobiliser/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let took = block_cycle(&mut tracker, &client, &base).await;
                        total += took;
                        samples.push(took);
                    }
                    total
                })
            })
        });
        report(name, &mut samples);
    };
    run(c, "fix_to_command_on_wire");
    for load in LOADS {
        let sim = load.start(addr);
        // Let the simulated fleet connect and reach its rate before measuring.
        std::thread::sleep(Duration::from_secs(3));
        run(c, load.name);
        stop(sim);
    }
    rt.block_on(daemon.stop());
}

/// Background traffic from `fleetgate sim` into the same daemon while the block is timed.
struct Load {
    name: &'static str,
    devices: u32,
    /// Packets per second per device.
    rate: f64,
    records_per_packet: u32,
}

const LOADS: [Load; 2] = [
    // The customer's fleet: 1,500 cars, each sending a fix every 5 s.
    Load {
        name: "fix_to_command_fleet_1500_cars",
        devices: 1500,
        rate: 0.2,
        records_per_packet: 1,
    },
    // Half the most this machine ingests into durable SQLite (~200,000 records/s, `cargo
    // bench --bench e2e`): 200 trackers uploading 25-record buffers 20 times a second.
    Load {
        name: "fix_to_command_under_100k_records_per_s",
        devices: 200,
        rate: 20.0,
        records_per_packet: 25,
    },
];

impl Load {
    fn start(&self, addr: std::net::SocketAddr) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args(["sim", "--protocol", "teltonika", "--json"])
            .args(["--addr", &addr.to_string()])
            .args(["--devices", &self.devices.to_string()])
            .args(["--rate", &self.rate.to_string()])
            .args(["--records-per-packet", &self.records_per_packet.to_string()])
            .args(["--duration", "3600"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("fleetgate sim starts")
    }
}

/// SIGINT: the simulator prints its report and exits; shown so the load it achieved is on
/// record beside the latency.
fn stop(sim: std::process::Child) {
    unsafe {
        libc::kill(sim.id() as i32, libc::SIGINT);
    }
    let out = sim.wait_with_output().expect("sim exits");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    println!(
        "  background load achieved: {:.0} records/s, ack p99 {} ms, errors {}",
        report["records_per_s"].as_f64().unwrap_or(0.0),
        report["ack_p99_ms"],
        report["errors"]
    );
}

/// One timed block: the tracker drives, a block is asked for (it waits), the tracker stops;
/// timed from the third stopped fix (the one that completes the run) going out until the
/// Codec 12 `setdigout 1` is read back. Then
/// (untimed) it answers, is unblocked, answers again, and is `running` for the next round.
async fn block_cycle(tracker: &mut TcpStream, client: &reqwest::Client, base: &str) -> Duration {
    send_rec(tracker, 60).await;
    let state = post(
        client,
        format!("{base}/block"),
        serde_json::json!({"reason": "manual"}),
    )
    .await;
    assert_eq!(state, "block_pending", "the car drives: the block waits");
    // The first stopped fixes of the run (`safe_fixes = 3`, the default): the block waits.
    for _ in 0..2 {
        send_rec(tracker, 0).await;
    }
    let started = Instant::now();
    tracker
        .write_all(&encode_avl_packet(CODEC_8E, &[rec(0)]))
        .await
        .expect("send");
    read_exact(tracker, 4).await;
    read_command(tracker).await;
    let took = started.elapsed();
    tracker
        .write_all(&encode_codec12_response(b"DOUT1:1"))
        .await
        .expect("answer");
    post(
        client,
        format!("{base}/unblock"),
        serde_json::json!({"reason": "all"}),
    )
    .await;
    read_command(tracker).await;
    tracker
        .write_all(&encode_codec12_response(b"DOUT1:0"))
        .await
        .expect("answer");
    // Let the unblock's answer land so the next block starts from `running`.
    loop {
        let v: serde_json::Value = client
            .get(base)
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
    took
}

fn report(name: &str, s: &mut [Duration]) {
    s.sort();
    if !s.is_empty() {
        let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
        println!(
            "{name}: n={} p50={:?} p99={:?} max={:?}",
            s.len(),
            pct(0.50),
            pct(0.99),
            s[s.len() - 1]
        );
    }
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
