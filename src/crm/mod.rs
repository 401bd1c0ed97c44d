//! CRM integration: business rules on the fleet's cars and a durable outbox toward the CRM.
//!
//! Committed fixes (`Pipeline::start(.., subscribers)`) and API calls feed one rules actor
//! ([`engine`]): "on line" / "wants to return" ([`shift`]), driver balances and inspections
//! ([`rules`]). Its state changes and the events they cause are written in one transaction;
//! the [`outbox`] worker delivers them through a [`connector`] (webhook, amoCRM, Bitrix24).
//! Blocking is not done here: the rules add and lift reasons through [`BlockReasons`] (the
//! immobiliser), and "inside the service area" comes from [`FleetZones`] (the geofences).

pub mod blocks;
pub mod checker;
pub mod config;
pub mod connector;
pub mod engine;
pub mod event;
pub mod handback;
pub mod inbound;
pub mod memory;
pub mod messages;
pub mod mileage;
pub mod oauth;
pub mod outbox;
pub mod ratelimit;
pub mod rules;
pub mod shift;
pub mod store;
pub mod zones;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::VehicleId;

pub use config::{CrmConfig, RulesConfig};
pub use engine::{CrmError, CrmHandle};

/// Block reasons the CRM rules own.
pub const REASON_LOW_BALANCE: &str = "low_balance";
pub const REASON_INSPECTION: &str = "inspection";

/// How one vehicle stands with the immobiliser, for the fleet summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockView {
    /// Active reasons (any source: CRM rules, operator, zones).
    pub reasons: Vec<String>,
    /// A block was decided but not yet confirmed by the car (waiting for it to stop, offline…).
    pub pending: bool,
    /// The car confirmed the block (it answered the command, or its telemetry shows it).
    pub confirmed: bool,
    /// The comment given with a reason, when there is one (an operator's for `manual`).
    pub comments: BTreeMap<String, String>,
}

/// Why a block reason did not reach the immobiliser (its own error, kept as the source).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReasonError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The immobiliser as the CRM rules see it. `set_reason` must be idempotent: the rules
/// re-assert their active reasons after every restart.
#[async_trait]
pub trait BlockReasons: Send + Sync + 'static {
    async fn set_reason(
        &self,
        vehicle: &VehicleId,
        reason: &str,
        active: bool,
        actor: &str,
        comment: &str,
    ) -> Result<(), ReasonError>;
    /// Every vehicle with a reason or a pending block.
    async fn snapshot(&self) -> HashMap<VehicleId, BlockView>;
}

/// Zone membership as the CRM rules need it.
#[async_trait]
pub trait FleetZones: Send + Sync + 'static {
    /// Is this fix inside the fleet's service area?
    async fn inside_service_area(&self, vehicle: &VehicleId, lat: f64, lon: f64) -> bool;
    /// The parking lot (depot) the car stands in, if any.
    async fn parking_lot(&self, _vehicle: &VehicleId, _lat: f64, _lon: f64) -> Option<String> {
        None
    }
}

/// What the CRM rules act through.
#[derive(Clone)]
pub struct Wiring {
    pub reasons: Arc<dyn BlockReasons>,
    pub zones: Arc<dyn FleetZones>,
}

/// What a caller of `app::start_with` may plug in; `None` takes the daemon's default: block
/// reasons kept in memory (visible in the summary, no relay switched) until the immobiliser
/// is wired, and the geofence stage's zones.
#[derive(Clone, Default)]
pub struct Seams {
    pub reasons: Option<Arc<dyn BlockReasons>>,
    pub zones: Option<Arc<dyn FleetZones>>,
}

/// The running CRM side, to be stopped after the pipeline's writer (see [`start`]).
pub struct CrmTasks {
    /// Ends by itself once the committed-fixes channel closes.
    pub engine: tokio::task::JoinHandle<()>,
    /// Outbox worker and balance checker: stopped by `stop`.
    pub workers: Vec<tokio::task::JoinHandle<()>>,
    pub stop: tokio_util::sync::CancellationToken,
    /// Stops the outbox worker's deliveries (see [`CrmTasks::stop_deliveries`]).
    pub deliveries: tokio_util::sync::CancellationToken,
}

impl CrmTasks {
    /// Shutdown has begun: start no new CRM request from now on; what is in flight gets
    /// [`outbox::SHUTDOWN_GRACE`], then stays pending for the next start.
    pub fn stop_deliveries(&self) {
        self.deliveries.cancel();
    }

    /// Wait for the rules to finish the last commits, then stop the workers.
    pub async fn shutdown(self) {
        self.deliveries.cancel();
        let _ = self.engine.await;
        self.stop.cancel();
        for w in self.workers {
            let _ = w.await;
        }
    }
}

/// What `start` reads of the configuration: the CRM's own sections and the few facts it
/// takes from others (only `app` sees the whole `Config`).
pub struct CrmStart<'a> {
    pub crm: &'a CrmConfig,
    pub rules: &'a RulesConfig,
    /// `[pipeline] queue`: the rules actor's inbox is at least this deep (at least 64).
    pub queue: usize,
    /// Other instances may share the database and decide for the same vehicles.
    pub shared_database: bool,
    /// `[cluster] instance_id`: who claims outbox rows.
    pub claimer: String,
    /// `[cluster] outbox_lease_s`.
    pub lease: std::time::Duration,
}

/// Start the rules actor, the outbox worker and the balance checker. Returns the handle for
/// the API, the sender to pass to `Pipeline::start` as a subscriber, and the tasks.
pub fn start(
    config: CrmStart<'_>,
    store: Arc<dyn store::CrmStore>,
    seams: Seams,
    geofences: Arc<dyn FleetZones>,
) -> Result<
    (
        CrmHandle,
        tokio::sync::mpsc::Sender<Arc<crate::pipeline::Committed>>,
        CrmTasks,
    ),
    connector::ConnectorError,
> {
    let wiring = Wiring {
        reasons: seams
            .reasons
            .unwrap_or_else(|| Arc::new(memory::MemoryBlockReasons::default())),
        zones: seams.zones.unwrap_or(geofences),
    };
    let connector = connector::build(config.crm, store.clone())?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let emit = engine::Emit {
        on: connector.is_some(),
        without_deal: config.crm.kind == "webhook",
    };
    let ttl = chrono::Duration::seconds(config.crm.event_ttl_s as i64);
    let (eng, mut handle, cmds) = engine::new(
        store.clone(),
        wiring,
        config.rules.clone(),
        emit,
        ttl,
        wake.clone(),
    );
    // Other instances may share a PostgreSQL database and decide for the same vehicles.
    handle.connector = connector.clone();
    handle.config = Arc::new(config.crm.clone());
    handle.inbound_seen = Arc::new(std::sync::Mutex::new(inbound::Seen::new(
        std::time::Duration::from_secs(config.crm.inbound.dedup_s),
        100_000,
    )));
    let eng = eng
        .shared_database(config.shared_database)
        .car_card(config.crm.car_entity(), config.crm.location_interval());
    let (tx, rx) = tokio::sync::mpsc::channel(config.queue.max(64));
    let engine = tokio::spawn(eng.run(rx, cmds));
    let stop = tokio_util::sync::CancellationToken::new();
    let deliveries = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    if let Some(c) = connector {
        tracing::info!(kind = c.name(), "crm connector ready");
        let worker = outbox::OutboxWorker {
            store,
            claimer: config.claimer.clone(),
            lease: config.lease,
            connector: c.clone(),
            cfg: config.crm.clone(),
            wake,
            companies: Default::default(),
        };
        workers.push(tokio::spawn(worker.run(deliveries.clone())));
        workers.push(tokio::spawn(checker::run(
            handle.clone(),
            c,
            std::time::Duration::from_secs(config.rules.balance_check_interval),
            stop.clone(),
        )));
    }
    Ok((
        handle,
        tx,
        CrmTasks {
            engine,
            workers,
            stop,
            deliveries,
        },
    ))
}
