//! TEMPORARY STAND-IN for the coordinator's codec (same API), so that `tiers` compiles before
//! the real `storage::chunk` lands on main. Lossless and not compact: JSON. Replaced on merge.

use serde_json::{json, Value};

use crate::pipeline::store::{StoredPosition, TrackPoint};
use crate::storage::{from_millis, millis};

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk: {0}")]
    Bad(String),
}

pub fn encode(points: &[StoredPosition]) -> Vec<u8> {
    let v: Vec<Value> = points
        .iter()
        .map(|p| {
            json!([
                millis(p.time),
                millis(p.server_time),
                p.valid,
                p.lat,
                p.lon,
                p.speed_kmh,
                p.course,
                p.altitude,
                p.satellites,
                p.ignition,
                p.motion,
                p.odometer_m,
                p.gps_odometer_m,
                p.inputs,
                p.outputs,
                p.power_v,
                p.alarm,
                p.attributes
            ])
        })
        .collect();
    serde_json::to_vec(&v).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<Vec<StoredPosition>, ChunkError> {
    let v: Vec<Vec<Value>> =
        serde_json::from_slice(bytes).map_err(|e| ChunkError::Bad(e.to_string()))?;
    v.into_iter()
        .map(|a| {
            if a.len() != 18 {
                return Err(ChunkError::Bad("row length".into()));
            }
            let f = |i: usize| a[i].as_f64();
            Ok(StoredPosition {
                time: from_millis(a[0].as_i64().unwrap_or_default()),
                server_time: from_millis(a[1].as_i64().unwrap_or_default()),
                valid: a[2].as_bool().unwrap_or_default(),
                lat: f(3).unwrap_or_default(),
                lon: f(4).unwrap_or_default(),
                speed_kmh: f(5).unwrap_or_default(),
                course: f(6).unwrap_or_default(),
                altitude: f(7).unwrap_or_default(),
                satellites: a[8].as_u64().map(|v| v as u16),
                ignition: a[9].as_bool(),
                motion: a[10].as_bool(),
                odometer_m: f(11),
                gps_odometer_m: f(12).unwrap_or_default(),
                inputs: a[13].as_u64().map(|v| v as u32),
                outputs: a[14].as_u64().map(|v| v as u32),
                power_v: f(15),
                alarm: a[16].as_str().map(str::to_string),
                attributes: a[17].clone(),
            })
        })
        .collect()
}

pub fn decode_points(bytes: &[u8]) -> Result<Vec<TrackPoint>, ChunkError> {
    Ok(decode(bytes)?
        .into_iter()
        .map(|p| TrackPoint {
            time: p.time,
            lat: p.lat,
            lon: p.lon,
        })
        .collect())
}
