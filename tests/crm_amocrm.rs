//! The CRM track end to end against an in-test amoCRM: a replayed shift through a real
//! Teltonika session moves the deal On line → Wants to return with the right bodies; an
//! inspection postponed three times blocks through the immobiliser seam and completion
//! lifts it and sends the mileage.

mod common;
mod crm_fake;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::{Api, Tracker};
use crm_fake::config::{amocrm, stage_patches, FIELDS, ON_LINE, WANTS_TO_RETURN};
use fleetgate::crm::memory::{BoxZones, MemoryBlockReasons};
use fleetgate::crm::Seams;
use fleetgate::model::VehicleId;
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, io, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::json;

fn crm_toml(base_url: &str) -> String {
    let signals = "[rules.return_signals]\nteltonika = { input = 2 }\n";
    amocrm(base_url, "", &format!("{FIELDS}{signals}"))
}

/// One record every 10 s from `t0 + start_s`: parked, then driving, as a shift starts.
fn record(s: i64, speed: u16, din2: bool) -> AvlRecord {
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
            (io::DIN2, 1, u64::from(din2)),
            (io::TOTAL_ODOMETER, 4, 120_000_000 + s as u64 * 8),
        ],
    }
}

async fn register(api: &Api, id: &str, body: serde_json::Value) {
    let (st, v) = api.put(&format!("/api/v1/vehicles/{id}"), body).await;
    assert_eq!(st, 200, "{v}");
}

common::both_backends!(replayed_shift_moves_the_deal_on_line_then_wants_to_return);
async fn replayed_shift_moves_the_deal_on_line_then_wants_to_return() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    // The service area: central Moscow; the drive stays inside it.
    let zones = BoxZones {
        area: (55.5, 37.3, 56.0, 37.9),
        lots: vec![("depot-north".into(), (55.749, 37.609, 55.7505, 37.611))],
    };
    let wiring = Seams {
        reasons: Some(Arc::new(MemoryBlockReasons::default())),
        zones: Some(Arc::new(zones)),
    };
    let daemon =
        fleetgate::app::start_with(common::config(dir.path(), &crm_toml(&amo.url)), wiring)
            .await
            .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441099";
    register(
        &api,
        "car-7",
        json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "4242",
                "driver_id": "drv-1", "status": "issued" }),
    )
    .await;

    let mut t = Tracker::connect(daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap()).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1]);
    // 1 min parked with the engine on, 4 min driving at 30 km/h, then parked: six-record batches.
    let mut recs: Vec<AvlRecord> = (0..6).map(|i| record(i * 10, 0, false)).collect();
    recs.extend((6..30).map(|i| record(i * 10, 30, false)));
    recs.extend((30..36).map(|i| record(i * 10, 0, false)));
    for chunk in recs.chunks(6) {
        t.send(&encode_avl_packet(CODEC_8E, chunk)).await;
        assert_eq!(t.read(4).await, (chunk.len() as u32).to_be_bytes());
    }
    assert!(
        crm_fake::wait_for(10, || stage_patches(&amo.fake).len() == 1).await,
        "on line: {:?}",
        amo.fake.calls()
    );
    let on = &stage_patches(&amo.fake)[0];
    assert_eq!(on.path, "/api/v4/leads/4242");
    assert_eq!(on.body["status_id"], ON_LINE.1);
    assert_eq!(on.body["pipeline_id"], ON_LINE.0);
    assert_eq!(on.headers["authorization"], "Bearer amo-long-lived-token");
    let fields = on.body["custom_fields_values"].as_array().unwrap();
    let f = |id: u64| {
        fields
            .iter()
            .find(|f| f["field_id"] == id)
            .map(|f| f["values"][0]["value"].clone())
    };
    assert!(
        f(503).unwrap().as_str().unwrap().starts_with("55.75"),
        "location field"
    );
    // On line after 3 min of movement (t = 50 + 180 s, 1.44 km), with that fix's odometer,
    // 120 001.84 km.
    assert_eq!(f(501).unwrap(), json!(120002));

    // The driver presses the return button (DIN2) while parked: one more PATCH, to the new stage.
    let press: Vec<_> = (36..39).map(|i| record(i * 10, 0, true)).collect();
    t.send(&encode_avl_packet(CODEC_8E, &press)).await;
    assert_eq!(t.read(4).await, [0, 0, 0, 3]);
    assert!(crm_fake::wait_for(10, || stage_patches(&amo.fake).len() == 2).await);
    let back = &stage_patches(&amo.fake)[1];
    assert_eq!(back.path, "/api/v4/leads/4242");
    assert_eq!(back.body["status_id"], WANTS_TO_RETURN.1);
    assert_eq!(back.body["pipeline_id"], WANTS_TO_RETURN.0);

    // The CRM operator's return request for the same shift moves nothing more.
    let (st, r) = api
        .post("/api/v1/vehicles/car-7/return-request", json!({}))
        .await;
    assert_eq!((st, r["moved"].clone()), (202, json!(false)), "{r}");

    // A second car without a tracker: the API return request moves its deal once.
    register(
        &api,
        "car-8",
        json!({ "crm_deal_id": "4343", "status": "issued" }),
    )
    .await;
    let (st, r) = api
        .post("/api/v1/vehicles/car-8/return-request", json!({}))
        .await;
    assert_eq!((st, r["moved"].clone()), (202, json!(true)), "{r}");
    let (st, _) = api
        .post("/api/v1/vehicles/car-8/return-request", json!({}))
        .await;
    assert_eq!(st, 202);
    assert!(crm_fake::wait_for(10, || stage_patches(&amo.fake).len() == 3).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patches = stage_patches(&amo.fake);
    assert_eq!(
        patches.len(),
        3,
        "exactly one PATCH per stage change: {patches:?}"
    );
    assert_eq!(patches[2].path, "/api/v4/leads/4343");
    assert_eq!(patches[2].body["status_id"], WANTS_TO_RETURN.1);

    let (st, s) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["wants_to_return"], 2, "{s}");
    assert_eq!(s["on_line"], 0, "{s}");
    assert_eq!(s["offline"], 1, "car-8 has no tracker: {s}");
    let (_, ob) = api.get("/api/v1/crm/outbox?status=pending").await;
    assert_eq!(ob["counts"]["pending"], 0, "{ob}");
    assert_eq!(ob["counts"]["dead"], 0, "{ob}");

    // The car is returned to the fleet and issued again: its next drive is a new shift and goes
    // on line at once, not only after `shift_gap` (8 h) of idling.
    for status in ["available", "issued"] {
        register(&api, "car-7", json!({ "status": status })).await;
    }
    let drive: Vec<_> = (40..70).map(|i| record(i * 10, 30, false)).collect();
    for chunk in drive.chunks(6) {
        t.send(&encode_avl_packet(CODEC_8E, chunk)).await;
        assert_eq!(t.read(4).await, (chunk.len() as u32).to_be_bytes());
    }
    assert!(
        crm_fake::wait_for(10, || stage_patches(&amo.fake).len() == 4).await,
        "on line again: {:?}",
        stage_patches(&amo.fake)
    );
    let again = &stage_patches(&amo.fake)[3];
    assert_eq!(again.path, "/api/v4/leads/4242");
    assert_eq!(again.body["status_id"], ON_LINE.1);
    daemon.stop().await;
}

common::both_backends!(inspection_postponed_three_times_blocks_and_completion_lifts);
async fn inspection_postponed_three_times_blocks_and_completion_lifts() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let reasons = Arc::new(MemoryBlockReasons::default());
    let wiring = Seams {
        reasons: Some(reasons.clone()),
        zones: Some(Arc::new(fleetgate::crm::memory::Everywhere)),
    };
    let daemon =
        fleetgate::app::start_with(common::config(dir.path(), &crm_toml(&amo.url)), wiring)
            .await
            .unwrap();
    let api = Api::new(daemon.api_addr);
    register(
        &api,
        "car-9",
        json!({ "crm_deal_id": "900", "driver_id": "drv-9", "status": "issued" }),
    )
    .await;
    let car = VehicleId("car-9".into());
    let due = (Utc::now() + chrono::Duration::days(10)).date_naive();
    let (st, v) = api
        .post(
            "/api/v1/vehicles/car-9/inspection",
            json!({ "due_date": due, "due_odometer_km": 150000 }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for n in 1..=2 {
        let (st, v) = api
            .post("/api/v1/vehicles/car-9/inspection/postpone", json!({}))
            .await;
        assert_eq!(
            (st, v["postponements"].clone(), v["blocked"].clone()),
            (200, json!(n), json!(false)),
            "{v}"
        );
    }
    assert!(reasons.calls().is_empty(), "two postponements are allowed");
    let (_, v) = api
        .post("/api/v1/vehicles/car-9/inspection/postpone", json!({}))
        .await;
    assert_eq!(v["blocked"], true, "{v}");
    let calls = reasons.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].reason.as_str(), calls[0].active),
        ("inspection", true)
    );
    assert_eq!(calls[0].vehicle, car);
    // The driver message, then (the reason in effect: no relay behind this seam) the deal
    // shows the block with a note naming the reason.
    // A postponement with a reason would be a note of its own ("ТО перенесено (n-й раз): …").
    let note_text = |c: &crm_fake::Call| {
        c.body[0]["params"]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let other_posts = || -> Vec<crm_fake::Call> {
        amo.fake
            .ok("POST")
            .into_iter()
            .filter(|c| !note_text(c).starts_with("ТО перенесено"))
            .collect()
    };
    assert!(
        crm_fake::wait_for(10, || other_posts().len() == 2).await,
        "driver message and block notes: {:?}",
        amo.fake.calls()
    );
    let posts = other_posts();
    assert!(posts
        .iter()
        .all(|n| n.path == "/api/v4/leads/notes" && n.body[0]["entity_id"] == 900));
    assert!(posts[0].body[0]["params"]["text"]
        .as_str()
        .unwrap()
        .contains("техосмотр"));
    assert_eq!(
        posts[1].body[0]["params"]["text"],
        "Автомобиль заблокирован: просрочен ТО."
    );
    assert!(crm_fake::wait_for(10, || amo.fake.field_writes(502) == vec![json!(true)]).await);

    let (st, v) = api
        .post(
            "/api/v1/vehicles/car-9/inspection/complete",
            json!({ "odometer_km": 151234.4 }),
        )
        .await;
    assert_eq!(
        (st, v["blocked"].clone(), v["postponements"].clone()),
        (200, json!(false), json!(0)),
        "{v}"
    );
    let calls = reasons.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[1].reason.as_str(), calls[1].active),
        ("inspection", false)
    );
    // Mileage and the blocked flag reach the deal's custom fields, in order.
    assert!(
        crm_fake::wait_for(10, || {
            let l = amo.fake.leads.lock().unwrap().get(&900).cloned();
            l.is_some_and(|l| {
                l["fields"]["501"] == json!(151234) && l["fields"]["502"] == json!(false)
            })
        })
        .await,
        "{:?}",
        amo.fake.calls()
    );
    let blocked_writes = amo.fake.field_writes(502);
    assert_eq!(blocked_writes, vec![json!(true), json!(false)]);
    daemon.stop().await;
}
