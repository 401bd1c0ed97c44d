//! A car's life as the CRM rules see it, and what each step means for its deal:
//!
//! ```text
//!  available/in_repair ──issue (status issued, deal D, driver P)──► issued
//!  issued ──3 min / 1 km of movement──► on line (deal D → on_line)
//!  on line ──button or API──► wants to return (deal D → wants_to_return)
//!  any of these ──status available/in_repair, or deal D' ≠ D──► handed back:
//!      the shift ends, pending events about D are dropped, nothing more is sent to D
//!  handed back ──issue again (deal D')──► issued: D' starts clean
//! ```
//!
//! Only an issued car has a current deal: events about a car that is not issued carry no
//! deal (amoCRM/Bitrix24 skip them; the webhook sends `deal_id: null`), so a returned car
//! driven to the depot can never move its old deal back to On line.

use crate::pipeline::store::Vehicle;

/// The status of a car out with a driver.
pub const ISSUED: &str = "issued";

/// The deal the car works for now: its `crm_deal_id` while issued, else none.
pub fn current_deal(v: &Vehicle) -> Option<&str> {
    (v.status == ISSUED)
        .then_some(v.crm_deal_id.as_deref())
        .flatten()
}

/// What changed between two readings of a vehicle row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    /// The car left its driver or its deal: a new shift starts with the next issue.
    pub end_shift: bool,
    /// Drop the pending events about any deal but this one (`Some(None)`: any deal).
    pub drop_pending_except: Option<Option<String>>,
    /// Another driver (or none): reasons that follow the driver (`low_balance`) change cars.
    pub driver_changed: bool,
}

/// Compare the vehicle as the rules knew it with the row read now.
pub fn transition(old: &Vehicle, new: &Vehicle) -> Transition {
    let left_driver = old.status == ISSUED && new.status != ISSUED;
    let old_deal = current_deal(old);
    let deal_changed = old_deal.is_some() && old_deal != current_deal(new);
    let ends = left_driver || deal_changed;
    Transition {
        end_shift: ends,
        drop_pending_except: ends.then(|| current_deal(new).map(str::to_string)),
        driver_changed: old.driver_id != new.driver_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VehicleId;
    use chrono::Utc;

    fn car(status: &str, deal: Option<&str>, driver: Option<&str>) -> Vehicle {
        Vehicle {
            id: VehicleId("car-1".into()),
            device_id: None,
            protocol: None,
            plate: None,
            driver_id: driver.map(str::to_string),
            crm_deal_id: deal.map(str::to_string),
            crm_company_id: None,
            status: status.into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_car_that_is_not_issued_has_no_current_deal() {
        assert_eq!(current_deal(&car("issued", Some("7"), None)), Some("7"));
        assert_eq!(current_deal(&car("available", Some("7"), None)), None);
        assert_eq!(current_deal(&car("in_repair", Some("7"), None)), None);
    }

    #[test]
    fn handing_back_ends_the_shift_and_drops_everything_pending() {
        let t = transition(
            &car("issued", Some("7"), Some("a")),
            &car("available", Some("7"), Some("a")),
        );
        assert!(t.end_shift);
        assert_eq!(t.drop_pending_except, Some(None));
        assert!(!t.driver_changed);
    }

    #[test]
    fn a_new_deal_keeps_only_its_own_events() {
        let t = transition(
            &car("issued", Some("7"), Some("a")),
            &car("issued", Some("8"), Some("b")),
        );
        assert!(t.end_shift && t.driver_changed);
        assert_eq!(t.drop_pending_except, Some(Some("8".into())));
    }

    #[test]
    fn issuing_or_an_unrelated_edit_changes_nothing() {
        let none = Transition::default();
        let issue = transition(
            &car("available", Some("7"), None),
            &car("issued", Some("8"), None),
        );
        assert_eq!(
            issue, none,
            "a deal starts clean: nothing of it can be pending"
        );
        let same = car("issued", Some("7"), Some("a"));
        assert_eq!(transition(&same, &same), none);
    }
}
