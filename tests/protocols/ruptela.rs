//! Ruptela over TCP: standard (command 1) and extended (command 68) record packets, a heartbeat
//! and an unknown command. Acks are the fixed server packets of the Ruptela protocol document:
//! `00 02 64 01 13 BC` for records (length 2, command 100, "accepted", CRC-16/KERMIT).

use fleetgate::protocols::ruptela::{encode_device_packet, encode_records, Record};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect, CRC_KERMIT};

/// A server packet `length | command | data | CRC-16/KERMIT (BE)`, built here.
fn server_packet(command: u8, data: &[u8]) -> Vec<u8> {
    let mut body = vec![command];
    body.extend(data);
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend(&body);
    out.extend(CRC_KERMIT.checksum(&body).to_be_bytes());
    out
}

fn rec(s: i64, lat: f64, speed: u16) -> Record {
    Record {
        time: t(s),
        lat,
        lon: 37.617_3,
        speed_kmh: speed,
        course: 90.0,
        altitude_m: 150.0,
        satellites: 10,
        io: vec![(5, 1, 1), (29, 2, 13_800), (65, 4, 100_000)],
    }
}

/// An extended (command 68) records packet, laid out by hand: 16-bit IO ids, record extension
/// byte, 16-bit event id; `(timestamp extension, event)` per record.
fn extended(imei: u64, recs: &[Record], ext_event: &[(u8, u16)]) -> Vec<u8> {
    let mut data = vec![0u8, recs.len() as u8];
    for (i, r) in recs.iter().enumerate() {
        let (ts_ext, event) = ext_event.get(i).copied().unwrap_or((0, 0));
        data.extend((r.time.timestamp() as u32).to_be_bytes());
        data.push(ts_ext); // timestamp extension
        data.push(0); // record extension: not merged
        data.push(0); // priority
        data.extend(((r.lon * 1e7).round() as i32).to_be_bytes());
        data.extend(((r.lat * 1e7).round() as i32).to_be_bytes());
        data.extend(((r.altitude_m * 10.0) as i16).to_be_bytes());
        data.extend(((r.course * 100.0) as u16).to_be_bytes());
        data.push(r.satellites);
        data.extend(r.speed_kmh.to_be_bytes());
        data.push(10); // HDOP
        data.extend(event.to_be_bytes()); // event id
        data.extend([1, 0, 5, 1]); // one 1-byte IO: id 5 (ignition) = 1
        data.extend([0, 0, 0]); // no 2, 4, 8-byte IO
    }
    encode_device_packet(imei, 68, &data).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruptela_tcp_session_acks_standard_and_extended_records() {
    let d = Daemon::start().await;
    let imei = 863_071_014_445_404u64;
    let mut dev = d.tcp(Protocol::Ruptela).await;
    let ack = server_packet(100, &[0x01]);
    assert_eq!(
        hex::encode(&ack),
        "0002640113bc",
        "the documented records ack"
    );

    let first: Vec<_> = (0..3)
        .map(|i| rec(i * 10, 55.75 + i as f64 * 0.001, 40 + i as u16))
        .collect();
    dev.send(&encode_records(imei, &first)).await;
    assert_eq!(dev.read(6).await, ack);
    let second: Vec<_> = (3..5)
        .map(|i| rec(i * 10, 55.75 + i as f64 * 0.001, 40 + i as u16))
        .collect();
    dev.send(&extended(imei, &second, &[])).await;
    assert_eq!(dev.read(6).await, ack, "extended records get the same ack");
    // Two records of one second that differ in the timestamp extension (and event): both are
    // kept, ordered by the extension as milliseconds (issue #20).
    let same_second = vec![rec(55, 55.755, 50), rec(55, 55.755, 51)];
    dev.send(&extended(imei, &same_second, &[(0, 0), (1, 250)]))
        .await;
    assert_eq!(dev.read(6).await, ack);

    // Heartbeat (command 16) → command 116, "accepted".
    dev.send(&encode_device_packet(imei, 16, &[])).await;
    assert_eq!(dev.read(6).await, server_packet(116, &[0x01]));

    // A command this server does not know (file transfer, 37): counted, not answered; the
    // connection stays and later records are acked.
    dev.send(&encode_device_packet(imei, 37, &[0x01, 0x02, 0x03]))
        .await;
    assert!(dev.read_for(300).await.is_empty());
    let third = vec![rec(50, 55.76, 60)];
    dev.send(&encode_records(imei, &third)).await;
    assert_eq!(dev.read(6).await, ack, "later records still acked");

    // Bad CRC: no ack.
    let mut bad = encode_records(imei, &[rec(90, 56.0, 1)]).to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0x33;
    dev.send(&bad).await;
    assert!(dev.read_for(300).await.is_empty(), "bad CRC not acked");

    let mut same_second = same_second;
    same_second[1].time += chrono::Duration::milliseconds(1);
    let want: Vec<_> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .chain(&same_second)
        .map(|r| Expect {
            time: r.time,
            lat: r.lat,
            lon: r.lon,
            speed_kmh: f64::from(r.speed_kmh),
        })
        .collect();
    assert_track(&d.track(&format!("{imei:015}")).await, &want, 1e-7, 1e-9);
    assert!(
        d.metric(
            "fleetgate_ingest_messages_total",
            &[("protocol", "ruptela"), ("kind", "other")]
        )
        .await
            >= 1.0
    );
    d.stop().await;
}
