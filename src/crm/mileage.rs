//! The mileage fleetgate writes to the CRM: the tracker's own odometer, or — for a tracker
//! without one — a calibrated odometer: the last mileage the CRM knew (written by fleetgate,
//! or entered at an inspection) plus the GPS distance driven since. Never a bare GPS total
//! counted from zero (the deal flipped between 2 and 151 234 km), and never less than
//! what the CRM already shows: a reading that would go down is not written.

use serde::{Deserialize, Serialize};

/// One vehicle's mileage as the CRM knows it (scope `mileage`, id = vehicle id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MileageState {
    /// The highest mileage written to the CRM or entered at an inspection, km.
    pub crm_km: Option<f64>,
    /// The vehicle's GPS sum (metres) when `crm_km` was set: the calibration point.
    pub gps_anchor_m: Option<f64>,
}

impl MileageState {
    /// The odometer now, km: the tracker's when it reports one, else the calibrated one;
    /// `None` when neither is known (an odometer-less tracker the CRM has no mileage for).
    pub fn odometer_km(&self, tracker_km: Option<f64>, gps_m: f64) -> Option<f64> {
        tracker_km
            .filter(|k| k.is_finite() && *k > 0.0)
            .or_else(|| {
                let (km, anchor) = (self.crm_km?, self.gps_anchor_m?);
                // A GPS sum that went back (device state reset) adds nothing, never subtracts.
                Some(km + (gps_m - anchor).max(0.0) / 1000.0)
            })
    }

    /// The mileage to write now, if it is known and does not go below the CRM's; the caller
    /// then records it with [`Self::written`].
    pub fn to_write(&self, tracker_km: Option<f64>, gps_m: f64) -> Option<f64> {
        self.odometer_km(tracker_km, gps_m)
            .filter(|k| self.crm_km.map_or(true, |c| *k >= c))
    }

    /// `km` was written to the CRM (or entered at an inspection) with the GPS sum at `gps_m`.
    /// The calibration point moves; the known mileage never goes down.
    pub fn written(&mut self, km: f64, gps_m: f64) {
        if self.crm_km.map_or(true, |c| km >= c) {
            self.crm_km = Some(km);
            self.gps_anchor_m = Some(gps_m);
        } else if self.gps_anchor_m.is_none() {
            self.gps_anchor_m = Some(gps_m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracker_odometer_nothing_is_written_until_the_crm_knows_a_mileage() {
        let m = MileageState::default();
        assert_eq!(
            m.to_write(None, 2_000.0),
            None,
            "never a GPS total from zero"
        );
    }

    #[test]
    fn an_inspection_entry_calibrates_and_gps_distance_adds_to_it() {
        let mut m = MileageState::default();
        m.written(151_234.0, 2_000.0);
        assert_eq!(m.to_write(None, 7_000.0), Some(151_239.0));
        m.written(151_239.0, 7_000.0);
        // A device whose GPS sum restarted from zero: the mileage holds, then grows again.
        assert_eq!(m.to_write(None, 0.0), Some(151_239.0));
        m.written(151_239.0, 0.0);
        assert_eq!(m.to_write(None, 1_000.0), Some(151_240.0));
    }

    #[test]
    fn mileage_written_never_decreases() {
        let mut m = MileageState::default();
        m.written(120_000.0, 0.0);
        assert_eq!(
            m.to_write(Some(5.0), 10.0),
            None,
            "a fresh tracker's odometer under the CRM's is not written"
        );
        assert_eq!(m.to_write(Some(120_010.0), 10.0), Some(120_010.0));
        m.written(120_010.0, 10.0);
        m.written(100.0, 20.0);
        assert_eq!(m.crm_km, Some(120_010.0), "a lower entry does not lower it");
        let mut written = Vec::new();
        for (tracker, gps) in [(None, 5_010.0), (Some(120_002.0), 6_000.0), (None, 9_010.0)] {
            if let Some(k) = m.to_write(tracker, gps) {
                m.written(k, gps);
                written.push(k);
            }
        }
        assert!(written.windows(2).all(|w| w[0] <= w[1]), "{written:?}");
        assert_eq!(written, [120_015.0, 120_019.0]);
    }
}
