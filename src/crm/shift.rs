//! "On line" and "wants to return" per vehicle: a pure state machine fed with committed fixes
//! in fix-time order (so a replayed drive behaves like a live one) and with return requests.
//!
//! On line = the driver started working: the fix is inside the service area with the ignition
//! on (or not reported), and within the last `window` the car was moving (speed above
//! `moving_kmh`) for at least `min_moving` and covered at least `min_distance_m`, counting only
//! stretches inside the area with the ignition on. Stops at lights and in jams add nothing and
//! take nothing away: city traffic (110 s at 35 km/h, 25 s at a light) gets there in about
//! 4 minutes, while a yard idle (no movement), a 200 m parking-lot shuffle (too short) or a
//! tow with the ignition off (not counted) never does.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The longest gap between two fixes that can count as movement: a tracker silent for longer
/// says nothing about what happened meanwhile (trackers report every 1–60 s on the move).
pub const MAX_FIX_GAP: Duration = Duration::seconds(120);
/// Faster than this between two fixes is an odometer jump, not driving (m/s, 200 km/h).
const MAX_SPEED_MPS: f64 = 55.6;

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
    /// The car is issued to a driver: one that is not (handed back, in repair) never goes on
    /// line nor asks to return, whatever it drives.
    pub issued: bool,
    /// The tracker's own odometer, metres, when it reports one.
    pub odometer_m: Option<f64>,
    /// The distance summed from GPS positions since the device was first seen, metres.
    pub gps_odometer_m: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShiftRules {
    /// Movement needed within the window.
    pub min_moving: Duration,
    /// Distance needed within the window, metres.
    pub min_distance_m: f64,
    /// The sliding window movement and distance are summed over.
    pub window: Duration,
    pub moving_kmh: f64,
    pub shift_gap: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ShiftEvent {
    OnLine { at: DateTime<Utc> },
    WantsToReturn { at: DateTime<Utc> },
}

/// One stretch between two fixes that counted toward "on line".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stretch {
    pub end: DateTime<Utc>,
    pub moving: Duration,
    pub metres: f64,
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
    /// Odometers of the newest fix (tracker, GPS), to measure the next stretch.
    #[serde(skip)]
    pub last_odometer: Option<(Option<f64>, f64)>,
    /// Stretches inside the window that counted (moving or covering distance), oldest first.
    /// Progress on the fix stream, rebuilt from fixes: not stored.
    #[serde(skip)]
    pub window: VecDeque<Stretch>,
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
        let prev_time = self.last_fix.replace(fix.time);
        let prev_odo = self
            .last_odometer
            .replace((fix.odometer_m, fix.gps_odometer_m));
        if (self.on_line || self.wants_to_return)
            && self
                .last_active
                .is_some_and(|a| fix.time - a >= rules.shift_gap)
        {
            self.end_shift();
        }
        let ignition_on = fix.ignition != Some(false);
        let moving = ignition_on && fix.speed_kmh > rules.moving_kmh;
        if moving {
            self.last_active = Some(fix.time);
        }
        let counts = fix.issued && ignition_on && fix.inside_service_area;
        let stretch = prev_time
            .map(|pt| fix.time - pt)
            .filter(|dt| *dt <= MAX_FIX_GAP);
        if let (true, true, Some(dt), Some((dev, gps))) = (counts, moving, stretch, prev_odo) {
            // One odometer for both ends of a stretch: the tracker's when both fixes carry it.
            let delta = match (dev, fix.odometer_m) {
                (Some(a), Some(b)) => b - a,
                _ => fix.gps_odometer_m - gps,
            };
            let metres = delta.clamp(0.0, dt.num_milliseconds() as f64 / 1000.0 * MAX_SPEED_MPS);
            self.window.push_back(Stretch {
                end: fix.time,
                moving: dt,
                metres,
            });
        }
        let from = fix.time - rules.window;
        while self.window.front().is_some_and(|s| s.end - s.moving < from) {
            self.window.pop_front();
        }
        if !self.on_line && !self.wants_to_return && counts && self.started_work(rules) {
            self.on_line = true;
            self.on_line_at = Some(fix.time);
            self.window.clear();
            out.push(ShiftEvent::OnLine { at: fix.time });
        }
        let rising = fix.issued && fix.return_signal && !self.signal_high;
        self.signal_high = fix.return_signal;
        if rising {
            out.extend(self.request_return(fix.time));
        }
        out
    }

    /// Movement and distance within the window reach the thresholds.
    fn started_work(&self, rules: &ShiftRules) -> bool {
        let moving = self
            .window
            .iter()
            .fold(Duration::zero(), |acc, s| acc + s.moving);
        let metres: f64 = self.window.iter().map(|s| s.metres).sum();
        moving >= rules.min_moving && metres >= rules.min_distance_m
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
        self.window.clear();
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
            min_moving: Duration::minutes(3),
            min_distance_m: 1000.0,
            window: Duration::minutes(10),
            moving_kmh: 5.0,
            shift_gap: Duration::hours(8),
        }
    }

    /// A simulated car: fixes every `step` seconds, its odometer following its speed.
    struct Car {
        st: ShiftState,
        t: i64,
        odo_m: f64,
        tracker_odometer: bool,
        issued: bool,
    }

    impl Car {
        fn new() -> Car {
            Car {
                st: ShiftState::default(),
                t: 0,
                odo_m: 0.0,
                tracker_odometer: true,
                issued: true,
            }
        }

        fn fix(&self, speed: f64, ign: Option<bool>, inside: bool) -> FixInput {
            FixInput {
                time: Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap()
                    + Duration::seconds(self.t),
                ignition: ign,
                speed_kmh: speed,
                inside_service_area: inside,
                return_signal: false,
                issued: self.issued,
                odometer_m: self.tracker_odometer.then_some(self.odo_m),
                gps_odometer_m: self.odo_m,
            }
        }

        /// `secs` seconds at `speed`, one fix every 5 s.
        fn go(
            &mut self,
            secs: i64,
            speed: f64,
            ign: Option<bool>,
            inside: bool,
        ) -> Vec<ShiftEvent> {
            let mut out = Vec::new();
            for _ in 0..secs / 5 {
                self.t += 5;
                self.odo_m += speed / 3.6 * 5.0;
                out.extend(self.st.on_fix(&self.fix(speed, ign, inside), &rules()));
            }
            out
        }

        fn drive(&mut self, secs: i64, speed: f64) -> Vec<ShiftEvent> {
            self.go(secs, speed, Some(true), true)
        }

        fn on_line_after(&self) -> Option<i64> {
            let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
            self.st.on_line_at.map(|t| (t - t0).num_seconds())
        }
    }

    #[test]
    fn stop_and_go_city_traffic_goes_on_line_once_within_minutes() {
        // The car: 110 s at 35 km/h, 25 s at a light, for 34 minutes.
        let mut car = Car::new();
        let mut events = Vec::new();
        for _ in 0..15 {
            events.extend(car.drive(110, 35.0));
            events.extend(car.drive(25, 0.0));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        let at = car.on_line_after().unwrap();
        // 3 min of movement needs two legs and a bit of a third (the lights do not reset it).
        assert!((180..=300).contains(&at), "on line after {at} s");
    }

    #[test]
    fn a_yard_idle_a_parking_lot_shuffle_and_a_tow_never_go_on_line() {
        let mut yard = Car::new();
        assert!(
            yard.drive(3600, 0.0).is_empty(),
            "idling with the engine on"
        );
        assert!(yard.drive(3600, 4.0).is_empty(), "creeping at walking pace");

        // 200 m across a lot at 10 km/h (72 s), back and forth, for half an hour.
        let mut lot = Car::new();
        for _ in 0..12 {
            assert!(lot.drive(70, 10.0).is_empty());
            assert!(lot.drive(80, 0.0).is_empty());
        }

        let mut towed = Car::new();
        assert!(
            towed.go(1800, 40.0, Some(false), true).is_empty(),
            "ignition off"
        );
        // The engine started after the tow: the towed kilometres do not count.
        assert!(towed.drive(60, 30.0).is_empty());
    }

    #[test]
    fn movement_outside_the_area_or_spread_beyond_the_window_does_not_count() {
        let mut outside = Car::new();
        assert!(outside.go(1800, 60.0, Some(true), false).is_empty());
        // Back inside: only what is driven inside counts.
        assert!(outside.drive(60, 60.0).is_empty());
        assert_eq!(outside.drive(150, 60.0).len(), 1);

        // A minute of driving every 10 minutes never has 3 minutes within one window.
        let mut sparse = Car::new();
        for _ in 0..6 {
            assert!(sparse.drive(60, 50.0).is_empty());
            assert!(sparse.drive(540, 0.0).is_empty());
        }
    }

    #[test]
    fn distance_comes_from_the_gps_sum_without_a_tracker_odometer() {
        let mut car = Car::new();
        car.tracker_odometer = false;
        assert!(car.drive(175, 30.0).is_empty(), "not yet 3 minutes");
        assert_eq!(car.drive(10, 30.0).len(), 1);
        // 3 min at 10 km/h is only 500 m: not enough.
        let mut slow = Car::new();
        assert!(slow.drive(590, 6.0).is_empty());
    }

    #[test]
    fn an_odometer_jump_or_a_long_silence_is_not_driving() {
        let mut car = Car::new();
        car.drive(5, 30.0);
        car.odo_m += 50_000.0; // a corrupt odometer value
        car.t += 3600; // and an hour of silence
        assert!(
            car.drive(120, 30.0).is_empty(),
            "2 min + 2 min of gap at most"
        );
    }

    #[test]
    fn a_car_handed_back_never_goes_on_line_nor_asks_to_return() {
        let mut car = Car::new();
        car.issued = false;
        assert!(car.drive(1800, 40.0).is_empty(), "driven to the depot");
        car.t += 5;
        let mut f = car.fix(0.0, Some(true), true);
        f.return_signal = true;
        assert!(car.st.on_fix(&f, &rules()).is_empty(), "the button");
        // Issued again: the depot drive does not count toward the next driver's shift.
        car.issued = true;
        assert!(car.drive(60, 40.0).is_empty());
    }

    #[test]
    fn ignition_not_reported_lets_speed_decide() {
        let mut car = Car::new();
        assert_eq!(car.go(300, 40.0, None, true).len(), 1);
    }

    #[test]
    fn stale_fixes_are_ignored() {
        let mut car = Car::new();
        car.t = 10_000;
        car.drive(10, 30.0);
        car.t = 0;
        assert!(car.drive(900, 30.0).is_empty());
        assert!(!car.st.on_line);
    }

    #[test]
    fn new_shift_after_idle_gap_or_return() {
        let mut car = Car::new();
        assert_eq!(car.drive(300, 30.0).len(), 1);
        // parked 7 h: same shift
        car.t += 7 * 3600;
        assert!(car.drive(600, 30.0).is_empty());
        // idle 8 h after the last drive: a new shift
        car.t += 8 * 3600;
        assert_eq!(car.drive(600, 30.0).len(), 1);
        car.st.end_shift();
        assert_eq!(car.drive(600, 30.0).len(), 1);
    }

    #[test]
    fn return_signal_edge_moves_once_per_shift() {
        let mut car = Car::new();
        car.drive(300, 30.0);
        car.t += 5;
        let mut f = car.fix(0.0, Some(true), true);
        f.return_signal = true;
        let ev = car.st.on_fix(&f, &rules());
        assert!(matches!(ev[..], [ShiftEvent::WantsToReturn { .. }]));
        f.time += Duration::seconds(10);
        assert!(
            car.st.on_fix(&f, &rules()).is_empty(),
            "held input: no repeat"
        );
        f.return_signal = false;
        f.time += Duration::seconds(10);
        car.st.on_fix(&f, &rules());
        f.return_signal = true;
        f.time += Duration::seconds(10);
        assert!(
            car.st.on_fix(&f, &rules()).is_empty(),
            "pressed again: once per shift"
        );
        assert!(car.st.request_return(f.time).is_none());
        // driving back to the park does not put it on line again
        car.t += 100;
        assert!(car.drive(1200, 30.0).is_empty());
    }

    #[test]
    fn adopting_another_instances_state_keeps_the_drive_in_progress() {
        let mut car = Car::new();
        assert!(car.drive(120, 40.0).is_empty(), "two minutes: not yet");
        // Another instance stored what it knows of the car (nothing durable yet).
        car.st.adopt_durable(&ShiftState::default());
        assert!(!car.st.window.is_empty(), "the drive in progress is kept");
        let ev = car.drive(65, 40.0);
        assert!(
            ev.iter().any(|e| matches!(e, ShiftEvent::OnLine { .. })),
            "three minutes from the drive's start: {ev:?}"
        );
        // It then takes a return request and stores it: the stored flags win.
        let mut stored = car.st.clone();
        assert!(stored
            .request_return(car.fix(0.0, None, true).time)
            .is_some());
        car.st.adopt_durable(&stored);
        assert!(car.st.wants_to_return && car.st.on_line);
        assert!(
            car.st
                .request_return(car.fix(0.0, None, true).time)
                .is_none(),
            "not moved a second time"
        );
    }
}
