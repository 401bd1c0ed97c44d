//! One storage behaviour, two backends: every test below is written once against the ports
//! (`Stores`) and run against SQLite (a temp file) and PostgreSQL (a private schema, see `common::pg`).

mod common;

use std::future::Future;

use chrono::{DateTime, Duration, TimeZone, Utc};
use fleetgate::config::StorageConfig;
use fleetgate::geofence::store::{
    EventQuery, StoredMembership, StoredZone, StoredZoneEvent, ZoneChange, ZoneStore,
};
use fleetgate::immobiliser::machine::ReasonEntry;
use fleetgate::immobiliser::store::{
    AuditEntry, AuditPosition, AuditQuery, ImmobChanges, VehicleImmobRow,
};
use fleetgate::immobiliser::{BlockReason, Command, CommandStatus, ImmobState, Intent};
use fleetgate::model::{AttrKey, AttrValue, DeviceId, Position, VehicleId};
use fleetgate::protocols::Protocol;
use fleetgate::storage::{
    self, DeviceState, NewPosition, StorageError, Store, StoredPosition, Stores, VehicleUpdate,
    WriteItem,
};

/// What a test gets: the open store and the config that opened it (to reopen it).
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
    assert_eq!(store.core.backend(), "sqlite");
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
    assert_eq!(store.core.backend(), "postgres");
    test(Ctx { store, cfg }).await;
    drop(schema);
}

/// `both!(name, …)` → `sqlite::name` and `postgres::name` test cases.
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
    crm_outbox_drops_a_vehicles_pending_events_of_a_deal_it_left,
    crm_outbox_drops_one_superseded_event_and_only_while_pending,
    batch_round_trips_every_field,
    duplicates_are_stored_once,
    track_is_a_half_open_range_in_fix_order_with_a_limit,
    device_state_keeps_the_latest_and_survives_reopening,
    vehicles_upsert_partially_and_a_device_fits_one_vehicle,
    large_batch_is_one_commit,
    zones_memberships_and_events_round_trip,
    crm_outbox_heads_retries_and_dead_letters,
    immobiliser_states_commands_and_audit_round_trip,
    crm_states_are_read_together_in_the_order_asked,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap()
}

fn full_position(t: DateTime<Utc>) -> Position {
    let mut p = Position::new(t, true, 55.751244, 37.618423);
    p.speed_kmh = 42.5;
    p.course = 270.0;
    p.altitude = 142.0;
    p.satellites = Some(11);
    p.ignition = Some(true);
    p.motion = Some(false);
    p.odometer_m = Some(120_000.5);
    p.inputs = Some(0b101);
    p.outputs = Some(u32::MAX);
    p.power_v = Some(13.8);
    p.alarm = Some("sos");
    p.attrs.push(AttrKey::Io(239), AttrValue::Int(1));
    p.attrs.text("driver", "Иванов");
    p.attrs.float("rssi", -71.5);
    p
}

fn item(device: &str, positions: Vec<Position>, last_seen: DateTime<Utc>) -> WriteItem {
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
            .map(|(i, position)| NewPosition::new(position, i as f64 * 5.0))
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

/// The zone events stored (any vehicle, kind or time; in time order), at most `limit`.
async fn stored_events(store: &dyn ZoneStore, limit: u32) -> Vec<StoredZoneEvent> {
    store
        .zone_events(&EventQuery {
            limit,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn minute(n: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(n)
}

async fn track_all(store: &dyn Store, device: &str) -> Vec<StoredPosition> {
    store
        .track(
            &DeviceId::new(device),
            minute(-10_000),
            minute(10_000),
            100_000,
        )
        .await
        .unwrap()
}

async fn batch_round_trips_every_field(c: Ctx) {
    let full = full_position(minute(1));
    let bare = Position::new(minute(0), false, -33.9, 151.2);
    let server = minute(2);
    c.store
        .core
        .write_batch(&[
            item("dev-a", vec![full.clone(), bare.clone()], server),
            item("dev-b", vec![], server),
        ])
        .await
        .unwrap();
    let track = track_all(c.store.core.as_ref(), "dev-a").await;
    assert_eq!(track.len(), 2);
    // Fix order, not write order.
    let mut expect_bare = StoredPosition::from_position(&bare, server, 5.0);
    expect_bare.attributes = serde_json::json!({}).into();
    assert_eq!(track[0], expect_bare);
    let expect_full = StoredPosition::from_position(&full, server, 0.0);
    assert_eq!(track[1], expect_full);
    assert_eq!(track[1].attributes.to_value()["driver"], "Иванов");
    assert_eq!(track[1].outputs, Some(u32::MAX));
    assert!(track_all(c.store.core.as_ref(), "dev-b").await.is_empty());
    let b = c
        .store
        .core
        .device_state(&DeviceId::new("dev-b"))
        .await
        .unwrap();
    assert_eq!(b.expect("state without a fix").position, None);
}

async fn duplicates_are_stored_once(c: Ctx) {
    let ps: Vec<_> = (0..5).map(|i| full_position(minute(i))).collect();
    let batch = [item("dup", ps.clone(), minute(10))];
    c.store.core.write_batch(&batch).await.unwrap();
    // A re-sent batch, and a duplicate inside one batch, insert nothing twice.
    c.store.core.write_batch(&batch).await.unwrap();
    let mut again = ps[3..].to_vec();
    again.push(full_position(minute(3)));
    again.push(full_position(minute(7)));
    c.store
        .core
        .write_batch(&[
            item("dup", again.clone(), minute(11)),
            item("dup", again, minute(11)),
        ])
        .await
        .unwrap();
    let track = track_all(c.store.core.as_ref(), "dup").await;
    let minutes: Vec<_> = track
        .iter()
        .map(|p| (p.time - t0()).num_minutes())
        .collect();
    assert_eq!(minutes, [0, 1, 2, 3, 4, 7]);
    // The first write of a fix wins: its server time is kept.
    assert_eq!(track[0].server_time, minute(10));
}

async fn track_is_a_half_open_range_in_fix_order_with_a_limit(c: Ctx) {
    let ps: Vec<_> = (0..20)
        .rev()
        .map(|i| Position::new(minute(i), true, 55.0 + i as f64 * 0.001, 37.0))
        .collect();
    c.store
        .core
        .write_batch(&[
            item("range", ps, minute(30)),
            item(
                "other",
                vec![Position::new(minute(5), true, 1.0, 1.0)],
                minute(30),
            ),
        ])
        .await
        .unwrap();
    let dev = DeviceId::new("range");
    let got = c
        .store
        .core
        .track(&dev, minute(5), minute(10), 100)
        .await
        .unwrap();
    let minutes: Vec<_> = got.iter().map(|p| (p.time - t0()).num_minutes()).collect();
    assert_eq!(
        minutes,
        [5, 6, 7, 8, 9],
        "from inclusive, to exclusive, one device only"
    );
    let got = c
        .store
        .core
        .track(&dev, minute(0), minute(20), 3)
        .await
        .unwrap();
    let minutes: Vec<_> = got.iter().map(|p| (p.time - t0()).num_minutes()).collect();
    assert_eq!(minutes, [0, 1, 2], "limit keeps the earliest");
    assert!(c
        .store
        .core
        .track(&DeviceId::new("nobody"), minute(0), minute(20), 3)
        .await
        .unwrap()
        .is_empty());
}

async fn device_state_keeps_the_latest_and_survives_reopening(c: Ctx) {
    c.store
        .core
        .write_batch(&[item("st", vec![full_position(minute(5))], minute(6))])
        .await
        .unwrap();
    // An older state arriving late (another batch that waited) does not overwrite a newer one.
    c.store
        .core
        .write_batch(&[item("st", vec![full_position(minute(1))], minute(2))])
        .await
        .unwrap();
    let s = c
        .store
        .core
        .device_state(&DeviceId::new("st"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.last_seen, minute(6));
    let p = s.position.as_ref().unwrap();
    assert_eq!(p.time, minute(5));
    assert_eq!(p.satellites, Some(11));
    assert_eq!(p.power_v, Some(13.8));
    assert_eq!(p.attributes.to_value()["io239"], 1);
    // Several items for one device in one batch: the latest wins.
    c.store
        .core
        .write_batch(&[
            item("st", vec![full_position(minute(9))], minute(9)),
            item("st", vec![full_position(minute(8))], minute(8)),
            item("st2", vec![], minute(1)),
        ])
        .await
        .unwrap();
    let s = c
        .store
        .core
        .device_state(&DeviceId::new("st"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.position.unwrap().time, minute(9));
    assert_eq!(
        c.store
            .core
            .device_state(&DeviceId::new("none"))
            .await
            .unwrap(),
        None
    );

    // Reopening runs the migrations again (a no-op) and sees the same data.
    drop(c.store);
    let store = storage::open(&c.cfg).await.expect("reopen");
    let mut all = store.core.device_states().await.unwrap();
    all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let ids: Vec<_> = all.iter().map(|s| s.device_id.as_str()).collect();
    assert_eq!(ids, ["st", "st2"]);
    assert_eq!(all[0].gps_odometer_m, 10.0);
    assert_eq!(track_all(store.core.as_ref(), "st").await.len(), 4);
    store.core.ping().await.unwrap();
}

async fn vehicles_upsert_partially_and_a_device_fits_one_vehicle(c: Ctx) {
    let car = VehicleId("car-1".into());
    let v = c
        .store
        .core
        .upsert_vehicle(
            &car,
            &VehicleUpdate {
                device_id: Some("imei-1".into()),
                plate: Some("A123BC77".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v.status, "available");
    assert_eq!(v.plate.as_deref(), Some("A123BC77"));
    let v2 = c
        .store
        .core
        .upsert_vehicle(
            &car,
            &VehicleUpdate {
                status: Some("issued".into()),
                driver_id: Some("drv-9".into()),
                crm_deal_id: Some("9100".into()),
                crm_company_id: Some("501".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v2.status, "issued");
    assert_eq!(
        (v2.crm_deal_id.as_deref(), v2.crm_company_id.as_deref()),
        (Some("9100"), Some("501"))
    );
    assert_eq!(
        v2.plate.as_deref(),
        Some("A123BC77"),
        "absent fields keep their value"
    );
    assert_eq!(v2.device_id, Some(DeviceId::new("imei-1")));
    assert_eq!(v2.created_at, v.created_at);
    assert!(v2.updated_at >= v.updated_at);

    let taken = c
        .store
        .core
        .upsert_vehicle(
            &VehicleId("car-2".into()),
            &VehicleUpdate {
                device_id: Some("imei-1".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(&taken, Err(StorageError::DeviceTaken(d, owner)) if d == "imei-1" && owner == "car-1"),
        "{taken:?}"
    );
    c.store
        .core
        .upsert_vehicle(&VehicleId("car-0".into()), &VehicleUpdate::default())
        .await
        .unwrap();
    let ids: Vec<_> = c
        .store
        .core
        .vehicles()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id.0)
        .collect();
    assert_eq!(ids, ["car-0", "car-1"]);
    let by_dev = c
        .store
        .core
        .vehicle_by_device(&DeviceId::new("imei-1"))
        .await
        .unwrap();
    assert_eq!(by_dev.map(|v| v.id), Some(car.clone()));
    assert_eq!(c.store.core.vehicle(&car).await.unwrap(), Some(v2));
    assert_eq!(
        c.store
            .core
            .vehicle(&VehicleId("car-x".into()))
            .await
            .unwrap(),
        None
    );
}

async fn large_batch_is_one_commit(c: Ctx) {
    // More rows than SQLite's per-statement chunk, for many devices, in one call.
    let items: Vec<_> = (0..50)
        .map(|d| {
            let ps = (0..60)
                .map(|i| Position::new(minute(i), true, 55.0, 37.0))
                .collect();
            item(&format!("bulk-{d:02}"), ps, minute(60))
        })
        .collect();
    c.store.core.write_batch(&items).await.unwrap();
    assert_eq!(c.store.core.device_states().await.unwrap().len(), 50);
    for d in [0, 17, 49] {
        assert_eq!(
            track_all(c.store.core.as_ref(), &format!("bulk-{d:02}"))
                .await
                .len(),
            60
        );
    }
}

async fn zones_memberships_and_events_round_trip(c: Ctx) {
    let feature = serde_json::json!({"type": "Feature", "properties": {"name": "depot"},
        "geometry": {"type": "Polygon", "coordinates": [[[37.5, 55.7], [37.6, 55.7], [37.6, 55.8], [37.5, 55.7]]]}});
    let depot = StoredZone {
        name: "depot".into(),
        kind: "depot".into(),
        feature: feature.clone(),
    };
    c.store.zones.put_zone(&depot).await.unwrap();
    let mut moved = depot.clone();
    moved.kind = "service_area".into();
    c.store.zones.put_zone(&moved).await.unwrap();
    c.store
        .zones
        .put_zone(&StoredZone {
            name: "airport".into(),
            kind: "forbidden".into(),
            feature: serde_json::json!({"type": "Feature"}),
        })
        .await
        .unwrap();
    let zones = c.store.zones.zones().await.unwrap();
    assert_eq!(zones.len(), 2);
    assert_eq!(zones[0].name, "airport", "ordered by name");
    assert_eq!(zones[1], moved, "replaced, GeoJSON intact");
    assert!(c.store.zones.delete_zone("airport").await.unwrap());
    assert!(!c.store.zones.delete_zone("airport").await.unwrap());

    let dev = DeviceId::new("z-1");
    let event = |i: i64, kind: &str, vehicle: Option<&str>| StoredZoneEvent {
        id: 0,
        vehicle: vehicle.map(|v| VehicleId(v.into())),
        device_id: dev.clone(),
        kind: kind.into(),
        zone: "depot".into(),
        zone_kind: "service_area".into(),
        time: minute(i),
        lat: 55.75,
        lon: 37.55,
    };
    let m = |i: i64, zones: &[&str]| StoredMembership {
        device_id: dev.clone(),
        last_fix: minute(i),
        zones: zones.iter().map(|z| z.to_string()).collect(),
    };
    c.store
        .zones
        .save_zone_change(&m(1, &["depot"]), &[event(1, "enter", Some("car-z"))])
        .await
        .unwrap();
    c.store
        .zones
        .save_zone_change(
            &m(5, &[]),
            &[event(5, "exit", Some("car-z")), event(4, "exit", None)],
        )
        .await
        .unwrap();
    c.store
        .zones
        .save_zone_change(&m(6, &[]), &[])
        .await
        .unwrap();
    assert_eq!(c.store.zones.memberships().await.unwrap(), vec![m(6, &[])]);

    let all = stored_events(c.store.zones.as_ref(), 100).await;
    let kinds: Vec<_> = all
        .iter()
        .map(|e| (e.kind.as_str(), (e.time - t0()).num_minutes()))
        .collect();
    assert_eq!(
        kinds,
        [("enter", 1), ("exit", 4), ("exit", 5)],
        "time order"
    );
    assert!(all[0].id < all[2].id, "ids grow with inserts");
    assert_eq!(all[0].vehicle, Some(VehicleId("car-z".into())));
    assert_eq!(all[1].vehicle, None);
    let exits = c
        .store
        .zones
        .zone_events(&EventQuery {
            vehicle: Some(VehicleId("car-z".into())),
            kind: Some("exit".into()),
            from: Some(minute(2)),
            to: Some(minute(6)),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].time, minute(5));
    assert_eq!((exits[0].lat, exits[0].lon), (55.75, 37.55));
    let first = stored_events(c.store.zones.as_ref(), 1).await;
    assert_eq!(first.len(), 1);

    // Several devices' changes in one call are one transaction: all of them land.
    let other = |d: &str, i: i64, zones: &[&str]| StoredMembership {
        device_id: DeviceId::new(d),
        last_fix: minute(i),
        zones: zones.iter().map(|z| z.to_string()).collect(),
    };
    let mut enter = event(7, "enter", None);
    enter.device_id = DeviceId::new("z-2");
    c.store
        .zones
        .save_zone_changes(&[
            ZoneChange {
                membership: other("z-2", 7, &["depot"]),
                events: vec![enter],
            },
            ZoneChange {
                membership: other("z-3", 8, &[]),
                events: Vec::new(),
            },
            ZoneChange {
                membership: m(9, &["depot"]),
                events: Vec::new(),
            },
        ])
        .await
        .unwrap();
    let mut ms = c.store.zones.memberships().await.unwrap();
    ms.sort_by(|a, b| a.device_id.as_str().cmp(b.device_id.as_str()));
    assert_eq!(
        ms,
        vec![
            m(9, &["depot"]),
            other("z-2", 7, &["depot"]),
            other("z-3", 8, &[])
        ]
    );
    let all = stored_events(c.store.zones.as_ref(), 100).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].device_id, DeviceId::new("z-2"));
}

/// The rules re-read a vehicle's rows in one call: each key answered in its place, a missing
/// row as `None`, a key asked twice answered twice.
async fn crm_states_are_read_together_in_the_order_asked(c: Ctx) {
    use fleetgate::crm::store::StateWrite;
    let write = |scope: &'static str, id: &str, state: &str| StateWrite {
        scope,
        id: id.into(),
        state: state.into(),
    };
    c.store
        .crm
        .crm_commit(
            &[
                write("shift", "car-a", r#"{"s":1}"#),
                write("mileage", "car-a", r#"{"m":2}"#),
                write("shift", "car-b", r#"{"s":3}"#),
                write("balance", "drv-1", r#"{"b":4}"#),
            ],
            &[],
            Utc::now(),
            Duration::hours(1),
        )
        .await
        .unwrap();
    let keys = [
        ("shift", "car-a"),
        ("inspection", "car-a"),
        ("mileage", "car-a"),
        ("balance", "drv-1"),
        ("shift", "car-a"),
        ("balance", "car-a"),
    ];
    let got = c.store.crm.crm_state_many(&keys).await.unwrap();
    let text = |s: &str| Some(s.to_string());
    assert_eq!(
        got,
        [
            text(r#"{"s":1}"#),
            None,
            text(r#"{"m":2}"#),
            text(r#"{"b":4}"#),
            text(r#"{"s":1}"#),
            None
        ]
    );
    assert!(c.store.crm.crm_state_many(&[]).await.unwrap().is_empty());
    // One row on its own reads the same.
    assert_eq!(
        c.store.crm.crm_state("shift", "car-b").await.unwrap(),
        text(r#"{"s":3}"#)
    );
}

async fn crm_outbox_heads_retries_and_dead_letters(c: Ctx) {
    use fleetgate::crm::event::{NewEvent, Payload, Status};
    use fleetgate::crm::store::StateWrite;
    let now = Utc::now();
    let ev = |car: &str, odometer_km: f64| NewEvent {
        vehicle_id: VehicleId(car.into()),
        deal_id: Some("42".into()),
        payload: Payload::Mileage {
            odometer_km,
            at: now,
        },
    };
    let state = StateWrite {
        scope: "shift",
        id: "car-a".into(),
        state: r#"{"on_line":true}"#.into(),
    };
    c.store
        .crm
        .crm_commit(
            &[state],
            &[ev("car-a", 1.0), ev("car-a", 2.0), ev("car-b", 3.0)],
            now,
            Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(
        c.store.crm.crm_states("shift").await.unwrap(),
        [("car-a".to_string(), r#"{"on_line":true}"#.to_string())]
    );
    // Only the oldest pending event of each vehicle is due.
    let due = c.store.crm.outbox_due(now, 10).await.unwrap();
    let km = |e: &fleetgate::crm::event::OutboxEvent| match e.payload {
        Payload::Mileage { odometer_km, .. } => odometer_km,
        _ => -1.0,
    };
    assert_eq!(due.iter().map(km).collect::<Vec<_>>(), [1.0, 3.0]);
    assert_ne!(due[0].key, due[1].key);
    // car-a's head backs off: its second event must wait behind it.
    c.store
        .crm
        .outbox_retry(due[0].id, 1, now + Duration::seconds(30), "HTTP 500")
        .await
        .unwrap();
    c.store.crm.outbox_delivered(due[1].id, now).await.unwrap();
    assert!(c.store.crm.outbox_due(now, 10).await.unwrap().is_empty());
    assert_eq!(
        c.store.crm.outbox_next_due().await.unwrap(),
        Some(storage_ms(now + Duration::seconds(30)))
    );
    c.store
        .crm
        .outbox_dead(due[0].id, 2, "TTL expired")
        .await
        .unwrap();
    let next = c.store.crm.outbox_due(now, 10).await.unwrap();
    assert_eq!(next.iter().map(km).collect::<Vec<_>>(), [2.0]);
    let dead = c
        .store
        .crm
        .outbox_list(Some(Status::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!((dead.len(), dead[0].attempts), (1, 2));
    assert_eq!(dead[0].last_error.as_deref(), Some("TTL expired"));
    let mut counts = c.store.crm.outbox_counts().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        [
            (Status::Dead, 1),
            (Status::Delivered, 1),
            (Status::Pending, 1)
        ]
    );
    assert!(c.store.crm.outbox_requeue(dead[0].id, now).await.unwrap());
    assert!(!c.store.crm.outbox_requeue(dead[0].id, now).await.unwrap());
    let due = c.store.crm.outbox_due(now, 10).await.unwrap();
    assert_eq!(
        due.iter().map(km).collect::<Vec<_>>(),
        [1.0],
        "requeued head goes first"
    );
    assert_eq!(
        c.store
            .crm
            .outbox_purge(now + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
}

async fn crm_outbox_drops_one_superseded_event_and_only_while_pending(c: Ctx) {
    use fleetgate::crm::event::{NewEvent, Payload, Status};
    let now = Utc::now();
    let ev = |km: f64| NewEvent {
        vehicle_id: VehicleId("car-s".into()),
        deal_id: Some("9".into()),
        payload: Payload::Mileage {
            odometer_km: km,
            at: now,
        },
    };
    c.store
        .crm
        .crm_commit(&[], &[ev(1.0), ev(2.0)], now, Duration::hours(1))
        .await
        .unwrap();
    let head = c.store.crm.outbox_due(now, 10).await.unwrap();
    assert_eq!(head.len(), 1);
    c.store
        .crm
        .outbox_drop_one(head[0].id, "superseded: moved by a manager")
        .await
        .unwrap();
    let dropped = c
        .store
        .crm
        .outbox_list(Some(Status::Dropped), None, 10)
        .await
        .unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        dropped[0].last_error.as_deref(),
        Some("superseded: moved by a manager")
    );
    // The next event is the head now; a delivered one is never dropped.
    let next = c.store.crm.outbox_due(now, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].id, head[0].id);
    c.store.crm.outbox_delivered(next[0].id, now).await.unwrap();
    c.store
        .crm
        .outbox_drop_one(next[0].id, "late")
        .await
        .unwrap();
    let delivered = c
        .store
        .crm
        .outbox_list(Some(Status::Delivered), None, 10)
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
}

async fn crm_outbox_drops_a_vehicles_pending_events_of_a_deal_it_left(c: Ctx) {
    use fleetgate::crm::event::{NewEvent, Payload, Status};
    let now = Utc::now();
    let ev = |car: &str, deal: Option<&str>| NewEvent {
        vehicle_id: VehicleId(car.into()),
        deal_id: deal.map(str::to_string),
        payload: Payload::Mileage {
            odometer_km: 1.0,
            at: now,
        },
    };
    c.store
        .crm
        .crm_commit(
            &[],
            &[
                ev("car-a", Some("7")),
                ev("car-a", Some("8")),
                ev("car-a", None),
                ev("car-b", Some("7")),
            ],
            now,
            Duration::hours(1),
        )
        .await
        .unwrap();
    let car_a = VehicleId("car-a".into());
    // A new deal 8: only deal 7's event goes; the deal-less one and car-b's stay.
    let n = c
        .store
        .crm
        .outbox_drop(&car_a, Some("8"), "left deal 7")
        .await
        .unwrap();
    assert_eq!(n, 1);
    let dropped = c
        .store
        .crm
        .outbox_list(Some(Status::Dropped), None, 10)
        .await
        .unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        (
            dropped[0].deal_id.as_deref(),
            dropped[0].last_error.as_deref()
        ),
        (Some("7"), Some("left deal 7"))
    );
    // Handed back: every deal's pending event goes, the deal-less one stays.
    assert_eq!(
        c.store
            .crm
            .outbox_drop(&car_a, None, "handed back")
            .await
            .unwrap(),
        1
    );
    let pending = c
        .store
        .crm
        .outbox_list(Some(Status::Pending), None, 10)
        .await
        .unwrap();
    let left: Vec<_> = pending
        .iter()
        .map(|e| (e.vehicle_id.0.as_str(), e.deal_id.as_deref()))
        .collect();
    assert_eq!(left, [("car-b", Some("7")), ("car-a", None)]);
    let due = c.store.crm.outbox_due(now, 10).await.unwrap();
    assert_eq!(due.len(), 2, "a dropped head no longer holds the queue");
    assert_eq!(
        c.store
            .crm
            .outbox_purge(now + Duration::seconds(1))
            .await
            .unwrap(),
        2,
        "dropped events are purged like delivered ones"
    );
}

/// PostgreSQL only (instances share it): a claimed head is skipped by other claimers until
/// delivered, retried or its lease runs out; a vehicle's next event waits behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_claims_split_events_between_instances_and_leases_expire() {
    on_postgres(|c: Ctx| async move {
        use fleetgate::crm::event::{NewEvent, Payload};
        let now = Utc::now();
        let ev = |car: &str, odometer_km: f64| NewEvent {
            vehicle_id: VehicleId(car.into()),
            deal_id: None,
            payload: Payload::Mileage {
                odometer_km,
                at: now,
            },
        };
        let evs = [ev("car-a", 1.0), ev("car-a", 2.0), ev("car-b", 3.0)];
        c.store
            .crm
            .crm_commit(&[], &evs, now, Duration::hours(1))
            .await
            .unwrap();
        let lease = Duration::seconds(60);
        let km = |es: &[fleetgate::crm::event::OutboxEvent]| {
            es.iter()
                .map(|e| match e.payload {
                    Payload::Mileage { odometer_km, .. } => odometer_km,
                    _ => -1.0,
                })
                .collect::<Vec<_>>()
        };
        let a = c
            .store
            .crm
            .outbox_claim(now, 1, "fg-a", lease)
            .await
            .unwrap();
        assert_eq!(km(&a), [1.0], "one head, the oldest");
        let b = c
            .store
            .crm
            .outbox_claim(now, 10, "fg-b", lease)
            .await
            .unwrap();
        assert_eq!(km(&b), [3.0], "car-a's head is fg-a's; its 2nd event waits");
        assert!(c
            .store
            .crm
            .outbox_claim(now, 10, "fg-b", lease)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            c.store.crm.outbox_next_due().await.unwrap(),
            Some(storage_ms(now + lease)),
            "claimed heads are due again when their lease ends"
        );
        // fg-a dies: past the lease fg-b takes car-a's head over.
        let later = now + lease + Duration::seconds(1);
        let b2 = c
            .store
            .crm
            .outbox_claim(later, 10, "fg-b", lease)
            .await
            .unwrap();
        assert_eq!(km(&b2), [1.0, 3.0]);
        c.store.crm.outbox_delivered(b2[0].id, later).await.unwrap();
        c.store
            .crm
            .outbox_retry(b2[1].id, 1, later, "HTTP 500")
            .await
            .unwrap();
        // Delivered: car-a's next event is the head; a retried event is free to claim at once.
        let a2 = c
            .store
            .crm
            .outbox_claim(later, 10, "fg-a", lease)
            .await
            .unwrap();
        assert_eq!(km(&a2), [2.0, 3.0]);
    })
    .await;
}

/// A time as storage keeps it (Unix milliseconds).
fn storage_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

fn immob_command(id: i64, vehicle: &str, status: CommandStatus, expires: DateTime<Utc>) -> Command {
    Command {
        id,
        vehicle_id: VehicleId(vehicle.into()),
        device_id: None,
        intent: Intent::Unblock,
        text: None,
        output: 1,
        status,
        forced: false,
        reasons: String::new(),
        actor: "system".into(),
        attempts: 0,
        created_at: minute(id),
        next_attempt_at: minute(id),
        sent_at: None,
        acknowledged_at: None,
        confirmed_at: None,
        finished_at: None,
        expires_at: expires,
        response: None,
        error: None,
    }
}

fn audit_entry(id: i64, time: DateTime<Utc>, vehicle: &str, event: &str) -> AuditEntry {
    AuditEntry {
        id,
        time,
        vehicle_id: VehicleId(vehicle.into()),
        event: event.into(),
        reason: None,
        actor: "system".into(),
        comment: None,
        state_from: None,
        state_to: None,
        command_id: None,
        forced: false,
        position: None,
    }
}

async fn immobiliser_states_commands_and_audit_round_trip(c: Ctx) {
    let empty = c.store.immobiliser.immobiliser_load().await.unwrap();
    assert!(empty.vehicles.is_empty() && empty.open_commands.is_empty());
    // Command ids are reserved from the database: never handed out twice.
    let first_ids = c.store.immobiliser.reserve_command_ids(4).await.unwrap();
    let more_ids = c.store.immobiliser.reserve_command_ids(3).await.unwrap();
    assert_eq!((first_ids.len(), more_ids.len()), (4, 3));
    let mut reserved: Vec<i64> = first_ids.iter().chain(&more_ids).copied().collect();
    reserved.sort();
    reserved.dedup();
    assert_eq!(
        reserved.len(),
        7,
        "distinct ids: {first_ids:?} {more_ids:?}"
    );

    // Whole seconds: stored times are milliseconds.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let (far, past) = (now + Duration::days(1), now - Duration::days(1));
    let mut reasons = std::collections::BTreeMap::new();
    reasons.insert(
        BlockReason::manual(),
        ReasonEntry {
            since: minute(1),
            actor: "ops-ivanova".into(),
            comment: Some("долг по аренде".into()),
        },
    );
    reasons.insert(
        BlockReason::outside_service_area(),
        ReasonEntry {
            since: minute(2) + Duration::milliseconds(7),
            actor: "zones".into(),
            comment: None,
        },
    );
    let v1 = VehicleImmobRow {
        vehicle_id: VehicleId("v-1".into()),
        state: ImmobState::Blocking,
        since: minute(2) + Duration::milliseconds(7),
        reasons,
    };
    let v2 = VehicleImmobRow {
        vehicle_id: VehicleId("v-0".into()),
        state: ImmobState::Running,
        since: minute(0),
        reasons: Default::default(),
    };
    let mut block = immob_command(1, "v-1", CommandStatus::Queued, far);
    block.device_id = Some(DeviceId::new("352093081234567"));
    block.intent = Intent::Block;
    block.text = Some("setdigout 1".into());
    block.output = 3;
    block.forced = true;
    block.reasons = "manual,outside_service_area".into();
    block.actor = "ops-ivanova".into();
    let confirmed = immob_command(2, "v-1", CommandStatus::Confirmed, far);
    let mut acked = immob_command(3, "v-1", CommandStatus::Acknowledged, far);
    acked.acknowledged_at = Some(minute(4));
    let acked_expired = immob_command(4, "v-0", CommandStatus::Acknowledged, past);
    let mut with_fix = audit_entry(10, minute(2), "v-1", "reason_added");
    with_fix.reason = Some("outside_service_area".into());
    with_fix.comment = Some("left zone moscow".into());
    with_fix.state_from = Some("running".into());
    with_fix.state_to = Some("block_pending".into());
    with_fix.command_id = Some(1);
    with_fix.forced = true;
    with_fix.position = Some(AuditPosition {
        time: minute(2) - Duration::milliseconds(1500),
        lat: 55.751244,
        lon: 37.618423,
        speed_kmh: 3.5,
        ignition: Some(true),
    });
    let mut no_ignition = audit_entry(11, minute(2), "v-1", "state_changed");
    no_ignition.position = Some(AuditPosition {
        time: minute(2),
        lat: -33.5,
        lon: -70.25,
        speed_kmh: 0.0,
        ignition: None,
    });
    let first = ImmobChanges {
        vehicles: vec![v1.clone(), v2.clone()],
        commands: vec![
            block.clone(),
            confirmed.clone(),
            acked.clone(),
            acked_expired,
        ],
        audit: vec![
            with_fix.clone(),
            no_ignition.clone(),
            audit_entry(9, minute(3), "v-0", "command_confirmed"),
            audit_entry(8, minute(1), "v-1", "reason_added"),
        ],
    };
    c.store.immobiliser.immobiliser_apply(&first).await.unwrap();
    c.store
        .immobiliser
        .immobiliser_apply(&ImmobChanges::default())
        .await
        .unwrap();

    let snap = c.store.immobiliser.immobiliser_load().await.unwrap();
    assert_eq!(
        snap.vehicles,
        vec![v2.clone(), v1.clone()],
        "ordered by vehicle id"
    );
    assert_eq!(
        snap.open_commands,
        vec![block.clone(), acked.clone()],
        "queued/sent and unexpired acknowledged, by id"
    );

    // A later decision: the block is sent, one reason lifted, more audit records.
    let mut sent = block.clone();
    sent.status = CommandStatus::Sent;
    sent.attempts = 1;
    sent.sent_at = Some(minute(5));
    sent.next_attempt_at = minute(6);
    sent.response = Some("DOUT1:1".into());
    sent.error = Some("timeout once".into());
    sent.actor = "someone else".into(); // not updatable: the stored actor stays
    let mut lifted = v1.clone();
    lifted.reasons.remove(&BlockReason::manual());
    lifted.state = ImmobState::Blocked;
    let mut later = audit_entry(10, minute(9), "v-1", "reason_lifted");
    later.actor = "ops-petrov".into();
    c.store
        .immobiliser
        .immobiliser_apply(&ImmobChanges {
            vehicles: vec![lifted.clone()],
            commands: vec![sent.clone()],
            audit: vec![later, audit_entry(12, minute(5), "v-1", "command_sent")],
        })
        .await
        .unwrap();

    let mut expect_sent = sent.clone();
    expect_sent.actor = block.actor.clone();
    assert_eq!(
        c.store.immobiliser.command(1).await.unwrap(),
        Some(expect_sent.clone())
    );
    assert_eq!(
        c.store.immobiliser.command(2).await.unwrap(),
        Some(confirmed.clone())
    );
    assert_eq!(c.store.immobiliser.command(99).await.unwrap(), None);
    let v1_cmds = c
        .store
        .immobiliser
        .commands(&VehicleId("v-1".into()), 10)
        .await
        .unwrap();
    assert_eq!(v1_cmds, vec![acked.clone(), confirmed, expect_sent.clone()]);
    let ids = |cs: Vec<Command>| cs.iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(c
            .store
            .immobiliser
            .commands(&VehicleId("v-1".into()), 2)
            .await
            .unwrap()),
        vec![3, 2],
        "newest first, limited"
    );
    assert!(c
        .store
        .immobiliser
        .commands(&VehicleId("v-9".into()), 10)
        .await
        .unwrap()
        .is_empty());

    let q = |vehicle: Option<&str>, from, to, limit| AuditQuery {
        vehicle: vehicle.map(|v| VehicleId(v.into())),
        from,
        to,
        limit,
    };
    let all = c
        .store
        .immobiliser
        .audit(&q(None, minute(0), minute(60), 100))
        .await
        .unwrap();
    // Audit ids come from the database in insertion order (the ids given are ignored):
    // with_fix 1, no_ignition 2, "9" 3, "8" 4, later 5, "12" 6.
    assert_eq!(
        all.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![4, 1, 2, 3, 6, 5],
        "by time, then id"
    );
    assert_eq!(
        all[1],
        AuditEntry { id: 1, ..with_fix },
        "every field intact"
    );
    assert_eq!(
        all[2],
        AuditEntry {
            id: 2,
            ..no_ignition
        }
    );
    let v1_audit = c
        .store
        .immobiliser
        .audit(&q(Some("v-1"), minute(1), minute(5), 100))
        .await
        .unwrap();
    assert_eq!(
        v1_audit.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![4, 1, 2],
        "one vehicle, from <= time < to"
    );
    let limited = c
        .store
        .immobiliser
        .audit(&q(Some("v-1"), minute(0), minute(60), 2))
        .await
        .unwrap();
    assert_eq!(limited.iter().map(|a| a.id).collect::<Vec<_>>(), vec![4, 1]);

    // Everything survives reopening the database.
    drop(c.store);
    let store = storage::open(&c.cfg).await.unwrap();
    let snap = store.immobiliser.immobiliser_load().await.unwrap();
    assert_eq!(snap.vehicles, vec![v2, lifted]);
    assert_eq!(snap.open_commands, vec![expect_sent, acked]);
    let after = store.immobiliser.reserve_command_ids(2).await.unwrap();
    assert!(
        after.iter().all(|id| !reserved.contains(id)),
        "reservations survive reopening: {after:?} vs {reserved:?}"
    );
}
