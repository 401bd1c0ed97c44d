//! Teltonika FM/FMB/FMC trackers: IMEI handshake, AVL data in Codec 8, 8 Extended, 16 and the
//! older GH3000 Codec 7, command responses in Codec 12/13/14, over TCP and UDP.
//!
//! TCP: the device first sends `u16 len + IMEI` and waits for `01` (accept) or `00` (reject).
//! Then every AVL packet is `00000000 | u32 data length | codec | N | records | N | u32 CRC`
//! (CRC-16/IBM over codec..N, in the low 16 bits); the server answers the record count as a
//! big-endian u32 once the records are stored. A device whose packet is not answered resends it.
//! UDP: `u16 len | u16 packet id | 01 | u8 AVL packet id | u16 IMEI len | IMEI | codec | N |
//! records | N`, answered with `0005 | packet id | 01 | AVL packet id | N`.
//! Codec 12/13/14 frames from the device (command answers) are not acknowledged.
//! Notes in our own words and the real packets: `protocols/teltonika/`.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::util::{from_millis, from_secs, Reader, CRC16_IBM};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "teltonika";
/// Largest AVL packet accepted. Devices send at most 1280 bytes of records in one TCP packet
/// (FMB "max send" setting), Codec 8E with long NX values somewhat more; 64 KiB leaves room.
pub const MAX_FRAME: usize = 65_536;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5027,
    transports: &[Transport::Tcp, Transport::Udp],
    max_frame: MAX_FRAME,
    session: |t| Box::new(TeltonikaSession::new(t)),
};

pub const CODEC_7: u8 = 0x07;
pub const CODEC_8: u8 = 0x08;
pub const CODEC_8E: u8 = 0x8E;
pub const CODEC_16: u8 = 0x10;
pub const CODEC_12: u8 = 0x0C;
pub const CODEC_13: u8 = 0x0D;
pub const CODEC_14: u8 = 0x0E;

/// IO element ids with a meaning of their own (FMB family numbering).
pub mod io {
    pub const DIN1: u16 = 1;
    pub const DIN2: u16 = 2;
    pub const DIN3: u16 = 3;
    pub const DIN4: u16 = 4;
    pub const TOTAL_ODOMETER: u16 = 16;
    pub const EXTERNAL_VOLTAGE: u16 = 66;
    pub const DOUT1: u16 = 179;
    pub const DOUT2: u16 = 180;
    pub const DOUT3: u16 = 50;
    pub const DOUT4: u16 = 51;
    pub const GSM_SIGNAL: u16 = 21;
    pub const BATTERY_VOLTAGE: u16 = 67;
    pub const IBUTTON: u16 = 78;
    pub const TRIP_ODOMETER: u16 = 199;
    pub const GREEN_DRIVING: u16 = 253;
    pub const UNPLUG: u16 = 252;
    pub const CRASH: u16 = 247;
    pub const TOWING: u16 = 246;
    pub const JAMMING: u16 = 249;
    /// NX (Codec 8E variable length) elements carrying the VIN as ASCII.
    pub const VIN: u16 = 256;
    pub const VIN_ALT: u16 = 325;
    pub const IGNITION: u16 = 239;
    pub const MOVEMENT: u16 = 240;
}

/// Teltonika protocol state of one connection or UDP peer.
pub struct TeltonikaSession {
    transport: Transport,
    imei: Option<DeviceId>,
}

impl TeltonikaSession {
    pub fn new(transport: Transport) -> Self {
        TeltonikaSession {
            transport,
            imei: None,
        }
    }
}

impl Session for TeltonikaSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        match self.transport {
            Transport::Udp => udp_frame(buf),
            Transport::Tcp => tcp_frame(buf),
        }
    }

    fn decode(&mut self, frame: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        match self.transport {
            Transport::Udp => decode_udp(frame),
            Transport::Tcp => {
                let d = decode_tcp(frame)?;
                if let Some(id) = &d.device {
                    self.imei = Some(id.clone());
                }
                Ok(d)
            }
        }
    }

    fn reject_reply(&self) -> Option<Bytes> {
        (self.transport == Transport::Tcp).then(|| Bytes::from_static(&[0x00]))
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        if self.transport == Transport::Udp {
            return Err(CommandError::Unsupported(NAME));
        }
        let text = match &cmd.body {
            CommandBody::EngineStop => "setdigout 1",
            CommandBody::EngineResume => "setdigout 0",
            CommandBody::Text(t) => t.as_str(),
        };
        Ok(encode_codec12(text.as_bytes()))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Teltonika
    }
}

fn tcp_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    match buf {
        [] => Ok(FrameCut::NeedMore),
        // A lone 0xFF is the keep-alive some firmwares send between packets.
        [0xFF, ..] => Ok(FrameCut::Frame(1)),
        [_] => Ok(FrameCut::NeedMore),
        [0, 0, rest @ ..] => {
            if rest.len() < 6 {
                return Ok(FrameCut::NeedMore);
            }
            if rest[0] != 0 || rest[1] != 0 {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    "AVL preamble is not four zero bytes",
                ));
            }
            let len = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
            let total = 8 + len + 4;
            if total > MAX_FRAME {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::TooLarge,
                    4,
                    format!("data length {len} over {MAX_FRAME}"),
                ));
            }
            Ok(if buf.len() >= total {
                FrameCut::Frame(total)
            } else {
                FrameCut::NeedMore
            })
        }
        [hi, lo, ..] => {
            let len = u16::from_be_bytes([*hi, *lo]) as usize;
            if !(1..=32).contains(&len) {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    format!("IMEI length {len} out of range"),
                ));
            }
            Ok(if buf.len() >= 2 + len {
                FrameCut::Frame(2 + len)
            } else {
                FrameCut::NeedMore
            })
        }
    }
}

fn udp_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    if buf.len() < 2 {
        return Ok(FrameCut::NeedMore);
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    Ok(if buf.len() >= 2 + len {
        FrameCut::Frame(2 + len)
    } else {
        FrameCut::NeedMore
    })
}

fn decode_tcp(frame: &[u8]) -> Result<Decoded, DecodeError> {
    if frame == [0xFF] {
        return Ok(Decoded::kind(MessageKind::Ping));
    }
    if frame.len() >= 2 && frame.get(..2) != Some(&[0, 0][..]) {
        let imei = frame.get(2..).unwrap_or_default();
        if !imei.iter().all(u8::is_ascii_graphic) {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::BadIdentity,
                2,
                "IMEI is not printable ASCII",
            ));
        }
        let mut d = Decoded::kind(MessageKind::Login);
        d.device = Some(DeviceId::new(String::from_utf8_lossy(imei).into_owned()));
        d.reply = Some(Bytes::from_static(&[0x01]));
        return Ok(d);
    }
    if frame.len() < 12 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            frame.len(),
            "AVL packet shorter than 12 bytes",
        ));
    }
    let (head, tail) = frame.split_at(frame.len() - 4);
    let data = head.get(8..).unwrap_or_default();
    let crc_field = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let crc = u32::from(CRC16_IBM.checksum(data));
    if crc != crc_field {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            frame.len() - 4,
            format!("CRC {crc_field:#010x}, computed {crc:#06x}"),
        ));
    }
    // Read over the packet without its CRC so that errors carry offsets into the frame.
    let mut r = Reader::new(NAME, head);
    r.skip(8, "preamble and data length")?;
    let codec = r.u8("codec id")?;
    let count = r.u8("record count")?;
    let mut d = decode_body(&mut r, codec, count)?;
    if matches!(codec, CODEC_7 | CODEC_8 | CODEC_8E | CODEC_16) {
        d.reply = Some(Bytes::copy_from_slice(&u32::from(count).to_be_bytes()));
    }
    Ok(d)
}

fn decode_udp(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    r.skip(2, "length")?;
    let packet_id = r.u16("packet id")?;
    r.skip(1, "packet type")?;
    let avl_id = r.u8("AVL packet id")?;
    let imei_len = r.u16("IMEI length")? as usize;
    let imei = r.take(imei_len, "IMEI")?;
    let codec = r.u8("codec id")?;
    let count = r.u8("record count")?;
    let mut d = decode_body(&mut r, codec, count)?;
    d.device = Some(DeviceId::new(String::from_utf8_lossy(imei).into_owned()));
    if !matches!(codec, CODEC_7 | CODEC_8 | CODEC_8E | CODEC_16) {
        return Ok(d);
    }
    let mut ack = BytesMut::with_capacity(7);
    ack.put_u16(5);
    ack.put_u16(packet_id);
    ack.put_u8(0x01);
    ack.put_u8(avl_id);
    ack.put_u8(count);
    d.reply = Some(ack.freeze());
    Ok(d)
}

/// Records (or a command response) after the codec id and the first count.
fn decode_body(r: &mut Reader<'_>, codec: u8, count: u8) -> Result<Decoded, DecodeError> {
    match codec {
        CODEC_8 | CODEC_8E | CODEC_16 => {
            // Some installations enable an extra group of 16-byte IO values after the 8-byte
            // group (Traccar's `teltonika.extended`). Nothing in the packet says so, so the
            // standard layout is tried first and the extended one only when the standard
            // layout does not end exactly at the closing record count.
            let base = r.pos();
            let rest = r.rest();
            let attempt = |wide16: bool| {
                let mut sub = Reader::new(NAME, rest);
                let d = decode_avl_records(&mut sub, codec, count, wide16).map_err(|mut e| {
                    e.offset += base;
                    e
                })?;
                Ok::<_, DecodeError>((d, sub.pos(), sub.is_empty()))
            };
            let (d, used) = match attempt(false) {
                Ok((d, used, true)) => (d, used),
                standard => match attempt(true) {
                    Ok((d, used, true)) => (d, used),
                    _ => standard.map(|(d, used, _)| (d, used))?,
                },
            };
            r.skip(used, "records")?;
            Ok(d)
        }
        CODEC_7 => {
            let mut d = Decoded::kind(MessageKind::Data);
            let mut status = Attributes::default();
            for _ in 0..count {
                let (p, located) = decode_gh3000_record(r)?;
                if located {
                    d.positions.push(p);
                } else {
                    // No GPS block: the record is device state without a fix.
                    // Keep the latest such record's state.
                    status = p.attrs;
                    status.int("time", p.fix_time.timestamp());
                }
            }
            check_trailing_count(r, count)?;
            if !status.is_empty() {
                d.status = Some(status);
            }
            Ok(d)
        }
        CODEC_12 | CODEC_13 | CODEC_14 => decode_command_frame(r, codec),
        other => Err(r.error(DecodeReason::Unsupported, format!("codec {other:#04x}"))),
    }
}

fn decode_avl_records(
    r: &mut Reader<'_>,
    codec: u8,
    count: u8,
    wide16: bool,
) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::kind(MessageKind::Data);
    d.positions.reserve(count as usize);
    for _ in 0..count {
        d.positions.push(decode_avl_record(r, codec, wide16)?);
    }
    check_trailing_count(r, count)?;
    Ok(d)
}

fn check_trailing_count(r: &mut Reader<'_>, count: u8) -> Result<(), DecodeError> {
    let n2 = r.u8("second record count")?;
    if n2 != count {
        return Err(r.error(
            DecodeReason::CountMismatch,
            format!("record counts {count} and {n2} differ"),
        ));
    }
    Ok(())
}

fn decode_avl_record(r: &mut Reader<'_>, codec: u8, wide16: bool) -> Result<Position, DecodeError> {
    let ts = r.u64("timestamp")?;
    // Anything past year 2100 is not a time a tracker can mean; refuse rather than store it.
    let time = i64::try_from(ts)
        .ok()
        .filter(|ms| *ms < 4_102_444_800_000)
        .and_then(from_millis)
        .ok_or_else(|| r.error(DecodeReason::BadTime, format!("timestamp {ts}")))?;
    let priority = r.u8("priority")?;
    let lon = f64::from(r.i32("longitude")?) / 1e7;
    let lat = f64::from(r.i32("latitude")?) / 1e7;
    let altitude = r.i16("altitude")?;
    let angle = r.u16("angle")?;
    let sats = r.u8("satellites")?;
    let speed = r.u16("speed")?;

    let mut p = Position::new(time, sats != 0, lat, lon);
    p.altitude = f64::from(altitude);
    p.course = f64::from(angle);
    p.satellites = Some(u16::from(sats));
    p.speed_kmh = f64::from(speed);

    let extended = codec == CODEC_8E;
    let wide_ids = codec != CODEC_8;
    let event_id = if wide_ids {
        r.u16("event IO id")?
    } else {
        u16::from(r.u8("event IO id")?)
    };
    if codec == CODEC_16 {
        r.skip(1, "generation type")?;
    }
    let total = if extended {
        r.u16("IO count")? as usize
    } else {
        r.u8("IO count")? as usize
    };
    p.attrs = Attributes::with_capacity(total.min(64) + 2);
    if priority != 0 {
        p.attrs.int("priority", i64::from(priority));
    }
    if event_id != 0 {
        p.attrs.int("event", i64::from(event_id));
    }
    for size in [1usize, 2, 4, 8] {
        let n = if extended {
            r.u16("IO group count")?
        } else {
            u16::from(r.u8("IO group count")?)
        };
        for _ in 0..n {
            let id = if wide_ids {
                r.u16("IO id")?
            } else {
                u16::from(r.u8("IO id")?)
            };
            let raw = r.take(size, "IO value")?;
            apply_io(&mut p, id, raw);
        }
    }
    if wide16 {
        let n = if extended {
            r.u16("16-byte IO count")?
        } else {
            u16::from(r.u8("16-byte IO count")?)
        };
        for _ in 0..n {
            let id = if wide_ids {
                r.u16("IO id")?
            } else {
                u16::from(r.u8("IO id")?)
            };
            let value = r.take(16, "16-byte IO value")?;
            p.attrs
                .push(AttrKey::Io(u32::from(id)), AttrValue::Bytes(value.into()));
        }
    }
    if extended {
        let n = r.u16("NX IO count")?;
        for _ in 0..n {
            let id = r.u16("NX IO id")?;
            let len = r.u16("NX IO length")? as usize;
            let value = r.take(len, "NX IO value")?;
            match id {
                io::VIN | io::VIN_ALT if value.iter().all(u8::is_ascii_graphic) => {
                    p.attrs
                        .text("vin", String::from_utf8_lossy(value).into_owned());
                }
                _ => p
                    .attrs
                    .push(AttrKey::Io(u32::from(id)), AttrValue::Bytes(value.into())),
            }
        }
    }
    Ok(p)
}

fn be_value(raw: &[u8]) -> u64 {
    raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Typed fields for the IO elements the rules use; every other element is kept as `io<N>`
/// (raw and unsigned: whether an element is signed depends on the device model).
fn apply_io(p: &mut Position, id: u16, raw: &[u8]) {
    let value = be_value(raw);
    let set_bit = |mask: &mut Option<u32>, bit: u32, on: bool| {
        let m = mask.get_or_insert(0);
        if on {
            *m |= 1 << bit;
        } else {
            *m &= !(1 << bit);
        }
    };
    match id {
        io::IGNITION => p.ignition = Some(value != 0),
        io::MOVEMENT => p.motion = Some(value != 0),
        io::TOTAL_ODOMETER => p.odometer_m = Some(value as f64),
        io::EXTERNAL_VOLTAGE => p.power_v = Some(value as f64 / 1000.0),
        io::BATTERY_VOLTAGE => p.attrs.float("battery_v", value as f64 / 1000.0),
        io::GSM_SIGNAL => p.attrs.int("rssi", value as i64),
        io::TRIP_ODOMETER => p.attrs.int("trip_odometer_m", value as i64),
        io::DIN1 | io::DIN2 | io::DIN3 | io::DIN4 => {
            set_bit(&mut p.inputs, u32::from(id - io::DIN1), value != 0)
        }
        io::DOUT1 => set_bit(&mut p.outputs, 0, value != 0),
        io::DOUT2 => set_bit(&mut p.outputs, 1, value != 0),
        io::DOUT3 => set_bit(&mut p.outputs, 2, value != 0),
        io::DOUT4 => set_bit(&mut p.outputs, 3, value != 0),
        // iButton / RFID driver key: an 8-byte value the device sends least significant byte
        // first; shown the way the key is printed.
        io::IBUTTON if raw.len() == 8 => {
            if value != 0 {
                let key = u64::from_le_bytes(value.to_be_bytes());
                p.attrs.text("driver_id", format!("{key:016X}"));
            }
        }
        io::UNPLUG if value != 0 => p.alarm = Some("power_cut"),
        io::CRASH if value != 0 => p.alarm = Some("accident"),
        io::TOWING if value != 0 => p.alarm = Some("tow"),
        io::JAMMING if value != 0 => p.alarm = Some("jamming"),
        io::GREEN_DRIVING => match value {
            1 => p.alarm = Some("hard_acceleration"),
            2 => p.alarm = Some("hard_braking"),
            3 => p.alarm = Some("hard_cornering"),
            _ => {}
        },
        io::UNPLUG | io::CRASH | io::TOWING | io::JAMMING | io::IBUTTON => {}
        _ => p.attrs.io_int(u32::from(id), value as i64),
    }
}

/// GH3000 (Codec 7) parameters: their own numbering, not the FMB one.
fn apply_gh3000_io(p: &mut Position, id: u16, raw: &[u8]) {
    let value = be_value(raw);
    match id {
        1 => p.attrs.int("battery_level", value as i64),
        67 => p.attrs.float("battery_v", value as f64 / 1000.0),
        222 if value == 1 => p.alarm = Some("sos"),
        240 => p.motion = Some(value == 1),
        _ => p.attrs.io_int(u32::from(id), value as i64),
    }
}

/// GH3000 records: a 30-bit seconds-since-2007 time, then blocks chosen by a global mask
/// (bit 0 GPS block, bits 1..3 the 1/2/4-byte IO groups). Returns the record and whether it
/// carried coordinates.
fn decode_gh3000_record(r: &mut Reader<'_>) -> Result<(Position, bool), DecodeError> {
    const GH3000_EPOCH: i64 = 1_167_609_600; // 2007-01-01T00:00:00Z
    let raw = r.u32("time")?;
    let secs = GH3000_EPOCH + i64::from(raw & 0x3FFF_FFFF);
    let time =
        from_secs(secs).ok_or_else(|| r.error(DecodeReason::BadTime, format!("time {raw:#x}")))?;
    let global = r.u8("global mask")?;
    let mut p = Position::new(time, false, 0.0, 0.0);
    let mut located = false;
    if global & 0x01 != 0 {
        let mask = r.u8("GPS mask")?;
        if mask & 0x01 != 0 {
            p.lat = f64::from(r.f32("latitude")?);
            p.lon = f64::from(r.f32("longitude")?);
            located = p.lat.is_finite()
                && p.lon.is_finite()
                && p.lat.abs() <= 90.0
                && p.lon.abs() <= 180.0;
            if !located {
                p.lat = 0.0;
                p.lon = 0.0;
            }
        }
        if mask & 0x02 != 0 {
            p.altitude = f64::from(r.u16("altitude")?);
        }
        if mask & 0x04 != 0 {
            p.course = f64::from(r.u8("angle")?) * 360.0 / 256.0;
        }
        if mask & 0x08 != 0 {
            p.speed_kmh = f64::from(r.u8("speed")?);
        }
        if mask & 0x10 != 0 {
            let sats = r.u8("satellites")?;
            p.satellites = Some(u16::from(sats));
        }
        if mask & 0x20 != 0 {
            p.attrs.int("lac", i64::from(r.u16("LAC")?));
            p.attrs.int("cell_id", i64::from(r.u16("cell id")?));
        }
        if mask & 0x40 != 0 {
            p.attrs.int("rssi", i64::from(r.u8("signal quality")?));
        }
        if mask & 0x80 != 0 {
            p.attrs.int("operator", i64::from(r.u32("operator")?));
        }
    }
    p.valid = located && p.satellites != Some(0);
    for (bit, size) in [(0x02u8, 1usize), (0x04, 2), (0x08, 4)] {
        if global & bit != 0 {
            let n = r.u8("IO group count")?;
            for _ in 0..n {
                let id = u16::from(r.u8("IO id")?);
                let raw = r.take(size, "IO value")?;
                apply_gh3000_io(&mut p, id, raw);
            }
        }
    }
    Ok((p, located))
}

/// Codec 12/13/14 frames a device sends: command responses (type 0x06), Codec 14 nacks (0x11).
fn decode_command_frame(r: &mut Reader<'_>, codec: u8) -> Result<Decoded, DecodeError> {
    let kind = r.u8("message type")?;
    let len = r.u32("response length")? as usize;
    let body = r.take(len, "response")?;
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    match (codec, kind) {
        (CODEC_12, 0x06) => d.command_response = Some(text_response(body, None)),
        (CODEC_13, 0x06) | (CODEC_13, 0x05) if body.len() >= 4 => {
            // A 4-byte seconds timestamp precedes the text; some firmwares send 8-byte
            // milliseconds instead, recognisable by the text then being printable.
            let short = text_response(&body[4..], None);
            let long = body.get(8..).map(|t| text_response(t, None));
            d.command_response = Some(match long {
                Some(l) if !is_printable(&body[4..]) && is_printable(&body[8..]) => l,
                _ => short,
            });
        }
        (CODEC_14, 0x06) if body.len() >= 8 => {
            d.command_response = Some(text_response(&body[8..], None))
        }
        (CODEC_14, 0x11) => d.command_response = Some(text_response(b"", Some(false))),
        // Camera/file transfer (type 0x0D) and anything else: nothing for the fleet to act on.
        _ => d.kind = MessageKind::Other,
    }
    Ok(d)
}

fn is_printable(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_graphic() || matches!(c, b' ' | b'\r' | b'\n' | 0))
}

/// The answer as text when it is printable, else as hex (serial pass-through devices such as
/// scales or Modbus meters answer in binary).
fn text_response(body: &[u8], success: Option<bool>) -> CommandResponse {
    let trimmed = {
        let mut b = body;
        while let [rest @ .., b'\r' | b'\n' | 0 | b' '] = b {
            b = rest;
        }
        b
    };
    let printable = trimmed.iter().all(|c| c.is_ascii_graphic() || *c == b' ');
    let text = if printable {
        String::from_utf8_lossy(trimmed).into_owned()
    } else {
        hex::encode(body)
    };
    CommandResponse {
        text,
        success,
        seq: None,
    }
}

/// A Codec 12 command packet (type 0x05) carrying `text`.
pub fn encode_codec12(text: &[u8]) -> Bytes {
    let mut data = BytesMut::with_capacity(8 + text.len());
    data.put_u8(CODEC_12);
    data.put_u8(1);
    data.put_u8(0x05);
    data.put_u32(text.len() as u32);
    data.put_slice(text);
    data.put_u8(1);
    let crc = CRC16_IBM.checksum(&data);
    let mut out = BytesMut::with_capacity(data.len() + 12);
    out.put_u32(0);
    out.put_u32(data.len() as u32);
    out.put_slice(&data);
    out.put_u32(u32::from(crc));
    out.freeze()
}

/// A Codec 12 response packet (type 0x06), as a device sends it; used by tests and the simulator.
pub fn encode_codec12_response(text: &[u8]) -> Bytes {
    let mut b = BytesMut::from(&encode_codec12(text)[..]);
    b[10] = 0x06;
    let len = b.len();
    let crc = CRC16_IBM.checksum(&b[8..len - 4]);
    b[len - 4..].copy_from_slice(&u32::from(crc).to_be_bytes());
    b.freeze()
}

/// One record for [`encode_avl_packet`]: what a simulated device reports.
#[derive(Clone, Debug)]
pub struct AvlRecord {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: u16,
    pub course: u16,
    pub altitude: i16,
    pub satellites: u8,
    /// IO elements as (id, byte size 1/2/4/8, value).
    pub io: Vec<(u16, u8, u64)>,
}

/// Encode records as a Codec 8 or 8E TCP packet, as a device would send them.
pub fn encode_avl_packet(codec: u8, records: &[AvlRecord]) -> Bytes {
    let extended = codec == CODEC_8E;
    let mut data = BytesMut::with_capacity(16 + records.len() * 64);
    data.put_u8(codec);
    data.put_u8(records.len() as u8);
    for rec in records {
        data.put_u64(rec.time.timestamp_millis() as u64);
        data.put_u8(0);
        data.put_i32((rec.lon * 1e7).round() as i32);
        data.put_i32((rec.lat * 1e7).round() as i32);
        data.put_i16(rec.altitude);
        data.put_u16(rec.course);
        data.put_u8(rec.satellites);
        data.put_u16(rec.speed_kmh);
        let put_n = |b: &mut BytesMut, n: usize| {
            if extended {
                b.put_u16(n as u16)
            } else {
                b.put_u8(n as u8)
            }
        };
        put_n(&mut data, 0); // event IO id
        put_n(&mut data, rec.io.len());
        for size in [1u8, 2, 4, 8] {
            let group: Vec<_> = rec.io.iter().filter(|(_, s, _)| *s == size).collect();
            put_n(&mut data, group.len());
            for (id, _, value) in group {
                put_n(&mut data, *id as usize);
                let bytes = value.to_be_bytes();
                data.put_slice(&bytes[8 - size as usize..]);
            }
        }
        if extended {
            data.put_u16(0);
        }
    }
    data.put_u8(records.len() as u8);
    let crc = CRC16_IBM.checksum(&data);
    let mut out = BytesMut::with_capacity(data.len() + 12);
    out.put_u32(0);
    out.put_u32(data.len() as u32);
    out.put_slice(&data);
    out.put_u32(u32::from(crc));
    out.freeze()
}

/// The IMEI handshake a device opens its TCP session with.
pub fn encode_imei(imei: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + imei.len());
    b.put_u16(imei.len() as u16);
    b.put_slice(imei.as_bytes());
    b.freeze()
}

#[cfg(test)]
mod tests;
