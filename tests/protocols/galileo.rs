//! Galileosky over TCP: head packet, main packets with several records, a compressed packet;
//! every packet acknowledged `02 | CRC-16/MODBUS of the packet (LE)`, computed here.

use fleetgate::protocols::galileo::{
    encode_compressed_packet, encode_data_packet, encode_head_packet, CompressedRecord, DataRecord,
};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect, Tracker, CRC_MODBUS};

/// Send a packet and check the ack: header 0x02 and the packet's own checksum, which must be
/// the CRC-16/MODBUS of everything before it.
async fn send_acked(dev: &mut Tracker, pkt: &[u8]) {
    let n = pkt.len();
    let crc = CRC_MODBUS.checksum(&pkt[..n - 2]);
    assert_eq!(crc.to_le_bytes(), pkt[n - 2..], "device packet checksum");
    dev.send(pkt).await;
    let mut want = vec![0x02];
    want.extend(crc.to_le_bytes());
    assert_eq!(dev.read(3).await, want, "ack carries the packet's checksum");
}

fn rec(index: u16, s: i64, lat: f64) -> DataRecord {
    DataRecord {
        index,
        time: t(s),
        valid: true,
        satellites: 9,
        lat,
        lon: 37.617_3,
        speed_kmh: 45.5,
        course: 181.5,
        altitude: 150,
        power_mv: 13_800,
        outputs: 0,
        inputs: 1,
        mileage_m: 10_000 + u32::from(index),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galileo_tcp_session_acks_main_and_compressed_packets() {
    let d = Daemon::start().await;
    let imei = "868204005647838";
    let mut dev = d.tcp(Protocol::Galileo).await;

    send_acked(&mut dev, &encode_head_packet(imei, 1)).await;
    let batch1: Vec<_> = (0..3)
        .map(|i| rec(i, i64::from(i) * 10, 55.75 + f64::from(i) * 0.001))
        .collect();
    send_acked(&mut dev, &encode_data_packet(&batch1, true)).await;
    let batch2: Vec<_> = (3..5)
        .map(|i| rec(i, i64::from(i) * 10, 55.75 + f64::from(i) * 0.001))
        .collect();
    send_acked(&mut dev, &encode_data_packet(&batch2, false)).await;
    let compressed: Vec<_> = (0..2)
        .map(|i| CompressedRecord {
            time: t(100 + i * 10),
            valid: true,
            lat: 55.755 + i as f64 * 0.001,
            lon: 37.62,
            alarm: false,
            tags: vec![],
        })
        .collect();
    send_acked(&mut dev, &encode_compressed_packet(&compressed)).await;

    // A broken checksum is not acknowledged.
    let mut bad = encode_data_packet(&[rec(9, 300, 56.0)], false).to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0x5A;
    dev.send(&bad).await;
    assert!(dev.read_for(300).await.is_empty(), "bad CRC not acked");

    let track = d.track(imei).await;
    let full: Vec<_> = batch1
        .iter()
        .chain(&batch2)
        .map(|r| Expect {
            time: r.time,
            lat: r.lat,
            lon: r.lon,
            speed_kmh: r.speed_kmh,
        })
        .collect();
    // Main packets: 1e-6 degree units, 0.1 km/h.
    assert_track(&track[..5], &full, 1e-6, 1e-6);
    // Compressed: 22/21-bit coordinates (about 1e-4 degree), no speed in the minimal set.
    let small: Vec<_> = compressed
        .iter()
        .map(|r| Expect {
            time: r.time,
            lat: r.lat,
            lon: r.lon,
            speed_kmh: f64::NAN,
        })
        .collect();
    assert_track(&track[5..], &small, 1e-4, 0.0);
    d.stop().await;
}
