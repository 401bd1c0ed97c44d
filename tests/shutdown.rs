//! SIGTERM: stop accepting, finish and ack what is in flight, exit 0; everything acked is stored.

mod common;

use common::process::free_port;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{Api, Tracker};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_after_acking_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (tport, aport) = (free_port(), free_port());
    let mut cfg = format!(
        "[api]\nlisten = \"127.0.0.1:{aport}\"\n[storage]\nurl = \"sqlite://{}/fg.db\"\n[listeners]\n",
        dir.path().display()
    );
    for p in fleetgate::protocols::Protocol::ALL {
        let v = if p.name() == "teltonika" {
            format!("127.0.0.1:{tport}")
        } else {
            "off".into()
        };
        cfg.push_str(&format!("{} = \"{v}\"\n", p.name()));
    }
    let path = dir.path().join("f.toml");
    std::fs::write(&path, &cfg).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let api = Api::new(format!("127.0.0.1:{aport}").parse().unwrap());
    let wait_ready = || async {
        for _ in 0..200 {
            if api.text("/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not ready");
    };
    let mut child = run();
    // readyz panics on connection refused through reqwest's expect; poll with a raw connect first.
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", aport)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_ready().await;

    let mut t = Tracker::connect(format!("127.0.0.1:{tport}").parse().unwrap()).await;
    t.send(&encode_imei("352093081234567")).await;
    assert_eq!(t.read(1).await, [1]);
    let t0 = Utc.with_ymd_and_hms(2026, 2, 2, 2, 0, 0).unwrap();
    let recs: Vec<_> = (0..3)
        .map(|i| AvlRecord {
            time: t0 + chrono::Duration::seconds(i),
            lat: 55.8,
            lon: 37.5,
            speed_kmh: 10,
            course: 0,
            altitude: 0,
            satellites: 7,
            io: vec![],
        })
        .collect();
    t.send(&encode_avl_packet(CODEC_8, &recs)).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 3]);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(code.code(), Some(0), "graceful exit");
    assert!(t.closed().await, "connections closed at shutdown");

    let mut child = run();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", aport)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_ready().await;
    let (_, track) = api.get("/api/v1/vehicles/352093081234567/track?from=2026-02-01T00:00:00Z&to=2026-02-03T00:00:00Z").await;
    assert_eq!(track.as_array().map(|a| a.len()), Some(3));
    child.kill().unwrap();
    child.wait().unwrap();
}
