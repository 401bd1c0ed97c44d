//! Scenarios: where each simulated car starts and what it does, and the control-API calls
//! that go with it (`low-balance`, `return`).

use std::path::Path;

use geo::Centroid;

use super::route::{destination, Leg, MOSCOW_CENTRE};
use crate::geofence::{Shape, ZoneKind, ZoneSet};

/// What the fleet does during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Radial drives out of the centre of Moscow (5–25 km) and back, with stops.
    Drive,
    /// Drives out of the service area: starts 3 km inside its boundary, heading out.
    Border,
    /// Drives to a parking lot of the geofence files and parks there (ignition off).
    Parking,
    /// Drives; a third into the run the driver's balance drops under the minimum through the
    /// API (`--api`), so the immobiliser blocks the car once it stops.
    LowBalance,
    /// Drives; half-way the driver presses "return" (Teltonika DIN2; `--api` also posts a
    /// return request) and drives to the depot.
    Return,
}

/// One car's plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub start: (f64, f64),
    pub bearing: f64,
    pub leg: Leg,
    /// Where to drive after the return signal.
    pub depot: (f64, f64),
}

/// The geofences a scenario steers by (the service area, parking lots, the depot).
pub struct Places {
    zones: Option<ZoneSet>,
}

/// The Komsomolskaya example parking lot and the Nagatino depot, when no zone files are at hand.
const FALLBACK_PARKING: (f64, f64) = (55.7758, 37.6558);
const FALLBACK_DEPOT: (f64, f64) = (55.6833, 37.6500);
/// Radius of the service area along a bearing when no zone files are at hand, metres.
const FALLBACK_BORDER_M: f64 = 60_000.0;

impl Places {
    /// Zones from `dir`; a missing or invalid directory leaves the fallbacks above.
    pub fn load(dir: &Path) -> Places {
        Places {
            zones: ZoneSet::load_dir(dir).ok().filter(|z| !z.is_empty()),
        }
    }

    fn centres(&self, kind: ZoneKind) -> Vec<(f64, f64)> {
        let Some(z) = &self.zones else {
            return Vec::new();
        };
        z.zones()
            .iter()
            .filter(|z| z.kind == kind)
            .filter_map(|z| match &z.shape {
                Shape::Circle { center, .. } => Some((center.y, center.x)),
                Shape::Area(mp) => mp.centroid().map(|c| (c.y(), c.x())),
            })
            .collect()
    }

    /// Metres from the centre of Moscow to the service area's edge along `bearing`.
    fn border_m(&self, bearing: f64) -> f64 {
        let Some(z) = &self.zones else {
            return FALLBACK_BORDER_M;
        };
        let inside = |p: (f64, f64)| {
            z.containing(p.0, p.1)
                .any(|z| z.kind == ZoneKind::ServiceArea)
        };
        if !inside(MOSCOW_CENTRE) {
            return FALLBACK_BORDER_M;
        }
        let mut r = 1_000.0;
        while r < 400_000.0 && inside(destination(MOSCOW_CENTRE, bearing, r)) {
            r += 250.0;
        }
        r
    }

    /// The plan of car number `i`.
    pub fn plan(&self, scenario: Scenario, i: usize) -> Plan {
        // Golden-angle spread: neighbouring cars take different roads.
        let bearing = (i as f64 * 137.507_764).rem_euclid(360.0);
        let depot = self
            .centres(ZoneKind::Depot)
            .first()
            .copied()
            .unwrap_or(FALLBACK_DEPOT);
        let near_centre = destination(MOSCOW_CENTRE, bearing, 200.0 + (i % 7) as f64 * 150.0);
        match scenario {
            Scenario::Drive | Scenario::LowBalance | Scenario::Return => Plan {
                start: near_centre,
                bearing,
                leg: Leg::Radial {
                    until_m: 5_000.0 + (i % 21) as f64 * 1_000.0,
                },
                depot,
            },
            Scenario::Border => {
                let edge = self.border_m(bearing);
                Plan {
                    start: destination(MOSCOW_CENTRE, bearing, (edge - 3_000.0).max(0.0)),
                    bearing,
                    leg: Leg::Outward,
                    depot,
                }
            }
            Scenario::Parking => {
                let lots = self.centres(ZoneKind::Parking);
                let target = if lots.is_empty() {
                    FALLBACK_PARKING
                } else {
                    lots[i % lots.len()]
                };
                // 1–3 km away, driving in.
                let away = 1_000.0 + (i % 5) as f64 * 500.0;
                Plan {
                    start: destination(target, bearing, away),
                    bearing: (bearing + 180.0).rem_euclid(360.0),
                    leg: Leg::Park { target },
                    depot,
                }
            }
        }
    }
}

/// The control API, for the scenarios that act through it.
#[derive(Clone)]
pub struct ControlApi {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl ControlApi {
    pub fn new(base: &str, token: Option<String>) -> ControlApi {
        let base = if base.starts_with("http") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        ControlApi {
            base,
            token,
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), String> {
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.map_err(|e| format!("{path}: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("{path}: HTTP {}", r.status()))
        }
    }

    /// Give the vehicle (auto-registered under its IMEI) a driver, then drop the driver's
    /// balance under any sensible minimum.
    pub async fn low_balance(&self, imei: &str) -> Result<(), String> {
        let driver = format!("sim-driver-{imei}");
        self.call(
            reqwest::Method::PUT,
            &format!("/api/v1/vehicles/{imei}"),
            serde_json::json!({ "driver_id": driver }),
        )
        .await?;
        self.call(
            reqwest::Method::PUT,
            &format!("/api/v1/drivers/{driver}/balance"),
            serde_json::json!({ "balance_rub": 100 }),
        )
        .await
    }

    /// The driver asks to return the car.
    pub async fn return_request(&self, imei: &str) -> Result<(), String> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/vehicles/{imei}/return-request"),
            serde_json::json!({}),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::route::distance_m;

    fn places() -> Places {
        Places::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/geofences")))
    }

    #[test]
    fn border_cars_start_inside_the_service_area_and_head_out() {
        let p = places();
        let z = p.zones.as_ref().expect("shipped zones load");
        for i in 0..4 {
            let plan = p.plan(Scenario::Border, i);
            let inside = |q: (f64, f64)| {
                z.containing(q.0, q.1)
                    .any(|z| z.kind == ZoneKind::ServiceArea)
            };
            assert!(inside(plan.start), "car {i} starts inside");
            assert!(!inside(destination(plan.start, plan.bearing, 4_000.0)));
            assert!(distance_m(plan.start, MOSCOW_CENTRE) > 20_000.0);
        }
    }

    #[test]
    fn parking_cars_head_for_the_example_lots() {
        let p = places();
        let lots = p.centres(ZoneKind::Parking);
        assert_eq!(lots.len(), 3);
        let plan = p.plan(Scenario::Parking, 1);
        let Leg::Park { target } = plan.leg else {
            panic!("parks")
        };
        assert!(lots.contains(&target));
    }
}
