use super::*;
use crate::model::AttrValue;
use chrono::TimeZone;

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    }
}

/// Cuts one whole frame out of `bytes` and decodes it.
fn feed(s: &mut Gps103Session, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn tcp() -> Gps103Session {
    Gps103Session::new(Transport::Tcp)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn login_is_answered_load_and_heartbeat_on() {
    let mut s = tcp();
    let d = feed(&mut s, b"##,imei:359586015829802,A;").unwrap();
    assert_eq!(d.kind.as_str(), "login");
    assert_eq!(d.device, Some(DeviceId::new("359586015829802")));
    assert_eq!(d.reply.as_deref(), Some(&b"LOAD"[..]));
    let d = feed(&mut s, b"359586015829802;").unwrap();
    assert_eq!(d.kind.as_str(), "heartbeat");
    assert_eq!(d.reply.as_deref(), Some(&b"ON"[..]));
}

#[test]
fn report_time_is_the_utc_fix_time_on_the_local_date_moved_back_a_day() {
    // Real packet (Traccar test data): local 2015-10-27 02:59, fix 23:59:57 UTC the day before.
    let pkt = b"imei:359710049092324,tracker,151027025958,,F,235957.000,A,2429.5156,N,04424.5828,E,0.01,27.91,,0,0,,,;";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert_eq!(d.kind.as_str(), "data");
    assert_eq!(d.reply, None, "reports are not answered");
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2015, 10, 26, 23, 59, 57).unwrap()
    );
    assert!(p.valid);
    assert!(close(p.lat, 24.49193) && close(p.lon, 44.40971), "{p:?}");
    assert!(close(p.speed_kmh, 0.01 * KNOTS_TO_KMH));
    assert!(close(p.course, 27.91));
    assert_eq!(p.ignition, Some(false));
}

#[test]
fn optional_tail_gives_altitude_ignition_fuel_and_temperature() {
    let pkt = b"imei:353451044508750,001,0809231929,13554900601,F,055403.000,A,2233.1870,N,11354.3067,E,0.00,30.1,65.43,1,0,10.5%,0.0%,28;";
    let d = feed(&mut tcp(), pkt).unwrap();
    let p = &d.positions[0];
    assert!(close(p.altitude, 65.43));
    assert_eq!(p.ignition, Some(true));
    assert_eq!(p.attrs.get_name("fuel1"), Some(&AttrValue::Float(10.5)));
    assert_eq!(p.attrs.get_name("temp1"), Some(&AttrValue::Int(28)));
    assert_eq!(
        p.attrs.get_name("event"),
        Some(&AttrValue::Text("001".into()))
    );
}

#[test]
fn hemispheres_before_the_numbers_and_an_empty_east_are_read() {
    let pkt = b"imei:353552045403597,tracker,150420050648,53.0,F,0.0,A,N,5306.64155,E,00700.77848,0.0,,1.0,;";
    let d = feed(&mut tcp(), pkt).unwrap();
    let p = &d.positions[0];
    assert!(close(p.lat, 53.110693) && close(p.lon, 7.012975), "{p:?}");
    assert!(close(p.altitude, 1.0));
    let pkt =
        b"imei:012497000208821,tracker,1301072224,,F,142411.077,A,2227.0739,S,06855.2912,,0,0,;";
    let p = feed(&mut tcp(), pkt).unwrap().positions.remove(0);
    assert!(close(p.lat, -22.451232) && close(p.lon, 68.92152), "{p:?}");
}

#[test]
fn sos_is_an_alarm_confirmed_with_e() {
    let pkt = b"imei:359586015829802,help me,0809231429,13554900601,F,062947.294,A,2234.4026,N,11354.3277,E,0.00,;";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert_eq!(d.kind.as_str(), "alarm");
    assert_eq!(d.positions[0].alarm, Some("sos"));
    assert_eq!(d.reply.as_deref(), Some(&b"**,imei:359586015829802,E;"[..]));
}

#[test]
fn cell_report_without_fix_is_status_with_lac_and_cid() {
    let pkt = b"imei:864895030279986,ac alarm,180404174252,,L,,,296a,,51f7,,,;";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert!(d.positions.is_empty());
    let a = d.status.expect("status");
    assert_eq!(a.get_name("lac"), Some(&AttrValue::Int(0x296a)));
    assert_eq!(a.get_name("cell_id"), Some(&AttrValue::Int(0x51f7)));
    assert_eq!(
        a.get_name("alarm"),
        Some(&AttrValue::Text("power_cut".into()))
    );
}

#[test]
fn variant_ending_in_star_has_decimal_degrees_and_kmh() {
    let pkt = b"imei:861359038609986,Equipo 1,---,------,----,214734,241018,26,1,-33.42317,-70.61930,067,229,0674,1.00,08,0,1,---,*";
    let d = feed(&mut tcp(), pkt).unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2018, 10, 24, 21, 47, 34).unwrap()
    );
    assert!(close(p.lat, -33.42317) && close(p.lon, -70.6193));
    assert!(close(p.speed_kmh, 67.0));
    assert_eq!(p.satellites, Some(8));
}

#[test]
fn obd_report_is_status_not_a_position() {
    let pkt = b"imei:359710049090138,OBD,160629022949,51442,0.00,15.88,5632,122,40.39%,95,0.00%,2101,13.80,,,,;";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert!(d.positions.is_empty());
    let a = d.status.expect("status");
    assert_eq!(a.get_name("rpm"), Some(&AttrValue::Int(2101)));
    assert_eq!(a.get_name("battery_v"), Some(&AttrValue::Float(13.8)));
}

#[test]
fn minutes_of_60_or_more_are_no_fix() {
    let pkt = b"imei:359710049092324,tracker,151027025958,,F,235957.000,A,2465.0000,N,04424.5828,E,0.01,27.91,;";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(d.kind.as_str(), "other");
}

#[test]
fn tcp_stream_is_cut_at_delimiters_and_where_the_next_message_starts() {
    let mut s = tcp();
    let stream = b"##,imei:359586015829802,A;\r\n359586015829802imei:359586015829802,tracker,0809231929,,F,062947.294,A,2234.4026,N,11354.3277,E,0.00,imei:359586015829802,tracker,";
    assert_eq!(s.next_frame(stream), Ok(FrameCut::Frame(28)), "`;` CR LF");
    let rest = &stream[28..];
    assert_eq!(
        s.next_frame(rest),
        Ok(FrameCut::Frame(15)),
        "heartbeat glued on"
    );
    let rest = &rest[15..];
    let Ok(FrameCut::Frame(n)) = s.next_frame(rest) else {
        panic!("a report without delimiter is cut at the next `imei:`")
    };
    assert!(rest[..n].ends_with(b"0.00,"));
    assert_eq!(s.next_frame(&rest[n..]), Ok(FrameCut::NeedMore));
    assert!(s.next_frame(&[b'1'; MAX_FRAME]).is_err(), "no delimiter");
}

#[test]
fn a_udp_datagram_may_carry_several_sentences_the_last_unterminated() {
    let mut s = Gps103Session::new(Transport::Udp);
    let dgram = b"359586015829802;imei:359586015829802,tracker,0809231929,,F,062947.294,A,2234.4026,N,11354.3277,E,0.00,";
    assert_eq!(s.next_frame(dgram), Ok(FrameCut::Frame(16)));
    let rest = &dgram[16..];
    assert_eq!(s.next_frame(rest), Ok(FrameCut::Frame(rest.len())));
    assert_eq!(s.decode(rest, &ctx()).unwrap().positions.len(), 1);
}

#[test]
fn unterminated_corpus_sentences_decode_once_terminated() {
    // Traccar's tests feed its decoder without the framer, so 40 corpus packets lack the `;`
    // a device sends (corpus-misses.tsv). With it, each decodes as the corpus expects.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/gps103/corpus.jsonl");
    let entries = crate::protocols::corpus::load(&path).unwrap();
    let mut checked = 0;
    for e in entries {
        let payload = e.payload.clone().unwrap_or_default();
        if payload.ends_with([';', '*', '\n']) {
            continue;
        }
        let mut s = tcp();
        let mut buf = format!("{payload};").into_bytes();
        let mut positions = 0;
        let mut anything = false;
        while let Ok(FrameCut::Frame(n)) = s.next_frame(&buf) {
            let d = s.decode(&buf[..n], &ctx()).unwrap();
            positions += d.positions.len();
            anything |= d.device.is_some();
            buf.drain(..n);
        }
        match e.expect.as_str() {
            "position" => assert_eq!(positions, 1, "{payload}"),
            "null" => assert_eq!(positions, 0, "{payload}"),
            _ => assert!(anything, "{payload}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 40);
}

#[test]
fn engine_commands_are_coban_j_and_k() {
    let mut s = tcp();
    let cmd = |body| DeviceCommand { seq: 1, body };
    assert_eq!(
        s.encode_command(&cmd(CommandBody::EngineStop)),
        Err(CommandError::NotIdentified("gps103"))
    );
    feed(&mut s, b"##,imei:123456789012345,A;").unwrap();
    assert_eq!(
        s.encode_command(&cmd(CommandBody::EngineStop)).unwrap(),
        &b"**,imei:123456789012345,J"[..]
    );
    assert_eq!(
        s.encode_command(&cmd(CommandBody::EngineResume)).unwrap(),
        &b"**,imei:123456789012345,K"[..]
    );
    // The reference server's encoder test vector for a custom command.
    assert_eq!(
        s.encode_command(&cmd(CommandBody::Text("H,080".into())))
            .unwrap(),
        &b"**,imei:123456789012345,H,080"[..]
    );
}

#[test]
fn encoded_report_round_trips() {
    let fix = Fix {
        time: Utc.with_ymd_and_hms(2026, 11, 20, 23, 30, 5).unwrap(),
        tz_minutes: 180,
        lat: 55.751_23,
        lon: -37.617_89,
        speed_knots: 21.5,
        course: 90.0,
        keyword: "tracker",
    };
    let d = feed(&mut tcp(), &encode_report("359586015829802", &fix)).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, fix.time, "local date is the next day");
    assert!((p.lat - fix.lat).abs() < 1e-6 && (p.lon - fix.lon).abs() < 1e-6);
    assert!(close(p.speed_kmh, 21.5 * KNOTS_TO_KMH));
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Gps103) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 30, &mut seed) {
            for t in [Transport::Tcp, Transport::Udp] {
                crate::protocols::fuzz::exercise(
                    Protocol::Gps103,
                    || Box::new(Gps103Session::new(t)),
                    &m,
                );
            }
        }
    }
}
