use super::*;
use crate::protocols::{DecodeReason, MessageKind};

// Real packets from the corpus (protocols/galileo/corpus.jsonl, Traccar's decoder tests).
const HEAD: &str = "011380033836383230343030313534393038370432008590";
const COMMAND_ANSWER: &str = "012a0003383633353931303233353137333732046600e000000000e1104f555428332e2e3029203d2031313130bb29";
const IRIDIUM_FIX: &str = "01004e01001c0747ea59333030323334303639363034353930000012000063c85e6903000b0321a8f846aba50000000202001e205f5ec863300c4643fdfdbbe6c8fb330000000034e7013505d400000000";
const IRIDIUM_NO_FIX: &str = "01003a01001c07553e40333030323334303639363034353930020021000063d1921c03000b0321ac2c4545b20000009f02000ac200000000db00000000";

fn corpus_packets() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/galileo/corpus.jsonl"
    );
    crate::protocols::corpus::load(std::path::Path::new(path))
        .unwrap()
        .iter()
        .map(|e| e.bytes().unwrap())
        .collect()
}

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
    }
}

/// Cut one whole frame out of `bytes` and decode it.
fn feed(s: &mut GalileoSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn utc_s(s: &str) -> DateTime<Utc> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
}

#[test]
fn head_packet_identifies_the_device_and_is_acked_with_its_crc() {
    let mut s = GalileoSession::new();
    let d = feed(&mut s, &hex::decode(HEAD).unwrap()).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    assert_eq!(d.device, Some(DeviceId::new("868204001549087")));
    assert!(d.positions.is_empty());
    // Ack = 0x02 + the packet's own CRC, low byte first (the packet ends 85 90).
    assert_eq!(d.reply.as_deref(), Some(&[0x02, 0x85, 0x90][..]));
}

#[test]
fn main_packet_splits_records_at_a_repeated_tag() {
    // Corpus line 7: two 0x03 IMEI tags, each opening a record of a 2016 Galileosky.
    let pkt = &corpus_packets()[6];
    let mut s = GalileoSession::new();
    let d = feed(&mut s, pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("868204001269934")));
    assert_eq!(d.positions.len(), 11);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, utc_s("2016-06-24 03:28:53"));
    assert!(p.valid);
    assert_eq!(p.lat, 53.41784);
    assert_eq!(p.lon, 50.167228);
    assert_eq!(p.speed_kmh, 9.9);
    assert_eq!(p.course, 106.2);
    assert_eq!(p.altitude, 62.0);
    assert_eq!(p.satellites, Some(5));
    assert_eq!(p.inputs, Some(3));
    assert_eq!(p.outputs, Some(0));
    assert_eq!(p.power_v, Some(26.698));
    assert_eq!(p.attrs.get_name("index"), Some(&AttrValue::Int(4078)));
    assert_eq!(
        p.attrs.get_name("battery_v"),
        Some(&AttrValue::Float(3.759))
    );
    assert_eq!(d.positions[1].fix_time, utc_s("2016-06-24 03:28:52"));
    assert_eq!(d.reply.as_deref(), Some(&[0x02, 0xab, 0xde][..]));
}

#[test]
fn archive_flag_in_the_length_does_not_change_the_frame_length() {
    // Corpus line 2: length field 0x83bf = archive bit + 0x03bf bytes of tags.
    let pkt = &corpus_packets()[1];
    assert_eq!(pkt[1..3], [0xbf, 0x83]);
    let mut s = GalileoSession::new();
    assert_eq!(s.next_frame(pkt).unwrap(), FrameCut::Frame(5 + 0x03bf));
}

#[test]
fn mileage_versions_and_device_number_are_mapped() {
    // Corpus line 1: head tags and one record with 0xd4 total mileage.
    let pkt = &corpus_packets()[0];
    let mut s = GalileoSession::new();
    let d = feed(&mut s, pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("868345032042426")));
    let p = &d.positions[0];
    assert_eq!(p.fix_time, utc_s("2018-09-17 13:22:04"));
    assert_eq!(p.odometer_m, Some(5331.0));
    assert_eq!(p.attrs.get_name("hw_version"), Some(&AttrValue::Int(130)));
    assert_eq!(p.attrs.get_name("fw_version"), Some(&AttrValue::Int(19)));
    assert_eq!(
        p.attrs.get_name("device_number"),
        Some(&AttrValue::Int(100))
    );
    assert_eq!(p.outputs, Some(4));
}

#[test]
fn bad_crc_is_an_error_not_an_ack() {
    let mut pkt = hex::decode(HEAD).unwrap();
    let n = pkt.len();
    pkt[n - 1] ^= 0xff;
    let e = feed(&mut GalileoSession::new(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Crc);
    assert_eq!(e.offset, n - 2);
}

#[test]
fn split_input_waits_and_concatenated_packets_are_cut_one_by_one() {
    let head = hex::decode(HEAD).unwrap();
    let answer = hex::decode(COMMAND_ANSWER).unwrap();
    let mut s = GalileoSession::new();
    for i in 0..head.len() {
        assert_eq!(
            s.next_frame(&head[..i]).unwrap(),
            FrameCut::NeedMore,
            "prefix {i}"
        );
    }
    let mut stream = vec![0x00, 0xAA];
    stream.extend_from_slice(&head);
    stream.extend_from_slice(&answer);
    assert_eq!(s.next_frame(&stream).unwrap(), FrameCut::Skip(1));
    assert_eq!(s.next_frame(&stream[1..]).unwrap(), FrameCut::Skip(1));
    assert_eq!(
        s.next_frame(&stream[2..]).unwrap(),
        FrameCut::Frame(head.len())
    );
    let rest = &stream[2 + head.len()..];
    assert_eq!(s.next_frame(rest).unwrap(), FrameCut::Frame(answer.len()));
}

#[test]
fn largest_declared_length_waits_for_data_instead_of_failing() {
    let mut s = GalileoSession::new();
    assert_eq!(
        s.next_frame(&[0x01, 0xff, 0xff, 0x03, 0x00, 0x00]).unwrap(),
        FrameCut::NeedMore
    );
}

#[test]
fn command_answer_becomes_a_command_response_with_the_command_number() {
    let mut s = GalileoSession::new();
    let d = feed(&mut s, &hex::decode(COMMAND_ANSWER).unwrap()).unwrap();
    assert_eq!(d.kind, MessageKind::CommandResponse);
    assert!(d.positions.is_empty());
    assert_eq!(
        d.command_response,
        Some(CommandResponse {
            text: "OUT(3..0) = 1110".into(),
            success: None,
            seq: Some(0)
        })
    );
    assert_eq!(d.reply.as_deref(), Some(&[0x02, 0xbb, 0x29][..]));
}

#[test]
fn text_command_matches_the_published_example_byte_for_byte() {
    // Traccar's GalileoProtocolEncoderTest: "status" for IMEI 123456789012345, number 0.
    let mut s = GalileoSession::new();
    s.imei = Some(DeviceId::new("123456789012345"));
    let cmd = DeviceCommand {
        seq: 0,
        body: CommandBody::Text("status".into()),
    };
    let b = s.encode_command(&cmd).unwrap();
    assert_eq!(
        hex::encode(&b),
        "01200003313233343536373839303132333435040000e000000000e1067374617475731f64"
    );
}

#[test]
fn engine_stop_and_resume_set_output_0_and_answers_carry_the_number_back() {
    let mut s = GalileoSession::new();
    let cmd = DeviceCommand {
        seq: 7,
        body: CommandBody::EngineStop,
    };
    assert_eq!(
        s.encode_command(&cmd),
        Err(CommandError::NotIdentified(NAME))
    );
    feed(&mut s, &encode_head_packet("861234567890123", 42)).unwrap();
    let stop = s.encode_command(&cmd).unwrap();
    assert_eq!(
        stop,
        encode_command_packet("861234567890123", 42, 7, "Out 0,1")
    );
    // Layout: 01 | len | 03 IMEI | 04 0x002a | e0 07000000 | e1 07 "Out 0,1" | CRC.
    assert_eq!(stop[0], 0x01);
    assert_eq!(
        u16::from_le_bytes([stop[1], stop[2]]) as usize,
        stop.len() - 5
    );
    assert_eq!(&stop[19..22], &[0x04, 0x2a, 0x00]);
    assert_eq!(&stop[22..27], &[0xe0, 7, 0, 0, 0]);
    assert_eq!(&stop[27..29], &[0xe1, 7]);
    assert_eq!(&stop[29..36], b"Out 0,1");
    let resume = s
        .encode_command(&DeviceCommand {
            seq: 8,
            body: CommandBody::EngineResume,
        })
        .unwrap();
    assert_eq!(&resume[29..36], b"Out 0,0");
    // The device's answer has the same layout; it decodes to the response with seq 7.
    let answer = encode_command_answer("861234567890123", 42, 7, "OUT(3..0) = 0001");
    let d = feed(&mut s, &answer).unwrap();
    let r = d.command_response.unwrap();
    assert_eq!((r.text.as_str(), r.seq), ("OUT(3..0) = 0001", Some(7)));
}

#[test]
fn iridium_message_uses_the_galileosky_fix_and_sends_no_ack() {
    let mut s = GalileoSession::new();
    let d = feed(&mut s, &hex::decode(IRIDIUM_FIX).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("300234069604590")));
    assert_eq!(d.reply, None);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, utc_s("2023-01-18 21:02:23"));
    assert!(p.valid);
    assert_eq!(p.lat, -33.733818);
    assert_eq!(p.lon, -70.719813);
    assert_eq!(p.altitude, 487.0);
}

#[test]
fn iridium_message_without_fix_falls_back_to_the_satellite_estimate_as_invalid() {
    let mut s = GalileoSession::new();
    let d = feed(&mut s, &hex::decode(IRIDIUM_NO_FIX).unwrap()).unwrap();
    let p = &d.positions[0];
    assert!(!p.valid);
    // Header location 33°44.076'S 69°17.842'W (flags 0x03: south, west).
    assert!((p.lat + (33.0 + 44076.0 / 60000.0)).abs() < 1e-9);
    assert!((p.lon + (69.0 + 17842.0 / 60000.0)).abs() < 1e-9);
    assert_eq!(p.fix_time, from_secs(0x63d1921c).unwrap());
    assert_eq!(
        p.attrs.get_name("iridium_cep_km"),
        Some(&AttrValue::Int(159))
    );
}

#[test]
fn photo_packet_is_acked_with_its_own_header() {
    let pkt = &corpus_packets()[3];
    let mut s = GalileoSession::new();
    let d = feed(&mut s, pkt).unwrap();
    assert!(d.positions.is_empty());
    let n = pkt.len();
    assert_eq!(
        d.reply.as_deref(),
        Some(&[0x07, pkt[n - 2], pkt[n - 1]][..])
    );
}

#[test]
fn compressed_packet_decodes_minimal_data_set_and_listed_tags() {
    let t = Utc.with_ymd_and_hms(2026, 10, 3, 14, 5, 9).unwrap();
    let recs = [
        CompressedRecord {
            time: t,
            valid: true,
            lat: 55.7558,
            lon: 37.6173,
            alarm: false,
            tags: vec![
                (tag::SUPPLY_MV, 12_600u16.to_le_bytes().to_vec()),
                (tag::OUTPUTS, vec![1, 0]),
            ],
        },
        CompressedRecord {
            time: t,
            valid: false,
            lat: -12.5,
            lon: -70.25,
            alarm: true,
            tags: vec![],
        },
    ];
    let pkt = encode_compressed_packet(&recs);
    assert_eq!(pkt[0], 0x08);
    let mut s = GalileoSession::new();
    let d = feed(&mut s, &pkt).unwrap();
    assert_eq!(d.positions.len(), 2);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, t);
    assert!(p.valid);
    // Resolution: 360/2^22 degrees of longitude, 180/2^21 of latitude.
    assert!((p.lat - 55.7558).abs() < 1e-4 && (p.lon - 37.6173).abs() < 1e-4);
    assert_eq!(p.power_v, Some(12.6));
    assert_eq!(p.outputs, Some(1));
    let q = &d.positions[1];
    assert!(!q.valid);
    assert_eq!(q.alarm, Some("general"));
    assert!((q.lat + 12.5).abs() < 1e-4 && (q.lon + 70.25).abs() < 1e-4);
    let n = pkt.len();
    assert_eq!(
        d.reply.as_deref(),
        Some(&[0x02, pkt[n - 2], pkt[n - 1]][..])
    );
}

#[test]
fn compressed_time_in_late_december_read_in_january_belongs_to_last_year() {
    let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
    let pkt = encode_compressed_packet(&[CompressedRecord {
        time: t,
        valid: true,
        lat: 1.0,
        lon: 1.0,
        alarm: false,
        tags: vec![],
    }]);
    let mut s = GalileoSession::new();
    let january = DecodeCtx {
        now: Utc.with_ymd_and_hms(2027, 1, 1, 0, 3, 0).unwrap(),
    };
    let d = s.decode(&pkt, &january).unwrap();
    assert_eq!(d.positions[0].fix_time, t);
}

#[test]
fn unknown_tag_is_an_unsupported_error_naming_the_tag() {
    let body = [tag::RECORD_NUMBER, 1, 0, 0x21, 0, 0];
    let pkt = finish_packet(HEADER_MAIN, &body, false);
    let e = feed(&mut GalileoSession::new(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Unsupported);
    assert_eq!(e.offset, 6);
    assert!(e.what.contains("0x21"));
}

#[test]
fn every_tag_in_the_length_table_is_consumed_with_its_length() {
    // A record holding every fixed-length tag once: parsing must land exactly on the CRC.
    let mut body = vec![];
    for id in 0..=255u8 {
        match tag_len(id) {
            Some(TagLen::Fixed(n))
                if ![tag::IMEI, tag::TIME, tag::COMMAND_NUMBER].contains(&id) =>
            {
                body.push(id);
                body.resize(body.len() + n, 0);
            }
            _ => {}
        }
    }
    body.extend_from_slice(&[tag::TIME, 1, 0, 0, 0]);
    body.extend_from_slice(&[tag::USER_ARRAY, 2, 0xAA, 0xBB]);
    body.extend_from_slice(&[tag::EXTENDED, 3, 0, 1, 2, 3]);
    let pkt = finish_packet(HEADER_MAIN, &body, false);
    let d = feed(&mut GalileoSession::new(), &pkt).unwrap();
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(
        p.attrs.get(&AttrKey::Io(0xEA)),
        Some(&AttrValue::Bytes(vec![0xAA, 0xBB].into()))
    );
    assert_eq!(
        p.attrs.get(&AttrKey::Io(0xFE)),
        Some(&AttrValue::Bytes(vec![1, 2, 3].into()))
    );
}

#[test]
fn encoded_head_and_data_packets_decode_to_the_same_values() {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let recs: Vec<DataRecord> = (0..3)
        .map(|i| DataRecord {
            index: 100 + i as u16,
            time: t0 + Duration::seconds(i * 10),
            valid: i != 2,
            satellites: 9,
            lat: 55.7558 + i as f64 * 0.001,
            lon: -37.6173,
            speed_kmh: 42.5,
            course: 271.3,
            altitude: -12,
            power_mv: 12_650,
            outputs: 1,
            inputs: 0b101,
            mileage_m: 1_000_000 + i as u32,
        })
        .collect();
    let mut s = GalileoSession::new();
    let head = feed(&mut s, &encode_head_packet("861234567890123", 5)).unwrap();
    assert_eq!(head.device, Some(DeviceId::new("861234567890123")));
    let pkt = encode_data_packet(&recs, true);
    assert_eq!(pkt[2] & 0x80, 0x80, "archive bit");
    let d = feed(&mut s, &pkt).unwrap();
    assert_eq!(d.positions.len(), 3);
    for (p, r) in d.positions.iter().zip(&recs) {
        assert_eq!(p.fix_time, r.time);
        assert_eq!(p.valid, r.valid);
        assert!((p.lat - r.lat).abs() < 1e-6 && (p.lon - r.lon).abs() < 1e-6);
        assert_eq!(p.speed_kmh, 42.5);
        assert_eq!(p.course, 271.3);
        assert_eq!(p.altitude, -12.0);
        assert_eq!(p.satellites, Some(9));
        assert_eq!(p.power_v, Some(12.65));
        assert_eq!(p.outputs, Some(1));
        assert_eq!(p.inputs, Some(0b101));
        assert_eq!(p.odometer_m, Some(f64::from(r.mileage_m)));
        assert_eq!(
            p.attrs.get_name("index"),
            Some(&AttrValue::Int(i64::from(r.index)))
        );
    }
    let n = pkt.len();
    assert_eq!(
        d.reply,
        Some(encode_ack(u16::from_le_bytes([pkt[n - 2], pkt[n - 1]])))
    );
}

#[test]
fn truncations_and_mutations_of_real_packets_never_panic() {
    let mut packets = corpus_packets();
    packets.push(
        encode_compressed_packet(&[CompressedRecord {
            time: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            valid: true,
            lat: 10.0,
            lon: 20.0,
            alarm: false,
            tags: vec![(0x45, vec![1, 0]), (0x5c, vec![0; 68])],
        }])
        .to_vec(),
    );
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let new = || -> Box<dyn Session> { Box::new(GalileoSession::new()) };
    for p in &packets {
        let inputs = crate::protocols::fuzz::truncations_and_mutations(p, 200, &mut seed);
        for (k, mut m) in inputs.into_iter().enumerate() {
            // Fix the CRC of every other input so mutations reach the tag parser.
            if k % 2 == 0 && m.len() >= 5 && !is_iridium(&m) {
                let n = m.len() - 2;
                let crc = CRC16_MODBUS.checksum(&m[..n]).to_le_bytes();
                m[n..].copy_from_slice(&crc);
            }
            crate::protocols::fuzz::exercise(Protocol::Galileo, new, &m);
        }
    }
}
