//! Thousands of silent trackers: the daemon keeps every identified connection open (no
//! per-connection read buffer while idle) and still serves a tracker that arrives later.

mod common;

use std::time::Duration;

use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 2_000;

async fn handshake(addr: std::net::SocketAddr, imei: String) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&encode_imei(&imei)).await.expect("send IMEI");
    let mut ack = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut ack))
        .await
        .expect("IMEI acked within 60 s")
        .expect("read");
    assert_eq!(ack, [1]);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_trackers_are_held_and_a_fresh_one_is_served() {
    // The daemon raises the open-files limit at start; this process holds both ends.
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), "").await;
    let limit = fleetgate::ops::rlimit::raise_nofile().unwrap();
    assert!(
        limit.soft as usize > 2 * IDLE + 200,
        "this test needs {} descriptors, the hard limit is {}",
        2 * IDLE + 200,
        limit.hard
    );
    let addr = running.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = common::Api::new(running.api_addr);

    let mut idle = Vec::with_capacity(IDLE);
    // In waves, so the listen backlog never overflows on a loaded machine.
    for wave in 0..IDLE / 200 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200 {
            let imei = format!("35630704{:07}", wave * 200 + i);
            set.spawn(handshake(addr, imei));
        }
        while let Some(s) = set.join_next().await {
            idle.push(s.unwrap());
        }
    }
    assert_eq!(idle.len(), IDLE);

    // Every one of them is counted as open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = common::metric(
            &api,
            "fleetgate_ingest_connections",
            &[("protocol", "teltonika")],
        )
        .await;
        if n as usize == IDLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections gauge at {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A tracker arriving now is served as usual.
    let mut fresh = handshake(addr, "356307049999999".into()).await;
    let rec = AvlRecord {
        time: chrono::Utc::now() - chrono::Duration::seconds(5),
        lat: 55.75,
        lon: 37.62,
        speed_kmh: 30,
        course: 90,
        altitude: 150,
        satellites: 9,
        io: vec![],
    };
    fresh
        .write_all(&encode_avl_packet(CODEC_8E, &[rec]))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), fresh.read_exact(&mut ack))
        .await
        .expect("acked within 30 s")
        .unwrap();
    assert_eq!(u32::from_be_bytes(ack), 1);

    // None of the idle ones was closed meanwhile.
    for (i, s) in idle.iter().enumerate() {
        let mut b = [0u8; 1];
        match s.try_read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("idle connection {i} is no longer open: {other:?}"),
        }
    }
    drop(idle);
    running.stop().await;
}
