//! Ruptela FM-Eco4/Pro4/Plug4/Trace5 trackers over TCP.
//!
//! Every device packet is `u16 length | u64 IMEI | u8 command | data | u16 CRC`, where the
//! length counts IMEI, command and data, and the CRC is CRC-16/KERMIT over the same bytes
//! (sent big-endian). The IMEI is in every packet, so there is no handshake. Server packets
//! have no IMEI: `u16 length | u8 command | data | u16 CRC`, and the answer to device command
//! `N` is command `100 + N` (records, `1` and `68`, are both answered with command `100`).
//! Notes in our own words and the real packets: `protocols/ruptela/`.

use bytes::{BufMut, Bytes, BytesMut};
use crc::{Crc, CRC_16_KERMIT};

use super::util::{from_secs, Reader};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "ruptela";
/// Devices send at most about 1 KiB per packet (records are split over packets with a
/// "records left" counter); the length field allows 64 KiB, more than a device sends.
pub const MAX_FRAME: usize = 8192;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5046,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(RuptelaSession::new()),
};

/// CRC-16/KERMIT (reflected CCITT, init 0), as Ruptela packets use it.
pub const CRC16_KERMIT: Crc<u16> = Crc::<u16>::new(&CRC_16_KERMIT);

/// Device → server commands (server answers are `100 +` these).
pub mod cmd {
    pub const RECORDS: u8 = 1;
    pub const DEVICE_CONFIGURATION: u8 = 2;
    pub const DEVICE_VERSION: u8 = 3;
    pub const FIRMWARE_UPDATE: u8 = 4;
    pub const SET_CONNECTION: u8 = 5;
    pub const SET_ODOMETER: u8 = 6;
    pub const SMS_VIA_GPRS_RESPONSE: u8 = 7;
    pub const SMS_VIA_GPRS: u8 = 8;
    pub const DTCS: u8 = 9;
    pub const IDENTIFICATION: u8 = 15;
    pub const HEARTBEAT: u8 = 16;
    pub const SET_IO: u8 = 17;
    pub const FILES: u8 = 37;
    pub const EXTENDED_RECORDS: u8 = 68;
    /// The server's acknowledgement of records (both command 1 and 68).
    pub const RECORDS_ACK: u8 = 100;
}

/// IO ids with a typed meaning (FM-Eco4/Pro4 numbering).
pub mod io {
    pub const DIN1: u16 = 2;
    pub const DIN4: u16 = 5;
    pub const MOVEMENT: u16 = 13;
    pub const MOVEMENT_ALT: u16 = 173;
    pub const POWER: u16 = 29;
    pub const BATTERY: u16 = 30;
    pub const IBUTTON: u16 = 34;
    pub const ODOMETER: u16 = 65;
    pub const JAMMING: u16 = 88;
    pub const HARSH_BRAKING: u16 = 134;
    pub const HARSH_ACCELERATION: u16 = 136;
    /// Virtual odometer in units of 5 m.
    pub const VIRTUAL_ODOMETER: u16 = 163;
    pub const IGNITION: u16 = 251;
    pub const IGNITION_ALT: u16 = 409;
    pub const TOWING: u16 = 410;
    pub const CRASH: u16 = 411;
}

/// Per-connection state: the IMEI of the last packet (every packet carries it).
pub struct RuptelaSession {
    imei: Option<DeviceId>,
}

impl RuptelaSession {
    pub fn new() -> Self {
        RuptelaSession { imei: None }
    }
}

impl Default for RuptelaSession {
    fn default() -> Self {
        Self::new()
    }
}

impl Session for RuptelaSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        next_frame(buf)
    }

    fn decode(&mut self, frame: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let d = decode(frame)?;
        if let Some(id) = &d.device {
            self.imei = Some(id.clone());
        }
        Ok(d)
    }

    fn encode_command(&mut self, command: &DeviceCommand) -> Result<Bytes, CommandError> {
        let text = match &command.body {
            CommandBody::EngineStop => ENGINE_STOP,
            CommandBody::EngineResume => ENGINE_RESUME,
            CommandBody::Text(t) => t.as_str(),
        };
        Ok(encode_server_packet(
            100 + cmd::SMS_VIA_GPRS,
            text.as_bytes(),
        ))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Ruptela
    }
}

/// Default engine block: the device's SMS command `immobilizer`, sent as "SMS via GPRS"
/// with the factory SMS password `pass` (the same default Traccar sends).
pub const ENGINE_STOP: &str = "pass immobilizer 10";
/// Default engine unblock (`resetimmob`).
pub const ENGINE_RESUME: &str = "pass resetimmob";

fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let [hi, lo, ..] = *buf else {
        return Ok(FrameCut::NeedMore);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = 2 + len + 2;
    if total > MAX_FRAME {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            0,
            format!("length {len} over {MAX_FRAME}"),
        ));
    }
    if len < 9 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            format!("length {len} cannot hold IMEI and command"),
        ));
    }
    Ok(if buf.len() >= total {
        FrameCut::Frame(total)
    } else {
        FrameCut::NeedMore
    })
}

/// Decode one device packet (length, IMEI, command, data, CRC).
pub fn decode(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    let len = usize::from(r.u16("length")?);
    let body = r.take(len, "packet body")?;
    let crc_field = r.u16("CRC")?;
    let crc = CRC16_KERMIT.checksum(body);
    if crc != crc_field {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            2 + len,
            format!("CRC {crc_field:#06x}, computed {crc:#06x}"),
        ));
    }
    // The body starts at offset 2: errors inside it are shifted to frame offsets.
    decode_body(body).map_err(|mut e| {
        e.offset += 2;
        e
    })
}

/// IMEI, command and data of a packet whose CRC has been checked.
fn decode_body(body: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let imei = r.u64("IMEI")?;
    let device = DeviceId::new(format!("{imei:015}"));
    let command = r.u8("command")?;
    let mut d = match command {
        cmd::RECORDS | cmd::EXTENDED_RECORDS => {
            let mut d = decode_records(&mut r, command == cmd::EXTENDED_RECORDS)?;
            d.reply = Some(encode_server_packet(cmd::RECORDS_ACK, &[0x01]));
            d
        }
        cmd::DTCS => {
            let mut d = decode_dtcs(&mut r)?;
            d.reply = Some(encode_server_packet(100 + cmd::DTCS, &[0x01]));
            d
        }
        cmd::IDENTIFICATION => {
            let mut d = Decoded::kind(MessageKind::Login);
            d.reply = Some(encode_server_packet(100 + cmd::IDENTIFICATION, &[0x01]));
            d
        }
        cmd::HEARTBEAT => {
            let mut d = Decoded::kind(MessageKind::Heartbeat);
            d.reply = Some(encode_server_packet(100 + cmd::HEARTBEAT, &[0x01]));
            d
        }
        cmd::DEVICE_CONFIGURATION
        | cmd::DEVICE_VERSION
        | cmd::FIRMWARE_UPDATE
        | cmd::SMS_VIA_GPRS_RESPONSE => {
            let mut d = Decoded::kind(MessageKind::CommandResponse);
            d.command_response = Some(text_response(r.rest()));
            d
        }
        cmd::SET_IO | cmd::SET_CONNECTION | cmd::SET_ODOMETER => {
            let result = r.u8("result")?;
            let mut d = Decoded::kind(MessageKind::CommandResponse);
            d.command_response = Some(CommandResponse {
                text: result.to_string(),
                success: Some(result == 1),
                seq: None,
            });
            d
        }
        // File transfer (tachograph/camera) and anything newer: nothing to act on.
        _ => Decoded::kind(MessageKind::Other),
    };
    d.device = Some(device);
    Ok(d)
}

fn text_response(body: &[u8]) -> CommandResponse {
    let trimmed = body.trim_ascii();
    let text = if trimmed.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        String::from_utf8_lossy(trimmed).into_owned()
    } else {
        hex::encode(body)
    };
    CommandResponse {
        text,
        success: None,
        seq: None,
    }
}

/// Records of command 1 (8-bit IO ids, 8-bit event id) and command 68 (16-bit ids, record
/// extension byte that lets several records carry the IO of one fix).
fn decode_records(r: &mut Reader<'_>, extended: bool) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::kind(MessageKind::Data);
    let _records_left = r.u8("records left")?;
    let count = r.u8("record count")?;
    let mut status: Option<Attributes> = None;
    // Whether the previous record was pushed as a position (a merged continuation record
    // then adds to it).
    let mut last_was_position = false;
    for _ in 0..count {
        let secs = r.u32("time")?;
        let time =
            from_secs(i64::from(secs)).ok_or_else(|| r.error(DecodeReason::BadTime, "time"))?;
        // Records of one second differ by this byte: kept as milliseconds, it orders them
        // within the second and keeps each its own row (a fix is keyed by its time).
        let ts_ext = r.u8("timestamp extension")?;
        let time = time + chrono::Duration::milliseconds(i64::from(ts_ext));
        let mut continuation = false;
        if extended {
            let ext = r.u8("record extension")?;
            let merged = ext >> 4;
            let current = ext & 0x0f;
            continuation = current > 0 && current <= merged;
        }
        let priority = r.u8("priority")?;
        let lon = r.i32("longitude")?;
        let lat = r.i32("latitude")?;
        let altitude = r.i16("altitude")?;
        let course = r.u16("course")?;
        let sats = r.u8("satellites")?;
        let speed = r.u16("speed")?;
        let hdop = r.u8("HDOP")?;
        let event = if extended {
            r.u16("event id")?
        } else {
            u16::from(r.u8("event id")?)
        };
        // No fix: longitude and latitude are sent as i32::MIN.
        let located = lon != i32::MIN && lat != i32::MIN;

        let mut p = Position::new(
            time,
            located && sats != 0,
            f64::from(lat) / 1e7,
            f64::from(lon) / 1e7,
        );
        if located {
            p.altitude = f64::from(altitude) / 10.0;
            p.course = f64::from(course) / 100.0;
            p.satellites = Some(u16::from(sats));
            p.speed_kmh = f64::from(speed);
            p.attrs.float("hdop", f64::from(hdop) / 10.0);
        }
        if priority != 0 {
            p.attrs.int("priority", i64::from(priority));
        }
        if event != 0 {
            p.attrs.int("event", i64::from(event));
        }
        for size in [1usize, 2, 4, 8] {
            let n = r.u8("IO count")?;
            for _ in 0..n {
                let id = if extended {
                    r.u16("IO id")?
                } else {
                    u16::from(r.u8("IO id")?)
                };
                let raw = r.take(size, "IO value")?;
                apply_io(&mut p, id, raw);
            }
        }
        combine_driver_parts(&mut p);

        match d.positions.last_mut() {
            Some(prev) if continuation && last_was_position => merge_into(prev, p),
            _ if located => {
                d.positions.push(p);
                last_was_position = true;
            }
            _ => {
                let mut p = p;
                // IO without a fix: keep the latest such record as device state.
                let mut attrs = std::mem::take(&mut p.attrs);
                attrs.int("time", p.fix_time.timestamp());
                push_typed_as_attrs(&mut attrs, &p);
                status = Some(attrs);
                last_was_position = false;
            }
        }
    }
    d.status = status;
    Ok(d)
}

/// A continuation record (command 68) adds its IO to the record it continues.
fn merge_into(prev: &mut Position, next: Position) {
    prev.ignition = next.ignition.or(prev.ignition);
    prev.motion = next.motion.or(prev.motion);
    prev.odometer_m = next.odometer_m.or(prev.odometer_m);
    prev.power_v = next.power_v.or(prev.power_v);
    prev.alarm = next.alarm.or(prev.alarm);
    prev.inputs = match (prev.inputs, next.inputs) {
        (Some(a), Some(b)) => Some(a | b),
        (a, b) => a.or(b),
    };
    prev.attrs.0.extend(
        next.attrs
            .0
            .into_iter()
            .filter(|(k, _)| *k != AttrKey::Name("hdop") && *k != AttrKey::Name("event")),
    );
}

/// The typed fields of a record without a fix, as attributes of the status.
fn push_typed_as_attrs(attrs: &mut Attributes, p: &Position) {
    if let Some(v) = p.ignition {
        attrs.flag("ignition", v);
    }
    if let Some(v) = p.motion {
        attrs.flag("motion", v);
    }
    if let Some(v) = p.power_v {
        attrs.float("power_v", v);
    }
    if let Some(v) = p.odometer_m {
        attrs.float("odometer_m", v);
    }
    if let Some(v) = p.inputs {
        attrs.int("inputs", i64::from(v));
    }
    if let Some(v) = p.alarm {
        attrs.text("alarm", v);
    }
}

fn be_value(raw: &[u8]) -> u64 {
    raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn apply_io(p: &mut Position, id: u16, raw: &[u8]) {
    let value = be_value(raw);
    match id {
        io::DIN1..=io::DIN4 => {
            let bit = 1u32 << (id - io::DIN1);
            let m = p.inputs.get_or_insert(0);
            if value != 0 {
                *m |= bit;
            } else {
                *m &= !bit;
            }
        }
        io::MOVEMENT | io::MOVEMENT_ALT => p.motion = Some(value != 0),
        io::POWER => p.power_v = Some(value as f64 / 1000.0),
        io::BATTERY => p.attrs.float("battery_v", value as f64 / 1000.0),
        io::IBUTTON => p.attrs.text("driver_id", hex::encode(raw)),
        io::ODOMETER => p.odometer_m = Some(value as f64),
        io::VIRTUAL_ODOMETER => p.odometer_m = Some(value as f64 * 5.0),
        io::IGNITION | io::IGNITION_ALT => p.ignition = Some(value != 0),
        io::JAMMING if value != 0 => p.alarm = Some("jamming"),
        io::HARSH_BRAKING if value != 0 => p.alarm = Some("hard_braking"),
        io::HARSH_ACCELERATION if value != 0 => p.alarm = Some("hard_acceleration"),
        io::TOWING if value != 0 => p.alarm = Some("tow"),
        io::CRASH if value != 0 => p.alarm = Some("accident"),
        io::JAMMING | io::HARSH_BRAKING | io::HARSH_ACCELERATION | io::TOWING | io::CRASH => {}
        _ => p.attrs.io_int(u32::from(id), value as i64),
    }
}

/// Driver card numbers arrive as two 8-byte IO values holding 16 ASCII characters: CAN
/// driver (ids 126 + 127) and tachograph driver (155 + 156).
fn combine_driver_parts(p: &mut Position) {
    for (a, b) in [(126u32, 127u32), (155, 156)] {
        let get = |p: &Position, id| match p.attrs.get(&AttrKey::Io(id)) {
            Some(AttrValue::Int(v)) => Some(*v),
            _ => None,
        };
        if let (Some(hi), Some(lo)) = (get(p, a), get(p, b)) {
            let mut bytes = Vec::with_capacity(16);
            bytes.extend_from_slice(&hi.to_be_bytes());
            bytes.extend_from_slice(&lo.to_be_bytes());
            let text: String = bytes
                .iter()
                .filter(|c| c.is_ascii_graphic())
                .map(|&c| c as char)
                .collect();
            p.attrs
                .0
                .retain(|(k, _)| *k != AttrKey::Io(a) && *k != AttrKey::Io(b));
            if !text.is_empty() {
                p.attrs.text("driver_id", text);
            }
        }
    }
}

/// Command 9: diagnostic trouble codes, each with the fix where it was read.
fn decode_dtcs(r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::kind(MessageKind::Dtc);
    let count = r.u8("DTC count")?;
    for _ in 0..count {
        r.skip(1, "reserved")?;
        let secs = r.u32("time")?;
        let time =
            from_secs(i64::from(secs)).ok_or_else(|| r.error(DecodeReason::BadTime, "time"))?;
        let lon = r.i32("longitude")?;
        let lat = r.i32("latitude")?;
        let archive = r.u8("archive flag")?;
        let code = r.take(5, "DTC")?;
        if lon == i32::MIN || lat == i32::MIN {
            continue;
        }
        let mut p = Position::new(time, true, f64::from(lat) / 1e7, f64::from(lon) / 1e7);
        p.attrs
            .text("dtcs", String::from_utf8_lossy(code).trim().to_string());
        if archive == 2 {
            p.attrs.flag("archive", true);
        }
        d.positions.push(p);
    }
    Ok(d)
}

/// A server → device packet: `u16 length | command | data | CRC-16/KERMIT`. `command` is the
/// wire byte: 100 + the device-side command number (`108` = SMS via GPRS).
pub fn encode_server_packet(command: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + data.len());
    b.put_u16((1 + data.len()) as u16);
    b.put_u8(command);
    b.put_slice(data);
    let crc = CRC16_KERMIT.checksum(&b[2..]);
    b.put_u16(crc);
    b.freeze()
}

/// A device → server packet with the IMEI: what a tracker sends (tests, simulator).
pub fn encode_device_packet(imei: u64, command: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(13 + data.len());
    b.put_u16((9 + data.len()) as u16);
    b.put_u64(imei);
    b.put_u8(command);
    b.put_slice(data);
    let crc = CRC16_KERMIT.checksum(&b[2..]);
    b.put_u16(crc);
    b.freeze()
}

/// One record for [`encode_records`].
#[derive(Clone, Debug)]
pub struct Record {
    pub time: chrono::DateTime<chrono::Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: u16,
    pub course: f64,
    pub altitude_m: f64,
    pub satellites: u8,
    /// IO values as (id, byte size 1/2/4/8, value).
    pub io: Vec<(u16, u8, u64)>,
}

/// A command-1 records packet (8-bit IO ids) as a device sends it.
pub fn encode_records(imei: u64, records: &[Record]) -> Bytes {
    let mut data = BytesMut::new();
    data.put_u8(0); // records left
    data.put_u8(records.len() as u8);
    for rec in records {
        data.put_u32(rec.time.timestamp() as u32);
        data.put_u8(0); // timestamp extension
        data.put_u8(0); // priority
        data.put_i32((rec.lon * 1e7).round() as i32);
        data.put_i32((rec.lat * 1e7).round() as i32);
        data.put_i16((rec.altitude_m * 10.0).round() as i16);
        data.put_u16((rec.course * 100.0).round() as u16);
        data.put_u8(rec.satellites);
        data.put_u16(rec.speed_kmh);
        data.put_u8(10); // HDOP 1.0
        data.put_u8(0); // event id
        for size in [1u8, 2, 4, 8] {
            let group: Vec<_> = rec.io.iter().filter(|(_, s, _)| *s == size).collect();
            data.put_u8(group.len() as u8);
            for (id, _, value) in group {
                data.put_u8(*id as u8);
                data.put_slice(&value.to_be_bytes()[8 - usize::from(size)..]);
            }
        }
    }
    encode_device_packet(imei, cmd::RECORDS, &data)
}

#[cfg(test)]
mod tests;
