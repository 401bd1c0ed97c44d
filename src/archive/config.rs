//! `[retention]`: how long each kind of row is kept, and when the archive actor packs a closed
//! day. An absent `*_days` key keeps those rows forever (today's behaviour); daily summaries
//! are always kept.
//!
//! ```toml
//! [retention]
//! positions_days = 180       # absent: keep every position forever
//! events_days = 365          # zone events
//! commands_days = 365        # immobiliser commands
//! audit_days = 730           # never shorter than positions_days; absent: as positions_days
//! compact_grace_s = 3600     # a UTC day is packed this long after it closed
//! interval_s = 600           # one archive pass (partitions, compaction, expiry) this often
//! batch = 1000               # rows per expiry DELETE (one short transaction each)
//! summary_gap_s = 300        # a gap between fixes longer than this counts as neither moving nor engine time
//! ```

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

/// Longest retention accepted for any key: 100 years, far beyond any fleet's need and well
/// within `Day`'s range.
pub const MAX_DAYS: u32 = 36_500;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of positions kept, today included (absent: forever).
    pub positions_days: Option<u32>,
    /// Days of zone events kept (absent: forever).
    pub events_days: Option<u32>,
    /// Days of immobiliser commands kept (absent: forever).
    pub commands_days: Option<u32>,
    /// Days of audit entries kept; never fewer than `positions_days` (absent: as long as
    /// positions are kept).
    pub audit_days: Option<u32>,
    /// Seconds after a UTC day ends before its device-days are packed: late fixes of a closed
    /// day (a tracker's buffered upload) mostly arrive within minutes.
    pub compact_grace_s: u64,
    /// Seconds between archive passes.
    pub interval_s: u64,
    /// Rows per expiry `DELETE` of events, commands and audit entries.
    pub batch: u32,
    /// A gap between two fixes longer than this (seconds) counts as neither moving nor engine
    /// time in the daily summary: the car was not heard from.
    pub summary_gap_s: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            positions_days: None,
            events_days: None,
            commands_days: None,
            audit_days: None,
            compact_grace_s: 3600,
            interval_s: 600,
            batch: 1000,
            summary_gap_s: 300,
        }
    }
}

impl RetentionConfig {
    /// Days of audit kept: `audit_days`, or as long as positions when it is absent.
    pub fn effective_audit_days(&self) -> Option<u32> {
        self.audit_days.or(self.positions_days)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, days) in [
            ("positions_days", self.positions_days),
            ("events_days", self.events_days),
            ("commands_days", self.commands_days),
            ("audit_days", self.audit_days),
        ] {
            if let Some(d) = days {
                if d == 0 || d > MAX_DAYS {
                    return Err(invalid(
                        format!("retention.{key}"),
                        format!(
                            "must be from 1 to {MAX_DAYS} days (leave it out to keep forever), not {d}"
                        ),
                    ));
                }
            }
        }
        if let Some(audit) = self.audit_days {
            match self.positions_days {
                None => {
                    return Err(invalid(
                        "retention.audit_days",
                        format!(
                            "audit entries must be kept at least as long as positions; positions are kept forever \
                             (retention.positions_days is not set) but audit_days = {audit}: \
                             remove audit_days or set positions_days to at most {audit}"
                        ),
                    ))
                }
                Some(pos) if audit < pos => {
                    return Err(invalid(
                        "retention.audit_days",
                        format!(
                            "audit entries must be kept at least as long as positions: \
                             audit_days = {audit} is shorter than positions_days = {pos}"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.compact_grace_s > 7 * 86_400 {
            return Err(invalid(
                "retention.compact_grace_s",
                format!(
                    "must be at most 604800 s (a week) after the day closes, not {}",
                    self.compact_grace_s
                ),
            ));
        }
        if !(10..=86_400).contains(&self.interval_s) {
            return Err(invalid(
                "retention.interval_s",
                format!("must be from 10 to 86400 s, not {}", self.interval_s),
            ));
        }
        if !(1..=100_000).contains(&self.batch) {
            return Err(invalid(
                "retention.batch",
                format!(
                    "must be from 1 to 100000 rows per DELETE, not {}",
                    self.batch
                ),
            ));
        }
        if !(10..=86_400).contains(&self.summary_gap_s) {
            return Err(invalid(
                "retention.summary_gap_s",
                format!("must be from 10 to 86400 s, not {}", self.summary_gap_s),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut RetentionConfig)) -> Result<(), String> {
        let mut c = RetentionConfig::default();
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_keep_everything_and_validate() {
        let c = RetentionConfig::default();
        assert_eq!(c.positions_days, None);
        assert_eq!(c.effective_audit_days(), None);
        c.validate().unwrap();
    }

    #[test]
    fn audit_shorter_than_positions_is_refused_naming_both() {
        let e = with(|c| {
            c.positions_days = Some(90);
            c.audit_days = Some(30);
        })
        .unwrap_err();
        assert!(e.starts_with("retention.audit_days: "), "{e}");
        assert!(e.contains("positions_days = 90"), "{e}");
        let e = with(|c| c.audit_days = Some(30)).unwrap_err();
        assert!(e.contains("positions are kept forever"), "{e}");
        with(|c| {
            c.positions_days = Some(90);
            c.audit_days = Some(90);
        })
        .unwrap();
    }

    #[test]
    fn audit_follows_positions_when_absent() {
        let c = RetentionConfig {
            positions_days: Some(60),
            ..RetentionConfig::default()
        };
        assert_eq!(c.effective_audit_days(), Some(60));
    }

    #[test]
    fn zero_days_and_bad_knobs_name_their_key() {
        for (key, e) in [
            (
                "retention.positions_days",
                with(|c| c.positions_days = Some(0)),
            ),
            (
                "retention.events_days",
                with(|c| c.events_days = Some(40_000)),
            ),
            (
                "retention.commands_days",
                with(|c| c.commands_days = Some(0)),
            ),
            ("retention.interval_s", with(|c| c.interval_s = 0)),
            ("retention.batch", with(|c| c.batch = 0)),
            (
                "retention.compact_grace_s",
                with(|c| c.compact_grace_s = 8 * 86_400),
            ),
            ("retention.summary_gap_s", with(|c| c.summary_gap_s = 1)),
        ] {
            let e = e.unwrap_err();
            assert!(e.starts_with(&format!("{key}: ")), "{e}");
        }
    }
}
