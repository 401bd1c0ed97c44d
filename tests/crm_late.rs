//! Late stage events never move a deal backwards: while the CRM is down a manager moves the
//! deal; the stage event queued meanwhile reads the deal first and is dropped (outbox status
//! `dropped`, `superseded: …`, counted), and the deal keeps the manager's stage. Stage events
//! queued behind one another for the same deal are coalesced: only the newest goes out.

mod common;
mod crm_fake;

use std::time::Duration;

use chrono::Utc;
use common::teltonika::{self, Drive};
use common::Api;
use crm_fake::config::{amocrm, bitrix24, seams};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

async fn outbox_all(api: &Api) -> Value {
    api.get("/api/v1/crm/outbox?status=all").await.1
}

/// Wait until no event is pending; the outbox then.
async fn settled(api: &Api) -> Value {
    for _ in 0..200 {
        let ob = outbox_all(api).await;
        if ob["counts"]["pending"] == 0 {
            return ob;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("events still pending: {}", outbox_all(api).await);
}

/// Wait until outbox event `id` has been tried and refused at least once (or already
/// dropped as superseded), so a test never races the first delivery attempt.
async fn failed_once(api: &Api, id: i64) {
    for _ in 0..200 {
        let ob = outbox_all(api).await;
        let tried = ob["events"].as_array().into_iter().flatten().any(|e| {
            e["id"] == id
                && (e["status"] == "dropped"
                    || (e["status"] == "pending" && e["attempts"].as_u64() >= Some(1)))
        });
        if tried {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("event {id} never failed: {}", outbox_all(api).await);
}

common::both_backends!(a_stage_event_held_by_an_outage_does_not_overwrite_the_managers_move);
async fn a_stage_event_held_by_an_outage_does_not_overwrite_the_managers_move() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = fleetgate::app::start_with(
        common::config(dir.path(), &amocrm(&amo.url, "", "")),
        seams(),
    )
    .await
    .unwrap();
    let api = Api::new(daemon.api_addr);
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-l",
            json!({ "status": "issued", "crm_deal_id": "8100", "driver_id": "drv-l" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // The CRM goes down; the driver asks to return; the event waits in the outbox.
    amo.fake.fail_next(&[503; 10_000]);
    let (st, r) = api
        .post("/api/v1/vehicles/car-l/return-request", json!({}))
        .await;
    assert_eq!((st, r["moved"].clone()), (202, json!(true)), "{r}");
    assert!(crm_fake::wait_for(10, || amo.fake.calls().len() >= 2).await);
    // Meanwhile, in a later second, a manager closes the deal as lost (status 143).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    amo.fake.manager_moves(8100, 7001, 143);
    let manager_at = amo.fake.leads.lock().unwrap()[&8100]["updated_at"].clone();

    // The CRM is back: the late event reads the lead first and is dropped.
    amo.fake.fail.lock().unwrap().clear();
    let ob = settled(&api).await;
    assert_eq!(ob["counts"]["dropped"], 1, "{ob}");
    let e = &ob["events"][0];
    assert_eq!(e["payload"]["stage"], "wants_to_return", "{e}");
    assert!(
        e["last_error"].as_str().unwrap().starts_with("superseded:"),
        "{e}"
    );
    let l = amo.fake.leads.lock().unwrap()[&8100].clone();
    assert_eq!(
        (l["status_id"].clone(), l["updated_at"].clone()),
        (json!(143), manager_at)
    );
    assert!(
        amo.fake.ok("PATCH").is_empty(),
        "nothing was written over the manager's move: {:?}",
        amo.fake.ok("PATCH")
    );
    assert!(
        amo.fake
            .ok("GET")
            .iter()
            .any(|c| c.path == "/api/v4/leads/8100"),
        "the lead was read first"
    );
    let (_, metrics) = api.text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fleetgate_crm_events_dropped_total")
                && l.contains("cause=\"superseded\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A late event whose deal nobody touched since still goes out.
    amo.fake.manager_moves(8200, 7001, 142_001);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    amo.fake.fail_next(&[503; 3]);
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-l",
            json!({ "status": "issued", "crm_deal_id": "8200", "driver_id": "drv-l" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, r) = api
        .post("/api/v1/vehicles/car-l/return-request", json!({}))
        .await;
    assert_eq!((st, r["moved"].clone()), (202, json!(true)), "{r}");
    assert!(
        crm_fake::wait_for(20, || amo
            .fake
            .leads
            .lock()
            .unwrap()
            .get(&8200)
            .is_some_and(|l| l["status_id"] == 142_002))
        .await,
        "{:?}",
        amo.fake.calls()
    );
    daemon.stop().await;
}

common::both_backends!(
    stage_events_queued_for_one_deal_are_coalesced_and_a_bitrix24_manager_move_wins
);
async fn stage_events_queued_for_one_deal_are_coalesced_and_a_bitrix24_manager_move_wins() {
    let bx = crm_fake::start("bitrix24").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = fleetgate::app::start_with(
        common::config(dir.path(), &bitrix24(&bx.url, "", "")),
        seams(),
    )
    .await
    .unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441401";
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-q",
            json!({ "device_id": imei, "protocol": "teltonika", "status": "issued",
                    "crm_deal_id": "9100", "driver_id": "drv-q" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut t = teltonika::login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;

    // The portal is down for the whole shift: on line, then a return request, both queued.
    bx.fake.fail_next(&[503; 10_000]);
    let mut drive = Drive::new(Utc::now() - chrono::Duration::hours(1));
    drive.go(400, 35.0, true).go(30, 0.0, true);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    let mut ob = json!(null);
    for _ in 0..100 {
        ob = outbox_all(&api).await;
        // The list and the counts are two reads: an event queued between them is counted
        // but not listed yet.
        if ob["counts"]["pending"] == 1 && ob["events"][0]["status"] == "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ob["events"][0]["payload"]["stage"], "on_line", "{ob}");
    // The on-line move has met the outage at least once before the driver asks to return.
    failed_once(&api, 1).await;
    let (st, _) = api
        .post("/api/v1/vehicles/car-q/return-request", json!({}))
        .await;
    assert_eq!(st, 202);
    // The return request has met it too: whatever batch was in flight when it was queued
    // has come back failed, so the portal comes back to a queue of two.
    failed_once(&api, 2).await;

    // Back up: only the newest stage goes out; the on-line move is coalesced away.
    bx.fake.fail.lock().unwrap().clear();
    let ob = settled(&api).await;
    assert_eq!(
        (
            ob["counts"]["dropped"].clone(),
            ob["counts"]["delivered"].clone()
        ),
        (json!(1), json!(1)),
        "{ob}"
    );
    let updates: Vec<Value> = bx
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("crm.deal.update") && c.status == 200)
        .map(|c| c.body["fields"]["STAGE_ID"].clone())
        .collect();
    assert_eq!(updates, vec![json!("C1:FINAL_INVOICE")]);

    // Down again; the next shift's on-line move waits while a manager moves the deal on.
    bx.fake.fail_next(&[503; 10_000]);
    let (st, v) = api
        .put("/api/v1/vehicles/car-q", json!({ "crm_deal_id": "9200" }))
        .await;
    assert_eq!(st, 200, "{v}");
    drive.go(400, 35.0, true).go(30, 0.0, true);
    for chunk in drive.take().chunks(50) {
        teltonika::send_records(&mut t, chunk).await;
    }
    let mut pending = json!(null);
    for _ in 0..100 {
        pending = api.get("/api/v1/crm/outbox?status=pending").await.1;
        if pending["counts"]["pending"] == 1 && pending["events"][0]["status"] == "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pending["events"][0]["payload"]["stage"], "on_line",
        "{pending}"
    );
    let id = pending["events"][0]["id"].as_i64().unwrap();
    failed_once(&api, id).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    bx.fake.manager_moves_deal("9200", "C1:LOSE");
    bx.fake.fail.lock().unwrap().clear();
    let ob = settled(&api).await;
    assert_eq!(ob["counts"]["dropped"], 2, "{ob}");
    assert_eq!(bx.fake.deals.lock().unwrap()["9200"]["STAGE_ID"], "C1:LOSE");
    daemon.stop().await;
}
