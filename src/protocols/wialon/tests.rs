use chrono::TimeZone;

use super::*;
use crate::protocols::{DecodeReason, MessageKind};

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap(),
    }
}

/// Cut exactly one frame out of `bytes` and decode it.
fn feed(s: &mut WialonSession, bytes: &[u8]) -> Decoded {
    match s.next_frame(bytes).unwrap() {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &ctx()).unwrap()
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn line(text: &str) -> Vec<u8> {
    format!("{text}\r\n").into_bytes()
}

fn reply(d: &Decoded) -> &str {
    std::str::from_utf8(d.reply.as_deref().expect("a reply")).unwrap()
}

fn tcp() -> WialonSession {
    WialonSession::new(Transport::Tcp)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

// Real packets below are from Traccar's WialonProtocolDecoderTest (see protocols/wialon/NOTICE.md)
// and from the examples of the Wialon IPS 1.1 / 2.0 specifications.

#[test]
fn login_1_1_identifies_the_device_and_answers_al1() {
    let mut s = tcp();
    let d = feed(&mut s, &line("#L#123456789012345;test"));
    assert_eq!(d.device, Some(DeviceId::new("123456789012345")));
    assert_eq!(reply(&d), "#AL#1\r\n");
    assert_eq!(d.kind, MessageKind::Login);
    assert_eq!(s.version(), Some(Version::V1_1));
}

#[test]
fn login_2_0_with_valid_crc_answers_al1_and_switches_to_2_0() {
    // CRC 8A7 over "2.0;236010173;NA;", written without its leading zero by the device.
    let mut s = tcp();
    let d = feed(&mut s, &line("#L#2.0;236010173;NA;8A7"));
    assert_eq!(d.device, Some(DeviceId::new("236010173")));
    assert_eq!(reply(&d), "#AL#1\r\n");
    assert_eq!(s.version(), Some(Version::V2_0));
}

#[test]
fn login_2_0_with_wrong_crc_answers_al10_without_identifying() {
    // The CRC-16/IBM of "2.0;42001300083;;" is DBEB, not CE45: the 2.0 checksum error code.
    let mut s = tcp();
    let d = feed(&mut s, &line("#L#2.0;42001300083;;CE45"));
    assert_eq!(reply(&d), "#AL#10\r\n");
    assert_eq!(d.device, None);
    assert_eq!(d.kind, MessageKind::CrcError);
}

#[test]
fn refused_login_is_answered_al0() {
    assert_eq!(tcp().reject_reply().as_deref(), Some(&b"#AL#0\r\n"[..]));
    let d = feed(&mut tcp(), &line("#L#;NA"));
    assert_eq!(reply(&d), "#AL#0\r\n");
    assert_eq!(d.device, None);
}

#[test]
fn ping_is_answered_ap() {
    let d = feed(&mut tcp(), &line("#P#"));
    assert_eq!(reply(&d), "#AP#\r\n");
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert!(d.positions.is_empty());
}

#[test]
fn short_data_decodes_time_coordinates_and_motion_fields() {
    let d = feed(
        &mut tcp(),
        &line("#SD#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4"),
    );
    assert_eq!(reply(&d), "#ASD#1\r\n");
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2013, 4, 27, 20, 56, 1).unwrap()
    );
    assert!(close(p.lat, 55.0 + 44.6025 / 60.0));
    assert!(close(p.lon, 37.0 + 39.6834 / 60.0));
    assert_eq!((p.speed_kmh, p.course, p.altitude), (1.0, 2.0, 3.0));
    assert_eq!(p.satellites, Some(4));
    assert!(p.valid, "4 satellites");
}

#[test]
fn southern_and_western_hemispheres_are_negative() {
    let d = feed(
        &mut tcp(),
        &line("#SD#010126;000000;3352.1234;S;07037.5000;W;0;0;0;2"),
    );
    let p = &d.positions[0];
    assert!(close(p.lat, -(33.0 + 52.1234 / 60.0)));
    assert!(close(p.lon, -(70.0 + 37.5 / 60.0)));
    assert!(!p.valid, "2 satellites is no fix");
}

#[test]
fn extended_data_decodes_hdop_io_adc_and_typed_params() {
    let d = feed(
        &mut tcp(),
        &line("#D#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4;0.0;0;0;14.77,0.02,3.6;NA;count1:1:564,fuel:2:45.8,hw:3:V4.5"),
    );
    assert_eq!(reply(&d), "#AD#1\r\n");
    let p = &d.positions[0];
    assert_eq!(p.inputs, Some(0));
    assert_eq!(p.outputs, Some(0));
    let a = &p.attrs;
    assert_eq!(a.get_name("hdop"), Some(&AttrValue::Float(0.0)));
    assert_eq!(a.get_name("adc1"), Some(&AttrValue::Float(14.77)));
    assert_eq!(a.get_name("adc3"), Some(&AttrValue::Float(3.6)));
    assert_eq!(a.get_name("count1"), Some(&AttrValue::Int(564)));
    assert_eq!(a.get_name("fuel"), Some(&AttrValue::Float(45.8)));
    assert_eq!(a.get_name("hw"), Some(&AttrValue::Text("V4.5".into())));
}

#[test]
fn well_known_params_fill_typed_fields() {
    let d = feed(
        &mut tcp(),
        &line("#D#151216;140203;5312.59514;N;04830.37834;E;53;273;NA;10;NA;5;1;NA;AB45DF01145;EvId:1:1,Board:2:12.81,ign:1:1,SOS:1:1"),
    );
    let p = &d.positions[0];
    assert_eq!(p.power_v, Some(12.81));
    assert_eq!(p.ignition, Some(true));
    assert_eq!(p.alarm, Some("sos"));
    assert_eq!(p.inputs, Some(5), "inputs are a decimal bit mask");
    assert_eq!(p.outputs, Some(1));
    assert_eq!(
        p.attrs.get_name("evid"),
        Some(&AttrValue::Int(1)),
        "names are lower-cased"
    );
    assert_eq!(
        p.attrs.get_name("driver_unique_id"),
        Some(&AttrValue::Text("AB45DF01145".into()))
    );
}

#[test]
fn extended_data_2_0_crc_is_checked_and_stripped() {
    let d = feed(
        &mut tcp(),
        &line("#D#220323;114150;2234.80479;N;11354.87786;E;0;NA;59;11;NA;NA;NA;;NA;d_battr:1:94,d_csq:1:21,di_light:1:1;E7C9"),
    );
    assert_eq!(reply(&d), "#AD#1\r\n");
    let p = &d.positions[0];
    assert_eq!(
        p.attrs.get_name("di_light"),
        Some(&AttrValue::Int(1)),
        "the CRC is not part of the params"
    );
    assert_eq!(p.altitude, 59.0);
}

#[test]
fn bad_crc_is_answered_with_each_packets_checksum_code() {
    let mut s = tcp();
    let d = feed(
        &mut s,
        &line("#D#220323;114150;2234.80479;N;11354.87786;E;0;NA;59;11;NA;NA;NA;;NA;d_battr:1:94,d_csq:1:21,di_light:1:1;E7CA"),
    );
    assert_eq!(reply(&d), "#AD#16\r\n");
    assert_eq!(d.kind, MessageKind::CrcError);
    assert!(d.positions.is_empty());
    let d = feed(
        &mut s,
        &line("#SD#300924;154245;5554.350052;N;3644.670410;E;2.92;NA;NA;NA;7A02"),
    );
    assert_eq!(reply(&d), "#ASD#13\r\n");
    let good = feed(
        &mut s,
        &line("#SD#300924;154245;5554.350052;N;3644.670410;E;2.92;NA;NA;NA;7A01"),
    );
    assert_eq!(reply(&good), "#ASD#1\r\n");
}

#[test]
fn na_date_and_time_take_the_server_time() {
    let d = feed(
        &mut tcp(),
        &line("#D#NA;NA;5429.681944502211763;N;02654.60403650999069;E;NA;NA;NA;NA;NA;NA;NA;1.0;NA;m1:1:9196679,d1:1:15397,t1:1:20,b1:1:162,fuel1:2:21588.0,pv1:2:35.98,finish:1:1;0x9b0"),
    );
    let p = &d.positions[0];
    assert_eq!(p.fix_time, ctx().now);
    assert!(close(p.lat, 54.0 + 29.681944502211763 / 60.0));
    assert!(p.valid, "coordinates without a satellite count");
}

#[test]
fn na_coordinates_give_status_without_a_fix() {
    let d = feed(
        &mut tcp(),
        &line("#D#NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;NA;;NA;SOS:1:0,temp:3:18,bat:3:99"),
    );
    assert!(d.positions.is_empty());
    assert_eq!(reply(&d), "#AD#1\r\n");
    let st = d.status.unwrap();
    assert_eq!(st.get_name("device_temp"), Some(&AttrValue::Float(18.0)));
    assert_eq!(st.get_name("battery_level"), Some(&AttrValue::Int(99)));
    let d = feed(
        &mut tcp(),
        &line("#D#120319;112003;NA;NA;NA;NA;0.000;NA;NA;0;NA;NA;NA;NA;NA;motion:3:false"),
    );
    assert!(d.positions.is_empty());
    assert_eq!(
        d.status.unwrap().get_name("motion"),
        Some(&AttrValue::Bool(false))
    );
}

#[test]
fn malformed_fields_get_the_specified_refusal_codes() {
    let cases = [
        (
            "#SD#270413;205601;5544.6025;N;03739.6834;E;1;2;3",
            "#ASD#-1\r\n",
        ),
        (
            "#SD#321399;205601;5544.6025;N;03739.6834;E;1;2;3;4",
            "#ASD#0\r\n",
        ),
        (
            "#SD#270413;205601;55x4.6025;N;03739.6834;E;1;2;3;4",
            "#ASD#10\r\n",
        ),
        (
            "#SD#270413;205601;5544.6025;N;03739.6834;E;fast;2;3;4",
            "#ASD#11\r\n",
        ),
        (
            "#SD#270413;205601;5544.6025;N;03739.6834;E;1;2;3;many",
            "#ASD#12\r\n",
        ),
        (
            "#D#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4;x;0;0;NA;NA;NA",
            "#AD#12\r\n",
        ),
        (
            "#D#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4;1;zz;0;NA;NA;NA",
            "#AD#13\r\n",
        ),
        (
            "#D#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4;1;0;0;1.5,volts;NA;NA",
            "#AD#14\r\n",
        ),
    ];
    for (pkt, want) in cases {
        let d = feed(&mut tcp(), &line(pkt));
        assert_eq!(reply(&d), want, "{pkt}");
        assert!(d.positions.is_empty(), "{pkt}");
    }
}

#[test]
fn black_box_decodes_every_message_and_acks_the_count() {
    let d = feed(
        &mut tcp(),
        &line("#B#080914;073235;5027.50625;N;03026.19321;E;0.700;0.000;NA;4;NA;NA;NA;;NA;Батарея:3:100 %|080914;073420;5027.50845;N;03026.18854;E;1.996;292.540;NA;4;NA;NA;NA;;NA;Батарея:3:100 %"),
    );
    assert_eq!(reply(&d), "#AB#2\r\n");
    assert_eq!(d.positions.len(), 2);
    assert_eq!(
        d.positions[1].fix_time,
        Utc.with_ymd_and_hms(2014, 9, 8, 7, 34, 20).unwrap()
    );
    assert_eq!(
        d.positions[0].attrs.get_name("archive"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(
        d.positions[0].attrs.get_name("батарея"),
        Some(&AttrValue::Text("100 %".into()))
    );
}

#[test]
fn udp_datagrams_carry_the_device_id_and_version_prefix() {
    let mut s = WialonSession::new(Transport::Udp);
    let d = feed(
        &mut s,
        b"2.0;99999999#D#101118;061143;0756.0930;N;12338.6403;E;18.223;99.766;-4.000;10;0.800;NA;NA;NA;NA;101_521347:1:521249,101_521126:1:6593598,101_521127:1:774780,101_521072_21.1:1:0,101_521072_21.2:1:71353;F24A",
    );
    assert_eq!(reply(&d), "#AD#1\r\n");
    assert_eq!(d.positions.len(), 1);
    assert_eq!(d.positions[0].altitude, -4.0);
    assert_eq!(d.device, Some(DeviceId::new("99999999")));

    let two = b"1#P#\r\n2#P#\r\n";
    assert_eq!(
        s.next_frame(two).unwrap(),
        FrameCut::Frame(6),
        "one line per frame"
    );
    let d = feed(
        &mut s,
        b"99999999#SD#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4",
    );
    assert_eq!(d.device, Some(DeviceId::new("99999999")));
    assert_eq!(d.positions.len(), 1);
    assert_eq!(reply(&d), "#ASD#1\r\n");
}

#[test]
fn tcp_framing_handles_split_and_concatenated_lines() {
    let mut s = tcp();
    let a = line("#L#123456789012345;NA");
    let b = line("#P#");
    // Split: the first part (with its line end missing) is not a frame once lines are known.
    assert_eq!(s.next_frame(&a[..10]).unwrap(), FrameCut::NeedMore);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    assert_eq!(s.next_frame(&both).unwrap(), FrameCut::Frame(a.len()));
    assert_eq!(
        s.next_frame(&both[a.len()..]).unwrap(),
        FrameCut::Frame(b.len())
    );
    // After a terminated line, an unterminated but well-formed packet waits for its end.
    assert_eq!(
        s.next_frame(b"#SD#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4")
            .unwrap(),
        FrameCut::NeedMore
    );
    // Blank lines are skipped.
    assert_eq!(s.next_frame(b"\r\n#P#\r\n").unwrap(), FrameCut::Skip(2));
}

#[test]
fn unterminated_packets_are_frames_only_when_structurally_complete() {
    // A device that has not (yet) sent a line end: complete packets are accepted.
    let mut s = tcp();
    let sd = b"#SD#270413;205601;5544.6025;N;03739.6834;E;1;2;3;4";
    assert_eq!(s.next_frame(sd).unwrap(), FrameCut::Frame(sd.len()));
    assert_eq!(
        s.next_frame(&sd[..40]).unwrap(),
        FrameCut::NeedMore,
        "too few fields"
    );
    // 2.0: the CRC proves the end; a cut CRC does not match.
    let d = b"#SD#300924;154245;5554.350052;N;3644.670410;E;2.92;NA;NA;NA;7A01";
    assert_eq!(s.next_frame(d).unwrap(), FrameCut::Frame(d.len()));
    assert_eq!(s.next_frame(&d[..d.len() - 1]).unwrap(), FrameCut::NeedMore);
}

#[test]
fn line_without_end_over_the_limit_is_refused() {
    let mut s = tcp();
    let mut big = b"#D#".to_vec();
    big.resize(MAX_FRAME + 10, b'1');
    assert_eq!(
        s.next_frame(&big).unwrap_err().reason,
        DecodeReason::TooLarge
    );
}

#[test]
fn photo_packet_frame_includes_its_binary_image() {
    let mut s = tcp();
    let mut pkt = line("#I#4;0;1;010126;120000;a.jpg");
    pkt.extend_from_slice(&[0xFF, 0xD8, 0x0A, 0xD9]);
    assert_eq!(
        s.next_frame(&pkt[..pkt.len() - 1]).unwrap(),
        FrameCut::NeedMore
    );
    assert_eq!(s.next_frame(&pkt).unwrap(), FrameCut::Frame(pkt.len()));
    assert_eq!(s.decode(&pkt, &ctx()).unwrap().kind, MessageKind::Other);
}

#[test]
fn engine_commands_are_driver_messages_in_1_1_and_2_0() {
    let mut s = tcp();
    feed(&mut s, &line("#L#123456789012345;NA"));
    let stop = s
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(&stop[..], b"#M#L1=1\r\n");
    let resume = s
        .encode_command(&DeviceCommand {
            seq: 2,
            body: CommandBody::EngineResume,
        })
        .unwrap();
    assert_eq!(&resume[..], b"#M#L1=0\r\n");

    let mut s2 = tcp();
    feed(&mut s2, &line("#L#2.0;236010173;NA;8A7"));
    // CRC-16/IBM of "L1=1;" is BDDA.
    let stop = s2
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(&stop[..], b"#M#L1=1;BDDA\r\n");
    let text = s2
        .encode_command(&DeviceCommand {
            seq: 3,
            body: CommandBody::Text("Hello driver".into()),
        })
        .unwrap();
    assert_eq!(&text[..], b"#M#Hello driver;0798\r\n");
}

#[test]
fn engine_texts_are_configurable_and_framed_packets_pass_through() {
    let mut s = WialonSession::with_engine_texts(Transport::Tcp, "BLOCK ON", "BLOCK OFF");
    let stop = s
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(&stop[..], b"#M#BLOCK ON\r\n");
    let raw = s
        .encode_command(&DeviceCommand {
            seq: 2,
            body: CommandBody::Text("#UC#cfg".into()),
        })
        .unwrap();
    assert_eq!(&raw[..], b"#UC#cfg\r\n");
    let mut udp = WialonSession::new(Transport::Udp);
    assert!(udp
        .encode_command(&DeviceCommand {
            seq: 1,
            body: CommandBody::EngineStop
        })
        .is_err());
}

#[test]
fn device_answers_and_messages_become_command_responses() {
    let mut s = tcp();
    let d = feed(&mut s, &line("#AM#1"));
    let r = d.command_response.unwrap();
    assert_eq!((r.text.as_str(), r.success), ("1", Some(true)));
    assert!(d.reply.is_none());
    let d = feed(&mut s, &line("#AM#0"));
    assert_eq!(d.command_response.unwrap().success, Some(false));
    let d = feed(&mut s, &line("#M#Engine blocked"));
    assert_eq!(d.command_response.as_ref().unwrap().text, "Engine blocked");
    assert_eq!(reply(&d), "#AM#1\r\n");

    let mut s2 = tcp();
    feed(&mut s2, &line("#L#2.0;236010173;NA;8A7"));
    let d = feed(&mut s2, &line("#M#Hello driver;0798"));
    assert_eq!(d.command_response.unwrap().text, "Hello driver");
    let d = feed(&mut s2, &line("#M#Hello driver;0799"));
    assert_eq!(reply(&d), "#AM#01\r\n");
}

fn sample(i: i64) -> IpsRecord {
    IpsRecord {
        time: Some(Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap() + Duration::seconds(i * 10)),
        lat: Some(55.7558 + i as f64 * 0.001),
        lon: Some(-37.6173),
        speed_kmh: Some(42.5),
        course: Some(90.0),
        altitude: Some(150.0),
        satellites: Some(9),
        hdop: Some(0.9),
        inputs: Some(3),
        outputs: Some(1),
        adc: vec![12.5],
        ibutton: Some("0123ABCD".into()),
        params: vec![
            ("ign".into(), ParamValue::Int(1)),
            ("pwr_ext".into(), ParamValue::Double(13.8)),
            ("fw".into(), ParamValue::Text("1.2".into())),
        ],
    }
}

fn check_round_trip(p: &Position, r: &IpsRecord) {
    assert_eq!(Some(p.fix_time), r.time);
    assert!((p.lat - r.lat.unwrap()).abs() < 1e-6);
    assert!((p.lon - r.lon.unwrap()).abs() < 1e-6);
    assert_eq!(p.speed_kmh, 42.5);
    assert_eq!(p.satellites, Some(9));
    assert!(p.valid);
}

#[test]
fn encoded_packets_decode_to_the_same_records_in_1_1_and_2_0() {
    for v2 in [false, true] {
        let mut s = tcp();
        let d = feed(&mut s, &encode_login("123456789012345", None, v2));
        assert_eq!(reply(&d), "#AL#1\r\n");
        if v2 {
            assert_eq!(
                &encode_login("123456789012345", None, true)[..],
                b"#L#2.0;123456789012345;NA;15CD\r\n"
            );
        }
        let r = sample(0);
        let d = feed(&mut s, &encode_data(&r, v2));
        assert_eq!(reply(&d), "#AD#1\r\n");
        let p = &d.positions[0];
        check_round_trip(p, &r);
        assert_eq!(p.ignition, Some(true));
        assert_eq!(p.power_v, Some(13.8));
        assert_eq!((p.inputs, p.outputs), (Some(3), Some(1)));
        assert_eq!(p.attrs.get_name("fw"), Some(&AttrValue::Text("1.2".into())));

        let d = feed(&mut s, &encode_short_data(&r, v2));
        assert_eq!(reply(&d), "#ASD#1\r\n");
        check_round_trip(&d.positions[0], &r);

        let recs: Vec<_> = (0..3).map(sample).collect();
        let d = feed(&mut s, &encode_black_box(&recs, v2));
        assert_eq!(reply(&d), "#AB#3\r\n");
        for (p, r) in d.positions.iter().zip(&recs) {
            check_round_trip(p, r);
        }
        let d = feed(&mut s, &encode_ping());
        assert_eq!(reply(&d), "#AP#\r\n");

        let mut u = WialonSession::new(Transport::Udp);
        let d = feed(
            &mut u,
            &udp_datagram("123456789012345", &encode_data(&r, v2), v2),
        );
        assert_eq!(d.device, Some(DeviceId::new("123456789012345")));
        check_round_trip(&d.positions[0], &r);
    }
}

#[test]
fn black_box_2_0_with_a_wrong_crc_is_answered_with_an_empty_count() {
    let mut pkt = encode_black_box(&[sample(0), sample(1)], true).to_vec();
    let n = pkt.len();
    pkt[n - 3] = if pkt[n - 3] == b'0' { b'1' } else { b'0' };
    let d = feed(&mut tcp(), &pkt);
    assert_eq!(reply(&d), "#AB#\r\n");
    assert!(d.positions.is_empty());
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Wialon) {
        let mut p = p;
        p.extend_from_slice(b"\r\n");
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 50, &mut seed) {
            for t in [Transport::Tcp, Transport::Udp] {
                crate::protocols::fuzz::exercise(
                    Protocol::Wialon,
                    || Box::new(WialonSession::new(t)),
                    &m,
                );
            }
        }
    }
}
