//! Trackers whose clock runs a whole number of hours ahead: a time zone set on the device, so
//! local time goes out labelled UTC (Moscow: +3 h), or a daylight-saving hour. Their fixes
//! would all fail the "future" filter and the car would vanish, exits included.
//!
//! A correction is made only where it is certain:
//! - a fix counts as evidence of an offset of N hours (1 ≤ N ≤ 14) only when it runs ahead of
//!   the receive time by N hours give or take the future filter's tolerance (a clock 6 minutes
//!   fast is a broken clock, not a time zone: it is left to the future filter, never moved an
//!   hour back);
//! - the offset is taken only once [`CONFIRM_FIXES`] fixes of the device agree on it (several
//!   fixes of one packet count); until then the fixes are left alone (and refused as future);
//! - the learnt offset is then taken off every later fix of the device (older, buffered uploads
//!   included) until a live packet shows the clock right again. A packet in the future that
//!   does not fit the learnt offset is not corrected either.

use chrono::{DateTime, Duration, Utc};

/// Largest offset taken for a time zone (UTC+14 is the furthest ahead).
const MAX_HOURS: i64 = 14;
/// How close to "now" a packet's newest fix must be to prove the clock right again.
const LIVE_S: i64 = 60;
/// Fixes that must agree on an offset before it is taken.
pub const CONFIRM_FIXES: u32 = 3;

/// One device's learnt clock offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSkew {
    hours: i64,
    /// An offset seen but not yet confirmed: (hours, agreeing fixes so far).
    candidate: Option<(i64, u32)>,
}

impl ClockSkew {
    /// Learn from a packet's fix times (device clock), received at `now`; returns the offset
    /// to take off every fix of the packet. `tolerance_s` is the future filter's limit.
    pub fn observe(
        &mut self,
        times: &[DateTime<Utc>],
        now: DateTime<Utc>,
        tolerance_s: i64,
    ) -> Duration {
        let Some(newest) = times.iter().max() else {
            return Duration::zero();
        };
        let ahead = (*newest - now).num_seconds();
        if ahead > tolerance_s {
            if self.hours != 0 && ahead <= self.hours * 3600 + tolerance_s {
                // Fits the learnt offset: a live packet, or a buffered one from that clock.
                return Duration::hours(self.hours);
            }
            let Some(hours) = whole_hours(ahead, tolerance_s) else {
                // Not a time zone: a broken clock, left to the future filter.
                self.candidate = None;
                return Duration::zero();
            };
            if hours == self.hours {
                return Duration::hours(hours);
            }
            let votes = times
                .iter()
                .filter(|t| whole_hours((**t - now).num_seconds(), tolerance_s) == Some(hours))
                .count() as u32;
            let agreeing = match self.candidate {
                Some((h, v)) if h == hours => v + votes,
                _ => votes,
            };
            if agreeing < CONFIRM_FIXES {
                self.candidate = Some((hours, agreeing));
                return Duration::zero();
            }
            tracing::info!(hours, "tracker clock runs whole hours ahead: corrected");
            self.hours = hours;
            self.candidate = None;
        } else if self.hours != 0 && ahead.abs() <= LIVE_S {
            tracing::info!("tracker clock right again: correction dropped");
            self.hours = 0;
            self.candidate = None;
        }
        Duration::hours(self.hours)
    }

    pub fn hours(&self) -> i64 {
        self.hours
    }
}

/// The whole hours a fix `ahead_s` seconds in the future is ahead by, when it is that many
/// hours give or take `tolerance_s`.
fn whole_hours(ahead_s: i64, tolerance_s: i64) -> Option<i64> {
    let n = (ahead_s + 1800).div_euclid(3600);
    ((1..=MAX_HOURS).contains(&n) && (ahead_s - n * 3600).abs() <= tolerance_s).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    /// A packet of `n` fixes 10 s apart, the newest at `newest`.
    fn packet(newest: DateTime<Utc>, n: i64) -> Vec<DateTime<Utc>> {
        (0..n)
            .rev()
            .map(|i| newest - Duration::seconds(10 * i))
            .collect()
    }

    #[test]
    fn a_clock_three_hours_ahead_is_corrected_once_three_fixes_agree() {
        let mut c = ClockSkew::default();
        let live = now() + Duration::hours(3) + Duration::seconds(4);
        assert_eq!(
            c.observe(&[live], now(), 300),
            Duration::zero(),
            "one fix: not yet"
        );
        assert_eq!(
            c.observe(&[live], now(), 300),
            Duration::zero(),
            "two fixes"
        );
        assert_eq!(
            c.observe(&[live], now(), 300),
            Duration::hours(3),
            "three agree"
        );
        // A buffered upload (newest fix 40 min old in real time) keeps the learnt offset.
        let buffered = now() + Duration::hours(3) - Duration::minutes(40);
        assert_eq!(c.observe(&[buffered], now(), 300), Duration::hours(3));
    }

    #[test]
    fn several_fixes_of_one_packet_confirm_at_once() {
        let mut c = ClockSkew::default();
        let newest = now() + Duration::hours(1) + Duration::seconds(2);
        assert_eq!(
            c.observe(&packet(newest, 5), now(), 300),
            Duration::hours(1)
        );
    }

    #[test]
    fn a_clock_minutes_fast_is_never_moved_an_hour_back() {
        let mut c = ClockSkew::default();
        for ahead in [360, 600, 1800, 2400] {
            let t = now() + Duration::seconds(ahead);
            for _ in 0..5 {
                assert_eq!(
                    c.observe(&packet(t, 3), now(), 300),
                    Duration::zero(),
                    "{ahead} s"
                );
            }
        }
        assert_eq!(c.hours(), 0);
    }

    #[test]
    fn disagreeing_offsets_are_not_taken() {
        let mut c = ClockSkew::default();
        let one = now() + Duration::hours(1);
        let two = now() + Duration::hours(2);
        c.observe(&[one], now(), 300);
        c.observe(&[one], now(), 300);
        assert_eq!(c.observe(&[two], now(), 300), Duration::zero());
        assert_eq!(c.observe(&[two], now(), 300), Duration::zero());
        assert_eq!(c.observe(&[two], now(), 300), Duration::hours(2));
    }

    #[test]
    fn a_right_clock_and_a_broken_one_are_left_alone() {
        let mut c = ClockSkew::default();
        assert_eq!(c.observe(&[now()], now(), 300), Duration::zero());
        assert_eq!(c.observe(&[], now(), 300), Duration::zero());
        // Within the future filter's tolerance: a right clock.
        assert_eq!(
            c.observe(&[now() + Duration::seconds(200)], now(), 300),
            Duration::zero()
        );
        // Days ahead: a broken clock, not a time zone.
        for _ in 0..5 {
            assert_eq!(
                c.observe(&[now() + Duration::days(3)], now(), 300),
                Duration::zero()
            );
        }
        // Behind is not corrected (old fixes are normal: buffered uploads).
        assert_eq!(
            c.observe(&[now() - Duration::hours(1)], now(), 300),
            Duration::zero()
        );
    }

    #[test]
    fn a_clock_set_right_again_drops_the_correction() {
        let mut c = ClockSkew::default();
        c.observe(&packet(now() + Duration::hours(1), 3), now(), 300);
        assert_eq!(c.hours(), 1);
        assert_eq!(
            c.observe(&[now() + Duration::seconds(5)], now(), 300),
            Duration::zero()
        );
        assert_eq!(c.hours(), 0);
    }

    #[test]
    fn a_future_packet_that_does_not_fit_the_learnt_offset_is_not_corrected() {
        let mut c = ClockSkew::default();
        c.observe(&packet(now() + Duration::hours(3), 3), now(), 300);
        assert_eq!(c.hours(), 3);
        // 3 h 20 min ahead: beyond the learnt offset and no whole hour: left to the future
        // filter, and the learnt offset stands.
        assert_eq!(
            c.observe(&[now() + Duration::minutes(200)], now(), 300),
            Duration::zero()
        );
        assert_eq!(c.hours(), 3);
    }
}
