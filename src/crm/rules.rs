//! Balance and inspection rules: pure state machines with the date and odometer injected.
//! Each returns whether its block reason must now be set (`Some(true)`), lifted
//! (`Some(false)`), or left as is (`None`).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Where a balance came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceSource {
    /// `PUT /api/v1/drivers/{id}/balance`.
    Pushed,
    /// The periodic check read it from the CRM.
    Pulled,
}

/// What became of an offered balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceOutcome {
    /// It is the driver's balance now; `Some(low)` when `low_balance` flips.
    Applied(Option<bool>),
    /// Older than the balance known, or a pulled value the CRM has not changed since the last
    /// check: it says nothing new and the known balance stands.
    Stale,
}

/// A driver's balance (scope `balance`, id = driver id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalanceState {
    pub balance_rub: Option<f64>,
    /// When this state was last changed here.
    pub updated_at: Option<DateTime<Utc>>,
    /// The balance's own time: a push's `as_of` (or its arrival), the CRM's change time of a
    /// pulled one (or the check's time). The newest wins.
    #[serde(default)]
    pub as_of: Option<DateTime<Utc>>,
    /// The value the last check read from the CRM: the same value again is not news.
    #[serde(default)]
    pub pulled_rub: Option<f64>,
    /// `low_balance` is set for this driver's cars.
    pub low: bool,
}

impl BalanceState {
    /// Offer a balance; newest by its own time wins. A pulled value counts only when the CRM
    /// changed it since the last check: a balance pushed meanwhile is newer than a CRM field
    /// nobody touched, however recently the deal itself was edited.
    pub fn offer(
        &mut self,
        balance_rub: f64,
        as_of: DateTime<Utc>,
        source: BalanceSource,
        now: DateTime<Utc>,
        min_rub: f64,
    ) -> BalanceOutcome {
        if source == BalanceSource::Pulled {
            let unchanged = self.pulled_rub == Some(balance_rub);
            self.pulled_rub = Some(balance_rub);
            if unchanged && self.balance_rub.is_some() {
                return BalanceOutcome::Stale;
            }
        }
        if self.as_of.or(self.updated_at).is_some_and(|t| as_of < t) {
            return BalanceOutcome::Stale;
        }
        self.balance_rub = Some(balance_rub);
        self.as_of = Some(as_of);
        self.updated_at = Some(now);
        let low = balance_rub < min_rub;
        BalanceOutcome::Applied((low != self.low).then(|| {
            self.low = low;
            low
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InspectionRules {
    pub max_postponements: u32,
    pub grace_days: i64,
    pub grace_km: f64,
    pub warn_days: i64,
    /// Days / km before the inspection falls due that the warning goes out.
    pub inspection_warn_days: i64,
    pub inspection_warn_km: f64,
}

/// One postponement, as the API recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Postponement {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub reason: Option<String>,
    pub due_date: Option<NaiveDate>,
    pub due_odometer_km: Option<f64>,
}

/// How far the inspection is: `None` where that limit is not set (or not known).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InspectionLeft {
    pub days: Option<i64>,
    pub km: Option<f64>,
}

impl InspectionLeft {
    /// `осталось 5 дн., 420 км` / `просрочено на 2 дн.`: what the CRM field shows.
    pub fn text_ru(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.days {
            parts.push(if d >= 0 {
                format!("{d} дн.")
            } else {
                format!("просрочено на {} дн.", -d)
            });
        }
        if let Some(k) = self.km {
            parts.push(if k >= 0.0 {
                format!("{} км", super::messages::group(k.round() as u64))
            } else {
                format!(
                    "перепробег {} км",
                    super::messages::group((-k).round() as u64)
                )
            });
        }
        if parts.is_empty() {
            return "ТО не назначено".into();
        }
        format!("до ТО: {}", parts.join(", "))
    }
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
    /// The warning before the due date/mileage went out for the current schedule.
    #[serde(default)]
    pub warned: bool,
    /// Every postponement since the last completed inspection, with its reason (newest last;
    /// at most 20 kept).
    #[serde(default)]
    pub postponement_log: Vec<Postponement>,
}

/// What a document check found.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentNotice {
    pub document: String,
    pub expires_on: NaiveDate,
    pub days_left: i64,
}

impl InspectionState {
    /// Why the car must be blocked now, if it must (Russian: it reaches the driver).
    pub fn block_cause(
        &self,
        today: NaiveDate,
        odometer_km: Option<f64>,
        r: &InspectionRules,
    ) -> Option<String> {
        use super::messages::{group, times};
        if self.postponements > r.max_postponements {
            return Some(format!(
                "ТО перенесено {} {} (допускается не более {})",
                self.postponements,
                times(self.postponements),
                r.max_postponements
            ));
        }
        if let Some(d) = self.due_date {
            if (today - d).num_days() > r.grace_days {
                return Some(format!("срок ТО истёк {}", d.format("%d.%m.%Y")));
            }
        }
        if let (Some(due), Some(km)) = (self.due_odometer_km, odometer_km) {
            if km > due + r.grace_km {
                return Some(format!(
                    "ТО было нужно на {} км, пробег {} км",
                    group(due.max(0.0) as u64),
                    group(km.max(0.0) as u64)
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
            (now, cause.unwrap_or_else(|| "ТО пройдено".into()))
        })
    }

    pub fn schedule(&mut self, due_date: Option<NaiveDate>, due_odometer_km: Option<f64>) {
        self.due_date = due_date;
        self.due_odometer_km = due_odometer_km;
        self.warned = false;
    }

    /// Postpone; a new due date/odometer may come with it. Counts either way; the reason is
    /// kept (and goes into the CRM note).
    pub fn postpone(&mut self, due_date: Option<NaiveDate>, due_odometer_km: Option<f64>) {
        self.postponements += 1;
        if due_date.is_some() {
            self.due_date = due_date;
        }
        if due_odometer_km.is_some() {
            self.due_odometer_km = due_odometer_km;
        }
        if due_date.is_some() || due_odometer_km.is_some() {
            self.warned = false;
        }
    }

    /// Record why (and by whom) the last postponement was made.
    pub fn note_postponement(&mut self, p: Postponement) {
        self.postponement_log.push(p);
        let n = self.postponement_log.len();
        if n > 20 {
            self.postponement_log.drain(..n - 20);
        }
    }

    /// Days and km left before the inspection falls due (negative: overdue).
    pub fn left(&self, today: NaiveDate, odometer_km: Option<f64>) -> InspectionLeft {
        InspectionLeft {
            days: self.due_date.map(|d| (d - today).num_days()),
            km: self
                .due_odometer_km
                .zip(odometer_km)
                .map(|(due, km)| due - km),
        }
    }

    /// The warning before the inspection falls due: once per schedule, when it is within
    /// `inspection_warn_days` or `inspection_warn_km` (and not yet overdue: that blocks).
    pub fn warning(
        &mut self,
        today: NaiveDate,
        odometer_km: Option<f64>,
        r: &InspectionRules,
    ) -> Option<InspectionLeft> {
        if self.warned {
            return None;
        }
        let left = self.left(today, odometer_km);
        let soon_days = left
            .days
            .is_some_and(|d| (0..=r.inspection_warn_days).contains(&d));
        let soon_km = left
            .km
            .is_some_and(|k| k >= 0.0 && k <= r.inspection_warn_km);
        (soon_days || soon_km).then(|| {
            self.warned = true;
            left
        })
    }

    pub fn complete(&mut self, at: DateTime<Utc>, odometer_km: f64) {
        self.warned = false;
        self.postponement_log.clear();
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
        inspection_warn_days: 7,
        inspection_warn_km: 500.0,
    };

    #[test]
    fn the_inspection_warning_goes_out_once_per_schedule_by_date_or_by_km() {
        let mut st = InspectionState::default();
        st.schedule(Some(day(20)), Some(60_000.0));
        assert_eq!(
            st.warning(day(10), Some(50_000.0), &R),
            None,
            "10 days, 10,000 km"
        );
        let w = st.warning(day(13), Some(50_000.0), &R).unwrap();
        assert_eq!((w.days, w.km), (Some(7), Some(10_000.0)));
        assert_eq!(w.text_ru(), "до ТО: 7 дн., 10 000 км");
        assert_eq!(st.warning(day(14), Some(50_000.0), &R), None, "once");
        // Postponed to a new date: warned again when that one nears.
        st.postpone(Some(day(30)), None);
        assert_eq!(st.warning(day(14), Some(50_000.0), &R), None);
        let w = st.warning(day(14), Some(59_600.0), &R).unwrap();
        assert_eq!(w.km, Some(400.0), "by mileage first");
        // Overdue is the block rule's business, not a warning.
        let mut late = InspectionState::default();
        late.schedule(Some(day(1)), None);
        assert_eq!(late.warning(day(5), None, &R), None);
        assert_eq!(
            late.left(day(5), None).text_ru(),
            "до ТО: просрочено на 4 дн."
        );
    }

    #[test]
    fn postponement_reasons_are_kept_until_the_inspection_is_done() {
        let mut st = InspectionState::default();
        for i in 0..25 {
            st.postpone(None, None);
            st.note_postponement(Postponement {
                at: at(i),
                actor: "crm".into(),
                reason: Some(format!("reason {i}")),
                due_date: None,
                due_odometer_km: None,
            });
        }
        assert_eq!(st.postponement_log.len(), 20);
        assert_eq!(st.postponement_log[19].reason.as_deref(), Some("reason 24"));
        st.complete(at(100), 61_000.0);
        assert!(st.postponement_log.is_empty());
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn at(s: i64) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    #[test]
    fn balance_low_and_top_up() {
        use BalanceOutcome::*;
        let mut b = BalanceState::default();
        let push = |b: &mut BalanceState, rub, s| {
            b.offer(rub, at(s), BalanceSource::Pushed, at(s), 5000.0)
        };
        assert_eq!(push(&mut b, 12_000.0, 0), Applied(None));
        assert_eq!(push(&mut b, 4_999.99, 1), Applied(Some(true)));
        assert_eq!(
            push(&mut b, 3_000.0, 2),
            Applied(None),
            "still low: nothing new"
        );
        assert_eq!(
            push(&mut b, 5_000.0, 3),
            Applied(Some(false)),
            "at the minimum is enough"
        );
    }

    #[test]
    fn newest_balance_by_its_own_time_wins_and_an_unchanged_pull_is_not_news() {
        use BalanceOutcome::*;
        let mut b = BalanceState::default();
        let pull = |b: &mut BalanceState, rub, s| {
            b.offer(rub, at(s), BalanceSource::Pulled, at(s), 5000.0)
        };
        assert_eq!(pull(&mut b, 9_000.0, 0), Applied(None));
        // The case: 1 500 ₽ pushed, then the CRM's untouched 9 000 ₽ pulled 16 s later.
        assert_eq!(
            b.offer(1_500.0, at(100), BalanceSource::Pushed, at(100), 5000.0),
            Applied(Some(true))
        );
        assert_eq!(
            pull(&mut b, 9_000.0, 116),
            Stale,
            "the CRM did not change it"
        );
        assert_eq!(b.balance_rub, Some(1_500.0));
        // A push dated before the known balance is older news.
        assert_eq!(
            b.offer(20_000.0, at(50), BalanceSource::Pushed, at(120), 5000.0),
            Stale
        );
        // A pull whose CRM change time is older than the push loses too, even if changed.
        assert_eq!(pull(&mut b, 8_000.0, 90), Stale);
        // The CRM's balance raised after the push: the top-up counts.
        assert_eq!(pull(&mut b, 9_500.0, 1300), Applied(Some(false)));
        assert_eq!(b.balance_rub, Some(9_500.0));
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
