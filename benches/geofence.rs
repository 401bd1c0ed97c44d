//! Geofence lookups per fix: the real service area (13,249 vertices), the Oblast (23,199
//! vertices, 8 holes), and 10,000 synthetic zones of 1,000 vertices each.
//!
//! `cargo bench --bench geofence`. Criterion reports means; the synthetic set's p50/p99/max
//! come from a manual loop timing single lookups (printed to stderr; they include the
//! ~20-40 ns of `Instant::now()`).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use geo::{Coord, LineString, MultiPolygon, Polygon};
use serde_json::Value;

use chrono::{TimeZone, Utc};
use fleetgate::geofence::{
    zones_from_geojson, DebounceOverride, Fix, Shape, VehicleZones, Zone, ZoneKind, ZoneSet,
};

struct Rng(u64);

impl Rng {
    fn f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn shipped_zone(file: &str) -> Zone {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("geofences")
        .join(file);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    zones_from_geojson(&doc, file).expect("zones").remove(0)
}

fn vertices(z: &Zone) -> Vec<Coord<f64>> {
    match &z.shape {
        Shape::Area(mp) => {
            mp.0.iter()
                .flat_map(|p| std::iter::once(p.exterior()).chain(p.interiors()))
                .flat_map(|r| r.0.iter().copied())
                .collect()
        }
        Shape::Circle { center, .. } => vec![*center],
    }
}

/// Half uniform over `bbox`, half within ~50 m of a vertex of `near`: (lat, lon) pairs.
fn points(
    bbox: (f64, f64, f64, f64),
    near: &[Coord<f64>],
    n: usize,
    rng: &mut Rng,
) -> Vec<(f64, f64)> {
    let (x0, y0, x1, y1) = bbox;
    (0..n)
        .map(|k| {
            if k % 2 == 0 {
                (y0 + rng.f64() * (y1 - y0), x0 + rng.f64() * (x1 - x0))
            } else {
                let v = near[(rng.f64() * near.len() as f64) as usize % near.len()];
                (
                    v.y + (rng.f64() - 0.5) * 0.001,
                    v.x + (rng.f64() - 0.5) * 0.0015,
                )
            }
        })
        .collect()
}

/// 10,000 zones of 1,000 vertices over the region: wobbly circles (0.5-2 km radius, two
/// harmonics plus 1 % vertex jitter), shaped like real site outlines rather than spiky stars.
fn synthetic_zones(rng: &mut Rng) -> Vec<Zone> {
    (0..10_000)
        .map(|i| {
            let (cx, cy) = (35.2 + rng.f64() * 5.0, 54.3 + rng.f64() * 2.6);
            let r_km = 0.5 + rng.f64() * 1.5;
            let (ry, rx) = (r_km / 111.3, r_km / (111.3 * cy.to_radians().cos()));
            let (p1, p2) = (rng.f64() * 6.3, rng.f64() * 6.3);
            let mut ring: Vec<Coord<f64>> = (0..999)
                .map(|k| {
                    let a = k as f64 / 999.0 * std::f64::consts::TAU;
                    let s = 1.0
                        + 0.08 * (3.0 * a + p1).sin()
                        + 0.05 * (7.0 * a + p2).sin()
                        + 0.01 * (rng.f64() - 0.5);
                    Coord {
                        x: cx + rx * s * a.cos(),
                        y: cy + ry * s * a.sin(),
                    }
                })
                .collect();
            ring.push(ring[0]);
            Zone {
                name: format!("synthetic_{i}"),
                kind: ZoneKind::Parking,
                shape: Shape::Area(MultiPolygon(vec![Polygon::new(LineString(ring), vec![])])),
                buffer_m: 0.0,
                debounce: DebounceOverride::default(),
                extra: Default::default(),
            }
        })
        .collect()
}

fn bench_real(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (label, file) in [
        ("service_area", "service_area.geojson"),
        ("oblast_holes", "moscow_oblast.geojson"),
    ] {
        let zone = shipped_zone(file);
        let near = vertices(&zone);
        let set = ZoneSet::from_zones(vec![zone]).expect("set");
        let mix = points((35.1, 54.2, 40.3, 57.0), &near, 4096, &mut rng);
        c.bench_function(&format!("{label}/kremlin"), |b| {
            b.iter(|| {
                set.containing(black_box(55.7558), black_box(37.6173))
                    .count()
            })
        });
        let mut k = 0;
        c.bench_function(&format!("{label}/mixed_half_near_boundary"), |b| {
            b.iter(|| {
                k = (k + 1) & 4095;
                let (lat, lon) = mix[k];
                set.containing(black_box(lat), black_box(lon)).count()
            })
        });
    }
}

fn bench_tracker(c: &mut Criterion) {
    let t = Instant::now();
    let set =
        ZoneSet::load_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("geofences")).expect("load");
    eprintln!(
        "shipped geofences: parsed and indexed {} zones in {:?}",
        set.len(),
        t.elapsed()
    );
    let mut v = VehicleZones::new();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
    let mut k = 0i64;
    c.bench_function("tracker/observe_fix_in_moscow_shipped_zones", |b| {
        b.iter(|| {
            k += 1;
            let fix = Fix {
                time: t0 + chrono::Duration::seconds(k),
                lat: 55.7558 + (k & 63) as f64 * 1e-5,
                lon: 37.6173,
                valid: true,
                speed_kmh: 30.0,
                is_jump: false,
            };
            v.observe(&set, black_box(&fix)).len()
        })
    });
}

fn bench_synthetic(c: &mut Criterion) {
    let mut rng = Rng(0x1234_5678);
    let zones = synthetic_zones(&mut rng);
    let near: Vec<Coord<f64>> = zones
        .iter()
        .step_by(7)
        .flat_map(|z| vertices(z).into_iter().step_by(50))
        .collect();
    let t0 = Instant::now();
    let set = ZoneSet::from_zones(zones).expect("set");
    eprintln!(
        "synthetic: built 10,000 zones x 1,000 vertices in {:?}",
        t0.elapsed()
    );
    let pts = points((35.2, 54.3, 40.2, 56.9), &near, 1 << 16, &mut rng);
    let hits: usize = pts
        .iter()
        .map(|&(la, lo)| set.containing(la, lo).count())
        .sum();
    eprintln!(
        "synthetic: {:.3} zones per query point on average",
        hits as f64 / pts.len() as f64
    );

    // p50/p99 of single lookups.
    let mut ns: Vec<u64> = Vec::with_capacity(pts.len() * 4);
    for _ in 0..4 {
        for &(lat, lon) in &pts {
            let t = Instant::now();
            black_box(set.containing(black_box(lat), black_box(lon)).count());
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    let mut empty: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    empty.sort_unstable();
    ns.sort_unstable();
    let q = |v: &[u64], f: f64| v[((v.len() as f64 * f) as usize).min(v.len() - 1)];
    eprintln!(
        "synthetic single lookup over {} queries: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns (Instant overhead p50 {} ns)",
        ns.len(),
        q(&ns, 0.5),
        q(&ns, 0.99),
        q(&ns, 0.999),
        ns[ns.len() - 1],
        q(&empty, 0.5)
    );

    let mut k = 0;
    c.bench_function("synthetic_10k/mixed_half_near_boundary", |b| {
        b.iter(|| {
            k = (k + 1) & ((1 << 16) - 1);
            let (lat, lon) = pts[k];
            set.containing(black_box(lat), black_box(lon)).count()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_real, bench_tracker, bench_synthetic
}
criterion_main!(benches);
