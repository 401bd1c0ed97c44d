//! Balance and inspection rules: pure state machines with the date and odometer injected.
//! Each returns whether its block reason must now be set (`Some(true)`), lifted
//! (`Some(false)`), or left as is (`None`).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A driver's balance (scope `balance`, id = driver id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalanceState {
    pub balance_rub: Option<f64>,
    pub updated_at: Option<DateTime<Utc>>,
    /// `low_balance` is set for this driver's cars.
    pub low: bool,
}

impl BalanceState {
    pub fn update(&mut self, balance_rub: f64, at: DateTime<Utc>, min_rub: f64) -> Option<bool> {
        self.balance_rub = Some(balance_rub);
        self.updated_at = Some(at);
        let low = balance_rub < min_rub;
        (low != self.low).then(|| {
            self.low = low;
            low
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InspectionRules {
    pub max_postponements: u32,
    pub grace_days: i64,
    pub grace_km: f64,
    pub warn_days: i64,
}

/// A dated document: expiry date and which notices went out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub expires_on: Option<NaiveDate>,
    #[serde(default)]
    pub warned: bool,
    #[serde(default)]
    pub expired_notified: bool,
}

/// A vehicle's inspection schedule and documents (scope `inspection`, id = vehicle id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InspectionState {
    pub due_date: Option<NaiveDate>,
    pub due_odometer_km: Option<f64>,
    pub postponements: u32,
    /// `inspection` is set for this car.
    pub blocked: bool,
    pub last_completed_at: Option<DateTime<Utc>>,
    pub last_completed_odometer_km: Option<f64>,
    #[serde(default)]
    pub documents: BTreeMap<String, Document>,
}

/// What a document check found.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentNotice {
    pub document: String,
    pub expires_on: NaiveDate,
    pub days_left: i64,
}

impl InspectionState {
    /// Why the car must be blocked now, if it must.
    pub fn block_cause(
        &self,
        today: NaiveDate,
        odometer_km: Option<f64>,
        r: &InspectionRules,
    ) -> Option<String> {
        if self.postponements > r.max_postponements {
            return Some(format!(
                "inspection postponed {} times (at most {})",
                self.postponements, r.max_postponements
            ));
        }
        if let Some(d) = self.due_date {
            if (today - d).num_days() > r.grace_days {
                return Some(format!("inspection was due on {d}"));
            }
        }
        if let (Some(due), Some(km)) = (self.due_odometer_km, odometer_km) {
            if km > due + r.grace_km {
                return Some(format!(
                    "inspection was due at {due:.0} km, odometer {km:.0} km"
                ));
            }
        }
        None
    }

    /// Re-evaluate; `Some((active, cause))` when the reason flips.
    pub fn evaluate(
        &mut self,
        today: NaiveDate,
        odometer_km: Option<f64>,
        r: &InspectionRules,
    ) -> Option<(bool, String)> {
        let cause = self.block_cause(today, odometer_km, r);
        let now = cause.is_some();
        (now != self.blocked).then(|| {
            self.blocked = now;
            (now, cause.unwrap_or_else(|| "inspection done".into()))
        })
    }

    pub fn schedule(&mut self, due_date: Option<NaiveDate>, due_odometer_km: Option<f64>) {
        self.due_date = due_date;
        self.due_odometer_km = due_odometer_km;
    }

    /// Postpone; a new due date/odometer may come with it. Counts either way.
    pub fn postpone(&mut self, due_date: Option<NaiveDate>, due_odometer_km: Option<f64>) {
        self.postponements += 1;
        if due_date.is_some() {
            self.due_date = due_date;
        }
        if due_odometer_km.is_some() {
            self.due_odometer_km = due_odometer_km;
        }
    }

    pub fn complete(&mut self, at: DateTime<Utc>, odometer_km: f64) {
        self.postponements = 0;
        self.due_date = None;
        self.due_odometer_km = None;
        self.last_completed_at = Some(at);
        self.last_completed_odometer_km = Some(odometer_km);
    }

    pub fn set_document(&mut self, name: &str, expires_on: Option<NaiveDate>) {
        self.documents.insert(
            name.to_string(),
            Document {
                expires_on,
                warned: false,
                expired_notified: false,
            },
        );
    }

    /// Warnings due today: once `warn_days` before expiry, once on expiry.
    pub fn document_notices(
        &mut self,
        today: NaiveDate,
        r: &InspectionRules,
    ) -> Vec<DocumentNotice> {
        let mut out = Vec::new();
        for (name, d) in self.documents.iter_mut() {
            let Some(exp) = d.expires_on else { continue };
            let left = (exp - today).num_days();
            let expired = left < 0;
            let notify = if expired {
                !std::mem::replace(&mut d.expired_notified, true)
            } else if left <= r.warn_days {
                !std::mem::replace(&mut d.warned, true)
            } else {
                false
            };
            if notify {
                out.push(DocumentNotice {
                    document: name.clone(),
                    expires_on: exp,
                    days_left: left,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: InspectionRules = InspectionRules {
        max_postponements: 2,
        grace_days: 3,
        grace_km: 1000.0,
        warn_days: 14,
    };

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    #[test]
    fn balance_low_and_top_up() {
        let mut b = BalanceState::default();
        let t = Utc::now();
        assert_eq!(b.update(12_000.0, t, 5000.0), None);
        assert_eq!(b.update(4_999.0, t, 5000.0), Some(true));
        assert_eq!(b.update(3_000.0, t, 5000.0), None, "still low: nothing new");
        assert_eq!(
            b.update(5_000.0, t, 5000.0),
            Some(false),
            "at the minimum is enough"
        );
    }

    #[test]
    fn third_postponement_blocks_completion_lifts() {
        let mut s = InspectionState::default();
        s.schedule(Some(day(20)), Some(150_000.0));
        s.postpone(Some(day(22)), None);
        assert_eq!(s.evaluate(day(10), Some(100.0), &R), None);
        s.postpone(None, None);
        assert_eq!(
            s.evaluate(day(10), Some(100.0), &R),
            None,
            "two are allowed"
        );
        s.postpone(None, None);
        assert!(matches!(
            s.evaluate(day(10), Some(100.0), &R),
            Some((true, _))
        ));
        s.complete(Utc::now(), 150_100.0);
        assert!(matches!(
            s.evaluate(day(10), Some(150_100.0), &R),
            Some((false, _))
        ));
        assert_eq!(s.postponements, 0);
    }

    #[test]
    fn overdue_past_grace_by_date_or_distance() {
        let mut s = InspectionState::default();
        s.schedule(Some(day(10)), Some(150_000.0));
        assert_eq!(
            s.evaluate(day(13), Some(100.0), &R),
            None,
            "within 3 days' grace"
        );
        assert!(matches!(
            s.evaluate(day(14), Some(100.0), &R),
            Some((true, _))
        ));
        let mut s = InspectionState::default();
        s.schedule(None, Some(150_000.0));
        assert_eq!(s.evaluate(day(1), Some(150_900.0), &R), None);
        assert!(matches!(
            s.evaluate(day(1), Some(151_001.0), &R),
            Some((true, _))
        ));
    }

    #[test]
    fn documents_warn_once_then_once_more_on_expiry() {
        let mut s = InspectionState::default();
        s.set_document("osago", Some(day(30)));
        assert!(s.document_notices(day(1), &R).is_empty());
        let n = s.document_notices(day(16), &R);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].days_left, 14);
        assert!(s.document_notices(day(17), &R).is_empty());
        let n = s.document_notices(NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(), &R);
        assert_eq!(n[0].days_left, -1);
        assert!(s
            .document_notices(NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(), &R)
            .is_empty());
    }
}
