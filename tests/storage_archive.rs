//! The position archive's storage (issue #17), written once against the ports and run on
//! SQLite (a temp file) and PostgreSQL (a private schema): compaction (merge, dedup across
//! tiers, idempotence, late data into a packed day), reads across tiers, expiry of both tiers,
//! summaries, row expiry, and the conversion of a database made before the archive.

mod common;

use std::future::Future;

use chrono::{DateTime, TimeZone, Utc};
use fleetgate::archive::store::{DailySummary, Day, DeviceDay, Expiring, NothingOnPacked, Tier};
use fleetgate::config::StorageConfig;
use fleetgate::geofence::store::{StoredMembership, StoredZoneEvent, ZoneChange};
use fleetgate::model::{AttrKey, AttrValue, DeviceId, Position, VehicleId};
use fleetgate::protocols::Protocol;
use fleetgate::storage::{
    self, DeviceState, NewPosition, StoredPosition, Stores, TrackPoint, WriteItem,
};

struct Ctx {
    store: Stores,
    cfg: StorageConfig,
}

async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        url: format!("sqlite://{}/fleetgate.db", dir.path().display()),
        ..Default::default()
    };
    let store = storage::open(&cfg).await.expect("open sqlite");
    test(Ctx { store, cfg }).await;
}

async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = common::pg::PgSchema::create().await;
    let cfg = StorageConfig {
        url: schema.url.clone(),
        max_connections: 4,
        ..Default::default()
    };
    let store = storage::open(&cfg).await.expect("open postgres");
    test(Ctx { store, cfg }).await;
    drop(schema);
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::on_sqlite(super::$name).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::on_postgres(super::$name).await })*
        }
    };
}

both!(
    compaction_packs_a_day_into_one_chunk_and_the_track_reads_the_same,
    compaction_twice_changes_nothing,
    late_data_into_a_packed_day_is_read_at_once_and_packed_next_time,
    reads_merge_the_tiers_in_fix_order_and_limit_after_the_merge,
    expiry_drops_both_tiers_of_old_days_and_sets_retained_from,
    unpacked_days_lists_closed_hot_days_oldest_first,
    summaries_upsert_and_read_by_day_range,
    expire_rows_deletes_old_zone_events_in_batches,
    a_day_expired_under_the_writer_still_takes_late_data,
    a_fix_time_resent_in_later_packets_keeps_its_first_copy_across_restarts_and_compaction,
    rows_of_an_older_version_come_before_the_group_commits_chunks,
);

/// A closed day, long ago: days 0..3 of the tests are the 10th to the 13th of November 2026.
fn day(n: i32) -> Day {
    Day(Day::of(Utc.with_ymd_and_hms(2026, 11, 10, 0, 0, 0).unwrap()).0 + n)
}

fn next(d: Day) -> Day {
    Day(d.0 + 1)
}

fn at(d: Day, second: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(d.start_ms() + second * 1000)
        .unwrap()
}

fn pos(t: DateTime<Utc>, lat: f64) -> Position {
    let mut p = Position::new(t, true, lat, 37.618423);
    p.speed_kmh = 42.0;
    p.course = 90.0;
    p.altitude = 150.0;
    p.satellites = Some(11);
    p.ignition = Some(true);
    p.odometer_m = Some(120_000.0);
    p.power_v = Some(13.8);
    p.attrs.push(AttrKey::Io(239), AttrValue::Int(1));
    p
}

fn item(device: &str, positions: Vec<Position>) -> WriteItem {
    let last_seen = positions
        .iter()
        .map(|p| p.fix_time)
        .max()
        .unwrap_or_else(Utc::now);
    let latest = positions
        .iter()
        .max_by_key(|p| p.fix_time)
        .map(|p| StoredPosition::from_position(p, last_seen, 10.0));
    WriteItem {
        packed: Vec::new(),
        origin: Default::default(),
        device: DeviceId::new(device),
        protocol: Protocol::Teltonika,
        server_time: last_seen,
        positions: positions
            .into_iter()
            .enumerate()
            .map(|(i, p)| NewPosition::new(p, i as f64 * 5.0))
            .collect(),
        state: DeviceState {
            device_id: DeviceId::new(device),
            protocol: "teltonika".into(),
            last_seen,
            position: latest,
            gps_odometer_m: 10.0,
        },
    }
}

/// `n` fixes 10 s apart from second `from` of day `d`, latitudes counting up from `lat`,
/// speeds from 30 km/h.
fn fixes(d: Day, from: i64, n: i64, lat: f64) -> Vec<Position> {
    (0..n)
        .map(|i| {
            let mut p = pos(at(d, from + i * 10), lat + i as f64 * 1e-4);
            p.speed_kmh = 30.0 + i as f64 * 0.5;
            p
        })
        .collect()
}

/// What `track_points` must answer for these rows of `track`.
fn points_of(track: &[StoredPosition]) -> Vec<TrackPoint> {
    track.iter().map(TrackPoint::from).collect()
}

async fn write(c: &Ctx, device: &str, p: Vec<Position>) {
    c.store.core.write_batch(&[item(device, p)]).await.unwrap();
}

/// `Store::track_points` of `device` with `from <= fix time < to`, at most `limit`.
async fn points(
    c: &Ctx,
    device: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Vec<TrackPoint> {
    let device = DeviceId::new(device);
    c.store
        .core
        .track_points(&device, from, to, limit)
        .await
        .unwrap()
}

async fn track(c: &Ctx, device: &str, from: Day, to: Day) -> Vec<StoredPosition> {
    c.store
        .core
        .track(&DeviceId::new(device), at(from, 0), at(to, 0), 1_000_000)
        .await
        .unwrap()
}

fn dd(device: &str, d: Day) -> DeviceDay {
    DeviceDay {
        device: DeviceId::new(device),
        day: d,
    }
}

/// Positions the same: the chunk codec is lossless (docs/archive.md), so to the last bit.
fn assert_same(a: &[StoredPosition], b: &[StoredPosition]) {
    assert_eq!(a.len(), b.len(), "track lengths");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y);
    }
}

/// Positions (hot, packed) of day `d` per `partition_stats`.
async fn tiers_of(c: &Ctx, d: Day) -> (u64, u64) {
    let s = c.store.archive.partition_stats().await.unwrap();
    let n = |t: Tier| {
        s.iter()
            .filter(|p| p.day == d && p.tier == t)
            .map(|p| p.positions)
            .sum()
    };
    (n(Tier::Hot), n(Tier::Packed))
}

async fn compaction_packs_a_day_into_one_chunk_and_the_track_reads_the_same(c: Ctx) {
    let d = day(0);
    write(&c, "dev-a", fixes(d, 0, 50, 55.70)).await;
    write(&c, "dev-a", fixes(d, 600, 50, 55.71)).await;
    write(&c, "dev-b", fixes(d, 0, 10, 55.80)).await;
    let before = track(&c, "dev-a", d, next(d)).await;
    assert_eq!(before.len(), 100);
    assert_eq!(tiers_of(&c, d).await, (110, 0));

    let got = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    assert_eq!(got.packed, 100);
    assert_eq!(got.duplicates, 0);
    assert!(got.bytes > 0);
    assert_same(&got.positions, &before);

    assert_same(&track(&c, "dev-a", d, next(d)).await, &before);
    assert_eq!(tiers_of(&c, d).await, (10, 100), "dev-b's day stays hot");
    let points = points(&c, "dev-a", at(d, 0), at(d, 86_400), 1000).await;
    assert_eq!(points, points_of(&before));
    // Reopened: the chunk is on disk.
    drop(c.store);
    let store = storage::open(&c.cfg).await.unwrap();
    let again = store
        .core
        .track(&DeviceId::new("dev-a"), at(d, 0), at(d, 86_400), 1000)
        .await
        .unwrap();
    assert_same(&again, &before);
}

async fn compaction_twice_changes_nothing(c: Ctx) {
    let d = day(1);
    write(&c, "dev-a", fixes(d, 0, 30, 55.7)).await;
    let first = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    let second = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    assert_eq!(second.packed, 0);
    assert_eq!(second.duplicates, 0);
    assert_same(&second.positions, &first.positions);
    assert_eq!(tiers_of(&c, d).await, (0, 30));
    // A device-day with nothing at all.
    let none = c.store.archive.compact_day(&dd("nobody", d)).await.unwrap();
    assert!(none.positions.is_empty());
}

async fn late_data_into_a_packed_day_is_read_at_once_and_packed_next_time(c: Ctx) {
    let d = day(2);
    write(&c, "dev-a", fixes(d, 0, 20, 55.7)).await;
    c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    // A buffered upload: 5 new fixes between the old ones and one re-sent fix time with
    // other coordinates (the packed copy, stored first, wins).
    let mut late = fixes(d, 5, 5, 56.0);
    late.push(pos(at(d, 30), 57.0));
    write(&c, "dev-a", late).await;
    let t = track(&c, "dev-a", d, next(d)).await;
    assert_eq!(t.len(), 25);
    let resent = t.iter().find(|p| p.time == at(d, 30)).unwrap();
    assert!(
        (resent.lat - (55.7 + 3.0 * 1e-4)).abs() < 1e-6,
        "first stored wins: {resent:?}"
    );
    assert!(t.windows(2).all(|w| w[0].time < w[1].time));

    let got = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    assert_eq!(got.packed, 6);
    assert_eq!(got.duplicates, 1);
    assert_eq!(got.positions.len(), 25);
    assert_same(&track(&c, "dev-a", d, next(d)).await, &t);
    assert_eq!(tiers_of(&c, d).await, (0, 25));
}

async fn reads_merge_the_tiers_in_fix_order_and_limit_after_the_merge(c: Ctx) {
    let (d0, d1) = (day(0), day(1));
    write(&c, "dev-a", fixes(d0, 80_000, 40, 55.7)).await; // runs to 80,390 s
    write(&c, "dev-a", fixes(d1, 0, 40, 55.8)).await;
    c.store.archive.compact_day(&dd("dev-a", d0)).await.unwrap();
    let all = track(&c, "dev-a", d0, next(d1)).await;
    assert_eq!(all.len(), 80);
    assert!(all.windows(2).all(|w| w[0].time < w[1].time));
    // From the middle of the packed day to the middle of the hot one, limited.
    let some = c
        .store
        .core
        .track(&DeviceId::new("dev-a"), at(d0, 80_100), at(d1, 100), 15)
        .await
        .unwrap();
    assert_eq!(some.len(), 15);
    assert_eq!(some[0].time, at(d0, 80_100));
    assert_same(&some, &all[10..25]);
    let half_open = c
        .store
        .core
        .track(&DeviceId::new("dev-a"), at(d0, 80_100), at(d1, 100), 1000)
        .await
        .unwrap();
    assert_eq!(
        half_open.last().unwrap().time,
        at(d1, 90),
        "to is exclusive"
    );
    assert_eq!(half_open.len(), 30 + 10);
    let points = points(&c, "dev-a", at(d0, 80_100), at(d1, 100), 15).await;
    assert_eq!(points, points_of(&some));
    assert_eq!(
        points.iter().map(|p| p.time).collect::<Vec<_>>(),
        some.iter().map(|p| p.time).collect::<Vec<_>>()
    );
}

async fn expiry_drops_both_tiers_of_old_days_and_sets_retained_from(c: Ctx) {
    let (d0, d1, d2) = (day(0), day(1), day(2));
    for d in [d0, d1, d2] {
        write(&c, "dev-a", fixes(d, 0, 10, 55.7)).await;
    }
    c.store.archive.compact_day(&dd("dev-a", d0)).await.unwrap();
    assert_eq!(c.store.archive.retained_from().await.unwrap(), Some(d0));
    let gone = c.store.archive.expire_days(d2).await.unwrap();
    assert_eq!(gone, vec![d0, d1]);
    assert!(track(&c, "dev-a", d0, d2).await.is_empty());
    assert_eq!(track(&c, "dev-a", d2, next(d2)).await.len(), 10);
    assert_eq!(c.store.archive.retained_from().await.unwrap(), Some(d2));
    let stats = c.store.archive.partition_stats().await.unwrap();
    assert!(stats.iter().all(|s| s.day >= d2), "{stats:?}");
    // Nothing left to drop.
    assert!(c.store.archive.expire_days(d2).await.unwrap().is_empty());
}

async fn unpacked_days_lists_closed_hot_days_oldest_first(c: Ctx) {
    write(&c, "dev-b", fixes(day(1), 0, 3, 55.7)).await;
    write(&c, "dev-a", fixes(day(0), 0, 3, 55.7)).await;
    write(&c, "dev-a", fixes(day(2), 0, 3, 55.7)).await;
    let days = c.store.archive.unpacked_days(day(2), 100).await.unwrap();
    assert_eq!(days, vec![dd("dev-a", day(0)), dd("dev-b", day(1))]);
    assert_eq!(
        c.store.archive.unpacked_days(day(2), 1).await.unwrap(),
        vec![dd("dev-a", day(0))]
    );
    c.store
        .archive
        .compact_day(&dd("dev-a", day(0)))
        .await
        .unwrap();
    assert_eq!(
        c.store.archive.unpacked_days(day(3), 100).await.unwrap(),
        vec![dd("dev-b", day(1)), dd("dev-a", day(2))]
    );
}

fn summary(vehicle: &str, d: Day, km: f64) -> DailySummary {
    DailySummary {
        vehicle: VehicleId(vehicle.into()),
        device: DeviceId::new("dev-a"),
        day: d,
        positions: 8640,
        distance_m: km * 1000.0,
        engine_s: 30_000,
        moving_s: 20_000,
        outside_s: 60,
        max_speed_kmh: 97.5,
        first_fix: at(d, 10),
        last_fix: at(d, 86_000),
        odometer_first_m: Some(1.5),
        odometer_last_m: None,
        computed_at: Utc.timestamp_millis_opt(1_796_000_000_000).unwrap(),
    }
}

async fn summaries_upsert_and_read_by_day_range(c: Ctx) {
    let a = c.store.archive.as_ref();
    a.put_summaries(&[
        summary("car-1", day(0), 100.0),
        summary("car-1", day(1), 50.0),
    ])
    .await
    .unwrap();
    a.put_summaries(&[
        summary("car-2", day(1), 7.0),
        summary("car-1", day(1), 55.0),
    ])
    .await
    .unwrap();
    let got = a
        .summaries(&VehicleId("car-1".into()), day(0), day(5))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            summary("car-1", day(0), 100.0),
            summary("car-1", day(1), 55.0)
        ]
    );
    let one = a
        .summaries(&VehicleId("car-1".into()), day(1), day(1))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(a
        .summaries(&VehicleId("car-3".into()), day(0), day(5))
        .await
        .unwrap()
        .is_empty());
}

async fn expire_rows_deletes_old_zone_events_in_batches(c: Ctx) {
    let dev = DeviceId::new("dev-a");
    let event = |s: i64| StoredZoneEvent {
        id: 0,
        vehicle: Some(VehicleId("car-1".into())),
        device_id: dev.clone(),
        kind: "enter".into(),
        zone: "depot".into(),
        zone_kind: "depot".into(),
        time: at(day(0), s),
        lat: 55.75,
        lon: 37.55,
    };
    c.store
        .zones
        .save_zone_changes(&[ZoneChange {
            membership: StoredMembership {
                device_id: dev.clone(),
                last_fix: at(day(0), 100),
                zones: vec!["depot".into()],
            },
            events: (0..5).map(|i| event(i * 10)).collect(),
        }])
        .await
        .unwrap();
    let a = c.store.archive.as_ref();
    assert_eq!(
        a.expire_rows(Expiring::ZoneEvents, at(day(0), 25), 2)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        a.expire_rows(Expiring::ZoneEvents, at(day(0), 25), 2)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        a.expire_rows(Expiring::ZoneEvents, at(day(0), 25), 2)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        a.expire_rows(Expiring::Audit, at(day(9), 0), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        a.expire_rows(Expiring::Commands, at(day(9), 0), 100)
            .await
            .unwrap(),
        0
    );
}

async fn a_day_expired_under_the_writer_still_takes_late_data(c: Ctx) {
    let d = day(0);
    write(&c, "dev-a", fixes(d, 0, 5, 55.7)).await;
    c.store.archive.expire_days(next(d)).await.unwrap();
    // A tracker's buffer from the expired day: acked and stored (the next retention pass
    // drops it again).
    write(&c, "dev-a", fixes(d, 100, 5, 55.7)).await;
    assert_eq!(track(&c, "dev-a", d, next(d)).await.len(), 5);
    // And a day far in the past that never had a partition.
    let old = Day(d.0 - 400);
    write(&c, "dev-a", fixes(old, 0, 3, 55.7)).await;
    assert_eq!(track(&c, "dev-a", old, next(old)).await.len(), 3);
}

/// The group commit writes one small chunk per packet: a fix time re-sent later (in the same
/// commit, in a later one, after a restart, after compaction) is stored again, and every read
/// and compaction keeps the first copy; compaction counts the copies it drops.
async fn a_fix_time_resent_in_later_packets_keeps_its_first_copy_across_restarts_and_compaction(
    c: Ctx,
) {
    let d = day(0);
    let lat_of = |t: &[StoredPosition], s: i64| t.iter().find(|p| p.time == at(d, s)).unwrap().lat;
    write(&c, "dev-a", fixes(d, 0, 10, 55.7)).await; // seconds 0..90
                                                     // One commit, two packets of the device: the second re-sends second 30 and 40.
    c.store
        .core
        .write_batch(&[
            item("dev-a", fixes(d, 100, 3, 55.8)),
            item("dev-a", vec![pos(at(d, 30), 1.0), pos(at(d, 200), 1.0)]),
        ])
        .await
        .unwrap();
    // A packet re-sending the same fix time twice keeps its first copy too.
    write(
        &c,
        "dev-a",
        vec![pos(at(d, 300), 2.0), pos(at(d, 300), 3.0)],
    )
    .await;
    let t = track(&c, "dev-a", d, next(d)).await;
    assert_eq!(t.len(), 15);
    assert!((lat_of(&t, 30) - (55.7 + 3.0 * 1e-4)).abs() < 1e-9, "{t:?}");
    assert_eq!(lat_of(&t, 200), 1.0);
    assert_eq!(lat_of(&t, 300), 2.0);
    // Before compaction `storage stats` counts each chunk's positions: a re-sent one twice.
    assert_eq!(tiers_of(&c, d).await, (16, 0));

    // Restarted: a device re-sends from its buffer what was stored before.
    drop(c.store);
    let store = storage::open(&c.cfg).await.unwrap();
    let c = Ctx { store, cfg: c.cfg };
    write(&c, "dev-a", vec![pos(at(d, 50), 4.0), pos(at(d, 110), 4.0)]).await;
    let again = track(&c, "dev-a", d, next(d)).await;
    assert_same(&again, &t);
    let points = points(&c, "dev-a", at(d, 0), at(d, 86_400), 1000).await;
    assert_eq!(points.len(), 15);
    assert!(points
        .iter()
        .all(|p| p.lat > 55.0 || p.time == at(d, 200) || p.time == at(d, 300)));

    assert_eq!(
        c.store.archive.unpacked_days(next(d), 10).await.unwrap(),
        vec![dd("dev-a", d)]
    );
    let got = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    assert_eq!(got.packed, 18, "every position of the commit chunks");
    assert_eq!(got.duplicates, 3, "seconds 30, 50 and 110 re-sent");
    assert_same(&got.positions, &t);
    assert_eq!(tiers_of(&c, d).await, (0, 15));
    assert!(c
        .store
        .archive
        .unpacked_days(next(d), 10)
        .await
        .unwrap()
        .is_empty());

    // After compaction the packed copy stays first.
    write(&c, "dev-a", vec![pos(at(d, 30), 5.0)]).await;
    assert_same(&track(&c, "dev-a", d, next(d)).await, &t);
    let last = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    assert_eq!((last.packed, last.duplicates), (1, 1));
    assert_same(&track(&c, "dev-a", d, next(d)).await, &t);
}

/// Rows that a version before the small chunks wrote into the hot table (still there after an
/// upgrade) were stored before any chunk of the group commit: they win over a later re-send,
/// and compaction drains them into the day's chunk.
async fn rows_of_an_older_version_come_before_the_group_commits_chunks(c: Ctx) {
    let d = day(1);
    insert_hot_rows(&c, d, "dev-a", fixes(d, 0, 10, 55.7)).await;
    write(
        &c,
        "dev-a",
        vec![pos(at(d, 20), 1.0), pos(at(d, 1_000), 1.0)],
    )
    .await;
    let t = track(&c, "dev-a", d, next(d)).await;
    assert_eq!(t.len(), 11);
    assert!(t[2].lat > 55.0, "the row, stored first, wins: {:?}", t[2]);
    let points = points(&c, "dev-a", at(d, 0), at(next(d), 0), 1000).await;
    assert_eq!(points, points_of(&t), "rows and chunks read as points");
    assert_eq!(
        c.store.archive.unpacked_days(next(d), 10).await.unwrap(),
        vec![dd("dev-a", d)]
    );
    let got = c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    assert_eq!((got.packed, got.duplicates), (12, 1));
    assert_same(&got.positions, &t);
    assert_same(&track(&c, "dev-a", d, next(d)).await, &t);
    assert_eq!(tiers_of(&c, d).await, (0, 11));
}

/// Rows straight into the hot `positions` table, as versions before the small chunks wrote
/// them (PostgreSQL: into the day's partition, made here as they made it).
async fn insert_hot_rows(c: &Ctx, d: Day, device: &str, positions: Vec<Position>) {
    if c.cfg.url.starts_with("sqlite:") {
        let path = c.cfg.url.trim_start_matches("sqlite://");
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        for (i, p) in positions.iter().enumerate() {
            let ms = p.fix_time.timestamp_millis();
            conn.execute(
                "INSERT INTO positions (device_id, fix_time, server_time, valid, lat, lon, \
                 speed_kmh, course, altitude, satellites, ignition, motion, odometer_m, \
                 gps_odometer_m, power_v, attributes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                rusqlite::params![
                    device,
                    ms,
                    ms + 1_000,
                    p.valid,
                    p.lat,
                    p.lon,
                    p.speed_kmh,
                    p.course,
                    p.altitude,
                    p.satellites,
                    p.ignition,
                    p.motion,
                    p.odometer_m,
                    i as f64 * 5.0,
                    p.power_v,
                    p.attrs.to_json_string()
                ],
            )
            .unwrap();
        }
    } else {
        let pool = sqlx::PgPool::connect(&c.cfg.url).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE positions_d{} PARTITION OF positions FOR VALUES FROM ({}) TO ({})",
            d.date().format("%Y%m%d"),
            d.start_ms(),
            d.end_ms()
        ))
        .execute(&pool)
        .await
        .unwrap();
        insert_rows(&pool, "positions", device, positions).await;
        pool.close().await;
    }
}

/// SQLite: a day table of chunks made before the group commit wrote chunks (primary key
/// `(device_id, first_ms)`, no `kind`) is rebuilt at open: its chunk reads the same and stays
/// first, and a re-send starting at the same fix time is stored beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_chunk_tables_of_the_previous_layout_are_upgraded_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fg.db");
    let cfg = StorageConfig {
        url: format!("sqlite://{}", file.display()),
        ..Default::default()
    };
    let d = day(0);
    let t = format!("position_chunks_d{}", d.date().format("%Y%m%d"));
    {
        let store = storage::open(&cfg).await.unwrap();
        let c = Ctx {
            store,
            cfg: cfg.clone(),
        };
        write(&c, "dev-a", fixes(d, 0, 20, 55.7)).await;
        c.store.archive.compact_day(&dd("dev-a", d)).await.unwrap();
    }
    // The same chunk in a table of the previous layout.
    {
        let conn = rusqlite::Connection::open(&file).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE old AS SELECT device_id, first_ms, last_ms, n, format, data FROM {t}; \
             DROP TABLE {t}; \
             CREATE TABLE {t} (device_id TEXT NOT NULL, first_ms INTEGER NOT NULL, \
             last_ms INTEGER NOT NULL, n INTEGER NOT NULL, format INTEGER NOT NULL, \
             data BLOB NOT NULL, PRIMARY KEY (device_id, first_ms)); \
             INSERT INTO {t} SELECT * FROM old; DROP TABLE old;"
        ))
        .unwrap();
    }
    let store = storage::open(&cfg).await.unwrap();
    let c = Ctx { store, cfg };
    let before = track(&c, "dev-a", d, next(d)).await;
    assert_eq!(before.len(), 20);
    write(&c, "dev-a", vec![pos(at(d, 0), 1.0), pos(at(d, 500), 1.0)]).await;
    let after = track(&c, "dev-a", d, next(d)).await;
    assert_eq!(after.len(), 21);
    assert_eq!(after[0], before[0], "the old chunk stays first");
    assert_eq!(tiers_of(&c, d).await, (2, 20));
}

/// PostgreSQL: a database from before migration 0010 keeps its rows in `positions_legacy`;
/// reads include them, and the migration packs them per device-day and drops the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_legacy_rows_are_read_then_migrated_into_chunks() {
    let schema = common::pg::PgSchema::create().await;
    let cfg = StorageConfig {
        url: schema.url.clone(),
        max_connections: 4,
        ..Default::default()
    };
    let store = storage::open(&cfg).await.unwrap();
    let c = Ctx { store, cfg };
    let (d0, d1) = (day(0), day(1));
    // The old layout: one unpartitioned table of rows.
    let pool = sqlx::PgPool::connect(&c.cfg.url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE positions_legacy (LIKE positions INCLUDING ALL)")
        .execute(&pool)
        .await
        .unwrap();
    insert_rows(&pool, "positions_legacy", "dev-a", fixes(d0, 0, 20, 55.7)).await;
    insert_rows(&pool, "positions_legacy", "dev-a", fixes(d1, 0, 20, 55.7)).await;
    insert_rows(&pool, "positions_legacy", "dev-b", fixes(d1, 0, 20, 55.7)).await;
    // A fix re-sent after the upgrade lands hot; the legacy copy (stored first) wins.
    write(&c, "dev-a", vec![pos(at(d1, 0), 10.0)]).await;
    let store = storage::open(&c.cfg).await.unwrap();
    let c = Ctx { store, cfg: c.cfg };
    let before = track(&c, "dev-a", d0, next(d1)).await;
    assert_eq!(before.len(), 40);
    assert!(before.iter().all(|p| p.lat > 55.0));
    assert!(c.store.layout.old_layout().await.unwrap());

    let mut seen = Vec::new();
    let done = storage::archive::migrate(
        c.store.archive.as_ref(),
        c.store.layout.as_ref(),
        &NothingOnPacked,
        |d, _| seen.push(d.clone()),
    )
    .await
    .unwrap();
    assert_eq!(done.device_days, 3);
    assert_eq!(seen[0], dd("dev-a", d0));
    assert!(!c.store.layout.old_layout().await.unwrap());
    let gone: Option<String> = sqlx::query_scalar("SELECT to_regclass('positions_legacy')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(gone, None);
    assert_same(&track(&c, "dev-a", d0, next(d1)).await, &before);
    assert_eq!(track(&c, "dev-b", d0, next(d1)).await.len(), 20);
    // Done is done.
    let again = storage::archive::migrate(
        c.store.archive.as_ref(),
        c.store.layout.as_ref(),
        &NothingOnPacked,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(again.device_days, 0);
    pool.close().await;
    drop(schema);
}

/// Rows as versions before the small chunks wrote them, into `table` of a PostgreSQL database.
async fn insert_rows(pool: &sqlx::PgPool, table: &str, device: &str, positions: Vec<Position>) {
    for (i, p) in positions.iter().enumerate() {
        let ms = p.fix_time.timestamp_millis();
        sqlx::query(&format!(
            "INSERT INTO {table} (device_id, fix_time, server_time, valid, lat, lon, speed_kmh, \
             course, altitude, satellites, ignition, motion, odometer_m, gps_odometer_m, inputs, \
             outputs, power_v, alarm, attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, NULL, NULL, $15, NULL, $16::jsonb)"
        ))
        .bind(device)
        .bind(ms)
        .bind(ms + 1_000)
        .bind(p.valid)
        .bind(p.lat)
        .bind(p.lon)
        .bind(p.speed_kmh)
        .bind(p.course)
        .bind(p.altitude)
        .bind(p.satellites.map(i32::from))
        .bind(p.ignition)
        .bind(p.motion)
        .bind(p.odometer_m)
        .bind(i as f64 * 5.0)
        .bind(p.power_v)
        .bind(p.attrs.to_json_string())
        .execute(pool)
        .await
        .unwrap();
    }
}

/// SQLite: a database made by main before the archive (tests/fixtures/README.md) is converted
/// by the same migration: its closed days packed, nothing lost, today's rows left hot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_made_before_the_archive_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.db");
    std::fs::copy("tests/fixtures/sqlite_main_d346fd1.db", &file).unwrap();
    // Read the fixture as it is, before any migration of ours touches it.
    let raw: Vec<(String, i64)> = {
        let conn = rusqlite::Connection::open(&file).unwrap();
        let mut q = conn
            .prepare("SELECT device_id, fix_time FROM positions ORDER BY device_id, fix_time")
            .unwrap();
        let rows = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows
    };
    assert_eq!(raw.len(), 720);
    let cfg = StorageConfig {
        url: format!("sqlite://{}", file.display()),
        ..Default::default()
    };
    let store = storage::open(&cfg).await.unwrap();
    assert!(store.layout.old_layout().await.unwrap());
    let devices: std::collections::BTreeSet<String> = raw.iter().map(|r| r.0.clone()).collect();
    let before = read_all(&store, &devices).await;
    assert_eq!(before, raw);
    let done = storage::archive::migrate(
        store.archive.as_ref(),
        store.layout.as_ref(),
        &NothingOnPacked,
        |_, _| {},
    )
    .await
    .unwrap();
    // Three closed days of three devices (the fixture's fourth day is "today" only when the
    // test runs on the day it was made: then it stays hot).
    assert!(done.device_days >= 9, "{done:?}");
    assert!(!store.layout.old_layout().await.unwrap());
    assert_eq!(read_all(&store, &devices).await, raw);
    let stats = store.archive.partition_stats().await.unwrap();
    let packed: u64 = stats
        .iter()
        .filter(|s| s.tier == Tier::Packed)
        .map(|s| s.positions)
        .sum();
    assert!(packed >= 540, "{stats:?}");
}

async fn read_all(
    store: &Stores,
    devices: &std::collections::BTreeSet<String>,
) -> Vec<(String, i64)> {
    let mut all = Vec::new();
    for d in devices {
        let t = store
            .core
            .track(
                &DeviceId::new(d.as_str()),
                Utc.timestamp_millis_opt(0).unwrap(),
                Utc.timestamp_millis_opt(4_000_000_000_000).unwrap(),
                100_000,
            )
            .await
            .unwrap();
        all.extend(
            t.into_iter()
                .map(|p| (d.clone(), p.time.timestamp_millis())),
        );
    }
    all
}

/// PostgreSQL: two instances sharing a database meet at a day's first commit; both create the
/// missing partition (turn by turn) and both commits land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_create_a_new_days_partition_together() {
    let schema = common::pg::PgSchema::create().await;
    let cfg = StorageConfig {
        url: schema.url.clone(),
        max_connections: 4,
        ..Default::default()
    };
    let a = storage::open(&cfg).await.unwrap();
    let b = storage::open(&cfg).await.unwrap();
    for n in 0..5 {
        let d = day(n * 3);
        let (ia, ib) = (
            [item("dev-a", fixes(d, 0, 10, 55.7))],
            [item("dev-b", fixes(d, 0, 10, 55.7))],
        );
        let (x, y) = tokio::join!(a.core.write_batch(&ia), b.core.write_batch(&ib));
        x.unwrap();
        y.unwrap();
        let c = Ctx {
            store: a.clone(),
            cfg: cfg.clone(),
        };
        assert_eq!(track(&c, "dev-a", d, next(d)).await.len(), 10);
        assert_eq!(track(&c, "dev-b", d, next(d)).await.len(), 10);
    }
    let parts = a.archive.partition_stats().await.unwrap();
    assert_eq!(parts.iter().filter(|p| p.tier == Tier::Hot).count(), 5);
    drop(schema);
}
