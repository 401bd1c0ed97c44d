//! MQTT ingest against the real Mosquitto on 127.0.0.1:1883 (`.ci/services`). Each test uses
//! its own topic prefix and client ids, so parallel and repeated runs do not interfere.

mod common;

use common::process::{free_port, spawn, wait_ready};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::mqtt::{forget_sessions, section as mqtt_section, unique, Broker, Device};
use common::Api;
use fleetgate::model::DeviceId;
use fleetgate::protocols::teltonika::{encode_avl_packet, io, AvlRecord, CODEC_8E};
use fleetgate::protocols::{CommandBody, DeviceCommand, Protocol};
use rumqttc::QoS;

fn mqtt_section_at(broker: &str, client_id: &str, prefix: &str) -> String {
    format!(
        "[mqtt]\nurl = \"{broker}\"\nclient_id = \"{client_id}\"\ntopics = [\"{prefix}/+/telemetry\"]\n\
         command_topic = \"{prefix}/{{device}}/commands\"\nresponse_topic = \"{prefix}/{{device}}/responses\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 1000\n"
    )
}

async fn track(api: &Api, device: &str) -> Vec<serde_json::Value> {
    let (status, t) = api
        .get(&format!(
            "/api/v1/vehicles/{device}/track?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z&limit=10000"
        ))
        .await;
    match (status, t) {
        (200, serde_json::Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Publish `payload` until the device has at least `n` stored fixes: the first publishes may
/// precede the daemon's subscription (a re-sent fix is stored once).
async fn publish_until_stored(
    dev: &mut Device,
    api: &Api,
    topic: &str,
    device: &str,
    payload: &[u8],
    n: usize,
) {
    for _ in 0..50 {
        dev.publish(topic, payload.to_vec()).await;
        for _ in 0..10 {
            if track(api, device).await.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("{device}: fewer than {n} fixes stored");
}

async fn wait_stored(api: &Api, device: &str, n: usize, secs: u64) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let t = track(api, device).await;
        if t.len() >= n || tokio::time::Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

common::both_backends!(json_and_codec8e_publishes_land_in_storage_and_the_api);
async fn json_and_codec8e_publishes_land_in_storage_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("fgt");
    let daemon = common::start(dir.path(), &mqtt_section(&format!("{prefix}-gw"), &prefix)).await;
    let api = Api::new(daemon.api_addr);
    let mut dev = Device::connect(&unique("dev")).await;

    // JSON: device from the topic, two buffered fixes in one message.
    let json_dev = unique("phone");
    let json = serde_json::json!([
        {"time": "2026-11-20T09:00:00Z", "lat": 55.75, "lon": 37.61, "speed_kmh": 30.5,
         "ignition": true, "power_v": 12.6, "attributes": {"app": "driver", "battery": 87}},
        {"time": 1795165205000i64, "lat": 55.7505, "lon": 37.6105}
    ]);
    let topic = format!("{prefix}/{json_dev}/telemetry");
    publish_until_stored(
        &mut dev,
        &api,
        &topic,
        &json_dev,
        json.to_string().as_bytes(),
        2,
    )
    .await;

    // Garbage is acked and dropped; the session goes on.
    dev.publish(&topic, b"\x01\x02garbage".to_vec()).await;
    dev.publish(
        &topic,
        br#"{"time":"2026-11-20T09:01:00Z","lat":55.76,"lon":37.62}"#.to_vec(),
    )
    .await;
    let t = wait_stored(&api, &json_dev, 3, 10).await;
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!(t[0]["time"], "2026-11-20T09:00:00Z");
    assert_eq!(t[0]["speed_kmh"], 30.5);
    assert_eq!(t[0]["ignition"], true);
    assert_eq!(t[0]["attributes"]["battery"], 87);
    assert_eq!(t[1]["time"], "2026-11-20T09:00:05Z");
    let (_, v) = api.get(&format!("/api/v1/vehicles/{json_dev}")).await;
    assert_eq!(v["protocol"], "mqtt");
    assert_eq!(v["position"]["time"], "2026-11-20T09:01:00Z");

    // Teltonika Codec 8E, as the device publishes it.
    let imei = format!("35{:013}", rand::random::<u64>() % 10_000_000_000_000);
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap();
    let recs: Vec<_> = (0..3)
        .map(|i| AvlRecord {
            time: t0 + chrono::Duration::seconds(i * 10),
            lat: 55.70 + i as f64 * 0.001,
            lon: 37.60,
            speed_kmh: 50,
            course: 90,
            altitude: 150,
            satellites: 12,
            io: vec![(io::IGNITION, 1, 1), (io::EXTERNAL_VOLTAGE, 2, 13_900)],
        })
        .collect();
    let pkt = encode_avl_packet(CODEC_8E, &recs);
    let ttopic = format!("{prefix}/{imei}/telemetry");
    publish_until_stored(&mut dev, &api, &ttopic, &imei, &pkt, 3).await;
    let t = track(&api, &imei).await;
    assert_eq!(t.len(), 3);
    assert!((t[2]["lat"].as_f64().unwrap() - 55.702).abs() < 1e-6);
    assert_eq!(t[0]["power_v"], 13.9);
    assert_eq!(t[0]["ignition"], true);
    let (_, v) = api.get(&format!("/api/v1/vehicles/{imei}")).await;
    assert_eq!(v["protocol"], "teltonika");

    // A body naming another device than the topic is refused.
    let liar = unique("liar");
    dev.publish(
        &format!("{prefix}/{liar}/telemetry"),
        br#"{"device_id":"someone-else","time":0,"lat":1,"lon":1}"#.to_vec(),
    )
    .await;

    // Commands reach the device on its command topic, encoded for its protocol.
    dev.client
        .subscribe(format!("{prefix}/+/commands"), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commands = daemon.mqtt_commands.clone().expect("MQTT enabled");
    commands
        .send(
            &DeviceId::new(json_dev.clone()),
            &DeviceCommand {
                seq: 5,
                body: CommandBody::EngineStop,
            },
        )
        .await
        .unwrap();
    commands
        .send(
            &DeviceId::new(imei.clone()),
            &DeviceCommand {
                seq: 6,
                body: CommandBody::EngineResume,
            },
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = tokio::time::timeout(Duration::from_secs(5), dev.received.recv())
            .await
            .expect("command within 5 s")
            .unwrap();
        got.push((p.topic.clone(), p.payload.to_vec()));
    }
    let by_topic = |t: String| {
        got.iter()
            .find(|(topic, _)| *topic == t)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no command on {t}: {got:?}"))
    };
    let json_cmd: serde_json::Value =
        serde_json::from_slice(&by_topic(format!("{prefix}/{json_dev}/commands"))).unwrap();
    assert_eq!(
        json_cmd,
        serde_json::json!({"seq": 5, "command": "engine_stop"})
    );
    assert_eq!(
        by_topic(format!("{prefix}/{imei}/commands")),
        fleetgate::protocols::teltonika::encode_codec12(b"setdigout 0").to_vec(),
        "Teltonika devices get Codec 12"
    );
    assert_eq!(
        commands.protocol_of(&DeviceId::new(imei.clone())),
        Some(Protocol::Teltonika)
    );
    assert!(commands
        .send(
            &DeviceId::new("never-seen"),
            &DeviceCommand {
                seq: 1,
                body: CommandBody::EngineStop
            }
        )
        .await
        .is_err());

    assert!(track(&api, &liar).await.is_empty());
    let (_, m) = api.text("/metrics").await;
    assert!(m.lines().any(|l| l.starts_with("fleetgate_mqtt_dropped_total") && l.contains("device_mismatch")), "{m}");
    daemon.stop().await;
    forget_sessions(&[format!("{prefix}-gw")]).await;
}

common::both_backends!(an_mqtt_device_removed_from_its_vehicle_is_refused_at_once);
/// The real binary is SIGKILLed while a device keeps publishing, then started again with the
/// same client id: the broker kept the session, queued what came meanwhile and redelivers
/// what was never acked, so every message the broker accepted ends up stored exactly once.
/// With `register_unknown = false`, an MQTT device taken out of its vehicle through the API
/// is refused at its next message: the MQTT source reads the one admission cache the API
/// clears (as the TCP listeners do, tests/teltonika_e2e.rs).
async fn an_mqtt_device_removed_from_its_vehicle_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("fgr");
    let config = format!(
        "{}[devices]\nregister_unknown = false\n",
        mqtt_section(&format!("{prefix}-gw"), &prefix)
    );
    let daemon = common::start(dir.path(), &config).await;
    let api = Api::new(daemon.api_addr);
    let mut dev = Device::connect(&unique("dev")).await;
    let phone = unique("phone");
    let vehicle = format!("car-{phone}");
    let (s, v) = api
        .put(
            &format!("/api/v1/vehicles/{vehicle}"),
            serde_json::json!({"device_id": phone, "protocol": "mqtt"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let topic = format!("{prefix}/{phone}/telemetry");
    let fix = |minute: u32| {
        format!(r#"{{"time":"2026-11-20T09:{minute:02}:00Z","lat":55.75,"lon":37.61}}"#)
            .into_bytes()
    };
    publish_until_stored(&mut dev, &api, &topic, &vehicle, &fix(0), 1).await;

    let refused = || {
        common::metric(
            &api,
            "fleetgate_mqtt_dropped_total",
            &[("reason", "refused")],
        )
    };
    let before = refused().await;
    let (s, v) = api
        .put(
            &format!("/api/v1/vehicles/{vehicle}"),
            serde_json::json!({"device_id": unique("other")}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    dev.publish(&topic, fix(1)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refused().await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed device's message was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_gateway_loses_no_published_fix() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("fgr");
    let port = free_port();
    let mut cfg = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"sqlite://{}/fg.db\"\nsqlite_synchronous = \"normal\"\n[listeners]\n",
        dir.path().display()
    );
    for p in Protocol::ALL {
        cfg.push_str(&format!("{} = \"off\"\n", p.name()));
    }
    cfg.push_str(&mqtt_section(&format!("{prefix}-gw"), &prefix));
    let cfg_path = dir.path().join("fleetgate.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let api = Api::new(format!("127.0.0.1:{port}").parse().unwrap());

    let mut gw = spawn(&cfg_path);
    wait_ready(&api).await;
    let device = unique("car");
    let topic = format!("{prefix}/{device}/telemetry");
    let mut dev = Device::connect(&unique("pub")).await;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
    let fix = move |i: i64| {
        serde_json::json!({"time": (t0 + chrono::Duration::seconds(i)).to_rfc3339(),
                           "lat": 55.7 + i as f64 * 1e-4, "lon": 37.6})
        .to_string()
    };
    // The session exists once the first fix is stored.
    publish_until_stored(&mut dev, &api, &topic, &device, fix(0).as_bytes(), 1).await;

    const N: i64 = 150;
    let published = Arc::new(Mutex::new(BTreeSet::new()));
    let pubs = published.clone();
    let topic2 = topic.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            dev.publish(&topic2, fix(i).into_bytes()).await;
            pubs.lock().unwrap().insert(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Kill twice at different points of the stream, restart each time.
    for wait_for in [N / 4, (2 * N) / 3] {
        while (published.lock().unwrap().len() as i64) < wait_for {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gw.kill().unwrap();
        gw.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw = spawn(&cfg_path);
        wait_ready(&api).await;
    }
    publisher.await.unwrap();
    let t = wait_stored(&api, &device, N as usize + 1, 30).await;
    gw.kill().unwrap();
    gw.wait().unwrap();
    let times: BTreeSet<String> = t
        .iter()
        .map(|p| p["time"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(t.len(), times.len(), "each fix stored once");
    assert_eq!(
        t.len(),
        N as usize + 1,
        "every fix the broker accepted is stored"
    );
    forget_sessions(&[format!("{prefix}-gw")]).await;
}

fn shared_section(client_id: &str, prefix: &str, group: &str) -> String {
    format!(
        "{}shared_group = \"{group}\"\n",
        mqtt_section(client_id, prefix)
    )
}

/// Publish fixes 1..=n for `device`, each acked by the broker.
async fn publish_fixes(dev: &mut Device, topic: &str, n: i64) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap();
    for i in 1..=n {
        let body = serde_json::json!({"time": (t0 + chrono::Duration::seconds(i)).to_rfc3339(),
                                      "lat": 55.7, "lon": 37.6 + i as f64 * 1e-4});
        dev.publish(topic, body.to_string().into_bytes()).await;
    }
}

/// Wait until the broker has given both members their subscription: a probe per member
/// device, re-sent until each instance has stored one (the group splits them).
async fn wait_group_ready(dev: &mut Device, prefix: &str, apis: &[&Api]) {
    for attempt in 0..100 {
        let probe = format!("probe{attempt}");
        let topic = format!("{prefix}/{probe}/telemetry");
        dev.publish(
            &topic,
            br#"{"time":"2026-11-20T00:00:00Z","lat":1,"lon":1}"#.to_vec(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut ready = true;
        for api in apis {
            let (_, vs) = api.get("/api/v1/vehicles").await;
            let has = vs.as_array().is_some_and(|a| {
                a.iter()
                    .any(|v| v["id"].as_str().is_some_and(|id| id.starts_with("probe")))
            });
            ready &= has;
        }
        if ready {
            return;
        }
    }
    panic!("shared subscription not split between the instances");
}

/// Two instances in one `shared_group`, each with its own SQLite: the broker gives every
/// message to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_splits_messages_between_instances() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = unique("fgs");
    let group = unique("g");
    let a = common::start(
        da.path(),
        &shared_section(&format!("{prefix}-a"), &prefix, &group),
    )
    .await;
    let b = common::start(
        db.path(),
        &shared_section(&format!("{prefix}-b"), &prefix, &group),
    )
    .await;
    let (api_a, api_b) = (Api::new(a.api_addr), Api::new(b.api_addr));
    let mut dev = Device::connect(&unique("dev")).await;
    wait_group_ready(&mut dev, &prefix, &[&api_a, &api_b]).await;

    let device = unique("car");
    let topic = format!("{prefix}/{device}/telemetry");
    publish_fixes(&mut dev, &topic, 40).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (mut na, mut nb) = (0, 0);
    while tokio::time::Instant::now() < deadline {
        na = track(&api_a, &device).await.len();
        nb = track(&api_b, &device).await.len();
        if na + nb >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(na + nb, 40, "each message to one member: a={na} b={nb}");
    assert!(na > 0 && nb > 0, "both members got a share: a={na} b={nb}");
    a.stop().await;
    b.stop().await;
    forget_sessions(&[format!("{prefix}-a"), format!("{prefix}-b")]).await;
}

/// Two instances on one PostgreSQL, sharing the MQTT load: every fix stored once, readable
/// through either instance's API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgres() {
    let schema = common::pg::PgSchema::create().await;
    let prefix = unique("fgp");
    let group = unique("g");
    let a = common::start_with_storage(
        &schema.url,
        &shared_section(&format!("{prefix}-a"), &prefix, &group),
    )
    .await;
    let b = common::start_with_storage(
        &schema.url,
        &shared_section(&format!("{prefix}-b"), &prefix, &group),
    )
    .await;
    let (api_a, api_b) = (Api::new(a.api_addr), Api::new(b.api_addr));
    let mut dev = Device::connect(&unique("dev")).await;
    // Both instances read the same database: a probe stored by either is visible to both.
    let probe = unique("probe");
    publish_until_stored(
        &mut dev,
        &api_b,
        &format!("{prefix}/{probe}/telemetry"),
        &probe,
        br#"{"time":"2026-11-20T00:00:00Z","lat":1,"lon":1}"#,
        1,
    )
    .await;
    assert_eq!(track(&api_a, &probe).await.len(), 1);
    let device = unique("car");
    let topic = format!("{prefix}/{device}/telemetry");
    publish_fixes(&mut dev, &topic, 40).await;
    let t = wait_stored(&api_a, &device, 40, 15).await;
    assert_eq!(t.len(), 40, "every fix, once");
    let times: BTreeSet<_> = t.iter().map(|p| p["time"].to_string()).collect();
    assert_eq!(times.len(), 40);
    assert_eq!(
        track(&api_b, &device).await,
        t,
        "the same data through either instance"
    );
    let (_, v) = api_b.get(&format!("/api/v1/vehicles/{device}")).await;
    assert_eq!(v["protocol"], "mqtt");
    a.stop().await;
    b.stop().await;
    forget_sessions(&[format!("{prefix}-a"), format!("{prefix}-b")]).await;
    drop(schema);
}

/// The broker restarts while a device keeps publishing: fleetgate reconnects with backoff,
/// resubscribes, and every fix the broker accepted is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_reconnects_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let prefix = unique("fgb");
    let daemon = common::start(dir.path(), &mqtt_section_at(&url, &unique("fg"), &prefix)).await;
    let api = Api::new(daemon.api_addr);
    let mut dev = Device::connect_to(&unique("dev"), broker.port).await;
    let device = unique("car");
    let topic = format!("{prefix}/{device}/telemetry");
    publish_until_stored(
        &mut dev,
        &api,
        &topic,
        &device,
        br#"{"time":"2026-11-20T17:59:00Z","lat":55.7,"lon":37.6}"#,
        1,
    )
    .await;

    const N: i64 = 60;
    let published = Arc::new(Mutex::new(0i64));
    let count = published.clone();
    let topic2 = topic.clone();
    let publisher = tokio::spawn(async move {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 18, 0, 0).unwrap();
        for i in 1..=N {
            let body = serde_json::json!({"time": (t0 + chrono::Duration::seconds(i)).to_rfc3339(),
                                          "lat": 55.7, "lon": 37.6});
            // Returns once the broker (perhaps the restarted one) has accepted it.
            dev.publish(&topic2, body.to_string().into_bytes()).await;
            *count.lock().unwrap() = i;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    while *published.lock().unwrap() < N / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| broker.restart());
    publisher.await.unwrap();
    let t = wait_stored(&api, &device, N as usize + 1, 30).await;
    assert_eq!(
        t.len(),
        N as usize + 1,
        "every accepted fix stored after the broker restart"
    );
    daemon.stop().await;
}

/// PUBACK only after commit: while PostgreSQL refuses the write, the message is retried and
/// not acknowledged; stopping fleetgate then leaves it with the broker, which delivers it to the
/// next run once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_committed_is_not_acked_and_comes_back() {
    use sqlx::Connection;
    let schema = common::pg::PgSchema::create().await;
    let prefix = unique("fgn");
    let section = mqtt_section(&format!("{prefix}-gw"), &prefix);
    let daemon = common::start_with_storage(&schema.url, &section).await;
    let api = Api::new(daemon.api_addr);
    let mut dev = Device::connect(&unique("dev")).await;
    let device = unique("car");
    let topic = format!("{prefix}/{device}/telemetry");
    let fix = |m: u32| format!(r#"{{"time":"2026-11-20T09:{m:02}:00Z","lat":55.7,"lon":37.6}}"#);
    publish_until_stored(&mut dev, &api, &topic, &device, fix(0).as_bytes(), 1).await;

    // Break the database under the running daemon.
    let mut db = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    sqlx::query("ALTER TABLE positions RENAME TO positions_away")
        .execute(&mut db)
        .await
        .unwrap();
    dev.publish(&topic, fix(1).into_bytes()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.stop().await;

    // Repair it and start again with the same session: the broker still has the message.
    sqlx::query("ALTER TABLE positions_away RENAME TO positions")
        .execute(&mut db)
        .await
        .unwrap();
    let _ = db.close().await;
    let daemon = common::start_with_storage(&schema.url, &section).await;
    let api = Api::new(daemon.api_addr);
    let t = wait_stored(&api, &device, 2, 15).await;
    assert_eq!(
        t.len(),
        2,
        "the unacked fix was redelivered and stored: {t:?}"
    );
    assert_eq!(t[1]["time"], "2026-11-20T09:01:00Z");
    daemon.stop().await;
    forget_sessions(&[format!("{prefix}-gw")]).await;
    drop(schema);
}
