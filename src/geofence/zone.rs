//! The zone model and its GeoJSON form.
//!
//! A zone is one GeoJSON Feature: `properties.name` (unique), `properties.kind`, optional
//! `buffer_m` and debounce overrides, and a Polygon, MultiPolygon or Point + `radius_m`
//! (a circle). Parsing is strict about what it uses and lenient about the rest: unknown
//! properties are kept in [`Zone::extra`] so a `PUT` then `GET` returns what was sent.
//! Errors name the origin (file or API body), the feature and the field, and say what was
//! expected and what came.

use std::fmt;
use std::path::PathBuf;

use geo::{Coord, LineString, MultiPolygon, Polygon};
use serde_json::{json, Map, Value};

/// What a zone is for; decides the default debounce (see `tracker::DebounceConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    ServiceArea,
    Parking,
    Depot,
    Repair,
    Custom,
}

impl ZoneKind {
    pub const ALL: [ZoneKind; 5] = [
        ZoneKind::ServiceArea,
        ZoneKind::Parking,
        ZoneKind::Depot,
        ZoneKind::Repair,
        ZoneKind::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::ServiceArea => "service_area",
            ZoneKind::Parking => "parking",
            ZoneKind::Depot => "depot",
            ZoneKind::Repair => "repair",
            ZoneKind::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Option<ZoneKind> {
        ZoneKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ZoneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Geometry of a zone. Coordinates are WGS84 degrees, `x` = longitude, `y` = latitude.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Polygon(s) with holes; a single Polygon is stored as a one-part MultiPolygon and
    /// written back as a Polygon.
    Area(MultiPolygon<f64>),
    /// A circle around `center` (a GeoJSON Point with `properties.radius_m`).
    Circle { center: Coord<f64>, radius_m: f64 },
}

/// Per-zone overrides of the kind's debounce defaults (`debounce_fixes`, `debounce_secs`,
/// `hysteresis_m` in the Feature's properties).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DebounceOverride {
    pub fixes: Option<u32>,
    pub secs: Option<u32>,
    pub hysteresis_m: Option<f64>,
}

/// One geofence.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    pub kind: ZoneKind,
    pub shape: Shape,
    /// Outward margin in metres: points up to this far outside the boundary count as inside.
    pub buffer_m: f64,
    pub debounce: DebounceOverride,
    /// Properties this module does not interpret, kept for round trips.
    pub extra: Map<String, Value>,
}

/// Why zones could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `location` is e.g. `geofences/parking.geojson, feature #2 "vnukovo"`.
    #[error("{location}: {field}: expected {expected}, got {got}")]
    Invalid {
        location: String,
        field: String,
        expected: String,
        got: String,
    },
    #[error("duplicate zone name {name:?}: {first} and {second}")]
    DuplicateName {
        name: String,
        first: String,
        second: String,
    },
}

const HYSTERESIS_PROP: &str = "hysteresis_m";
/// Properties this module interprets; everything else goes to [`Zone::extra`].
const KNOWN_PROPS: [&str; 7] = [
    "name",
    "kind",
    "buffer_m",
    "radius_m",
    "debounce_fixes",
    "debounce_secs",
    HYSTERESIS_PROP,
];

/// Where a feature came from, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Origin<'a> {
    pub source: &'a str,
    pub index: Option<usize>,
}

impl Origin<'_> {
    fn locate(&self, name: Option<&str>) -> String {
        let mut s = self.source.to_string();
        if let Some(i) = self.index {
            s.push_str(&format!(", feature #{i}"));
        } else {
            s.push_str(", feature");
        }
        if let Some(n) = name {
            s.push_str(&format!(" {n:?}"));
        }
        s
    }
}

fn invalid(
    loc: &str,
    field: impl Into<String>,
    expected: impl Into<String>,
    got: &Value,
) -> ZoneError {
    ZoneError::Invalid {
        location: loc.to_string(),
        field: field.into(),
        expected: expected.into(),
        got: short(got),
    }
}

/// A compact rendering of a JSON value for error messages.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

impl Zone {
    /// Parses one GeoJSON Feature (the body of `PUT /api/v1/geofences/{name}`).
    pub fn from_feature(feature: &Value) -> Result<Zone, ZoneError> {
        parse_feature(
            feature,
            &Origin {
                source: "request body",
                index: None,
            },
        )
    }

    /// The GeoJSON Feature of this zone; [`Zone::from_feature`] of it gives the zone back.
    pub fn to_feature(&self) -> Value {
        let mut props = self.extra.clone();
        props.insert("name".into(), json!(self.name));
        props.insert("kind".into(), json!(self.kind.as_str()));
        if self.buffer_m != 0.0 {
            props.insert("buffer_m".into(), json!(self.buffer_m));
        }
        if let Some(n) = self.debounce.fixes {
            props.insert("debounce_fixes".into(), json!(n));
        }
        if let Some(s) = self.debounce.secs {
            props.insert("debounce_secs".into(), json!(s));
        }
        if let Some(h) = self.debounce.hysteresis_m {
            props.insert(HYSTERESIS_PROP.into(), json!(h));
        }
        let geometry = match &self.shape {
            Shape::Circle { center, radius_m } => {
                props.insert("radius_m".into(), json!(radius_m));
                json!({"type": "Point", "coordinates": [center.x, center.y]})
            }
            Shape::Area(mp) if mp.0.len() == 1 => {
                json!({"type": "Polygon", "coordinates": polygon_coords(&mp.0[0])})
            }
            Shape::Area(mp) => {
                let parts: Vec<Value> = mp.0.iter().map(polygon_coords).collect();
                json!({"type": "MultiPolygon", "coordinates": parts})
            }
        };
        json!({"type": "Feature", "properties": Value::Object(props), "geometry": geometry})
    }
}

fn polygon_coords(p: &Polygon<f64>) -> Value {
    let ring = |ls: &LineString<f64>| -> Value {
        Value::Array(ls.0.iter().map(|c| json!([c.x, c.y])).collect())
    };
    let mut rings = vec![ring(p.exterior())];
    rings.extend(p.interiors().iter().map(ring));
    Value::Array(rings)
}

/// Parses a FeatureCollection (or a single Feature) read from `source` (a file name).
pub fn zones_from_geojson(doc: &Value, source: &str) -> Result<Vec<Zone>, ZoneError> {
    let loc = source.to_string();
    match doc.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => {
            let features = doc
                .get("features")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    invalid(
                        &loc,
                        "features",
                        "an array of Features",
                        doc.get("features").unwrap_or(&Value::Null),
                    )
                })?;
            features
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    parse_feature(
                        f,
                        &Origin {
                            source,
                            index: Some(i),
                        },
                    )
                })
                .collect()
        }
        Some("Feature") => Ok(vec![parse_feature(
            doc,
            &Origin {
                source,
                index: None,
            },
        )?]),
        _ => Err(invalid(
            &loc,
            "type",
            "\"FeatureCollection\" or \"Feature\"",
            doc.get("type").unwrap_or(&Value::Null),
        )),
    }
}

pub(crate) fn parse_feature(f: &Value, origin: &Origin<'_>) -> Result<Zone, ZoneError> {
    let bare = origin.locate(None);
    if f.get("type").and_then(Value::as_str) != Some("Feature") {
        return Err(invalid(
            &bare,
            "type",
            "\"Feature\"",
            f.get("type").unwrap_or(&Value::Null),
        ));
    }
    let props = f
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            invalid(
                &bare,
                "properties",
                "an object",
                f.get("properties").unwrap_or(&Value::Null),
            )
        })?;
    let name = match props.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        other => {
            return Err(invalid(
                &bare,
                "properties.name",
                "a non-empty string",
                other.unwrap_or(&Value::Null),
            ))
        }
    };
    let loc = origin.locate(Some(&name));
    let kind_v = props.get("kind").unwrap_or(&Value::Null);
    let kind = kind_v.as_str().and_then(ZoneKind::parse).ok_or_else(|| {
        invalid(
            &loc,
            "properties.kind",
            "one of service_area, parking, depot, repair, custom",
            kind_v,
        )
    })?;
    let buffer_m = opt_number(props, "buffer_m", &loc, 0.0, false)?.unwrap_or(0.0);
    let debounce = DebounceOverride {
        fixes: opt_u32(props, "debounce_fixes", &loc, 1)?,
        secs: opt_u32(props, "debounce_secs", &loc, 0)?,
        hysteresis_m: opt_number(props, HYSTERESIS_PROP, &loc, 0.0, false)?,
    };
    let geom = f.get("geometry").unwrap_or(&Value::Null);
    let gtype = geom.get("type").and_then(Value::as_str);
    let coords = geom.get("coordinates").unwrap_or(&Value::Null);
    let shape = match gtype {
        Some("Polygon") => Shape::Area(MultiPolygon(vec![polygon(
            coords,
            "geometry.coordinates",
            &loc,
        )?])),
        Some("MultiPolygon") => {
            let parts = coords.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                invalid(
                    &loc,
                    "geometry.coordinates",
                    "a non-empty array of polygons",
                    coords,
                )
            })?;
            let polys = parts
                .iter()
                .enumerate()
                .map(|(i, p)| polygon(p, &format!("geometry.coordinates[{i}]"), &loc))
                .collect::<Result<Vec<_>, _>>()?;
            Shape::Area(MultiPolygon(polys))
        }
        Some("Point") => {
            let center = position(coords, "geometry.coordinates", &loc)?;
            let radius_m = opt_number(props, "radius_m", &loc, 0.0, true)?.ok_or_else(|| {
                invalid(
                    &loc,
                    "properties.radius_m",
                    "a positive number of metres (a Point zone is a circle)",
                    &Value::Null,
                )
            })?;
            Shape::Circle { center, radius_m }
        }
        _ => {
            return Err(invalid(
                &loc,
                "geometry.type",
                "Polygon, MultiPolygon or Point (with properties.radius_m)",
                geom.get("type").unwrap_or(geom),
            ))
        }
    };
    let mut extra = props.clone();
    for k in KNOWN_PROPS {
        extra.remove(k);
    }
    Ok(Zone {
        name,
        kind,
        shape,
        buffer_m,
        debounce,
        extra,
    })
}

/// An optional finite number `>= min` (or `> min` when `strict`).
fn opt_number(
    props: &Map<String, Value>,
    key: &str,
    loc: &str,
    min: f64,
    strict: bool,
) -> Result<Option<f64>, ZoneError> {
    let Some(v) = props.get(key) else {
        return Ok(None);
    };
    match v.as_f64() {
        Some(x) if x.is_finite() && (x > min || (!strict && x == min)) => Ok(Some(x)),
        _ => Err(invalid(
            loc,
            format!("properties.{key}"),
            if strict {
                "a positive number of metres"
            } else {
                "a number of metres >= 0"
            },
            v,
        )),
    }
}

fn opt_u32(
    props: &Map<String, Value>,
    key: &str,
    loc: &str,
    min: u32,
) -> Result<Option<u32>, ZoneError> {
    let Some(v) = props.get(key) else {
        return Ok(None);
    };
    match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
        Some(n) if n >= min => Ok(Some(n)),
        _ => Err(invalid(
            loc,
            format!("properties.{key}"),
            format!("an integer >= {min}"),
            v,
        )),
    }
}

fn position(v: &Value, field: &str, loc: &str) -> Result<Coord<f64>, ZoneError> {
    let arr = v
        .as_array()
        .filter(|a| a.len() >= 2)
        .ok_or_else(|| invalid(loc, field, "a position [lon, lat]", v))?;
    let (lon, lat) = (arr[0].as_f64(), arr[1].as_f64());
    match (lon, lat) {
        (Some(x), Some(y))
            if x.is_finite()
                && y.is_finite()
                && (-180.0..=180.0).contains(&x)
                && (-90.0..=90.0).contains(&y) =>
        {
            Ok(Coord { x, y })
        }
        _ => Err(invalid(
            loc,
            field,
            "finite [lon, lat] within [-180, 180] x [-90, 90]",
            v,
        )),
    }
}

fn ring(v: &Value, field: &str, loc: &str) -> Result<LineString<f64>, ZoneError> {
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(loc, field, "an array of positions (a linear ring)", v))?;
    if arr.len() < 4 {
        return Err(invalid(
            loc,
            field,
            "a linear ring of at least 4 positions",
            &json!(format!("{} positions", arr.len())),
        ));
    }
    let pts = arr
        .iter()
        .enumerate()
        .map(|(i, p)| position(p, &format!("{field}[{i}]"), loc))
        .collect::<Result<Vec<_>, _>>()?;
    if pts.first() != pts.last() {
        return Err(invalid(
            loc,
            field,
            "a closed ring (last position equal to the first)",
            &json!(format!(
                "first {:?}, last {:?}",
                arr.first().map(|p| p.to_string()),
                arr.last().map(|p| p.to_string())
            )),
        ));
    }
    Ok(LineString(pts))
}

fn polygon(v: &Value, field: &str, loc: &str) -> Result<Polygon<f64>, ZoneError> {
    let rings = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid(loc, field, "an array of linear rings", v))?;
    let mut parsed = rings
        .iter()
        .enumerate()
        .map(|(i, r)| ring(r, &format!("{field}[{i}]"), loc))
        .collect::<Result<Vec<_>, _>>()?;
    let exterior = parsed.remove(0);
    Ok(Polygon::new(exterior, parsed))
}

#[cfg(test)]
mod tests;
