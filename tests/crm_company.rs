//! `[crm] car_entity = "company"` end to end against the fake amoCRM and Bitrix24: the car's
//! facts (location, mileage) land on its company card while the stage moves on the driver's
//! deal; a vehicle without `crm_company_id` finds its company through the deal's link and
//! remembers it; a moving car's location is written at most once per
//! `location_interval_min` of fix time, a standing car's never, and only the newest pending
//! location write of a car is kept.

mod common;
mod crm_fake;

use chrono::{TimeZone, Utc};
use common::{Api, Tracker};
use crm_fake::config::{amocrm, seams};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, io, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

/// One record at `t0 + s` seconds; the latitude encodes `s` (55.75 + s × 0.00002).
fn record(s: i64, speed: u16) -> AvlRecord {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 7, 0, 0).unwrap();
    AvlRecord {
        time: t0 + chrono::Duration::seconds(s),
        lat: 55.75 + s as f64 * 0.00002,
        lon: 37.61,
        speed_kmh: speed,
        course: 90,
        altitude: 150,
        satellites: 12,
        io: vec![
            (io::IGNITION, 1, 1),
            (io::MOVEMENT, 1, u64::from(speed > 0)),
            (io::TOTAL_ODOMETER, 4, 120_000_000 + s as u64 * 8),
        ],
    }
}

/// The fix second a written location belongs to.
fn second_of(v: &Value) -> i64 {
    let lat: f64 = v
        .as_str()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    ((lat - 55.75) / 0.00002).round() as i64
}

fn amo_toml(url: &str) -> String {
    let keys = "car_entity = \"company\"\nlocation_interval_min = 1\n";
    let fields =
        "[crm.fields]\nmileage_field_id = 501\nblocked_field_id = 502\nlocation_field_id = 503\n";
    amocrm(url, keys, fields)
}

/// 1 min parked, 6 min at 30 km/h, 5 min parked, six records a packet; returns the tracker.
async fn drive(daemon: &fleetgate::app::Running, imei: &str) -> Tracker {
    let mut t = Tracker::connect(daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap()).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1]);
    let mut recs: Vec<AvlRecord> = (0..6).map(|i| record(i * 10, 0)).collect();
    recs.extend((6..42).map(|i| record(i * 10, 30)));
    for chunk in recs.chunks(6) {
        t.send(&encode_avl_packet(CODEC_8E, chunk)).await;
        assert_eq!(t.read(4).await, (chunk.len() as u32).to_be_bytes());
    }
    t
}

async fn park(t: &mut Tracker) {
    let recs: Vec<AvlRecord> = (42..72).map(|i| record(i * 10, 0)).collect();
    for chunk in recs.chunks(6) {
        t.send(&encode_avl_packet(CODEC_8E, chunk)).await;
        assert_eq!(t.read(4).await, (chunk.len() as u32).to_be_bytes());
    }
}

/// Location events of the car as the outbox holds them (any status): (fix second, status,
/// last_error).
async fn location_events(api: &Api, car: &str) -> Vec<(i64, String, Value)> {
    // The fake may have answered before the outbox recorded the delivery: wait for it.
    for _ in 0..100 {
        let e = location_events_now(api, car).await;
        if e.iter().all(|e| e.1 != "pending") {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    location_events_now(api, car).await
}

async fn location_events_now(api: &Api, car: &str) -> Vec<(i64, String, Value)> {
    let (st, v) = api
        .get(&format!(
            "/api/v1/crm/outbox?vehicle={car}&status=all&limit=1000"
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["payload"]["type"] == "location")
        .map(|e| {
            let lat = e["payload"]["lat"].as_f64().unwrap();
            (
                ((lat - 55.75) / 0.00002).round() as i64,
                e["status"].as_str().unwrap().to_string(),
                e["last_error"].clone(),
            )
        })
        .collect()
}

/// The periodic location rule, checked on what the outbox recorded: moving fixes only, at
/// least a minute of fix time apart, superseded ones dropped as coalesced, the newest delivered.
fn check_periodic(events: &[(i64, String, Value)]) {
    let mut secs: Vec<i64> = events.iter().map(|e| e.0).collect();
    secs.sort_unstable();
    assert!(secs.len() >= 4, "6 min of driving at 1/min: {events:?}");
    assert!(
        secs.iter().all(|s| (60..420).contains(s)),
        "only fixes of the moving car: {events:?}"
    );
    assert!(
        secs.windows(2).all(|w| w[1] - w[0] >= 60),
        "at most one per minute of fix time: {events:?}"
    );
    for (s, status, err) in events {
        assert!(
            status == "delivered"
                || (status == "dropped" && err.as_str().unwrap_or("").contains("newer event")),
            "{s}: {status} {err}"
        );
    }
    let newest = events.iter().max_by_key(|e| e.0).unwrap();
    assert_eq!(
        newest.1, "delivered",
        "the newest location is written: {events:?}"
    );
}

common::both_backends!(
    amocrm_car_facts_land_on_the_company_found_through_the_lead_and_the_stage_on_the_lead
);
async fn amocrm_car_facts_land_on_the_company_found_through_the_lead_and_the_stage_on_the_lead() {
    let amo = crm_fake::start("amocrm").await;
    amo.fake.add_company("9001");
    amo.fake.link_company(4242, 9001);
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        fleetgate::app::start_with(common::config(dir.path(), &amo_toml(&amo.url)), seams())
            .await
            .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441201";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-7",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "4242",
                    "driver_id": "drv-1", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    let mut t = drive(&daemon, imei).await;
    // The stage moves on the lead, with no car facts on it.
    assert!(
        crm_fake::wait_for(10, || amo
            .fake
            .ok("PATCH")
            .iter()
            .any(|c| c.path == "/api/v4/leads/4242" && c.body["status_id"] == 142001))
        .await,
        "{:?}",
        amo.fake.calls()
    );
    for c in amo.fake.ok("PATCH") {
        if c.path.starts_with("/api/v4/leads") {
            assert!(
                c.body.get("custom_fields_values").is_none(),
                "no car facts on the lead: {}",
                c.body
            );
        } else {
            assert_eq!(c.path, "/api/v4/companies", "bulk company PATCH");
            assert!(c.body.as_array().is_some(), "{}", c.body);
        }
    }
    // The lead was read once for its company, which the vehicle now carries.
    let lead_reads = amo
        .fake
        .ok("GET")
        .iter()
        .filter(|c| c.path == "/api/v4/leads/4242")
        .count();
    assert!(
        lead_reads >= 1,
        "the company was looked up through the lead"
    );
    let (st, v) = api.get("/api/v1/vehicles?crm_company_id=9001").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v[0]["id"], "car-7",
        "company remembered on the vehicle: {v}"
    );

    // Location and mileage on the company card; the newest location is that of 410 s.
    assert!(
        crm_fake::wait_for(10, || amo
            .fake
            .company_writes("9001", "503")
            .last()
            .is_some_and(|v| second_of(v) == 410))
        .await,
        "{:?}",
        amo.fake.company_writes("9001", "503")
    );
    assert!(
        !amo.fake.company_writes("9001", "501").is_empty(),
        "mileage with the stage move"
    );
    check_periodic(&location_events(&api, "car-7").await);

    // Standing still for 5 min of fixes: nothing more is written.
    let before = amo.fake.company_writes("9001", "503").len();
    park(&mut t).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        amo.fake.company_writes("9001", "503").len(),
        before,
        "none while standing"
    );
    assert!(location_events(&api, "car-7")
        .await
        .iter()
        .all(|e| e.0 < 420));
    daemon.stop().await;
}

common::both_backends!(bitrix24_car_facts_land_on_the_deal_s_company_and_the_stage_on_the_deal);
async fn bitrix24_car_facts_land_on_the_deal_s_company_and_the_stage_on_the_deal() {
    let bx = crm_fake::start("bitrix24").await;
    bx.fake.add_company("77");
    bx.fake.manager_moves_deal("555", "C1:NEW");
    bx.fake.deals.lock().unwrap().get_mut("555").unwrap()["COMPANY_ID"] = json!("77");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[crm]
kind = "bitrix24"
webhook_url = "{}/rest/1/s3cr3t/"
car_entity = "company"
location_interval_min = 1
backoff_initial_s = 0.05
backoff_max_s = 0.5
poll_ms = 50
[crm.stages]
on_line = {{ stage_id = "C1:EXECUTING" }}
wants_to_return = {{ stage_id = "C1:RETURN" }}
[crm.fields]
location_field_code = "UF_CRM_LOCATION"
mileage_field_code = "UF_CRM_MILEAGE"
"#,
        bx.url
    );
    let daemon = fleetgate::app::start_with(common::config(dir.path(), &toml), seams())
        .await
        .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441202";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-8",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "555",
                    "driver_id": "drv-2", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let _t = drive(&daemon, imei).await;
    assert!(
        crm_fake::wait_for(10, || bx.fake.deals.lock().unwrap()["555"]["STAGE_ID"]
            == "C1:EXECUTING")
        .await,
        "{:?}",
        bx.fake.calls()
    );
    assert!(
        crm_fake::wait_for(10, || bx
            .fake
            .company_writes("77", "UF_CRM_LOCATION")
            .last()
            .is_some_and(|v| second_of(v) == 410))
        .await,
        "{:?}",
        bx.fake.calls()
    );
    assert!(!bx.fake.company_writes("77", "UF_CRM_MILEAGE").is_empty());
    for c in bx
        .fake
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("crm.deal.update"))
    {
        let fields = c.body["fields"].as_object().unwrap();
        assert_eq!(
            fields.keys().collect::<Vec<_>>(),
            ["STAGE_ID"],
            "only the stage on the deal"
        );
    }
    let (_, v) = api.get("/api/v1/vehicles?crm_company_id=77").await;
    assert_eq!(v[0]["id"], "car-8", "{v}");
    check_periodic(&location_events(&api, "car-8").await);
    daemon.stop().await;
}

common::both_backends!(a_vehicle_s_own_company_is_used_without_reading_the_lead);
/// A vehicle whose `crm_company_id` is set is written there without asking the deal; a block
/// note goes to the company card too (amoCRM company notes).
async fn a_vehicle_s_own_company_is_used_without_reading_the_lead() {
    let amo = crm_fake::start("amocrm").await;
    amo.fake.add_company("9100");
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        fleetgate::app::start_with(common::config(dir.path(), &amo_toml(&amo.url)), seams())
            .await
            .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441203";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-9",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "4300",
                    "crm_company_id": "9100", "driver_id": "drv-3", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let _t = drive(&daemon, imei).await;
    assert!(
        crm_fake::wait_for(10, || amo
            .fake
            .company_writes("9100", "503")
            .last()
            .is_some_and(|v| second_of(v) == 410))
        .await,
        "{:?}",
        amo.fake.calls()
    );
    assert!(
        !amo.fake
            .calls()
            .iter()
            .any(|c| c.method == "GET" && c.path == "/api/v4/leads/4300"),
        "the lead is not read when the vehicle has its company"
    );
    daemon.stop().await;
}

/// The coalescing and the company memory on both real backends: a newer location of a car
/// drops its older pending one (other kinds and other cars untouched); a company found
/// through the deal is stored on the vehicle unless one is set.
async fn outbox_keeps_one_pending_location_per_car(store: fleetgate::storage::Stores) {
    use fleetgate::crm::event::{NewEvent, Payload};
    use fleetgate::model::VehicleId;
    let now = Utc::now();
    let loc = |car: &str, lat: f64| NewEvent {
        vehicle_id: VehicleId(car.into()),
        deal_id: Some("42".into()),
        payload: Payload::Location {
            lat,
            lon: 37.6,
            at: now,
        },
    };
    let miles = NewEvent {
        vehicle_id: VehicleId("car-a".into()),
        deal_id: Some("42".into()),
        payload: Payload::Mileage {
            odometer_km: 5.0,
            at: now,
        },
    };
    let crm = &store.crm;
    let ttl = chrono::Duration::hours(1);
    crm.crm_commit(
        &[],
        &[loc("car-a", 55.1), miles, loc("car-b", 55.5)],
        now,
        ttl,
    )
    .await
    .unwrap();
    crm.crm_commit(&[], &[loc("car-a", 55.2)], now, ttl)
        .await
        .unwrap();
    crm.crm_commit(&[], &[loc("car-a", 55.3)], now, ttl)
        .await
        .unwrap();
    let all = crm.outbox_list(None, None, 100).await.unwrap();
    let seen: Vec<(String, &str, String)> = all
        .iter()
        .rev()
        .map(|e| {
            let what = match &e.payload {
                Payload::Location { lat, .. } => format!("loc {lat}"),
                p => p.kind().to_string(),
            };
            (e.vehicle_id.0.clone(), e.status.as_str(), what)
        })
        .collect();
    let row = |c: &str, s: &'static str, w: &str| (c.to_string(), s, w.to_string());
    assert_eq!(
        seen,
        [
            row("car-a", "dropped", "loc 55.1"),
            row("car-a", "pending", "mileage"),
            row("car-b", "pending", "loc 55.5"),
            row("car-a", "dropped", "loc 55.2"),
            row("car-a", "pending", "loc 55.3"),
        ]
    );
    // The company memory: set once, an operator's value kept.
    store
        .core
        .upsert_vehicle(
            &VehicleId("car-a".into()),
            &fleetgate::pipeline::store::VehicleUpdate::default(),
        )
        .await
        .unwrap();
    assert!(crm
        .crm_set_company(&VehicleId("car-a".into()), "9001", now)
        .await
        .unwrap());
    assert!(!crm
        .crm_set_company(&VehicleId("car-a".into()), "9002", now)
        .await
        .unwrap());
    let v = store
        .core
        .vehicle(&VehicleId("car-a".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.crm_company_id.as_deref(), Some("9001"));
}

common::both_backends!(the_outbox_keeps_one_pending_location_per_car);
async fn the_outbox_keeps_one_pending_location_per_car() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), "");
    let store = fleetgate::storage::open(&cfg.storage).await.unwrap();
    outbox_keeps_one_pending_location_per_car(store).await;
}

common::both_backends!(a_lead_without_a_company_still_moves_and_says_what_is_missing);
/// A lead with no company: the stage still moves, the car's other facts are dead-lettered
/// with a reason that says what to fix, and the lead is not asked again for each of them.
async fn a_lead_without_a_company_still_moves_and_says_what_is_missing() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        fleetgate::app::start_with(common::config(dir.path(), &amo_toml(&amo.url)), seams())
            .await
            .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441204";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-10",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "4400",
                    "driver_id": "drv-4", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut t = drive(&daemon, imei).await;
    assert!(
        crm_fake::wait_for(10, || amo
            .fake
            .ok("PATCH")
            .iter()
            .any(|c| c.path == "/api/v4/leads/4400" && c.body["status_id"] == 142001))
        .await,
        "{:?}",
        amo.fake.calls()
    );
    let dead_letters = |n: usize| {
        let api = &api;
        async move {
            let mut dead = Vec::new();
            for _ in 0..400 {
                let (_, v) = api
                    .get("/api/v1/crm/outbox?vehicle=car-10&status=dead&limit=100")
                    .await;
                dead = v["events"].as_array().unwrap().clone();
                if dead.len() >= n {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            dead
        }
    };
    // The drive's locations replace each other while one is pending (one pending location
    // per car), so how many the drive leaves depends on when the first was tried: wait for
    // one, then drive on two more minutes for another.
    assert!(
        !dead_letters(1).await.is_empty(),
        "a location dead-lettered"
    );
    let more: Vec<AvlRecord> = (42..54).map(|i| record(i * 10, 30)).collect();
    for chunk in more.chunks(6) {
        t.send(&encode_avl_packet(CODEC_8E, chunk)).await;
        assert_eq!(t.read(4).await, (chunk.len() as u32).to_be_bytes());
    }
    let dead = dead_letters(2).await;
    assert!(dead.len() >= 2, "location events dead-lettered: {dead:?}");
    for e in &dead {
        assert_eq!(e["payload"]["type"], "location");
        assert!(
            e["last_error"]
                .as_str()
                .unwrap()
                .contains("no company card"),
            "{e}"
        );
    }
    let lead_reads = amo
        .fake
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path == "/api/v4/leads/4400")
        .count();
    assert!(
        lead_reads <= 2,
        "{lead_reads} reads of the lead for its company"
    );
    assert!(amo
        .fake
        .ok("PATCH")
        .iter()
        .all(|c| c.path != "/api/v4/companies"));
    daemon.stop().await;
}
