//! Teltonika over UDP (the TCP session is in `tests/teltonika_e2e.rs`): datagrams with the
//! UDP channel header (length, packet id, type 0x01, AVL packet id, IMEI) carrying Codec 8 and
//! 8E data, each answered `00 05 | packet id | 01 | AVL packet id | record count`.

use fleetgate::protocols::teltonika::{encode_avl_packet, io, AvlRecord, CODEC_8, CODEC_8E};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

fn records(start_s: i64, n: usize, lat0: f64) -> Vec<AvlRecord> {
    (0..n)
        .map(|i| AvlRecord {
            time: t(start_s + i as i64 * 5),
            lat: lat0 + i as f64 * 0.0005,
            lon: 37.6173,
            speed_kmh: 42 + i as u16,
            course: 180,
            altitude: 140,
            satellites: 11,
            io: vec![(io::IGNITION, 1, 1), (io::EXTERNAL_VOLTAGE, 2, 13_800)],
        })
        .collect()
}

/// A UDP datagram around the AVL data of a TCP packet (`0000 0000 | length | data | CRC`).
fn datagram(packet_id: u16, avl_id: u8, imei: &str, tcp_packet: &[u8]) -> Vec<u8> {
    let avl = &tcp_packet[8..tcp_packet.len() - 4];
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0x01); // not usable / acknowledgement requested
    body.push(avl_id);
    body.extend((imei.len() as u16).to_be_bytes());
    body.extend(imei.as_bytes());
    body.extend(avl);
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teltonika_udp_datagrams_are_acked_and_stored() {
    let d = Daemon::start().await;
    let imei = "352093086403655";
    let udp = d.udp(Protocol::Teltonika).await;

    let batches = [
        (0xCAFEu16, 0x05u8, CODEC_8, records(0, 3, 55.70)),
        (0xCAFF, 0x06, CODEC_8E, records(100, 2, 55.71)),
        (0x0001, 0x07, CODEC_8, records(200, 1, 55.72)),
    ];
    let mut want = Vec::new();
    for (packet_id, avl_id, codec, recs) in &batches {
        udp.send(&datagram(
            *packet_id,
            *avl_id,
            imei,
            &encode_avl_packet(*codec, recs),
        ))
        .await;
        let mut ack = vec![0x00, 0x05];
        ack.extend(packet_id.to_be_bytes());
        ack.extend([0x01, *avl_id, recs.len() as u8]);
        assert_eq!(udp.recv().await, ack, "UDP ack");
        want.extend(recs.iter().map(|r| Expect {
            time: r.time,
            lat: r.lat,
            lon: r.lon,
            speed_kmh: f64::from(r.speed_kmh),
        }));
    }
    // 1e-7 degree units.
    assert_track(&d.track(imei).await, &want, 1e-7, 1e-9);
    d.stop().await;
}
