//! Rows as the API serves them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{DeviceId, Position, VehicleId};

/// A stored fix, in the JSON shape of the track API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredPosition {
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

impl StoredPosition {
    pub fn from_position(p: &Position, server_time: DateTime<Utc>, gps_odometer_m: f64) -> Self {
        StoredPosition {
            time: p.fix_time,
            server_time,
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
            gps_odometer_m,
            inputs: p.inputs,
            outputs: p.outputs,
            power_v: p.power_v,
            alarm: p.alarm.map(str::to_string),
            attributes: p.attrs.to_json(),
        }
    }
}

/// A vehicle as registered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Vehicle {
    pub id: VehicleId,
    pub device_id: Option<DeviceId>,
    pub protocol: Option<String>,
    pub plate: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PUT /api/v1/vehicles/{id}`: fields to set; absent fields keep their value.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleUpdate {
    pub device_id: Option<String>,
    pub protocol: Option<String>,
    pub plate: Option<String>,
    pub driver_id: Option<String>,
    pub crm_deal_id: Option<String>,
    /// `available`, `issued` or `in_repair`.
    pub status: Option<String>,
}

pub const VEHICLE_STATUSES: &[&str] = &["available", "issued", "in_repair"];
