//! The archive actor: every `[retention] interval_s` one pass, in order —
//! 1. day partitions for today and the next two days exist (the group commit never waits on a
//!    `CREATE TABLE` at midnight);
//! 2. every closed device-day (its UTC day ended `compact_grace_s` ago) with hot rows is
//!    packed, and its vehicle's daily summary computed from the merged positions and stored
//!    (a day that gets late data is packed again, so its summary is recomputed);
//! 3. retention: whole day partitions before `today - positions_days` are dropped; zone
//!    events, commands and audit entries older than their `*_days` go in batches of
//!    `[retention] batch` rows, one short transaction each, with a pause between batches so
//!    the group commit always gets the database between two of them.
//!
//! It runs on its own task and only ever talks to storage: ingest never waits for it. Time
//! comes from an injected [`Clock`], so tests move the calendar forward.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::RetentionConfig;
use super::store::{ArchiveStore, Compacted, DailySummary, Day, DeviceDay, Expiring, OnPacked};
use super::summary::{summarize, SummaryRules};
use crate::geofence::store::{EventQuery, StoredZoneEvent, ZoneStore};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::StorageError;

/// Where the actor reads the time: the wall clock in the daemon, a moved one in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Device-days asked for per `unpacked_days` call.
const COMPACT_PAGE: u32 = 256;
/// Pause between two expiry batches: the single SQLite writer is the group commit's first.
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// Pause after packing a device-day, for the same reason: a backlog (the first pass over a
/// database made before the archive, a long outage) is packed beside ingest, not before it.
const COMPACT_PAUSE: Duration = Duration::from_millis(5);
/// Zone events read before a day starts, to know whether the car was inside at midnight.
const EVENTS_LOOKBACK_DAYS: i64 = 3;
/// Most zone events of one vehicle read for one day (a car crossing a boundary all day long
/// makes a few hundred).
const EVENTS_LIMIT: u32 = 20_000;

/// What the summaries need of the zones: the car a device is fitted to and its zone events.
#[async_trait]
pub trait ZoneFacts: Send + Sync {
    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError>;
    /// The vehicle's zone events with `from <= time < to`, oldest first.
    async fn zone_events(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredZoneEvent>, StorageError>;
}

/// The geofences' storage port seen as [`ZoneFacts`].
pub struct StoredZones(pub Arc<dyn ZoneStore>);

#[async_trait]
impl ZoneFacts for StoredZones {
    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError> {
        self.0.vehicle_of(device).await
    }

    async fn zone_events(
        &self,
        vehicle: &VehicleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredZoneEvent>, StorageError> {
        self.0
            .zone_events(&EventQuery {
                vehicle: Some(vehicle.clone()),
                kind: None,
                from: Some(from),
                to: Some(to),
                limit: EVENTS_LIMIT,
            })
            .await
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    pub compacted: Vec<DeviceDay>,
    pub summaries: u64,
    pub expired_days: Vec<Day>,
    pub expired_rows: Vec<(Expiring, u64)>,
    /// Steps that failed (`partitions`, `compact`, `summary`, `expire_days`, `expire_rows`).
    pub errors: Vec<&'static str>,
}

/// The actor's state: its settings and ports.
pub struct Archive {
    pub cfg: RetentionConfig,
    pub rules: SummaryRules,
    pub store: Arc<dyn ArchiveStore>,
    pub zones: Arc<dyn ZoneFacts>,
}

fn label(t: Expiring) -> &'static str {
    match t {
        Expiring::ZoneEvents => "zone_events",
        Expiring::Commands => "commands",
        Expiring::Audit => "audit",
    }
}

impl Archive {
    /// One pass at `now` (steps in the module header). A failing step is logged and counted,
    /// and the others still run; the next pass retries.
    pub async fn pass(&self, now: DateTime<Utc>, stop: &CancellationToken) -> PassReport {
        let started = std::time::Instant::now();
        let mut report = PassReport::default();
        let today = Day::of(now);
        if let Err(e) = self.store.ensure_partitions(today, Day(today.0 + 2)).await {
            self.failed(&mut report, "partitions", &e);
        }
        self.compact(now, stop, &mut report).await;
        self.expire(now, stop, &mut report).await;
        if let Ok(Some(from)) = self.store.retained_from().await {
            let age = (now.timestamp_millis() - from.start_ms()).max(0) as f64 / 1000.0;
            metrics::gauge!("fleetgate_archive_retained_seconds").set(age);
        }
        let result = if report.errors.is_empty() {
            "ok"
        } else {
            "error"
        };
        metrics::counter!("fleetgate_archive_passes_total", "result" => result).increment(1);
        metrics::histogram!("fleetgate_archive_pass_seconds")
            .record(started.elapsed().as_secs_f64());
        report
    }

    fn failed(&self, report: &mut PassReport, step: &'static str, e: &StorageError) {
        tracing::warn!(step, error = %e, "archive pass step failed; retried next pass");
        metrics::counter!("fleetgate_archive_errors_total", "step" => step).increment(1);
        report.errors.push(step);
    }

    /// Pack every closed device-day and store its vehicle's summary.
    async fn compact(&self, now: DateTime<Utc>, stop: &CancellationToken, report: &mut PassReport) {
        let grace = chrono::Duration::seconds(self.cfg.compact_grace_s as i64);
        // Days before this one ended at least `grace` ago.
        let before = Day::of(now - grace);
        let mut done: HashSet<DeviceDay> = HashSet::new();
        let mut vehicles: HashMap<DeviceId, Option<VehicleId>> = HashMap::new();
        while !stop.is_cancelled() {
            let page = match self.store.unpacked_days(before, COMPACT_PAGE).await {
                Ok(p) => p,
                Err(e) => return self.failed(report, "compact", &e),
            };
            let todo: Vec<DeviceDay> = page.into_iter().filter(|d| !done.contains(d)).collect();
            if todo.is_empty() {
                return;
            }
            let mut summaries = Vec::new();
            for dd in todo {
                if stop.is_cancelled() {
                    break;
                }
                done.insert(dd.clone());
                let c = match self.store.compact_day(&dd).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.failed(report, "compact", &e);
                        continue;
                    }
                };
                metrics::counter!("fleetgate_archive_compacted_days_total").increment(1);
                metrics::counter!("fleetgate_archive_packed_positions_total").increment(c.packed);
                metrics::counter!("fleetgate_archive_duplicates_total").increment(c.duplicates);
                match self.summary(&dd, &c.positions, now, &mut vehicles).await {
                    Ok(Some(s)) => summaries.push(s),
                    Ok(None) => {}
                    Err(e) => self.failed(report, "summary", &e),
                }
                report.compacted.push(dd);
                tokio::time::sleep(COMPACT_PAUSE).await;
            }
            if !summaries.is_empty() {
                match self.store.put_summaries(&summaries).await {
                    Ok(()) => {
                        metrics::counter!("fleetgate_archive_summaries_total")
                            .increment(summaries.len() as u64);
                        report.summaries += summaries.len() as u64;
                    }
                    Err(e) => self.failed(report, "summary", &e),
                }
            }
        }
    }

    /// The summary of one packed device-day, for the vehicle the device is fitted to (a
    /// device fitted to no vehicle has none).
    async fn summary(
        &self,
        dd: &DeviceDay,
        positions: &[crate::pipeline::store::StoredPosition],
        now: DateTime<Utc>,
        vehicles: &mut HashMap<DeviceId, Option<VehicleId>>,
    ) -> Result<Option<DailySummary>, StorageError> {
        if positions.is_empty() {
            return Ok(None);
        }
        let vehicle = match vehicles.get(&dd.device) {
            Some(v) => v.clone(),
            None => {
                let v = self.zones.vehicle_of(&dd.device).await?;
                vehicles.insert(dd.device.clone(), v.clone());
                v
            }
        };
        let Some(vehicle) = vehicle else {
            return Ok(None);
        };
        let from = DateTime::<Utc>::from_timestamp_millis(dd.day.start_ms()).unwrap_or_default()
            - chrono::Duration::days(EVENTS_LOOKBACK_DAYS);
        let to = DateTime::<Utc>::from_timestamp_millis(dd.day.end_ms()).unwrap_or_default();
        let events = self.zones.zone_events(&vehicle, from, to).await?;
        Ok(summarize(
            &vehicle,
            &dd.device,
            dd.day,
            positions,
            &events,
            &self.rules,
            now,
        ))
    }

    /// Drop expired day partitions, then expire the other tables' rows in batches.
    async fn expire(&self, now: DateTime<Utc>, stop: &CancellationToken, report: &mut PassReport) {
        let today = Day::of(now);
        if let Some(days) = self.cfg.positions_days {
            match self.store.expire_days(Day(today.0 - days as i32)).await {
                Ok(dropped) => {
                    if !dropped.is_empty() {
                        tracing::info!(days = dropped.len(), first = %dropped[0].date(), "expired position partitions dropped");
                    }
                    metrics::counter!("fleetgate_archive_expired_days_total")
                        .increment(dropped.len() as u64);
                    report.expired_days = dropped;
                }
                Err(e) => self.failed(report, "expire_days", &e),
            }
        }
        for (table, days) in [
            (Expiring::ZoneEvents, self.cfg.events_days),
            (Expiring::Commands, self.cfg.commands_days),
            (Expiring::Audit, self.cfg.effective_audit_days()),
        ] {
            let Some(days) = days else { continue };
            let before = now - chrono::Duration::days(days as i64);
            let mut total = 0;
            while !stop.is_cancelled() {
                match self.store.expire_rows(table, before, self.cfg.batch).await {
                    Ok(n) => {
                        total += n;
                        metrics::counter!("fleetgate_archive_expired_rows_total", "table" => label(table))
                            .increment(n);
                        if n < self.cfg.batch as u64 {
                            break;
                        }
                        tokio::time::sleep(BATCH_PAUSE).await;
                    }
                    Err(e) => {
                        self.failed(report, "expire_rows", &e);
                        break;
                    }
                }
            }
            report.expired_rows.push((table, total));
        }
    }
}

/// A device-day packed elsewhere (`fleetgate migrate`, `fleetgate storage compact`, the
/// start-up conversion) gets its summary here, as if the actor had packed it.
#[async_trait]
impl OnPacked for Archive {
    async fn packed(&self, dd: &DeviceDay, c: &Compacted, now: DateTime<Utc>) {
        let mut vehicles = HashMap::new();
        let result = match self.summary(dd, &c.positions, now, &mut vehicles).await {
            Ok(Some(s)) => self
                .store
                .put_summaries(std::slice::from_ref(&s))
                .await
                .map(|_| 1),
            Ok(None) => Ok(0),
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => metrics::counter!("fleetgate_archive_summaries_total").increment(n),
            Err(e) => {
                // The summary of a day packed outside a pass: the day is not packed again, so
                // say which one is missing.
                tracing::warn!(device = %dd.device, day = %dd.day.date(), error = %e,
                    "daily summary of a packed day not stored");
                metrics::counter!("fleetgate_archive_errors_total", "step" => "summary")
                    .increment(1);
            }
        }
    }
}

/// Run passes until `stop`: one at once (partitions for today before the first commit of a
/// new install), then every `interval_s`.
pub fn spawn(archive: Arc<Archive>, clock: Clock, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(archive.cfg.interval_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let report = archive.pass(clock(), &stop).await;
            if !report.compacted.is_empty() || !report.expired_days.is_empty() {
                tracing::info!(
                    compacted = report.compacted.len(),
                    summaries = report.summaries,
                    expired_days = report.expired_days.len(),
                    "archive pass"
                );
            }
        }
    })
}

#[cfg(test)]
mod tests;
