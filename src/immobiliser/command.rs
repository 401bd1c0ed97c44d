//! One immobiliser command's lifecycle. Pure: the actor feeds it events and the clock.
//!
//! `queued → sent → acknowledged (the device answered) → confirmed (telemetry shows the
//! output in the commanded state)`, or `failed` (refused, unsupported, out of attempts),
//! `expired` (TTL passed) or `superseded` (a newer intent replaced it before it was done; a
//! superseded command is never written to the device again).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::Intent;
use crate::model::{DeviceId, VehicleId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Queued,
    Sent,
    Acknowledged,
    Confirmed,
    Failed,
    Expired,
    Superseded,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Acknowledged => "acknowledged",
            CommandStatus::Confirmed => "confirmed",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
            CommandStatus::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<CommandStatus> {
        [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Acknowledged,
            CommandStatus::Confirmed,
            CommandStatus::Failed,
            CommandStatus::Expired,
            CommandStatus::Superseded,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// Still to be written or answered.
    pub fn is_pending(self) -> bool {
        matches!(self, CommandStatus::Queued | CommandStatus::Sent)
    }
}

/// Retries and lifetime of commands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub ack_timeout: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub ttl: Duration,
}

/// A command as stored and served by `GET /api/v1/commands/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Command {
    pub id: i64,
    pub vehicle_id: VehicleId,
    pub device_id: Option<DeviceId>,
    pub intent: Intent,
    /// The profile's text, when the vehicle's model has one; else the codec's default.
    pub text: Option<String>,
    /// The output (1-based) whose state confirms the command.
    pub output: u8,
    pub status: CommandStatus,
    pub forced: bool,
    /// The reasons standing when it was issued (comma-separated).
    pub reasons: String,
    pub actor: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// The device's answer.
    pub response: Option<String>,
    pub error: Option<String>,
}

/// What to create.
#[derive(Clone, Debug)]
pub struct NewCommand {
    pub vehicle_id: VehicleId,
    pub device_id: Option<DeviceId>,
    pub intent: Intent,
    pub text: Option<String>,
    pub output: u8,
    pub forced: bool,
    pub reasons: String,
    pub actor: String,
}

impl Command {
    pub fn new(id: i64, n: NewCommand, policy: &RetryPolicy, now: DateTime<Utc>) -> Command {
        Command {
            id,
            vehicle_id: n.vehicle_id,
            device_id: n.device_id,
            intent: n.intent,
            text: n.text,
            output: n.output,
            status: CommandStatus::Queued,
            forced: n.forced,
            reasons: n.reasons,
            actor: n.actor,
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
            sent_at: None,
            acknowledged_at: None,
            confirmed_at: None,
            finished_at: None,
            expires_at: now + policy.ttl,
            response: None,
            error: None,
        }
    }

    /// Queued and its (re)try time has come.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.status == CommandStatus::Queued && self.next_attempt_at <= now && now < self.expires_at
    }

    /// Written to the device.
    pub fn sent(&mut self, now: DateTime<Utc>) {
        if self.status == CommandStatus::Queued {
            self.attempts += 1;
            self.sent_at = Some(now);
            self.status = CommandStatus::Sent;
        }
    }

    fn finish(&mut self, status: CommandStatus, now: DateTime<Utc>, error: Option<String>) {
        self.status = status;
        self.finished_at = Some(now);
        if error.is_some() {
            self.error = error;
        }
    }

    /// The device answered. `success == Some(false)` (the device said it failed) fails it.
    /// Returns the new status when the answer changed it.
    pub fn answered(
        &mut self,
        text: &str,
        success: Option<bool>,
        now: DateTime<Utc>,
    ) -> Option<CommandStatus> {
        self.response = Some(text.to_string());
        if self.status != CommandStatus::Sent {
            return None;
        }
        if success == Some(false) {
            self.finish(
                CommandStatus::Failed,
                now,
                Some(format!("device refused: {text}")),
            );
        } else {
            self.status = CommandStatus::Acknowledged;
            self.acknowledged_at = Some(now);
        }
        Some(self.status)
    }

    /// Could not be written at all (the protocol has no encoding for it): no point retrying.
    pub fn unsendable(&mut self, error: String, now: DateTime<Utc>) {
        if self.status.is_pending() {
            self.finish(CommandStatus::Failed, now, Some(error));
        }
    }

    /// Telemetry at `fix_time` shows outputs `bits`: true when that confirms this command.
    pub fn confirms(&self, bits: u32, fix_time: DateTime<Utc>) -> bool {
        let sent = match (self.status, self.sent_at) {
            (CommandStatus::Sent | CommandStatus::Acknowledged, Some(at)) => at,
            _ => return false,
        };
        // A record taken before the command went out says nothing about it (with a second
        // of slack for device clocks that run ahead of ours).
        if fix_time + Duration::seconds(1) < sent {
            return false;
        }
        let on = bits & (1u32 << (self.output.clamp(1, 32) - 1)) != 0;
        on == (self.intent == Intent::Block)
    }

    pub fn confirm(&mut self, now: DateTime<Utc>) {
        if self.acknowledged_at.is_none() {
            self.acknowledged_at = Some(now);
        }
        self.confirmed_at = Some(now);
        self.finish(CommandStatus::Confirmed, now, None);
    }

    /// A newer intent replaced this one.
    pub fn supersede(&mut self, now: DateTime<Utc>) {
        if self.status.is_pending() {
            self.finish(CommandStatus::Superseded, now, None);
        }
    }

    /// The connection it was written on closed before an answer: write it again on the next
    /// connection (the attempt is counted when it is written).
    pub fn connection_lost(
        &mut self,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
    ) -> Option<CommandStatus> {
        if self.status != CommandStatus::Sent {
            return None;
        }
        if self.attempts >= policy.max_attempts {
            self.finish(
                CommandStatus::Failed,
                now,
                Some(format!("no answer after {} attempts", self.attempts)),
            );
        } else {
            self.status = CommandStatus::Queued;
            self.next_attempt_at = now;
        }
        Some(self.status)
    }

    /// Time passes: expire, or retry a sent command that got no answer (with backoff).
    /// Returns the new status when it changed.
    pub fn tick(&mut self, policy: &RetryPolicy, now: DateTime<Utc>) -> Option<CommandStatus> {
        if !self.status.is_pending() {
            return None;
        }
        if now >= self.expires_at {
            self.finish(
                CommandStatus::Expired,
                now,
                Some(format!("not done within {} s", policy.ttl.num_seconds())),
            );
            return Some(self.status);
        }
        let sent = self.sent_at?;
        if self.status != CommandStatus::Sent || now < sent + policy.ack_timeout {
            return None;
        }
        if self.attempts >= policy.max_attempts {
            self.finish(
                CommandStatus::Failed,
                now,
                Some(format!("no answer after {} attempts", self.attempts)),
            );
        } else {
            let shift = self.attempts.saturating_sub(1).min(16);
            let wait = policy
                .backoff
                .checked_mul(1 << shift)
                .unwrap_or(policy.max_backoff)
                .min(policy.max_backoff);
            self.status = CommandStatus::Queued;
            self.next_attempt_at = now + wait;
        }
        Some(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            ack_timeout: Duration::seconds(60),
            backoff: Duration::seconds(30),
            max_backoff: Duration::seconds(100),
            ttl: Duration::hours(24),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn cmd(intent: Intent) -> Command {
        Command::new(
            1,
            NewCommand {
                vehicle_id: VehicleId("car".into()),
                device_id: Some(DeviceId::new("dev")),
                intent,
                text: None,
                output: 1,
                forced: false,
                reasons: "manual".into(),
                actor: "op".into(),
            },
            &policy(),
            t(0),
        )
    }

    #[test]
    fn happy_path_queued_sent_acknowledged_confirmed() {
        let mut c = cmd(Intent::Block);
        assert!(c.is_due(t(0)));
        c.sent(t(1));
        assert_eq!(c.status, CommandStatus::Sent);
        assert!(
            !c.is_due(t(2)),
            "never written twice while awaiting an answer"
        );
        assert_eq!(
            c.answered("DOUT1:1 DOUT2:IGNORED", None, t(2)),
            Some(CommandStatus::Acknowledged)
        );
        assert!(
            !c.confirms(0b0, t(3)),
            "output off does not confirm a block"
        );
        assert!(
            !c.confirms(0b1, t(-10)),
            "a record from before the send says nothing"
        );
        assert!(c.confirms(0b1, t(3)));
        c.confirm(t(4));
        assert_eq!(c.status, CommandStatus::Confirmed);
        assert_eq!(c.finished_at, Some(t(4)));
    }

    #[test]
    fn unblock_is_confirmed_by_the_output_off_and_profiles_pick_the_output() {
        let mut c = cmd(Intent::Unblock);
        c.output = 2;
        c.sent(t(1));
        assert!(!c.confirms(0b10, t(2)));
        assert!(c.confirms(0b01, t(2)), "output 2 off");
    }

    #[test]
    fn retries_with_backoff_then_fails() {
        let p = policy();
        let mut c = cmd(Intent::Block);
        c.sent(t(0));
        assert_eq!(c.tick(&p, t(59)), None);
        assert_eq!(c.tick(&p, t(60)), Some(CommandStatus::Queued));
        assert_eq!(c.next_attempt_at, t(90), "first retry after the backoff");
        assert!(!c.is_due(t(89)));
        c.sent(t(90));
        assert_eq!(c.tick(&p, t(150)), Some(CommandStatus::Queued));
        assert_eq!(c.next_attempt_at, t(210), "doubled");
        c.sent(t(210));
        assert_eq!(c.attempts, 3);
        assert_eq!(c.tick(&p, t(270)), Some(CommandStatus::Failed));
        assert!(c.error.as_deref().unwrap().contains("3 attempts"));
    }

    #[test]
    fn expires_after_ttl_and_a_refusal_fails() {
        let p = policy();
        let mut c = cmd(Intent::Block);
        assert_eq!(c.tick(&p, t(24 * 3600)), Some(CommandStatus::Expired));
        assert!(!c.is_due(t(24 * 3600)));
        let mut c = cmd(Intent::Block);
        c.sent(t(1));
        assert_eq!(
            c.answered("ERROR", Some(false), t(2)),
            Some(CommandStatus::Failed)
        );
    }

    #[test]
    fn superseded_and_lost_connections() {
        let p = policy();
        let mut c = cmd(Intent::Block);
        c.supersede(t(1));
        assert_eq!(c.status, CommandStatus::Superseded);
        assert!(!c.is_due(t(2)), "a superseded command is never sent");
        c.sent(t(2));
        assert_eq!(c.status, CommandStatus::Superseded);

        let mut c = cmd(Intent::Unblock);
        c.sent(t(1));
        assert_eq!(c.connection_lost(&p, t(2)), Some(CommandStatus::Queued));
        assert!(c.is_due(t(2)), "resent on the next connection");
    }
}
