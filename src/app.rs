//! The daemon: opens storage, starts the pipeline, binds every listener and the API, and
//! shuts down in the order that loses nothing — stop accepting, let connections finish the
//! frame they are on (commit, then ack), then drain the shards and the writer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::ingest::{self, Admission, ConnLimits, IngestCtx, Sessions};
use crate::pipeline::Pipeline;
use crate::protocols::{Protocol, Transport};
use crate::storage::{self, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Zones(#[from] crate::geofence::stage::LoadError),
    #[error("{key}: cannot bind {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Mqtt(#[from] ingest::mqtt::MqttError),
    #[error("crm: {0}")]
    Crm(String),
}

/// A started daemon.
pub struct Running {
    pub api_addr: SocketAddr,
    /// Every bound tracker listener.
    pub listeners: Vec<(Protocol, Transport, SocketAddr)>,
    /// Commands to MQTT devices (when `[mqtt] url` is set).
    pub mqtt_commands: Option<ingest::mqtt::MqttCommands>,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
    /// The zone stage, for status and reloads.
    pub zones: crate::geofence::stage::ZonesHandle,
    config: Arc<Config>,
    store: storage::Stores,
    reloads: crate::ops::reload::Reloads,
    health: crate::ops::service::Health,
}

impl Running {
    /// A handle that reloads the zones (for the SIGHUP handler).
    pub fn zone_reloader(&self) -> ZoneReloader {
        ZoneReloader {
            zones: self.zones.clone(),
            config: self.config.clone(),
            store: self.store.clone(),
        }
    }

    /// The address a protocol's TCP (or UDP) listener is bound to.
    pub fn addr(&self, protocol: Protocol, transport: Transport) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(p, t, _)| *p == protocol && *t == transport)
            .map(|(_, _, a)| *a)
    }

    /// The token whose cancellation starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shut down gracefully and wait until everything acknowledged is committed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// The reload signal (SIGHUP): publish a new config, or subscribe a stage that reloads.
    pub fn reloads(&self) -> crate::ops::reload::Reloads {
        self.reloads.clone()
    }

    /// What the systemd watchdog probes.
    pub fn health(&self) -> crate::ops::service::Health {
        self.health.clone()
    }

    /// Wait for a shutdown started elsewhere (signal handler) to complete.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Reloads zones from `[geofences] dir` and storage; on error the zones in force stay.
#[derive(Clone)]
pub struct ZoneReloader {
    zones: crate::geofence::stage::ZonesHandle,
    config: Arc<Config>,
    store: storage::Stores,
}

impl ZoneReloader {
    /// Re-read the files and stored zones; the new set goes through the same review as an API
    /// change (geometry and coordinate order of the zones that changed, and the mass-exit
    /// guard, which a reload cannot force: a restart applies the files as they are).
    pub async fn reload(&self) -> Result<usize, crate::geofence::stage::LoadError> {
        use crate::geofence::edit;
        use crate::geofence::stage::LoadError;
        let cfg = &self.config.geofences;
        let _edit = self.zones.lock_edits().await;
        let files = crate::geofence::stage::read_dir(std::path::Path::new(&cfg.dir))?;
        let set = crate::geofence::stage::compose(&files, self.store.zones.as_ref(), &cfg.debounce)
            .await?;
        let current = self.zones.current();
        let fleet = edit::fleet_positions(self.store.core.as_ref()).await?;
        let proposal = edit::Proposal {
            current: &current,
            candidate: &set,
            changed: edit::changed(&current, &set),
            max_exit_share: cfg.max_exit_share,
            force: false,
        };
        let verdict = edit::review(&proposal, &fleet).map_err(|r| {
            let hint = match r {
                edit::Refusal::MassExit { .. } => {
                    "; a restart applies the files as they are, or raise [geofences] max_exit_share"
                }
                _ => "",
            };
            LoadError::Invalid(format!("{}: {r}{hint}", cfg.dir))
        })?;
        for w in &verdict.warnings {
            tracing::warn!(warning = %w, "zone reloaded with a warning");
        }
        let n = set.len();
        self.zones.install(set, files).await;
        // Every file is in force again.
        self.zones.set_broken_files(Vec::new());
        Ok(n)
    }
}

/// The zones at start: a broken zone file is left out, loudly, and the rest are in force,
/// unless no service area is left (then nothing could see a car leave it: refuse to start).
type LoadedZones = (
    crate::geofence::ZoneSet,
    crate::geofence::stage::FileZones,
    Vec<String>,
);

async fn load_zones(
    config: &Config,
    store: &dyn crate::geofence::store::ZoneStore,
) -> Result<LoadedZones, StartError> {
    use crate::geofence::stage;
    let cfg = &config.geofences;
    let (files, broken) = stage::read_dir_lenient(std::path::Path::new(&cfg.dir));
    let set = stage::compose(&files, store, &cfg.debounce).await?;
    if broken.is_empty() {
        return Ok((set, files, Vec::new()));
    }
    let all: Vec<String> = broken.iter().map(|e| e.to_string()).collect();
    if !set
        .zones()
        .iter()
        .any(|z| z.kind == crate::geofence::ZoneKind::ServiceArea)
    {
        return Err(StartError::Zones(stage::LoadError::Invalid(format!(
            "{}; with the broken zone files left out no service area remains",
            all.join("; ")
        ))));
    }
    for e in &all {
        tracing::error!(error = %e, "ZONE FILE LEFT OUT: its zones are not in force; the other zones are (fix it and send SIGHUP)");
    }
    Ok((set, files, all))
}

/// How long connections get to finish their current frame at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, crate::crm::Seams::default()).await
}

/// Start with the CRM rules wired to a given immobiliser and zones.
pub async fn start_with(
    config: Config,
    crm_seams: crate::crm::Seams,
) -> Result<Running, StartError> {
    let config = Arc::new(config);
    match crate::ops::rlimit::raise_nofile() {
        Ok(n) => tracing::info!(
            soft_before = n.soft_before,
            soft = n.soft,
            hard = n.hard,
            "{}",
            n.describe()
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let metrics = crate::ops::metrics::handle();
    let store = storage::open(&config.storage).await?;
    tracing::info!(backend = store.core.backend(), url = %storage::postgres::redact(&config.storage.url), "storage open, migrations applied");
    let states = store.core.device_states().await?;
    let (zone_set, zone_files, broken_zone_files) =
        load_zones(&config, store.zones.as_ref()).await?;
    tracing::info!(zones = zone_set.len(), dir = %config.geofences.dir, "zones loaded");
    let (session_tx, session_rx) = tokio::sync::mpsc::channel(4096);
    let sessions = Sessions::with_policy(session_tx, config.devices.session_policy());
    let (immob_tx, immob_rx) = tokio::sync::mpsc::channel(config.pipeline.queue.max(16));
    // Several instances may share a PostgreSQL database; SQLite is one instance.
    let cluster = if store.core.backend() == "postgres" {
        Some(crate::cluster::Cluster::connect(&config.storage, &config.cluster).await?)
    } else {
        None
    };
    let (immobiliser, immobiliser_task) = crate::immobiliser::start(
        &config.immobiliser,
        store.immobiliser.clone(),
        sessions.clone(),
        &states,
        session_rx,
        immob_rx,
        cluster.clone(),
    )
    .await?;
    let cluster_stop = CancellationToken::new();
    let cluster_task = cluster.clone().map(|c| {
        crate::cluster::spawn(
            c,
            immobiliser.local(),
            sessions.clone(),
            cluster_stop.clone(),
        )
    });
    let (zones_tx, zones_rx) = tokio::sync::mpsc::channel(config.pipeline.queue);
    let (zone_notice_tx, zone_notice_rx) = tokio::sync::mpsc::channel(1024);
    let (zones, zone_task) = crate::geofence::stage::start(
        zone_set,
        zone_files,
        store.zones.clone(),
        zones_rx,
        vec![zone_notice_tx],
    )
    .await?;
    zones.set_broken_files(broken_zone_files);
    crate::immobiliser::zone_rule::spawn(
        immobiliser.clone(),
        zone_notice_rx,
        config.immobiliser.lift_on_return,
    );
    // The CRM rules add and lift `low_balance` / `inspection` through the immobiliser.
    let crm_seams = crate::crm::Seams {
        reasons: crm_seams
            .reasons
            .or_else(|| Some(Arc::new(immobiliser.clone()) as Arc<dyn crate::crm::BlockReasons>)),
        ..crm_seams
    };
    let (crm, crm_tx, crm_tasks) = crate::crm::start(
        &config,
        store.crm.clone(),
        crm_seams,
        Arc::new(zones.clone()),
    )
    .map_err(|e| StartError::Crm(e.to_string()))?;
    let (pipeline, tasks) = Pipeline::start(
        &config,
        store.core.clone(),
        states,
        vec![zones_tx, immob_tx, crm_tx],
    );

    // One admission cache for the API and the listeners: the API's `PUT` clears the very
    // cache the listeners read.
    let admission = Arc::new(
        Admission::new(store.core.clone(), config.devices.register_unknown)
            .with_imei_check_digit(config.devices.imei_check_digit),
    );
    let ctx = Arc::new(IngestCtx {
        pipeline: pipeline.clone(),
        admission: admission.clone(),
        limits: ConnLimits::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ),
        handshake_timeout: Duration::from_secs(config.limits.handshake_timeout_s),
        idle_timeout: Duration::from_secs(config.limits.idle_timeout_s),
        sessions,
        protocols: config.protocols.clone(),
        udp: ingest::udp::UdpLimits {
            max_sources: config.limits.udp_max_sources,
            datagrams_per_s: config.limits.udp_datagrams_per_s,
            max_queued: config.limits.udp_max_queued,
        },
    });

    let shutdown = CancellationToken::new();
    let conns = TaskTracker::new();
    let mut bound = Vec::new();
    let mut listener_tasks = Vec::new();
    for (protocol, addr) in config.listeners() {
        let key = format!("listeners.{}", protocol.name());
        for &transport in protocol.transports() {
            let local = match transport {
                Transport::Tcp => {
                    let l = TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            key: key.clone(),
                            addr,
                            source,
                        })?;
                    let local = l.local_addr().map_err(|source| StartError::Bind {
                        key: key.clone(),
                        addr,
                        source,
                    })?;
                    listener_tasks.push(tokio::spawn(ingest::tcp::serve(
                        l,
                        protocol,
                        ctx.clone(),
                        shutdown.clone(),
                        conns.clone(),
                    )));
                    local
                }
                Transport::Udp => {
                    // Share the TCP port number (an ephemeral TCP port is reused for UDP).
                    let tcp_port = bound
                        .iter()
                        .find(|(p, t, _)| *p == protocol && *t == Transport::Tcp)
                        .map(|(_, _, a): &(Protocol, Transport, SocketAddr)| a.port());
                    let udp_addr = SocketAddr::new(addr.ip(), tcp_port.unwrap_or(addr.port()));
                    let s = UdpSocket::bind(udp_addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            key: key.clone(),
                            addr: udp_addr,
                            source,
                        })?;
                    let local = s.local_addr().map_err(|source| StartError::Bind {
                        key: key.clone(),
                        addr,
                        source,
                    })?;
                    listener_tasks.push(tokio::spawn(ingest::udp::serve(
                        s,
                        protocol,
                        ctx.clone(),
                        shutdown.clone(),
                        conns.clone(),
                    )));
                    local
                }
            };
            tracing::info!(protocol = protocol.name(), transport = ?transport, addr = %local, "listening");
            bound.push((protocol, transport, local));
        }
    }

    // The MQTT source stops with the listeners: its in-flight messages commit before the
    // pipeline drains. Its devices get command sessions in the same registry as TCP ones.
    let mqtt = ingest::mqtt::start(
        &config.mqtt,
        admission.clone(),
        pipeline.clone(),
        ctx.sessions.clone(),
        shutdown.clone(),
    )?;
    let mqtt_commands = mqtt.map(|m| {
        listener_tasks.push(m.task);
        m.commands
    });
    let reloads = crate::ops::reload::Reloads::new(config.clone());
    let map = api::map::MapLayers::default();
    match api::map::load(&config.status) {
        Ok(m) => map.set(m),
        Err(e) => {
            tracing::warn!(error = %e, "status map: extra layers not loaded");
            map.set(api::map::empty(&config.status));
        }
    }
    tokio::spawn(api::status::follow_reloads(
        map.clone(),
        reloads.subscribe(),
    ));
    let health = crate::ops::service::Health::new(pipeline.downgrade(), ctx.limits.clone());

    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        pipeline: pipeline.clone(),
        admission,
        ready: ready.clone(),
        metrics,
        zones: zones.clone(),
        crm,
        map,
        immobiliser,
        sessions: ctx.sessions.clone(),
    };
    let api_addr = config.api_addr();
    let api_listener = TcpListener::bind(api_addr)
        .await
        .map_err(|source| StartError::Bind {
            key: "api.listen".into(),
            addr: api_addr,
            source,
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            key: "api.listen".into(),
            addr: api_addr,
            source,
        })?;
    let api_shutdown = shutdown.clone();
    let api_task = tokio::spawn(async move {
        let app = api::router(state);
        let _ = axum::serve(api_listener, app)
            .with_graceful_shutdown(api_shutdown.cancelled_owned())
            .await;
    });
    tracing::info!(addr = %api_addr, "API listening");
    ready.store(true, Ordering::Release);

    let token = shutdown.clone();
    let done = tokio::spawn(async move {
        token.cancelled().await;
        // No new CRM request from now on (the outbox is durable: the rest goes next start).
        crm_tasks.stop_deliveries();
        tracing::info!("shutting down: no new connections; finishing frames in flight");
        for t in listener_tasks {
            let _ = t.await;
        }
        conns.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, conns.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still busy after {DRAIN_TIMEOUT:?}; their unacked data will be resent"
            );
        }
        let _ = api_task.await;
        // Last handles to the pipeline go; shards drain, then the writer commits the rest.
        drop(ctx);
        drop(pipeline);
        for s in tasks.shards {
            let _ = s.await;
        }
        let _ = tasks.writer.await;
        let _ = zone_task.await;
        crm_tasks.shutdown().await;
        cluster_stop.cancel();
        if let Some(t) = cluster_task {
            let _ = t.await;
        }
        immobiliser_task.stop().await;
        if let Some(c) = &cluster {
            if let Err(e) = c.leave().await {
                tracing::warn!(error = %e, "cluster: sessions not cleared at shutdown");
            }
        }
        tracing::info!("shutdown complete");
    });
    Ok(Running {
        api_addr,
        listeners: bound,
        mqtt_commands,
        shutdown,
        done,
        zones,
        config,
        store,
        reloads,
        health,
    })
}
