//! The CRM rules through the real immobiliser, over a real Teltonika session and SQLite, with
//! an in-test amoCRM: a balance under the minimum blocks the car once it stands still (never
//! while it drives), an inspection postponed three times adds a second reason, a top-up lifts
//! one reason and leaves the car blocked, completing the inspection lifts the last one and
//! `setdigout 0` goes out. The CRM hears of every step.

mod common;
mod crm_fake;

use common::teltonika::{login, read_command, rec, send_records};
use common::{wait_immobiliser, Api};
use crm_fake::config::{amocrm, IMMOBILISER};
use fleetgate::protocols::teltonika::encode_codec12_response;
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

fn config(amo_url: &str) -> String {
    let fields = "[crm.fields]\nmileage_field_id = 501\nblocked_field_id = 502\n";
    format!("{IMMOBILISER}{}", amocrm(amo_url, "", fields))
}

async fn set_balance(api: &Api, driver: &str, rub: f64) -> Value {
    let (s, v) = api
        .put(
            &format!("/api/v1/drivers/{driver}/balance"),
            json!({ "balance_rub": rub }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

common::both_backends!(low_balance_and_inspection_block_through_the_immobiliser_and_lift_in_turn);
async fn low_balance_and_inspection_block_through_the_immobiliser_and_lift_in_turn() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), &config(&amo.url)).await;
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441201";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-21",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "2100",
                    "driver_id": "drv-21", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    send_records(&mut t, &[rec(40, 55, true, Some(false))]).await;

    // The balance falls under 5,000 RUB while the car drives: pending, nothing on the wire.
    set_balance(&api, "drv-21", 3_200.0).await;
    let v = wait_immobiliser(&api, "car-21", "block_pending").await;
    assert_eq!(v["immobiliser"]["reasons"], json!(["low_balance"]), "{v}");
    // The reason is the rule's, not the API caller's; the caller is named in the comment.
    let detail = &v["immobiliser"]["reason_details"][0];
    assert_eq!(detail["actor"], "rule:low_balance", "{v}");
    assert!(
        detail["comment"]
            .as_str()
            .unwrap_or("")
            .contains("источник"),
        "{v}"
    );
    send_records(&mut t, &[rec(35, 48, true, Some(false))]).await;
    assert!(
        t.read_for(600).await.is_empty(),
        "no command while the car moves"
    );
    // It stands still for 12 s by fix time: the block goes out and the tracker answers.
    send_records(&mut t, &[rec(30, 0, true, Some(false))]).await;
    send_records(&mut t, &[rec(24, 0, true, Some(false))]).await;
    send_records(&mut t, &[rec(18, 0, true, Some(false))]).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    t.send(&encode_codec12_response(
        b"DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_immobiliser(&api, "car-21", "blocked").await;
    // The driver is told why (a note on the deal), and the deal shows the car blocked.
    assert!(
        crm_fake::wait_for(20, || amo
            .fake
            .ok("POST")
            .iter()
            .any(|c| c.path == "/api/v4/leads/notes" && c.body[0]["entity_id"] == 2100))
        .await,
        "driver message for the low balance: {:?}",
        amo.fake.calls()
    );
    assert!(
        crm_fake::wait_for(20, || amo.fake.field_writes(502) == vec![json!(true)]).await,
        "{:?}",
        amo.fake.calls()
    );
    assert!(
        crm_fake::wait_for(10, || amo
            .fake
            .note_texts(2100)
            .iter()
            .any(|t| t == "Автомобиль заблокирован: низкий баланс."))
        .await,
        "{:?}",
        amo.fake.notes.lock().unwrap()
    );

    // Inspection postponed three times: a second reason on an already blocked car.
    let due = (chrono::Utc::now() + chrono::Duration::days(10)).date_naive();
    let (s, v) = api
        .post(
            "/api/v1/vehicles/car-21/inspection",
            json!({ "due_date": due, "due_odometer_km": 150000 }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..3 {
        let (s, v) = api
            .post("/api/v1/vehicles/car-21/inspection/postpone", json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, v) = api.get("/api/v1/vehicles/car-21").await;
    assert_eq!(
        v["immobiliser"]["reasons"],
        json!(["inspection", "low_balance"]),
        "{v}"
    );
    // The deal is told the reasons standing on the blocked car.
    assert!(
        crm_fake::wait_for(20, || amo.fake.field_writes(502).len() == 2).await,
        "{:?}",
        amo.fake.calls()
    );

    // A top-up lifts low_balance only: the car stays blocked, nothing goes out.
    set_balance(&api, "drv-21", 12_000.0).await;
    let (_, v) = api.get("/api/v1/vehicles/car-21").await;
    assert_eq!(v["immobiliser"]["state"], "blocked", "{v}");
    assert_eq!(v["immobiliser"]["reasons"], json!(["inspection"]), "{v}");
    assert!(
        t.read_for(600).await.is_empty(),
        "another reason stands: no unblock"
    );
    assert!(
        crm_fake::wait_for(20, || amo.fake.field_writes(502).len() == 3).await,
        "{:?}",
        amo.fake.calls()
    );

    // Completing the inspection lifts the last reason: unblocked at once.
    let (s, v) = api
        .post(
            "/api/v1/vehicles/car-21/inspection/complete",
            json!({ "odometer_km": 151_002.0 }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(read_command(&mut t).await, "setdigout 0");
    t.send(&encode_codec12_response(
        b"DOUT1:0 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    let v = wait_immobiliser(&api, "car-21", "running").await;
    assert_eq!(v["immobiliser"]["reasons"], json!([]), "{v}");

    // Exactly two commands, and the audit names the rule behind each reason.
    let (_, cmds) = api.get("/api/v1/vehicles/car-21/commands").await;
    let intents: Vec<_> = cmds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["intent"].clone())
        .collect();
    assert_eq!(intents, vec![json!("unblock"), json!("block")], "{cmds}");
    let (_, audit) = api.get("/api/v1/audit?vehicle=car-21").await;
    let reasons: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["event"] == "reason_added" || a["event"] == "reason_lifted")
        .map(|a| (a["event"].clone(), a["reason"].clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (json!("reason_added"), json!("low_balance")),
            (json!("reason_added"), json!("inspection")),
            (json!("reason_lifted"), json!("low_balance")),
            (json!("reason_lifted"), json!("inspection")),
        ],
        "{audit}"
    );
    // The CRM saw blocked → unblocked and the mileage from the completed inspection.
    assert!(
        crm_fake::wait_for(20, || {
            let l = amo.fake.leads.lock().unwrap().get(&2100).cloned();
            l.is_some_and(|l| {
                l["fields"]["501"] == json!(151002) && l["fields"]["502"] == json!(false)
            })
        })
        .await,
        "{:?}",
        amo.fake.calls()
    );
    // One write per confirmed change: blocked, a second reason, one lifted (one still
    // stands), unblocked once the car answered.
    assert_eq!(
        amo.fake.field_writes(502),
        vec![json!(true), json!(true), json!(true), json!(false)]
    );
    daemon.stop().await;
}
