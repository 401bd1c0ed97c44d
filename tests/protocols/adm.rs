//! ADM (Neomatica) over TCP: the authorisation packet, then data packets with and without
//! optional blocks. The protocol has no acknowledgement: the test checks that none is sent and
//! that every fix is stored.

use fleetgate::protocols::adm::{encode_auth, encode_data, Record};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

fn rec(s: i64, lat: f32, outputs: Option<u8>, odometer_m: Option<u32>) -> Record {
    Record {
        time: t(s),
        valid: true,
        lat,
        lon: 37.6173,
        speed_kmh: 52.3,
        course: 123.4,
        altitude: 140,
        satellites: 9,
        power_mv: 13_700,
        outputs,
        odometer_m,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adm_tcp_session_stores_every_fix_and_sends_nothing_back() {
    let d = Daemon::start().await;
    let imei = "864287036542811";
    let mut dev = d.tcp(Protocol::Adm).await;

    let auth = encode_auth(7, imei);
    assert_eq!(auth.len(), 66, "authorisation packet size");
    assert_eq!(
        &auth[..4],
        &[7, 0, 0x42, 0x03],
        "device id, size, type IMEI"
    );
    dev.send(&auth).await;
    assert!(dev.read_for(300).await.is_empty(), "ADM sends no reply");

    let recs = [
        rec(0, 55.75, None, None),
        rec(10, 55.751, Some(0x01), None),
        rec(20, 55.752, None, Some(123_456)),
        rec(30, 55.753, Some(0x00), Some(123_500)),
    ];
    for (i, r) in recs.iter().enumerate() {
        dev.send(&encode_data(7, i as u16, r)).await;
    }
    assert!(dev.read_for(300).await.is_empty(), "ADM sends no reply");

    let want: Vec<_> = recs
        .iter()
        .map(|r| Expect {
            time: r.time,
            lat: f64::from(r.lat),
            lon: f64::from(r.lon),
            speed_kmh: r.speed_kmh,
        })
        .collect();
    // IEEE floats on the wire: compared as sent; speed in 0.1 km/h.
    assert_track(&d.track(imei).await, &want, 1e-9, 1e-6);
    d.stop().await;
}
