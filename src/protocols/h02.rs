//! H02 trackers (Sinotrack ST-90x, many "*HQ" clones): comma separated text sentences
//! `*HQ,<id>,<type>,...#` and fixed length binary records starting with `$`, over TCP and UDP.
//!
//! Text: `*XX,<id>,<type>,<fields...>#`, `XX` being the maker tag (`HQ`, sometimes `TH`/`hq`).
//! The position body is `hhmmss,A|V,ddmm.mmmm,N|S,dddmm.mmmm,E|W,knots,course,ddmmyy,status`
//! with an active-low status word in hex. Binary: `$`, BCD id (5 bytes, 8 for the 42 byte
//! variant), BCD time/date, BCD coordinates in degrees-minutes, battery, flags, BCD speed
//! (knots) and course, the same status word; trailing bytes vary by model and are ignored.
//! Replies (as the server of record does): `V1` → `*HQ,<id>,V4,V1,<yyyyMMddHHmmss>#`, `NBR` →
//! `*HQ,<id>,V4,NBR,<yyyyMMddHHmmss>#`, heartbeats `HTBT`/`V0` are echoed as `*HQ,<id>,HTBT#`.
//! Notes in our own words and the real packets: `protocols/h02/`.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::util::{bcd, utc};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position, KNOTS_TO_KMH};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "h02";
/// Largest frame accepted: text sentences are well under 512 bytes; `SMS` answers carry a few
/// lines of settings.
pub const MAX_FRAME: usize = 2048;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5013,
    transports: &[Transport::Tcp, Transport::Udp],
    max_frame: MAX_FRAME,
    session: |t| Box::new(H02Session::new(t)),
};

/// Binary record lengths seen from H02 devices: 32 (short), 42 (8 byte id), 45/46/48 (extended).
const BINARY_LENGTHS: [usize; 5] = [32, 42, 45, 46, 48];
/// Bytes of the binary record that carry the fix (short id); the rest is model specific.
const BINARY_CORE: usize = 29;

/// H02 protocol state of one connection or UDP peer.
pub struct H02Session {
    transport: Transport,
    id: Option<String>,
    /// Maker tag of the last sentence (`HQ` unless the device says otherwise).
    maker: String,
}

impl H02Session {
    pub fn new(transport: Transport) -> Self {
        H02Session {
            transport,
            id: None,
            maker: "HQ".to_string(),
        }
    }
}

impl Session for H02Session {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        match self.transport {
            Transport::Udp if buf.is_empty() => Ok(FrameCut::NeedMore),
            Transport::Udp => Ok(FrameCut::Frame(buf.len())),
            Transport::Tcp => tcp_frame(buf),
        }
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let mut d = match frame.first() {
            Some(b'*') => {
                let text = std::str::from_utf8(frame).map_err(|e| {
                    DecodeError::new(
                        NAME,
                        DecodeReason::Encoding,
                        e.valid_up_to(),
                        "sentence is not ASCII",
                    )
                })?;
                let d = decode_text(text, ctx, self.id.as_deref())?;
                if let Some(m) = text
                    .get(1..3)
                    .filter(|m| m.chars().all(|c| c.is_ascii_alphabetic()))
                {
                    self.maker = m.to_ascii_uppercase();
                }
                d
            }
            Some(b'$') => decode_binary(frame)?,
            Some(b'X') => Decoded::kind(MessageKind::Other),
            Some(&b) => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    format!("unknown marker {b:#04x}"),
                ))
            }
            None => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Truncated,
                    0,
                    "empty frame",
                ))
            }
        };
        match &d.device {
            Some(id) => self.id = Some(id.0.clone()),
            None => d.device = self.id.clone().map(DeviceId),
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let id = self
            .id
            .as_deref()
            .ok_or(CommandError::NotIdentified(NAME))?;
        Ok(encode_command_at(&self.maker, id, &cmd.body, Utc::now()))
    }

    fn protocol(&self) -> Protocol {
        Protocol::H02
    }
}

fn is_marker(b: u8) -> bool {
    matches!(b, b'*' | b'$' | b'X')
}

fn tcp_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(FrameCut::NeedMore);
    };
    if !is_marker(first) {
        let n = buf.iter().position(|&b| is_marker(b)).unwrap_or(buf.len());
        return Ok(FrameCut::Skip(n));
    }
    match first {
        b'*' => match buf.iter().position(|&b| b == b'#') {
            Some(end) if end < MAX_FRAME => {
                let mut len = end + 1;
                while matches!(buf.get(len), Some(b'\r' | b'\n')) {
                    len += 1;
                }
                Ok(FrameCut::Frame(len))
            }
            Some(_) => Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                0,
                format!("sentence over {MAX_FRAME} bytes"),
            )),
            None if buf.len() >= MAX_FRAME => Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                0,
                format!("no '#' within {MAX_FRAME} bytes"),
            )),
            None => Ok(FrameCut::NeedMore),
        },
        b'X' => Ok(if buf.len() >= 32 {
            FrameCut::Frame(32)
        } else {
            FrameCut::NeedMore
        }),
        _ => Ok(binary_frame(buf)),
    }
}

/// Binary records carry no length; the length is told by what follows: the next record's
/// marker (and for `$` the same device id), or the end of what the device sent.
fn binary_frame(buf: &[u8]) -> FrameCut {
    if buf.len() < BINARY_LENGTHS[0] {
        return FrameCut::NeedMore;
    }
    let id = &buf[1..6];
    let next_starts_frame = |rest: &[u8]| match rest {
        // `*XX,` (as much of it as has arrived).
        [b'*', more @ ..] => more.iter().take(3).enumerate().all(|(i, b)| {
            if i < 2 {
                b.is_ascii_alphabetic()
            } else {
                *b == b','
            }
        }),
        [b'$', more @ ..] => {
            let n = more.len().min(id.len());
            more[..n] == id[..n]
        }
        _ => false,
    };
    for len in BINARY_LENGTHS {
        if buf.len() > len && next_starts_frame(&buf[len..]) {
            return FrameCut::Frame(len);
        }
    }
    if BINARY_LENGTHS.contains(&buf.len()) {
        return FrameCut::Frame(buf.len());
    }
    if buf.len() >= BINARY_LENGTHS[BINARY_LENGTHS.len() - 1] + 6 {
        // No known layout lines up with the next record: take the common short record.
        return FrameCut::Frame(BINARY_LENGTHS[0]);
    }
    FrameCut::NeedMore
}

// ---------------------------------------------------------------------------------------------
// Binary records

/// Two BCD digits, leniently: a nibble above 9 counts as its value (as devices pad with 0xF).
fn digits2(b: u8) -> u32 {
    u32::from(b >> 4) * 10 + u32::from(b & 0x0f)
}

fn decode_binary(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let long_id = frame.len() == 42;
    let id_len = if long_id { 8 } else { 5 };
    let need = BINARY_CORE + id_len - 5;
    if frame.len() < need {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            frame.len(),
            format!("binary record: need {need} bytes, have {}", frame.len()),
        ));
    }
    let mut id = hex::encode(&frame[1..1 + id_len]);
    if long_id {
        id.truncate(15);
    }
    let b = &frame[1 + id_len..];
    let t = |i: usize, what: &str| {
        bcd(b[i]).ok_or_else(|| {
            DecodeError::new(
                NAME,
                DecodeReason::BadTime,
                1 + id_len + i,
                format!("{what} not BCD"),
            )
        })
    };
    let (hh, mi, ss) = (t(0, "hour")?, t(1, "minute")?, t(2, "second")?);
    let (dd, mo, yy) = (t(3, "day")?, t(4, "month")?, t(5, "year")?);
    let time = utc(2000 + yy as i32, mo, dd, hh, mi, ss).ok_or_else(|| {
        DecodeError::new(
            NAME,
            DecodeReason::BadTime,
            1 + id_len,
            format!("20{yy:02}-{mo:02}-{dd:02} {hh:02}:{mi:02}:{ss:02}"),
        )
    })?;
    // Latitude: DD MM.MMMM as 8 BCD digits; longitude: DDD MM.MMMM as 9 digits + flag nibble.
    let lat_deg = digits2(b[6]);
    let lat_min =
        f64::from(digits2(b[7]) * 10_000 + digits2(b[8]) * 100 + digits2(b[9])) / 10_000.0;
    let battery = b[10];
    let lon_deg = digits2(b[11]) * 10 + u32::from(b[12] >> 4);
    let lon_min_raw = u32::from(b[12] & 0x0f) * 100_000
        + digits2(b[13]) * 1000
        + digits2(b[14]) * 10
        + u32::from(b[15] >> 4);
    let lon_min = f64::from(lon_min_raw) / 10_000.0;
    let flags = b[15] & 0x0f;
    if lat_min >= 60.0 || lon_min >= 60.0 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::BadField,
            1 + id_len + 6,
            format!("coordinate minutes {lat_min} / {lon_min}: 60 or more"),
        ));
    }
    let mut lat = f64::from(lat_deg) + lat_min / 60.0;
    let mut lon = f64::from(lon_deg) + lon_min / 60.0;
    if flags & 0x04 == 0 {
        lat = -lat;
    }
    if flags & 0x08 == 0 {
        lon = -lon;
    }
    let speed_knots = digits2(b[16]) * 10 + u32::from(b[17] >> 4);
    let course = u32::from(b[17] & 0x0f) * 100 + digits2(b[18]);
    let status = u32::from_be_bytes([b[19], b[20], b[21], b[22]]);

    let mut p = Position::new(time, flags & 0x02 != 0, lat, lon);
    p.speed_kmh = f64::from(speed_knots) * KNOTS_TO_KMH;
    p.course = f64::from(course);
    if let Some(level) = battery_level(battery) {
        p.attrs.int("battery_level", level);
    }
    apply_status(&mut p, status);

    let mut d = Decoded::kind(if p.alarm.is_some() {
        MessageKind::Alarm
    } else {
        MessageKind::Data
    });
    d.device = Some(DeviceId::new(id));
    d.positions.push(p);
    Ok(d)
}

/// The battery byte of binary records: 1..=6 are bars, up to 100 a percentage, 0xF1..=0xF6
/// bars while charging.
fn battery_level(v: u8) -> Option<i64> {
    let v = i64::from(v);
    match v {
        1..=3 => Some((v - 1) * 10),
        4..=6 => Some((v - 1) * 20),
        7..=100 => Some(v),
        0xF1..=0xF6 => Some(v - 0xF0),
        _ => None,
    }
}

/// The status word is active-low: a cleared bit raises the alarm.
fn apply_status(p: &mut Position, status: u32) {
    let clear = |bit: u32| status & (1 << bit) == 0;
    p.alarm = if clear(0) {
        Some("vibration")
    } else if clear(1) || clear(18) {
        Some("sos")
    } else if clear(2) {
        Some("overspeed")
    } else if clear(19) {
        Some("power_cut")
    } else {
        None
    };
    p.ignition = Some(!clear(10));
    p.attrs.int("status", i64::from(status));
}

// ---------------------------------------------------------------------------------------------
// Text sentences

fn is_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_hex8(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn decode_text(
    text: &str,
    ctx: &DecodeCtx,
    known_id: Option<&str>,
) -> Result<Decoded, DecodeError> {
    let body = text.trim_end_matches(['\r', '\n', ' ']);
    let body = body.strip_suffix('#').unwrap_or(body);
    let body = body.get(1..).unwrap_or("");
    let fields: Vec<&str> = body.split(',').collect();
    if fields.len() < 3 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            "sentence has no type field",
        ));
    }
    let maker = fields[0];
    let id = fields[1].trim();
    let kind = fields[2];
    let device = (!id.is_empty()).then(|| DeviceId::new(id));
    let reply_id = if id.is_empty() {
        known_id.unwrap_or("")
    } else {
        id
    };
    let stamp = ctx.now.format("%Y%m%d%H%M%S");
    let maker_tag = if maker.len() == 2 && maker.bytes().all(|b| b.is_ascii_alphabetic()) {
        maker.to_ascii_uppercase()
    } else {
        "HQ".to_string()
    };

    let mut d = match kind.to_ascii_uppercase().as_str() {
        "V0" | "HTBT" => {
            let mut d = Decoded::kind(MessageKind::Heartbeat);
            // Echo of the sentence up to the type.
            let head_len = 1 + maker.len() + 1 + fields[1].len() + 1 + kind.len();
            d.reply = text.get(..head_len).map(|h| Bytes::from(format!("{h}#")));
            if let Some(level) = fields.get(3).and_then(|v| v.trim().parse::<i64>().ok()) {
                let mut a = Attributes::default();
                a.int("battery_level", level);
                d.status = Some(a);
            }
            d
        }
        "NBR" => {
            let mut d = decode_nbr(&fields);
            d.reply = Some(Bytes::from(format!(
                "*{maker_tag},{reply_id},V4,NBR,{stamp}#"
            )));
            d
        }
        "LINK" => decode_link(&fields),
        "V3" => decode_v3(&fields),
        "VP1" => decode_vp1(&fields)?,
        "SMS" => {
            let text = body.splitn(4, ',').nth(3).unwrap_or("").to_string();
            let mut d = Decoded::kind(MessageKind::CommandResponse);
            let mut a = Attributes::default();
            a.text("result", text.as_str());
            d.status = Some(a);
            d.command_response = Some(CommandResponse {
                text,
                success: None,
                seq: None,
            });
            d
        }
        "V4" => decode_v4(&fields, ctx),
        "V1" => {
            let mut d = decode_position_sentence(&fields, 3, ctx);
            if d.positions.is_empty() {
                // Answering would tell the device a fix was taken that was not: the reply
                // confirms only what was parsed. A corrupt fix is a counted refusal; a
                // sentence without one (no fix yet, missing N/S) is kept unanswered.
                if fields
                    .get(5..8)
                    .is_some_and(|c| minutes_over_59(c[0]) || minutes_over_59(c[2]))
                {
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::BadField,
                        0,
                        "V1 coordinate with minutes of 60 or more",
                    ));
                }
                d.device = device;
                return Ok(d);
            }
            d.reply = Some(Bytes::from(format!(
                "*{maker_tag},{reply_id},V4,V1,{stamp}#"
            )));
            d
        }
        _ => decode_position_sentence(&fields, 3, ctx),
    };
    d.device = device;
    Ok(d)
}

/// A command answer `V4,<command>,<its parameters/result...>,<command hhmmss>,<position body>`.
fn decode_v4(fields: &[&str], ctx: &DecodeCtx) -> Decoded {
    // The position body starts at a time field followed by a validity and a latitude hemisphere.
    let body_at = (4..fields.len()).find(|&i| {
        fields
            .get(i)
            .is_some_and(|f| f.is_empty() || is_digits(f, 6))
            && fields.get(i + 3).is_some_and(|h| matches!(*h, "N" | "S"))
            && fields.get(i + 5).is_some_and(|h| matches!(*h, "E" | "W"))
    });
    let response_end = body_at.unwrap_or(fields.len()).min(fields.len());
    let response = fields.get(3..response_end).unwrap_or(&[]);
    let mut d = match body_at {
        Some(i) => decode_position_sentence(fields, i, ctx),
        None => Decoded::kind(MessageKind::CommandResponse),
    };
    let failed = response
        .iter()
        .any(|f| f.eq_ignore_ascii_case("ERROR") || f.eq_ignore_ascii_case("FAIL"));
    let done = response
        .iter()
        .any(|f| f.eq_ignore_ascii_case("DONE") || f.eq_ignore_ascii_case("OK"));
    let text = response.join(",");
    d.command_response = Some(CommandResponse {
        text,
        success: if failed {
            Some(false)
        } else if done {
            Some(true)
        } else {
            None
        },
        seq: None,
    });
    d.kind = MessageKind::CommandResponse;
    d
}

/// A `ddmm.mmmm`, `-dd-mm.mmmm` or `dddmmmmmm` coordinate whose minutes are 60 or more.
fn minutes_over_59(raw: &str) -> bool {
    let s = raw.trim();
    let minutes = if let Some(rest) = s.strip_prefix('-') {
        rest.split_once('-').and_then(|(_, m)| parse_decimal(m))
    } else if let Some((int, _)) = s.split_once('.') {
        int.get(int.len().saturating_sub(2)..)
            .filter(|_| int.len() >= 2)
            .and_then(parse_uint)
            .map(|m| m as f64)
    } else if s.len() >= 7 {
        s.get(s.len() - 6..)
            .and_then(parse_uint)
            .map(|m| m as f64 / 10_000.0)
    } else {
        None
    };
    minutes.is_some_and(|m| m >= 60.0)
}

/// `ddmm.mmmm` (any number of degree digits), `-dd-mm.mmmm`, or `dddmmmmmm` (minutes with four
/// implied decimals); `None` when the field has none of these shapes.
fn parse_coordinate(raw: &str, hemisphere: &str, max: f64) -> Option<f64> {
    let s = raw.trim();
    let (deg, min): (f64, f64) = if let Some(rest) = s.strip_prefix('-') {
        let (d, m) = rest.split_once('-')?;
        (parse_uint(d)? as f64, parse_decimal(m)?)
    } else if let Some((int, frac)) = s.split_once('.') {
        if int.len() < 2 || !int.bytes().all(|b| b.is_ascii_digit()) || frac.is_empty() {
            return None;
        }
        let (d, m) = int.split_at(int.len() - 2);
        let deg = if d.is_empty() { 0 } else { parse_uint(d)? };
        (deg as f64, parse_decimal(&format!("{m}.{frac}"))?)
    } else if s.len() >= 7 && s.bytes().all(|b| b.is_ascii_digit()) {
        let (d, m) = s.split_at(s.len() - 6);
        (parse_uint(d)? as f64, parse_uint(m)? as f64 / 10_000.0)
    } else {
        return None;
    };
    // Minutes of 60 or more are not a coordinate (`5565.0000` is not 55° 65′): a corrupt fix.
    if !(0.0..60.0).contains(&min) {
        return None;
    }
    let value = deg + min / 60.0;
    if !(value.is_finite() && value <= max) {
        return None;
    }
    match hemisphere {
        "N" | "E" => Some(value),
        "S" | "W" => Some(-value),
        _ => None,
    }
}

fn parse_uint(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())?
}

fn parse_decimal(s: &str) -> Option<f64> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|&b| b == b'.').count() <= 1;
    ok.then(|| s.parse::<f64>().ok())
        .flatten()
        .filter(|v| v.is_finite())
}

/// The standard position body starting at `fields[at]` (the time field).
fn decode_position_sentence(fields: &[&str], at: usize, ctx: &DecodeCtx) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Other);
    if let Some(p) = parse_position_body(fields, at, ctx) {
        d.kind = if p.alarm.is_some() {
            MessageKind::Alarm
        } else {
            MessageKind::Data
        };
        d.positions.push(p);
    }
    d
}

fn parse_position_body(fields: &[&str], at: usize, ctx: &DecodeCtx) -> Option<Position> {
    let f = |i: usize| fields.get(at + i).copied();
    let time = f(0)?;
    if !(time.is_empty() || is_digits(time, 6)) {
        return None;
    }
    let valid = match f(1)? {
        "A" => true,
        v if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => true,
        "V" | "B" | "" => false,
        _ => return None,
    };
    let lat = parse_coordinate(f(2)?, f(3)?, 90.0)?;
    let lon = parse_coordinate(f(4)?, f(5)?, 180.0)?;
    let speed = parse_decimal(f(6)?)?;
    let course = match f(7).map(str::trim) {
        None | Some("") => 0.0,
        Some(c) => parse_decimal(c)?,
    };
    let mut i = at + 8;
    let mut battery = None;
    if let (Some(b), Some(next)) = (fields.get(i), fields.get(i + 1)) {
        if !b.is_empty()
            && b.len() != 6
            && b.bytes().all(|c| c.is_ascii_digit())
            && (next.is_empty() || is_digits(next, 6))
        {
            battery = b.parse::<i64>().ok();
            i += 1;
        }
    }
    let mut date = None;
    if let Some(dt) = fields.get(i) {
        if dt.is_empty() || is_digits(dt, 6) {
            date = (!dt.is_empty()).then_some(*dt);
            i += 1;
        }
    }
    let fix_time = date
        .and_then(|dt| {
            let n = |s: &str, k: usize| s.get(k..k + 2).and_then(|v| v.parse::<u32>().ok());
            let (h, m, s) = if time.is_empty() {
                (0, 0, 0)
            } else {
                (n(time, 0)?, n(time, 2)?, n(time, 4)?)
            };
            utc(2000 + n(dt, 4)? as i32, n(dt, 2)?, n(dt, 0)?, h, m, s)
        })
        .unwrap_or(ctx.now);

    let mut p = Position::new(fix_time, valid, lat, lon);
    p.speed_kmh = speed * KNOTS_TO_KMH;
    p.course = course;
    if let Some(b) = battery {
        p.attrs.int("battery_level", b);
    }
    let rest = fields.get(i..).unwrap_or(&[]);
    // Some models put three SIM fields (blank, phone or IP, ICCID) before the status word.
    let rest = if rest.len() >= 4 && !is_hex8(rest[0]) && is_hex8(rest[3]) {
        &rest[3..]
    } else {
        rest
    };
    let rest = match rest.first() {
        Some(s) if is_hex8(s) => {
            apply_status(&mut p, u32::from_str_radix(s, 16).unwrap_or(u32::MAX));
            &rest[1..]
        }
        _ => rest,
    };
    if !apply_odometer_block(&mut p, rest) {
        for (n, v) in rest.iter().enumerate() {
            p.attrs
                .push(AttrKey::Io(n as u32 + 1), AttrValue::Text(v.trim().into()));
        }
    }
    Some(p)
}

/// `odometer,temperature,fuel,altitude,lac(hex),cid(hex)` some models append after the status.
fn apply_odometer_block(p: &mut Position, rest: &[&str]) -> bool {
    let [odo, temp, fuel, alt, lac, cid] = rest else {
        return false;
    };
    let signed = |s: &str| {
        s.strip_prefix('-')
            .unwrap_or(s)
            .bytes()
            .all(|b| b.is_ascii_digit())
            && !s.is_empty()
    };
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(parse_uint(odo).is_some()
        && signed(temp)
        && fuel.contains('.')
        && parse_decimal(fuel).is_some()
        && signed(alt)
        && hex(lac)
        && hex(cid))
    {
        return false;
    }
    p.odometer_m = parse_uint(odo).map(|v| v as f64);
    if let Ok(t) = temp.parse::<i64>() {
        p.attrs.int("temp1", t);
    }
    if let Some(f) = parse_decimal(fuel) {
        p.attrs.float("fuel", f);
    }
    p.altitude = alt.parse::<f64>().unwrap_or(0.0);
    p.attrs
        .int("lac", i64::from_str_radix(lac, 16).unwrap_or(0));
    p.attrs
        .int("cell_id", i64::from_str_radix(cid, 16).unwrap_or(0));
    true
}

fn int_attr(a: &mut Attributes, key: &'static str, v: Option<&&str>) {
    if let Some(n) = v.and_then(|s| s.trim().parse::<i64>().ok()) {
        a.int(key, n);
    }
}

fn status_attr(a: &mut Attributes, v: Option<&&str>) {
    if let Some(s) = v.filter(|s| is_hex8(s)) {
        a.int("status", i64::from(u32::from_str_radix(s, 16).unwrap_or(0)));
    }
}

/// Cell towers as `lac/cid/rssi` joined by `;`; the first one is the serving cell.
fn cells_attr(a: &mut Attributes, cells: &[[&str; 3]]) {
    if let Some([lac, cid, rssi]) = cells.first() {
        int_attr(a, "lac", Some(lac));
        int_attr(a, "cell_id", Some(cid));
        int_attr(a, "rssi", Some(rssi));
    }
    let all: Vec<String> = cells.iter().map(|c| c.map(str::trim).join("/")).collect();
    a.text("cells", all.join(";"));
}

/// `NBR,hhmmss,mcc,mnc,delay,count,(lac,cid,rssi)*,ddmmyy,status`: cell towers, no fix.
fn decode_nbr(fields: &[&str]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Lbs);
    let mut a = Attributes::default();
    int_attr(&mut a, "mcc", fields.get(4));
    int_attr(&mut a, "mnc", fields.get(5));
    let tail = (9..fields.len())
        .rev()
        .find(|&i| is_hex8(fields[i]) && is_digits(fields[i - 1], 6));
    if let Some(s) = tail {
        let cells: Vec<[&str; 3]> = fields[8..s - 1]
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        cells_attr(&mut a, &cells);
        status_attr(&mut a, fields.get(s));
    }
    d.status = Some(a);
    d
}

/// `LINK,hhmmss,rssi,satellites,battery,steps,turnovers,ddmmyy,status`.
fn decode_link(fields: &[&str]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Heartbeat);
    let mut a = Attributes::default();
    int_attr(&mut a, "rssi", fields.get(4));
    int_attr(&mut a, "satellites", fields.get(5));
    int_attr(&mut a, "battery_level", fields.get(6));
    int_attr(&mut a, "steps", fields.get(7));
    int_attr(&mut a, "turnovers", fields.get(8));
    status_attr(&mut a, fields.get(10));
    d.status = Some(a);
    d
}

/// `V3,hhmmss,<mcc><mnc>,count,(lac,cid,rssi,x)*,battery(hex),reboot,X,ddmmyy,status`.
fn decode_v3(fields: &[&str]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Lbs);
    let mut a = Attributes::default();
    if let Some(mm) = fields.get(4).filter(|s| s.len() > 3 && s.is_ascii()) {
        int_attr(&mut a, "mcc", Some(&&mm[..3]));
        int_attr(&mut a, "mnc", Some(&&mm[3..]));
    }
    if let Some(x) = fields.iter().rposition(|f| *f == "X").filter(|&x| x >= 8) {
        let cells: Vec<[&str; 3]> = fields[6..x - 2]
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        cells_attr(&mut a, &cells);
        if let Ok(v) = i64::from_str_radix(fields[x - 2], 16) {
            a.int("battery", v);
        }
        status_attr(&mut a, fields.get(x + 2));
    }
    d.status = Some(a);
    d
}

/// `VP1,V,mcc,mnc,lac,cid,rssi(Ylac,cid,rssi)*` (cells) or `VP1,A,lat,N,lon,E,speed,course,ddmmyy`.
fn decode_vp1(fields: &[&str]) -> Result<Decoded, DecodeError> {
    match fields.get(3).copied() {
        Some("V") => {
            let mut d = Decoded::kind(MessageKind::Lbs);
            let mut a = Attributes::default();
            int_attr(&mut a, "mcc", fields.get(4));
            int_attr(&mut a, "mnc", fields.get(5));
            let joined = fields.get(6..).unwrap_or(&[]).join(",");
            let cells: Vec<[&str; 3]> = joined
                .split('Y')
                .filter_map(|c| {
                    let v: Vec<&str> = c.split(',').collect();
                    (v.len() == 3).then(|| [v[0], v[1], v[2]])
                })
                .collect();
            cells_attr(&mut a, &cells);
            d.status = Some(a);
            Ok(d)
        }
        Some("A" | "B") => {
            let f = |i: usize| fields.get(i).copied().unwrap_or("");
            let lat = parse_coordinate(f(4), f(5), 90.0);
            let lon = parse_coordinate(f(6), f(7), 180.0);
            let date = f(10);
            let time = is_digits(date, 6)
                .then(|| {
                    let n = |k: usize| date.get(k..k + 2).and_then(|v| v.parse::<u32>().ok());
                    utc(2000 + n(4)? as i32, n(2)?, n(0)?, 0, 0, 0)
                })
                .flatten();
            let mut d = Decoded::kind(MessageKind::Other);
            if let (Some(lat), Some(lon), Some(time)) = (lat, lon, time) {
                let mut p = Position::new(time, true, lat, lon);
                p.speed_kmh = parse_decimal(f(8)).unwrap_or(0.0) * KNOTS_TO_KMH;
                p.course = parse_decimal(f(9)).unwrap_or(0.0);
                d.kind = MessageKind::Data;
                d.positions.push(p);
            }
            Ok(d)
        }
        _ => Ok(Decoded::kind(MessageKind::Other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and device-side encoders

/// A command sentence `*<maker>,<id>,<CMD>,<hhmmss>[,<params>]#`. `EngineStop` is `S20,1,1`
/// and `EngineResume` `S20,1,0`; a `Text` starting with `*` is sent verbatim, otherwise it is
/// `CMD[,params]` and gets the header and time added.
pub fn encode_command_at(maker: &str, id: &str, body: &CommandBody, time: DateTime<Utc>) -> Bytes {
    let hms = time.format("%H%M%S");
    let (cmd, params): (&str, &str) = match body {
        CommandBody::EngineStop => ("S20", "1,1"),
        CommandBody::EngineResume => ("S20", "1,0"),
        CommandBody::Text(t) if t.starts_with('*') => return Bytes::from(t.clone()),
        CommandBody::Text(t) => {
            let t = t.trim().trim_end_matches('#');
            t.split_once(',').unwrap_or((t, ""))
        }
    };
    if params.is_empty() {
        Bytes::from(format!("*{maker},{id},{cmd},{hms}#"))
    } else {
        Bytes::from(format!("*{maker},{id},{cmd},{hms},{params}#"))
    }
}

/// What a simulated device reports in [`encode_v1`] / [`encode_binary`].
#[derive(Clone, Debug)]
pub struct Fix {
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_knots: f64,
    pub course: u16,
    /// The active-low status word (`0xFFFFFBFF`: no alarm, ignition off).
    pub status: u32,
}

fn ddmm(value: f64, deg_digits: usize) -> String {
    let v = value.abs();
    let deg = v.trunc();
    let min = (v - deg) * 60.0;
    format!("{:0w$}{:07.4}", deg as u32, min, w = deg_digits)
}

/// A `V1` position sentence as a device sends it.
pub fn encode_v1(id: &str, fix: &Fix) -> Bytes {
    Bytes::from(format!(
        "*HQ,{id},V1,{},{},{},{},{},{},{:.2},{},{},{:08X}#",
        fix.time.format("%H%M%S"),
        if fix.valid { 'A' } else { 'V' },
        ddmm(fix.lat, 2),
        if fix.lat < 0.0 { 'S' } else { 'N' },
        ddmm(fix.lon, 3),
        if fix.lon < 0.0 { 'W' } else { 'E' },
        fix.speed_knots,
        fix.course,
        fix.time.format("%d%m%y"),
        fix.status
    ))
}

/// A heartbeat a device sends (`HTBT` with its battery level).
pub fn encode_heartbeat(id: &str, battery: u8) -> Bytes {
    Bytes::from(format!("*HQ,{id},HTBT,{battery}#"))
}

fn bcd_byte(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// A 32 byte binary record (10 digit id) as a device sends it.
pub fn encode_binary(id: &str, fix: &Fix) -> Bytes {
    use chrono::{Datelike, Timelike};
    let mut out = Vec::with_capacity(32);
    out.push(b'$');
    let digits: String = format!("{id:0>10}").chars().take(10).collect();
    out.extend(hex::decode(&digits).unwrap_or_else(|_| vec![0; 5]));
    let t = fix.time;
    for v in [
        t.hour(),
        t.minute(),
        t.second(),
        t.day(),
        t.month(),
        t.year().rem_euclid(100) as u32,
    ] {
        out.push(bcd_byte(v));
    }
    let lat = ddmm(fix.lat, 2).replace('.', ""); // DDMMmmmm
    let lon = ddmm(fix.lon, 3).replace('.', ""); // DDDMMmmmm
    let nib = |s: &str, i: usize| {
        s.as_bytes()
            .get(i)
            .map_or(0, |c| c.wrapping_sub(b'0') & 0x0f)
    };
    for i in (0..8).step_by(2) {
        out.push(nib(&lat, i) << 4 | nib(&lat, i + 1));
    }
    out.push(100); // battery %
    for i in (0..8).step_by(2) {
        out.push(nib(&lon, i) << 4 | nib(&lon, i + 1));
    }
    let flags =
        u8::from(fix.valid) << 1 | u8::from(fix.lat >= 0.0) << 2 | u8::from(fix.lon >= 0.0) << 3;
    out.push(nib(&lon, 8) << 4 | flags);
    let speed = format!("{:03}", (fix.speed_knots.round() as u32).min(999));
    let course = format!("{:03}", u32::from(fix.course).min(359));
    out.push(nib(&speed, 0) << 4 | nib(&speed, 1));
    out.push(nib(&speed, 2) << 4 | nib(&course, 0));
    out.push(nib(&course, 1) << 4 | nib(&course, 2));
    out.extend(fix.status.to_be_bytes());
    out.extend([0xFF, 0x00, 0x00]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
