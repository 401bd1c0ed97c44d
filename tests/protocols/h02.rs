//! H02 over TCP and UDP: `*HQ` text sentences (V1 positions answered
//! `*HQ,<id>,V4,V1,<server time>#`, heartbeats echoed) and binary `$` records (no answer).

use chrono::Utc;
use fleetgate::protocols::h02::{encode_binary, encode_heartbeat, encode_v1, Fix};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

const KNOT_KMH: f64 = 1.852;

fn fix(s: i64, lat: f64, knots: f64) -> Fix {
    Fix {
        time: t(s),
        valid: true,
        lat,
        lon: 37.617_3,
        speed_knots: knots,
        course: 90,
        status: 0xFFFF_FBFF,
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

/// Check a `*HQ,<id>,V4,V1,yyyyMMddHHmmss#` answer stamped between `before` and now.
fn check_v1_answer(reply: &[u8], id: &str, before: chrono::DateTime<Utc>) {
    let text = std::str::from_utf8(reply).expect("ASCII answer");
    let prefix = format!("*HQ,{id},V4,V1,");
    assert!(text.starts_with(&prefix) && text.ends_with('#'), "{text}");
    let stamp = &text[prefix.len()..text.len() - 1];
    let at = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S")
        .expect("yyyyMMddHHmmss")
        .and_utc();
    let after = Utc::now();
    assert!(
        at.timestamp() >= before.timestamp() && at.timestamp() <= after.timestamp(),
        "server time in the answer: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h02_tcp_text_and_binary_session_is_answered_and_stored() {
    let d = Daemon::start().await;
    let id = "4210051415";
    let mut dev = d.tcp(Protocol::H02).await;
    let mut want = Vec::new();

    for i in 0..3 {
        let f = fix(i * 10, 55.75 + i as f64 * 0.001, 20.5 + i as f64);
        let before = Utc::now();
        dev.send(&encode_v1(id, &f)).await;
        let answer_len = format!("*HQ,{id},V4,V1,20261120090000#").len();
        check_v1_answer(&dev.read(answer_len).await, id, before);
        want.push(expect(&f));
    }

    // V1 sentences that yield no position are not answered (issue #20): missing N/S, and
    // minutes of 60 or more (a refusal, counted).
    for bad in [
        format!("*HQ,{id},V1,120000,A,5545.0000,,03736.0000,E,010.00,090,201126,FFFFFBFF#"),
        format!("*HQ,{id},V1,120000,A,5565.0000,N,03736.0000,E,010.00,090,201126,FFFFFBFF#"),
    ] {
        dev.send(bad.as_bytes()).await;
        assert!(dev.read_for(300).await.is_empty(), "{bad} answered");
    }

    dev.send(&encode_heartbeat(id, 80)).await;
    let echo = format!("*HQ,{id},HTBT#");
    assert_eq!(
        dev.read(echo.len()).await,
        echo.as_bytes(),
        "heartbeat echo"
    );
    // Answered after them on the same connection: the corrupt fix (minutes 65) was counted.
    assert!(
        d.metric(
            "fleetgate_ingest_decode_errors_total",
            &[("protocol", "h02"), ("reason", "bad_field")]
        )
        .await
            >= 1.0
    );

    // Binary records: whole knots, no answer.
    for i in 3..5 {
        let f = fix(i * 10, 55.75 + i as f64 * 0.001, 30.0);
        dev.send(&encode_binary(id, &f)).await;
        want.push(expect(&f));
    }
    assert!(
        dev.read_for(300).await.is_empty(),
        "binary records are not answered"
    );

    // Degree-minutes with 4 decimals: about 2e-6 degree.
    assert_track(&d.track(id).await, &want, 2e-6, 0.01 * KNOT_KMH);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h02_udp_datagrams_are_answered_and_stored() {
    let d = Daemon::start().await;
    let id = "4210051416";
    let udp = d.udp(Protocol::H02).await;

    let f1 = fix(0, 55.70, 10.0);
    let before = Utc::now();
    udp.send(&encode_v1(id, &f1)).await;
    check_v1_answer(&udp.recv().await, id, before);
    let f2 = fix(10, 55.701, 11.0);
    udp.send(&encode_binary(id, &f2)).await;
    assert!(
        udp.recv_for(300).await.is_empty(),
        "binary record not answered"
    );
    udp.send(&encode_heartbeat(id, 70)).await;
    assert_eq!(udp.recv().await, format!("*HQ,{id},HTBT#").as_bytes());

    assert_track(&d.track(id).await, &[expect(&f1), expect(&f2)], 2e-6, 1e-6);
    d.stop().await;
}
