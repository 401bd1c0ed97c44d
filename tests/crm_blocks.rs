//! Every block reason reaches the CRM, when the car confirms it: a manual block (and a border
//! exit added on top) shows nothing on the deal while the block is only decided; once the
//! tracker answers `setdigout 1` the amoCRM deal gets blocked = true and a note naming the
//! reasons in Russian; lifting the last reason shows blocked = false only after the car
//! confirms the unblock. Bitrix24 the same way: `UF_CRM_BLOCKED` `Y`/`N` and a timeline comment.

mod common;
mod crm_fake;

use std::time::Duration;

use common::teltonika::{login, parked, read_command, rec, send_records};
use common::{wait_immobiliser, Api};
use crm_fake::config::{amocrm, IMMOBILISER};
use fleetgate::protocols::teltonika::encode_codec12_response;
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

fn config(amo_url: &str) -> String {
    let fields = "[crm.fields]\nblocked_field_id = 502\n";
    format!("{IMMOBILISER}{}", amocrm(amo_url, "", fields))
}

common::both_backends!(a_manual_block_and_a_border_exit_reach_the_deal_only_once_the_car_confirms);
async fn a_manual_block_and_a_border_exit_reach_the_deal_only_once_the_car_confirms() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), &config(&amo.url)).await;
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441301";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-31",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "3100",
                    "driver_id": "drv-31", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    send_records(&mut t, &[rec(60, 50, true, Some(false))]).await;

    // An operator blocks the car while it drives: decided, not confirmed — the deal shows
    // nothing yet.
    let (s, b) = api
        .post(
            "/api/v1/vehicles/car-31/block",
            json!({ "reason": "manual", "comment": "долг за аренду" }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "block_pending", "{b}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        amo.fake.field_writes(502).is_empty(),
        "{:?}",
        amo.fake.calls()
    );
    assert!(amo.fake.note_texts(3100).is_empty());

    // Parked, ignition off: the block goes out; the tracker answers it.
    send_records(&mut t, &parked(20, Some(false))).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        amo.fake.field_writes(502).is_empty(),
        "sent is not confirmed: {:?}",
        amo.fake.calls()
    );
    t.send(&encode_codec12_response(
        b"DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_immobiliser(&api, "car-31", "blocked").await;
    assert!(
        crm_fake::wait_for(20, || amo.fake.field_writes(502) == vec![json!(true)]).await,
        "{:?}",
        amo.fake.calls()
    );
    assert!(
        crm_fake::wait_for(10, || amo.fake.note_texts(3100)
            == vec![
                "Автомобиль заблокирован: ручная блокировка: долг за аренду.".to_string()
            ])
        .await,
        "{:?}",
        amo.fake.note_texts(3100)
    );

    // The car is found outside the service area too: the deal names both reasons.
    let (s, _) = api
        .post(
            "/api/v1/vehicles/car-31/block",
            json!({ "reason": "outside_service_area", "comment": "left MKAD" }),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        crm_fake::wait_for(20, || amo.fake.note_texts(3100).len() == 2).await,
        "{:?}",
        amo.fake.note_texts(3100)
    );
    assert_eq!(
        amo.fake.note_texts(3100)[1],
        "Автомобиль заблокирован: ручная блокировка: долг за аренду; за пределами зоны \
         обслуживания."
    );

    // Both lifted: the unblock goes out, the deal still shows the block until the car
    // confirms.
    for reason in ["manual", "outside_service_area"] {
        let (s, b) = api
            .post(
                "/api/v1/vehicles/car-31/unblock",
                json!({ "reason": reason, "comment": "оплачено" }),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    assert_eq!(read_command(&mut t).await, "setdigout 0");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        amo.fake.field_writes(502),
        vec![json!(true), json!(true)],
        "unblocking is not unblocked"
    );
    t.send(&encode_codec12_response(
        b"DOUT1:0 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_immobiliser(&api, "car-31", "running").await;
    assert!(
        crm_fake::wait_for(20, || amo.fake.field_writes(502)
            == vec![json!(true), json!(true), json!(false)])
        .await,
        "{:?}",
        amo.fake.calls()
    );
    assert!(
        crm_fake::wait_for(10, || amo.fake.note_texts(3100).len() == 3).await,
        "{:?}",
        amo.fake.note_texts(3100)
    );
    assert_eq!(
        amo.fake.note_texts(3100)[2],
        "Автомобиль разблокирован: причин блокировки больше нет."
    );
    let l = amo.fake.leads.lock().unwrap()[&3100].clone();
    assert_eq!(l["fields"]["502"], json!(false), "{l}");
    daemon.stop().await;
}

common::both_backends!(
    bitrix24_shows_a_confirmed_block_and_unblock_with_a_comment_naming_the_reason
);
async fn bitrix24_shows_a_confirmed_block_and_unblock_with_a_comment_naming_the_reason() {
    let bx = crm_fake::start("bitrix24").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[immobiliser]
safe_for = 10
max_block_speed_kmh = 5
[crm]
kind = "bitrix24"
webhook_url = "{}/rest/1/s3cr3t/"
backoff_initial_s = 0.05
backoff_max_s = 0.5
poll_ms = 50
[crm.stages]
on_line = {{ stage_id = "C1:EXECUTING" }}
wants_to_return = {{ stage_id = "C1:FINAL_INVOICE" }}
[crm.fields]
blocked_field_code = "UF_CRM_BLOCKED"
"#,
        bx.url
    );
    let daemon = common::start(dir.path(), &toml).await;
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441302";
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-32",
            json!({ "device_id": imei, "protocol": "teltonika", "crm_deal_id": "3200",
                    "driver_id": "drv-32", "status": "issued" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut t = login(
        daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap(),
        imei,
    )
    .await;
    send_records(&mut t, &[rec(60, 40, true, Some(false))]).await;
    let (s, b) = api
        .post(
            "/api/v1/vehicles/car-32/block",
            json!({ "reason": "outside_service_area", "comment": "left MKAD" }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    send_records(&mut t, &parked(20, Some(false))).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    t.send(&encode_codec12_response(
        b"DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_immobiliser(&api, "car-32", "blocked").await;
    let comments = |bx: &crm_fake::Server| -> Vec<Value> {
        bx.fake
            .comments
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c["ENTITY_ID"] == "3200")
            .map(|c| c["COMMENT"].clone())
            .collect()
    };
    assert!(
        crm_fake::wait_for(20, || comments(&bx)
            == vec![json!(
                "Автомобиль заблокирован: за пределами зоны обслуживания."
            )])
        .await,
        "{:?}",
        bx.fake.calls()
    );
    assert_eq!(bx.fake.deals.lock().unwrap()["3200"]["UF_CRM_BLOCKED"], "Y");

    let (s, _) = api
        .post(
            "/api/v1/vehicles/car-32/unblock",
            json!({ "reason": "outside_service_area", "comment": "back inside" }),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(read_command(&mut t).await, "setdigout 0");
    t.send(&encode_codec12_response(
        b"DOUT1:0 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_immobiliser(&api, "car-32", "running").await;
    assert!(
        crm_fake::wait_for(20, || comments(&bx).len() == 2).await,
        "{:?}",
        bx.fake.calls()
    );
    assert_eq!(
        comments(&bx)[1],
        "Автомобиль разблокирован: причин блокировки больше нет."
    );
    assert_eq!(bx.fake.deals.lock().unwrap()["3200"]["UF_CRM_BLOCKED"], "N");
    daemon.stop().await;
}
