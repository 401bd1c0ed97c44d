//! Building a `PipGrid`: grid sizing, edge lists per cell, exact cell classification.

use geo::{Coord, MultiPolygon};

use super::{
    in_box, orient, ray_crosses, PipGrid, SubGrid, CELLS_PER_EDGE, INSIDE, LARGE_CELLS_PER_EDGE,
    LARGE_EDGES, MAX_CELLS, OUTSIDE, SPLIT_EDGES, SUB,
};

/// Conservative segment/box overlap (may say yes for a near miss, never no for a hit).
fn segment_touches(a: Coord<f64>, b: Coord<f64>, (lo, hi): (Coord<f64>, Coord<f64>)) -> bool {
    if a.x.max(b.x) < lo.x || a.x.min(b.x) > hi.x || a.y.max(b.y) < lo.y || a.y.min(b.y) > hi.y {
        return false;
    }
    let d = Coord {
        x: b.x - a.x,
        y: b.y - a.y,
    };
    let side = |c: Coord<f64>| d.x * (c.y - a.y) - d.y * (c.x - a.x);
    let s = [
        side(lo),
        side(hi),
        side(Coord { x: lo.x, y: hi.y }),
        side(Coord { x: hi.x, y: lo.y }),
    ];
    !(s.iter().all(|&v| v > 0.0) || s.iter().all(|&v| v < 0.0))
}

/// Parity of the edges crossing segment p-r (r not on any edge), vertices on the segment's
/// line counted as left of it; `None` when p lies on an edge. Build-time twin of
/// `PipGrid::boundary_contains`.
fn crossing_parity(
    p: Coord<f64>,
    r: Coord<f64>,
    edges: &[(Coord<f64>, Coord<f64>)],
) -> Option<bool> {
    let mut odd = false;
    for &(a, b) in edges {
        if in_box(p, a, b) && orient(a, b, p) == 0.0 {
            return None;
        }
        let sa = orient(p, r, a) >= 0.0;
        let sb = orient(p, r, b) >= 0.0;
        if sa != sb && (orient(a, b, p) > 0.0) != (orient(a, b, r) > 0.0) {
            odd = !odd;
        }
    }
    Some(odd)
}

impl PipGrid {
    pub(crate) fn new(mp: &MultiPolygon<f64>) -> PipGrid {
        PipGrid::with_density(mp, None)
    }

    /// `cells_per_edge` overrides the density (tests force coarse grids and sub-grids).
    pub(crate) fn with_density(mp: &MultiPolygon<f64>, cells_per_edge: Option<f64>) -> PipGrid {
        let mut pts = Vec::new();
        let mut edges = Vec::new();
        for poly in &mp.0 {
            for ring in std::iter::once(poly.exterior()).chain(poly.interiors()) {
                let base = pts.len();
                pts.extend_from_slice(&ring.0);
                for i in 0..ring.0.len().saturating_sub(1) {
                    if ring.0[i] != ring.0[i + 1] {
                        edges.push((base + i) as u32);
                    }
                }
            }
        }
        let (mut min, mut max) = (
            Coord {
                x: f64::INFINITY,
                y: f64::INFINITY,
            },
            Coord {
                x: f64::NEG_INFINITY,
                y: f64::NEG_INFINITY,
            },
        );
        for p in &pts {
            min.x = min.x.min(p.x);
            min.y = min.y.min(p.y);
            max.x = max.x.max(p.x);
            max.y = max.y.max(p.y);
        }
        if pts.is_empty() {
            min = Coord { x: 0.0, y: 0.0 };
            max = min;
        }
        let (w, h) = (max.x - min.x, max.y - min.y);
        let per_edge = cells_per_edge.unwrap_or(if edges.len() >= LARGE_EDGES {
            LARGE_CELLS_PER_EDGE
        } else {
            CELLS_PER_EDGE
        });
        let target = (edges.len() as f64 * per_edge).clamp(1.0, MAX_CELLS);
        let (nx, ny) = if w > 0.0 && h > 0.0 {
            let nx = (target * w / h).sqrt().round().clamp(1.0, 4096.0);
            let ny = (target / nx).round().clamp(1.0, 4096.0);
            (nx as usize, ny as usize)
        } else {
            (1, 1)
        };
        let cw = if w > 0.0 { w / nx as f64 } else { 1.0 };
        let ch = if h > 0.0 { h / ny as f64 } else { 1.0 };
        let mut g = PipGrid {
            pts,
            edges,
            min,
            max,
            inv_w: 1.0 / cw,
            inv_h: 1.0 / ch,
            nx,
            ny,
            cells: vec![OUTSIDE; nx * ny],
            blocks: Vec::new(),
            boundary_cells: 0,
            subgrids: Vec::new(),
            sub_cells: Vec::new(),
        };
        g.build(cw, ch);
        g
    }

    fn cell_box(&self, i: usize, j: usize, cw: f64, ch: f64) -> (Coord<f64>, Coord<f64>) {
        // Inflated so that float rounding in `locate` can never put a point outside its cell.
        let mx = cw * 1e-7;
        let my = ch * 1e-7;
        (
            Coord {
                x: self.min.x + i as f64 * cw - mx,
                y: self.min.y + j as f64 * ch - my,
            },
            Coord {
                x: self.min.x + (i + 1) as f64 * cw + mx,
                y: self.min.y + (j + 1) as f64 * ch + my,
            },
        )
    }

    fn build(&mut self, cw: f64, ch: f64) {
        let (nx, ny) = (self.nx, self.ny);
        let clamp_x =
            |x: f64| (((x - self.min.x) * self.inv_w).floor().max(0.0) as usize).min(nx - 1);
        let clamp_y =
            |y: f64| (((y - self.min.y) * self.inv_h).floor().max(0.0) as usize).min(ny - 1);
        // (cell, edge) pairs for every edge touching a cell (conservatively).
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(self.edges.len() * 3);
        for &e in &self.edges {
            let (a, b) = (self.pts[e as usize], self.pts[e as usize + 1]);
            let i0 = clamp_x(a.x.min(b.x) - cw * 1e-6);
            let i1 = clamp_x(a.x.max(b.x) + cw * 1e-6);
            let j0 = clamp_y(a.y.min(b.y) - ch * 1e-6);
            let j1 = clamp_y(a.y.max(b.y) + ch * 1e-6);
            for j in j0..=j1 {
                for i in i0..=i1 {
                    let single = i0 == i1 || j0 == j1;
                    if single || segment_touches(a, b, self.cell_box(i, j, cw, ch)) {
                        pairs.push(((j * nx + i) as u32, e));
                    }
                }
            }
        }
        pairs.sort_unstable();
        // Inside-ness of cell centres, row by row, from the crossings of the centre line.
        let mut row_edges: Vec<Vec<u32>> = vec![Vec::new(); ny];
        for &e in &self.edges {
            let (a, b) = (self.pts[e as usize], self.pts[e as usize + 1]);
            let (ylo, yhi) = (a.y.min(b.y), a.y.max(b.y));
            let j0 = clamp_y(ylo - ch);
            let j1 = clamp_y(yhi + ch);
            for (j, row) in row_edges.iter_mut().enumerate().take(j1 + 1).skip(j0) {
                let yc = self.min.y + (j as f64 + 0.5) * ch;
                if (a.y > yc) != (b.y > yc) {
                    row.push(e);
                }
            }
        }
        let mut p = 0usize;
        let mut xs: Vec<f64> = Vec::new();
        for (j, row) in row_edges.iter().enumerate() {
            let yc = self.min.y + (j as f64 + 0.5) * ch;
            xs.clear();
            for &e in row {
                let (a, b) = (self.pts[e as usize], self.pts[e as usize + 1]);
                xs.push(a.x + (yc - a.y) * (b.x - a.x) / (b.y - a.y));
            }
            xs.sort_unstable_by(f64::total_cmp);
            let mut k = 0usize; // crossings left of the current centre
            for i in 0..nx {
                let xc = self.min.x + (i as f64 + 0.5) * cw;
                while k < xs.len() && xs[k] <= xc {
                    k += 1;
                }
                let cell = j * nx + i;
                let start = p;
                while p < pairs.len() && pairs[p].0 as usize == cell {
                    p += 1;
                }
                if start == p {
                    // No edge near: the float crossing count is far from ambiguous.
                    self.cells[cell] = if (xs.len() - k) % 2 == 1 {
                        INSIDE
                    } else {
                        OUTSIDE
                    };
                    continue;
                }
                let list: Vec<(Coord<f64>, Coord<f64>)> = pairs[start..p]
                    .iter()
                    .map(|&(_, e)| (self.pts[e as usize], self.pts[e as usize + 1]))
                    .collect();
                let ids: Vec<u32> = pairs[start..p].iter().map(|&(_, e)| e).collect();
                let (r, inside) = self.reference_point(i, j, cw, ch, row, &ids);
                self.cells[cell] = if list.len() > SPLIT_EDGES {
                    let x0 = Coord {
                        x: self.min.x + i as f64 * cw,
                        y: self.min.y + j as f64 * ch,
                    };
                    self.subdivide(x0, cw, ch, &list, r, inside)
                } else {
                    self.push_block(r, inside, &list)
                };
            }
        }
    }

    /// Stores a boundary cell; returns its cell value.
    fn push_block(
        &mut self,
        r: Coord<f64>,
        inside: bool,
        list: &[(Coord<f64>, Coord<f64>)],
    ) -> u32 {
        let value = 2 + self.blocks.len() as u32;
        self.boundary_cells += 1;
        self.blocks
            .push([r.x, r.y, list.len() as f64, if inside { 1.0 } else { 0.0 }]);
        for &(a, b) in list {
            // An edge whose line passes through r never reaches the side test in
            // `boundary_contains` (p-r would cross it at r), so its order is moot.
            let entry = if orient(a, b, r) > 0.0 {
                [a.x, a.y, b.x, b.y]
            } else {
                [b.x, b.y, a.x, a.y]
            };
            self.blocks.push(entry);
        }
        value
    }

    /// Splits a crowded boundary cell (origin `x0`, size `cw` x `ch`) into `n` x `n`
    /// sub-cells, classified exactly from the cell's reference point `r`.
    fn subdivide(
        &mut self,
        x0: Coord<f64>,
        cw: f64,
        ch: f64,
        list: &[(Coord<f64>, Coord<f64>)],
        r: Coord<f64>,
        inside_r: bool,
    ) -> u32 {
        let n = ((list.len() as f64 / 2.0).sqrt().ceil() as usize).clamp(2, 16);
        let (sw, sh) = (cw / n as f64, ch / n as f64);
        let first = self.sub_cells.len();
        self.sub_cells.resize(first + n * n, OUTSIDE);
        // Inside-ness of q (not on an edge) from r across the cell's edges.
        let local = |q: Coord<f64>| crossing_parity(q, r, list).map(|odd| odd != inside_r);
        for sj in 0..n {
            for si in 0..n {
                let (mx, my) = (sw * 1e-7, sh * 1e-7);
                let lo = Coord {
                    x: x0.x + si as f64 * sw - mx,
                    y: x0.y + sj as f64 * sh - my,
                };
                let hi = Coord {
                    x: x0.x + (si + 1) as f64 * sw + mx,
                    y: x0.y + (sj + 1) as f64 * sh + my,
                };
                let sub: Vec<(Coord<f64>, Coord<f64>)> = list
                    .iter()
                    .copied()
                    .filter(|&(a, b)| segment_touches(a, b, (lo, hi)))
                    .collect();
                let at = |fx: f64, fy: f64| Coord {
                    x: x0.x + (si as f64 + fx) * sw,
                    y: x0.y + (sj as f64 + fy) * sh,
                };
                let value = if sub.is_empty() {
                    match local(at(0.5, 0.5)) {
                        Some(true) => INSIDE,
                        _ => OUTSIDE,
                    }
                } else {
                    let found = (0..1000u32).find_map(|k| {
                        let (fx, fy) = if k == 0 {
                            (0.5, 0.5)
                        } else {
                            (
                                (k as f64 * 0.618_033_988_749_895).fract() * 0.9 + 0.05,
                                (k as f64 * 0.754_877_666_246_693).fract() * 0.9 + 0.05,
                            )
                        };
                        let q = at(fx, fy);
                        local(q).map(|inside| (q, inside))
                    });
                    let (q, inside) = found.unwrap_or((at(0.5, 0.5), false));
                    self.push_block(q, inside, &sub)
                };
                self.sub_cells[first + sj * n + si] = value;
            }
        }
        let value = SUB | self.subgrids.len() as u32;
        self.subgrids.push(SubGrid {
            x0,
            inv_w: 1.0 / sw,
            inv_h: 1.0 / sh,
            n: n as u32,
            first: first as u32,
        });
        value
    }

    /// A point of the cell not on any edge, and its exact inside-ness.
    fn reference_point(
        &self,
        i: usize,
        j: usize,
        cw: f64,
        ch: f64,
        row: &[u32],
        list: &[u32],
    ) -> (Coord<f64>, bool) {
        let at = |fx: f64, fy: f64| Coord {
            x: self.min.x + (i as f64 + fx) * cw,
            y: self.min.y + (j as f64 + fy) * ch,
        };
        let on_edge = |r: Coord<f64>| {
            list.iter().any(|&e| {
                let (a, b) = (self.pts[e as usize], self.pts[e as usize + 1]);
                in_box(r, a, b) && orient(a, b, r) == 0.0
            })
        };
        let centre = at(0.5, 0.5);
        if !on_edge(centre) {
            // The centre line's crossing edges are exactly `row`.
            let mut inside = false;
            for &e in row {
                let (a, b) = (self.pts[e as usize], self.pts[e as usize + 1]);
                if ray_crosses(a, b, centre) == Some(true) {
                    inside = !inside;
                }
            }
            return (centre, inside);
        }
        // Rare: try other points and scan every edge.
        for k in 1..1000u32 {
            let fx = (k as f64 * 0.618_033_988_749_895).fract() * 0.9 + 0.05;
            let fy = (k as f64 * 0.754_877_666_246_693).fract() * 0.9 + 0.05;
            let r = at(fx, fy);
            if !on_edge(r) {
                if let Some(inside) = self.scan(r) {
                    return (r, inside);
                }
            }
        }
        // Unreachable for real data: a cell whose every sample lies on an edge.
        (centre, false)
    }
}
