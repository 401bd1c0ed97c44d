//! Domain types shared by every stage: device identity, positions and their attributes.
//!
//! Units are fixed here and converted at the edge (the codecs): degrees as `f64`, speed in
//! km/h, course in degrees, altitude in metres, distances in metres, times as UTC.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A tracker's own identity as it reports it (IMEI for most devices, a terminal id for EGTS).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub String);

impl DeviceId {
    pub fn new(id: impl Into<String>) -> Self {
        DeviceId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fleet's own name for a car (registered through the API; the IMEI when auto-registered).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VehicleId(pub String);

impl VehicleId {
    /// Whether `id` may name a new vehicle: 1 to 128 characters, letters of any script
    /// (Cyrillic plates included), digits, spaces inside and `-_.:#@+()`; no control or
    /// direction-override characters, no path separators, not `.` or `..`, no leading or
    /// trailing space. `Err` says why.
    pub fn check_new(id: &str) -> Result<(), String> {
        if id.is_empty() || id.chars().count() > 128 {
            return Err("vehicle id must be 1 to 128 characters".into());
        }
        if id == "." || id == ".." {
            return Err("vehicle id must not be '.' or '..'".into());
        }
        if id.starts_with(' ') || id.ends_with(' ') {
            return Err("vehicle id must not start or end with a space".into());
        }
        let bad = id
            .chars()
            .find(|c| !(c.is_alphanumeric() || " -_.:#@+()".contains(*c)));
        match bad {
            Some(c) => Err(format!(
                "vehicle id: {:?} is not allowed (letters, digits, spaces and -_.:#@+() only)",
                c
            )),
            None => Ok(()),
        }
    }
}

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a batch of positions came from. Only a session that can carry commands (a TCP
/// connection or an MQTT device session, by its connection id) can give evidence for an engine
/// block; positions from anywhere else (UDP, replays, tests) are stored like any other but never
/// make a car look safe to stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The session with this connection id (`ingest::sessions`).
    Session(u64),
    /// No command-carrying session: UDP datagrams, replays.
    #[default]
    Sessionless,
}

/// Key of a protocol-specific attribute. IO element ids stay numeric so decoding does not
/// format strings on the hot path; they are rendered as `io<N>` when stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrKey {
    /// A numbered IO element / parameter of the device (Teltonika AVL ids, Galileosky tags…).
    Io(u32),
    /// A well-known name chosen by the codec (`"rssi"`, `"alarm"`, `"battery_v"`…).
    Name(&'static str),
    /// A name the device itself sent (Wialon IPS params, Queclink fields).
    Dyn(Box<str>),
}

impl AttrKey {
    /// The stored form of the key.
    pub fn render(&self) -> std::borrow::Cow<'_, str> {
        match self {
            AttrKey::Io(id) => std::borrow::Cow::Owned(format!("io{id}")),
            AttrKey::Name(n) => std::borrow::Cow::Borrowed(n),
            AttrKey::Dyn(n) => std::borrow::Cow::Borrowed(n),
        }
    }
}

/// Value of an attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(Box<str>),
    Bytes(Box<[u8]>),
}

impl AttrValue {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::Int(v) => serde_json::Value::from(*v),
            AttrValue::Float(v) => serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            AttrValue::Bool(v) => serde_json::Value::Bool(*v),
            AttrValue::Text(s) => serde_json::Value::String(s.to_string()),
            AttrValue::Bytes(b) => serde_json::Value::String(hex::encode(b)),
        }
    }
}

/// Ordered protocol-specific attributes of one record. A `Vec`, not a map: records carry a
/// dozen entries at most and are written once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(pub Vec<(AttrKey, AttrValue)>);

impl Attributes {
    pub fn with_capacity(n: usize) -> Self {
        Attributes(Vec::with_capacity(n))
    }
    pub fn push(&mut self, key: AttrKey, value: AttrValue) {
        self.0.push((key, value));
    }
    /// A numbered IO element with an integer value: the bulk of a binary tracker's record.
    #[inline]
    pub fn io_int(&mut self, id: u32, v: i64) {
        self.push_in_place(|| (AttrKey::Io(id), AttrValue::Int(v)));
    }
    #[inline]
    pub fn int(&mut self, key: &'static str, v: i64) {
        self.push_in_place(|| (AttrKey::Name(key), AttrValue::Int(v)));
    }
    #[inline]
    pub fn float(&mut self, key: &'static str, v: f64) {
        self.push_in_place(|| (AttrKey::Name(key), AttrValue::Float(v)));
    }
    pub fn text(&mut self, key: &'static str, v: impl Into<Box<str>>) {
        self.0.push((AttrKey::Name(key), AttrValue::Text(v.into())));
    }
    #[inline]
    pub fn flag(&mut self, key: &'static str, v: bool) {
        self.push_in_place(|| (AttrKey::Name(key), AttrValue::Bool(v)));
    }
    /// Append an entry built from plain values after the room for it is made, so that it is
    /// written straight into its slot. `push` builds the 48-byte entry on the stack first
    /// (it must outlive a possible reallocation) and copies it in 16-byte words over narrow
    /// tag stores: a store-forwarding stall that perf showed as half the cost of a Teltonika
    /// IO element.
    #[inline(always)]
    fn push_in_place(&mut self, entry: impl FnOnce() -> (AttrKey, AttrValue)) {
        self.0.extend(std::iter::once_with(entry));
    }
    pub fn get(&self, key: &AttrKey) -> Option<&AttrValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_name(&self, name: &str) -> Option<&AttrValue> {
        self.0
            .iter()
            .find(|(k, _)| k.render() == name)
            .map(|(_, v)| v)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// The JSON object text of [`Attributes::to_json`], written straight into a string (the
    /// storage hot path: no intermediate map). A key given twice keeps its last value, as in
    /// the map form.
    pub fn to_json_string(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(16 + self.0.len() * 16);
        out.push('{');
        let mut first = true;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if self.0[i + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            match k {
                AttrKey::Io(id) => {
                    let _ = write!(out, "\"io{id}\"");
                }
                AttrKey::Name(n) => json_str(&mut out, n),
                AttrKey::Dyn(n) => json_str(&mut out, n),
            }
            out.push(':');
            match v {
                AttrValue::Int(x) => {
                    let _ = write!(out, "{x}");
                }
                // Debug keeps the fraction (`12.0`), as serde_json writes floats.
                AttrValue::Float(x) if x.is_finite() => {
                    let _ = write!(out, "{x:?}");
                }
                AttrValue::Float(_) => out.push_str("null"),
                AttrValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                AttrValue::Text(t) => json_str(&mut out, t),
                AttrValue::Bytes(b) => {
                    out.push('"');
                    for byte in b.iter() {
                        let _ = write!(out, "{byte:02x}");
                    }
                    out.push('"');
                }
            }
        }
        out.push('}');
        out
    }

    /// JSON object form, as stored and served by the API.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::with_capacity(self.0.len());
        for (k, v) in &self.0 {
            map.insert(k.render().into_owned(), v.to_json());
        }
        serde_json::Value::Object(map)
    }
}

/// `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One fix as a tracker reported it. Fields every fleet rule needs are typed; the rest of a
/// device's report is kept in `attrs`.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    /// When the fix was taken (device clock, UTC).
    pub fix_time: DateTime<Utc>,
    /// The device considers the fix valid (GPS lock).
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    /// Heading in degrees, 0 = north.
    pub course: f64,
    /// Metres above sea level.
    pub altitude: f64,
    pub satellites: Option<u16>,
    pub ignition: Option<bool>,
    /// The device's own movement sensor (Teltonika IO 240).
    pub motion: Option<bool>,
    /// The device's total odometer in metres, when it reports one.
    pub odometer_m: Option<f64>,
    /// Digital inputs as a bit mask, bit 0 = input 1.
    pub inputs: Option<u32>,
    /// Digital outputs as a bit mask, bit 0 = output 1 (the immobiliser relay on most installs).
    pub outputs: Option<u32>,
    /// External (vehicle) supply voltage in volts.
    pub power_v: Option<f64>,
    /// An alarm the device raised with this record (`"sos"`, `"power_cut"`…).
    pub alarm: Option<&'static str>,
    pub attrs: Attributes,
}

impl Position {
    /// A position with the given fix and every optional field empty.
    pub fn new(fix_time: DateTime<Utc>, valid: bool, lat: f64, lon: f64) -> Self {
        Position {
            fix_time,
            valid,
            lat,
            lon,
            speed_kmh: 0.0,
            course: 0.0,
            altitude: 0.0,
            satellites: None,
            ignition: None,
            motion: None,
            odometer_m: None,
            inputs: None,
            outputs: None,
            power_v: None,
            alarm: None,
            attrs: Attributes::default(),
        }
    }
}

/// Knots to km/h, for codecs whose devices report knots.
pub const KNOTS_TO_KMH: f64 = 1.852;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_ids_are_a_safe_character_set() {
        for ok in ["car-17", "А123ВС77", "356307042441101", "Taxi #4 (Moscow)"] {
            assert!(VehicleId::check_new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "nul\u{0}",
            "x\r\ny",
            "rtl\u{202e}",
            "lrm\u{200e}",
            " lead",
            "trail ",
        ] {
            assert!(VehicleId::check_new(bad).is_err(), "{bad:?}");
        }
        assert!(VehicleId::check_new(&"x".repeat(129)).is_err());
    }

    #[test]
    fn typed_appends_equal_plain_pushes_in_order() {
        let mut typed = Attributes::with_capacity(1);
        typed.io_int(239, 1);
        typed.int("rssi", -3);
        typed.float("battery_v", 4.1);
        typed.flag("armed", false);
        typed.io_int(16, i64::MAX);
        let mut plain = Attributes::default();
        plain.push(AttrKey::Io(239), AttrValue::Int(1));
        plain.push(AttrKey::Name("rssi"), AttrValue::Int(-3));
        plain.push(AttrKey::Name("battery_v"), AttrValue::Float(4.1));
        plain.push(AttrKey::Name("armed"), AttrValue::Bool(false));
        plain.push(AttrKey::Io(16), AttrValue::Int(i64::MAX));
        assert_eq!(typed, plain);
        assert_eq!(typed.to_json_string(), plain.to_json_string());
    }

    #[test]
    fn attributes_json_text_equals_the_map_form() {
        let mut a = Attributes::default();
        a.push(AttrKey::Io(239), AttrValue::Int(1));
        a.float("battery_v", 12.0);
        a.float("nan", f64::NAN);
        a.float("tiny", 1e-7);
        a.flag("armed", true);
        a.text("note", "a \"quoted\"\\ line\n\u{1}é");
        a.push(AttrKey::Dyn("adc1".into()), AttrValue::Float(0.25));
        a.push(
            AttrKey::Io(78),
            AttrValue::Bytes(vec![0, 0xab, 0xff].into()),
        );
        a.push(AttrKey::Io(239), AttrValue::Int(0));
        let text = a.to_json_string();
        let parsed: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(parsed, a.to_json(), "{text}");
        assert_eq!(Attributes::default().to_json_string(), "{}");
    }
}
