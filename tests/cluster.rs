//! Two fleetgate instances on one PostgreSQL database (docs/scaling.md, "Several instances on
//! one PostgreSQL"): each CRM event is delivered once although both run the outbox worker,
//! and a tracker connected to one instance is blocked through the other's API.

mod common;
mod crm_fake;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::pg::PgSchema;
use common::Api;
use fleetgate::app::Running;
use serde_json::{json, Value};

async fn instance(schema: &PgSchema, name: &str, extra: &str) -> Running {
    common::start_with_storage(
        &schema.url,
        &format!(
            "[cluster]\ninstance_id = \"{name}\"\nheartbeat_s = 1\nsession_ttl_s = 30\npoll_ms = 200\n{extra}"
        ),
    )
    .await
}

/// Poll `f` every 100 ms until it returns `Some` or `secs` pass (generous: CI is loaded).
async fn wait_until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn webhook_toml(url: &str) -> String {
    format!(
        r#"
[crm]
kind = "webhook"
url = "{url}/events"
secret = "webhook-secret-123"
backoff_initial_s = 0.05
backoff_max_s = 0.2
poll_ms = 50
"#
    )
}

/// A return request, an inspection postponed three times, then completed (as in
/// tests/crm_outbox.rs): several events per car.
async fn make_events(api: &Api, car: &str) {
    let (st, v) = api
        .put(
            &format!("/api/v1/vehicles/{car}"),
            json!({ "crm_deal_id": format!("deal-{car}"), "driver_id": format!("drv-{car}"), "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = crm_fake::post(
        api,
        &format!("/api/v1/vehicles/{car}/return-request"),
        json!({}),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let (st, v) = crm_fake::post(
        api,
        &format!("/api/v1/vehicles/{car}/inspection"),
        json!({ "due_date": "2030-01-01" }),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for _ in 0..3 {
        let (st, v) = crm_fake::post(
            api,
            &format!("/api/v1/vehicles/{car}/inspection/postpone"),
            json!({}),
        )
        .await;
        assert!((200..300).contains(&st), "{v}");
    }
    let (st, v) = crm_fake::post(
        api,
        &format!("/api/v1/vehicles/{car}/inspection/complete"),
        json!({ "odometer_km": 80000 }),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

/// Every event of the outbox (both instances see the same table).
async fn outbox_events(api: &Api) -> Vec<Value> {
    let (st, v) = api.get("/api/v1/crm/outbox?status=all&limit=1000").await;
    assert_eq!(st, 200, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_crm_event_once_and_in_order_per_vehicle() {
    let schema = PgSchema::create().await;
    // The CRM is unreachable while the events are made: both workers retry every head, so
    // when it comes up they race for the same rows — only the claim keeps them apart.
    let crm_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = webhook_toml(&format!("http://{crm_addr}"));
    let a = instance(&schema, "fg-a", &toml).await;
    let b = instance(&schema, "fg-b", &toml).await;
    let (api_a, api_b) = (Api::new(a.api_addr), Api::new(b.api_addr));
    let cars: Vec<String> = (0..6).map(|i| format!("car-{i}")).collect();
    for (i, car) in cars.iter().enumerate() {
        make_events(if i % 2 == 0 { &api_a } else { &api_b }, car).await;
    }
    let events = outbox_events(&api_a).await;
    assert!(events.len() >= cars.len() * 3, "events made: {events:?}");
    // Both workers have failed at least once on each car's head by now.
    wait_until(60, "failed attempts on every head", || {
        let api = &api_b;
        async move {
            let evs = outbox_events(api).await;
            let heads_tried = evs
                .iter()
                .filter(|e| e["attempts"].as_u64().unwrap_or(0) >= 2)
                .count();
            (heads_tried >= 3).then_some(())
        }
    })
    .await;

    let hook = crm_fake::start_on("webhook", crm_addr).await;
    let total = events.len();
    wait_until(120, "every event delivered", || {
        let api = &api_a;
        async move {
            let evs = outbox_events(api).await;
            evs.iter().all(|e| e["status"] == "delivered").then_some(())
        }
    })
    .await;
    // Give a duplicate that is still on its way the time to arrive.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let key_id: HashMap<String, (i64, String)> = outbox_events(&api_b)
        .await
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                (
                    e["id"].as_i64().unwrap(),
                    e["vehicle_id"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(key_id.len(), total);
    let calls = hook.fake.calls();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    let mut per_car: HashMap<String, Vec<i64>> = HashMap::new();
    for c in &calls {
        let key = c.headers["idempotency-key"].to_str().unwrap().to_string();
        *per_key.entry(key.clone()).or_default() += 1;
        let (id, car) = key_id.get(&key).expect("a key of ours").clone();
        per_car.entry(car).or_default().push(id);
    }
    let dup: Vec<_> = per_key.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dup.is_empty(), "delivered more than once: {dup:?}");
    assert_eq!(per_key.len(), total, "every event delivered");
    assert!(
        calls.iter().all(|c| c.status == 200),
        "no call refused or seen twice"
    );
    for (car, ids) in per_car {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{car}: events in outbox order");
    }
    a.stop().await;
    b.stop().await;
}
