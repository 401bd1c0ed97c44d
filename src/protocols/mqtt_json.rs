//! fleetgate's JSON position, as phone apps and newer trackers publish it over MQTT
//! (`crate::ingest::mqtt`). An MQTT message is already a frame, so the "framer" takes the whole
//! payload. The schema (documented in README.md, section "MQTT ingest"):
//!
//! ```json
//! {"device_id": "861230043958102", "time": "2026-11-20T09:00:00Z", "lat": 55.7512, "lon": 37.6184,
//!  "valid": true, "speed_kmh": 42.0, "course": 270, "altitude": 142, "satellites": 11,
//!  "ignition": true, "motion": true, "odometer_m": 120000, "power_v": 13.8, "inputs": 1,
//!  "outputs": 0, "attributes": {"rssi": -71}}
//! ```
//!
//! `time` is RFC 3339 or Unix milliseconds; `time`, `lat` and `lon` are required, the rest
//! optional; fields not listed here are kept as attributes. A payload may also be an array of such objects (a device's buffered track).
//! `device_id` may be left out when the topic names the device.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{DecodeCtx, DecodeError, Decoded, FrameCut, Protocol, ProtocolSpec, Session};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

pub const NAME: &str = "mqtt";

/// Largest payload accepted: a few hundred buffered fixes.
pub const MAX_FRAME: usize = 256 * 1024;

/// MQTT-only: no socket listener (`transports` is empty); the MQTT subscriber uses the codec.
pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 1883,
    transports: &[],
    max_frame: MAX_FRAME,
    session: |_| Box::new(JsonSession),
};

pub struct JsonSession;

impl Session for JsonSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        if buf.len() > MAX_FRAME {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                0,
                format!("payload of {} bytes over {MAX_FRAME}", buf.len()),
            ));
        }
        Ok(if buf.is_empty() {
            FrameCut::NeedMore
        } else {
            FrameCut::Frame(buf.len())
        })
    }

    fn decode(&mut self, frame: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        decode(frame)
    }

    fn protocol(&self) -> Protocol {
        Protocol::Mqtt
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Payload {
    One(Box<JsonPosition>),
    Many(Vec<JsonPosition>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonTime {
    Millis(i64),
    Text(String),
}

#[derive(Deserialize)]
struct JsonPosition {
    device_id: Option<String>,
    time: JsonTime,
    lat: f64,
    lon: f64,
    #[serde(default = "yes")]
    valid: bool,
    #[serde(default)]
    speed_kmh: f64,
    #[serde(default)]
    course: f64,
    #[serde(default)]
    altitude: f64,
    satellites: Option<u16>,
    ignition: Option<bool>,
    motion: Option<bool>,
    odometer_m: Option<f64>,
    power_v: Option<f64>,
    inputs: Option<u32>,
    outputs: Option<u32>,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
    /// Fields this schema does not name (an app's `accuracy`, `battery`…): kept as attributes.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError::new(NAME, DecodeReason::Json, 0, what)
}

/// Decode one JSON payload: positions in the order given, the device when the body names one
/// (every object of an array must name the same device, or none).
pub fn decode(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let payload: Payload = serde_json::from_slice(frame).map_err(|e| bad(e.to_string()))?;
    let items = match payload {
        Payload::One(p) => vec![*p],
        Payload::Many(v) => v,
    };
    if items.is_empty() {
        return Err(bad("empty array"));
    }
    let mut d = Decoded::kind(MessageKind::Data);
    for (i, j) in items.into_iter().enumerate() {
        if let Some(id) = &j.device_id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
                return Err(bad(format!(
                    "[{i}].device_id: not 1-64 printable ASCII characters"
                )));
            }
            match &d.device {
                Some(prev) if prev.as_str() != id => {
                    return Err(bad(format!(
                        "[{i}].device_id: '{id}' differs from '{prev}'"
                    )))
                }
                _ => d.device = Some(DeviceId::new(id.clone())),
            }
        }
        d.positions.push(position(i, j)?);
    }
    Ok(d)
}

fn position(i: usize, j: JsonPosition) -> Result<Position, DecodeError> {
    let fix_time = match &j.time {
        JsonTime::Millis(ms) => DateTime::<Utc>::from_timestamp_millis(*ms),
        JsonTime::Text(t) => DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    }
    .ok_or_else(|| bad(format!("[{i}].time: not RFC 3339 or Unix milliseconds")))?;
    if !(-90.0..=90.0).contains(&j.lat) || !(-180.0..=180.0).contains(&j.lon) {
        return Err(bad(format!(
            "[{i}]: lat/lon {}/{} out of range",
            j.lat, j.lon
        )));
    }
    let finite = [j.speed_kmh, j.course, j.altitude];
    if finite.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!("[{i}]: speed/course/altitude must be numbers")));
    }
    let mut p = Position::new(fix_time, j.valid, j.lat, j.lon);
    p.speed_kmh = j.speed_kmh;
    p.course = j.course;
    p.altitude = j.altitude;
    p.satellites = j.satellites;
    p.ignition = j.ignition;
    p.motion = j.motion;
    p.odometer_m = j.odometer_m;
    p.power_v = j.power_v;
    p.inputs = j.inputs;
    p.outputs = j.outputs;
    let mut attrs = Attributes::with_capacity(j.attributes.len() + j.other.len());
    for (k, v) in j.attributes.into_iter().chain(j.other) {
        let value = match v {
            serde_json::Value::Bool(b) => AttrValue::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => AttrValue::Int(i),
                None => AttrValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => AttrValue::Text(s.into()),
            serde_json::Value::Null => continue,
            other => AttrValue::Text(other.to_string().into()),
        };
        attrs.push(AttrKey::Dyn(k.into()), value);
    }
    p.attrs = attrs;
    Ok(p)
}

/// A command for a JSON device, as published on its command topic.
pub fn encode_command(cmd: &super::DeviceCommand) -> Bytes {
    let (command, text) = match &cmd.body {
        super::CommandBody::EngineStop => ("engine_stop", None),
        super::CommandBody::EngineResume => ("engine_resume", None),
        super::CommandBody::Text(t) => ("text", Some(t.as_str())),
    };
    let mut v = serde_json::json!({ "seq": cmd.seq, "command": command });
    if let Some(t) = text {
        v["text"] = serde_json::Value::String(t.to_string());
    }
    Bytes::from(v.to_string())
}

/// A device's answer on its response topic: `{"seq": 7, "success": true, "text": "…"}`
/// (every field optional). A payload that is not such an object is kept as plain text.
pub fn decode_response(payload: &[u8]) -> super::CommandResponse {
    #[derive(Deserialize)]
    struct R {
        seq: Option<u32>,
        success: Option<bool>,
        text: Option<String>,
    }
    match serde_json::from_slice::<R>(payload) {
        Ok(r) => super::CommandResponse {
            text: r.text.unwrap_or_default(),
            success: r.success,
            seq: r.seq,
        },
        Err(_) => super::CommandResponse {
            text: String::from_utf8_lossy(payload).into_owned(),
            success: None,
            seq: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn full_object_decodes_every_field() {
        let d = decode(br#"{"device_id":"861230043958102","time":"2026-11-20T12:00:00+03:00",
            "lat":55.7512,"lon":37.6184,"speed_kmh":42.5,"course":270,"altitude":142,"satellites":11,
            "ignition":true,"motion":false,"odometer_m":120000,"power_v":13.8,"inputs":5,"outputs":1,
            "attributes":{"rssi":-71,"fw":"1.2","temp":21.5,"gone":null,"obj":{"a":1}}}"#)
            .unwrap();
        assert_eq!(d.device, Some(DeviceId::new("861230043958102")));
        let p = &d.positions[0];
        assert_eq!(
            p.fix_time,
            Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap()
        );
        assert!(p.valid, "valid defaults to true");
        assert_eq!(
            (p.lat, p.lon, p.speed_kmh, p.course),
            (55.7512, 37.6184, 42.5, 270.0)
        );
        assert_eq!(p.satellites, Some(11));
        assert_eq!((p.ignition, p.motion), (Some(true), Some(false)));
        assert_eq!(
            (p.inputs, p.outputs, p.power_v),
            (Some(5), Some(1), Some(13.8))
        );
        assert_eq!(
            p.attrs.to_json(),
            serde_json::json!({"rssi": -71, "fw": "1.2", "temp": 21.5, "obj": "{\"a\":1}"})
        );
    }

    #[test]
    fn unknown_fields_become_attributes() {
        let d = decode(br#"{"time":0,"lat":1,"lon":2,"accuracy":4.5,"battery":87}"#).unwrap();
        assert_eq!(
            d.positions[0].attrs.to_json(),
            serde_json::json!({"accuracy": 4.5, "battery": 87})
        );
    }

    #[test]
    fn array_with_millis_and_no_device() {
        let d = decode(
            br#"[{"time":1763629200000,"lat":1,"lon":2,"valid":false},
                            {"time":1763629205000,"lat":1.1,"lon":2}]"#,
        )
        .unwrap();
        assert_eq!(d.device, None);
        assert_eq!(d.positions.len(), 2);
        assert!(!d.positions[0].valid);
        assert_eq!(d.positions[1].fix_time.timestamp(), 1_763_629_205);
    }

    #[test]
    fn bad_payloads_are_errors_never_panics() {
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"{}",
            br#"{"time":"yesterday","lat":1,"lon":2}"#,
            br#"{"time":0,"lat":91,"lon":2}"#,
            br#"{"time":0,"lat":1,"lon":"2"}"#,
            br#"[{"device_id":"a","time":0,"lat":1,"lon":2},{"device_id":"b","time":0,"lat":1,"lon":2}]"#,
            br#"{"device_id":"","time":0,"lat":1,"lon":2}"#,
            b"\x00\x00\x00\x00\xff",
        ] {
            let e = decode(bad).unwrap_err();
            assert_eq!(e.protocol, NAME);
        }
    }

    #[test]
    fn commands_and_responses_round_trip_as_json() {
        let cmd = super::super::DeviceCommand {
            seq: 7,
            body: super::super::CommandBody::EngineStop,
        };
        let v: serde_json::Value = serde_json::from_slice(&encode_command(&cmd)).unwrap();
        assert_eq!(v, serde_json::json!({"seq": 7, "command": "engine_stop"}));
        let r = decode_response(br#"{"seq":7,"success":true,"text":"relay on"}"#);
        assert_eq!(
            (r.seq, r.success, r.text.as_str()),
            (Some(7), Some(true), "relay on")
        );
        let r = decode_response(b"DOUT1:1");
        assert_eq!((r.seq, r.text.as_str()), (None, "DOUT1:1"));
    }
}
