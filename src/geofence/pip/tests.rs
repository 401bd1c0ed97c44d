use super::*;
use geo::{Contains, Intersects, LineString, MultiPolygon, Point, Polygon};
use proptest::prelude::*;

use crate::geofence::zone::{zones_from_geojson, Shape};

/// Deterministic xorshift, so a failure reproduces.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next_f64() * n as f64) as usize).min(n - 1)
    }
}

pub(crate) fn shipped(file: &str) -> MultiPolygon<f64> {
    let path = format!("{}/geofences/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("shipped geofence file");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let zones = zones_from_geojson(&doc, &path).expect("valid zones");
    match &zones[0].shape {
        Shape::Area(mp) => mp.clone(),
        Shape::Circle { .. } => panic!("expected an area"),
    }
}

/// Points uniformly over the (grown) bbox, and near, on and at the boundary.
fn sample_points(mp: &MultiPolygon<f64>, rng: &mut Rng, n: usize) -> Vec<Coord<f64>> {
    let grid = PipGrid::new(mp);
    let (lo, hi) = grid.bbox();
    let edges: Vec<_> = grid.edge_coords().collect();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let p = match k % 4 {
            0 => Coord {
                x: lo.x - 0.1 + rng.next_f64() * (hi.x - lo.x + 0.2),
                y: lo.y - 0.1 + rng.next_f64() * (hi.y - lo.y + 0.2),
            },
            1 => {
                // Near an edge: up to ~1 km off it, often much closer (down to 1e-12 deg).
                let (a, b) = edges[rng.below(edges.len())];
                let t = rng.next_f64();
                let off = 10f64.powf(-12.0 + rng.next_f64() * 10.0)
                    * if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
                let (dx, dy) = (b.x - a.x, b.y - a.y);
                let len = dx.hypot(dy);
                Coord {
                    x: a.x + t * dx - dy / len * off,
                    y: a.y + t * dy + dx / len * off,
                }
            }
            2 => edges[rng.below(edges.len())].0, // a vertex
            _ => {
                // On an edge up to rounding.
                let (a, b) = edges[rng.below(edges.len())];
                let t = rng.next_f64();
                Coord {
                    x: a.x + t * (b.x - a.x),
                    y: a.y + t * (b.y - a.y),
                }
            }
        };
        out.push(p);
    }
    out
}

fn check_against_geo(mp: &MultiPolygon<f64>, points: &[Coord<f64>]) {
    let grid = PipGrid::new(mp);
    for p in points {
        let expected = mp.intersects(&Point(*p));
        assert_eq!(grid.contains(p.x, p.y), expected, "point {p:?}");
        if !mp.contains(&Point(*p)) && expected {
            // geo's Contains excludes the boundary, the exact scan must see it too.
            assert_eq!(grid.scan(*p), None, "boundary point {p:?}");
        }
    }
}

fn check_against_scan(mp: &MultiPolygon<f64>, points: &[Coord<f64>]) {
    // The default grid and a coarse one that splits almost every boundary cell.
    for grid in [PipGrid::new(mp), PipGrid::with_density(mp, Some(0.5))] {
        for p in points {
            assert_eq!(
                grid.contains(p.x, p.y),
                grid.scan(*p).unwrap_or(true),
                "point {p:?}"
            );
        }
    }
}

#[test]
fn coarse_grid_splits_crowded_cells() {
    let g = PipGrid::with_density(&shipped("service_area.geojson"), Some(0.5));
    assert!(!g.subgrids.is_empty());
}

#[test]
fn service_area_grid_equals_geo_intersects_near_and_far_from_the_boundary() {
    let mp = shipped("service_area.geojson");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    check_against_geo(&mp, &sample_points(&mp, &mut rng, 2_000));
    check_against_scan(&mp, &sample_points(&mp, &mut rng, 8_000));
}

#[test]
fn oblast_with_holes_grid_equals_geo_intersects() {
    let mp = shipped("moscow_oblast.geojson");
    assert_eq!(mp.0.len(), 1);
    assert_eq!(mp.0[0].interiors().len(), 8);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    check_against_geo(&mp, &sample_points(&mp, &mut rng, 1_500));
    check_against_scan(&mp, &sample_points(&mp, &mut rng, 6_000));
}

#[test]
fn moscow_multipolygon_grid_equals_geo_intersects() {
    let mp = shipped("moscow.geojson");
    assert_eq!(mp.0.len(), 10);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    check_against_geo(&mp, &sample_points(&mp, &mut rng, 1_500));
    check_against_scan(&mp, &sample_points(&mp, &mut rng, 6_000));
}

#[test]
fn orientation_filter_agrees_with_the_robust_kernel_on_near_collinear_points() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let a = Coord {
            x: 37.0 + rng.next_f64(),
            y: 55.0 + rng.next_f64(),
        };
        let b = Coord {
            x: 37.0 + rng.next_f64(),
            y: 55.0 + rng.next_f64(),
        };
        let t = rng.next_f64();
        let c = Coord {
            x: a.x + t * (b.x - a.x),
            y: a.y + t * (b.y - a.y),
        };
        let want = match RobustKernel::orient2d(a, b, c) {
            Orientation::CounterClockwise => 1.0,
            Orientation::Clockwise => -1.0,
            Orientation::Collinear => 0.0,
        };
        let got = orient(a, b, c);
        assert_eq!(
            got.signum() * (got != 0.0) as u8 as f64,
            want,
            "{a:?} {b:?} {c:?}"
        );
    }
}

/// A simple star-shaped polygon on the integer lattice around `(cx, cy)`.
fn star(cx: i32, cy: i32, radii: &[u8], rmin: i32) -> Option<LineString<f64>> {
    let n = radii.len();
    let mut pts: Vec<(f64, i32, i32)> = radii
        .iter()
        .enumerate()
        .map(|(k, &r)| {
            let ang = k as f64 / n as f64 * std::f64::consts::TAU;
            let r = rmin as f64 + r as f64;
            let x = cx + (r * ang.cos()).round() as i32;
            let y = cy + (r * ang.sin()).round() as i32;
            (((y - cy) as f64).atan2((x - cx) as f64), x, y)
        })
        .filter(|&(_, x, y)| (x, y) != (cx, cy))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts.dedup_by(|a, b| a.0 == b.0);
    if pts.len() < 3 {
        return None;
    }
    let mut coords: Vec<Coord<f64>> = pts
        .iter()
        .map(|&(_, x, y)| Coord {
            x: x as f64,
            y: y as f64,
        })
        .collect();
    coords.push(coords[0]);
    Some(LineString(coords))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Lattice polygons with holes and lattice points: vertices on edges, points on vertices,
    /// edges collinear with the test segments — every degenerate case the grid can meet.
    #[test]
    fn lattice_polygons_equal_geo_intersects(
        outer in proptest::collection::vec(0u8..12, 3..40),
        hole in proptest::collection::vec(0u8..3, 3..12),
        second in proptest::collection::vec(0u8..6, 3..16),
        pts in proptest::collection::vec((-2i32..40, -2i32..40), 200),
        frac in proptest::collection::vec((0u8..4, 0u8..4), 200),
    ) {
        let Some(ext) = star(12, 12, &outer, 3) else { return Ok(()) };
        let mut polys = vec![Polygon::new(ext.clone(), vec![])];
        if let Some(h) = star(12, 12, &hole, 1) {
            let candidate = Polygon::new(ext, vec![h.clone()]);
            if Polygon::new(polys[0].exterior().clone(), vec![]).contains(&Polygon::new(h, vec![])) {
                polys[0] = candidate;
            }
        }
        if let Some(s) = star(32, 32, &second, 2) {
            let p = Polygon::new(s, vec![]);
            if !p.intersects(&polys[0]) {
                polys.push(p);
            }
        }
        let mp = MultiPolygon(polys);
        // Default density, and a 1-4 cell grid whose crowded cells are split into sub-grids.
        let grids = [PipGrid::new(&mp), PipGrid::with_density(&mp, Some(0.05))];
        for (&(x, y), &(fx, fy)) in pts.iter().zip(&frac) {
            let p = Coord { x: x as f64 + fx as f64 * 0.25, y: y as f64 + fy as f64 * 0.25 };
            let want = mp.intersects(&Point(p));
            for g in &grids {
                prop_assert_eq!(g.contains(p.x, p.y), want, "point {:?}", p);
            }
        }
    }
}

#[test]
fn degenerate_polygons_do_not_panic() {
    let flat = MultiPolygon(vec![Polygon::new(
        LineString::from(vec![(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (0.0, 0.0)]),
        vec![],
    )]);
    let g = PipGrid::new(&flat);
    assert!(g.contains(1.0, 0.0));
    assert!(!g.contains(1.0, 0.5));
    let empty = MultiPolygon::<f64>(vec![]);
    assert!(!PipGrid::new(&empty).contains(0.0, 0.0));
    assert!(!g.contains(f64::NAN, 0.0));
}

/// The same comparison at scale: `cargo test --release -- --ignored heavy`.
#[test]
#[ignore = "heavy: run with --release -- --ignored"]
fn heavy_all_shipped_regions_equal_geo_intersects_on_200k_points_each() {
    for (file, seed) in [
        ("service_area.geojson", 11),
        ("moscow_oblast.geojson", 12),
        ("moscow.geojson", 13),
    ] {
        let mp = shipped(file);
        let mut rng = Rng(seed);
        check_against_geo(&mp, &sample_points(&mp, &mut rng, 200_000));
    }
}
