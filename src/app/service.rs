//! The daemon's life under a service manager: `READY=1` once `app::start` returned (migrations
//! applied, every listener bound), a supervisor that proves the pipeline alive before each
//! `WATCHDOG=1` and reports connections and rates in `STATUS=`, SIGHUP reloads, and
//! `STOPPING=1` when a shutdown begins.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::reload::Reloads;
use super::{Running, ZoneReloader};
use crate::config::Config;
use crate::ingest::ConnLimits;
use crate::ops::systemd::{self, Notifier};
use crate::pipeline::storage_health::STALL_BOUND;
use crate::pipeline::WeakPipeline;

/// STATUS= cadence when no watchdog is asked for.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What the supervisor looks at; holds nothing that keeps the pipeline from draining.
#[derive(Clone)]
pub struct Health {
    pipeline: WeakPipeline,
    limits: Arc<ConnLimits>,
}

impl Health {
    pub fn new(pipeline: WeakPipeline, limits: Arc<ConnLimits>) -> Health {
        Health { pipeline, limits }
    }

    /// One round trip through every shard and the writer, within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let Some(p) = self.pipeline.upgrade() else {
            return Err("pipeline stopped".into());
        };
        let r = p.probe(timeout).await;
        drop(p);
        let took = started.elapsed();
        metrics::histogram!("fleetgate_ops_pipeline_probe_seconds").record(took.as_secs_f64());
        let r = r.map(|()| took).map_err(|shard| {
            format!("shard {shard} or the writer did not answer within {timeout:?}")
        });
        // A writer that answers but has not committed for longer than the bound is as stuck.
        let storage = &self.pipeline.storage_health();
        let now = Instant::now();
        let r = match r {
            Ok(_) if storage.stalled(now, STALL_BOUND) => Err(storage
                .check(now)
                .err()
                .unwrap_or_else(|| "storage commits failing".into())),
            r => r,
        };
        if r.is_err() {
            metrics::counter!("fleetgate_ops_pipeline_probe_failures_total").increment(1);
        }
        r
    }

    pub fn connections(&self) -> usize {
        self.limits.current()
    }
}

/// Sum of every series of counter `name` in Prometheus text output.
pub fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Per-second rates from successive counter totals.
#[derive(Debug, Default)]
pub struct Rates {
    last: Option<(Instant, f64, f64)>,
}

impl Rates {
    /// Rates of (stored positions, decoded frames) since the previous call.
    pub fn update(&mut self, now: Instant, stored: f64, frames: f64) -> (f64, f64) {
        let r = match self.last {
            Some((t, s0, f0)) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    (((stored - s0) / dt).max(0.0), ((frames - f0) / dt).max(0.0))
                } else {
                    (0.0, 0.0)
                }
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, stored, frames));
        r
    }
}

/// Run a started daemon until SIGTERM/SIGINT, talking to systemd when `NOTIFY_SOCKET` is set.
/// `config_path` is re-read on SIGHUP.
pub async fn serve(running: Running, config_path: Option<PathBuf>) {
    let notifier = match Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
            None
        }
    };
    let send = {
        let notifier = notifier.clone();
        move |msg: &str| {
            if let Some(n) = &notifier {
                if let Err(e) = n.notify(msg) {
                    tracing::debug!(error = %e, "sd_notify failed");
                }
            }
        }
    };
    let token = running.shutdown_token();
    send(&format!(
        "READY=1\nMAINPID={}\n{}",
        std::process::id(),
        systemd::status_line("started; listeners bound")
    ));
    tracing::info!(systemd = notifier.is_some(), "ready");

    let supervisor = tokio::spawn(supervise(
        running.health(),
        token.clone(),
        systemd::watchdog_interval_from_env(),
        send.clone(),
    ));
    let signals = tokio::spawn(signals(
        running.reloads(),
        running.zone_reloader(),
        config_path,
        token.clone(),
        send.clone(),
    ));
    running.wait().await;
    supervisor.abort();
    signals.abort();
}

async fn signals(
    reloads: Reloads,
    zones: ZoneReloader,
    config_path: Option<PathBuf>,
    token: CancellationToken,
    send: impl Fn(&str),
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); break; }
            _ = int.recv() => { tracing::info!("SIGINT"); break; }
            _ = hup.recv() => {
                send("RELOADING=1");
                let mut status = reload(&reloads, config_path.as_deref());
                // Zone files and stored zones reload whatever became of the config file.
                match zones.reload().await {
                    Ok(n) => {
                        metrics::counter!("fleetgate_zone_reloads_total", "result" => "ok").increment(1);
                        tracing::info!(zones = n, "SIGHUP: zones reloaded");
                        status.push_str(&format!("; {n} zones loaded"));
                    }
                    Err(e) => {
                        metrics::counter!("fleetgate_zone_reloads_total", "result" => "error").increment(1);
                        tracing::error!(error = %e, "SIGHUP: zones not reloaded, the old ones stay");
                        status.push_str(&format!("; zones NOT reloaded: {e}"));
                    }
                }
                send(&format!("READY=1\n{}", systemd::status_line(&status)));
            }
            _ = token.cancelled() => break,
        }
    }
    send(&format!(
        "STOPPING=1\n{}",
        systemd::status_line("shutting down: finishing frames in flight, draining the pipeline")
    ));
    token.cancel();
}

/// Re-read the configuration and publish it; a broken file changes nothing.
fn reload(reloads: &Reloads, path: Option<&std::path::Path>) -> String {
    match Config::load(path) {
        Ok(config) => {
            let filter = config.log.filter.clone();
            let restart = reloads.publish(config);
            if let Err(e) = crate::ops::logging::set_filter(&filter) {
                tracing::warn!(error = %e, "log filter not changed");
            }
            metrics::counter!("fleetgate_ops_reloads_total", "result" => "ok").increment(1);
            if restart.is_empty() {
                tracing::info!("configuration reloaded");
                "configuration reloaded".into()
            } else {
                tracing::warn!(sections = ?restart, "configuration reloaded; these sections changed but apply only after a restart");
                format!(
                    "configuration reloaded; restart to apply [{}]",
                    restart.join("], [")
                )
            }
        }
        Err(e) => {
            metrics::counter!("fleetgate_ops_reloads_total", "result" => "error").increment(1);
            tracing::error!(error = %e, "reload refused: invalid configuration; the running one stays");
            format!("reload refused: {e}")
        }
    }
}

/// Every tick: probe the pipeline, then (only if it answered) `WATCHDOG=1`, and a `STATUS=`.
/// With a watchdog of W (`WATCHDOG_USEC`), ticks come every W/4 and a probe may take W/4, so a
/// healthy daemon pings at least every W/2 and a stalled one is restarted after W.
async fn supervise(
    health: Health,
    token: CancellationToken,
    watchdog: Option<Duration>,
    send: impl Fn(&str),
) {
    let tick = watchdog
        .map(|w| (w / 2).max(Duration::from_millis(10)))
        .unwrap_or(STATUS_EVERY);
    let metrics = crate::ops::metrics::handle();
    let mut rates = Rates::default();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = token.cancelled() => return,
        }
        let probe = health.probe(tick).await;
        if token.is_cancelled() {
            return;
        }
        let text = metrics.render();
        let (stored, frames) = rates.update(
            Instant::now(),
            metric_total(&text, "fleetgate_storage_rows_written_total"),
            metric_total(&text, "fleetgate_ingest_messages_total"),
        );
        let conns = health.connections();
        let status = match &probe {
            Ok(took) => format!(
                "{conns} tracker connections; {stored:.0} positions/s stored, {frames:.0} frames/s decoded; pipeline ok ({} ms)",
                took.as_millis()
            ),
            Err(e) => format!("{conns} tracker connections; PIPELINE STALLED: {e}"),
        };
        match probe {
            Ok(_) if watchdog.is_some() => {
                send(&format!("WATCHDOG=1\n{}", systemd::status_line(&status)))
            }
            Ok(_) => send(&systemd::status_line(&status)),
            Err(e) => {
                tracing::error!(error = %e, "pipeline liveness probe failed; withholding the watchdog ping");
                send(&systemd::status_line(&status));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_series_of_one_metric_only() {
        let text = "# TYPE fleetgate_ingest_messages_total counter\n\
            fleetgate_ingest_messages_total{protocol=\"teltonika\",kind=\"data\"} 7\n\
            fleetgate_ingest_messages_total{protocol=\"gt06\",kind=\"login\"} 3\n\
            fleetgate_ingest_messages_total_other 100\n\
            fleetgate_storage_rows_written_total 42\n";
        assert_eq!(metric_total(text, "fleetgate_ingest_messages_total"), 10.0);
        assert_eq!(
            metric_total(text, "fleetgate_storage_rows_written_total"),
            42.0
        );
        assert_eq!(metric_total(text, "fleetgate_missing_total"), 0.0);
    }

    #[test]
    fn rates_are_per_second_between_updates() {
        let mut r = Rates::default();
        let t0 = Instant::now();
        assert_eq!(r.update(t0, 100.0, 10.0), (0.0, 0.0));
        assert_eq!(
            r.update(t0 + Duration::from_secs(2), 300.0, 30.0),
            (100.0, 10.0)
        );
        // A counter reset (new recorder) never shows a negative rate.
        assert_eq!(r.update(t0 + Duration::from_secs(3), 0.0, 0.0), (0.0, 0.0));
    }
}
