use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{Duration as Days, TimeZone};

use super::*;
use crate::archive::memory::MemoryArchive;
use crate::archive::summary::tests::fix;
use crate::pipeline::store::StoredPosition;

/// A vehicle for `dev-1` only, and the zone events given.
struct Zones(Vec<StoredZoneEvent>);

#[async_trait]
impl ZoneFacts for Zones {
    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError> {
        Ok((device.as_str() == "dev-1").then(|| VehicleId("car-1".into())))
    }

    async fn zone_events(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredZoneEvent>, StorageError> {
        Ok(self
            .0
            .iter()
            .filter(|e| e.vehicle.as_ref() == Some(vehicle) && e.time >= from && e.time < to)
            .cloned()
            .collect())
    }
}

/// 2026-12-07 00:00 UTC, the tests' "today".
fn midnight() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap()
}

fn today() -> Day {
    Day::of(midnight())
}

/// A fix of `device` at `t`.
fn at(t: DateTime<Utc>) -> StoredPosition {
    let mut p = fix(0, 55.75, 30.0, true);
    p.time = t;
    p.server_time = t;
    p
}

fn archive(store: Arc<MemoryArchive>, cfg: RetentionConfig) -> Archive {
    Archive {
        cfg,
        rules: SummaryRules::default(),
        store,
        zones: Arc::new(Zones(Vec::new())),
    }
}

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s)
}

fn car() -> VehicleId {
    VehicleId("car-1".into())
}

async fn pass(a: &Archive, now: DateTime<Utc>) -> PassReport {
    a.pass(now, &CancellationToken::new()).await
}

#[tokio::test]
async fn only_days_closed_for_the_grace_period_are_packed_and_summarised() {
    let store = Arc::new(MemoryArchive::default());
    let a = archive(store.clone(), RetentionConfig::default());
    let yesterday = midnight() - Days::hours(2);
    for i in 0..10 {
        assert!(store.insert(&dev("dev-1"), at(yesterday + Days::seconds(i * 10))));
        assert!(store.insert(&dev("dev-2"), at(yesterday + Days::seconds(i * 10))));
        store.insert(&dev("dev-1"), at(midnight() + Days::seconds(i * 10)));
    }
    // 30 minutes after midnight: yesterday is closed but within the hour of grace.
    let r = pass(&a, midnight() + Days::minutes(30)).await;
    assert!(r.compacted.is_empty(), "{r:?}");
    assert_eq!(
        store.partitions(),
        vec![
            Day(today().0 - 1),
            today(),
            Day(today().0 + 1),
            Day(today().0 + 2)
        ]
    );
    // Past the grace: both devices' yesterday packed, today left hot.
    let now = midnight() + Days::minutes(61);
    let r = pass(&a, now).await;
    let yd = Day(today().0 - 1);
    assert_eq!(
        r.compacted,
        vec![
            DeviceDay {
                device: dev("dev-1"),
                day: yd
            },
            DeviceDay {
                device: dev("dev-2"),
                day: yd
            }
        ]
    );
    let (hot, packed) = store.tiers();
    assert_eq!(
        hot,
        vec![DeviceDay {
            device: dev("dev-1"),
            day: today()
        }]
    );
    assert_eq!(packed.len(), 2);
    // dev-2 is fitted to no vehicle: one summary, car-1's.
    assert_eq!(r.summaries, 1);
    let s = store.summaries(&car(), yd, today()).await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].day, s[0].positions, s[0].moving_s), (yd, 10, 90));
    assert_eq!(s[0].computed_at, now);
    // Nothing left to do: the next pass packs nothing.
    assert!(pass(&a, now + Days::minutes(10)).await.compacted.is_empty());
}

#[tokio::test]
async fn a_day_packed_outside_the_actor_gets_its_summary_and_the_next_pass_has_nothing_to_do() {
    // `fleetgate storage compact` (or `migrate`) packs yesterday before the actor's pass.
    let store = Arc::new(MemoryArchive::default());
    let a = archive(store.clone(), RetentionConfig::default());
    let yesterday = midnight() - Days::hours(2);
    for i in 0..10 {
        store.insert(&dev("dev-1"), at(yesterday + Days::seconds(i * 10)));
    }
    let yd = Day(today().0 - 1);
    let dd = DeviceDay {
        device: dev("dev-1"),
        day: yd,
    };
    let c = store.compact_day(&dd).await.unwrap();
    assert!(store
        .summaries(&car(), yd, today())
        .await
        .unwrap()
        .is_empty());
    let now = midnight() + Days::minutes(5);
    a.packed(&dd, &c, now).await;
    let s = store.summaries(&car(), yd, today()).await.unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].positions, s[0].moving_s, s[0].computed_at),
        (10, 90, now)
    );
    // The actor finds nothing hot of that day: without the hook it would never summarise it.
    let r = pass(&a, midnight() + Days::hours(2)).await;
    assert!(r.compacted.is_empty(), "{r:?}");
    // A device fitted to no vehicle: packed, no summary, no error.
    let dd2 = DeviceDay {
        device: dev("dev-2"),
        day: yd,
    };
    store.insert(&dev("dev-2"), at(yesterday));
    let c2 = store.compact_day(&dd2).await.unwrap();
    a.packed(&dd2, &c2, now).await;
    assert_eq!(store.summaries(&car(), yd, today()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn late_data_for_a_packed_day_is_merged_and_its_summary_recomputed() {
    let store = Arc::new(MemoryArchive::default());
    let a = archive(store.clone(), RetentionConfig::default());
    let yd = Day(today().0 - 1);
    let evening = midnight() - Days::hours(3);
    for i in 0..6 {
        store.insert(&dev("dev-1"), at(evening + Days::seconds(i * 10)));
    }
    pass(&a, midnight() + Days::hours(2)).await;
    let first = store.summaries(&car(), yd, yd).await.unwrap();
    assert_eq!(first[0].positions, 6);
    // A buffered upload of the same evening arrives the next afternoon: a resent fix (a
    // duplicate of a packed one) and four new ones.
    assert!(!store.insert(&dev("dev-1"), at(evening)));
    for i in 6..10 {
        assert!(store.insert(&dev("dev-1"), at(evening + Days::seconds(i * 10))));
    }
    let later = midnight() + Days::hours(14);
    let r = pass(&a, later).await;
    assert_eq!(
        r.compacted,
        vec![DeviceDay {
            device: dev("dev-1"),
            day: yd
        }]
    );
    let again = store.summaries(&car(), yd, yd).await.unwrap();
    assert_eq!(again.len(), 1, "one summary per vehicle and day");
    assert_eq!(again[0].positions, 10);
    assert_eq!(again[0].moving_s, 90);
    assert_eq!(again[0].last_fix, evening + Days::seconds(90));
    assert_eq!(again[0].computed_at, later);
}

#[tokio::test]
async fn the_summary_counts_the_time_outside_from_the_vehicle_s_zone_events() {
    let store = Arc::new(MemoryArchive::default());
    let yd = midnight() - Days::days(1);
    let ev = |id, t: DateTime<Utc>, kind: &str| StoredZoneEvent {
        id,
        vehicle: Some(car()),
        device_id: dev("dev-1"),
        kind: kind.into(),
        zone: "moscow".into(),
        zone_kind: "service_area".into(),
        time: t,
        lat: 55.0,
        lon: 37.0,
    };
    let a = Archive {
        zones: Arc::new(Zones(vec![
            ev(1, yd - Days::hours(30), "enter"),
            ev(2, yd + Days::hours(9), "exit"),
            ev(3, yd + Days::hours(11), "enter"),
        ])),
        ..archive(store.clone(), RetentionConfig::default())
    };
    store.insert(&dev("dev-1"), at(yd + Days::hours(8)));
    pass(&a, midnight() + Days::hours(2)).await;
    let s = store
        .summaries(&car(), Day::of(yd), Day::of(yd))
        .await
        .unwrap();
    assert_eq!(s[0].outside_s, 2 * 3600);
}

#[tokio::test]
async fn positions_expire_by_whole_days_on_the_right_day() {
    let store = Arc::new(MemoryArchive::default());
    let cfg = RetentionConfig {
        positions_days: Some(2),
        ..RetentionConfig::default()
    };
    let a = archive(store.clone(), cfg);
    for back in 0..5 {
        store.insert(
            &dev("dev-1"),
            at(midnight() - Days::days(back) + Days::hours(12)),
        );
    }
    // Today and two full days before it stay; the two days before those go.
    let r = pass(&a, midnight() + Days::hours(12)).await;
    assert_eq!(r.expired_days, vec![Day(today().0 - 4), Day(today().0 - 3)]);
    assert_eq!(
        store.retained_from().await.unwrap(),
        Some(Day(today().0 - 2))
    );
    let t = |d: i64| midnight() + Days::days(d);
    assert_eq!(store.track(&dev("dev-1"), t(-10), t(10)).len(), 3);
    // 23:59 the same day: nothing more; one minute later the next day goes.
    let r = pass(&a, midnight() + Days::minutes(24 * 60 - 1)).await;
    assert!(r.expired_days.is_empty(), "{r:?}");
    let r = pass(&a, midnight() + Days::days(1)).await;
    assert_eq!(r.expired_days, vec![Day(today().0 - 2)]);
    // Summaries outlive their positions.
    let all = store
        .summaries(&car(), Day(0), Day(today().0 + 5))
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        4,
        "every closed day was summarised before it expired"
    );
}

#[tokio::test]
async fn keeping_positions_forever_expires_no_day() {
    let store = Arc::new(MemoryArchive::default());
    let a = archive(store.clone(), RetentionConfig::default());
    store.insert(&dev("dev-1"), at(midnight() - Days::days(3000)));
    store.insert_row(Expiring::Audit, midnight() - Days::days(3000));
    let r = pass(&a, midnight()).await;
    assert!(
        r.expired_days.is_empty() && r.expired_rows.is_empty(),
        "{r:?}"
    );
    assert_eq!(store.rows(Expiring::Audit).len(), 1);
    assert!(store.expire_calls().is_empty());
}

#[tokio::test]
async fn rows_expire_in_batches_and_audit_is_kept_as_long_as_positions() {
    let store = Arc::new(MemoryArchive::default());
    let cfg = RetentionConfig {
        positions_days: Some(30),
        events_days: Some(7),
        commands_days: Some(14),
        batch: 2,
        ..RetentionConfig::default()
    };
    let now = midnight() + Days::hours(5);
    for back in [1, 8, 9, 10, 11, 12, 15, 29, 31] {
        let t = now - Days::days(back);
        store.insert_row(Expiring::ZoneEvents, t);
        store.insert_row(Expiring::Commands, t);
        store.insert_row(Expiring::Audit, t);
    }
    let a = archive(store.clone(), cfg);
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), pass(&a, now))
        .await
        .unwrap();
    assert_eq!(
        r.expired_rows,
        vec![
            (Expiring::ZoneEvents, 8),
            (Expiring::Commands, 3),
            (Expiring::Audit, 1)
        ]
    );
    assert_eq!(store.rows(Expiring::ZoneEvents), vec![now - Days::days(1)]);
    assert_eq!(store.rows(Expiring::Commands).len(), 6);
    // Audit follows positions (30 days), not events or commands.
    assert_eq!(store.rows(Expiring::Audit).len(), 8);
    let calls = store.expire_calls();
    assert!(calls.iter().all(|(_, _, b)| *b == 2));
    // 8 event rows in batches of 2: four full deletes and a fifth that finds none.
    assert_eq!(
        calls.iter().filter(|c| c.0 == Expiring::ZoneEvents).count(),
        5
    );
    let audit_cut = calls.iter().find(|c| c.0 == Expiring::Audit).unwrap().1;
    assert_eq!(audit_cut, now - Days::days(30));

    // A longer audit_days keeps more.
    let cfg = RetentionConfig {
        positions_days: Some(30),
        audit_days: Some(60),
        ..RetentionConfig::default()
    };
    store.insert_row(Expiring::Audit, now - Days::days(59));
    archive(store.clone(), cfg)
        .pass(now, &CancellationToken::new())
        .await;
    assert_eq!(store.rows(Expiring::Audit).len(), 9);
}

#[tokio::test(start_paused = true)]
async fn the_actor_runs_a_pass_at_start_and_each_interval_on_its_clock_and_stops() {
    let store = Arc::new(MemoryArchive::default());
    let cfg = RetentionConfig {
        interval_s: 600,
        ..RetentionConfig::default()
    };
    let a = archive(store.clone(), cfg);
    let now = Arc::new(AtomicI64::new(midnight().timestamp_millis()));
    let read = now.clone();
    let clock: Clock = Arc::new(move || {
        Utc.timestamp_millis_opt(read.load(Ordering::SeqCst))
            .unwrap()
    });
    store.insert(&dev("dev-1"), at(midnight() - Days::hours(1)));
    let stop = CancellationToken::new();
    let task = spawn(Arc::new(a), clock, stop.clone());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    // The first pass made today's partitions; yesterday is within its grace.
    assert!(store.partitions().contains(&Day(today().0 + 2)));
    assert_eq!(store.tiers().1.len(), 0);
    // The calendar moves two hours on; the next tick packs yesterday.
    now.store(
        (midnight() + Days::hours(2)).timestamp_millis(),
        Ordering::SeqCst,
    );
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    assert_eq!(store.tiers().1.len(), 1);
    // A week later the partitions follow the calendar.
    now.store(
        (midnight() + Days::days(7)).timestamp_millis(),
        Ordering::SeqCst,
    );
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    assert!(store.partitions().contains(&Day(today().0 + 9)));
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(1), task)
        .await
        .expect("the actor stops when told")
        .unwrap();
}
