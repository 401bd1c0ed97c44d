//! Issue #17's server-time targets for `GET /vehicles/{id}/track`: one car-day (8,640 fixes)
//! as JSON ≤ 10 ms, one car-month (30 car-days) ≤ 100 ms, GeoJSON and CSV at least 3× faster
//! than JSON. Server time is the read from storage (`Store::track` over packed chunks, after
//! `ArchiveStore::compact_day`) plus the rendering the handler does
//! (`api::track_format::render`, the same function, body collected into bytes).
//!
//! Stores: SQLite in a temp dir, and PostgreSQL in a throwaway schema when reachable
//! (FLEETGATE_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test). Besides the full
//! path per format (each read as the handler reads it, `Format::read`), `read` times
//! `Store::track` alone, `read_without_attributes` CSV's read, `read_points` GeoJSON's
//! (`Store::track_points`) and `read_map` GPX's, so the split read/render shows.
//!
//! `cargo bench --bench track_read`; the figures are in docs/performance.md.

use std::hint::black_box;

use chrono::{DateTime, Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleetgate::api::track_format::{render, Format, TrackMeta};
use fleetgate::archive::store::{Day, DeviceDay};
use fleetgate::config::StorageConfig;
use fleetgate::model::{AttrKey, AttrValue, DeviceId, Position};
use fleetgate::pipeline::store::TrackColumns;
use fleetgate::protocols::Protocol;
use fleetgate::storage::{self, DeviceState, NewPosition, StoredPosition, Stores, WriteItem};

#[path = "common/pg.rs"]
mod pg;

/// 24 h at one fix every 10 s.
const DAY_FIXES: usize = 8_640;
const MONTH_DAYS: usize = 30;
const DEVICE: &str = "356307042441013";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
}

/// Fix `i` of a Teltonika-fitted taxi's month: moving at varying speed, six IO elements per
/// record (the simulator's stream), odometer and ignition set; coordinates in 10⁻⁷ degrees,
/// as the tracker sends them and the decoder stores them (`raw / 1e7`).
fn fix(i: usize) -> Position {
    let t = t0() + Duration::seconds(i as i64 * 10);
    let k = i % DAY_FIXES;
    let lat = ((55.70 + k as f64 * 0.000_013_7) * 1e7).round() / 1e7;
    let lon = ((37.50 + k as f64 * 0.000_021_3) * 1e7).round() / 1e7;
    let mut p = Position::new(t, true, lat, lon);
    p.speed_kmh = (i % 90) as f64;
    p.course = (i % 360) as f64;
    p.altitude = 150.0 + (i % 7) as f64;
    p.satellites = Some(9 + (i % 5) as u16);
    p.ignition = Some(i % 50 != 0);
    p.motion = Some(i % 90 != 0);
    p.odometer_m = Some(1_250_000.0 + i as f64 * 97.0);
    p.power_v = Some(12.6);
    p.attrs.push(AttrKey::Io(239), AttrValue::Int(1));
    p.attrs.push(AttrKey::Io(240), AttrValue::Int(1));
    p.attrs
        .push(AttrKey::Io(66), AttrValue::Int(12_800 + (i % 40) as i64));
    p.attrs.push(AttrKey::Io(21), AttrValue::Int(4));
    p.attrs.push(AttrKey::Io(69), AttrValue::Int(1));
    p.attrs
        .push(AttrKey::Io(16), AttrValue::Int(1_250_000 + i as i64 * 97));
    p
}

fn item(positions: Vec<Position>, first: usize) -> WriteItem {
    let last = positions.last().expect("a non-empty batch");
    let last_seen = last.fix_time;
    let latest = StoredPosition::from_position(last, last_seen, 0.0);
    WriteItem {
        packed: Vec::new(),
        origin: Default::default(),
        device: DeviceId::new(DEVICE),
        protocol: Protocol::Teltonika,
        server_time: last_seen,
        positions: positions
            .into_iter()
            .enumerate()
            .map(|(j, p)| NewPosition::new(p, (first + j) as f64 * 97.3))
            .collect(),
        state: DeviceState {
            device_id: DeviceId::new(DEVICE),
            protocol: "teltonika".into(),
            last_seen,
            position: Some(latest),
            gps_odometer_m: 0.0,
        },
    }
}

/// A car-month written in batches of 1,000 as the pipeline would, then every day packed.
async fn seed(stores: &Stores) {
    let n = DAY_FIXES * MONTH_DAYS;
    let mut i = 0;
    while i < n {
        let end = (i + 1_000).min(n);
        let batch = (i..end).map(fix).collect();
        stores
            .core
            .write_batch(&[item(batch, i)])
            .await
            .expect("write_batch");
        i = end;
    }
    let first = Day::of(t0());
    for d in 0..MONTH_DAYS as i32 {
        let dd = DeviceDay {
            device: DeviceId::new(DEVICE),
            day: Day(first.0 + d),
        };
        let c = stores.archive.compact_day(&dd).await.expect("compact_day");
        assert_eq!(c.packed, DAY_FIXES as u64, "day {d} packed whole");
    }
}

async fn read(stores: &Stores, days: usize, cols: TrackColumns) -> Vec<StoredPosition> {
    let from = t0();
    let to = from + Duration::days(days as i64);
    let (device, limit) = (DeviceId::new(DEVICE), (days * DAY_FIXES) as u32);
    let got = stores
        .core
        .track_columns(&device, from, to, limit, cols)
        .await
        .expect("track");
    assert_eq!(got.len(), days * DAY_FIXES);
    got
}

/// GeoJSON's read: time, coordinates and speed (`Store::track_points`).
async fn read_points(stores: &Stores, days: usize) -> usize {
    let from = t0();
    let to = from + Duration::days(days as i64);
    let (device, limit) = (DeviceId::new(DEVICE), (days * DAY_FIXES) as u32);
    let got = stores
        .core
        .track_points(&device, from, to, limit)
        .await
        .expect("track_points");
    assert_eq!(got.len(), days * DAY_FIXES);
    got.len()
}

/// The server path: read, render as the handler does, the body in bytes.
async fn serve(stores: &Stores, days: usize, format: Format) -> usize {
    // The read the handler makes for the format.
    let from = t0();
    let to = from + Duration::days(days as i64);
    let (device, limit) = (DeviceId::new(DEVICE), (days * DAY_FIXES) as u32);
    let track = format
        .read(stores.core.as_ref(), &device, from, to, limit)
        .await
        .expect("read");
    let meta = TrackMeta {
        vehicle: "car-17",
        device: DEVICE,
        retained_from: None,
    };
    let resp = render(&meta, track);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    black_box(body.len())
}

fn bench_store(c: &mut Criterion, rt: &tokio::runtime::Runtime, backend: &str, stores: &Stores) {
    for (span, days) in [("car_day", 1), ("car_month", MONTH_DAYS)] {
        let mut g = c.benchmark_group(format!("track_read_{backend}_{span}"));
        g.throughput(Throughput::Elements((days * DAY_FIXES) as u64));
        if days > 1 {
            g.sample_size(10);
        }
        for (name, f) in [
            ("json", Format::Json),
            ("geojson", Format::GeoJson),
            ("csv", Format::Csv),
        ] {
            let bytes = rt.block_on(serve(stores, days, f));
            eprintln!("{backend} {span} {name}: {bytes} bytes");
            g.bench_function(name, |b| b.to_async(rt).iter(|| serve(stores, days, f)));
        }
        let all = TrackColumns::All;
        g.bench_function("read", |b| b.to_async(rt).iter(|| read(stores, days, all)));
        for (name, cols) in [
            ("read_without_attributes", TrackColumns::WithoutAttributes),
            ("read_map", TrackColumns::Map),
        ] {
            g.bench_function(name, |b| b.to_async(rt).iter(|| read(stores, days, cols)));
        }
        g.bench_function("read_points", |b| {
            b.to_async(rt).iter(|| read_points(stores, days))
        });
        g.finish();
    }
}

fn track_read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        url: format!("sqlite://{}/fleetgate.db", dir.path().display()),
        ..Default::default()
    };
    let stores = rt.block_on(storage::open(&cfg)).expect("open sqlite");
    rt.block_on(seed(&stores));
    bench_store(c, &rt, "sqlite", &stores);
    drop(stores);

    match pg::Schema::create(&rt, "fgtrack") {
        Ok(schema) => {
            let cfg = StorageConfig {
                url: schema.url.clone(),
                max_connections: 4,
                ..Default::default()
            };
            let stores = rt.block_on(storage::open(&cfg)).expect("open postgres");
            rt.block_on(seed(&stores));
            bench_store(c, &rt, "postgres", &stores);
            rt.block_on(async { drop(stores) });
            schema.drop(&rt);
        }
        Err(e) => eprintln!("postgres: skipped ({e})"),
    }
}

criterion_group!(benches, track_read);
criterion_main!(benches);
