//! One vocabulary for the fleet, computed once per request and served the same way by the
//! console (`GET /api/v1/map/vehicles`) and the CRM core (`GET /api/v1/fleet/summary`):
//!
//! - connectivity: **online** / **offline** (a fix or heartbeat within
//!   `[devices] offline_after_s`), for every vehicle; online + offline = total;
//! - CRM: **on line** / **wants to return** (the driver's deal stage fleetgate moved);
//! - immobiliser: **running** / **pending** (a block reason stands, the engine not yet cut:
//!   `block_pending`, `blocking`) / **blocked** (confirmed, and while an unblock is on its way);
//! - zone: the **debounced** service-area state the rules act on (`zone.inside_service_area`
//!   of the vehicle API), never a fresh point test that GPS noise can flip.
//!
//! A vehicle's dot colour picks one of these: blocked and pending first (what a dispatcher
//! must see), then online/offline.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// A vehicle's dot colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DotState {
    Online,
    Blocked,
    Pending,
    Offline,
}

/// The immobiliser's word for a state (`immobiliser.state` of the vehicle view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineWord {
    Running,
    Pending,
    Blocked,
}

/// `immobiliser.state` → the console's word: blocked while the engine is (or may still be)
/// cut, pending while a block waits or travels.
pub fn engine_word(immobiliser: Option<&str>) -> EngineWord {
    match immobiliser {
        Some("blocked" | "unblocking") => EngineWord::Blocked,
        Some("block_pending" | "blocking") => EngineWord::Pending,
        Some(s) if s.contains("pending") => EngineWord::Pending,
        _ => EngineWord::Running,
    }
}

/// A blocked car stays blocked (and a pending block pending) whether or not it is reporting:
/// that is what the operator must see first. `immobiliser` is the vehicle view's
/// `immobiliser.state` when the immobiliser reports one.
pub fn classify(online: bool, immobiliser: Option<&str>) -> DotState {
    match engine_word(immobiliser) {
        EngineWord::Blocked => DotState::Blocked,
        EngineWord::Pending => DotState::Pending,
        EngineWord::Running if online => DotState::Online,
        EngineWord::Running => DotState::Offline,
    }
}

/// The driver's deal stage as fleetgate moved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    OnLine,
    WantsToReturn,
}

/// One vehicle as the console lists and draws it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetVehicle {
    pub id: String,
    pub plate: Option<String>,
    /// The tracker's IMEI (or other id).
    pub device_id: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    /// `available`, `issued`, `in_repair`.
    pub status: String,
    /// The dot colour.
    pub state: DotState,
    pub online: bool,
    pub engine: EngineWord,
    /// The immobiliser's own state (`running`, `block_pending`, `blocking`, `blocked`, …).
    pub immobiliser: String,
    /// Block reasons standing.
    pub reasons: Vec<String>,
    pub stage: Option<Stage>,
    /// Debounced; `null` until the first valid fix.
    pub inside_service_area: Option<bool>,
    /// Zones the vehicle is in (debounced).
    pub zones: Vec<String>,
    /// `null` for a vehicle never located (listed, not drawn).
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub speed_kmh: f64,
    pub course: Option<f64>,
    pub ignition: Option<bool>,
    /// The last fix's own time.
    pub fix_time: Option<String>,
    /// When the tracker last sent anything.
    pub last_seen: Option<String>,
}

/// Fleet counts, each in the vocabulary above (they overlap: a blocked car is also online or
/// offline).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: usize,
    pub online: usize,
    pub offline: usize,
    /// Engine confirmed cut (or being released).
    pub blocked: usize,
    /// A block reason stands; the engine is not cut yet.
    pub pending: usize,
    /// Registered but never located.
    pub no_position: usize,
    pub in_repair: usize,
    /// CRM stage "on line" (and not asking to return).
    pub on_line: usize,
    pub wants_to_return: usize,
    /// Debounced: outside the service area by the zone state the rules act on.
    pub outside_service_area: usize,
}

impl Summary {
    fn add(&mut self, v: &FleetVehicle) {
        self.total += 1;
        if v.online {
            self.online += 1;
        } else {
            self.offline += 1;
        }
        match v.engine {
            EngineWord::Blocked => self.blocked += 1,
            EngineWord::Pending => self.pending += 1,
            EngineWord::Running => {}
        }
        if v.lat.is_none() {
            self.no_position += 1;
        }
        if v.status == "in_repair" {
            self.in_repair += 1;
        }
        match v.stage {
            Some(Stage::OnLine) => self.on_line += 1,
            Some(Stage::WantsToReturn) => self.wants_to_return += 1,
            None => {}
        }
        if v.inside_service_area == Some(false) {
            self.outside_service_area += 1;
        }
    }
}

/// `GET /api/v1/map/vehicles`: every vehicle (located or not) and the counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fleet {
    pub summary: Summary,
    pub vehicles: Vec<FleetVehicle>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The strings of a JSON array (`reasons`, `zones`); none when absent.
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The fleet from the vehicle views (as `GET /api/v1/vehicles` serialises them, so this
/// reads exactly what the vehicle API shows) and the CRM stages by vehicle id.
pub fn fleet_of(views: &[Value], stages: &HashMap<String, Stage>) -> Fleet {
    let mut out = Fleet::default();
    for v in views {
        let id = text(v, "id").unwrap_or_default();
        let online = v.get("online").and_then(Value::as_bool).unwrap_or(false);
        let immob = v.get("immobiliser");
        let immob_state = immob
            .and_then(|i| i.get("state"))
            .and_then(Value::as_str)
            .unwrap_or("running");
        let pos = v.get("position").filter(|p| !p.is_null());
        let num = |k: &str| pos.and_then(|p| p.get(k)).and_then(Value::as_f64);
        let (lat, lon) = match (num("lat"), num("lon")) {
            (Some(lat), Some(lon)) => (Some(lat), Some(lon)),
            _ => (None, None),
        };
        let zone = v.get("zone");
        let row = FleetVehicle {
            plate: text(v, "plate"),
            device_id: text(v, "device_id"),
            driver_id: text(v, "driver_id"),
            crm_deal_id: text(v, "crm_deal_id"),
            status: text(v, "status").unwrap_or_else(|| "available".into()),
            state: classify(online, Some(immob_state)),
            online,
            engine: engine_word(Some(immob_state)),
            immobiliser: immob_state.to_string(),
            reasons: strings(immob.and_then(|i| i.get("reasons"))),
            stage: stages.get(&id).copied(),
            inside_service_area: zone
                .and_then(|z| z.get("inside_service_area"))
                .and_then(Value::as_bool),
            zones: strings(zone.and_then(|z| z.get("zones"))),
            lat,
            lon,
            speed_kmh: num("speed_kmh").unwrap_or(0.0),
            course: num("course"),
            ignition: pos.and_then(|p| p.get("ignition")).and_then(Value::as_bool),
            fix_time: pos
                .and_then(|p| p.get("time"))
                .and_then(Value::as_str)
                .map(str::to_string),
            last_seen: text(v, "last_seen"),
            id,
        };
        out.summary.add(&row);
        out.vehicles.push(row);
    }
    out
}

/// The whole fleet now: vehicle views, CRM stages.
pub async fn current(state: &super::AppState) -> Result<Fleet, super::ApiError> {
    let axum::Json(views) = super::vehicles::list(axum::extract::State(state.clone())).await?;
    let views: Vec<Value> = views
        .iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    let stages: HashMap<String, Stage> = state
        .crm
        .shifts()
        .await
        .into_iter()
        .filter_map(|(id, sh)| {
            let stage = if sh.wants_to_return {
                Stage::WantsToReturn
            } else if sh.on_line {
                Stage::OnLine
            } else {
                return None;
            };
            Some((id.0, stage))
        })
        .collect();
    Ok(fleet_of(&views, &stages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn states_put_blocks_before_connectivity() {
        assert_eq!(classify(true, None), DotState::Online);
        assert_eq!(classify(false, None), DotState::Offline);
        assert_eq!(classify(true, Some("running")), DotState::Online);
        assert_eq!(classify(false, Some("blocked")), DotState::Blocked);
        assert_eq!(classify(true, Some("unblocking")), DotState::Blocked);
        assert_eq!(classify(true, Some("block_pending")), DotState::Pending);
        assert_eq!(classify(false, Some("blocking")), DotState::Pending);
    }

    #[test]
    fn one_vocabulary_counts_every_vehicle_once_per_word() {
        let views = vec![
            json!({"id": "a", "online": true, "status": "issued",
                   "position": {"lat": 55.7, "lon": 37.6, "speed_kmh": 40.0, "ignition": true},
                   "zone": {"inside_service_area": true, "zones": ["moscow_region"]}}),
            json!({"id": "b", "online": false, "status": "in_repair", "position": null,
                   "zone": {"inside_service_area": null, "zones": []}}),
            json!({"id": "c", "online": false, "immobiliser": {"state": "blocked", "reasons": ["manual"]},
                   "position": {"lat": 55.8, "lon": 37.5},
                   "zone": {"inside_service_area": false, "zones": []}}),
            json!({"id": "d", "online": true, "immobiliser": {"state": "block_pending", "reasons": ["low_balance"]},
                   "position": {"lat": 55.8, "lon": 37.5},
                   "zone": {"inside_service_area": true, "zones": []}}),
        ];
        let stages = HashMap::from([
            ("a".to_string(), Stage::OnLine),
            ("d".to_string(), Stage::WantsToReturn),
        ]);
        let f = fleet_of(&views, &stages);
        assert_eq!(f.vehicles.len(), 4, "unlocated vehicles are listed too");
        assert_eq!(f.vehicles[1].lat, None);
        assert_eq!(f.vehicles[2].state, DotState::Blocked);
        assert_eq!(f.vehicles[3].engine, EngineWord::Pending);
        assert_eq!(f.vehicles[3].reasons, vec!["low_balance".to_string()]);
        assert_eq!(f.vehicles[0].ignition, Some(true));
        assert_eq!(
            f.summary,
            Summary {
                total: 4,
                online: 2,
                offline: 2,
                blocked: 1,
                pending: 1,
                no_position: 1,
                in_repair: 1,
                on_line: 1,
                wants_to_return: 1,
                outside_service_area: 1,
            }
        );
    }
}
