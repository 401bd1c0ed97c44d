//! An attacker on the tracker network who knows a car's IMEI (printed on the tracker, in SMS
//! set-up messages, in photos of installs) tries to get the engine block sent to a car that
//! is driving at 55 km/h. Over real sockets against the daemon with SQLite: none of the
//! attacks sends a block; the block does go out once the real car really stops.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::teltonika::{login, read_command, rec, send_records};
use common::{wait_vehicle, Api, Tracker};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

const CFG: &str = "[immobiliser]\nsafe_for = 10\nmax_block_speed_kmh = 5\n";

/// A Teltonika UDP datagram (UDP channel header, IMEI, AVL data without CRC).
fn udp_datagram(imei: &str, recs: &[AvlRecord]) -> Vec<u8> {
    let tcp = encode_avl_packet(CODEC_8E, recs);
    let avl = &tcp[8..tcp.len() - 4];
    let mut body = vec![0xCA, 0xFE, 0x01, 0x05];
    body.extend_from_slice(&(imei.len() as u16).to_be_bytes());
    body.extend_from_slice(imei.as_bytes());
    body.extend_from_slice(avl);
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A record dated `ahead_s` seconds in the future (negative: in the past).
fn rec_at(ahead_s: i64, speed: u16, ignition: bool) -> AvlRecord {
    let mut r = rec(0, speed, ignition, None);
    r.time = Utc::now() + chrono::Duration::seconds(ahead_s);
    r
}

/// A car driving at 55 km/h on its own TCP connection with a block reason standing.
async fn driving_car_with_pending_block(
    api: &Api,
    addr: std::net::SocketAddr,
    imei: &str,
) -> Tracker {
    let mut car = login(addr, imei).await;
    send_records(&mut car, &[rec(2, 55, true, Some(false))]).await;
    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "low_balance", "comment": "balance 4 999,99 ₽"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "block_pending");
    car
}

/// The car keeps reporting 55 km/h for `n` packets, one a second; no command may reach it.
async fn keeps_driving(car: &mut Tracker, n: usize) {
    for _ in 0..n {
        send_records(car, &[rec(0, 55, true, Some(false))]).await;
        let got = car.read_for(300).await;
        assert!(
            got.is_empty(),
            "a command reached a car at 55 km/h: {got:02x?}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// The real car stops: three stopped fixes over more than `safe_for`, after its last moving
/// one (dated a few seconds ahead, within the allowed clock skew, to keep the test short).
async fn stops_and_gets_the_block(car: &mut Tracker) {
    send_records(
        car,
        &[rec_at(1, 0, true), rec_at(6, 0, true), rec_at(12, 0, true)],
    )
    .await;
    let cmd = tokio::time::timeout(Duration::from_secs(10), read_command(car))
        .await
        .expect("the block reaches the stopped car");
    assert_eq!(cmd, "setdigout 1");
}

common::both_backends!(forged_udp_datagrams_never_block_a_moving_car);
async fn forged_udp_datagrams_never_block_a_moving_car() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let tcp = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let udp = daemon.addr(Protocol::Teltonika, Transport::Udp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441201";
    let mut car = driving_car_with_pending_block(&api, tcp, imei).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Attack 1: ignition off, parked, three times.
    for i in 0..3 {
        sock.send_to(&udp_datagram(imei, &[rec_at(-2 + i, 0, false)]), udp)
            .await
            .unwrap();
    }
    keeps_driving(&mut car, 3).await;
    // Attack 2: slow fixes dated a minute ahead.
    sock.send_to(
        &udp_datagram(imei, &[rec_at(60, 0, true), rec_at(75, 0, true)]),
        udp,
    )
    .await
    .unwrap();
    keeps_driving(&mut car, 3).await;

    let v = wait_vehicle(&api, imei, "block_pending", |v| {
        v["immobiliser"]["state"] == "block_pending"
    })
    .await;
    assert_eq!(v["immobiliser"]["reasons"], json!(["low_balance"]));
    let (_, conflicts) = api.get("/api/v1/identity-conflicts").await;
    let udp_claims: Vec<&Value> = conflicts
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["device_id"] == imei && c["kind"] == "udp")
        .collect();
    assert_eq!(udp_claims.len(), 1, "{conflicts}");
    assert!(udp_claims[0]["count"].as_u64().unwrap() >= 2);
    assert!(
        common::metric(
            &api,
            "fleetgate_ingest_identity_conflicts_total",
            &[("protocol", "teltonika"), ("kind", "udp")]
        )
        .await
            >= 2.0
    );

    stops_and_gets_the_block(&mut car).await;
    // The audit's evidence is the real car's own stopped fix.
    let (_, audit) = api.get(&format!("/api/v1/audit?vehicle={imei}")).await;
    let queued = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["event"] == "command_queued")
        .expect("command_queued audited")
        .clone();
    assert_eq!(queued["position"]["speed_kmh"], 0.0, "{queued}");
    daemon.stop().await;
}

common::both_backends!(a_tcp_impostor_with_a_future_dated_parked_fix_never_blocks_a_moving_car);
async fn a_tcp_impostor_with_a_future_dated_parked_fix_never_blocks_a_moving_car() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let tcp = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441202";
    let mut car = driving_car_with_pending_block(&api, tcp, imei).await;

    // Attack 3: a second connection logs in while the car is connected, sends parked,
    // ignition-off fixes dated four minutes ahead, and stays.
    let mut impostor = login(tcp, imei).await;
    send_records(
        &mut impostor,
        &[
            rec_at(240, 0, false),
            rec_at(241, 0, false),
            rec_at(242, 0, false),
        ],
    )
    .await;
    keeps_driving(&mut car, 3).await;
    assert!(
        impostor.read_for(300).await.is_empty(),
        "the impostor gets no command either"
    );
    let (_, conflicts) = api.get("/api/v1/identity-conflicts").await;
    let c = &conflicts.as_array().unwrap()[0];
    assert_eq!(
        (
            c["device_id"].as_str(),
            c["kind"].as_str(),
            c["active"].as_bool()
        ),
        (Some(imei), Some("second_connection"), Some(true)),
        "{conflicts}"
    );
    drop(impostor);

    // Attack 4: the car drops off; the impostor logs in alone, sends a parked fix dated
    // ahead and leaves; the real car reconnects and drives on.
    drop(car);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut impostor = login(tcp, imei).await;
    send_records(&mut impostor, &[rec_at(240, 0, false)]).await;
    drop(impostor);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut car = login(tcp, imei).await;
    keeps_driving(&mut car, 4).await;

    stops_and_gets_the_block(&mut car).await;
    daemon.stop().await;
}

common::both_backends!(one_connection_cannot_log_in_as_several_cars);
async fn one_connection_cannot_log_in_as_several_cars() {
    let _metrics = common::metric_lock("fleetgate_ingest_identity_conflicts_total").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let tcp = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let relogin = [("protocol", "teltonika"), ("kind", "relogin")];
    // Counters are per process: this test's are what it adds.
    let before = common::metric(&api, "fleetgate_ingest_identity_conflicts_total", &relogin).await;
    let imeis = [
        "356307042441301",
        "356307042441302",
        "356307042441303",
        "356307042441304",
    ];
    let mut cars = Vec::new();
    for imei in imeis {
        let mut car = login(tcp, imei).await;
        send_records(&mut car, &[rec(1, 40, true, Some(false))]).await;
        cars.push(car);
    }
    // The sweep: one connection, four 17-byte login frames.
    let mut sweep = login(tcp, imeis[0]).await;
    for imei in &imeis[1..] {
        sweep.send(&encode_imei(imei)).await;
    }
    let refused = sweep.read_for(1000).await;
    assert_eq!(refused, [0], "the second identity is refused: {refused:?}");
    assert!(sweep.closed().await, "and the connection closed");
    drop(sweep);
    // Every car keeps its command path: a manual block reaches each once it is parked.
    for (car, imei) in cars.iter_mut().zip(imeis) {
        let (s, b) = api
            .post(
                &format!("/api/v1/vehicles/{imei}/block"),
                json!({"reason": "manual", "comment": "returned late"}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        stops_and_gets_the_block(car).await;
    }
    let relogins =
        common::metric(&api, "fleetgate_ingest_identity_conflicts_total", &relogin).await - before;
    assert_eq!(
        relogins, 1.0,
        "the connection closed at the first foreign login"
    );
    daemon.stop().await;
}

common::both_backends!(a_tracker_moved_to_another_car_does_not_take_the_old_cars_block_with_it);
async fn a_tracker_moved_to_another_car_does_not_take_the_old_cars_block_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let tcp = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let tracker = "356307042441401";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-a",
            json!({"device_id": tracker, "protocol": "teltonika", "status": "issued"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = login(tcp, tracker).await;
    send_records(&mut t, &[rec(1, 50, true, Some(false))]).await;
    let (s, b) = api
        .post(
            "/api/v1/vehicles/car-a/block",
            json!({"reason": "low_balance"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "block_pending");

    // The installer moves the tracker from car A to car B.
    let (s, _) = api
        .put(
            "/api/v1/vehicles/car-a",
            json!({"device_id": "356307042441499"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .put(
            "/api/v1/vehicles/car-b",
            json!({"device_id": tracker, "protocol": "teltonika", "status": "issued"}),
        )
        .await;
    assert_eq!(s, 200);
    // Car B parks: nothing reaches its tracker.
    send_records(
        &mut t,
        &[
            rec(12, 0, false, Some(false)),
            rec(6, 0, false, Some(false)),
            rec(0, 0, false, Some(false)),
        ],
    )
    .await;
    let got = t.read_for(1500).await;
    assert!(got.is_empty(), "car B got car A's block: {got:02x?}");
    let (_, b) = api.get("/api/v1/vehicles/car-b").await;
    assert_eq!(b["immobiliser"]["state"], "running", "{b}");
    let a = wait_vehicle(&api, "car-a", "waiting for its own tracker", |v| {
        v["immobiliser"]["state"] == "block_pending"
    })
    .await;
    assert_eq!(a["immobiliser"]["reasons"], json!(["low_balance"]));
    let (_, audit) = api.get("/api/v1/audit?vehicle=car-a").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"] != "command_sent"),
        "{audit}"
    );
    daemon.stop().await;
}

common::both_backends!(every_command_frame_the_device_saw_in_a_block_unblock_storm_is_audited);
async fn every_command_frame_the_device_saw_in_a_block_unblock_storm_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let tcp = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441501";
    let mut car = login(tcp, imei).await;
    // Parked with the ignition off: every block may go out at once.
    send_records(
        &mut car,
        &[
            rec(12, 0, false, Some(false)),
            rec(6, 0, false, Some(false)),
            rec(0, 0, false, Some(false)),
        ],
    )
    .await;
    let api2 = Api::new(daemon.api_addr);
    let storm = tokio::spawn(async move {
        for i in 0..30 {
            let path = if i % 2 == 0 { "block" } else { "unblock" };
            let (s, b) = api2
                .post(
                    &format!("/api/v1/vehicles/{imei}/{path}"),
                    json!({"reason": "manual"}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
        }
    });
    // The device reads every frame it is sent (never answering) until the storm is over.
    let mut frames = 0;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < deadline {
        buf.extend(car.read_for(200).await);
        // Codec 12 frames: 8-byte header with the data length, data, 4-byte CRC.
        while buf.len() >= 8 {
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + len + 4 {
                break;
            }
            assert_eq!(buf[8], 0x0C, "Codec 12");
            buf.drain(..8 + len + 4);
            frames += 1;
        }
        if storm.is_finished() && frames > 0 && buf.is_empty() {
            // Let the last writes land, then stop reading.
            let more = car.read_for(500).await;
            if more.is_empty() {
                break;
            }
            buf.extend(more);
        }
    }
    storm.await.unwrap();
    assert!(frames >= 1, "the device saw commands");
    let mut sent = 0;
    for _ in 0..100 {
        let (_, audit) = api
            .get(&format!("/api/v1/audit?vehicle={imei}&limit=1000"))
            .await;
        sent = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["event"] == "command_sent")
            .count();
        if sent == frames {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sent, frames,
        "one command_sent row per frame the device saw"
    );
    daemon.stop().await;
}
