//! Engine block and unblock for an MQTT device, through the same command lifecycle as a TCP
//! tracker, against the real Mosquitto: the block waits while the car drives, goes out on the
//! command topic once the device's own publishes show it stopped, is acknowledged by the
//! device's answer on the response topic, and the unblock follows when the reason is lifted.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::mqtt::{forget_sessions, section, unique, Device};
use common::Api;
use rumqttc::QoS;
use serde_json::{json, Value};

fn fix(ago_s: i64, speed_kmh: f64, ignition: bool) -> Vec<u8> {
    json!({
        "time": (Utc::now() - chrono::Duration::seconds(ago_s)).to_rfc3339(),
        "lat": 55.7512, "lon": 37.6184, "speed_kmh": speed_kmh, "ignition": ignition,
    })
    .to_string()
    .into_bytes()
}

async fn vehicle(api: &Api, id: &str) -> Value {
    api.get(&format!("/api/v1/vehicles/{id}")).await.1
}

/// Poll until `f` accepts the vehicle view (20 s at most).
async fn wait_vehicle(api: &Api, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let v = vehicle(api, id).await;
        if f(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id}: {what} not reached: {last}");
}

/// The next command published for the device, as JSON.
async fn next_command(dev: &mut Device) -> Value {
    let p = dev.next(20).await.expect("a command within 20 s");
    serde_json::from_slice(&p.payload).expect("JSON command")
}

common::both_backends!(mqtt_device_is_blocked_when_stopped_acknowledges_and_is_unblocked);
async fn mqtt_device_is_blocked_when_stopped_acknowledges_and_is_unblocked() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("fgc");
    let gw = format!("{prefix}-gw");
    let cfg = format!(
        "{}[immobiliser]\nsafe_for = 10\nmax_block_speed_kmh = 5\nack_timeout_s = 30\n",
        section(&gw, &prefix)
    );
    let daemon = common::start(dir.path(), &cfg).await;
    let api = Api::new(daemon.api_addr);
    let id = unique("car");
    let telemetry = format!("{prefix}/{id}/telemetry");
    let mut dev = Device::connect(&format!("{prefix}-dev")).await;
    dev.client
        .subscribe(format!("{prefix}/{id}/commands"), QoS::AtLeastOnce)
        .await
        .unwrap();

    // The car drives; the first publishes may precede the gateway's subscription.
    let mut known = false;
    for _ in 0..100 {
        dev.publish(&telemetry, fix(40, 60.0, true)).await;
        if vehicle(&api, &id).await["position"].is_object() {
            known = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(known, "the gateway stores the device's fixes");
    let (s, v) = api
        .post(
            &format!("/api/v1/vehicles/{id}/block"),
            json!({ "reason": "manual", "comment": "unpaid" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["immobiliser"]["state"], "block_pending", "{v}");
    dev.publish(&telemetry, fix(35, 55.0, true)).await;
    assert!(
        dev.next(1).await.is_none(),
        "no command while the car moves"
    );

    // Stopped for 12 s by fix time: engine_stop on the command topic.
    dev.publish(&telemetry, fix(30, 0.0, true)).await;
    dev.publish(&telemetry, fix(24, 0.0, true)).await;
    dev.publish(&telemetry, fix(18, 0.0, true)).await;
    let cmd = next_command(&mut dev).await;
    assert_eq!(cmd["command"], "engine_stop", "{cmd}");
    let seq = cmd["seq"].as_u64().expect("seq");
    wait_vehicle(&api, &id, "blocking", |v| {
        v["immobiliser"]["state"] == "blocking"
    })
    .await;
    dev.publish(
        &format!("{prefix}/{id}/responses"),
        json!({ "seq": seq, "success": true, "text": "relay on" }).to_string(),
    )
    .await;
    wait_vehicle(&api, &id, "blocked", |v| {
        v["immobiliser"]["state"] == "blocked"
    })
    .await;
    let (_, cmds) = api.get(&format!("/api/v1/vehicles/{id}/commands")).await;
    assert_eq!(cmds[0]["status"], "acknowledged", "{cmds}");
    assert_eq!(cmds[0]["response"], "relay on", "{cmds}");

    // Lifting the reason unblocks at once.
    let (s, v) = api
        .post(
            &format!("/api/v1/vehicles/{id}/unblock"),
            json!({ "reason": "manual", "comment": "paid" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let cmd = next_command(&mut dev).await;
    assert_eq!(cmd["command"], "engine_resume", "{cmd}");
    dev.publish(
        &format!("{prefix}/{id}/responses"),
        json!({ "seq": cmd["seq"], "success": true, "text": "relay off" }).to_string(),
    )
    .await;
    wait_vehicle(&api, &id, "running", |v| {
        v["immobiliser"]["state"] == "running"
    })
    .await;
    let (_, m) = api.text("/metrics").await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("fleetgate_mqtt_device_sessions ") && !l.ends_with(" 0")),
        "{m}"
    );
    daemon.stop().await;
    forget_sessions(&[gw, format!("{prefix}-dev")]).await;
}
