//! Wialon IPS 1.1 over TCP, 2.0 over TCP and UDP: login, short and extended data, black box,
//! ping and an unknown packet type; every answer is the text the IPS document prescribes.

use crc::{Crc, CRC_16_ARC};
use fleetgate::protocols::wialon::{
    encode_black_box, encode_data, encode_login, encode_ping, encode_short_data, udp_datagram,
    IpsRecord, ParamValue,
};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

fn rec(s: i64, lat: f64, speed: f64) -> IpsRecord {
    IpsRecord {
        time: Some(t(s)),
        lat: Some(lat),
        lon: Some(37.617_3),
        speed_kmh: Some(speed),
        course: Some(90.0),
        altitude: Some(150.0),
        satellites: Some(9),
        hdop: Some(1.2),
        inputs: Some(1),
        outputs: Some(0),
        params: vec![("pwr_ext".into(), ParamValue::Double(13.8))],
        ..IpsRecord::default()
    }
}

fn expect(r: &IpsRecord) -> Expect {
    Expect {
        time: r.time.unwrap(),
        lat: r.lat.unwrap(),
        lon: r.lon.unwrap(),
        speed_kmh: r.speed_kmh.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wialon_1_1_tcp_session_is_answered_and_stored() {
    let d = Daemon::start().await;
    let imei = "861230043907626";
    let mut dev = d.tcp(Protocol::Wialon).await;

    dev.send(b"#L#861230043907626;NA\r\n").await;
    assert_eq!(dev.read(7).await, b"#AL#1\r\n");

    let r1 = rec(0, 55.70, 40.0);
    dev.send(&encode_short_data(&r1, false)).await;
    assert_eq!(dev.read(8).await, b"#ASD#1\r\n");
    let r2 = rec(10, 55.701, 41.0);
    dev.send(&encode_data(&r2, false)).await;
    assert_eq!(dev.read(7).await, b"#AD#1\r\n");
    let bb: Vec<_> = (0..3)
        .map(|i| rec(20 + i * 10, 55.702 + i as f64 * 0.001, 50.0))
        .collect();
    dev.send(&encode_black_box(&bb, false)).await;
    assert_eq!(
        dev.read(7).await,
        b"#AB#3\r\n",
        "black box answer counts the messages"
    );
    dev.send(&encode_ping()).await;
    assert_eq!(dev.read(6).await, b"#AP#\r\n");

    // A packet type IPS 1.1 does not define: counted, no answer, the session goes on.
    dev.send(b"#ZZ#whatever;1\r\n").await;
    assert!(
        dev.read_for(300).await.is_empty(),
        "unknown type not answered"
    );
    let r6 = rec(60, 55.71, 60.0);
    dev.send(&encode_data(&r6, false)).await;
    assert_eq!(dev.read(7).await, b"#AD#1\r\n", "later data still answered");

    let mut want = vec![expect(&r1), expect(&r2)];
    want.extend(bb.iter().map(expect));
    want.push(expect(&r6));
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-9);

    // `NA` for date and time: the fix is stored at the server's receive time.
    let before = chrono::Utc::now();
    dev.send(b"#SD#NA;NA;5542.6000;N;03737.0380;E;12;90;150;9\r\n")
        .await;
    assert_eq!(dev.read(8).await, b"#ASD#1\r\n");
    let after = chrono::Utc::now();
    let (_, v) = d.api.get(&format!("/api/v1/vehicles/{imei}")).await;
    let at = chrono::DateTime::parse_from_rfc3339(v["position"]["time"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        at >= before - chrono::Duration::seconds(1) && at <= after + chrono::Duration::seconds(1),
        "NA time is the receive time: {v}"
    );
    assert!(
        (v["position"]["lat"].as_f64().unwrap() - 55.71).abs() < 1e-6,
        "{v}"
    );
    assert!(
        d.metric(
            "fleetgate_ingest_messages_total",
            &[("protocol", "wialon"), ("kind", "other")]
        )
        .await
            >= 1.0
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wialon_2_0_tcp_checks_crc_and_udp_datagrams_are_answered() {
    const CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);
    let d = Daemon::start().await;
    let imei = "861230043907627";
    let mut dev = d.tcp(Protocol::Wialon).await;

    // Login built by hand: CRC-16 (ARC) over everything after `#L#` up to the last `;`.
    let body = format!("2.0;{imei};NA;");
    let login = format!("#L#{body}{:04X}\r\n", CRC.checksum(body.as_bytes()));
    assert_eq!(login.as_bytes(), &encode_login(imei, None, true)[..]);
    dev.send(login.as_bytes()).await;
    assert_eq!(dev.read(7).await, b"#AL#1\r\n");

    let r1 = rec(100, 55.72, 33.0);
    dev.send(&encode_data(&r1, true)).await;
    assert_eq!(dev.read(7).await, b"#AD#1\r\n");
    let r2 = rec(110, 55.721, 34.0);
    dev.send(&encode_short_data(&r2, true)).await;
    assert_eq!(dev.read(8).await, b"#ASD#1\r\n");
    let bb: Vec<_> = (0..2)
        .map(|i| rec(120 + i * 10, 55.722 + i as f64 * 0.001, 35.0))
        .collect();
    dev.send(&encode_black_box(&bb, true)).await;
    assert_eq!(dev.read(7).await, b"#AB#2\r\n");

    // A wrong CRC: answered with the checksum error code (`#AD#16`), nothing stored.
    let mut bad = encode_data(&rec(300, 56.0, 1.0), true).to_vec();
    let n = bad.len();
    bad[n - 3] = if bad[n - 3] == b'0' { b'1' } else { b'0' };
    dev.send(&bad).await;
    assert_eq!(dev.read(8).await, b"#AD#16\r\n");

    // UDP: every datagram names the device; answered with the same codes.
    let udp = d.udp(Protocol::Wialon).await;
    let r5 = rec(200, 55.73, 20.0);
    udp.send(&udp_datagram(imei, &encode_data(&r5, true), true))
        .await;
    assert_eq!(udp.recv().await, b"#AD#1\r\n");
    let r6 = rec(210, 55.731, 21.0);
    udp.send(&udp_datagram(imei, &encode_short_data(&r6, true), true))
        .await;
    assert_eq!(udp.recv().await, b"#ASD#1\r\n");

    let mut want = vec![expect(&r1), expect(&r2)];
    want.extend(bb.iter().map(expect));
    want.push(expect(&r5));
    want.push(expect(&r6));
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-9);
    d.stop().await;
}
