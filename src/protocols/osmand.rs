//! OsmAnd / Traccar Client: phone apps (and a few trackers) reporting over plain HTTP.
//!
//! Each report is one HTTP/1.1 request on a keep-alive TCP connection: `GET` or `POST` with
//! the fields as query parameters (`id`, `lat`, `lon`, `timestamp`, `speed` in knots…), the
//! same parameters as a form body, or a JSON body in the background-geolocation layout
//! (`{"location": {"coords": {…}, "timestamp": …, …}, "device_id": …}`) that Traccar Client
//! 8+ sends. The device is identified in every request. The answer is `200 OK` with an empty
//! body, or `400 Bad Request` for a request that is not a usable report.
//! Notes in our own words and the real packets: `protocols/osmand/`.

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::util::{from_millis, from_secs};
use super::{
    DecodeCtx, DecodeError, Decoded, FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position, KNOTS_TO_KMH};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "osmand";
/// Largest request accepted (headers and body). A report is a few hundred bytes; batched
/// JSON uploads of a few hundred locations stay well under this.
pub const MAX_FRAME: usize = 256 * 1024;
/// Most header lines a request may carry.
const MAX_HEADERS: usize = 32;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5055,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(OsmAndSession::new()),
};

/// The answer to a stored report.
pub const RESPONSE_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
/// The answer to a request that is not a report (no device id, no location, bad body).
pub const RESPONSE_BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

/// OsmAnd state of one HTTP connection. HTTP reports are self-contained: nothing is kept.
#[derive(Default)]
pub struct OsmAndSession;

impl OsmAndSession {
    pub fn new() -> Self {
        OsmAndSession
    }
}

impl Session for OsmAndSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        // Line ends left between keep-alive requests.
        let blank = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            return Ok(FrameCut::Skip(blank));
        }
        if buf.is_empty() {
            return Ok(FrameCut::NeedMore);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_FRAME {
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::TooLarge,
                        0,
                        "request head over the limit",
                    ));
                }
                return Ok(FrameCut::NeedMore);
            }
            Err(e) => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    format!("HTTP request: {e}"),
                ))
            }
        };
        if header(req.headers, "transfer-encoding")
            .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
        {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Unsupported,
                0,
                "chunked request body",
            ));
        }
        let body_len = match header(req.headers, "content-length") {
            None => 0,
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    format!("Content-Length {v:?}"),
                )
            })?,
        };
        let total = head_len.saturating_add(body_len);
        if total > MAX_FRAME {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                0,
                format!("request of {total} bytes"),
            ));
        }
        Ok(if buf.len() >= total {
            FrameCut::Frame(total)
        } else {
            FrameCut::NeedMore
        })
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(frame) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Truncated,
                    frame.len(),
                    "incomplete request head",
                ))
            }
            Err(e) => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    format!("HTTP request: {e}"),
                ))
            }
        };
        let body = frame.get(head_len..).unwrap_or_default();
        let uri = req.path.unwrap_or("/");
        let json = header(req.headers, "content-type").is_some_and(|c| {
            c.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
        let report = if json {
            decode_json(body, ctx)
        } else {
            let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
            let query = if query.is_empty() {
                String::from_utf8_lossy(body).into_owned()
            } else {
                query.to_string()
            };
            Ok(decode_query(&query, ctx))
        };
        Ok(match report {
            Ok(d) => d,
            Err(why) => Decoded {
                reply: Some(Bytes::from_static(RESPONSE_BAD_REQUEST)),
                status: None,
                ..Decoded::kind(why)
            },
        })
    }

    fn protocol(&self) -> Protocol {
        Protocol::OsmAnd
    }
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `timestamp` as the apps send it: Unix seconds, Unix milliseconds, ISO 8601, or
/// `yyyy-mm-dd hh:mm:ss` (taken as UTC).
pub fn parse_timestamp(v: &str) -> Option<DateTime<Utc>> {
    let v = v.trim();
    if let Ok(n) = v.parse::<i64>() {
        return if n < i64::from(i32::MAX) {
            from_secs(n)
        } else {
            from_millis(n)
        };
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() && f >= 0.0 {
            let ms = if f < f64::from(i32::MAX) {
                f * 1000.0
            } else {
                f
            };
            return from_millis(ms as i64);
        }
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.fZ",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

fn parse_bool(v: &str) -> bool {
    v.eq_ignore_ascii_case("true") || v == "1"
}

/// The alarm names fleet rules know; anything else stays an attribute.
fn known_alarm(v: &str) -> Option<&'static str> {
    Some(match v.trim().to_ascii_lowercase().as_str() {
        "sos" => "sos",
        "power_cut" | "powercut" => "power_cut",
        "vibration" => "vibration",
        "overspeed" => "overspeed",
        "low_battery" | "lowbattery" => "low_battery",
        "geofence_enter" | "geofenceenter" => "geofence_enter",
        "geofence_exit" | "geofenceexit" => "geofence_exit",
        "fall_down" | "falldown" => "fall_down",
        "tampering" => "tampering",
        "movement" => "movement",
        "accident" => "accident",
        _ => return None,
    })
}

/// A free-form value: integer, number, boolean, or text.
fn loose_value(v: &str) -> AttrValue {
    if let Ok(i) = v.parse::<i64>() {
        AttrValue::Int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        AttrValue::Float(f)
    } else if v == "true" || v == "false" {
        AttrValue::Bool(v == "true")
    } else {
        AttrValue::Text(v.into())
    }
}

fn num(v: &str) -> Option<f64> {
    v.trim().parse::<f64>().ok().filter(|f| f.is_finite())
}

fn decode_query(query: &str, ctx: &DecodeCtx) -> Decoded {
    let mut device = None;
    let mut time = None;
    let mut lat = None;
    let mut lon = None;
    let mut p = Position::new(ctx.now, true, 0.0, 0.0);
    let mut cells: Vec<String> = Vec::new();
    let mut wifis: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = url_decode(k);
        let value = url_decode(v);
        let value = value.trim();
        match key.as_str() {
            "id" | "deviceid" => {
                if !value.is_empty() {
                    device = Some(DeviceId::new(value));
                }
            }
            "valid" => p.valid = parse_bool(value),
            "timestamp" => time = parse_timestamp(value),
            "lat" => lat = num(value),
            "lon" => lon = num(value),
            "location" => {
                if let Some((a, b)) = value.split_once(',') {
                    lat = num(a);
                    lon = num(b);
                }
            }
            "cell" => cells.push(value.to_string()),
            "wifi" => wifis.push(value.to_string()),
            "speed" => {
                if let Some(s) = num(value) {
                    p.speed_kmh = s * KNOTS_TO_KMH;
                }
            }
            "bearing" | "heading" => {
                if let Some(c) = num(value) {
                    p.course = c;
                }
            }
            "altitude" => {
                if let Some(a) = num(value) {
                    p.altitude = a;
                }
            }
            "accuracy" | "hdop" => {
                if let Some(f) = num(value) {
                    p.attrs.float(
                        if key == "accuracy" {
                            "accuracy"
                        } else {
                            "hdop"
                        },
                        f,
                    );
                }
            }
            // Battery level in percent, as the JSON form reports it.
            "batt" => {
                if let Some(f) = num(value) {
                    p.attrs.int("battery_level", f.round() as i64);
                }
            }
            "ignition" => p.ignition = Some(parse_bool(value)),
            "motion" => p.motion = Some(parse_bool(value)),
            "charge" => p.attrs.flag("charge", parse_bool(value)),
            "driverUniqueId" => p.attrs.text("driver_unique_id", value),
            "alarm" => match known_alarm(value) {
                Some(a) => p.alarm = Some(a),
                None => p.attrs.text("alarm", value),
            },
            // Push token of the Traccar Client: not a report field.
            "notificationToken" => {}
            _ => p.attrs.push(AttrKey::Dyn(key.into()), loose_value(value)),
        }
    }
    if !cells.is_empty() {
        p.attrs.text("cells", cells.join(";"));
    }
    if !wifis.is_empty() {
        p.attrs.text("wifi", wifis.join(";"));
    }
    let Some(device) = device else {
        return bad(MessageKind::NoDevice);
    };
    if let Some(t) = time {
        p.fix_time = t;
    }
    let mut d = Decoded {
        device: Some(device),
        ..Decoded::kind(MessageKind::Data)
    };
    match (lat, lon) {
        (Some(lat), Some(lon)) if lat.abs() <= 90.0 && lon.abs() <= 180.0 => {
            p.lat = lat;
            p.lon = lon;
            d.positions.push(p);
        }
        // Cell towers / Wi-Fi without GPS: kept as device state.
        _ if !cells.is_empty() || !wifis.is_empty() => {
            d.kind = MessageKind::Lbs;
            d.status = Some(status_of(p));
        }
        _ => {
            return Decoded {
                device: d.device,
                ..bad(MessageKind::NoLocation)
            }
        }
    }
    d.reply = Some(Bytes::from_static(RESPONSE_OK));
    d
}

fn bad(kind: MessageKind) -> Decoded {
    Decoded {
        reply: Some(Bytes::from_static(RESPONSE_BAD_REQUEST)),
        ..Decoded::kind(kind)
    }
}

fn status_of(p: Position) -> Attributes {
    let mut a = p.attrs;
    if let Some(v) = p.ignition {
        a.flag("ignition", v);
    }
    if let Some(v) = p.motion {
        a.flag("motion", v);
    }
    if let Some(v) = p.alarm {
        a.text("alarm", v);
    }
    a
}

fn json_attr(v: &Value) -> Option<AttrValue> {
    Some(match v {
        Value::Bool(b) => AttrValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AttrValue::Int(i),
            None => AttrValue::Float(n.as_f64()?),
        },
        Value::String(s) => AttrValue::Text(s.as_str().into()),
        _ => return None,
    })
}

fn json_f64(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|f| f.is_finite())
}

fn decode_json(body: &[u8], ctx: &DecodeCtx) -> Result<Decoded, MessageKind> {
    let root: Value = serde_json::from_slice(body).map_err(|_| MessageKind::BadJson)?;
    let id = match root.get("device_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(MessageKind::NoDevice),
    };
    // Batched uploads carry `location` as an array; each element is one report.
    let locations: Vec<&Value> = match root.get("location") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(l @ Value::Object(_)) => vec![l],
        _ => return Err(MessageKind::NoLocation),
    };
    let mut d = Decoded {
        device: Some(DeviceId::new(id)),
        ..Decoded::kind(MessageKind::Data)
    };
    for loc in locations {
        match json_location(loc, ctx) {
            Ok(p) => d.positions.push(p),
            Err(a) => d.status = Some(a),
        }
    }
    if d.positions.is_empty() && d.status.is_none() {
        return Err(MessageKind::NoLocation);
    }
    if d.positions.is_empty() {
        d.kind = MessageKind::Status;
    }
    d.reply = Some(Bytes::from_static(RESPONSE_OK));
    Ok(d)
}

/// One background-geolocation location object: a fix, or its attributes when it has no
/// coordinates.
fn json_location(loc: &Value, ctx: &DecodeCtx) -> Result<Position, Attributes> {
    let time = loc.get("timestamp").and_then(|t| match t {
        Value::String(s) => parse_timestamp(s),
        Value::Number(n) => n.as_i64().and_then(|n| parse_timestamp(&n.to_string())),
        _ => None,
    });
    let mut p = Position::new(time.unwrap_or(ctx.now), true, 0.0, 0.0);
    if let Some(e) = loc.get("event").and_then(Value::as_str) {
        p.attrs.text("event", e);
    }
    if let Some(m) = loc.get("is_moving").and_then(Value::as_bool) {
        p.motion = Some(m);
    }
    if let Some(o) = json_f64(loc.get("odometer")) {
        p.odometer_m = Some(o);
    }
    if let Some(m) = loc.get("mock").and_then(Value::as_bool) {
        p.attrs.flag("mock", m);
    }
    if let Some(a) = loc
        .get("activity")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
    {
        p.attrs.text("activity", a);
    }
    if let Some(b) = loc.get("battery") {
        if let Some(level) = json_f64(b.get("level")).filter(|l| *l >= 0.0) {
            p.attrs.int("battery_level", (level * 100.0).round() as i64);
        }
        if b.get("is_charging").and_then(Value::as_bool) == Some(true) {
            p.attrs.flag("charge", true);
        }
    }
    if let Some(a) = loc.get("alarm").and_then(Value::as_str) {
        match known_alarm(a) {
            Some(k) => p.alarm = Some(k),
            None => p.attrs.text("alarm", a),
        }
    }
    if let Some(Value::Object(extras)) = loc.get("extras") {
        for (k, v) in extras {
            if k == "alarm" && (p.alarm.is_some() || loc.get("alarm").is_some()) {
                continue;
            }
            if let Some(v) = json_attr(v) {
                p.attrs.push(AttrKey::Dyn(k.as_str().into()), v);
            }
        }
    }
    let coords = loc.get("coords");
    let lat = json_f64(coords.and_then(|c| c.get("latitude")));
    let lon = json_f64(coords.and_then(|c| c.get("longitude")));
    let (Some(lat), Some(lon)) = (lat, lon) else {
        return Err(status_of(p));
    };
    if lat.abs() > 90.0 || lon.abs() > 180.0 {
        return Err(status_of(p));
    }
    let c = coords.unwrap_or(&Value::Null);
    p.lat = lat;
    p.lon = lon;
    // Speed in m/s and heading in degrees; -1 means unknown.
    if let Some(s) = json_f64(c.get("speed")).filter(|s| *s >= 0.0) {
        p.speed_kmh = s * 3.6;
    }
    if let Some(h) = json_f64(c.get("heading")).filter(|h| *h >= 0.0) {
        p.course = h;
    }
    if let Some(a) = json_f64(c.get("altitude")) {
        p.altitude = a;
    }
    if let Some(a) = json_f64(c.get("accuracy")).filter(|a| *a >= 0.0) {
        p.attrs.float("accuracy", a);
    }
    Ok(p)
}

/// A Traccar Client style query report, as a full HTTP request (used by tests and the load
/// simulator). Speed is given in km/h and sent in knots, as the apps do.
pub fn encode_query_request(
    id: &str,
    time: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    extra: &[(&str, &str)],
) -> Bytes {
    let mut uri = format!(
        "/?id={id}&timestamp={}&lat={lat}&lon={lon}&speed={}",
        time.timestamp(),
        speed_kmh / KNOTS_TO_KMH
    );
    for (k, v) in extra {
        uri.push_str(&format!("&{k}={v}"));
    }
    Bytes::from(format!(
        "POST {uri} HTTP/1.1\r\nHost: fleetgate\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// A background-geolocation JSON report, as a full HTTP request. Speed in km/h, sent in m/s.
pub fn encode_json_request(
    id: &str,
    time: DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
) -> Bytes {
    let body = serde_json::json!({
        "location": {
            "timestamp": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "coords": {"latitude": lat, "longitude": lon, "speed": speed_kmh / 3.6, "heading": -1, "accuracy": 5, "altitude": 0},
            "is_moving": true,
            "battery": {"level": 0.5, "is_charging": false},
            "extras": {}
        },
        "device_id": id
    })
    .to_string();
    Bytes::from(format!(
        "POST / HTTP/1.1\r\nHost: fleetgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

#[cfg(test)]
mod tests;
