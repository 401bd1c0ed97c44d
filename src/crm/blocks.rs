//! What the deal shows of a car's block. The CRM's "blocked" field follows the car, not the
//! decision: it turns true when the car confirms the block (state `blocked`, whatever the
//! reasons: zones, operators, the CRM rules), is re-written when the reasons standing on a
//! blocked car change, and turns false only when the last reason is lifted and the car
//! confirms (state back to `running`). A car on its way (`block_pending`, `blocking`,
//! `unblocking`) changes nothing: the deal keeps showing what the car last confirmed.

use serde::{Deserialize, Serialize};

use super::BlockView;

/// What the deal was last told (stored per vehicle, so a restart neither repeats nor misses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    pub blocked: bool,
    /// Sorted reason names, while blocked.
    pub reasons: Vec<String>,
}

/// What the deal must show now, when it differs from `shown`. `view` is the immobiliser's
/// snapshot of the car (`None`: running, no reason).
pub fn next(shown: &Shown, view: Option<&BlockView>) -> Option<Shown> {
    let target = match view {
        None => Shown::default(),
        Some(v) if v.confirmed => {
            let mut reasons = v.reasons.clone();
            reasons.sort();
            reasons.dedup();
            Shown {
                blocked: true,
                reasons,
            }
        }
        Some(_) => return None,
    };
    (target != *shown).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(reasons: &[&str], pending: bool, confirmed: bool) -> BlockView {
        BlockView {
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            pending,
            confirmed,
            comments: Default::default(),
        }
    }

    fn blocked(reasons: &[&str]) -> Shown {
        Shown {
            blocked: true,
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_decided_block_shows_nothing_until_the_car_confirms_it() {
        let none = Shown::default();
        assert_eq!(next(&none, Some(&view(&["manual"], true, false))), None);
        assert_eq!(
            next(&none, Some(&view(&["manual"], false, true))),
            Some(blocked(&["manual"]))
        );
    }

    #[test]
    fn reasons_changing_on_a_blocked_car_are_shown_and_repeats_are_not() {
        let s = blocked(&["low_balance"]);
        let v = view(&["outside_service_area", "low_balance"], false, true);
        assert_eq!(
            next(&s, Some(&v)),
            Some(blocked(&["low_balance", "outside_service_area"]))
        );
        let s = blocked(&["low_balance", "outside_service_area"]);
        assert_eq!(next(&s, Some(&v)), None);
    }

    #[test]
    fn the_unblock_is_shown_only_once_the_car_runs_again() {
        let s = blocked(&["manual"]);
        // The last reason is lifted: the unblock command is on its way.
        assert_eq!(next(&s, Some(&view(&[], false, false))), None);
        assert_eq!(next(&s, None), Some(Shown::default()));
        assert_eq!(next(&Shown::default(), None), None);
    }
}
