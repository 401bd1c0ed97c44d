//! Trackers whose clock runs a whole number of hours ahead: a time zone set on the device, so
//! local time goes out labelled UTC (Moscow: +3 h), or a daylight-saving hour. Their fixes
//! would all fail the "future" filter and the car would vanish, exits included. A packet whose
//! newest fix is ahead of the receive time by more than the future filter allows is taken to
//! come from such a clock: the offset is the fewest whole hours that bring it back (a live fix
//! 1 h ahead → 1 h; a buffered upload 15 min old from that clock, 45 min ahead → 1 h too). The
//! offset is kept for the device, and taken off its later fixes (older uploads included),
//! until a live packet shows the clock right again. More than 14 h ahead is no time zone: those
//! fixes are left to the future filter.

use chrono::{DateTime, Duration, Utc};

/// Largest offset taken for a time zone (UTC+14 is the furthest ahead).
const MAX_HOURS: i64 = 14;
/// How close to "now" a packet's newest fix must be to prove the clock right again.
const LIVE_S: i64 = 60;

/// One device's learnt clock offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSkew {
    hours: i64,
}

impl ClockSkew {
    /// Learn from a packet whose newest fix is `newest` (device clock), received at `now`;
    /// returns the offset to take off every fix of the packet. `tolerance_s` is how far a
    /// fix may run ahead of a whole hour (the future filter's limit).
    pub fn observe(
        &mut self,
        newest: DateTime<Utc>,
        now: DateTime<Utc>,
        tolerance_s: i64,
    ) -> Duration {
        let ahead = (newest - now).num_seconds();
        if ahead > tolerance_s {
            // The fewest whole hours that bring the newest fix within the tolerance.
            let hours = (ahead - tolerance_s + 3599).div_euclid(3600);
            if (1..=MAX_HOURS).contains(&hours) {
                if hours != self.hours {
                    tracing::info!(hours, "tracker clock runs whole hours ahead: corrected");
                }
                self.hours = hours;
            }
        } else if self.hours != 0 && ahead.abs() <= LIVE_S {
            tracing::info!("tracker clock right again: correction dropped");
            self.hours = 0;
        }
        Duration::hours(self.hours)
    }

    pub fn hours(&self) -> i64 {
        self.hours
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_clock_three_hours_ahead_is_corrected_for_live_and_buffered_fixes() {
        let mut c = ClockSkew::default();
        let live = now() + Duration::hours(3) + Duration::seconds(4);
        assert_eq!(c.observe(live, now(), 300), Duration::hours(3));
        // A buffered upload (newest fix 40 min old in real time) keeps the learnt offset.
        let buffered = now() + Duration::hours(3) - Duration::minutes(40);
        assert_eq!(c.observe(buffered, now(), 300), Duration::hours(3));
    }

    #[test]
    fn a_buffered_upload_from_a_clock_ahead_is_corrected_before_any_live_fix() {
        let mut c = ClockSkew::default();
        // 15 min old fixes from a clock an hour ahead: 45 min in the future.
        let buffered = now() + Duration::minutes(45);
        assert_eq!(c.observe(buffered, now(), 300), Duration::hours(1));
        // A live fix 1 h 4 s ahead: still 1 h, not 2.
        let live = now() + Duration::hours(1) + Duration::seconds(4);
        assert_eq!(c.observe(live, now(), 300), Duration::hours(1));
    }

    #[test]
    fn a_right_clock_and_a_broken_one_are_left_alone() {
        let mut c = ClockSkew::default();
        assert_eq!(c.observe(now(), now(), 300), Duration::zero());
        // Within the future filter's tolerance: a right clock.
        assert_eq!(
            c.observe(now() + Duration::seconds(200), now(), 300),
            Duration::zero()
        );
        // Days ahead: a broken clock, not a time zone.
        assert_eq!(
            c.observe(now() + Duration::days(3), now(), 300),
            Duration::zero()
        );
        // Behind is not corrected (old fixes are normal: buffered uploads).
        assert_eq!(
            c.observe(now() - Duration::hours(1), now(), 300),
            Duration::zero()
        );
    }

    #[test]
    fn a_clock_set_right_again_drops_the_correction() {
        let mut c = ClockSkew::default();
        c.observe(now() + Duration::hours(1), now(), 300);
        assert_eq!(c.hours(), 1);
        assert_eq!(
            c.observe(now() + Duration::seconds(5), now(), 300),
            Duration::zero()
        );
        assert_eq!(c.hours(), 0);
    }
}
