//! The outbox against in-test CRMs: outages (500, 429) and restarts lose nothing, every event
//! is applied once per idempotency key and in order per vehicle; TTL → dead letters visible
//! in the API; Bitrix24's QUERY_LIMIT_EXCEEDED and amoCRM's 7 requests/s are respected.

mod common;
mod crm_fake;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::Api;
use serde_json::{json, Value};

fn webhook_toml(url: &str, extra: &str) -> String {
    format!(
        r#"
[crm]
kind = "webhook"
url = "{url}/events"
secret = "webhook-secret-123"
backoff_initial_s = 0.05
backoff_max_s = 0.3
poll_ms = 50
{extra}
"#
    )
}

async fn register(api: &Api, id: &str, deal: &str, driver: &str) {
    let (st, v) = api
        .put(
            &format!("/api/v1/vehicles/{id}"),
            json!({ "crm_deal_id": deal, "driver_id": driver, "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// A return request, an inspection postponed three times, then completed: three events (the
/// car has no tracker, so its block is never confirmed and never shown on the deal).
async fn make_events(api: &Api, car: &str) {
    let (st, _) = api
        .post(&format!("/api/v1/vehicles/{car}/return-request"), json!({}))
        .await;
    assert_eq!(st, 202);
    let (st, v) = api
        .post(
            &format!("/api/v1/vehicles/{car}/inspection"),
            json!({ "due_date": "2030-01-01" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for _ in 0..3 {
        api.post(
            &format!("/api/v1/vehicles/{car}/inspection/postpone"),
            json!({}),
        )
        .await;
    }
    let (st, v) = api
        .post(
            &format!("/api/v1/vehicles/{car}/inspection/complete"),
            json!({ "odometer_km": 80000 }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

async fn outbox(api: &Api, query: &str) -> Value {
    let (st, v) = api.get(&format!("/api/v1/crm/outbox{query}")).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn wait_pending_zero(api: &Api, secs: u64) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let v = outbox(api, "?limit=1").await;
        if v["counts"]["pending"] == 0 || std::time::Instant::now() > until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn key(c: &crm_fake::Call) -> String {
    c.headers["idempotency-key"].to_str().unwrap().to_string()
}

common::both_backends!(crm_outage_then_every_event_once_per_key_in_order_per_vehicle);
async fn crm_outage_then_every_event_once_per_key_in_order_per_vehicle() {
    let hook = crm_fake::start("webhook").await;
    // The CRM is down, then rate-limits, then is down again.
    hook.fake
        .fail_next(&[500, 500, 500, 500, 500, 500, 429, 429, 429, 502, 500]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), &webhook_toml(&hook.url, "")).await;
    let api = Api::new(daemon.api_addr);
    let cars = ["car-1", "car-2", "car-3"];
    for (i, car) in cars.iter().enumerate() {
        register(&api, car, &format!("{}", 100 + i), &format!("drv-{i}")).await;
    }
    for car in cars {
        make_events(&api, car).await;
    }
    let v = wait_pending_zero(&api, 30).await;
    assert_eq!(v["counts"]["pending"], 0, "{v}");
    assert_eq!(v["counts"]["dead"], 0, "{v}");
    assert_eq!(v["counts"]["delivered"], 9, "{v}");

    let calls = hook.fake.calls();
    assert!(calls.iter().any(|c| c.status == 429), "the outage happened");
    let applied: Vec<_> = calls.iter().filter(|c| c.status == 200).collect();
    let keys: HashSet<String> = applied.iter().map(|c| key(c)).collect();
    assert_eq!(keys.len(), applied.len(), "each key applied once");
    assert_eq!(applied.len(), 9);
    assert!(
        calls.iter().all(|c| c.status != 208),
        "nothing was re-sent after success"
    );
    for c in &applied {
        assert_eq!(
            c.body["id"].as_str().unwrap(),
            key(c),
            "the body carries its key"
        );
        assert!(c.headers["x-fleetgate-signature"]
            .to_str()
            .unwrap()
            .starts_with("sha256="));
    }
    // Per vehicle, delivery order = creation order.
    for car in cars {
        let stored = outbox(&api, &format!("?vehicle={car}")).await;
        let mut created: Vec<String> = stored["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        created.reverse();
        let delivered: Vec<String> = applied
            .iter()
            .filter(|c| c.body["vehicle_id"] == car)
            .map(|c| key(c))
            .collect();
        assert_eq!(delivered, created, "{car}");
        let kinds: Vec<&str> = applied
            .iter()
            .filter(|c| c.body["vehicle_id"] == car)
            .map(|c| c.body["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["stage_changed", "driver_message", "mileage"]);
    }
    let (_, metrics) = api.text("/metrics").await;
    assert!(
        metrics.contains("fleetgate_crm_outbox_delivered_total"),
        "{metrics}"
    );
    assert!(metrics.contains("fleetgate_crm_outbox_retries_total"));
    daemon.stop().await;
}

common::both_backends!(undelivered_events_are_delivered_after_a_restart);
async fn undelivered_events_are_delivered_after_a_restart() {
    let hook = crm_fake::start("webhook").await;
    hook.fake.fail_next(&[503; 10_000]);
    let dir = tempfile::tempdir().unwrap();
    let toml = webhook_toml(&hook.url, "");
    let daemon = common::start(dir.path(), &toml).await;
    let api = Api::new(daemon.api_addr);
    register(&api, "car-1", "11", "drv-1").await;
    let (st, _) = api
        .post("/api/v1/vehicles/car-1/return-request", json!({}))
        .await;
    assert_eq!(st, 202);
    let (st, v) = api
        .put(
            "/api/v1/drivers/drv-1/balance",
            json!({ "balance_rub": 1200 }),
        )
        .await;
    assert_eq!((st, v["low"].clone()), (200, json!(true)), "{v}");
    assert!(
        crm_fake::wait_for(10, || hook.fake.calls().len() >= 2).await,
        "attempts were made"
    );
    let before = outbox(&api, "?status=pending").await;
    let pending: Vec<String> = before["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pending.len(), 2, "stage, driver message: {before}");
    daemon.stop().await;

    hook.fake.fail.lock().unwrap().clear();
    let daemon = common::start(dir.path(), &toml).await;
    let api = Api::new(daemon.api_addr);
    let v = wait_pending_zero(&api, 20).await;
    assert_eq!(v["counts"]["delivered"], 2, "{v}");
    let applied: Vec<String> = hook
        .fake
        .calls()
        .iter()
        .filter(|c| c.status == 200)
        .map(key)
        .collect();
    let mut expected = pending.clone();
    expected.reverse();
    assert_eq!(applied, expected, "the same events, once each, in order");
    daemon.stop().await;
}

common::both_backends!(expired_events_are_dead_letters_listed_and_retryable);
async fn expired_events_are_dead_letters_listed_and_retryable() {
    let hook = crm_fake::start("webhook").await;
    hook.fake.fail_next(&[500; 10_000]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), &webhook_toml(&hook.url, "event_ttl_s = 1")).await;
    let api = Api::new(daemon.api_addr);
    register(&api, "car-1", "11", "drv-1").await;
    api.post("/api/v1/vehicles/car-1/return-request", json!({}))
        .await;
    let mut dead = json!(null);
    for _ in 0..60 {
        dead = outbox(&api, "?status=dead").await;
        if dead["counts"]["dead"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead["counts"]["dead"], 1, "{dead}");
    let e = &dead["events"][0];
    assert_eq!(e["status"], "dead");
    assert!(e["last_error"].as_str().unwrap().contains("500"), "{e}");
    assert_eq!(e["payload"]["stage"], "wants_to_return");
    let (_, metrics) = api.text("/metrics").await;
    assert!(metrics.contains("fleetgate_crm_outbox_dead_total"));

    hook.fake.fail.lock().unwrap().clear();
    let id = e["id"].as_i64().unwrap();
    let (st, _) = api
        .post(&format!("/api/v1/crm/outbox/{id}/retry"), json!({}))
        .await;
    assert_eq!(st, 202);
    let v = wait_pending_zero(&api, 10).await;
    assert_eq!(
        (
            v["counts"]["delivered"].clone(),
            v["counts"]["dead"].clone()
        ),
        (json!(1), json!(0)),
        "{v}"
    );
    daemon.stop().await;
}

common::both_backends!(bitrix24_deal_update_waits_out_query_limit_exceeded);
async fn bitrix24_deal_update_waits_out_query_limit_exceeded() {
    let bx = crm_fake::start("bitrix24").await;
    bx.fake.fail_next(&[503, 503]);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[crm]
kind = "bitrix24"
webhook_url = "{}/rest/1/s3cr3t/"
backoff_initial_s = 0.05
poll_ms = 50
[crm.stages]
on_line = {{ stage_id = "C2:EXECUTING" }}
wants_to_return = {{ stage_id = "C2:RETURN" }}
"#,
        bx.url
    );
    let daemon = common::start(dir.path(), &toml).await;
    let api = Api::new(daemon.api_addr);
    register(&api, "car-5", "5151", "drv-5").await;
    api.post("/api/v1/vehicles/car-5/return-request", json!({}))
        .await;
    assert!(crm_fake::wait_for(10, || !bx.fake.ok("POST").is_empty()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = bx.fake.calls();
    let ok = bx.fake.ok("POST");
    assert_eq!(ok.len(), 1, "{calls:?}");
    assert_eq!(ok[0].path, "/rest/1/s3cr3t/crm.deal.update");
    assert_eq!(
        ok[0].body,
        json!({ "id": "5151", "fields": { "STAGE_ID": "C2:RETURN" } })
    );
    assert_eq!(calls.iter().filter(|c| c.status == 503).count(), 2);
    assert!(
        ok[0].at - calls[0].at >= Duration::from_millis(1900),
        "backed off ≥ 1 s after each QUERY_LIMIT_EXCEEDED"
    );
    daemon.stop().await;
}

common::both_backends!(amocrm_bulk_patches_at_most_50_and_stays_under_7_per_second);
async fn amocrm_bulk_patches_at_most_50_and_stays_under_7_per_second() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[crm]
kind = "amocrm"
base_url = "{}"
token = "amo-long-lived-token"
poll_ms = 50
[crm.stages]
on_line = {{ pipeline_id = 1, status_id = 10 }}
wants_to_return = {{ pipeline_id = 1, status_id = 20 }}
"#,
        amo.url
    );
    let daemon = common::start(dir.path(), &toml).await;
    let api = Api::new(daemon.api_addr);
    let n = 120;
    for i in 0..n {
        register(&api, &format!("car-{i}"), &format!("{}", 5000 + i), "drv").await;
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let api = Api::new(daemon.api_addr);
        tasks.push(tokio::spawn(async move {
            api.post(
                &format!("/api/v1/vehicles/car-{i}/return-request"),
                json!({}),
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 202);
    }
    let v = wait_pending_zero(&api, 30).await;
    assert_eq!(v["counts"]["delivered"], n, "{v}");
    let leads = amo.fake.leads.lock().unwrap().clone();
    let moved: HashMap<u64, Value> = leads
        .into_iter()
        .filter(|(_, l)| l["status_id"] == 20)
        .collect();
    assert_eq!(moved.len(), n as usize);
    let calls = amo.fake.calls();
    assert!(
        calls.iter().all(|c| c.status != 429),
        "never over 7 requests/s"
    );
    assert!(calls
        .iter()
        .all(|c| c.body.as_array().map_or(true, |a| a.len() <= 50)));
    assert!(
        calls.len() < n as usize,
        "batched: {} calls for {n} events",
        calls.len()
    );
    daemon.stop().await;
}
