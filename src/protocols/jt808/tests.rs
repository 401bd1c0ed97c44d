use super::*;
use crate::protocols::{DecodeReason, MessageKind};
use chrono::TimeZone;

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    }
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Cuts one whole frame out of `bytes` and decodes it.
fn feed(s: &mut Jt808Session, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn reply_hex(d: &Decoded) -> String {
    hex::encode(d.reply.as_deref().expect("a reply"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

// Expected replies below were built independently (a few lines of Python following the
// JT/T 808 layout: header, body, XOR, escaping) and cross-checked against the reference
// server's encoder test vectors where one exists.

#[test]
fn location_report_decodes_fix_in_utc_and_is_acked_with_8001() {
    // Real packet (Traccar test data): south/west bits set, time 2015-01-01 19:42:57 GMT+8.
    let pkt = h("7e020000220014012499170007000000000000400e012af16f02cbd2ba000000000000150101194257010400000077a97e");
    let mut s = Jt808Session::new();
    let d = feed(&mut s, &pkt).unwrap();
    assert_eq!(
        d.device,
        Some(DeviceId::new("1401249917")),
        "phone 001401249917 without leading zeros"
    );
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2015, 1, 1, 11, 42, 57).unwrap()
    );
    assert!(p.valid);
    assert!(
        close(p.lat, -19.591535) && close(p.lon, -46.912186),
        "{} {}",
        p.lat,
        p.lon
    );
    assert_eq!(p.ignition, Some(false));
    assert_eq!(p.odometer_m, Some(11_900.0), "item 0x01 in 1/10 km");
    assert_eq!(p.alarm, None);
    // 8001: reply serial 0007, reply id 0200, result 0; our serial 0000.
    assert_eq!(reply_hex(&d), "7e80010005001401249917000000070200003e7e");
}

#[test]
fn a_body_length_field_that_disagrees_with_the_body_is_answered_result_2_and_not_taken() {
    // The real location report above with its body length 0x22 made 0x23 and its checksum
    // recomputed (a87e): a valid frame whose header contradicts its body.
    let pkt = h("7e020000230014012499170007000000000000400e012af16f02cbd2ba000000000000150101194257010400000077a87e");
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert!(d.positions.is_empty(), "nothing stored");
    assert_eq!(d.kind, MessageKind::Invalid);
    // 8001: reply serial 0007, reply id 0200, result 2 ("message error"); XOR computed in a
    // Python one-off.
    assert_eq!(reply_hex(&d), "7e80010005001401249917000000070200023c7e");
}

#[test]
fn location_items_speed_altitude_alarm_and_status_bits() {
    let fix = Fix {
        time: Utc.with_ymd_and_hms(2026, 5, 1, 7, 59, 30).unwrap(),
        valid: true,
        lat: 55.7558,
        lon: 37.6173,
        speed_kmh: 63.4,
        course: 181,
        altitude: -12,
        ignition: true,
        alarm_flags: 1 << 8 | 1 << 1,
        odometer_m: Some(1_234_500.0),
        satellites: Some(11),
    };
    let d = feed(
        &mut Jt808Session::new(),
        &encode_location("013800138000", 7, &fix),
    )
    .unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, fix.time);
    assert!(close(p.lat, 55.7558) && close(p.lon, 37.6173));
    assert!((p.speed_kmh - 63.4).abs() < 1e-9, "1/10 km/h, no knots");
    assert_eq!((p.course, p.altitude), (181.0, -12.0));
    assert_eq!(p.ignition, Some(true));
    assert_eq!(p.satellites, Some(11));
    assert_eq!(p.odometer_m, Some(1_234_500.0));
    assert_eq!(
        p.alarm,
        Some("power_cut"),
        "main power off outranks overspeed"
    );
    assert_eq!(p.outputs, Some(0));
    assert_eq!(d.kind, MessageKind::Alarm);
    assert_eq!(d.device, Some(DeviceId::new("13800138000")));
}

#[test]
fn oil_cut_status_bit_sets_output_one() {
    let mut body = location_body(&sample_fix());
    body[6] |= 0x04; // status bit 10
    let pkt = encode_message(
        &device_header("013800138000"),
        msg::LOCATION_REPORT,
        Serial::Word(1),
        &body,
    );
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.positions[0].outputs, Some(1));
    assert_eq!(
        d.positions[0].attrs.get_name("blocked"),
        Some(&AttrValue::Bool(true))
    );
}

fn sample_fix() -> Fix {
    Fix {
        time: Utc.with_ymd_and_hms(2026, 4, 30, 22, 15, 0).unwrap(),
        valid: true,
        lat: -33.8688,
        lon: -151.2093,
        speed_kmh: 12.5,
        course: 90,
        altitude: 58,
        ignition: false,
        alarm_flags: 0,
        odometer_m: None,
        satellites: None,
    }
}

#[test]
fn registration_is_answered_with_8100_result_0_and_auth_code() {
    let pkt = h("7e0100002d013511221122000500000000373031303748422d52303347424400000000000000000000003233363631303402cbd5424136383630387e");
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    assert_eq!(d.device, Some(DeviceId::new("13511221122")));
    assert!(d.positions.is_empty());
    // 8100: reply serial 0005, result 00, auth code "013511221122".
    assert_eq!(
        reply_hex(&d),
        "7e8100000f0135112211220000000500303133353131323231313232b87e"
    );
}

#[test]
fn version_2019_registration_echoes_version_flag_and_long_phone() {
    let pkt = h("7e0100405c010000086649607758216452180000000000000000000000000000004d443330300000000000000000000000000000000000000000000000000038363634393630373735383231363400000000000000000000000000000004000000000000000000000000000000007a7e");
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("866496077582164")));
    assert_eq!(
        reply_hex(&d),
        "7e81004017010000086649607758216400005218003030303030383636343936303737353832313634bf7e"
    );
}

#[test]
fn authentication_and_heartbeat_are_acked_with_8001() {
    let mut s = Jt808Session::new();
    let d = feed(
        &mut s,
        &h("7e0102000e013511221122000661757468656e7469636174696f6e3f7e"),
    )
    .unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    assert_eq!(reply_hex(&d), "7e8001000501351122112200000006010200b57e");
    let mut s = Jt808Session::new();
    let d = feed(&mut s, &h("7e0002000004304832546500b7ca7e")).unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert_eq!(reply_hex(&d), "7e80010005043048325465000000b70002004e7e");
}

#[test]
fn platform_serial_counts_up_per_session() {
    let mut s = Jt808Session::new();
    let hb = h("7e0002000004304832546500b7ca7e");
    let a = feed(&mut s, &hb).unwrap().reply.unwrap();
    let b = feed(&mut s, &hb).unwrap().reply.unwrap();
    assert_eq!(&a[11..13], &[0, 0]);
    assert_eq!(&b[11..13], &[0, 1]);
}

#[test]
fn reply_bytes_equal_to_delimiters_are_escaped() {
    // A device message with serial 0x007E: the 8001 body carries 00 7E, sent as 00 7D 02.
    let pkt = encode_message(
        &device_header("013511221122"),
        msg::HEARTBEAT,
        Serial::Word(0x007E),
        &[],
    );
    assert!(
        pkt.windows(2).any(|w| w == [0x7D, 0x02]),
        "device side escaped too"
    );
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert_eq!(reply_hex(&d), "7e800100050135112211220000007d02000200cc7e");
}

#[test]
fn unescape_and_escape_follow_the_standard_example() {
    // JT/T 808 example, also the reference frame decoder/encoder test: 30 7E 08 7D 55.
    assert_eq!(
        unescape(&h("307d02087d0155"), 0x7E).unwrap(),
        h("307e087d55")
    );
    let mut out = Vec::new();
    escape_into(&mut out, &h("307e087d55"), 0x7E);
    assert_eq!(out, h("307d02087d0155"));
    assert_eq!(
        unescape(&h("307d03"), 0x7E).unwrap_err().reason,
        DecodeReason::Framing
    );
}

#[test]
fn bad_checksum_is_an_error_not_an_ack() {
    let mut pkt = h("7e0002000004304832546500b7ca7e");
    pkt[13] ^= 0x01;
    let e = feed(&mut Jt808Session::new(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Crc);
}

#[test]
fn batch_0704_gives_every_record_and_one_ack() {
    let fixes: Vec<Fix> = (0..3)
        .map(|i| Fix {
            time: sample_fix().time + Duration::seconds(i * 30),
            ..sample_fix()
        })
        .collect();
    let pkt = encode_batch("013800138000", 0x21, true, &fixes);
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.positions.len(), 3);
    assert_eq!(d.positions[2].fix_time, fixes[2].time);
    assert_eq!(
        d.positions[0].attrs.get_name("archive"),
        Some(&AttrValue::Bool(true))
    );
    let r = d.reply.unwrap();
    assert_eq!(&r[1..3], &[0x80, 0x01]);
    assert_eq!(
        &r[13..18],
        &[0x00, 0x21, 0x07, 0x04, 0x00],
        "reply serial, id, result"
    );
}

#[test]
fn real_batch_0704_decodes_all_records() {
    let pkt = h("7e0704014301356777777707f5000801002600000000000000030159741206cbfd5001720000000116052709062401040000001d03020000002600000000000000030159746606cbfd50016b0000000116052709065301040000001d0302000000260000000000000003015975e406cbfe58013f0000000116052709072701040000001d0302000000260000000000000003015976de06cbff10012e0000000116052709075601040000001d0302000000260000000000000003015976bc06cbfed0012d0000000116052709083001040000001d0302000000260000000000000003015976fe06cbfec001080000000116052709090001040000001d0302000000260000000000000003015976fe06cbfe7800fc0000000116052709093301040000001d0302000000260000000000000003015977a606cbff3001080000000116052709100201040000001d030200001f7e");
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.positions.len(), 8);
    assert_eq!(
        d.positions[0].fix_time,
        Utc.with_ymd_and_hms(2016, 5, 27, 1, 6, 24).unwrap()
    );
}

#[test]
fn terminal_general_response_is_a_command_response_with_serial() {
    let pkt = encode_terminal_response("013800138000", 9, 0x0102, msg::TERMINAL_CONTROL, 0);
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert!(d.reply.is_none(), "responses are not acknowledged");
    let cr = d.command_response.unwrap();
    assert_eq!((cr.success, cr.seq), (Some(true), Some(0x0102)));
    let pkt = encode_terminal_response("013800138000", 10, 7, msg::TERMINAL_CONTROL, 3);
    let cr = feed(&mut Jt808Session::new(), &pkt)
        .unwrap()
        .command_response
        .unwrap();
    assert_eq!(cr.success, Some(false));
    assert!(cr.text.contains("not supported"));
}

#[test]
fn vehicle_control_response_carries_serial_and_position() {
    let mut body = 0x0033u16.to_be_bytes().to_vec();
    let mut loc = location_body(&sample_fix());
    loc[6] |= 0x04; // oil circuit cut
    body.extend(loc);
    let pkt = encode_message(
        &device_header("013800138000"),
        msg::VEHICLE_CONTROL_RESPONSE,
        Serial::Word(2),
        &body,
    );
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.command_response.as_ref().unwrap().seq, Some(0x33));
    assert_eq!(d.positions[0].outputs, Some(1));
}

#[test]
fn text_and_lock_frames_in_parentheses() {
    let mut s = Jt808Session::new();
    let pkt = b"(794104004140,1,001,BASE,2,TIME)";
    let d = feed(&mut s, pkt).unwrap();
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"(794104004140,1,001,BASE,2,20260501080000)"[..])
    );
    let d = feed(&mut s, b"(740190311185,1,001,ELOCK,3,529439)").unwrap();
    assert_eq!(
        d.command_response.unwrap().text,
        "(740190311185,1,001,ELOCK,3,529439)"
    );
}

#[test]
fn location_report_2_with_ack_flag_gets_4401() {
    let pkt = h("7e55018c418560090010174701022106242122348476113550490700001c06000000074e0000000000000308100000100102020200000a030000000b0803363839363037650c0600000001000afa7e");
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2021, 2, 1, 6, 24, 21).unwrap()
    );
    assert!(close(p.lat, 22.0 + 34.8476 / 60.0) && close(p.lon, 113.0 + 55.0490 / 60.0));
    assert_eq!(reply_hex(&d), "7e4401000385600900101701550100f87e");
}

#[test]
fn time_sync_request_is_answered_with_utc_now() {
    let pkt = encode_message(
        &device_header("013800138000"),
        msg::TIME_SYNC_REQUEST,
        Serial::Word(4),
        &[],
    );
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    let r = d.reply.unwrap();
    assert_eq!(&r[1..3], &[0x81, 0x09]);
    assert_eq!(&r[13..21], &[0x07, 0xEA, 5, 1, 8, 0, 0, 0]);
}

#[test]
fn continuation_packets_are_acked_without_decoding() {
    let mut pkt = encode_message(
        &device_header("013800138000"),
        msg::LOCATION_BATCH,
        Serial::Word(5),
        &[0, 2, 0, 0xAA, 0xBB],
    )
    .to_vec();
    // Set the sub-package bit and insert "2 packets, index 2" after the serial, then re-sum.
    let mut inner = unescape(&pkt[1..pkt.len() - 1], 0x7E).unwrap();
    inner.pop();
    inner[2] |= 0x20;
    inner.splice(12..12, [0, 2, 0, 2]);
    let sum = xor(&inner);
    inner.push(sum);
    pkt = vec![0x7E];
    escape_into(&mut pkt, &inner, 0x7E);
    pkt.push(0x7E);
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(&d.reply.unwrap()[13..18], &[0x00, 0x05, 0x07, 0x04, 0x00]);
}

#[test]
fn framing_handles_split_concatenated_noise_and_oversize() {
    let hb = h("7e0002000004304832546500b7ca7e");
    let mut s = Jt808Session::new();
    for n in 1..hb.len() {
        assert_eq!(
            s.next_frame(&hb[..n]).unwrap(),
            FrameCut::NeedMore,
            "prefix {n}"
        );
    }
    let mut two = hb.clone();
    two.extend(&hb);
    assert_eq!(s.next_frame(&two).unwrap(), FrameCut::Frame(hb.len()));
    assert_eq!(s.next_frame(&h("24247e30")).unwrap(), FrameCut::Skip(2));
    assert_eq!(
        s.next_frame(&h("7e7e0002")).unwrap(),
        FrameCut::Skip(1),
        "stray closing delimiter"
    );
    let mut big = vec![0x7E];
    big.resize(MAX_FRAME, 0x01);
    assert_eq!(
        s.next_frame(&big).unwrap_err().reason,
        DecodeReason::TooLarge
    );
    assert_eq!(s.next_frame(b"(12,3").unwrap(), FrameCut::NeedMore);
}

#[test]
fn engine_stop_matches_the_reference_encoder_vector() {
    // Reference encoder test: id 123456789012345 → phone 0b3a73ce2ff2, serial 0000.
    let head = Header {
        version: None,
        phone: h("0b3a73ce2ff2"),
        delimiter: 0x7E,
    };
    let t = Utc::now();
    let stop = encode_command(
        &head,
        EngineControl::TerminalControl,
        &DeviceCommand {
            seq: 0,
            body: CommandBody::EngineStop,
        },
        t,
    );
    assert_eq!(hex::encode(&stop), "7e810500010b3a73ce2ff20000f0247e");
    let resume = encode_command(
        &head,
        EngineControl::TerminalControl,
        &DeviceCommand {
            seq: 0,
            body: CommandBody::EngineResume,
        },
        t,
    );
    assert_eq!(hex::encode(&resume), "7e810500010b3a73ce2ff20000f1257e");
    // Reference vector for a 0x8300 text message "Test, Command, 123#" with flag 01.
    let text = encode_command(
        &head,
        EngineControl::TerminalControl,
        &DeviceCommand {
            seq: 0,
            body: CommandBody::Text("Test, Command, 123#".into()),
        },
        t,
    );
    assert_eq!(
        hex::encode(&text),
        "7e830000140b3a73ce2ff2000001546573742c20436f6d6d616e642c2031323323a57e"
    );
    // A non-BCD phone field is the IMEI body as a 48-bit number; the Luhn digit is recomputed
    // (the reference test id 123456789012345 is not Luhn-valid: its check digit is 7).
    assert_eq!(decode_id(&h("0b3a73ce2ff2")), "123456789012347");
    assert_eq!(decode_id(&h("013511221122")), "013511221122");
}

#[test]
fn alternative_engine_controls_and_command_serial() {
    let head = device_header("013511221122");
    let t = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let cmd = DeviceCommand {
        seq: 0x1234,
        body: CommandBody::EngineStop,
    };
    let v = encode_command(&head, EngineControl::VehicleControl, &cmd, t);
    assert_eq!(hex::encode(&v[1..14]), "85000001013511221122123401");
    let o = encode_command(&head, EngineControl::OilControl, &cmd, t);
    // Flag 01 and the time in GMT+8: 26-05-01 16:00:00.
    assert_eq!(
        hex::encode(&o[1..20]),
        "a0060007013511221122123401260501160000"
    );
}

#[test]
fn session_commands_need_identity_and_reuse_the_device_header() {
    let mut s = Jt808Session::new();
    let cmd = DeviceCommand {
        seq: 7,
        body: CommandBody::EngineResume,
    };
    assert_eq!(
        s.encode_command(&cmd),
        Err(CommandError::NotIdentified("jt808"))
    );
    feed(&mut s, &h("7e0002000004304832546500b7ca7e")).unwrap();
    let out = s.encode_command(&cmd).unwrap();
    assert_eq!(
        hex::encode(&out[1..14]),
        "810500010430483254650007f1",
        "serial = command seq"
    );
}

#[test]
fn device_encoders_round_trip() {
    let mut s = Jt808Session::new();
    let d = feed(&mut s, &encode_register("013800138000", 1)).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    let code = &d.reply.unwrap()[16..28];
    assert_eq!(code, b"013800138000");
    let d = feed(&mut s, &encode_auth("013800138000", 2, "013800138000")).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    let f = sample_fix();
    let d = feed(&mut s, &encode_location("013800138000", 3, &f)).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, f.time);
    assert!(close(p.lat, f.lat) && close(p.lon, f.lon));
    assert!((p.speed_kmh - f.speed_kmh).abs() < 1e-9);
}

#[test]
fn no_panic_on_truncated_or_mutated_corpus_packets() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/jt808/corpus.jsonl");
    let entries = crate::protocols::corpus::load(&path).unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let new = || -> Box<dyn Session> { Box::new(Jt808Session::new()) };
    let run = |bytes: &[u8]| crate::protocols::fuzz::exercise(Protocol::Jt808, new, bytes);
    let mut generic = 0x2545_f491_4f6c_dd1d;
    for e in &entries {
        let bytes = e.bytes().unwrap();
        for m in crate::protocols::fuzz::truncations_and_mutations(&bytes, 50, &mut generic) {
            run(&m);
        }
    }
    // Mutations keep failing the checksum; also mutate the inner bytes and fix the sum, so
    // the decoders behind it see garbage too.
    for e in &entries {
        let bytes = e.bytes().unwrap();
        if bytes.first() != Some(&0x7E) || bytes.len() < 4 {
            continue;
        }
        let Ok(mut inner) = unescape(&bytes[1..bytes.len() - 1], 0x7E) else {
            continue;
        };
        for _ in 0..200 {
            let mut m = inner.clone();
            m.pop();
            for _ in 0..4 {
                if m.len() > 12 {
                    let i = 12 + (rnd() as usize) % (m.len() - 12);
                    m[i] = rnd() as u8;
                }
            }
            if rnd() % 3 == 0 && m.len() > 13 {
                let cut = 13 + (rnd() as usize) % (m.len() - 13);
                m.truncate(cut);
            }
            let sum = xor(&m);
            m.push(sum);
            let mut pkt = vec![0x7E];
            escape_into(&mut pkt, &m, 0x7E);
            pkt.push(0x7E);
            run(&pkt);
        }
        inner.clear();
    }
}

#[test]
fn unknown_terminal_message_is_answered_not_supported() {
    let pkt = encode_message(
        &device_header("013800138000"),
        0x0F0F,
        Serial::Word(0x0101),
        &[1, 2, 3],
    );
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Other);
    assert!(d.positions.is_empty());
    assert_eq!(&d.reply.unwrap()[13..18], &[0x01, 0x01, 0x0F, 0x0F, 0x03]);
}

#[test]
fn encrypted_message_is_answered_not_supported() {
    let mut pkt = encode_location("013800138000", 3, &sample_fix()).to_vec();
    pkt[3] |= 0x04; // properties bit 10: RSA
    let n = pkt.len();
    pkt[n - 2] ^= 0x04; // keep the XOR right
    let d = feed(&mut Jt808Session::new(), &pkt).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(d.reply.unwrap()[17], 3);
}

#[test]
fn truncated_location_body_reports_field_and_frame_offset() {
    let body = &location_body(&sample_fix())[..20];
    let pkt = encode_message(
        &device_header("013800138000"),
        msg::LOCATION_REPORT,
        Serial::Word(1),
        body,
    );
    let e = feed(&mut Jt808Session::new(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Truncated);
    assert!(e.what.starts_with("course"), "{}", e.what);
    assert_eq!(
        e.offset,
        1 + 12 + 20,
        "delimiter, header, then 20 body bytes"
    );
}
