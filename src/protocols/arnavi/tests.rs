use super::*;
use crate::protocols::{DecodeReason, MessageKind};
use chrono::TimeZone;

// Real packets from the corpus (protocols/arnavi/corpus.jsonl, Traccar's decoder tests).
const HEADER1: &str = "ff22f30c45f5c90f0300";
const HEADER2: &str = "ff23e9ef782de7120300";
const HEADER3: &str = "ff24f30c45f5c90f03000102030405060708";
const PACKAGE_2018: &str = "5b01013c00fd5aaa5a03958b5e42048fd51442050015770097db000000075fd69b130802fa00180900d0c564010f11ea3a5b070009015c00009c005d00008c00fa32010000a65d";
const PACKAGE_2026: &str = "5bae0196008a52a9690373f35c42049746ac420574147529973e00000007ca325cb061ca3200000863fa001e96e553fe006353801a0201b50f5d6c0601010000474e0000005b4e0000005c000017005d000017003203000000330040110034d83b05003579b7200136700e090037c301000039ce0300003a4c0000003b4e0000003c8a0101003db8ab0000404c010000be1e4b00c045002d0000fa3b010000d75d";
const PACKAGE_TWO: &str = "5b01012800a3175f5903513934420447221c42055402781e0900f0c5215b4e0084005c00007c005d0000a300fa3701000029012800a3175f5903513934420447221c42055402781e0900f0c5215b4e0084005c00007c005d0000a300fa37010000295d";
const PACKAGE_TEXT: &str = "5b01030700e3f16b50747261636361721b5d";
const TEXT_V2: &str = "$AV,V2,32768,12487,2277,203,-1,0,0,193,0,0,1,13,200741,5950.6773N,03029.1043E,0.0,0.0,121012,*6E";
const TEXT_V4_NO_FIX: &str = "$AV,V4,85164,20709,1148,418,-1,0,1,192,0,0,0,0,0,0,,,000023,0000.0000N,00000.0000E,0.0,0.0,060180,0,0,32767,*4F";

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
    }
}

fn feed(s: &mut ArnaviSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
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
fn header_v1_identifies_the_device_and_is_answered_7b00007d() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, &hex::decode(HEADER1).unwrap()).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    // IMEI is a little-endian u64: 0x00030fc9f5450cf3.
    assert_eq!(d.device, Some(DeviceId::new("861785007918323")));
    assert_eq!(d.reply.as_deref(), Some(&[0x7B, 0x00, 0x00, 0x7D][..]));
}

#[test]
fn header_v2_is_answered_with_server_time_and_its_byte_sum() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, &hex::decode(HEADER2).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("865209039777769")));
    // 2026-11-24 12:00:00 UTC = 0x6b057c40 → LE 40 7c 05 6b, sum 0x40+0x7c+0x05+0x6b = 0x2c.
    let t = ctx().now.timestamp() as u32;
    assert_eq!(t, 0x6b05_7c40);
    assert_eq!(
        d.reply.as_deref(),
        Some(&[0x7B, 0x04, 0x00, 0x2c, 0x40, 0x7c, 0x05, 0x6b, 0x7D][..])
    );
}

#[test]
fn header_v3_is_one_18_byte_frame() {
    let bytes = hex::decode(HEADER3).unwrap();
    let mut s = ArnaviSession::new();
    assert_eq!(s.next_frame(&bytes[..10]).unwrap(), FrameCut::NeedMore);
    let d = feed(&mut s, &bytes).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("861785007918323")));
}

#[test]
fn data_package_decodes_fix_network_power_and_is_acked_with_its_parcel_number() {
    let mut s = ArnaviSession::new();
    feed(&mut s, &hex::decode(HEADER2).unwrap()).unwrap();
    let d = feed(&mut s, &hex::decode(PACKAGE_2018).unwrap()).unwrap();
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, utc_s("2018-03-15 11:37:33"));
    assert!(p.valid);
    assert!((p.lat - 55.63631).abs() < 1e-5 && (p.lon - 37.20855).abs() < 1e-5);
    // Tag 5 = 00 15 77 00: course 0, altitude 21*10 m, 7 GPS + 7 GLONASS satellites, 0 knots.
    assert_eq!(
        (p.course, p.altitude, p.satellites, p.speed_kmh),
        (0.0, 210.0, Some(14), 0.0)
    );
    assert_eq!(p.power_v, Some(15.082));
    assert_eq!(
        p.attrs.get_name("battery_v"),
        Some(&AttrValue::Float(4.367))
    );
    assert_eq!(p.attrs.get_name("hdop"), Some(&AttrValue::Float(2.19)));
    assert_eq!(p.attrs.get_name("mcc"), Some(&AttrValue::Int(250)));
    assert_eq!(d.reply.as_deref(), Some(&[0x7B, 0x00, 0x01, 0x7D][..]));
}

#[test]
fn can_tags_map_to_rpm_engine_hours_odometer_and_ignition() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, &hex::decode(PACKAGE_2026).unwrap()).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, utc_s("2026-03-05 09:53:14"));
    assert!((p.lat - 55.237743).abs() < 1e-5 && (p.lon - 86.137871).abs() < 1e-5);
    // Tag 5 = 74 14 75 29: 0x74*2 degrees, 0x29 = 41 knots.
    assert_eq!(p.course, 232.0);
    assert!((p.speed_kmh - 41.0 * KNOTS_TO_KMH).abs() < 1e-9);
    assert_eq!(p.ignition, Some(true));
    assert_eq!(p.inputs, Some(0));
    assert_eq!(p.odometer_m, Some(189_213_370.0));
    assert_eq!(p.attrs.get_name("rpm"), Some(&AttrValue::Int(974)));
    assert_eq!(
        p.attrs.get_name("engine_hours"),
        Some(&AttrValue::Float(3430.0))
    );
    assert_eq!(d.reply.as_deref(), Some(&[0x7B, 0x00, 0xAE, 0x7D][..]));
}

#[test]
fn two_packets_in_one_package_give_two_positions_and_one_ack() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, &hex::decode(PACKAGE_TWO).unwrap()).unwrap();
    assert_eq!(d.positions.len(), 2);
    assert_eq!(d.reply.as_deref(), Some(&[0x7B, 0x00, 0x01, 0x7D][..]));
}

#[test]
fn text_packets_are_acked_without_positions() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, &hex::decode(PACKAGE_TEXT).unwrap()).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(d.reply.as_deref(), Some(&[0x7B, 0x00, 0x01, 0x7D][..]));
}

#[test]
fn command_answer_parcel_fd_is_a_response_and_is_not_acked() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, &[0x5B, 0xFD, 0x00, 0x5D]).unwrap();
    assert_eq!(d.kind, MessageKind::CommandResponse);
    assert_eq!(d.reply, None);
    assert_eq!(d.command_response.unwrap().text, "00");
}

#[test]
fn header_and_packages_in_one_read_are_cut_apart_and_split_reads_wait() {
    let header = hex::decode(HEADER1).unwrap();
    let pkg = hex::decode(PACKAGE_TWO).unwrap();
    let mut stream = header.clone();
    stream.extend_from_slice(&pkg);
    stream.extend_from_slice(&pkg);
    let mut s = ArnaviSession::new();
    assert_eq!(s.next_frame(&stream).unwrap(), FrameCut::Frame(10));
    assert_eq!(
        s.next_frame(&stream[10..]).unwrap(),
        FrameCut::Frame(pkg.len())
    );
    for i in 0..pkg.len() {
        assert_eq!(
            s.next_frame(&pkg[..i]).unwrap(),
            FrameCut::NeedMore,
            "prefix {i}"
        );
    }
}

#[test]
fn text_lines_are_cut_at_the_checksum_with_or_without_crlf() {
    let mut s = ArnaviSession::new();
    let line = TEXT_V2.as_bytes();
    let mut stream = line.to_vec();
    stream.extend_from_slice(b"\r\n");
    stream.extend_from_slice(line);
    assert_eq!(
        s.next_frame(&stream).unwrap(),
        FrameCut::Frame(line.len() + 2)
    );
    assert_eq!(s.next_frame(line).unwrap(), FrameCut::Frame(line.len()));
    // Up to the `*` and one digit: the checksum is not complete yet.
    assert_eq!(
        s.next_frame(&line[..line.len() - 1]).unwrap(),
        FrameCut::NeedMore
    );
    // Stray line ends after a frame are skipped.
    assert_eq!(s.next_frame(b"\n$AV").unwrap(), FrameCut::Skip(1));
}

#[test]
fn endless_text_line_is_refused() {
    let mut s = ArnaviSession::new();
    let mut line = b"$AV,".to_vec();
    line.resize(line.len() + 2000, b'1');
    assert_eq!(
        s.next_frame(&line).unwrap_err().reason,
        DecodeReason::TooLarge
    );
}

#[test]
fn text_v2_line_decodes_to_a_position_in_knots_converted() {
    let mut s = ArnaviSession::new();
    let d = feed(&mut s, TEXT_V2.as_bytes()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("32768")));
    assert_eq!(d.reply, None);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, utc_s("2012-10-12 20:07:41"));
    assert!(p.valid);
    assert!((p.lat - (59.0 + 50.6773 / 60.0)).abs() < 1e-9);
    assert!((p.lon - (30.0 + 29.1043 / 60.0)).abs() < 1e-9);
    assert_eq!(p.satellites, Some(13));
    assert_eq!(p.power_v, Some(22.77));
    assert_eq!(p.inputs, Some(193));
    assert_eq!(p.ignition, Some(false));
}

#[test]
fn text_v4_line_reads_altitude_before_the_time() {
    let line = "$AV,V4,999999,12487,2277,203,65534,0,0,193,65535,65535,65535,65535,1,13,80.0,56.1,200741,5950.6773N,03029.1043E,10.0,360.0,121012,65535,65535,65535,SF*6E";
    let d = feed(&mut ArnaviSession::new(), line.as_bytes()).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.altitude, 80.0);
    assert_eq!(p.satellites, Some(13));
    assert!((p.speed_kmh - 18.52).abs() < 1e-9);
}

#[test]
fn text_v4_line_without_fix_is_status_not_a_position() {
    let d = feed(&mut ArnaviSession::new(), TEXT_V4_NO_FIX.as_bytes()).unwrap();
    assert!(d.positions.is_empty());
    let st = d.status.unwrap();
    assert_eq!(st.get_name("power_v"), Some(&AttrValue::Float(11.48)));
    assert_eq!(st.get_name("ignition"), Some(&AttrValue::Bool(true)));
}

#[test]
fn text_info_lines_identify_the_device_only() {
    let line = "$AV,V3DI,85164,20707,-1,19,0008C56A,000879AC,0C000002,863071013041618,89997077111301204297,*0B";
    let d = feed(&mut ArnaviSession::new(), line.as_bytes()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("85164")));
    assert!(d.positions.is_empty() && d.status.is_none());
}

#[test]
fn commands_are_unsupported() {
    let mut s = ArnaviSession::new();
    let cmd = DeviceCommand {
        seq: 1,
        body: super::super::CommandBody::EngineStop,
    };
    assert_eq!(s.encode_command(&cmd), Err(CommandError::Unsupported(NAME)));
}

#[test]
fn encoded_header_and_package_decode_to_the_same_values() {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let recs: Vec<DataRecord> = (0..3)
        .map(|i| DataRecord {
            time: t0 + chrono::Duration::seconds(i * 10),
            lat: 55.7558,
            lon: 37.6173 + i as f32 * 0.001,
            speed_knots: 20,
            course: 90,
            satellites: 0x57,
            power_mv: 12_600,
            ignition: i % 2 == 0,
            inputs: 0b10,
        })
        .collect();
    let mut s = ArnaviSession::new();
    let h = feed(&mut s, &encode_header(HEADER_V1, 861_785_007_918_323)).unwrap();
    assert_eq!(h.device, Some(DeviceId::new("861785007918323")));
    let pkg = encode_package(9, &recs);
    let d = feed(&mut s, &pkg).unwrap();
    assert_eq!(d.positions.len(), 3);
    for (p, r) in d.positions.iter().zip(&recs) {
        assert_eq!(p.fix_time, r.time);
        assert_eq!(p.lat, f64::from(r.lat));
        assert_eq!(p.lon, f64::from(r.lon));
        assert_eq!(p.satellites, Some(12));
        assert_eq!(p.course, 90.0);
        assert!((p.speed_kmh - 20.0 * KNOTS_TO_KMH).abs() < 1e-9);
        assert_eq!(p.power_v, Some(12.6));
        assert_eq!(p.ignition, Some(r.ignition));
        assert_eq!(p.inputs, Some(0b10));
    }
    assert_eq!(d.reply.as_deref(), Some(&[0x7B, 0x00, 9, 0x7D][..]));
    // The per-packet checksum byte is the sum of time and data bytes, as real devices send it.
    let data_len = usize::from(u16::from_le_bytes([pkg[3], pkg[4]]));
    let sum = pkg[5..9 + data_len]
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b));
    assert_eq!(pkg[9 + data_len], sum);
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Arnavi) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 200, &mut seed) {
            crate::protocols::fuzz::exercise(
                Protocol::Arnavi,
                || Box::new(ArnaviSession::new()),
                &m,
            );
        }
    }
}
