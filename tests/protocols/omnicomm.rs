//! Omnicomm over TCP: identification answered 0x85 (archive from record 0), an archive frame of
//! protobuf records answered 0x87 (delete up to the next record) once stored; frames built and
//! checked here with the CRC-16/CCITT-FALSE and byte stuffing of the protocol.

use crc::{Crc, CRC_16_IBM_3740};
use fleetgate::protocols::omnicomm::{encode_archive, encode_identification, Fix};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), as catalogued under IBM-3740.
const CCITT_FALSE: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// A server frame: 0xC0, type, length u16 LE, payload, CRC big-endian; 0xC0/0xDB stuffed.
fn server_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend((payload.len() as u16).to_le_bytes());
    body.extend_from_slice(payload);
    body.extend(CCITT_FALSE.checksum(&body).to_be_bytes());
    let mut out = vec![0xC0];
    for b in body {
        match b {
            0xC0 => out.extend([0xDB, 0xDC]),
            0xDB => out.extend([0xDB, 0xDD]),
            _ => out.push(b),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omnicomm_archive_session_is_answered_and_stored() {
    let d = Daemon::start().await;
    let id = 353_961_570u32;
    let mut dev = d.tcp(Protocol::Omnicomm).await;

    dev.send(&encode_identification(id)).await;
    let want = server_frame(0x85, &0u32.to_le_bytes());
    assert_eq!(dev.read(want.len()).await, want, "archive inquiry");

    let fixes: Vec<Fix> = (0..3)
        .map(|i| Fix {
            time: t(i * 10),
            lat: 55.75 + i as f64 * 0.001,
            lon: 37.617_3,
            speed_kmh: 40.5 + i as f64,
            course: 90,
        })
        .collect();
    dev.send(&encode_archive(0, &fixes[..2])).await;
    let want = server_frame(0x87, &2u32.to_le_bytes());
    assert_eq!(dev.read(want.len()).await, want, "delete up to record 2");
    dev.send(&encode_archive(2, &fixes[2..])).await;
    let want = server_frame(0x87, &3u32.to_le_bytes());
    assert_eq!(dev.read(want.len()).await, want, "delete up to record 3");

    let want: Vec<Expect> = fixes
        .iter()
        .map(|f| Expect {
            time: f.time,
            lat: f.lat,
            lon: f.lon,
            speed_kmh: f.speed_kmh,
        })
        .collect();
    assert_track(&d.track(&id.to_string()).await, &want, 1e-6, 1e-6);
    d.stop().await;
}
