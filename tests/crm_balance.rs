//! The balance rule on tokio's paused clock: the drivers of issued cars are checked every
//! 20 minutes, on line or not; a balance under the minimum adds `low_balance` (and a driver message), a
//! top-up lifts it. The rules run against in-memory storage (a database pool's timers would
//! fire early on a paused clock) and the in-memory immobiliser seam.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use fleetgate::crm::connector::{BalanceQuery, Connector, ConnectorError, Outcome, PulledBalance};
use fleetgate::crm::engine::{self, Emit};
use fleetgate::crm::event::{OutboxEvent, Payload};
use fleetgate::crm::memory::{Everywhere, MemoryBlockReasons, MemoryCrmStore};
use fleetgate::crm::{checker, RulesConfig, Wiring};
use fleetgate::model::{DeviceId, Position, VehicleId};
use fleetgate::pipeline::Committed;
use fleetgate::protocols::Protocol;
use fleetgate::storage::{DeviceState, NewPosition, StoredPosition, Vehicle, WriteItem};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The CRM core's balances, as the periodic check pulls them: `rub` for drv-1, 12 000 ₽ for
/// everyone else.
struct Balances {
    rub: Mutex<f64>,
    asked: Mutex<Vec<(Instant, String)>>,
}

#[async_trait]
impl Connector for Balances {
    fn name(&self) -> &'static str {
        "test"
    }
    fn close(&self) {}
    async fn deliver(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        vec![Outcome::Delivered; events.len()]
    }
    async fn balance(&self, q: &BalanceQuery) -> Result<PulledBalance, ConnectorError> {
        self.asked
            .lock()
            .unwrap()
            .push((Instant::now(), q.driver_id.clone()));
        let rub = if q.driver_id == "drv-1" {
            *self.rub.lock().unwrap()
        } else {
            12_000.0
        };
        Ok(PulledBalance { rub, as_of: None })
    }
}

fn vehicle(id: &str, device: &str, driver: &str) -> Vehicle {
    Vehicle {
        id: VehicleId(id.into()),
        device_id: Some(DeviceId::new(device)),
        protocol: Some("teltonika".into()),
        plate: None,
        driver_id: Some(driver.into()),
        crm_deal_id: Some("77".into()),
        crm_company_id: None,
        status: "issued".into(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

/// Three minutes of driving at 30 km/h, committed.
fn drive(device: &str) -> Arc<Committed> {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 7, 0, 0).unwrap();
    let positions: Vec<NewPosition> = (0..19)
        .map(|i| {
            let mut p = Position::new(
                t0 + chrono::Duration::seconds(i * 10),
                true,
                55.75 + i as f64 * 0.0008,
                37.6,
            );
            p.speed_kmh = 30.0;
            p.ignition = Some(true);
            NewPosition::new(p, i as f64 * 83.0)
        })
        .collect();
    let last = positions.last().unwrap();
    let state = DeviceState {
        device_id: DeviceId::new(device),
        protocol: "teltonika".into(),
        last_seen: last.position.fix_time,
        position: Some(StoredPosition::from_position(
            &last.position,
            Utc::now(),
            last.gps_odometer_m,
        )),
        gps_odometer_m: last.gps_odometer_m,
    };
    Arc::new(Committed {
        item: WriteItem {
            packed: Vec::new(),
            origin: Default::default(),
            device: DeviceId::new(device),
            protocol: Protocol::Teltonika,
            server_time: Utc::now(),
            positions,
            state,
        },
    })
}

#[tokio::test(start_paused = true)]
async fn balance_checked_every_20_minutes_low_sets_reason_top_up_lifts() {
    let store = Arc::new(MemoryCrmStore::default());
    *store.vehicles.lock().unwrap() = vec![
        vehicle("car-1", "dev-1", "drv-1"),
        vehicle("car-2", "dev-2", "drv-2"),
    ];
    let reasons = Arc::new(MemoryBlockReasons::default());
    let wiring = Wiring {
        reasons: reasons.clone(),
        zones: Arc::new(Everywhere),
    };
    let rules = RulesConfig::default();
    assert_eq!(rules.balance_check_interval, 20 * 60);
    let (eng, handle, cmds) = engine::new(
        store.clone(),
        wiring,
        rules.clone(),
        Emit {
            on: true,
            without_deal: false,
        },
        chrono::Duration::days(1),
        Arc::new(Notify::new()),
    );
    let (fixes, fixes_rx) = mpsc::channel(8);
    tokio::spawn(eng.run(fixes_rx, cmds));
    let crm = Arc::new(Balances {
        rub: Mutex::new(12_000.0),
        asked: Mutex::new(Vec::new()),
    });
    let t0 = Instant::now();
    let stop = CancellationToken::new();
    tokio::spawn(checker::run(
        handle.clone(),
        crm.clone(),
        Duration::from_secs(rules.balance_check_interval),
        stop.clone(),
    ));
    // car-1 goes on line; car-2 never moves, and its driver is checked all the same.
    fixes.send(drive("dev-1")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(handle.shifts().await[&VehicleId("car-1".into())].on_line);

    tokio::time::sleep(Duration::from_secs(20 * 60 - 2)).await;
    assert!(
        crm.asked.lock().unwrap().is_empty(),
        "not before 20 minutes"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(crm.asked.lock().unwrap().len(), 2);
    assert!(reasons.calls().is_empty(), "12 000 ₽ is enough");

    *crm.rub.lock().unwrap() = 3_000.0;
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let calls = reasons.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].vehicle, VehicleId("car-1".into()));
    assert_eq!(
        (calls[0].reason.as_str(), calls[0].active),
        ("low_balance", true)
    );
    let kinds: Vec<&str> = store
        .events()
        .iter()
        .map(|e| e.payload.kind())
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    assert!(kinds.contains(&"driver_message"), "{kinds:?}");
    let msg = store
        .events()
        .into_iter()
        .find_map(|e| match e.payload {
            Payload::DriverMessage {
                driver_id, reason, ..
            } => Some((driver_id, reason)),
            _ => None,
        })
        .unwrap();
    assert_eq!(msg, (Some("drv-1".into()), "low_balance".into()));

    *crm.rub.lock().unwrap() = 9_000.0;
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let calls = reasons.calls();
    assert!(calls.len() >= 2);
    let last = calls.last().unwrap();
    assert_eq!((last.reason.as_str(), last.active), ("low_balance", false));

    let asked: Vec<(u64, String)> = crm
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|(t, d)| ((*t - t0).as_secs(), d.clone()))
        .collect();
    assert_eq!(
        asked,
        [
            (1200, "drv-1".into()),
            (1200, "drv-2".into()),
            (2400, "drv-1".into()),
            (2400, "drv-2".into()),
            (3600, "drv-1".into()),
            (3600, "drv-2".into())
        ],
        "a 20-minute cadence, every issued car's driver"
    );
    stop.cancel();
}
