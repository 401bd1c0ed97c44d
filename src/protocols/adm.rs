//! ADM (Neomatica ADM50/100/300/700) binary protocol over TCP, little-endian throughout.
//!
//! Every packet starts `u16 device id | u8 size | u8 type` where `size` counts the whole packet
//! from the device id on; some firmwares put the 15-digit ASCII IMEI in front of each packet
//! (the size then excludes those 15 bytes). The type selects the message: `0x03` is the
//! authorisation packet with the IMEI, types with the two low bits clear are data packets whose
//! upper bits switch optional blocks on, and size `0x84` marks a text answer to a command.
//! The device expects no acknowledgement. Commands are plain ASCII lines ending in CR LF.
//! Notes in our own words: `protocols/adm/README.md`.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::util::{from_secs, Reader};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "adm";
/// A packet is at most 255 bytes (one-byte size), plus an optional 15-byte IMEI prefix.
pub const MAX_FRAME: usize = 15 + 255;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5092,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(AdmSession::new()),
};

/// Message type of the authorisation (IMEI) packet.
pub const MSG_IMEI: u8 = 0x03;
/// Message type of a photo chunk.
pub const MSG_PHOTO: u8 = 0x0A;
/// The size byte of a command answer (fixed 132-byte packet).
pub const CMD_RESPONSE_SIZE: u8 = 0x84;
/// Size of the authorisation packet.
pub const AUTH_SIZE: u8 = 0x42;

/// Optional blocks of a data packet, by bit of the type byte.
pub mod block {
    /// Accelerometer/outputs: vibration, vibration count, outputs, input alarms (4 bytes).
    pub const OUTPUTS: u8 = 0x04;
    /// Six analog inputs, u16 mV each.
    pub const ANALOG: u8 = 0x08;
    /// Two impulse counters, u32 each.
    pub const COUNTERS: u8 = 0x10;
    /// Three fuel level sensors (u16) and three temperatures (i8).
    pub const FUEL: u8 = 0x20;
    /// CAN / extra sensors block: u8 length (itself included), then tagged values.
    pub const CAN: u8 = 0x40;
    /// Odometer, u32 metres.
    pub const ODOMETER: u8 = 0x80;
}

/// ADM protocol state of one TCP connection.
pub struct AdmSession {
    imei: Option<DeviceId>,
}

impl Default for AdmSession {
    fn default() -> Self {
        Self::new()
    }
}

impl AdmSession {
    pub fn new() -> Self {
        AdmSession { imei: None }
    }
}

impl Session for AdmSession {
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

    /// Raw text commands only: ADM firmwares switch outputs with model- and
    /// configuration-specific commands we could not verify, so engine stop/resume are refused
    /// (send the installer's command as `Text`, see the README).
    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        if self.imei.is_none() {
            return Err(CommandError::NotIdentified(NAME));
        }
        match &cmd.body {
            CommandBody::Text(t) => Ok(encode_text_command(t)),
            CommandBody::EngineStop | CommandBody::EngineResume => {
                Err(CommandError::Unsupported(NAME))
            }
        }
    }

    fn protocol(&self) -> Protocol {
        Protocol::Adm
    }
}

fn has_imei_prefix(buf: &[u8]) -> bool {
    buf.first().is_some_and(u8::is_ascii_digit)
}

/// Cut one packet: by the size byte (offset 2, or 17 behind an IMEI prefix).
pub fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let prefix = if has_imei_prefix(buf) { 15 } else { 0 };
    if buf.len() < prefix + 3 {
        return Ok(FrameCut::NeedMore);
    }
    let size = usize::from(buf[prefix + 2]);
    if size < 4 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            prefix + 2,
            format!("packet size {size}"),
        ));
    }
    let total = prefix + size;
    Ok(if buf.len() >= total {
        FrameCut::Frame(total)
    } else {
        FrameCut::NeedMore
    })
}

/// Decode one packet as cut by [`next_frame`].
pub fn decode(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    let mut device = None;
    if has_imei_prefix(frame) {
        device = Some(read_imei(&mut r)?);
    }
    let device_id = r.u16_le("device id")?;
    let size = r.u8("size")?;
    if size == CMD_RESPONSE_SIZE {
        let rest = r.rest();
        let text = rest.split(|&b| b == 0).next().unwrap_or(rest);
        let mut d = Decoded::kind(MessageKind::CommandResponse);
        d.device = device;
        d.command_response = Some(CommandResponse {
            text: String::from_utf8_lossy(text)
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            success: None,
            seq: None,
        });
        return Ok(d);
    }
    let kind = r.u8("type")?;
    let mut d = if kind == MSG_IMEI {
        let imei = read_imei(&mut r)?;
        let mut d = Decoded::kind(MessageKind::Login);
        device = Some(imei);
        let mut st = crate::model::Attributes::default();
        st.int("device_number", i64::from(device_id));
        if let Ok(hw) = r.u8("hardware type") {
            st.int("hardware", i64::from(hw));
        }
        if let Ok(reply) = r.u8("reply enabled") {
            st.int("reply_enabled", i64::from(reply));
        }
        d.status = Some(st);
        d
    } else if kind & 0x03 == 0 {
        let mut d = Decoded::kind(MessageKind::Data);
        d.positions.push(decode_data(&mut r, kind, device_id)?);
        d
    } else {
        // Photo chunks (0x0A) and the ADM5 variant: nothing for the fleet.
        Decoded::kind(MessageKind::Other)
    };
    d.device = device;
    Ok(d)
}

fn read_imei(r: &mut Reader<'_>) -> Result<DeviceId, DecodeError> {
    let raw = r.take(15, "IMEI")?;
    if !raw.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::BadIdentity,
            r.pos() - 15,
            "IMEI is not 15 digits",
        ));
    }
    Ok(DeviceId::new(String::from_utf8_lossy(raw).into_owned()))
}

fn dyn_key(prefix: &str, n: impl std::fmt::Display) -> AttrKey {
    AttrKey::Dyn(format!("{prefix}{n}").into_boxed_str())
}

fn decode_data(r: &mut Reader<'_>, kind: u8, device_id: u16) -> Result<Position, DecodeError> {
    let firmware = r.u8("firmware")?;
    let index = r.u16_le("packet number")?;
    let status = r.u16_le("status")?;
    let lat = f64::from(r.f32_le("latitude")?);
    let lon = f64::from(r.f32_le("longitude")?);
    let course = f64::from(r.u16_le("course")?) / 10.0;
    let speed = f64::from(r.u16_le("speed")?) / 10.0;
    let acc = r.u8("acceleration")?;
    let altitude = r.i16_le("altitude")?;
    let hdop = r.u8("HDOP")?;
    let sats = r.u8("satellites")?;
    let secs = r.u32_le("time")?;
    let power = r.u16_le("power")?;
    let battery = r.u16_le("battery")?;
    let time = from_secs(i64::from(secs))
        .ok_or_else(|| r.error(DecodeReason::BadTime, format!("time {secs}")))?;

    let (lat, lon) = if lat.is_finite() && lon.is_finite() {
        (lat, lon)
    } else {
        (0.0, 0.0)
    };
    let mut p = Position::new(time, status & 0x20 == 0, lat, lon);
    p.course = course;
    p.speed_kmh = speed;
    p.altitude = f64::from(altitude);
    p.satellites = Some(u16::from(sats & 0x0F));
    p.power_v = Some(f64::from(power) / 1000.0);
    p.attrs.int("device_number", i64::from(device_id));
    p.attrs.int("firmware", i64::from(firmware));
    p.attrs.int("index", i64::from(index));
    p.attrs.int("status", i64::from(status));
    p.attrs.float("acceleration", f64::from(acc) / 10.0);
    p.attrs.float("hdop", f64::from(hdop) / 10.0);
    p.attrs.float("battery_v", f64::from(battery) / 1000.0);

    if kind & block::OUTPUTS != 0 {
        let vib = r.u8("vibration")?;
        let vib_count = r.u8("vibration count")?;
        let out = r.u8("outputs")?;
        let in_alarm = r.u8("input alarms")?;
        p.outputs = Some(u32::from(out & 0x0F));
        p.attrs.int("vibration", i64::from(vib));
        p.attrs.int("vibration_count", i64::from(vib_count));
        p.attrs.int("input_alarms", i64::from(in_alarm));
    }
    if kind & block::ANALOG != 0 {
        for i in 1..=6 {
            let mv = r.u16_le("analog input")?;
            p.attrs
                .push(dyn_key("adc", i), AttrValue::Float(f64::from(mv) / 1000.0));
        }
    }
    if kind & block::COUNTERS != 0 {
        for i in 1..=2 {
            let v = r.u32_le("impulse counter")?;
            p.attrs
                .push(dyn_key("counter", i), AttrValue::Int(i64::from(v)));
        }
    }
    if kind & block::FUEL != 0 {
        for i in 1..=3 {
            let v = r.u16_le("fuel level")?;
            p.attrs
                .push(dyn_key("fuel", i), AttrValue::Int(i64::from(v)));
        }
        for i in 1..=3 {
            let v = r.i8("temperature")?;
            p.attrs
                .push(dyn_key("temp", i), AttrValue::Int(i64::from(v)));
        }
    }
    if kind & block::CAN != 0 {
        let len = usize::from(r.u8("CAN block length")?);
        let body = r.take(len.saturating_sub(1), "CAN block")?;
        let mut c = Reader::new(NAME, body);
        while !c.is_empty() {
            let tag = c.u8("CAN tag")?;
            let value = match tag >> 6 {
                3 => c.u64_le("CAN value")? as i64,
                2 => i64::from(c.u32_le("CAN value")?),
                1 => i64::from(c.u16_le("CAN value")?),
                _ => i64::from(c.u8("CAN value")?),
            };
            let key = match tag & 0x3F {
                1 => AttrKey::Name("temp"),
                2 => AttrKey::Name("humidity"),
                3 => AttrKey::Name("illumination"),
                4 => AttrKey::Name("sensor_battery"),
                n => dyn_key("can", n),
            };
            p.attrs.push(key, AttrValue::Int(value));
        }
    }
    if kind & block::ODOMETER != 0 {
        p.odometer_m = Some(f64::from(r.u32_le("odometer")?));
    }
    Ok(p)
}

/// A text command as the device reads it: the ASCII text and CR LF.
pub fn encode_text_command(text: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(text.len() + 2);
    b.put_slice(text.trim_end_matches(['\r', '\n']).as_bytes());
    b.put_slice(b"\r\n");
    b.freeze()
}

/// The authorisation packet a device opens its session with (66 bytes).
pub fn encode_auth(device_id: u16, imei: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(usize::from(AUTH_SIZE));
    b.put_u16_le(device_id);
    b.put_u8(AUTH_SIZE);
    b.put_u8(MSG_IMEI);
    let mut field = [b'0'; 15];
    for (dst, src) in field.iter_mut().zip(imei.bytes()) {
        *dst = src;
    }
    b.put_slice(&field);
    b.resize(usize::from(AUTH_SIZE), 0);
    b.freeze()
}

/// One record for [`encode_data`]: what a simulated device reports.
#[derive(Clone, Debug)]
pub struct Record {
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f32,
    pub lon: f32,
    pub speed_kmh: f64,
    pub course: f64,
    pub altitude: i16,
    pub satellites: u8,
    pub power_mv: u16,
    /// Outputs bit mask; adds the outputs block.
    pub outputs: Option<u8>,
    /// Odometer in metres; adds the odometer block.
    pub odometer_m: Option<u32>,
}

/// A data packet as a device sends it.
pub fn encode_data(device_id: u16, index: u16, rec: &Record) -> Bytes {
    let mut kind = 0u8;
    if rec.outputs.is_some() {
        kind |= block::OUTPUTS;
    }
    if rec.odometer_m.is_some() {
        kind |= block::ODOMETER;
    }
    let mut b = BytesMut::with_capacity(48);
    b.put_u16_le(device_id);
    b.put_u8(0); // size, set below
    b.put_u8(kind);
    b.put_u8(0x33); // firmware
    b.put_u16_le(index);
    b.put_u16_le(if rec.valid { 0 } else { 0x20 });
    b.put_f32_le(rec.lat);
    b.put_f32_le(rec.lon);
    b.put_u16_le((rec.course * 10.0).round() as u16);
    b.put_u16_le((rec.speed_kmh * 10.0).round() as u16);
    b.put_u8(0); // acceleration
    b.put_i16_le(rec.altitude);
    b.put_u8(10); // HDOP 1.0
    b.put_u8(rec.satellites & 0x0F);
    b.put_u32_le(rec.time.timestamp().clamp(0, i64::from(u32::MAX)) as u32);
    b.put_u16_le(rec.power_mv);
    b.put_u16_le(4100); // battery mV
    if let Some(out) = rec.outputs {
        b.put_slice(&[0, 0, out, 0]);
    }
    if let Some(odo) = rec.odometer_m {
        b.put_u32_le(odo);
    }
    let size = b.len() as u8;
    b[2] = size;
    b.freeze()
}

#[cfg(test)]
mod tests;
