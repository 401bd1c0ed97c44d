//! Two fleetgate instances on one PostgreSQL database (docs/scaling.md, "Several instances on
//! one PostgreSQL"): each CRM event is delivered once although both run the outbox worker,
//! and a tracker connected to one instance is blocked through the other's API.

mod common;
mod crm_fake;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::pg::PgSchema;
use common::teltonika::{login, read_command, rec, send_records};
use common::Api;
use fleetgate::app::Running;
use fleetgate::protocols::teltonika::{encode_codec12_response, io, AvlRecord};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};
use sqlx::Connection;

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
    let (st, v) = api
        .post(&format!("/api/v1/vehicles/{car}/return-request"), json!({}))
        .await;
    assert_eq!(st, 202, "{v}");
    let (st, v) = api
        .post(
            &format!("/api/v1/vehicles/{car}/inspection"),
            json!({ "due_date": "2030-01-01" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for _ in 0..3 {
        let (st, v) = api
            .post(
                &format!("/api/v1/vehicles/{car}/inspection/postpone"),
                json!({}),
            )
            .await;
        assert!((200..300).contains(&st), "{v}");
    }
    let (st, v) = api
        .post(
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
    // The CRM is down while the events are made (its port closes every connection at once):
    // both workers retry every head, so when it comes up they race for the same rows — only
    // the claim keeps them apart. The port stays held throughout: a port merely released
    // could be taken by another test's listener that accepts and never answers.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let crm_addr = down.local_addr().unwrap();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
    let refusing = tokio::spawn(async move {
        let mut up_rx = up_rx;
        loop {
            tokio::select! {
                _ = &mut up_rx => return down,
                c = down.accept() => drop(c),
            }
        }
    });
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

    let _ = up_tx.send(());
    let hook = crm_fake::start_with("webhook", refusing.await.unwrap()).await;
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

// ---- cross-instance block ----------------------------------------------------------------

const IMMOB: &str = "[immobiliser]\nsafe_for = 10\nmax_block_speed_kmh = 5\nallow_force = true\n";

/// The instance `device_sessions` says holds the device's connection.
async fn holder(schema: &PgSchema, device: &str) -> Option<String> {
    let mut c = sqlx::PgConnection::connect(&schema.url).await.ok()?;
    let h: Option<String> =
        sqlx::query_scalar("SELECT instance_id FROM device_sessions WHERE device_id = $1")
            .bind(device)
            .fetch_optional(&mut c)
            .await
            .ok()?;
    let _ = c.close().await;
    h
}

async fn wait_state(api: &Api, id: &str, state: &str) -> Value {
    wait_until(60, &format!("{id} {state}"), || async move {
        let (_, v) = api.get(&format!("/api/v1/vehicles/{id}")).await;
        (v["immobiliser"]["state"] == state).then_some(v)
    })
    .await
}

async fn wait_command(api: &Api, id: i64, status: &str) -> Value {
    wait_until(60, &format!("command {id} {status}"), || async move {
        let (_, c) = api.get(&format!("/api/v1/commands/{id}")).await;
        (c["status"] == status).then_some(c)
    })
    .await
}

async fn commands(api: &Api, id: &str) -> Vec<Value> {
    let (s, c) = api.get(&format!("/api/v1/vehicles/{id}/commands")).await;
    assert_eq!(s, 200, "{c}");
    c.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_on_b_is_blocked_and_unblocked_through_the_api_of_a() {
    let schema = PgSchema::create().await;
    let a = instance(&schema, "fg-a", IMMOB).await;
    let b = instance(&schema, "fg-b", IMMOB).await;
    let (api_a, api_b) = (Api::new(a.api_addr), Api::new(b.api_addr));
    let imei = "356307042441201";
    let mut t = login(b.addr(Protocol::Teltonika, Transport::Tcp).unwrap(), imei).await;
    // Parked: ignition off, standing still — safe to block at once.
    send_records(
        &mut t,
        &[
            rec(30, 0, false, Some(false)),
            rec(25, 0, false, Some(false)),
            rec(20, 0, false, Some(false)),
        ],
    )
    .await;
    wait_until(60, "B recorded as holding the tracker", || {
        let schema = &schema;
        async move { (holder(schema, imei).await.as_deref() == Some("fg-b")).then_some(()) }
    })
    .await;

    // A lost row (a write that failed) comes back with B's next heartbeat.
    let mut db = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    sqlx::query("DELETE FROM device_sessions")
        .execute(&mut db)
        .await
        .unwrap();
    let _ = db.close().await;
    wait_until(60, "B's heartbeat restoring the session", || {
        let schema = &schema;
        async move { (holder(schema, imei).await.as_deref() == Some("fg-b")).then_some(()) }
    })
    .await;

    let (s, v) = api_a
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "manual", "comment": "debt"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["immobiliser"]["state"], "blocking",
        "B ran the machine: {v}"
    );
    assert_eq!(read_command(&mut t).await, "setdigout 1", "on B's socket");
    t.send(&encode_codec12_response(
        b"DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;

    let v = wait_state(&api_a, imei, "blocked").await;
    assert_eq!(v["immobiliser"]["reasons"], json!(["manual"]), "{v}");
    let cmds = commands(&api_a, imei).await;
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(cmds[0]["intent"], "block");
    let id = cmds[0]["id"].as_i64().unwrap();
    let c = wait_command(&api_a, id, "acknowledged").await;
    assert_eq!(c["response"], "DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED", "{c}");
    // B's API agrees, and the audit (one table) explains it from either side.
    wait_state(&api_b, imei, "blocked").await;
    let (s, audit) = api_a.get(&format!("/api/v1/audit?vehicle={imei}")).await;
    assert_eq!(s, 200, "{audit}");
    let events: Vec<&str> = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .map(|a| a.iter().filter_map(|e| e["event"].as_str()).collect())
        .unwrap_or_default();
    for e in [
        "reason_added",
        "command_queued",
        "command_sent",
        "command_acknowledged",
    ] {
        assert!(events.contains(&e), "{e} in the audit: {audit}");
    }

    // Telemetry on B confirms; the unblock through A goes out on B's socket too.
    let mut on = rec(1, 0, false, Some(false));
    on.io = vec![(io::IGNITION, 1, 0), (io::DOUT1, 1, 1)];
    send_records(&mut t, &[on]).await;
    wait_command(&api_a, id, "confirmed").await;
    let (s, v) = api_a
        .post(
            &format!("/api/v1/vehicles/{imei}/unblock"),
            json!({"reason": "manual"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["immobiliser"]["state"], "unblocking", "{v}");
    assert_eq!(read_command(&mut t).await, "setdigout 0");
    t.send(&encode_codec12_response(
        b"DOUT1:0 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_state(&api_a, imei, "running").await;
    let cmds = commands(&api_a, imei).await;
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert_ne!(cmds[0]["id"], cmds[1]["id"]);
    assert_eq!(cmds[0]["intent"], "unblock");

    // The tracker leaves B: its session is cleared.
    drop(t);
    wait_until(60, "session cleared", || {
        let schema = &schema;
        async move { holder(schema, imei).await.is_none().then_some(()) }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A vehicle whose tracker is connected nowhere is decided where the request arrives and
/// stored; the instance the tracker then connects to takes it over and sends the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_block_requested_while_offline_is_sent_by_the_instance_the_tracker_joins() {
    let schema = PgSchema::create().await;
    let a = instance(&schema, "fg-a", IMMOB).await;
    let b = instance(&schema, "fg-b", IMMOB).await;
    let (api_a, api_b) = (Api::new(a.api_addr), Api::new(b.api_addr));
    let imei = "356307042441202";
    let (s, v) = api_a
        .put(
            &format!("/api/v1/vehicles/{imei}"),
            json!({"device_id": imei, "protocol": "teltonika"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api_a
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "manual", "force": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["immobiliser"]["state"], "blocking", "{v}");
    let cmds = commands(&api_b, imei).await;
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(cmds[0]["status"], "queued");
    let id = cmds[0]["id"].as_i64().unwrap();

    // The tracker turns up on B (moving: the block was forced).
    let mut t = login(b.addr(Protocol::Teltonika, Transport::Tcp).unwrap(), imei).await;
    send_records(&mut t, &[rec(5, 40, true, Some(false))]).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    t.send(&encode_codec12_response(
        b"DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_command(&api_a, id, "acknowledged").await;
    wait_state(&api_a, imei, "blocked").await;
    drop(t);
    a.stop().await;
    b.stop().await;
}

/// A session row of an instance that stopped renewing it is ignored (the request is decided
/// locally); a live-looking owner that never answers makes the API fail clearly, not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_owner_is_ignored_and_a_silent_owner_times_out() {
    let schema = PgSchema::create().await;
    let a = common::start_with_storage(
        &schema.url,
        &format!("{IMMOB}[cluster]\ninstance_id = \"fg-a\"\nforward_timeout_s = 2\n"),
    )
    .await;
    let api = Api::new(a.api_addr);
    let mut db = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    for (car, owner, age_ms) in [
        ("car-dead", "fg-dead", 120_000i64),
        ("car-silent", "fg-silent", 0),
    ] {
        let (s, v) = api
            .put(
                &format!("/api/v1/vehicles/{car}"),
                json!({"device_id": format!("dev-{car}")}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        sqlx::query(
            "INSERT INTO device_sessions (device_id, instance_id, conn, connected_at, heartbeat_at) \
             VALUES ($1, $2, 1, $3, $3)",
        )
        .bind(format!("dev-{car}"))
        .bind(owner)
        .bind(Utc::now().timestamp_millis() - age_ms)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let (s, v) = api
        .post(
            "/api/v1/vehicles/car-dead/block",
            json!({"reason": "manual", "force": true}),
        )
        .await;
    assert_eq!(s, 200, "decided here: {v}");
    assert_eq!(v["immobiliser"]["state"], "blocking", "{v}");

    // fg-silent keeps a fresh heartbeat but serves nothing.
    let keep_alive = {
        let url = schema.url.clone();
        tokio::spawn(async move {
            let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
            loop {
                let _ = sqlx::query(
                    "UPDATE device_sessions SET heartbeat_at = $1 WHERE instance_id = 'fg-silent'",
                )
                .bind(Utc::now().timestamp_millis())
                .execute(&mut db)
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let started = Instant::now();
    let (s, v) = api
        .post(
            "/api/v1/vehicles/car-silent/block",
            json!({"reason": "manual", "force": true}),
        )
        .await;
    keep_alive.abort();
    assert_eq!(s, 503, "{v}");
    assert!(
        v.to_string().contains("fg-silent"),
        "names the instance: {v}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited forward_timeout_s"
    );
    let req: Option<i64> =
        sqlx::query_scalar("SELECT done_at FROM cluster_requests WHERE instance_id = 'fg-silent'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(
        req.is_some(),
        "the abandoned request is closed, fg-silent will not act on it"
    );
    assert!(
        common::metric(
            &api,
            "fleetgate_cluster_forwarded_total",
            &[("outcome", "timeout")]
        )
        .await
            >= 1.0,
        "the timeout is counted"
    );
    let _ = db.close().await;
    a.stop().await;
}

/// The CRM rules on each instance re-read a vehicle's stored state before deciding: a
/// return requested through A is known to B, which does not move the deal a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_requested_through_one_instance_is_known_to_the_other() {
    let schema = PgSchema::create().await;
    let hook = crm_fake::start("webhook").await;
    let toml = webhook_toml(&hook.url);
    let a = instance(&schema, "fg-a", &toml).await;
    let b = instance(&schema, "fg-b", &toml).await;
    let (api_a, api_b) = (Api::new(a.api_addr), Api::new(b.api_addr));
    let (st, v) = api_a
        .put(
            "/api/v1/vehicles/car-r",
            json!({ "crm_deal_id": "deal-r", "driver_id": "drv-r", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let path = "/api/v1/vehicles/car-r/return-request";
    let (st, first) = api_a.post(path, json!({})).await;
    assert_eq!(st, 202, "{first}");
    assert_eq!(first["moved"], true, "{first}");
    let (st, second) = api_b.post(path, json!({})).await;
    assert_eq!(st, 202, "{second}");
    assert_eq!(second["moved"], false, "B knows the return: {second}");
    let returns: Vec<Value> = outbox_events(&api_b)
        .await
        .into_iter()
        .filter(|e| e["payload"]["stage"] == "wants_to_return")
        .collect();
    assert_eq!(returns.len(), 1, "one stage change: {returns:?}");
    a.stop().await;
    b.stop().await;
}

/// On a shared database the rules re-read the stored state before each batch (merging the
/// drive in progress, which is not stored on every fix): a car driving for four minutes in
/// several packets goes on line exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_line_detection_spans_packets_on_a_shared_database() {
    let schema = PgSchema::create().await;
    let hook = crm_fake::start("webhook").await;
    let toml = webhook_toml(&hook.url);
    let a = instance(&schema, "fg-a", &toml).await;
    let b = instance(&schema, "fg-b", &toml).await;
    let api_a = Api::new(a.api_addr);
    let imei = "356307042441203";
    let (st, v) = api_a
        .put(
            &format!("/api/v1/vehicles/{imei}"),
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "deal-d",
                    "driver_id": "drv-d", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut t = login(b.addr(Protocol::Teltonika, Transport::Tcp).unwrap(), imei).await;
    // 0 … 230 s of driving at 40 km/h (111 m every 10 s), ignition on, eight packets of three
    // fixes: 3 minutes of movement and 1 km are reached only across packets.
    for packet in 0..8 {
        let recs: Vec<AvlRecord> = (0..3)
            .map(|i| {
                let s = packet * 30 + i * 10;
                let mut r = rec(250 - s, 40, true, Some(false));
                r.lat += s as f64 * 0.0001;
                r
            })
            .collect();
        send_records(&mut t, &recs).await;
    }
    let on_line = wait_until(60, "on line", || {
        let api = &api_a;
        async move {
            let evs: Vec<Value> = outbox_events(api)
                .await
                .into_iter()
                .filter(|e| e["payload"]["stage"] == "on_line")
                .collect();
            (!evs.is_empty()).then_some(evs)
        }
    })
    .await;
    assert_eq!(on_line.len(), 1, "{on_line:?}");
    drop(t);
    a.stop().await;
    b.stop().await;
}
