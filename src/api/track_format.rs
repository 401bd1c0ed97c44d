//! A track as GeoJSON, CSV or GPX 1.1, written straight into one `String`: no `serde_json::Value`
//! nor `String` per point (a car-day is 8,640 fixes; `benches/track_formats.rs` measures these
//! against the JSON rows, docs/performance.md has the figures).
//!
//! - GeoJSON (RFC 7946): one Feature; its geometry a LineString of `[lon, lat]` (a Point for a
//!   single fix, `null` for none: a LineString needs two positions); per-point `times` and
//!   `speeds_kmh` in `properties`, index for index with the coordinates.
//! - CSV (RFC 4180): a header line, then one line per fix; empty cells for unknown values.
//! - GPX 1.1 (topografix.com/GPX/1/1): one `trk` with one `trkseg`; `ele`, `time`, `sat` per
//!   point, in the schema's order.

use std::fmt::Write;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde_json::ser::{CompactFormatter, Formatter};

use crate::model::DeviceId;
use crate::pipeline::store::{StorageError, Store, StoredPosition, TrackColumns, TrackPoint};

/// A track's representation on `GET /vehicles/{id}/track?format=…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    GeoJson,
    Csv,
}

/// A track as its format reads it: what the format shows and no more. Only the JSON rows
/// carry `attributes` (the larger part of a packed chunk), CSV shows every other column, and a
/// GeoJSON line only time, coordinates and speed ([`Store::track_points`]: decoded without a
/// position per fix; docs/performance.md).
#[derive(Clone, Debug, PartialEq)]
pub enum Track {
    Json(Vec<StoredPosition>),
    Csv(Vec<StoredPosition>),
    GeoJson(Vec<TrackPoint>),
}

impl Format {
    /// `device`'s fixes of `from <= fix time < to` (at most `limit`), read as this format
    /// shows them.
    pub async fn read(
        self,
        store: &dyn Store,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Track, StorageError> {
        Ok(match self {
            Format::Json => Track::Json(
                store
                    .track_columns(device, from, to, limit, TrackColumns::All)
                    .await?,
            ),
            Format::Csv => Track::Csv(
                store
                    .track_columns(device, from, to, limit, TrackColumns::WithoutAttributes)
                    .await?,
            ),
            Format::GeoJson => Track::GeoJson(store.track_points(device, from, to, limit).await?),
        })
    }

    /// A track without fixes (a vehicle with no tracker).
    pub fn empty(self) -> Track {
        match self {
            Format::Json => Track::Json(Vec::new()),
            Format::Csv => Track::Csv(Vec::new()),
            Format::GeoJson => Track::GeoJson(Vec::new()),
        }
    }
}

/// The response body and content type of a track read from storage: what the `/track`
/// handler answers (and `benches/track_read.rs` times).
pub fn render(meta: &TrackMeta, track: Track) -> Response {
    match track {
        // What `axum::Json` of the rows answered: the same bytes, the same content type.
        Track::Json(rows) => ([(CONTENT_TYPE, "application/json")], json(&rows)).into_response(),
        Track::GeoJson(points) => (
            [(CONTENT_TYPE, "application/geo+json")],
            geojson(meta, &points),
        )
            .into_response(),
        Track::Csv(rows) => (
            [(CONTENT_TYPE, "text/csv; charset=utf-8; header=present")],
            csv(&rows),
        )
            .into_response(),
    }
}

/// What the formats say about the track besides its points.
#[derive(Clone, Debug, Default)]
pub struct TrackMeta<'a> {
    pub vehicle: &'a str,
    pub device: &'a str,
    /// Set when part of the range asked for has expired: positions start this day.
    pub retained_from: Option<NaiveDate>,
}

/// Text as the formats write it: UTF-8 bytes, appended without a check per piece (a `String`'s
/// `push_str` of each digit run checked it again: a fifth of a GeoJSON car-day). Only `str`,
/// `char` and ASCII digits and punctuation ([`Text::ascii`]) go in, so it stays UTF-8.
#[derive(Default)]
pub struct Text(Vec<u8>);

impl Text {
    fn with_capacity(n: usize) -> Self {
        Text(Vec::with_capacity(n))
    }

    fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn push(&mut self, c: char) {
        if c.is_ascii() {
            self.0.push(c as u8);
        } else {
            let mut b = [0u8; 4];
            self.0.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }

    /// Digits and punctuation made here (debug builds check they are ASCII).
    fn ascii(&mut self, b: &[u8]) {
        debug_assert!(b.is_ascii());
        self.0.extend_from_slice(b);
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// Fix times as [`push_time`] writes them, the date part made once per UTC day (a track's
/// fixes are of a day or a few) and the time of day from the seconds since midnight: a third
/// of a GeoJSON car-day's rendering was the date fields taken apart per fix.
#[derive(Default)]
pub struct TimeText {
    /// The day (since the epoch) whose `YYYY-MM-DDT` is in `date`; `date` empty when that day
    /// is outside years 0–9999 (then [`push_time`] writes it).
    day: Option<i64>,
    date: Text,
}

impl TimeText {
    pub fn push(&mut self, out: &mut Text, t: DateTime<Utc>) {
        let secs = t.timestamp();
        let nanos = t.timestamp_subsec_nanos();
        let day = secs.div_euclid(86_400);
        if self.day != Some(day) {
            self.day = Some(day);
            self.date.0.clear();
            if (0..=9999).contains(&t.year()) {
                push_time(&mut self.date, t);
                self.date.0.truncate("YYYY-MM-DDT".len());
            }
        }
        // A leap second (nanoseconds past 10⁹) or a year push_time spells differently.
        if self.date.0.is_empty() || nanos >= 1_000_000_000 {
            return push_time(out, t);
        }
        let of_day = secs.rem_euclid(86_400) as u32;
        let mut buf = *b"00:00:00.000Z";
        put_two(&mut buf[0..2], of_day / 3600);
        put_two(&mut buf[3..5], of_day / 60 % 60);
        put_two(&mut buf[6..8], of_day % 60);
        let ms = nanos / 1_000_000;
        let text = if ms > 0 {
            buf[9] = b'0' + (ms / 100) as u8;
            put_two(&mut buf[10..12], ms % 100);
            &buf[..]
        } else {
            buf[8] = b'Z';
            &buf[..9]
        };
        out.0.extend_from_slice(&self.date.0);
        out.ascii(text);
    }
}

fn put_two(at: &mut [u8], v: u32) {
    at[0] = b'0' + (v / 10 % 10) as u8;
    at[1] = b'0' + (v % 10) as u8;
}

/// `2026-12-07T10:15:30Z`, with `.mmm` when the fix has milliseconds: RFC 3339, without
/// chrono's per-call format parsing.
pub fn push_time(out: &mut Text, t: DateTime<Utc>) {
    fn two(out: &mut Text, v: u32) {
        out.push((b'0' + (v / 10) as u8) as char);
        out.push((b'0' + (v % 10) as u8) as char);
    }
    let y = t.year();
    if (0..=9999).contains(&y) {
        let y = y as u32;
        two(out, y / 100);
        two(out, y % 100);
    } else {
        let _ = write!(out, "{y:04}");
    }
    out.push('-');
    two(out, t.month());
    out.push('-');
    two(out, t.day());
    out.push('T');
    two(out, t.hour());
    out.push(':');
    two(out, t.minute());
    out.push(':');
    two(out, t.second());
    let ms = t.timestamp_subsec_millis();
    if ms > 0 {
        out.push('.');
        out.push((b'0' + (ms / 100) as u8) as char);
        two(out, ms % 100);
    }
    out.push('Z');
}

/// A finite number as JSON, CSV and XML all take it: the shortest text that reads back as the
/// same `f64` (`ryu`, faster than `Display`; whole numbers as digits), never in exponent form (not an
/// `xsd:decimal`; then `Display`, which never uses one), without a trailing `.0`. A
/// non-finite one, which storage never holds, as 0.
fn push_num(out: &mut Text, v: f64) {
    if !v.is_finite() {
        out.push('0');
        return;
    }
    // Speeds, courses, altitudes and odometers are mostly whole numbers: digits directly
    // (ryu spent 60 % of the CSV's time on them).
    // (Casts, not `fract`/`round`: those are libm calls on baseline x86-64, 13 % of a
    // GeoJSON car-day.)
    if v.abs() < 1e15 && (v as i64) as f64 == v {
        if v < 0.0 {
            out.push('-');
        }
        push_digits(out, v.abs() as u64);
        return;
    }
    if push_seven_decimals(&mut out.0, v) {
        return;
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v);
    if s.contains('e') {
        let _ = write!(out, "{v}");
    } else {
        out.push_str(s.strip_suffix(".0").unwrap_or(s));
    }
}

/// `v` written with at most seven decimals when that reads back as `v`, which is then also
/// the shortest such text, the one `ryu` writes (any shorter decimal is ≥ 10⁻⁷ away, far
/// more than a double's spacing below 10⁸): coordinates stored as 10⁻⁷ degrees, as most
/// trackers send them. `ryu` was half of a GeoJSON car-day's rendering. False, and nothing
/// written, otherwise.
fn push_seven_decimals(out: &mut Vec<u8>, v: f64) -> bool {
    const SCALE: f64 = 1e7;
    if v.abs() >= 1e8 {
        return false;
    }
    let x = v * SCALE;
    let k = (x + if x < 0.0 { -0.5 } else { 0.5 }) as i64;
    if k as f64 / SCALE != v {
        return false;
    }
    if k < 0 {
        out.push(b'-');
    }
    let (whole, mut frac) = (k.unsigned_abs() / 10_000_000, k.unsigned_abs() % 10_000_000);
    put_digits(out, whole);
    if frac > 0 {
        let mut digits = *b".0000000";
        let mut end = digits.len();
        while frac % 10 == 0 {
            frac /= 10;
            end -= 1;
        }
        let mut i = end;
        while frac > 0 {
            i -= 1;
            digits[i] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        out.extend_from_slice(&digits[..end]);
    }
    true
}

/// A satellite count (at most 99 once filtered, up to 65,535 stored).
fn push_small(out: &mut Text, n: u16) {
    push_digits(out, u64::from(n));
}

fn push_digits(out: &mut Text, n: u64) {
    put_digits(&mut out.0, n);
}

fn put_digits(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_json_str(out: &mut Text, s: &str) {
    // serde_json's escaping, once per document.
    out.push_str(&serde_json::Value::String(s.to_string()).to_string());
}

/// The track as the JSON array of `api::rows::Position` (`/track`, the default format), byte for
/// byte what serde_json makes of `rows::all::<_, rows::Position>(points)` — field order, number
/// and time formatting, `alarm` left out when none — written straight into one buffer: no move
/// into `rows::Position`, no serde machinery per field (a car-day is 8,640 rows; the tests
/// compare the two on varied rows).
pub fn json(points: &[StoredPosition]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + points.len() * 420);
    out.push(b'[');
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"time\":");
        json_time(&mut out, p.time);
        out.extend_from_slice(b",\"server_time\":");
        json_time(&mut out, p.server_time);
        out.extend_from_slice(if p.valid {
            b",\"valid\":true,\"lat\":"
        } else {
            b",\"valid\":false,\"lat\":"
        });
        json_f64(&mut out, p.lat);
        out.extend_from_slice(b",\"lon\":");
        json_f64(&mut out, p.lon);
        out.extend_from_slice(b",\"speed_kmh\":");
        json_f64(&mut out, p.speed_kmh);
        out.extend_from_slice(b",\"course\":");
        json_f64(&mut out, p.course);
        out.extend_from_slice(b",\"altitude\":");
        json_f64(&mut out, p.altitude);
        out.extend_from_slice(b",\"satellites\":");
        json_uint(&mut out, p.satellites.map(u64::from));
        out.extend_from_slice(b",\"ignition\":");
        json_bool(&mut out, p.ignition);
        out.extend_from_slice(b",\"motion\":");
        json_bool(&mut out, p.motion);
        out.extend_from_slice(b",\"odometer_m\":");
        json_opt_f64(&mut out, p.odometer_m);
        out.extend_from_slice(b",\"gps_odometer_m\":");
        json_f64(&mut out, p.gps_odometer_m);
        out.extend_from_slice(b",\"inputs\":");
        json_uint(&mut out, p.inputs.map(u64::from));
        out.extend_from_slice(b",\"outputs\":");
        json_uint(&mut out, p.outputs.map(u64::from));
        out.extend_from_slice(b",\"power_v\":");
        json_opt_f64(&mut out, p.power_v);
        if let Some(a) = &p.alarm {
            out.extend_from_slice(b",\"alarm\":");
            json_value(&mut out, a);
        }
        out.extend_from_slice(b",\"attributes\":");
        out.extend_from_slice(p.attributes.as_str().as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    out
}

/// serde_json's own output for a value (strings and the attributes map).
fn json_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a `Value` into a `Vec` cannot fail.
    serde_json::to_writer(&mut *out, v).expect("serde_json writes into a Vec");
}

/// As serde_json writes an `f64`: its own formatter (the shortest form that reads back, `150.0`,
/// `1e+16`), `null` when not finite.
fn json_f64(out: &mut Vec<u8>, v: f64) {
    // serde_json writes `ryu`'s text. For whole numbers below 10¹⁵ that is the digits and
    // `.0` (but `-0.0`), for others at least 10⁻⁵ (no exponent) with at most seven decimals
    // the text `push_seven_decimals` makes: speeds, courses and coordinates as stored.
    if v.abs() < 1e15 && (v as i64) as f64 == v && !(v == 0.0 && v.is_sign_negative()) {
        if v < 0.0 {
            out.push(b'-');
        }
        put_digits(out, v.abs() as u64);
        out.extend_from_slice(b".0");
        return;
    }
    if v.abs() >= 1e-5 && push_seven_decimals(out, v) {
        return;
    }
    if v.is_finite() {
        // Writing into a `Vec` cannot fail.
        let _ = CompactFormatter.write_f64(out, v);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn json_opt_f64(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) => json_f64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_bool(out: &mut Vec<u8>, v: Option<bool>) {
    out.extend_from_slice(match v {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
}

fn json_uint(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(n) => {
            let _ = CompactFormatter.write_u64(out, n);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A time as chrono serialises a `DateTime<Utc>` (RFC 3339, `Z`, the fraction in the fewest of
/// 3, 6 or 9 digits that hold it, none when zero; a leap second as `:60`), quoted.
fn json_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    let y = t.year();
    if !(0..=9999).contains(&y) {
        // Signed years are chrono's business; storage never holds one.
        json_value(out, &t);
        return;
    }
    fn two(out: &mut Vec<u8>, v: u32) {
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    }
    fn digits(out: &mut Vec<u8>, v: u32, width: u32) {
        for k in (0..width).rev() {
            out.push(b'0' + (v / 10u32.pow(k) % 10) as u8);
        }
    }
    let (mut sec, mut nano) = (t.second(), t.nanosecond());
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    out.push(b'"');
    two(out, y as u32 / 100);
    two(out, y as u32 % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, sec);
    if nano != 0 {
        out.push(b'.');
        if nano % 1_000_000 == 0 {
            digits(out, nano / 1_000_000, 3);
        } else if nano % 1_000 == 0 {
            digits(out, nano / 1_000, 6);
        } else {
            digits(out, nano, 9);
        }
    }
    out.extend_from_slice(b"Z\"");
}

/// The track as one GeoJSON Feature.
pub fn geojson(meta: &TrackMeta, points: &[TrackPoint]) -> Vec<u8> {
    let mut out = Text::with_capacity(128 + points.len() * 72);
    out.push_str(r#"{"type":"Feature","geometry":"#);
    match points {
        [] => out.push_str("null"),
        [p] => {
            out.push_str(r#"{"type":"Point","coordinates":["#);
            push_num(&mut out, p.lon);
            out.push(',');
            push_num(&mut out, p.lat);
            out.push_str("]}");
        }
        _ => {
            out.push_str(r#"{"type":"LineString","coordinates":["#);
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('[');
                push_num(&mut out, p.lon);
                out.push(',');
                push_num(&mut out, p.lat);
                out.push(']');
            }
            out.push_str("]}");
        }
    }
    out.push_str(r#","properties":{"vehicle_id":"#);
    push_json_str(&mut out, meta.vehicle);
    out.push_str(r#","device_id":"#);
    push_json_str(&mut out, meta.device);
    let _ = write!(out, r#","count":{}"#, points.len());
    out.push_str(r#","retained_from":"#);
    match meta.retained_from {
        Some(d) => {
            let _ = write!(out, "\"{d}\"");
        }
        None => out.push_str("null"),
    }
    out.push_str(r#","times":["#);
    let mut times = TimeText::default();
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        times.push(&mut out, p.time);
        out.push('"');
    }
    out.push_str(r#"],"speeds_kmh":["#);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_num(&mut out, p.speed_kmh);
    }
    out.push_str("]}}");
    out.0
}

/// The CSV header line (its columns are a contract: README, openapi.json).
pub const CSV_HEADER: &str =
    "time,lat,lon,speed_kmh,course,altitude,satellites,valid,ignition,odometer_m\n";

/// The track as CSV, one fix per line after [`CSV_HEADER`].
pub fn csv(points: &[StoredPosition]) -> Vec<u8> {
    let mut out = Text::with_capacity(CSV_HEADER.len() + points.len() * 80);
    out.push_str(CSV_HEADER);
    let mut times = TimeText::default();
    for p in points {
        times.push(&mut out, p.time);
        out.push(',');
        push_num(&mut out, p.lat);
        out.push(',');
        push_num(&mut out, p.lon);
        out.push(',');
        push_num(&mut out, p.speed_kmh);
        out.push(',');
        push_num(&mut out, p.course);
        out.push(',');
        push_num(&mut out, p.altitude);
        out.push(',');
        if let Some(n) = p.satellites {
            push_small(&mut out, n);
        }
        out.push_str(if p.valid { ",true," } else { ",false," });
        match p.ignition {
            Some(true) => out.push_str("true"),
            Some(false) => out.push_str("false"),
            None => {}
        }
        out.push(',');
        if let Some(m) = p.odometer_m {
            push_num(&mut out, m);
        }
        out.push('\n');
    }
    out.0
}

fn push_xml(out: &mut Text, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// The track as a GPX 1.1 document.
pub fn gpx(meta: &TrackMeta, points: &[StoredPosition]) -> Vec<u8> {
    let mut out = Text::with_capacity(256 + points.len() * 110);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <gpx version=\"1.1\" creator=\"fleetgate\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n\
         <metadata><name>",
    );
    push_xml(&mut out, meta.vehicle);
    out.push_str("</name>");
    if let Some(d) = meta.retained_from {
        let _ = write!(
            out,
            "<desc>positions before {d} have expired; retained_from {d}</desc>"
        );
    }
    out.push_str("</metadata>\n<trk><name>");
    push_xml(&mut out, meta.vehicle);
    out.push_str("</name><trkseg>\n");
    let mut times = TimeText::default();
    for p in points {
        out.push_str("<trkpt lat=\"");
        push_num(&mut out, p.lat);
        out.push_str("\" lon=\"");
        push_num(&mut out, p.lon);
        out.push_str("\"><ele>");
        push_num(&mut out, p.altitude);
        out.push_str("</ele><time>");
        times.push(&mut out, p.time);
        out.push_str("</time>");
        if let Some(n) = p.satellites {
            out.push_str("<sat>");
            push_small(&mut out, n);
            out.push_str("</sat>");
        }
        out.push_str("</trkpt>\n");
    }
    out.push_str("</trkseg></trk>\n</gpx>\n");
    out.0
}

#[cfg(test)]
mod tests;
