//! "On line" and "wants to return" per vehicle: a pure state machine fed with committed fixes
//! in fix-time order (so a replayed drive behaves like a live one) and with return requests.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// What the rules need of one fix.
#[derive(Clone, Debug, PartialEq)]
pub struct FixInput {
    pub time: DateTime<Utc>,
    /// None when the device does not report ignition: speed alone decides.
    pub ignition: Option<bool>,
    pub speed_kmh: f64,
    pub inside_service_area: bool,
    /// The configured "wants to return" input/alarm is active on this fix.
    pub return_signal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShiftRules {
    pub on_line_after: Duration,
    pub moving_kmh: f64,
    pub shift_gap: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ShiftEvent {
    OnLine { at: DateTime<Utc> },
    WantsToReturn { at: DateTime<Utc> },
}

/// One vehicle's shift. Serialized into `crm_state` (scope `shift`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShiftState {
    pub on_line: bool,
    pub on_line_at: Option<DateTime<Utc>>,
    pub wants_to_return: bool,
    pub wants_to_return_at: Option<DateTime<Utc>>,
    /// Last fix with the car driving (ignition on, moving).
    pub last_active: Option<DateTime<Utc>>,
    /// Newest fix seen; older ones are stale and ignored.
    pub last_fix: Option<DateTime<Utc>>,
    /// Start of the current uninterrupted drive inside the service area.
    #[serde(default)]
    pub run_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub signal_high: bool,
}

impl ShiftState {
    /// Feed one fix; returns what changed.
    pub fn on_fix(&mut self, fix: &FixInput, rules: &ShiftRules) -> Vec<ShiftEvent> {
        let mut out = Vec::new();
        if self.last_fix.is_some_and(|t| fix.time <= t) {
            return out; // stale or duplicate: no rule acts on old data
        }
        self.last_fix = Some(fix.time);
        if (self.on_line || self.wants_to_return)
            && self
                .last_active
                .is_some_and(|a| fix.time - a >= rules.shift_gap)
        {
            self.end_shift();
        }
        let driving = fix.ignition != Some(false) && fix.speed_kmh > rules.moving_kmh;
        if driving {
            self.last_active = Some(fix.time);
        }
        if driving && fix.inside_service_area {
            self.run_start.get_or_insert(fix.time);
        } else {
            self.run_start = None;
        }
        if !self.on_line
            && !self.wants_to_return
            && self
                .run_start
                .is_some_and(|s| fix.time - s >= rules.on_line_after)
        {
            self.on_line = true;
            self.on_line_at = Some(fix.time);
            out.push(ShiftEvent::OnLine { at: fix.time });
        }
        let rising = fix.return_signal && !self.signal_high;
        self.signal_high = fix.return_signal;
        if rising {
            out.extend(self.request_return(fix.time));
        }
        out
    }

    /// The driver asked to return the car (tracker button or API): once per shift.
    pub fn request_return(&mut self, at: DateTime<Utc>) -> Option<ShiftEvent> {
        if self.wants_to_return {
            return None;
        }
        self.wants_to_return = true;
        self.wants_to_return_at = Some(at);
        Some(ShiftEvent::WantsToReturn { at })
    }

    /// The car is back (status set to `available`/`in_repair` after `issued`): a new shift may start.
    pub fn end_shift(&mut self) {
        self.on_line = false;
        self.on_line_at = None;
        self.wants_to_return = false;
        self.wants_to_return_at = None;
        self.run_start = None;
    }

    /// Take the durable part (what [`Self::durable_differs`] compares, stored with every change
    /// of it) from `stored`, written by another instance, and keep this instance's progress on
    /// the fix stream (the current drive, the newest fix, the return input) that is not stored
    /// on every fix.
    pub fn adopt_durable(&mut self, stored: &ShiftState) {
        self.on_line = stored.on_line;
        self.on_line_at = stored.on_line_at;
        self.wants_to_return = stored.wants_to_return;
        self.wants_to_return_at = stored.wants_to_return_at;
        self.last_active = self.last_active.max(stored.last_active);
        self.last_fix = self.last_fix.max(stored.last_fix);
    }

    /// The flags that must survive a restart changed (the rest is cheap to rebuild).
    pub fn durable_differs(&self, other: &ShiftState) -> bool {
        self.on_line != other.on_line
            || self.wants_to_return != other.wants_to_return
            || self.last_active.map(|t| t.timestamp() / 900)
                != other.last_active.map(|t| t.timestamp() / 900)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rules() -> ShiftRules {
        ShiftRules {
            on_line_after: Duration::minutes(2),
            moving_kmh: 5.0,
            shift_gap: Duration::hours(8),
        }
    }

    fn fix(s: i64, speed: f64, ign: bool, inside: bool) -> FixInput {
        FixInput {
            time: Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap() + Duration::seconds(s),
            ignition: Some(ign),
            speed_kmh: speed,
            inside_service_area: inside,
            return_signal: false,
        }
    }

    fn drive(st: &mut ShiftState, from: i64, to: i64, speed: f64, inside: bool) -> Vec<ShiftEvent> {
        (from..=to)
            .step_by(10)
            .flat_map(|s| st.on_fix(&fix(s, speed, true, inside), &rules()))
            .collect()
    }

    #[test]
    fn two_minutes_of_driving_inside_goes_on_line_once() {
        let mut st = ShiftState::default();
        assert!(
            drive(&mut st, 0, 110, 30.0, true).is_empty(),
            "not yet 2 min"
        );
        let ev = drive(&mut st, 120, 3600, 30.0, true);
        assert_eq!(ev.len(), 1);
        assert!(matches!(ev[0], ShiftEvent::OnLine { at } if at == fix(120, 0.0, true, true).time));
        // a pause and another drive the same shift: nothing more
        assert!(drive(&mut st, 4000, 9000, 40.0, true).is_empty());
    }

    #[test]
    fn slow_ignition_off_or_outside_does_not_count() {
        let mut st = ShiftState::default();
        assert!(
            drive(&mut st, 0, 600, 4.0, true).is_empty(),
            "5 km/h or less is not moving"
        );
        assert!(
            drive(&mut st, 700, 1300, 60.0, false).is_empty(),
            "outside the area"
        );
        let mut off = ShiftState::default();
        let ev: Vec<_> = (0..60)
            .flat_map(|i| off.on_fix(&fix(i * 10, 30.0, false, true), &rules()))
            .collect();
        assert!(ev.is_empty(), "ignition off (towed) is not driving");
        // a stop interrupts the run: 100 s + stop + 100 s is not 2 minutes
        let mut st = ShiftState::default();
        assert!(drive(&mut st, 0, 100, 30.0, true).is_empty());
        assert!(st.on_fix(&fix(105, 0.0, true, true), &rules()).is_empty());
        assert!(drive(&mut st, 110, 210, 30.0, true).is_empty());
    }

    #[test]
    fn stale_fixes_are_ignored() {
        let mut st = ShiftState::default();
        drive(&mut st, 1000, 1010, 30.0, true);
        assert!(drive(&mut st, 0, 990, 30.0, true).is_empty());
        assert!(!st.on_line);
    }

    #[test]
    fn new_shift_after_idle_gap_or_return() {
        let mut st = ShiftState::default();
        assert_eq!(drive(&mut st, 0, 200, 30.0, true).len(), 1);
        // parked 7 h: same shift
        assert!(drive(&mut st, 200 + 7 * 3600, 200 + 7 * 3600 + 300, 30.0, true).is_empty());
        // idle 8 h after the last drive: a new shift
        let t = 200 + 7 * 3600 + 300 + 8 * 3600;
        assert_eq!(drive(&mut st, t, t + 300, 30.0, true).len(), 1);
        st.end_shift();
        assert_eq!(drive(&mut st, t + 400, t + 700, 30.0, true).len(), 1);
    }

    #[test]
    fn return_signal_edge_moves_once_per_shift() {
        let mut st = ShiftState::default();
        drive(&mut st, 0, 200, 30.0, true);
        let mut f = fix(300, 0.0, true, true);
        f.return_signal = true;
        let ev = st.on_fix(&f, &rules());
        assert!(matches!(ev[..], [ShiftEvent::WantsToReturn { .. }]));
        f.time += Duration::seconds(10);
        assert!(st.on_fix(&f, &rules()).is_empty(), "held input: no repeat");
        f.return_signal = false;
        f.time += Duration::seconds(10);
        st.on_fix(&f, &rules());
        f.return_signal = true;
        f.time += Duration::seconds(10);
        assert!(
            st.on_fix(&f, &rules()).is_empty(),
            "pressed again: once per shift"
        );
        assert!(st.request_return(f.time).is_none());
        // driving back to the park does not put it on line again
        assert!(drive(&mut st, 400, 1000, 30.0, true).is_empty());
    }

    #[test]
    fn adopting_another_instances_state_keeps_the_drive_in_progress() {
        let mut mine = ShiftState::default();
        assert!(
            drive(&mut mine, 0, 60, 40.0, true).is_empty(),
            "a minute: not yet"
        );
        // Another instance stored what it knows of the car (nothing durable yet).
        mine.adopt_durable(&ShiftState::default());
        assert!(mine.run_start.is_some(), "the drive in progress is kept");
        let ev = drive(&mut mine, 70, 130, 40.0, true);
        assert!(
            ev.iter().any(|e| matches!(e, ShiftEvent::OnLine { .. })),
            "two minutes from the drive's start: {ev:?}"
        );
        // It then takes a return request and stores it: the stored flags win.
        let mut stored = mine.clone();
        assert!(stored
            .request_return(fix(140, 0.0, true, true).time)
            .is_some());
        mine.adopt_durable(&stored);
        assert!(mine.wants_to_return && mine.on_line);
        assert!(
            mine.request_return(fix(150, 0.0, true, true).time)
                .is_none(),
            "not moved a second time"
        );
    }
}
