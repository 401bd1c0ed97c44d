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

pub mod reload;
pub mod service;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::ingest::{self, Admission, ConnLimits, IngestCtx, Sessions};
use crate::pipeline::{Pipeline, PipelineStart};
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
    Crm(#[from] crate::crm::connector::ConnectorError),
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
    reloads: reload::Reloads,
    health: service::Health,
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
    pub fn reloads(&self) -> reload::Reloads {
        self.reloads.clone()
    }

    /// What the systemd watchdog probes.
    pub fn health(&self) -> service::Health {
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

/// Start with the CRM rules wired to a given immobiliser and zones. In order: storage, the
/// zones, the immobiliser (and the cluster), the CRM, the pipeline feeding all three, the
/// tracker listeners, MQTT, the API; then the task that shuts it all down in reverse.
pub async fn start_with(
    config: Config,
    crm_seams: crate::crm::Seams,
) -> Result<Running, StartError> {
    let config = Arc::new(config);
    raise_open_files();
    let metrics = crate::ops::metrics::handle();
    let store = storage::open(&config.storage).await?;
    tracing::info!(backend = store.core.backend(), url = %storage::postgres::redact(&config.storage.url), "storage open, migrations applied");
    // An old position layout converted in the background; the storage gauges kept fresh.
    let archive = Arc::new(archive(&config, &store));
    storage::archive::spawn_upkeep(&store, Duration::from_secs(300), archive.clone());
    let states = store.core.device_states().await?;
    let (zone_set, zone_files, broken_zone_files) =
        load_zones(&config, store.zones.as_ref()).await?;
    tracing::info!(zones = zone_set.len(), dir = %config.geofences.dir, "zones loaded");
    let (session_tx, session_rx) = tokio::sync::mpsc::channel(4096);
    let sessions = Sessions::with_policy(session_tx, config.devices.session_policy());

    // The immobiliser, and on a shared database the cluster that forwards to it.
    let (immob_tx, immob_rx) = tokio::sync::mpsc::channel(config.pipeline.queue.max(16));
    let cluster = match config.storage.backend() {
        // Several instances may share a PostgreSQL database; SQLite is one instance.
        Some(b) if b.is_shared() => {
            Some(crate::cluster::Cluster::connect(&config.storage, &config.cluster).await?)
        }
        _ => None,
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
        crate::immobiliser::cluster::spawn(
            c,
            immobiliser.local(),
            sessions.clone(),
            cluster_stop.clone(),
        )
    });

    // The zones, whose notices drive the immobiliser's zone rule.
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
        crm_start(&config),
        store.crm.clone(),
        crm_seams,
        Arc::new(zones.clone()),
    )?;

    let (pipeline, pipeline_tasks) = Pipeline::start(
        PipelineStart {
            pipeline: &config.pipeline,
            filters: &config.filters,
            storage: &config.storage,
        },
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
    let ctx = Arc::new(ingest_ctx(
        &config,
        pipeline.clone(),
        admission.clone(),
        sessions,
    ));
    let shutdown = CancellationToken::new();
    let conns = TaskTracker::new();
    let (bound, mut listener_tasks) = bind_listeners(&config, &ctx, &shutdown, &conns).await?;

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

    // The position archive: compaction, daily summaries, retention.
    let archive_stop = CancellationToken::new();
    let archive_task = crate::archive::actor::spawn(
        archive,
        crate::archive::actor::system_clock(),
        archive_stop.clone(),
    );

    let reloads = reload::Reloads::new(config.clone());
    let map = status_map(&config, &reloads);
    let health = service::Health::new(pipeline.downgrade(), ctx.limits.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        settings: Arc::new(api::ApiSettings {
            api: config.api.clone(),
            status: config.status.clone(),
            geofences: config.geofences.clone(),
            offline_after_s: config.devices.offline_after_s,
            retention: config.retention.clone(),
        }),
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
    let (api_addr, api_task) = serve_api(config.api_addr(), state, &shutdown).await?;
    tracing::info!(addr = %api_addr, "API listening");
    ready.store(true, Ordering::Release);

    let done = tokio::spawn(shut_down(
        shutdown.clone(),
        Stopping {
            archive_stop,
            archive_task,
            crm_tasks,
            listener_tasks,
            conns,
            api_task,
            ctx,
            pipeline,
            pipeline_tasks,
            zone_task,
            cluster_stop,
            cluster_task,
            immobiliser_task,
            cluster,
        },
    ));
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

fn raise_open_files() {
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
}

/// The CRM's sections and the facts it takes from `[pipeline]`, `[storage]` and `[cluster]`.
fn crm_start(config: &Config) -> crate::crm::CrmStart<'_> {
    crate::crm::CrmStart {
        crm: &config.crm,
        rules: &config.rules,
        queue: config.pipeline.queue,
        shared_database: config.storage.backend().is_some_and(|b| b.is_shared()),
        claimer: config.cluster.instance(),
        lease: Duration::from_secs(config.cluster.outbox_lease_s),
    }
}

/// What every connection task shares: `[devices]`, `[limits]` and `[protocols]` applied.
fn ingest_ctx(
    config: &Config,
    pipeline: Pipeline,
    admission: Arc<Admission>,
    sessions: Arc<Sessions>,
) -> IngestCtx {
    IngestCtx {
        pipeline,
        admission,
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
    }
}

/// A bind (or its `local_addr`) that failed, naming the config key that asked for it.
fn bind_error(key: &str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Bind {
        key: key.to_string(),
        addr,
        source,
    }
}

type BoundListeners = (Vec<(Protocol, Transport, SocketAddr)>, Vec<JoinHandle<()>>);

/// Bind every enabled tracker listener and start serving it; a protocol's UDP socket shares
/// its TCP port number (so an ephemeral TCP port is reused for UDP).
async fn bind_listeners(
    config: &Config,
    ctx: &Arc<IngestCtx>,
    shutdown: &CancellationToken,
    conns: &TaskTracker,
) -> Result<BoundListeners, StartError> {
    let mut bound: Vec<(Protocol, Transport, SocketAddr)> = Vec::new();
    let mut tasks = Vec::new();
    for (protocol, addr) in config.listeners() {
        let key = format!("listeners.{}", protocol.name());
        for &transport in protocol.transports() {
            let local = match transport {
                Transport::Tcp => {
                    let l = TcpListener::bind(addr)
                        .await
                        .map_err(bind_error(&key, addr))?;
                    let local = l.local_addr().map_err(bind_error(&key, addr))?;
                    tasks.push(tokio::spawn(ingest::tcp::serve(
                        l,
                        protocol,
                        ctx.clone(),
                        shutdown.clone(),
                        conns.clone(),
                    )));
                    local
                }
                Transport::Udp => {
                    let tcp_port = bound
                        .iter()
                        .find(|(p, t, _)| *p == protocol && *t == Transport::Tcp)
                        .map(|(_, _, a)| a.port());
                    let udp_addr = SocketAddr::new(addr.ip(), tcp_port.unwrap_or(addr.port()));
                    let s = UdpSocket::bind(udp_addr)
                        .await
                        .map_err(bind_error(&key, udp_addr))?;
                    let local = s.local_addr().map_err(bind_error(&key, addr))?;
                    tasks.push(tokio::spawn(ingest::udp::serve(
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
    Ok((bound, tasks))
}

/// The status page's extra map layers, reloaded on SIGHUP; a layer file that does not load
/// is a warning, not a refusal to start.
fn status_map(config: &Config, reloads: &reload::Reloads) -> api::map::MapLayers {
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
        |c: &Arc<Config>| c.status.clone(),
    ));
    map
}

/// Bind the API and serve it until `shutdown`; returns the bound address.
async fn serve_api(
    addr: SocketAddr,
    state: AppState,
    shutdown: &CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(bind_error("api.listen", addr))?;
    let local = listener
        .local_addr()
        .map_err(bind_error("api.listen", addr))?;
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let app = api::router(state);
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((local, task))
}

/// The archive on `[retention]` and the `[filters]` jump rule: the daemon's actor, and what
/// `fleetgate migrate` and `fleetgate storage compact` summarise the days they pack with.
pub fn archive(config: &Config, store: &storage::Stores) -> crate::archive::actor::Archive {
    use crate::archive::actor::{Archive, StoredZones};
    use crate::archive::summary::SummaryRules;
    Archive {
        cfg: config.retention.clone(),
        rules: SummaryRules {
            max_implied_speed_kmh: config.filters.max_implied_speed_kmh,
            max_gap_s: config.retention.summary_gap_s as i64,
        },
        store: store.archive.clone(),
        zones: Arc::new(StoredZones(store.zones.clone())),
    }
}

/// Everything [`shut_down`] stops, in the order it stops them.
struct Stopping {
    /// The archive actor: stopped first (between two device-days), it holds nothing to drain.
    archive_stop: CancellationToken,
    archive_task: JoinHandle<()>,
    crm_tasks: crate::crm::CrmTasks,
    listener_tasks: Vec<JoinHandle<()>>,
    conns: TaskTracker,
    api_task: JoinHandle<()>,
    ctx: Arc<IngestCtx>,
    pipeline: Pipeline,
    pipeline_tasks: crate::pipeline::PipelineTasks,
    zone_task: JoinHandle<()>,
    cluster_stop: CancellationToken,
    cluster_task: Option<JoinHandle<()>>,
    immobiliser_task: crate::immobiliser::ImmobiliserTask,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Wait for `token`, then stop in the order that loses nothing: no new CRM request, no new
/// connection, frames in flight finished, the API, the shards and the writer drained, then
/// the stages fed by committed fixes, the cluster, the immobiliser.
async fn shut_down(token: CancellationToken, s: Stopping) {
    token.cancelled().await;
    s.archive_stop.cancel();
    let _ = s.archive_task.await;
    // No new CRM request from now on (the outbox is durable: the rest goes next start).
    s.crm_tasks.stop_deliveries();
    tracing::info!("shutting down: no new connections; finishing frames in flight");
    for t in s.listener_tasks {
        let _ = t.await;
    }
    s.conns.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, s.conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still busy after {DRAIN_TIMEOUT:?}; their unacked data will be resent"
        );
    }
    let _ = s.api_task.await;
    // Last handles to the pipeline go; shards drain, then the writer commits the rest.
    drop(s.ctx);
    drop(s.pipeline);
    for t in s.pipeline_tasks.shards {
        let _ = t.await;
    }
    let _ = s.pipeline_tasks.writer.await;
    let _ = s.zone_task.await;
    s.crm_tasks.shutdown().await;
    s.cluster_stop.cancel();
    if let Some(t) = s.cluster_task {
        let _ = t.await;
    }
    s.immobiliser_task.stop().await;
    if let Some(c) = &s.cluster {
        if let Err(e) = c.leave().await {
            tracing::warn!(error = %e, "cluster: sessions not cleared at shutdown");
        }
    }
    tracing::info!("shutdown complete");
}
