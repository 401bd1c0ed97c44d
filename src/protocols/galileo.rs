//! Galileosky trackers (Galileosky 2.5 … 10, Base Block, Iridium satellite models): binary
//! tag-stream packets over TCP.
//!
//! Main packet: `01 | u16 LE length | tags … | u16 LE CRC-16/MODBUS`. The top bit of the length
//! says the device still holds unsent records in its archive; the low 15 bits count the tag
//! bytes. A tag is one id byte followed by a value whose length the id fixes (a few ids carry
//! their own length byte). The first packet of a connection (the "head pack") usually holds only
//! the IMEI and the device number; the main packs then carry one or more records, a record ending
//! where a tag id repeats. Every packet is acknowledged with `02 | CRC of the packet (LE)`.
//! Compressed packets (header `08`) carry a 10-byte minimal data set per record followed by a
//! list of tag ids and their values; they are acknowledged the same way. Photo packets (header
//! `07`) are acknowledged with `07 | CRC`. Packets relayed from Iridium satellite models arrive as
//! Iridium SBD DirectIP messages (`01 | u16 BE length | IEIs…`) and are not acknowledged.
//! Commands are text in a main-packet frame (tags 0x03 IMEI, 0x04 device number, 0xE0 command
//! number, 0xE1 text); the device answers with the same layout carrying its reply text.
//! Notes in our own words and the real packets: `protocols/galileo/`.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

use super::util::{from_secs, Reader, CRC16_MODBUS};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "galileo";

/// Largest frame: a 16-bit big-endian Iridium length plus its 3-byte prefix. Galileosky's own
/// packets are limited to 15 bits of length (and devices send at most ~1000 bytes).
pub const MAX_FRAME: usize = 3 + 0xFFFF;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5034,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(GalileoSession::new()),
};

/// Packet header bytes.
pub const HEADER_MAIN: u8 = 0x01;
pub const HEADER_ACK: u8 = 0x02;
pub const HEADER_PHOTO: u8 = 0x07;
pub const HEADER_COMPRESSED: u8 = 0x08;

/// Default texts for the immobiliser: output 0 on / off (Galileosky `Out N,V` command).
pub const ENGINE_STOP_TEXT: &str = "Out 0,1";
pub const ENGINE_RESUME_TEXT: &str = "Out 0,0";

/// Tag ids with a meaning of their own.
pub mod tag {
    pub const HW_VERSION: u8 = 0x01;
    pub const FW_VERSION: u8 = 0x02;
    pub const IMEI: u8 = 0x03;
    pub const DEVICE_NUMBER: u8 = 0x04;
    pub const RECORD_NUMBER: u8 = 0x10;
    pub const TIME: u8 = 0x20;
    pub const COORDINATES: u8 = 0x30;
    pub const SPEED_COURSE: u8 = 0x33;
    pub const ALTITUDE: u8 = 0x34;
    pub const HDOP: u8 = 0x35;
    pub const STATUS: u8 = 0x40;
    pub const SUPPLY_MV: u8 = 0x41;
    pub const BATTERY_MV: u8 = 0x42;
    pub const TEMPERATURE: u8 = 0x43;
    pub const ACCELERATION: u8 = 0x44;
    pub const OUTPUTS: u8 = 0x45;
    pub const INPUTS: u8 = 0x46;
    pub const ECO_DRIVE: u8 = 0x47;
    pub const STATUS_EXT: u8 = 0x48;
    pub const IBUTTON: u8 = 0x90;
    pub const CAN_A1: u8 = 0xC1;
    pub const MILEAGE: u8 = 0xD4;
    pub const COMMAND_NUMBER: u8 = 0xE0;
    pub const COMMAND_TEXT: u8 = 0xE1;
    pub const USER_ARRAY: u8 = 0xEA;
    pub const EXTENDED: u8 = 0xFE;
}

/// How many value bytes follow a tag id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagLen {
    Fixed(usize),
    /// A length byte, then that many bytes.
    U8Prefixed,
    /// A little-endian u16 length, then that many bytes.
    U16Prefixed,
}

/// The value length of every tag id we know; `None` for an id no published table lists.
/// Sources: Galileosky's server exchange protocol tag table as quoted in its user manuals and
/// by Traccar's and other open decoders (see README).
pub fn tag_len(id: u8) -> Option<TagLen> {
    use TagLen::*;
    Some(match id {
        0x01 | 0x02 => Fixed(1),
        0x03 => Fixed(15),
        0x04 => Fixed(2),
        0x10 => Fixed(2),
        0x20 => Fixed(4),
        0x30 => Fixed(9),
        0x33 => Fixed(4),
        0x34 => Fixed(2),
        0x35 => Fixed(1),
        // Output and input state of old firmware.
        0x38 | 0x39 => Fixed(2),
        0x40..=0x42 => Fixed(2),
        0x43 => Fixed(1),
        0x44 => Fixed(4),
        0x45 | 0x46 => Fixed(2),
        0x47 => Fixed(4),
        0x48 => Fixed(2),
        // Analog inputs 0-7, RS232 0-1.
        0x50..=0x59 => Fixed(2),
        // Electricity meter.
        0x5A => Fixed(4),
        // Refrigerator unit data; length as deployed decoders read it.
        0x5B => Fixed(7),
        // PressurePro tyre pressure.
        0x5C => Fixed(68),
        // Dosimeter.
        0x5D => Fixed(3),
        // RS485 fuel sensors 0-2 (level), 3-15 (level + temperature).
        0x60..=0x62 => Fixed(2),
        0x63..=0x6F => Fixed(3),
        // 1-Wire thermometers 0-7 (id + temperature).
        0x70..=0x77 => Fixed(2),
        // DS1923 humidity sensors 0-7.
        0x80..=0x87 => Fixed(3),
        // Extended RS232 data and RS485 fuel sensor temperatures.
        0x88..=0x8C => Fixed(1),
        0x90 => Fixed(4),
        // CAN8BITR15-30, CAN16BITR5-14.
        0xA0..=0xAF => Fixed(1),
        0xB0..=0xB9 => Fixed(2),
        // CAN_A0, CAN_A1, CAN_B0, CAN_B1.
        0xC0..=0xC3 => Fixed(4),
        // CAN8BITR0-14.
        0xC4..=0xD2 => Fixed(1),
        // Second iButton, GPS mileage.
        0xD3 | 0xD4 => Fixed(4),
        0xD5 => Fixed(1),
        // CAN16BITR0-4, CAN32BITR0-4.
        0xD6..=0xDA => Fixed(2),
        0xDB..=0xDF => Fixed(4),
        0xE0 => Fixed(4),
        0xE1 => U8Prefixed,
        // User data 0-7.
        0xE2..=0xE9 => Fixed(4),
        0xEA => U8Prefixed,
        // CAN32BITR5-14.
        0xF0..=0xF9 => Fixed(4),
        0xFA => Fixed(3),
        0xFD => Fixed(8),
        0xFE => U16Prefixed,
        _ => return None,
    })
}

const ANALOG_NAMES: [&str; 8] = [
    "ain0", "ain1", "ain2", "ain3", "ain4", "ain5", "ain6", "ain7",
];

/// Galileosky protocol state of one connection.
pub struct GalileoSession {
    imei: Option<DeviceId>,
    device_number: Option<u16>,
}

impl GalileoSession {
    pub fn new() -> Self {
        GalileoSession {
            imei: None,
            device_number: None,
        }
    }
}

impl Default for GalileoSession {
    fn default() -> Self {
        Self::new()
    }
}

impl Session for GalileoSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        next_frame(buf)
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let (d, number) = decode_frame(frame, ctx)?;
        if let Some(id) = &d.device {
            self.imei = Some(id.clone());
        }
        if number.is_some() {
            self.device_number = number;
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let imei = self
            .imei
            .as_ref()
            .ok_or(CommandError::NotIdentified(NAME))?;
        let text = match &cmd.body {
            CommandBody::EngineStop => ENGINE_STOP_TEXT,
            CommandBody::EngineResume => ENGINE_RESUME_TEXT,
            CommandBody::Text(t) => t.as_str(),
        };
        if imei.as_str().len() != 15 || text.len() > 255 {
            return Err(CommandError::Unsupported(NAME));
        }
        Ok(encode_command_packet(
            imei.as_str(),
            self.device_number.unwrap_or(0),
            cmd.seq,
            text,
        ))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Galileo
    }
}

/// Iridium DirectIP messages relayed for satellite models start `01 | len BE | 01 00 1C`.
fn is_iridium(buf: &[u8]) -> bool {
    buf.len() >= 6 && buf[0] == HEADER_MAIN && buf[3..6] == [0x01, 0x00, 0x1C]
}

fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let Some(&header) = buf.first() else {
        return Ok(FrameCut::NeedMore);
    };
    if !matches!(header, HEADER_MAIN | HEADER_PHOTO | HEADER_COMPRESSED) {
        // Not a packet start: noise, or the tail of a broken packet.
        return Ok(FrameCut::Skip(1));
    }
    if buf.len() < 3 {
        return Ok(FrameCut::NeedMore);
    }
    if header == HEADER_MAIN && buf.len() < 6 {
        // Three more bytes tell a Galileosky packet from an Iridium message; the shortest
        // Galileosky packet (no tags) is 5 bytes.
        let len = u16::from_le_bytes([buf[1], buf[2]]) & 0x7FFF;
        if len == 0 && buf.len() == 5 {
            return Ok(FrameCut::Frame(5));
        }
        return Ok(FrameCut::NeedMore);
    }
    let total = if is_iridium(buf) {
        3 + usize::from(u16::from_be_bytes([buf[1], buf[2]]))
    } else {
        5 + usize::from(u16::from_le_bytes([buf[1], buf[2]]) & 0x7FFF)
    };
    if total > MAX_FRAME {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            1,
            format!("length {total} over {MAX_FRAME}"),
        ));
    }
    Ok(if buf.len() >= total {
        FrameCut::Frame(total)
    } else {
        FrameCut::NeedMore
    })
}

/// Check the trailing CRC-16/MODBUS of a Galileosky packet and return it.
fn check_crc(frame: &[u8]) -> Result<u16, DecodeError> {
    if frame.len() < 5 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            frame.len(),
            "packet shorter than 5 bytes",
        ));
    }
    let n = frame.len() - 2;
    let got = u16::from_le_bytes([frame[n], frame[n + 1]]);
    let want = CRC16_MODBUS.checksum(&frame[..n]);
    if got != want {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            n,
            format!("CRC {got:#06x}, computed {want:#06x}"),
        ));
    }
    Ok(got)
}

fn ack(header: u8, crc: u16) -> Bytes {
    let c = crc.to_le_bytes();
    Bytes::copy_from_slice(&[header, c[0], c[1]])
}

/// Decode one frame; also returns the device number (tag 0x04) when the frame carried one.
fn decode_frame(frame: &[u8], ctx: &DecodeCtx) -> Result<(Decoded, Option<u16>), DecodeError> {
    match frame.first() {
        Some(&HEADER_MAIN) if is_iridium(frame) => Ok((decode_iridium(frame)?, None)),
        Some(&HEADER_MAIN) => {
            let crc = check_crc(frame)?;
            let body = &frame[3..frame.len() - 2];
            let mut out = decode_tag_stream(body, 3)?;
            out.decoded.reply = Some(ack(HEADER_ACK, crc));
            Ok((out.decoded, out.device_number))
        }
        Some(&HEADER_COMPRESSED) => {
            let crc = check_crc(frame)?;
            let mut d = decode_compressed(&frame[3..frame.len() - 2], ctx)?;
            d.reply = Some(ack(HEADER_ACK, crc));
            Ok((d, None))
        }
        Some(&HEADER_PHOTO) => {
            let crc = check_crc(frame)?;
            // Image parts are not assembled: nothing in the fleet uses the cabin photos.
            let mut d = Decoded::kind(MessageKind::Photo);
            d.reply = Some(ack(HEADER_PHOTO, crc));
            Ok((d, None))
        }
        Some(other) => Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            format!("header {other:#04x}"),
        )),
        None => Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            0,
            "empty frame",
        )),
    }
}

/// One record being assembled from tags.
struct Record {
    seen: [u64; 4],
    time: Option<DateTime<Utc>>,
    coords: Option<(bool, f64, f64)>,
    p: Position,
}

impl Record {
    fn new() -> Self {
        Record {
            seen: [0; 4],
            time: None,
            coords: None,
            p: Position::new(DateTime::<Utc>::UNIX_EPOCH, false, 0.0, 0.0),
        }
    }

    /// Mark `id` seen; false when it was already seen in this record.
    fn mark(&mut self, id: u8) -> bool {
        let (w, b) = (usize::from(id >> 6), id & 63);
        let fresh = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        fresh
    }

    fn is_empty(&self) -> bool {
        self.seen == [0; 4]
    }

    /// The finished record as a position, when it has a time and coordinates.
    fn into_position(self) -> Result<Position, Attributes> {
        match (self.time, self.coords) {
            (Some(t), Some((valid, lat, lon))) => {
                let mut p = self.p;
                p.fix_time = t;
                p.valid = valid;
                p.lat = lat;
                p.lon = lon;
                Ok(p)
            }
            _ => Err(self.p.attrs),
        }
    }
}

struct StreamOut {
    decoded: Decoded,
    device_number: Option<u16>,
}

/// Decode the tags of a main packet (`base` is the offset of `body` in the frame, for errors).
fn decode_tag_stream(body: &[u8], base: usize) -> Result<StreamOut, DecodeError> {
    let mut d = Decoded::kind(MessageKind::Data);
    let mut device_number = None;
    let mut command: (Option<u32>, Option<String>) = (None, None);
    let mut rec = Record::new();
    let mut leftover = Attributes::default();
    let mut r = Reader::new(NAME, body);
    while !r.is_empty() {
        let at = base + r.pos();
        let id = r.u8("tag id")?;
        if !rec.mark(id) {
            // A repeated tag id opens the next record.
            finish(
                std::mem::replace(&mut rec, Record::new()),
                &mut d,
                &mut leftover,
            );
            rec.mark(id);
        }
        match id {
            tag::IMEI => {
                let raw = r.take(15, "IMEI")?;
                let imei = String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_string();
                // An unset IMEI (zeros) identifies nothing; the session's identity stands.
                if !imei.is_empty() && imei.bytes().all(|b| b.is_ascii_graphic()) {
                    d.device = Some(DeviceId::new(imei));
                }
            }
            tag::DEVICE_NUMBER => {
                let n = r.u16_le("device number")?;
                device_number = Some(n);
                rec.p.attrs.int("device_number", i64::from(n));
            }
            tag::COMMAND_NUMBER => command.0 = Some(r.u32_le("command number")?),
            tag::COMMAND_TEXT => {
                let n = usize::from(r.u8("command text length")?);
                let text = r.take(n, "command text")?;
                command.1 = Some(
                    String::from_utf8_lossy(text)
                        .trim_end_matches(['\0', '\r', '\n'])
                        .to_string(),
                );
            }
            _ => apply_tag(&mut r, &mut rec, id, at)?,
        }
    }
    finish(rec, &mut d, &mut leftover);
    if command.0.is_some() || command.1.is_some() {
        d.command_response = Some(CommandResponse {
            text: command.1.unwrap_or_default(),
            success: None,
            seq: command.0,
        });
        d.kind = MessageKind::CommandResponse;
    } else if d.positions.is_empty() {
        d.kind = if d.device.is_some() {
            MessageKind::Login
        } else {
            MessageKind::Other
        };
    }
    if !leftover.is_empty() {
        d.status = Some(leftover);
    }
    Ok(StreamOut {
        decoded: d,
        device_number,
    })
}

/// Close a record: a fix becomes a position; attributes of a record without one are kept as
/// the frame's status (the last such record wins).
fn finish(rec: Record, d: &mut Decoded, leftover: &mut Attributes) {
    if rec.is_empty() {
        return;
    }
    match rec.into_position() {
        Ok(p) => d.positions.push(p),
        Err(attrs) => {
            if !attrs.is_empty() {
                *leftover = attrs;
            }
        }
    }
}

fn le_uint(raw: &[u8]) -> u64 {
    raw.iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Read the value of tag `id` and apply it to the record.
fn apply_tag(r: &mut Reader<'_>, rec: &mut Record, id: u8, at: usize) -> Result<(), DecodeError> {
    let p = &mut rec.p;
    match id {
        tag::HW_VERSION => p
            .attrs
            .int("hw_version", i64::from(r.u8("hardware version")?)),
        tag::FW_VERSION => p
            .attrs
            .int("fw_version", i64::from(r.u8("firmware version")?)),
        tag::RECORD_NUMBER => p.attrs.int("index", i64::from(r.u16_le("record number")?)),
        tag::TIME => {
            let s = r.u32_le("time")?;
            rec.time = Some(
                from_secs(i64::from(s))
                    .ok_or_else(|| r.error(DecodeReason::BadTime, format!("time {s}")))?,
            );
        }
        tag::COORDINATES => {
            let flags = r.u8("coordinate flags")?;
            let lat = f64::from(r.i32_le("latitude")?) / 1e6;
            let lon = f64::from(r.i32_le("longitude")?) / 1e6;
            // High nibble 0: a satellite fix; other values (cell-tower estimate, no fix) are
            // kept as coordinates of an invalid position.
            rec.coords = Some((flags >> 4 == 0, lat, lon));
            p.satellites = Some(u16::from(flags & 0x0F));
            if flags >> 4 != 0 {
                p.attrs.int("fix_source", i64::from(flags >> 4));
            }
        }
        tag::SPEED_COURSE => {
            p.speed_kmh = f64::from(r.u16_le("speed")?) / 10.0;
            p.course = f64::from(r.u16_le("course")?) / 10.0;
        }
        tag::ALTITUDE => p.altitude = f64::from(r.i16_le("altitude")?),
        tag::HDOP => p.attrs.float("hdop", f64::from(r.u8("HDOP")?) / 10.0),
        tag::STATUS => p.attrs.int("status", i64::from(r.u16_le("device status")?)),
        tag::SUPPLY_MV => p.power_v = Some(f64::from(r.u16_le("supply voltage")?) / 1000.0),
        tag::BATTERY_MV => p.attrs.float(
            "battery_v",
            f64::from(r.u16_le("battery voltage")?) / 1000.0,
        ),
        tag::TEMPERATURE => p.attrs.int("device_temp", i64::from(r.i8("temperature")?)),
        tag::ACCELERATION => p
            .attrs
            .int("acceleration", i64::from(r.u32_le("acceleration")?)),
        tag::OUTPUTS => p.outputs = Some(u32::from(r.u16_le("outputs")?)),
        tag::INPUTS => p.inputs = Some(u32::from(r.u16_le("inputs")?)),
        tag::ECO_DRIVE => p.attrs.int("eco_drive", i64::from(r.u32_le("EcoDrive")?)),
        tag::STATUS_EXT => p
            .attrs
            .int("status_ext", i64::from(r.u16_le("extended status")?)),
        0x50..=0x57 => {
            let v = r.u16_le("analog input")?;
            p.attrs
                .int(ANALOG_NAMES[usize::from(id - 0x50)], i64::from(v));
        }
        tag::IBUTTON => p.attrs.text("driver_id", r.u32_le("iButton")?.to_string()),
        tag::CAN_A1 => {
            let b = r.take(4, "CAN_A1")?;
            p.attrs.float("can_fuel_pct", f64::from(b[0]) * 0.4);
            p.attrs.int("can_coolant_temp", i64::from(b[1]) - 40);
            p.attrs.float(
                "can_rpm",
                f64::from(u16::from_le_bytes([b[2], b[3]])) * 0.125,
            );
        }
        tag::MILEAGE => p.odometer_m = Some(f64::from(r.u32_le("mileage")?)),
        tag::USER_ARRAY => {
            let n = usize::from(r.u8("user array length")?);
            let v = r.take(n, "user array")?;
            p.attrs
                .push(AttrKey::Io(u32::from(id)), AttrValue::Bytes(v.into()));
        }
        _ => match tag_len(id) {
            Some(TagLen::Fixed(n)) => {
                let raw = r.take(n, "tag value")?;
                let v = if n <= 4 {
                    AttrValue::Int(le_uint(raw) as i64)
                } else {
                    AttrValue::Bytes(raw.into())
                };
                p.attrs.push(AttrKey::Io(u32::from(id)), v);
            }
            Some(TagLen::U8Prefixed) => {
                let n = usize::from(r.u8("tag length")?);
                let raw = r.take(n, "tag value")?;
                p.attrs
                    .push(AttrKey::Io(u32::from(id)), AttrValue::Bytes(raw.into()));
            }
            Some(TagLen::U16Prefixed) => {
                let n = usize::from(r.u16_le("tag length")?);
                let raw = r.take(n, "tag value")?;
                p.attrs
                    .push(AttrKey::Io(u32::from(id)), AttrValue::Bytes(raw.into()));
            }
            None => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Unsupported,
                    at,
                    format!("unknown tag {id:#04x}"),
                ));
            }
        },
    }
    Ok(())
}

/// The 10-byte minimal data set of compressed packets, read most significant bit first:
/// 1 reserved bit, 25 bits of seconds since the start of the current UTC year, 1 bit
/// "coordinates not valid", 22 bits of longitude, 21 bits of latitude, 1 alarm bit.
fn decode_minimal(r: &mut Reader<'_>, now: DateTime<Utc>) -> Result<Position, DecodeError> {
    let raw = r.take(10, "minimal data set")?;
    let mut v = [0u8; 16];
    v[..10].copy_from_slice(raw);
    let bits = u128::from_be_bytes(v);
    let field = |start: u32, len: u32| -> u64 {
        ((bits >> (128 - start - len)) & ((1u128 << len) - 1)) as u64
    };
    let secs = field(1, 25) as i64;
    let invalid = field(26, 1) == 1;
    let lon = 360.0 * field(27, 22) as f64 / 4_194_304.0 - 180.0;
    let lat = 180.0 * field(49, 21) as f64 / 2_097_152.0 - 90.0;
    let alarm = field(70, 1) == 1;
    let year_start = |y: i32| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).single();
    let mut time = year_start(now.year()).map(|t| t + Duration::seconds(secs));
    // A record from late December read in early January belongs to the previous year.
    if time.is_some_and(|t| t > now + Duration::days(1)) {
        time = year_start(now.year() - 1).map(|t| t + Duration::seconds(secs));
    }
    let time = time.ok_or_else(|| r.error(DecodeReason::BadTime, "minimal data set time"))?;
    let mut p = Position::new(time, !invalid, lat, lon);
    if alarm {
        p.alarm = Some("general");
    }
    Ok(p)
}

fn decode_compressed(body: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::kind(MessageKind::Data);
    let mut r = Reader::new(NAME, body);
    while !r.is_empty() {
        let p = decode_minimal(&mut r, ctx.now)?;
        let mut rec = Record::new();
        rec.time = Some(p.fix_time);
        rec.coords = Some((p.valid, p.lat, p.lon));
        rec.p = p;
        let n = usize::from(r.u8("tag count")?);
        let ids = r.take(n, "tag list")?;
        for &id in ids {
            let at = 3 + r.pos();
            match id {
                tag::IMEI | tag::DEVICE_NUMBER | tag::COMMAND_NUMBER | tag::COMMAND_TEXT => {
                    // Identification and command tags have no place in a compressed record.
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::Unsupported,
                        at,
                        format!("tag {id:#04x} in compressed record"),
                    ));
                }
                _ => apply_tag(&mut r, &mut rec, id, at)?,
            }
        }
        if let Ok(p) = rec.into_position() {
            d.positions.push(p);
        }
    }
    Ok(d)
}

/// An Iridium SBD DirectIP mobile-originated message carrying a Galileosky tag stream.
fn decode_iridium(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    r.skip(3, "DirectIP header")?;
    let mut imei = None;
    let mut time = None;
    let mut location = None;
    let mut payload: Option<(usize, &[u8])> = None;
    while !r.is_empty() {
        let iei = r.u8("IEI")?;
        let len = usize::from(r.u16("IEI length")?);
        let at = r.pos();
        let body = r.take(len, "IEI body")?;
        let mut b = Reader::new(NAME, body);
        match iei {
            0x01 => {
                b.skip(4, "CDR reference")?;
                let raw = b.take(15, "IMEI")?;
                imei = Some(String::from_utf8_lossy(raw).into_owned());
                b.skip(5, "session status and message numbers")?;
                let s = b.u32("session time")?;
                time = from_secs(i64::from(s));
            }
            0x03 => {
                let flags = b.u8("location flags")?;
                let lat = f64::from(b.u8("latitude degrees")?)
                    + f64::from(b.u16("latitude minutes")?) / 60_000.0;
                let lon = f64::from(b.u8("longitude degrees")?)
                    + f64::from(b.u16("longitude minutes")?) / 60_000.0;
                let cep = b.u32("CEP radius").ok();
                let lat = if flags & 0x02 != 0 { -lat } else { lat };
                let lon = if flags & 0x01 != 0 { -lon } else { lon };
                location = Some((lat, lon, cep));
            }
            0x02 => payload = Some((at, body)),
            _ => {}
        }
    }
    let mut d = Decoded::kind(MessageKind::Data);
    if let Some(imei) = imei.filter(|s| s.bytes().all(|c| c.is_ascii_graphic())) {
        d.device = Some(DeviceId::new(imei));
    }
    let mut rec = Record::new();
    if let Some((at, body)) = payload {
        let mut pr = Reader::new(NAME, body);
        while !pr.is_empty() {
            let at = at + pr.pos();
            let id = pr.u8("tag id")?;
            match id {
                tag::IMEI => pr.skip(15, "IMEI")?,
                tag::DEVICE_NUMBER => pr.skip(2, "device number")?,
                _ => apply_tag(&mut pr, &mut rec, id, at)?,
            }
        }
    }
    // The satellite network's own estimate stands in for a missing GPS fix (never valid).
    if rec.coords.is_none() {
        if let Some((lat, lon, cep)) = location {
            rec.coords = Some((false, lat, lon));
            if let Some(cep) = cep {
                rec.p.attrs.int("iridium_cep_km", i64::from(cep));
            }
        }
    }
    if rec.time.is_none() {
        rec.time = time;
    }
    match rec.into_position() {
        Ok(p) => d.positions.push(p),
        Err(attrs) => {
            if !attrs.is_empty() {
                d.status = Some(attrs);
            }
            d.kind = MessageKind::Other;
        }
    }
    Ok(d)
}

fn finish_packet(header: u8, body: &[u8], archive: bool) -> Bytes {
    let mut len = body.len() as u16 & 0x7FFF;
    if archive {
        len |= 0x8000;
    }
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.put_u8(header);
    b.put_u16_le(len);
    b.put_slice(body);
    let crc = CRC16_MODBUS.checksum(&b);
    b.put_u16_le(crc);
    b.freeze()
}

/// A command packet: IMEI, device number, command number and text, CRC-16/MODBUS.
pub fn encode_command_packet(imei: &str, device_number: u16, number: u32, text: &str) -> Bytes {
    let mut body = BytesMut::with_capacity(26 + text.len());
    body.put_u8(tag::IMEI);
    body.put_slice(imei.as_bytes());
    body.put_u8(tag::DEVICE_NUMBER);
    body.put_u16_le(device_number);
    body.put_u8(tag::COMMAND_NUMBER);
    body.put_u32_le(number);
    body.put_u8(tag::COMMAND_TEXT);
    body.put_u8(text.len() as u8);
    body.put_slice(text.as_bytes());
    finish_packet(HEADER_MAIN, &body, false)
}

/// The head packet a device opens its connection with (hardware/firmware versions, IMEI,
/// device number), as a device sends it.
pub fn encode_head_packet(imei: &str, device_number: u16) -> Bytes {
    let mut body = BytesMut::with_capacity(24);
    body.put_u8(tag::HW_VERSION);
    body.put_u8(0x82);
    body.put_u8(tag::FW_VERSION);
    body.put_u8(0x13);
    body.put_u8(tag::IMEI);
    body.put_slice(imei.as_bytes());
    body.put_u8(tag::DEVICE_NUMBER);
    body.put_u16_le(device_number);
    finish_packet(HEADER_MAIN, &body, false)
}

/// One record for [`encode_data_packet`]: what a simulated device reports.
#[derive(Clone, Debug)]
pub struct DataRecord {
    pub index: u16,
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub satellites: u8,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: f64,
    pub altitude: i16,
    pub power_mv: u16,
    pub outputs: u16,
    pub inputs: u16,
    pub mileage_m: u32,
}

/// A main packet with `records`, as a device sends it (`archive`: more records are waiting).
pub fn encode_data_packet(records: &[DataRecord], archive: bool) -> Bytes {
    let mut body = BytesMut::with_capacity(records.len() * 40);
    for rec in records {
        body.put_u8(tag::RECORD_NUMBER);
        body.put_u16_le(rec.index);
        body.put_u8(tag::TIME);
        body.put_u32_le(rec.time.timestamp() as u32);
        body.put_u8(tag::COORDINATES);
        body.put_u8(if rec.valid { 0 } else { 0x10 } | (rec.satellites & 0x0F));
        body.put_i32_le((rec.lat * 1e6).round() as i32);
        body.put_i32_le((rec.lon * 1e6).round() as i32);
        body.put_u8(tag::SPEED_COURSE);
        body.put_u16_le((rec.speed_kmh * 10.0).round() as u16);
        body.put_u16_le((rec.course * 10.0).round() as u16);
        body.put_u8(tag::ALTITUDE);
        body.put_i16_le(rec.altitude);
        body.put_u8(tag::SUPPLY_MV);
        body.put_u16_le(rec.power_mv);
        body.put_u8(tag::OUTPUTS);
        body.put_u16_le(rec.outputs);
        body.put_u8(tag::INPUTS);
        body.put_u16_le(rec.inputs);
        body.put_u8(tag::MILEAGE);
        body.put_u32_le(rec.mileage_m);
    }
    finish_packet(HEADER_MAIN, &body, archive)
}

/// A device's answer to command `number`, as a device sends it.
pub fn encode_command_answer(imei: &str, device_number: u16, number: u32, text: &str) -> Bytes {
    encode_command_packet(imei, device_number, number, text)
}

/// One record of a compressed packet: the minimal data set and extra tags (id, value bytes).
#[derive(Clone, Debug)]
pub struct CompressedRecord {
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub alarm: bool,
    pub tags: Vec<(u8, Vec<u8>)>,
}

/// A compressed packet (header `08`), as a device sends it. Times are taken relative to the
/// start of their own UTC year.
pub fn encode_compressed_packet(records: &[CompressedRecord]) -> Bytes {
    let mut body = BytesMut::new();
    for rec in records {
        let year = Utc
            .with_ymd_and_hms(rec.time.year(), 1, 1, 0, 0, 0)
            .single();
        let secs = year.map_or(0, |y| (rec.time - y).num_seconds()) as u128 & ((1 << 25) - 1);
        let lon = ((rec.lon + 180.0) / 360.0 * 4_194_304.0).round() as u128 & ((1 << 22) - 1);
        let lat = ((rec.lat + 90.0) / 180.0 * 2_097_152.0).round() as u128 & ((1 << 21) - 1);
        let mut bits: u128 = 0;
        let mut put = |v: u128, len: u32| bits = (bits << len) | v;
        put(0, 1);
        put(secs, 25);
        put(u128::from(!rec.valid), 1);
        put(lon, 22);
        put(lat, 21);
        put(u128::from(rec.alarm), 1);
        put(0, 9);
        body.put_slice(&bits.to_be_bytes()[6..]);
        body.put_u8(rec.tags.len() as u8);
        for (id, _) in &rec.tags {
            body.put_u8(*id);
        }
        for (_, value) in &rec.tags {
            body.put_slice(value);
        }
    }
    finish_packet(HEADER_COMPRESSED, &body, false)
}

/// The acknowledgement the server sends for a packet whose checksum is `crc`.
pub fn encode_ack(crc: u16) -> Bytes {
    ack(HEADER_ACK, crc)
}

#[cfg(test)]
mod tests;
