//! What the console draws: zone outlines from GeoJSON (simplified with Douglas–Peucker for
//! drawing; the 13,000-vertex service area becomes a few hundred points); the vehicles and
//! their states come from [`super::fleet`]. What is drawn is the zone index in force (`[geofences]`, reloaded on
//! SIGHUP and through the geofences API) plus any extra files in `[status] map_layers`; the
//! simplified drawing is cached until either changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use geo::{LineString, Simplify};
use serde::Serialize;
use serde_json::Value;

use super::status::StatusConfig;
use crate::geofence::ZoneSet;

/// Metres per degree of latitude (and of longitude at the equator), for the tolerance.
const M_PER_DEG: f64 = 111_320.0;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// A zone as drawn: rings of `[lon, lat]` (outer rings and holes alike: the page fills with
/// the even-odd rule), or a circle.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapZone {
    pub name: String,
    /// `properties.title`, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `service_area`, `parking`, `depot`, `repair`, `custom` (GeoJSON `properties.kind`).
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rings: Vec<Vec<[f64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circle: Option<Circle>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Circle {
    pub lon: f64,
    pub lat: f64,
    pub radius_m: f64,
}

/// `GET /api/v1/map`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MapData {
    pub zones: Vec<MapZone>,
    /// `[min_lon, min_lat, max_lon, max_lat]` of every zone, `None` with no zones.
    pub bbox: Option<[f64; 4]>,
    /// Shown under the map whenever zones are drawn (OSM data must be attributed).
    pub attribution: String,
    /// Seconds between the page's refreshes.
    pub refresh_s: u64,
    /// Drawing tolerance the layers were simplified with, degrees.
    #[serde(skip)]
    pub tolerance_deg: f64,
}

type Drawn = (Arc<ZoneSet>, Arc<MapData>, Arc<MapData>);

/// The layers in force; cheap to clone, replaced whole.
#[derive(Clone, Default)]
pub struct MapLayers {
    inner: Arc<RwLock<Arc<MapData>>>,
    /// (zone set, file layers) → what was drawn from them.
    drawn: Arc<Mutex<Option<Drawn>>>,
}

impl MapLayers {
    pub fn get(&self) -> Arc<MapData> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, data: MapData) {
        match self.inner.write() {
            Ok(mut g) => *g = Arc::new(data),
            Err(p) => *p.into_inner() = Arc::new(data),
        }
    }

    /// The zone index's zones and the file layers, simplified, in drawing order (service area
    /// underneath, sites on top). Rebuilt only when either changed.
    pub fn with_zones(&self, zones: Arc<ZoneSet>) -> Arc<MapData> {
        let files = self.get();
        let mut drawn = match self.drawn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((z, f, m)) = drawn.as_ref() {
            if Arc::ptr_eq(z, &zones) && Arc::ptr_eq(f, &files) {
                return m.clone();
            }
        }
        let mut all: Vec<MapZone> = zones
            .zones()
            .iter()
            .map(|z| drawn_zone(z, files.tolerance_deg))
            .collect();
        all.extend(files.zones.iter().cloned());
        all.sort_by_key(|z| draw_rank(&z.kind));
        let m = Arc::new(MapData {
            bbox: bbox(&all),
            zones: all,
            attribution: files.attribution.clone(),
            refresh_s: files.refresh_s,
            tolerance_deg: files.tolerance_deg,
        });
        *drawn = Some((zones, files, m.clone()));
        m
    }
}

/// Large areas first so that sites stay visible on top of them.
fn draw_rank(kind: &str) -> u8 {
    match kind {
        "service_area" => 0,
        "custom" => 1,
        _ => 2,
    }
}

/// No file layers: only the zone index is drawn.
pub fn empty(cfg: &StatusConfig) -> MapData {
    MapData {
        attribution: cfg.map_attribution.clone(),
        refresh_s: cfg.refresh_s,
        tolerance_deg: cfg.simplify_m / M_PER_DEG,
        ..MapData::default()
    }
}

/// Load every configured file (a directory means its `*.geojson`, in name order).
pub fn load(cfg: &StatusConfig) -> Result<MapData, MapError> {
    let tolerance = cfg.simplify_m / M_PER_DEG;
    let mut zones = Vec::new();
    for path in files(&cfg.map_layers)? {
        let text = std::fs::read_to_string(&path).map_err(|e| MapError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| MapError::File {
            path: path.clone(),
            message: format!("not JSON: {e}"),
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        zones.extend(
            zones_of(&doc, &stem, tolerance).map_err(|message| MapError::File {
                path: path.clone(),
                message,
            })?,
        );
    }
    Ok(MapData {
        bbox: bbox(&zones),
        zones,
        attribution: cfg.map_attribution.clone(),
        refresh_s: cfg.refresh_s,
        tolerance_deg: tolerance,
    })
}

fn files(paths: &[String]) -> Result<Vec<PathBuf>, MapError> {
    let mut out = Vec::new();
    for p in paths {
        let path = Path::new(p);
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| MapError::File {
                    path: path.into(),
                    message: e.to_string(),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "geojson"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.into());
        }
    }
    Ok(out)
}

/// A zone in force as drawn: read from its typed shape (the zone was parsed once, by
/// `geofence::zone`).
fn drawn_zone(z: &crate::geofence::Zone, tol: f64) -> MapZone {
    let ring = |ls: &geo::LineString<f64>| -> Vec<[f64; 2]> {
        let pts: Vec<[f64; 2]> = ls.0.iter().map(|c| [c.x, c.y]).collect();
        simplify(&pts, tol)
    };
    let mut rings = Vec::new();
    let mut circle = None;
    match &z.shape {
        crate::geofence::Shape::Area(mp) => {
            for p in &mp.0 {
                rings.extend(
                    std::iter::once(p.exterior())
                        .chain(p.interiors())
                        .map(ring)
                        .filter(|r| r.len() >= 4),
                );
            }
        }
        crate::geofence::Shape::Circle { center, radius_m } => {
            circle = Some(Circle {
                lon: center.x,
                lat: center.y,
                radius_m: *radius_m,
            })
        }
    }
    MapZone {
        name: z.name.clone(),
        title: z
            .extra
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_string),
        kind: z.kind.as_str().to_string(),
        rings,
        circle,
    }
}

/// The zones of a GeoJSON document (FeatureCollection, Feature or bare geometry): the
/// `[status] map_layers` files, drawings only (any kind, lines skipped), never zones in force.
pub fn zones_of(
    doc: &Value,
    default_name: &str,
    tolerance_deg: f64,
) -> Result<Vec<MapZone>, String> {
    let features: Vec<&Value> = match doc.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => doc
            .get("features")
            .and_then(Value::as_array)
            .ok_or("FeatureCollection without features")?
            .iter()
            .collect(),
        Some("Feature") => vec![doc],
        Some(_) => {
            return zone(doc, &Value::Null, default_name, tolerance_deg)
                .map(|z| z.into_iter().collect())
        }
        None => return Err("no GeoJSON type".into()),
    };
    let mut out = Vec::new();
    for (i, f) in features.iter().enumerate() {
        let geometry = f.get("geometry").unwrap_or(&Value::Null);
        let props = f.get("properties").unwrap_or(&Value::Null);
        let name = if features.len() == 1 {
            default_name.to_string()
        } else {
            format!("{default_name}#{i}")
        };
        out.extend(
            zone(geometry, props, &name, tolerance_deg).map_err(|e| format!("feature {i}: {e}"))?,
        );
    }
    Ok(out)
}

fn zone(
    geometry: &Value,
    props: &Value,
    default_name: &str,
    tol: f64,
) -> Result<Option<MapZone>, String> {
    let name = props
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(default_name)
        .to_string();
    let kind = props
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("custom")
        .to_string();
    let coords = geometry.get("coordinates");
    let mut rings = Vec::new();
    let mut circle = None;
    match geometry.get("type").and_then(Value::as_str) {
        Some("Polygon") => rings.extend(polygon(coords, tol)?),
        Some("MultiPolygon") => {
            for p in coords
                .and_then(Value::as_array)
                .ok_or("MultiPolygon without coordinates")?
            {
                rings.extend(polygon(Some(p), tol)?);
            }
        }
        Some("Point") => {
            let [lon, lat] = point(coords.ok_or("Point without coordinates")?)?;
            let radius_m = props
                .get("radius_m")
                .and_then(Value::as_f64)
                .ok_or("a Point zone needs properties.radius_m")?;
            circle = Some(Circle { lon, lat, radius_m });
        }
        // Lines and other geometries are not zones; nothing to draw.
        _ => return Ok(None),
    }
    Ok(Some(MapZone {
        name,
        title: props
            .get("title")
            .and_then(Value::as_str)
            .map(str::to_string),
        kind,
        rings,
        circle,
    }))
}

fn point(v: &Value) -> Result<[f64; 2], String> {
    match v.as_array().map(|a| a.as_slice()) {
        Some([lon, lat, ..]) => match (lon.as_f64(), lat.as_f64()) {
            (Some(lon), Some(lat)) => Ok([lon, lat]),
            _ => Err("a position is not two numbers".into()),
        },
        _ => Err("a position is not [lon, lat]".into()),
    }
}

fn polygon(coords: Option<&Value>, tol: f64) -> Result<Vec<Vec<[f64; 2]>>, String> {
    let rings = coords
        .and_then(Value::as_array)
        .ok_or("Polygon without rings")?;
    let mut out = Vec::with_capacity(rings.len());
    for r in rings {
        let pts = r
            .as_array()
            .ok_or("a ring is not an array")?
            .iter()
            .map(point)
            .collect::<Result<Vec<_>, _>>()?;
        let simplified = simplify(&pts, tol);
        if simplified.len() >= 4 {
            out.push(simplified);
        }
    }
    Ok(out)
}

/// Douglas–Peucker, rounded to 5 decimals (~1 m): a drawing, not a boundary to test against.
pub fn simplify(ring: &[[f64; 2]], tolerance_deg: f64) -> Vec<[f64; 2]> {
    let line: LineString<f64> = ring.iter().map(|&[x, y]| (x, y)).collect::<Vec<_>>().into();
    let line = if tolerance_deg > 0.0 {
        line.simplify(&tolerance_deg)
    } else {
        line
    };
    let round = |v: f64| (v * 1e5).round() / 1e5;
    line.coords().map(|c| [round(c.x), round(c.y)]).collect()
}

fn bbox(zones: &[MapZone]) -> Option<[f64; 4]> {
    let mut b: Option<[f64; 4]> = None;
    let mut add = |lon: f64, lat: f64| {
        let bb = b.get_or_insert([lon, lat, lon, lat]);
        bb[0] = bb[0].min(lon);
        bb[1] = bb[1].min(lat);
        bb[2] = bb[2].max(lon);
        bb[3] = bb[3].max(lat);
    };
    for z in zones {
        for r in &z.rings {
            for &[lon, lat] in r {
                add(lon, lat);
            }
        }
        if let Some(c) = z.circle {
            let dlat = c.radius_m / M_PER_DEG;
            let dlon = dlat / c.lat.to_radians().cos().max(0.01);
            add(c.lon - dlon, c.lat - dlat);
            add(c.lon + dlon, c.lat + dlat);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zones_in_force_are_drawn_from_their_typed_shape_as_from_their_geojson() {
        let ring = |x: f64, y: f64, d: f64| {
            json!([[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]])
        };
        let doc = json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"name": "city", "kind": "service_area", "title": "Город"},
             "geometry": {"type": "Polygon", "coordinates": [ring(37.0, 55.0, 1.0), ring(37.4, 55.4, 0.2)]}},
            {"type": "Feature", "properties": {"name": "lots", "kind": "parking"},
             "geometry": {"type": "MultiPolygon", "coordinates": [[ring(37.1, 55.1, 0.01)], [ring(37.2, 55.2, 0.01)]]}},
            {"type": "Feature", "properties": {"name": "depot", "kind": "depot", "radius_m": 150.0},
             "geometry": {"type": "Point", "coordinates": [37.5, 55.5]}},
        ]});
        let typed = crate::geofence::zones_from_geojson(&doc, "t.geojson").unwrap();
        assert_eq!(typed.len(), 3);
        for z in &typed {
            let via_json = zones_of(&z.to_feature(), &z.name, 0.0001).unwrap();
            assert_eq!(vec![drawn_zone(z, 0.0001)], via_json, "{}", z.name);
        }
        assert_eq!(
            drawn_zone(&typed[0], 0.0001).rings.len(),
            2,
            "the hole is drawn"
        );
        assert_eq!(
            drawn_zone(&typed[0], 0.0001).title.as_deref(),
            Some("Город")
        );
    }

    #[test]
    fn polygons_multipolygons_and_circles_become_zones() {
        let doc = json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"name": "lot 1", "kind": "parking"},
             "geometry": {"type": "Polygon", "coordinates": [[[37.0, 55.0], [37.001, 55.0], [37.001, 55.001], [37.0, 55.0]]]}},
            {"type": "Feature", "properties": {"name": "depot", "kind": "depot", "radius_m": 150.0},
             "geometry": {"type": "Point", "coordinates": [37.5, 55.5]}},
            {"type": "Feature", "properties": {},
             "geometry": {"type": "MultiPolygon", "coordinates": [
                 [[[38.0, 56.0], [38.1, 56.0], [38.1, 56.1], [38.0, 56.0]]],
                 [[[39.0, 56.0], [39.1, 56.0], [39.1, 56.1], [39.0, 56.0]]]]}}
        ]});
        let z = zones_of(&doc, "file", 0.0).unwrap();
        assert_eq!(z.len(), 3);
        assert_eq!(
            (z[0].name.as_str(), z[0].kind.as_str()),
            ("lot 1", "parking")
        );
        assert_eq!(z[1].circle.unwrap().radius_m, 150.0);
        assert_eq!(
            (z[2].name.as_str(), z[2].kind.as_str(), z[2].rings.len()),
            ("file#2", "custom", 2)
        );
        let b = bbox(&z).unwrap();
        assert_eq!((b[0], b[3]), (37.0, 56.1));
        let bad = json!({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1.0, 2.0]}});
        assert!(
            zones_of(&bad, "x", 0.0).is_err(),
            "a point without a radius is refused"
        );
    }

    #[test]
    fn the_real_service_area_simplifies_to_a_drawable_outline() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("geofences/service_area.geojson");
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let full = zones_of(&doc, "sa", 0.0).unwrap();
        let vertices = |z: &[MapZone]| z.iter().flat_map(|z| &z.rings).map(Vec::len).sum::<usize>();
        assert!(vertices(&full) > 13_000, "{}", vertices(&full));
        let drawn = zones_of(&doc, "sa", 100.0 / M_PER_DEG).unwrap();
        let n = vertices(&drawn);
        assert!(
            (100..3000).contains(&n),
            "100 m tolerance leaves {n} vertices"
        );
        assert_eq!(drawn[0].kind, "service_area");
        let b = bbox(&drawn).unwrap();
        assert!(
            (b[0] - 35.1485).abs() < 0.01 && (b[3] - 56.9585).abs() < 0.01,
            "{b:?}"
        );
    }
}
