use super::*;
use crate::protocols::{DecodeReason, MessageKind};
use chrono::TimeZone;

fn feed(s: &mut EgtsSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &DecodeCtx::now())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// A transport packet from its header fields and frame data, with both checksums computed the
/// way GOST 33472 defines them (CRC-8 poly 0x31 init 0xFF over the header, CRC-16 CCITT init
/// 0xFFFF over the data, little-endian).
fn packet(pid: u16, pt: u8, sfrd: &[u8]) -> Vec<u8> {
    let mut h = vec![0x01, 0x00, 0x00, 0x0b, 0x00];
    h.extend_from_slice(&(sfrd.len() as u16).to_le_bytes());
    h.extend_from_slice(&pid.to_le_bytes());
    h.push(pt);
    h.push(CRC8_EGTS.checksum(&h));
    h.extend_from_slice(sfrd);
    h.extend_from_slice(&CRC16_CCITT_FALSE.checksum(sfrd).to_le_bytes());
    h
}

// Real packets (Traccar test data).
const TERM_IDENTITY_IMEI: &str = "0100000b002400a0d601f01900030081030000000101011600030000004238363434393530333436343333373600014cdc";
const TERM_IDENTITY_SHORT: &str = "0100010b002200c06401f21700c1640171360d00010101140071360d000238363539303500000000000000000047fc";
const POS_WITH_OID: &str = "0100020b0025003a5701c91a003a5701cd6e68490202101700cbb4740f7617fd924364104f116a0000000000010300001ec2";
const TWO_RECORDS_WITH_SENSORS: &str = "0100020b009e00892401504400ed539135de0100020210180051917613009194a00028db7893bd814700000001008c00001106001a3f00130300140500001d0000041207000f000000000000130100001b0700010000ae0e00004400ee539135de010002021018005491761300c094a00011db789353814700000001008c00001106001a3f00130300140500001c0000041207000f000010000000130100001b0700010000ca0e00004b47";
const DEVICE_RESPONSE: &str = "0100000b0003006c430004010000acfb";

#[test]
fn term_identity_with_imei_identifies_the_device_by_imei() {
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(TERM_IDENTITY_IMEI)).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    assert_eq!(d.device, Some(DeviceId::new("864495034643376")));
    assert!(d.positions.is_empty());
}

#[test]
fn term_identity_reply_is_record_response_then_result_code_byte_for_byte() {
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(TERM_IDENTITY_IMEI)).unwrap();
    // The device packet: PID 0xd6a0, one auth record RN 3.
    // 1) PT_RESPONSE, our PID 0: RPID a0d6, PR 00, then record RL 6, RN 0, RFL 0x40 (RSOD), SST 1,
    //    RST 1, subrecord SRT 0 (RECORD_RESPONSE), SRL 3, CRN 0003, RST 00.
    let mut want = packet(0, PT_RESPONSE, &unhex("a0d60006000000400101000300030000"));
    // 2) PT_APPDATA, our PID 1: record RL 4, RN 1, RFL 0x40, SST 1, RST 1, subrecord SRT 9
    //    (EGTS_SR_RESULT_CODE), SRL 1, RCD 0 (EGTS_PC_OK).
    want.extend(packet(1, PT_APPDATA, &unhex("0400010040010109010000")));
    assert_eq!(hex::encode(d.reply.unwrap()), hex::encode(&want));
    // The same bytes with both checksums computed independently (bitwise CRC-8/0x31 and
    // CRC-16/CCITT-FALSE in a Python one-off).
    assert_eq!(
        hex::encode(want),
        "0100000b00100000000068a0d60006000000400101000300030000175a\
         0100000b000b000100011904000100400101090100003198"
    );
}

#[test]
fn blank_imei_falls_back_to_the_terminal_id() {
    // IMEI flag set, the field holds "865905" padded with NULs: digits, so used as sent.
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(TERM_IDENTITY_SHORT)).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("865905")));
    // Without an IMEI, the terminal id in decimal.
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &encode_term_identity(5, 9, 123_456, None)).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("123456")));
    let d = feed(
        &mut s,
        &encode_term_identity(6, 10, 77, Some("000000000000000")),
    )
    .unwrap();
    assert_eq!(
        d.device,
        Some(DeviceId::new("77")),
        "all-zero IMEI is no IMEI"
    );
}

#[test]
fn pos_data_decodes_time_coordinates_speed_and_inputs() {
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(POS_WITH_OID)).unwrap();
    assert_eq!(d.kind, MessageKind::Data);
    assert_eq!(
        d.device,
        Some(DeviceId::new("1231580877")),
        "object id 0x49686ecd"
    );
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2018, 3, 21, 5, 38, 19).unwrap()
    );
    assert!(p.valid);
    assert!((p.lat - 51.67569).abs() < 1e-5);
    assert!((p.lon - 55.59189).abs() < 1e-4);
    assert_eq!(p.speed_kmh, 10.6);
    assert_eq!(p.course, 0.0);
    assert_eq!(p.inputs, Some(1));
    assert_eq!(p.motion, Some(true));
    assert_eq!(p.odometer_m, Some(0.0));
    assert_eq!(p.attrs.get_name("event"), Some(&AttrValue::Int(3)));
}

#[test]
fn pos_data_reply_confirms_the_record_with_its_service() {
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(POS_WITH_OID)).unwrap();
    // Device PID 0x573a, record RN 0x573a, teledata service 2; our record has RSOD (0x40).
    let want = packet(0, PT_RESPONSE, &unhex("3a5700060000004002020003003a5700"));
    assert_eq!(d.reply.as_deref(), Some(&want[..]));
    assert_eq!(
        hex::encode(&want),
        "0100000b001000000000683a5700060000004002020003003a57008506"
    );
}

#[test]
fn other_subrecords_attach_to_their_records_position() {
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(TWO_RECORDS_WITH_SENSORS)).unwrap();
    assert_eq!(d.positions.len(), 2);
    let p = &d.positions[0];
    assert_eq!(p.satellites, Some(19));
    assert_eq!(p.attrs.get_name("hdop"), Some(&AttrValue::Float(0.63)));
    assert_eq!(p.attrs.get_name("fuel1"), Some(&AttrValue::Int(3758)));
    assert_eq!(p.outputs, Some(0));
    assert_eq!(p.altitude, 140.0);
    assert_eq!(
        d.positions[1].attrs.get_name("fuel1"),
        Some(&AttrValue::Int(3786))
    );
    // Two records confirmed in one response packet.
    let reply = d.reply.unwrap();
    assert_eq!(u16::from_le_bytes([reply[5], reply[6]]), 3 + 2 * 13);
}

#[test]
fn several_pos_data_in_one_record_are_several_positions() {
    let t = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let fix = |i: i64| Fix {
        time: t + chrono::Duration::seconds(i),
        valid: true,
        lat: 55.75,
        lon: 37.62,
        speed_kmh: 0.0,
        course: 0,
        altitude: 0,
        odometer_m: 0,
        inputs: 0,
        satellites: None,
        outputs: None,
    };
    // Take the POS_DATA subrecords out of two encoded records and put them in one record,
    // each followed by its own EXT_POS_DATA.
    let one = encode_teledata(0, 0, None, &[fix(0)]);
    let pos = &one[11 + 7 + 3..one.len() - 2];
    let mut rd = BytesMut::new();
    subrecord(&mut rd, sr::POS_DATA, pos);
    subrecord(&mut rd, sr::EXT_POS_DATA, &[0x08, 5]);
    subrecord(&mut rd, sr::POS_DATA, pos);
    subrecord(&mut rd, sr::EXT_POS_DATA, &[0x08, 7]);
    let mut sfrd = BytesMut::new();
    encode_record(&mut sfrd, 1, Some(42), TELEDATA_SERVICE, &rd);
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &encode_packet(PT_APPDATA, 1, &sfrd)).unwrap();
    let sats: Vec<_> = d.positions.iter().map(|p| p.satellites).collect();
    assert_eq!(sats, vec![Some(5), Some(7)]);
}

#[test]
fn encoded_login_and_teledata_decode_to_the_same_fixes() {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let fixes = vec![
        Fix {
            time: t0,
            valid: true,
            lat: 55.7558,
            lon: 37.6173,
            speed_kmh: 42.5,
            course: 300,
            altitude: 151,
            odometer_m: 123_400,
            inputs: 0b101,
            satellites: Some(11),
            outputs: Some(1),
        },
        Fix {
            time: t0 + chrono::Duration::seconds(10),
            valid: false,
            lat: -33.9,
            lon: -70.6,
            speed_kmh: 0.0,
            course: 10,
            altitude: -5,
            odometer_m: 0,
            inputs: 0,
            satellites: None,
            outputs: None,
        },
    ];
    let mut s = EgtsSession::new();
    let login = feed(
        &mut s,
        &encode_term_identity(0, 0, 99, Some("356307042441013")),
    )
    .unwrap();
    assert_eq!(login.device, Some(DeviceId::new("356307042441013")));
    let d = feed(&mut s, &encode_teledata(1, 1, Some(99), &fixes)).unwrap();
    assert_eq!(
        d.device, None,
        "the terminal identity stays; the object id does not replace it"
    );
    assert_eq!(d.positions.len(), 2);
    for (p, f) in d.positions.iter().zip(&fixes) {
        assert_eq!(p.fix_time, f.time);
        assert_eq!(p.valid, f.valid);
        assert!((p.lat - f.lat).abs() < 1e-6 && (p.lon - f.lon).abs() < 1e-6);
        assert_eq!(p.speed_kmh, f.speed_kmh);
        assert_eq!(p.course, f64::from(f.course));
        assert_eq!(p.altitude, f64::from(f.altitude));
        assert_eq!(p.odometer_m, Some(f64::from(f.odometer_m)));
        assert_eq!(p.inputs, Some(u32::from(f.inputs)));
        assert_eq!(p.satellites, f.satellites.map(u16::from));
        assert_eq!(p.outputs, f.outputs.map(u32::from));
    }
}

#[test]
fn our_packet_ids_and_record_numbers_increment() {
    let mut s = EgtsSession::new();
    let a = feed(&mut s, &unhex(TERM_IDENTITY_IMEI))
        .unwrap()
        .reply
        .unwrap();
    let b = feed(&mut s, &unhex(POS_WITH_OID)).unwrap().reply.unwrap();
    // a: response PID 0 (record RN 0) + result code PID 1 (RN 1); b: PID 2, RN 2.
    assert_eq!(&a[7..9], &[0, 0]);
    assert_eq!(&a[11 + 16 + 2 + 7..11 + 16 + 2 + 9], &[1, 0]);
    assert_eq!(&b[7..9], &[2, 0]);
    assert_eq!(&b[11 + 5..11 + 7], &[2, 0], "record number");
}

#[test]
fn a_response_from_the_device_needs_no_reply() {
    let mut s = EgtsSession::new();
    let d = feed(&mut s, &unhex(DEVICE_RESPONSE)).unwrap();
    assert_eq!(d.kind, MessageKind::Ack);
    assert!(d.reply.is_none());
    assert!(d.positions.is_empty());
}

// Replies to refused packets: PT_RESPONSE, our PID 0, RPID 573a (POS_WITH_OID's PID), the
// processing result code, no records; both checksums computed in a Python one-off (bitwise
// CRC-8/0x31 and CRC-16/CCITT-FALSE), not by this crate.
const HEADERCRC_ERROR_REPLY: &str = "0100000b000300000000503a57897159";
const DATACRC_ERROR_REPLY: &str = "0100000b000300000000503a578a1269";
const INVDATALEN_REPLY: &str = "0100000b000300000000503a578b3379";

#[test]
fn bad_header_crc_is_answered_with_egts_pc_headercrc_error_137() {
    let mut pkt = unhex(POS_WITH_OID);
    pkt[10] ^= 0xff;
    let mut s = EgtsSession::new();
    // The header alone is cut: its FDL cannot be trusted.
    assert_eq!(s.next_frame(&pkt).unwrap(), FrameCut::Frame(11));
    let d = s.decode(&pkt[..11], &DecodeCtx::now()).unwrap();
    assert_eq!(d.kind, MessageKind::CrcError);
    assert!(d.positions.is_empty());
    assert_eq!(hex::encode(d.reply.unwrap()), HEADERCRC_ERROR_REPLY);
}

#[test]
fn after_a_bad_header_framing_resynchronises_at_the_next_good_header() {
    let mut bad = unhex(POS_WITH_OID);
    bad[10] ^= 0xff;
    let mut buf = bad.clone();
    buf.extend(unhex(POS_WITH_OID));
    let mut s = EgtsSession::new();
    let mut decoded = Vec::new();
    while !buf.is_empty() {
        match s.next_frame(&buf).unwrap() {
            FrameCut::Frame(n) => {
                decoded.push(s.decode(&buf[..n], &DecodeCtx::now()).unwrap());
                buf.drain(..n);
            }
            FrameCut::Skip(n) => {
                buf.drain(..n);
            }
            FrameCut::NeedMore => panic!("stuck with {} bytes", buf.len()),
        }
    }
    let kinds: Vec<_> = decoded.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [MessageKind::CrcError, MessageKind::Data]);
    assert_eq!(decoded[1].positions.len(), 1, "the good packet is not lost");
}

#[test]
fn bad_data_crc_is_answered_with_egts_pc_datacrc_error_138_and_nothing_is_taken() {
    let mut pkt = unhex(POS_WITH_OID);
    let n = pkt.len();
    pkt[n - 1] ^= 0xff;
    let d = feed(&mut EgtsSession::new(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::CrcError);
    assert!(d.positions.is_empty());
    assert_eq!(d.device, None, "nothing of the packet is believed");
    assert_eq!(hex::encode(d.reply.unwrap()), DATACRC_ERROR_REPLY);
}

#[test]
fn a_record_longer_than_its_data_is_answered_with_egts_pc_invdatalen_139() {
    // POS_WITH_OID's record says RL 26; make it 40 and keep both checksums right.
    let good = unhex(POS_WITH_OID);
    let mut sfrd = good[11..good.len() - 2].to_vec();
    assert_eq!(&sfrd[..2], &[0x1a, 0x00]);
    sfrd[0] = 40;
    let pkt = packet(0x573a, PT_APPDATA, &sfrd);
    let d = feed(&mut EgtsSession::new(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Invalid);
    assert!(d.positions.is_empty());
    assert_eq!(hex::encode(d.reply.unwrap()), INVDATALEN_REPLY);
}

#[test]
fn wrong_protocol_version_or_header_length_is_a_framing_error() {
    let mut s = EgtsSession::new();
    assert_eq!(
        s.next_frame(&[0x02, 0, 0, 11]).unwrap_err().reason,
        DecodeReason::Framing
    );
    assert_eq!(
        s.next_frame(&[0x01, 0, 0, 12]).unwrap_err().reason,
        DecodeReason::Framing
    );
}

#[test]
fn split_and_concatenated_packets_are_cut_one_by_one() {
    let mut s = EgtsSession::new();
    // Two device responses back to back (Traccar frame decoder test data).
    let two = unhex("0100000b000300704300db0500006c270100000b0003007143009d0600003c7e");
    assert_eq!(s.next_frame(&two).unwrap(), FrameCut::Frame(16));
    assert_eq!(s.next_frame(&two[16..]).unwrap(), FrameCut::Frame(16));
    let pkt = unhex(POS_WITH_OID);
    for cut in 0..pkt.len() {
        assert_eq!(
            s.next_frame(&pkt[..cut]).unwrap(),
            FrameCut::NeedMore,
            "prefix {cut}"
        );
    }
    // A header-only packet (FDL 0) has no data CRC.
    let empty = encode_packet(PT_APPDATA, 3, &[]);
    assert_eq!(empty.len(), 11);
    assert_eq!(s.next_frame(&empty).unwrap(), FrameCut::Frame(11));
}

#[test]
fn command_text_is_sent_as_ct_com_raw_data_byte_for_byte() {
    let mut s = EgtsSession::new();
    let cmd = DeviceCommand {
        seq: 7,
        body: CommandBody::Text("getver".into()),
    };
    assert_eq!(
        s.encode_command(&cmd),
        Err(CommandError::NotIdentified("egts"))
    );
    feed(&mut s, &unhex(TERM_IDENTITY_IMEI)).unwrap(); // uses our PIDs 0, 1 and RNs 0, 1
    let got = s.encode_command(&cmd).unwrap();
    // Record: RL 24, RN 2, RFL 0x40 (RSOD), SST 4, RST 4; subrecord SRT 51, SRL 21:
    // CT_COM|CC 0x50, CID 7, SID 0, flags 0, ADR 0, SZ/ACT 0, CCD 0000, "getver".
    let sfrd = unhex(
        &format!(
            "1800020040040433 1500 50 07000000 00000000 00 0000 00 0000 {}",
            hex::encode("getver")
        )
        .replace(' ', ""),
    );
    assert_eq!(hex::encode(&got), hex::encode(packet(2, PT_APPDATA, &sfrd)));
    let stop = s
        .encode_command(&DeviceCommand {
            seq: 8,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert!(
        stop[..stop.len() - 2].ends_with(b"setdigout 1"),
        "text, then the CRC-16"
    );
    let resume = s
        .encode_command(&DeviceCommand {
            seq: 9,
            body: CommandBody::EngineResume,
        })
        .unwrap();
    assert!(resume.windows(11).any(|w| w == b"setdigout 0"));
}

#[test]
fn command_confirmation_becomes_a_command_response_and_is_acked() {
    let mut s = EgtsSession::new();
    let d = feed(
        &mut s,
        &encode_command_confirmation(5, 6, 7, CC_OK, b"DOUT1:1 Timeout:INFINITY"),
    )
    .unwrap();
    assert_eq!(d.kind, MessageKind::CommandResponse);
    assert_eq!(
        d.command_response,
        Some(CommandResponse {
            text: "DOUT1:1 Timeout:INFINITY".into(),
            success: Some(true),
            seq: Some(7)
        })
    );
    assert_eq!(
        d.reply.as_deref(),
        Some(
            &packet(
                0,
                PT_RESPONSE,
                &unhex(
                    "0500000600000040040400030006 0000"
                        .replace(' ', "")
                        .as_str()
                )
            )[..]
        )
    );
    let d = feed(&mut s, &encode_command_confirmation(6, 7, 8, 0x1, b"")).unwrap();
    assert_eq!(d.command_response.unwrap().success, Some(false), "CC_ERROR");
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Egts) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 200, &mut seed) {
            crate::protocols::fuzz::exercise(Protocol::Egts, || Box::new(EgtsSession::new()), &m);
        }
    }
}

#[test]
fn refusing_a_login_answers_result_code_auth_denied() {
    let mut s = EgtsSession::new();
    assert!(s.reject_reply().is_none());
    let d = feed(&mut s, &unhex(TERM_IDENTITY_IMEI)).unwrap();
    let accept = d.reply.unwrap();
    let reject = s.reject_reply().unwrap();
    assert_eq!(accept.len(), reject.len());
    // Same record confirmation; the result code packet differs only in RCD and its CRC.
    let first = 11 + 16 + 2;
    assert_eq!(accept[..first], reject[..first]);
    let want = packet(1, PT_APPDATA, &unhex("0400010040010109010097"));
    assert_eq!(&reject[first..], &want[..]);
}

#[test]
fn engine_stop_packet_matches_an_independently_computed_encoding() {
    // Bytes (incl. CRC-8/CRC-16) computed by a separate Python implementation of the layout in
    // the README: PID 2, RN 2, CID 7, "setdigout 1".
    assert_eq!(
        hex::encode(encode_command_packet(2, 2, 7, ENGINE_STOP_TEXT.as_bytes())),
        "0100000b0024000200014e1d000200400404331a00500700000000000000000000000000\
         7365746469676f757420318ba5"
    );
}
