use super::*;
use chrono::{TimeZone, Utc};

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    }
}

fn feed(s: &mut AutofonSession, hex: &str) -> Result<Decoded, DecodeError> {
    let bytes = hex::decode(hex).unwrap();
    match s.next_frame(&bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes, &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn logins_are_answered_resp_crc_with_the_checksum() {
    let mut s = AutofonSession::default();
    let d = feed(&mut s, "10556103592310314825728F").unwrap();
    assert_eq!(d.device, Some(DeviceId::new("359231031482572")));
    assert_eq!(d.reply.as_deref(), Some(&b"resp_crc=\x8f"[..]));
    let d = feed(&mut s, "41035151305289931441139602662095148807").unwrap();
    assert_eq!(d.device, Some(DeviceId::new("351513052899314")));
    assert_eq!(d.reply.as_deref(), Some(&b"resp_crc=\x07"[..]));
}

#[test]
fn position_45_decodes_the_reference_fix_and_its_checksum_is_checked() {
    // Traccar test data with the fix its test spells out.
    let pkt = "023E00001E004D411EFA01772F185285009C48041F1E366C2961380F26B10B00911C";
    let mut s = AutofonSession::default();
    feed(&mut s, "41035151305289931441139602662095148807").unwrap();
    let d = feed(&mut s, pkt).unwrap();
    assert_eq!(d.reply, None, "positions are not answered");
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2010, 1, 27, 4, 0, 8).unwrap()
    );
    assert!(p.valid);
    assert!(
        (p.lat - 54.73838).abs() < 1e-5 && (p.lon - 56.10343).abs() < 1e-5,
        "{p:?}"
    );
    assert_eq!(p.satellites, Some(5));
    assert_eq!(p.course, 145.0);
    let mut bad = hex::decode(pkt).unwrap();
    bad[30] ^= 1;
    assert_eq!(s.decode(&bad, &ctx()).unwrap_err().reason.as_str(), "crc");
}

#[test]
fn old_current_position_is_read_after_the_settings() {
    let mut s = AutofonSession::default();
    feed(&mut s, "10556103592310314825728F").unwrap();
    let d = feed(&mut s, "111E00000000000000000100007101010B0C020302010B0C0005A053FFFFFFFF02010B0C00276047FFFFFFFF1F5600FA000176F218C7850C0B0B0C203A033DBD46035783EF009E00320014FFFF45").unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2011, 11, 12, 12, 32, 58).unwrap()
    );
    assert!(p.valid);
    // 54377798 = 54°37.7798', 56067055 = 56°06.7055'
    assert!((p.lat - (54.0 + 37.7798 / 60.0)).abs() < 1e-6, "{p:?}");
    assert!((p.lon - (56.0 + 6.7055 / 60.0)).abs() < 1e-6, "{p:?}");
    assert_eq!(p.altitude, 158.0);
    assert_eq!(p.satellites, Some(5));
    assert_eq!(p.course, 100.0);
}

#[test]
fn unknown_type_cannot_be_framed() {
    let mut s = AutofonSession::default();
    assert_eq!(
        s.next_frame(&[0x55, 0, 0]).unwrap_err().reason.as_str(),
        "framing"
    );
    assert_eq!(s.next_frame(&[0x02, 0, 0]), Ok(FrameCut::NeedMore));
}

#[test]
fn encoded_45_session_round_trips() {
    let mut s = AutofonSession::default();
    let d = s
        .decode(&encode_login_45("356307042441101"), &ctx())
        .unwrap();
    assert_eq!(d.device, Some(DeviceId::new("356307042441101")));
    let fix = Fix {
        time: Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 10).unwrap(),
        lat: -55.751_234,
        lon: 37.617_89,
        speed_knots: 30,
        course: 270,
    };
    let d = s.decode(&encode_position_45(&fix), &ctx()).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, fix.time);
    assert!(
        (p.lat - fix.lat).abs() < 2e-6 && (p.lon - fix.lon).abs() < 2e-6,
        "{p:?}"
    );
    assert_eq!(p.course, 270.0);
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Autofon) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 50, &mut seed) {
            crate::protocols::fuzz::exercise(
                Protocol::Autofon,
                || Box::new(AutofonSession::default()),
                &m,
            );
        }
    }
}
