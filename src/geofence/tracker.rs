//! Debounced zone membership of one vehicle: a pure state machine, fixes in, events out.
//!
//! Per (vehicle, zone) the tracker holds the confirmed state (inside / outside) and, while
//! fixes disagree with it, a pending change (first disagreeing fix time, count). A change is
//! confirmed by the fix that completes all three conditions of the zone's [`Debounce`]:
//! `fixes` consecutive valid fixes on the new side, at least `secs` from the first of them to
//! this one, and this fix at least `hysteresis_m` beyond the effective boundary (the drawn
//! boundary moved out by `buffer_m`) on the new side. The rule is the same for entering and
//! exiting (a Schmitt trigger around the boundary): a vehicle parked on the border, or driving
//! along it, never flaps. One fix on the old side resets the pending change. The event
//! carries the confirming fix's time and position. Distances are computed only for a fix that
//! already meets the count and time conditions.
//!
//! Ignored (never change state, never count): invalid fixes, fixes flagged `is_jump`, fixes
//! with non-finite coordinates, and fixes not newer than the last accepted one (buffered
//! uploads arrive newest-first; feed a whole upload through [`VehicleZones::observe_batch`],
//! which orders it first).
//!
//! Initial state: the first accepted fix sets membership to the zones containing it, without
//! events (a restart must not report every parked car as "entered"). After that, a zone with
//! no state is "outside": a zone added by a reload around a vehicle is entered after the
//! debounce. A zone removed by a reload is forgotten without an event.
//!
//! Time comes from the fixes only; there is no clock here.

use chrono::{DateTime, Utc};
use geo::{Coord, Distance, Haversine, Point};
use serde::{Deserialize, Serialize};

use crate::geofence::index::ZoneSet;
use crate::geofence::zone::{Zone, ZoneKind};
use crate::model::Position;

/// How a zone change is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debounce {
    /// Consecutive valid fixes on the new side (>= 1).
    pub fixes: u32,
    /// Seconds from the first of them to the confirming fix.
    pub secs: u32,
    /// How far beyond the effective boundary the confirming fix must be, in metres.
    pub hysteresis_m: f64,
}

impl Debounce {
    /// Regions (service area, custom): GPS noise near a long border matters, 200 m band.
    pub const REGION: Debounce = Debounce {
        fixes: 3,
        secs: 60,
        hysteresis_m: 200.0,
    };
    /// Sites (parking, depot, repair) are 50–300 m across: a 15 m band, 30 s.
    pub const SITE: Debounce = Debounce {
        fixes: 3,
        secs: 30,
        hysteresis_m: 15.0,
    };
}

/// Per-kind debounce defaults (a config section; absent kinds keep the built-in values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebounceConfig {
    pub service_area: Debounce,
    pub parking: Debounce,
    pub depot: Debounce,
    pub repair: Debounce,
    pub custom: Debounce,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            service_area: Debounce::REGION,
            parking: Debounce::SITE,
            depot: Debounce::SITE,
            repair: Debounce::SITE,
            custom: Debounce::REGION,
        }
    }
}

impl DebounceConfig {
    pub fn for_kind(&self, kind: ZoneKind) -> Debounce {
        match kind {
            ZoneKind::ServiceArea => self.service_area,
            ZoneKind::Parking => self.parking,
            ZoneKind::Depot => self.depot,
            ZoneKind::Repair => self.repair,
            ZoneKind::Custom => self.custom,
        }
    }

    /// The kind's default with the zone's own overrides applied.
    pub fn resolve(&self, zone: &Zone) -> Debounce {
        let d = self.for_kind(zone.kind);
        Debounce {
            fixes: zone.debounce.fixes.unwrap_or(d.fixes),
            secs: zone.debounce.secs.unwrap_or(d.secs),
            hysteresis_m: zone.debounce.hysteresis_m.unwrap_or(d.hysteresis_m),
        }
    }

    /// Checks every kind; the error names the key (`parking.fixes`) and the bad value.
    pub fn validate(&self) -> Result<(), String> {
        for kind in ZoneKind::ALL {
            let d = self.for_kind(kind);
            if d.fixes == 0 {
                return Err(format!("{kind}.fixes: expected an integer >= 1, got 0"));
            }
            if !(d.hysteresis_m.is_finite() && d.hysteresis_m >= 0.0) {
                return Err(format!(
                    "{kind}.hysteresis_m: expected metres >= 0, got {}",
                    d.hysteresis_m
                ));
            }
        }
        Ok(())
    }
}

/// One position as the zone stage sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub valid: bool,
    /// Reported speed; informational (the jump detector uses the implied speed).
    pub speed_kmh: f64,
    /// Set by the pipeline's filter (or [`JumpDetector`]) for a position jump.
    pub is_jump: bool,
}

impl Fix {
    /// The zone stage's view of a position. `is_jump` is false: the pipeline's filter drops
    /// jumps before storage; set it (or use [`JumpDetector`]) when feeding unfiltered data.
    pub fn from_position(p: &Position) -> Fix {
        Fix {
            time: p.fix_time,
            lat: p.lat,
            lon: p.lon,
            valid: p.valid,
            speed_kmh: p.speed_kmh,
            is_jump: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneEventKind {
    Enter,
    Exit,
}

/// A confirmed zone change, stamped with the confirming fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneEvent {
    pub kind: ZoneEventKind,
    pub zone: String,
    pub zone_kind: ZoneKind,
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    since: DateTime<Utc>,
    count: u32,
}

#[derive(Debug, Clone)]
struct Track {
    zone: String,
    kind: ZoneKind,
    inside: bool,
    pending: Option<Pending>,
}

impl Track {
    fn new(zone: &Zone, inside: bool) -> Track {
        Track {
            zone: zone.name.clone(),
            kind: zone.kind,
            inside,
            pending: None,
        }
    }

    /// Feeds one accepted fix; `observed` is the raw membership of the fix.
    fn step(&mut self, set: &ZoneSet, i: usize, observed: bool, fix: &Fix) -> Option<ZoneEvent> {
        if observed == self.inside {
            self.pending = None;
            return None;
        }
        let d = set.debounce_at(i);
        let p = self.pending.get_or_insert(Pending {
            since: fix.time,
            count: 0,
        });
        p.count = p.count.saturating_add(1);
        let long_enough = (fix.time - p.since).num_milliseconds() >= i64::from(d.secs) * 1000;
        if p.count < d.fixes || !long_enough {
            return None;
        }
        if d.hysteresis_m > 0.0 {
            let depth = set.depth_m(
                i,
                Coord {
                    x: fix.lon,
                    y: fix.lat,
                },
                observed,
            );
            if depth < d.hysteresis_m {
                return None;
            }
        }
        self.inside = observed;
        self.pending = None;
        Some(ZoneEvent {
            kind: if observed {
                ZoneEventKind::Enter
            } else {
                ZoneEventKind::Exit
            },
            zone: self.zone.clone(),
            zone_kind: self.kind,
            time: fix.time,
            lat: fix.lat,
            lon: fix.lon,
        })
    }
}

/// Zone state of one vehicle (owned by its pipeline shard).
#[derive(Debug, Clone, Default)]
pub struct VehicleZones {
    last: Option<DateTime<Utc>>,
    /// Zones the vehicle is in, or has a pending change for.
    tracks: Vec<Track>,
}

impl VehicleZones {
    pub fn new() -> VehicleZones {
        VehicleZones::default()
    }

    /// Restores a saved membership (`last_fix_time()` and `zones()` of an earlier tracker):
    /// the vehicle is inside `zones` with no pending change, and fixes up to `last_fix` are
    /// stale. Names `set` no longer has are dropped. A change pending at save time restarts.
    pub fn restore<S: AsRef<str>>(
        set: &ZoneSet,
        last_fix: DateTime<Utc>,
        zones: impl IntoIterator<Item = S>,
    ) -> VehicleZones {
        let tracks = zones
            .into_iter()
            .filter_map(|name| set.index_of(name.as_ref()))
            .map(|i| Track::new(set.zone(i), true))
            .collect();
        VehicleZones {
            last: Some(last_fix),
            tracks,
        }
    }

    /// Feeds one fix; returns the confirmed enter/exit events (usually none).
    pub fn observe(&mut self, set: &ZoneSet, fix: &Fix) -> Vec<ZoneEvent> {
        let mut events = Vec::new();
        if !fix.valid || fix.is_jump || !fix.lat.is_finite() || !fix.lon.is_finite() {
            return events;
        }
        if self.last.is_some_and(|t| fix.time <= t) {
            return events;
        }
        let first = self.last.is_none();
        self.last = Some(fix.time);
        let mut now = set.containing_idx(fix.lat, fix.lon);
        if first {
            self.tracks = now.map(|i| Track::new(set.zone(i), true)).collect();
            return events;
        }
        self.tracks.retain_mut(|t| {
            let Some(i) = set.index_of(&t.zone) else {
                return false; // removed by a reload
            };
            t.kind = set.kind_at(i);
            let observed = now.consume(i);
            events.extend(t.step(set, i, observed, fix));
            t.inside || t.pending.is_some()
        });
        for i in now {
            let mut t = Track::new(set.zone(i), false);
            events.extend(t.step(set, i, true, fix));
            self.tracks.push(t);
        }
        events
    }

    /// Feeds an upload of several fixes in time order, whatever order they came in.
    pub fn observe_batch(&mut self, set: &ZoneSet, fixes: &[Fix]) -> Vec<ZoneEvent> {
        let mut order: Vec<&Fix> = fixes.iter().collect();
        order.sort_by_key(|f| f.time);
        order
            .into_iter()
            .flat_map(|f| self.observe(set, f))
            .collect()
    }

    /// `None` until the first accepted fix; then whether the vehicle is (debounced) inside
    /// any `service_area` zone.
    pub fn inside_service_area(&self) -> Option<bool> {
        self.last?;
        Some(
            self.tracks
                .iter()
                .any(|t| t.inside && t.kind == ZoneKind::ServiceArea),
        )
    }

    /// Names of the zones the vehicle is (debounced) inside.
    pub fn zones(&self) -> impl Iterator<Item = &str> + '_ {
        self.tracks
            .iter()
            .filter(|t| t.inside)
            .map(|t| t.zone.as_str())
    }

    /// Time of the last accepted fix.
    pub fn last_fix_time(&self) -> Option<DateTime<Utc>> {
        self.last
    }
}

/// Flags position jumps by the speed implied between consecutive accepted fixes. Hops under
/// `min_jump_m` are GPS noise at any interval (as in the pipeline's filter), never jumps.
///
/// A jump does not become the reference, so one wild fix is flagged alone. After
/// `max_rejects` jumps in a row the next fix is accepted as the new reference (the vehicle
/// really moved — a tow truck, a long tunnel — or the reference itself was the outlier).
/// Invalid and out-of-order fixes are not judged (`false`) and do not move the reference.
#[derive(Debug, Clone)]
pub struct JumpDetector {
    pub max_speed_kmh: f64,
    pub min_jump_m: f64,
    pub max_rejects: u32,
    last: Option<(DateTime<Utc>, Point<f64>)>,
    rejects: u32,
}

impl Default for JumpDetector {
    fn default() -> Self {
        JumpDetector::new(250.0)
    }
}

impl JumpDetector {
    pub fn new(max_speed_kmh: f64) -> JumpDetector {
        JumpDetector {
            max_speed_kmh,
            min_jump_m: 1_000.0,
            max_rejects: 3,
            last: None,
            rejects: 0,
        }
    }

    /// Whether `fix` is a jump; updates the reference otherwise.
    pub fn is_jump(&mut self, fix: &Fix) -> bool {
        if !fix.valid || !fix.lat.is_finite() || !fix.lon.is_finite() {
            return false;
        }
        let p = Point::new(fix.lon, fix.lat);
        if let Some((t0, p0)) = self.last {
            if fix.time <= t0 {
                return false;
            }
            let secs = (fix.time - t0).num_milliseconds() as f64 / 1000.0;
            let m = Haversine::distance(p0, p);
            let kmh = m / secs * 3.6;
            if m > self.min_jump_m && kmh > self.max_speed_kmh && self.rejects < self.max_rejects {
                self.rejects += 1;
                return true;
            }
        }
        self.rejects = 0;
        self.last = Some((fix.time, p));
        false
    }
}

#[cfg(test)]
mod tests;
