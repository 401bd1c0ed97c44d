use super::*;
use geo::{LineString, MultiPolygon, Polygon};
use std::sync::OnceLock;

use crate::geofence::zone::DebounceOverride;

pub(crate) fn shipped_set() -> &'static ZoneSet {
    static SET: OnceLock<ZoneSet> = OnceLock::new();
    SET.get_or_init(|| {
        ZoneSet::load_dir(format!("{}/geofences", env!("CARGO_MANIFEST_DIR")))
            .expect("shipped geofences load")
    })
}

fn names(set: &ZoneSet, lat: f64, lon: f64) -> Vec<String> {
    let mut v: Vec<String> = set.containing(lat, lon).map(|z| z.name.clone()).collect();
    v.sort();
    v
}

pub(crate) fn square(name: &str, kind: ZoneKind, lon: f64, lat: f64, half: f64) -> Zone {
    Zone {
        name: name.into(),
        kind,
        shape: Shape::Area(MultiPolygon(vec![Polygon::new(
            LineString::from(vec![
                (lon - half, lat - half),
                (lon + half, lat - half),
                (lon + half, lat + half),
                (lon - half, lat + half),
                (lon - half, lat - half),
            ]),
            vec![],
        )])),
        buffer_m: 0.0,
        debounce: DebounceOverride::default(),
        extra: Default::default(),
    }
}

#[test]
fn shipped_zones_load_with_their_kinds() {
    let set = shipped_set();
    let kind = |n: &str| set.get(n).map(|z| z.kind);
    assert_eq!(kind("moscow_region"), Some(ZoneKind::ServiceArea));
    assert_eq!(kind("moscow"), Some(ZoneKind::Custom));
    assert_eq!(kind("moscow_oblast"), Some(ZoneKind::Custom));
    assert_eq!(kind("parking_komsomolskaya"), Some(ZoneKind::Parking));
    assert_eq!(kind("depot_nagatino"), Some(ZoneKind::Depot));
    assert_eq!(kind("repair_yuzhnoportovaya"), Some(ZoneKind::Repair));
    assert_eq!(set.len(), 8);
}

#[test]
fn moscow_points_are_in_moscow_and_the_service_area_not_the_oblast() {
    let set = shipped_set();
    for (place, lon, lat) in [
        ("Kremlin", 37.6173, 55.7558),
        ("Zelenograd", 37.19, 55.99),
        ("Troitsk", 37.30, 55.48),
    ] {
        assert_eq!(names(set, lat, lon), ["moscow", "moscow_region"], "{place}");
    }
}

#[test]
fn oblast_points_are_in_the_oblast_and_the_service_area_not_moscow() {
    let set = shipped_set();
    for (place, lon, lat) in [
        ("west of Moscow", 36.0, 55.5),
        ("Podolsk", 37.55, 55.43),
        ("Khimki", 37.43, 55.89),
        ("Sergiev Posad", 38.13, 56.31),
        ("Kolomna", 38.78, 55.08),
    ] {
        assert_eq!(
            names(set, lat, lon),
            ["moscow_oblast", "moscow_region"],
            "{place}"
        );
    }
}

#[test]
fn neighbouring_regions_are_outside_every_zone() {
    let set = shipped_set();
    for (place, lon, lat) in [
        ("Ryazan Oblast", 39.0, 54.5),
        ("Ryazan", 39.74, 54.63),
        ("Tver", 35.92, 56.86),
        ("Kaluga", 36.27, 54.53),
        ("Tula", 37.62, 54.19),
        ("Vladimir", 40.41, 56.13),
    ] {
        assert!(
            names(set, lat, lon).is_empty(),
            "{place}: {:?}",
            names(set, lat, lon)
        );
    }
}

#[test]
fn example_sites_lie_in_moscow() {
    let set = shipped_set();
    for z in set
        .zones()
        .iter()
        .filter(|z| z.kind != ZoneKind::ServiceArea && z.kind != ZoneKind::Custom)
    {
        let c = match &z.shape {
            Shape::Circle { center, .. } => *center,
            Shape::Area(mp) => mp.0[0].exterior().0[0],
        };
        let here = names(set, c.y, c.x);
        assert!(here.contains(&"moscow".to_string()), "{}: {here:?}", z.name);
        assert!(here.contains(&z.name), "{}: {here:?}", z.name);
    }
}

#[test]
fn garbage_coordinates_are_in_no_zone() {
    let set = shipped_set();
    assert_eq!(set.containing(f64::NAN, 37.6).count(), 0);
    assert_eq!(set.containing(55.7, f64::INFINITY).count(), 0);
    assert_eq!(set.containing(0.0, 0.0).count(), 0);
}

#[test]
fn distance_to_boundary_matches_a_known_offset() {
    // A square 0.01° (~1.11 km north-south) around a point; its edges are straight lines.
    let set = ZoneSet::from_zones(vec![square("sq", ZoneKind::Custom, 37.6, 55.75, 0.01)]).unwrap();
    let (_, ky) = metres_per_degree(55.75);
    // 0.005° south of the centre, 0.005° inside the south edge.
    let d = set.distance_to_boundary_m("sq", 55.745, 37.6).unwrap();
    assert!((d - 0.005 * ky).abs() < 0.01, "{d}");
    // 0.002° north of the north edge, outside.
    let d = set.distance_to_boundary_m("sq", 55.762, 37.6).unwrap();
    assert!((d - 0.002 * ky).abs() < 0.01, "{d}");
    assert_eq!(set.distance_to_boundary_m("nope", 55.0, 37.0), None);
}

#[test]
fn service_area_border_distance_is_small_near_a_vertex_and_large_at_the_kremlin() {
    let set = shipped_set();
    let d = set
        .distance_to_boundary_m("moscow_region", 55.7558, 37.6173)
        .unwrap();
    assert!(d > 50_000.0 && d < 200_000.0, "{d}");
    let v = match &set.get("moscow_region").unwrap().shape {
        Shape::Area(mp) => mp.0[0].exterior().0[1000],
        Shape::Circle { .. } => unreachable!(),
    };
    let d = set
        .distance_to_boundary_m("moscow_region", v.y, v.x)
        .unwrap();
    assert_eq!(d, 0.0);
    let d = set
        .distance_to_boundary_m("moscow_region", v.y + 0.0005, v.x)
        .unwrap();
    assert!(d <= 0.0005 * 111_500.0, "{d}");
}

#[test]
fn buffer_extends_a_zone_outwards_by_metres() {
    let mut z = square("sq", ZoneKind::Parking, 37.6, 55.75, 0.001);
    z.buffer_m = 50.0;
    let set = ZoneSet::from_zones(vec![z]).unwrap();
    let (_, ky) = metres_per_degree(55.75);
    let north_edge = 55.751;
    assert_eq!(set.containing(north_edge + 40.0 / ky, 37.6).count(), 1);
    assert_eq!(set.containing(north_edge + 60.0 / ky, 37.6).count(), 0);
    // The reported distance ignores the buffer.
    let d = set
        .distance_to_boundary_m("sq", north_edge + 40.0 / ky, 37.6)
        .unwrap();
    assert!((d - 40.0).abs() < 0.01, "{d}");
}

#[test]
fn circle_contains_points_within_its_radius_plus_buffer() {
    let z = Zone {
        name: "c".into(),
        kind: ZoneKind::Parking,
        shape: Shape::Circle {
            center: Coord { x: 37.6, y: 55.75 },
            radius_m: 100.0,
        },
        buffer_m: 20.0,
        debounce: DebounceOverride::default(),
        extra: Default::default(),
    };
    let set = ZoneSet::from_zones(vec![z]).unwrap();
    let (kx, ky) = metres_per_degree(55.75);
    assert_eq!(set.containing(55.75 + 110.0 / ky, 37.6).count(), 1);
    assert_eq!(set.containing(55.75 + 125.0 / ky, 37.6).count(), 0);
    assert_eq!(set.containing(55.75, 37.6 + 119.0 / kx).count(), 1);
    assert_eq!(set.containing(55.75, 37.6 - 121.0 / kx).count(), 0);
    let d = set.distance_to_boundary_m("c", 55.75, 37.6).unwrap();
    assert!((d - 100.0).abs() < 1e-9);
}

#[test]
fn duplicate_names_are_rejected() {
    let a = square("dup", ZoneKind::Parking, 37.6, 55.75, 0.001);
    let err = ZoneSet::from_zones(vec![a.clone(), a]).unwrap_err();
    assert!(
        err.to_string().contains("duplicate zone name \"dup\""),
        "{err}"
    );
}

#[test]
fn load_dir_names_both_files_of_a_duplicate_and_the_file_of_bad_json() {
    let dir = std::env::temp_dir().join(format!("fleetgate-geofence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let feature = square("dup", ZoneKind::Parking, 37.6, 55.75, 0.001).to_feature();
    let fc = serde_json::json!({"type": "FeatureCollection", "features": [feature]}).to_string();
    std::fs::write(dir.join("a.geojson"), &fc).unwrap();
    std::fs::write(dir.join("b.geojson"), &fc).unwrap();
    std::fs::write(dir.join("ignored.txt"), "not geojson").unwrap();
    let err = ZoneSet::load_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("a.geojson") && err.contains("b.geojson") && err.contains("\"dup\""),
        "{err}"
    );
    std::fs::write(dir.join("b.geojson"), "{ nope").unwrap();
    let err = ZoneSet::load_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("b.geojson") && err.contains("invalid JSON"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let err = ZoneSet::load_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn debounce_resolves_kind_defaults_and_zone_overrides() {
    let mut z = square("p", ZoneKind::Parking, 37.6, 55.75, 0.001);
    z.debounce.secs = Some(90);
    let set = ZoneSet::from_zones(vec![z, square("r", ZoneKind::Custom, 37.0, 55.0, 0.1)]).unwrap();
    assert_eq!(
        set.debounce("p"),
        Some(Debounce {
            secs: 90,
            ..Debounce::SITE
        })
    );
    assert_eq!(set.debounce("r"), Some(Debounce::REGION));
}

#[test]
fn grids_of_the_shipped_regions_are_sized_to_their_vertices() {
    for (name, vertices, nx, ny, boundary, per_cell) in shipped_set().grid_stats() {
        assert!(nx * ny >= vertices, "{name}: {nx}x{ny} for {vertices}");
        assert!(
            per_cell < 12.0,
            "{name}: {boundary} boundary cells, {per_cell} edges each"
        );
    }
}
