//! Zones end to end: the shipped service area is evaluated on every fix of a real tracker
//! session; a noisy drive out of the Oblast gives exactly one debounced `exit`, at the fix
//! the rules predict; zones are managed through the API.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{Api, Tracker};
use fleetgate::geofence::ZoneSet;
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};

const AREA: &str = "moscow_region";

fn rec(t: DateTime<Utc>, lat: f64, lon: f64, sats: u8) -> AvlRecord {
    AvlRecord {
        time: t,
        lat,
        lon,
        speed_kmh: 60,
        course: 135,
        altitude: 150,
        satellites: sats,
        io: vec![],
    }
}

/// Deterministic noise of up to about ±25 m.
fn noise(i: u64) -> (f64, f64) {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    x ^= x >> 33;
    let a = (x % 1000) as f64 / 1000.0 - 0.5;
    let b = ((x >> 20) % 1000) as f64 / 1000.0 - 0.5;
    (a * 0.00045, b * 0.0007)
}

common::both_backends!(noisy_drive_out_of_the_oblast_gives_exactly_one_exit_at_the_right_fix);
async fn noisy_drive_out_of_the_oblast_gives_exactly_one_exit_at_the_right_fix() {
    let set = ZoneSet::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/geofences")).unwrap();
    let inside = |lat: f64, lon: f64| set.containing(lat, lon).any(|z| z.name == AREA);
    // A road south-east from Kolomna into Ryazan Oblast: find where it crosses the border.
    let (a, b) = ((55.08, 38.78), (54.50, 39.40));
    assert!(inside(a.0, a.1) && !inside(b.0, b.1));
    let at = |f: f64| (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if inside(at(mid).0, at(mid).1) {
            lo = mid
        } else {
            hi = mid
        }
    }
    // 80 fixes 10 s apart, ~170 m apart, centred on the crossing.
    let len_km = 77.0;
    let step = 0.17 / len_km;
    let t0 = Utc.with_ymd_and_hms(2026, 9, 1, 12, 0, 0).unwrap();
    let fixes: Vec<(DateTime<Utc>, f64, f64)> = (0..80u64)
        .map(|i| {
            let (lat, lon) = at(lo - 40.0 * step + i as f64 * step);
            let (dn, de) = noise(i);
            (t0 + Duration::seconds(i as i64 * 10), lat + dn, lon + de)
        })
        .collect();
    // What the rules predict: the 3rd consecutive fix outside, >= 60 s after the first one
    // outside, and >= 200 m beyond the boundary.
    let mut run: Option<(usize, DateTime<Utc>)> = None;
    let mut expected = None;
    for (i, (t, lat, lon)) in fixes.iter().enumerate() {
        if inside(*lat, *lon) {
            run = None;
            continue;
        }
        let (n, since) = match run {
            Some((n, s)) => (n + 1, s),
            None => (1, *t),
        };
        run = Some((n, since));
        let depth = set.distance_to_boundary_m(AREA, *lat, *lon).unwrap();
        if n >= 3 && (*t - since).num_seconds() >= 60 && depth >= 200.0 {
            expected = Some(i);
            break;
        }
    }
    let expected = expected.expect("the drive leaves the area");

    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "").await;
    let api = Api::new(daemon.api_addr);
    let mut t = Tracker::connect(daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap()).await;
    let imei = "359632101234567";
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1]);

    let mut recs: Vec<AvlRecord> = fixes
        .iter()
        .map(|(t, lat, lon)| rec(*t, *lat, *lon, 10))
        .collect();
    // One wild fix 30 km away between two real ones (a reflection), one fix without GPS lock.
    let jump = rec(
        fixes[expected - 5].0 + Duration::seconds(5),
        fixes[expected - 5].1 - 0.27,
        fixes[expected - 5].2,
        10,
    );
    let invalid = rec(
        fixes[expected - 3].0 + Duration::seconds(5),
        55.75,
        37.62,
        0,
    );
    recs.push(jump);
    recs.push(invalid);
    recs.sort_by_key(|r| r.time);
    for chunk in recs.chunks(10) {
        let mut chunk = chunk.to_vec();
        // The batch around the border comes newest-first, as a buffered upload does.
        if chunk
            .iter()
            .any(|r| r.time >= fixes[expected - 6].0 && r.time <= fixes[expected + 2].0)
        {
            chunk.reverse();
        }
        t.send(&encode_avl_packet(CODEC_8E, &chunk)).await;
        assert_eq!(t.read(4).await, (chunk.len() as u32).to_be_bytes());
    }

    let mut events = serde_json::Value::Null;
    for _ in 0..400 {
        let (_, e) = api
            .get(&format!("/api/v1/events?vehicle={imei}&type=exit"))
            .await;
        if e.as_array()
            .map(|a| a.iter().any(|e| e["zone"] == AREA))
            .unwrap_or(false)
        {
            events = e;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let exits: Vec<_> = events
        .as_array()
        .expect("exit event")
        .iter()
        .filter(|e| e["zone"] == AREA)
        .collect();
    assert_eq!(exits.len(), 1, "exactly one exit: {events}");
    let want = fixes[expected]
        .0
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(exits[0]["time"], want, "exit at the confirming fix");
    assert_eq!(exits[0]["zone_kind"], "service_area");
    let (_, all) = api.get(&format!("/api/v1/events?vehicle={imei}")).await;
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|e| e["zone"] == AREA && e["type"] == "enter"),
        "no flapping back in: {all}"
    );

    let (_, v) = api.get(&format!("/api/v1/vehicles/{imei}")).await;
    assert_eq!(v["zone"]["inside_service_area"], false, "{v}");
    assert!(!v["zone"]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .any(|z| z == AREA));
    let (_, metrics) = api.text("/metrics").await;
    assert!(
        metrics.contains("fleetgate_zone_vehicles_outside_service_area 1"),
        "gauge"
    );
    daemon.stop().await;
}

common::both_backends!(zones_are_added_replaced_and_deleted_through_the_api_and_persist);
async fn zones_are_added_replaced_and_deleted_through_the_api_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    zones_through_the_api(common::start(dir.path(), "").await).await;
}

async fn zones_through_the_api(daemon: fleetgate::app::Running) {
    let api = Api::new(daemon.api_addr);

    let (status, fc) = api.get("/api/v1/geofences").await;
    assert_eq!(status, 200);
    let names: Vec<_> = fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&AREA.to_string()), "{names:?}");

    let lot = serde_json::json!({
        "type": "Feature",
        "properties": {"kind": "parking", "radius_m": 100},
        "geometry": {"type": "Point", "coordinates": [37.60, 55.70]}
    });
    let (status, f) = api.put("/api/v1/geofences/lot_test", lot).await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(f["properties"]["name"], "lot_test");
    assert_eq!(f["properties"]["source"], "api");
    let (status, e) = api.put("/api/v1/geofences/bad", serde_json::json!({"type": "Feature", "properties": {"kind": "nowhere"}, "geometry": {"type": "Point", "coordinates": [37.6, 55.7]}})).await;
    assert_eq!(status, 400, "{e}");

    // A car parks on the new lot: enter after the site debounce (3 fixes, 30 s).
    let mut t = Tracker::connect(daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap()).await;
    t.send(&encode_imei("359632101230000")).await;
    assert_eq!(t.read(1).await, [1]);
    let t0 = Utc.with_ymd_and_hms(2026, 9, 2, 8, 0, 0).unwrap();
    let recs: Vec<_> = (0..6)
        .map(|i| rec(t0 + Duration::seconds(i * 15), 55.7001, 37.6001, 9))
        .collect();
    t.send(&encode_avl_packet(CODEC_8E, &recs)).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 6]);
    let mut zones = serde_json::Value::Null;
    for _ in 0..400 {
        let (_, v) = api.get("/api/v1/vehicles/359632101230000").await;
        zones = v["zone"]["zones"].clone();
        if zones
            .as_array()
            .map(|z| z.iter().any(|n| n == "lot_test"))
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        zones.as_array().unwrap().iter().any(|n| n == "lot_test"),
        "{zones}"
    );
    let (_, v) = api.get("/api/v1/vehicles/359632101230000").await;
    assert_eq!(v["zone"]["inside_service_area"], true);

    let (status, _) = api.get("/api/v1/geofences/lot_test").await;
    assert_eq!(status, 200);
    let r = api
        .client
        .delete(format!("{}/api/v1/geofences/{AREA}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "file zones are edited as files");
    let r = api
        .client
        .delete(format!("{}/api/v1/geofences/lot_test", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _) = api.get("/api/v1/geofences/lot_test").await;
    assert_eq!(status, 404);
    daemon.stop().await;
}
