use super::*;
use crate::protocols::{DecodeReason, MessageKind};
use chrono::{TimeZone, Utc};

/// Real packets from Traccar's RuptelaProtocolDecoderTest (see protocols/ruptela/NOTICE.md).
const RECORDS: &str = "00800003167d765c155d01000160cd0a310000faae43f7176ee45702332b0c12000006070d05007300cfff260082008600870088000f00d7021100d801c900061d0000c500001e0e988300008900008b000002d0000c9bca720c889a0b047e00000000000000007f0000000000000000800000000000000000810000000000000000a341";
const IDENTIFICATION: &str = "002e000316d53d58d6020f4573303430302e30332e36382e30340000c2b3090d0e950000827b000003e80000003c003c1681";
const GETIO_ANSWER: &str = "0044000313612d76c5cb0744494e313d312c44494e323d302c44494e333d302c44494e343d302c444f5554313d312c444f5554323d312c41494e313d31372c41494e323d3236ac80";
const FIVE_RECORDS: &str = "009200000c07a6bacd4701000552db5cc20000187b8b251ace478e087c044c0a000009070000000052db5cfe0000187b8ab01ace47190879044c0900000b070000000052db5d3a0000187b8b251ace474b089d044c09000009070000000052db5d760000187b8b9a1ace475c08cd044c08000009070000000052db5db20000187b8b141ace46e708b3044c08000009070000000041cb";

fn decode_one(s: &mut RuptelaSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(bytes, &DecodeCtx::now())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn crc_is_kermit_as_in_the_fixed_records_ack() {
    // Traccar answers records with the constant 0002 64 01 13bc: CRC-16/KERMIT of 64 01.
    assert_eq!(CRC16_KERMIT.checksum(&[0x64, 0x01]), 0x13bc);
    assert_eq!(CRC16_KERMIT.checksum(b"123456789"), 0x2189);
}

#[test]
fn records_packet_decodes_fix_io_and_is_acked_with_command_100() {
    let mut s = RuptelaSession::new();
    let d = decode_one(&mut s, &hex::decode(RECORDS).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("869153042601309")));
    assert_eq!(d.kind, MessageKind::Data);
    assert_eq!(hex::encode(d.reply.unwrap()), "0002640113bc");
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2021, 6, 18, 21, 3, 45).unwrap()
    );
    assert!((p.lat - 39.3143383).abs() < 1e-7);
    assert!((p.lon - -8.9242633).abs() < 1e-7);
    assert!((p.altitude - 56.3).abs() < 1e-9);
    assert!((p.course - 110.2).abs() < 1e-9);
    assert_eq!(p.satellites, Some(18));
    assert_eq!(
        p.attrs.get_name("battery_v"),
        Some(&AttrValue::Float(3.736))
    );
}

#[test]
fn imei_below_15_digits_is_zero_padded_and_all_records_decode() {
    let mut s = RuptelaSession::new();
    let d = decode_one(&mut s, &hex::decode(FIVE_RECORDS).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("013227001564487")));
    assert_eq!(d.positions.len(), 5);
    assert!(d
        .positions
        .windows(2)
        .all(|w| w[0].fix_time < w[1].fix_time));
}

#[test]
fn identification_is_answered_with_command_115() {
    let mut s = RuptelaSession::new();
    let d = decode_one(&mut s, &hex::decode(IDENTIFICATION).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("869530043209218")));
    assert!(d.positions.is_empty());
    // 0002 | 73 (100 + 15) 01 | CRC-16/KERMIT of 7301.
    let reply = d.reply.unwrap();
    assert_eq!(&reply[..4], &[0x00, 0x02, 0x73, 0x01]);
    assert_eq!(
        u16::from_be_bytes([reply[4], reply[5]]),
        CRC16_KERMIT.checksum(&[0x73, 0x01])
    );
}

#[test]
fn heartbeat_is_answered_with_command_116() {
    let pkt = encode_device_packet(869153042601309, cmd::HEARTBEAT, &[]);
    let mut s = RuptelaSession::new();
    let d = decode_one(&mut s, &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert_eq!(hex::encode(d.reply.unwrap()), "00027401862d");
}

#[test]
fn sms_via_gprs_answer_is_a_command_response() {
    let mut s = RuptelaSession::new();
    let d = decode_one(&mut s, &hex::decode(GETIO_ANSWER).unwrap()).unwrap();
    assert!(d.reply.is_none());
    assert_eq!(
        d.command_response.unwrap().text,
        "DIN1=1,DIN2=0,DIN3=0,DIN4=0,DOUT1=1,DOUT2=1,AIN1=17,AIN2=26"
    );
}

#[test]
fn bad_crc_is_an_error_not_an_ack() {
    let mut pkt = hex::decode(RECORDS).unwrap();
    let n = pkt.len();
    pkt[n - 1] ^= 0x01;
    let e = decode_one(&mut RuptelaSession::new(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Crc);
}

#[test]
fn text_command_is_sms_via_gprs_byte_for_byte() {
    // Traccar's RuptelaProtocolEncoderTest: " Setio 2,1" → 000b6c20536574696F20322C31eb3e.
    let mut s = RuptelaSession::new();
    let b = s
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::Text(" Setio 2,1".into()),
        })
        .unwrap();
    assert_eq!(hex::encode(b), "000b6c20536574696f20322c31eb3e");
}

#[test]
fn engine_stop_and_resume_use_the_immobilizer_sms_commands() {
    let mut s = RuptelaSession::new();
    let stop = s
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(stop, encode_server_packet(108, b"pass immobilizer 10"));
    // Computed independently: length 0x14, command 0x6c, text, CRC-16/KERMIT 0xbc22.
    assert_eq!(
        hex::encode(&stop),
        "00146c7061737320696d6d6f62696c697a6572203130bc22"
    );
    assert_eq!(&stop[..3], &[0x00, 0x14, 0x6c]);
    let resume = s
        .encode_command(&DeviceCommand {
            seq: 2,
            body: CommandBody::EngineResume,
        })
        .unwrap();
    assert_eq!(
        hex::encode(&resume),
        "00106c70617373207265736574696d6d6f62ee1f"
    );
}

#[test]
fn split_and_concatenated_stream_is_cut_at_packet_boundaries() {
    let a = hex::decode(RECORDS).unwrap();
    let b = hex::decode(IDENTIFICATION).unwrap();
    let mut s = RuptelaSession::new();
    assert_eq!(s.next_frame(&a[..1]).unwrap(), FrameCut::NeedMore);
    assert_eq!(s.next_frame(&a[..a.len() - 1]).unwrap(), FrameCut::NeedMore);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    assert_eq!(s.next_frame(&both).unwrap(), FrameCut::Frame(a.len()));
    assert_eq!(
        s.next_frame(&both[a.len()..]).unwrap(),
        FrameCut::Frame(b.len())
    );
}

#[test]
fn oversized_length_is_refused() {
    let e = RuptelaSession::new()
        .next_frame(&[0xff, 0xff, 0])
        .unwrap_err();
    assert_eq!(e.reason, DecodeReason::TooLarge);
}

#[test]
fn encoded_records_decode_to_the_same_fixes() {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let recs: Vec<Record> = (0..3)
        .map(|i| Record {
            time: t0 + chrono::Duration::seconds(i * 30),
            lat: 55.7558,
            lon: 37.6173 + i as f64 * 0.001,
            speed_kmh: 42,
            course: 181.5,
            altitude_m: 151.2,
            satellites: 11,
            io: vec![(2, 1, 1), (251, 1, 1), (29, 2, 12_450), (65, 4, 123_456)],
        })
        .collect();
    let pkt = encode_records(356_307_042_441_013, &recs);
    let d = decode_one(&mut RuptelaSession::new(), &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("356307042441013")));
    assert_eq!(d.positions.len(), 3);
    for (p, r) in d.positions.iter().zip(&recs) {
        assert_eq!(p.fix_time, r.time);
        assert!((p.lon - r.lon).abs() < 1e-7);
        assert_eq!(p.speed_kmh, 42.0);
        assert!((p.course - 181.5).abs() < 1e-9);
        assert!((p.altitude - 151.2).abs() < 1e-9);
        assert_eq!(p.inputs, Some(1));
        assert_eq!(p.ignition, Some(true));
        assert_eq!(p.power_v, Some(12.45));
        assert_eq!(p.odometer_m, Some(123_456.0));
    }
}

#[test]
fn record_without_fix_is_status_not_a_position_at_zero() {
    let mut data = vec![0u8, 1];
    data.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&i32::MIN.to_be_bytes());
    data.extend_from_slice(&i32::MIN.to_be_bytes());
    data.extend_from_slice(&[0; 8]); // altitude, course, satellites, speed, HDOP
    data.push(0); // event
    data.extend_from_slice(&[1, 251, 1, 0, 0, 0]); // IO 251 (ignition) = 1
    let pkt = encode_device_packet(1, cmd::RECORDS, &data);
    let d = decode_one(&mut RuptelaSession::new(), &pkt).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(
        d.status.unwrap().get_name("ignition"),
        Some(&AttrValue::Bool(true))
    );
    assert!(
        d.reply.is_some(),
        "still acked so the device drops it from its buffer"
    );
}

#[test]
fn set_io_answer_reports_success() {
    let pkt = encode_device_packet(1, cmd::SET_IO, &[1]);
    let d = decode_one(&mut RuptelaSession::new(), &pkt).unwrap();
    assert_eq!(d.command_response.unwrap().success, Some(true));
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let new = || -> Box<dyn Session> { Box::new(RuptelaSession::new()) };
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Ruptela) {
        for mut m in crate::protocols::fuzz::truncations_and_mutations(&p, 32, &mut seed) {
            crate::protocols::fuzz::exercise(Protocol::Ruptela, new, &m);
            // Same mutation with a valid length and CRC, so that the body parser sees it too.
            if m.len() >= 4 {
                let n = m.len();
                let crc = CRC16_KERMIT.checksum(&m[2..n - 2]);
                m[n - 2..].copy_from_slice(&crc.to_be_bytes());
                m[..2].copy_from_slice(&((n - 4) as u16).to_be_bytes());
                crate::protocols::fuzz::exercise(Protocol::Ruptela, new, &m);
            }
        }
    }
}

fn corpus_hex(line: usize) -> Vec<u8> {
    let corpus = include_str!("../../../protocols/ruptela/corpus.jsonl");
    let l = corpus
        .lines()
        .filter(|l| !l.trim().is_empty())
        .nth(line - 1)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(l).unwrap();
    hex::decode(v["payload"].as_str().unwrap()).unwrap()
}

#[test]
fn extended_records_use_two_byte_ids_and_are_acked_like_records() {
    // Corpus line 10: command 68.
    let d = decode_one(&mut RuptelaSession::new(), &corpus_hex(10)).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("868324023580306")));
    assert_eq!(hex::encode(d.reply.unwrap()), "0002640113bc");
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2016, 10, 18, 21, 8, 26).unwrap()
    );
    assert!((p.lat - 47.0555133).abs() < 1e-7 && (p.lon - 21.923265).abs() < 1e-7);
    assert_eq!(p.ignition, Some(false));
    assert_eq!(p.power_v, Some(13.94));
}

#[test]
fn dtc_packet_gives_positions_with_codes_and_its_own_ack() {
    // Corpus line 9 declares 11 bytes for 48; its CRC covers all 48, so with the length
    // corrected it is a valid DTC packet (command 9).
    let mut pkt = corpus_hex(9);
    let n = pkt.len();
    pkt[..2].copy_from_slice(&((n - 4) as u16).to_be_bytes());
    let d = decode_one(&mut RuptelaSession::new(), &pkt).unwrap();
    assert_eq!(d.positions.len(), 2);
    assert_eq!(
        d.positions[0].attrs.get_name("dtcs"),
        Some(&AttrValue::Text("P0010".into()))
    );
    assert_eq!(hex::encode(d.reply.unwrap()), "00026d01c4a4");
}

#[test]
fn records_of_one_second_are_kept_apart_by_the_timestamp_extension() {
    // Two command-1 records at 2026-11-20 09:00:55, extension 0 and 1, events 0 and 7,
    // laid out by hand from the Ruptela protocol document.
    let mut data = vec![0u8, 2];
    for (ext, event) in [(0u8, 0u8), (1, 7)] {
        data.extend(1_795_165_255u32.to_be_bytes());
        data.push(ext);
        data.push(0); // priority
        data.extend(376_173_000i32.to_be_bytes());
        data.extend(557_550_000i32.to_be_bytes());
        data.extend(1500i16.to_be_bytes());
        data.extend(9000u16.to_be_bytes());
        data.push(10); // satellites
        data.extend(50u16.to_be_bytes());
        data.push(10); // HDOP
        data.push(event);
        data.extend([0, 0, 0, 0]); // no IO
    }
    let pkt = encode_device_packet(863_071_014_445_404, 1, &data);
    let d = decode_one(&mut RuptelaSession::new(), &pkt).unwrap();
    let times: Vec<_> = d.positions.iter().map(|p| p.fix_time).collect();
    let second = Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 55).unwrap();
    assert_eq!(
        times,
        [second, second + chrono::Duration::milliseconds(1)],
        "both kept, in extension order, each with its own time"
    );
    assert_eq!(
        d.positions[1].attrs.get_name("event"),
        Some(&AttrValue::Int(7))
    );
}
