use chrono::{TimeZone, Utc};

use super::*;
use crate::model::AttrValue;
use crate::protocols::{corpus, CommandResponse};
use crate::protocols::{DecodeReason, MessageKind};

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    }
}

/// Cut exactly one frame out of `bytes` and decode it.
fn feed(s: &mut Gl200Session, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn tcp() -> Gl200Session {
    Gl200Session::new(Transport::Tcp)
}

fn time(s: &str) -> chrono::DateTime<Utc> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
}

// Real packets below are from Traccar's Gl200*ProtocolDecoderTest (see protocols/gl200/NOTICE.md).

#[test]
fn heartbeat_is_answered_with_sack_gthbd_protocol_version_and_count() {
    // The answer is "+SACK:GTHBD,<protocol version>,<count number>$" (Queclink @Track
    // protocol; Traccar's Gl200TextProtocolDecoder builds the same string).
    let mut s = tcp();
    let d = feed(
        &mut s,
        b"+ACK:GTHBD,1A0401,135790246811220,,20100214093254,11F0$",
    )
    .unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert_eq!(d.device, Some(DeviceId::new("135790246811220")));
    assert_eq!(d.reply.as_deref(), Some(&b"+SACK:GTHBD,1A0401,11F0$"[..]));
    assert!(d.positions.is_empty());
    assert_eq!(s.device(), Some(&DeviceId::new("135790246811220")));
}

#[test]
fn reports_are_not_acked_unless_server_acks_are_enabled() {
    let pkt = b"+RESP:GTSOS,020102,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,11F0$";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert_eq!(d.reply, None);
    let mut acking = tcp().with_report_acks(true);
    let d = feed(&mut acking, pkt).unwrap();
    // "+SACK:<count number>$" echoes the report's last field (@Track "Server Acknowledgement").
    assert_eq!(d.reply.as_deref(), Some(&b"+SACK:11F0$"[..]));
    // Command acks are messages too; the heartbeat keeps its own answer.
    let d = feed(
        &mut acking,
        b"+ACK:GTOUT,060100,135790246811220,,0012,20090214093254,11F1$",
    )
    .unwrap();
    assert_eq!(d.reply.as_deref(), Some(&b"+SACK:11F1$"[..]));
    let d = feed(
        &mut acking,
        b"+ACK:GTHBD,1A0401,135790246811220,,20100214093254,11F2$",
    )
    .unwrap();
    assert_eq!(d.reply.as_deref(), Some(&b"+SACK:GTHBD,1A0401,11F2$"[..]));
}

#[test]
fn gv300_fixed_report_decodes_fix_power_mileage_hours_and_device_status() {
    let pkt = b"+RESP:GTFRI,060228,862894020178276,,15153,10,1,1,0.0,0,431.7,-63.169571,-17.776235,20160210153458,0736,0003,6AD4,80EF,00,34.9,00117:31:26,13442,15163,0,210101,,,,20160210113503,38EE$";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Data);
    assert_eq!(d.device, Some(DeviceId::new("862894020178276")));
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, time("2016-02-10 15:34:58"));
    assert!(p.valid, "accuracy 1");
    assert_eq!((p.lat, p.lon), (-17.776235, -63.169571));
    assert_eq!((p.speed_kmh, p.course, p.altitude), (0.0, 0.0, 431.7));
    assert_eq!(p.power_v, Some(15.153), "external power in mV");
    assert_eq!(p.odometer_m, Some(34_900.0), "mileage 34.9 km");
    assert_eq!(p.ignition, Some(true), "device status 21xxxx: ignition on");
    assert_eq!(
        p.inputs,
        Some(0),
        "input byte 01 is the ignition sense line only"
    );
    assert_eq!(p.outputs, Some(1), "output 1 on");
    assert_eq!(
        p.attrs.get_name("engine_hours_s"),
        Some(&AttrValue::Int(117 * 3600 + 31 * 60 + 26))
    );
    assert_eq!(p.attrs.get_name("mcc"), Some(&AttrValue::Int(736)));
    assert_eq!(p.attrs.get_name("lac"), Some(&AttrValue::Int(0x6AD4)));
    assert_eq!(p.attrs.get_name("cell_id"), Some(&AttrValue::Int(0x80EF)));
}

#[test]
fn fixed_report_with_four_fixes_yields_four_positions_in_order() {
    let pkt = b"+RESP:GTFRI,1A0900,860599000306845,G3-313,0,0,4,1,2.1,0,426.7,8.611466,47.681639,20181214134603,0228,0001,077F,4812,25.2,1,5.7,34,437.3,8.611600,47.681846,20181214134619,0228,0001,077F,4812,25.2,1,4.4,62,438.2,8.611893,47.681983,20181214134633,0228,0001,077F,4812,25.2,1,4.8,78,436.6,8.612236,47.682040,20181214134648,0228,0001,077F,4812,25.2,83,20181214134702,0654$";
    let d = feed(&mut tcp(), pkt).unwrap();
    let times: Vec<_> = d.positions.iter().map(|p| p.fix_time).collect();
    assert_eq!(
        times,
        vec![
            time("2018-12-14 13:46:03"),
            time("2018-12-14 13:46:19"),
            time("2018-12-14 13:46:33"),
            time("2018-12-14 13:46:48"),
        ]
    );
    assert_eq!(d.positions[3].lat, 47.682040);
    assert_eq!(d.positions[3].speed_kmh, 4.8);
    assert_eq!(d.positions[3].course, 78.0);
    assert_eq!(
        d.positions[0].odometer_m,
        Some(25_200.0),
        "GL300 mileage in the block"
    );
}

#[test]
fn ignition_on_and_off_reports_set_ignition_and_odometer() {
    let on = b"+RESP:GTIGN,060228,862894020180553,,9860,0,0.2,189,420.0,-63.158195,-17.800608,20160309022951,0736,0003,6AD4,3471,00,,881.2,20160308222956,129A$";
    let off = b"+BUFF:GTIGF,060228,862894020180553,,1958,0,0.0,240,390.3,-63.089213,-17.764712,20160309122854,0736,0003,6AB8,5A23,00,,936.8,20160309082858,1368$";
    let mut s = tcp();
    let d = feed(&mut s, on).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.ignition, Some(true));
    assert!(!p.valid, "accuracy 0: last known position");
    assert_eq!(p.odometer_m, Some(881_200.0));
    assert_eq!(p.power_v, None, "the ignition-on duration is not a voltage");
    let d = feed(&mut s, off).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.ignition, Some(false));
    assert_eq!(p.odometer_m, Some(936_800.0));
    assert_eq!(p.attrs.get_name("buffered"), Some(&AttrValue::Bool(true)));
}

#[test]
fn ignition_off_without_fix_is_status_with_cell() {
    let pkt = b"+BUFF:GTIGF,840502,867963063190000,,0,0,,,,,,,0268,0006,22C4,13E5,00,,,20250116170541,22D0$";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(d.kind, MessageKind::Lbs);
    let st = d.status.unwrap();
    assert_eq!(st.get_name("ignition"), Some(&AttrValue::Bool(false)));
    assert_eq!(st.get_name("mcc"), Some(&AttrValue::Int(268)));
    assert_eq!(st.get_name("cell_id"), Some(&AttrValue::Int(0x13E5)));
}

#[test]
fn sos_report_raises_the_sos_alarm() {
    let pkt = b"+RESP:GTSOS,DF0200,868487004358800,cv100,,00,1,1,0.0,0,138.0,114.015465,22.537372,20210714115224,0460,0001,25F8,061A7D02,,,20210714195224,20210714195224,03A6$";
    let d = feed(&mut tcp(), pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Alarm);
    assert_eq!(d.positions[0].alarm, Some("sos"));
    assert_eq!(d.positions[0].fix_time, time("2021-07-14 11:52:24"));
}

#[test]
fn power_and_battery_events_map_to_alarms() {
    let mpn = b"+RESP:GTMPN,450102,865084030001323,gb100,0,1.6,0,-93.1,121.393023,31.164105,20170619103113,0460,0000,1806,2142,00,20170619103143,0512$";
    assert_eq!(
        feed(&mut tcp(), mpn).unwrap().positions[0].alarm,
        Some("power_restored")
    );
    let bpl = b"+RESP:GTBPL,110100,358688000000158,,3.53,0,4.3,92,70.0,121.354335,31.222073,20110214013254,0460,0000,18d8,6141,,20110214093254,001F$";
    assert_eq!(
        feed(&mut tcp(), bpl).unwrap().positions[0].alarm,
        Some("low_battery")
    );
    let pfa = b"+RESP:GTPFA,F50201,866425030235982,GL300M,20190208124849,0BD4$";
    let d = feed(&mut tcp(), pfa).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(
        d.status.unwrap().get_name("alarm"),
        Some(&AttrValue::Text("power_off".into()))
    );
}

#[test]
fn harsh_behaviour_report_type_selects_braking_acceleration_or_cornering() {
    let base = "+RESP:GTHBM,0F0100,135790246811220,,,{T},1,1,4.3,92,70.0,121.354335,31.222073,20090214013254,0460,0000,18d8,6141,00,2000.0,20090214093254,11F0$";
    for (t, want) in [
        ("10", "hard_braking"),
        ("11", "hard_acceleration"),
        ("12", "hard_cornering"),
    ] {
        let pkt = base.replace("{T}", t);
        assert_eq!(
            feed(&mut tcp(), pkt.as_bytes()).unwrap().positions[0].alarm,
            Some(want),
            "type {t}"
        );
    }
}

#[test]
fn event_report_reads_hour_meter_inputs_outputs_and_satellites() {
    let pkt = b"+RESP:GTERI,380603,869606020025833,gv65,00000002,12003,10,1,1,0.0,172,24.6,-81.931875,26.577439,20171002045352,0310,0260,72BD,8E5B,00,1052.1,01383:52:12,0,100,210700,2,1,28FF4560A3150483,1,05B0,20171002045402,9548$";
    let p = &feed(&mut tcp(), pkt).unwrap().positions[0];
    assert_eq!(p.power_v, Some(12.003));
    assert_eq!(p.odometer_m, Some(1_052_100.0));
    assert_eq!(
        p.inputs,
        Some(0b11),
        "input byte 07: ignition line, input 1, input 2"
    );
    assert_eq!(p.ignition, Some(true));
    let with_sats = b"+BUFF:GTIGN,6E0202,868589060169789,ra79,379,1,0.0,105,532.2,-70.616413,-33.393457,20240610201712,0730,0001,333A,00CFA301,01,11,,0.0,20240610201713,3AE2$";
    let p = &feed(&mut tcp(), with_sats).unwrap().positions[0];
    assert_eq!(
        p.satellites,
        Some(11),
        "append mask 01: satellites follow the cell"
    );
    assert_eq!(p.odometer_m, Some(0.0));
}

#[test]
fn vin_before_the_device_name_is_kept_and_does_not_shift_fields() {
    let pkt = b"+RESP:GTFRI,1F0301,862193022001432,WF0GXXGBBGBM26503,,14900,41,1,1,11.6,74,356.0,14.120023,50.167894,20181104080703,0230,0003,9B14,5891,00,74.1,,,,83,220000,799,7.3,,20181104080703,099B$";
    let p = &feed(&mut tcp(), pkt).unwrap().positions[0];
    assert_eq!(
        p.attrs.get_name("vin"),
        Some(&AttrValue::Text("WF0GXXGBBGBM26503".into()))
    );
    assert_eq!(p.power_v, Some(14.9));
    assert_eq!(p.odometer_m, Some(74_100.0));
}

#[test]
fn information_report_is_status_with_external_power() {
    let pkt = b"+RESP:GTINF,6E0202,868589060187625,RA82,11,89883030000091225018,41,0,1,12349,,4.15,0,1,0,0,20240328231013,0,0,0,0,00,00,+0000,0,20240328231015,7D4F";
    let d = feed(&mut Gl200Session::new(Transport::Udp), pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Status);
    assert!(d.positions.is_empty());
    let st = d.status.unwrap();
    assert_eq!(st.get_name("power_v"), Some(&AttrValue::Float(12.349)));
    assert_eq!(st.get_name("battery_v"), Some(&AttrValue::Float(4.15)));
    assert_eq!(st.get_name("ignition"), Some(&AttrValue::Bool(false)));
    assert_eq!(
        st.get_name("model"),
        Some(&AttrValue::Text("GV310LAU".into()))
    );
}

#[test]
fn command_ack_becomes_a_command_response_with_the_serial_as_seq() {
    let d = feed(
        &mut tcp(),
        b"+ACK:GTOUT,060100,135790246811220,,0012,20090214093254,11F0$",
    )
    .unwrap();
    assert_eq!(d.kind, MessageKind::CommandResponse);
    assert_eq!(d.reply, None);
    assert_eq!(
        d.command_response,
        Some(CommandResponse {
            text: "+ACK:GTOUT,060100,135790246811220,,0012,20090214093254,11F0".into(),
            success: Some(true),
            seq: Some(0x12),
        })
    );
    // Acks with a sub-command before the serial (real GTRTO and GTGEO acks).
    let d = feed(
        &mut tcp(),
        b"+ACK:GTRTO,1A0800,860599000773978,GL300,VER,FFFF,20161006053520,0C19",
    )
    .unwrap();
    assert_eq!(d.command_response.unwrap().seq, Some(0xFFFF));
    let d = feed(
        &mut tcp(),
        b"+ACK:GTGEO,1A0102,135790246811220,,0,0008,20100310172830,11F0",
    )
    .unwrap();
    assert_eq!(d.command_response.unwrap().seq, Some(8));
}

#[test]
fn engine_stop_and_resume_encode_gtout_with_the_default_password() {
    // Traccar's Gl200ProtocolEncoder texts: "AT+GTOUT=%s,1,,,0,0,0,0,0,0,0,,,,,,,FFFF$" (stop)
    // and the same with status 0 (resume); our serial is the command's seq, FFFF for 0xFFFF.
    let mut s = tcp();
    let stop = s
        .encode_command(&DeviceCommand {
            seq: 0xFFFF,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(&stop[..], b"AT+GTOUT=gl200,1,,,0,0,0,0,0,0,0,,,,,,,FFFF$");
    let resume = s
        .encode_command(&DeviceCommand {
            seq: 0x2A,
            body: CommandBody::EngineResume,
        })
        .unwrap();
    assert_eq!(&resume[..], b"AT+GTOUT=gl200,0,,,0,0,0,0,0,0,0,,,,,,,002A$");
    let mut own = tcp().with_password("gv300");
    let stop = own
        .encode_command(&DeviceCommand {
            seq: 0x1_0001,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    assert_eq!(
        &stop[..],
        b"AT+GTOUT=gv300,1,,,0,0,0,0,0,0,0,,,,,,,0001$",
        "serial is 16 bits"
    );
    let text = s.encode_command(&DeviceCommand {
        seq: 1,
        body: CommandBody::Text("AT+GTRTO=gl200,1,,,,,,FFFF".into()),
    });
    assert_eq!(&text.unwrap()[..], b"AT+GTRTO=gl200,1,,,,,,FFFF$");
}

#[test]
fn engine_stop_ack_matches_the_command_seq() {
    let mut s = tcp();
    let cmd = s
        .encode_command(&DeviceCommand {
            seq: 0x0BEE,
            body: CommandBody::EngineStop,
        })
        .unwrap();
    let serial = std::str::from_utf8(&cmd)
        .unwrap()
        .trim_end_matches('$')
        .rsplit(',')
        .next()
        .unwrap()
        .to_string();
    let ack = format!("+ACK:GTOUT,270302,867162025085234,,{serial},20240101000000,0001$");
    let d = feed(&mut s, ack.as_bytes()).unwrap();
    assert_eq!(d.command_response.unwrap().seq, Some(0x0BEE));
}

#[test]
fn status_change_report_carries_ignition_and_motion_state() {
    let pkt = b"+RESP:GTSTT,060228,862894020178276,,21,0,0.0,0,411.3,-63.169745,-17.776330,20160319132220,0736,0003,6AD4,5BAA,00,20160319092223,1FBD$";
    let p = &feed(&mut tcp(), pkt).unwrap().positions[0];
    assert_eq!(
        (p.ignition, p.motion),
        (Some(true), Some(false)),
        "state 21"
    );
}

#[test]
fn split_text_message_waits_for_the_tail() {
    let pkt = b"+RESP:GTSTT,110100,358688000000158,,41,0,4.3,92,70.0,121.354335,31.222073,20110214013254,0460,0000,18d8,6141,,20110214093254,0022$";
    let mut s = tcp();
    for cut in [1, 5, 40, 100, pkt.len() - 5] {
        assert_eq!(
            s.next_frame(&pkt[..cut]).unwrap(),
            FrameCut::NeedMore,
            "prefix {cut}"
        );
    }
    assert_eq!(s.next_frame(pkt).unwrap(), FrameCut::Frame(pkt.len()));
    // Cut just before the tail: the closing send time and count make it whole, and the '$'
    // arriving later is skipped as noise.
    let n = pkt.len() - 1;
    assert_eq!(s.next_frame(&pkt[..n]).unwrap(), FrameCut::Frame(n));
    assert_eq!(s.next_frame(b"$").unwrap(), FrameCut::Skip(1));
}

#[test]
fn segment_boundary_after_fix_time_and_mcc_is_not_taken_for_a_message_end() {
    // Ends in ",<14 digits>,<4 hex>" like a whole message, but the field before is a latitude.
    let part = b"+RESP:GTFRI,020102,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,31.222073,20090214013254,0460";
    assert_eq!(tcp().next_frame(part).unwrap(), FrameCut::NeedMore);
}

#[test]
fn concatenated_messages_are_cut_one_by_one_and_noise_is_skipped() {
    let a = b"+ACK:GTHBD,1A0401,135790246811220,,20100214093254,11F0$".to_vec();
    let b = b"+RESP:GTPNA,F50201,866425030235982,GL300M,20190208124909,0BD5$".to_vec();
    let mut stream = a.clone();
    stream.extend_from_slice(b"\r\n");
    stream.extend_from_slice(&b);
    let mut s = tcp();
    assert_eq!(s.next_frame(&stream).unwrap(), FrameCut::Frame(a.len()));
    let rest = &stream[a.len()..];
    assert_eq!(s.next_frame(rest).unwrap(), FrameCut::Skip(2));
    assert_eq!(s.next_frame(&rest[2..]).unwrap(), FrameCut::Frame(b.len()));
    assert_eq!(s.next_frame(b"xx+RESP").unwrap(), FrameCut::Skip(2));
}

#[test]
fn message_without_tail_is_cut_before_the_next_header_or_at_its_closing_fields() {
    let a = b"+RESP:GTSTT,04040C,359231038939904,,42,0,0.0,117,346.0,8.924243,50.798077,20130618125152,0262,0002,0299,109C,00,20130618125154,017A";
    let mut stream = a.to_vec();
    stream.extend_from_slice(b"+RESP:GTP");
    let mut s = tcp();
    assert_eq!(s.next_frame(&stream).unwrap(), FrameCut::Frame(a.len()));
    assert_eq!(s.next_frame(a).unwrap(), FrameCut::Frame(a.len()));
    let d = s.decode(a, &ctx()).unwrap();
    assert_eq!(d.positions[0].fix_time, time("2013-06-18 12:51:52"));
}

#[test]
fn udp_datagram_is_one_frame_even_without_tail() {
    let pkt = b"+RESP:GTINF,359464030073766,8938003990320469804f,18,99,100,1,0,+2.00,0,20131018084015,00EE,0103090402";
    let mut s = Gl200Session::new(Transport::Udp);
    assert_eq!(s.next_frame(pkt).unwrap(), FrameCut::Frame(pkt.len()));
    assert!(s.decode(pkt, &ctx()).unwrap().positions.is_empty());
}

#[test]
fn oversized_frames_are_refused() {
    let mut long = b"+RESP:GTFRI,".to_vec();
    long.resize(MAX_FRAME + 10, b'1');
    assert_eq!(
        tcp().next_frame(&long).unwrap_err().reason,
        DecodeReason::TooLarge
    );
    let mut bin = b"+RSP\x07\x00\xfc\x1f\xbf\xff\xff".to_vec();
    bin.extend_from_slice(&[0; 8]);
    assert_eq!(
        tcp().next_frame(&bin).unwrap_err().reason,
        DecodeReason::TooLarge
    );
    assert_eq!(
        tcp()
            .next_frame(b"+RSP\x07\x00\xfc\x1f\xbf\x00\x02")
            .unwrap_err()
            .reason,
        DecodeReason::Framing
    );
}

#[test]
fn malformed_text_is_an_error_naming_the_problem() {
    let e = tcp()
        .decode(b"+RESP:GTFRI,060100,notanimei,,\xff$", &ctx())
        .unwrap_err();
    assert_eq!(e.reason, DecodeReason::Framing);
    let e = tcp()
        .decode(b"+RESP:GTFRI,060100,notanimei,,,$", &ctx())
        .unwrap_err();
    assert_eq!(e.reason, DecodeReason::BadIdentity);
    let e = tcp().decode(b"hello$", &ctx()).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Framing);
}

#[test]
fn unknown_report_type_keeps_its_fix_or_decodes_as_other() {
    let with_fix = b"+RESP:GTXYZ,060100,135790246811220,,7,1,4.3,92,70.0,121.354335,31.222073,20090214013254,0460,0000,18d8,6141,00,20090214093254,11F0$";
    let d = feed(&mut tcp(), with_fix).unwrap();
    assert_eq!(d.kind, MessageKind::Data);
    assert_eq!(d.positions.len(), 1);
    let d = feed(
        &mut tcp(),
        b"+RESP:GTXYZ,060100,135790246811220,,7,20090214093254,11F0$",
    )
    .unwrap();
    assert_eq!(d.kind, MessageKind::Other);
    assert!(d.positions.is_empty());
    assert!(d.device.is_some());
}

#[test]
fn binary_tlv_frame_decodes_its_gnss_item() {
    let pkt = hex::decode("2b000038000865134050947226820300030000216a3ed6f101895000521629fa8b28f402ac1a8e6a3ed6f100001600000010f505010ff824").unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("865134050947226")));
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(p.fix_time.timestamp(), 0x6a3ed6f1);
    assert!(p.valid);
    assert_eq!((p.lat, p.lon), (44.833422, -91.543308));
    assert_eq!(p.altitude, 434.1);
    assert_eq!(p.satellites, Some(5));
}

#[test]
fn binary_tlv_frame_with_a_bad_check_byte_is_a_crc_error() {
    let mut pkt = hex::decode("2b000038000865134050947226820300030000216a3ed6f101895000521629fa8b28f402ac1a8e6a3ed6f100001600000010f505010ff824").unwrap();
    let n = pkt.len();
    pkt[n - 2] ^= 0x01;
    let e = feed(&mut tcp(), &pkt).unwrap_err();
    assert_eq!(e.reason, DecodeReason::Crc);
    assert_eq!(e.offset, n - 2);
}

#[test]
fn binary_heartbeat_identifies_the_device() {
    // The example of Queclink's published GL601 frame description (check byte 0x14).
    let pkt = hex::decode("2b1018012345678901234580010007005e362f5a10f21424").unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Heartbeat);
    assert_eq!(d.device, Some(DeviceId::new("123456789012345")));
}

#[test]
fn binary_position_report_decodes_block_and_cell() {
    let pkt = hex::decode("2b5253500700fc1fbf005d4501020209563254030003430564377e42071001000000000000007eff75a151025c6a8107e10801081a2a02680003189c1ac500000000000002100700000000000000000007e1080108241019e17ebe0d0a").unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    // 56 32 54 03 00 03 43 05: the IMEI as digit pairs (a GB100, like the text reports of
    // 8650840300xxxxx in the same corpus).
    assert_eq!(d.device, Some(DeviceId::new("865084030003675")));
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert_eq!(p.fix_time, time("2017-08-01 08:26:42"));
    assert_eq!((p.lat, p.lon), (39.611009, -9.068207));
    assert_eq!(p.altitude, 126.0);
    assert_eq!(p.power_v, Some(14.206));
    assert_eq!(p.satellites, Some(7));
    assert_eq!(
        p.attrs.get_name("mcc"),
        Some(&AttrValue::Int(268)),
        "digits in nibbles"
    );
    assert_eq!(p.attrs.get_name("mnc"), Some(&AttrValue::Int(3)));
    assert_eq!(p.attrs.get_name("lac"), Some(&AttrValue::Int(0x189c)));
}

#[test]
fn binary_compressed_batch_expands_full_and_delta_points() {
    let line = corpus::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/gl200/corpus.jsonl"
    )))
    .unwrap()
    .into_iter()
    .nth(2)
    .unwrap();
    let pkt = line.bytes().unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert!(d.positions.len() > 100);
    let (a, b) = (&d.positions[0], &d.positions[1]);
    assert_eq!(b.fix_time - a.fix_time, chrono::Duration::seconds(1));
    assert!((a.lat - 39.611).abs() < 0.01 && (a.lon + 9.068).abs() < 0.01);
    assert!((b.lat - a.lat).abs() < 0.001, "delta points stay close");
}

#[test]
fn binary_ignition_event_and_binary_ack() {
    let evt = hex::decode("2b4556542d00fc1fbf0063450102020956325403000343056437f8220700000200000000010000160100f2007eff75a1f0025c6b1a07e1080108241a02680003189c1ac500000000000002100800000000000000000007e1080108241a19e24e4e0d0a").unwrap();
    let d = feed(&mut tcp(), &evt).unwrap();
    assert_eq!(d.positions[0].ignition, Some(true));
    assert_eq!(d.positions[0].speed_kmh, 22.1);
    assert_eq!(d.positions[0].course, 242.0);
    assert_eq!(d.positions[0].fix_time, time("2017-08-01 08:36:26"));
    let ack =
        hex::decode("2b41434b017f244501010108676231303000000000ffff07e1070b03112d054dfe030d0a")
            .unwrap();
    let d = feed(&mut tcp(), &ack).unwrap();
    assert!(d.positions.is_empty());
    assert_eq!(
        d.device,
        Some(DeviceId::new("gb100")),
        "identified by device name"
    );
    assert_eq!(d.command_response.unwrap().seq, Some(0xFFFF));
}

#[test]
fn split_binary_frame_waits_for_its_declared_length() {
    let pkt =
        hex::decode("2b41434b017f244501010108676231303000000000ffff07e1070b03112d054dfe030d0a")
            .unwrap();
    let mut s = tcp();
    for cut in [1, 4, 10, 20, pkt.len() - 1] {
        assert_eq!(
            s.next_frame(&pkt[..cut]).unwrap(),
            FrameCut::NeedMore,
            "prefix {cut}"
        );
    }
    let mut two = pkt.clone();
    two.extend_from_slice(b"+ACK:GTHBD,1A0401,135790246811220,,20100214093254,11F0$");
    assert_eq!(s.next_frame(&two).unwrap(), FrameCut::Frame(pkt.len()));
}

#[test]
fn encoded_fixed_report_round_trips() {
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let fixes = [
        FriFix {
            time: t0,
            lat: 55.751244,
            lon: 37.618423,
            speed_kmh: 42.5,
            course: 90,
            altitude: 150.0,
            hdop: 1,
        },
        FriFix {
            time: t0 + chrono::Duration::seconds(30),
            lat: 55.752,
            lon: -37.62,
            speed_kmh: 0.0,
            course: 0,
            altitude: 151.5,
            hdop: 0,
        },
    ];
    let msg = encode_fri(
        "060100",
        "860000000000001",
        12_600,
        &fixes,
        1234.5,
        "210102",
        t0,
        0x00AB,
    );
    let mut s = tcp().with_report_acks(true);
    let d = feed(&mut s, msg.as_bytes()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("860000000000001")));
    assert_eq!(d.reply.as_deref(), Some(&b"+SACK:00AB$"[..]));
    assert_eq!(d.positions.len(), 2);
    for (p, f) in d.positions.iter().zip(&fixes) {
        assert_eq!(p.fix_time, f.time);
        assert_eq!((p.lat, p.lon), (f.lat, f.lon));
        assert_eq!(p.speed_kmh, f.speed_kmh);
        assert_eq!(p.course, f64::from(f.course));
        assert_eq!(p.altitude, f.altitude);
        assert_eq!(p.valid, f.hdop > 0);
    }
    let last = &d.positions[1];
    assert_eq!(last.power_v, Some(12.6));
    assert_eq!(last.odometer_m, Some(1_234_500.0));
    assert_eq!(last.ignition, Some(true));
    assert_eq!(last.outputs, Some(0b10));
    assert_eq!(last.inputs, Some(0));
}

#[test]
fn encoded_heartbeat_round_trips_to_its_answer() {
    let t = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let hb = encode_heartbeat("270302", "867162025085234", t, 0x1F);
    assert_eq!(
        hb,
        "+ACK:GTHBD,270302,867162025085234,,20260301100000,001F$"
    );
    let d = feed(&mut tcp(), hb.as_bytes()).unwrap();
    assert_eq!(d.reply.as_deref(), Some(&b"+SACK:GTHBD,270302,001F$"[..]));
}

#[test]
fn binary_unique_id_is_an_imei_in_digit_pairs_or_a_device_name() {
    // The example of Queclink's GV200 binary protocol description.
    let imei = binary::unique_id(&[0x0D, 0x39, 0x5A, 0x18, 0x44, 0x0B, 0x16, 0x00]);
    assert_eq!(imei, DeviceId::new("135790246811220"));
    let name = binary::unique_id(b"gv200\0\0\0");
    assert_eq!(name, DeviceId::new("gv200"));
}

#[test]
fn binary_information_frame_is_status_of_its_device() {
    let pkt = hex::decode("2b494e4601fd7f0076676231303000000045010202090104020500004100054007e107150b061d0000003f010e02580000000000d0312a1013648935103226313921591f1200000000000302680003189c1ac3001b02680003189c1ac4000d02680003189c1ac5001207e107150b0d3704f658060d0a").unwrap();
    let d = feed(&mut tcp(), &pkt).unwrap();
    assert_eq!(d.kind, MessageKind::Status);
    assert_eq!(d.device, Some(DeviceId::new("gb100")));
    assert_eq!(
        d.status.unwrap().get_name("device_type"),
        Some(&AttrValue::Int(0x45))
    );
}

#[test]
fn protocol_version_prefix_names_the_model() {
    assert_eq!(model_of("1A0800"), "GL300");
    assert_eq!(model_of("060228"), "GV300");
    assert_eq!(model_of("8020050605"), "GV355CEU");
    assert_eq!(model_of("zz"), "");
    assert_eq!(model_of(""), "");
}

/// A small deterministic generator for the mutation test.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn drive(transport: Transport, bytes: &[u8]) {
    let mut s = Gl200Session::new(transport);
    let mut buf = bytes;
    let mut guard = 0;
    while !buf.is_empty() && guard < 10_000 {
        guard += 1;
        match s.next_frame(buf) {
            Ok(FrameCut::Frame(n)) => {
                let n = n.clamp(1, buf.len());
                let _ = s.decode(&buf[..n], &ctx());
                buf = &buf[n..];
            }
            Ok(FrameCut::Skip(n)) => buf = &buf[n.clamp(1, buf.len())..],
            Ok(FrameCut::NeedMore) | Err(_) => break,
        }
    }
}

#[test]
fn truncated_and_mutated_corpus_packets_never_panic() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/gl200/corpus.jsonl");
    let entries = corpus::load(std::path::Path::new(path)).unwrap();
    let mut rng = Lcg(0x5eed);
    for e in &entries {
        let pkt = e.bytes().unwrap();
        for len in 0..=pkt.len() {
            drive(Transport::Tcp, &pkt[..len]);
            drive(Transport::Udp, &pkt[..len]);
            // Decode the prefix directly too, as a UDP datagram may be handed over whole.
            let _ = tcp().decode(&pkt[..len], &ctx());
        }
        for _ in 0..50 {
            let mut m = pkt.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % m.len().max(1);
                if let Some(b) = m.get_mut(i) {
                    *b = match rng.next() % 4 {
                        0 => b',',
                        1 => 0,
                        2 => rng.next() as u8,
                        _ => b'.',
                    };
                }
            }
            drive(Transport::Tcp, &m);
            let _ = tcp().decode(&m, &ctx());
        }
    }
}

// GL100 (@Track air interface protocol, TRACGL100AN002): IMEI first, blocks
// `reserved, reserved, gps fix, speed, heading, altitude, gps accuracy, lon, lat, time, mcc,
// mnc, lac, cell, ta`, closed by `count, version`. The lines are the document's examples.
const GL100_TRI: &str = "+RESP:GTTRI,359231030000010,1,0,0,1,4.3,92,70.0,1,121.354335,31.222073,20090101000000,0460,0000,18d8,6141,00,11F0,0102100203";
const GL100_TRI_2: &str = "+RESP:GTTRI,359231030000010,2,0,0,1,4.3,92,70.0,1,121.354335,31.222073,20090101000000,0460,0000,18d8,6141,00,0,0,1,-3.6,145,30.0,2,121.354442,31.221940,20090101000100,0460,0000,18d8,6141,00,11F0,0102100203";
const GL100_SZI: &str = "+RESP:GTSZI,359231030000010,0,3,0,1,4.3,92,70.0,1,121.354335,31.222073,20090101000000,0460,0000,18d8,6141,00,11F0,0102100203";

#[test]
fn gl100_blocks_are_read_in_the_gl100_order_not_the_gl200_one() {
    let d = feed(&mut tcp(), format!("{GL100_TRI}\0").as_bytes()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("359231030000010")));
    let p = &d.positions[0];
    assert_eq!(p.fix_time, time("2009-01-01 00:00:00"));
    assert!(p.valid, "gps fix 1");
    assert_eq!((p.lat, p.lon), (31.222073, 121.354335));
    assert_eq!(p.speed_kmh, 4.3, "speed, not the accuracy field");
    assert_eq!(p.course, 92.0, "heading, not the speed field");
    assert_eq!(p.altitude, 70.0);
    assert_eq!(p.attrs.get_name("hdop"), Some(&AttrValue::Float(1.0)));
    assert_eq!(p.attrs.get_name("mcc"), Some(&AttrValue::Int(460)));
    assert!(d.reply.is_none(), "GL100 reports take no +SACK");

    let d = feed(&mut tcp(), format!("{GL100_TRI_2}\0").as_bytes()).unwrap();
    assert_eq!(d.positions.len(), 2);
    let p = &d.positions[1];
    assert_eq!(p.fix_time, time("2009-01-01 00:01:00"));
    assert_eq!((p.lat, p.lon), (31.221940, 121.354442));
    assert_eq!(p.speed_kmh, 0.0, "-1-style unknown speed is not negative");
    assert_eq!(p.course, 145.0);
    assert_eq!(p.altitude, 30.0);

    let d = feed(&mut tcp(), format!("{GL100_SZI}\0").as_bytes()).unwrap();
    assert_eq!(d.positions[0].speed_kmh, 4.3);
    assert_eq!(d.positions[0].course, 92.0);
}

#[test]
fn a_gl100_line_without_a_tail_is_cut_at_its_closing_fields() {
    let mut s = tcp();
    // Cut short inside the block: not a whole message yet.
    let cut = &GL100_TRI.as_bytes()[..GL100_TRI.len() - 12];
    assert_eq!(s.next_frame(cut).unwrap(), FrameCut::NeedMore);
    let d = feed(&mut s, GL100_TRI.as_bytes()).unwrap();
    assert_eq!(d.positions.len(), 1);
}

#[test]
fn a_report_whose_number_disagrees_with_its_blocks_is_refused() {
    // Number 1, two blocks present.
    let line = GL100_TRI_2.replacen(",2,0,0,1,", ",1,0,0,1,", 1);
    let e = feed(&mut tcp(), format!("{line}\0").as_bytes()).unwrap_err();
    assert_eq!(e.reason, DecodeReason::BadField, "{e}");
    // Number 3, two blocks with a fix: both kept, the shortfall said.
    let line = GL100_TRI_2.replacen(",2,0,0,1,", ",3,0,0,1,", 1);
    let d = feed(&mut tcp(), format!("{line}\0").as_bytes()).unwrap();
    assert_eq!(d.positions.len(), 2);
    assert_eq!(
        d.positions[1].attrs.get_name("points_declared"),
        Some(&AttrValue::Int(3))
    );
}
