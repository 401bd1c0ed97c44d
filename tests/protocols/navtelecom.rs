//! Navtelecom over TCP: the NTCB handshake `*>S:<IMEI>` answered `*<S`, the `*>FLEX` field
//! negotiation answered `*<FLEX`, a `~A` archive answered `~A<count>` and a `~T` event answered
//! `~T<index>`, each FLEX answer closed by its CRC-8, each sent only once the records are stored.

use fleetgate::protocols::navtelecom::flex::{encode_record, Fix, FIX_FIELDS};
use fleetgate::protocols::navtelecom::{
    encode_archive, encode_event, encode_handshake, encode_negotiation,
};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

/// NTCB frame from the server (id 1) to the device (id 0), checksums as the NTCB document
/// defines them: XOR of the data, then XOR of the 15 header bytes before.
fn ntcb_from_server(data: &[u8]) -> Vec<u8> {
    let mut out = b"@NTC".to_vec();
    out.extend([0, 0, 0, 0, 1, 0, 0, 0]);
    out.extend((data.len() as u16).to_le_bytes());
    out.push(data.iter().fold(0, |a, b| a ^ b));
    out.push(out.iter().fold(0, |a, b| a ^ b));
    out.extend_from_slice(data);
    out
}

/// FLEX's CRC-8: polynomial 0x31, initial 0xFF, no reflection, computed bit by bit.
fn with_crc8(mut data: Vec<u8>) -> Vec<u8> {
    let mut crc = 0xFFu8;
    for &b in &data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    data.push(crc);
    data
}

fn fix(i: u32) -> Fix {
    Fix {
        number: 100 + i,
        time: t(i64::from(i) * 10),
        lat: 55.75 + f64::from(i) * 0.001,
        lon: 37.617_3,
        speed_kmh: 40.0 + i as f32,
        course: 90,
        outputs: 0,
    }
}

fn expect(f: &Fix) -> Expect {
    Expect {
        time: f.time,
        lat: f.lat,
        lon: f.lon,
        speed_kmh: f64::from(f.speed_kmh),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navtelecom_flex_session_is_answered_and_stored() {
    let d = Daemon::start().await;
    let imei = "866795033323864";
    let mut dev = d.tcp(Protocol::Navtelecom).await;

    dev.send(&encode_handshake(imei)).await;
    let want = ntcb_from_server(b"*<S");
    assert_eq!(dev.read(want.len()).await, want, "*<S");

    dev.send(&encode_negotiation(30, FIX_FIELDS)).await;
    let want = ntcb_from_server(&[b'*', b'<', b'F', b'L', b'E', b'X', 0xB0, 30, 30]);
    assert_eq!(dev.read(want.len()).await, want, "*<FLEX");

    let fixes: Vec<Fix> = (0..4).map(fix).collect();
    let records: Vec<Vec<u8>> = fixes[..3].iter().map(encode_record).collect();
    dev.send(&encode_archive(&records)).await;
    let want = with_crc8(vec![b'~', b'A', 3]);
    assert_eq!(dev.read(want.len()).await, want, "~A answer");

    dev.send(&encode_event(77, &encode_record(&fixes[3]))).await;
    let mut t_ack = vec![b'~', b'T'];
    t_ack.extend(77u32.to_le_bytes());
    let want = with_crc8(t_ack);
    assert_eq!(dev.read(want.len()).await, want, "~T answer");

    // Latitude in 1/600000 degree; speed a float.
    let want: Vec<Expect> = fixes.iter().map(expect).collect();
    assert_track(&d.track(imei).await, &want, 2e-6, 1e-3);
    d.stop().await;
}
