use chrono::{Duration, TimeZone};

use super::*;

const R: f64 = 6_371_008.8;

/// Degrees of latitude for `m` metres north.
fn north(m: f64) -> f64 {
    m / (R * std::f64::consts::PI / 180.0)
}

fn day() -> Day {
    Day::from_date(chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap())
}

fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(day().start_ms()).unwrap() + Duration::seconds(s)
}

pub(crate) fn fix(s: i64, lat: f64, speed: f64, ignition: bool) -> StoredPosition {
    let mut p = StoredPosition::from_position(
        &crate::model::Position::new(at(s), true, lat, 37.6),
        at(s),
        0.0,
    );
    p.speed_kmh = speed;
    p.ignition = Some(ignition);
    p
}

fn event(id: i64, s: i64, kind: &str, zone: &str, zone_kind: &str) -> StoredZoneEvent {
    StoredZoneEvent {
        id,
        vehicle: Some(VehicleId("car-1".into())),
        device_id: DeviceId::new("dev-1"),
        kind: kind.into(),
        zone: zone.into(),
        zone_kind: zone_kind.into(),
        time: at(s),
        lat: 55.75,
        lon: 37.6,
    }
}

const H: i64 = 3600;

/// A Moscow taxi's day: parked overnight with the ignition off (a fix every 10 min), two hours
/// of stop-and-go traffic (a fix every 10 s: 60 s at 20 km/h, 30 s standing, engine running),
/// two and a half hours at 60 km/h with one GPS jump 55 km off, part of it outside the
/// service area, then parked again (a fix every 30 min).
fn taxi_day() -> (Vec<StoredPosition>, f64) {
    let mut out = Vec::new();
    let mut lat = 55.75;
    for s in (0..6 * H).step_by(600) {
        out.push(fix(s, lat, 0.0, false));
    }
    let mut odo = 100_000.0;
    let mut driven = 0.0;
    for i in 0..720 {
        let moving = i % 9 < 6;
        let mut p = fix(6 * H + i * 10, lat, if moving { 20.0 } else { 0.0 }, true);
        p.odometer_m = Some(odo);
        out.push(p);
        if moving {
            let m = 20.0 / 3.6 * 10.0;
            lat += north(m);
            odo += m;
            driven += m;
        }
    }
    for i in 0..900 {
        let s = 8 * H + i * 10;
        let mut p = fix(s, lat, 60.0, true);
        p.odometer_m = Some(odo);
        out.push(p);
        if s == 8 * H + 30 * 60 {
            // 55 km away five seconds later, claiming 150 km/h: a reflection.
            out.push(fix(s + 5, lat + 0.5, 150.0, true));
        }
        let m = 60.0 / 3.6 * 10.0;
        lat += north(m);
        odo += m;
        driven += m;
    }
    let mut parked = fix(10 * H + 30 * 60, lat, 0.0, false);
    parked.odometer_m = Some(odo);
    out.push(parked);
    for s in (11 * H..24 * H).step_by(1800) {
        out.push(fix(s, lat, 0.0, false));
    }
    (out, driven)
}

fn summary_of(positions: &[StoredPosition], events: &[StoredZoneEvent]) -> DailySummary {
    summarize(
        &VehicleId("car-1".into()),
        &DeviceId::new("dev-1"),
        day(),
        positions,
        events,
        &SummaryRules::default(),
        at(30 * H),
    )
    .expect("a day with positions has a summary")
}

#[test]
fn a_taxi_day_counts_traffic_highway_and_the_trip_outside_but_not_the_night_or_the_jump() {
    let (positions, driven) = taxi_day();
    let events = [
        // Entered the area the evening before: inside at midnight.
        event(1, -H, "enter", "moscow", "service_area"),
        event(2, 7 * H, "enter", "depot-1", "depot"),
        event(3, 9 * H, "exit", "moscow", "service_area"),
        event(4, 10 * H + 30 * 60, "enter", "moscow", "service_area"),
    ];
    let s = summary_of(&positions, &events);
    assert_eq!(s.positions, positions.len() as u64);
    // 80 cycles of 60 s moving in traffic, then 9,000 s on the highway.
    assert_eq!(s.moving_s, 80 * 60 + 9000);
    // The engine ran from 06:00 to 10:30; the night's 10-minute fixes are gaps anyway.
    assert_eq!(s.engine_s, 4 * H + 30 * 60);
    // 26.7 km in traffic + 150 km on the highway, the 55 km jump (twice) not driven.
    assert!(
        (s.distance_m - driven).abs() < 1.0,
        "{} vs {driven}",
        s.distance_m
    );
    assert!((driven - 176_666.7).abs() < 1.0, "{driven}");
    assert_eq!(
        s.max_speed_kmh, 60.0,
        "the jump's 150 km/h is not a speed driven"
    );
    assert_eq!(s.outside_s, 90 * 60);
    assert_eq!(s.first_fix, at(0));
    assert_eq!(s.last_fix, at(23 * H + 30 * 60));
    assert_eq!(s.odometer_first_m, Some(100_000.0));
    let odo_last = s.odometer_last_m.unwrap();
    assert!((odo_last - 100_000.0 - driven).abs() < 1e-6, "{odo_last}");
    assert_eq!(s.computed_at, at(30 * H));
}

#[test]
fn a_silent_tracker_s_gap_is_neither_moving_nor_engine_time() {
    // Moving at 40 km/h, a fix every 10 s, then 20 minutes of silence mid-drive.
    let mut positions: Vec<_> = (0..60).map(|i| fix(i * 10, 55.75, 40.0, true)).collect();
    positions.extend((0..60).map(|i| fix(600 + 1200 + i * 10, 55.75, 40.0, true)));
    let s = summary_of(&positions, &[]);
    assert_eq!(s.moving_s, 59 * 10 + 59 * 10);
    assert_eq!(s.engine_s, s.moving_s);
    // A gap just within the limit counts.
    let short: Vec<_> = [0, 300, 310]
        .iter()
        .map(|&t| fix(t, 55.75, 40.0, true))
        .collect();
    assert_eq!(summary_of(&short, &[]).moving_s, 310);
}

#[test]
fn standing_fixes_and_a_still_device_are_not_moving() {
    let mut positions: Vec<_> = (0..10).map(|i| fix(i * 10, 55.75, 2.0, true)).collect();
    let mut still = fix(100, 55.75, 25.0, true);
    still.motion = Some(false);
    positions.push(still);
    positions.push(fix(110, 55.75, 0.0, true));
    let s = summary_of(&positions, &[]);
    assert_eq!(s.moving_s, 0);
    assert_eq!(s.engine_s, 110);
}

#[test]
fn invalid_fixes_count_no_distance() {
    let mut positions = vec![
        fix(0, 55.75, 30.0, true),
        fix(10, 55.75 + north(80.0), 30.0, true),
    ];
    let mut bad = fix(20, 55.80, 30.0, true);
    bad.valid = false;
    positions.push(bad);
    positions.push(fix(30, 55.75 + north(160.0), 30.0, true));
    let s = summary_of(&positions, &[]);
    assert!((s.distance_m - 160.0).abs() < 0.01, "{}", s.distance_m);
}

#[test]
fn a_bad_first_fix_is_re_anchored_away_like_the_pipeline_does() {
    // The day's first fix is 40 km off; the true fixes that follow agree with one another.
    let mut positions = vec![fix(0, 55.40, 0.0, true)];
    for i in 1..=10 {
        positions.push(fix(i * 10, 55.75 + north(100.0 * i as f64), 36.0, true));
    }
    let s = summary_of(&positions, &[]);
    // Re-anchored on the fourth agreeing fix (the chain spans 30 s): 100 m steps from there,
    // the 39 km hop never driven.
    assert!((s.distance_m - 600.0).abs() < 0.01, "{}", s.distance_m);
}

#[test]
fn outside_time_from_the_first_event_of_the_day_and_with_two_service_areas() {
    // No event before midnight; the first is an entry at 02:00: outside until then.
    let ev = [event(1, 2 * H, "enter", "moscow", "service_area")];
    assert_eq!(outside_seconds(&ev, day()), 2 * H);
    // Left at 22:00 and never came back: outside until the day ends.
    let ev = [event(1, 22 * H, "exit", "moscow", "service_area")];
    assert_eq!(outside_seconds(&ev, day()), 2 * H);
    // Outside since the day before, no event today: the whole day.
    let ev = [event(1, -5 * H, "exit", "moscow", "service_area")];
    assert_eq!(outside_seconds(&ev, day()), 24 * H);
    // No service-area event at all: inside.
    assert_eq!(outside_seconds(&[], day()), 0);
    // Two service areas: leaving Moscow into the airport zone is not outside.
    let ev = [
        event(1, -H, "enter", "moscow", "service_area"),
        event(2, 10 * H, "enter", "svo", "service_area"),
        event(3, 10 * H + 60, "exit", "moscow", "service_area"),
        event(4, 12 * H, "exit", "svo", "service_area"),
        event(5, 13 * H, "enter", "moscow", "service_area"),
        // The next day's events change nothing today.
        event(6, 25 * H, "exit", "moscow", "service_area"),
    ];
    assert_eq!(outside_seconds(&ev, day()), H);
}

#[test]
fn no_positions_no_summary() {
    assert!(summarize(
        &VehicleId("car-1".into()),
        &DeviceId::new("dev-1"),
        day(),
        &[],
        &[],
        &SummaryRules::default(),
        at(0),
    )
    .is_none());
}
