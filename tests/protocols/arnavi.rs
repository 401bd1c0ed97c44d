//! Arnavi over TCP: the binary protocol (HEADER of versions 0x22 and 0x23, data PACKAGEs) and
//! the `$AV` text lines on a connection of their own. Answers as the Arnavi document gives
//! them: `7B 00 00 7D` to a v1 HEADER, `7B 04 00 | sum | server time | 7D` to a v2 HEADER,
//! `7B 00 | parcel | 7D` to each PACKAGE; nothing to a text line.

use chrono::Utc;
use fleetgate::protocols::arnavi::{encode_header, encode_package, DataRecord};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

const KNOT_KMH: f64 = 1.852;

fn rec(s: i64, lat: f32, knots: u8) -> DataRecord {
    DataRecord {
        time: t(s),
        lat,
        lon: 37.6173,
        speed_knots: knots,
        course: 180,
        satellites: 0x57,
        power_mv: 13_900,
        ignition: true,
        inputs: 0,
    }
}

fn expect(r: &DataRecord) -> Expect {
    Expect {
        time: r.time,
        lat: f64::from(r.lat),
        lon: f64::from(r.lon),
        speed_kmh: f64::from(r.speed_knots) * KNOT_KMH,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arnavi_binary_sessions_are_answered_and_stored() {
    let d = Daemon::start().await;

    // Version 0x22: the plain answer.
    let imei1 = 865_733_020_185_531u64;
    let mut dev = d.tcp(Protocol::Arnavi).await;
    dev.send(&encode_header(0x22, imei1)).await;
    assert_eq!(dev.read(4).await, [0x7B, 0x00, 0x00, 0x7D]);
    let p1: Vec<_> = (0..3)
        .map(|i| rec(i * 10, 55.75 + i as f32 * 0.001, 20 + i as u8))
        .collect();
    dev.send(&encode_package(0x01, &p1)).await;
    assert_eq!(
        dev.read(4).await,
        [0x7B, 0x00, 0x01, 0x7D],
        "parcel 1 answered"
    );
    let p2 = vec![rec(40, 55.76, 30)];
    dev.send(&encode_package(0x02, &p2)).await;
    assert_eq!(
        dev.read(4).await,
        [0x7B, 0x00, 0x02, 0x7D],
        "parcel 2 answered"
    );
    let want: Vec<_> = p1.iter().chain(&p2).map(expect).collect();
    assert_track(&d.track(&imei1.to_string()).await, &want, 1e-9, 1e-9);

    // Version 0x23: the answer carries the server time and its byte sum.
    let imei2 = 865_733_020_185_532u64;
    let mut dev = d.tcp(Protocol::Arnavi).await;
    let before = Utc::now().timestamp();
    dev.send(&encode_header(0x23, imei2)).await;
    let a = dev.read(9).await;
    let after = Utc::now().timestamp();
    assert_eq!(&a[..3], &[0x7B, 0x04, 0x00]);
    assert_eq!(a[8], 0x7D);
    let sum = a[4..8].iter().fold(0u8, |s, &b| s.wrapping_add(b));
    assert_eq!(a[3], sum, "checksum of the time bytes");
    let time = i64::from(u32::from_le_bytes([a[4], a[5], a[6], a[7]]));
    assert!((before..=after).contains(&time), "server time {time}");
    let p3 = vec![rec(100, 55.77, 10), rec(110, 55.771, 11)];
    dev.send(&encode_package(0x05, &p3)).await;
    assert_eq!(dev.read(4).await, [0x7B, 0x00, 0x05, 0x7D]);
    let want: Vec<_> = p3.iter().map(expect).collect();
    assert_track(&d.track(&imei2.to_string()).await, &want, 1e-9, 1e-9);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arnavi_text_lines_are_stored_without_answer() {
    let d = Daemon::start().await;
    let mut dev = d.tcp(Protocol::Arnavi).await;
    // `$AV,V4,<id>,<index>,<power>,<battery>,…,<fix>,<sats>,<alt>,<geoid>,hhmmss,
    // ddmm.mmmmN,dddmm.mmmmE,<knots>,<course>,ddmmyy,…*XX` (layout of an Arnavi 4 device).
    let lines = [
        (
            "090000",
            "5545.0000N",
            "03737.0380E",
            "20.0",
            55.75,
            37.617_3,
            20.0,
        ),
        (
            "090010",
            "5545.0600N",
            "03737.0380E",
            "21.0",
            55.751,
            37.617_3,
            21.0,
        ),
        (
            "090020",
            "5545.1200N",
            "03737.1000E",
            "0.0",
            55.752,
            37.618_333_333,
            0.0,
        ),
    ];
    let mut want = Vec::new();
    for (i, (hms, lat, lon, knots, la, lo, kn)) in lines.iter().enumerate() {
        let body = format!(
            "AV,V4,999777,{},1390,410,65534,0,1,193,65535,65535,65535,65535,1,13,150.0,14.1,{hms},{lat},{lon},{knots},90.0,201126,65535,65535,65535,SF",
            12_487 + i
        );
        let cs = body.bytes().fold(0u8, |a, b| a ^ b);
        dev.send(format!("${body}*{cs:02X}\r\n").as_bytes()).await;
        want.push(Expect {
            time: t(i as i64 * 10),
            lat: *la,
            lon: *lo,
            speed_kmh: kn * KNOT_KMH,
        });
    }
    assert!(
        dev.read_for(300).await.is_empty(),
        "text lines are not answered"
    );
    assert_track(&d.track("999777").await, &want, 1e-6, 1e-9);
    d.stop().await;
}
