//! Re-anchoring the jump filter, as a pure machine: fixes rejected as jumps that agree with
//! one another (each plausible from the one before) and span at least [`REANCHOR_SPAN_S`]
//! prove the anchor wrong, not them: the last accepted fix was itself the outlier (a bad first
//! fix after power-up, a reflection taken after a long gap). Without this a device would have
//! every true fix rejected for as long as it stays out of "reach" of that one bad fix — its
//! track frozen, its zone exits missed. A short burst of agreeing jumps (a reflection lasting
//! seconds) stays rejected.

use super::filter::LastFix;

/// Agreeing jump-rejected fixes needed to re-anchor.
pub const REANCHOR_FIXES: u32 = 3;
/// …spanning at least this many seconds of fix time.
pub const REANCHOR_SPAN_S: i64 = 30;

/// Consecutive jump-rejected fixes that agree with one another.
#[derive(Clone, Copy, Debug)]
struct JumpChain {
    first: LastFix,
    latest: LastFix,
    count: u32,
}

/// What to do with a fix the jump filter rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpVerdict {
    /// Drop it: the anchor stands (so far).
    Reject,
    /// Accept it as the new anchor: `fixes` agreeing jumps proved the old one wrong.
    Reanchor { fixes: u32 },
}

/// One device's chain of agreeing jumps since its last accepted fix.
#[derive(Debug, Default)]
pub struct Reanchor {
    chain: Option<JumpChain>,
}

impl Reanchor {
    /// A fix passed the filters: the anchor holds, the chain is forgotten.
    pub fn accepted(&mut self) {
        self.chain = None;
    }

    /// A fix was rejected as a jump. `plausible_from(latest)` says whether it could follow the
    /// chain's latest fix (the same filters, with that fix as the anchor); it extends the chain
    /// only if it is also newer, else it starts a new one.
    pub fn jump(
        &mut self,
        fix: LastFix,
        plausible_from: impl FnOnce(&LastFix) -> bool,
    ) -> JumpVerdict {
        let agrees = self
            .chain
            .as_ref()
            .is_some_and(|c| fix.time > c.latest.time && plausible_from(&c.latest));
        let c = match self.chain.as_mut() {
            Some(c) if agrees => {
                c.count += 1;
                c.latest = fix;
                *c
            }
            _ => *self.chain.insert(JumpChain {
                first: fix,
                latest: fix,
                count: 1,
            }),
        };
        if c.count >= REANCHOR_FIXES
            && (c.latest.time - c.first.time).num_seconds() >= REANCHOR_SPAN_S
        {
            self.chain = None;
            return JumpVerdict::Reanchor { fixes: c.count };
        }
        JumpVerdict::Reject
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(s: i64, lat: f64) -> LastFix {
        LastFix {
            time: DateTime::<Utc>::from_timestamp(1_772_000_000 + s, 0).unwrap(),
            lat,
            lon: 37.6,
        }
    }

    /// Plausible when within 0.01° (about a kilometre) of the chain's latest fix.
    fn near(fix: LastFix) -> impl FnOnce(&LastFix) -> bool {
        move |l: &LastFix| (l.lat - fix.lat).abs() < 0.01
    }

    fn feed(r: &mut Reanchor, fix: LastFix) -> JumpVerdict {
        r.jump(fix, near(fix))
    }

    #[test]
    fn three_agreeing_jumps_over_thirty_seconds_re_anchor_on_the_third() {
        let mut r = Reanchor::default();
        assert_eq!(feed(&mut r, at(0, 55.001)), JumpVerdict::Reject);
        assert_eq!(feed(&mut r, at(15, 55.002)), JumpVerdict::Reject);
        assert_eq!(
            feed(&mut r, at(30, 55.003)),
            JumpVerdict::Reanchor { fixes: 3 }
        );
        // The chain starts over after a re-anchoring.
        assert_eq!(feed(&mut r, at(40, 55.004)), JumpVerdict::Reject);
    }

    #[test]
    fn a_burst_shorter_than_thirty_seconds_stays_rejected_until_it_lasts() {
        let mut r = Reanchor::default();
        for s in [0, 2, 4, 6] {
            assert_eq!(feed(&mut r, at(s, 55.3)), JumpVerdict::Reject, "at {s} s");
        }
        assert_eq!(
            feed(&mut r, at(30, 55.3)),
            JumpVerdict::Reanchor { fixes: 5 }
        );
    }

    #[test]
    fn a_jump_that_disagrees_or_is_older_starts_a_new_chain() {
        let mut r = Reanchor::default();
        feed(&mut r, at(0, 55.001));
        feed(&mut r, at(15, 55.002));
        // 30 km away from the chain: a chain of its own.
        assert_eq!(feed(&mut r, at(30, 55.3)), JumpVerdict::Reject);
        assert_eq!(feed(&mut r, at(45, 55.301)), JumpVerdict::Reject);
        // Older than the chain's latest, though near it: starts over too.
        assert_eq!(feed(&mut r, at(40, 55.302)), JumpVerdict::Reject);
        assert_eq!(feed(&mut r, at(55, 55.303)), JumpVerdict::Reject);
        assert_eq!(
            feed(&mut r, at(70, 55.304)),
            JumpVerdict::Reanchor { fixes: 3 }
        );
    }

    #[test]
    fn an_accepted_fix_forgets_the_chain() {
        let mut r = Reanchor::default();
        feed(&mut r, at(0, 55.001));
        feed(&mut r, at(15, 55.002));
        r.accepted();
        assert_eq!(feed(&mut r, at(30, 55.003)), JumpVerdict::Reject);
        assert_eq!(feed(&mut r, at(45, 55.004)), JumpVerdict::Reject);
        assert_eq!(
            feed(&mut r, at(60, 55.005)),
            JumpVerdict::Reanchor { fixes: 3 }
        );
    }
}
