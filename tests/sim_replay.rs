//! `fleetgate sim` and `fleetgate replay` against a real daemon: the simulator's acked records
//! are exactly the stored ones, and a capture's acks replay byte for byte.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use fleetgate::protocols::{Protocol, Transport};
use fleetgate::sim::{Scenario, SimOptions, SimProtocol};

async fn stored(dir: &std::path::Path) -> i64 {
    common::stored::fix_times(&format!("sqlite://{}/fleetgate.db", dir.display()))
        .await
        .len() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_is_acked_and_every_acked_record_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), "").await;
    let mut total = 0;
    for (i, (protocol, sim)) in [
        (Protocol::Teltonika, SimProtocol::Teltonika),
        (Protocol::Gt06, SimProtocol::Gt06),
        (Protocol::Wialon, SimProtocol::Wialon),
    ]
    .into_iter()
    .enumerate()
    {
        let addr = running.addr(protocol, Transport::Tcp).expect("listener");
        let opts = SimOptions {
            addr: addr.to_string(),
            protocol: sim,
            devices: 3,
            records_per_packet: 5,
            rate: 0.0,
            duration: Some(Duration::from_secs(2)),
            scenario: Scenario::Drive,
            imei_base: 356_307_042_000_000 + 1000 * i as u64,
            geofences: concat!(env!("CARGO_MANIFEST_DIR"), "/geofences").into(),
            ..SimOptions::default()
        };
        let (stats, elapsed) = fleetgate::sim::run(opts).await.expect("sim runs");
        let report = stats.report(elapsed, 3, sim.name());
        assert_eq!(report.errors, 0, "{report}");
        assert!(report.records_acked > 0, "{report}");
        assert!(report.ack_p99_ms > 0.0, "{report}");
        total += report.records_acked as i64;
        // Acks follow commits, and the simulator stops only after its last ack: the store
        // holds exactly what was acked.
        assert_eq!(stored(dir.path()).await, total, "after {sim:?}: {report}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parking_car_reports_from_its_parking_lot() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), "").await;
    let addr = running.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let opts = SimOptions {
        addr: addr.to_string(),
        devices: 1,
        // Large packets: a few acks are enough to cover the drive even on a slow machine.
        records_per_packet: 200,
        rate: 0.0,
        duration: Some(Duration::from_secs(2)),
        scenario: Scenario::Parking,
        geofences: concat!(env!("CARGO_MANIFEST_DIR"), "/geofences").into(),
        ..SimOptions::default()
    };
    let (stats, elapsed) = fleetgate::sim::run(opts).await.unwrap();
    let report = stats.report(elapsed, 1, "teltonika");
    assert_eq!(report.errors, 0, "{report}");
    // 1–3 km at city speed takes a few minutes of fix time: > 600 records.
    assert!(report.records_acked > 600, "{report}");
    let api = common::Api::new(running.api_addr);
    let (status, body) = api.get("/api/v1/vehicles/356307042000000").await;
    assert_eq!(status, 200, "{body}");
    let lat = body.pointer("/position/lat").and_then(|v| v.as_f64());
    let lon = body.pointer("/position/lon").and_then(|v| v.as_f64());
    let (lat, lon) = (lat.expect("lat"), lon.expect("lon"));
    // The first example lot, Komsomolskaya Square.
    let d = fleetgate::sim::route::distance_m((lat, lon), (55.7758, 37.6558));
    assert!(d < 150.0, "parked {d:.0} m from the lot: {body}");
    running.stop().await;
}

/// Poll the API until `f` accepts the answer to `path`, for `secs` at most.
async fn poll(
    api: &common::Api,
    path: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < deadline {
        let (status, body) = api.get(path).await;
        if status == 200 && f(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} not reached within {secs} s: {last}");
}

/// The command of `intent` on the vehicle, once it has `status`.
fn command_in(list: &serde_json::Value, intent: &str, status: &str) -> bool {
    list.as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["intent"] == intent && c["status"] == status)
    })
}

common::both_backends!(a_simulated_car_obeys_its_immobiliser_and_its_commands_are_confirmed);
/// The demo's engine block, live: a simulated car standing before it sets off gets a manual
/// block, which goes out once its own connection shows it stopped for `safe_for`; the car
/// stays put with the ignition off and reports DOUT1 = 1, so the command is confirmed; the
/// unblock is confirmed by DOUT1 = 0 and the car drives on.
async fn a_simulated_car_obeys_its_immobiliser_and_its_commands_are_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), "[immobiliser]\nsafe_for = 10\n").await;
    let addr = running.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let imei = "356307042009000";
    let opts = SimOptions {
        addr: addr.to_string(),
        devices: 1,
        rate: 1.0,
        duration: Some(Duration::from_secs(300)),
        scenario: Scenario::Drive,
        imei_base: imei.parse().unwrap(),
        geofences: concat!(env!("CARGO_MANIFEST_DIR"), "/geofences").into(),
        ..SimOptions::default()
    };
    let started = std::time::Instant::now();
    let sim = tokio::spawn(fleetgate::sim::run(opts));
    let api = common::Api::new(running.api_addr);
    let vehicle = format!("/api/v1/vehicles/{imei}");
    let commands = format!("{vehicle}/commands");
    poll(&api, &vehicle, 20, "the car registered", |v| {
        v["position"].is_object()
    })
    .await;
    let (s, b) = api
        .post(&format!("{vehicle}/block"), json!({"reason": "manual"}))
        .await;
    assert_eq!(s, 200, "{b}");

    // Live fixes (dated now) are evidence: the block goes out while the car stands.
    poll(&api, &commands, 40, "block confirmed", |c| {
        command_in(c, "block", "confirmed")
    })
    .await;
    let v = poll(&api, &vehicle, 10, "blocked", |v| {
        v["immobiliser"]["state"] == "blocked"
    })
    .await;
    let age = Utc::now()
        - v["position"]["time"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap();
    assert!(age.num_seconds().abs() < 30, "fixes are real time: {v}");

    // Past the start wait (when a free car sets off), the blocked car still stands, switched off.
    let wait = Duration::from_secs_f64(fleetgate::sim::route::START_WAIT_S + 5.0);
    if let Some(left) = wait.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let v = poll(&api, &vehicle, 10, "stopped, switched off, relay on", |v| {
        v["position"]["ignition"] == false && v["position"]["outputs"] == 1
    })
    .await;
    let parked = (v["position"]["lat"].clone(), v["position"]["lon"].clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = api.get(&vehicle).await;
    assert_eq!(v["position"]["speed_kmh"], 0.0, "{v}");
    assert_eq!(
        (v["position"]["lat"].clone(), v["position"]["lon"].clone()),
        parked,
        "{v}"
    );

    let (s, b) = api
        .post(&format!("{vehicle}/unblock"), json!({"reason": "manual"}))
        .await;
    assert_eq!(s, 200, "{b}");
    poll(&api, &commands, 40, "unblock confirmed", |c| {
        command_in(c, "unblock", "confirmed")
    })
    .await;
    poll(&api, &vehicle, 40, "driving on", |v| {
        v["immobiliser"]["state"] == "running"
            && v["position"]["outputs"] == 0
            && v["position"]["speed_kmh"].as_f64().is_some_and(|s| s > 0.0)
    })
    .await;
    sim.abort();
    running.stop().await;
}

fn fixture() -> std::path::PathBuf {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/replay_small.jsonl"
    )
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replays_with_matching_acks_and_a_wrong_ack_fails() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), "").await;
    let tel = running.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let gt06 = running.addr(Protocol::Gt06, Transport::Tcp).unwrap();
    let bin = env!("CARGO_BIN_EXE_fleetgate");
    let run = |file: std::path::PathBuf, extra: &'static [&'static str]| {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("replay")
            .arg(file)
            .arg("--to")
            .arg(format!("teltonika={tel}"))
            .arg("--to")
            .arg(format!("gt06={gt06}"))
            .args(extra);
        tokio::task::spawn_blocking(move || cmd.output().expect("runs"))
    };
    let out = run(fixture(), &["--speed", "4"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("7 frames sent"), "{text}");
    assert!(
        text.contains("7 checked, 7 matched, 0 mismatched"),
        "{text}"
    );
    // 2 + 1 Teltonika records (the resent one stored once) and 2 GT06 fixes.
    assert_eq!(stored(dir.path()).await, 5);

    // The same capture expecting a wrong record count: reported, exit status 1.
    let bad = dir.path().join("bad.jsonl");
    let text = std::fs::read_to_string(fixture())
        .unwrap()
        .replace("\"ack\": \"00000002\"", "\"ack\": \"00000003\"");
    std::fs::write(&bad, text).unwrap();
    let out = run(bad, &["--flat-out"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("1 mismatched"), "{text}");
    assert!(
        text.contains("line 3 (session car-1): expected 00000003, got 00000002"),
        "{text}"
    );
    running.stop().await;
}

#[test]
fn sim_and_replay_explain_themselves() {
    let bin = env!("CARGO_BIN_EXE_fleetgate");
    for (verb, words) in [
        ("sim", ["--records-per-packet", "--scenario", "p99"]),
        ("replay", ["--flat-out", "--speed", "t_ms"]),
    ] {
        let out = std::process::Command::new(bin)
            .args([verb, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        for w in words {
            assert!(text.contains(w), "{verb} --help lacks {w}: {text}");
        }
    }
}

/// The null-ack baseline of the end-to-end benchmark, briefly: it frames and acks what the
/// simulator sends (the benchmark itself is `cargo bench --bench e2e`, not run by CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_server_acks_the_simulator_smoke() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(fleetgate::sim::baseline::serve_on(listener));
    let opts = SimOptions {
        addr: addr.to_string(),
        devices: 2,
        records_per_packet: 25,
        rate: 0.0,
        duration: Some(Duration::from_millis(500)),
        ..SimOptions::default()
    };
    let (stats, elapsed) = fleetgate::sim::run(opts).await.unwrap();
    let report = stats.report(elapsed, 2, "teltonika");
    assert_eq!(report.errors, 0, "{report}");
    assert!(report.records_acked >= 25, "{report}");
    assert_eq!(report.records_acked % 25, 0, "{report}");
    server.abort();
}

/// Ctrl-C ends a run that has a --duration too, with the report printed (the immobiliser
/// bench stops its background load this way).
#[tokio::test]
async fn sigint_ends_a_timed_run_with_its_report() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(fleetgate::sim::baseline::serve_on(listener));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args([
            "sim",
            "--json",
            "--devices",
            "2",
            "--rate",
            "5",
            "--duration",
            "3600",
        ])
        .args(["--addr", &addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("sim exits within 30 s of SIGINT")
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["records_acked"].as_u64().unwrap() > 0, "{report}");
    assert!(report["seconds"].as_f64().unwrap() < 60.0, "{report}");
    server.abort();
}
