//! A Teltonika tracker session over real TCP against the daemon: every ack checked, every
//! record read back through the API; bad input is refused without harming other sessions.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::{Api, Tracker};
use fleetgate::protocols::teltonika::{
    encode_avl_packet, encode_imei, io, AvlRecord, CODEC_8, CODEC_8E,
};
use fleetgate::protocols::{Protocol, Transport};

fn records(start_s: i64, n: usize, lat0: f64) -> Vec<AvlRecord> {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap();
    (0..n)
        .map(|i| AvlRecord {
            time: t0 + Duration::seconds(start_s + i as i64 * 5),
            lat: lat0 + i as f64 * 0.0005,
            lon: 37.6173,
            speed_kmh: 42,
            course: 180,
            altitude: 140,
            satellites: 11,
            io: vec![
                (io::IGNITION, 1, 1),
                (io::MOVEMENT, 1, 1),
                (io::EXTERNAL_VOLTAGE, 2, 13_800),
                (io::TOTAL_ODOMETER, 4, 120_000 + i as u64),
            ],
        })
        .collect()
}

common::both_backends!(tracker_session_is_acked_and_every_record_is_readable);
async fn tracker_session_is_acked_and_every_record_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    tracker_session(common::start(dir.path(), "").await).await;
}

async fn tracker_session(daemon: fleetgate::app::Running) {
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441013";

    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [0x01], "IMEI accepted");

    let batches = [
        (CODEC_8, records(0, 3, 55.70)),
        (CODEC_8E, records(100, 4, 55.71)),
        (CODEC_8, records(200, 1, 55.72)),
    ];
    for (codec, recs) in &batches {
        t.send(&encode_avl_packet(*codec, recs)).await;
        assert_eq!(
            t.read(4).await,
            (recs.len() as u32).to_be_bytes(),
            "ack carries the record count"
        );
    }

    // A corrupted packet gets no ack, is counted, and the session goes on.
    let mut bad = encode_avl_packet(CODEC_8, &records(300, 2, 55.73)).to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0x55;
    t.send(&bad).await;
    assert!(
        t.read_for(300).await.is_empty(),
        "bad CRC must not be acked"
    );
    t.send(&encode_avl_packet(CODEC_8, &records(400, 2, 55.74)))
        .await;
    assert_eq!(t.read(4).await, [0, 0, 0, 2]);

    // The same batch re-sent (the device missed our ack) is acked again, stored once.
    t.send(&encode_avl_packet(CODEC_8, &records(400, 2, 55.74)))
        .await;
    assert_eq!(t.read(4).await, [0, 0, 0, 2]);

    let (status, track) = api
        .get(&format!(
            "/api/v1/vehicles/{imei}/track?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z"
        ))
        .await;
    assert_eq!(status, 200, "{track}");
    let track = track.as_array().unwrap();
    assert_eq!(track.len(), 3 + 4 + 1 + 2, "every acked record, once");
    let times: Vec<_> = track
        .iter()
        .map(|p| p["time"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "fix-time order");
    assert_eq!(track[0]["time"], "2026-11-20T09:00:00Z");
    assert!((track[0]["lat"].as_f64().unwrap() - 55.70).abs() < 1e-6);
    assert_eq!(track[0]["speed_kmh"], 42.0);
    assert_eq!(track[0]["ignition"], true);
    assert_eq!(track[0]["power_v"], 13.8);

    let (status, v) = api.get(&format!("/api/v1/vehicles/{imei}")).await;
    assert_eq!(status, 200);
    assert_eq!(v["device_id"], imei);
    assert_eq!(v["protocol"], "teltonika");
    assert_eq!(v["online"], true);
    assert_eq!(v["position"]["time"], "2026-11-20T09:06:45Z");

    let (_, s) = api.get(&format!("/api/v1/vehicles/{imei}/track/summary?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z")).await;
    assert_eq!(s["count"], 10);
    assert!(s["distance_km"].as_f64().unwrap() > 4.0, "{s}");

    let (_, metrics) = api.text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fleetgate_ingest_decode_errors_total")
                && l.contains("reason=\"crc\"")),
        "{metrics}"
    );
    daemon.stop().await;
}

common::both_backends!(oversized_and_garbage_frames_close_only_their_connection);
async fn oversized_and_garbage_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "").await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();

    let mut good = Tracker::connect(addr).await;
    good.send(&encode_imei("356307042441014")).await;
    assert_eq!(good.read(1).await, [1]);

    let mut huge = Tracker::connect(addr).await;
    huge.send(&encode_imei("356307042441015")).await;
    assert_eq!(huge.read(1).await, [1]);
    huge.send(&[0, 0, 0, 0, 0x10, 0, 0, 0]).await;
    assert!(huge.closed().await, "oversized frame closes the connection");

    let mut garbage = Tracker::connect(addr).await;
    garbage
        .send(&[0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3])
        .await;
    assert!(
        garbage.closed().await,
        "unframeable input closes the connection"
    );

    // A truncated frame followed by EOF: nothing is acked, nothing stored.
    let mut cut = Tracker::connect(addr).await;
    cut.send(&encode_imei("356307042441016")).await;
    assert_eq!(cut.read(1).await, [1]);
    let pkt = encode_avl_packet(CODEC_8, &records(0, 2, 55.7));
    cut.send(&pkt[..pkt.len() / 2]).await;
    drop(cut);

    good.send(&encode_avl_packet(CODEC_8, &records(0, 2, 55.7)))
        .await;
    assert_eq!(
        good.read(4).await,
        [0, 0, 0, 2],
        "other sessions are unaffected"
    );

    let api = Api::new(daemon.api_addr);
    let (status, track) = api.get("/api/v1/vehicles/356307042441016/track?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z").await;
    assert_eq!(status, 200);
    assert_eq!(track.as_array().unwrap().len(), 0);
    daemon.stop().await;
}

common::both_backends!(unknown_device_is_refused_when_auto_registration_is_off);
async fn unknown_device_is_refused_when_auto_registration_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "[devices]\nregister_unknown = false\n").await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);

    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei("356307042441099")).await;
    assert_eq!(t.read(1).await, [0x00], "unknown IMEI refused");
    assert!(t.closed().await);

    let (status, _) = api
        .put(
            "/api/v1/vehicles/car-7",
            serde_json::json!({"device_id": "356307042441099", "plate": "A123BC77"}),
        )
        .await;
    assert_eq!(status, 200);
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei("356307042441099")).await;
    assert_eq!(t.read(1).await, [0x01], "registered IMEI accepted");
    t.send(&encode_avl_packet(CODEC_8E, &records(0, 2, 55.7)))
        .await;
    assert_eq!(t.read(4).await, [0, 0, 0, 2]);
    let (_, v) = api.get("/api/v1/vehicles/car-7").await;
    assert_eq!(v["plate"], "A123BC77");
    assert_eq!(v["protocol"], "teltonika");
    assert!(v["position"]["lat"].as_f64().is_some(), "{v}");
    daemon.stop().await;
}

common::both_backends!(udp_datagrams_are_acked_and_stored);
async fn udp_datagrams_are_acked_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "").await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Udp).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Real FMB datagram: packet id 0xCAFE, AVL packet id 0x05, one record.
    let pkt = hex::decode("003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30010000000000000000000000000000000103021503010101425DBC000001").unwrap();
    sock.send_to(&pkt, addr).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hex::encode(&buf[..n]), "0005cafe010501");
    daemon.stop().await;
}

common::both_backends!(a_tracker_removed_from_its_vehicle_is_refused_at_once);
/// With `register_unknown = false`, a tracker taken out of its vehicle through the API is
/// refused at its next login: the listeners read the cache the API clears.
async fn a_tracker_removed_from_its_vehicle_is_refused_at_once() {
    use fleetgate::protocols::teltonika::encode_imei;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "[devices]\nregister_unknown = false\n").await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = common::Api::new(daemon.api_addr);
    let imei = "356307042441901";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-17",
            serde_json::json!({"device_id": imei, "protocol": "teltonika"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = common::Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1], "the vehicle's tracker is admitted");
    drop(t);
    let (s, _) = api
        .put(
            "/api/v1/vehicles/car-17",
            serde_json::json!({"device_id": "356307042441999"}),
        )
        .await;
    assert_eq!(s, 200);
    let mut t = common::Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [0], "refused at once, not after a restart");
    daemon.stop().await;
}

common::both_backends!(malformed_device_ids_are_not_registered);
/// Garbage identities on a port never become vehicles.
async fn malformed_device_ids_are_not_registered() {
    use fleetgate::protocols::teltonika::encode_imei;
    let malformed = [("protocol", "teltonika")];
    let _metrics = common::metric_lock("fleetgate_ingest_malformed_ids_total").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "").await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = common::Api::new(daemon.api_addr);
    // Counters are per process: this test's are what it adds.
    let before = common::metric(&api, "fleetgate_ingest_malformed_ids_total", &malformed).await;
    for bad in ["12AB5678901234", "1234", "!!!!!!!!!!!!!!!"] {
        let mut t = common::Tracker::connect(addr).await;
        t.send(&encode_imei(bad)).await;
        assert_eq!(t.read(1).await, [0], "{bad} refused");
    }
    let (_, list) = api.get("/api/v1/vehicles").await;
    assert_eq!(list.as_array().map(|a| a.len()), Some(0), "{list}");
    assert_eq!(
        common::metric(&api, "fleetgate_ingest_malformed_ids_total", &malformed).await - before,
        3.0
    );
    // A vehicle id with a line break or a direction override cannot be created.
    for bad in ["car%0D%0Afake", "car%E2%80%AE", "a%2Fb"] {
        let (s, b) = api
            .put(&format!("/api/v1/vehicles/{bad}"), serde_json::json!({}))
            .await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    daemon.stop().await;
}
