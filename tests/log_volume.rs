//! Log volume stays bounded whatever a connection sends (issue #21: 1.3 MB of `A` to the ADM
//! port, 20,000 frames of a type fleetgate does not use, produced 7.4 MB of INFO lines).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, wait_ready};
use fleetgate::protocols::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unused_messages_logs_a_few_lines_and_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api_port) = (free_port(), free_port());
    let mut cfg = format!(
        "[log]\nformat = \"json\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n[storage]\nurl = \"sqlite://{}/fg.db\"\n[listeners]\n",
        dir.path().display()
    );
    for p in Protocol::ALL {
        let v = if *p == Protocol::Adm {
            format!("127.0.0.1:{port}")
        } else {
            "off".into()
        };
        cfg.push_str(&format!("{} = \"{v}\"\n", p.name()));
    }
    let config = dir.path().join("fleetgate.toml");
    std::fs::write(&config, cfg).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let api = common::Api::new(format!("127.0.0.1:{api_port}").parse().unwrap());
    wait_ready(&api).await;
    let before = std::fs::metadata(&log).unwrap().len();

    // 1.3 MB of `A`: ADM reads 0x41 as a 65-byte packet of an unused type, 20,000 of them.
    const BYTES: usize = 1_300_000;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut rd, mut wr) = s.split();
    let drain = async {
        let mut sink = vec![0u8; 4096];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let send = async {
        wr.write_all(&vec![b'A'; BYTES]).await.unwrap();
        // Every frame handled before the connection goes.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = common::metric(
                &api,
                "fleetgate_ingest_messages_total",
                &[("protocol", "adm"), ("kind", "other")],
            )
            .await;
            if got >= (BYTES / 65) as f64 {
                break;
            }
            assert!(Instant::now() < deadline, "only {got} frames handled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wr.shutdown().await.unwrap();
    };
    tokio::join!(drain, send);
    drop(s);
    // The connection's closing summary says how many lines it held back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("repeated lines were counted") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    let flood_log = &text[before as usize..];
    let unused = flood_log
        .lines()
        .filter(|l| l.contains("message of a type fleetgate does not use"))
        .count();
    assert_eq!(
        unused,
        fleetgate::ops::ratelimit::BURST as usize,
        "a burst, then counted:\n{flood_log}"
    );
    let summary = flood_log
        .lines()
        .find(|l| l.contains("repeated lines were counted"))
        .unwrap_or_else(|| panic!("no closing summary:\n{flood_log}"));
    let held = BYTES / 65 - fleetgate::ops::ratelimit::BURST as usize;
    assert!(
        summary.contains(&format!("\"suppressed\":{held}")),
        "{summary}"
    );
    assert!(
        flood_log.len() < 8 * 1024,
        "{} bytes of log for one flooding connection",
        flood_log.len()
    );
}
