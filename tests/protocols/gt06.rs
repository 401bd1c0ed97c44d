//! GT06 / Concox over TCP: login, GPS reports, heartbeat and an unknown message type, every ack
//! rebuilt here from the document (`78 78 05 <type> <serial> <CRC-ITU> 0D 0A`).

use fleetgate::protocols::gt06::{encode_gps, encode_login, GpsFix};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect, CRC_ITU};

/// The short ack a GT06 server sends for message `typ` with the device's `serial`.
fn ack(typ: u8, serial: u16) -> Vec<u8> {
    let mut body = vec![0x05, typ];
    body.extend(serial.to_be_bytes());
    let crc = CRC_ITU.checksum(&body);
    let mut out = vec![0x78, 0x78];
    out.extend(&body);
    out.extend(crc.to_be_bytes());
    out.extend([0x0D, 0x0A]);
    out
}

/// A standard frame of `typ` built by hand (length, content, serial, CRC-ITU).
fn frame(typ: u8, content: &[u8], serial: u16) -> Vec<u8> {
    let mut body = vec![(1 + content.len() + 2 + 2) as u8, typ];
    body.extend(content);
    body.extend(serial.to_be_bytes());
    let crc = CRC_ITU.checksum(&body);
    let mut out = vec![0x78, 0x78];
    out.extend(&body);
    out.extend(crc.to_be_bytes());
    out.extend([0x0D, 0x0A]);
    out
}

fn fix(i: i64, lat: f64) -> GpsFix {
    GpsFix {
        time: t(i * 10),
        valid: true,
        lat,
        lon: 37.61,
        speed_kmh: 40 + i as u8,
        course: 90,
        satellites: 8,
        ignition: true,
        cell: (250, 1, 100, 200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gt06_tcp_session_acks_every_message_and_stores_every_fix() {
    let d = Daemon::start().await;
    let imei = "359339075005244";
    let mut dev = d.tcp(Protocol::Gt06).await;

    dev.send(&encode_login(imei, 1)).await;
    assert_eq!(dev.read(10).await, ack(0x01, 1), "login ack");

    let mut want = Vec::new();
    for i in 0..3i64 {
        let f = fix(i, 55.75 + i as f64 * 0.001);
        dev.send(&encode_gps(&f, 2 + i as u16)).await;
        assert_eq!(dev.read(10).await, ack(0x22, 2 + i as u16), "GPS 0x22 ack");
        want.push(Expect {
            time: f.time,
            lat: f.lat,
            lon: f.lon,
            speed_kmh: f64::from(f.speed_kmh),
        });
    }

    // Heartbeat (status 0x13: terminal info, voltage level, GSM level, language).
    dev.send(&frame(0x13, &[0xC4, 0x06, 0x04, 0x00, 0x02], 0x0129))
        .await;
    assert_eq!(dev.read(10).await, ack(0x13, 0x0129), "heartbeat ack");

    // A message type this server does not know: acked like any standard frame, counted.
    dev.send(&frame(0x7A, &[1, 2, 3, 4], 0x0130)).await;
    assert_eq!(dev.read(10).await, ack(0x7A, 0x0130), "unknown type ack");

    // The connection is kept: a later fix is still acked and stored.
    let f = fix(3, 55.76);
    dev.send(&encode_gps(&f, 0x0131)).await;
    assert_eq!(dev.read(10).await, ack(0x22, 0x0131));
    want.push(Expect {
        time: f.time,
        lat: f.lat,
        lon: f.lon,
        speed_kmh: f64::from(f.speed_kmh),
    });

    // A corrupted CRC is not acked.
    let mut bad = encode_gps(&fix(9, 55.8), 0x0140).to_vec();
    let n = bad.len();
    bad[n - 3] ^= 0x55;
    dev.send(&bad).await;
    assert!(dev.read_for(300).await.is_empty(), "bad CRC not acked");

    // A length byte one off (the CRC then cannot match the bytes it delimits): not acked,
    // not stored, although the stop bits let the frame be cut (issue #20).
    for delta in [1u8, 0xFF] {
        let mut off = encode_gps(&fix(10, 55.81), 0x0141).to_vec();
        off[2] = off[2].wrapping_add(delta);
        dev.send(&off).await;
        assert!(
            dev.read_for(300).await.is_empty(),
            "length byte {:#04x} acked",
            off[2]
        );
    }
    // The connection is kept for the next good frame.
    let f = fix(4, 55.761);
    dev.send(&encode_gps(&f, 0x0142)).await;
    assert_eq!(dev.read(10).await, ack(0x22, 0x0142));
    want.push(Expect {
        time: f.time,
        lat: f.lat,
        lon: f.lon,
        speed_kmh: f64::from(f.speed_kmh),
    });

    // 1/1_800_000 degree units: exact to 1e-6.
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-9);
    assert!(
        d.metric(
            "fleetgate_ingest_messages_total",
            &[("protocol", "gt06"), ("kind", "other")]
        )
        .await
            >= 1.0
    );
    let (_, v) = d.api.get(&format!("/api/v1/vehicles/{imei}")).await;
    assert_eq!(v["protocol"], "gt06");
    d.stop().await;
}
