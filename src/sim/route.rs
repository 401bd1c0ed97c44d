//! Where a simulated car drives: a pure kinematic model stepped one fix at a time. A car
//! follows a bearing away from (or towards) a point, cruises at a target speed between 20 and
//! 90 km/h that changes every few hundred metres, accelerates and brakes at ~2 m/s², and
//! stops at "traffic lights" for 10–60 s. A car stands for [`START_WAIT_S`] before it sets
//! off. An immobilised car brakes to a stop and switches off until released. Deterministic per
//! seed, so a run can be repeated.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Centre of Moscow (Manezhnaya Square), where radial routes start.
pub const MOSCOW_CENTRE: (f64, f64) = (55.7539, 37.6208);

const EARTH_R_M: f64 = 6_371_000.0;
/// Braking and acceleration, m/s².
const ACCEL: f64 = 2.0;
/// Seconds a car stands, engine on, before it sets off: longer than the immobiliser's default
/// `safe_for` (10 s), so a block asked for at the start of a demo goes out before the drive.
pub const START_WAIT_S: f64 = 20.0;

/// One sample of the car's state: what a tracker reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    /// Degrees, 0 = north.
    pub course: f64,
    pub ignition: bool,
    /// Metres driven since the start.
    pub odometer_m: f64,
}

/// What the car is doing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Leg {
    /// Away from `MOSCOW_CENTRE` along the bearing until `until_m` from it, then back.
    Radial { until_m: f64 },
    /// Straight along the bearing without turning back (the border scenario).
    Outward,
    /// To `target` and stay there with the ignition off (the parking scenario).
    Park { target: (f64, f64) },
}

/// A car on the road.
#[derive(Clone, Debug)]
pub struct Driver {
    rng: StdRng,
    lat: f64,
    lon: f64,
    bearing: f64,
    speed_ms: f64,
    target_ms: f64,
    /// Metres to the next change of target speed.
    segment_left_m: f64,
    /// Seconds still to wait at a stop.
    stop_left_s: f64,
    odometer_m: f64,
    leg: Leg,
    homeward: bool,
    parked: bool,
    /// The immobiliser relay is on: no drive.
    immobilised: bool,
    /// Switched off after an immobilised stop.
    engine_off: bool,
}

impl Driver {
    /// A car at `start` heading along `bearing` (degrees), doing `leg`.
    pub fn new(seed: u64, start: (f64, f64), bearing: f64, leg: Leg) -> Driver {
        let mut rng = StdRng::seed_from_u64(seed);
        let target_ms = rng.gen_range(20.0..90.0) / 3.6;
        let segment_left_m = rng.gen_range(300.0..2000.0);
        Driver {
            rng,
            lat: start.0,
            lon: start.1,
            bearing,
            speed_ms: 0.0,
            target_ms,
            segment_left_m,
            stop_left_s: START_WAIT_S,
            odometer_m: 0.0,
            leg,
            homeward: false,
            parked: false,
            immobilised: false,
            engine_off: false,
        }
    }

    /// Where the car is now.
    pub fn fix(&self) -> Fix {
        Fix {
            lat: self.lat,
            lon: self.lon,
            speed_kmh: self.speed_ms * 3.6,
            course: self.bearing.rem_euclid(360.0),
            ignition: !self.parked && !self.engine_off,
            odometer_m: self.odometer_m,
        }
    }

    /// Change what the car does from here on (a return to the depot, …).
    pub fn set_leg(&mut self, leg: Leg) {
        self.leg = leg;
        self.homeward = false;
    }

    /// The immobiliser relay switched on (`true`: the car brakes to a stop and switches off)
    /// or off (`false`: the engine starts and the car drives on).
    pub fn set_immobilised(&mut self, on: bool) {
        self.immobilised = on;
        if !on {
            self.engine_off = false;
        }
    }

    /// True once a parking car has arrived and switched off.
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// Advance by `dt` seconds and return the new state.
    pub fn step(&mut self, dt: f64) -> Fix {
        if self.parked {
            return self.fix();
        }
        if self.immobilised {
            // No fuel: roll to a stop at the braking rate, then the driver switches off.
            let v0 = self.speed_ms;
            self.speed_ms = (v0 - ACCEL * dt).max(0.0);
            let d = (v0 + self.speed_ms) / 2.0 * dt;
            if d > 0.0 {
                let (lat, lon) = destination((self.lat, self.lon), self.bearing, d);
                self.lat = lat;
                self.lon = lon;
                self.odometer_m += d;
            }
            if self.speed_ms == 0.0 {
                self.engine_off = true;
            }
            return self.fix();
        }
        if self.stop_left_s > 0.0 {
            self.stop_left_s -= dt;
            self.speed_ms = 0.0;
            return self.fix();
        }
        // Steer: the leg decides where the car is heading.
        match self.leg {
            Leg::Radial { until_m } => {
                let from_centre = distance_m((self.lat, self.lon), MOSCOW_CENTRE);
                if !self.homeward && from_centre >= until_m {
                    self.homeward = true;
                } else if self.homeward && from_centre < 500.0 {
                    self.homeward = false;
                    self.bearing = self.rng.gen_range(0.0..360.0);
                }
                if self.homeward {
                    self.bearing = bearing_deg((self.lat, self.lon), MOSCOW_CENTRE);
                }
            }
            Leg::Outward => {}
            Leg::Park { target } => {
                let left = distance_m((self.lat, self.lon), target);
                if left < 15.0 {
                    self.speed_ms = 0.0;
                    self.parked = true;
                    return self.fix();
                }
                self.bearing = bearing_deg((self.lat, self.lon), target);
                // Slow down to arrive: v² = 2·a·s.
                self.target_ms = self.target_ms.min((2.0 * ACCEL * left).sqrt().max(2.0));
            }
        }
        // Streets wander a little.
        self.bearing += self.rng.gen_range(-2.0..2.0);
        let dv = self.target_ms - self.speed_ms;
        self.speed_ms += dv.clamp(-ACCEL * dt, ACCEL * dt);
        let d = self.speed_ms * dt;
        let (lat, lon) = destination((self.lat, self.lon), self.bearing, d);
        self.lat = lat;
        self.lon = lon;
        self.odometer_m += d;
        self.segment_left_m -= d;
        if self.segment_left_m <= 0.0 {
            self.segment_left_m = self.rng.gen_range(300.0..2000.0);
            if self.rng.gen_bool(0.35) {
                // A red light or a jam: brake hard and wait.
                self.stop_left_s = self.rng.gen_range(10.0..60.0);
                self.speed_ms = 0.0;
            }
            self.target_ms = self.rng.gen_range(20.0..90.0) / 3.6;
        }
        self.fix()
    }
}

/// Great-circle distance in metres.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dla = la2 - la1;
    let dlo = (b.1 - a.1).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * EARTH_R_M * h.sqrt().asin()
}

/// Initial bearing from `a` to `b`, degrees.
pub fn bearing_deg(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dlo = (b.1 - a.1).to_radians();
    let y = dlo.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlo.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// The point `d` metres from `a` along `bearing` degrees.
pub fn destination(a: (f64, f64), bearing: f64, d: f64) -> (f64, f64) {
    let (la, lo) = (a.0.to_radians(), a.1.to_radians());
    let b = bearing.to_radians();
    let ang = d / EARTH_R_M;
    let la2 = (la.sin() * ang.cos() + la.cos() * ang.sin() * b.cos()).asin();
    let lo2 = lo + (b.sin() * ang.sin() * la.cos()).atan2(ang.cos() - la.sin() * la2.sin());
    (la2.to_degrees(), lo2.to_degrees())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_radial_car_stays_within_its_radius_and_keeps_to_city_speeds() {
        let mut d = Driver::new(7, MOSCOW_CENTRE, 45.0, Leg::Radial { until_m: 5000.0 });
        let mut stopped = 0;
        let mut max_from_centre: f64 = 0.0;
        for _ in 0..7200 {
            let f = d.step(1.0);
            assert!((0.0..=90.01).contains(&f.speed_kmh), "{}", f.speed_kmh);
            max_from_centre = max_from_centre.max(distance_m((f.lat, f.lon), MOSCOW_CENTRE));
            if f.speed_kmh == 0.0 {
                stopped += 1;
            }
        }
        assert!(max_from_centre > 4500.0, "{max_from_centre}");
        assert!(max_from_centre < 5200.0, "{max_from_centre}");
        assert!(stopped > 10, "the car stops at lights: {stopped}");
    }

    #[test]
    fn consecutive_fixes_never_imply_a_jump() {
        let mut d = Driver::new(1, MOSCOW_CENTRE, 200.0, Leg::Outward);
        let mut prev = d.fix();
        for _ in 0..3600 {
            let f = d.step(1.0);
            assert!(distance_m((prev.lat, prev.lon), (f.lat, f.lon)) <= 25.1);
            prev = f;
        }
        assert!(prev.odometer_m > 10_000.0, "{}", prev.odometer_m);
    }

    #[test]
    fn a_parking_car_arrives_and_switches_off() {
        let target = (55.7758, 37.6558);
        let start = destination(target, 180.0, 2000.0);
        let mut d = Driver::new(3, start, 0.0, Leg::Park { target });
        for _ in 0..3600 {
            d.step(1.0);
        }
        assert!(d.parked());
        let f = d.fix();
        assert!(!f.ignition);
        assert_eq!(f.speed_kmh, 0.0);
        assert!(distance_m((f.lat, f.lon), target) < 20.0);
    }

    #[test]
    fn a_car_stands_before_it_sets_off() {
        let mut d = Driver::new(5, MOSCOW_CENTRE, 10.0, Leg::Radial { until_m: 5000.0 });
        for _ in 0..START_WAIT_S as usize {
            let f = d.step(1.0);
            assert_eq!(f.speed_kmh, 0.0);
            assert!(f.ignition);
        }
        let moved = (0..30).map(|_| d.step(1.0)).any(|f| f.speed_kmh > 0.0);
        assert!(moved);
    }

    #[test]
    fn an_immobilised_car_stops_switches_off_and_drives_on_when_released() {
        let mut d = Driver::new(9, MOSCOW_CENTRE, 90.0, Leg::Outward);
        let mut f = d.fix();
        for _ in 0..200 {
            f = d.step(1.0);
            if f.speed_kmh > 30.0 {
                break;
            }
        }
        assert!(f.speed_kmh > 30.0, "{}", f.speed_kmh);
        d.set_immobilised(true);
        let mut prev = f;
        for _ in 0..10 {
            let g = d.step(1.0);
            assert!(g.speed_kmh <= prev.speed_kmh, "slows down, never speeds up");
            prev = g;
        }
        let parked_at = d.fix();
        assert_eq!(parked_at.speed_kmh, 0.0);
        assert!(!parked_at.ignition, "switched off once stopped");
        for _ in 0..120 {
            assert_eq!(d.step(1.0), parked_at, "stays where it stopped");
        }
        d.set_immobilised(false);
        assert!(d.fix().ignition);
        let drove = (0..120).map(|_| d.step(1.0)).any(|g| g.speed_kmh > 0.0);
        assert!(drove, "drives on when released");
    }

    #[test]
    fn geodesy_round_trips() {
        let b = destination(MOSCOW_CENTRE, 90.0, 10_000.0);
        assert!((distance_m(MOSCOW_CENTRE, b) - 10_000.0).abs() < 1.0);
        assert!((bearing_deg(MOSCOW_CENTRE, b) - 90.0).abs() < 0.2);
    }
}
