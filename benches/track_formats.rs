//! A car-day track (8,640 fixes, one every 10 s) rendered as the API renders it: the JSON rows
//! (`GET …/track`, `api::track_format::json`, the bytes serde made of `api::rows::Position`), and
//! the compact formats written straight into a `String` (`?format=geojson`, `?format=csv`, `/track.gpx`). Issue #17's target:
//! GeoJSON and CSV at least 3× faster than JSON. Storage is left out: every format reads the
//! same `Vec<StoredPosition>`.
//!
//! `cargo bench --bench track_formats`; the figures are in docs/performance.md.

use std::hint::black_box;

use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fleetgate::api::rows;
use fleetgate::api::track_format::{csv, geojson, gpx, json, TrackMeta};
use fleetgate::model::Position;
use fleetgate::pipeline::store::{StoredPosition, TrackPoint};

/// 24 h at one fix every 10 s.
const FIXES: usize = 8_640;

/// A day of a Teltonika-fitted taxi: moving north-east at varying speed, six IO elements
/// per record in `attributes` (the simulator's stream), odometer and ignition set.
fn car_day() -> Vec<StoredPosition> {
    let t0 = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
    (0..FIXES)
        .map(|i| {
            let t = t0 + Duration::seconds(i as i64 * 10);
            // In 10⁻⁷ degrees, as a Teltonika tracker sends them and the decoder stores them.
            let lat = ((55.70 + i as f64 * 0.000_013_7) * 1e7).round() / 1e7;
            let lon = ((37.50 + i as f64 * 0.000_021_3) * 1e7).round() / 1e7;
            let mut p = StoredPosition::from_position(&Position::new(t, true, lat, lon), t, i as f64 * 97.3);
            p.speed_kmh = (i % 90) as f64;
            p.course = (i % 360) as f64;
            p.altitude = 150.0 + (i % 7) as f64;
            p.satellites = Some(9 + (i % 5) as u16);
            p.ignition = Some(i % 50 != 0);
            p.motion = Some(i % 90 != 0);
            p.odometer_m = Some(1_250_000.0 + i as f64 * 97.0);
            p.power_v = Some(12.6);
            p.attributes = serde_json::json!({
                "io239": 1, "io240": 1, "io66": 12_800 + i % 40, "io21": 4, "io69": 1, "io16": 1_250_000 + i * 97,
            })
            .into();
            p
        })
        .collect()
}

fn formats(c: &mut Criterion) {
    let day = car_day();
    // GeoJSON renders what `Store::track_points` reads.
    let line: Vec<TrackPoint> = day.iter().map(TrackPoint::from).collect();
    let meta = TrackMeta {
        vehicle: "car-17",
        device: "356307042441013",
        retained_from: None,
    };
    let sizes = [
        (
            "json",
            serde_json::to_vec(&rows::all::<_, rows::Position>(day.clone()))
                .unwrap()
                .len(),
        ),
        ("geojson", geojson(&meta, &line).len()),
        ("csv", csv(&day).len()),
        ("gpx", gpx(&meta, &day).len()),
    ];
    for (name, n) in sizes {
        eprintln!(
            "{name}: {n} bytes for {FIXES} fixes ({:.1} bytes/fix)",
            n as f64 / FIXES as f64
        );
    }
    let mut g = c.benchmark_group("track_car_day");
    g.throughput(Throughput::Elements(FIXES as u64));
    // What `/track` answers now; `json_serde` is how it answered before (rows moved into
    // `rows::Position` and serialised; the clone standing for "what storage returned" is set-up).
    g.bench_function("json", |b| b.iter(|| black_box(json(black_box(&day)))));
    g.bench_function("json_serde", |b| {
        b.iter_batched(
            || day.clone(),
            |d| black_box(serde_json::to_vec(&rows::all::<_, rows::Position>(d)).unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("geojson", |b| {
        b.iter(|| black_box(geojson(&meta, black_box(&line))))
    });
    g.bench_function("csv", |b| b.iter(|| black_box(csv(black_box(&day)))));
    g.bench_function("gpx", |b| b.iter(|| black_box(gpx(&meta, black_box(&day)))));
    g.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
