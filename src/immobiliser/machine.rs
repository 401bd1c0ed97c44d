//! The per-vehicle reason set and safe-block state machine. Pure: reasons, fixes and command
//! outcomes in; state transitions and the command to issue out. Time is always passed in
//! (fix time for safety, the caller's clock for `since`).
//!
//! `running → block_pending → blocking → blocked → unblocking → running`. A block waits in
//! `block_pending` until the car is safe (speed ≤ `max_block_speed_kmh` for ≥ `safe_for` by
//! fix time, or ignition off) unless forced; an unblock goes out at once; lifting one reason
//! while another stands changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{BlockReason, ImmobError, ImmobState, Intent};

/// When a car counts as safe to block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SafetyRules {
    pub max_speed_kmh: f64,
    pub safe_for: Duration,
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

/// Tracks, per device and by fix time, since when the car has been slow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafetyTracker {
    pub last: Option<FixSnapshot>,
    /// Fix time of the first of the current run of slow fixes.
    pub slow_since: Option<DateTime<Utc>>,
}

impl SafetyTracker {
    /// Seed from the last stored fix (after a restart): a slow car counts as slow from then.
    pub fn seeded(last: Option<FixSnapshot>, rules: &SafetyRules) -> Self {
        let mut t = SafetyTracker::default();
        if let Some(f) = last {
            t.observe(f, rules);
        }
        t
    }

    /// Take one fix in. Fixes older than the last one seen (history uploaded late) do not
    /// describe the car now and are ignored.
    pub fn observe(&mut self, fix: FixSnapshot, rules: &SafetyRules) {
        if matches!(&self.last, Some(l) if fix.time < l.time) {
            return;
        }
        if fix.speed_kmh <= rules.max_speed_kmh {
            if self.slow_since.is_none() {
                self.slow_since = Some(fix.time);
            }
        } else {
            self.slow_since = None;
        }
        self.last = Some(fix);
    }

    /// Safe to cut the engine: ignition off, or slow for at least `safe_for` by fix time.
    pub fn is_safe(&self, rules: &SafetyRules) -> bool {
        let Some(last) = &self.last else {
            return false;
        };
        if last.ignition == Some(false) {
            return true;
        }
        match self.slow_since {
            Some(since) => {
                last.speed_kmh <= rules.max_speed_kmh && last.time - since >= rules.safe_for
            }
            None => false,
        }
    }
}

/// Who added a reason, when, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonEntry {
    pub since: DateTime<Utc>,
    pub actor: String,
    pub comment: Option<String>,
}

/// What one input did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// State transitions, in order (`from`, `to`).
    pub transitions: Vec<(ImmobState, ImmobState)>,
    /// A command to issue (it supersedes any queued one of the vehicle).
    pub command: Option<Intent>,
    /// The block was forced past the safety wait.
    pub forced: bool,
}

/// One vehicle's immobiliser.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub state: ImmobState,
    /// When `state` was entered.
    pub since: DateTime<Utc>,
    pub reasons: BTreeMap<BlockReason, ReasonEntry>,
}

impl Machine {
    pub fn new(now: DateTime<Utc>) -> Self {
        Machine {
            state: ImmobState::Running,
            since: now,
            reasons: BTreeMap::new(),
        }
    }

    fn go(&mut self, to: ImmobState, now: DateTime<Utc>, step: &mut Step) {
        if self.state != to {
            step.transitions.push((self.state, to));
            self.state = to;
            self.since = now;
        }
    }

    /// Add a reason (again: keeps the first entry). `force` skips the safety wait and is
    /// refused unless `allow_force`; nothing changes on refusal.
    pub fn add_reason(
        &mut self,
        reason: BlockReason,
        entry: ReasonEntry,
        force: bool,
        allow_force: bool,
        safety: &SafetyTracker,
        rules: &SafetyRules,
    ) -> Result<(bool, Step), ImmobError> {
        if force && !allow_force {
            return Err(ImmobError::ForceNotAllowed);
        }
        let now = entry.since;
        let added = !self.reasons.contains_key(&reason);
        if added {
            self.reasons.insert(reason, entry);
        }
        Ok((added, self.evaluate(safety, rules, force, now)))
    }

    /// Lift one reason; returns whether it stood.
    pub fn lift_reason(
        &mut self,
        reason: &BlockReason,
        safety: &SafetyTracker,
        rules: &SafetyRules,
        now: DateTime<Utc>,
    ) -> (bool, Step) {
        let lifted = self.reasons.remove(reason).is_some();
        (lifted, self.evaluate(safety, rules, false, now))
    }

    /// Lift every reason; returns the ones that stood.
    pub fn lift_all(
        &mut self,
        safety: &SafetyTracker,
        rules: &SafetyRules,
        now: DateTime<Utc>,
    ) -> (Vec<BlockReason>, Step) {
        let lifted: Vec<_> = std::mem::take(&mut self.reasons).into_keys().collect();
        (lifted, self.evaluate(safety, rules, false, now))
    }

    /// A new fix was observed in `safety`.
    pub fn on_fix(
        &mut self,
        safety: &SafetyTracker,
        rules: &SafetyRules,
        now: DateTime<Utc>,
    ) -> Step {
        if self.state == ImmobState::BlockPending {
            self.evaluate(safety, rules, false, now)
        } else {
            Step::default()
        }
    }

    /// The block command was withdrawn before it reached the device (the car drove off):
    /// wait for safe conditions again.
    pub fn hold(&mut self, now: DateTime<Utc>) -> Step {
        let mut step = Step::default();
        if self.state == ImmobState::Blocking && !self.reasons.is_empty() {
            self.go(ImmobState::BlockPending, now, &mut step);
        }
        step
    }

    /// The device did (`done`: answered or telemetry shows it) or finally failed a command.
    pub fn on_command(&mut self, intent: Intent, done: bool, now: DateTime<Utc>) -> Step {
        let mut step = Step::default();
        match (self.state, intent, done) {
            (ImmobState::Blocking, Intent::Block, true) => {
                self.go(ImmobState::Blocked, now, &mut step)
            }
            // Not blocked after all: wait for the next safe moment and try again.
            (ImmobState::Blocking, Intent::Block, false) => {
                self.go(ImmobState::BlockPending, now, &mut step)
            }
            (ImmobState::Unblocking, Intent::Unblock, true) => {
                self.go(ImmobState::Running, now, &mut step)
            }
            // A failed unblock stays visible as `unblocking`; an operator's unblock retries.
            _ => {}
        }
        step
    }

    /// Re-issue the unblock of a vehicle with no reason left (operator's `unblock` on a car
    /// whose unblock failed or that was blocked outside fleetgate).
    pub fn reissue_unblock(&mut self, now: DateTime<Utc>) -> Step {
        let mut step = Step::default();
        if self.reasons.is_empty() && self.state != ImmobState::BlockPending {
            self.go(ImmobState::Unblocking, now, &mut step);
            step.command = Some(Intent::Unblock);
        }
        step
    }

    fn evaluate(
        &mut self,
        safety: &SafetyTracker,
        rules: &SafetyRules,
        force: bool,
        now: DateTime<Utc>,
    ) -> Step {
        let mut step = Step::default();
        if !self.reasons.is_empty() {
            match self.state {
                ImmobState::Running | ImmobState::Unblocking | ImmobState::BlockPending => {
                    if force || safety.is_safe(rules) {
                        self.go(ImmobState::Blocking, now, &mut step);
                        step.command = Some(Intent::Block);
                        step.forced = force;
                    } else {
                        self.go(ImmobState::BlockPending, now, &mut step);
                    }
                }
                ImmobState::Blocking | ImmobState::Blocked => {}
            }
        } else {
            match self.state {
                ImmobState::BlockPending => self.go(ImmobState::Running, now, &mut step),
                ImmobState::Blocking | ImmobState::Blocked => {
                    self.go(ImmobState::Unblocking, now, &mut step);
                    step.command = Some(Intent::Unblock);
                }
                ImmobState::Running | ImmobState::Unblocking => {}
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rules() -> SafetyRules {
        SafetyRules {
            max_speed_kmh: 5.0,
            safe_for: Duration::seconds(10),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn fix(s: i64, speed: f64, ignition: Option<bool>) -> FixSnapshot {
        FixSnapshot {
            time: t(s),
            lat: 55.75,
            lon: 37.62,
            speed_kmh: speed,
            ignition,
            outputs: None,
        }
    }

    fn entry(s: i64) -> ReasonEntry {
        ReasonEntry {
            since: t(s),
            actor: "test".into(),
            comment: None,
        }
    }

    fn driving() -> SafetyTracker {
        let mut s = SafetyTracker::default();
        s.observe(fix(0, 60.0, Some(true)), &rules());
        s
    }

    #[test]
    fn safe_needs_slow_fixes_spanning_safe_for_by_fix_time() {
        let r = rules();
        let mut s = driving();
        assert!(!s.is_safe(&r));
        s.observe(fix(1, 0.0, Some(true)), &r);
        assert!(!s.is_safe(&r), "one slow fix is not enough");
        s.observe(fix(10, 3.0, Some(true)), &r);
        assert!(!s.is_safe(&r), "9 s of slow fixes");
        s.observe(fix(11, 0.0, Some(true)), &r);
        assert!(s.is_safe(&r), "10 s slow by fix time");
        s.observe(fix(12, 6.0, Some(true)), &r);
        assert!(!s.is_safe(&r), "speeding up resets");
        s.observe(fix(13, 0.0, Some(true)), &r);
        assert!(!s.is_safe(&r));
    }

    #[test]
    fn ignition_off_is_safe_at_once_and_late_history_is_ignored() {
        let r = rules();
        let mut s = driving();
        s.observe(fix(5, 0.0, Some(false)), &r);
        assert!(s.is_safe(&r));
        let mut s = driving();
        s.observe(fix(1, 0.0, None), &r);
        s.observe(fix(20, 0.0, None), &r);
        assert!(s.is_safe(&r));
        // A buffered record from earlier (fast) arrives late: it does not make the car unsafe.
        s.observe(fix(15, 80.0, Some(true)), &r);
        assert!(s.is_safe(&r));
    }

    #[test]
    fn block_waits_while_driving_and_goes_out_once_safe() {
        let r = rules();
        let mut m = Machine::new(t(0));
        let mut s = driving();
        let (added, step) = m
            .add_reason(
                BlockReason::outside_service_area(),
                entry(0),
                false,
                false,
                &s,
                &r,
            )
            .unwrap();
        assert!(added);
        assert_eq!(m.state, ImmobState::BlockPending);
        assert_eq!(step.command, None, "never a command while driving");
        s.observe(fix(5, 0.0, Some(true)), &r);
        assert_eq!(m.on_fix(&s, &r, t(5)).command, None);
        s.observe(fix(15, 0.0, Some(true)), &r);
        let step = m.on_fix(&s, &r, t(15));
        assert_eq!(step.command, Some(Intent::Block));
        assert_eq!(
            step.transitions,
            vec![(ImmobState::BlockPending, ImmobState::Blocking)]
        );
        assert_eq!(
            m.on_command(Intent::Block, true, t(16)).transitions.len(),
            1
        );
        assert_eq!(m.state, ImmobState::Blocked);
        assert_eq!(m.since, t(16));
    }

    #[test]
    fn lifting_one_of_two_reasons_changes_nothing_lifting_the_last_unblocks() {
        let r = rules();
        let mut s = SafetyTracker::default();
        s.observe(fix(0, 0.0, Some(false)), &r);
        let mut m = Machine::new(t(0));
        let (_, step) = m
            .add_reason(BlockReason::manual(), entry(0), false, false, &s, &r)
            .unwrap();
        assert_eq!(
            step.command,
            Some(Intent::Block),
            "ignition off: block at once"
        );
        m.on_command(Intent::Block, true, t(1));
        let (added, step) = m
            .add_reason(
                BlockReason::outside_service_area(),
                entry(2),
                false,
                false,
                &s,
                &r,
            )
            .unwrap();
        assert!(added);
        assert_eq!(step, Step::default());
        let (lifted, step) = m.lift_reason(&BlockReason::manual(), &s, &r, t(3));
        assert!(lifted);
        assert_eq!(step, Step::default(), "another reason stands");
        assert_eq!(m.state, ImmobState::Blocked);
        let (_, step) = m.lift_reason(&BlockReason::outside_service_area(), &s, &r, t(4));
        assert_eq!(step.command, Some(Intent::Unblock));
        assert_eq!(m.state, ImmobState::Unblocking);
        m.on_command(Intent::Unblock, true, t(5));
        assert_eq!(m.state, ImmobState::Running);
    }

    #[test]
    fn force_needs_allow_force_and_skips_the_wait() {
        let r = rules();
        let s = driving();
        let mut m = Machine::new(t(0));
        let e = m
            .add_reason(BlockReason::low_balance(), entry(0), true, false, &s, &r)
            .unwrap_err();
        assert_eq!(e, ImmobError::ForceNotAllowed);
        assert!(m.reasons.is_empty(), "a refused force changes nothing");
        let (_, step) = m
            .add_reason(BlockReason::low_balance(), entry(0), true, true, &s, &r)
            .unwrap();
        assert_eq!(step.command, Some(Intent::Block));
        assert!(step.forced);
        assert_eq!(m.state, ImmobState::Blocking);
    }

    #[test]
    fn lifting_while_pending_needs_no_command_and_unblock_during_blocking_is_immediate() {
        let r = rules();
        let s = driving();
        let mut m = Machine::new(t(0));
        m.add_reason(BlockReason::manual(), entry(0), false, false, &s, &r)
            .unwrap();
        let (_, step) = m.lift_reason(&BlockReason::manual(), &s, &r, t(1));
        assert_eq!(step.command, None);
        assert_eq!(m.state, ImmobState::Running);

        let mut m = Machine::new(t(0));
        m.add_reason(BlockReason::manual(), entry(0), true, true, &s, &r)
            .unwrap();
        assert_eq!(m.state, ImmobState::Blocking);
        let (lifted, step) = m.lift_all(&s, &r, t(1));
        assert_eq!(lifted, vec![BlockReason::manual()]);
        assert_eq!(step.command, Some(Intent::Unblock));
        assert_eq!(m.state, ImmobState::Unblocking);
    }

    #[test]
    fn failed_block_waits_again_and_a_withdrawn_block_holds() {
        let r = rules();
        let mut s = SafetyTracker::default();
        s.observe(fix(0, 0.0, Some(false)), &r);
        let mut m = Machine::new(t(0));
        m.add_reason(BlockReason::inspection(), entry(0), false, false, &s, &r)
            .unwrap();
        m.on_command(Intent::Block, false, t(1));
        assert_eq!(m.state, ImmobState::BlockPending);
        assert_eq!(m.on_fix(&s, &r, t(2)).command, Some(Intent::Block));
        m.hold(t(3));
        assert_eq!(m.state, ImmobState::BlockPending);
        // An ack for an old block after the vehicle moved on changes nothing.
        assert_eq!(m.on_command(Intent::Block, true, t(4)), Step::default());
    }

    #[test]
    fn reasons_are_validated() {
        assert!(BlockReason::parse("low_balance").is_ok());
        assert!(BlockReason::parse("crm_rule_7").is_ok());
        for bad in ["", "all", "Manual", "a b", "x;drop"] {
            assert!(BlockReason::parse(bad).is_err(), "{bad}");
        }
    }
}
