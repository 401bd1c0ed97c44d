//! Exact point-in-polygon in O(1) expected time: a uniform grid over the polygon's bbox.
//!
//! Each cell is `outside`, `inside` (no edge touches it) or `boundary`, with the list of edges
//! that touch it and a reference point `r` whose inside-ness was computed exactly at build
//! time; boundary cells with more than `SPLIT_EDGES` edges are split once more into a small
//! sub-grid. For a point `p` in a boundary cell, inside(p) = inside(r) XOR (number of the
//! cell's edges crossing segment `p`–`r`) mod 2: both lie in the (convex) cell, so no other
//! edge can cross the segment. A boundary cell's header and edge coordinates are stored
//! contiguously (one or two cache misses per lookup), each edge oriented so that `r` lies to
//! its left.
//!
//! All predicates are exact (Shewchuk's orientation with a fast filter, falling back to
//! geo's `RobustKernel`), vertices lying on `p`–`r` are symbolically perturbed to one side,
//! and a point on an edge is inside: the result equals `geo::Intersects` for valid polygons
//! (rings treated even-odd, so MultiPolygon parts must not overlap — which validity demands
//! anyway). Construction lives in `build.rs`.

use geo::kernels::{Kernel, Orientation, RobustKernel};
use geo::Coord;

mod build;

/// Cells per edge: the grid holds `CELLS_PER_EDGE * edges` cells up to `MAX_CELLS`. Large
/// polygons (the few region borders) get a finer grid (`LARGE_CELLS_PER_EDGE`) so that a
/// boundary cell holds fewer edges; thousands of small zones keep memory in check.
const CELLS_PER_EDGE: f64 = 4.0;
const LARGE_CELLS_PER_EDGE: f64 = 16.0;
const LARGE_EDGES: usize = 4096;
const MAX_CELLS: f64 = (1u32 << 20) as f64;
const OUTSIDE: u32 = 0;
const INSIDE: u32 = 1;
/// Cell value flag: the rest is an index into `subgrids`.
const SUB: u32 = 1 << 31;
/// Boundary cells with more edges than this are split into a sub-grid (one level).
const SPLIT_EDGES: usize = 8;

/// A crowded boundary cell split `n` x `n`; sub-cell values are like cell values.
#[derive(Debug, Clone, Copy)]
struct SubGrid {
    x0: Coord<f64>,
    inv_w: f64,
    inv_h: f64,
    n: u32,
    first: u32,
}

/// The compiled polygon (all rings of a MultiPolygon).
#[derive(Debug)]
pub(crate) struct PipGrid {
    /// Ring vertices; edge `e` runs from `pts[e]` to `pts[e + 1]`.
    pts: Vec<Coord<f64>>,
    /// Start indices of the non-degenerate edges.
    edges: Vec<u32>,
    min: Coord<f64>,
    max: Coord<f64>,
    inv_w: f64,
    inv_h: f64,
    nx: usize,
    ny: usize,
    /// `OUTSIDE`, `INSIDE`, or `2 + index into blocks` of a boundary cell's header.
    cells: Vec<u32>,
    /// Per boundary cell: a header `[rx, ry, edge count, inside (0/1)]`, then its edges as
    /// `[ax, ay, bx, by]` with the reference point left of a→b.
    blocks: Vec<[f64; 4]>,
    boundary_cells: usize,
    subgrids: Vec<SubGrid>,
    sub_cells: Vec<u32>,
}

/// Sign of the orientation of (a, b, c): > 0 counter-clockwise, < 0 clockwise, 0 collinear.
/// Exact: the fast path is Shewchuk's filter, ambiguous cases go to the robust kernel.
#[inline(always)]
pub(crate) fn orient(a: Coord<f64>, b: Coord<f64>, c: Coord<f64>) -> f64 {
    let detleft = (a.x - c.x) * (b.y - c.y);
    let detright = (a.y - c.y) * (b.x - c.x);
    let det = detleft - detright;
    const EPS: f64 = f64::EPSILON * 0.5;
    const ERRBOUND: f64 = (3.0 + 16.0 * EPS) * EPS;
    let bound = ERRBOUND * (detleft.abs() + detright.abs());
    if det > bound || -det > bound {
        det
    } else {
        orient_slow(a, b, c)
    }
}

#[cold]
#[inline(never)]
fn orient_slow(a: Coord<f64>, b: Coord<f64>, c: Coord<f64>) -> f64 {
    match RobustKernel::orient2d(a, b, c) {
        Orientation::CounterClockwise => 1.0,
        Orientation::Clockwise => -1.0,
        Orientation::Collinear => 0.0,
    }
}

#[inline(always)]
fn in_box(p: Coord<f64>, a: Coord<f64>, b: Coord<f64>) -> bool {
    p.x >= a.x.min(b.x) && p.x <= a.x.max(b.x) && p.y >= a.y.min(b.y) && p.y <= a.y.max(b.y)
}

/// Exact crossing test of the horizontal ray from `p` to +x against edge (a, b), with the
/// half-open rule. `None` when `p` lies on the edge.
#[inline]
fn ray_crosses(a: Coord<f64>, b: Coord<f64>, p: Coord<f64>) -> Option<bool> {
    if in_box(p, a, b) && orient(a, b, p) == 0.0 {
        return None;
    }
    if (a.y > p.y) == (b.y > p.y) {
        return Some(false);
    }
    let (lo, hi) = if a.y < b.y { (a, b) } else { (b, a) };
    Some(orient(lo, hi, p) > 0.0)
}

impl PipGrid {
    /// Plain exact ray casting over every edge; `None` when `p` is on the boundary.
    pub(crate) fn scan(&self, p: Coord<f64>) -> Option<bool> {
        let mut inside = false;
        for &e in &self.edges {
            let (a, b) = (self.pts[e as usize], self.pts[e as usize + 1]);
            if ray_crosses(a, b, p)? {
                inside = !inside;
            }
        }
        Some(inside)
    }

    /// Is (x = lon, y = lat) inside or on the boundary?
    #[inline]
    pub(crate) fn contains(&self, x: f64, y: f64) -> bool {
        if !(x >= self.min.x && x <= self.max.x && y >= self.min.y && y <= self.max.y) {
            return false;
        }
        let i = (((x - self.min.x) * self.inv_w) as usize).min(self.nx - 1);
        let j = (((y - self.min.y) * self.inv_h) as usize).min(self.ny - 1);
        let mut v = self.cells[j * self.nx + i];
        if v & SUB != 0 {
            let g = &self.subgrids[(v & !SUB) as usize];
            let n = g.n as usize;
            // Clamped: float rounding may put p a hair outside its parent cell.
            let si = ((x - g.x0.x) * g.inv_w).max(0.0) as usize;
            let sj = ((y - g.x0.y) * g.inv_h).max(0.0) as usize;
            v = self.sub_cells[g.first as usize + sj.min(n - 1) * n + si.min(n - 1)];
        }
        match v {
            OUTSIDE => false,
            INSIDE => true,
            k => self.boundary_contains((k - 2) as usize, Coord { x, y }),
        }
    }

    #[inline]
    fn boundary_contains(&self, block: usize, p: Coord<f64>) -> bool {
        let [rx, ry, len, inside] = self.blocks[block];
        let r = Coord { x: rx, y: ry };
        let (sx0, sx1) = (p.x.min(r.x), p.x.max(r.x));
        let (sy0, sy1) = (p.y.min(r.y), p.y.max(r.y));
        let mut inside = inside != 0.0;
        let list = &self.blocks[block + 1..block + 1 + len as usize];
        for &[ax, ay, bx, by] in list {
            if ax.max(bx) < sx0 || ax.min(bx) > sx1 || ay.max(by) < sy0 || ay.min(by) > sy1 {
                continue;
            }
            let (a, b) = (Coord { x: ax, y: ay }, Coord { x: bx, y: by });
            // Vertices on the line p-r count as left of it (symbolic perturbation).
            let sa = orient(p, r, a) >= 0.0;
            let sb = orient(p, r, b) >= 0.0;
            if sa != sb {
                let o = orient(a, b, p);
                if o == 0.0 {
                    return true; // on the edge
                }
                // r is left of a->b: p-r crosses the edge iff p is right of it.
                if o < 0.0 {
                    inside = !inside;
                }
            } else if in_box(p, a, b) && orient(a, b, p) == 0.0 {
                return true;
            }
        }
        inside
    }

    /// Number of vertices (all rings, closing vertices included).
    pub(crate) fn vertex_count(&self) -> usize {
        self.pts.len()
    }

    /// Edges as coordinate pairs, for the distance index.
    pub(crate) fn edge_coords(&self) -> impl Iterator<Item = (Coord<f64>, Coord<f64>)> + '_ {
        self.edges
            .iter()
            .map(|&e| (self.pts[e as usize], self.pts[e as usize + 1]))
    }

    pub(crate) fn bbox(&self) -> (Coord<f64>, Coord<f64>) {
        (self.min, self.max)
    }

    /// (grid columns, rows, boundary cells, mean edges per boundary cell): for tuning.
    pub(crate) fn stats(&self) -> (usize, usize, usize, f64) {
        let n = self.boundary_cells;
        let mean = if n == 0 {
            0.0
        } else {
            (self.blocks.len() - n) as f64 / n as f64
        };
        (self.nx, self.ny, n, mean)
    }
}

#[cfg(test)]
pub(crate) mod tests;
