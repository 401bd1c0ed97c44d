//! The `fleetgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetgate::config::Config;

#[derive(Parser)]
#[command(
    name = "fleetgate",
    version,
    about = "Fleet telematics gateway: trackers in, positions stored, rules applied, CRM informed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: listeners for every protocol, the pipeline, storage and the API.
    ///
    /// With no --config every key takes its default (SQLite under ./data, API on
    /// 127.0.0.1:8080, every protocol on its Traccar port). Under systemd (Type=notify) it sends
    /// READY=1 once migrations ran and every listener is bound, WATCHDOG=1 after each pipeline
    /// liveness probe when WatchdogSec is set, and STATUS= lines with connections and rates.
    /// Signals: SIGTERM/SIGINT finish the frames in flight, commit, and exit 0; SIGHUP re-reads
    /// the file, applies [log] and [status] and reloads the zone files at once (other sections
    /// need a restart).
    Run {
        /// TOML configuration file (also FLEETGATE_CONFIG); FLEETGATE_<SECTION>_<KEY> overrides keys.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file (with environment overrides) and exit: 0 valid, 2 invalid.
    ///
    /// Checks what `run` would refuse or degrade on: every key's value (limits, immobiliser
    /// safety values, storage URL, one listener per port) and every zone file under
    /// `[geofences] dir` (parsed, geometry, names unique). The error names the offending key
    /// (`api.listen: …`) or the zone file. The systemd unit runs this as
    /// ExecStartPre, so a broken file never replaces a running daemon on restart.
    CheckConfig {
        /// The file to check.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The file to check, as a positional argument.
        file: Option<PathBuf>,
    },
    /// Open the configured storage, apply pending migrations, convert positions stored by an
    /// older fleetgate into the archive layout, and exit.
    ///
    /// `run` does the same on start (the conversion in the background); this lets an upgrade
    /// migrate a large database ahead of the restart, with progress on stderr. The conversion
    /// is one transaction per device and day: after a kill, run it again and it carries on.
    Migrate {
        /// TOML configuration file (also FLEETGATE_CONFIG); only [storage] is used.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The position archive: pack it now, or show what is stored where.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// CRM connection tasks.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
    /// Simulate trackers driving around Moscow and report the ingest rate and ack latency.
    ///
    /// N devices each open one TCP connection to --addr, log in (Teltonika IMEI handshake,
    /// GT06 login, Wialon IPS 2.0 #L#) and send their fixes in real protocol packets with
    /// valid CRCs, waiting for each ack before the next packet, as real devices do. Cars drive
    /// radial routes from the centre of Moscow at 0–90 km/h with stops at lights. At the end
    /// (after --duration, or on Ctrl-C) it prints records/s, packets/s and the ack latency
    /// percentiles (p50/p90/p99/max); errors (refused logins, wrong acks, dropped connections)
    /// are counted and the device reconnects and resends, as a tracker would.
    ///
    /// Example (load): fleetgate sim --addr 127.0.0.1:5027 --devices 100 --rate 0 --duration 30
    /// Example (live demo, until Ctrl-C): fleetgate sim --addr 127.0.0.1:5027 --devices 50
    Sim {
        /// Listener of the chosen protocol, host:port (default: 127.0.0.1 and the protocol's
        /// default port: teltonika 5027, gt06 5023, wialon 5039).
        #[arg(long)]
        addr: Option<String>,
        /// Wire protocol of the simulated devices.
        #[arg(long, value_enum, default_value = "teltonika")]
        protocol: fleetgate::sim::SimProtocol,
        /// Number of devices (one TCP connection each).
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Records per packet (Teltonika AVL records, Wialon #B# black box messages; GT06 sends
        /// one 0x22 packet per record).
        #[arg(long, default_value_t = 1)]
        records_per_packet: usize,
        /// Packets per second per device; 0 = flat out (next packet as soon as the ack came).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds to run; 0 = until Ctrl-C. Default: until Ctrl-C when --rate is set (a live
        /// demo), 10 s flat out (--rate 0).
        #[arg(long)]
        duration: Option<f64>,
        /// drive: radial trips; border: out of the service area; parking: into a parking lot;
        /// low-balance: the driver's balance drops (needs --api) and the car gets blocked;
        /// return: the driver presses "return" (DIN2) half-way and drives to the depot.
        #[arg(long, value_enum, default_value = "drive")]
        scenario: fleetgate::sim::Scenario,
        /// IMEI of the first device; the others count up from it.
        #[arg(long, default_value_t = 356_307_042_000_000)]
        imei_base: u64,
        /// Control API (host:port or URL) for the low-balance and return scenarios.
        #[arg(long)]
        api: Option<String>,
        /// Bearer token for --api (also FLEETGATE_TOKEN).
        #[arg(long, env = "FLEETGATE_TOKEN")]
        token: Option<String>,
        /// Directory of geofence files the border and parking scenarios steer by.
        #[arg(long, default_value = "geofences")]
        geofences: PathBuf,
        /// Print the report as one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay a JSONL capture of tracker traffic against a server and check its acks.
    ///
    /// Each line of FILE is one frame a device sent: {"t_ms": 0, "protocol": "teltonika",
    /// "hex": "000f33…", "session": "car-1", "ack": "01"} (ack: the hex the server must answer
    /// with, or null for none checked). One TCP connection per session; frames go out at
    /// their relative t_ms (scaled by --speed, or back to back with --flat-out). Every ack
    /// that differs, is missing or comes late is reported; the exit status is 1 if any did.
    /// Format: docs/replay.md.
    Replay {
        /// The JSONL capture.
        file: PathBuf,
        /// Server address for every session (host:port), or PROTOCOL=host:port (repeatable).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Time factor: 2 plays twice as fast as captured, 0.5 half as fast.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Ignore t_ms: send each frame as soon as the previous one was answered.
        #[arg(long)]
        flat_out: bool,
        /// Seconds to wait for each expected ack.
        #[arg(long, default_value_t = 10.0)]
        ack_timeout: f64,
    },
    /// A null-ack Teltonika server for benchmarks: frames Codec 8/8E packets and acks their
    /// record count without decoding or storing anything (the ceiling of stop-and-wait ingest
    /// on this machine; see docs/performance.md).
    #[command(hide = true)]
    BaselineServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5027")]
        listen: String,
    },
    /// Run every real packet under DIR/<protocol>/corpus.jsonl through the decoders and print
    /// per-protocol totals and every miss.
    CorpusReport {
        /// Directory of protocol folders.
        #[arg(default_value = "protocols")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Pack every device and day still stored row by row into chunks, today's included (the
    /// daemon packs closed days by itself). Safe beside a running daemon: one short
    /// transaction per device and day; positions that arrive meanwhile wait for the next run.
    Compact {
        /// TOML configuration file (also FLEETGATE_CONFIG); only [storage] is used.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print every partition: day, tier (hot rows or packed chunks), table, positions, bytes
    /// on disk and bytes per position.
    Stats {
        /// TOML configuration file (also FLEETGATE_CONFIG); only [storage] is used.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CrmCommand {
    /// Exchange an amoCRM authorization code for OAuth tokens, once, and store them in the
    /// database; the daemon refreshes them from then on.
    ///
    /// The code is shown in amoCRM under the integration's "Ключи и доступы" (or sent to its
    /// redirect_uri) and is valid for 20 minutes. Needs [crm] kind = "amocrm", base_url and
    /// [crm.amocrm] client_id, client_secret, redirect_uri. No token is printed.
    Authorize {
        /// The authorization code.
        code: String,
        /// TOML configuration file (also FLEETGATE_CONFIG).
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.map(|p| p.as_path())).map_err(|e| {
        eprintln!("fleetgate: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, file } => match load(file.as_ref().or(config.as_ref())) {
            Ok(c) => match check_storage(&c) {
                Ok(()) => check_zones(&c),
                Err(e) => {
                    eprintln!("fleetgate: invalid configuration: storage.url: {e}");
                    ExitCode::from(2)
                }
            },
            Err(code) => code,
        },
        Command::CorpusReport { dir } => corpus_report(&dir),
        Command::Sim {
            addr,
            protocol,
            devices,
            records_per_packet,
            rate,
            duration,
            scenario,
            imei_base,
            api,
            token,
            geofences,
            json,
        } => {
            fleetgate::ops::logging::init("text", "warn");
            // One descriptor per simulated device.
            let _ = fleetgate::ops::rlimit::raise_nofile();
            let opts = fleetgate::sim::SimOptions {
                addr: addr.unwrap_or_else(|| format!("127.0.0.1:{}", protocol.default_port())),
                protocol,
                devices,
                records_per_packet,
                rate,
                duration: fleetgate::sim::run_time(rate, duration),
                scenario,
                imei_base,
                api,
                token,
                geofences,
            };
            runtime().block_on(sim(opts, json))
        }
        Command::Replay {
            file,
            to,
            speed,
            flat_out,
            ack_timeout,
        } => {
            let opts = fleetgate::replay::ReplayOptions {
                to,
                speed,
                flat_out,
                ack_timeout: std::time::Duration::from_secs_f64(ack_timeout.max(0.001)),
            };
            runtime().block_on(replay(&file, opts))
        }
        Command::BaselineServer { listen } => runtime().block_on(async move {
            match fleetgate::sim::baseline::serve(&listen).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetgate: {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Run { config } => {
            let path = config.clone();
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            fleetgate::ops::logging::init(&config.log.format, &config.log.filter);
            runtime().block_on(run(config, path))
        }
        Command::Crm {
            command: CrmCommand::Authorize { code, config },
        } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if config.crm.kind != "amocrm" || !config.crm.amocrm.enabled() {
                eprintln!(
                    "fleetgate: crm authorize needs crm.kind = \"amocrm\" and [crm.amocrm] client_id, client_secret, redirect_uri (crm.kind is \"{}\")",
                    config.crm.kind
                );
                return ExitCode::from(2);
            }
            fleetgate::ops::logging::init(&config.log.format, &config.log.filter);
            runtime().block_on(async {
                let stores = match fleetgate::storage::open(&config.storage).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("fleetgate: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                match fleetgate::crm::oauth::authorize(&config.crm, stores.crm, &code).await {
                    Ok(t) => {
                        println!(
                            "amoCRM authorized: tokens stored in the database (access token valid until {}; refreshed by the daemon)",
                            t.expires_at.to_rfc3339()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("fleetgate: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Migrate { config } => match load(config.as_ref()) {
            Ok(c) => storage_command(&c, StorageVerb::Migrate),
            Err(code) => code,
        },
        Command::Storage { command } => {
            let (config, verb) = match command {
                StorageCommand::Compact { config } => (config, StorageVerb::Compact),
                StorageCommand::Stats { config } => (config, StorageVerb::Stats),
            };
            match load(config.as_ref()) {
                Ok(c) => storage_command(&c, verb),
                Err(code) => code,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum StorageVerb {
    Migrate,
    Compact,
    Stats,
}

/// Prints a progress line to stderr at most twice a second.
fn progress(
    what: &'static str,
) -> impl FnMut(&fleetgate::storage::archive::DeviceDay, &fleetgate::storage::archive::Progress) {
    let mut last: Option<std::time::Instant> = None;
    move |dd, p| {
        if last.map_or(true, |l| {
            l.elapsed() >= std::time::Duration::from_millis(500)
        }) {
            last = Some(std::time::Instant::now());
            eprintln!(
                "{}",
                fleetgate::storage::archive::progress_line(what, dd, p)
            );
        }
    }
}

/// `migrate`, `storage compact`, `storage stats`: progress on stderr, the result on stdout.
fn storage_command(config: &Config, verb: StorageVerb) -> ExitCode {
    use fleetgate::storage::archive;
    fleetgate::ops::logging::init(&config.log.format, &config.log.filter);
    runtime().block_on(async {
        let stores = match fleetgate::storage::open(&config.storage).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fleetgate: {e}");
                return ExitCode::FAILURE;
            }
        };
        let backend = stores.core.backend();
        // Each device-day packed here gets its daily summary, as the daemon's archive gives it.
        let summaries = fleetgate::app::archive(config, &stores);
        let result = match verb {
            StorageVerb::Migrate => archive::migrate(
                stores.archive.as_ref(),
                stores.layout.as_ref(),
                &summaries,
                progress("migrate"),
            )
            .await
            .map(|p| {
                format!(
                    "migrations applied ({backend}); {} device-days converted ({} positions, {} bytes)",
                    p.device_days, p.positions, p.bytes
                )
            }),
            StorageVerb::Compact => archive::compact_all(&stores, &summaries, progress("compact"))
                .await
                .map(|p| {
                    format!(
                        "compacted ({backend}): {} device-days, {} positions, {} bytes",
                        p.device_days, p.positions, p.bytes
                    )
                }),
            StorageVerb::Stats => stores
                .archive
                .partition_stats()
                .await
                .map(|s| archive::stats_table(&s)),
        };
        match result {
            Ok(out) => {
                println!("{}", out.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetgate: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// What `run` would leave out of the zone files (it starts without them, loudly, or not at
/// all when no service area is left): reported here as errors, each naming the file.
/// What `run` would meet when it opens an SQLite database: the file must not be a directory,
/// and the nearest existing folder on its path must be a writable directory.
fn check_storage(config: &Config) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let url = &config.storage.url;
    let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
    if path
        .as_os_str()
        .as_bytes()
        .windows(8)
        .any(|w| w == b":memory:")
    {
        return Ok(());
    }
    if path.is_dir() {
        return Err(format!(
            "{} is a directory, not a database file",
            path.display()
        ));
    }
    let mut dir = path.parent().unwrap_or(std::path::Path::new("."));
    if dir.as_os_str().is_empty() {
        dir = std::path::Path::new(".");
    }
    while !dir.exists() {
        dir = dir.parent().unwrap_or(std::path::Path::new("/"));
    }
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a NUL-terminated path; access() only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(format!("{} is not writable by this user", dir.display()));
    }
    Ok(())
}

fn check_zones(config: &Config) -> ExitCode {
    let dir = std::path::Path::new(&config.geofences.dir);
    let (zones, broken) = fleetgate::geofence::stage::read_dir_lenient(dir);
    for e in &broken {
        eprintln!("fleetgate: invalid configuration: {e}");
    }
    if !broken.is_empty() {
        return ExitCode::from(2);
    }
    if !zones
        .values()
        .any(|z| z.kind == fleetgate::geofence::ZoneKind::ServiceArea)
    {
        eprintln!(
            "fleetgate: warning: geofences.dir: no zone file under {} defines a service_area (an API zone may)",
            dir.display()
        );
    }
    println!("configuration is valid ({} zones in files)", zones.len());
    ExitCode::SUCCESS
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    let running = match fleetgate::app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("fleetgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    // sd_notify (READY/STATUS/WATCHDOG/STOPPING), SIGTERM/SIGINT shutdown, SIGHUP reload.
    fleetgate::app::service::serve(running, path).await;
    ExitCode::SUCCESS
}

async fn sim(opts: fleetgate::sim::SimOptions, json: bool) -> ExitCode {
    let (devices, protocol) = (opts.devices, opts.protocol.name());
    match fleetgate::sim::run(opts).await {
        Ok((stats, elapsed)) => {
            let report = stats.report(elapsed, devices, protocol);
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                println!("{report}");
            }
            if report.records_acked == 0 {
                eprintln!("fleetgate: no record was acked");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleetgate: {e}");
            ExitCode::from(2)
        }
    }
}

async fn replay(file: &std::path::Path, opts: fleetgate::replay::ReplayOptions) -> ExitCode {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fleetgate: {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let frames = match fleetgate::replay::parse(&name, &text) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fleetgate: {e}");
            return ExitCode::from(2);
        }
    };
    match fleetgate::replay::run(frames, &opts).await {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("fleetgate: {e}");
            ExitCode::from(2)
        }
    }
}

fn corpus_report(dir: &std::path::Path) -> ExitCode {
    let rows = fleetgate::protocols::corpus::report(dir);
    if rows.is_empty() {
        eprintln!(
            "fleetgate: no <protocol>/corpus.jsonl under {}",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    println!("| protocol | packets | decoded as expected | of which command answers | % | explained misses |");
    println!("|---|---|---|---|---|---|");
    let mut misses = Vec::new();
    for r in &rows {
        let pct = 100.0 * r.passed as f64 / r.total.max(1) as f64;
        println!(
            "| {} | {} | {} | {} | {pct:.1} | {} |",
            r.protocol,
            r.total,
            r.passed,
            r.command_answers,
            r.known.len()
        );
        for o in &r.failed {
            let why = r
                .known
                .get(&o.line)
                .map(|k| format!(" — {k}"))
                .unwrap_or_else(|| " — UNEXPLAINED".into());
            misses.push(format!(
                "- {} line {} ({}, expect {}): {}{why}",
                r.protocol, o.line, o.test, o.expect, o.detail
            ));
        }
    }
    if !misses.is_empty() {
        println!("\nMisses:");
        for m in misses {
            println!("{m}");
        }
    }
    ExitCode::SUCCESS
}
