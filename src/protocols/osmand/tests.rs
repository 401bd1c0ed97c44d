use chrono::TimeZone;

use super::*;
use crate::protocols::DecodeReason;

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap(),
    }
}

fn get(uri: &str) -> Vec<u8> {
    format!("GET {uri} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

fn post(content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn feed(bytes: &[u8]) -> Decoded {
    let mut s = OsmAndSession::new();
    match s.next_frame(bytes).unwrap() {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole request");
            s.decode(&bytes[..n], &ctx()).unwrap()
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

// Requests below are from Traccar's OsmAndProtocolDecoderTest (see protocols/osmand/NOTICE.md).

#[test]
fn query_report_decodes_fix_converts_knots_and_answers_200() {
    let d = feed(&get(
        "/?id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571&bearing=7.19889788244&speed=40&ignition=true&rpm=933&fuel=24",
    ));
    assert_eq!(d.device, Some(DeviceId::new("123456789012345")));
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_OK));
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..])
    );
    let p = &d.positions[0];
    assert_eq!(p.fix_time.timestamp(), 1_504_763_810);
    assert!(close(p.lat, 40.7232948571) && close(p.lon, -74.0061408571));
    assert!(close(p.speed_kmh, 40.0 * 1.852), "OsmAnd speed is knots");
    assert!(close(p.course, 7.19889788244));
    assert_eq!(p.ignition, Some(true));
    assert!(p.valid);
    assert_eq!(p.attrs.get_name("rpm"), Some(&AttrValue::Int(933)));
    assert_eq!(p.attrs.get_name("fuel"), Some(&AttrValue::Int(24)));
}

#[test]
fn timestamps_in_seconds_millis_iso_and_plain_forms() {
    let t = |uri: &str| feed(&get(uri)).positions[0].fix_time;
    assert_eq!(
        t("/?id=1&lat=1&lon=2&timestamp=1377177267").timestamp(),
        1_377_177_267
    );
    assert_eq!(
        t("/?id=1&lat=1&lon=2&timestamp=1442068686579").timestamp_millis(),
        1_442_068_686_579
    );
    assert_eq!(
        t("/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0"),
        Utc.with_ymd_and_hms(2016, 1, 27, 18, 55, 47).unwrap()
    );
    assert_eq!(
        t("/?lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&altitude=384.7&speed=0.0&id=353861053849681"),
        Utc.with_ymd_and_hms(2014, 6, 4, 9, 10, 11).unwrap()
    );
    assert_eq!(
        t("/?id=861001000719969&lat=41.666667&lon=-0.883333&batt=87"),
        ctx().now,
        "no timestamp: server time"
    );
}

#[test]
fn deviceid_heading_location_and_well_known_fields() {
    let d = feed(&get(
        "/?lat=60.0&lon=30.0&speed=0.0&heading=12.5&vacc=0&hacc=0&altitude=7&deviceid=123456",
    ));
    assert_eq!(d.device, Some(DeviceId::new("123456")));
    let p = &d.positions[0];
    assert_eq!((p.course, p.altitude), (12.5, 7.0));
    assert_eq!(p.attrs.get_name("vacc"), Some(&AttrValue::Int(0)));

    let d = feed(&get("/?id=123456&timestamp=1377177267&location=60.0,30.0"));
    assert_eq!((d.positions[0].lat, d.positions[0].lon), (60.0, 30.0));

    let d = feed(&get("/?id=1&lat=1&lon=2&batt=87&accuracy=5.5&valid=false&driverUniqueId=D42&alarm=sos&charge=true"));
    let p = &d.positions[0];
    assert!(!p.valid);
    assert_eq!(p.alarm, Some("sos"));
    assert_eq!(p.attrs.get_name("battery_level"), Some(&AttrValue::Int(87)));
    assert_eq!(p.attrs.get_name("accuracy"), Some(&AttrValue::Float(5.5)));
    assert_eq!(
        p.attrs.get_name("driver_unique_id"),
        Some(&AttrValue::Text("D42".into()))
    );
    assert_eq!(p.attrs.get_name("charge"), Some(&AttrValue::Bool(true)));
}

#[test]
fn request_without_id_or_location_is_answered_400() {
    let d = feed(&get("/?timestamp=1377177267&lat=60.0&lon=30.0"));
    assert!(d.positions.is_empty() && d.device.is_none());
    assert_eq!(
        d.reply.as_deref(),
        Some(&b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..])
    );
    let d = feed(&get("/?id=5&timestamp=1377177267"));
    assert!(d.positions.is_empty());
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_BAD_REQUEST));
    let d = feed(&get("/"));
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_BAD_REQUEST));
}

#[test]
fn cell_and_wifi_only_report_is_device_status() {
    let d = feed(&get(
        "/?id=123456&timestamp=1377177267&cell=257,02,16,2224&cell=257,02,16,2223,-90&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70",
    ));
    assert!(d.positions.is_empty());
    assert_eq!(d.device, Some(DeviceId::new("123456")));
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_OK));
    let st = d.status.unwrap();
    assert_eq!(
        st.get_name("cells"),
        Some(&AttrValue::Text("257,02,16,2224;257,02,16,2223,-90".into()))
    );
    assert!(st.get_name("wifi").is_some());
}

#[test]
fn form_body_is_read_when_the_uri_has_no_query() {
    let d = feed(&post(
        "application/x-www-form-urlencoded",
        "id=77&lat=55.75&lon=37.61&timestamp=1377177267&speed=10",
    ));
    assert_eq!(d.device, Some(DeviceId::new("77")));
    assert!(close(d.positions[0].speed_kmh, 18.52));
}

const JSON: &str = r#"{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{"device_string_test":"long_device_id","device_bool_test":true,"device_integer_twelve_test":12,"device_double_test":1.345},"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}"#;

#[test]
fn json_report_decodes_coords_battery_and_typed_extras() {
    let d = feed(&post("application/json", JSON));
    assert_eq!(d.device, Some(DeviceId::new("48241179")));
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_OK));
    let p = &d.positions[0];
    assert_eq!(
        p.fix_time.timestamp_millis(),
        Utc.with_ymd_and_hms(2025, 6, 15, 13, 45, 12)
            .unwrap()
            .timestamp_millis()
            + 862
    );
    assert!(close(p.lat, 37.4219983) && close(p.lon, -122.084));
    assert_eq!(p.course, 0.0, "heading -1 is unknown");
    assert_eq!(p.altitude, 5.0);
    assert_eq!(p.motion, Some(false));
    assert_eq!(p.odometer_m, Some(0.0));
    let a = &p.attrs;
    assert_eq!(a.get_name("battery_level"), Some(&AttrValue::Int(100)));
    assert_eq!(
        a.get_name("activity"),
        Some(&AttrValue::Text("still".into()))
    );
    assert_eq!(
        a.get_name("event"),
        Some(&AttrValue::Text("motionchange".into()))
    );
    assert_eq!(
        a.get_name("device_integer_twelve_test"),
        Some(&AttrValue::Int(12))
    );
    assert_eq!(
        a.get_name("device_double_test"),
        Some(&AttrValue::Float(1.345))
    );
    assert_eq!(a.get_name("device_bool_test"), Some(&AttrValue::Bool(true)));
    assert_eq!(
        a.get_name("device_string_test"),
        Some(&AttrValue::Text("long_device_id".into()))
    );
}

#[test]
fn json_speed_is_metres_per_second() {
    let body = r#"{"location":{"timestamp":"2021-07-21T08:06:34.444Z","coords":{"latitude":-6.1148096,"longitude":106.6837015,"accuracy":3.8,"speed":18.67,"heading":63,"altitude":35.7},"battery":{"is_charging":false,"level":0.79},"extras":{}},"device_id":"8737767034"}"#;
    let d = feed(&post("application/json", body));
    let p = &d.positions[0];
    assert!(close(p.speed_kmh, 18.67 * 3.6));
    assert_eq!(p.course, 63.0);
    assert_eq!(p.attrs.get_name("battery_level"), Some(&AttrValue::Int(79)));
}

#[test]
fn json_location_array_gives_one_position_each_and_numeric_device_id() {
    let body = r#"{"location":[{"timestamp":"2026-05-01T08:00:00Z","coords":{"latitude":55.1,"longitude":37.1,"speed":-1,"heading":-1}},{"timestamp":"2026-05-01T08:00:10Z","coords":{"latitude":55.2,"longitude":37.2,"speed":10,"heading":90}}],"device_id":42}"#;
    let d = feed(&post("application/json; charset=utf-8", body));
    assert_eq!(d.device, Some(DeviceId::new("42")));
    assert_eq!(d.positions.len(), 2);
    assert_eq!(d.positions[0].speed_kmh, 0.0, "speed -1 is unknown");
    assert!(close(d.positions[1].speed_kmh, 36.0));
    assert_eq!(d.positions[1].course, 90.0);
}

#[test]
fn broken_json_or_missing_device_is_answered_400() {
    let d = feed(&post("application/json", "{\"location\":"));
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_BAD_REQUEST));
    assert_eq!(d.kind, MessageKind::BadJson);
    let d = feed(&post(
        "application/json",
        r#"{"location":{"coords":{"latitude":1,"longitude":2}}}"#,
    ));
    assert_eq!(d.reply.as_deref(), Some(RESPONSE_BAD_REQUEST));
    assert!(d.positions.is_empty());
}

#[test]
fn framing_waits_for_head_and_body_and_splits_pipelined_requests() {
    let mut s = OsmAndSession::new();
    let a = post("application/json", JSON);
    let b = get("/?id=1&lat=1&lon=2");
    assert_eq!(
        s.next_frame(&a[..20]).unwrap(),
        FrameCut::NeedMore,
        "head incomplete"
    );
    assert_eq!(
        s.next_frame(&a[..a.len() - 1]).unwrap(),
        FrameCut::NeedMore,
        "body incomplete"
    );
    let mut both = a.clone();
    both.extend_from_slice(&b);
    assert_eq!(s.next_frame(&both).unwrap(), FrameCut::Frame(a.len()));
    assert_eq!(
        s.next_frame(&both[a.len()..]).unwrap(),
        FrameCut::Frame(b.len())
    );
    let mut crlf = b"\r\n".to_vec();
    crlf.extend_from_slice(&b);
    assert_eq!(s.next_frame(&crlf).unwrap(), FrameCut::Skip(2));
}

#[test]
fn oversized_chunked_or_garbage_requests_are_refused() {
    let mut s = OsmAndSession::new();
    let big = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_FRAME + 1
    );
    assert_eq!(
        s.next_frame(big.as_bytes()).unwrap_err().reason,
        DecodeReason::TooLarge
    );
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        s.next_frame(chunked).unwrap_err().reason,
        DecodeReason::Unsupported
    );
    assert_eq!(
        s.next_frame(b"\x00\x01garbage\r\n\r\n").unwrap_err().reason,
        DecodeReason::Framing
    );
}

#[test]
fn encoded_requests_decode_to_the_same_report() {
    let t = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let d = feed(&encode_query_request(
        "861001000719969",
        t,
        55.7558,
        37.6173,
        50.0,
        &[("ignition", "true")],
    ));
    let p = &d.positions[0];
    assert_eq!(d.device, Some(DeviceId::new("861001000719969")));
    assert_eq!(p.fix_time, t);
    assert!(close(p.lat, 55.7558) && close(p.lon, 37.6173));
    assert!(close(p.speed_kmh, 50.0));
    assert_eq!(p.ignition, Some(true));

    let d = feed(&encode_json_request(
        "861001000719969",
        t,
        -33.5,
        151.25,
        36.0,
    ));
    let p = &d.positions[0];
    assert_eq!(p.fix_time, t);
    assert!(close(p.lat, -33.5) && close(p.lon, 151.25));
    assert!(close(p.speed_kmh, 36.0));
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::OsmAnd) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 50, &mut seed) {
            crate::protocols::fuzz::exercise(
                Protocol::OsmAnd,
                || Box::new(OsmAndSession::new()),
                &m,
            );
        }
    }
}
