//! Meitrack over TCP and UDP: `AAA` text reports (no answer), `CCC` binary buffered records
//! (answered `@@<flag><len>,IMEI,CCC,<count>*XX\r\n` so the device drops them) and the `AAC`
//! connection check; every answer framed here by hand (length, byte-sum checksum).

use fleetgate::protocols::meitrack::{encode_aaa, encode_ccc, Report};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

/// `@@<flag><len>,<imei>,<content>*XX\r\n`: the length counts from the comma after it to the
/// CR LF, the checksum is the byte sum of everything up to and including `*`.
fn server(flag: u8, imei: &str, content: &str) -> Vec<u8> {
    let tail = format!(",{imei},{content}");
    let len = tail.len() + 5;
    let mut s = format!("@@{}{len:02}{tail}*", flag as char).into_bytes();
    let sum = s.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    s.extend(format!("{sum:02X}\r\n").bytes());
    s
}

fn rep(s: i64, lat: f64, speed: u32) -> Report {
    Report {
        event: 35,
        time: t(s),
        valid: true,
        lat,
        lon: 37.617_3,
        satellites: 10,
        speed_kmh: speed,
        course: 90,
        altitude: 150,
        odometer_m: 50_000,
        inputs: 1,
        outputs: 0,
        power_v: 13.8,
    }
}

fn expect(r: &Report) -> Expect {
    Expect {
        time: r.time,
        lat: r.lat,
        lon: r.lon,
        speed_kmh: f64::from(r.speed_kmh),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meitrack_tcp_session_text_and_binary_records() {
    let d = Daemon::start().await;
    let imei = "864507030000001";
    let mut dev = d.tcp(Protocol::Meitrack).await;
    let mut want = Vec::new();

    for i in 0..3 {
        let r = rep(i * 10, 55.75 + i as f64 * 0.001, 40 + i as u32);
        dev.send(&encode_aaa(b'A' + i as u8, imei, &r)).await;
        want.push(expect(&r));
    }
    assert!(
        dev.read_for(300).await.is_empty(),
        "AAA reports are not answered"
    );

    let ccc: Vec<_> = (3..6)
        .map(|i| rep(i * 10, 55.75 + i as f64 * 0.001, 50))
        .collect();
    dev.send(&encode_ccc(b'X', imei, &ccc)).await;
    let ack = server(b'X', imei, "CCC,3");
    assert_eq!(
        String::from_utf8_lossy(&dev.read(ack.len()).await),
        String::from_utf8_lossy(&ack),
        "CCC answer with the record count"
    );
    want.extend(ccc.iter().map(expect));

    // The device's connection check: `AAC` answered `AAC,1`.
    let tail = format!(",{imei},AAC,");
    let mut aac = format!("$$Q{:02}{tail}*", tail.len() + 5).into_bytes();
    let sum = aac.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    aac.extend(format!("{sum:02X}\r\n").bytes());
    dev.send(&aac).await;
    let ack = server(b'Q', imei, "AAC,1");
    assert_eq!(dev.read(ack.len()).await, ack, "AAC answered");

    // Coordinates in 1e-6 degree, speed in whole km/h.
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-9);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meitrack_udp_datagrams_are_stored_and_ccc_acked() {
    let d = Daemon::start().await;
    let imei = "864507030000002";
    let udp = d.udp(Protocol::Meitrack).await;

    let r1 = rep(0, 55.70, 30);
    udp.send(&encode_aaa(b'B', imei, &r1)).await;
    assert!(udp.recv_for(300).await.is_empty(), "AAA not answered");
    let ccc = vec![rep(10, 55.701, 31), rep(20, 55.702, 32)];
    udp.send(&encode_ccc(b'C', imei, &ccc)).await;
    assert_eq!(udp.recv().await, server(b'C', imei, "CCC,2"));

    let mut want = vec![expect(&r1)];
    want.extend(ccc.iter().map(expect));
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-9);
    d.stop().await;
}
