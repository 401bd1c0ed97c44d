use super::*;
use chrono::TimeZone;

use crate::geofence::distance::metres_per_degree;
use crate::geofence::index::tests::{shipped_set, square};
use crate::geofence::pip::tests::Rng;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn fix(secs: i64, lat: f64, lon: f64) -> Fix {
    Fix {
        time: t(secs),
        lat,
        lon,
        valid: true,
        speed_kmh: 40.0,
        is_jump: false,
    }
}

/// A 0.1° square region (custom kind: 3 fixes, 60 s, 200 m) centred on (55.75, 37.6).
fn region() -> ZoneSet {
    ZoneSet::from_zones(vec![square("r", ZoneKind::Custom, 37.6, 55.75, 0.05)]).unwrap()
}

/// Latitude `m` metres north of the region's north edge (negative: inside).
fn north_of_edge(m: f64) -> f64 {
    55.8 + m / metres_per_degree(55.8).1
}

fn kinds(events: &[ZoneEvent]) -> Vec<(ZoneEventKind, &str, DateTime<Utc>)> {
    events
        .iter()
        .map(|e| (e.kind, e.zone.as_str(), e.time))
        .collect()
}

fn run(v: &mut VehicleZones, set: &ZoneSet, fixes: &[Fix]) -> Vec<ZoneEvent> {
    fixes.iter().flat_map(|f| v.observe(set, f)).collect()
}

#[test]
fn first_fix_sets_membership_without_an_event() {
    let set = shipped_set();
    let mut v = VehicleZones::new();
    assert_eq!(v.inside_service_area(), None);
    assert!(v.observe(set, &fix(0, 55.7558, 37.6173)).is_empty());
    assert_eq!(v.inside_service_area(), Some(true));
    let mut zones: Vec<&str> = v.zones().collect();
    zones.sort();
    assert_eq!(zones, ["moscow", "moscow_region"]);
    let mut outside = VehicleZones::new();
    assert!(outside.observe(set, &fix(0, 54.63, 39.74)).is_empty());
    assert_eq!(outside.inside_service_area(), Some(false));
    assert_eq!(outside.zones().count(), 0);
}

#[test]
fn exit_needs_n_fixes_and_t_seconds_outside() {
    let set = region();
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, 55.75, 37.6));
    let out = north_of_edge(1000.0);
    // Every 10 s: three fixes are not enough, 60 s after the first outside fix is.
    let fixes: Vec<Fix> = (1..=8).map(|k| fix(k * 10, out, 37.6)).collect();
    let ev = run(&mut v, &set, &fixes);
    assert_eq!(kinds(&ev), [(ZoneEventKind::Exit, "r", t(70))]);
    assert_eq!((ev[0].lat, ev[0].lon), (out, 37.6));
    // Every 30 s: the third fix is also 60 s after the first.
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, 55.75, 37.6));
    let fixes: Vec<Fix> = (1..=4).map(|k| fix(k * 30, out, 37.6)).collect();
    assert_eq!(
        kinds(&run(&mut v, &set, &fixes)),
        [(ZoneEventKind::Exit, "r", t(90))]
    );
    assert_eq!(v.zones().count(), 0);
}

#[test]
fn one_fix_back_inside_restarts_the_count() {
    let set = region();
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, 55.75, 37.6));
    let out = north_of_edge(1000.0);
    let mut fixes: Vec<Fix> = (1..=5).map(|k| fix(k * 30, out, 37.6)).collect();
    fixes[2] = fix(90, 55.75, 37.6);
    // Outside at 30, 60; inside at 90; outside at 120, 150: the run restarts at 120.
    assert!(run(&mut v, &set, &fixes).is_empty());
    assert_eq!(
        kinds(&v.observe(&set, &fix(180, out, 37.6))),
        [(ZoneEventKind::Exit, "r", t(180))]
    );
}

#[test]
fn exit_waits_until_a_fix_is_beyond_the_hysteresis_band() {
    let set = region();
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, 55.75, 37.6));
    // Ten minutes parked 120 m outside the border: outside, but within the 200 m band.
    let band: Vec<Fix> = (1..=60)
        .map(|k| fix(k * 10, north_of_edge(120.0), 37.6))
        .collect();
    assert!(run(&mut v, &set, &band).is_empty());
    assert_eq!(v.zones().collect::<Vec<_>>(), ["r"]);
    assert_eq!(
        kinds(&v.observe(&set, &fix(610, north_of_edge(230.0), 37.6))),
        [(ZoneEventKind::Exit, "r", t(610))]
    );
}

#[test]
fn entry_is_confirmed_like_exit_deep_enough_inside() {
    let set = region();
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, north_of_edge(5000.0), 37.6));
    let shallow: Vec<Fix> = (1..=20)
        .map(|k| fix(k * 10, north_of_edge(-100.0), 37.6))
        .collect();
    assert!(run(&mut v, &set, &shallow).is_empty());
    let ev = v.observe(&set, &fix(210, north_of_edge(-250.0), 37.6));
    assert_eq!(kinds(&ev), [(ZoneEventKind::Enter, "r", t(210))]);
    assert_eq!(ev[0].zone_kind, ZoneKind::Custom);
}

#[test]
fn invalid_jump_stale_and_duplicate_fixes_never_change_state() {
    let set = region();
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, 55.75, 37.6));
    let out = north_of_edge(1000.0);
    assert!(run(&mut v, &set, &[fix(30, out, 37.6), fix(60, out, 37.6)]).is_empty());
    let mut invalid = fix(70, 55.75, 37.6);
    invalid.valid = false;
    let mut jump = fix(75, 55.75, 37.6);
    jump.is_jump = true;
    let stale = fix(20, 55.75, 37.6);
    let duplicate = fix(60, 55.75, 37.6);
    let nan = fix(80, f64::NAN, 37.6);
    assert!(run(&mut v, &set, &[invalid, jump, stale, duplicate, nan]).is_empty());
    assert_eq!(v.last_fix_time(), Some(t(60)));
    // The run of outside fixes was not broken: the third one, at 90 s, confirms.
    assert_eq!(
        kinds(&v.observe(&set, &fix(90, out, 37.6))),
        [(ZoneEventKind::Exit, "r", t(90))]
    );
}

#[test]
fn parking_uses_site_defaults_and_zone_overrides() {
    // ~110 m square lot; site defaults: 3 fixes, 30 s, 15 m.
    let lot = square("lot", ZoneKind::Parking, 37.6, 55.75, 0.0005);
    let mut slow = square("slow", ZoneKind::Parking, 37.7, 55.75, 0.0005);
    slow.debounce.secs = Some(120);
    let set = ZoneSet::from_zones(vec![lot, slow]).unwrap();
    let mut v = VehicleZones::new();
    v.observe(&set, &fix(0, 55.76, 37.6));
    let inside: Vec<Fix> = (1..=4).map(|k| fix(k * 10, 55.75, 37.6)).collect();
    assert_eq!(
        kinds(&run(&mut v, &set, &inside)),
        [(ZoneEventKind::Enter, "lot", t(40))]
    );
    let inside: Vec<Fix> = (5..=20).map(|k| fix(k * 10, 55.75, 37.7)).collect();
    assert_eq!(
        kinds(&run(&mut v, &set, &inside)),
        [
            (ZoneEventKind::Exit, "lot", t(80)),
            (ZoneEventKind::Enter, "slow", t(170))
        ]
    );
}

#[test]
fn buffer_counts_as_inside_for_the_tracker() {
    let mut lot = square("lot", ZoneKind::Parking, 37.6, 55.75, 0.0005);
    lot.buffer_m = 40.0;
    lot.debounce.hysteresis_m = Some(0.0);
    let set = ZoneSet::from_zones(vec![lot]).unwrap();
    let mut v = VehicleZones::new();
    let just_out = 55.7505 + 30.0 / metres_per_degree(55.75).1;
    v.observe(&set, &fix(0, just_out, 37.6));
    assert_eq!(v.zones().collect::<Vec<_>>(), ["lot"]);
}

#[test]
fn reload_forgets_removed_zones_and_enters_added_ones_after_the_debounce() {
    let a = square("a", ZoneKind::Parking, 37.6, 55.75, 0.001);
    let old = ZoneSet::from_zones(vec![a.clone()]).unwrap();
    let mut v = VehicleZones::new();
    v.observe(&old, &fix(0, 55.75, 37.6));
    assert_eq!(v.zones().collect::<Vec<_>>(), ["a"]);
    let new =
        ZoneSet::from_zones(vec![square("b", ZoneKind::Parking, 37.6, 55.75, 0.001)]).unwrap();
    let fixes: Vec<Fix> = (1..=3).map(|k| fix(k * 15, 55.75, 37.6)).collect();
    let ev = run(&mut v, &new, &fixes);
    assert_eq!(kinds(&ev), [(ZoneEventKind::Enter, "b", t(45))]);
    assert_eq!(v.zones().collect::<Vec<_>>(), ["b"]);
}

/// A drive east out of Moscow Oblast into Vladimir Oblast: 90 km/h, a fix every 10 s, up to
/// ±30 m of GPS noise, crossing the border once near (39.066, 55.883).
fn drive_out() -> Vec<Fix> {
    let mut rng = Rng(0x5eed);
    let step = 250.0 / 51_300.0; // 250 m along a ~51.3 km line
    (0..100)
        .map(|k| {
            let s = 0.15 + k as f64 * step;
            let lon = 38.8 + s * 0.8 + (rng.next_f64() - 0.5) * 0.0009;
            let lat = 55.85 + s * 0.1 + (rng.next_f64() - 0.5) * 0.0005;
            fix(k * 10, lat, lon)
        })
        .collect()
}

fn in_service_area(set: &ZoneSet, f: &Fix) -> bool {
    set.containing(f.lat, f.lon)
        .any(|z| z.name == "moscow_region")
}

/// Index of the first outside fix; checks the noisy drive crosses the border exactly once.
fn first_outside(set: &ZoneSet, fixes: &[Fix]) -> usize {
    let inside: Vec<bool> = fixes.iter().map(|f| in_service_area(set, f)).collect();
    let f0 = inside.iter().position(|&i| !i).expect("the drive leaves");
    assert!(
        f0 > 10 && inside[f0..].iter().all(|&i| !i),
        "one clean crossing"
    );
    f0
}

#[test]
fn drive_out_of_the_oblast_with_noise_a_jump_and_an_invalid_fix_exits_once() {
    let set = shipped_set();
    let drive = drive_out();
    let f0 = first_outside(set, &drive);
    // 60 s after the first outside fix, and well beyond the 200 m band.
    let confirm = f0 + 6;
    let d = set
        .distance_to_boundary_m("moscow_region", drive[confirm].lat, drive[confirm].lon)
        .unwrap();
    assert!(d > 200.0, "{d}");

    let mut fixes = drive.clone();
    // A 30 km jump east while still inside, 5 s after fix 5, and an invalid fix back at the
    // Kremlin 5 s after the second outside fix.
    let mut jump = fix(55, drive[5].lat, drive[5].lon + 0.48);
    let mut invalid = fix((f0 as i64 + 1) * 10 + 5, 55.7558, 37.6173);
    invalid.valid = false;
    fixes.insert(f0 + 2, invalid);
    fixes.insert(6, jump);

    let mut detector = JumpDetector::default();
    let mut v = VehicleZones::new();
    let mut events = Vec::new();
    let mut flagged = Vec::new();
    for mut f in fixes {
        f.is_jump = detector.is_jump(&f);
        if f.is_jump {
            flagged.push(f.time);
        }
        events.extend(v.observe(set, &f));
    }
    assert_eq!(flagged, [t(55)]);
    let exits: Vec<_> = events
        .iter()
        .filter(|e| e.zone == "moscow_region")
        .collect();
    assert_eq!(exits.len(), 1, "{events:?}");
    assert_eq!(exits[0].kind, ZoneEventKind::Exit);
    assert_eq!(
        (exits[0].time, exits[0].lat, exits[0].lon),
        (drive[confirm].time, drive[confirm].lat, drive[confirm].lon)
    );
    // The custom Oblast zone leaves with it; nothing else happens.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(v.inside_service_area(), Some(false));

    // Unflagged, the lone jump still cannot confirm anything (one fix, then back inside).
    jump.is_jump = false;
    let mut v = VehicleZones::new();
    let mut fixes = drive[..f0].to_vec();
    fixes.insert(6, jump);
    assert!(run(&mut v, set, &fixes).is_empty());
}

#[test]
fn newest_first_upload_of_the_drive_exits_once_at_the_right_fix() {
    let set = shipped_set();
    let drive = drive_out();
    let f0 = first_outside(set, &drive);
    let mut v = VehicleZones::new();
    // Live until the border, then the tracker buffers and uploads newest-first.
    assert!(run(&mut v, set, &drive[..f0]).is_empty());
    let mut upload = drive[f0..].to_vec();
    upload.reverse();
    let mut one_by_one = v.clone();
    let ev = v.observe_batch(set, &upload);
    let exits: Vec<_> = ev.iter().filter(|e| e.zone == "moscow_region").collect();
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].time, drive[f0 + 6].time);
    // Fed one by one, only the newest fix counts: older ones never change state.
    assert!(run(&mut one_by_one, set, &upload).is_empty());
    assert_eq!(one_by_one.last_fix_time(), Some(drive.last().unwrap().time));
}

#[test]
fn jitter_across_the_border_within_the_band_never_flaps() {
    let set = shipped_set();
    let drive = drive_out();
    let f0 = first_outside(set, &drive);
    let (a, b) = (drive[f0 - 1], drive[f0]);
    let mut rng = Rng(99);
    let mut v = VehicleZones::new();
    v.observe(set, &fix(0, a.lat, a.lon));
    let (kx, ky) = metres_per_degree(a.lat);
    let mut sides = [0usize; 2];
    for k in 1..=300 {
        // Within 120 m of the midpoint of the crossing step, so within 200 m of the border.
        let (mx, my) = ((a.lon + b.lon) / 2.0, (a.lat + b.lat) / 2.0);
        let lon = mx + (rng.next_f64() - 0.5) * 160.0 / kx;
        let lat = my + (rng.next_f64() - 0.5) * 160.0 / ky;
        let f = fix(k * 10, lat, lon);
        sides[in_service_area(set, &f) as usize] += 1;
        assert!(v.observe(set, &f).is_empty(), "flapped at {f:?}");
    }
    assert!(
        sides[0] > 20 && sides[1] > 20,
        "the jitter crosses the border: {sides:?}"
    );
    assert_eq!(v.inside_service_area(), Some(true));
}

#[test]
fn jump_detector_flags_one_wild_fix_and_accepts_a_real_relocation() {
    let mut d = JumpDetector::default();
    assert!(!d.is_jump(&fix(0, 55.75, 37.6)));
    assert!(!d.is_jump(&fix(10, 55.751, 37.6)));
    // 300 m in one second is noise, not a jump.
    assert!(!d.is_jump(&fix(11, 55.7537, 37.6)));
    assert!(d.is_jump(&fix(20, 56.0, 37.6)));
    assert!(!d.is_jump(&fix(30, 55.752, 37.6)));
    let mut invalid = fix(40, 10.0, 10.0);
    invalid.valid = false;
    assert!(!d.is_jump(&invalid));
    assert!(
        !d.is_jump(&fix(25, 10.0, 10.0)),
        "out of order is not judged"
    );
    // Towed 40 km away during a gap it cannot explain: three flags, then accepted.
    let far: Vec<bool> = (0..5)
        .map(|k| d.is_jump(&fix(100 + k * 10, 56.1, 37.6)))
        .collect();
    assert_eq!(far, [true, true, true, false, false]);
}

#[test]
fn debounce_config_parses_with_defaults_and_validates() {
    let c: DebounceConfig = serde_json::from_value(serde_json::json!({
        "parking": {"fixes": 2, "secs": 20, "hysteresis_m": 0.0}
    }))
    .unwrap();
    assert_eq!(c.parking.fixes, 2);
    assert_eq!(c.service_area, Debounce::REGION);
    assert!(c.validate().is_ok());
    let bad = DebounceConfig {
        depot: Debounce {
            fixes: 0,
            ..Debounce::SITE
        },
        ..DebounceConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "depot.fixes: expected an integer >= 1, got 0"
    );
    assert!(serde_json::from_value::<DebounceConfig>(serde_json::json!({"garage": {}})).is_err());
}

#[test]
fn fix_from_a_stored_position_keeps_time_place_and_validity() {
    let mut p = crate::model::Position::new(t(5), false, 55.75, 37.61);
    p.speed_kmh = 42.0;
    let f = Fix::from_position(&p);
    assert_eq!(
        (f.time, f.lat, f.lon, f.valid, f.speed_kmh, f.is_jump),
        (t(5), 55.75, 37.61, false, 42.0, false)
    );
}

#[test]
fn restored_membership_exits_without_a_fresh_first_fix() {
    let set = region();
    let mut before = VehicleZones::new();
    before.observe(&set, &fix(0, 55.75, 37.6));
    let saved: Vec<String> = before.zones().map(String::from).collect();
    let mut v = VehicleZones::restore(
        &set,
        before.last_fix_time().unwrap(),
        saved.iter().chain(&["gone".to_string()]),
    );
    assert_eq!(v.zones().collect::<Vec<_>>(), ["r"]);
    assert_eq!(v.inside_service_area(), Some(false));
    assert!(v.observe(&set, &fix(0, 55.75, 37.6)).is_empty(), "stale");
    let out = north_of_edge(1000.0);
    let fixes: Vec<Fix> = (1..=3).map(|k| fix(k * 30, out, 37.6)).collect();
    assert_eq!(
        kinds(&run(&mut v, &set, &fixes)),
        [(ZoneEventKind::Exit, "r", t(90))]
    );
}
