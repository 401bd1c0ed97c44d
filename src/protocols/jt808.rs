//! JT/T 808 (2011/2013/2019) terminals and the many Chinese trackers built on it, over TCP.
//!
//! A frame is `7E | header | body | XOR checksum | 7E`, with `7E`/`7D` inside escaped as
//! `7D 02`/`7D 01` (a few vendors use `E7` delimiters with their own escapes). Header:
//! message id (u16), properties (u16: body length in bits 0-9, encryption bits 10-12,
//! sub-package bit 13, 2019 version flag bit 14), [version (u8) if bit 14], terminal phone
//! number (6 BCD bytes; 10 with the version flag), message serial (u16), [packet count and
//! index (u16 each) if bit 13]. The checksum is the XOR of header and body, before escaping.
//! Registration (0x0100) is answered with 0x8100 (result 0 and an authentication code); most
//! other terminal messages with the platform general response 0x8001 (their serial and id,
//! result 0). Times are BCD `yyMMddHHmmss` in GMT+8.
//! Notes in our own words and the real packets: `protocols/jt808/`.

use bytes::Bytes;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

use super::util::{bcd, utc, Reader};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "jt808";
/// Largest frame accepted: the body length field has 10 bits (1023 bytes); with the header,
/// and every byte possibly escaped to two, a frame stays under 2.2 KiB. 4 KiB leaves room.
pub const MAX_FRAME: usize = 4096;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5015,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(Jt808Session::new()),
};

/// Message ids.
pub mod msg {
    pub const TERMINAL_GENERAL_RESPONSE: u16 = 0x0001;
    pub const HEARTBEAT: u16 = 0x0002;
    pub const TERMINAL_LOGOUT: u16 = 0x0003;
    pub const TERMINAL_REGISTER: u16 = 0x0100;
    pub const TERMINAL_AUTH: u16 = 0x0102;
    pub const PARAMETERS_RESPONSE: u16 = 0x0104;
    pub const TERMINAL_ATTRIBUTES: u16 = 0x0107;
    pub const TIME_SYNC_REQUEST: u16 = 0x0109;
    pub const LOCATION_REPORT: u16 = 0x0200;
    pub const LOCATION_QUERY_RESPONSE: u16 = 0x0201;
    pub const LOCATION_BATCH_2: u16 = 0x0210;
    pub const VEHICLE_CONTROL_RESPONSE: u16 = 0x0500;
    pub const HEARTBEAT_2: u16 = 0x0506;
    pub const COMMAND_RESPONSE: u16 = 0x0701;
    pub const DRIVER_IDENTITY: u16 = 0x0702;
    pub const LOCATION_BATCH: u16 = 0x0704;
    pub const TRANSPARENT: u16 = 0x0900;
    pub const TIMEZONE_SYNC: u16 = 0x1007;
    pub const TEXT_MESSAGE_RESPONSE: u16 = 0x1300;
    pub const ACCELERATION: u16 = 0x2070;
    pub const LOCATION_REPORT_2: u16 = 0x5501;
    pub const LOCATION_REPORT_BLIND: u16 = 0x5502;
    pub const REPORT_TEXT_MESSAGE: u16 = 0x6006;
    pub const PHOTO: u16 = 0x8888;

    pub const GENERAL_RESPONSE: u16 = 0x8001;
    pub const GENERAL_RESPONSE_2: u16 = 0x4401;
    pub const TERMINAL_REGISTER_RESPONSE: u16 = 0x8100;
    pub const TIME_SYNC_RESPONSE: u16 = 0x8109;
    pub const TERMINAL_CONTROL: u16 = 0x8105;
    pub const SEND_TEXT_MESSAGE: u16 = 0x8300;
    pub const VEHICLE_CONTROL: u16 = 0x8500;
    pub const OIL_CONTROL: u16 = 0xA006;
}

/// How an engine stop/resume is put on the wire; models differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineControl {
    /// 0x8105 terminal control with vendor command word 0xF0 (cut) / 0xF1 (restore): the
    /// default of the reference server, understood by most JT808 trackers with a relay.
    TerminalControl,
    /// 0xA006 oil control: flag (1 cut / 0 restore) and the BCD time in GMT+8.
    OilControl,
    /// 0x8500 vehicle control (JT/T 808-2013 layout): one control flag byte, bit 0 set to cut.
    /// In the standard this bit locks the doors; some vendors wire it to the relay instead.
    VehicleControl,
}

/// Device clock offset (GMT+8, China standard time).
const DEVICE_UTC_OFFSET_H: i64 = 8;

/// JT808 protocol state of one connection.
pub struct Jt808Session {
    /// The terminal phone number bytes as the device sends them (6, 7 or 10 bytes).
    phone: Option<Vec<u8>>,
    /// 2019 protocol version byte, when the device uses the version flag.
    version: Option<u8>,
    delimiter: u8,
    /// Serial of the next platform message.
    serial: u16,
    engine: EngineControl,
}

impl Default for Jt808Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Jt808Session {
    pub fn new() -> Self {
        Jt808Session {
            phone: None,
            version: None,
            delimiter: 0x7E,
            serial: 0,
            engine: EngineControl::TerminalControl,
        }
    }

    /// A session that sends engine stop/resume the given way.
    pub fn with_engine_control(engine: EngineControl) -> Self {
        Jt808Session {
            engine,
            ..Self::new()
        }
    }

    fn next_serial(&mut self) -> u16 {
        let s = self.serial;
        self.serial = self.serial.wrapping_add(1);
        s
    }

    fn message(&mut self, id: u16, body: &[u8]) -> Bytes {
        let serial = self.next_serial();
        let head = Header {
            version: self.version,
            phone: self.phone.clone().unwrap_or_default(),
            delimiter: self.delimiter,
        };
        encode_message(&head, id, Serial::Word(serial), body)
    }
}

/// What a platform message header needs from the terminal it answers.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: Option<u8>,
    pub phone: Vec<u8>,
    pub delimiter: u8,
}

/// The serial field of a platform message (one vendor answer carries a single byte).
#[derive(Clone, Copy, Debug)]
pub enum Serial {
    Word(u16),
    Byte(u8),
}

impl Session for Jt808Session {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        next_frame(buf)
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        match frame.first() {
            Some(b'(') => Ok(self.decode_text(frame, ctx)),
            Some(&d @ (0x7E | 0xE7)) => self.decode_binary(frame, d, ctx),
            Some(&b) => Err(DecodeError::new(
                NAME,
                DecodeReason::Framing,
                0,
                format!("unknown delimiter {b:#04x}"),
            )),
            None => Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                0,
                "empty frame",
            )),
        }
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let phone = self
            .phone
            .clone()
            .ok_or(CommandError::NotIdentified(NAME))?;
        let head = Header {
            version: self.version,
            phone,
            delimiter: self.delimiter,
        };
        Ok(encode_command(&head, self.engine, cmd, Utc::now()))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Jt808
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(FrameCut::NeedMore);
    };
    if !matches!(first, b'(' | 0x7E | 0xE7) {
        let n = buf
            .iter()
            .position(|b| matches!(b, b'(' | 0x7E | 0xE7))
            .unwrap_or(buf.len());
        return Ok(FrameCut::Skip(n));
    }
    if buf.len() < 2 {
        return Ok(FrameCut::NeedMore);
    }
    let close = if first == b'(' { b')' } else { first };
    if first != b'(' && buf[1] == first {
        // Two delimiters in a row: the first closed a frame we never saw the start of.
        return Ok(FrameCut::Skip(1));
    }
    match buf[1..].iter().position(|&b| b == close) {
        Some(i) if i + 2 <= MAX_FRAME => Ok(FrameCut::Frame(i + 2)),
        Some(_) => Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            0,
            format!("frame over {MAX_FRAME} bytes"),
        )),
        None if buf.len() >= MAX_FRAME => Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            0,
            format!("no closing delimiter within {MAX_FRAME} bytes"),
        )),
        None => Ok(FrameCut::NeedMore),
    }
}

/// The bytes between the delimiters with the escapes undone.
fn unescape(inner: &[u8], delimiter: u8) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        let escape = if delimiter == 0xE7 {
            matches!(b, 0xE6 | 0x3E)
        } else {
            b == 0x7D
        };
        if escape {
            let ext = inner.get(i + 1).copied();
            let v = match (delimiter, b, ext) {
                (0x7E, 0x7D, Some(0x01)) => 0x7D,
                (0x7E, 0x7D, Some(0x02)) => 0x7E,
                (0xE7, 0xE6, Some(0x01)) => 0xE6,
                (0xE7, 0xE6, Some(0x02)) => 0xE7,
                (0xE7, 0x3E, Some(0x01)) => 0x3E,
                (0xE7, 0x3E, Some(0x02)) => 0x3D,
                _ => {
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::Framing,
                        i + 1,
                        format!(
                            "bad escape {b:#04x} {}",
                            ext.map_or("<end>".into(), |e| format!("{e:#04x}"))
                        ),
                    ))
                }
            };
            out.push(v);
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn escape_into(out: &mut Vec<u8>, data: &[u8], delimiter: u8) {
    for &b in data {
        match (delimiter, b) {
            (0xE7, 0xE6) => out.extend([0xE6, 0x01]),
            (0xE7, 0xE7) => out.extend([0xE6, 0x02]),
            (0xE7, 0x3E) => out.extend([0x3E, 0x01]),
            (0xE7, 0x3D) => out.extend([0x3E, 0x02]),
            (0xE7, _) => out.push(b),
            (_, 0x7D) => out.extend([0x7D, 0x01]),
            (_, 0x7E) => out.extend([0x7D, 0x02]),
            _ => out.push(b),
        }
    }
}

fn xor(data: &[u8]) -> u8 {
    data.iter().fold(0, |a, b| a ^ b)
}

/// A whole platform (or device) message: header, body, checksum, escaped and delimited.
pub fn encode_message(head: &Header, id: u16, serial: Serial, body: &[u8]) -> Bytes {
    let mut raw = Vec::with_capacity(body.len() + 20);
    raw.extend(id.to_be_bytes());
    let mut props = (body.len() as u16) & 0x03FF;
    if head.version.is_some() {
        props |= 0x4000;
    }
    raw.extend(props.to_be_bytes());
    if let Some(v) = head.version {
        raw.push(v);
    }
    raw.extend(&head.phone);
    match serial {
        Serial::Word(s) => raw.extend(s.to_be_bytes()),
        Serial::Byte(s) => raw.push(s),
    }
    raw.extend(body);
    raw.push(xor(&raw));
    let mut out = Vec::with_capacity(raw.len() + 8);
    out.push(head.delimiter);
    escape_into(&mut out, &raw, head.delimiter);
    out.push(head.delimiter);
    Bytes::from(out)
}

// ---------------------------------------------------------------------------------------------
// Identity

/// The terminal id: the BCD digits of the phone field; a field that is not BCD carries a
/// 14-digit IMEI as a 48-bit number (the 15th, Luhn digit is recomputed).
pub fn decode_id(phone: &[u8]) -> String {
    let hexed = hex::encode(phone);
    if hexed.bytes().all(|b| b.is_ascii_digit()) {
        return hexed;
    }
    let mut v: u64 = 0;
    for &b in phone.iter().take(6) {
        v = v << 8 | u64::from(b);
    }
    format!("{v}{}", luhn_digit(v))
}

fn luhn_digit(v: u64) -> u64 {
    let mut sum = 0;
    for (i, c) in v.to_string().bytes().rev().enumerate() {
        let mut d = u64::from(c - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    (10 - sum % 10) % 10
}

/// The id without its leading zeros (`013511221122` → `13511221122`), as devices are registered.
fn device_id(full: &str) -> DeviceId {
    let stripped = full.trim_start_matches('0');
    DeviceId::new(if stripped.is_empty() { "0" } else { stripped })
}

/// The phone field for an id: `digits` BCD digits, left-padded with zeros.
pub fn encode_phone(id: &str, len: usize) -> Vec<u8> {
    let digits: String = id.chars().filter(char::is_ascii_digit).collect();
    let padded = format!("{digits:0>w$}", w = len * 2);
    let tail = &padded[padded.len() - len * 2..];
    hex::decode(tail).unwrap_or_else(|_| vec![0; len])
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// The header of one received frame.
struct Frame<'a> {
    id: u16,
    props: u16,
    serial: u16,
    phone: &'a [u8],
    body: &'a [u8],
    /// `(total, index)` of a sub-packaged message.
    packet: Option<(u16, u16)>,
}

fn bcd_time(b: &[u8], offset: usize) -> Result<DateTime<Utc>, DecodeError> {
    let d = |i: usize| b.get(i).copied().and_then(bcd);
    let bad = || {
        DecodeError::new(
            NAME,
            DecodeReason::BadTime,
            offset,
            format!("time {}", hex::encode(b)),
        )
    };
    let (yy, mo, dd, hh, mi, ss) = (
        d(0).ok_or_else(bad)?,
        d(1).ok_or_else(bad)?,
        d(2).ok_or_else(bad)?,
        d(3).ok_or_else(bad)?,
        d(4).ok_or_else(bad)?,
        d(5).ok_or_else(bad)?,
    );
    let local = utc(2000 + yy as i32, mo, dd, hh, mi, ss).ok_or_else(bad)?;
    Ok(local - Duration::hours(DEVICE_UTC_OFFSET_H))
}

/// JT/T 808 alarm flag bits → our alarm names, most urgent first.
const ALARM_BITS: &[(u32, &str)] = &[
    (0, "sos"),
    (29, "accident"),
    (30, "accident"),
    (8, "power_cut"),
    (26, "theft"),
    (28, "tow"),
    (31, "door"),
    (1, "overspeed"),
    (2, "fatigue_driving"),
    (7, "low_battery"),
    (5, "gps_antenna_cut"),
    (6, "gps_antenna_cut"),
    (20, "geofence"),
    (21, "geofence"),
    (19, "parking"),
    (25, "fuel_leak"),
    (15, "vibration"),
    (4, "fault"),
];

/// Status bits, then latitude and longitude (1e-6 degrees, sign from the status).
fn read_coordinates(r: &mut Reader<'_>) -> Result<(u32, bool, f64, f64), DecodeError> {
    let status = r.u32("status flags")?;
    let mut lat = f64::from(r.u32("latitude")?) / 1e6;
    let mut lon = f64::from(r.u32("longitude")?) / 1e6;
    if status & 0x04 != 0 {
        lat = -lat;
    }
    if status & 0x08 != 0 {
        lon = -lon;
    }
    Ok((status, status & 0x02 != 0, lat, lon))
}

fn apply_status(p: &mut Position, status: u32) {
    p.ignition = Some(status & 0x01 != 0);
    let cut = status & (1 << 10) != 0;
    p.outputs = Some(u32::from(cut));
    p.attrs.flag("blocked", cut);
    p.attrs.int("status", i64::from(status));
}

/// A location information body (0x0200, and inside 0x0201, 0x0500, 0x0704, 0x0210).
fn decode_location(body: &[u8]) -> Result<Position, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let alarm = r.u32("alarm flags")?;
    let (status, valid, lat, lon) = read_coordinates(&mut r)?;
    let altitude = r.i16("altitude")?;
    let speed = r.u16("speed")?;
    let course = r.u16("course")?;
    let at = r.pos();
    let time = bcd_time(r.take(6, "time")?, at)?;
    let mut p = Position::new(time, valid, lat, lon);
    p.altitude = f64::from(altitude);
    p.speed_kmh = f64::from(speed) / 10.0;
    p.course = f64::from(course);
    p.alarm = ALARM_BITS
        .iter()
        .find(|(bit, _)| alarm & (1 << bit) != 0)
        .map(|(_, name)| *name);
    if alarm != 0 {
        p.attrs.int("alarm_flags", i64::from(alarm));
    }
    apply_status(&mut p, status);
    decode_items(&mut p, r.rest());
    Ok(p)
}

fn be(v: &[u8]) -> u64 {
    v.iter().take(8).fold(0, |a, &b| a << 8 | u64::from(b))
}

/// Additional information items `id u8 | length u8 | value`. A standard item with an
/// unexpected length and every vendor item is kept raw as `io<id>`; an item running past the
/// end ends the list (the fix itself is kept).
fn decode_items(p: &mut Position, mut rest: &[u8]) {
    while let [id, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let Some(value) = tail.get(..len) else {
            p.attrs.int("items_truncated", i64::from(*id));
            return;
        };
        rest = &tail[len..];
        let v = be(value);
        match (*id, len) {
            (0x01, 4) => p.odometer_m = Some(v as f64 * 100.0),
            (0x02, 2) => p.attrs.float("fuel", v as f64 / 10.0),
            (0x03, 2) => p.attrs.float("tacho_speed_kmh", v as f64 / 10.0),
            (0x04, 2) => p.attrs.int("alarm_event_id", v as i64),
            (0x25, 4) => p.attrs.int("signal_status", v as i64),
            (0x2A, 2) => p.attrs.int("io_status", v as i64),
            (0x2B, 4) => {
                p.attrs.int("adc1", (v & 0xFFFF) as i64);
                p.attrs.int("adc2", (v >> 16) as i64);
            }
            (0x30, 1) => p.attrs.int("rssi", v as i64),
            (0x31, 1) => p.satellites = Some(v as u16),
            _ => p
                .attrs
                .push(AttrKey::Io(u32::from(*id)), AttrValue::Bytes(value.into())),
        }
    }
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_matches(|c: char| c.is_control() || c == ' ')
        .to_string()
}

impl Jt808Session {
    fn decode_text(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Decoded {
        let sentence = String::from_utf8_lossy(frame).to_string();
        if sentence.contains("BASE,2") {
            let mut d = Decoded::kind(MessageKind::Heartbeat);
            let stamp = ctx.now.format("%Y%m%d%H%M%S").to_string();
            d.reply = Some(Bytes::from(sentence.replace("TIME", &stamp)));
            return d;
        }
        let mut d = Decoded::kind(MessageKind::CommandResponse);
        d.command_response = Some(CommandResponse {
            text: sentence,
            success: None,
            seq: None,
        });
        d
    }

    fn decode_binary(
        &mut self,
        frame: &[u8],
        delimiter: u8,
        ctx: &DecodeCtx,
    ) -> Result<Decoded, DecodeError> {
        let inner = match frame {
            [_, inner @ .., last] if *last == delimiter => inner,
            _ => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    frame.len(),
                    "no closing delimiter",
                ))
            }
        };
        let data = unescape(inner, delimiter)?;
        let Some((&check, covered)) = data.split_last() else {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                1,
                "empty message",
            ));
        };
        let computed = xor(covered);
        if computed != check {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                frame.len() - 2,
                format!("checksum {check:#04x}, computed {computed:#04x}"),
            ));
        }
        let mut r = Reader::new(NAME, covered);
        let id = r.u16("message id")?;
        let props = r.u16("message properties")?;
        let version = if props & 0x4000 != 0 {
            Some(r.u8("protocol version")?)
        } else {
            None
        };
        let phone_len = if version.is_some() {
            10
        } else if delimiter == 0xE7 {
            7
        } else {
            6
        };
        let phone = r.take(phone_len, "terminal phone number")?;
        let serial = if matches!(id, msg::LOCATION_REPORT_2 | msg::LOCATION_REPORT_BLIND) {
            u16::from(r.u8("serial")?)
        } else {
            r.u16("serial")?
        };
        let packet = if props & 0x2000 != 0 {
            Some((r.u16("packet count")?, r.u16("packet index")?))
        } else {
            None
        };
        let body_at = r.pos();
        let f = Frame {
            id,
            props,
            serial,
            phone,
            body: r.rest(),
            packet,
        };

        self.phone = Some(phone.to_vec());
        self.version = version;
        self.delimiter = delimiter;

        let full_id = decode_id(phone);
        let encrypted = props & 0x0400 != 0
            && !matches!(id, msg::LOCATION_REPORT_2 | msg::LOCATION_REPORT_BLIND);
        let declared = usize::from(props & 0x03FF);
        let mut d = if f.body.len() != declared {
            // The checksum held, so the terminal built the message so: the standard's answer
            // is 0x8001 result 2 ("message error"), and nothing of it is taken.
            let mut d = Decoded::kind(MessageKind::Invalid);
            d.reply = Some(self.general_response(&f, 2));
            d
        } else if encrypted {
            // RSA-encrypted body (bit 10; the lock messages use the bits otherwise): no keys here. Answered "not supported".
            let mut d = Decoded::kind(MessageKind::Other);
            d.reply = Some(self.general_response(&f, 3));
            d
        } else {
            // Offsets of body errors are made relative to the unescaped frame.
            self.dispatch(&f, &full_id, ctx).map_err(|mut e| {
                e.offset += 1 + body_at;
                e
            })?
        };
        d.device = Some(device_id(&full_id));
        Ok(d)
    }

    fn general_response(&mut self, f: &Frame<'_>, result: u8) -> Bytes {
        let mut body = Vec::with_capacity(5);
        body.extend(f.serial.to_be_bytes());
        body.extend(f.id.to_be_bytes());
        body.push(result);
        self.message(msg::GENERAL_RESPONSE, &body)
    }

    fn dispatch(
        &mut self,
        f: &Frame<'_>,
        full_id: &str,
        ctx: &DecodeCtx,
    ) -> Result<Decoded, DecodeError> {
        if let Some((_, index)) = f.packet {
            if index > 1 {
                // Continuation of a sub-packaged message: acknowledged, not reassembled.
                let mut d = Decoded::kind(MessageKind::Other);
                d.reply = Some(self.general_response(f, 0));
                return Ok(d);
            }
        }
        let body = f.body;
        // Messages answered with 0x8001 result 0 fall through to the end; the others return
        // their own answer (or none).
        let mut d = match f.id {
            msg::TERMINAL_REGISTER => return Ok(self.register(f, full_id)),
            msg::TERMINAL_AUTH => messages::auth(body),
            msg::HEARTBEAT => messages::heartbeat(body),
            msg::HEARTBEAT_2 | msg::TERMINAL_LOGOUT | msg::TIMEZONE_SYNC | msg::PHOTO => {
                Decoded::kind(MessageKind::Other)
            }
            msg::TERMINAL_GENERAL_RESPONSE => return messages::terminal_response(body),
            msg::LOCATION_REPORT => messages::location(body)?,
            msg::LOCATION_QUERY_RESPONSE | msg::VEHICLE_CONTROL_RESPONSE => {
                return messages::location_answer(f.id, body)
            }
            msg::LOCATION_BATCH_2 if body.len() == 7 => messages::battery_heartbeat(body),
            msg::LOCATION_BATCH | msg::LOCATION_BATCH_2 => decode_batch(f.id, body)?,
            msg::LOCATION_REPORT_2 | msg::LOCATION_REPORT_BLIND => return self.location_2(f),
            msg::TIME_SYNC_REQUEST => return Ok(self.time_sync(ctx)),
            msg::TERMINAL_ATTRIBUTES => messages::attributes(body),
            msg::TRANSPARENT => decode_transparent(body)?,
            msg::REPORT_TEXT_MESSAGE => messages::report_text(body),
            msg::TEXT_MESSAGE_RESPONSE => return messages::text_message_response(body),
            msg::COMMAND_RESPONSE => messages::command_response(body)?,
            msg::DRIVER_IDENTITY => decode_driver(body),
            msg::ACCELERATION => return Ok(messages::acceleration(body)),
            // Answers to platform queries: nothing to acknowledge.
            msg::PARAMETERS_RESPONSE => return Ok(Decoded::kind(MessageKind::CommandResponse)),
            _ if f.id & 0x8000 != 0 => return Ok(Decoded::kind(MessageKind::Other)),
            _ => {
                // A terminal message we do not know: answered "not supported" (result 3), so
                // the device neither retransmits it nor takes it as processed.
                let mut d = Decoded::kind(MessageKind::Other);
                d.reply = Some(self.general_response(f, 3));
                return Ok(d);
            }
        };
        d.reply = Some(self.general_response(f, 0));
        Ok(d)
    }

    /// 0x0100 registration: answered 0x8100 with result 0 and the terminal id as auth code.
    fn register(&mut self, f: &Frame<'_>, full_id: &str) -> Decoded {
        let mut d = Decoded::kind(MessageKind::Login);
        let mut b = Vec::with_capacity(3 + full_id.len());
        b.extend(f.serial.to_be_bytes());
        b.push(0);
        b.extend(full_id.as_bytes());
        d.reply = Some(self.message(msg::TERMINAL_REGISTER_RESPONSE, &b));
        d
    }

    /// The vendor location reports (one-byte serial); answered 0x4401 only when asked.
    fn location_2(&mut self, f: &Frame<'_>) -> Result<Decoded, DecodeError> {
        let mut d = Decoded::kind(MessageKind::Data);
        d.positions.push(decode_location_2(f.id, f.body)?);
        if f.props & 0x8000 != 0 {
            let mut b = f.id.to_be_bytes().to_vec();
            b.push(0);
            let head = Header {
                version: self.version,
                phone: f.phone.to_vec(),
                delimiter: self.delimiter,
            };
            d.reply = Some(encode_message(
                &head,
                msg::GENERAL_RESPONSE_2,
                Serial::Byte(1),
                &b,
            ));
        }
        Ok(d)
    }

    /// 0x0109: answered 0x8109 with the server's UTC time and result 0.
    fn time_sync(&mut self, ctx: &DecodeCtx) -> Decoded {
        let now = ctx.now;
        let mut b = (now.year() as u16).to_be_bytes().to_vec();
        b.extend(
            [
                now.month(),
                now.day(),
                now.hour(),
                now.minute(),
                now.second(),
            ]
            .map(|v| v as u8),
        );
        b.push(0);
        let mut d = Decoded::kind(MessageKind::Other);
        d.reply = Some(self.message(msg::TIME_SYNC_RESPONSE, &b));
        d
    }
}

/// 0x0704: `count u16 | type u8 | (length u16 | location)*`; 0x0210: `(length u8 | location)*`.
fn decode_batch(id: u16, body: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let mut archive = false;
    if id == msg::LOCATION_BATCH {
        r.u16("record count")?;
        archive = r.u8("batch type")? == 1;
    }
    let mut d = Decoded::kind(MessageKind::Data);
    let mut skipped = 0;
    while r.remaining() >= 2 {
        let len = if id == msg::LOCATION_BATCH {
            r.u16("record length")? as usize
        } else {
            r.u8("record length")? as usize
        };
        let at = r.pos();
        let item = r.take(len, "location record")?;
        match decode_location(item) {
            Ok(mut p) => {
                if archive {
                    p.attrs.flag("archive", true);
                }
                d.positions.push(p);
            }
            Err(e) if d.positions.is_empty() && r.remaining() == 0 => {
                return Err(DecodeError::new(NAME, e.reason, at + e.offset, e.what));
            }
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        let mut a = Attributes::default();
        a.int("records_skipped", skipped);
        d.status = Some(a);
    }
    Ok(d)
}

/// BCD digits of `bytes` as a number; nibbles over 9 count as their value.
fn bcd_number(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |a, &b| {
        a * 100 + u64::from(b >> 4) * 10 + u64::from(b & 0x0f)
    })
}

/// 0x5501/0x5502 (JT701-style locks): BCD `ddMMyy HHmmss` (UTC), BCD `ddmmmmmm` latitude and
/// `dddmmmmmm` longitude, flags nibble, speed (knots, BCD), course/2, then device state.
fn decode_location_2(id: u16, body: &[u8]) -> Result<Position, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let at = r.pos();
    let t = r.take(6, "time")?;
    let d: Vec<u32> = t.iter().filter_map(|&b| bcd(b)).collect();
    let time = match d[..] {
        [dd, mo, yy, hh, mi, ss] => utc(2000 + yy as i32, mo, dd, hh, mi, ss),
        _ => None,
    }
    .ok_or_else(|| {
        DecodeError::new(
            NAME,
            DecodeReason::BadTime,
            at,
            format!("time {}", hex::encode(t)),
        )
    })?;
    let lat_raw = bcd_number(r.take(4, "latitude")?);
    let lon_bytes = r.take(5, "longitude")?;
    let lon_raw = bcd_number(&lon_bytes[..4]) * 10 + u64::from(lon_bytes[4] >> 4);
    let flags = lon_bytes[4] & 0x0f;
    let coord = |raw: u64| (raw / 1_000_000) as f64 + (raw % 1_000_000) as f64 / 10_000.0 / 60.0;
    let lat = if flags & 0x02 != 0 {
        coord(lat_raw)
    } else {
        -coord(lat_raw)
    };
    let lon = if flags & 0x04 != 0 {
        coord(lon_raw)
    } else {
        -coord(lon_raw)
    };
    let mut p = Position::new(time, flags & 0x01 != 0, lat, lon);
    p.speed_kmh = bcd_number(r.take(1, "speed")?) as f64 * crate::model::KNOTS_TO_KMH;
    p.course = f64::from(r.u8("course")?) * 2.0;
    p.attrs.int("rssi", i64::from(r.u8("rssi")?));
    p.satellites = Some(u16::from(r.u8("satellites")?));
    p.odometer_m = Some(f64::from(r.u32("odometer")?) * 1000.0);
    let battery = r.u8("battery")?;
    if battery <= 100 {
        p.attrs.int("battery_level", i64::from(battery));
    } else if matches!(battery, 0xAA | 0xAB) {
        p.attrs.flag("charge", true);
    }
    p.attrs.int("cell_id", i64::from(r.u32("cell id")?));
    p.attrs.int("lac", i64::from(r.u16("lac")?));
    let product = r.u8("product type")?;
    let status = r.u16("device status")?;
    let alarm = r.u16("device alarm")?;
    p.attrs.int("status", i64::from(status));
    p.alarm = match product {
        1 | 2 if alarm & 1 != 0 => Some("low_power"),
        3 if alarm & 0x01 != 0 => Some("overspeed"),
        3 if alarm & 0x02 != 0 => Some("low_power"),
        3 if alarm & 0x04 != 0 => Some("vibration"),
        3 if alarm & 0x08 != 0 => Some("low_battery"),
        3 if alarm & 0x20 != 0 => Some("geofence_enter"),
        3 if alarm & 0x40 != 0 => Some("geofence_exit"),
        _ => None,
    };
    if id == msg::LOCATION_REPORT_BLIND {
        p.attrs.flag("archive", true);
    }
    let mut rest = r.rest();
    while let [tag, len, tail @ ..] = rest {
        let Some(value) = tail.get(..usize::from(*len)) else {
            break;
        };
        rest = &tail[value.len()..];
        match (*tag, value) {
            (0x02, [hi, lo]) => p.altitude = f64::from(i16::from_be_bytes([*hi, *lo])),
            _ => p
                .attrs
                .push(AttrKey::Io(u32::from(*tag)), AttrValue::Bytes(value.into())),
        }
    }
    Ok(p)
}

/// 0x0702 driver identity: card status, time, read result, name, certificate, issuer, validity.
fn decode_driver(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Other);
    let mut a = Attributes::default();
    let mut r = Reader::new(NAME, body);
    let mut parse = || -> Result<(), DecodeError> {
        a.int("card_status", i64::from(r.u8("card status")?));
        r.skip(6, "time")?;
        a.int("card_result", i64::from(r.u8("card result")?));
        let n = r.u8("driver name length")? as usize;
        a.text("driver_name", text_of(r.take(n, "driver name")?));
        a.text("driver_unique_id", text_of(r.take(20, "certificate")?));
        Ok(())
    };
    let _ = parse();
    d.status = Some(a);
    d
}

/// 0x0900 transparent data: the first byte says whose format follows.
fn decode_transparent(body: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let kind = r.u8("transparent type")?;
    let mut d = Decoded::kind(MessageKind::Other);
    match kind {
        0x40 | 0x41 => {
            let text = text_of(r.rest());
            let mut a = Attributes::default();
            if let Some(id) = text.strip_prefix("GTSL").and_then(|t| t.split('|').nth(4)) {
                a.text("driver_unique_id", id);
            } else {
                a.text(if kind == 0x41 { "obd" } else { "data" }, text);
            }
            d.status = Some(a);
        }
        0xF0 => {
            let at = r.pos();
            let time = bcd_time(r.take(6, "time")?, at)?;
            let archive = r.u8("archive flag")? > 0;
            r.skip(1, "vehicle type")?;
            let sub = r.u8("data type")?;
            let mut attrs = Attributes::default();
            match sub {
                0x01 => {
                    let n = r.u8("item count")?;
                    for _ in 0..n {
                        let id = r.u16("item id")?;
                        let len = r.u8("item length")? as usize;
                        let v = r.take(len, "item value")?;
                        match id {
                            0x0102 | 0x0528 | 0x0546 if len == 4 => {
                                attrs.float("odometer_m", be(v) as f64 * 100.0)
                            }
                            _ => attrs.io_int(u32::from(id), be(v) as i64),
                        }
                    }
                }
                0x02 => {
                    let mut codes = Vec::new();
                    for _ in 0..r.u16("system count")? {
                        r.skip(4, "system id")?;
                        for _ in 0..r.u16("code count")? {
                            r.skip(8, "code and status")?;
                            let n = r.u16("code length")? as usize;
                            codes.push(text_of(r.take(n, "code")?));
                        }
                    }
                    attrs.text("dtcs", codes.join(" "));
                }
                0x03 => {
                    for _ in 0..r.u8("event count")? {
                        let id = r.u8("event id")?;
                        let len = r.u8("event length")? as usize;
                        r.skip(len, "event value")?;
                        attrs.int("event", i64::from(id));
                    }
                }
                _ => {
                    attrs.int("data_type", i64::from(sub));
                    d.status = Some(attrs);
                    return Ok(d);
                }
            }
            let (status, valid, lat, lon) = read_coordinates(&mut r)?;
            let mut p = Position::new(time, valid, lat, lon);
            apply_status(&mut p, status);
            if let Some(AttrValue::Float(odo)) = attrs.get_name("odometer_m") {
                p.odometer_m = Some(*odo);
            }
            p.attrs.0.extend(
                attrs
                    .0
                    .into_iter()
                    .filter(|(k, _)| k.render() != "odometer_m"),
            );
            if archive {
                p.attrs.flag("archive", true);
            }
            d.kind = MessageKind::Data;
            d.positions.push(p);
        }
        0xFF => {
            let at = r.pos();
            let time = bcd_time(r.take(6, "time")?, at)?;
            let lat = f64::from(r.i32("latitude")?) / 1e6;
            let lon = f64::from(r.i32("longitude")?) / 1e6;
            let mut p = Position::new(time, true, lat, lon);
            p.altitude = f64::from(r.i16("altitude")?);
            p.speed_kmh = f64::from(r.u16("speed")?) / 10.0;
            p.course = f64::from(r.u16("course")?);
            d.kind = MessageKind::Data;
            d.positions.push(p);
        }
        0x53 | 0x54 => {
            let (status, valid, lat, lon) = read_coordinates(&mut r)?;
            let altitude = r.i16("altitude")?;
            let speed = r.u16("speed")?;
            let course = r.u16("course")?;
            let at = r.pos();
            let time = bcd_time(r.take(6, "time")?, at)?;
            let mut p = Position::new(time, valid, lat, lon);
            apply_status(&mut p, status);
            p.altitude = f64::from(altitude);
            p.speed_kmh = f64::from(speed) / 10.0;
            p.course = f64::from(course);
            if !r.is_empty() {
                p.attrs.text(
                    if kind == 0x53 { "tags" } else { "sensors" },
                    hex::encode(r.rest()),
                );
            }
            d.kind = MessageKind::Data;
            d.positions.push(p);
        }
        other => {
            let mut a = Attributes::default();
            a.int("transparent_type", i64::from(other));
            a.push(AttrKey::Name("data"), AttrValue::Bytes(r.rest().into()));
            d.status = Some(a);
        }
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Commands and device-side encoders

/// A command for the terminal, serial = the command's seq (so 0x0001 answers match it).
pub fn encode_command(
    head: &Header,
    engine: EngineControl,
    cmd: &DeviceCommand,
    now: DateTime<Utc>,
) -> Bytes {
    let serial = Serial::Word(cmd.seq as u16);
    let stop = match &cmd.body {
        CommandBody::EngineStop => true,
        CommandBody::EngineResume => false,
        CommandBody::Text(t) => {
            let mut body = vec![0x01];
            body.extend(t.as_bytes());
            return encode_message(head, msg::SEND_TEXT_MESSAGE, serial, &body);
        }
    };
    match engine {
        EngineControl::TerminalControl => encode_message(
            head,
            msg::TERMINAL_CONTROL,
            serial,
            &[if stop { 0xF0 } else { 0xF1 }],
        ),
        EngineControl::VehicleControl => {
            encode_message(head, msg::VEHICLE_CONTROL, serial, &[u8::from(stop)])
        }
        EngineControl::OilControl => {
            let local = now + Duration::hours(DEVICE_UTC_OFFSET_H);
            let mut body = vec![u8::from(stop)];
            body.extend(hex::decode(local.format("%y%m%d%H%M%S").to_string()).unwrap_or_default());
            encode_message(head, msg::OIL_CONTROL, serial, &body)
        }
    }
}

/// A 2013-style header for a device with `id` (12 digit phone number / terminal id).
pub fn device_header(id: &str) -> Header {
    Header {
        version: None,
        phone: encode_phone(id, 6),
        delimiter: 0x7E,
    }
}

/// 0x0100 registration as a device sends it (province, city, maker, model, terminal id, plate).
pub fn encode_register(id: &str, serial: u16) -> Bytes {
    let mut body = vec![0, 0x2C, 0x01, 0x2F];
    body.extend(b"FLEET");
    let mut model = b"SIM808".to_vec();
    model.resize(20, 0);
    body.extend(model);
    body.extend(b"0000001");
    body.push(0);
    encode_message(
        &device_header(id),
        msg::TERMINAL_REGISTER,
        Serial::Word(serial),
        &body,
    )
}

/// 0x0102 authentication with the code the platform gave.
pub fn encode_auth(id: &str, serial: u16, code: &str) -> Bytes {
    encode_message(
        &device_header(id),
        msg::TERMINAL_AUTH,
        Serial::Word(serial),
        code.as_bytes(),
    )
}

/// What a simulated device reports in [`encode_location`].
#[derive(Clone, Debug)]
pub struct Fix {
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: u16,
    pub altitude: i16,
    pub ignition: bool,
    pub alarm_flags: u32,
    pub odometer_m: Option<f64>,
    pub satellites: Option<u8>,
}

/// A location body (without the message header).
pub fn location_body(fix: &Fix) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend(fix.alarm_flags.to_be_bytes());
    let status = u32::from(fix.ignition)
        | u32::from(fix.valid) << 1
        | u32::from(fix.lat < 0.0) << 2
        | u32::from(fix.lon < 0.0) << 3;
    b.extend(status.to_be_bytes());
    b.extend(((fix.lat.abs() * 1e6).round() as u32).to_be_bytes());
    b.extend(((fix.lon.abs() * 1e6).round() as u32).to_be_bytes());
    b.extend(fix.altitude.to_be_bytes());
    b.extend(((fix.speed_kmh * 10.0).round() as u16).to_be_bytes());
    b.extend(fix.course.to_be_bytes());
    let local = fix.time + Duration::hours(DEVICE_UTC_OFFSET_H);
    b.extend(hex::decode(local.format("%y%m%d%H%M%S").to_string()).unwrap_or_default());
    if let Some(odo) = fix.odometer_m {
        b.extend([0x01, 4]);
        b.extend(((odo / 100.0).round() as u32).to_be_bytes());
    }
    if let Some(s) = fix.satellites {
        b.extend([0x31, 1, s]);
    }
    b
}

/// 0x0200 location report as a device sends it.
pub fn encode_location(id: &str, serial: u16, fix: &Fix) -> Bytes {
    encode_message(
        &device_header(id),
        msg::LOCATION_REPORT,
        Serial::Word(serial),
        &location_body(fix),
    )
}

/// 0x0704 batch (type 1 = stored while out of coverage) as a device sends it.
pub fn encode_batch(id: &str, serial: u16, archive: bool, fixes: &[Fix]) -> Bytes {
    let mut body = (fixes.len() as u16).to_be_bytes().to_vec();
    body.push(u8::from(archive));
    for f in fixes {
        let item = location_body(f);
        body.extend((item.len() as u16).to_be_bytes());
        body.extend(item);
    }
    encode_message(
        &device_header(id),
        msg::LOCATION_BATCH,
        Serial::Word(serial),
        &body,
    )
}

/// 0x0001 terminal general response (the device's answer to a platform command).
pub fn encode_terminal_response(
    id: &str,
    serial: u16,
    reply_serial: u16,
    reply_id: u16,
    result: u8,
) -> Bytes {
    let mut body = reply_serial.to_be_bytes().to_vec();
    body.extend(reply_id.to_be_bytes());
    body.push(result);
    encode_message(
        &device_header(id),
        msg::TERMINAL_GENERAL_RESPONSE,
        Serial::Word(serial),
        &body,
    )
}

mod messages;

#[cfg(test)]
mod tests;
