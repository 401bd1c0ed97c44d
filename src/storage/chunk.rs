//! The packed position format: one device's positions of a time span (a day, in practice) as
//! one byte string, column by column, then compressed with zstd. Pure: no I/O, no clock.
//!
//! Lossless. Every `f64` column is stored as integers when a decimal or minute-based scale
//! reproduces every value of the column bit for bit (Teltonika's 1e-7 degrees, GT06's
//! 1/1,800,000, NMEA's 1/600,000, whole km/h…), by division or by multiplication, whichever the
//! decoder that made the value used; otherwise as raw IEEE bits XORed with the previous value.
//! So a track read back from a chunk equals the rows it was packed from, to the last bit.
//!
//! Layout (before compression), every integer an LEB128 varint, signed ones zigzagged:
//!
//! ```text
//! n
//! fix time       first ms, then delta-of-delta
//! lat, lon       f64 columns (mode, scale, then deltas of the scaled integers)
//! valid          n bytes
//! speed, course, altitude, gps odometer      f64 columns
//! satellites, inputs, outputs                presence bytes + deltas
//! ignition, motion                           n bytes: 0 none, 1 false, 2 true
//! odometer, power                            presence bytes + f64 column of those present
//! alarm          presence bytes + strings
//! server time    deltas of (server time − fix time)
//! attributes     keys, then per key n tag bytes and its int / float / string / JSON streams
//! ```
//!
//! Time, latitude, longitude, validity and speed come first so that [`decode_points`] stops
//! after them. The
//! compressed body is prefixed with one format byte ([`FORMAT`]).

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value;

use crate::pipeline::store::{AttrsJson, StoredPosition, TrackColumns, TrackPoint};

/// The format byte of chunks written by this version.
pub const FORMAT: u8 = 1;

/// zstd level for packing. Chunks are written once per device-day, off the ingest path, and
/// read many times; decompression speed does not depend on the level.
pub const LEVEL: i32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk format {0} is not known to this version")]
    Format(u8),
    #[error("chunk is empty")]
    Empty,
    #[error("chunk is cut short in {0}")]
    Truncated(&'static str),
    #[error("chunk is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("chunk does not decompress: {0}")]
    Zstd(#[from] std::io::Error),
}

/// zstd level for the small chunks the group commit writes (one per packet and day, ~25
/// positions under load): they are packed by the shard that accepted the packet, so their cost
/// is ingest CPU, and compaction packs them again at [`LEVEL`] once the day closes. Measured
/// by `small_chunk_levels` below (release, 25 positions): -1 compresses as small as 1
/// (10.2 bytes per position) in 1.9 µs instead of 5.3 µs; 9 saves another 10 % for 12.5 µs.
pub const HOT_LEVEL: i32 = -1;

/// Packs `points`, which must be in fix-time order (they normally are unique per fix time),
/// at [`LEVEL`].
pub fn encode(points: &[StoredPosition]) -> Vec<u8> {
    encode_at(points, LEVEL)
}

/// [`encode`] at zstd level `level` (the format does not depend on it).
pub fn encode_at(points: &[StoredPosition], level: i32) -> Vec<u8> {
    let attributes: Vec<Value> = points.iter().map(|p| p.attributes.to_value()).collect();
    encode_with(points, &attributes, level)
}

/// [`encode_at`] with each position's attributes given as values, index for index (the
/// group commit's packing has them as values already: no JSON text in between), instead of
/// `points[i].attributes`.
pub fn encode_with(points: &[StoredPosition], attributes: &[Value], level: i32) -> Vec<u8> {
    let body = columns(points, attributes);
    let mut out = Vec::with_capacity(body.len() / 2 + 16);
    out.push(FORMAT);
    // Compressing an in-memory buffer cannot fail short of allocation failure.
    out.extend(compress(&body, level).expect("zstd compresses a buffer"));
    out
}

thread_local! {
    /// One zstd context per thread and level, reused: making a context costs ~10 µs, as much
    /// as compressing a 25-position chunk (`small_chunk_levels`).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(body: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some((l, z)) if *l == level => z.compress(body),
            _ => {
                let mut z = zstd::bulk::Compressor::new(level)?;
                let out = z.compress(body);
                *c = Some((level, z));
                out
            }
        }
    })
}

/// The uncompressed body: every column in turn.
fn columns(points: &[StoredPosition], attributes: &[Value]) -> Vec<u8> {
    debug_assert_eq!(points.len(), attributes.len());
    let mut w = Writer::default();
    w.uint(points.len() as u64);
    w.times(points.iter().map(|p| p.time.timestamp_millis()));
    w.f64s(&points.iter().map(|p| p.lat).collect::<Vec<_>>());
    w.f64s(&points.iter().map(|p| p.lon).collect::<Vec<_>>());
    w.buf.extend(points.iter().map(|p| p.valid as u8));
    w.f64s(&points.iter().map(|p| p.speed_kmh).collect::<Vec<_>>());
    w.f64s(&points.iter().map(|p| p.course).collect::<Vec<_>>());
    w.f64s(&points.iter().map(|p| p.altitude).collect::<Vec<_>>());
    w.f64s(&points.iter().map(|p| p.gps_odometer_m).collect::<Vec<_>>());
    w.opt_ints(points.iter().map(|p| p.satellites.map(i64::from)));
    w.opt_ints(points.iter().map(|p| p.inputs.map(i64::from)));
    w.opt_ints(points.iter().map(|p| p.outputs.map(i64::from)));
    w.opt_bools(points.iter().map(|p| p.ignition));
    w.opt_bools(points.iter().map(|p| p.motion));
    w.opt_f64s(points.iter().map(|p| p.odometer_m));
    w.opt_f64s(points.iter().map(|p| p.power_v));
    w.opt_strs(points.iter().map(|p| p.alarm.as_deref()));
    let mut prev = 0i64;
    for p in points {
        let lag = p.server_time.timestamp_millis() - p.time.timestamp_millis();
        w.int(lag.wrapping_sub(prev));
        prev = lag;
    }
    w.attributes(attributes.iter());
    w.buf
}

/// Every position of a chunk, in the order packed.
pub fn decode(bytes: &[u8]) -> Result<Vec<StoredPosition>, ChunkError> {
    decode_columns(bytes, TrackColumns::All)
}

/// As [`decode`], reading only `cols`: the columns come in the order below, so a projection
/// stops early and leaves the rest unread (in each position: `attributes` `null`; for
/// [`TrackColumns::Map`] also no inputs, outputs, ignition, motion, odometer, power or alarm,
/// and the server time equal to the fix time).
pub fn decode_columns(bytes: &[u8], cols: TrackColumns) -> Result<Vec<StoredPosition>, ChunkError> {
    let body = body(bytes)?;
    let mut r = Reader::new(&body);
    let n = r.len("count")?;
    let mut clock = Clock::default();
    let times = r
        .times(n)?
        .into_iter()
        .map(|t| clock.at(t))
        .collect::<Result<Vec<_>, _>>()?;
    let lat = r.f64s(n, "lat")?;
    let lon = r.f64s(n, "lon")?;
    let valid = r.take(n, "valid")?;
    let speed = r.f64s(n, "speed")?;
    let course = r.f64s(n, "course")?;
    let altitude = r.f64s(n, "altitude")?;
    let gps_odo = r.f64s(n, "gps odometer")?;
    let sats = r.opt_ints(n, "satellites")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(StoredPosition {
            time: times[i],
            server_time: times[i],
            valid: valid[i] != 0,
            lat: lat[i],
            lon: lon[i],
            speed_kmh: speed[i],
            course: course[i],
            altitude: altitude[i],
            satellites: match sats[i] {
                None => None,
                Some(v) => Some(u16::try_from(v).map_err(|_| ChunkError::Corrupt("satellites"))?),
            },
            ignition: None,
            motion: None,
            odometer_m: None,
            gps_odometer_m: gps_odo[i],
            inputs: None,
            outputs: None,
            power_v: None,
            alarm: None,
            attributes: AttrsJson::null(),
        });
    }
    if cols == TrackColumns::Map {
        return Ok(out);
    }
    let small = |v: Option<i64>, what| match v {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| ChunkError::Corrupt(what)),
    };
    let inputs = r.opt_ints(n, "inputs")?;
    let outputs = r.opt_ints(n, "outputs")?;
    let ignition = r.opt_bools(n, "ignition")?;
    let motion = r.opt_bools(n, "motion")?;
    let odometer = r.opt_f64s(n, "odometer")?;
    let power = r.opt_f64s(n, "power")?;
    let alarm = r.opt_strs(n, "alarm")?;
    let mut lag = 0i64;
    for (p, alarm) in out.iter_mut().zip(alarm) {
        lag = lag.wrapping_add(r.int("server time")?);
        p.server_time = clock.at(millis(p.time).wrapping_add(lag))?;
        p.alarm = alarm;
    }
    for (i, p) in out.iter_mut().enumerate() {
        p.inputs = small(inputs[i], "inputs")?;
        p.outputs = small(outputs[i], "outputs")?;
        p.ignition = ignition[i];
        p.motion = motion[i];
        p.odometer_m = odometer[i];
        p.power_v = power[i];
    }
    if cols == TrackColumns::All {
        for (p, a) in out.iter_mut().zip(r.attributes(n)?) {
            p.attributes = a;
        }
    }
    Ok(out)
}

/// Milliseconds since the epoch as times. The fixes of a chunk share a day or two, so the
/// calendar date is worked out once per day, not per fix (chrono's date arithmetic per fix was
/// ~7 % of a car-day's read).
#[derive(Default)]
struct Clock {
    day: Option<(i64, NaiveDate)>,
}

impl Clock {
    const DAY_MS: i64 = 86_400_000;

    fn at(&mut self, v: i64) -> Result<DateTime<Utc>, ChunkError> {
        let day = v.div_euclid(Self::DAY_MS);
        let date = match self.day {
            Some((d, date)) if d == day => date,
            _ => {
                let date = ms(day.wrapping_mul(Self::DAY_MS))?.date_naive();
                self.day = Some((day, date));
                date
            }
        };
        let rest = v.rem_euclid(Self::DAY_MS);
        let time = NaiveTime::from_num_seconds_from_midnight_opt(
            (rest / 1_000) as u32,
            (rest % 1_000) as u32 * 1_000_000,
        )
        .ok_or(ChunkError::Corrupt("time out of range"))?;
        Ok(NaiveDateTime::new(date, time).and_utc())
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Fix time and coordinates only: what a map or a distance fold needs, without the other
/// columns.
pub fn decode_points(bytes: &[u8]) -> Result<Vec<TrackPoint>, ChunkError> {
    let body = body(bytes)?;
    let mut r = Reader::new(&body);
    let n = r.len("count")?;
    let times = r.times(n)?;
    let lat = r.f64s(n, "lat")?;
    let lon = r.f64s(n, "lon")?;
    r.take(n, "valid")?;
    let speed = r.f64s(n, "speed")?;
    let mut clock = Clock::default();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(TrackPoint {
            time: clock.at(times[i])?,
            lat: lat[i],
            lon: lon[i],
            speed_kmh: speed[i],
        });
    }
    Ok(out)
}

fn body(bytes: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let (&format, rest) = bytes.split_first().ok_or(ChunkError::Empty)?;
    if format != FORMAT {
        return Err(ChunkError::Format(format));
    }
    // Chunks carry their size in the zstd frame (bulk compression writes it): decompress in
    // one go with this thread's reused context. A small chunk of the group commit decodes in a
    // few µs, less than making a fresh context cost (a car-day before compaction is ~350).
    match zstd::zstd_safe::get_frame_content_size(rest) {
        Ok(Some(size)) if size <= MAX_BODY => DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d.as_mut() {
                Some(d) => Ok(d.decompress(rest, size as usize)?),
                None => Ok(zstd::stream::decode_all(rest)?),
            }
        }),
        _ => Ok(zstd::stream::decode_all(rest)?),
    }
}

/// Largest body decompressed in one go by its declared size (a car-day is ~0.3 MB; a
/// corrupt size is not trusted beyond this and goes through the streaming decoder).
const MAX_BODY: u64 = 64 << 20;

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn ms(v: i64) -> Result<DateTime<Utc>, ChunkError> {
    Utc.timestamp_millis_opt(v)
        .single()
        .ok_or(ChunkError::Corrupt("time out of range"))
}

/// Scales tried for an `f64` column, smallest first: decimal ones, then the minute-based ones
/// of NMEA (1e-4 and 1e-5 minutes) and GT06 (1/30,000 minute).
const SCALES: [f64; 11] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    600_000.0,
    6_000_000.0,
    1_800_000.0,
];

/// How an `f64` column is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum F64Mode {
    /// IEEE bits, each XORed with the previous value's.
    Raw,
    /// `v == q / SCALES[i]`.
    Div(u8),
    /// `v == q * (1 / SCALES[i])`.
    Mul(u8),
}

impl F64Mode {
    fn tag(self) -> u8 {
        match self {
            F64Mode::Raw => 0,
            F64Mode::Div(i) => 1 + i,
            F64Mode::Mul(i) => 32 + i,
        }
    }

    fn from_tag(t: u8) -> Result<F64Mode, ChunkError> {
        match t {
            0 => Ok(F64Mode::Raw),
            1..=11 => Ok(F64Mode::Div(t - 1)),
            32..=42 => Ok(F64Mode::Mul(t - 32)),
            _ => Err(ChunkError::Corrupt("f64 column mode")),
        }
    }

    fn value(self, q: i64) -> f64 {
        match self {
            F64Mode::Raw => f64::from_bits(q as u64),
            F64Mode::Div(i) => q as f64 / SCALES[i as usize],
            F64Mode::Mul(i) => q as f64 * (1.0 / SCALES[i as usize]),
        }
    }
}

/// The integer `v` is stored as under `mode`, if it gives back `v` exactly.
fn quantize(mode: F64Mode, v: f64) -> Option<i64> {
    let s = match mode {
        F64Mode::Raw => return Some(v.to_bits() as i64),
        F64Mode::Div(i) | F64Mode::Mul(i) => SCALES[i as usize],
    };
    let scaled = (v * s).round();
    // Well inside i64 and inside the integers an f64 holds exactly.
    if !scaled.is_finite() || scaled.abs() > 9.0e15 {
        return None;
    }
    let q = scaled as i64;
    (mode.value(q).to_bits() == v.to_bits()).then_some(q)
}

fn choose_mode(values: &[f64]) -> F64Mode {
    for i in 0..SCALES.len() as u8 {
        for mode in [F64Mode::Div(i), F64Mode::Mul(i)] {
            if values.iter().all(|v| quantize(mode, *v).is_some()) {
                return mode;
            }
        }
    }
    F64Mode::Raw
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn int(&mut self, v: i64) {
        self.uint(zigzag(v));
    }

    fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn times(&mut self, times: impl Iterator<Item = i64>) {
        let (mut prev, mut prev_delta) = (0i64, 0i64);
        for (i, t) in times.enumerate() {
            if i == 0 {
                self.int(t);
            } else {
                let delta = t.wrapping_sub(prev);
                self.int(delta.wrapping_sub(prev_delta));
                prev_delta = delta;
            }
            prev = t;
        }
    }

    fn f64s(&mut self, values: &[f64]) {
        let mode = choose_mode(values);
        self.buf.push(mode.tag());
        let mut prev = 0i64;
        for v in values {
            let q = quantize(mode, *v).expect("the mode was chosen for every value");
            if mode == F64Mode::Raw {
                self.buf
                    .extend_from_slice(&((q ^ prev) as u64).to_le_bytes());
            } else {
                self.int(q.wrapping_sub(prev));
            }
            prev = q;
        }
    }

    fn opt_f64s(&mut self, values: impl Iterator<Item = Option<f64>>) {
        let values: Vec<Option<f64>> = values.collect();
        self.buf.extend(values.iter().map(|v| v.is_some() as u8));
        let present: Vec<f64> = values.into_iter().flatten().collect();
        self.f64s(&present);
    }

    fn opt_ints(&mut self, values: impl Iterator<Item = Option<i64>>) {
        let values: Vec<Option<i64>> = values.collect();
        self.buf.extend(values.iter().map(|v| v.is_some() as u8));
        let mut prev = 0i64;
        for v in values.into_iter().flatten() {
            self.int(v.wrapping_sub(prev));
            prev = v;
        }
    }

    fn opt_bools(&mut self, values: impl Iterator<Item = Option<bool>>) {
        self.buf.extend(values.map(|v| match v {
            None => 0u8,
            Some(false) => 1,
            Some(true) => 2,
        }));
    }

    fn opt_strs<'a>(&mut self, values: impl Iterator<Item = Option<&'a str>>) {
        let values: Vec<Option<&str>> = values.collect();
        self.buf.extend(values.iter().map(|v| v.is_some() as u8));
        for s in values.into_iter().flatten() {
            self.bytes(s.as_bytes());
        }
    }

    /// Per attribute key, one tag per position ([`AttrTag`]) and the key's value streams.
    /// Attributes that are not a JSON object (never written by this version) are kept whole
    /// under the reserved empty key, tagged [`AttrTag::Whole`].
    fn attributes<'a>(&mut self, attrs: impl Iterator<Item = &'a Value>) {
        let attrs: Vec<&Value> = attrs.collect();
        let mut keys: Vec<&str> = Vec::new();
        for a in &attrs {
            match a {
                Value::Object(map) => {
                    for k in map.keys() {
                        if let Err(at) = keys.binary_search(&k.as_str()) {
                            keys.insert(at, k.as_str());
                        }
                    }
                }
                _ => {
                    if let Err(at) = keys.binary_search(&"") {
                        keys.insert(at, "");
                    }
                }
            }
        }
        self.uint(keys.len() as u64);
        for key in keys {
            self.bytes(key.as_bytes());
            let values: Vec<Option<&Value>> = attrs
                .iter()
                .map(|a| match a {
                    Value::Object(map) => map.get(key),
                    whole if key.is_empty() => Some(*whole),
                    _ => None,
                })
                .collect();
            let whole_key = key.is_empty();
            let tag = |v: &Option<&Value>, row: &Value| -> AttrTag {
                match v {
                    None => AttrTag::Absent,
                    Some(_) if whole_key && !row.is_object() => AttrTag::Whole,
                    Some(Value::Null) => AttrTag::Null,
                    Some(Value::Bool(false)) => AttrTag::False,
                    Some(Value::Bool(true)) => AttrTag::True,
                    Some(Value::Number(n)) if n.is_i64() => AttrTag::Int,
                    Some(Value::Number(n)) if n.is_f64() => AttrTag::Float,
                    Some(Value::String(_)) => AttrTag::Str,
                    Some(_) => AttrTag::Json,
                }
            };
            let tags: Vec<AttrTag> = values
                .iter()
                .zip(&attrs)
                .map(|(v, row)| tag(v, row))
                .collect();
            self.buf.extend(tags.iter().map(|t| *t as u8));
            let mut ints = Vec::new();
            let mut floats = Vec::new();
            let mut strs: Vec<String> = Vec::new();
            for (t, v) in tags.iter().zip(&values) {
                match (t, v) {
                    (AttrTag::Int, Some(Value::Number(n))) => {
                        ints.push(n.as_i64().expect("tagged as i64"))
                    }
                    (AttrTag::Float, Some(Value::Number(n))) => {
                        floats.push(n.as_f64().expect("tagged as f64"))
                    }
                    (AttrTag::Str, Some(Value::String(s))) => strs.push(s.clone()),
                    (AttrTag::Json | AttrTag::Whole, Some(v)) => strs.push(v.to_string()),
                    _ => {}
                }
            }
            let mut prev = 0i64;
            for v in ints {
                self.int(v.wrapping_sub(prev));
                prev = v;
            }
            self.f64s(&floats);
            for s in strs {
                self.bytes(s.as_bytes());
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum AttrTag {
    Absent = 0,
    Null = 1,
    False = 2,
    True = 3,
    Int = 4,
    Float = 5,
    Str = 6,
    /// Any other JSON value (array, object, an integer beyond i64), as its JSON text.
    Json = 7,
    /// The position's whole attributes value, when it is not an object.
    Whole = 8,
}

impl AttrTag {
    fn from_u8(v: u8) -> Result<AttrTag, ChunkError> {
        Ok(match v {
            0 => AttrTag::Absent,
            1 => AttrTag::Null,
            2 => AttrTag::False,
            3 => AttrTag::True,
            4 => AttrTag::Int,
            5 => AttrTag::Float,
            6 => AttrTag::Str,
            7 => AttrTag::Json,
            8 => AttrTag::Whole,
            _ => return Err(ChunkError::Corrupt("attribute tag")),
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn uint(&mut self, what: &'static str) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at).ok_or(ChunkError::Truncated(what))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError::Corrupt("varint longer than 64 bits"))
    }

    fn int(&mut self, what: &'static str) -> Result<i64, ChunkError> {
        self.uint(what).map(unzigzag)
    }

    /// A count that must fit in what is left of the chunk (one byte per item at least), so a
    /// corrupt count cannot make the reader allocate gigabytes.
    fn len(&mut self, what: &'static str) -> Result<usize, ChunkError> {
        let n = self.uint(what)?;
        if n > (self.buf.len() - self.at) as u64 + 1 {
            return Err(ChunkError::Corrupt("count larger than the chunk"));
        }
        Ok(n as usize)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ChunkError> {
        let end = self.at.checked_add(n).ok_or(ChunkError::Truncated(what))?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or(ChunkError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }

    fn string(&mut self, what: &'static str) -> Result<String, ChunkError> {
        self.str(what).map(str::to_string)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, ChunkError> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| ChunkError::Corrupt("string not UTF-8"))
    }

    fn times(&mut self, n: usize) -> Result<Vec<i64>, ChunkError> {
        let mut out = Vec::with_capacity(n);
        let (mut prev, mut delta) = (0i64, 0i64);
        for i in 0..n {
            let v = self.int("fix time")?;
            let t = if i == 0 {
                v
            } else {
                delta = delta.wrapping_add(v);
                prev.wrapping_add(delta)
            };
            out.push(t);
            prev = t;
        }
        Ok(out)
    }

    fn f64s(&mut self, n: usize, what: &'static str) -> Result<Vec<f64>, ChunkError> {
        let mode = F64Mode::from_tag(self.take(1, what)?[0])?;
        let mut out = Vec::with_capacity(n);
        let mut prev = 0i64;
        for _ in 0..n {
            let q = if mode == F64Mode::Raw {
                let b = self.take(8, what)?;
                (u64::from_le_bytes(b.try_into().expect("8 bytes")) as i64) ^ prev
            } else {
                prev.wrapping_add(self.int(what)?)
            };
            out.push(mode.value(q));
            prev = q;
        }
        Ok(out)
    }

    fn presence(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ChunkError> {
        let p = self.take(n, what)?;
        if p.iter().any(|b| *b > 1) {
            return Err(ChunkError::Corrupt("presence byte"));
        }
        Ok(p)
    }

    fn opt_f64s(&mut self, n: usize, what: &'static str) -> Result<Vec<Option<f64>>, ChunkError> {
        let present = self.presence(n, what)?;
        let count = present.iter().filter(|b| **b == 1).count();
        let mut values = self.f64s(count, what)?.into_iter();
        Ok(present
            .iter()
            .map(|p| if *p == 1 { values.next() } else { None })
            .collect())
    }

    fn opt_ints(&mut self, n: usize, what: &'static str) -> Result<Vec<Option<i64>>, ChunkError> {
        let present = self.presence(n, what)?;
        let mut prev = 0i64;
        let mut out = Vec::with_capacity(n);
        for p in present {
            if *p == 1 {
                prev = prev.wrapping_add(self.int(what)?);
                out.push(Some(prev));
            } else {
                out.push(None);
            }
        }
        Ok(out)
    }

    fn opt_bools(&mut self, n: usize, what: &'static str) -> Result<Vec<Option<bool>>, ChunkError> {
        self.take(n, what)?
            .iter()
            .map(|b| match b {
                0 => Ok(None),
                1 => Ok(Some(false)),
                2 => Ok(Some(true)),
                _ => Err(ChunkError::Corrupt("boolean byte")),
            })
            .collect()
    }

    fn opt_strs(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<Vec<Option<String>>, ChunkError> {
        let present = self.presence(n, what)?;
        present
            .iter()
            .map(|p| {
                if *p == 1 {
                    self.string(what).map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect()
    }

    /// Each row's attributes as the JSON text serde_json writes for the value (keys in sorted
    /// order, which is the order they are packed in): one `String` per row, no map.
    fn attributes(&mut self, n: usize) -> Result<Vec<AttrsJson>, ChunkError> {
        let keys = self.len("attribute keys")?;
        let mut columns: Vec<AttrColumn<'a>> = Vec::with_capacity(keys);
        for _ in 0..keys {
            let key = self.str("attribute key")?;
            if columns.last().is_some_and(|c| c.key >= key) {
                return Err(ChunkError::Corrupt("attribute keys out of order"));
            }
            let tags = self.take(n, "attribute tags")?;
            let mut ints = 0;
            let mut floats = 0;
            for t in tags {
                match AttrTag::from_u8(*t)? {
                    AttrTag::Int => ints += 1,
                    AttrTag::Float => floats += 1,
                    _ => {}
                }
            }
            let mut int_values = Vec::with_capacity(ints);
            let mut prev = 0i64;
            for _ in 0..ints {
                prev = prev.wrapping_add(self.int("attribute int")?);
                int_values.push(prev);
            }
            let float_values = self.f64s(floats, "attribute float")?;
            if float_values.iter().any(|f| !f.is_finite()) {
                return Err(ChunkError::Corrupt("attribute float not finite"));
            }
            let mut texts = Vec::new();
            for t in tags {
                match AttrTag::from_u8(*t)? {
                    AttrTag::Str => {
                        let s = self.str("attribute string")?;
                        let mut text = Vec::with_capacity(s.len() + 2);
                        json_text(&mut text, s);
                        texts.push(text);
                    }
                    AttrTag::Json | AttrTag::Whole => {
                        // Rare (nested values): checked and made canonical here.
                        let v: Value = serde_json::from_str(self.str("attribute JSON")?)
                            .map_err(|_| ChunkError::Corrupt("attribute JSON"))?;
                        texts.push(v.to_string().into_bytes());
                    }
                    _ => {}
                }
            }
            let mut prefix = Vec::with_capacity(key.len() + 3);
            json_text(&mut prefix, key);
            prefix.push(b':');
            columns.push(AttrColumn {
                key,
                prefix,
                tags,
                ints: int_values.into_iter(),
                floats: float_values.into_iter(),
                texts: texts.into_iter(),
            });
        }
        let mut out = Vec::with_capacity(n);
        let mut row = Vec::new();
        let mut whole = None;
        for i in 0..n {
            row.clear();
            row.push(b'{');
            for c in columns.iter_mut() {
                let tag = AttrTag::from_u8(c.tags[i])?;
                if tag == AttrTag::Absent {
                    continue;
                }
                if tag != AttrTag::Whole {
                    if row.len() > 1 {
                        row.push(b',');
                    }
                    row.extend_from_slice(&c.prefix);
                }
                match tag {
                    AttrTag::Absent => {}
                    AttrTag::Null => row.extend_from_slice(b"null"),
                    AttrTag::False => row.extend_from_slice(b"false"),
                    AttrTag::True => row.extend_from_slice(b"true"),
                    AttrTag::Int => {
                        let v = c.ints.next().ok_or(ChunkError::Corrupt("attribute int"))?;
                        // Writing into a `Vec` cannot fail.
                        let _ = CompactFormatter.write_i64(&mut row, v);
                    }
                    AttrTag::Float => {
                        let v = c
                            .floats
                            .next()
                            .ok_or(ChunkError::Corrupt("attribute float"))?;
                        // Writing into a `Vec` cannot fail.
                        let _ = CompactFormatter.write_f64(&mut row, v);
                    }
                    AttrTag::Str | AttrTag::Json | AttrTag::Whole => {
                        let text = c
                            .texts
                            .next()
                            .ok_or(ChunkError::Corrupt("attribute text"))?;
                        if tag == AttrTag::Whole {
                            whole = Some(text);
                        } else {
                            row.extend_from_slice(&text);
                        }
                    }
                }
            }
            row.push(b'}');
            let text = match whole.take() {
                // Not an object: the row's whole value (its other keys are absent).
                Some(w) => w,
                None => row.clone(),
            };
            // Every byte written above is ASCII or came from a `&str`.
            let text =
                String::from_utf8(text).map_err(|_| ChunkError::Corrupt("attribute text"))?;
            out.push(AttrsJson::from_canonical(text));
        }
        Ok(out)
    }
}

/// One attribute key's packed values, read row by row.
struct AttrColumn<'a> {
    key: &'a str,
    /// `"key":` as JSON.
    prefix: Vec<u8>,
    tags: &'a [u8],
    ints: std::vec::IntoIter<i64>,
    floats: std::vec::IntoIter<f64>,
    texts: std::vec::IntoIter<Vec<u8>>,
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn json_text(out: &mut Vec<u8>, s: &str) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn position(i: i64) -> StoredPosition {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 7, 6, 0, 0).unwrap();
        let time = t0 + chrono::Duration::seconds(i * 10);
        StoredPosition {
            time,
            server_time: time + chrono::Duration::milliseconds(1_200 + (i % 3) * 7),
            valid: i % 17 != 0,
            // As the Teltonika decoder makes them: 1e-7 degrees, by division.
            lat: (557_512_345 + i * 37) as f64 / 10_000_000.0,
            lon: (376_178_901 - i * 52) as f64 / 10_000_000.0,
            speed_kmh: (i % 60) as f64,
            course: ((i * 7) % 360) as f64,
            altitude: 150.0 + (i % 5) as f64,
            satellites: Some(9 + (i % 3) as u16),
            ignition: Some(i % 100 < 80),
            motion: if i % 50 == 0 { None } else { Some(i % 60 != 0) },
            odometer_m: Some(120_000.0 + i as f64 * 83.0),
            gps_odometer_m: i as f64 * 82.731,
            inputs: Some(1),
            outputs: Some((i % 2) as u32),
            power_v: Some(12.0 + (i % 10) as f64 * 0.001),
            alarm: (i % 400 == 0).then(|| "sos".to_string()),
            attributes: json!({
                "io239": i % 100 < 80,
                "io66": 12_000 + i % 10,
                "io21": 4,
                "io200": 0,
                "io69": 1,
                "io181": 0.8 + (i % 4) as f64 * 0.1,
            })
            .into(),
        }
    }

    fn day() -> Vec<StoredPosition> {
        (0..8_640).map(position).collect()
    }

    fn assert_same(a: &[StoredPosition], b: &[StoredPosition]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x, y);
            for (u, v) in [
                (x.lat, y.lat),
                (x.lon, y.lon),
                (x.speed_kmh, y.speed_kmh),
                (x.gps_odometer_m, y.gps_odometer_m),
            ] {
                assert_eq!(u.to_bits(), v.to_bits());
            }
        }
    }

    #[test]
    fn a_car_day_comes_back_bit_for_bit() {
        let points = day();
        let packed = encode(&points);
        assert_same(&decode(&packed).unwrap(), &points);
        let fast = decode_points(&packed).unwrap();
        assert_eq!(fast.len(), points.len());
        for (f, p) in fast.iter().zip(&points) {
            assert_eq!(*f, TrackPoint::from(p));
        }
    }

    /// What a small chunk (one packet of the group commit) costs to pack at each zstd level:
    /// `cargo test --release --lib storage::chunk::tests::small_chunk_levels -- --ignored
    /// --nocapture`. Figures in docs/archive.md.
    #[test]
    #[ignore = "timing: run in release with --nocapture"]
    fn small_chunk_levels() {
        let points = day();
        for n in [1usize, 25, 250] {
            let chunks: Vec<&[StoredPosition]> = points.chunks(n).take(2_000).collect();
            let attrs: Vec<Vec<Value>> = chunks
                .iter()
                .map(|c| c.iter().map(|p| p.attributes.to_value()).collect())
                .collect();
            let t = std::time::Instant::now();
            let bodies: Vec<Vec<u8>> = chunks
                .iter()
                .zip(&attrs)
                .map(|(c, a)| columns(c, a))
                .collect();
            let cols_us = t.elapsed().as_secs_f64() * 1e6 / chunks.len() as f64;
            let raw: usize = bodies.iter().map(Vec::len).sum();
            eprintln!(
                "{n:>4} positions: columns {cols_us:6.1} us/chunk, {:5.1} B/position uncompressed",
                raw as f64 / (chunks.len() * n) as f64
            );
            for level in [-5, -1, 1, 3, 9] {
                compress(&bodies[0], level).unwrap();
                let t = std::time::Instant::now();
                let size: usize = bodies
                    .iter()
                    .map(|b| compress(b, level).unwrap().len() + 1)
                    .sum();
                let us = t.elapsed().as_secs_f64() * 1e6 / chunks.len() as f64;
                eprintln!(
                    "      level {level:>2}: zstd {us:6.1} us/chunk, {:5.1} B/position",
                    size as f64 / (chunks.len() * n) as f64
                );
            }
        }
    }

    #[test]
    fn attributes_come_back_as_the_text_serde_json_writes_and_can_be_left_out() {
        let mut points = day()[..20].to_vec();
        points[1].attributes = json!({"name": "Иванов \"Т\"\n", "io1": -3, "f": 0.1}).into();
        points[2].attributes = json!({"nested": {"b": 1, "a": [true, null]}}).into();
        let back = decode(&encode(&points)).unwrap();
        for (b, p) in back.iter().zip(&points) {
            assert_eq!(b.attributes.as_str(), p.attributes.to_value().to_string());
        }
        assert_eq!(
            back[1].attributes.as_str(),
            r#"{"f":0.1,"io1":-3,"name":"Иванов \"Т\"\n"}"#
        );
        for cols in [TrackColumns::WithoutAttributes, TrackColumns::Map] {
            let bare = decode_columns(&encode(&points), cols).unwrap();
            for (b, p) in bare.iter().zip(&points) {
                assert_eq!(*b, p.clone().project(cols));
            }
        }
    }

    #[test]
    fn a_car_day_packs_into_a_few_bytes_per_position() {
        let points = day();
        let per = encode(&points).len() as f64 / points.len() as f64;
        eprintln!("{per:.2} bytes per position");
        assert!(per < 16.0, "{per:.1} bytes per position");
    }

    #[test]
    fn values_no_scale_reproduces_are_kept_as_raw_bits() {
        let mut points = day()[..50].to_vec();
        points[3].lat = 55.123_456_789_012_34;
        points[4].speed_kmh = 12.3 * 1.852;
        points[5].power_v = Some(f64::MIN_POSITIVE);
        points[6].altitude = -0.0;
        points[7].course = 1e300;
        assert_same(&decode(&encode(&points)).unwrap(), &points);
    }

    #[test]
    fn gt06_and_nmea_coordinates_are_packed_as_integers() {
        // GT06: 1/30,000 minute by division; NMEA: ddmm.mmmm → degrees + minutes/60.
        let gt06: Vec<f64> = (0..100)
            .map(|i| (100_351_234 + i * 11) as f64 / 1_800_000.0)
            .collect();
        assert!(matches!(
            choose_mode(&gt06),
            F64Mode::Div(10) | F64Mode::Mul(10)
        ));
        let teltonika_mul: Vec<f64> = (0..100)
            .map(|i| (557_512_345 + i) as f64 * 0.000_000_1)
            .collect();
        assert_ne!(choose_mode(&teltonika_mul), F64Mode::Raw);
        let mut points = day()[..100].to_vec();
        for (p, lat) in points.iter_mut().zip(&gt06) {
            p.lat = *lat;
        }
        assert_same(&decode(&encode(&points)).unwrap(), &points);
    }

    #[test]
    fn odd_attributes_survive() {
        let mut points = day()[..10].to_vec();
        points[0].attributes = json!({}).into();
        points[1].attributes =
            json!({"raw": "0a0b", "n": null, "big": u64::MAX, "list": [1, 2], "": 5}).into();
        points[2].attributes = json!({"io66": 1.5}).into();
        points[3].attributes = json!("not an object").into();
        points[4].attributes = Value::Null.into();
        points[5].attributes = json!({"io66": -7}).into();
        assert_same(&decode(&encode(&points)).unwrap(), &points);
    }

    #[test]
    fn empty_and_single() {
        assert!(decode(&encode(&[])).unwrap().is_empty());
        let one = vec![position(5)];
        assert_same(&decode(&encode(&one)).unwrap(), &one);
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let packed = encode(&day()[..200]);
        assert!(matches!(decode(&[]), Err(ChunkError::Empty)));
        assert!(matches!(decode(&[9, 1, 2]), Err(ChunkError::Format(9))));
        let mut body = zstd::stream::decode_all(&packed[1..]).unwrap();
        for cut in [1, 10, body.len() / 2, body.len() - 1] {
            let mut bad = vec![FORMAT];
            bad.extend(zstd::bulk::compress(&body[..cut], 1).unwrap());
            assert!(decode(&bad).is_err(), "cut at {cut}");
        }
        body[0] = 0xff;
        body[1] = 0xff;
        let mut bad = vec![FORMAT];
        bad.extend(zstd::bulk::compress(&body, 1).unwrap());
        assert!(decode(&bad).is_err());
        let mut flipped = packed.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        let _ = decode(&flipped);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_f64() -> impl Strategy<Value = f64> {
            prop_oneof![
                any::<f64>().prop_filter("finite", |v| v.is_finite()),
                (-900_000_000i64..900_000_000).prop_map(|q| q as f64 / 10_000_000.0),
                (0i64..100_000).prop_map(|q| q as f64 * 0.1),
            ]
        }

        proptest! {
            #[test]
            fn any_track_round_trips(
                steps in proptest::collection::vec((0i64..120_000, arb_f64(), arb_f64(),
                    proptest::option::of(arb_f64()), proptest::option::of(any::<bool>()),
                    proptest::option::of(any::<u32>()), any::<i64>()), 0..64)
            ) {
                let mut t = 1_765_000_000_000i64;
                let mut points = Vec::new();
                for (i, (dt, lat, speed, power, ign, inputs, io)) in steps.into_iter().enumerate() {
                    t += dt + 1;
                    let mut p = position(i as i64);
                    p.time = Utc.timestamp_millis_opt(t).unwrap();
                    p.server_time = Utc.timestamp_millis_opt(t - 5_000 + dt).unwrap();
                    p.lat = lat;
                    p.speed_kmh = speed;
                    p.power_v = power;
                    p.ignition = ign;
                    p.inputs = inputs;
                    p.attributes = json!({"io": io, "f": speed}).into();
                    points.push(p);
                }
                let back = decode(&encode(&points)).unwrap();
                prop_assert_eq!(back.len(), points.len());
                for (x, y) in back.iter().zip(&points) {
                    prop_assert_eq!(x, y);
                    prop_assert_eq!(x.lat.to_bits(), y.lat.to_bits());
                    prop_assert_eq!(x.speed_kmh.to_bits(), y.speed_kmh.to_bits());
                }
            }

            #[test]
            fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut packed = vec![FORMAT];
                packed.extend(zstd::bulk::compress(&bytes, 1).unwrap());
                let _ = decode(&packed);
                let _ = decode_points(&packed);
            }
        }
    }
}
