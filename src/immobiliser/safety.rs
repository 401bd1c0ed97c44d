//! Whether a car may be blocked now, judged only on evidence an attacker on the tracker
//! network cannot forge from the outside. Pure: fixes in, a verdict out; time passed in.
//!
//! The rule (`docs/immobiliser.md`, "Safe to block"):
//! - Evidence comes from **one connection**: the one the block will be written to. The caller
//!   keeps one [`Evidence`] per command-carrying connection and starts afresh when that
//!   connection changes. Fixes from UDP, from a second connection claiming the same IMEI, or
//!   from before the connection logged in are never evidence that the car stopped.
//! - Fixes count **in arrival order** and must be plausible against the server's receive time
//!   and against the connection's own previous fix: dated more than `max_ahead` after they
//!   reached the gateway (a future-dated fix), older than `max_age` when they arrived (history
//!   uploaded late), or not later than the previous fix (a track jumping back and forth) — each
//!   breaks the run instead of extending it.
//! - A block goes out only after `min_fixes` consecutive stopped fixes (speed ≤
//!   `max_speed_kmh`) spanning `safe_for` by fix time, or `min_fixes` consecutive fixes with the
//!   ignition off and the car not moving. One moving fix resets the run; so does a fix whose
//!   speed is not a number.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// When a car counts as safe to block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SafetyRules {
    pub max_speed_kmh: f64,
    /// How long (by fix time) the stopped run must last, unless the ignition is off.
    pub safe_for: Duration,
    /// Consecutive stopped fixes needed (ignition off included).
    pub min_fixes: u32,
    /// A fix dated this far after it reached the gateway is not evidence.
    pub max_ahead: Duration,
    /// A fix this old when it reached the gateway says what the car did, not what it does.
    pub max_age: Duration,
}

impl Default for SafetyRules {
    fn default() -> Self {
        SafetyRules {
            max_speed_kmh: 5.0,
            safe_for: Duration::seconds(10),
            min_fixes: 3,
            max_ahead: Duration::seconds(30),
            max_age: Duration::seconds(180),
        }
    }
}

/// The part of a fix the immobiliser looks at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FixSnapshot {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub ignition: Option<bool>,
    pub outputs: Option<u32>,
}

impl FixSnapshot {
    fn moving(&self, rules: &SafetyRules) -> bool {
        // NaN is no evidence of a stop.
        self.speed_kmh.is_nan() || self.speed_kmh > rules.max_speed_kmh
    }
}

/// Why a fix broke the stopped run (for the debug log and the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The fix extends (or starts) the stopped run.
    Stopped,
    /// The car moves: the run is over.
    Moving,
    /// Dated ahead of its arrival by more than `max_ahead`.
    Future,
    /// Older than `max_age` on arrival.
    Stale,
    /// Not later than the connection's previous fix.
    OutOfOrder,
}

/// One connection's evidence: the run of consecutive stopped fixes it has shown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence {
    /// The connection the evidence came on.
    pub conn: u64,
    /// The newest plausible fix of the connection (what the audit records).
    pub last: Option<FixSnapshot>,
    /// Fix time of the first fix of the current stopped run.
    run_since: Option<DateTime<Utc>>,
    /// Fixes in the current stopped run.
    run_len: u32,
    /// Every fix of the run had the ignition off.
    run_ignition_off: bool,
}

impl Evidence {
    /// Fresh evidence for connection `conn`: nothing shown yet.
    pub fn for_conn(conn: u64) -> Self {
        Evidence {
            conn,
            ..Default::default()
        }
    }

    /// Take one fix of this connection in, in arrival order; `received` is when the gateway
    /// got it.
    pub fn observe(
        &mut self,
        fix: FixSnapshot,
        received: DateTime<Utc>,
        rules: &SafetyRules,
    ) -> Verdict {
        let verdict = if fix.time - received > rules.max_ahead {
            Verdict::Future
        } else if received - fix.time > rules.max_age {
            Verdict::Stale
        } else if matches!(&self.last, Some(l) if fix.time <= l.time) {
            Verdict::OutOfOrder
        } else if fix.moving(rules) {
            Verdict::Moving
        } else {
            Verdict::Stopped
        };
        match verdict {
            Verdict::Stopped => {
                let off = fix.ignition == Some(false);
                if self.run_len == 0 {
                    self.run_since = Some(fix.time);
                    self.run_ignition_off = off;
                } else {
                    self.run_ignition_off &= off;
                }
                self.run_len += 1;
                self.last = Some(fix);
            }
            Verdict::Moving => {
                self.reset();
                self.last = Some(fix);
            }
            // Not evidence of now, and a sign the stream cannot be trusted: start over.
            Verdict::Future | Verdict::Stale | Verdict::OutOfOrder => self.reset(),
        }
        verdict
    }

    /// Something other than this connection's own fixes says the car moves (a fix from another
    /// source): the run starts over. It can delay a block, never cause one.
    pub fn contradict(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.run_since = None;
        self.run_len = 0;
        self.run_ignition_off = false;
    }

    /// Safe to cut the engine now.
    pub fn is_safe(&self, rules: &SafetyRules) -> bool {
        let (Some(last), Some(since)) = (&self.last, self.run_since) else {
            return false;
        };
        if self.run_len < rules.min_fixes.max(1) {
            return false;
        }
        self.run_ignition_off || last.time - since >= rules.safe_for
    }
}

/// Sessions one device's evidence is kept for (the command path and its rivals).
const CONNS_PER_DEVICE: usize = 4;

/// One device's evidence, per session, and which session carries its commands.
#[derive(Clone, Debug, Default)]
pub struct DeviceEvidence {
    /// The session carrying the device's commands, as the session registry last said.
    pub holder: Option<u64>,
    /// Orders command-path changes from the registry.
    pub epoch: u64,
    by_conn: Vec<Evidence>,
}

impl DeviceEvidence {
    fn conn_mut(&mut self, conn: u64) -> &mut Evidence {
        if let Some(i) = self.by_conn.iter().position(|e| e.conn == conn) {
            return &mut self.by_conn[i];
        }
        if self.by_conn.len() >= CONNS_PER_DEVICE {
            // Drop the oldest session that is not the command path.
            let holder = self.holder;
            if let Some(i) = self.by_conn.iter().position(|e| Some(e.conn) != holder) {
                self.by_conn.remove(i);
            }
        }
        self.by_conn.push(Evidence::for_conn(conn));
        let last = self.by_conn.len() - 1;
        &mut self.by_conn[last]
    }

    /// The session `conn` got the command path (registry epoch `epoch`); an older change
    /// arriving late is ignored.
    pub fn set_holder(&mut self, conn: u64, epoch: u64) {
        if epoch >= self.epoch {
            self.epoch = epoch;
            self.holder = Some(conn);
        }
    }

    /// The session `conn` closed.
    pub fn closed(&mut self, conn: u64) {
        self.by_conn.retain(|e| e.conn != conn);
        if self.holder == Some(conn) {
            self.holder = None;
        }
    }

    /// Fixes that reached the gateway at `received` from `origin` (`None`: no session, e.g.
    /// UDP), in arrival order. Fixes from anywhere but the command path never make the car
    /// look safe; a moving one from anywhere restarts the command path's run.
    pub fn observe(
        &mut self,
        origin: Option<u64>,
        fixes: impl IntoIterator<Item = FixSnapshot>,
        received: DateTime<Utc>,
        rules: &SafetyRules,
    ) {
        let holder = self.holder;
        let mut contradicted = false;
        match origin {
            Some(conn) => {
                let e = self.conn_mut(conn);
                for f in fixes {
                    let moving = f.moving(rules);
                    e.observe(f, received, rules);
                    contradicted |= moving && Some(conn) != holder;
                }
            }
            None => contradicted = fixes.into_iter().any(|f| f.moving(rules)),
        }
        if contradicted {
            if let Some(e) = self.holder_evidence_mut() {
                e.contradict();
            }
        }
    }

    fn holder_evidence_mut(&mut self) -> Option<&mut Evidence> {
        let h = self.holder?;
        self.by_conn.iter_mut().find(|e| e.conn == h)
    }

    /// The command path's evidence, if it has shown any.
    pub fn holder_evidence(&self) -> Option<&Evidence> {
        let h = self.holder?;
        self.by_conn.iter().find(|e| e.conn == h)
    }

    /// Safe to block on the command path's own evidence; with the connection to send on.
    pub fn safe_conn(&self, rules: &SafetyRules) -> Option<u64> {
        self.holder_evidence()
            .filter(|e| e.is_safe(rules))
            .map(|e| e.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 8, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn fix(s: i64, speed: f64, ignition: Option<bool>) -> FixSnapshot {
        FixSnapshot {
            time: t(s),
            lat: 55.75,
            lon: 37.61,
            speed_kmh: speed,
            ignition,
            outputs: None,
        }
    }

    /// Feed fixes that arrive one second after their fix time.
    fn feed(e: &mut Evidence, fixes: &[FixSnapshot]) -> Vec<Verdict> {
        let r = SafetyRules::default();
        fixes
            .iter()
            .map(|f| e.observe(f.clone(), f.time + Duration::seconds(1), &r))
            .collect()
    }

    #[test]
    fn three_stopped_fixes_spanning_safe_for_make_a_car_safe() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        feed(&mut e, &[fix(0, 55.0, Some(true)), fix(5, 2.0, Some(true))]);
        assert!(!e.is_safe(&r));
        feed(&mut e, &[fix(10, 0.0, Some(true))]);
        assert!(!e.is_safe(&r), "two stopped fixes are not enough");
        feed(&mut e, &[fix(15, 0.0, Some(true))]);
        assert!(e.is_safe(&r), "three stopped fixes over 10 s");
    }

    #[test]
    fn a_single_moving_fix_resets_the_run() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        feed(
            &mut e,
            &[fix(0, 0.0, None), fix(5, 0.0, None), fix(10, 0.0, None)],
        );
        assert!(e.is_safe(&r));
        feed(&mut e, &[fix(12, 40.0, None)]);
        assert!(!e.is_safe(&r));
        feed(
            &mut e,
            &[fix(14, 0.0, None), fix(16, 0.0, None), fix(18, 0.0, None)],
        );
        assert!(!e.is_safe(&r), "the new run spans only 4 s");
        feed(&mut e, &[fix(25, 0.0, None)]);
        assert!(e.is_safe(&r));
    }

    #[test]
    fn ignition_off_needs_the_fix_count_but_not_the_span() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        feed(
            &mut e,
            &[fix(0, 0.0, Some(false)), fix(1, 0.0, Some(false))],
        );
        assert!(
            !e.is_safe(&r),
            "one forged or early ignition-off fix is not enough"
        );
        feed(&mut e, &[fix(2, 0.0, Some(false))]);
        assert!(e.is_safe(&r));
    }

    #[test]
    fn ignition_off_while_moving_is_moving() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        let v = feed(
            &mut e,
            &[
                fix(0, 30.0, Some(false)),
                fix(1, 30.0, Some(false)),
                fix(2, 30.0, Some(false)),
            ],
        );
        assert_eq!(v, vec![Verdict::Moving; 3]);
        assert!(!e.is_safe(&r), "a towed car or a wrong ignition wire");
    }

    #[test]
    fn a_future_dated_fix_is_no_evidence_and_breaks_the_run() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        feed(&mut e, &[fix(0, 0.0, None), fix(5, 0.0, None)]);
        // Dated four minutes ahead of its arrival.
        let forged = fix(245, 0.0, Some(false));
        assert_eq!(e.observe(forged, t(6), &r), Verdict::Future);
        assert!(!e.is_safe(&r));
        assert_eq!(
            e.last.as_ref().map(|f| f.time),
            Some(t(5)),
            "not recorded as the car's fix"
        );
        // The honest stream goes on (its fixes are later than the last plausible one).
        feed(&mut e, &[fix(10, 0.0, None), fix(15, 0.0, None)]);
        assert!(!e.is_safe(&r), "the run restarted at 10 s");
        feed(&mut e, &[fix(20, 0.0, None)]);
        assert!(e.is_safe(&r));
    }

    #[test]
    fn history_uploaded_late_and_times_jumping_back_are_no_evidence() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        // A buffered upload: parked an hour ago.
        for s in [0, 10, 20] {
            assert_eq!(
                e.observe(fix(s, 0.0, Some(false)), t(3600), &r),
                Verdict::Stale
            );
        }
        assert!(!e.is_safe(&r));
        feed(&mut e, &[fix(3590, 0.0, None), fix(3595, 0.0, None)]);
        let v = feed(&mut e, &[fix(3593, 0.0, None)]);
        assert_eq!(v, vec![Verdict::OutOfOrder]);
        feed(&mut e, &[fix(3600, 0.0, None)]);
        assert!(!e.is_safe(&r), "the run restarted after the jump back");
    }

    #[test]
    fn a_not_a_number_speed_is_not_a_stop() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        let v = feed(&mut e, &[fix(0, f64::NAN, Some(false))]);
        assert_eq!(v, vec![Verdict::Moving]);
        assert!(!e.is_safe(&r));
    }

    #[test]
    fn only_the_command_path_gives_evidence_and_anyone_can_only_delay_a_block() {
        let r = SafetyRules::default();
        let mut d = DeviceEvidence::default();
        d.set_holder(7, 1);
        let stopped = |s| [fix(s, 0.0, Some(false))];
        // An impostor's connection and UDP datagrams: parked, ignition off.
        for s in [0, 5, 10, 15] {
            d.observe(Some(9), stopped(s), t(s) + Duration::seconds(1), &r);
            d.observe(None, stopped(s), t(s) + Duration::seconds(1), &r);
        }
        assert_eq!(d.safe_conn(&r), None, "no evidence from elsewhere");
        // The real car stops on its own connection.
        for s in [20, 25, 30] {
            d.observe(Some(7), stopped(s), t(s) + Duration::seconds(1), &r);
        }
        assert_eq!(d.safe_conn(&r), Some(7));
        // A moving fix from elsewhere restarts the run (delay, never a block).
        d.observe(None, [fix(31, 60.0, None)], t(32), &r);
        assert_eq!(d.safe_conn(&r), None);
        // A late change of the command path is ignored; a newer one starts from that
        // session's own evidence.
        d.set_holder(9, 0);
        assert_eq!(d.holder, Some(7));
        d.set_holder(9, 2);
        assert_eq!(
            d.safe_conn(&r),
            Some(9),
            "its own run, and a block judged on it goes only down that session"
        );
        d.closed(9);
        assert_eq!(d.holder, None);
        assert_eq!(d.safe_conn(&r), None);
    }

    #[test]
    fn a_contradiction_from_elsewhere_restarts_the_run() {
        let r = SafetyRules::default();
        let mut e = Evidence::for_conn(1);
        feed(
            &mut e,
            &[fix(0, 0.0, None), fix(5, 0.0, None), fix(10, 0.0, None)],
        );
        assert!(e.is_safe(&r));
        e.contradict();
        assert!(!e.is_safe(&r));
    }
}
