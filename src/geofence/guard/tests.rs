use super::*;
use serde_json::json;

fn zone(kind: &str, rings: serde_json::Value) -> Zone {
    Zone::from_feature(&json!({"type": "Feature",
        "properties": {"name": "z", "kind": kind},
        "geometry": {"type": "Polygon", "coordinates": rings}}))
    .unwrap()
}

/// Counter-clockwise square around Moscow's centre, [lon, lat].
fn square() -> serde_json::Value {
    json!([[
        [37.0, 55.0],
        [38.0, 55.0],
        [38.0, 56.0],
        [37.0, 56.0],
        [37.0, 55.0]
    ]])
}

fn swapped_square() -> serde_json::Value {
    json!([[
        [55.0, 37.0],
        [55.0, 38.0],
        [56.0, 38.0],
        [56.0, 37.0],
        [55.0, 37.0]
    ]])
}

/// A bow tie: the outer ring crosses itself in the middle.
fn bow_tie() -> serde_json::Value {
    json!([[
        [37.0, 55.0],
        [38.0, 56.0],
        [38.0, 55.0],
        [37.0, 56.0],
        [37.0, 55.0]
    ]])
}

#[test]
fn a_clean_counter_clockwise_square_has_nothing_to_report() {
    assert_eq!(
        geometry(&zone("service_area", square())),
        GeometryReport::default()
    );
}

#[test]
fn a_clockwise_outer_ring_is_a_warning_not_an_error() {
    let cw = json!([[
        [37.0, 55.0],
        [37.0, 56.0],
        [38.0, 56.0],
        [38.0, 55.0],
        [37.0, 55.0]
    ]]);
    let r = geometry(&zone("service_area", cw));
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].contains("clockwise"), "{r:?}");
}

#[test]
fn a_self_intersecting_service_area_is_refused_and_a_parking_lot_only_warned() {
    let r = geometry(&zone("service_area", bow_tie()));
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].contains("intersects itself"), "{r:?}");
    let r = geometry(&zone("parking", bow_tie()));
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(
        r.warnings.iter().any(|w| w.contains("intersects itself")),
        "{r:?}"
    );
}

#[test]
fn a_hole_crossing_the_outer_ring_is_a_self_intersection() {
    let rings = json!([
        [
            [37.0, 55.0],
            [38.0, 55.0],
            [38.0, 56.0],
            [37.0, 56.0],
            [37.0, 55.0]
        ],
        [
            [37.5, 55.5],
            [37.5, 56.5],
            [37.7, 56.5],
            [37.7, 55.5],
            [37.5, 55.5]
        ]
    ]);
    let r = geometry(&zone("service_area", rings));
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].contains("rings #0 and #1"), "{r:?}");
}

#[test]
fn repeated_vertices_are_not_a_self_intersection() {
    let rings = json!([[
        [37.0, 55.0],
        [38.0, 55.0],
        [38.0, 55.0],
        [38.0, 56.0],
        [37.0, 56.0],
        [37.0, 55.0]
    ]]);
    assert_eq!(
        geometry(&zone("service_area", rings)),
        GeometryReport::default()
    );
}

#[test]
fn the_shipped_service_area_is_valid() {
    let set = ZoneSet::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/geofences")).unwrap();
    for z in set.zones() {
        let r = geometry(z);
        assert!(r.errors.is_empty(), "{}: {:?}", z.name, r.errors);
    }
}

#[test]
fn swapped_coordinates_are_caught_against_the_zone_they_replace() {
    let old = zone("service_area", square());
    let bad = zone("service_area", swapped_square());
    let msg = swapped(&bad, Some(&old), &[]).expect("refused");
    assert!(msg.contains("[lat, lon]"), "{msg}");
    assert_eq!(swapped(&old, Some(&old), &[]), None);
    // Moved far away but not a swap: allowed.
    let elsewhere = zone(
        "service_area",
        json!([[
            [30.0, 59.0],
            [31.0, 59.0],
            [31.0, 60.0],
            [30.0, 60.0],
            [30.0, 59.0]
        ]]),
    );
    assert_eq!(swapped(&elsewhere, Some(&old), &[]), None);
}

#[test]
fn swapped_coordinates_of_a_new_zone_are_caught_against_the_fleet() {
    let cars = [(55.5, 37.5), (55.7, 37.6)];
    let bad = zone("parking", swapped_square());
    assert!(swapped(&bad, None, &cars).is_some());
    assert_eq!(swapped(&zone("parking", square()), None, &cars), None);
    // No car anywhere near either: nothing to judge by.
    assert_eq!(swapped(&bad, None, &[(10.0, 10.0)]), None);
}

#[test]
fn exits_count_the_cars_that_leave_every_service_area() {
    let old = ZoneSet::from_zones(vec![zone("service_area", square())]).unwrap();
    let half = zone(
        "service_area",
        json!([[
            [37.0, 55.0],
            [38.0, 55.0],
            [38.0, 55.5],
            [37.0, 55.5],
            [37.0, 55.0]
        ]]),
    );
    let new = ZoneSet::from_zones(vec![half]).unwrap();
    let cars = [(55.2, 37.5), (55.8, 37.5), (55.9, 37.5), (60.0, 30.0)];
    let (e, leaving) = exits(&old, &new, &cars);
    assert_eq!(
        e,
        Exits {
            inside: 3,
            leaving: 2
        }
    );
    assert_eq!(leaving, vec![1, 2]);
    assert!(e.exceeds(0.10));
    assert!(!e.exceeds(0.7));
    let (same, _) = exits(&old, &old, &cars);
    assert_eq!(same.leaving, 0);
    assert!(!Exits::default().exceeds(0.0));
}
