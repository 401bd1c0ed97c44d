use super::*;
use crate::protocols::DecodeReason;
use chrono::{Duration, TimeZone};

fn feed(s: &mut TeltonikaSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &DecodeCtx::now())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn imei_handshake_identifies_the_device_and_answers_01() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(
        &mut s,
        &hex::decode("000f313233343536373839303132333435").unwrap(),
    )
    .unwrap();
    assert_eq!(d.device, Some(DeviceId::new("123456789012345")));
    assert_eq!(d.reply.as_deref(), Some(&[0x01][..]));
    assert_eq!(s.reject_reply().as_deref(), Some(&[0x00][..]));
}

#[test]
fn codec8_record_decodes_fix_io_and_ack_count() {
    // Real FMB packet (Traccar test data): one Codec 8 record.
    let pkt = hex::decode("000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e0f01f10000601a014e0000000000000000010000c7cf").unwrap();
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(&mut s, &pkt).unwrap();
    assert_eq!(d.positions.len(), 1);
    assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 1][..]));
    let p = &d.positions[0];
    assert_eq!(p.fix_time.timestamp_millis(), 0x16b40d8ea30);
    assert_eq!(p.inputs, Some(1), "DIN1 on");
    assert_eq!(p.power_v, Some(24.079));
}

#[test]
fn bad_crc_is_an_error_not_an_ack() {
    let mut pkt = hex::decode("000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e0f01f10000601a014e0000000000000000010000c7cf").unwrap();
    let n = pkt.len();
    pkt[n - 1] ^= 0xff;
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let e = feed(&mut s, &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Crc);
}

#[test]
fn oversized_declared_length_is_refused_before_buffering() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let e = s
        .next_frame(&[0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff])
        .unwrap_err();
    assert_eq!(e.reason, DecodeReason::TooLarge);
}

#[test]
fn partial_frames_ask_for_more() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    assert_eq!(s.next_frame(&[0, 0x0f, b'1']).unwrap(), FrameCut::NeedMore);
    assert_eq!(s.next_frame(&[0, 0, 0, 0, 0]).unwrap(), FrameCut::NeedMore);
}

fn sample_records() -> Vec<AvlRecord> {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    (0..3)
        .map(|i| AvlRecord {
            time: t0 + Duration::seconds(i * 10),
            lat: 55.7558 + i as f64 * 0.001,
            lon: 37.6173,
            speed_kmh: 40,
            course: 90,
            altitude: 150,
            satellites: 9,
            io: vec![
                (io::IGNITION, 1, 1),
                (io::MOVEMENT, 1, 1),
                (io::EXTERNAL_VOLTAGE, 2, 12_600),
                (io::TOTAL_ODOMETER, 4, 1_000 + i as u64),
                (io::DOUT1, 1, 1),
                (110, 8, 0x0102030405060708),
            ],
        })
        .collect()
}

#[test]
fn encoded_codec8_and_8e_packets_decode_to_the_same_records() {
    for codec in [CODEC_8, CODEC_8E] {
        let recs = sample_records();
        let pkt = encode_avl_packet(codec, &recs);
        let mut s = TeltonikaSession::new(Transport::Tcp);
        let d = feed(&mut s, &pkt).unwrap();
        assert_eq!(d.positions.len(), 3);
        assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 3][..]));
        for (p, r) in d.positions.iter().zip(&recs) {
            assert_eq!(p.fix_time, r.time);
            assert!((p.lat - r.lat).abs() < 1e-7);
            assert_eq!(p.speed_kmh, 40.0);
            assert_eq!(p.ignition, Some(true));
            assert_eq!(p.motion, Some(true));
            assert_eq!(p.power_v, Some(12.6));
            assert_eq!(p.outputs, Some(1));
            assert_eq!(
                p.attrs.get(&AttrKey::Io(110)),
                Some(&AttrValue::Int(0x0102030405060708))
            );
        }
        assert_eq!(d.positions[2].odometer_m, Some(1002.0));
    }
}

#[test]
fn codec12_command_and_response_round_trip() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let cmd = s
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    // Teltonika's documented example: "getinfo" is 000000000000000F0C010500000007676574696E666F0100004312.
    assert_eq!(
        hex::encode(encode_codec12(b"getinfo")),
        "000000000000000f0c010500000007676574696e666f0100004312"
    );
    assert!(cmd.windows(11).any(|w| w == b"setdigout 1"));
    let resp = encode_codec12_response(b"DOUT1:1 Timeout:INFINITY");
    let d = feed(&mut s, &resp).unwrap();
    assert_eq!(d.command_response.unwrap().text, "DOUT1:1 Timeout:INFINITY");
    assert!(d.reply.is_none(), "responses are not acked");
}

#[test]
fn udp_datagram_is_acked_with_packet_and_avl_ids() {
    let pkt = hex::decode("003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30010000000000000000000000000000000103021503010101425DBC000001").unwrap();
    let mut s = TeltonikaSession::new(Transport::Udp);
    let d = feed(&mut s, &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("352093086403655")));
    assert_eq!(d.positions.len(), 1);
    assert_eq!(hex::encode(d.reply.unwrap()), "0005cafe010501");
}

fn corpus_hex(line: usize) -> Vec<u8> {
    let corpus = include_str!("../../../protocols/teltonika/corpus.jsonl");
    let l = corpus
        .lines()
        .filter(|l| !l.trim().is_empty())
        .nth(line - 1)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(l).unwrap();
    hex::decode(v["payload"].as_str().unwrap()).unwrap()
}

#[test]
fn codec7_gh3000_records_without_gps_become_status_not_positions_at_zero() {
    // Corpus line 34: four GH3000 records, the first and last without the GPS block.
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(&mut s, &corpus_hex(34)).unwrap();
    assert_eq!(
        d.reply.as_deref(),
        Some(&[0, 0, 0, 4][..]),
        "all four records acked"
    );
    assert_eq!(d.positions.len(), 2);
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2015, 11, 10, 21, 51, 47).unwrap()
    );
    assert!((p.lat - 44.791306).abs() < 1e-5 && (p.lon - 18.479759).abs() < 1e-5);
    assert_eq!(p.satellites, Some(9));
    assert!(p.valid);
    let status = d.status.unwrap();
    assert_eq!(status.get_name("battery_v"), Some(&AttrValue::Float(4.108)));
}

#[test]
fn codec8_with_the_extra_16_byte_io_group_is_recognised_by_its_layout() {
    // Corpus line 48: a device configured with 16-byte IO values (an empty group per record).
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(&mut s, &corpus_hex(48)).unwrap();
    assert_eq!(d.positions.len(), 11);
    assert_eq!(d.reply.as_deref(), Some(&[0, 0, 0, 11][..]));
    assert!((d.positions[0].lat - -33.5269298).abs() < 1e-7);
}

#[test]
fn codec16_uses_two_byte_ids_and_a_generation_byte() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(&mut s, &corpus_hex(24)).unwrap();
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2018, 7, 26, 20, 43, 43).unwrap()
    );
    assert!((p.lat - -33.4379166).abs() < 1e-7 && (p.lon - -70.64967).abs() < 1e-7);
    assert_eq!(p.attrs.get(&AttrKey::Io(273)), Some(&AttrValue::Int(0)));
}

#[test]
fn binary_codec12_answer_is_reported_as_hex() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(&mut s, &corpus_hex(20)).unwrap();
    assert!(d.positions.is_empty() && d.reply.is_none());
    assert_eq!(d.command_response.unwrap().text, "010300010015d5c5");
}

#[test]
fn codec13_answer_skips_its_timestamp() {
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let d = feed(&mut s, &corpus_hex(8)).unwrap();
    assert_eq!(d.command_response.unwrap().text, "GTSL|6|1|0|12749884|1|");
}

#[test]
fn udp_command_answer_is_not_acked() {
    // The Codec 12 answer of corpus line 20 wrapped in a UDP header.
    let tcp = corpus_hex(20);
    let body = &tcp[8..tcp.len() - 4];
    let imei = b"352093086403655";
    let mut pkt = Vec::new();
    let len = 2 + 1 + 1 + 2 + imei.len() + body.len();
    pkt.extend_from_slice(&(len as u16).to_be_bytes());
    pkt.extend_from_slice(&[0xca, 0xfe, 0x01, 0x07, 0x00, 0x0f]);
    pkt.extend_from_slice(imei);
    pkt.extend_from_slice(body);
    let mut s = TeltonikaSession::new(Transport::Udp);
    let d = feed(&mut s, &pkt).unwrap();
    assert!(d.reply.is_none());
    assert!(d.command_response.is_some());
    assert_eq!(d.device, Some(DeviceId::new("352093086403655")));
}

#[test]
fn alarm_and_driver_io_elements_map_to_typed_fields() {
    let t = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let rec = AvlRecord {
        time: t,
        lat: 55.75,
        lon: 37.61,
        speed_kmh: 0,
        course: 0,
        altitude: 0,
        satellites: 7,
        io: vec![
            (io::UNPLUG, 1, 1),
            (io::IBUTTON, 8, 0x0807060504030201),
            (io::BATTERY_VOLTAGE, 2, 4012),
        ],
    };
    let d = feed(
        &mut TeltonikaSession::new(Transport::Tcp),
        &encode_avl_packet(CODEC_8, &[rec]),
    )
    .unwrap();
    let p = &d.positions[0];
    assert_eq!(p.alarm, Some("power_cut"));
    assert_eq!(
        p.attrs.get_name("driver_id"),
        Some(&AttrValue::Text("0102030405060708".into()))
    );
    assert_eq!(
        p.attrs.get_name("battery_v"),
        Some(&AttrValue::Float(4.012))
    );
}

#[test]
fn handshake_and_data_split_and_concatenated_are_cut_in_order() {
    let imei = encode_imei("356307042441013");
    let data = encode_avl_packet(CODEC_8, &sample_records());
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let mut both = imei.to_vec();
    both.extend_from_slice(&data);
    assert_eq!(s.next_frame(&both).unwrap(), FrameCut::Frame(imei.len()));
    let rest = &both[imei.len()..];
    assert_eq!(
        s.next_frame(&rest[..rest.len() - 1]).unwrap(),
        FrameCut::NeedMore
    );
    assert_eq!(s.next_frame(rest).unwrap(), FrameCut::Frame(rest.len()));
    assert_eq!(
        s.next_frame(&[0xff, 0, 0]).unwrap(),
        FrameCut::Frame(1),
        "keep-alive byte"
    );
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Teltonika) {
        for mut m in crate::protocols::fuzz::truncations_and_mutations(&p, 32, &mut seed) {
            for t in [Transport::Tcp, Transport::Udp] {
                let new = || -> Box<dyn Session> { Box::new(TeltonikaSession::new(t)) };
                crate::protocols::fuzz::exercise(Protocol::Teltonika, new, &m);
            }
            // With the CRC fixed up, so that the record parser sees the mutation too.
            if m.len() >= 12 && m[..4] == [0, 0, 0, 0] {
                let n = m.len();
                let crc = u32::from(CRC16_IBM.checksum(&m[8..n - 4]));
                m[n - 4..].copy_from_slice(&crc.to_be_bytes());
                let new =
                    || -> Box<dyn Session> { Box::new(TeltonikaSession::new(Transport::Tcp)) };
                crate::protocols::fuzz::exercise(Protocol::Teltonika, new, &m);
            }
        }
    }
}

#[test]
fn codec13_answer_with_a_millisecond_timestamp_is_still_read_as_text() {
    // Corpus line 18: 8-byte timestamp 0x0000016c0a81c320 (ms) before "getinfo".
    let pkt = hex::decode("00000000000000170d01050000000f0000016c0a81c320676574696e666f0100006855")
        .unwrap();
    let d = feed(&mut TeltonikaSession::new(Transport::Tcp), &pkt).unwrap();
    assert_eq!(d.command_response.unwrap().text, "getinfo");
}

#[test]
fn engine_stop_and_resume_are_setdigout_in_codec12_byte_for_byte() {
    // Expected bytes computed independently (CRC-16/IBM over codec..count).
    let mut s = TeltonikaSession::new(Transport::Tcp);
    let stop = s
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(
        hex::encode(stop),
        "00000000000000130c01050000000b7365746469676f7574203101000087a2"
    );
    let resume = s
        .encode_command(&DeviceCommand {
            seq: 2,
            body: CommandBody::EngineResume,
        })
        .unwrap();
    assert_eq!(
        hex::encode(resume),
        "00000000000000130c01050000000b7365746469676f7574203001000017a3"
    );
}

#[test]
fn record_errors_name_the_field_and_its_offset_in_the_frame() {
    // One Codec 8 record cut after its timestamp, with a valid CRC over what is left.
    let mut data = vec![CODEC_8, 1];
    data.extend_from_slice(&0x16b40d8ea30u64.to_be_bytes());
    let crc = u32::from(CRC16_IBM.checksum(&data));
    let mut pkt = vec![0, 0, 0, 0];
    pkt.extend_from_slice(&(data.len() as u32).to_be_bytes());
    pkt.extend_from_slice(&data);
    pkt.extend_from_slice(&crc.to_be_bytes());
    let e = feed(&mut TeltonikaSession::new(Transport::Tcp), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Truncated);
    assert_eq!(
        e.offset, 18,
        "priority byte right after the 8-byte timestamp"
    );
    assert!(e.what.starts_with("priority"), "{}", e.what);
}
