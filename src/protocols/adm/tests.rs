use super::*;
use crate::protocols::{DecodeReason, MessageKind};
use chrono::TimeZone;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn feed(s: &mut AdmSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(&bytes[..n], &DecodeCtx::now())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

// Real packets (Traccar test data).
const IMEI_PREFIXED_DATA: &str = "38363931353330343235323337383400003728e000001402441d5f42c3711642930d000000c7000a461954f25fd82ed508000000000000000044000000010000000000140000";
const AUTH: &str = "000042033836393135333034323532333738340000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000078";
const ODOMETER: &str =
    "01002680336510002062a34c423dcf8e42a50b1700005801140767e30f568f2534107d220000";
const NO_FIX: &str = "010022003300072020000000000000000044062a330000000000107f10565d4a8310";
const WITH_CAN: &str =
    "01002e40041c0744009dfe6742c6c860427402000000f4ff077752c8f55b000000000b4132010213430100041e";
const COMMAND_ANSWER: &str = "01008449443d3120536f66743d30783531204750533d313036382054696d653d30383a35393a32302031302e30392e31372056616c3d30204c61743d36312e36373738204c6f6e3d35302e3832343520563d3020536174436e743d342b3720537461743d30783030313020496e5f616c61726d3d30783030000000000000000000000000";

#[test]
fn imei_prefixed_data_packet_identifies_and_decodes_the_fix() {
    let mut s = AdmSession::new();
    let d = feed(&mut s, &unhex(IMEI_PREFIXED_DATA)).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("869153042523784")));
    assert!(d.reply.is_none(), "ADM data is not acknowledged");
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2021, 1, 3, 23, 32, 41).unwrap()
    );
    assert!(p.valid);
    assert!((p.lat - 55.77858).abs() < 1e-5 && (p.lon - 37.61110).abs() < 1e-5);
    assert_eq!(p.course, 347.5);
    assert_eq!(p.altitude, 199.0);
    assert_eq!(p.satellites, Some(6));
    assert_eq!(p.power_v, Some(11.992));
    // Type 0x28: analog block and fuel/temperature block.
    assert_eq!(p.attrs.get_name("adc5"), Some(&AttrValue::Float(0.068)));
    assert_eq!(p.attrs.get_name("fuel1"), Some(&AttrValue::Int(1)));
    assert_eq!(p.attrs.get_name("temp1"), Some(&AttrValue::Int(20)));
}

#[test]
fn auth_packet_identifies_the_device_without_reply() {
    let mut s = AdmSession::new();
    let d = feed(&mut s, &unhex(AUTH)).unwrap();
    assert_eq!(d.kind, MessageKind::Login);
    assert_eq!(d.device, Some(DeviceId::new("869153042523784")));
    assert!(d.positions.is_empty());
    assert!(d.reply.is_none());
}

#[test]
fn odometer_block_and_scaling() {
    let d = feed(&mut AdmSession::new(), &unhex(ODOMETER)).unwrap();
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time,
        Utc.with_ymd_and_hms(2015, 10, 3, 14, 17, 11).unwrap()
    );
    assert!((p.lat - 51.15955).abs() < 1e-5 && (p.lon - 71.40476).abs() < 1e-5);
    assert_eq!(p.course, 298.1);
    assert_eq!(p.speed_kmh, 2.3);
    assert_eq!(p.altitude, 344.0);
    assert_eq!(p.satellites, Some(7));
    assert_eq!(p.odometer_m, Some(8829.0));
    assert_eq!(p.power_v, Some(9.615));
    assert_eq!(p.attrs.get_name("hdop"), Some(&AttrValue::Float(2.0)));
}

#[test]
fn status_bit5_means_no_fix_but_still_a_position() {
    let d = feed(&mut AdmSession::new(), &unhex(NO_FIX)).unwrap();
    assert_eq!(d.positions.len(), 1);
    assert!(!d.positions[0].valid);
}

#[test]
fn can_block_tags_select_size_and_meaning() {
    // This capture is one byte shorter than its size byte says, so it is decoded directly.
    let d = decode(&unhex(WITH_CAN)).unwrap();
    let p = &d.positions[0];
    assert!((p.lat - 57.99865).abs() < 1e-4);
    assert_eq!(p.altitude, -12.0);
    assert_eq!(p.attrs.get_name("temp"), Some(&AttrValue::Int(0x0132)));
    assert_eq!(p.attrs.get_name("humidity"), Some(&AttrValue::Int(0x13)));
    assert_eq!(p.attrs.get_name("illumination"), Some(&AttrValue::Int(1)));
    assert_eq!(
        p.attrs.get_name("sensor_battery"),
        Some(&AttrValue::Int(0x1e))
    );
}

#[test]
fn command_answer_is_the_text_up_to_the_first_nul() {
    let d = feed(&mut AdmSession::new(), &unhex(COMMAND_ANSWER)).unwrap();
    assert_eq!(d.kind, MessageKind::CommandResponse);
    let cr = d.command_response.unwrap();
    assert!(cr.text.starts_with("ID=1 Soft=0x51 GPS=1068"));
    assert!(cr.text.ends_with("In_alarm=0x00"));
    assert!(d.positions.is_empty());
}

#[test]
fn concatenated_and_partial_packets_are_cut_by_the_size_byte() {
    let mut s = AdmSession::new();
    let three = unhex("00003728e000001402591d5f42e8711642f100000000df0007483223f35fe02eab0800000000000000004400000001000000000018000000003728e000001402591d5f42e8711642f100000000df0006496e23f35fe22e9a0800000000000000004400000001000000000017000000003728e000001402591d5f42e8711642f100000000df000748aa23f35fe22e4a07000000000000000043000100010000000000180000");
    assert_eq!(s.next_frame(&three).unwrap(), FrameCut::Frame(55));
    assert_eq!(s.next_frame(&three[55..]).unwrap(), FrameCut::Frame(55));
    assert_eq!(s.next_frame(&three[110..]).unwrap(), FrameCut::Frame(55));
    let pkt = unhex(IMEI_PREFIXED_DATA);
    for cut in 0..pkt.len() {
        assert_eq!(
            s.next_frame(&pkt[..cut]).unwrap(),
            FrameCut::NeedMore,
            "prefix {cut}"
        );
    }
    assert_eq!(
        s.next_frame(&[1, 0, 2, 0]).unwrap_err().reason,
        DecodeReason::Framing
    );
}

#[test]
fn text_commands_end_in_crlf_and_engine_control_is_refused() {
    let mut s = AdmSession::new();
    let status = DeviceCommand {
        seq: 1,
        body: CommandBody::Text("STATUS".into()),
    };
    assert_eq!(
        s.encode_command(&status),
        Err(CommandError::NotIdentified("adm"))
    );
    feed(&mut s, &unhex(AUTH)).unwrap();
    assert_eq!(s.encode_command(&status).unwrap().as_ref(), b"STATUS\r\n");
    let stop = DeviceCommand {
        seq: 2,
        body: CommandBody::EngineStop,
    };
    assert_eq!(
        s.encode_command(&stop),
        Err(CommandError::Unsupported("adm"))
    );
}

#[test]
fn encoded_auth_and_data_decode_to_the_same_record() {
    let mut s = AdmSession::new();
    let auth = encode_auth(7, "356307042441013");
    assert_eq!(auth.len(), 66);
    assert_eq!(
        feed(&mut s, &auth).unwrap().device,
        Some(DeviceId::new("356307042441013"))
    );
    let rec = Record {
        time: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
        valid: true,
        lat: 55.7558,
        lon: 37.6173,
        speed_kmh: 42.5,
        course: 90.5,
        altitude: -3,
        satellites: 9,
        power_mv: 12_600,
        outputs: Some(0b01),
        odometer_m: Some(123_456),
    };
    let d = feed(&mut s, &encode_data(7, 11, &rec)).unwrap();
    let p = &d.positions[0];
    assert_eq!(p.fix_time, rec.time);
    assert!(p.valid);
    assert_eq!(p.lat, f64::from(rec.lat));
    assert_eq!(p.lon, f64::from(rec.lon));
    assert_eq!(p.speed_kmh, 42.5);
    assert_eq!(p.course, 90.5);
    assert_eq!(p.altitude, -3.0);
    assert_eq!(p.satellites, Some(9));
    assert_eq!(p.power_v, Some(12.6));
    assert_eq!(p.outputs, Some(1));
    assert_eq!(p.odometer_m, Some(123_456.0));
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x1234_5678_9abc_def0;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Adm) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 300, &mut seed) {
            crate::protocols::fuzz::exercise(Protocol::Adm, || Box::new(AdmSession::new()), &m);
        }
    }
}
