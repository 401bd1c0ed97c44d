//! The immobiliser end to end over real TCP and SQLite: a simulated Teltonika tracker that
//! answers Codec 12, an operator (and rules) driving reasons through the API, and the
//! commands that do — and do not — reach the wire.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::teltonika::{login, parked, read_command, rec, send_records};
use common::{wait_immobiliser, wait_vehicle, Api, Tracker};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_codec12_response, io, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

const CFG: &str = "[immobiliser]\nsafe_for = 10\nmax_block_speed_kmh = 5\n";

async fn commands(api: &Api, id: &str) -> Vec<Value> {
    let (s, c) = api.get(&format!("/api/v1/vehicles/{id}/commands")).await;
    assert_eq!(s, 200, "{c}");
    c.as_array().cloned().unwrap_or_default()
}

async fn wait_command(api: &Api, cmd: i64, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let (_, c) = api.get(&format!("/api/v1/commands/{cmd}")).await;
        if c["status"] == status {
            return c;
        }
        last = c;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("command {cmd} never {status}: {last}");
}

common::both_backends!(
    moving_car_is_blocked_only_once_stopped_and_unblocked_when_the_last_reason_lifts
);
async fn moving_car_is_blocked_only_once_stopped_and_unblocked_when_the_last_reason_lifts() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441101";
    let mut t = login(addr, imei).await;
    send_records(&mut t, &[rec(40, 60, true, Some(false))]).await;

    // The car leaves the service area at 60 km/h (the geofence rule's reason, here by API).
    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "outside_service_area", "comment": "left MKAD"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "block_pending");
    assert_eq!(b["immobiliser"]["reasons"], json!(["outside_service_area"]));
    send_records(&mut t, &[rec(35, 58, true, Some(false))]).await;
    assert!(
        t.read_for(600).await.is_empty(),
        "no command on the wire while the car drives"
    );
    let v = wait_immobiliser(&api, imei, "block_pending").await;
    assert!(v["immobiliser"]["since"].is_string(), "{v}");

    // It slows to a stop: one slow fix is not yet 10 s of standstill.
    send_records(&mut t, &[rec(30, 0, true, Some(false))]).await;
    send_records(&mut t, &[rec(24, 0, true, Some(false))]).await;
    assert!(t.read_for(400).await.is_empty(), "stopped for 0 s only");
    // Stopped for 12 s by fix time: the block goes out.
    send_records(&mut t, &[rec(18, 0, true, Some(false))]).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    wait_immobiliser(&api, imei, "blocking").await;
    let cmds = commands(&api, imei).await;
    assert_eq!(cmds.len(), 1);
    let block_id = cmds[0]["id"].as_i64().unwrap();
    assert_eq!(cmds[0]["intent"], "block");
    assert_eq!(cmds[0]["reasons"], "outside_service_area");
    wait_command(&api, block_id, "sent").await;

    // The tracker answers: blocked; then telemetry shows DOUT1 = 1: confirmed.
    t.send(&encode_codec12_response(
        b"DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    wait_immobiliser(&api, imei, "blocked").await;
    let c = wait_command(&api, block_id, "acknowledged").await;
    assert_eq!(c["response"], "DOUT1:1 DOUT2:IGNORED DOUT3:IGNORED");
    send_records(&mut t, &[rec(0, 0, false, Some(true))]).await;
    let c = wait_command(&api, block_id, "confirmed").await;
    assert!(c["confirmed_at"].is_string());

    // A second reason; lifting either one alone changes nothing on the car.
    let (s, _) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "manual", "comment": "call the office"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/unblock"),
            json!({"reason": "outside_service_area", "comment": "back inside"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "blocked");
    assert_eq!(b["immobiliser"]["reasons"], json!(["manual"]));
    assert!(
        t.read_for(600).await.is_empty(),
        "another reason stands: nothing sent"
    );
    assert_eq!(commands(&api, imei).await.len(), 1);

    // Lifting the last reason unblocks at once.
    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/unblock"),
            json!({"reason": "manual", "comment": "paid"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "unblocking");
    assert_eq!(read_command(&mut t).await, "setdigout 0");
    t.send(&encode_codec12_response(
        b"DOUT1:0 DOUT2:IGNORED DOUT3:IGNORED",
    ))
    .await;
    let v = wait_immobiliser(&api, imei, "running").await;
    assert_eq!(v["immobiliser"]["reasons"], json!([]));
    let cmds = commands(&api, imei).await;
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0]["intent"], "unblock", "newest first");
    assert_eq!(cmds[0]["status"], "acknowledged");

    // The audit explains the block: who, why, and where the car was.
    let (s, audit) = api.get(&format!("/api/v1/audit?vehicle={imei}")).await;
    assert_eq!(s, 200, "{audit}");
    let audit = audit.as_array().unwrap();
    let pending = audit
        .iter()
        .find(|a| a["event"] == "state_changed" && a["state_to"] == "block_pending")
        .expect("pending recorded");
    assert_eq!(pending["actor"], "anonymous");
    assert_eq!(pending["reason"], "outside_service_area");
    assert_eq!(pending["position"]["speed_kmh"], 60.0, "{pending}");
    let blocking = audit
        .iter()
        .find(|a| a["event"] == "state_changed" && a["state_to"] == "blocking")
        .expect("blocking recorded");
    assert_eq!(blocking["actor"], "immobiliser");
    assert_eq!(blocking["position"]["speed_kmh"], 0.0);
    assert!(blocking["position"]["lat"].as_f64().is_some());
    for ev in [
        "reason_added",
        "reason_lifted",
        "command_queued",
        "command_sent",
        "command_acknowledged",
        "command_confirmed",
    ] {
        assert!(audit.iter().any(|a| a["event"] == ev), "{ev} in audit");
    }
    let added: Vec<_> = audit
        .iter()
        .filter(|a| a["event"] == "reason_added")
        .map(|a| (a["reason"].clone(), a["comment"].clone()))
        .collect();
    assert_eq!(
        added,
        vec![
            (json!("outside_service_area"), json!("left MKAD")),
            (json!("manual"), json!("call the office"))
        ]
    );

    let (_, metrics) = api.text("/metrics").await;
    for m in [
        "fleetgate_immobiliser_fix_to_command_seconds",
        "fleetgate_immobiliser_commands_total",
        "fleetgate_immobiliser_pending_blocks",
        "fleetgate_immobiliser_blocked_vehicles",
    ] {
        assert!(metrics.contains(m), "{m} in /metrics");
    }
    daemon.stop().await;
}

common::both_backends!(
    block_for_an_offline_tracker_is_sent_on_reconnect_once_fresh_fixes_show_it_safe
);
/// A tracker that was parked and is offline: the block waits for it (evidence dies with the
/// connection it came on), and on login goes out only once that new connection's own fixes
/// show the car safe (a car driven off meanwhile waits again).
async fn block_for_an_offline_tracker_is_sent_on_reconnect_once_fresh_fixes_show_it_safe() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441102";
    let mut t = login(addr, imei).await;
    send_records(&mut t, &parked(60, Some(false))).await;
    drop(t);

    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "low_balance"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["immobiliser"]["state"], "block_pending",
        "no live connection, no evidence"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(commands(&api, imei).await.is_empty(), "nothing decided yet");

    // Back online, but the records show the car was driven off: no command.
    let mut t = login(addr, imei).await;
    assert!(t.read_for(600).await.is_empty(), "not before fresh fixes");
    send_records(&mut t, &[rec(20, 50, true, None), rec(10, 45, true, None)]).await;
    assert!(t.read_for(600).await.is_empty(), "never to a moving car");
    wait_immobiliser(&api, imei, "block_pending").await;

    // Parked again with the ignition off: now it goes.
    send_records(&mut t, &parked(1, None)).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    t.send(&encode_codec12_response(b"DOUT1:1")).await;
    wait_immobiliser(&api, imei, "blocked").await;
    daemon.stop().await;
}

common::both_backends!(pending_block_survives_a_restart);
/// The daemon restarts with a block still pending: after the restart it goes out on the new
/// session's own evidence.
async fn pending_block_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let imei = "356307042441103";
    let daemon = common::start(dir.path(), CFG).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let mut t = login(addr, imei).await;
    send_records(&mut t, &parked(60, None)).await;
    drop(t);
    let (s, _) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "inspection", "comment": "TO overdue"}),
        )
        .await;
    assert_eq!(s, 200);
    daemon.stop().await;

    let daemon = common::start(dir.path(), CFG).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let v = wait_immobiliser(&api, imei, "block_pending").await;
    assert_eq!(v["immobiliser"]["reasons"], json!(["inspection"]));
    let mut t = login(addr, imei).await;
    send_records(&mut t, &parked(1, None)).await;
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    let id = commands(&api, imei).await[0]["id"].as_i64().unwrap();
    let c = wait_command(&api, id, "sent").await;
    assert_eq!(c["attempts"], 1);
    t.send(&encode_codec12_response(b"DOUT1:1")).await;
    wait_immobiliser(&api, imei, "blocked").await;
    daemon.stop().await;
}

common::both_backends!(block_then_unblock_while_offline_sends_only_the_unblock);
/// Block then unblock while the tracker is offline: the block never goes, nor does anything
/// else (the car was never blocked).
async fn block_then_unblock_while_offline_sends_only_the_unblock() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441104";
    let mut t = login(addr, imei).await;
    send_records(&mut t, &parked(60, None)).await;
    drop(t);
    let path = format!("/api/v1/vehicles/{imei}");
    let (s, _) = api
        .post(&format!("{path}/block"), json!({"reason": "manual"}))
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .post(&format!("{path}/unblock"), json!({"reason": "all"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "running");

    let mut t = login(addr, imei).await;
    send_records(&mut t, &parked(1, None)).await;
    assert!(t.read_for(700).await.is_empty(), "no block, no unblock");
    assert!(commands(&api, imei).await.is_empty());
    daemon.stop().await;
}

common::both_backends!(force_is_refused_unless_allowed_and_then_skips_the_wait);
async fn force_is_refused_unless_allowed_and_then_skips_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), CFG).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let imei = "356307042441105";
    let mut t = login(addr, imei).await;
    send_records(&mut t, &[rec(10, 70, true, None)]).await;
    let path = format!("/api/v1/vehicles/{imei}");
    let (s, e) = api
        .post(
            &format!("{path}/block"),
            json!({"reason": "low_balance", "force": true}),
        )
        .await;
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("allow_force"));
    let (_, v) = api.get(&path).await;
    assert_eq!(
        v["immobiliser"]["state"], "running",
        "refusal changes nothing"
    );
    let (_, all) = api.get("/api/v1/vehicles").await;
    assert_eq!(all[0]["immobiliser"]["state"], "running", "{all}");
    assert_eq!(all[0]["immobiliser"]["reasons"], json!([]));
    let (s, e) = api
        .post(&format!("{path}/block"), json!({"reason": "Bad Name"}))
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = api.post("/api/v1/vehicles/nope/block", json!({})).await;
    assert_eq!(s, 404);
    daemon.stop().await;
    drop(t);

    let daemon = common::start(dir.path(), &format!("{CFG}allow_force = true\n")).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let mut t = login(addr, imei).await;
    send_records(&mut t, &[rec(5, 70, true, None)]).await;
    let (s, b) = api
        .post(
            &format!("{path}/block"),
            json!({"reason": "low_balance", "force": true, "comment": "CRM override"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["immobiliser"]["state"], "blocking");
    assert_eq!(read_command(&mut t).await, "setdigout 1");
    let (_, audit) = api.get(&format!("/api/v1/audit?vehicle={imei}")).await;
    let audit = audit.as_array().unwrap();
    assert!(audit
        .iter()
        .any(|a| a["event"] == "force_refused" && a["forced"] == true));
    let forced = audit
        .iter()
        .find(|a| a["event"] == "state_changed" && a["state_to"] == "blocking")
        .unwrap();
    assert_eq!(forced["forced"], true, "audited as forced");
    assert_eq!(forced["position"]["speed_kmh"], 70.0);
    daemon.stop().await;
}

common::both_backends!(profiles_retries_and_resend_after_a_lost_connection);
/// A per-model profile picks the text and the confirming output; an unanswered command is
/// retried after the ack timeout and written again when the connection drops.
async fn profiles_retries_and_resend_after_a_lost_connection() {
    let dir = tempfile::tempdir().unwrap();
    let imei = "356307042441106";
    let cfg = format!(
        "{CFG}ack_timeout_s = 1\nretry_backoff_s = 0\nmax_attempts = 20\n\
         [immobiliser.profiles.relay2]\nblock = \"setdigout ?1\"\nunblock = \"setdigout ?0\"\noutput = 2\n\
         [immobiliser.vehicle_profiles]\n\"{imei}\" = \"relay2\"\n"
    );
    let daemon = common::start(dir.path(), &cfg).await;
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let mut t = login(addr, imei).await;
    send_records(
        &mut t,
        &[
            rec(30, 0, true, None),
            rec(22, 0, true, None),
            rec(15, 0, true, None),
        ],
    )
    .await;
    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "manual"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(read_command(&mut t).await, "setdigout ?1", "profile text");
    // No answer: written again after the ack timeout.
    assert_eq!(read_command(&mut t).await, "setdigout ?1", "retried");
    let id = commands(&api, imei).await[0]["id"].as_i64().unwrap();
    let c = wait_command(&api, id, "sent").await;
    assert!(c["attempts"].as_i64().unwrap() >= 2, "{c}");
    // The connection drops before any answer: written again on the next one, once that
    // connection's own fixes show the car still parked (a block never goes out on what the
    // car did before it went offline).
    drop(t);
    let mut t = login(addr, imei).await;
    // The command waits for this connection's own evidence: the record is committed (and
    // acked) first, and only then is the block written again. (A login the server took before
    // it saw the old connection close is a rival until then, and its evidence counts from its
    // takeover on: as a parked tracker does, it reports again until the command comes.)
    let mut rounds = 0;
    loop {
        t.send(&encode_avl_packet(CODEC_8E, &parked(1, None))).await;
        assert_eq!(t.read(4).await, [0, 0, 0, 3], "the record ack comes first");
        rounds += 1;
        let mut first = [0u8; 1];
        let peek = t.stream.peek(&mut first);
        if tokio::time::timeout(Duration::from_secs(3), peek)
            .await
            .is_ok()
            || rounds == 10
        {
            break;
        }
    }
    assert_eq!(
        read_command(&mut t).await,
        "setdigout ?1",
        "resent on reconnect"
    );
    // The block written on this connection: the same command, or — when the drop was seen
    // before its retry — the block command that superseded it (audited as such).
    let all = commands(&api, imei).await;
    let live = all
        .iter()
        .filter(|c| c["intent"] == "block" && c["status"] != "superseded")
        .filter_map(|c| c["id"].as_i64())
        .max();
    let id = live.unwrap_or(id);
    if id
        != all
            .iter()
            .filter_map(|c| c["id"].as_i64())
            .min()
            .unwrap_or(id)
    {
        let first = all.iter().find(|c| c["id"].as_i64() < Some(id));
        assert_eq!(
            first.map(|c| c["status"].clone()),
            Some(json!("superseded")),
            "{all:?}"
        );
    }
    t.send(&encode_codec12_response(b"DOUT2:1")).await;
    wait_command(&api, id, "acknowledged").await;
    // DOUT1 on says nothing for a relay on output 2; DOUT2 on confirms.
    let mut r = rec(0, 0, true, Some(true));
    r.io.push((io::DOUT2, 1, 0));
    send_records(&mut t, &[r]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, c) = api.get(&format!("/api/v1/commands/{id}")).await;
    assert_ne!(c["status"], "confirmed", "{c}");
    let mut r = rec(-1, 0, true, None);
    r.io.push((io::DOUT2, 1, 1));
    send_records(&mut t, &[r]).await;
    wait_command(&api, id, "confirmed").await;
    wait_immobiliser(&api, imei, "blocked").await;
    daemon.stop().await;
}

/// Read from the socket until `needle` shows up (20 s at most).
async fn read_until(t: &mut Tracker, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(t.read_for(100).await);
        if got.windows(needle.len()).any(|w| w == needle) {
            return got;
        }
    }
    panic!(
        "{} never arrived; got {}",
        String::from_utf8_lossy(needle),
        hex::encode(&got)
    );
}

common::both_backends!(gt06_profile_command_and_answer);
/// A GT06 (Concox) car whose model takes `DYD,000000#`: the profile picks the text, the
/// answer is matched by the echoed server flag, and the car is blocked.
async fn gt06_profile_command_and_answer() {
    use fleetgate::protocols::gt06::{encode_command_response, encode_gps, encode_login, GpsFix};
    let dir = tempfile::tempdir().unwrap();
    let imei = "359339075005244";
    let cfg = format!(
        "{CFG}[immobiliser.profiles.concox_dyd]\nblock = \"DYD,000000#\"\nunblock = \"HFYD,000000#\"\n\
         [immobiliser.protocol_profiles]\ngt06 = \"concox_dyd\"\n"
    );
    let daemon = common::start(dir.path(), &cfg).await;
    let addr = daemon.addr(Protocol::Gt06, Transport::Tcp).unwrap();
    let api = Api::new(daemon.api_addr);
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_login(imei, 1)).await;
    assert!(!t.read_for(2000).await.is_empty(), "login answered");
    let fix = |ago: i64, ignition: bool| GpsFix {
        time: Utc::now() - chrono::Duration::seconds(ago),
        valid: true,
        lat: 55.75,
        lon: 37.62,
        speed_kmh: 0,
        course: 0,
        satellites: 9,
        ignition,
        cell: (250, 1, 1000, 20000),
    };
    t.send(&encode_gps(&fix(20, true), 2)).await;
    wait_vehicle(&api, imei, "first fix", |v| v["position"].is_object()).await;
    let (s, b) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/block"),
            json!({"reason": "inspection"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["immobiliser"]["state"], "block_pending",
        "one slow fix only"
    );
    t.send(&encode_gps(&fix(5, false), 3)).await;
    t.send(&encode_gps(&fix(4, false), 4)).await;
    t.send(&encode_gps(&fix(3, false), 5)).await;
    read_until(&mut t, b"DYD,000000#").await;
    let id = commands(&api, imei).await[0]["id"].as_i64().unwrap();
    t.send(&encode_command_response("DYD=Success!", id as u32, 6))
        .await;
    wait_immobiliser(&api, imei, "blocked").await;
    let c = wait_command(&api, id, "acknowledged").await;
    assert_eq!(c["text"], "DYD,000000#");
    let (s, _) = api
        .post(
            &format!("/api/v1/vehicles/{imei}/unblock"),
            json!({"reason": "all"}),
        )
        .await;
    assert_eq!(s, 200);
    read_until(&mut t, b"HFYD,000000#").await;
    daemon.stop().await;
}
