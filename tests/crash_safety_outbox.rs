//! Outbox crash safety: the real binary is SIGKILLed at random moments while CRM events are
//! being created through the API and delivered to an in-test webhook CRM
//! (`tests/crm_fake`), then restarted on the same database. The CRM applies a call before it
//! answers and answers late (`delay_ms`), so kills land between "the CRM applied it" and
//! "fleetgate marked it delivered", and some calls fail with 500 first.
//!
//! Every event whose creating API call was answered 2xx is delivered; every event in the
//! outbox is delivered and applied exactly once; a repeat only ever carries the same
//! idempotency key and the same body; no event appears under two keys.

mod common;
mod crm_fake;

use common::process::{free_port, spawn, wait_ready};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Api;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Complete inspections of `car` with increasing odometers until the daemon goes away; each
/// answered call is one `mileage` event with that odometer.
async fn operator(api: Arc<Api>, car: String, next: Arc<Mutex<u64>>, acked: Arc<Mutex<Vec<u64>>>) {
    loop {
        let km = {
            let mut n = next.lock().unwrap();
            *n += 1;
            *n
        };
        let r = api
            .client
            .post(format!(
                "{}/api/v1/vehicles/{car}/inspection/complete",
                api.base
            ))
            .json(&json!({ "odometer_km": km }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => acked.lock().unwrap().push(km),
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn key(c: &crm_fake::Call) -> String {
    c.headers["idempotency-key"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_crm_delivery_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("FLEETGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (FLEETGATE_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let hook = crm_fake::start("webhook").await;
    hook.fake.delay_ms.store(40, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let aport = free_port();
    let mut cfg = format!(
        "[api]\nlisten = \"127.0.0.1:{aport}\"\n[storage]\nurl = \"sqlite://{}/fg.db\"\n[listeners]\n",
        dir.path().display()
    );
    for p in fleetgate::protocols::Protocol::ALL {
        cfg.push_str(&format!("{} = \"off\"\n", p.name()));
    }
    cfg.push_str(&format!(
        "[crm]\nkind = \"webhook\"\nurl = \"{}/events\"\nsecret = \"webhook-secret-123\"\n\
         backoff_initial_s = 0.05\nbackoff_max_s = 0.3\npoll_ms = 50\n",
        hook.url
    ));
    let cfg_path = dir.path().join("fleetgate.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let api = Arc::new(Api::new(format!("127.0.0.1:{aport}").parse().unwrap()));

    let mut gw = spawn(&cfg_path);
    wait_ready(&api).await;
    let cars = ["car-k1", "car-k2", "car-k3"];
    for (i, car) in cars.iter().enumerate() {
        let (st, v) = api
            .put(
                &format!("/api/v1/vehicles/{car}"),
                json!({ "crm_deal_id": format!("{}", 500 + i), "driver_id": format!("drv-k{i}"), "status": "issued" }),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    // Each car's odometers live in their own range, so an odometer names one call.
    let counters: Vec<_> = (0..cars.len())
        .map(|i| Arc::new(Mutex::new(1_000_000 * (i as u64 + 1))))
        .collect();
    let acked = Arc::new(Mutex::new(Vec::new()));

    for round in 0..4 {
        if round > 0 {
            gw = spawn(&cfg_path);
            wait_ready(&api).await;
        }
        // A few failures first: events back off and pile up.
        hook.fake.fail_next(&[500, 500, 500]);
        let ops: Vec<_> = cars
            .iter()
            .zip(&counters)
            .map(|(car, n)| {
                tokio::spawn(operator(
                    api.clone(),
                    car.to_string(),
                    n.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..1500))).await;
        gw.kill().expect("SIGKILL");
        gw.wait().unwrap();
        for o in ops {
            let _ = o.await;
        }
    }

    // Last run: let the outbox drain.
    let mut gw = spawn(&cfg_path);
    wait_ready(&api).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let view = loop {
        let (st, v) = api.get("/api/v1/crm/outbox?status=all&limit=1000").await;
        assert_eq!(st, 200, "{v}");
        if v["counts"]["pending"] == 0 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    gw.kill().unwrap();
    gw.wait().unwrap();

    let acked = acked.lock().unwrap().clone();
    let calls = hook.fake.calls();
    assert_eq!(
        view["counts"]["pending"], 0,
        "outbox drained: {}",
        view["counts"]
    );
    assert_eq!(view["counts"]["dead"], 0, "{}", view["counts"]);
    let events = view["events"].as_array().unwrap();
    assert!(events.len() < 1000, "listing complete");

    // Applied (200) and repeated (208) calls by key.
    let mut by_key: BTreeMap<String, Vec<&crm_fake::Call>> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.status == 200 || c.status == 208) {
        by_key.entry(key(c)).or_default().push(c);
    }
    let mut keys_by_km: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut repeats = 0;
    for (k, cs) in &by_key {
        let applied = cs.iter().filter(|c| c.status == 200).count();
        assert_eq!(applied, 1, "{k} applied {applied} times");
        repeats += cs.len() - 1;
        assert!(
            cs.iter().all(|c| c.body == cs[0].body),
            "{k}: a repeat with another body"
        );
        assert_eq!(cs[0].body["id"], Value::String(k.clone()));
        if cs[0].body["type"] == "mileage" {
            let km = cs[0].body["odometer_km"].as_f64().unwrap() as u64;
            keys_by_km.entry(km).or_default().insert(k.clone());
        }
    }
    // No event under two keys.
    for (km, ks) in &keys_by_km {
        assert_eq!(
            ks.len(),
            1,
            "odometer {km} delivered as {} events: {ks:?}",
            ks.len()
        );
    }
    // Every acknowledged event was delivered.
    let lost: Vec<_> = acked
        .iter()
        .filter(|km| !keys_by_km.contains_key(km))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 200 but never delivered: {lost:?}"
    );
    // Every event in the outbox was delivered, and nothing was delivered that is not in it.
    let outbox_keys: BTreeSet<String> = events
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    let delivered_keys: BTreeSet<String> = by_key.keys().cloned().collect();
    assert_eq!(outbox_keys, delivered_keys, "outbox and CRM disagree");
    println!(
        "{} calls answered 200 before the kills; {} events in the outbox, all delivered once; \
         {repeats} repeats of an applied key (delivery interrupted by a kill); {} failed calls",
        acked.len(),
        outbox_keys.len(),
        calls
            .iter()
            .filter(|c| c.status != 200 && c.status != 208)
            .count()
    );
    assert!(
        acked.len() >= 20,
        "the load produced events: {}",
        acked.len()
    );
}
