//! One vehicle's day in figures, from its positions (in fix-time order, one per fix time, as
//! `ArchiveStore::compact_day` returns them) and its service-area zone events. Pure: the same
//! inputs give the same summary, so a day re-packed after late data is simply recomputed.
//!
//! The rules:
//! - **distance**: great-circle steps between valid fixes. A step the pipeline would call a
//!   jump (over 1 km at an implied speed above `[filters] max_implied_speed_kmh`) is not
//!   driven: the fix is left out and the anchor stays, unless agreeing jumps re-anchor (the
//!   pipeline's own `Reanchor` machine), and the re-anchoring step is not counted either.
//! - **engine** and **moving** time: each interval between two consecutive fixes takes the
//!   state of the fix that opens it (ignition on; speed at least [`MOVING_KMH`] and the device
//!   not saying it is still). An interval longer than `max_gap_s` counts as neither: the car
//!   was not heard from (a tracker asleep in an underground car park).
//! - **outside**: seconds of the day outside every service area, from the debounced zone
//!   events (the state at midnight from the last event before it, or, with none, the opposite
//!   of the zone's first event of the day).

use chrono::{DateTime, Utc};

use super::store::{DailySummary, Day};
use crate::geofence::store::StoredZoneEvent;
use crate::geofence::ZoneKind;
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::filter::{haversine_m, LastFix};
use crate::pipeline::reanchor::{JumpVerdict, Reanchor};
use crate::pipeline::store::StoredPosition;

/// At or above this speed (km/h) a fix is moving: below it a stationary receiver's drift.
pub const MOVING_KMH: f64 = 3.0;

/// The knobs of the summary, from `[filters]` and `[retention]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SummaryRules {
    /// `[filters] max_implied_speed_kmh` (0 disables the jump check, as in the pipeline).
    pub max_implied_speed_kmh: f64,
    /// `[retention] summary_gap_s`.
    pub max_gap_s: i64,
}

impl Default for SummaryRules {
    fn default() -> Self {
        SummaryRules {
            max_implied_speed_kmh: 300.0,
            max_gap_s: 300,
        }
    }
}

/// The pipeline's jump rule between an anchor and a fix.
fn is_jump(anchor: &LastFix, p: &StoredPosition, max_kmh: f64) -> bool {
    if max_kmh <= 0.0 {
        return false;
    }
    let h = (p.time - anchor.time).num_milliseconds() as f64 / 3_600_000.0;
    if h <= 0.0 {
        return false;
    }
    let km = haversine_m(anchor.lat, anchor.lon, p.lat, p.lon) / 1000.0;
    km > 1.0 && km / h > max_kmh
}

fn fix_of(p: &StoredPosition) -> LastFix {
    LastFix {
        time: p.time,
        lat: p.lat,
        lon: p.lon,
    }
}

/// Metres driven over the valid fixes, and the fastest speed among the fixes kept.
fn distance(positions: &[StoredPosition], rules: &SummaryRules) -> (f64, f64) {
    let mut anchor: Option<LastFix> = None;
    let mut reanchor = Reanchor::default();
    let mut metres = 0.0;
    let mut max_speed: f64 = 0.0;
    for p in positions.iter().filter(|p| p.valid) {
        let Some(a) = anchor else {
            anchor = Some(fix_of(p));
            max_speed = max_speed.max(p.speed_kmh);
            continue;
        };
        if is_jump(&a, p, rules.max_implied_speed_kmh) {
            let plausible = |l: &LastFix| !is_jump(l, p, rules.max_implied_speed_kmh);
            if let JumpVerdict::Reanchor { .. } = reanchor.jump(fix_of(p), plausible) {
                // The old anchor was the outlier: start again here, the hop never driven.
                anchor = Some(fix_of(p));
                max_speed = max_speed.max(p.speed_kmh);
            }
            continue;
        }
        reanchor.accepted();
        metres += haversine_m(a.lat, a.lon, p.lat, p.lon);
        max_speed = max_speed.max(p.speed_kmh);
        anchor = Some(fix_of(p));
    }
    (metres, max_speed)
}

fn moving(p: &StoredPosition) -> bool {
    p.speed_kmh >= MOVING_KMH && p.motion != Some(false)
}

/// (engine seconds, moving seconds) by the interval rule in the module header.
fn durations(positions: &[StoredPosition], max_gap_s: i64) -> (i64, i64) {
    let (mut engine_ms, mut moving_ms) = (0i64, 0i64);
    for w in positions.windows(2) {
        let dt = (w[1].time - w[0].time).num_milliseconds();
        if dt <= 0 || dt > max_gap_s * 1000 {
            continue;
        }
        if w[0].ignition == Some(true) {
            engine_ms += dt;
        }
        if moving(&w[0]) {
            moving_ms += dt;
        }
    }
    (engine_ms / 1000, moving_ms / 1000)
}

/// Seconds of `day` outside every service area, from the vehicle's zone events (any order;
/// events of other zone kinds are ignored). With no service-area event at all the car is
/// taken to be inside: nothing ever said it left.
pub fn outside_seconds(events: &[StoredZoneEvent], day: Day) -> i64 {
    let mut evs: Vec<&StoredZoneEvent> = events
        .iter()
        .filter(|e| e.zone_kind == ZoneKind::ServiceArea.as_str())
        .filter(|e| e.time.timestamp_millis() < day.end_ms())
        .collect();
    evs.sort_by_key(|e| (e.time, e.id));
    let start = day.start_ms();
    // Each service area's state at midnight.
    let mut inside: std::collections::BTreeMap<&str, bool> = Default::default();
    for e in &evs {
        let before = e.time.timestamp_millis() < start;
        let entry = e.kind == "enter";
        if before {
            inside.insert(e.zone.as_str(), entry);
        } else {
            // The first event of the day tells the state before it, when nothing earlier did.
            inside.entry(e.zone.as_str()).or_insert(!entry);
        }
    }
    let outside =
        |m: &std::collections::BTreeMap<&str, bool>| !m.is_empty() && !m.values().any(|v| *v);
    let mut total = 0i64;
    let mut t = start;
    let mut out = outside(&inside);
    for e in evs.iter().filter(|e| e.time.timestamp_millis() >= start) {
        let at = e.time.timestamp_millis();
        if out {
            total += at - t;
        }
        t = at;
        inside.insert(e.zone.as_str(), e.kind == "enter");
        out = outside(&inside);
    }
    if out {
        total += day.end_ms() - t;
    }
    total / 1000
}

/// The vehicle's summary of `day`, or `None` when it has no position that day.
pub fn summarize(
    vehicle: &VehicleId,
    device: &DeviceId,
    day: Day,
    positions: &[StoredPosition],
    zone_events: &[StoredZoneEvent],
    rules: &SummaryRules,
    now: DateTime<Utc>,
) -> Option<DailySummary> {
    let first = positions.first()?;
    let last = positions.last()?;
    let (distance_m, max_speed_kmh) = distance(positions, rules);
    let (engine_s, moving_s) = durations(positions, rules.max_gap_s);
    Some(DailySummary {
        vehicle: vehicle.clone(),
        device: device.clone(),
        day,
        positions: positions.len() as u64,
        distance_m,
        engine_s,
        moving_s,
        outside_s: outside_seconds(zone_events, day),
        max_speed_kmh,
        first_fix: first.time,
        last_fix: last.time,
        odometer_first_m: positions.iter().find_map(|p| p.odometer_m),
        odometer_last_m: positions.iter().rev().find_map(|p| p.odometer_m),
        computed_at: now,
    })
}

#[cfg(test)]
pub(crate) mod tests;
