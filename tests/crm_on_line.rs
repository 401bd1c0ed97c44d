//! "On line" through the daemon, as a Moscow taxi shift looks to the trackers: four cars on
//! real Teltonika sessions against an in-test amoCRM. Stop-and-go city traffic (110 s at
//! 35 km/h, 25 s at a light, for 34 minutes) moves its deal to On line exactly once, within
//! minutes of the start; a yard idle with the engine on, a 200 m parking-lot shuffle and a
//! tow with the ignition off never do. Fix times are a past half hour sent at once: the rule
//! judges by fix time.

mod common;
mod crm_fake;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::teltonika::{self, Drive as Car};
use common::Api;
use crm_fake::config::{amocrm, seams, stage_patches, ON_LINE};
use fleetgate::protocols::{Protocol, Transport};
use serde_json::json;

common::both_backends!(city_traffic_goes_on_line_once_yard_lot_and_tow_never);
async fn city_traffic_goes_on_line_once_yard_lot_and_tow_never() {
    let amo = crm_fake::start("amocrm").await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &amocrm(&amo.url, "", ""));
    let daemon = fleetgate::app::start_with(config, seams()).await.unwrap();
    let api = Api::new(daemon.api_addr);
    let t0 = Utc::now() - chrono::Duration::minutes(40);

    let mut city = Car::new(t0);
    for _ in 0..15 {
        city.go(110, 35.0, true).go(25, 0.0, true);
    }
    let mut yard = Car::new(t0);
    yard.go(34 * 60, 0.0, true);
    let mut lot = Car::new(t0);
    for _ in 0..6 {
        // 200 m at 10 km/h, a pause, and back.
        lot.go(70, 10.0, true)
            .go(80, 0.0, true)
            .go(70, -10.0, true)
            .go(80, 0.0, true);
    }
    let mut towed = Car::new(t0);
    towed.go(30 * 60, 40.0, false);

    let cars = [
        ("city", "356307042441001", city),
        ("yard", "356307042441002", yard),
        ("lot", "356307042441003", lot),
        ("towed", "356307042441004", towed),
    ];
    for (i, (name, imei, _)) in cars.iter().enumerate() {
        let (st, v) = api
            .put(
                &format!("/api/v1/vehicles/{name}"),
                json!({ "device_id": imei, "protocol": "teltonika", "status": "issued",
                        "crm_deal_id": (5000 + i).to_string(), "driver_id": format!("drv-{name}") }),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    for (_, imei, car) in &cars {
        let mut t = teltonika::login(addr, imei).await;
        for chunk in car.recs.chunks(50) {
            teltonika::send_records(&mut t, chunk).await;
        }
    }

    assert!(
        crm_fake::wait_for(15, || !stage_patches(&amo.fake).is_empty()).await,
        "the city car goes on line: {:?}",
        amo.fake.calls()
    );
    // Let everything queued be delivered: nothing else may follow.
    assert!(
        crm_fake::wait_for(10, || {
            amo.fake.calls().len() == stage_patches(&amo.fake).len()
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let patches = stage_patches(&amo.fake);
    assert_eq!(patches.len(), 1, "exactly one stage move: {patches:?}");
    assert_eq!(patches[0].path, "/api/v4/leads/5000", "the city car's deal");
    assert_eq!(patches[0].body["status_id"], ON_LINE.1);

    // Within minutes of the shift's start, by fix time (3 min of movement, lights included).
    let (st, ob) = api.get("/api/v1/crm/outbox?status=all").await;
    assert_eq!(st, 200, "{ob}");
    let events = ob["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{ob}");
    let at: DateTime<Utc> = serde_json::from_value(events[0]["payload"]["at"].clone()).unwrap();
    let after = (at - t0).num_seconds();
    assert!(
        (180..=300).contains(&after),
        "on line {after} s after the start"
    );
    let (_, s) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(s["on_line"], 1, "{s}");
    daemon.stop().await;
}
