//! The CRM drives fleetgate through its own webhooks, no middleware. A fake amoCRM and a fake
//! Bitrix24 answer fleetgate's calls as the real APIs do; the test plays the CRM's webhook
//! sender with the real bodies (form-encoded, bracketed keys, no Authorization header):
//! a manager's stage move blocks a parked car (the engine command reaches the tracker) and
//! moving it back unblocks it; "Возврат" produces one return however often it is delivered; a
//! duplicated webhook acts once; a wrong secret or token is refused (403) and counted; a
//! balance typed into the deal sets the driver's balance; Bitrix24's event carries only the
//! deal id, so the deal is read back (`3000|RUB` read as 3,000 ₽).

mod common;
mod crm_fake;

use std::time::Duration;

use common::teltonika::{login, parked, read_command, send_records};
use common::Api;
use crm_fake::config::{amocrm, bitrix24, IMMOBILISER};
use fleetgate::protocols::teltonika::encode_codec12_response;
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

const SECRET: &str = "amo-inbound-0123456789";
const BX_TOKEN: &str = "bx-app-token-abcdef";

fn amo_config(amo_url: &str) -> String {
    let sections = format!(
        "[crm.fields]\nbalance_field_id = 504\n[crm.inbound]\nsecret = \"{SECRET}\"\n\
         [crm.inbound.stages]\nblock = {{ pipeline_id = 7001, status_id = 142005 }}\n\
         return = {{ pipeline_id = 7001, status_id = 142009 }}\n"
    );
    format!("{IMMOBILISER}{}", amocrm(amo_url, "", &sections))
}

fn bitrix_config(url: &str) -> String {
    let sections = format!(
        "[crm.fields]\nbalance_field_code = \"UF_CRM_BALANCE\"\n\
         [crm.inbound]\napplication_token = \"{BX_TOKEN}\"\n\
         [crm.inbound.stages]\nblock = {{ stage_id = \"C1:BLOCK\" }}\n"
    );
    format!("{IMMOBILISER}{}", bitrix24(url, "", &sections))
}

/// POST a form body as the CRM does: `application/x-www-form-urlencoded`, no bearer token.
async fn webhook(api: &Api, path: &str, pairs: &[(&str, String)]) -> (u16, Value) {
    let body: String = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let r = api
        .client
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// amoCRM's status-change webhook for one lead.
fn amo_status(lead: u64, status: u64, old: u64, user: u64) -> Vec<(&'static str, String)> {
    vec![
        ("leads[status][0][id]", lead.to_string()),
        ("leads[status][0][status_id]", status.to_string()),
        ("leads[status][0][pipeline_id]", "7001".into()),
        ("leads[status][0][old_status_id]", old.to_string()),
        ("leads[status][0][old_pipeline_id]", "7001".into()),
        ("leads[status][0][modified_user_id]", user.to_string()),
        ("account[id]", "29000000".into()),
        ("account[subdomain]", "taxipark".into()),
    ]
}

async fn reasons(api: &Api, id: &str) -> Value {
    api.get(&format!("/api/v1/vehicles/{id}")).await.1["immobiliser"]["reason_details"].clone()
}

async fn wait_for<F: Fn(&Value) -> bool>(api: &Api, id: &str, what: &str, f: F) -> Value {
    common::wait_vehicle(api, id, what, f).await
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

common::both_backends!(an_amocrm_manager_blocks_unblocks_and_takes_a_car_back_from_inside_the_crm);
async fn an_amocrm_manager_blocks_unblocks_and_takes_a_car_back_from_inside_the_crm() {
    let _metrics = common::metric_lock("fleetgate_crm_inbound_total").await;
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), &amo_config(&amo.url)).await;
    let api = Api::new(daemon.api_addr);
    // Counters are per process: this test's own are what it adds (the lock above keeps
    // the other backend's variant out meanwhile).
    let (_, before) = api.text("/metrics").await;
    let imei = "356307042441501";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-51",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "5100",
                    "driver_id": "drv-51", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    send_records(&mut t, &parked(30, Some(false))).await;
    let inbound = format!("/api/v1/crm/inbound/amocrm/{SECRET}");

    // A wrong secret: 403, counted, nothing done.
    let (s, e) = webhook(
        &api,
        "/api/v1/crm/inbound/amocrm/not-the-secret-000000",
        &amo_status(5100, 142005, 142001, 555),
    )
    .await;
    assert_eq!(s, 403, "{e}");

    // The manager drags the deal to "Блокировка": the car is parked, the block goes out.
    let block = amo_status(5100, 142005, 142001, 555);
    let (s, r) = webhook(&api, &inbound, &block).await;
    assert_eq!((s, r["outcome"].clone()), (200, json!("accepted")), "{r}");
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    t.send(&encode_codec12_response(b"DOUT1:1")).await;
    let v = wait_for(&api, "car-51", "blocked", |v| {
        v["immobiliser"]["state"] == "blocked"
    })
    .await;
    let why = &v["immobiliser"]["reason_details"][0];
    assert_eq!(why["reason"], "crm_manual", "{v}");
    assert_eq!(
        why["actor"], "amocrm:user:555",
        "the audit names the CRM user: {v}"
    );
    // amoCRM delivers the same webhook again (it thought the first failed): acted once.
    let (s, r) = webhook(&api, &inbound, &block).await;
    assert_eq!((s, r["outcome"].clone()), (200, json!("duplicate")), "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.read_for(300).await.is_empty(), "no second command");
    let (_, audit) = api.get("/api/v1/audit?vehicle=car-51").await;
    let added = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["event"] == "reason_added" && a["reason"] == "crm_manual")
        .count();
    assert_eq!(added, 1, "{audit}");

    // Moved back to "На линии": the CRM's block is lifted; the engine is released.
    let (s, _) = webhook(&api, &inbound, &amo_status(5100, 142001, 142005, 555)).await;
    assert_eq!(s, 200);
    assert_eq!(read_command(&mut t).await, "setdigout 0");
    t.send(&encode_codec12_response(b"DOUT1:0")).await;
    wait_for(&api, "car-51", "running", |v| {
        v["immobiliser"]["state"] == "running"
    })
    .await;
    assert_eq!(reasons(&api, "car-51").await, json!([]));

    // "Возврат": one return request, however many times the webhook comes.
    let ret = amo_status(5100, 142009, 142001, 556);
    for _ in 0..3 {
        let (s, _) = webhook(&api, &inbound, &ret).await;
        assert_eq!(s, 200);
    }
    for _ in 0..100 {
        let events = api.get("/api/v1/crm/outbox?status=all").await.1;
        let n = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["payload"]["stage"] == "wants_to_return")
            .count();
        if n >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = api.get("/api/v1/crm/outbox?status=all").await.1;
    let returns: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["payload"]["stage"] == "wants_to_return")
        .collect();
    assert_eq!(returns.len(), 1, "{events}");

    // A balance typed into the deal ("3 000"): the driver's balance; under 5,000 ₽ it blocks.
    let (s, _) = webhook(
        &api,
        &inbound,
        &[
            ("leads[update][0][id]", "5100".into()),
            (
                "leads[update][0][updated_at]",
                chrono::Utc::now().timestamp().to_string(),
            ),
            ("leads[update][0][custom_fields][0][id]", "504".into()),
            ("leads[update][0][custom_fields][0][name]", "Баланс".into()),
            (
                "leads[update][0][custom_fields][0][values][0][value]",
                "3 000".into(),
            ),
        ],
    )
    .await;
    assert_eq!(s, 200);
    wait_for(&api, "car-51", "low_balance", |v| {
        v["immobiliser"]["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "low_balance"))
    })
    .await;

    // A deal no car is linked to: acknowledged (no retry loop for the CRM), counted, ignored.
    let (s, r) = webhook(&api, &inbound, &amo_status(999_999, 142005, 142001, 1)).await;
    assert_eq!((s, r["outcome"].clone()), (200, json!("accepted")));
    // Not a form body at all: 400.
    let r = api
        .client
        .post(format!("{}{inbound}", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("leads[status=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, m) = api.text("/metrics").await;
    // Metrics are per process and the Bitrix24 test runs beside this one: amoCRM's only.
    let c = |labels: &[&str]| {
        let mut l = vec!["crm=\"amocrm\""];
        l.extend_from_slice(labels);
        metric(&m, "fleetgate_crm_inbound_total", &l)
            - metric(&before, "fleetgate_crm_inbound_total", &l)
    };
    let unknown_deal = ["crm=\"amocrm\"", "action=\"deal\"", "outcome=\"unknown\""];
    assert_eq!(c(&["outcome=\"refused\""]), 1.0, "{m}");
    assert_eq!(
        c(&["outcome=\"duplicate\""]),
        3.0,
        "block again + return twice: {m}"
    );
    assert_eq!(c(&["outcome=\"bad_request\""]), 1.0);
    assert_eq!(
        metric(&m, "fleetgate_crm_inbound_actions_total", &unknown_deal)
            - metric(
                &before,
                "fleetgate_crm_inbound_actions_total",
                &unknown_deal
            ),
        1.0
    );
    // The CRM secret is not a bearer token, and the bearer-protected API is not reachable
    // through the inbound path.
    let (s, _) = webhook(&api, "/api/v1/crm/inbound/amocrm/", &block).await;
    assert_eq!(s, 404);
    daemon.stop().await;
}

common::both_backends!(a_bitrix24_event_names_only_the_deal_so_it_is_read_back_and_acted_on);
async fn a_bitrix24_event_names_only_the_deal_so_it_is_read_back_and_acted_on() {
    let bx = crm_fake::start("bitrix24").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), &bitrix_config(&bx.url)).await;
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441601";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-61",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "6100",
                    "driver_id": "drv-61", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    send_records(&mut t, &parked(30, Some(false))).await;
    // In the portal a manager moves the deal to "Блокировка" and types the balance.
    bx.fake.manager_moves_deal("6100", "C1:BLOCK");
    {
        let mut deals = bx.fake.deals.lock().unwrap();
        let d = deals.get_mut("6100").unwrap();
        d["UF_CRM_BALANCE"] = json!("3000|RUB");
        d["MODIFY_BY_ID"] = json!("7");
    }
    let event = |token: &str| {
        vec![
            ("event", "ONCRMDEALUPDATE".to_string()),
            ("data[FIELDS][ID]", "6100".into()),
            ("ts", "1796630000".into()),
            ("auth[domain]", "taxipark.bitrix24.ru".into()),
            (
                "auth[client_endpoint]",
                "https://taxipark.bitrix24.ru/rest/".into(),
            ),
            ("auth[member_id]", "a1b2c3".into()),
            ("auth[application_token]", token.to_string()),
        ]
    };
    let (s, e) = webhook(
        &api,
        "/api/v1/crm/inbound/bitrix24",
        &event("wrong-token-xyz"),
    )
    .await;
    assert_eq!(s, 403, "{e}");
    let (s, r) = webhook(&api, "/api/v1/crm/inbound/bitrix24", &event(BX_TOKEN)).await;
    assert_eq!((s, r["outcome"].clone()), (200, json!("accepted")), "{r}");
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    t.send(&encode_codec12_response(b"DOUT1:1")).await;
    let v = wait_for(&api, "car-61", "blocked with both reasons", |v| {
        v["immobiliser"]["state"] == "blocked"
            && v["immobiliser"]["reasons"]
                .as_array()
                .is_some_and(|r| r.len() == 2)
    })
    .await;
    assert_eq!(
        v["immobiliser"]["reasons"],
        json!(["crm_manual", "low_balance"]),
        "{v}"
    );
    let crm_reason = v["immobiliser"]["reason_details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "crm_manual")
        .unwrap()
        .clone();
    assert_eq!(crm_reason["actor"], "bitrix24:user:7");
    let (_, bal) = api
        .put(
            "/api/v1/drivers/drv-61/balance",
            json!({ "balance_rub": 3000, "as_of": "2000-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(bal["balance_rub"], 3000.0, "the portal's 3000|RUB: {bal}");
    assert!(
        bx.fake
            .calls()
            .iter()
            .any(|c| c.path.ends_with("crm.deal.get") && c.body["id"] == "6100"),
        "the deal was read back"
    );
    daemon.stop().await;
}

/// 1,500 drivers' balances read in a handful of requests: amoCRM `GET /api/v4/leads?filter[id][]`
/// (250 a page), Bitrix24 `batch` of `crm.deal.list` (50 commands × 50 deals), answered by the
/// fakes as the real APIs do; every driver gets their own deal's balance back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_drivers_balances_cost_a_handful_of_requests_on_both_crms() {
    use fleetgate::crm::connector::{self, BalanceQuery};
    let qs: Vec<BalanceQuery> = (0..1500u64)
        .map(|i| BalanceQuery {
            driver_id: format!("drv-{i}"),
            vehicle_id: format!("car-{i}"),
            deal_id: Some((100_000 + i).to_string()),
        })
        .collect();

    let amo = crm_fake::start("amocrm").await;
    for i in 0..1500u64 {
        amo.fake
            .set_field(100_000 + i, 504, json!(format!("{} 000,00", i % 20)));
    }
    let cfg = fleetgate::config::Config::from_toml_with_env(&amo_config(&amo.url), "t", Vec::new())
        .unwrap();
    let c = connector::build(
        &cfg.crm,
        std::sync::Arc::new(fleetgate::crm::memory::MemoryCrmStore::default()),
    )
    .unwrap()
    .unwrap();
    let before = amo.fake.calls().len();
    let got = c.balances(&qs).await;
    let requests = amo.fake.calls().len() - before;
    assert!(requests <= 10, "{requests} requests for 1,500 balances");
    for (i, r) in got.iter().enumerate() {
        let b = r.as_ref().unwrap_or_else(|e| panic!("drv-{i}: {e}"));
        assert_eq!(b.rub, ((i % 20) * 1000) as f64, "drv-{i}");
    }

    let bx = crm_fake::start("bitrix24").await;
    for i in 0..1500u64 {
        let id = (100_000 + i).to_string();
        bx.fake.manager_moves_deal(&id, "C1:EXECUTING");
        bx.fake.deals.lock().unwrap().get_mut(&id).unwrap()["UF_CRM_BALANCE"] =
            json!(format!("{}|RUB", i * 10));
    }
    let cfg =
        fleetgate::config::Config::from_toml_with_env(&bitrix_config(&bx.url), "t", Vec::new())
            .unwrap();
    let c = connector::build(
        &cfg.crm,
        std::sync::Arc::new(fleetgate::crm::memory::MemoryCrmStore::default()),
    )
    .unwrap()
    .unwrap();
    let before = bx.fake.calls().len();
    let mut missing = qs.clone();
    missing.push(BalanceQuery {
        driver_id: "drv-x".into(),
        vehicle_id: "car-x".into(),
        deal_id: Some("no-such-deal".into()),
    });
    let got = c.balances(&missing).await;
    let requests = bx.fake.calls().len() - before;
    assert!(requests <= 10, "{requests} requests for 1,500 balances");
    for (i, r) in got.iter().take(1500).enumerate() {
        let b = r.as_ref().unwrap_or_else(|e| panic!("drv-{i}: {e}"));
        assert_eq!(b.rub, (i * 10) as f64, "drv-{i}");
        assert!(b.as_of.is_some());
    }
    assert!(
        got[1500].is_err(),
        "a deal the portal does not have is an error, not 0 ₽"
    );
}

common::both_backends!(
    a_refused_token_pauses_the_whole_connector_and_delivery_resumes_when_it_works
);
/// The CRM refuses fleetgate's token (revoked by an admin): not a per-event failure. The whole
/// connector pauses `auth_pause_s` between tries instead of hammering the CRM at the retry
/// backoff, `fleetgate_crm_auth_failed` says so, and once the token works again the queued
/// event goes out by itself.
async fn a_refused_token_pauses_the_whole_connector_and_delivery_resumes_when_it_works() {
    let _metrics = common::metric_lock("fleetgate_crm_auth_failed").await;
    let amo = crm_fake::start("amocrm").await;
    *amo.fake.token.lock().unwrap() = "the-token-was-revoked".into();
    let dir = tempfile::tempdir().unwrap();
    let cfg = amo_config(&amo.url).replace("poll_ms = 50", "poll_ms = 50\nauth_pause_s = 2");
    let daemon = common::start(dir.path(), &cfg).await;
    let api = Api::new(daemon.api_addr);
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-71",
            json!({ "crm_deal_id": "7100", "driver_id": "drv-71", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api
        .post("/api/v1/vehicles/car-71/return-request", json!({}))
        .await;
    assert_eq!(s, 202);
    assert!(crm_fake::wait_for(10, || !amo.fake.calls().is_empty()).await);
    let first = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let refused = amo.fake.calls().iter().filter(|c| c.status == 401).count();
    // At the event's own backoff (0.05–0.5 s) that would be 10 or more requests.
    assert!(
        (1..=4).contains(&refused),
        "{refused} refused requests in {:?}",
        first.elapsed()
    );
    let (_, m) = api.text("/metrics").await;
    assert_eq!(
        metric(&m, "fleetgate_crm_auth_failed", &["crm=\"amocrm\""]),
        1.0,
        "{m}"
    );
    // An admin reissues the integration's token: the event goes out without anyone's help.
    *amo.fake.token.lock().unwrap() = "amo-long-lived-token".into();
    assert!(
        crm_fake::wait_for(10, || !amo.fake.ok("PATCH").is_empty()).await,
        "{:?}",
        amo.fake.calls()
    );
    let mut gauge = 1.0;
    for _ in 0..50 {
        let (_, m) = api.text("/metrics").await;
        gauge = metric(&m, "fleetgate_crm_auth_failed", &["crm=\"amocrm\""]);
        if gauge == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge, 0.0);
    daemon.stop().await;
}

common::both_backends!(the_crm_is_warned_before_the_inspection_and_told_why_it_was_postponed);
/// Before the inspection falls due the managers see it coming: a note and the days/km left in
/// their field; a postponement carries its reason into the CRM note.
async fn the_crm_is_warned_before_the_inspection_and_told_why_it_was_postponed() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = amo_config(&amo.url).replace(
        "balance_field_id = 504",
        "balance_field_id = 504\ninspection_left_field_id = 506",
    );
    let daemon = common::start(dir.path(), &cfg).await;
    let api = Api::new(daemon.api_addr);
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-81",
            json!({ "crm_deal_id": "8100", "driver_id": "drv-81", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let notes = || -> Vec<String> { amo.fake.note_texts(8100) };
    // Due in 5 days (the warning comes 7 days before): warned at once, once.
    let due = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    let (s, st) = api
        .post(
            "/api/v1/vehicles/car-81/inspection",
            json!({ "due_date": due }),
        )
        .await;
    assert_eq!(s, 200, "{st}");
    assert!(
        crm_fake::wait_for(10, || notes().iter().any(|n| n == "Скоро ТО: 5 дн.")).await,
        "{:?}",
        notes()
    );
    assert!(
        crm_fake::wait_for(10, || amo.fake.field_writes(506)
            == vec![json!("до ТО: 5 дн.")])
        .await,
        "{:?}",
        amo.fake.field_writes(506)
    );
    // The driver postpones it, with a reason; the note says how often and why.
    let later = (chrono::Utc::now() + chrono::Duration::days(20)).date_naive();
    let (s, st) = api
        .post(
            "/api/v1/vehicles/car-81/inspection/postpone",
            json!({ "due_date": later, "reason": "сервис закрыт на ремонт" }),
        )
        .await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        st["postponement_log"][0]["reason"], "сервис закрыт на ремонт",
        "{st}"
    );
    let expected = format!(
        "ТО перенесено (1-й раз): сервис закрыт на ремонт; новый срок {}.",
        later.format("%d.%m.%Y")
    );
    assert!(
        crm_fake::wait_for(10, || notes().contains(&expected)).await,
        "{:?}",
        notes()
    );
    assert!(
        crm_fake::wait_for(10, || amo.fake.field_writes(506).last()
            == Some(&json!("до ТО: 20 дн.")))
        .await,
        "{:?}",
        amo.fake.field_writes(506)
    );
    let (s, e) = api
        .post(
            "/api/v1/vehicles/car-81/inspection/postpone",
            json!({ "reason": "x".repeat(501) }),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    daemon.stop().await;
}

common::both_backends!(a_vehicle_is_found_by_its_deal_or_its_company_card);
/// A CRM integrator holds a deal or a company card and wants the car: the vehicle list filters
/// by either; a typo in the filter is a 400, not the whole fleet.
async fn a_vehicle_is_found_by_its_deal_or_its_company_card() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "").await;
    let api = Api::new(daemon.api_addr);
    for (id, deal, company) in [("car-91", "9100", "501"), ("car-92", "9200", "502")] {
        let (s, v) = api
            .put(
                &format!("/api/v1/vehicles/{id}"),
                json!({ "crm_deal_id": deal, "crm_company_id": company, "status": "issued" }),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["crm_company_id"], company, "{v}");
    }
    // Registered without a company: an update that omits it keeps it.
    let (_, v) = api
        .put("/api/v1/vehicles/car-91", json!({ "plate": "A123BC77" }))
        .await;
    assert_eq!(v["crm_company_id"], "501", "{v}");
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, v) = api.get("/api/v1/vehicles?crm_deal_id=9200").await;
    assert_eq!((s, ids(&v)), (200, vec!["car-92".to_string()]));
    let (s, v) = api.get("/api/v1/vehicles?crm_company_id=501").await;
    assert_eq!((s, ids(&v)), (200, vec!["car-91".to_string()]));
    let (s, v) = api
        .get("/api/v1/vehicles?crm_deal_id=9100&crm_company_id=502")
        .await;
    assert_eq!((s, ids(&v)), (200, Vec::<String>::new()), "both must match");
    let (s, v) = api.get("/api/v1/vehicles").await;
    assert_eq!((s, ids(&v).len()), (200, 2));
    let (s, e) = api.get("/api/v1/vehicles?crm_deal=9100").await;
    assert_eq!(s, 400, "{e}");
    daemon.stop().await;
}
