//! MQTT backlog after a restart (#21 item 8): the real binary, stopped cleanly, finds
//! messages queued for its persistent session at Mosquitto when it starts again. Every one
//! is stored, a new device's burst registers it once, and SIGTERM exits within the
//! documented bound. Before the fix, 900 queued messages stored 364–432 and then nothing,
//! and SIGTERM never returned.
//!
//! The machine's Mosquitto (127.0.0.1:1883, default config) queues at most
//! `max_queued_messages` = 1000 for an offline client and drops the rest, so its offline
//! backlog here is 990, followed by 3,000 live in bursts of 500 (under the same queue limit
//! while fleetgate commits). Thousands queued offline are tested on a private Mosquitto with
//! the production settings of the README (queue 10,000) and no in-flight limit at all.

mod common;

use common::mqtt::{forget_sessions, unique, Broker};
use common::process::{free_port, wait_ready};
use common::Api;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fix times start here (Unix ms); message `i` carries `T0 + i * 1000`.
const T0: i64 = 1_790_000_000_000;
/// `mqtt::STOP_GRACE` + `mqtt::DISCONNECT_TIMEOUT` (README, docs/reliability.md), plus the
/// rest of the shutdown on a loaded 2-core machine.
const SIGTERM_BOUND: Duration = Duration::from_secs(20);

fn fix(i: i64) -> Vec<u8> {
    serde_json::json!({"time": T0 + i * 1000, "lat": 55.7 + i as f64 * 1e-5, "lon": 37.6})
        .to_string()
        .into_bytes()
}

/// Publish `n` QoS 1 fixes (`first..first+n`) on `topic`, pipelined; returns once the broker
/// has PUBACKed them all.
async fn publish_all(port: u16, topic: &str, first: i64, n: i64) {
    let mut o = MqttOptions::new(unique("pub"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(o, 256);
    let topic = topic.to_string();
    let publishing = tokio::spawn(async move {
        for i in first..first + n {
            client
                .publish(&topic, QoS::AtLeastOnce, false, fix(i))
                .await
                .expect("publish queued");
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher lost the broker: {e}"),
            Err(_) => panic!("broker PUBACKed {acked} of {n} within 60 s"),
        }
    }
    let client = publishing.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
}

async fn stored(db: &std::path::Path, device: &str) -> Vec<i64> {
    common::stored::device_fix_times(&format!("sqlite://{}", db.display()), device).await
}

/// Until `device` has `n` positions stored (or `secs` pass); what was stored.
async fn wait_stored(db: &std::path::Path, device: &str, n: usize, secs: u64) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = stored(db, device).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn fleetgate")
}

/// SIGTERM, then the time the process took to exit (panics past `SIGTERM_BOUND`).
fn sigterm(child: &mut Child) -> Duration {
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return sent.elapsed();
        }
        if sent.elapsed() > SIGTERM_BOUND {
            let _ = child.kill();
            panic!("still running {SIGTERM_BOUND:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn expected(first: i64, n: i64) -> Vec<i64> {
    (first..first + n).map(|i| T0 + i * 1000).collect()
}

/// Stored fixes vs `first..first+n`: a short description of what differs, or None.
fn differs(got: &[i64], first: i64, n: i64) -> Option<String> {
    let want = expected(first, n);
    if got == want.as_slice() {
        return None;
    }
    let missing: Vec<_> = want.iter().filter(|t| !got.contains(t)).collect();
    Some(format!(
        "{} stored for {} expected; {} missing (first {:?})",
        got.len(),
        want.len(),
        missing.len(),
        missing.first()
    ))
}

/// Run the gateway once to create its session at the broker on `port`, stop it, queue
/// `offline` messages for each of a known and a new device, restart: all stored, once; then
/// `live` more in bursts of 500; then SIGTERM within the bound.
async fn backlog_scenario(port: u16, offline: i64, live: i64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fg.db");
    let prefix = unique("fgb");
    let gw_id = format!("{prefix}-gw");
    let aport = free_port();
    let mut cfg = format!(
        "[api]\nlisten = \"127.0.0.1:{aport}\"\n[storage]\nurl = \"sqlite://{}\"\n[listeners]\n",
        db.display()
    );
    for p in fleetgate::protocols::Protocol::ALL {
        cfg.push_str(&format!("{} = \"off\"\n", p.name()));
    }
    cfg.push_str(
        &common::mqtt::section(&gw_id, &prefix)
            .replace("127.0.0.1:1883", &format!("127.0.0.1:{port}")),
    );
    let cfg_path = dir.path().join("fleetgate.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let api = Api::new(format!("127.0.0.1:{aport}").parse().unwrap());
    let topic = |d: &str| format!("{prefix}/{d}/telemetry");

    // First run: the session exists at the broker once a fix of the known device is stored.
    let known = unique("known");
    let mut gw = spawn(&cfg_path, &dir.path().join("run1.log"));
    wait_ready(&api).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&db, &known).await.is_empty() {
        publish_all(port, &topic(&known), 0, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(Instant::now() < deadline, "fleetgate never subscribed");
    }
    sigterm(&mut gw);

    // While it is down, messages queue at the broker for the known device and a new one.
    let fresh = unique("fresh");
    publish_all(port, &topic(&known), 1, offline).await;
    publish_all(port, &topic(&fresh), 1, offline).await;

    let log = dir.path().join("run2.log");
    let started = Instant::now();
    let mut gw = spawn(&cfg_path, &log);
    wait_ready(&api).await;
    let k = wait_stored(&db, &known, offline as usize + 1, 120).await;
    let f = wait_stored(&db, &fresh, offline as usize, 60).await;
    println!(
        "offline backlog of {} stored in {:?}",
        2 * offline,
        started.elapsed()
    );
    assert_eq!(
        differs(&k, 0, offline + 1),
        None,
        "known device: every queued message, once"
    );
    assert_eq!(
        differs(&f, 1, offline),
        None,
        "new device: every queued message, once"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let registered = text
        .lines()
        .filter(|l| l.contains("registered unknown device") && l.contains(&fresh))
        .count();
    assert_eq!(registered, 1, "one registration for the new device's burst");

    // Live, in bursts the broker queues whole while fleetgate commits.
    let burst = Instant::now();
    let mut next = offline + 1;
    while next <= offline + live {
        let n = 500.min(offline + live + 1 - next);
        publish_all(port, &topic(&fresh), next, n).await;
        next += n;
        let f = wait_stored(&db, &fresh, (next - 1) as usize, 60).await;
        assert_eq!(
            differs(&f, 1, next - 1),
            None,
            "live burst: every message, once"
        );
    }
    if live > 0 {
        println!("{live} live stored in {:?}", burst.elapsed());
    }
    assert_eq!(
        common::metric(&api, "fleetgate_mqtt_buffered_messages", &[]).await,
        0.0,
        "nothing left waiting"
    );

    let took = sigterm(&mut gw);
    println!("SIGTERM → exit in {took:?}");
    if port == 1883 {
        forget_sessions(std::slice::from_ref(&gw_id)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_drains_the_default_brokers_whole_queue_and_sigterm_exits_in_bounded_time() {
    backlog_scenario(1883, 495, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_queued_with_no_broker_inflight_limit_are_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    // 0 = no in-flight limit: the broker pushes the whole queue at once.
    let broker = Broker::start_with(
        dir.path(),
        "max_queued_messages 10000\nmax_inflight_messages 0\n",
    );
    backlog_scenario(broker.port, 2500, 0).await;
}
