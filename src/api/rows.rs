//! Stored rows as the API serves them: its JSON contract (`openapi.json`), kept apart from
//! the storage ports' rows so that a change to a row or a column cannot change a response
//! (or what a `PUT` accepts) by accident.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::store::DailySummary;
use crate::geofence::store::StoredZoneEvent;
use crate::immobiliser::store::{AuditEntry, AuditPosition};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StoredPosition, Vehicle as VehicleRow, VehicleUpdate};

/// A stored fix (`/track`, the ends of `/track/summary`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Position {
    pub time: DateTime<Utc>,
    pub server_time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: f64,
    pub altitude: f64,
    pub satellites: Option<u16>,
    pub ignition: Option<bool>,
    pub motion: Option<bool>,
    pub odometer_m: Option<f64>,
    pub gps_odometer_m: f64,
    pub inputs: Option<u32>,
    pub outputs: Option<u32>,
    pub power_v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    pub attributes: serde_json::Value,
}

impl From<StoredPosition> for Position {
    fn from(p: StoredPosition) -> Self {
        Position {
            time: p.time,
            server_time: p.server_time,
            valid: p.valid,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: p.speed_kmh,
            course: p.course,
            altitude: p.altitude,
            satellites: p.satellites,
            ignition: p.ignition,
            motion: p.motion,
            odometer_m: p.odometer_m,
            gps_odometer_m: p.gps_odometer_m,
            inputs: p.inputs,
            outputs: p.outputs,
            power_v: p.power_v,
            alarm: p.alarm,
            attributes: p.attributes.to_value(),
        }
    }
}

/// One vehicle's day (`/summaries`), kept after its positions expire.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaySummary {
    /// The UTC day (03:00 to 03:00 Moscow time).
    pub day: chrono::NaiveDate,
    pub device_id: DeviceId,
    pub positions: u64,
    pub distance_m: f64,
    pub engine_s: i64,
    pub moving_s: i64,
    pub outside_s: i64,
    pub max_speed_kmh: f64,
    pub first_fix: DateTime<Utc>,
    pub last_fix: DateTime<Utc>,
    pub odometer_first_m: Option<f64>,
    pub odometer_last_m: Option<f64>,
    pub computed_at: DateTime<Utc>,
}

impl From<DailySummary> for DaySummary {
    fn from(s: DailySummary) -> Self {
        DaySummary {
            day: s.day.date(),
            device_id: s.device,
            positions: s.positions,
            distance_m: s.distance_m,
            engine_s: s.engine_s,
            moving_s: s.moving_s,
            outside_s: s.outside_s,
            max_speed_kmh: s.max_speed_kmh,
            first_fix: s.first_fix,
            last_fix: s.last_fix,
            odometer_first_m: s.odometer_first_m,
            odometer_last_m: s.odometer_last_m,
            computed_at: s.computed_at,
        }
    }
}

/// `GET /vehicles/{id}/summaries`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaySummaries {
    pub vehicle_id: VehicleId,
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    /// Oldest first; a day without positions has none.
    pub days: Vec<DaySummary>,
}

/// A vehicle as registered (the registration fields of every vehicle view).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Vehicle {
    pub id: VehicleId,
    pub device_id: Option<DeviceId>,
    pub protocol: Option<String>,
    pub plate: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    /// The car's company card in the CRM.
    pub crm_company_id: Option<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<VehicleRow> for Vehicle {
    fn from(v: VehicleRow) -> Self {
        Vehicle {
            id: v.id,
            device_id: v.device_id,
            protocol: v.protocol,
            plate: v.plate,
            driver_id: v.driver_id,
            crm_deal_id: v.crm_deal_id,
            crm_company_id: v.crm_company_id,
            status: v.status,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// `PUT /api/v1/vehicles/{id}`: fields to set; absent fields keep their value.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleBody {
    pub device_id: Option<String>,
    pub protocol: Option<String>,
    pub plate: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    /// The car's company card in the CRM (amoCRM company id, Bitrix24 company `ID`).
    pub crm_company_id: Option<String>,
    /// `available`, `issued` or `in_repair`.
    pub status: Option<String>,
}

impl From<VehicleBody> for VehicleUpdate {
    fn from(b: VehicleBody) -> Self {
        VehicleUpdate {
            device_id: b.device_id,
            protocol: b.protocol,
            plate: b.plate,
            driver_id: b.driver_id,
            crm_deal_id: b.crm_deal_id,
            crm_company_id: b.crm_company_id,
            status: b.status,
        }
    }
}

/// One audit record (`/immobiliser/audit`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Audit {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub vehicle_id: VehicleId,
    pub event: String,
    pub reason: Option<String>,
    pub actor: String,
    pub comment: Option<String>,
    pub state_from: Option<String>,
    pub state_to: Option<String>,
    pub command_id: Option<i64>,
    pub forced: bool,
    pub position: Option<AuditFix>,
}

/// Where the car was when an audit record was written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditFix {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub ignition: Option<bool>,
}

impl From<AuditEntry> for Audit {
    fn from(a: AuditEntry) -> Self {
        Audit {
            id: a.id,
            time: a.time,
            vehicle_id: a.vehicle_id,
            event: a.event,
            reason: a.reason,
            actor: a.actor,
            comment: a.comment,
            state_from: a.state_from,
            state_to: a.state_to,
            command_id: a.command_id,
            forced: a.forced,
            position: a.position.map(AuditFix::from),
        }
    }
}

impl From<AuditPosition> for AuditFix {
    fn from(p: AuditPosition) -> Self {
        AuditFix {
            time: p.time,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: p.speed_kmh,
            ignition: p.ignition,
        }
    }
}

/// A confirmed zone event (`/events`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZoneEvent {
    pub id: i64,
    pub vehicle: Option<VehicleId>,
    pub device_id: DeviceId,
    #[serde(rename = "type")]
    pub kind: String,
    pub zone: String,
    pub zone_kind: String,
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
}

impl From<StoredZoneEvent> for ZoneEvent {
    fn from(e: StoredZoneEvent) -> Self {
        ZoneEvent {
            id: e.id,
            vehicle: e.vehicle,
            device_id: e.device_id,
            kind: e.kind,
            zone: e.zone,
            zone_kind: e.zone_kind,
            time: e.time,
            lat: e.lat,
            lon: e.lon,
        }
    }
}

/// Every row of `rows` as the API serves it.
pub fn all<R, T: From<R>>(rows: Vec<R>) -> Vec<T> {
    rows.into_iter().map(T::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON field names are the API's contract: the rows' names may change, these not.
    #[test]
    fn zone_events_and_positions_keep_their_json_names() {
        let t = DateTime::<Utc>::default();
        let e = ZoneEvent::from(StoredZoneEvent {
            id: 1,
            vehicle: None,
            device_id: DeviceId::new("d"),
            kind: "enter".into(),
            zone: "depot".into(),
            zone_kind: "parking".into(),
            time: t,
            lat: 1.0,
            lon: 2.0,
        });
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["type"], "enter");
        assert!(v.get("kind").is_none());
        let mut p = crate::model::Position::new(t, true, 1.0, 2.0);
        let quiet = serde_json::to_value(Position::from(StoredPosition::from_position(&p, t, 0.0)))
            .unwrap();
        assert!(quiet.get("alarm").is_none(), "no alarm, no field: {quiet}");
        p.alarm = Some("sos");
        let alarm = serde_json::to_value(Position::from(StoredPosition::from_position(&p, t, 0.0)))
            .unwrap();
        assert_eq!(alarm["alarm"], "sos");
    }
}
