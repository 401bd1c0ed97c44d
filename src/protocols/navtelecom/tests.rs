use super::*;
use chrono::{TimeZone, Utc};

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    }
}

/// Cuts one whole frame out of `hex` and decodes it.
fn feed(s: &mut NavtelecomSession, hex: &str) -> Result<Decoded, DecodeError> {
    let bytes = hex::decode(hex).unwrap();
    match s.next_frame(&bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes, &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn reply_hex(d: &Decoded) -> String {
    hex::encode(d.reply.as_deref().unwrap_or_default())
}

// The examples Navtelecom prints (wiki.navtelecom.ru, FLEX examples).
const DOC_HANDSHAKE: &str =
    "404e544301000000000000001300464d2a3e533a383636373935303333333233383634";
const DOC_FLEX: &str = "404e544301000000000000002a0046742a3e464c4558b01e1efffffe300a08000000020000000020003800200000000000000104000000060000";

#[test]
fn handshake_and_negotiation_are_answered_as_the_documents_examples() {
    let mut s = NavtelecomSession::default();
    let d = feed(&mut s, DOC_HANDSHAKE).unwrap();
    assert_eq!(d.kind.as_str(), "login");
    assert_eq!(d.device, Some(DeviceId::new("866795033323864")));
    assert_eq!(reply_hex(&d), "404e544300000000010000000300455e2a3c53");
    let d = feed(&mut s, DOC_FLEX).unwrap();
    assert_eq!(
        reply_hex(&d),
        "404e544300000000010000000900b1a02a3c464c4558b01e1e"
    );
    assert_eq!(d.device, Some(DeviceId::new("866795033323864")));
}

#[test]
fn mask_of_the_documents_example_lists_its_fields() {
    let mut s = NavtelecomSession::default();
    feed(&mut s, DOC_FLEX).unwrap();
    let m = s.mask.clone().unwrap();
    let mut want: Vec<usize> = (1..=15).collect();
    want.extend([
        19, 20, 29, 31, 37, 71, 107, 123, 124, 125, 139, 200, 206, 238, 239,
    ]);
    assert_eq!(m.fields, want);
    assert_eq!(m.record_len, 77);
}

#[test]
fn flex10_event_decodes_the_fix_and_is_answered_with_its_index() {
    // Traccar test data (NavisProtocolDecoderTest.testDecodeFlex10).
    let mut s = NavtelecomSession::default();
    feed(
        &mut s,
        "404e544301000000c9b5f602130046c52a3e533a383639363936303439373232383235",
    )
    .unwrap();
    feed(
        &mut s,
        "404e544301000000aaecf6021300c8712a3e464c4558b00a0a45ffff300a08080f8388",
    )
    .unwrap();
    let d = feed(&mut s, "7e54040000000400000030129957405c000b00632f9857405ccace03021e129101a103000000000000c4005ba3fe3b00000000120046100000000000001aff7f000080bfffff80000080bfffffffff9f").unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2019, 1, 17, 10, 23, 20).unwrap()
    );
    assert!(p.valid);
    assert!(
        (p.lat - 56.33996).abs() < 1e-5 && (p.lon - 43.80762).abs() < 1e-5,
        "{p:?}"
    );
    let mut ack = b"~T".to_vec();
    ack.extend(4u32.to_le_bytes());
    ack.push(CRC8_EGTS.checksum(&ack));
    assert_eq!(d.reply.as_deref(), Some(&ack[..]));
}

#[test]
fn archive_is_answered_with_its_count_and_a_bad_crc_is_refused() {
    let mut s = NavtelecomSession::default();
    feed(&mut s, &hex::encode(encode_handshake("866795033323864"))).unwrap();
    feed(
        &mut s,
        &hex::encode(encode_negotiation(30, flex::FIX_FIELDS)),
    )
    .unwrap();
    let fix = |i: u32| flex::Fix {
        number: i,
        time: Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, i).unwrap(),
        lat: 55.75,
        lon: -37.6,
        speed_kmh: 42.5,
        course: 181,
        outputs: 1,
    };
    let pkt = encode_archive(&[flex::encode_record(&fix(1)), flex::encode_record(&fix(2))]);
    let d = feed(&mut s, &hex::encode(&pkt)).unwrap();
    assert_eq!(d.positions.len(), 2);
    let p = &d.positions[1];
    assert_eq!(p.fix_time, fix(2).time);
    assert!((p.lat - 55.75).abs() < 1e-6 && (p.lon + 37.6).abs() < 1e-6);
    assert!((p.speed_kmh - 42.5).abs() < 1e-6);
    assert_eq!(p.course, 181.0);
    assert_eq!(p.outputs, Some(1));
    assert_eq!(p.satellites, Some(12));
    assert_eq!(p.odometer_m, Some(1_234_500.0));
    assert_eq!(p.power_v, Some(12.6));
    let ack = [b'~', b'A', 2];
    let crc = CRC8_EGTS.checksum(&ack);
    assert_eq!(d.reply.as_deref(), Some(&[b'~', b'A', 2, crc][..]));

    let mut bad = pkt.to_vec();
    *bad.last_mut().unwrap() ^= 0xFF;
    let e = s.decode(&bad, &ctx()).unwrap_err();
    assert_eq!(e.reason.as_str(), "crc");
}

#[test]
fn flex_data_before_negotiation_cannot_be_framed() {
    let mut s = NavtelecomSession::default();
    let e = s.next_frame(b"~A\x01\x00\x00").unwrap_err();
    assert_eq!(e.reason.as_str(), "unsupported");
}

#[test]
fn ntcb_checksums_are_checked() {
    let mut s = NavtelecomSession::default();
    let mut b = hex::decode(DOC_HANDSHAKE).unwrap();
    b[20] ^= 1; // a digit of the IMEI: data XOR no longer matches
    assert_eq!(s.decode(&b, &ctx()).unwrap_err().reason.as_str(), "crc");
    let mut b = hex::decode(DOC_HANDSHAKE).unwrap();
    b[4] ^= 1; // receiver id: header XOR no longer matches
    assert_eq!(s.decode(&b, &ctx()).unwrap_err().reason.as_str(), "crc");
}

#[test]
fn engine_commands_switch_output_1_in_an_ntcb_frame() {
    let mut s = NavtelecomSession::default();
    let cmd = |body| DeviceCommand { seq: 1, body };
    assert_eq!(
        s.encode_command(&cmd(CommandBody::EngineStop)),
        Err(CommandError::NotIdentified("navtelecom"))
    );
    feed(&mut s, DOC_HANDSHAKE).unwrap();
    let stop = s.encode_command(&cmd(CommandBody::EngineStop)).unwrap();
    assert_eq!(&stop[16..], b"*!1Y");
    assert_eq!(
        &stop[4..12],
        &[0, 0, 0, 0, 1, 0, 0, 0],
        "to the device's id, from ours"
    );
    let resume = s.encode_command(&cmd(CommandBody::EngineResume)).unwrap();
    assert_eq!(&resume[16..], b"*!1N");
    // The reference server's encoder test vector for a custom command.
    let text = s
        .encode_command(&cmd(CommandBody::Text("*!SETOUT 1Y".into())))
        .unwrap();
    assert_eq!(
        hex::encode(text),
        "404e544300000000010000000b004f5c2a215345544f5554203159"
    );
    let d = feed(
        &mut s,
        "404e544301000000000000000d005e4b2a40434e43545f445243204f4b",
    )
    .unwrap();
    let r = d.command_response.unwrap();
    assert_eq!((r.text.as_str(), r.success), ("*@CNCT_DRC OK", Some(true)));
}

#[test]
fn keep_alives_are_single_bytes_and_empty_ntcb_frames() {
    let mut s = NavtelecomSession::default();
    assert_eq!(s.next_frame(&[0x7F, b'~']), Ok(FrameCut::Frame(1)));
    assert_eq!(
        s.decode(&[0x7F], &ctx()).unwrap().kind.as_str(),
        "heartbeat"
    );
    let empty = ntcb(1, 0, b"");
    assert_eq!(s.next_frame(&empty), Ok(FrameCut::Frame(16)));
    assert_eq!(s.decode(&empty, &ctx()).unwrap().reply, None);
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let packets = crate::protocols::fuzz::corpus_packets(Protocol::Navtelecom);
    for p in &packets {
        for m in crate::protocols::fuzz::truncations_and_mutations(p, 30, &mut seed) {
            crate::protocols::fuzz::exercise(
                Protocol::Navtelecom,
                || Box::new(NavtelecomSession::default()),
                &m,
            );
            // And after a negotiation, so FLEX frames are cut and decoded.
            let mut s = NavtelecomSession::default();
            let _ = s.decode(&hex::decode(DOC_FLEX).unwrap(), &ctx());
            if let Ok(FrameCut::Frame(n)) = s.next_frame(&m) {
                let _ = s.decode(&m[..n.min(m.len())], &ctx());
            }
        }
    }
}

#[test]
fn native_ntcb_records_decode_and_are_answered_with_number_or_count() {
    // Traccar test data (NavisProtocolDecoderTest.testDecodeNtcb), with the fix its test gives.
    let mut s = NavtelecomSession::default();
    feed(
        &mut s,
        "404E5443010000007B000000130044342A3E533A383631373835303035323035303739",
    )
    .unwrap();
    let d = feed(&mut s, "404e5443010000000000000059009adb2a3e54250000000000ff1500040b0a1008291838001200760ee600000000000000000000000f1500040b0a10ac20703fb1aec23f00000000320149668f430000000000000000000000000000000000000000000000f3808080").unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2016, 11, 11, 21, 0, 4).unwrap()
    );
    assert!(
        (p.lat - 53.74336).abs() < 1e-5 && (p.lon - 87.14437).abs() < 1e-5,
        "{p:?}"
    );
    // Format 0x25 (5.2), record number 0: *<T + 0 (u32), to the ids of the device's header swapped.
    assert_eq!(
        p.attrs.get_name("format"),
        Some(&crate::model::AttrValue::Int(0x25))
    );
    assert_eq!(
        reply_hex(&d),
        hex::encode(ntcb(0, 1, b"*<T\x00\x00\x00\x00"))
    );
    let d = feed(&mut s, "404e544301000000000000005a002e6c2a3e410125d7540100001512233a0b0a0f08026300000a000b000b00020000000000000000000c12233b0b0a0f03fd6d3f0fde603f00000000ba0051e0c845000000000000000000000000000000000000000000000080808080").unwrap();
    assert_eq!(d.positions.len(), 1);
    assert_eq!(reply_hex(&d), hex::encode(ntcb(0, 1, b"*<A\x01")));
}
