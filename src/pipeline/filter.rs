//! Pure checks a fix must pass before it is stored and before any rule sees it.
//! Reasons are counted per label (`fleetgate_pipeline_rejects_total{reason}`).

use chrono::{DateTime, Utc};

use super::config::FiltersConfig;
use crate::model::Position;

/// Why a fix was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The device marked the fix invalid (no GPS lock).
    Invalid,
    /// Exactly 0°/0°: a receiver that has never had a fix.
    ZeroCoordinates,
    /// Latitude or longitude outside the globe, or not a number.
    OutOfRange,
    /// Dated too far into the future (a tracker clock gone wrong would freeze "latest").
    Future,
    /// The same (device, fix time) was already accepted (a re-sent batch).
    Duplicate,
    /// Implies an impossible speed from the previous accepted fix.
    Jump,
    /// Speed not a number, negative, or above `[filters] max_speed_kmh`.
    Speed,
    /// Course not a number or outside 0–360°.
    Course,
    /// Altitude not a number or outside −1,000…20,000 m.
    Altitude,
    /// More satellites than any receiver tracks (over 99).
    Satellites,
    /// Dated before 2000: a receiver without a time fix (1970, 1980 GPS epoch), or garbage.
    TooOld,
}

impl Reject {
    pub fn label(self) -> &'static str {
        match self {
            Reject::Invalid => "invalid",
            Reject::ZeroCoordinates => "zero",
            Reject::OutOfRange => "out_of_range",
            Reject::Future => "future",
            Reject::Duplicate => "duplicate",
            Reject::Jump => "jump",
            Reject::Speed => "speed",
            Reject::Course => "course",
            Reject::Altitude => "altitude",
            Reject::Satellites => "satellites",
            Reject::TooOld => "too_old",
        }
    }
}

/// The previous accepted fix, as far as the checks need it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastFix {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
}

/// Fixes dated before this are not real: 2000-01-01T00:00:00Z.
fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).unwrap_or_default()
}

/// Check one fix. `last` is the newest accepted fix of the device (if any).
pub fn check(
    p: &Position,
    last: Option<&LastFix>,
    now: DateTime<Utc>,
    cfg: &FiltersConfig,
) -> Result<(), Reject> {
    if !(p.lat.is_finite() && p.lon.is_finite() && p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0) {
        return Err(Reject::OutOfRange);
    }
    if !(p.speed_kmh.is_finite() && (0.0..=cfg.max_speed_kmh).contains(&p.speed_kmh)) {
        return Err(Reject::Speed);
    }
    if !(p.course.is_finite() && (0.0..=360.0).contains(&p.course)) {
        return Err(Reject::Course);
    }
    if !(p.altitude.is_finite() && (-1000.0..=20_000.0).contains(&p.altitude)) {
        return Err(Reject::Altitude);
    }
    if p.satellites.is_some_and(|n| n > 99) {
        return Err(Reject::Satellites);
    }
    if p.fix_time < earliest() {
        return Err(Reject::TooOld);
    }
    if cfg.invalid && !p.valid {
        return Err(Reject::Invalid);
    }
    if cfg.zero && p.lat == 0.0 && p.lon == 0.0 {
        return Err(Reject::ZeroCoordinates);
    }
    if (p.fix_time - now).num_seconds() > cfg.max_future_s {
        return Err(Reject::Future);
    }
    if cfg.max_implied_speed_kmh > 0.0 {
        if let Some(l) = last {
            let dt = (p.fix_time - l.time).num_milliseconds() as f64 / 3_600_000.0;
            if dt > 0.0 {
                let km = haversine_m(l.lat, l.lon, p.lat, p.lon) / 1000.0;
                // Under 1 km is GPS noise at any interval; only longer hops can be jumps.
                if km > 1.0 && km / dt > cfg.max_implied_speed_kmh {
                    return Err(Reject::Jump);
                }
            }
        }
    }
    Ok(())
}

/// Great-circle distance in metres (mean Earth radius).
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn at(secs: i64, lat: f64, lon: f64) -> Position {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Position::new(t0 + Duration::seconds(secs), true, lat, lon)
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 10, 0).unwrap()
    }

    #[test]
    fn rejects_each_kind_of_bad_fix() {
        let cfg = FiltersConfig::default();
        let mut invalid = at(0, 55.0, 37.0);
        invalid.valid = false;
        assert_eq!(check(&invalid, None, now(), &cfg), Err(Reject::Invalid));
        assert_eq!(
            check(&at(0, 0.0, 0.0), None, now(), &cfg),
            Err(Reject::ZeroCoordinates)
        );
        assert_eq!(
            check(&at(0, 91.0, 0.0), None, now(), &cfg),
            Err(Reject::OutOfRange)
        );
        assert_eq!(
            check(&at(0, f64::NAN, 0.0), None, now(), &cfg),
            Err(Reject::OutOfRange)
        );
        assert_eq!(
            check(&at(601 + 300, 55.0, 37.0), None, now(), &cfg),
            Err(Reject::Future)
        );
        assert_eq!(check(&at(600 + 299, 55.0, 37.0), None, now(), &cfg), Ok(()));
    }

    #[test]
    fn values_out_of_range_are_refused_by_reason_and_nan_is_never_zero() {
        let cfg = FiltersConfig::default();
        let ok = at(0, 55.75, 37.62);
        let with = |f: &dyn Fn(&mut Position)| {
            let mut p = ok.clone();
            f(&mut p);
            check(&p, None, now(), &cfg)
        };
        for speed in [65_535.0, -92.6, 1e300, f64::NAN, f64::INFINITY] {
            assert_eq!(
                with(&|p| p.speed_kmh = speed),
                Err(Reject::Speed),
                "{speed}"
            );
        }
        assert_eq!(with(&|p| p.speed_kmh = 400.0), Ok(()));
        assert_eq!(with(&|p| p.speed_kmh = 0.0), Ok(()));
        for course in [-1.0, 361.0, f64::NAN] {
            assert_eq!(
                with(&|p| p.course = course),
                Err(Reject::Course),
                "{course}"
            );
        }
        assert_eq!(with(&|p| p.course = 360.0), Ok(()));
        for alt in [-5000.0, 65_535.0 * 10.0, f64::NAN] {
            assert_eq!(with(&|p| p.altitude = alt), Err(Reject::Altitude), "{alt}");
        }
        assert_eq!(with(&|p| p.satellites = Some(255)), Err(Reject::Satellites));
        assert_eq!(with(&|p| p.satellites = Some(12)), Ok(()));
        for year in [1970, 1980, -1199] {
            let t = Utc.with_ymd_and_hms(year, 1, 6, 0, 0, 0).unwrap();
            assert_eq!(with(&|p| p.fix_time = t), Err(Reject::TooOld), "{year}");
        }
    }

    #[test]
    fn a_30_km_hop_in_ten_seconds_is_a_jump_but_noise_is_not() {
        let cfg = FiltersConfig::default();
        let last = LastFix {
            time: at(0, 0.0, 0.0).fix_time,
            lat: 55.75,
            lon: 37.61,
        };
        assert_eq!(
            check(&at(10, 55.75 + 0.27, 37.61), Some(&last), now(), &cfg),
            Err(Reject::Jump)
        );
        assert_eq!(
            check(&at(10, 55.7505, 37.61), Some(&last), now(), &cfg),
            Ok(())
        );
        // 30 km in an hour is driving.
        assert_eq!(
            check(
                &at(3600, 55.75 + 0.27, 37.61),
                Some(&last),
                now() + Duration::hours(1),
                &cfg
            ),
            Ok(())
        );
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // Moscow Kremlin to St Petersburg Palace Square: about 634 km.
        let d = haversine_m(55.7520, 37.6175, 59.9390, 30.3158) / 1000.0;
        assert!((d - 634.0).abs() < 3.0, "{d}");
    }
}
