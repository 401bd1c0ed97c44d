//! `[limits]`, the protocols' maximum frame sizes and `[api] max_body_bytes` over real
//! sockets: each violation closes (or refuses) only the offending connection, is counted in
//! `fleetgate_ingest_limit_violations_total` / `fleetgate_api_limit_violations_total`, and
//! the other connections carry on.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::{metric, Api, Tracker};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};
use fleetgate::protocols::{Protocol, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const VIOLATIONS: &str = "fleetgate_ingest_limit_violations_total";

fn record(s: i64) -> Vec<AvlRecord> {
    vec![AvlRecord {
        time: Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap() + chrono::Duration::seconds(s),
        lat: 55.75,
        lon: 37.61,
        speed_kmh: 20,
        course: 90,
        altitude: 150,
        satellites: 10,
        io: vec![],
    }]
}

/// A Teltonika tracker that logged in (IMEI acked).
async fn logged_in(addr: SocketAddr, imei: &str) -> Tracker {
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1], "{imei} accepted");
    t
}

/// Connect from a chosen loopback source address (127.0.0.0/8 all reach 127.0.0.1).
async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

async fn violations(api: &Api, limit: &str) -> f64 {
    metric(
        api,
        VIOLATIONS,
        &[("protocol", "teltonika"), ("limit", limit)],
    )
    .await
}

async fn acks(t: &mut Tracker, s: i64) {
    t.send(&encode_avl_packet(CODEC_8, &record(s))).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 1], "still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_only_the_silent_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(
        dir.path(),
        "[limits]\nhandshake_timeout_s = 1\nidle_timeout_s = 60\n",
    )
    .await;
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let before = violations(&api, "handshake_timeout").await;

    let mut good = logged_in(addr, "356307042441101").await;
    let mut silent = Tracker::connect(addr).await;
    let opened = Instant::now();
    assert!(
        silent.closed().await,
        "a connection that never logs in is closed"
    );
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    acks(&mut good, 1).await;
    assert!(violations(&api, "handshake_timeout").await >= before + 1.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_identified_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(
        dir.path(),
        "[limits]\nhandshake_timeout_s = 60\nidle_timeout_s = 2\n",
    )
    .await;
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let before = violations(&api, "idle_timeout").await;

    let mut quiet = logged_in(addr, "356307042441102").await;
    let mut busy = logged_in(addr, "356307042441103").await;
    // The busy tracker keeps talking past the idle timeout and keeps its connection.
    for s in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        acks(&mut busy, s).await;
    }
    assert!(quiet.closed().await, "the silent tracker was closed");
    assert!(violations(&api, "idle_timeout").await >= before + 1.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_only_the_excess_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(
        dir.path(),
        "[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\n",
    )
    .await;
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let per_ip_before = violations(&api, "max_connections_per_ip").await;
    let total_before = violations(&api, "max_connections").await;

    let mut a1 = logged_in(addr, "356307042441104").await;
    let mut a2 = logged_in(addr, "356307042441105").await;
    // A third connection from the same address is refused: closed at once.
    let mut a3 = Tracker {
        stream: connect_from("127.0.0.1", addr).await,
    };
    assert!(a3.closed().await, "third connection from one IP refused");
    // Another address still gets in, up to the total.
    let mut b1 = Tracker {
        stream: connect_from("127.0.0.2", addr).await,
    };
    b1.send(&encode_imei("356307042441106")).await;
    assert_eq!(b1.read(1).await, [1]);
    let mut c1 = Tracker {
        stream: connect_from("127.0.0.3", addr).await,
    };
    assert!(c1.closed().await, "fourth connection refused by the total");

    for (i, t) in [&mut a1, &mut a2, &mut b1].into_iter().enumerate() {
        acks(t, i as i64).await;
    }
    assert!(violations(&api, "max_connections_per_ip").await >= per_ip_before + 1.0);
    assert!(violations(&api, "max_connections").await >= total_before + 1.0);

    // A slot freed is a slot available again.
    drop(a1);
    let mut again = None;
    for _ in 0..50 {
        let mut t = Tracker::connect(addr).await;
        t.send(&encode_imei("356307042441104")).await;
        if t.read_for(500).await == [1] {
            again = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acks(again.as_mut().expect("slot released"), 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(dir.path(), "").await;
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let wialon = d.addr(Protocol::Wialon, Transport::Tcp).unwrap();
    let api = Api::new(d.api_addr);
    let before = violations(&api, "max_frame").await;
    let wialon_before = metric(
        &api,
        VIOLATIONS,
        &[("protocol", "wialon"), ("limit", "max_frame")],
    )
    .await;

    let mut good = logged_in(addr, "356307042441107").await;
    // A Teltonika AVL header declaring 16 MiB of data: refused before any of it arrives.
    let mut liar = logged_in(addr, "356307042441108").await;
    liar.send(&[0, 0, 0, 0, 0x01, 0, 0, 0, 0x08, 0x01]).await;
    assert!(liar.closed().await, "declared length over the maximum");
    // A text protocol fed an endless line: closed once the buffer passes the maximum frame.
    let mut endless = Tracker::connect(wialon).await;
    let chunk = vec![b'A'; 16 * 1024];
    let mut sent = 0;
    while sent <= fleetgate::protocols::wialon::MAX_FRAME + chunk.len() {
        if endless.stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(endless.closed().await, "unterminated line over the maximum");

    acks(&mut good, 1).await;
    assert!(violations(&api, "max_frame").await >= before + 1.0);
    let wialon_after = metric(
        &api,
        VIOLATIONS,
        &[("protocol", "wialon"), ("limit", "max_frame")],
    )
    .await;
    assert!(wialon_after >= wialon_before + 1.0);
    d.stop().await;
}

common::both_backends!(api_body_over_the_limit_is_refused_and_counted);
async fn api_body_over_the_limit_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), "");
    config.api.max_body_bytes = 1024;
    let d = fleetgate::app::start(config).await.expect("starts");
    let api = Api::new(d.api_addr);
    let counted = || {
        metric(
            &api,
            "fleetgate_api_limit_violations_total",
            &[("limit", "max_body_bytes")],
        )
    };
    let before = counted().await;

    let big = serde_json::json!({ "plate": "A".repeat(4096) });
    let (status, _) = api.put("/api/v1/vehicles/car-1", big).await;
    assert_eq!(status, 413, "declared length over the limit");

    // Chunked, so no Content-Length to refuse up front: the limit trips while reading.
    let mut s = TcpStream::connect(d.api_addr).await.unwrap();
    let body = format!("{{\"plate\":\"{}\"}}", "B".repeat(4096));
    let req = format!(
        "PUT /api/v1/vehicles/car-2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    let (status, v) = api
        .put(
            "/api/v1/vehicles/car-1",
            serde_json::json!({ "plate": "A123BC77" }),
        )
        .await;
    assert_eq!(status, 200, "a normal request still works: {v}");
    assert!(counted().await >= before + 2.0);
    d.stop().await;
}
