//! The outbox worker: delivers stored CRM events at least once, oldest first per vehicle
//! (only a vehicle's oldest pending event is ever in flight), with exponential backoff and
//! jitter per event, the CRM's Retry-After honoured, a TTL after which an event is
//! dead-lettered, and metrics. Events live in storage until delivered, so a CRM down for hours
//! or a restart of fleetgate loses nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::{CarEntity, CrmConfig};
use super::connector::{Connector, Outcome, LATE_AFTER};
use super::event::{OutboxEvent, Payload, Status};
use super::ratelimit::backoff;
use super::store::CrmStore;
use crate::pipeline::store::StorageError;

/// Most events fetched per round (head events of distinct vehicles).
const ROUND_MAX: u32 = 200;

/// At shutdown, how long requests already in flight get to finish and be recorded before the
/// round is abandoned (its events stay pending and go again at the next start, same keys).
/// Well inside systemd's `TimeoutStopSec` (45 s in our unit), with the pipeline's drain.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct OutboxWorker {
    pub store: Arc<dyn CrmStore>,
    /// This instance's name: events are claimed under it (PostgreSQL), so instances sharing
    /// the database deliver each event once.
    pub claimer: String,
    /// How long a claim holds before another instance may take the event over.
    pub lease: Duration,
    pub connector: Arc<dyn Connector>,
    pub cfg: CrmConfig,
    /// Signalled when new events were committed, so they go out without waiting a poll.
    pub wake: Arc<Notify>,
    /// Each vehicle's company card (`[crm] car_entity = "company"`), re-read at most every
    /// [`COMPANIES_EVERY`].
    pub companies: std::sync::Mutex<Companies>,
}

/// The vehicles' `crm_company_id` as last read.
#[derive(Default)]
pub struct Companies {
    by_vehicle: std::collections::HashMap<crate::model::VehicleId, String>,
    read_at: Option<tokio::time::Instant>,
    /// Deals the CRM said have no company, and when: not asked again for [`NO_COMPANY_FOR`].
    without: std::collections::HashMap<String, tokio::time::Instant>,
}

/// How long a deal without a linked company is not asked again (a manager may link one).
const NO_COMPANY_FOR: Duration = Duration::from_secs(600);

trait Elapsed {
    fn is_none_or_elapsed(&self, d: Duration) -> bool;
}

/// Runs a storage write that records what a CRM already did, trying again on a storage error
/// (a busy database, a deadline) a few times before giving up: the event would otherwise be
/// delivered again.
async fn recorded<F, Fut>(write: F) -> Result<(), StorageError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StorageError>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 4 => {
                tries += 1;
                tracing::warn!(error = %e, tries, "crm outbox: recording a delivery failed; trying again");
                tokio::time::sleep(wait).await;
                wait *= 3;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Elapsed for Option<tokio::time::Instant> {
    fn is_none_or_elapsed(&self, d: Duration) -> bool {
        self.map_or(true, |t| t.elapsed() >= d)
    }
}

/// How stale the vehicles' company ids may be (an operator's change reaches deliveries within
/// this; a vehicle never seen re-reads at once).
const COMPANIES_EVERY: Duration = Duration::from_secs(30);

impl OutboxWorker {
    /// Deliver until `shutdown`: from then on no request starts (the connector is closed), and
    /// a round in flight gets [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.cfg.poll_ms);
        let mut last_gauges = tokio::time::Instant::now() - Duration::from_secs(60);
        let mut last_purge = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if last_gauges.elapsed() >= Duration::from_secs(5) {
                self.gauges().await;
                last_gauges = tokio::time::Instant::now();
            }
            if last_purge.elapsed() >= Duration::from_secs(3600) {
                let before =
                    Utc::now() - chrono::Duration::days(self.cfg.keep_delivered_days as i64);
                if let Err(e) = self.store.outbox_purge(before).await {
                    tracing::warn!(error = %e, "crm outbox purge failed");
                }
                last_purge = tokio::time::Instant::now();
            }
            let stopping = async {
                shutdown.cancelled().await;
                self.connector.close();
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let sent = tokio::select! {
                r = self.round() => match r {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "crm outbox: storage error");
                        0
                    }
                },
                _ = stopping => {
                    tracing::warn!(
                        "crm outbox: deliveries still in flight {SHUTDOWN_GRACE:?} after shutdown; \
                         left pending"
                    );
                    break;
                }
            };
            if sent > 0 {
                continue;
            }
            let wait = match self.store.outbox_next_due().await {
                Ok(Some(t)) => (t - Utc::now()).to_std().unwrap_or_default().min(poll),
                _ => poll,
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.connector.close();
                    break;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            }
        }
        self.gauges().await;
    }

    /// Deliver what is due; returns how many events were attempted.
    pub async fn round(&self) -> Result<usize, StorageError> {
        let now = Utc::now();
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let due = self
            .store
            .outbox_claim(now, ROUND_MAX, &self.claimer, lease)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut live: Vec<OutboxEvent> = Vec::with_capacity(due.len());
        for e in due {
            if e.expires_at <= now {
                let err = format!(
                    "TTL expired after {} attempts; last error: {}",
                    e.attempts,
                    e.last_error.as_deref().unwrap_or("none")
                );
                self.dead(&e, e.attempts, &err).await?;
            } else {
                live.push(e);
            }
        }
        let n = live.len();
        if n == 0 {
            return Ok(1);
        }
        // Late stage events first check the deal; some are dropped, some cannot be checked.
        let mut checked: Vec<(OutboxEvent, Outcome)> = Vec::new();
        let mut send: Vec<OutboxEvent> = Vec::with_capacity(n);
        let live = if self.cfg.car_entity() == CarEntity::Company {
            let (ready, unreachable) = self.attach_companies(live).await?;
            checked.extend(unreachable);
            ready
        } else {
            live
        };
        for e in live {
            let late = e.attempts > 0 || now - e.created_at >= LATE_AFTER;
            if !late || !matches!(e.payload, Payload::StageChanged { .. }) {
                send.push(e);
                continue;
            }
            match self.late_check(&e).await? {
                Ok(None) => send.push(e),
                Ok(Some(why)) => {
                    metrics::counter!("fleetgate_crm_events_dropped_total", "cause" => "superseded")
                        .increment(1);
                    tracing::info!(id = e.id, vehicle = %e.vehicle_id, deal = ?e.deal_id, %why, "crm stage event dropped");
                    self.store.outbox_drop_one(e.id, &why).await?;
                }
                Err(o) => checked.push((e, o)),
            }
        }
        let outcomes = if send.is_empty() {
            Vec::new()
        } else {
            self.connector.deliver(&send).await
        };
        let at = Utc::now();
        let done: Vec<(OutboxEvent, Outcome)> =
            send.into_iter().zip(outcomes).chain(checked).collect();
        for (e, o) in done.iter().map(|(e, o)| (e, o.clone())) {
            let kind = e.payload.kind();
            match o {
                Outcome::Delivered => {
                    // The CRM has it: losing this record to a storage hiccup would send it
                    // again (the receiver dedups by key, but a manager may see it twice).
                    recorded(|| self.store.outbox_delivered(e.id, at)).await?;
                    metrics::counter!("fleetgate_crm_outbox_delivered_total", "kind" => kind)
                        .increment(1);
                    metrics::histogram!("fleetgate_crm_outbox_latency_seconds")
                        .record((at - e.created_at).num_milliseconds() as f64 / 1000.0);
                    tracing::debug!(id = e.id, key = %e.key, vehicle = %e.vehicle_id, kind, "crm event delivered");
                }
                Outcome::Retry { error, after } => {
                    let attempts = e.attempts + 1;
                    let mut delay =
                        backoff(attempts, self.cfg.backoff_initial_s, self.cfg.backoff_max_s);
                    if let Some(a) = after {
                        metrics::counter!("fleetgate_crm_outbox_throttled_total").increment(1);
                        delay = delay.max(a);
                    }
                    let next = at + chrono::Duration::from_std(delay).unwrap_or_default();
                    if next >= e.expires_at {
                        self.dead(e, attempts, &format!("TTL expired; last error: {error}"))
                            .await?;
                    } else {
                        metrics::counter!("fleetgate_crm_outbox_retries_total", "kind" => kind)
                            .increment(1);
                        tracing::info!(id = e.id, vehicle = %e.vehicle_id, kind, attempts, retry_in = ?delay, %error, "crm event not delivered; will retry");
                        self.store
                            .outbox_retry(e.id, attempts, next, &error)
                            .await?;
                    }
                }
                Outcome::Failed(error) => self.dead(e, e.attempts + 1, &error).await?,
            }
        }
        Ok(n)
    }

    /// Is this late stage event superseded: by a newer stage event for the same deal still
    /// pending (coalesced: only the newest goes), or by a change made in the CRM since?
    async fn late_check(
        &self,
        e: &OutboxEvent,
    ) -> Result<Result<Option<String>, Outcome>, StorageError> {
        let pending = self
            .store
            .outbox_list(Some(Status::Pending), Some(&e.vehicle_id), 200)
            .await?;
        let newer = pending.iter().any(|p| {
            p.id > e.id
                && p.deal_id == e.deal_id
                && matches!(p.payload, Payload::StageChanged { .. })
        });
        if newer {
            return Ok(Ok(Some(
                "superseded: a newer stage event for the deal is pending".into(),
            )));
        }
        Ok(self.connector.late_stage(e).await)
    }

    /// Set each car-fact event's company card: the vehicle's `crm_company_id`, else the deal's
    /// linked company as the CRM tells (then remembered on the vehicle). Events whose deal
    /// could not be read come back with the outcome to record (retried).
    async fn attach_companies(
        &self,
        mut events: Vec<OutboxEvent>,
    ) -> Result<(Vec<OutboxEvent>, Vec<(OutboxEvent, Outcome)>), StorageError> {
        let stale = {
            let c = self.companies.lock().unwrap_or_else(|p| p.into_inner());
            c.read_at.is_none_or_elapsed(COMPANIES_EVERY)
                || events
                    .iter()
                    .any(|e| e.payload.about_car() && !c.by_vehicle.contains_key(&e.vehicle_id))
                    && c.read_at.is_none_or_elapsed(Duration::from_secs(2))
        };
        if stale {
            let vehicles = self.store.crm_vehicles().await?;
            let mut c = self.companies.lock().unwrap_or_else(|p| p.into_inner());
            c.by_vehicle = vehicles
                .into_iter()
                .filter_map(|v| v.crm_company_id.map(|co| (v.id, co)))
                .collect();
            c.read_at = Some(tokio::time::Instant::now());
        }
        let mut unreachable = Vec::new();
        let mut ready = Vec::with_capacity(events.len());
        for mut e in events.drain(..) {
            if !e.payload.about_car() {
                ready.push(e);
                continue;
            }
            let known = {
                let c = self.companies.lock().unwrap_or_else(|p| p.into_inner());
                c.by_vehicle.get(&e.vehicle_id).cloned()
            };
            let asked_lately = e.deal_id.as_ref().is_some_and(|d| {
                let c = self.companies.lock().unwrap_or_else(|p| p.into_inner());
                c.without
                    .get(d)
                    .is_some_and(|t| t.elapsed() < NO_COMPANY_FOR)
            });
            e.company_id = match (known, e.deal_id.clone()) {
                (Some(c), _) => Some(c),
                (None, None) => None,
                (None, Some(_)) if asked_lately => None,
                (None, Some(deal)) => match self.connector.deal_company(&deal).await {
                    Ok(Some(c)) => {
                        if self
                            .store
                            .crm_set_company(&e.vehicle_id, &c, Utc::now())
                            .await?
                        {
                            tracing::info!(vehicle = %e.vehicle_id, deal, company = %c, "crm: the car's company card found through its deal; remembered on the vehicle");
                        }
                        let mut cache = self.companies.lock().unwrap_or_else(|p| p.into_inner());
                        cache.by_vehicle.insert(e.vehicle_id.clone(), c.clone());
                        Some(c)
                    }
                    Ok(None) => {
                        let mut cache = self.companies.lock().unwrap_or_else(|p| p.into_inner());
                        cache.without.insert(deal, tokio::time::Instant::now());
                        None
                    }
                    Err(o) => {
                        unreachable.push((e, o));
                        continue;
                    }
                },
            };
            ready.push(e);
        }
        Ok((ready, unreachable))
    }

    async fn dead(&self, e: &OutboxEvent, attempts: u32, error: &str) -> Result<(), StorageError> {
        metrics::counter!("fleetgate_crm_outbox_dead_total", "kind" => e.payload.kind())
            .increment(1);
        tracing::warn!(id = e.id, key = %e.key, vehicle = %e.vehicle_id, kind = e.payload.kind(), %error, "crm event dead-lettered");
        self.store.outbox_dead(e.id, attempts, error).await
    }

    async fn gauges(&self) {
        if let Ok(counts) = self.store.outbox_counts().await {
            for s in [
                Status::Pending,
                Status::Delivered,
                Status::Dead,
                Status::Dropped,
            ] {
                let n = counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
                metrics::gauge!("fleetgate_crm_outbox_events", "status" => s.as_str())
                    .set(n as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_delivery_is_recorded_through_a_storage_hiccup() {
        let calls = AtomicU32::new(0);
        let r = recorded(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StorageError::Invalid("database is locked".into()))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_storage_that_stays_down_is_reported() {
        let calls = AtomicU32::new(0);
        let r = recorded(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StorageError::Invalid("disk I/O error".into()))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }
}
