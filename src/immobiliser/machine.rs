//! The per-vehicle reason set and safe-block state machine. Pure: reasons, fixes and command
//! outcomes in; state transitions and the command to issue out. Time is always passed in
//! (fix time for safety, the caller's clock for `since`).
//!
//! `running → block_pending → blocking → blocked → unblocking → running`. A block waits in
//! `block_pending` until the car is safe (judged by [`super::safety::Evidence`] on the
//! connection the command will go to) unless forced; an unblock goes out at once; lifting one
//! reason while another stands changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{BlockReason, ImmobError, ImmobState, Intent};

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
        safe: bool,
    ) -> Result<(bool, Step), ImmobError> {
        if force && !allow_force {
            return Err(ImmobError::ForceNotAllowed);
        }
        let now = entry.since;
        let added = !self.reasons.contains_key(&reason);
        if added {
            self.reasons.insert(reason, entry);
        }
        Ok((added, self.evaluate(safe, force, now)))
    }

    /// Lift one reason; returns whether it stood.
    pub fn lift_reason(
        &mut self,
        reason: &BlockReason,
        safe: bool,
        now: DateTime<Utc>,
    ) -> (bool, Step) {
        let lifted = self.reasons.remove(reason).is_some();
        (lifted, self.evaluate(safe, false, now))
    }

    /// Lift every reason; returns the ones that stood.
    pub fn lift_all(&mut self, safe: bool, now: DateTime<Utc>) -> (Vec<BlockReason>, Step) {
        let lifted: Vec<_> = std::mem::take(&mut self.reasons).into_keys().collect();
        (lifted, self.evaluate(safe, false, now))
    }

    /// New evidence arrived: `safe` is whether the car may be blocked now.
    pub fn on_fix(&mut self, safe: bool, now: DateTime<Utc>) -> Step {
        if self.state == ImmobState::BlockPending {
            self.evaluate(safe, false, now)
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

    fn evaluate(&mut self, safe: bool, force: bool, now: DateTime<Utc>) -> Step {
        let mut step = Step::default();
        if !self.reasons.is_empty() {
            match self.state {
                ImmobState::Running | ImmobState::Unblocking | ImmobState::BlockPending => {
                    if force || safe {
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

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn entry(s: i64) -> ReasonEntry {
        ReasonEntry {
            since: t(s),
            actor: "test".into(),
            comment: None,
        }
    }

    const DRIVING: bool = false;
    const SAFE: bool = true;

    #[test]
    fn block_waits_while_driving_and_goes_out_once_safe() {
        let mut m = Machine::new(t(0));
        let (added, step) = m
            .add_reason(
                BlockReason::outside_service_area(),
                entry(0),
                false,
                false,
                DRIVING,
            )
            .unwrap();
        assert!(added);
        assert_eq!(m.state, ImmobState::BlockPending);
        assert_eq!(step.command, None, "never a command while driving");
        assert_eq!(m.on_fix(DRIVING, t(5)).command, None);
        let step = m.on_fix(SAFE, t(15));
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
        let mut m = Machine::new(t(0));
        let (_, step) = m
            .add_reason(BlockReason::manual(), entry(0), false, false, SAFE)
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
                DRIVING,
            )
            .unwrap();
        assert!(added);
        assert_eq!(step, Step::default());
        let (lifted, step) = m.lift_reason(&BlockReason::manual(), SAFE, t(3));
        assert!(lifted);
        assert_eq!(step, Step::default(), "another reason stands");
        assert_eq!(m.state, ImmobState::Blocked);
        let (_, step) = m.lift_reason(&BlockReason::outside_service_area(), SAFE, t(4));
        assert_eq!(step.command, Some(Intent::Unblock));
        assert_eq!(m.state, ImmobState::Unblocking);
        m.on_command(Intent::Unblock, true, t(5));
        assert_eq!(m.state, ImmobState::Running);
    }

    #[test]
    fn force_needs_allow_force_and_skips_the_wait() {
        let mut m = Machine::new(t(0));
        let e = m
            .add_reason(BlockReason::low_balance(), entry(0), true, false, DRIVING)
            .unwrap_err();
        assert_eq!(e, ImmobError::ForceNotAllowed);
        assert!(m.reasons.is_empty(), "a refused force changes nothing");
        let (_, step) = m
            .add_reason(BlockReason::low_balance(), entry(0), true, true, DRIVING)
            .unwrap();
        assert_eq!(step.command, Some(Intent::Block));
        assert!(step.forced);
        assert_eq!(m.state, ImmobState::Blocking);
    }

    #[test]
    fn lifting_while_pending_needs_no_command_and_unblock_during_blocking_is_immediate() {
        let mut m = Machine::new(t(0));
        m.add_reason(BlockReason::manual(), entry(0), false, false, DRIVING)
            .unwrap();
        let (_, step) = m.lift_reason(&BlockReason::manual(), DRIVING, t(1));
        assert_eq!(step.command, None);
        assert_eq!(m.state, ImmobState::Running);

        let mut m = Machine::new(t(0));
        m.add_reason(BlockReason::manual(), entry(0), true, true, DRIVING)
            .unwrap();
        assert_eq!(m.state, ImmobState::Blocking);
        let (lifted, step) = m.lift_all(DRIVING, t(1));
        assert_eq!(lifted, vec![BlockReason::manual()]);
        assert_eq!(step.command, Some(Intent::Unblock));
        assert_eq!(m.state, ImmobState::Unblocking);
    }

    #[test]
    fn failed_block_waits_again_and_a_withdrawn_block_holds() {
        let mut m = Machine::new(t(0));
        m.add_reason(BlockReason::inspection(), entry(0), false, false, SAFE)
            .unwrap();
        m.on_command(Intent::Block, false, t(1));
        assert_eq!(m.state, ImmobState::BlockPending);
        assert_eq!(m.on_fix(SAFE, t(2)).command, Some(Intent::Block));
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
