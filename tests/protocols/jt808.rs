//! JT/T 808 over TCP: registration, authentication, location reports and a batch upload, with
//! serial numbers that need escaping; an unknown terminal message is answered "not supported"
//! and the session goes on. Every platform message is rebuilt here from JT/T 808-2013 (header,
//! XOR checksum, `7E`/`7D` escaping).

use fleetgate::protocols::jt808::{
    device_header, encode_auth, encode_batch, encode_location, encode_message, encode_register,
    Fix, Serial,
};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect, Tracker};

const PHONE: &str = "013912345678";

/// A platform message: id, properties (body length), BCD phone, serial, body, XOR, escaped.
fn platform(id: u16, serial: u16, body: &[u8]) -> Vec<u8> {
    let mut raw = id.to_be_bytes().to_vec();
    raw.extend((body.len() as u16).to_be_bytes());
    raw.extend([0x01, 0x39, 0x12, 0x34, 0x56, 0x78]);
    raw.extend(serial.to_be_bytes());
    raw.extend(body);
    raw.push(raw.iter().fold(0u8, |a, b| a ^ b));
    let mut out = vec![0x7E];
    for b in raw {
        match b {
            0x7E => out.extend([0x7D, 0x02]),
            0x7D => out.extend([0x7D, 0x01]),
            _ => out.push(b),
        }
    }
    out.push(0x7E);
    out
}

/// 0x8001 platform general response to terminal message `id` with serial `serial`.
fn general(platform_serial: u16, serial: u16, id: u16, result: u8) -> Vec<u8> {
    let mut body = serial.to_be_bytes().to_vec();
    body.extend(id.to_be_bytes());
    body.push(result);
    platform(0x8001, platform_serial, &body)
}

/// The same message with its body-length field one more than its body, the checksum made
/// right again: escaping undone, properties changed, XOR recomputed, escaped again.
fn with_body_length_off_by_one(msg: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut it = msg[1..msg.len() - 1].iter();
    while let Some(&b) = it.next() {
        raw.push(match (b, it.clone().next()) {
            (0x7D, Some(&0x02)) => {
                it.next();
                0x7E
            }
            (0x7D, Some(&0x01)) => {
                it.next();
                0x7D
            }
            _ => b,
        });
    }
    raw.pop();
    let props = u16::from_be_bytes([raw[2], raw[3]]);
    raw[2..4].copy_from_slice(&(props + 1).to_be_bytes());
    raw.push(raw.iter().fold(0u8, |a, b| a ^ b));
    let mut out = vec![0x7E];
    for b in raw {
        match b {
            0x7E => out.extend([0x7D, 0x02]),
            0x7D => out.extend([0x7D, 0x01]),
            _ => out.push(b),
        }
    }
    out.push(0x7E);
    out
}

async fn expect_reply(dev: &mut Tracker, want: &[u8], what: &str) {
    assert_eq!(
        hex::encode(dev.read(want.len()).await),
        hex::encode(want),
        "{what}"
    );
}

fn fix(s: i64, lat: f64, speed: f64) -> Fix {
    Fix {
        time: t(s),
        valid: true,
        lat,
        lon: 37.617_3,
        speed_kmh: speed,
        course: 45,
        altitude: 150,
        ignition: true,
        alarm_flags: 0,
        odometer_m: Some(12_345.0),
        satellites: Some(11),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jt808_tcp_session_gets_every_platform_response() {
    let d = Daemon::start().await;
    let mut dev = d.tcp(Protocol::Jt808).await;

    // 0x0100 registration → 0x8100: serial, result 0, authentication code.
    dev.send(&encode_register(PHONE, 0x007E)).await;
    let mut body = vec![0x00, 0x7E, 0x00];
    body.extend(PHONE.as_bytes());
    expect_reply(
        &mut dev,
        &platform(0x8100, 0, &body),
        "registration response",
    )
    .await;

    // 0x0102 authentication → 0x8001 result 0.
    dev.send(&encode_auth(PHONE, 0x007D, PHONE)).await;
    expect_reply(&mut dev, &general(1, 0x007D, 0x0102, 0), "auth response").await;

    let mut want = Vec::new();
    let mut pserial = 2;
    for i in 0..3u16 {
        let f = fix(
            i64::from(i) * 10,
            55.75 + f64::from(i) * 0.001,
            40.5 + f64::from(i),
        );
        dev.send(&encode_location(PHONE, 0x7E7D + i, &f)).await;
        expect_reply(
            &mut dev,
            &general(pserial, 0x7E7D + i, 0x0200, 0),
            "location response",
        )
        .await;
        pserial += 1;
        want.push(f);
    }

    // 0x0704 batch of stored positions → one general response.
    let batch: Vec<_> = (3..5)
        .map(|i| fix(i * 10, 55.75 + i as f64 * 0.001, 30.0))
        .collect();
    dev.send(&encode_batch(PHONE, 0x0100, true, &batch)).await;
    expect_reply(
        &mut dev,
        &general(pserial, 0x0100, 0x0704, 0),
        "batch response",
    )
    .await;
    pserial += 1;
    want.extend(batch);

    // A terminal message id the platform does not know: result 3 ("not supported").
    let unknown = encode_message(
        &device_header(PHONE),
        0x0F0F,
        Serial::Word(0x0200),
        &[1, 2, 3],
    );
    dev.send(&unknown).await;
    expect_reply(
        &mut dev,
        &general(pserial, 0x0200, 0x0F0F, 3),
        "unknown id answered",
    )
    .await;
    pserial += 1;

    // A body-length field that disagrees with the body (checksum valid): 0x8001 result 2
    // ("message error"), and the fix in it is not stored (issue #20).
    let lying = with_body_length_off_by_one(&encode_location(PHONE, 0x0300, &fix(90, 56.0, 1.0)));
    dev.send(&lying).await;
    expect_reply(
        &mut dev,
        &general(pserial, 0x0300, 0x0200, 2),
        "body length mismatch answered result 2",
    )
    .await;
    pserial += 1;

    // Later positions still work on the same connection.
    let late = fix(100, 55.755, 12.0);
    dev.send(&encode_location(PHONE, 0x0201, &late)).await;
    expect_reply(
        &mut dev,
        &general(pserial, 0x0201, 0x0200, 0),
        "later location",
    )
    .await;
    want.push(late);

    // A wrong checksum is not answered.
    let mut bad = encode_location(PHONE, 0x0300, &fix(200, 56.0, 1.0)).to_vec();
    let i = (15..bad.len() - 3)
        .find(|&i| bad[i - 1] != 0x7D && ![0x7C, 0x7D, 0x7E, 0x7F].contains(&bad[i]))
        .expect("a plain body byte");
    bad[i] ^= 0x01;
    dev.send(&bad).await;
    assert!(
        dev.read_for(300).await.is_empty(),
        "bad checksum not answered"
    );

    let want: Vec<_> = want
        .iter()
        .map(|f| Expect {
            time: f.time,
            lat: f.lat,
            lon: f.lon,
            speed_kmh: f.speed_kmh,
        })
        .collect();
    // The phone number without its leading zero is the device id.
    assert_track(&d.track("13912345678").await, &want, 1e-6, 1e-6);
    assert!(
        d.metric(
            "fleetgate_ingest_messages_total",
            &[("protocol", "jt808"), ("kind", "other")]
        )
        .await
            >= 1.0
    );
    d.stop().await;
}
