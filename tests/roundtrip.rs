//! Property tests: what a device-side encoder builds, our decoder reads back with the same
//! fields (within the protocol's resolution); every command encoder produces output that the
//! protocol's own framer cuts as exactly one frame whose checksum holds.

use bytes::BytesMut;
use chrono::{DateTime, TimeZone, Utc};
use fleetgate::model::Position;
use fleetgate::protocols::codec::SessionCodec;
use fleetgate::protocols::DecodeReason;
use fleetgate::protocols::{
    fuzz, CommandBody, CommandError, DeviceCommand, FrameCut, Protocol, Transport,
};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Feed device packets in order to one session; every frame must decode.
fn decode_all(protocol: Protocol, packets: &[bytes::Bytes]) -> Vec<Position> {
    let mut codec = SessionCodec::new(protocol.session(Transport::Tcp), protocol.max_frame());
    let mut out = Vec::new();
    for p in packets {
        let mut buf = BytesMut::from(&p[..]);
        while let Some(item) = codec.decode(&mut buf).expect("frames") {
            out.extend(item.expect("decodes").positions);
        }
        assert!(buf.is_empty(), "{protocol}: {} bytes left", buf.len());
    }
    out
}

fn time_s() -> impl Strategy<Value = DateTime<Utc>> {
    // 2001..2098: protocols with two-digit years.
    (978_307_200i64..4_070_908_800).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap())
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn teltonika_records_round_trip(
        recs in prop::collection::vec(
            (time_s(), 0u32..1000, -90.0f64..90.0, -180.0f64..180.0, 0u16..300, 0u16..360, -500i16..5000, 0u8..30),
            1..20),
        extended in any::<bool>(),
    ) {
        use fleetgate::protocols::teltonika::*;
        let avl: Vec<AvlRecord> = recs.iter().map(|&(t, ms, lat, lon, speed, course, alt, sats)| AvlRecord {
            time: t + chrono::Duration::milliseconds(ms as i64),
            lat, lon, speed_kmh: speed, course, altitude: alt, satellites: sats, io: vec![],
        }).collect();
        let codec = if extended { CODEC_8E } else { CODEC_8 };
        let got = decode_all(Protocol::Teltonika, &[encode_imei("356307042441013"), encode_avl_packet(codec, &avl)]);
        prop_assert_eq!(got.len(), avl.len());
        for (p, r) in got.iter().zip(&avl) {
            prop_assert_eq!(p.fix_time, r.time);
            prop_assert!(close(p.lat, r.lat, 1e-7) && close(p.lon, r.lon, 1e-7), "{} {} vs {} {}", p.lat, p.lon, r.lat, r.lon);
            prop_assert_eq!(p.speed_kmh, r.speed_kmh as f64);
            prop_assert_eq!(p.course, r.course as f64);
            prop_assert_eq!(p.altitude, r.altitude as f64);
            prop_assert_eq!(p.satellites, Some(r.satellites as u16));
        }
    }

    #[test]
    fn gt06_fixes_round_trip(
        t in time_s(), valid in any::<bool>(), lat in -90.0f64..90.0, lon in -180.0f64..180.0,
        speed in any::<u8>(), course in 0u16..360, sats in 0u8..16, ignition in any::<bool>(), serial in any::<u16>(),
    ) {
        use fleetgate::protocols::gt06::*;
        let fix = GpsFix { time: t, valid, lat, lon, speed_kmh: speed, course, satellites: sats, ignition, cell: (250, 1, 7, 1234) };
        let got = decode_all(Protocol::Gt06, &[encode_login("0356307042441013", serial), encode_gps(&fix, serial.wrapping_add(1))]);
        prop_assert_eq!(got.len(), 1);
        let p = &got[0];
        prop_assert_eq!(p.fix_time, t);
        prop_assert_eq!(p.valid, valid);
        prop_assert!(close(p.lat, lat, 1e-6) && close(p.lon, lon, 1e-6), "{} {} vs {lat} {lon}", p.lat, p.lon);
        prop_assert_eq!(p.speed_kmh, speed as f64);
        prop_assert_eq!(p.course, course as f64);
        prop_assert_eq!(p.ignition, Some(ignition));
    }

    #[test]
    fn jt808_locations_round_trip(
        t in time_s(), valid in any::<bool>(), lat in -90.0f64..90.0, lon in -180.0f64..180.0,
        speed10 in 0u16..3000, course in 0u16..360, alt in -400i16..8000, serial in any::<u16>(),
    ) {
        use fleetgate::protocols::jt808::*;
        let fix = Fix { time: t, valid, lat, lon, speed_kmh: speed10 as f64 / 10.0, course, altitude: alt,
            ignition: false, alarm_flags: 0, odometer_m: None, satellites: None };
        let got = decode_all(Protocol::Jt808, &[encode_location("013912345678", serial, &fix)]);
        prop_assert_eq!(got.len(), 1);
        let p = &got[0];
        prop_assert_eq!(p.fix_time, t);
        prop_assert_eq!(p.valid, valid);
        prop_assert!(close(p.lat, lat, 1e-6) && close(p.lon, lon, 1e-6), "{} {} vs {lat} {lon}", p.lat, p.lon);
        prop_assert!(close(p.speed_kmh, speed10 as f64 / 10.0, 1e-9));
        prop_assert_eq!(p.course, course as f64);
        prop_assert_eq!(p.altitude, alt as f64);
    }

    #[test]
    fn h02_sentences_round_trip(
        t in time_s(), valid in any::<bool>(), lat in -89.9f64..89.9, lon in -179.9f64..179.9,
        knots100 in 0u32..20000, course in 0u16..360,
    ) {
        use fleetgate::protocols::h02::*;
        let fix = Fix { time: t, valid, lat, lon, speed_knots: knots100 as f64 / 100.0, course, status: 0xFFFF_FBFF };
        let got = decode_all(Protocol::H02, &[encode_v1("4209951530", &fix)]);
        prop_assert_eq!(got.len(), 1);
        let p = &got[0];
        prop_assert_eq!(p.fix_time, t);
        prop_assert_eq!(p.valid, valid);
        prop_assert!(close(p.lat, lat, 2e-6) && close(p.lon, lon, 2e-6), "{} {} vs {lat} {lon}", p.lat, p.lon);
        prop_assert!(close(p.speed_kmh, knots100 as f64 / 100.0 * 1.852, 1e-6), "{}", p.speed_kmh);
        prop_assert_eq!(p.course, course as f64);
    }

    #[test]
    fn gps103_reports_round_trip(
        t in time_s(), tz in -660i32..=660, lat in -89.9f64..89.9, lon in -179.9f64..179.9,
        knots100 in 0u32..20000, course100 in 0u32..36000,
    ) {
        use fleetgate::protocols::gps103::*;
        let fix = Fix { time: t, tz_minutes: tz, lat, lon, speed_knots: knots100 as f64 / 100.0, course: course100 as f64 / 100.0, keyword: "tracker" };
        let got = decode_all(Protocol::Gps103, &[encode_login("359586015829802"), encode_report("359586015829802", &fix)]);
        prop_assert_eq!(got.len(), 1);
        let p = &got[0];
        prop_assert_eq!(p.fix_time, t, "local clock {} min from UTC", tz);
        prop_assert!(close(p.lat, lat, 1e-6) && close(p.lon, lon, 1e-6), "{} {} vs {lat} {lon}", p.lat, p.lon);
        prop_assert!(close(p.speed_kmh, knots100 as f64 / 100.0 * 1.852, 1e-6), "{}", p.speed_kmh);
        prop_assert!(close(p.course, course100 as f64 / 100.0, 1e-9));
    }

    #[test]
    fn navtelecom_flex_records_round_trip(
        recs in prop::collection::vec(
            (time_s(), -90.0f64..90.0, -180.0f64..180.0, 0f32..250.0, 0u16..360, any::<u8>()),
            1..20),
    ) {
        use fleetgate::protocols::navtelecom::flex::{encode_record, Fix, FIX_FIELDS};
        use fleetgate::protocols::navtelecom::*;
        let fixes: Vec<Fix> = recs.iter().enumerate().map(|(i, &(time, lat, lon, speed_kmh, course, outputs))| Fix {
            number: i as u32, time, lat, lon, speed_kmh, course, outputs,
        }).collect();
        let records: Vec<Vec<u8>> = fixes.iter().map(encode_record).collect();
        let got = decode_all(Protocol::Navtelecom, &[
            encode_handshake("866795033323864"),
            encode_negotiation(30, FIX_FIELDS),
            encode_archive(&records),
        ]);
        prop_assert_eq!(got.len(), fixes.len());
        for (p, f) in got.iter().zip(&fixes) {
            prop_assert_eq!(p.fix_time, f.time);
            prop_assert!(close(p.lat, f.lat, 1e-6) && close(p.lon, f.lon, 1e-6), "{} {} vs {} {}", p.lat, p.lon, f.lat, f.lon);
            prop_assert_eq!(p.speed_kmh, f64::from(f.speed_kmh));
            prop_assert_eq!(p.course, f64::from(f.course));
            prop_assert_eq!(p.outputs, Some(u32::from(f.outputs)));
        }
    }

    #[test]
    fn autofon_45_positions_round_trip(
        t in time_s(), lat in -89.9f64..89.9, lon in -179.9f64..179.9, knots in any::<u8>(), course in 0u16..360,
    ) {
        use fleetgate::protocols::autofon::*;
        let fix = Fix { time: t, lat, lon, speed_knots: knots, course };
        let got = decode_all(Protocol::Autofon, &[encode_login_45("351513052899314"), encode_position_45(&fix)]);
        prop_assert_eq!(got.len(), 1);
        let p = &got[0];
        prop_assert_eq!(p.fix_time, t);
        prop_assert!(close(p.lat, lat, 1e-6) && close(p.lon, lon, 1e-6), "{} {} vs {lat} {lon}", p.lat, p.lon);
        prop_assert!(close(p.speed_kmh, f64::from(knots) * 1.852, 1e-9));
        prop_assert_eq!(p.course, f64::from(course));
    }

    #[test]
    fn omnicomm_archive_records_round_trip(
        recs in prop::collection::vec(
            // From 2010 on: Omnicomm counts seconds from 2009-01-01.
            (1_262_304_000i64..4_070_908_800, -90.0f64..90.0, -180.0f64..180.0, 0u32..3000, 0u16..360),
            1..20),
        first in any::<u32>(),
    ) {
        use fleetgate::protocols::omnicomm::*;
        let fixes: Vec<Fix> = recs.iter().map(|&(s, lat, lon, speed10, course)| Fix {
            time: Utc.timestamp_opt(s, 0).unwrap(), lat, lon, speed_kmh: f64::from(speed10) / 10.0, course,
        }).collect();
        let got = decode_all(Protocol::Omnicomm, &[encode_identification(353_961_569), encode_archive(first, &fixes)]);
        prop_assert_eq!(got.len(), fixes.len());
        for (p, f) in got.iter().zip(&fixes) {
            prop_assert_eq!(p.fix_time, f.time);
            prop_assert!(close(p.lat, f.lat, 1e-7) && close(p.lon, f.lon, 1e-7), "{} {} vs {} {}", p.lat, p.lon, f.lat, f.lon);
            prop_assert!(close(p.speed_kmh, f.speed_kmh, 1e-9));
            prop_assert_eq!(p.course, f64::from(f.course));
        }
    }

    #[test]
    fn ruptela_records_round_trip(
        recs in prop::collection::vec(
            (time_s(), -90.0f64..90.0, -180.0f64..180.0, 0u16..300, 0u16..360, -500i32..5000, 0u8..30),
            1..10),
    ) {
        use fleetgate::protocols::ruptela::*;
        let rs: Vec<Record> = recs.iter().map(|&(t, lat, lon, speed, course, alt, sats)| Record {
            time: t, lat, lon, speed_kmh: speed, course: course as f64, altitude_m: alt as f64 / 10.0 * 10.0, satellites: sats, io: vec![],
        }).collect();
        let got = decode_all(Protocol::Ruptela, &[encode_records(356307042441013, &rs)]);
        prop_assert_eq!(got.len(), rs.len());
        for (p, r) in got.iter().zip(&rs) {
            prop_assert_eq!(p.fix_time, r.time);
            prop_assert!(close(p.lat, r.lat, 1e-7) && close(p.lon, r.lon, 1e-7), "{} {} vs {} {}", p.lat, p.lon, r.lat, r.lon);
            prop_assert_eq!(p.speed_kmh, r.speed_kmh as f64);
            prop_assert!(close(p.course, r.course, 0.01));
        }
    }

    #[test]
    fn wialon_records_round_trip(
        t in time_s(), lat in -89.9f64..89.9, lon in -179.9f64..179.9, speed in 0u16..300, course in 0u16..360,
        alt in -400i32..8000, sats in 0u16..30,
    ) {
        use fleetgate::protocols::wialon::*;
        let r = IpsRecord { time: Some(t), lat: Some(lat), lon: Some(lon), speed_kmh: Some(speed as f64),
            course: Some(course as f64), altitude: Some(alt as f64), satellites: Some(sats), ..Default::default() };
        let got = decode_all(Protocol::Wialon, &[encode_login("356307042441013", None, false), encode_data(&r, false)]);
        prop_assert_eq!(got.len(), 1);
        let p = &got[0];
        prop_assert_eq!(p.fix_time, t);
        prop_assert!(close(p.lat, lat, 2e-7) && close(p.lon, lon, 2e-7), "{} {} vs {lat} {lon}", p.lat, p.lon);
        prop_assert_eq!(p.speed_kmh, speed as f64);
        prop_assert_eq!(p.course, course as f64);
        prop_assert_eq!(p.altitude, alt as f64);
        prop_assert_eq!(p.satellites, Some(sats));
    }
}

fn seeds() -> &'static fuzz::Seeds {
    static SEEDS: std::sync::OnceLock<fuzz::Seeds> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        fuzz::seeds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols"))
    })
}

/// Protocols whose server commands use the same framing and checksum as device packets, so
/// the protocol's own framer can check them.
const SAME_FRAMING: &[Protocol] = &[
    Protocol::Teltonika,
    Protocol::Gt06,
    Protocol::Jt808,
    Protocol::Egts,
    Protocol::Galileo,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn command_encoders_frame_and_checksum_correctly(text in "[ -~]{1,60}", seq in any::<u32>()) {
        let seeds = seeds();
        for &protocol in Protocol::ALL {
            // The MQTT JSON codec has no transport of its own and no login.
            let Some(&transport) = protocol.transports().first() else { continue };
            let Some(login) = seeds.logins.get(&(protocol, transport)) else { continue };
            let mut codec = SessionCodec::new(protocol.session(transport), protocol.max_frame());
            let mut buf = BytesMut::from(&login[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            for body in [CommandBody::EngineStop, CommandBody::EngineResume, CommandBody::Text(text.clone())] {
                let cmd = DeviceCommand { seq, body: body.clone() };
                match codec.session_mut().encode_command(&cmd) {
                    Ok(bytes) => {
                        prop_assert!(!bytes.is_empty(), "{protocol} {body:?}");
                        if SAME_FRAMING.contains(&protocol) {
                            let mut fresh = protocol.session(transport);
                            let cut = fresh.next_frame(&bytes);
                            prop_assert_eq!(cut.clone(), Ok(FrameCut::Frame(bytes.len())), "{} {:?}: {}", protocol, body, hex::encode(&bytes));
                            if let Err(e) = fresh.decode(&bytes, &fleetgate::protocols::DecodeCtx::now()) {
                                prop_assert!(e.reason != DecodeReason::Crc, "{protocol} {body:?}: {e}");
                            }
                        }
                    }
                    Err(CommandError::Unsupported(_)) => {}
                    Err(e) => prop_assert!(false, "{protocol} after login: {e}"),
                }
            }
        }
    }
}
