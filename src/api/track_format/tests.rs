use chrono::TimeZone;

use super::*;

fn points(n: usize) -> Vec<StoredPosition> {
    let t0 = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
    (0..n)
        .map(|i| {
            let t = t0 + chrono::Duration::milliseconds(i as i64 * 10_000 + (i as i64 % 3) * 125);
            let mut p = StoredPosition::from_position(
                &crate::model::Position::new(t, i % 5 != 4, 55.75 + i as f64 * 1e-4, 37.6),
                t,
                0.0,
            );
            p.speed_kmh = (i % 70) as f64 + 0.5;
            p.altitude = 150.25;
            p.satellites = (i % 2 == 0).then_some(11);
            p.ignition = Some(i % 7 != 0);
            p.odometer_m = (i % 3 == 0).then_some(1000.0 + i as f64);
            p
        })
        .collect()
}

// The formats as text (they answer bytes).
fn geojson(meta: &TrackMeta, points: &[TrackPoint]) -> String {
    String::from_utf8(super::geojson(meta, points)).unwrap()
}

fn csv(points: &[StoredPosition]) -> String {
    String::from_utf8(super::csv(points)).unwrap()
}

fn gpx(meta: &TrackMeta, points: &[StoredPosition]) -> String {
    String::from_utf8(super::gpx(meta, points)).unwrap()
}

fn meta(retained_from: Option<NaiveDate>) -> TrackMeta<'static> {
    TrackMeta {
        vehicle: "car \"17\" <&>",
        device: "356307042441013",
        retained_from,
    }
}

#[test]
fn times_are_rfc_3339_with_milliseconds_only_when_there_are_some() {
    let mut s = Text::default();
    push_time(&mut s, Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
    s.push(' ');
    push_time(&mut s, Utc.timestamp_millis_opt(1_765_000_000_007).unwrap());
    let s = s.as_str();
    assert_eq!(s, "2026-01-02T03:04:05Z 2025-12-06T05:46:40.007Z");
    for part in s.split(' ') {
        assert!(DateTime::parse_from_rfc3339(part).is_ok(), "{part}");
    }
}

#[test]
fn time_text_writes_what_push_time_writes_across_days_years_and_leap_seconds() {
    use chrono::NaiveDate;
    let mut times: Vec<DateTime<Utc>> = (0..3_000i64)
        .map(|i| {
            Utc.timestamp_millis_opt(1_765_000_000_000 + i * 37_013)
                .unwrap()
        })
        .collect();
    let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
        .unwrap()
        .and_hms_milli_opt(23, 59, 59, 1_500)
        .unwrap()
        .and_utc();
    times.extend([
        Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
        leap,
        Utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(-5, 3, 1, 12, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 1).unwrap(),
        Utc.timestamp_millis_opt(1_765_000_000_999).unwrap(),
        Utc.timestamp_millis_opt(1_765_000_000_010).unwrap(),
    ]);
    let mut fast = TimeText::default();
    for t in times {
        let (mut a, mut b) = (Text::default(), Text::default());
        fast.push(&mut a, t);
        push_time(&mut b, t);
        assert_eq!(a.as_str(), b.as_str(), "{t:?}");
    }
}

/// A reproducible stream of pseudo-random numbers (xorshift64).
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn seven_decimal_numbers_are_written_as_ryu_writes_them() {
    // Coordinates as trackers send them (10⁻⁷ degrees), and others that are not.
    let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
    let mut values = vec![
        -0.0000001,
        0.0000001,
        0.5,
        -0.5,
        55.75,
        37.6184230,
        179.9999999,
    ];
    for _ in 0..200_000 {
        let k = (next() % 3_600_000_000) as i64 - 1_800_000_000;
        values.push(k as f64 / 1e7);
        values.push((next() % 1_000_000) as f64 / 30_000.0 / 60.0);
        values.push(f64::from_bits(next() >> 2) % 1e9);
    }
    let mut fast_path = 0;
    for v in values {
        let mut text = Vec::new();
        if !push_seven_decimals(&mut text, v) {
            continue;
        }
        let ours = std::str::from_utf8(&text).unwrap();
        fast_path += 1;
        let mut buf = ryu::Buffer::new();
        let theirs = buf.format_finite(v);
        let theirs = if theirs.contains('e') {
            format!("{v}")
        } else {
            theirs.to_string()
        };
        assert_eq!(ours, theirs.strip_suffix(".0").unwrap_or(&theirs), "{v:e}");
        assert_eq!(ours.parse::<f64>().unwrap(), v, "{ours}");
    }
    assert!(fast_path > 200_000, "{fast_path}");
}

#[test]
fn json_numbers_are_what_serde_json_writes() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
    let mut values = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        1e-5,
        1e-6,
        -1e-7,
        0.00001234,
        1e15,
        1e15 - 1.0,
    ];
    values.extend([
        1e16,
        123_456_789.5,
        42.0,
        -17.0,
        55.75,
        f64::MAX,
        f64::MIN_POSITIVE,
    ]);
    for _ in 0..100_000 {
        let k = (next() % 3_600_000_000) as i64 - 1_800_000_000;
        values.push(k as f64 / 1e7);
        values.push((next() % 100_000) as f64 / 1e5);
        values.push((next() % 1_000_000) as f64);
        values.push(f64::from_bits(next()));
    }
    for v in values.into_iter().filter(|v| v.is_finite()) {
        let mut ours = Vec::new();
        json_f64(&mut ours, v);
        let theirs = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap(),
            "{v:e}"
        );
    }
}

#[test]
fn numbers_read_back_exactly_and_never_in_exponent_form() {
    for v in [
        0.0,
        1.0,
        55.7520401,
        37.6175,
        -0.5,
        1e-7,
        -3.2e-9,
        1_250_000.0,
        1e21,
        123.456e-4,
    ] {
        let mut text = Text::default();
        push_num(&mut text, v);
        let s = text.as_str();
        assert!(!s.contains('e') && !s.contains('E'), "{v}: {s}");
        assert!(!s.ends_with(".0"), "{v}: {s}");
        assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
    }
    let mut s = Text::default();
    push_num(&mut s, f64::NAN);
    assert_eq!(s.as_str(), "0");
    for n in [0u16, 7, 12, 99, 65_535] {
        let mut s = Text::default();
        push_small(&mut s, n);
        assert_eq!(s.as_str(), n.to_string());
    }
}

/// The rows as GeoJSON reads them (`Store::track_points`).
fn line(rows: &[StoredPosition]) -> Vec<TrackPoint> {
    rows.iter().map(TrackPoint::from).collect()
}

#[test]
fn geojson_is_a_feature_with_a_line_string_and_a_time_per_point() {
    let pts = line(&points(500));
    let d = NaiveDate::from_ymd_opt(2026, 12, 1);
    let v: serde_json::Value = serde_json::from_str(&geojson(&meta(d), &pts)).unwrap();
    assert_eq!(v["type"], "Feature");
    assert_eq!(v["geometry"]["type"], "LineString");
    let coords = v["geometry"]["coordinates"].as_array().unwrap();
    let times = v["properties"]["times"].as_array().unwrap();
    let speeds = v["properties"]["speeds_kmh"].as_array().unwrap();
    assert_eq!((coords.len(), times.len(), speeds.len()), (500, 500, 500));
    for (i, p) in pts.iter().enumerate() {
        // [lon, lat], RFC 7946's order, exactly as stored.
        assert_eq!(coords[i][0].as_f64(), Some(p.lon));
        assert_eq!(coords[i][1].as_f64(), Some(p.lat));
        let t = DateTime::parse_from_rfc3339(times[i].as_str().unwrap()).unwrap();
        assert_eq!(t, p.time);
        assert_eq!(speeds[i].as_f64(), Some(p.speed_kmh));
    }
    assert_eq!(v["properties"]["vehicle_id"], "car \"17\" <&>");
    assert_eq!(v["properties"]["count"], 500);
    assert_eq!(v["properties"]["retained_from"], "2026-12-01");
}

#[test]
fn geojson_of_one_fix_is_a_point_and_of_none_has_no_geometry() {
    let v: serde_json::Value =
        serde_json::from_str(&geojson(&meta(None), &line(&points(1)))).unwrap();
    assert_eq!(v["geometry"]["type"], "Point");
    assert_eq!(v["geometry"]["coordinates"][1].as_f64(), Some(55.75));
    assert_eq!(v["properties"]["retained_from"], serde_json::Value::Null);
    let v: serde_json::Value = serde_json::from_str(&geojson(&meta(None), &[])).unwrap();
    assert_eq!(v["geometry"], serde_json::Value::Null);
    assert_eq!(v["properties"]["times"].as_array().unwrap().len(), 0);
}

#[test]
fn csv_has_its_header_and_one_line_of_every_column_per_fix() {
    let pts = points(30);
    let text = csv(&pts);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER.trim_end()));
    let columns = CSV_HEADER.trim_end().split(',').count();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 30);
    for (r, p) in rows.iter().zip(&pts) {
        assert_eq!(r.len(), columns, "{r:?}");
        assert_eq!(DateTime::parse_from_rfc3339(r[0]).unwrap(), p.time);
        assert_eq!(r[1].parse::<f64>().unwrap(), p.lat);
        assert_eq!(r[2].parse::<f64>().unwrap(), p.lon);
        assert_eq!(r[3].parse::<f64>().unwrap(), p.speed_kmh);
        assert_eq!(
            r[6],
            p.satellites.map(|n| n.to_string()).unwrap_or_default()
        );
        assert_eq!(r[7], p.valid.to_string());
        assert_eq!(r[8], p.ignition.unwrap().to_string());
        assert_eq!(r[9].parse::<f64>().ok(), p.odometer_m);
    }
    assert_eq!(csv(&[]), CSV_HEADER);
}

#[test]
fn gpx_parses_as_gpx_1_1_with_every_point_and_escaped_names() {
    let pts = points(200);
    let d = NaiveDate::from_ymd_opt(2026, 12, 1);
    let text = gpx(&meta(d), &pts);
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "gpx");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.topografix.com/GPX/1/1")
    );
    assert_eq!(root.attribute("version"), Some("1.1"));
    let name = root
        .descendants()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text());
    assert_eq!(name, Some("car \"17\" <&>"));
    let desc = root.descendants().find(|n| n.has_tag_name("desc")).unwrap();
    assert!(desc.text().unwrap().contains("retained_from 2026-12-01"));
    let trkpts: Vec<_> = root
        .descendants()
        .filter(|n| n.has_tag_name("trkpt"))
        .collect();
    assert_eq!(trkpts.len(), 200);
    for (n, p) in trkpts.iter().zip(&pts) {
        assert_eq!(n.attribute("lat").unwrap().parse::<f64>().unwrap(), p.lat);
        assert_eq!(n.attribute("lon").unwrap().parse::<f64>().unwrap(), p.lon);
        // The schema's order: ele, time, sat.
        let kids: Vec<&str> = n
            .children()
            .filter(|c| c.is_element())
            .map(|c| c.tag_name().name())
            .collect();
        let want: &[&str] = if p.satellites.is_some() {
            &["ele", "time", "sat"]
        } else {
            &["ele", "time"]
        };
        assert_eq!(kids, want);
        let t = n
            .children()
            .find(|c| c.has_tag_name("time"))
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(DateTime::parse_from_rfc3339(t).unwrap(), p.time);
    }
    let empty = gpx(&meta(None), &[]);
    let doc = roxmltree::Document::parse(&empty).unwrap();
    assert!(doc.descendants().all(|n| !n.has_tag_name("desc")));
}

/// Rows that exercise every branch of the JSON writer: every `None`, odd floats (non-finite,
/// negative zero, exponent form, subnormal, the largest), times with no fraction, milliseconds,
/// microseconds, nanoseconds, a leap second and years at the edges, alarms needing escapes,
/// nested and empty attributes.
fn odd_rows() -> Vec<StoredPosition> {
    let floats = [
        0.0,
        -0.0,
        1.0,
        150.0,
        55.7520401,
        -37.6175,
        1e-7,
        -3.2e-9,
        1e15,
        1e16,
        1e21,
        123.456e-4,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        0.1 + 0.2,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let times = [
        Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap(),
        Utc.timestamp_millis_opt(1_765_000_000_007).unwrap(),
        Utc.timestamp_opt(1_765_000_000, 120_000).unwrap(),
        Utc.timestamp_opt(1_765_000_000, 1).unwrap(),
        Utc.timestamp_opt(1_765_000_000, 999_999_999).unwrap(),
        // A leap second (chrono's nanosecond ≥ 1e9).
        Utc.timestamp_opt(1_483_228_799, 1_500_000_000).unwrap(),
        Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(-1, 6, 1, 12, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
        Utc.timestamp_millis_opt(0).unwrap(),
    ];
    let attributes = [
        serde_json::json!({}),
        serde_json::json!({"io239": 1, "io240": 0, "io66": 12_834, "io21": 4, "io69": 1, "io16": 1_250_097}),
        serde_json::json!({"b": -1.5, "a": "x\"y\\z\n\u{1}ё", "c": [1, null, true], "d": {"e": 1e300}}),
        serde_json::Value::Null,
    ];
    let mut out = Vec::new();
    for i in 0..60usize {
        let f = |k: usize| floats[(i + k) % floats.len()];
        let t = times[i % times.len()];
        let mut p = StoredPosition::from_position(
            &crate::model::Position::new(t, i % 2 == 0, f(0), f(1)),
            times[(i + 3) % times.len()],
            f(2),
        );
        p.speed_kmh = f(3);
        p.course = f(4);
        p.altitude = f(5);
        p.satellites = [None, Some(0), Some(11), Some(u16::MAX)][i % 4];
        p.ignition = [None, Some(false), Some(true)][i % 3];
        p.motion = [Some(true), None, Some(false)][i % 3];
        p.odometer_m = (i % 4 != 1).then(|| f(6));
        p.inputs = [None, Some(0), Some(u32::MAX), Some(5)][i % 4];
        p.outputs = [Some(1), None, Some(0)][i % 3];
        p.power_v = (i % 5 != 0).then(|| f(7));
        p.alarm = [
            None,
            Some("sos".into()),
            Some("\"tow\" <&>\t\u{7f}ü".into()),
        ][i % 3]
            .clone();
        p.attributes = attributes[i % attributes.len()].clone().into();
        out.push(p);
    }
    out
}

#[test]
fn json_is_byte_for_byte_what_serde_json_makes_of_the_rows() {
    let serde = |rows: &[StoredPosition]| {
        serde_json::to_vec(&crate::api::rows::all::<_, crate::api::rows::Position>(
            rows.to_vec(),
        ))
        .unwrap()
    };
    for rows in [odd_rows(), points(200), points(1), Vec::new()] {
        let want = serde(&rows);
        let got = json(&rows);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }
    // Row by row, so that a difference names the row.
    for (i, p) in odd_rows().into_iter().enumerate() {
        let one = std::slice::from_ref(&p);
        assert_eq!(
            String::from_utf8(json(one)).unwrap(),
            String::from_utf8(serde(one)).unwrap(),
            "row {i}"
        );
    }
}

#[test]
fn each_format_reads_only_columns_it_shows() {
    // A format rendered from the projected read its handler makes (`Format::read`: CSV
    // without attributes; GPX with `Map`) is byte for byte what it renders from the whole
    // rows. GeoJSON reads `TrackPoint`s, which carry nothing else by their type.
    let mut rows = odd_rows();
    rows.extend(points(40));
    for p in rows.iter_mut().step_by(3) {
        p.alarm = Some("sos".into());
        p.power_v = Some(12.6);
        p.inputs = Some(3);
    }
    let m = meta(None);
    let projected =
        |cols| -> Vec<StoredPosition> { rows.iter().cloned().map(|p| p.project(cols)).collect() };
    let table = projected(TrackColumns::WithoutAttributes);
    assert_eq!(csv(&table), csv(&rows));
    let map = projected(TrackColumns::Map);
    assert_eq!(gpx(&m, &map), gpx(&m, &rows));
    // The projection does leave something out, or the test would prove nothing.
    assert_ne!(json(&map), json(&rows));
    assert_ne!(json(&table), json(&rows));
}
