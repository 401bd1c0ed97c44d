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
    /// The error names the offending key (`api.listen: …`). The systemd unit runs this as
    /// ExecStartPre, so a broken file never replaces a running daemon on restart.
    CheckConfig {
        /// The file to check.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The file to check, as a positional argument.
        file: Option<PathBuf>,
    },
    /// Open the configured storage, apply pending migrations, and exit.
    ///
    /// `run` migrates on start too; this lets an upgrade migrate a large database ahead of the
    /// restart (e.g. before switching a load balancer back), and prints the backend used.
    Migrate {
        /// TOML configuration file (also FLEETGATE_CONFIG); only [storage] is used.
        #[arg(long, short, env = "FLEETGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run every real packet under DIR/<protocol>/corpus.jsonl through the decoders and print
    /// per-protocol totals and every miss.
    CorpusReport {
        /// Directory of protocol folders.
        #[arg(default_value = "protocols")]
        dir: PathBuf,
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
            Ok(_) => {
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::CorpusReport { dir } => corpus_report(&dir),
        Command::Run { config } => {
            let path = config.clone();
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            fleetgate::ops::logging::init(&config.log.format, &config.log.filter);
            runtime().block_on(run(config, path))
        }
        Command::Migrate { config } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            fleetgate::ops::logging::init(&config.log.format, &config.log.filter);
            runtime().block_on(async {
                match fleetgate::storage::open(&config.storage).await {
                    Ok(s) => {
                        println!("migrations applied ({})", s.backend());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("fleetgate: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
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
    fleetgate::ops::service::serve(running, path).await;
    ExitCode::SUCCESS
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
