//! A taxi day's CRM rules through the daemon, against an in-test amoCRM that answers like the
//! real one, with a real Teltonika session per car: a car blocked for a low balance whose shift
//! ended overnight is unblocked by a top-up made in the CRM alone, within one check interval;
//! a pushed balance is not overwritten by an older, unchanged CRM value; a car handed back and
//! driven to the depot never touches its old deal, and the next driver's deal starts clean.

mod common;
mod crm_fake;

use std::sync::Arc;

use chrono::Utc;
use common::teltonika::{self, Drive};
use common::Api;
use crm_fake::config::{amocrm, seams_with, FIELDS};
use fleetgate::crm::memory::MemoryBlockReasons;
use fleetgate::model::VehicleId;
use fleetgate::protocols::{Protocol, Transport};
use serde_json::json;

/// How often balances are pulled in these tests (the smallest the config allows).
const CHECK_S: u64 = 10;

fn crm_toml(base_url: &str) -> String {
    let rules = format!("[rules]\nbalance_check_interval = {CHECK_S}\n");
    amocrm(base_url, "", &format!("{FIELDS}{rules}"))
}

common::both_backends!(
    blocked_parked_overnight_then_topped_up_in_the_crm_is_unblocked_without_a_push
);
async fn blocked_parked_overnight_then_topped_up_in_the_crm_is_unblocked_without_a_push() {
    let amo = crm_fake::start("amocrm").await;
    amo.fake.set_field(6100, 504, json!(3000));
    let dir = tempfile::tempdir().unwrap();
    let reasons = Arc::new(MemoryBlockReasons::default());
    let daemon = fleetgate::app::start_with(
        common::config(dir.path(), &crm_toml(&amo.url)),
        seams_with(reasons.clone()),
    )
    .await
    .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441101";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-b",
            json!({ "device_id": imei, "protocol": "teltonika", "status": "issued",
                    "crm_deal_id": "6100", "driver_id": "drv-b" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let car = VehicleId("car-b".into());
    let mut t = teltonika::login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;

    // Yesterday evening: a shift of city driving, then parked.
    let mut drive = Drive::new(Utc::now() - chrono::Duration::hours(12));
    drive.go(600, 35.0, true).go(60, 0.0, false);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    assert!(
        crm_fake::wait_for(CHECK_S + 10, || reasons
            .active(&car)
            .contains("low_balance"))
        .await,
        "3 000 ₽ pulled from the deal blocks: {:?}",
        reasons.calls()
    );
    // Parked overnight, past shift_gap (8 h): the shift is over, the car stays blocked.
    drive.pause(10 * 3600).go(30, 0.0, false);
    teltonika::send_records(&mut t, &drive.take()).await;
    let (_, s) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(s["on_line"], 0, "the shift ended overnight: {s}");

    // The driver tops up; the leasing company's manager enters it in the CRM. No push.
    let gets_before = amo.fake.ok("GET").len();
    let topped_up = std::time::Instant::now();
    amo.fake.set_field(6100, 504, json!("9 000,00"));
    assert!(
        crm_fake::wait_for(CHECK_S + 10, || !reasons
            .active(&car)
            .contains("low_balance"))
        .await,
        "unblocked by the next check: {:?}",
        reasons.calls()
    );
    assert!(
        topped_up.elapsed().as_secs() <= CHECK_S + 3,
        "within one interval: {:?}",
        topped_up.elapsed()
    );
    assert!(amo.fake.ok("GET").len() > gets_before, "pulled, not pushed");
    let (_, b) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(b["blocked_by_reason"]["low_balance"], json!(null), "{b}");

    // The billing system pushes 1 500 ₽ (spent since): the CRM's unchanged 9 000 ₽ does not
    // overwrite it at the next check — the newest balance wins.
    let (st, v) = api
        .put(
            "/api/v1/drivers/drv-b/balance",
            json!({ "balance_rub": 1500, "as_of": Utc::now() }),
        )
        .await;
    assert_eq!(
        (st, v["applied"].clone(), v["low"].clone()),
        (200, json!(true), json!(true)),
        "{v}"
    );
    let gets = amo.fake.ok("GET").len();
    assert!(crm_fake::wait_for(CHECK_S + 10, || amo.fake.ok("GET").len() > gets).await);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        reasons.active(&car).contains("low_balance"),
        "the older CRM value did not lift the block: {:?}",
        reasons.calls()
    );
    // A push dated before the balance known is refused as older news.
    let (st, v) = api
        .put(
            "/api/v1/drivers/drv-b/balance",
            json!({ "balance_rub": 20000, "as_of": Utc::now() - chrono::Duration::hours(1) }),
        )
        .await;
    assert_eq!(
        (st, v["applied"].clone(), v["balance_rub"].clone()),
        (200, json!(false), json!(1500.0)),
        "{v}"
    );
    daemon.stop().await;
}

fn lead_calls(fake: &crm_fake::Fake, lead: u64) -> Vec<crm_fake::Call> {
    let path = format!("/api/v4/leads/{lead}");
    fake.ok("PATCH")
        .into_iter()
        .filter(|c| {
            c.path == path
                || c.body
                    .as_array()
                    .is_some_and(|a| a.iter().any(|l| l["id"] == lead))
        })
        .collect()
}

common::both_backends!(a_car_handed_back_and_driven_to_the_depot_never_touches_the_old_deal);
async fn a_car_handed_back_and_driven_to_the_depot_never_touches_the_old_deal() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let reasons = Arc::new(MemoryBlockReasons::default());
    let daemon = fleetgate::app::start_with(
        common::config(dir.path(), &crm_toml(&amo.url)),
        seams_with(reasons.clone()),
    )
    .await
    .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441102";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-h",
            json!({ "device_id": imei, "protocol": "teltonika", "status": "issued",
                    "crm_deal_id": "7100", "driver_id": "drv-1" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let car = VehicleId("car-h".into());
    let mut t = teltonika::login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    let mut drive = Drive::new(Utc::now() - chrono::Duration::hours(3));
    drive.go(400, 35.0, true).go(30, 0.0, true);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    assert!(crm_fake::wait_for(10, || lead_calls(&amo.fake, 7100).len() == 1).await);
    let (st, r) = api
        .post("/api/v1/vehicles/car-h/return-request", json!({}))
        .await;
    assert_eq!((st, r["moved"].clone()), (202, json!(true)), "{r}");
    assert!(crm_fake::wait_for(10, || lead_calls(&amo.fake, 7100).len() == 2).await);
    assert_eq!(amo.fake.leads.lock().unwrap()[&7100]["status_id"], 142_002);

    // The CRM is down while the driver's debt is recorded: its events wait in the outbox.
    amo.fake.fail_next(&[503; 10_000]);
    let (st, v) = api
        .put(
            "/api/v1/drivers/drv-1/balance",
            json!({ "balance_rub": 100 }),
        )
        .await;
    assert_eq!((st, v["low"].clone()), (200, json!(true)), "{v}");
    // The driver message at once; the block state once the reason is in effect (this seam has
    // no relay: at the next look at the reasons).
    let mut ob = json!(null);
    for _ in 0..100 {
        ob = api.get("/api/v1/crm/outbox?status=pending").await.1;
        if ob["counts"]["pending"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let kinds: Vec<&str> = ob["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["payload"]["type"].as_str())
        .collect();
    assert_eq!(kinds, ["block_state", "driver_message"], "{ob}");

    // Handed back at the office; the CRM comes back; the car is driven to the depot.
    let (st, v) = api
        .put("/api/v1/vehicles/car-h", json!({ "status": "available" }))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, ob) = api.get("/api/v1/crm/outbox?status=all").await;
    assert_eq!(ob["counts"]["pending"], 0, "{ob}");
    assert_eq!(ob["counts"]["dropped"], 2, "{ob}");
    amo.fake.fail.lock().unwrap().clear();
    drive.go(900, 35.0, true).go(30, 0.0, false);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        lead_calls(&amo.fake, 7100).len(),
        2,
        "nothing more reached the old deal: {:?}",
        lead_calls(&amo.fake, 7100)
    );
    assert_eq!(amo.fake.leads.lock().unwrap()[&7100]["status_id"], 142_002);
    let (_, s) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(s["on_line"], 0, "{s}");

    // The next driver takes it on a new deal: it starts clean, without the last driver's debt.
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-h",
            json!({ "status": "issued", "crm_deal_id": "7200", "driver_id": "drv-2" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        !reasons.active(&car).contains("low_balance"),
        "{:?}",
        reasons.calls()
    );
    drive.go(400, 35.0, true);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    assert!(
        crm_fake::wait_for(10, || lead_calls(&amo.fake, 7200).len() == 1).await,
        "{:?}",
        amo.fake.calls()
    );
    assert_eq!(amo.fake.leads.lock().unwrap()[&7200]["status_id"], 142_001);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(lead_calls(&amo.fake, 7100).len(), 2);
    assert!(
        amo.fake.ok("POST").is_empty(),
        "the dropped debt note never reached the old deal"
    );
    daemon.stop().await;
}

common::both_backends!(an_odometer_less_tracker_never_lowers_the_crm_mileage);
async fn an_odometer_less_tracker_never_lowers_the_crm_mileage() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = fleetgate::app::start_with(
        common::config(dir.path(), &crm_toml(&amo.url)),
        seams_with(Arc::new(MemoryBlockReasons::default())),
    )
    .await
    .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441103";
    let issue = |deal: &'static str| {
        json!({ "device_id": imei, "protocol": "teltonika", "status": "issued",
                "crm_deal_id": deal, "driver_id": "drv-m" })
    };
    let (st, v) = api.put("/api/v1/vehicles/car-m", issue("8100")).await;
    assert_eq!(st, 200, "{v}");
    let mut t = teltonika::login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    let mut drive = Drive::new(Utc::now() - chrono::Duration::hours(5));
    drive.odometer = false;
    // First shift: the CRM knows no mileage for the car, and the tracker has no odometer.
    drive.go(400, 35.0, true).go(30, 0.0, true);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    assert!(crm_fake::wait_for(10, || lead_calls(&amo.fake, 8100).len() == 1).await);
    assert_eq!(
        amo.fake.field_writes(501),
        Vec::<serde_json::Value>::new(),
        "no bare GPS total (3 km) over the CRM's mileage"
    );
    // The inspection records the real odometer: it calibrates the GPS distance.
    let (st, v) = api
        .post(
            "/api/v1/vehicles/car-m/inspection/complete",
            json!({ "odometer_km": 151234 }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(crm_fake::wait_for(10, || amo.fake.field_writes(501).len() == 1).await);
    // Returned, issued again on a new deal, another shift of ~8 km, an API return request.
    for body in [json!({ "status": "available" }), issue("8200")] {
        let (st, v) = api.put("/api/v1/vehicles/car-m", body).await;
        assert_eq!(st, 200, "{v}");
    }
    drive.go(840, 35.0, true).go(30, 0.0, true);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    assert!(crm_fake::wait_for(10, || lead_calls(&amo.fake, 8200).len() == 1).await);
    let (st, r) = api
        .post("/api/v1/vehicles/car-m/return-request", json!({}))
        .await;
    assert_eq!((st, r["moved"].clone()), (202, json!(true)), "{r}");
    assert!(crm_fake::wait_for(10, || amo.fake.field_writes(501).len() == 3).await);
    let km: Vec<i64> = amo
        .fake
        .field_writes(501)
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(km[0], 151_234, "{km:?}");
    assert!(
        km.windows(2).all(|w| w[0] <= w[1]),
        "never decreases: {km:?}"
    );
    // On line after the inspection: 151 234 km + the GPS distance driven since (a few km).
    assert!(
        (151_236..=151_245).contains(&km[1]),
        "calibrated, not a GPS total: {km:?}"
    );
    daemon.stop().await;
}

common::both_backends!(driver_notes_are_russian_and_one_note_survives_a_timeout_retry);
async fn driver_notes_are_russian_and_one_note_survives_a_timeout_retry() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    // A 1 s request timeout; the fake answers the first note 2.5 s late, after applying it.
    let toml = crm_toml(&amo.url).replace("poll_ms = 50\n", "poll_ms = 50\ntimeout_s = 1\n");
    let daemon = fleetgate::app::start_with(
        common::config(dir.path(), &toml),
        seams_with(Arc::new(MemoryBlockReasons::default())),
    )
    .await
    .unwrap();
    let api = Api::new(daemon.api_addr);
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-n",
            json!({ "status": "issued", "crm_deal_id": "9100", "driver_id": "drv-n" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    amo.fake
        .delay_ms
        .store(2500, std::sync::atomic::Ordering::Relaxed);
    let (st, v) = api
        .put(
            "/api/v1/drivers/drv-n/balance",
            json!({ "balance_rub": 4999.99 }),
        )
        .await;
    assert_eq!((st, v["low"].clone()), (200, json!(true)), "{v}");
    let settled = || async {
        let (_, ob) = api.get("/api/v1/crm/outbox?status=all").await;
        ob["counts"]["pending"] == 0 && ob["counts"]["delivered"].as_u64() > Some(0)
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !settled().await {
        assert!(std::time::Instant::now() < until, "{:?}", amo.fake.calls());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The deal also hears "blocked: low balance" once the car's block shows (at the next
    // check, 10 s on): only the notes about the balance, then the inspection, are counted.
    let about = |what: &str| -> Vec<String> {
        let texts = amo.fake.note_texts(9100);
        texts.into_iter().filter(|t| t.contains(what)).collect()
    };
    let balance = about("Баланс");
    assert_eq!(balance.len(), 1, "one note despite the retry: {balance:?}");
    let posts = amo
        .fake
        .ok("POST")
        .iter()
        .filter(|c| c.body.to_string().contains("Баланс"))
        .count();
    assert_eq!(
        posts, 1,
        "the retry looked the note up instead of posting it"
    );
    let (_, ob) = api.get("/api/v1/crm/outbox?status=delivered").await;
    let msg = ob["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["payload"]["type"] == "driver_message")
        .cloned()
        .unwrap();
    assert!(msg["attempts"].as_u64() >= Some(2), "it was retried: {msg}");
    assert_eq!(
        balance[0],
        "Баланс 4 999,99 ₽ ниже минимума 5 000 ₽. Пополните баланс: после остановки \
         автомобиль не заведётся."
    );

    // The inspection's note names its cause in Russian too.
    for _ in 0..3 {
        let (st, v) = api
            .post("/api/v1/vehicles/car-n/inspection/postpone", json!({}))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    assert!(crm_fake::wait_for(10, || !about("ТО").is_empty()).await);
    let found = about("ТО");
    assert_eq!(found.len(), 1, "{found:?}");
    let text = &found[0];
    assert_eq!(
        text,
        "Требуется техосмотр: ТО перенесено 3 раза (допускается не более 2). Пройдите ТО: \
         после остановки автомобиль не заведётся."
    );
    assert!(!text.chars().any(|c| c.is_ascii_alphabetic()), "{text}");
    daemon.stop().await;
}

common::both_backends!(shutdown_starts_no_new_crm_request_and_ends_within_the_bound);
/// Shutdown (SIGTERM and `Running::stop` cancel the same token): the outbox starts no new
/// request at once; the one in flight finishes or is left pending within the documented bound.
async fn shutdown_starts_no_new_crm_request_and_ends_within_the_bound() {
    let hook = crm_fake::start("webhook").await;
    // Each request is applied at once and answered 3 s later: a slow CRM.
    hook.fake
        .delay_ms
        .store(3000, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[crm]\nkind = \"webhook\"\nurl = \"{}/events\"\nsecret = \"webhook-secret-123\"\n\
         poll_ms = 50\ntimeout_s = 30\n",
        hook.url
    );
    let daemon = fleetgate::app::start(common::config(dir.path(), &toml))
        .await
        .unwrap();
    let api = Api::new(daemon.api_addr);
    for i in 0..10 {
        let path = format!("/api/v1/vehicles/car-s{i}");
        let (st, v) = api.put(&path, json!({ "status": "issued" })).await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = api.post(&format!("{path}/return-request"), json!({})).await;
        assert_eq!(st, 202, "{v}");
    }
    // Ten events, one request in flight (3 s each: 30 s to send them all).
    assert!(crm_fake::wait_for(10, || hook.fake.calls().len() == 1).await);
    let started = std::time::Instant::now();
    daemon.stop().await;
    let took = started.elapsed();
    let bound = fleetgate::crm::outbox::SHUTDOWN_GRACE + std::time::Duration::from_secs(3);
    assert!(took <= bound, "shutdown took {took:?}");
    assert_eq!(
        hook.fake.calls().len(),
        1,
        "no request started after the shutdown began"
    );
}

common::both_backends!(a_bitrix24_comment_retried_after_a_timeout_is_added_once);
async fn a_bitrix24_comment_retried_after_a_timeout_is_added_once() {
    let bx = crm_fake::start("bitrix24").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[crm]
kind = "bitrix24"
webhook_url = "{}/rest/1/s3cr3t/"
backoff_initial_s = 0.05
backoff_max_s = 0.5
poll_ms = 50
timeout_s = 1
[crm.stages]
on_line = {{ stage_id = "C2:EXECUTING" }}
wants_to_return = {{ stage_id = "C2:RETURN" }}
"#,
        bx.url
    );
    let daemon = common::start(dir.path(), &toml).await;
    let api = Api::new(daemon.api_addr);
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-x",
            json!({ "status": "issued", "crm_deal_id": "9300", "driver_id": "drv-x" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    bx.fake
        .delay_ms
        .store(2500, std::sync::atomic::Ordering::Relaxed);
    let (st, v) = api
        .put(
            "/api/v1/drivers/drv-x/balance",
            json!({ "balance_rub": 120.5 }),
        )
        .await;
    assert_eq!((st, v["low"].clone()), (200, json!(true)), "{v}");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, ob) = api.get("/api/v1/crm/outbox?status=all").await;
        if ob["counts"]["pending"] == 0 && ob["counts"]["delivered"].as_u64() > Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < until, "{:?}", bx.fake.calls());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let comments = bx.fake.comments.lock().unwrap().clone();
    assert_eq!(
        comments.len(),
        1,
        "one comment despite the retry: {comments:?}"
    );
    assert!(
        bx.fake
            .calls()
            .iter()
            .any(|c| c.path.ends_with("crm.timeline.comment.list")),
        "the retry looked it up"
    );
    assert_eq!(
        comments[0]["COMMENT"],
        "Баланс 120,50 ₽ ниже минимума 5 000 ₽. Пополните баланс: после остановки \
         автомобиль не заведётся."
    );
    daemon.stop().await;
}
