//! Queclink GL200 family over TCP and UDP: `+RESP:GTFRI` reports with several fixes, a
//! buffered `+BUFF:GTFRI`, and the heartbeat `+ACK:GTHBD` answered
//! `+SACK:GTHBD,<protocol version>,<count>$`. Reports themselves are not answered (the devices'
//! default "no server ack" mode).

use fleetgate::protocols::gl200::{encode_fri, encode_heartbeat, FriFix};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

const VERSION: &str = "270701";

fn fix(s: i64, lat: f64, speed: f64) -> FriFix {
    FriFix {
        time: t(s),
        lat,
        lon: 37.617_3,
        speed_kmh: speed,
        course: 90,
        altitude: 150.0,
        hdop: 1,
    }
}

fn expect(f: &FriFix) -> Expect {
    Expect {
        time: f.time,
        lat: f.lat,
        lon: f.lon,
        speed_kmh: f.speed_kmh,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gl200_tcp_reports_are_stored_and_heartbeat_answered() {
    let d = Daemon::start().await;
    let imei = "862170010123456";
    let mut dev = d.tcp(Protocol::Gl200).await;

    let hb = encode_heartbeat(VERSION, imei, t(0), 0x0001);
    dev.send(hb.as_bytes()).await;
    let want_hb = format!("+SACK:GTHBD,{VERSION},0001$");
    assert_eq!(
        String::from_utf8_lossy(&dev.read(want_hb.len()).await),
        want_hb
    );

    let first: Vec<_> = (0..3)
        .map(|i| fix(i * 10, 55.75 + i as f64 * 0.001, 40.5))
        .collect();
    dev.send(
        encode_fri(
            VERSION,
            imei,
            13_800,
            &first,
            123.4,
            "210100",
            t(30),
            0x0002,
        )
        .as_bytes(),
    )
    .await;
    let buffered = vec![fix(40, 55.76, 12.3)];
    let buff = encode_fri(
        VERSION,
        imei,
        13_800,
        &buffered,
        123.5,
        "210100",
        t(45),
        0x0003,
    )
    .replacen("+RESP", "+BUFF", 1);
    dev.send(buff.as_bytes()).await;
    assert!(
        dev.read_for(300).await.is_empty(),
        "reports are not answered"
    );

    // The heartbeat is still answered after the reports, with its own count.
    dev.send(encode_heartbeat(VERSION, imei, t(60), 0x00AB).as_bytes())
        .await;
    let want_hb = format!("+SACK:GTHBD,{VERSION},00AB$");
    assert_eq!(
        String::from_utf8_lossy(&dev.read(want_hb.len()).await),
        want_hb
    );

    let want: Vec<_> = first.iter().chain(&buffered).map(expect).collect();
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-6);
    d.stop().await;
}

/// `[protocols.gl200] report_acks = true`: each report is answered `+SACK:<count>$` once its
/// fixes are stored (for devices configured to wait for the server's acknowledgement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gl200_reports_are_acked_when_report_acks_is_on() {
    let d = Daemon::start_with("[protocols.gl200]\nreport_acks = true\n").await;
    let imei = "862170010123457";
    let mut dev = d.tcp(Protocol::Gl200).await;
    let fixes = vec![fix(0, 55.75, 30.0), fix(10, 55.751, 31.0)];
    let report = encode_fri(
        VERSION,
        imei,
        13_800,
        &fixes,
        123.4,
        "210100",
        t(15),
        0x01C2,
    );
    dev.send(report.as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&dev.read(11).await), "+SACK:01C2$");
    let want: Vec<_> = fixes.iter().map(expect).collect();
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-6);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gl200_udp_reports_are_stored_and_heartbeat_answered() {
    let d = Daemon::start().await;
    let imei = "862170010123457";
    let udp = d.udp(Protocol::Gl200).await;

    let fixes: Vec<_> = (0..2)
        .map(|i| fix(i * 10, 55.70 + i as f64 * 0.001, 20.0))
        .collect();
    udp.send(encode_fri(VERSION, imei, 13_800, &fixes, 10.0, "210100", t(20), 0x0010).as_bytes())
        .await;
    assert!(udp.recv_for(300).await.is_empty(), "report not answered");
    udp.send(encode_heartbeat(VERSION, imei, t(30), 0x0011).as_bytes())
        .await;
    assert_eq!(
        String::from_utf8_lossy(&udp.recv().await),
        format!("+SACK:GTHBD,{VERSION},0011$")
    );
    let want: Vec<_> = fixes.iter().map(expect).collect();
    assert_track(&d.track(imei).await, &want, 1e-6, 1e-6);
    d.stop().await;
}

/// A GL100 `+RESP:GTTRI` line as the GL100 @Track document lays it out (one block: reserved,
/// reserved, gps fix, speed, heading, altitude, gps accuracy, lon, lat, gps time, mcc, mnc,
/// lac, cell, ta; then count and version), without a tail.
fn gl100_tri(imei: &str, s: i64, lat: f64, speed: f64, heading: u16) -> String {
    format!(
        "+RESP:GTTRI,{imei},1,0,0,1,{speed:.1},{heading},70.0,1,37.617300,{lat:.6},{},0250,0001,1A2B,3C4D,00,{:04X},0102100203",
        t(s).format("%Y%m%d%H%M%S"),
        s
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gl100_lines_without_a_tail_are_stored_with_their_own_speed_and_heading() {
    let d = Daemon::start().await;
    let imei = "359231030000011";
    let mut dev = d.tcp(Protocol::Gl200).await;
    dev.send(gl100_tri(imei, 0, 55.75, 4.3, 92).as_bytes())
        .await;
    dev.send(gl100_tri(imei, 20, 55.751, 12.5, 181).as_bytes())
        .await;
    // Nothing is answered: wait for the stored track instead.
    let url =
        format!("/api/v1/vehicles/{imei}/track?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z");
    for _ in 0..100 {
        let (status, body) = d.api.get(&url).await;
        if status == 200 && body.as_array().is_some_and(|a| a.len() >= 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let track = d.track(imei).await;
    let want = [(0, 55.75, 4.3, 92.0), (20, 55.751, 12.5, 181.0)];
    assert_track(
        &track,
        &want
            .iter()
            .map(|&(s, lat, speed, _)| Expect {
                time: t(s),
                lat,
                lon: 37.617_3,
                speed_kmh: speed,
            })
            .collect::<Vec<_>>(),
        1e-6,
        1e-6,
    );
    for (got, (_, _, _, course)) in track.iter().zip(want) {
        assert_eq!(got["course"].as_f64(), Some(course), "{got}");
    }
    d.stop().await;
}
