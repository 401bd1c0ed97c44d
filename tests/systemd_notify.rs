//! The real `fleetgate` binary under systemd's notify protocol: a test plays the service
//! manager (a datagram socket in NOTIFY_SOCKET, WATCHDOG_USEC set) and sees READY=1 only once
//! the API answers, STATUS= lines, repeated WATCHDOG=1, a SIGHUP reload (RELOADING=1, READY=1,
//! new log filter and map layers applied), and STOPPING=1 on SIGTERM.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetgate::protocols::Protocol;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_text(dir: &Path, api_port: u16, extra: &str) -> String {
    let mut t = format!("[api]\nlisten = \"127.0.0.1:{api_port}\"\n[listeners]\n");
    for p in Protocol::ALL {
        t.push_str(&format!("{} = \"127.0.0.1:0\"\n", p.name()));
    }
    t.push_str(&format!(
        "[storage]\nurl = \"sqlite://{}/fleetgate.db\"\n",
        dir.display()
    ));
    t.push_str(extra);
    t
}

/// Datagrams until `until` matches one (returned), or panic after `within`.
fn wait_for(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    within: Duration,
    until: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if until(&msg) {
                return msg;
            }
        }
    }
    panic!("no matching notification within {within:?}; got {seen:#?}");
}

fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn notify_watchdog_reload_and_stop_under_a_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let api_port = free_port();
    let conf = dir.path().join("fleetgate.toml");
    std::fs::write(
        &conf,
        config_text(dir.path(), api_port, "[log]\nfilter = \"warn\"\n"),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["run", "--config"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "800000")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen = Vec::new();

    let ready = wait_for(&sock, &mut seen, Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    // READY=1 means bound: the API answers at once, no retry needed.
    let readyz = std::net::TcpStream::connect(("127.0.0.1", api_port)).and_then(|mut s| {
        use std::io::Write;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    });
    assert!(
        readyz.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.0 200")),
        "{readyz:?}"
    );

    // Watchdog pings every 200 ms (W/4), each after a pipeline round trip, with a status line.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 4 {
        let m = wait_for(&sock, &mut seen, Duration::from_secs(5), |m| {
            m.contains("WATCHDOG=1")
        });
        assert!(m.contains("STATUS=0 tracker connections;"), "{m}");
        assert!(m.contains("pipeline ok"), "{m}");
        pings += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "pings too slow: {:?}",
        started.elapsed()
    );

    // SIGHUP: a new log filter and map layers apply, a changed [pipeline] asks for a restart.
    let zones = dir.path().join("lots.geojson");
    std::fs::write(
        &zones,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"Lot 7","kind":"parking"},
            "geometry":{"type":"Polygon","coordinates":[[[37.60,55.70],[37.61,55.70],[37.61,55.71],[37.60,55.70]]]}}]}"#,
    )
    .unwrap();
    let extra = format!(
        "[log]\nfilter = \"info\"\n[status]\nmap_layers = [\"{}\"]\n[pipeline]\nqueue = 77\n",
        zones.display()
    );
    std::fs::write(&conf, config_text(dir.path(), api_port, &extra)).unwrap();
    kill(pid, "-HUP");
    wait_for(&sock, &mut seen, Duration::from_secs(5), |m| {
        m.contains("RELOADING=1")
    });
    let done = wait_for(&sock, &mut seen, Duration::from_secs(5), |m| {
        m.lines().any(|l| l == "READY=1") && m.contains("STATUS=configuration reloaded")
    });
    assert!(done.contains("restart to apply [pipeline]"), "{done}");
    assert!(
        done.contains("zones loaded"),
        "the SIGHUP also reloads the zone files: {done}"
    );
    let map = http_get(api_port, "/api/v1/map");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut map = map;
    while !map.contains("Lot 7") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        map = http_get(api_port, "/api/v1/map");
    }
    assert!(map.contains("\"name\":\"Lot 7\""), "{map}");

    // A broken file on SIGHUP keeps the running configuration.
    std::fs::write(&conf, "[api]\nlisten = 5").unwrap();
    kill(pid, "-HUP");
    let refused = wait_for(&sock, &mut seen, Duration::from_secs(5), |m| {
        m.contains("STATUS=reload refused")
    });
    assert!(refused.contains("READY=1"), "{refused}");

    // SIGTERM: STOPPING=1, then a clean exit.
    kill(pid, "-TERM");
    wait_for(&sock, &mut seen, Duration::from_secs(5), |m| {
        m.contains("STOPPING=1")
    });
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !stderr.contains("listening"),
        "info lines before the reload are filtered out by \"warn\": {stderr}"
    );
    assert!(
        stderr.contains("configuration reloaded"),
        "the reloaded \"info\" filter lets info lines through: {stderr}"
    );
    assert!(stderr.contains("shutdown complete"), "{stderr}");
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("daemon did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

/// The watchdog's probe really goes through the writer: while storage is locked by another
/// process the writer is stuck in its commit and the probe fails (no ping would be sent);
/// once the lock is gone it succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_probe_fails_while_the_writer_is_stuck() {
    use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), "");
    config.storage.batch_max_wait_ms = 0;
    let daemon = fleetgate::app::start(config).await.expect("daemon starts");
    let health = daemon.health();
    health
        .probe(Duration::from_secs(2))
        .await
        .expect("healthy at start");

    let addr = daemon
        .addr(Protocol::Teltonika, fleetgate::protocols::Transport::Tcp)
        .unwrap();
    let mut t = common::Tracker::connect(addr).await;
    t.send(&encode_imei("356307042441099")).await;
    assert_eq!(t.read(1).await, [1]);

    // Another process takes SQLite's write lock: the next group commit waits on it.
    let mut lock =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}/fleetgate.db", dir.path().display()))
            .await
            .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let rec = AvlRecord {
        time: chrono::Utc::now() - chrono::Duration::seconds(5),
        lat: 55.75,
        lon: 37.61,
        speed_kmh: 30,
        course: 90,
        altitude: 150,
        satellites: 9,
        io: vec![],
    };
    t.send(&encode_avl_packet(CODEC_8, &[rec])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stuck = health.probe(Duration::from_millis(500)).await;
    assert!(
        stuck.is_err(),
        "probe must fail while the commit waits: {stuck:?}"
    );

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    assert_eq!(
        t.read(4).await,
        [0, 0, 0, 1],
        "acked after the lock is gone"
    );
    health
        .probe(Duration::from_secs(2))
        .await
        .expect("healthy again");
    daemon.stop().await;
}
