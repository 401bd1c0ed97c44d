//! Arnavi trackers (Arnavi 4, 5, Integral): the binary protocol, and the older `$AV` text lines,
//! over TCP. A connection speaks one or the other; the first byte tells which (`$` for text).
//!
//! Binary: the device opens with a HEADER `FF | version | IMEI u64 LE` (version 0x22, 0x23,
//! 0x25 for the Wi-Fi variant; 0x24 adds 8 more bytes), answered `7B 00 00 7D` (0x22) or, for
//! the versions that take the server time, `7B 04 00 | sum | unix time u32 LE | 7D`. Then data
//! PACKAGEs `5B | parcel number | packets… | 5D`, each packet `type | u16 LE length | u32 LE
//! time | data | checksum byte`; type 0x01 data is a run of 5-byte tags (id + 4 value bytes).
//! Each package is answered `7B 00 | parcel number | 7D`. Parcel number 0xFD marks the device's
//! answer to a server command and is not acknowledged.
//! Text: `$AV,V<n>,<id>,<index>,… *XX` lines ending in CR LF; no answer is expected.
//! Notes in our own words and the real packets: `protocols/arnavi/`.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::util::{from_secs, utc, Reader};
use super::{
    CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand, FrameCut,
    Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position, KNOTS_TO_KMH};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "arnavi";

/// Largest frame accepted. Devices fill a package up to a few kilobytes; text lines are short.
pub const MAX_FRAME: usize = 65_536;
/// Longest `$AV` line we wait for before calling the stream broken.
pub const MAX_TEXT_LINE: usize = 1024;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5100,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(ArnaviSession::new()),
};

pub const HEADER_START: u8 = 0xFF;
pub const HEADER_V1: u8 = 0x22;
pub const HEADER_V2: u8 = 0x23;
pub const HEADER_V3: u8 = 0x24;
pub const HEADER_V2_WIFI: u8 = 0x25;
pub const PACKAGE_START: u8 = 0x5B;
pub const PACKAGE_END: u8 = 0x5D;
/// Parcel number of a device's answer to a server command.
pub const PARCEL_COMMAND_ANSWER: u8 = 0xFD;

pub const PACKET_PING: u8 = 0x00;
pub const PACKET_DATA: u8 = 0x01;
pub const PACKET_TEXT: u8 = 0x03;
pub const PACKET_FILE: u8 = 0x04;
pub const PACKET_BINARY: u8 = 0x06;

/// Arnavi protocol state of one connection.
pub struct ArnaviSession {
    imei: Option<DeviceId>,
}

impl ArnaviSession {
    pub fn new() -> Self {
        ArnaviSession { imei: None }
    }
}

impl Default for ArnaviSession {
    fn default() -> Self {
        Self::new()
    }
}

impl Session for ArnaviSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        next_frame(buf)
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let d = match frame.first() {
            Some(b'$') => decode_text(frame, ctx)?,
            Some(&HEADER_START) => decode_header(frame, ctx)?,
            Some(&PACKAGE_START) => decode_package(frame)?,
            _ => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    "not a header, package or $AV line",
                ))
            }
        };
        if let Some(id) = &d.device {
            self.imei = Some(id.clone());
        }
        Ok(d)
    }

    /// The output-control command set of the binary protocol is not publicly documented, so
    /// no command is sent (see README).
    fn encode_command(&mut self, _cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        Err(CommandError::Unsupported(NAME))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Arnavi
    }
}

fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    match buf.first() {
        None => Ok(FrameCut::NeedMore),
        Some(b'$') => text_frame(buf),
        Some(&HEADER_START) => {
            let Some(&version) = buf.get(1) else {
                return Ok(FrameCut::NeedMore);
            };
            let len = if version == HEADER_V3 { 18 } else { 10 };
            Ok(if buf.len() >= len {
                FrameCut::Frame(len)
            } else {
                FrameCut::NeedMore
            })
        }
        Some(&PACKAGE_START) => package_frame(buf),
        // Line ends after a text frame, or noise.
        Some(_) => Ok(FrameCut::Skip(1)),
    }
}

/// A `$AV` line: up to and including `*XX` (and the CR LF when already there), or up to a LF.
fn text_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            return Ok(FrameCut::Frame(i + 1));
        }
        if b == b'*' {
            if buf.len() < i + 3 {
                return Ok(FrameCut::NeedMore);
            }
            if buf[i + 1].is_ascii_hexdigit() && buf[i + 2].is_ascii_hexdigit() {
                let mut end = i + 3;
                if buf.get(end) == Some(&b'\r') {
                    end += 1;
                }
                if buf.get(end) == Some(&b'\n') {
                    end += 1;
                }
                return Ok(FrameCut::Frame(end));
            }
        }
        if i >= MAX_TEXT_LINE {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                i,
                format!("text line over {MAX_TEXT_LINE} bytes"),
            ));
        }
    }
    Ok(FrameCut::NeedMore)
}

/// `5B | parcel | packets… | 5D`: walk the packet lengths to the end marker.
fn package_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let Some(&parcel) = buf.get(1) else {
        return Ok(FrameCut::NeedMore);
    };
    if parcel == PARCEL_COMMAND_ANSWER {
        // `5B FD <result> 5D`.
        return Ok(if buf.len() >= 4 {
            FrameCut::Frame(4)
        } else {
            FrameCut::NeedMore
        });
    }
    let mut i = 2usize;
    loop {
        if i > MAX_FRAME {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                i,
                format!("package over {MAX_FRAME} bytes"),
            ));
        }
        let Some(&b) = buf.get(i) else {
            return Ok(FrameCut::NeedMore);
        };
        if b == PACKAGE_END {
            return Ok(FrameCut::Frame(i + 1));
        }
        if buf.len() < i + 3 {
            return Ok(FrameCut::NeedMore);
        }
        let len = usize::from(u16::from_le_bytes([buf[i + 1], buf[i + 2]]));
        // type, length, time, data, checksum.
        i += 1 + 2 + 4 + len + 1;
    }
}

/// The server's answer to a HEADER of `version`, at server time `now`.
pub fn header_reply(version: u8, now: DateTime<Utc>) -> Bytes {
    match version {
        HEADER_V2 | HEADER_V3 | HEADER_V2_WIFI => {
            let t = (now.timestamp() as u32).to_le_bytes();
            let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
            Bytes::copy_from_slice(&[0x7B, 0x04, 0x00, sum, t[0], t[1], t[2], t[3], 0x7D])
        }
        _ => Bytes::from_static(&[0x7B, 0x00, 0x00, 0x7D]),
    }
}

/// The server's answer to data package `parcel`.
pub fn package_reply(parcel: u8) -> Bytes {
    Bytes::copy_from_slice(&[0x7B, 0x00, parcel, 0x7D])
}

fn decode_header(frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    r.skip(1, "header start")?;
    let version = r.u8("protocol version")?;
    let imei = r.u64_le("IMEI")?;
    let mut d = Decoded::kind(MessageKind::Login);
    d.device = Some(DeviceId::new(imei.to_string()));
    d.reply = Some(header_reply(version, ctx.now));
    Ok(d)
}

fn decode_package(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    r.skip(1, "package start")?;
    let parcel = r.u8("parcel number")?;
    if parcel == PARCEL_COMMAND_ANSWER {
        let body = &frame[2..frame.len().saturating_sub(1).max(2)];
        let mut d = Decoded::kind(MessageKind::CommandResponse);
        d.command_response = Some(CommandResponse {
            text: hex::encode(body),
            success: None,
            seq: None,
        });
        return Ok(d);
    }
    let mut d = Decoded::kind(MessageKind::Data);
    loop {
        let at = r.pos();
        let kind = r.u8("packet type")?;
        if kind == PACKAGE_END {
            break;
        }
        let len = usize::from(r.u16_le("packet length")?);
        let secs = r.u32_le("packet time")?;
        let data = r.take(len, "packet data")?;
        r.skip(1, "packet checksum")?;
        if kind != PACKET_DATA {
            // Pings, text messages, files and binary blobs carry nothing for the fleet.
            continue;
        }
        let time = from_secs(i64::from(secs)).ok_or_else(|| {
            DecodeError::new(NAME, DecodeReason::BadTime, at + 3, format!("time {secs}"))
        })?;
        match decode_tags(data, time) {
            Ok(p) => d.positions.push(p),
            Err(attrs) => {
                if !attrs.is_empty() {
                    d.status = Some(attrs);
                }
            }
        }
    }
    if d.positions.is_empty() && d.status.is_none() {
        d.kind = MessageKind::Heartbeat;
    }
    d.reply = Some(package_reply(parcel));
    Ok(d)
}

const ADC_NAMES: [&str; 8] = [
    "adc1", "adc2", "adc3", "adc4", "adc5", "adc6", "adc7", "adc8",
];
const TEMP_NAMES: [&str; 10] = [
    "temp1", "temp2", "temp3", "temp4", "temp5", "temp6", "temp7", "temp8", "temp9", "temp10",
];

/// The 5-byte tags of a data packet; a position when it carries latitude and longitude,
/// else its attributes.
fn decode_tags(data: &[u8], time: DateTime<Utc>) -> Result<Position, Attributes> {
    let mut p = Position::new(time, false, 0.0, 0.0);
    let (mut lat, mut lon) = (None, None);
    let mut gps_odometer = None;
    for t in data.chunks_exact(5) {
        let id = t[0];
        let v = [t[1], t[2], t[3], t[4]];
        let u32v = u32::from_le_bytes(v);
        let lo16 = u16::from_le_bytes([v[0], v[1]]);
        let hi16 = u16::from_le_bytes([v[2], v[3]]);
        let a = &mut p.attrs;
        match id {
            1 => {
                if lo16 != 0 && lo16 != 0xFFFF {
                    a.float("battery_v", f64::from(lo16) / 1000.0);
                }
                if hi16 != 0 && hi16 != 0xFFFF {
                    p.power_v = Some(f64::from(hi16) / 1000.0);
                }
            }
            2 => a.text("driver_id", u32v.to_string()),
            3 => lat = Some(f64::from(f32::from_le_bytes(v))),
            4 => lon = Some(f64::from(f32::from_le_bytes(v))),
            5 => {
                p.course = f64::from(v[0]) * 2.0;
                p.altitude = f64::from(v[1]) * 10.0;
                let sats = v[2];
                p.valid = sats != 0xFE && sats != 0xFF;
                if p.valid {
                    // Low nibble GPS, high nibble GLONASS satellites.
                    p.satellites = Some(u16::from(sats & 0x0F) + u16::from(sats >> 4));
                }
                p.speed_kmh = f64::from(v[3]) * KNOTS_TO_KMH;
            }
            6 => match v[0] {
                0x01 => {
                    p.ignition = Some(v[1] & 0x01 != 0);
                    a.flag("call_button", v[1] & 0x02 != 0);
                    p.inputs = Some(u32::from(hi16));
                }
                0x06 => a.push(
                    AttrKey::Dyn(format!("pulses{}", v[1]).into()),
                    AttrValue::Int(i64::from(hi16)),
                ),
                0x07 => a.push(
                    AttrKey::Dyn(format!("freq{}", v[1]).into()),
                    AttrValue::Int(i64::from(hi16)),
                ),
                0x08 => a.push(
                    AttrKey::Dyn(format!("adc_in{}", v[1]).into()),
                    AttrValue::Float(f64::from(hi16) / 1000.0),
                ),
                _ => a.io_int(u32::from(id), i64::from(u32v)),
            },
            7 => {
                a.int("cell_id", i64::from(lo16));
                a.int("lac", i64::from(hi16));
            }
            8 => {
                a.int("rssi", i64::from(v[0]));
                a.int("mcc", i64::from(u16::from_le_bytes([v[1], v[2]])));
                a.int("mnc", i64::from(v[3]));
            }
            9 => a.int("status", i64::from(u32v)),
            30..=37 => a.float(ADC_NAMES[usize::from(id - 30)], f64::from(lo16) / 1000.0),
            40..=49 => a.float(
                TEMP_NAMES[usize::from(id - 40)],
                f64::from(lo16 as i16) / 100.0,
            ),
            51 => a.int("can_status", i64::from(u32v)),
            52 => a.float("engine_hours", f64::from(u32v) / 100.0),
            53 => p.odometer_m = Some(f64::from(u32v) * 10.0),
            54 => a.float("fuel_used_l", f64::from(u32v) / 10.0),
            55 => a.float("fuel_level_pct", f64::from(lo16) / 10.0),
            56 => a.int("fuel_l", i64::from(u32v)),
            57 => a.int("rpm", i64::from(lo16)),
            58 => a.int("engine_temp", i64::from(u32v)),
            59 => a.int("obd_speed", i64::from(u32v)),
            67 => a.float("adblue_level", f64::from(lo16) / 10.0),
            69 => {
                a.int("engine_load", i64::from(v[0]));
                a.int("throttle", i64::from(v[1]));
                if hi16 != 0 {
                    a.int("motion_status", i64::from(hi16));
                }
            }
            151 => a.float("hdop", f64::from(lo16) / 100.0),
            150 => gps_odometer = Some(f64::from(u32v) * 10.0),
            _ => a.io_int(u32::from(id), i64::from(u32v)),
        }
    }
    if let Some(m) = gps_odometer {
        p.attrs.float("gps_odometer_m", m);
        if p.odometer_m.is_none() {
            p.odometer_m = Some(m);
        }
    }
    match (lat, lon) {
        (Some(lat), Some(lon)) if lat.is_finite() && lon.is_finite() => {
            p.lat = lat;
            p.lon = lon;
            Ok(p)
        }
        _ => Err(p.attrs),
    }
}

/// `ddmm.mmmm` + hemisphere as signed degrees.
fn nmea_coord(s: &str, deg_digits: usize) -> Option<f64> {
    // The hemisphere is the last character, which hostile input may make multi-byte.
    let mut chars = s.chars();
    let hemi = chars.next_back()?;
    let num = chars.as_str();
    if num.len() < deg_digits + 2 || !num.is_char_boundary(deg_digits) {
        return None;
    }
    let deg: f64 = num[..deg_digits].parse().ok()?;
    let min: f64 = num[deg_digits..].parse().ok()?;
    let v = deg + min / 60.0;
    match hemi {
        'N' | 'E' => Some(v),
        'S' | 'W' => Some(-v),
        _ => None,
    }
}

fn is_lat_field(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 7
        && matches!(b.last(), Some(b'N' | b'S'))
        && b.get(4) == Some(&b'.')
        && b[..4].iter().all(u8::is_ascii_digit)
}

fn two(s: &str, i: usize) -> Option<u32> {
    s.get(i..i + 2)?.parse().ok()
}

fn decode_text(frame: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let text = std::str::from_utf8(frame)
        .map_err(|_| DecodeError::new(NAME, DecodeReason::Framing, 0, "text line is not UTF-8"))?
        .trim_end_matches(['\r', '\n']);
    // The `*XX` checksum (XOR of the bytes between `$` and `*`) is not enforced: captured
    // lines carry mismatching values, and every field is checked on its own below.
    let body = text.rsplit_once('*').map_or(text, |(b, _)| b);
    let f: Vec<&str> = body.split(',').collect();
    if f.first() != Some(&"$AV") || f.len() < 3 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            "not a $AV line",
        ));
    }
    let kind = f[1];
    let id = f[2];
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::BadIdentity,
            4 + kind.len(),
            "device id",
        ));
    }
    let mut d = Decoded::kind(MessageKind::Other);
    d.device = Some(DeviceId::new(id));
    if !matches!(kind, "V2" | "V3" | "V4") {
        // Device info (V3DI), SD card state (V6SD), GSM info (V3GSMINFO): nothing to act on.
        return Ok(d);
    }
    let bad =
        |what: &str| DecodeError::new(NAME, DecodeReason::BadField, 0, format!("{kind}: {what}"));
    let li = f
        .iter()
        .position(|s| is_lat_field(s))
        .ok_or_else(|| bad("no latitude field"))?;
    if li < 12 || f.len() < li + 5 {
        return Err(bad("too few fields"));
    }
    let num = |i: usize| -> Option<i64> { f.get(i)?.parse().ok() };
    let mut attrs = Attributes::default();
    if let Some(v) = num(3) {
        attrs.int("index", v);
    }
    let power = num(4).map(|v| v as f64 / 100.0);
    if let Some(v) = num(5) {
        attrs.float("battery_v", v as f64 / 100.0);
    }
    let ignition = num(8).map(|v| v == 1);
    let inputs = num(9).and_then(|v| u32::try_from(v).ok());
    // Before the time field: fix type and satellites, then (V4) altitude and geoid height.
    let with_altitude = kind == "V4" || li >= 18;
    let (fix_i, sats_i) = if with_altitude {
        (li - 5, li - 4)
    } else {
        (li - 3, li - 2)
    };
    let fix = num(fix_i);
    let sats = num(sats_i).and_then(|v| u16::try_from(v).ok());
    let altitude = if with_altitude {
        f[li - 3].parse::<f64>().ok()
    } else {
        None
    };

    let hms = f[li - 1];
    let date = f[li + 4];
    let lat = nmea_coord(f[li], 2).ok_or_else(|| bad("latitude"))?;
    let lon = nmea_coord(f[li + 1], 3).ok_or_else(|| bad("longitude"))?;
    let time = match (
        two(date, 0),
        two(date, 2),
        two(date, 4),
        two(hms, 0),
        two(hms, 2),
        two(hms, 4),
    ) {
        (Some(dd), Some(mo), Some(yy), Some(h), Some(mi), Some(s)) => {
            utc(2000 + yy as i32, mo, dd, h, mi, s)
        }
        _ => None,
    };
    let no_fix = fix == Some(0) && lat == 0.0 && lon == 0.0;
    match time {
        Some(time) if !no_fix => {
            let mut p = Position::new(time, fix != Some(0), lat, lon);
            p.speed_kmh = f[li + 2].parse::<f64>().map_err(|_| bad("speed"))? * KNOTS_TO_KMH;
            p.course = f[li + 3].parse::<f64>().map_err(|_| bad("course"))?;
            p.altitude = altitude.unwrap_or(0.0);
            p.satellites = sats;
            p.ignition = ignition;
            p.inputs = inputs;
            p.power_v = power;
            p.attrs = attrs;
            d.positions.push(p);
            d.kind = MessageKind::Data;
        }
        _ => {
            // No fix yet (zero coordinates, GPS-epoch date): the device state only.
            if let Some(v) = power {
                attrs.float("power_v", v);
            }
            if let Some(v) = ignition {
                attrs.flag("ignition", v);
            }
            if let Some(v) = inputs {
                attrs.int("inputs", i64::from(v));
            }
            d.status = Some(attrs);
            d.kind = MessageKind::Status;
        }
    }
    Ok(d)
}

/// A HEADER packet as a device sends it.
pub fn encode_header(version: u8, imei: u64) -> Bytes {
    let mut b = Vec::with_capacity(18);
    b.push(HEADER_START);
    b.push(version);
    b.extend_from_slice(&imei.to_le_bytes());
    if version == HEADER_V3 {
        b.extend_from_slice(&[0; 8]);
    }
    Bytes::from(b)
}

/// One record for [`encode_package`]: what a simulated device reports.
#[derive(Clone, Debug)]
pub struct DataRecord {
    pub time: DateTime<Utc>,
    pub lat: f32,
    pub lon: f32,
    /// Whole knots, as the protocol carries them.
    pub speed_knots: u8,
    /// Degrees; sent halved.
    pub course: u16,
    /// GPS satellites (low nibble) and GLONASS satellites (high nibble).
    pub satellites: u8,
    pub power_mv: u16,
    pub ignition: bool,
    pub inputs: u16,
}

/// A data package with one data packet per record, as a device sends it.
pub fn encode_package(parcel: u8, records: &[DataRecord]) -> Bytes {
    let mut b = vec![PACKAGE_START, parcel];
    for rec in records {
        let mut data = Vec::with_capacity(25);
        data.push(1);
        data.extend_from_slice(&0u16.to_le_bytes());
        data.extend_from_slice(&rec.power_mv.to_le_bytes());
        data.push(3);
        data.extend_from_slice(&rec.lat.to_le_bytes());
        data.push(4);
        data.extend_from_slice(&rec.lon.to_le_bytes());
        data.extend_from_slice(&[
            5,
            (rec.course / 2) as u8,
            0,
            rec.satellites,
            rec.speed_knots,
        ]);
        data.extend_from_slice(&[6, 0x01, u8::from(rec.ignition)]);
        data.extend_from_slice(&rec.inputs.to_le_bytes());
        let time = (rec.time.timestamp() as u32).to_le_bytes();
        let sum = time
            .iter()
            .chain(&data)
            .fold(0u8, |a, &x| a.wrapping_add(x));
        b.push(PACKET_DATA);
        b.extend_from_slice(&(data.len() as u16).to_le_bytes());
        b.extend_from_slice(&time);
        b.extend_from_slice(&data);
        b.push(sum);
    }
    b.push(PACKAGE_END);
    Bytes::from(b)
}

#[cfg(test)]
mod tests;
