//! `ZoneSet`: the immutable, query-ready set of zones.
//!
//! Built once per load (the daemon swaps an `Arc<ZoneSet>` on reload). An `rstar` R-tree of
//! zone envelopes (grown by `buffer_m`) narrows a fix to a few candidates; each candidate
//! polygon answers exactly through its `PipGrid`; distances to boundaries use a per-zone edge
//! R-tree built on first use.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::OnceLock;

use geo::Coord;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RStarInsertionStrategy, RTree, RTreeParams};

use crate::geofence::distance::{local_distance_m, metres_per_degree, EdgeIndex};
use crate::geofence::pip::PipGrid;
use crate::geofence::tracker::{Debounce, DebounceConfig};
use crate::geofence::zone::{zones_from_geojson, Shape, Zone, ZoneError, ZoneKind};

// Unboxed on purpose: the grid header is read on every lookup, a Box would cost a cache miss.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Compiled {
    /// `buffer_m` sits beside the grid so a lookup never touches `zones`.
    Area {
        grid: PipGrid,
        buffer_m: f64,
        edges: OnceLock<EdgeIndex>,
    },
    Circle {
        center: Coord<f64>,
        radius_m: f64,
        buffer_m: f64,
    },
}

type Envelope = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// Wider nodes than rstar's default (6): a shallower tree, fewer cache misses per lookup.
struct ZoneTreeParams;

impl RTreeParams for ZoneTreeParams {
    const MIN_SIZE: usize = 5;
    const MAX_SIZE: usize = 16;
    const REINSERTION_COUNT: usize = 4;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

/// Up to this many zones, a linear scan of the envelopes beats walking the tree.
const FLAT_MAX: usize = 16;

/// All zones of one load, indexed.
#[derive(Debug)]
pub struct ZoneSet {
    zones: Vec<Zone>,
    compiled: Vec<Compiled>,
    debounce: Vec<Debounce>,
    by_name: HashMap<String, usize>,
    /// Envelopes (grown by `buffer_m`) as `[min lon, min lat, max lon, max lat]`, for small sets.
    flat: Vec<[f64; 4]>,
    tree: RTree<Envelope, ZoneTreeParams>,
}

impl Default for ZoneSet {
    /// No zones: every fix is outside everything.
    fn default() -> Self {
        ZoneSet {
            zones: Vec::new(),
            compiled: Vec::new(),
            debounce: Vec::new(),
            by_name: HashMap::new(),
            flat: Vec::new(),
            tree: RTree::new_with_params(),
        }
    }
}

impl ZoneSet {
    /// Loads every `*.geojson` in `dir` (sorted by file name) with the default debounce.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<ZoneSet, ZoneError> {
        ZoneSet::load_dir_with(dir, &DebounceConfig::default())
    }

    /// Loads every `*.geojson` in `dir` with per-kind debounce defaults from `config`.
    pub fn load_dir_with(
        dir: impl AsRef<Path>,
        config: &DebounceConfig,
    ) -> Result<ZoneSet, ZoneError> {
        ZoneSet::from_zones_with(zones_from_dir(dir)?, config)
    }

    /// Indexes `zones` with the default debounce; fails on duplicate names.
    pub fn from_zones(zones: Vec<Zone>) -> Result<ZoneSet, ZoneError> {
        ZoneSet::from_zones_with(zones, &DebounceConfig::default())
    }

    /// Indexes `zones`, resolving each zone's debounce from `config` and its overrides.
    pub fn from_zones_with(
        zones: Vec<Zone>,
        config: &DebounceConfig,
    ) -> Result<ZoneSet, ZoneError> {
        let mut by_name = HashMap::with_capacity(zones.len());
        for (i, z) in zones.iter().enumerate() {
            if let Some(first) = by_name.insert(z.name.clone(), i) {
                return Err(ZoneError::DuplicateName {
                    name: z.name.clone(),
                    first: format!("zone #{first}"),
                    second: format!("zone #{i}"),
                });
            }
        }
        let mut compiled = Vec::with_capacity(zones.len());
        let mut envelopes = Vec::with_capacity(zones.len());
        for (i, z) in zones.iter().enumerate() {
            let (c, (lo, hi)) = match &z.shape {
                Shape::Area(mp) => {
                    let grid = PipGrid::new(mp);
                    let bbox = grid.bbox();
                    (
                        Compiled::Area {
                            grid,
                            buffer_m: z.buffer_m,
                            edges: OnceLock::new(),
                        },
                        bbox,
                    )
                }
                Shape::Circle { center, radius_m } => {
                    let (lo, hi) = grow((*center, *center), *radius_m);
                    (
                        Compiled::Circle {
                            center: *center,
                            radius_m: *radius_m,
                            buffer_m: z.buffer_m,
                        },
                        (lo, hi),
                    )
                }
            };
            let (lo, hi) = grow((lo, hi), z.buffer_m);
            envelopes.push(GeomWithData::new(
                Rectangle::from_corners([lo.x, lo.y], [hi.x, hi.y]),
                i as u32,
            ));
            compiled.push(c);
        }
        let debounce = zones.iter().map(|z| config.resolve(z)).collect();
        let (flat, tree) = if envelopes.len() <= FLAT_MAX {
            let flat = envelopes
                .iter()
                .map(|e| {
                    let (lo, hi) = (e.geom().lower(), e.geom().upper());
                    [lo[0], lo[1], hi[0], hi[1]]
                })
                .collect();
            (flat, RTree::new_with_params())
        } else {
            (Vec::new(), RTree::bulk_load_with_params(envelopes))
        };
        Ok(ZoneSet {
            zones,
            compiled,
            debounce,
            by_name,
            flat,
            tree,
        })
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    pub fn get(&self, name: &str) -> Option<&Zone> {
        self.by_name.get(name).map(|&i| &self.zones[i])
    }

    /// The debounce in force for zone `name` (kind default + the zone's overrides).
    pub fn debounce(&self, name: &str) -> Option<Debounce> {
        self.by_name.get(name).map(|&i| self.debounce[i])
    }

    /// Zones containing the point, `buffer_m` included; boundary points are inside.
    pub fn containing(&self, lat: f64, lon: f64) -> impl Iterator<Item = &Zone> + '_ {
        self.containing_idx(lat, lon).map(|i| &self.zones[i])
    }

    /// Distance in metres from the point to the drawn boundary of zone `name` (ignoring
    /// `buffer_m`), whether the point is inside or outside; `None` for an unknown zone.
    pub fn distance_to_boundary_m(&self, name: &str, lat: f64, lon: f64) -> Option<f64> {
        let i = *self.by_name.get(name)?;
        Some(self.signed_distance_m(i, Coord { x: lon, y: lat }).abs())
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn zone(&self, i: usize) -> &Zone {
        &self.zones[i]
    }

    pub(crate) fn debounce_at(&self, i: usize) -> Debounce {
        self.debounce[i]
    }

    /// Zones containing the point (buffers included), without allocating for up to 8 hits.
    pub(crate) fn containing_idx(&self, lat: f64, lon: f64) -> Hits {
        let mut hits = Hits::default();
        if !(lat.is_finite() && lon.is_finite()) {
            return hits;
        }
        let p = Coord { x: lon, y: lat };
        for (i, e) in self.flat.iter().enumerate() {
            if lon >= e[0] && lat >= e[1] && lon <= e[2] && lat <= e[3] && self.contains_idx(i, p) {
                hits.push(i);
            }
        }
        if self.tree.size() > 0 {
            let _ = self.tree.locate_all_at_point_int(&[lon, lat], |e| {
                let i = e.data as usize;
                if self.contains_idx(i, p) {
                    hits.push(i);
                }
                ControlFlow::<()>::Continue(())
            });
        }
        hits
    }

    pub(crate) fn contains_idx(&self, i: usize, p: Coord<f64>) -> bool {
        match &self.compiled[i] {
            Compiled::Area { grid, buffer_m, .. } => {
                grid.contains(p.x, p.y)
                    || (*buffer_m > 0.0 && self.signed_distance_m(i, p) <= *buffer_m)
            }
            Compiled::Circle {
                center,
                radius_m,
                buffer_m,
            } => local_distance_m(p, *center) <= radius_m + buffer_m,
        }
    }

    /// Metres outside the drawn boundary (negative inside). Builds the edge index on first use.
    pub(crate) fn signed_distance_m(&self, i: usize, p: Coord<f64>) -> f64 {
        match &self.compiled[i] {
            Compiled::Area { grid, edges, .. } => {
                let idx = edges.get_or_init(|| {
                    let (lo, hi) = grid.bbox();
                    EdgeIndex::new(grid.edge_coords(), (lo.y + hi.y) / 2.0)
                });
                let d = idx.distance_m(p);
                if grid.contains(p.x, p.y) {
                    -d
                } else {
                    d
                }
            }
            Compiled::Circle {
                center, radius_m, ..
            } => local_distance_m(p, *center) - radius_m,
        }
    }

    /// How far the point is beyond the zone's effective boundary (drawn boundary moved out by
    /// `buffer_m`) on the side `inside`: the hysteresis test of the tracker.
    pub(crate) fn depth_m(&self, i: usize, p: Coord<f64>, inside: bool) -> f64 {
        let outside_by = self.signed_distance_m(i, p) - self.zones[i].buffer_m;
        if inside {
            -outside_by
        } else {
            outside_by
        }
    }

    pub(crate) fn kind_at(&self, i: usize) -> ZoneKind {
        self.zones[i].kind
    }

    /// Per-zone grid statistics (name, vertices, columns, rows, boundary cells, edges per
    /// boundary cell), for benches and tuning.
    pub fn grid_stats(&self) -> Vec<(String, usize, usize, usize, usize, f64)> {
        self.zones
            .iter()
            .zip(&self.compiled)
            .filter_map(|(z, c)| match c {
                Compiled::Area { grid, .. } => {
                    let (nx, ny, b, m) = grid.stats();
                    Some((z.name.clone(), grid.vertex_count(), nx, ny, b, m))
                }
                Compiled::Circle { .. } => None,
            })
            .collect()
    }
}

/// Parses every `*.geojson` in `dir` (sorted by file name), for callers that merge them
/// with zones from elsewhere (the API's) before [`ZoneSet::from_zones_with`]. A name used
/// twice is an error naming both files.
pub fn zones_from_dir(dir: impl AsRef<Path>) -> Result<Vec<Zone>, ZoneError> {
    let dir = dir.as_ref();
    let io = |source| ZoneError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "geojson"))
        .collect();
    files.sort();
    let mut zones = Vec::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ZoneError::Io {
            path: path.clone(),
            source,
        })?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ZoneError::Json {
                path: path.clone(),
                source,
            })?;
        let shown = path.display().to_string();
        for z in zones_from_geojson(&doc, &shown)? {
            if let Some(first) = origin.insert(z.name.clone(), shown.clone()) {
                return Err(ZoneError::DuplicateName {
                    name: z.name,
                    first,
                    second: shown,
                });
            }
            zones.push(z);
        }
    }
    Ok(zones)
}

/// Zone indices of one lookup: inline up to 8, spilled beyond (never, in practice).
#[derive(Debug, Default)]
pub(crate) struct Hits {
    inline: [u32; 8],
    len: usize,
    spill: Vec<u32>,
    pos: usize,
}

impl Hits {
    const TAKEN: u32 = u32::MAX;

    fn push(&mut self, i: usize) {
        if self.len < self.inline.len() {
            self.inline[self.len] = i as u32;
        } else {
            self.spill.push(i as u32);
        }
        self.len += 1;
    }

    fn slot(&mut self, k: usize) -> &mut u32 {
        if k < self.inline.len() {
            &mut self.inline[k]
        } else {
            &mut self.spill[k - self.inline.len()]
        }
    }

    /// Removes zone `i` if present (the tracker consumes hits zone by zone).
    pub(crate) fn consume(&mut self, i: usize) -> bool {
        for k in self.pos..self.len {
            let slot = self.slot(k);
            if *slot == i as u32 {
                *slot = Self::TAKEN;
                return true;
            }
        }
        false
    }
}

impl Iterator for Hits {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.pos < self.len {
            let v = *self.slot(self.pos);
            self.pos += 1;
            if v != Self::TAKEN {
                return Some(v as usize);
            }
        }
        None
    }
}

/// The bbox grown by `m` metres (conservatively, at the bbox's worst latitude).
fn grow((lo, hi): (Coord<f64>, Coord<f64>), m: f64) -> (Coord<f64>, Coord<f64>) {
    if m <= 0.0 {
        return (lo, hi);
    }
    let worst_lat = lo.y.abs().max(hi.y.abs()).min(89.0);
    let (kx, ky) = metres_per_degree(worst_lat);
    // 1 % margin covers the ellipsoid's variation of the north scale.
    let dx = m / kx * 1.01;
    let dy = m / ky * 1.01;
    (
        Coord {
            x: lo.x - dx,
            y: lo.y - dy,
        },
        Coord {
            x: hi.x + dx,
            y: hi.y + dy,
        },
    )
}

#[cfg(test)]
pub(crate) mod tests;
