use super::*;

fn feature(props: Value, geometry: Value) -> Value {
    json!({"type": "Feature", "properties": props, "geometry": geometry})
}

fn square_ring() -> Value {
    json!([
        [37.60, 55.75],
        [37.61, 55.75],
        [37.61, 55.76],
        [37.60, 55.76],
        [37.60, 55.75]
    ])
}

fn err_of(f: Value) -> String {
    Zone::from_feature(&f).unwrap_err().to_string()
}

#[test]
fn polygon_feature_round_trips_with_settings_and_unknown_properties() {
    let f = feature(
        json!({"name": "lot", "kind": "parking", "buffer_m": 25.0, "debounce_fixes": 2,
               "debounce_secs": 45, "hysteresis_m": 5.0, "title": "Lot 1"}),
        json!({"type": "Polygon", "coordinates": [square_ring()]}),
    );
    let z = Zone::from_feature(&f).unwrap();
    assert_eq!(z.kind, ZoneKind::Parking);
    assert_eq!(z.buffer_m, 25.0);
    assert_eq!(
        z.debounce,
        DebounceOverride {
            fixes: Some(2),
            secs: Some(45),
            hysteresis_m: Some(5.0)
        }
    );
    assert_eq!(z.extra.get("title"), Some(&json!("Lot 1")));
    assert_eq!(z.to_feature(), f);
    assert_eq!(Zone::from_feature(&z.to_feature()).unwrap(), z);
}

#[test]
fn multipolygon_with_holes_round_trips() {
    let hole = json!([
        [37.602, 55.752],
        [37.602, 55.754],
        [37.604, 55.754],
        [37.602, 55.752]
    ]);
    let other = json!([[38.0, 55.0], [38.1, 55.0], [38.1, 55.1], [38.0, 55.0]]);
    let f = feature(
        json!({"name": "multi", "kind": "custom"}),
        json!({"type": "MultiPolygon", "coordinates": [[square_ring(), hole], [other]]}),
    );
    let z = Zone::from_feature(&f).unwrap();
    match &z.shape {
        Shape::Area(mp) => {
            assert_eq!(mp.0.len(), 2);
            assert_eq!(mp.0[0].interiors().len(), 1);
        }
        Shape::Circle { .. } => panic!("area expected"),
    }
    assert_eq!(z.to_feature(), f);
}

#[test]
fn point_with_radius_is_a_circle_and_round_trips() {
    let f = feature(
        json!({"name": "c", "kind": "depot", "radius_m": 150.0}),
        json!({"type": "Point", "coordinates": [37.6, 55.75]}),
    );
    let z = Zone::from_feature(&f).unwrap();
    assert_eq!(
        z.shape,
        Shape::Circle {
            center: Coord { x: 37.6, y: 55.75 },
            radius_m: 150.0
        }
    );
    assert_eq!(z.to_feature(), f);
}

#[test]
fn missing_name_is_reported_with_field_and_value() {
    let e = err_of(feature(
        json!({"kind": "parking"}),
        json!({"type": "Polygon", "coordinates": [square_ring()]}),
    ));
    assert_eq!(
        e,
        "request body, feature: properties.name: expected a non-empty string, got null"
    );
}

#[test]
fn unknown_kind_names_the_feature_and_lists_the_kinds() {
    let e = err_of(feature(
        json!({"name": "x", "kind": "garage"}),
        json!({"type": "Polygon", "coordinates": [square_ring()]}),
    ));
    assert_eq!(
        e,
        "request body, feature \"x\": properties.kind: expected one of service_area, parking, depot, \
         repair, custom, got \"garage\""
    );
}

#[test]
fn open_ring_is_rejected() {
    let e = err_of(feature(
        json!({"name": "x", "kind": "custom"}),
        json!({"type": "Polygon", "coordinates": [[[37.6, 55.7], [37.7, 55.7], [37.7, 55.8], [37.6, 55.8]]]}),
    ));
    assert!(
        e.contains("geometry.coordinates[0]: expected a closed ring"),
        "{e}"
    );
}

#[test]
fn ring_of_three_positions_is_rejected() {
    let e = err_of(feature(
        json!({"name": "x", "kind": "custom"}),
        json!({"type": "Polygon", "coordinates": [[[37.6, 55.7], [37.7, 55.7], [37.6, 55.7]]]}),
    ));
    assert!(e.contains("geometry.coordinates[0]: expected a linear ring of at least 4 positions, got \"3 positions\""), "{e}");
}

#[test]
fn non_finite_and_out_of_range_coordinates_are_rejected_with_their_index() {
    for bad in [json!("NaN"), json!(1e300), json!(null)] {
        let ring = json!([[37.6, 55.7], [37.7, 55.7], [bad, 55.8], [37.6, 55.7]]);
        let e = err_of(feature(
            json!({"name": "x", "kind": "custom"}),
            json!({"type": "MultiPolygon", "coordinates": [[ring]]}),
        ));
        assert!(
            e.contains("geometry.coordinates[0][0][2]: expected finite [lon, lat]"),
            "{e}"
        );
    }
}

#[test]
fn bad_settings_are_rejected() {
    let poly = json!({"type": "Polygon", "coordinates": [square_ring()]});
    let e = err_of(feature(
        json!({"name": "x", "kind": "custom", "buffer_m": -1}),
        poly.clone(),
    ));
    assert!(
        e.contains("properties.buffer_m: expected a number of metres >= 0, got -1"),
        "{e}"
    );
    let e = err_of(feature(
        json!({"name": "x", "kind": "custom", "debounce_fixes": 0}),
        poly.clone(),
    ));
    assert!(
        e.contains("properties.debounce_fixes: expected an integer >= 1, got 0"),
        "{e}"
    );
    let e = err_of(feature(
        json!({"name": "x", "kind": "custom"}),
        json!({"type": "Point", "coordinates": [37.6, 55.7]}),
    ));
    assert!(
        e.contains("properties.radius_m: expected a positive number"),
        "{e}"
    );
    let e = err_of(feature(
        json!({"name": "x", "kind": "custom"}),
        json!({"type": "LineString", "coordinates": [[37.6, 55.7], [37.7, 55.7]]}),
    ));
    assert!(
        e.contains("geometry.type: expected Polygon, MultiPolygon or Point"),
        "{e}"
    );
}

#[test]
fn collection_errors_name_the_file_and_feature_index() {
    let doc = json!({"type": "FeatureCollection", "features": [
        feature(json!({"name": "ok", "kind": "custom"}), json!({"type": "Polygon", "coordinates": [square_ring()]})),
        feature(json!({"name": "bad", "kind": "nope"}), json!({"type": "Polygon", "coordinates": [square_ring()]})),
    ]});
    let e = zones_from_geojson(&doc, "geofences/x.geojson")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("geofences/x.geojson, feature #1 \"bad\": properties.kind"),
        "{e}"
    );
    let e = zones_from_geojson(&json!({"type": "Polygon"}), "f.geojson")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("type: expected \"FeatureCollection\" or \"Feature\""),
        "{e}"
    );
}

#[test]
fn kinds_parse_and_print_in_snake_case() {
    for k in ZoneKind::ALL {
        assert_eq!(ZoneKind::parse(k.as_str()), Some(k));
        assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
    }
}
