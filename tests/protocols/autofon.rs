//! Autofon 4.5 over TCP: the login answered `resp_crc=<checksum>`, positions stored without an
//! answer; the checksum computed here from the Autofon document.

use std::time::Duration;

use fleetgate::protocols::autofon::{encode_login_45, encode_position_45, Fix};
use fleetgate::protocols::Protocol;
use serde_json::Value;

use super::support::{assert_track, t, Daemon, Expect};

/// The document's checksum: start 0x3B; per byte add 0x56 ^ b, add 1, xor 0xC5 + b, subtract 1.
fn doc_checksum(bytes: &[u8]) -> u8 {
    let mut c: u8 = 0x3B;
    for &b in bytes {
        c = c.wrapping_add(0x56 ^ b);
        c = c.wrapping_add(1);
        c ^= 0xC5u8.wrapping_add(b);
        c = c.wrapping_sub(1);
    }
    c
}

async fn track_of(d: &Daemon, id: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let track = d.track(id).await;
        if track.len() >= n || tokio::time::Instant::now() > deadline {
            return track;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autofon_45_session_is_answered_and_stored() {
    let d = Daemon::start().await;
    let imei = "351513052899314";
    let mut dev = d.tcp(Protocol::Autofon).await;

    let login = encode_login_45(imei);
    assert_eq!(login[18], doc_checksum(&login[..18]), "encoder's checksum");
    dev.send(&login).await;
    let mut want = b"resp_crc=".to_vec();
    want.push(doc_checksum(&login[..18]));
    assert_eq!(dev.read(want.len()).await, want, "login answer");

    let fixes: Vec<Fix> = (0..3)
        .map(|i| Fix {
            time: t(i * 10),
            lat: 55.75 + i as f64 * 0.001,
            lon: 37.617_3,
            speed_knots: 20 + i as u8,
            course: 90,
        })
        .collect();
    for f in &fixes {
        dev.send(&encode_position_45(f)).await;
    }
    assert!(
        dev.read_for(200).await.is_empty(),
        "positions are not answered"
    );

    let want: Vec<Expect> = fixes
        .iter()
        .map(|f| Expect {
            time: f.time,
            lat: f.lat,
            lon: f.lon,
            speed_kmh: f64::from(f.speed_knots) * 1.852,
        })
        .collect();
    // 1/600000 degree on the wire.
    assert_track(&track_of(&d, imei, 3).await, &want, 2e-6, 1e-6);
    d.stop().await;
}
