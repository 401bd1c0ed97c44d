use super::*;
use crate::protocols::{DecodeReason, MessageKind};
use chrono::TimeZone;

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    }
}

/// Cuts one whole frame out of `bytes` and decodes it.
fn feed(s: &mut H02Session, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn tcp() -> H02Session {
    H02Session::new(Transport::Tcp)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn v1_sentence_decodes_fix_and_is_answered_with_v4_v1_and_server_time() {
    // Real packet (Traccar test data) with the fix the reference test spells out.
    let pkt = b"*HQ,4210051415,V1,164549,A,0956.3869,N,08406.7068,W,000.00,000,221215,FFFFFBFF,712,01,0,0,6#";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("4210051415")));
    assert_eq!(d.kind, MessageKind::Data);
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2015, 12, 22, 16, 45, 49).unwrap()
    );
    assert!(p.valid);
    assert!(
        close(p.lat, 9.93978) && close(p.lon, -84.11178),
        "{} {}",
        p.lat,
        p.lon
    );
    assert_eq!(p.ignition, Some(false), "status bit 10 clear");
    assert_eq!(p.alarm, None);
    assert_eq!(
        p.attrs.get_name("status"),
        Some(&AttrValue::Int(0xFFFF_FBFF))
    );
    assert_eq!(
        p.attrs.get_name("io1"),
        Some(&AttrValue::Text("712".into()))
    );
    // Reply format of the reference server: *HQ,<id>,V4,V1,<yyyyMMddHHmmss>#.
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"*HQ,4210051415,V4,V1,20260501080000#"[..])
    );
}

#[test]
fn speed_in_knots_is_converted_to_kmh() {
    let pkt = b"*HQ,353588020068342,V1,084436,A,3257.01525,N,00655.03865,W,57.78,40,011216,FFFBFFFF,25c,a, 154,b04c#";
    let d = feed(&mut tcp(), pkt).unwrap();
    let p = &d.positions[0];
    assert!((p.speed_kmh - 57.78 * 1.852).abs() < 1e-9);
    assert_eq!(p.course, 40.0);
    assert_eq!(p.alarm, Some("sos"), "status bit 18 clear is SOS");
    assert!(close(p.lat, 32.9502542) && close(p.lon, -6.9173108));
}

#[test]
fn coordinate_variants_dash_degrees_packed_minutes_and_short_degrees() {
    // `-dd-mm.mmmm` (reference test fix -23.48349, -46.85975).
    let d = feed(
        &mut tcp(),
        b"*HQ,1451316409,V1,030149,A,-23-29.0095,S,-46-51.5852,W,2.4,065,070315,FFFFFFFF#",
    )
    .unwrap();
    let p = &d.positions[0];
    assert!(close(p.lat, -23.48349) && close(p.lon, -46.85975));
    // `ddmmmmmm` without a decimal point: 37°57.3392' S, 145°03.7022' E.
    let d = feed(&mut tcp(), b"*HQ,5905101893,V1,105759,A,37573392,S,145037022,E,000.00,173,280122,FF7FFBFF,,,9059e2c,8232,4#").unwrap();
    let p = &d.positions[0];
    assert!(close(p.lat, -(37.0 + 57.3392 / 60.0)) && close(p.lon, 145.0 + 3.7022 / 60.0));
    // Degrees with no leading zeros: 0°38.6508' W (reference fix -0.64418).
    let d = feed(&mut tcp(), b"*HQ,9001000002,V8,213945,A,3542.2043,N,38.6508,W,0.00,170,221025,FBFFF9FF,0,0,0,0,22,31,126,0#").unwrap();
    assert!(close(d.positions[0].lon, -0.64418));
    assert!(d.reply.is_none(), "only V1 is answered");
}

#[test]
fn a_v1_sentence_without_a_position_is_not_answered() {
    for pkt in [
        // Missing N/S.
        &b"*HQ,4210051415,V1,164549,A,0956.3869,,08406.7068,W,000.00,000,221215,FFFFFBFF#"[..],
        // Garbage after V1.
        &b"*HQ,4210051415,V1,garbage,,#"[..],
        // No fix yet (a real sentence of the corpus).
        &b"*HQ,353505510948929,V1,,V,,N,,E,0.00,0,,FFFFF7FF,f0,a,11a0,c0c6#"[..],
    ] {
        let d = feed(&mut tcp(), pkt).unwrap();
        assert!(d.positions.is_empty());
        assert!(d.reply.is_none(), "{}", String::from_utf8_lossy(pkt));
        assert!(d.device.is_some(), "the device is still identified");
    }
}

#[test]
fn v1_minutes_of_60_or_more_are_a_counted_refusal() {
    for pkt in [
        // Minutes of 65: not 55 degrees 65 minutes, a corrupt fix.
        &b"*HQ,4210051415,V1,164549,A,5565.0000,N,03736.0000,E,000.00,000,221215,FFFFFBFF#"[..],
        &b"*HQ,4210051415,V1,164549,A,5545.0000,N,03760.0000,E,000.00,000,221215,FFFFFBFF#"[..],
    ] {
        let mut s = tcp();
        let Ok(FrameCut::Frame(n)) = s.next_frame(pkt) else {
            panic!("not cut: {:?}", String::from_utf8_lossy(pkt));
        };
        let e = s.decode(&pkt[..n], &ctx()).unwrap_err();
        assert_eq!(e.reason, DecodeReason::BadField, "{e}");
    }
    // 59.9999 minutes is still a coordinate.
    let d = feed(
        &mut tcp(),
        b"*HQ,4210051415,V1,164549,A,5559.9999,N,03736.0000,E,000.00,000,221215,FFFFFBFF#",
    )
    .unwrap();
    assert!(close(d.positions[0].lat, 55.0 + 59.9999 / 60.0));
    assert!(d.reply.is_some());
}

#[test]
fn binary_minutes_of_60_or_more_are_refused() {
    let f = crate::protocols::h02::Fix {
        time: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
        valid: true,
        lat: 55.75,
        lon: 37.61,
        speed_knots: 10.0,
        course: 90,
        status: 0xFFFF_FBFF,
    };
    let mut pkt = crate::protocols::h02::encode_binary("4210051415", &f).to_vec();
    assert!(feed(&mut tcp(), &pkt).is_ok());
    // Latitude minutes' first BCD byte (after `$`, 5 id bytes, 6 time bytes, 1 degree byte).
    pkt[1 + 5 + 6 + 1] = 0x65;
    let e = feed(&mut tcp(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::BadField);
}

#[test]
fn empty_validity_is_an_invalid_fix_and_battery_field_before_date_is_skipped() {
    let d = feed(
        &mut tcp(),
        b"*HQ,355488020119695,V1,050418,,2827.61232,N,07703.84822,E,0.00,0,031015,FFFEFBFF#",
    )
    .unwrap();
    assert!(!d.positions[0].valid);
    assert_eq!(
        d.positions[0].fix_time,
        Utc.with_ymd_and_hms(2015, 10, 3, 5, 4, 18).unwrap()
    );
    let d = feed(&mut tcp(), b"*HQ,4210209006,V1,054048,A,2828.2297,N,07733.4332,E,000.5,047,4,080918,EEE7FBDF,4261193,0#").unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2018, 9, 8, 5, 40, 48).unwrap()
    );
    assert_eq!(p.attrs.get_name("battery_level"), Some(&AttrValue::Int(4)));
}

#[test]
fn sentences_without_coordinates_give_no_position() {
    for pkt in [
        &b"*HQ,353505510948929,V1,,V,,N,,E,0.00,0,,FFFFF7FF,f0,a,11a0,c0c6#"[..],
        b"*HQ,353588020068342,V1,000000,V,0.0000,0,0.0000,0,0.00,0.00,000000,ffffffff,000106,000002,000203,004c87,16#",
        b"*HQ,8401016597,BASE,152609,0,0,0,0,211014,FFFFFFFF#",
        b"*HQ,4109198974,#",
    ] {
        let d = feed(&mut tcp(), pkt).unwrap();
        assert!(d.positions.is_empty(), "{}", String::from_utf8_lossy(pkt));
    }
}

#[test]
fn sim_info_fields_before_status_are_skipped() {
    let d = feed(&mut tcp(), b"*HQ,4209951296,V19,214452,A,5201.0178,N,01830.5029,E,000.00,000,200417,,195.63.13.195,89480610500392633029,BFFFFBFF#").unwrap();
    assert_eq!(
        d.positions[0].attrs.get_name("status"),
        Some(&AttrValue::Int(0xBFFF_FBFF))
    );
}

#[test]
fn odometer_block_after_status_is_typed() {
    let d = feed(&mut tcp(), b"*HQ,2130510938,V1,012632,A,0520.0663,N,10028.6324,E,0.286,023,100317,FFFFDFFF,69129336,0,100.0,18,5141,5A20#").unwrap();
    let p = &d.positions[0];
    assert_eq!(p.odometer_m, Some(69_129_336.0));
    assert_eq!(p.altitude, 18.0);
    assert_eq!(p.attrs.get_name("lac"), Some(&AttrValue::Int(0x5141)));
    assert_eq!(p.attrs.get_name("cell_id"), Some(&AttrValue::Int(0x5A20)));
}

#[test]
fn binary_record_decodes_bcd_time_coordinates_flags_and_battery() {
    // Real 45-byte record; the reference test gives 2015-08-31 21:53:21, 4.69898, -74.06971.
    let pkt = hex::decode("24410600082621532131081504419390060740418306000000fffffbfdff0015060000002c02dc0c000000001f").unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("4106000826")));
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2015, 8, 31, 21, 53, 21).unwrap()
    );
    assert!(p.valid);
    assert!(
        close(p.lat, 4.69898) && close(p.lon, -74.06971),
        "{} {}",
        p.lat,
        p.lon
    );
    assert_eq!(
        p.attrs.get_name("battery_level"),
        Some(&AttrValue::Int(100)),
        "6 bars"
    );
    assert_eq!(p.alarm, Some("sos"), "status FFFFFBFD: bit 1 clear");
    assert!(d.reply.is_none(), "binary records are not answered");
}

#[test]
fn binary_record_speed_is_bcd_knots() {
    // 42-byte record: speed 024 knots, course 138.
    let pkt = hex::decode(
        "2435248308419329301047591808172627335900074412294e024138feffffffff01120064ba73005ecc",
    )
    .unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert_eq!(
        d.device,
        Some(DeviceId::new("352483084193293")),
        "42-byte record has an 8-byte id"
    );
    let p = &d.positions[0];
    assert!((p.speed_kmh - 24.0 * 1.852).abs() < 1e-9);
    assert_eq!(p.course, 138.0);
}

#[test]
fn heartbeat_is_echoed_up_to_its_type() {
    let d = feed(&mut tcp(), b"*HQ,135790246811220,HTBT,100#").unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert_eq!(d.reply.as_deref(), Some(&b"*HQ,135790246811220,HTBT#"[..]));
    assert_eq!(
        d.status.unwrap().get_name("battery_level"),
        Some(&AttrValue::Int(100))
    );
    assert!(d.positions.is_empty());
}

#[test]
fn nbr_cells_are_status_and_answered_with_v4_nbr() {
    let pkt =
        b"*HQ,7401004662,NBR,160453,234,10,0,2,21580,27766,-67,21580,27766,-67,291019,FFFFFBFF,6#";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"*HQ,7401004662,V4,NBR,20260501080000#"[..])
    );
    let a = d.status.unwrap();
    assert_eq!(a.get_name("mcc"), Some(&AttrValue::Int(234)));
    assert_eq!(a.get_name("lac"), Some(&AttrValue::Int(21580)));
    assert_eq!(a.get_name("rssi"), Some(&AttrValue::Int(-67)));
}

#[test]
fn short_or_odd_lbs_sentences_do_not_panic() {
    for pkt in [
        &b"*HQ,1,NBR,1,2,3,4,5,121212,FFFFFFFF#"[..],
        b"*HQ,1,NBR,1,2,3,4,121212,FFFFFFFF#",
        b"*HQ,1,NBR#",
        b"*HQ,1,V3,1,2,3,4,5,X,6,7#",
        b"*HQ,1,V3,X#",
        b"*HQ,1,VP1,V,1#",
        b"*HQ,1,VP1,A#",
        b"*HQ,1,V4#",
        b"*HQ,1,SMS#",
    ] {
        let _ = feed(&mut tcp(), pkt);
    }
}

#[test]
fn v4_command_answer_gives_result_and_position() {
    let pkt = b"*TH,2020916012,V4,S20,DONE,130305,050316,A,2212.8745,N,11346.6574,E,14.28,028,220902,F7FFFBFF#";
    let d = feed(&mut tcp(), pkt).unwrap();
    let cr = d.command_response.unwrap();
    assert_eq!(cr.text, "S20,DONE,130305");
    assert_eq!(cr.success, Some(true));
    assert_eq!(
        d.positions[0].fix_time,
        Utc.with_ymd_and_hms(2002, 9, 22, 5, 3, 16).unwrap()
    );
    let d = feed(&mut tcp(), b"*TH,2020916012,V4,S20,ERROR,130305,050316,A,2212.8745,N,11346.6574,E,14.28,028,220902,FFFFFBFF#").unwrap();
    assert_eq!(d.command_response.unwrap().success, Some(false));
    let d = feed(&mut tcp(), b"*HQ,2020916012,V4,S20,DONE,130305#").unwrap();
    assert_eq!(d.command_response.unwrap().text, "S20,DONE,130305");
    assert!(d.positions.is_empty());
}

#[test]
fn sms_answer_is_a_command_response() {
    let d = feed(&mut tcp(), b"*HQ,5226073533,SMS,VOLT:12.9V\nGSM:26#").unwrap();
    assert_eq!(d.command_response.unwrap().text, "VOLT:12.9V\nGSM:26");
}

#[test]
fn lbs_messages_are_status_without_position() {
    for pkt in [
        &b"*hq,356327081001239,VP1,V,470,002,92,3565,0Y92,19433,30Y92,1340,29#"[..],
        b"*HQ,1700086468,LINK,180902,15,0,84,0,0,240517,FFFFFBFF#",
        b"*HQ,353111080001055,V3,044855,28403,01,001450,011473,158,-62,0292,0,X,030817,FFFFFBFF#",
    ] {
        let d = feed(&mut tcp(), pkt).unwrap();
        assert!(d.positions.is_empty());
        assert!(d.status.is_some_and(|a| !a.is_empty()));
    }
}

#[test]
fn framing_waits_for_hash_and_swallows_line_end() {
    let mut s = tcp();
    let pkt = b"*HQ,2705171109,V1,213324,A,5002.5849,N,01433.7822,E,0.00,000,140613,FFFFFFFF#\r\n";
    for n in 1..pkt.len() - 2 {
        assert_eq!(
            s.next_frame(&pkt[..n]).unwrap(),
            FrameCut::NeedMore,
            "prefix {n}"
        );
    }
    assert_eq!(s.next_frame(pkt).unwrap(), FrameCut::Frame(pkt.len()));
    assert_eq!(
        s.next_frame(b"\r\n\0*HQ").unwrap(),
        FrameCut::Skip(3),
        "noise before a marker"
    );
}

#[test]
fn framing_splits_binary_then_text_and_back_to_back_records() {
    // From the reference frame decoder tests: a 32-byte record followed by a sentence.
    let bin =
        hex::decode("2441060116601245431311165035313006004318210e000000fffffbffff0024").unwrap();
    let text = b"*HQ,4106011660,V1,124552,A,5035.3129,N,00431.8211,E,000.20,000,131116,FFFFBFFF#";
    let mut s = tcp();
    let mut buf = bin.clone();
    buf.extend_from_slice(text);
    assert_eq!(s.next_frame(&buf).unwrap(), FrameCut::Frame(32));
    assert_eq!(
        s.next_frame(&buf[32..]).unwrap(),
        FrameCut::Frame(text.len())
    );
    // Two 45-byte records of one device back to back.
    let long = hex::decode("2441090013450831250401145047888000008554650e000000fffff9ffff001006000000000106020299109c01").unwrap();
    let mut two = long.clone();
    two.extend_from_slice(&long);
    assert_eq!(s.next_frame(&two).unwrap(), FrameCut::Frame(45));
    // A lone record is cut at its length; a partial one waits.
    assert_eq!(s.next_frame(&long).unwrap(), FrameCut::Frame(45));
    assert_eq!(s.next_frame(&long[..20]).unwrap(), FrameCut::NeedMore);
}

#[test]
fn sentence_without_hash_beyond_max_frame_is_refused() {
    let mut buf = b"*HQ,1,V1,".to_vec();
    buf.resize(MAX_FRAME, b'1');
    assert_eq!(
        tcp().next_frame(&buf).unwrap_err().reason,
        DecodeReason::TooLarge
    );
}

#[test]
fn udp_datagram_is_one_frame() {
    let mut s = H02Session::new(Transport::Udp);
    let pkt = b"*HQ,2705171109,V1,213324,A,5002.5849,N,01433.7822,E,0.00,000,140613,FFFFFFFF#\r\n";
    assert_eq!(s.next_frame(pkt).unwrap(), FrameCut::Frame(pkt.len()));
    let d = s.decode(pkt, &ctx()).unwrap();
    assert_eq!(d.positions.len(), 1);
}

#[test]
fn engine_commands_match_the_reference_encoder() {
    // Reference encoder test: time 01:02:03, id 123456789012345.
    let t = Utc.with_ymd_and_hms(2026, 5, 1, 1, 2, 3).unwrap();
    let id = "123456789012345";
    assert_eq!(
        &encode_command_at("HQ", id, &CommandBody::EngineStop, t)[..],
        b"*HQ,123456789012345,S20,010203,1,1#"
    );
    assert_eq!(
        &encode_command_at("HQ", id, &CommandBody::EngineResume, t)[..],
        b"*HQ,123456789012345,S20,010203,1,0#"
    );
    assert_eq!(
        &encode_command_at("HQ", id, &CommandBody::Text("S71,22,10".into()), t)[..],
        b"*HQ,123456789012345,S71,010203,22,10#"
    );
    assert_eq!(
        &encode_command_at("HQ", id, &CommandBody::Text("*HQ,1,R1#".into()), t)[..],
        b"*HQ,1,R1#"
    );
}

#[test]
fn commands_need_an_identified_device_and_use_its_maker_tag() {
    let mut s = tcp();
    let cmd = DeviceCommand {
        seq: 1,
        body: CommandBody::EngineStop,
    };
    assert_eq!(
        s.encode_command(&cmd),
        Err(CommandError::NotIdentified("h02"))
    );
    feed(
        &mut s,
        b"*TH,2020916012,V1,050316,A,2212.8745,N,11346.6574,E,14.28,028,220902,FFFFFBFF#",
    )
    .unwrap();
    let out = s.encode_command(&cmd).unwrap();
    assert!(
        out.starts_with(b"*TH,2020916012,S20,") && out.ends_with(b",1,1#"),
        "{out:?}"
    );
}

fn fix() -> Fix {
    Fix {
        time: Utc.with_ymd_and_hms(2026, 5, 1, 8, 30, 15).unwrap(),
        valid: true,
        lat: 55.7558,
        lon: -37.6173,
        speed_knots: 21.0,
        course: 275,
        status: 0xFFFF_FFFF,
    }
}

#[test]
fn encoded_v1_sentence_decodes_to_the_same_fix() {
    let f = fix();
    let d = feed(&mut tcp(), &encode_v1("4106011660", &f)).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, f.time);
    assert!(p.valid && close(p.lat, f.lat) && close(p.lon, f.lon));
    assert!((p.speed_kmh - 21.0 * 1.852).abs() < 1e-6);
    assert_eq!(p.course, 275.0);
    assert_eq!(p.ignition, Some(true));
    let d = feed(&mut tcp(), &encode_heartbeat("4106011660", 80)).unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
}

#[test]
fn encoded_binary_record_decodes_to_the_same_fix() {
    let f = fix();
    let pkt = encode_binary("4106011660", &f);
    assert_eq!(pkt.len(), 32);
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("4106011660")));
    let p = &d.positions[0];
    assert_eq!(p.fix_time, f.time);
    assert!(
        p.valid && close(p.lat, f.lat) && close(p.lon, f.lon),
        "{} {}",
        p.lat,
        p.lon
    );
    assert!((p.speed_kmh - 21.0 * 1.852).abs() < 1e-6);
    assert_eq!(p.course, 275.0);
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::H02) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 50, &mut seed) {
            for t in [Transport::Tcp, Transport::Udp] {
                crate::protocols::fuzz::exercise(
                    Protocol::H02,
                    || Box::new(H02Session::new(t)),
                    &m,
                );
            }
        }
    }
}
