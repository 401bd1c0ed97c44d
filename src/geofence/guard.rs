//! Guards on zone changes that move cars: a wrong upload of the service area turns into an
//! `outside_service_area` block for every parked car about a minute later, so a change is
//! reviewed before it is stored or installed.
//!
//! - [`geometry`]: ring orientation (RFC 7946 right-hand rule: a warning, it does not change
//!   what is inside) and self-intersection (refused for a `service_area`, where "inside" would
//!   be ambiguous; a warning elsewhere). Coordinate ranges are checked by the parser.
//! - [`swapped`]: a zone whose bounding box misses the zone it replaces (or, for a new zone,
//!   every car of the fleet) while its `[lat, lon]`-swapped box would hit it is refused.
//! - [`exits`]: how many cars inside a service area under the old set would be outside every
//!   service area under the new one; above `[geofences] max_exit_share` the change needs
//!   `force`.
//!
//! Everything here is pure: zones and positions in, verdicts out.

use geo::{Coord, Line, LineString, Winding};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, RTreeObject, AABB};

use super::{Shape, Zone, ZoneKind, ZoneSet};

/// What [`geometry`] found: `errors` refuse the zone, `warnings` are reported with it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GeometryReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Ring orientation and self-intersection of one zone.
pub fn geometry(zone: &Zone) -> GeometryReport {
    let mut r = GeometryReport::default();
    let Shape::Area(mp) = &zone.shape else {
        return r;
    };
    for (pi, poly) in mp.0.iter().enumerate() {
        let part = if mp.0.len() > 1 {
            format!("polygon #{pi} ")
        } else {
            String::new()
        };
        if poly.exterior().is_cw() {
            r.warnings.push(format!(
                "zone '{}': {part}outer ring is clockwise (RFC 7946 wants counter-clockwise; accepted as is)",
                zone.name
            ));
        }
        for (hi, hole) in poly.interiors().iter().enumerate() {
            if hole.is_ccw() {
                r.warnings.push(format!(
                    "zone '{}': {part}hole #{hi} is counter-clockwise (RFC 7946 wants clockwise; accepted as is)",
                    zone.name
                ));
            }
        }
        let mut rings: Vec<&LineString<f64>> = vec![poly.exterior()];
        rings.extend(poly.interiors());
        if let Some((at, lon, lat)) = first_crossing(&rings) {
            let msg = format!(
                "zone '{}': {part}{at} at about ({lat:.6}, {lon:.6}) [lat, lon]: the boundary intersects itself",
                zone.name
            );
            if zone.kind == ZoneKind::ServiceArea {
                r.errors.push(format!(
                    "{msg}; a self-intersecting service area is refused (which side is inside would be a guess)"
                ));
            } else {
                r.warnings.push(msg);
            }
        }
    }
    r
}

/// (ring, edge index) of one edge, in an R-tree of edge envelopes.
type Edge = GeomWithData<Rectangle<[f64; 2]>, (usize, usize)>;

/// The first place where the rings of one polygon cross or touch themselves: two edges of
/// one ring that are not neighbours sharing a vertex, or edges of two rings that cross or
/// overlap (rings touching in a single point are allowed, as in OGC simple features).
/// O(n log n) through an R-tree: the shipped service area has 13,249 vertices.
fn first_crossing(rings: &[&LineString<f64>]) -> Option<(String, f64, f64)> {
    // Repeated vertices (common in exported data) would make zero-length edges that touch
    // both their neighbours' far ends.
    let lines: Vec<Vec<Line<f64>>> = rings
        .iter()
        .map(|r| {
            let mut ring = (*r).clone();
            ring.0.dedup();
            ring.lines().collect()
        })
        .collect();
    let edges: Vec<Edge> = lines
        .iter()
        .enumerate()
        .flat_map(|(ri, ls)| {
            ls.iter().enumerate().map(move |(ei, l)| {
                GeomWithData::new(
                    Rectangle::from_corners([l.start.x, l.start.y], [l.end.x, l.end.y]),
                    (ri, ei),
                )
            })
        })
        .collect();
    let tree: RTree<Edge> = RTree::bulk_load(edges.clone());
    for e in &edges {
        let (ri, ei) = e.data;
        let a = lines[ri][ei];
        let env: AABB<[f64; 2]> = e.envelope();
        for other in tree.locate_in_envelope_intersecting(&env) {
            let (rj, ej) = other.data;
            // Each pair once.
            if (rj, ej) <= (ri, ei) {
                continue;
            }
            let b = lines[rj][ej];
            let Some(x) = geo::algorithm::line_intersection::line_intersection(a, b) else {
                continue;
            };
            let (bad, at) = match x {
                geo::LineIntersection::Collinear { intersection } => (true, intersection.start),
                geo::LineIntersection::SinglePoint {
                    intersection,
                    is_proper,
                } => {
                    let bad = if ri == rj {
                        let n = lines[ri].len();
                        let neighbours = ej == ei + 1 || (ei == 0 && ej + 1 == n);
                        is_proper || !neighbours || !shared_vertex(a, b, intersection)
                    } else {
                        is_proper
                    };
                    (bad, intersection)
                }
            };
            if bad {
                let what = if ri == rj {
                    format!("ring #{ri} edges #{ei} and #{ej}")
                } else {
                    format!("rings #{ri} and #{rj}")
                };
                return Some((what, at.x, at.y));
            }
        }
    }
    None
}

/// Whether two neighbouring edges meet only at the vertex they share.
fn shared_vertex(a: Line<f64>, b: Line<f64>, at: Coord<f64>) -> bool {
    (at == a.end && at == b.start) || (at == a.start && at == b.end)
}

/// `[min lon, min lat, max lon, max lat]` of a zone (a circle by its radius).
pub fn bbox(zone: &Zone) -> Option<[f64; 4]> {
    match &zone.shape {
        Shape::Area(mp) => {
            let mut it = mp.0.iter().flat_map(|p| p.exterior().0.iter());
            let first = it.next()?;
            Some(it.fold([first.x, first.y, first.x, first.y], |b, c| {
                [b[0].min(c.x), b[1].min(c.y), b[2].max(c.x), b[3].max(c.y)]
            }))
        }
        Shape::Circle { center, radius_m } => {
            let dlat = radius_m / 111_320.0;
            let dlon = dlat / center.y.to_radians().cos().max(0.01);
            Some([
                center.x - dlon,
                center.y - dlat,
                center.x + dlon,
                center.y + dlat,
            ])
        }
    }
}

fn swap(b: [f64; 4]) -> [f64; 4] {
    [b[1], b[0], b[3], b[2]]
}

fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

fn holds(b: [f64; 4], lat: f64, lon: f64) -> bool {
    (b[0]..=b[2]).contains(&lon) && (b[1]..=b[3]).contains(&lat)
}

/// Why `zone` looks like `[lat, lon]` pairs written as `[lon, lat]`, if it does: checked
/// against the zone it replaces when there is one, else against the fleet's positions
/// (`(lat, lon)` pairs). `None` when it looks right or there is nothing to compare with.
pub fn swapped(zone: &Zone, current: Option<&Zone>, positions: &[(f64, f64)]) -> Option<String> {
    let new = bbox(zone)?;
    let sw = swap(new);
    if let Some(old) = current.and_then(bbox) {
        if !overlaps(new, old) && overlaps(sw, old) {
            return Some(format!(
                "zone '{}': its coordinates look like [lat, lon] pairs: its box lon {:.4}..{:.4}, lat {:.4}..{:.4} misses the zone it replaces (lon {:.4}..{:.4}, lat {:.4}..{:.4}), the swapped box would cover it; GeoJSON positions are [lon, lat]",
                zone.name, new[0], new[2], new[1], new[3], old[0], old[2], old[1], old[3]
            ));
        }
        return None;
    }
    let hits = |b: [f64; 4]| {
        positions
            .iter()
            .filter(|(lat, lon)| holds(b, *lat, *lon))
            .count()
    };
    let (direct, flipped) = (hits(new), hits(sw));
    if direct == 0 && flipped > 0 {
        return Some(format!(
            "zone '{}': its coordinates look like [lat, lon] pairs: no car of the fleet is within its box (lon {:.4}..{:.4}, lat {:.4}..{:.4}) but {flipped} would be with the coordinates swapped; GeoJSON positions are [lon, lat]",
            zone.name, new[0], new[2], new[1], new[3]
        ));
    }
    None
}

/// Cars inside some service area under the old set, and those of them outside every service
/// area under the new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exits {
    pub inside: usize,
    pub leaving: usize,
}

impl Exits {
    pub fn share(&self) -> f64 {
        if self.inside == 0 {
            0.0
        } else {
            self.leaving as f64 / self.inside as f64
        }
    }

    /// True when more than `max_share` of the cars inside would leave.
    pub fn exceeds(&self, max_share: f64) -> bool {
        self.inside > 0 && self.share() > max_share
    }
}

fn in_service_area(set: &ZoneSet, lat: f64, lon: f64) -> bool {
    set.containing(lat, lon)
        .any(|z| z.kind == ZoneKind::ServiceArea)
}

/// Which of `positions` (`(lat, lon)`) a change from `old` to `new` moves out of the
/// service area; returns the count and the indexes of the leaving ones.
pub fn exits(old: &ZoneSet, new: &ZoneSet, positions: &[(f64, f64)]) -> (Exits, Vec<usize>) {
    let mut e = Exits::default();
    let mut leaving = Vec::new();
    for (i, &(lat, lon)) in positions.iter().enumerate() {
        if !in_service_area(old, lat, lon) {
            continue;
        }
        e.inside += 1;
        if !in_service_area(new, lat, lon) {
            e.leaving += 1;
            leaving.push(i);
        }
    }
    (e, leaving)
}

#[cfg(test)]
mod tests;
