//! GPS103 / Coban TK103 over TCP and UDP: log-on answered `LOAD`, heartbeat `ON`, reports
//! stored without an answer, an SOS confirmed `**,imei:<IMEI>,E;` once it is stored.

use std::time::Duration;

use fleetgate::protocols::gps103::{encode_heartbeat, encode_login, encode_report, Fix};
use fleetgate::protocols::Protocol;
use serde_json::Value;

use super::support::{assert_track, t, Daemon, Expect};

const KNOT_KMH: f64 = 1.852;

fn fix(s: i64, tz_minutes: i32, lat: f64, keyword: &'static str) -> Fix {
    Fix {
        time: t(s),
        tz_minutes,
        lat,
        lon: 37.617_3,
        speed_knots: 20.25,
        course: 90.0,
        keyword,
    }
}

fn expect(f: &Fix) -> Expect {
    Expect {
        time: f.time,
        lat: f.lat,
        lon: f.lon,
        speed_kmh: f.speed_knots * KNOT_KMH,
    }
}

/// Reports get no answer: wait until the API shows `n` fixes (within 10 s).
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
async fn gps103_tcp_session_is_answered_and_stored() {
    let d = Daemon::start().await;
    let imei = "359586015829802";
    let mut dev = d.tcp(Protocol::Gps103).await;

    dev.send(&encode_login(imei)).await;
    assert_eq!(dev.read(4).await, b"LOAD", "log-on answer");
    dev.send(&encode_heartbeat(imei)).await;
    assert_eq!(dev.read(2).await, b"ON", "heartbeat answer");

    // Local clocks of UTC+3 and UTC-10 (local date the day before the fix's UTC date).
    let mut want = Vec::new();
    for (i, tz) in [180, -600, 0].into_iter().enumerate() {
        let f = fix(i as i64 * 10, tz, 55.75 + i as f64 * 0.001, "tracker");
        dev.send(&encode_report(imei, &f)).await;
        want.push(expect(&f));
    }
    let sos = fix(40, 180, 55.76, "help me");
    dev.send(&encode_report(imei, &sos)).await;
    want.push(expect(&sos));
    // The confirmation comes after the SOS is stored, so the reports before it are too.
    let confirm = format!("**,imei:{imei},E;");
    assert_eq!(dev.read(confirm.len()).await, confirm.as_bytes());
    assert!(
        dev.read_for(200).await.is_empty(),
        "reports are not answered"
    );

    // ddmm.mmmmm: about 2e-7 degree.
    assert_track(&d.track(imei).await, &want, 1e-6, 0.01 * KNOT_KMH);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gps103_udp_datagrams_are_answered_and_stored() {
    let d = Daemon::start().await;
    let imei = "359586015829803";
    let udp = d.udp(Protocol::Gps103).await;

    udp.send(&encode_login(imei)).await;
    assert_eq!(udp.recv().await, b"LOAD");
    let f1 = fix(0, 180, 55.70, "tracker");
    udp.send(&encode_report(imei, &f1)).await;
    let f2 = fix(10, 180, 55.701, "help me");
    udp.send(&encode_report(imei, &f2)).await;
    assert_eq!(udp.recv().await, format!("**,imei:{imei},E;").as_bytes());

    let track = track_of(&d, imei, 2).await;
    assert_track(&track, &[expect(&f1), expect(&f2)], 1e-6, 0.01 * KNOT_KMH);
    d.stop().await;
}
