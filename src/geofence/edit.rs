//! Reviewing a zone change before it is stored or installed (API `PUT`/`DELETE`, SIGHUP):
//! the checks of [`super::guard`] run against the set in force and the fleet's last stored
//! positions. A refused change leaves no trace but the refusal.

use super::guard::{self, Exits};
use super::{Zone, ZoneSet};
use crate::model::DeviceId;
use crate::pipeline::store::{StorageError, Store};

/// A device's last stored position.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPosition {
    pub device: DeviceId,
    pub lat: f64,
    pub lon: f64,
    /// Fix time, speed and ignition of that position (for the audit trail).
    pub time: chrono::DateTime<chrono::Utc>,
    pub speed_kmh: f64,
    pub ignition: Option<bool>,
}

/// The last stored position of every device that has one.
pub async fn fleet_positions(store: &dyn Store) -> Result<Vec<FleetPosition>, StorageError> {
    Ok(store
        .device_states()
        .await?
        .into_iter()
        .filter_map(|s| {
            s.position.map(|p| FleetPosition {
                device: s.device_id,
                lat: p.lat,
                lon: p.lon,
                time: p.time,
                speed_kmh: p.speed_kmh,
                ignition: p.ignition,
            })
        })
        .collect())
}

/// A zone change as the set in force and the set it would become.
pub struct Proposal<'a> {
    pub current: &'a ZoneSet,
    pub candidate: &'a ZoneSet,
    /// Zones added or replaced: their geometry and coordinate order are checked.
    pub changed: Vec<&'a Zone>,
    /// `[geofences] max_exit_share`.
    pub max_exit_share: f64,
    /// The caller asked to apply a mass exit anyway (`force=true`).
    pub force: bool,
}

/// An accepted change: what to report and, when `force` let a mass exit through, who leaves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub warnings: Vec<String>,
    pub exits: Exits,
    /// The devices the change moves out of the service area.
    pub leaving: Vec<FleetPosition>,
    /// True when the change passed only because of `force`.
    pub forced: bool,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid geometry: {}", .0.join("; "))]
    Geometry(Vec<String>),
    #[error("{0}")]
    Swapped(String),
    #[error(
        "the change would put {} of the {} cars now inside a service area ({:.1} %) outside every service area, more than [geofences] max_exit_share ({:.1} %)",
        exits.leaving, exits.inside, exits.share() * 100.0, max_share * 100.0
    )]
    MassExit { exits: Exits, max_share: f64 },
}

/// Check `p` against the fleet's positions.
pub fn review(p: &Proposal<'_>, fleet: &[FleetPosition]) -> Result<Verdict, Refusal> {
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for z in &p.changed {
        let r = guard::geometry(z);
        errors.extend(r.errors);
        warnings.extend(r.warnings);
    }
    if !errors.is_empty() {
        return Err(Refusal::Geometry(errors));
    }
    let points: Vec<(f64, f64)> = fleet.iter().map(|f| (f.lat, f.lon)).collect();
    for z in &p.changed {
        if let Some(why) = guard::swapped(z, p.current.get(&z.name), &points) {
            return Err(Refusal::Swapped(why));
        }
    }
    let (exits, idx) = guard::exits(p.current, p.candidate, &points);
    let over = exits.exceeds(p.max_exit_share);
    if over && !p.force {
        return Err(Refusal::MassExit {
            exits,
            max_share: p.max_exit_share,
        });
    }
    Ok(Verdict {
        warnings,
        exits,
        leaving: idx.into_iter().map(|i| fleet[i].clone()).collect(),
        forced: over,
    })
}

/// The zones of `candidate` that are new or differ from `current`'s.
pub fn changed<'a>(current: &ZoneSet, candidate: &'a ZoneSet) -> Vec<&'a Zone> {
    candidate
        .zones()
        .iter()
        .filter(|z| current.get(&z.name) != Some(*z))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn area(name: &str, ring: serde_json::Value) -> Zone {
        Zone::from_feature(&json!({"type": "Feature",
            "properties": {"name": name, "kind": "service_area"},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}))
        .unwrap()
    }

    fn fleet(points: &[(f64, f64)]) -> Vec<FleetPosition> {
        points
            .iter()
            .enumerate()
            .map(|(i, &(lat, lon))| FleetPosition {
                device: DeviceId::new(i.to_string()),
                lat,
                lon,
                time: chrono::Utc::now(),
                speed_kmh: 0.0,
                ignition: None,
            })
            .collect()
    }

    fn proposal<'a>(cur: &'a ZoneSet, cand: &'a ZoneSet, force: bool) -> Proposal<'a> {
        Proposal {
            current: cur,
            candidate: cand,
            changed: changed(cur, cand),
            max_exit_share: 0.10,
            force,
        }
    }

    #[test]
    fn a_shrunk_service_area_is_refused_unless_forced_and_then_names_who_leaves() {
        let big = json!([
            [37.0, 55.0],
            [38.0, 55.0],
            [38.0, 56.0],
            [37.0, 56.0],
            [37.0, 55.0]
        ]);
        let small = json!([
            [37.0, 55.0],
            [38.0, 55.0],
            [38.0, 55.5],
            [37.0, 55.5],
            [37.0, 55.0]
        ]);
        let cur = ZoneSet::from_zones(vec![area("sa", big)]).unwrap();
        let cand = ZoneSet::from_zones(vec![area("sa", small)]).unwrap();
        let cars = fleet(&[(55.2, 37.5), (55.3, 37.5), (55.8, 37.5)]);
        let e = review(&proposal(&cur, &cand, false), &cars).unwrap_err();
        assert!(matches!(e, Refusal::MassExit { .. }), "{e}");
        assert!(e.to_string().contains("1 of the 3 cars"), "{e}");
        let v = review(&proposal(&cur, &cand, true), &cars).unwrap();
        assert!(v.forced);
        assert_eq!(v.leaving, vec![cars[2].clone()]);
        // Within the share: no force needed, not reported as forced.
        let many: Vec<(f64, f64)> = (0..20).map(|i| (55.1 + i as f64 * 0.01, 37.5)).collect();
        let mut cars = fleet(&many);
        cars.extend(fleet(&[(55.8, 37.5)]));
        let v = review(&proposal(&cur, &cand, false), &cars).unwrap();
        assert!(!v.forced);
        assert_eq!(v.exits.leaving, 1);
    }

    #[test]
    fn an_unchanged_zone_is_not_checked_again() {
        let bow = json!([
            [37.0, 55.0],
            [38.0, 56.0],
            [38.0, 55.0],
            [37.0, 56.0],
            [37.0, 55.0]
        ]);
        let cur = ZoneSet::from_zones(vec![area("sa", bow.clone())]).unwrap();
        let cand = ZoneSet::from_zones(vec![area("sa", bow)]).unwrap();
        assert!(changed(&cur, &cand).is_empty());
        let empty = ZoneSet::default();
        let e = review(&proposal(&empty, &cand, true), &[]).unwrap_err();
        assert!(matches!(e, Refusal::Geometry(_)), "{e}");
    }
}
