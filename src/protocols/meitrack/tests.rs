use super::*;
use crate::protocols::DecodeReason;
use chrono::TimeZone;

// Real packets from Traccar's MeitrackProtocolDecoderTest (see protocols/meitrack/NOTICE.md).
const AAA: &str = "$$O160,863835028611502,AAA,35,7.887840,98.375193,200202020238,A,12,4,0,279,0.6,45,32121,442492,520|3|12DF|015273E2,0000,0000|0000|0000|018D|04F0,00000001,,1,0000*F3";
/// Declares 141 bytes but holds 139 (with CR LF); its checksum is right.
const AAA_LENGTH_OFF: &str = "$$E141,863071013799553,AAA,35,-1.264521,36.801128,150307132846,A,11,20,0.2,0,5,1767,84045888,36496633,639|02|100E|844,1234,0018|||025D|00CB,*17";
const CCC: &str = "24245838362c3336393830303031343039303032312c4343432c020134000100000023381f91ffe354b806c5e3121b0009130000000000000000d33801007cbf0200fe0101000435feeb02000500a3010000000000002a62650d0a";
const CCE: &str = "2424423233322c3836323039303035303030323831332c4343452c0400000003004400110004050006000700fe6962060800000900000a00000b00001aef044023000602d65fbcfd03173b9c0804cc76ae2a0c14ae1b000d00aa0d001c01000000014b030101003f00100004050006000700fe695f060800000900000a00000b00001aea044016000502d65fbcfd03173b9c0804cf76ae2a0c14ae1b000d03aa0d00014b030101003f00100004050006000700fe695f060800000900000a00000b00001aed044001000502d65fbcfd03173b9c0804d076ae2a0c14ae1b000d04aa0d00014b030101002a30460d0a";

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
    }
}

fn decode_one(s: &mut MeitrackSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(bytes, &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn with_crlf(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn aaa_report_decodes_fix_cell_and_io() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let d = decode_one(&mut s, &with_crlf(AAA)).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("863835028611502")));
    assert!(d.reply.is_none(), "AAA reports are not acknowledged");
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2020, 2, 2, 2, 2, 38).unwrap()
    );
    assert!(p.valid);
    assert_eq!((p.lat, p.lon), (7.887840, 98.375193));
    assert_eq!(p.satellites, Some(12));
    assert_eq!(p.speed_kmh, 0.0);
    assert_eq!(p.course, 279.0);
    assert_eq!(p.altitude, 45.0);
    assert_eq!(p.odometer_m, Some(32121.0));
    assert_eq!(p.inputs, Some(0));
    assert_eq!(p.outputs, Some(0));
    assert_eq!(p.attrs.get_name("mcc"), Some(&AttrValue::Int(520)));
    assert_eq!(
        p.attrs.get_name("cell_id"),
        Some(&AttrValue::Int(0x0152_73E2))
    );
    assert_eq!(p.attrs.get_name("power_raw"), Some(&AttrValue::Int(0x04F0)));
}

#[test]
fn frame_without_crlf_is_cut_at_the_checksum_and_the_line_end_skipped_later() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let bare = AAA.as_bytes();
    assert_eq!(s.next_frame(bare).unwrap(), FrameCut::Frame(bare.len()));
    assert_eq!(s.next_frame(b"\r\n$$").unwrap(), FrameCut::Skip(2));
}

#[test]
fn split_and_concatenated_frames_are_cut_by_length() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let a = with_crlf(AAA);
    let b = hex::decode(CCC).unwrap();
    assert_eq!(s.next_frame(&a[..3]).unwrap(), FrameCut::NeedMore);
    assert_eq!(s.next_frame(&a[..40]).unwrap(), FrameCut::NeedMore);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    assert_eq!(s.next_frame(&both).unwrap(), FrameCut::Frame(a.len()));
    assert_eq!(
        s.next_frame(&both[a.len()..]).unwrap(),
        FrameCut::Frame(b.len())
    );
    // A binary frame is cut by its length only, even with `*` bytes inside.
    assert_eq!(s.next_frame(&b[..b.len() - 1]).unwrap(), FrameCut::NeedMore);
}

#[test]
fn text_frame_with_a_miscounted_length_is_found_by_its_checksum() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let mut buf = with_crlf(AAA_LENGTH_OFF);
    let n = buf.len();
    buf.extend_from_slice(&with_crlf(AAA));
    assert_eq!(s.next_frame(&buf).unwrap(), FrameCut::Frame(n));
    let d = s.decode(&buf[..n], &ctx()).unwrap();
    assert_eq!(
        d.positions[0].fix_time,
        Utc.with_ymd_and_hms(2015, 3, 7, 13, 28, 46).unwrap()
    );
}

#[test]
fn bad_checksum_is_an_error_with_reason_crc() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let bad = with_crlf(&AAA.replace("*F3", "*F4"));
    let e = decode_one(&mut s, &bad).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Crc);
}

#[test]
fn ccc_records_decode_and_are_confirmed_with_their_count() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let d = decode_one(&mut s, &hex::decode(CCC).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("369800014090021")));
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    // Traccar's test states this fix: 2014-05-24 04:59:49, invalid, -7.2665, 112.74365.
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2014, 5, 24, 4, 59, 49).unwrap()
    );
    assert!(!p.valid);
    assert!((p.lat - -7.2665).abs() < 1e-5 && (p.lon - 112.74365).abs() < 1e-5);
    // "@@" + same flag + length of ",IMEI,CCC,1*XX\r\n" + checksum: the device deletes one record.
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"@@X27,369800014090021,CCC,1*E4\r\n"[..])
    );
}

#[test]
fn cce_records_decode_with_parameter_groups() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let d = decode_one(&mut s, &hex::decode(CCE).unwrap()).unwrap();
    assert_eq!(d.positions.len(), 3);
    let p = &d.positions[1];
    assert_eq!(p.alarm, Some("power_restored"));
    assert_eq!(p.power_v, Some(12.58));
    assert!((p.lat - -37.986346).abs() < 1e-6 && (p.lon - 144.456471).abs() < 1e-6);
    assert_eq!(d.positions[2].alarm, Some("sos"));
}

#[test]
fn aac_is_confirmed_like_traccar_does() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let d = decode_one(&mut s, &with_crlf("$$z27,861451040910625,AAC,1*D3")).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"@@z27,861451040910625,AAC,1*0B\r\n"[..])
    );
}

#[test]
fn command_answer_is_a_command_response() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let d = decode_one(&mut s, &with_crlf("$$D28,353358017784062,D03,OK*F3")).unwrap();
    let r = d.command_response.unwrap();
    assert_eq!(r.text, "D03,OK");
    assert_eq!(r.success, Some(true));
    let ok = encode_frame(b"$$", b'A', "353358017784062", "C01,OK");
    let r = decode_one(&mut s, &ok).unwrap().command_response.unwrap();
    assert_eq!((r.text.as_str(), r.success), ("C01,OK", Some(true)));
}

#[test]
fn commands_need_the_imei_and_are_framed_byte_for_byte() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    let stop = DeviceCommand {
        seq: 0,
        body: CommandBody::EngineStop,
    };
    assert_eq!(
        s.encode_command(&stop),
        Err(CommandError::NotIdentified("meitrack"))
    );
    // Identify the device through a report.
    let report = encode_frame(b"$$", b'A', "123456789012345", "C01,OK");
    decode_one(&mut s, &report).unwrap();
    // Checksums computed by hand: sum of the bytes up to `*`, mod 256.
    assert_eq!(
        &s.encode_command(&stop).unwrap()[..],
        b"@@A33,123456789012345,C01,0,12222*DA\r\n"
    );
    let resume = DeviceCommand {
        seq: 1,
        body: CommandBody::EngineResume,
    };
    assert_eq!(
        &s.encode_command(&resume).unwrap()[..],
        b"@@B33,123456789012345,C01,0,02222*DA\r\n"
    );
    // Traccar's MeitrackProtocolEncoderTest: position request A10.
    let a10 = DeviceCommand {
        seq: 0,
        body: CommandBody::Text("A10".into()),
    };
    assert_eq!(
        &s.encode_command(&a10).unwrap()[..],
        b"@@A25,123456789012345,A10*58\r\n"
    );
}

#[test]
fn encoded_report_decodes_to_the_same_fix() {
    let rep = Report {
        event: 1,
        time: Utc.with_ymd_and_hms(2026, 5, 1, 8, 30, 15).unwrap(),
        valid: true,
        lat: 55.755826,
        lon: 37.6173,
        satellites: 9,
        speed_kmh: 57,
        course: 270,
        altitude: 144,
        odometer_m: 123_456,
        inputs: 0x01,
        outputs: 0x01,
        power_v: 12.6,
    };
    let pkt = encode_aaa(b'Q', "861451040910625", &rep);
    let d = decode_one(&mut MeitrackSession::new(Transport::Udp), &pkt).unwrap();
    let p = &d.positions[0];
    assert_eq!(d.device, Some(DeviceId::new("861451040910625")));
    assert_eq!(p.fix_time, rep.time);
    assert_eq!((p.lat, p.lon), (rep.lat, rep.lon));
    assert_eq!(p.speed_kmh, 57.0);
    assert_eq!(p.alarm, Some("sos"));
    assert_eq!(p.outputs, Some(1));
    assert_eq!(p.power_v, Some(12.6));
    assert_eq!(p.odometer_m, Some(123_456.0));
}

#[test]
fn encoded_ccc_decodes_to_the_same_fixes_and_is_acked_with_its_count() {
    let rep = |i: u32| Report {
        event: 35,
        time: Utc.with_ymd_and_hms(2026, 5, 1, 8, 30, 15).unwrap()
            + chrono::Duration::seconds(i64::from(i) * 10),
        valid: true,
        lat: 55.755826 + f64::from(i) * 0.001,
        lon: -37.6173,
        satellites: 9,
        speed_kmh: 57 + i,
        course: 270,
        altitude: 144,
        odometer_m: 123_456,
        inputs: 0x01,
        outputs: 0x00,
        power_v: 12.6,
    };
    let reps = [rep(0), rep(1), rep(2)];
    let pkt = encode_ccc(b'X', "861451040910625", &reps);
    let d = decode_one(&mut MeitrackSession::new(Transport::Tcp), &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("861451040910625")));
    assert_eq!(d.positions.len(), 3);
    for (p, r) in d.positions.iter().zip(&reps) {
        assert_eq!(p.fix_time, r.time);
        assert!((p.lat - r.lat).abs() < 1e-9 && (p.lon - r.lon).abs() < 1e-9);
        assert_eq!(p.speed_kmh, f64::from(r.speed_kmh));
        assert_eq!(p.course, 270.0);
        assert_eq!(p.odometer_m, Some(123_456.0));
    }
    // `@@X<len>,IMEI,CCC,3*XX\r\n` with the length and sum computed by hand.
    let body = ",861451040910625,CCC,3*";
    let mut want = format!("@@X{:02}{body}", body.len() - 1 + 5).into_bytes();
    let sum = want.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    want.extend_from_slice(format!("{sum:02X}\r\n").as_bytes());
    assert_eq!(d.reply.as_deref(), Some(&want[..]));
}

#[test]
fn noise_before_the_marker_is_skipped() {
    let mut s = MeitrackSession::new(Transport::Tcp);
    assert_eq!(s.next_frame(b"xx$$A").unwrap(), FrameCut::Skip(2));
    assert_eq!(s.next_frame(b"garbage").unwrap(), FrameCut::Skip(7));
    assert_eq!(
        s.next_frame(b"$$A99999999,").unwrap_err().reason,
        DecodeReason::Framing
    );
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Meitrack) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 32, &mut seed) {
            crate::protocols::fuzz::exercise(
                Protocol::Meitrack,
                || Box::new(MeitrackSession::new(Transport::Tcp)),
                &m,
            );
        }
    }
}

#[test]
fn a_frame_cut_short_by_the_next_one_fails_alone_and_the_next_is_kept() {
    // The first 60 bytes of AAA (its declared length 160 runs past the next `$$`), then a
    // whole AAA with CR LF: the failed span ends at that `$$`, and the frame after it decodes.
    let mut buf = AAA.as_bytes()[..60].to_vec();
    buf.extend(with_crlf(AAA));
    let mut s = MeitrackSession::new(Transport::Tcp);
    assert_eq!(s.next_frame(&buf).unwrap(), FrameCut::Frame(60));
    assert!(s.decode(&buf[..60], &ctx()).is_err());
    let rest = &buf[60..];
    assert_eq!(s.next_frame(rest).unwrap(), FrameCut::Frame(rest.len()));
    let d = s.decode(rest, &ctx()).unwrap();
    assert_eq!(d.positions.len(), 1, "the complete frame is not lost");
}
