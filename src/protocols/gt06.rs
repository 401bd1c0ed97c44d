//! GT06 / Concox (and the many Jimi IoT, SeeWorld, Wanway… clones of the protocol), TCP.
//!
//! Frame: `78 78 | u8 len | type | content | u16 serial | u16 CRC | 0D 0A` (short) or
//! `79 79 | u16 len | …` (long). `len` counts type..CRC; the CRC is CRC-16/X-25 over len..serial.
//! Most messages are answered with `78 78 05 | type | serial | CRC | 0D 0A` once stored; the
//! login also carries the device's time zone in its extension bits, which we apply to the
//! calendar times of later messages.
//! Notes in our own words, the ack table and the real packets: `protocols/gt06/`.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

use super::util::{bcd, bcd_string, from_secs, utc, Reader, CRC16_X25};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "gt06";
/// A long frame can declare up to 65 535 bytes after its length field; a frame cut at its stop
/// bits (WiFi reports carry no usable length) is refused beyond this size.
pub const MAX_FRAME: usize = 2 + 2 + 65_535 + 2;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5023,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(Gt06Session::new()),
};

/// Message types (protocol numbers).
pub mod msg {
    pub const LOGIN: u8 = 0x01;
    pub const GPS: u8 = 0x10;
    pub const GPS_LBS_6: u8 = 0x11;
    pub const GPS_LBS_1: u8 = 0x12;
    pub const STATUS: u8 = 0x13;
    pub const STRING: u8 = 0x15;
    pub const GPS_LBS_STATUS_1: u8 = 0x16;
    pub const WIFI: u8 = 0x17;
    pub const LBS_EXTEND: u8 = 0x18;
    pub const LBS_STATUS: u8 = 0x19;
    pub const GPS_PHONE: u8 = 0x1A;
    pub const GPS_LBS_EXTEND: u8 = 0x1E;
    pub const STRING_INFO: u8 = 0x21;
    pub const GPS_LBS_2: u8 = 0x22;
    pub const HEARTBEAT: u8 = 0x23;
    pub const LBS_MULTIPLE_3: u8 = 0x24;
    pub const GPS_LBS_DRIVER: u8 = 0x25;
    pub const GPS_LBS_STATUS_2: u8 = 0x26;
    pub const GPS_LBS_STATUS_3: u8 = 0x27;
    pub const LBS_MULTIPLE_1: u8 = 0x28;
    pub const ADDRESS_REQUEST: u8 = 0x2A;
    pub const LBS_WIFI: u8 = 0x2C;
    pub const GPS_LBS_4: u8 = 0x2D;
    pub const LBS_MULTIPLE_2: u8 = 0x2E;
    pub const GPS_LBS_5: u8 = 0x31;
    pub const GPS_LBS_STATUS_4: u8 = 0x32;
    pub const WIFI_5: u8 = 0x33;
    pub const X1_GPS: u8 = 0x34;
    pub const STATUS_2: u8 = 0x36;
    pub const GPS_LBS_3: u8 = 0x37;
    pub const GPS_LBS_8: u8 = 0x38;
    pub const ALARM_MODULE: u8 = 0x39;
    pub const IBUTTON: u8 = 0x61;
    pub const WIFI_2: u8 = 0x69;
    pub const GPS_MODULAR: u8 = 0x70;
    pub const COMMAND_0: u8 = 0x80;
    pub const COMMAND_1: u8 = 0x81;
    pub const COMMAND_2: u8 = 0x82;
    pub const TIME_REQUEST: u8 = 0x8A;
    pub const OBD: u8 = 0x8C;
    pub const INFO: u8 = 0x94;
    pub const ALARM: u8 = 0x95;
    pub const ADDRESS_RESPONSE: u8 = 0x97;
    pub const SERIAL: u8 = 0x9B;
    pub const GPS_LBS_7: u8 = 0xA0;
    pub const LBS_2: u8 = 0xA1;
    pub const WIFI_3: u8 = 0xA2;
    pub const FENCE_SINGLE: u8 = 0xA3;
    pub const FENCE_MULTI: u8 = 0xA4;
    pub const LBS_ALARM: u8 = 0xA5;
    pub const LBS_ADDRESS: u8 = 0xA7;
    pub const WIFI_ALARM: u8 = 0xA9;
    pub const DEVICE_STATUS: u8 = 0xF1;
    pub const PERIPHERAL: u8 = 0xF2;
    pub const WIFI_4: u8 = 0xF3;
}

/// Firmware families that reuse a message type with another layout; recognised, as the
/// devices give no other hint, by the type and the declared length of a short frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Standard,
    Vxt01,
    WanwayS20,
    Sr411Mini,
    Gt06eCard,
    Benway,
    S5,
    Space10x,
    Obd6,
    Wetrust,
    Jc400,
    Sl4x,
    Seeworld,
    Rfid,
    Lw4g,
    Trx16i,
    /// 0x12 with the IMEI in front of the fix (QH302R).
    ImeiFirst,
    /// 0x22/0x25 with source type, IMEI and device time before the fix (NT20, XT40…).
    Nt,
}

fn variant(extended: bool, typ: u8, len: usize, body: &[u8]) -> Variant {
    use msg::*;
    if extended {
        return Variant::Standard;
    }
    if matches!(typ, GPS_LBS_2 | GPS_LBS_DRIVER) && is_nt_layout(body) {
        return Variant::Nt;
    }
    match (typ, len) {
        (GPS_LBS_1, 0x24) | (GPS_LBS_STATUS_1, 0x24) => Variant::Vxt01,
        (LBS_MULTIPLE_3, 0x31) => Variant::WanwayS20,
        (LBS_MULTIPLE_3, 0x2e) => Variant::Sr411Mini,
        (GPS_LBS_1, l) if l >= 0x71 => Variant::Gt06eCard,
        (GPS_LBS_1, 0x21) => Variant::Benway,
        (GPS_LBS_1, 0x2b) => Variant::S5,
        (GPS_LBS_1, 0x27) => Variant::ImeiFirst,
        (LBS_STATUS, l) if l >= 0x17 => Variant::Space10x,
        (STATUS, 0x13) => Variant::Obd6,
        (GPS_LBS_1, 0x29) => Variant::Wetrust,
        (ALARM, _) if body.starts_with(&[0xff, 0xff]) => Variant::Jc400,
        (X1_GPS, 0x37)
        | (GPS_LBS_5, 0x2a)
        | (GPS_LBS_STATUS_4, 0x27)
        | (GPS_LBS_STATUS_4, 0x29) => Variant::Sl4x,
        (GPS_LBS_2, 0x2f)
        | (GPS_LBS_STATUS_1, 0x26)
        | (FENCE_SINGLE, 0x0c)
        | (FENCE_SINGLE, 0x18) => Variant::Seeworld,
        (WIFI, 0x28) => Variant::Rfid,
        (WIFI_3, 0x40) => Variant::Lw4g,
        (STATUS_2, 0x35) | (GPS_LBS_STATUS_1, 0x2d) => Variant::Trx16i,
        _ => Variant::Standard,
    }
}

/// The NT family (configured by model in other servers) puts `source | IMEI (8 BCD) | device
/// time` before the fix. Recognised when the standard reading gives no calendar date but the
/// NT reading gives a BCD IMEI and two.
fn is_nt_layout(body: &[u8]) -> bool {
    let valid_date = |d: &[u8]| {
        d.len() == 6
            && utc(
                2000 + i32::from(d[0]),
                u32::from(d[1]),
                u32::from(d[2]),
                0,
                0,
                0,
            )
            .is_some()
            && d[3] < 24
            && d[4] < 60
            && d[5] < 60
    };
    let (Some(std), Some(imei), Some(dev), Some(fix)) = (
        body.get(0..6),
        body.get(1..9),
        body.get(9..15),
        body.get(15..21),
    ) else {
        return false;
    };
    !valid_date(std) && imei.iter().all(|&b| bcd(b).is_some()) && valid_date(dev) && valid_date(fix)
}

/// GT06 protocol state of one connection.
pub struct Gt06Session {
    imei: Option<DeviceId>,
    /// Refuse frames whose CRC does not match (the default).
    verify_crc: bool,
    /// The device's time zone from its login, in seconds east of UTC.
    tz_offset: i32,
}

impl Default for Gt06Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Gt06Session {
    pub fn new() -> Self {
        Gt06Session {
            imei: None,
            verify_crc: true,
            tz_offset: 0,
        }
    }

    /// A session that decodes frames whatever their CRC, for fleets of clones that compute it
    /// wrongly (other servers never check it). Not the default.
    pub fn without_crc_check() -> Self {
        Gt06Session {
            verify_crc: false,
            ..Self::new()
        }
    }

    /// The IMEI the device logged in with.
    pub fn device(&self) -> Option<&DeviceId> {
        self.imei.as_ref()
    }
}

impl Session for Gt06Session {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        next_frame(buf)
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let d = decode_frame(frame, ctx, self.verify_crc, &mut self.tz_offset)?;
        if let Some(id) = &d.device {
            self.imei = Some(id.clone());
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let text = match &cmd.body {
            CommandBody::EngineStop => "Relay,1#",
            CommandBody::EngineResume => "Relay,0#",
            CommandBody::Text(t) => t.as_str(),
        };
        encode_command_packet(text, cmd.seq, cmd.seq as u16).ok_or(CommandError::Unsupported(NAME))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Gt06
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

/// Cut one frame: by its declared length when the stop bits sit where it says, else at the
/// first `0D 0A` that ends the buffer or precedes the next start marker (WiFi reports 0x17/0x69
/// declare no real length, and some firmwares miscount by a byte).
pub fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let Some(start) = buf
        .windows(2)
        .position(|w| w == [0x78, 0x78] || w == [0x79, 0x79])
    else {
        // Keep a trailing lone marker byte; drop everything else.
        let keep = usize::from(matches!(buf.last(), Some(0x78 | 0x79)));
        let drop = buf.len() - keep;
        return Ok(if drop > 0 {
            FrameCut::Skip(drop)
        } else {
            FrameCut::NeedMore
        });
    };
    if start > 0 {
        return Ok(FrameCut::Skip(start));
    }
    let extended = buf[0] == 0x79;
    let declared = if extended {
        match (buf.get(2), buf.get(3)) {
            (Some(&h), Some(&l)) => 6 + usize::from(u16::from_be_bytes([h, l])),
            _ => return Ok(FrameCut::NeedMore),
        }
    } else {
        match buf.get(2) {
            Some(&l) => 5 + usize::from(l),
            None => return Ok(FrameCut::NeedMore),
        }
    };
    if buf.len() >= declared && buf.get(declared - 2..declared) == Some(&[0x0d, 0x0a][..]) {
        return Ok(FrameCut::Frame(declared));
    }
    // Search for the stop bits after the header.
    let header = if extended { 5 } else { 4 };
    let mut i = header;
    while i + 1 < buf.len() {
        if buf[i] == 0x0d && buf[i + 1] == 0x0a {
            let end = i + 2;
            let next_ok = matches!(
                buf.get(end..),
                Some([] | [0x78, 0x78, ..] | [0x79, 0x79, ..] | [0x78] | [0x79])
            );
            // A frame whose declared end is still to come is only cut short at the end of the
            // buffer when the declared length cannot be right (it would run past stop bits
            // followed by a new frame) — or when nothing more follows at all.
            if next_ok {
                return Ok(FrameCut::Frame(end));
            }
        }
        i += 1;
    }
    if buf.len() >= MAX_FRAME {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            0,
            format!("no stop bits in {} bytes", buf.len()),
        ));
    }
    Ok(FrameCut::NeedMore)
}

/// One frame split into its parts.
struct Frame<'a> {
    extended: bool,
    /// The declared length field.
    length: usize,
    typ: u8,
    /// Everything after the type up to the stop bits: content, serial and CRC (when present).
    body: &'a [u8],
    /// The serial number as echoed in acks (the two bytes before the CRC).
    serial: u16,
}

fn split_frame(frame: &[u8], verify_crc: bool) -> Result<Frame<'_>, DecodeError> {
    let extended = match frame {
        [0x78, 0x78, ..] => false,
        [0x79, 0x79, ..] => true,
        _ => {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Framing,
                0,
                "no 7878/7979 start bits",
            ))
        }
    };
    if !frame.ends_with(&[0x0d, 0x0a]) {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            frame.len().saturating_sub(2),
            "no 0D0A stop bits",
        ));
    }
    let mut r = Reader::new(NAME, frame);
    r.skip(2, "start bits")?;
    let length = if extended {
        usize::from(r.u16("length")?)
    } else {
        usize::from(r.u8("length")?)
    };
    let typ = r.u8("protocol number")?;
    let head = r.pos();
    let end = frame.len() - 2;
    let body = frame
        .get(head..end)
        .ok_or_else(|| DecodeError::new(NAME, DecodeReason::Truncated, head, "no content"))?;
    let len_field = if extended { 2 } else { 1 };
    let exact = length >= 5 && length == frame.len() - 4 - len_field;
    // A frame cut at its stop bits rather than by its length byte has no CRC where the length
    // says, so it cannot be verified: refused, unless the CRC check is off or the length byte
    // is documented as something else (the WiFi reports put an access-point count there).
    if !exact && verify_crc && !matches!(typ, msg::WIFI | msg::WIFI_2) {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            2,
            format!(
                "length field {length}, but the stop bits end a frame of {}: the CRC cannot match",
                frame.len() - 4 - len_field
            ),
        ));
    }
    if exact && verify_crc {
        let crc_at = frame.len() - 4;
        let got = u16::from_be_bytes([frame[crc_at], frame[crc_at + 1]]);
        let want = CRC16_X25.checksum(&frame[2..crc_at]);
        if got != want {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                crc_at,
                format!("CRC {got:#06x}, computed {want:#06x}"),
            ));
        }
    }
    let serial = match frame.len().checked_sub(6).and_then(|i| frame.get(i..i + 2)) {
        Some(s) if s.len() == 2 && frame.len() >= head + 6 => u16::from_be_bytes([s[0], s[1]]),
        _ => 0,
    };
    Ok(Frame {
        extended,
        length,
        typ,
        body,
        serial,
    })
}

/// `78 78 | len | type | content | serial | CRC | 0D 0A` (or the long form).
pub fn build_packet(extended: bool, typ: u8, content: &[u8], serial: u16) -> Bytes {
    let length = 1 + content.len() + 2 + 2;
    let mut b = BytesMut::with_capacity(length + 6);
    if extended {
        b.put_u16(0x7979);
        b.put_u16(length as u16);
    } else {
        b.put_u16(0x7878);
        b.put_u8(length as u8);
    }
    b.put_u8(typ);
    b.put_slice(content);
    b.put_u16(serial);
    let crc = CRC16_X25.checksum(&b[2..]);
    b.put_u16(crc);
    b.put_slice(b"\r\n");
    b.freeze()
}

fn ack(typ: u8, serial: u16) -> Bytes {
    build_packet(false, typ, &[], serial)
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// What one message carries while it is being decoded: a record that becomes a position when
/// it got a fix, else the device status.
struct Rec {
    p: Position,
    fix: bool,
}

impl Rec {
    fn new(ctx: &DecodeCtx) -> Self {
        Rec {
            p: Position::new(ctx.now, false, 0.0, 0.0),
            fix: false,
        }
    }
    fn alarm(&mut self, a: Option<&'static str>) {
        if a.is_some() {
            self.p.alarm = a;
        }
    }
    fn set_output(&mut self, on: bool) {
        let m = self.p.outputs.get_or_insert(0);
        if on {
            *m |= 1;
        } else {
            *m &= !1;
        }
    }
}

fn finish(rec: Rec, d: &mut Decoded) {
    if rec.fix {
        d.positions.push(rec.p);
        return;
    }
    let p = rec.p;
    let mut a = p.attrs;
    if let Some(v) = p.alarm {
        a.text("alarm", v);
    }
    if let Some(v) = p.ignition {
        a.flag("ignition", v);
    }
    if let Some(v) = p.motion {
        a.flag("motion", v);
    }
    if let Some(v) = p.outputs {
        a.int("outputs", i64::from(v));
    }
    if let Some(v) = p.inputs {
        a.int("inputs", i64::from(v));
    }
    if let Some(v) = p.power_v {
        a.float("power_v", v);
    }
    if let Some(v) = p.odometer_m {
        a.float("odometer_m", v);
    }
    if let Some(v) = p.satellites {
        a.int("satellites", i64::from(v));
    }
    if !a.is_empty() {
        d.status = Some(a);
    }
}

fn decode_frame(
    frame: &[u8],
    ctx: &DecodeCtx,
    verify_crc: bool,
    tz: &mut i32,
) -> Result<Decoded, DecodeError> {
    let f = split_frame(frame, verify_crc)?;
    let v = variant(f.extended, f.typ, f.length, f.body);
    let mut r = Reader::new(NAME, f.body);
    // Offsets in errors count from the start of the frame.
    let base = if f.extended { 5 } else { 4 };
    decode_message(&f, v, &mut r, ctx, tz).map_err(|mut e| {
        e.offset += base;
        e
    })
}

/// Bytes of content left before the serial and CRC.
fn left(r: &Reader<'_>) -> usize {
    r.remaining().saturating_sub(4)
}

/// One message while it is decoded: the frame, the reader over its content, and what it
/// becomes (a record, the decoded message, the ack).
struct Msg<'m, 'b> {
    f: &'m Frame<'m>,
    v: Variant,
    r: &'m mut Reader<'b>,
    ctx: &'m DecodeCtx,
    /// The connection's time zone offset (seconds), set by the login.
    tz: &'m mut i32,
    rec: Rec,
    d: Decoded,
    reply: Option<Bytes>,
}

/// What a message decoder leaves to `decode_message`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The record becomes a position or the status, the kind is settled, the ack attached.
    Finish,
    /// The decoded message is complete as it is.
    Done,
}

fn decode_message(
    f: &Frame<'_>,
    v: Variant,
    r: &mut Reader<'_>,
    ctx: &DecodeCtx,
    tz: &mut i32,
) -> Result<Decoded, DecodeError> {
    use msg::*;
    let t = f.typ;
    let mut m = Msg {
        f,
        v,
        r,
        ctx,
        tz,
        rec: Rec::new(ctx),
        d: Decoded::kind(MessageKind::Data),
        // The ack most messages want; cleared for those that take none.
        reply: Some(ack(t, f.serial)),
    };

    let step = match t {
        LOGIN => login(&mut m)?,
        HEARTBEAT => heartbeat(&mut m)?,
        ADDRESS_REQUEST => address_request(&mut m)?,
        TIME_REQUEST => time_request(&mut m)?,
        X1_GPS if v != Variant::Sl4x => x1_gps(&mut m)?,
        WIFI if v != Variant::Rfid => {
            wifi(f, m.r, &mut m.rec, &mut m.d, &mut m.reply)?;
            Step::Finish
        }
        WIFI_2 | WIFI_4 => {
            wifi(f, m.r, &mut m.rec, &mut m.d, &mut m.reply)?;
            Step::Finish
        }
        INFO if !f.extended => info_power(&mut m)?,
        INFO => info_message(&mut m)?,
        LBS_MULTIPLE_3 if v == Variant::Sr411Mini => sr411_mini(&mut m)?,
        LBS_MULTIPLE_1 | LBS_MULTIPLE_2 | LBS_MULTIPLE_3 | LBS_EXTEND | LBS_WIFI | LBS_2
        | WIFI_ALARM => {
            multi_lbs(f, v, m.r, &mut m.rec, &mut m.d)?;
            Step::Finish
        }
        WIFI_3 if v != Variant::Lw4g => {
            multi_lbs(f, v, m.r, &mut m.rec, &mut m.d)?;
            Step::Finish
        }
        0x34 if v == Variant::Sl4x => {
            multi_lbs(f, v, m.r, &mut m.rec, &mut m.d)?;
            Step::Finish
        }
        WIFI_5 if !f.extended => {
            multi_lbs(f, v, m.r, &mut m.rec, &mut m.d)?;
            Step::Finish
        }
        STRING => string_message(&mut m)?,
        STATUS if left(m.r) == 16 => status_16(&mut m)?,
        IBUTTON => ibutton(&mut m)?,
        STATUS_2 if v == Variant::Trx16i => trx16i_status(&mut m)?,
        _ if supported(t, v) && !(f.extended && (t == GPS_LBS_STATUS_4 || t == STATUS_2)) => {
            standard_message(&mut m)?
        }
        ALARM => alarm(&mut m)?,
        STRING_INFO => string_info(&mut m)?,
        GPS_LBS_STATUS_4 | WIFI_5 if f.extended => az735_long(&mut m)?,
        OBD => obd(&mut m)?,
        GPS_MODULAR => gps_modular(&mut m)?,
        SERIAL => serial(&mut m)?,
        PERIPHERAL | DEVICE_STATUS => peripheral_status(&mut m)?,
        GPS_LBS_8 => gps_lbs_8(&mut m)?,
        _ => other(&mut m)?,
    };
    let Msg {
        mut d, rec, reply, ..
    } = m;
    if step == Step::Done {
        return Ok(d);
    }
    if d.kind == MessageKind::Data && rec.p.alarm.is_some() {
        d.kind = MessageKind::Alarm;
    } else if d.kind == MessageKind::Data && t == STATUS {
        d.kind = MessageKind::Heartbeat;
    } else if d.kind == MessageKind::Data && !rec.fix {
        d.kind = MessageKind::Status;
    }
    finish(rec, &mut d);
    d.reply = reply;
    Ok(d)
}

/// 8 BCD bytes: 15 IMEI digits after a leading zero nibble.
fn imei_string(b: &[u8]) -> String {
    let mut id = bcd_string(b);
    if id.len() == 16 && id.starts_with('0') {
        id.remove(0);
    }
    id
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', '\r', '\n'])
        .to_string()
}

fn utf16be(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
        .trim_end_matches(['\0', '\r', '\n'])
        .to_string()
}

fn response(text: String, flag: u32) -> CommandResponse {
    let lower = text.to_ascii_lowercase();
    let success = if lower.contains("success") || lower.ends_with(":ok") || lower == "ok" {
        Some(true)
    } else if lower.contains("fail") || lower.contains("error") || lower.contains("not running") {
        Some(false)
    } else {
        None
    };
    CommandResponse {
        text,
        success,
        seq: Some(flag),
    }
}

#[derive(Clone, Copy)]
struct GpsOpts {
    has_length: bool,
    sats: bool,
    speed: bool,
    long_speed: bool,
    swap: bool,
}

impl GpsOpts {
    const STD: GpsOpts = GpsOpts {
        has_length: false,
        sats: true,
        speed: true,
        long_speed: false,
        swap: false,
    };
}

/// A calendar date-time (`YY MM DD hh mm ss`) in the device's zone, as UTC.
fn date(r: &mut Reader<'_>, tz: i32) -> Result<Option<DateTime<Utc>>, DecodeError> {
    let b = r.take(6, "date and time")?;
    let t = utc(
        2000 + i32::from(b[0]),
        u32::from(b[1]),
        u32::from(b[2]),
        u32::from(b[3]),
        u32::from(b[4]),
        u32::from(b[5]),
    );
    Ok(t.map(|t| t - Duration::seconds(i64::from(tz))))
}

/// The GPS block: date, satellites, latitude, longitude, speed, course/status word.
fn gps(r: &mut Reader<'_>, rec: &mut Rec, tz: i32, o: GpsOpts) -> Result<(), DecodeError> {
    let time = date(r, tz)?;
    if o.has_length && r.u8("GPS length")? == 0 {
        return Ok(());
    }
    if o.sats {
        rec.p.satellites = Some(u16::from(r.u8("satellites")? & 0x0f));
    }
    let lat = f64::from(r.u32("latitude")?) / 1_800_000.0;
    let lon = f64::from(r.u32("longitude")?) / 1_800_000.0;
    let mut flags = 0;
    if o.swap {
        flags = r.u16("course and status")?;
    }
    if o.speed {
        rec.p.speed_kmh = if o.long_speed {
            f64::from(r.u16("speed")?)
        } else {
            f64::from(r.u8("speed")?)
        };
    }
    if !o.swap {
        flags = r.u16("course and status")?;
    }
    apply_course(rec, flags, lat, lon);
    if let Some(t) = time {
        rec.p.fix_time = t;
        rec.fix = rec.p.valid || rec.p.lat != 0.0 || rec.p.lon != 0.0;
    }
    Ok(())
}

fn apply_course(rec: &mut Rec, flags: u16, lat: f64, lon: f64) {
    rec.p.course = f64::from(flags & 0x03ff);
    rec.p.valid = flags & 0x1000 != 0;
    rec.p.lat = if flags & 0x0400 != 0 { lat } else { -lat };
    rec.p.lon = if flags & 0x0800 != 0 { -lon } else { lon };
    if flags & 0x4000 != 0 {
        rec.p.ignition = Some(flags & 0x8000 != 0);
    }
}

fn cell(rec: &mut Rec, mcc: u16, mnc: u16, lac: u64, cid: u64) {
    let a = &mut rec.p.attrs;
    a.int("mcc", i64::from(mcc & 0x7fff));
    a.int("mnc", i64::from(mnc));
    a.int("lac", lac as i64);
    a.int("cell_id", cid as i64);
}

/// The serving cell block; `false` when a length-prefixed block is empty.
fn lbs(
    r: &mut Reader<'_>,
    rec: &mut Rec,
    t: u8,
    v: Variant,
    has_length: bool,
) -> Result<bool, DecodeError> {
    use msg::*;
    let mut length = 0usize;
    if has_length {
        length = usize::from(r.u8("LBS length")?);
        if length == 0 {
            let rest = r.rest();
            let zeroed = rest.iter().skip(9).take(36).all(|&b| b == 0);
            if zeroed {
                let n = rest.len().min(45);
                r.skip(n, "empty LBS")?;
            }
            return Ok(false);
        }
    }
    let start = r.pos();
    let cell_type = if t == GPS_LBS_8 || t == ALARM_MODULE {
        r.u8("cell type")?
    } else {
        0
    };
    let mcc = r.u16("MCC")?;
    let mnc = if mcc & 0x8000 != 0 || t == GPS_LBS_6 || v == Variant::Sl4x {
        r.u16("MNC")?
    } else {
        u16::from(r.u8("MNC")?)
    };
    let wide =
        cell_type >= 3 || t == LBS_ALARM || t == GPS_LBS_7 || (t == WIFI_3 && v == Variant::Lw4g);
    let lac = if wide {
        u64::from(r.u32("LAC")?)
    } else {
        u64::from(r.u16("LAC")?)
    };
    // A length-prefixed block too short for a 64-bit cell id carries the usual 24 bits.
    let long_cid = wide || (v == Variant::Sl4x && (!has_length || length >= 15));
    let cid = if long_cid {
        r.u64("cell id")?
    } else if t == GPS_LBS_6
        || t == IBUTTON
        || t == GPS_LBS_DRIVER
        || v == Variant::Seeworld
        || (v == Variant::Trx16i && t == STATUS_2)
    {
        u64::from(r.u32("cell id")?)
    } else {
        u64::from(r.u24("cell id")?)
    };
    if cell_type >= 3 {
        r.skip(2, "signal")?;
    } else if t == GPS_LBS_8 || t == ALARM_MODULE {
        r.skip(1, "signal")?;
    }
    cell(rec, mcc, mnc, lac, cid);
    // The length counts its own byte on some firmwares and not on others: skip only a clear
    // extension beyond the fields read.
    // NT firmwares count the length as if the cell id had 24 bits and pad accordingly.
    let used = if v == Variant::Nt {
        9
    } else {
        r.pos() - start + 1
    };
    if has_length && length > used {
        r.skip(length - used, "LBS extension")?;
    }
    Ok(true)
}

/// The terminal information byte: ACC, charging, oil/electricity cut, alarm bits.
fn terminal_info(r: &mut Reader<'_>, rec: &mut Rec, v: Variant) -> Result<(), DecodeError> {
    let s = r.u8("terminal information")?;
    rec.p.attrs.int("status", i64::from(s));
    rec.p.ignition = Some(s & 0x02 != 0);
    rec.p.attrs.flag("charging", s & 0x04 != 0);
    rec.set_output(s & 0x80 != 0);
    rec.alarm(match (s >> 3) & 0x07 {
        1 => Some("vibration"),
        2 => Some("power_cut"),
        3 => Some("low_battery"),
        4 => Some("sos"),
        6 => Some("geofence"),
        7 if v == Variant::Vxt01 => Some("overspeed"),
        7 => Some("removing"),
        _ => None,
    });
    Ok(())
}

/// The alarm/language byte of status messages.
fn alarm_name(value: u16, v: Variant) -> Option<&'static str> {
    Some(match value {
        0x01 => "sos",
        0x02 => "power_cut",
        0x03 => "vibration",
        0x04 => "geofence_enter",
        0x05 => "geofence_exit",
        0x06 => "overspeed",
        0x09 if v == Variant::Trx16i => "geofence",
        0x09 => "vibration",
        0x0E if v == Variant::Trx16i => "low_power",
        0x0E | 0x0F => "low_battery",
        0x11 => "power_off",
        0x0C | 0x13 | 0x25 | 0x32 => "tampering",
        0x14 => "door",
        0x18 => "removing",
        0x19 => "low_battery",
        0x1A | 0x27 | 0xF1 => "braking",
        0x1B | 0x2A | 0x2B | 0x2E => "cornering",
        0x23 => "fall_down",
        0x26 | 0xF0 => "acceleration",
        0x28 => "braking",
        0x29 => "acceleration",
        0x2C | 0xF2 => "accident",
        0x30 => "jamming",
        0x33 => "lock",
        0x34 => "unlock",
        0x53 => "fuel_leak",
        0x5B | 0x5C => "temperature",
        0xC9 => "idle",
        0x0107 | 0x010B => "jamming",
        _ => return None,
    })
}

fn has_gps(t: u8, v: Variant) -> bool {
    use msg::*;
    match t {
        GPS | GPS_LBS_1 | GPS_LBS_2 | GPS_LBS_DRIVER | GPS_LBS_3 | GPS_LBS_4 | GPS_LBS_5
        | GPS_LBS_6 | GPS_LBS_STATUS_1 | GPS_LBS_STATUS_2 | GPS_LBS_STATUS_3 | GPS_LBS_STATUS_4
        | GPS_PHONE | GPS_LBS_EXTEND | GPS_LBS_7 | WIFI | FENCE_MULTI | ALARM_MODULE => true,
        WIFI_3 => v == Variant::Lw4g,
        FENCE_SINGLE => v != Variant::Seeworld,
        _ => false,
    }
}

fn has_lbs(t: u8, v: Variant) -> bool {
    use msg::*;
    match t {
        LBS_STATUS | GPS_LBS_1 | GPS_LBS_2 | GPS_LBS_DRIVER | GPS_LBS_3 | GPS_LBS_4 | GPS_LBS_5
        | GPS_LBS_6 | GPS_LBS_STATUS_1 | GPS_LBS_STATUS_2 | GPS_LBS_STATUS_3 | GPS_LBS_STATUS_4
        | GPS_LBS_7 | WIFI | FENCE_MULTI | ALARM_MODULE | LBS_ALARM | LBS_ADDRESS => true,
        WIFI_3 => v == Variant::Lw4g,
        FENCE_SINGLE => v != Variant::Seeworld,
        _ => false,
    }
}

fn has_status(t: u8, v: Variant) -> bool {
    use msg::*;
    match t {
        STATUS | STATUS_2 | LBS_STATUS | GPS_LBS_STATUS_1 | GPS_LBS_STATUS_2 | GPS_LBS_STATUS_3
        | GPS_LBS_STATUS_4 | FENCE_MULTI | ALARM_MODULE | LBS_ALARM => true,
        WIFI_3 => v == Variant::Lw4g,
        FENCE_SINGLE => v == Variant::Seeworld,
        GPS_LBS_2 | GPS_LBS_DRIVER => v == Variant::Nt,
        _ => false,
    }
}

fn supported(t: u8, v: Variant) -> bool {
    has_gps(t, v) || has_lbs(t, v) || has_status(t, v)
}

/// The common layout: [GPS] [LBS] [terminal info, voltage, signal, alarm/language] [extras].
fn standard(
    f: &Frame<'_>,
    v: Variant,
    r: &mut Reader<'_>,
    rec: &mut Rec,
    d: &mut Decoded,
    tz: i32,
) -> Result<(), DecodeError> {
    use msg::*;
    let t = f.typ;
    let lw4g = t == WIFI_3 && v == Variant::Lw4g;
    let nt = v == Variant::Nt;
    if v == Variant::ImeiFirst || nt {
        if nt {
            r.skip(1, "location source")?;
        }
        d.device = Some(DeviceId::new(imei_string(r.take(8, "IMEI")?)));
        if nt {
            if let Some(t) = date(r, tz)? {
                rec.p.attrs.text("device_time", t.to_rfc3339());
            }
        }
    }
    if has_gps(t, v) {
        gps(r, rec, tz, GpsOpts::STD)?;
    }
    if has_lbs(t, v) && left(r) > 0 {
        let has_length = has_status(t, v)
            && t != LBS_STATUS
            && t != LBS_ALARM
            && t != ALARM_MODULE
            && !(t == GPS_LBS_STATUS_1 && v == Variant::Vxt01)
            && !lw4g;
        lbs(r, rec, t, v, has_length)?;
    }
    if has_status(t, v) {
        status_block(f, v, r, rec)?;
    }
    if matches!(t, STATUS_2 | GPS_LBS_STATUS_3 | FENCE_MULTI | ALARM_MODULE) || lw4g || nt {
        r.skip(1, "language")?;
    }
    if t == GPS_LBS_STATUS_1 && v == Variant::Trx16i {
        r.skip(1, "language")?;
        driver_hex(r, rec)?;
    }
    if t == STATUS_2 || t == ALARM_MODULE {
        status_modules(r, rec)?;
    }
    if lw4g {
        rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
        rec.p
            .attrs
            .int("hours_ms", i64::from(r.u32("hours")?) * 1000);
        r.skip(8, "terminal id")?;
        rec.p.inputs = Some(u32::from(r.u16("inputs")?));
    }
    if t == GPS_LBS_1 {
        gps_lbs_1_tail(v, r, rec)?;
    }
    if t == GPS_LBS_2 && v == Variant::Seeworld {
        seeworld_tail(r, rec)?;
    }
    if t == GPS_LBS_STATUS_4 && v == Variant::Sl4x && left(r) >= 2 {
        rec.p.altitude = f64::from(r.i16("altitude")?);
    }
    if nt {
        rec.p.odometer_m = Some(f64::from(r.u24("odometer")?));
        rec.p
            .attrs
            .int("hours_ms", i64::from(r.u24("engine hours")?) * 60_000);
        if t == GPS_LBS_DRIVER {
            let n = usize::from(r.u8("driver id length")?);
            if n > 0 {
                r.skip(1, "driver id type")?;
                let id = hex::encode(r.take(n - 1, "driver id")?);
                rec.p.attrs.text("driver_id", id);
            }
        }
    }
    if matches!(t, GPS_LBS_2 | GPS_LBS_3 | GPS_LBS_4 | GPS_LBS_5) && left(r) >= 3 && !nt {
        rec.p.ignition = Some(r.u8("ACC")? > 0);
        rec.p.attrs.int("event", i64::from(r.u8("upload mode")?));
        rec.p.attrs.flag("archive", r.u8("re-upload")? > 0);
        if v == Variant::Sl4x {
            if left(r) > 2 {
                rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
            }
            rec.p.altitude = f64::from(r.i16("altitude")?);
        }
    }
    if t == GPS_LBS_3 && left(r) >= 3 {
        let module = r.u16("module")?;
        let len = usize::from(r.u8("module length")?);
        match module {
            0x0027 => rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0),
            0x002E => rec.p.odometer_m = Some(f64::from(r.u32("odometer")?)),
            0x003B => rec
                .p
                .attrs
                .float("accuracy", f64::from(r.u16("accuracy")?) / 100.0),
            _ => r.skip(len, "module")?,
        }
    }
    if t == WIFI {
        let id = hex::encode(r.take(8, "RFID")?);
        rec.p.attrs.text("driver_id", id);
        r.skip(1, "validity")?;
    }
    if left(r) == 3 || left(r) == 7 {
        rec.p.ignition = Some(r.u8("ACC")? > 0);
        r.skip(1, "upload mode")?;
        if r.u8("re-upload")? > 0 {
            rec.p.attrs.flag("archive", true);
        }
    }
    if left(r) == 4 {
        rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
    }
    if matches!(t, GPS_LBS_STATUS_3 | FENCE_MULTI) && left(r) > 0 {
        rec.p.attrs.int("geofence", i64::from(r.u8("geofence")?));
    }
    Ok(())
}

/// The terminal information block: status bits, voltage, signal, alarm (by variant).
fn status_block(
    f: &Frame<'_>,
    v: Variant,
    r: &mut Reader<'_>,
    rec: &mut Rec,
) -> Result<(), DecodeError> {
    use msg::*;
    let t = f.typ;
    let lw4g = t == WIFI_3 && v == Variant::Lw4g;
    let nt = v == Variant::Nt;
    if lw4g {
        r.skip(1, "network indicator")?;
    }
    terminal_info(r, rec, v)?;
    if v == Variant::Obd6 {
        let signal = r.u16("signal")?;
        let sats = ((signal >> 10) & 0x1f) + ((signal >> 5) & 0x1f);
        rec.p.satellites = Some(sats);
        rec.p.attrs.int("rssi", i64::from(signal & 0x1f));
        rec.alarm(alarm_name(u16::from(r.u8("alarm")?), v));
        r.skip(1, "language")?;
        rec.p
            .attrs
            .int("battery_level", i64::from(r.u8("battery level")?));
        let mode = r.u8("working mode")?;
        rec.p.power_v = Some(f64::from(r.u16("voltage")?) / 100.0);
        r.skip(3, "reserved and working time")?;
        if mode == 4 {
            rec.p
                .attrs
                .float("temp1", f64::from(r.i16("temperature")?) / 10.0);
        }
    } else if v == Variant::Seeworld && f.length == 0x18 {
        r.skip(3, "extension and voltage level")?;
        rec.p.attrs.int("rssi", i64::from(r.u8("signal")?));
        rec.p.power_v = Some(f64::from(r.u8("power")?));
        r.skip(3, "language and switches")?;
        rec.p.attrs.int("steps", i64::from(r.u32("steps")?));
        rec.p
            .attrs
            .int("battery_level", i64::from(r.u8("battery level")?));
        rec.p.attrs.flag("charging", r.u8("charge")? == 1);
        rec.p.motion = Some(r.u8("motion")? == 1);
    } else {
        if lw4g || nt {
            rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0);
        }
        let level = r.u8("voltage level")?;
        if nt {
            rec.p.attrs.float("battery_v", f64::from(level) / 10.0);
        } else if level <= 6 {
            rec.p.attrs.int("battery_level", i64::from(level) * 100 / 6);
        } else if level <= 100 {
            rec.p.attrs.int("battery_level", i64::from(level));
        }
        rec.p.attrs.int("rssi", i64::from(r.u8("GSM signal")?));
        let mut ext = u16::from(r.u8("alarm")?);
        if matches!(t, GPS_LBS_STATUS_3 | FENCE_MULTI | ALARM_MODULE) {
            if let Some(&next) = r.rest().first() {
                ext += u16::from(next >> 4) << 8;
            }
        }
        if v != Variant::Vxt01 {
            rec.alarm(alarm_name(ext, v));
            if v == Variant::Trx16i {
                rec.p.attrs.int("event", i64::from(ext));
            }
        }
    }
    Ok(())
}

/// The module list of 0x27 / alarm-module frames: battery, startup status, battery level.
fn status_modules(r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    while left(r) > 0 {
        let module = r.u16("module type")?;
        let len = usize::from(r.u8("module length")?);
        match module {
            0x0018 => rec
                .p
                .attrs
                .float("battery_v", f64::from(r.u16("battery")?) / 100.0),
            0x0032 => rec
                .p
                .attrs
                .int("startup_status", i64::from(r.u8("startup status")?)),
            0x006A => rec
                .p
                .attrs
                .int("battery_level", i64::from(r.u8("battery level")?)),
            _ => r.skip(len, "module")?,
        }
    }
    Ok(())
}

/// What each variant appends to 0x12: card, temperature/ADC, power, oil, odometer.
fn gps_lbs_1_tail(v: Variant, r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    match v {
        Variant::Gt06eCard => {
            rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
            let n = usize::from(r.u8("card length")?);
            let card = ascii(r.take(n, "card")?);
            r.skip(2, "alarm and swiped")?;
            rec.p.attrs.text("card", card.trim());
        }
        Variant::Benway => {
            let mask = r.u16("mask")?;
            rec.p.ignition = Some(mask & 0x8000 != 0);
            if mask & 0x4000 != 0 {
                rec.p.inputs = Some(0b10);
            }
            if mask & 0x1000 != 0 {
                let mut value = i64::from(mask & 0x01ff);
                if mask & 0x0200 != 0 {
                    value = -value;
                }
                rec.p.attrs.int("temp1", value);
            } else {
                let value = f64::from(mask & 0x03ff);
                let adc = if mask & 0x2000 != 0 {
                    value
                } else {
                    value / 10.0
                };
                rec.p.attrs.float("adc1", adc);
            }
        }
        Variant::Vxt01 => {
            terminal_info(r, rec, v)?;
            rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0);
            rec.p.attrs.int("rssi", i64::from(r.u8("GSM signal")?));
            r.skip(1, "alarm extension")?;
        }
        Variant::S5 => {
            terminal_info(r, rec, v)?;
            rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0);
            rec.p.attrs.int("rssi", i64::from(r.u8("GSM signal")?));
            rec.alarm(alarm_name(u16::from(r.u8("alarm")?), v));
            rec.p.attrs.int("oil", i64::from(r.u16("oil")?));
            let tb = r.u8("temperature")?;
            let temp = if tb & 0x80 != 0 {
                -i64::from(tb & 0x7f)
            } else {
                i64::from(tb)
            };
            rec.p.attrs.int("temp1", temp);
            rec.p.odometer_m = Some(f64::from(r.u32("odometer")?) * 10.0);
        }
        Variant::Wetrust => {
            rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
            let n = usize::from(r.u8("card length")?);
            let card = ascii(r.take(n, "card")?);
            rec.p.attrs.text("card", card);
            if r.u8("alarm")? > 0 {
                rec.alarm(Some("general"));
            }
            rec.p
                .attrs
                .int("card_status", i64::from(r.u8("card status")?));
            rec.p
                .attrs
                .int("driving_time", i64::from(r.u16("driving time")?));
        }
        _ => {}
    }
    Ok(())
}

/// Seeworld 0x22: ACC, odometer, temperature, humidity.
fn seeworld_tail(r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    rec.p.ignition = Some(r.u8("ACC")? > 0);
    r.skip(2, "reporting mode")?;
    rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
    r.skip(4, "travel time")?;
    let raw = r.u16("temperature")?;
    let temp = if raw & 0x8000 != 0 {
        -i64::from(raw & 0x7fff)
    } else {
        i64::from(raw)
    };
    rec.p.attrs.float("temp1", temp as f64 / 100.0);
    rec.p
        .attrs
        .float("humidity", f64::from(r.u16("humidity")?) / 100.0);
    Ok(())
}

fn driver_hex(r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    let raw = r.take(8, "RFID")?;
    if raw.iter().any(|&b| b != 0) {
        rec.p.attrs.text("driver_id", hex::encode(raw));
    }
    Ok(())
}

/// WiFi reports 0x17/0x69 (BCD time, access points, cells) and 0xF3.
fn wifi(
    f: &Frame<'_>,
    r: &mut Reader<'_>,
    rec: &mut Rec,
    d: &mut Decoded,
    reply: &mut Option<Bytes>,
) -> Result<(), DecodeError> {
    d.kind = MessageKind::Lbs;
    let time = r.take(6, "time")?;
    let stamp = time
        .iter()
        .map(|&b| bcd(b).unwrap_or(0))
        .collect::<Vec<_>>();
    if let [y, mo, dd, h, mi, s] = stamp[..] {
        if let Some(t) = utc(2000 + y as i32, mo, dd, h, mi, s) {
            rec.p.attrs.text("device_time", t.to_rfc3339());
        }
    }
    let f3 = f.typ == msg::WIFI_4;
    // The short frames carry the access point count in their length byte.
    let count = if f3 {
        r.u8("WiFi count")?
    } else {
        f.length.min(255) as u8
    };
    let mut aps = Vec::new();
    for _ in 0..count {
        if f3 {
            r.skip(2, "WiFi prefix")?;
        }
        let mac = r.take(6, "MAC")?;
        let mut s = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        if !f3 {
            s.push_str(&format!("/-{}", r.u8("WiFi signal")?));
        }
        aps.push(s);
    }
    if !aps.is_empty() {
        rec.p.attrs.text("wifi", aps.join(","));
    }
    if !f3 {
        let cells = r.u8("cell count")?;
        let mcc = r.u16("MCC")?;
        let mnc = r.u8("MNC")?;
        rec.p.attrs.int("mcc", i64::from(mcc));
        rec.p.attrs.int("mnc", i64::from(mnc));
        let mut list = Vec::new();
        for _ in 0..cells {
            let lac = r.u16("LAC")?;
            let cid = r.u16("cell id")?;
            let rssi = r.u8("cell signal")?;
            list.push(format!("{lac}/{cid}/-{rssi}"));
        }
        if !list.is_empty() {
            rec.p.attrs.text("cells", list.join(","));
        }
        // These are answered with the report's own time: `78 78 00 | type | time | 0D 0A`.
        let mut b = BytesMut::with_capacity(12);
        b.put_u16(0x7878);
        b.put_u8(0);
        b.put_u8(f.typ);
        b.put_slice(time);
        b.put_slice(b"\r\n");
        *reply = Some(b.freeze());
    } else {
        *reply = None;
    }
    Ok(())
}

/// Multi-cell (and cell + WiFi) reports without a fix.
fn multi_lbs(
    f: &Frame<'_>,
    v: Variant,
    r: &mut Reader<'_>,
    rec: &mut Rec,
    d: &mut Decoded,
) -> Result<(), DecodeError> {
    use msg::*;
    let t = f.typ;
    d.kind = MessageKind::Lbs;
    r.skip(6, "date")?;
    let lead_ta = v == Variant::WanwayS20 || v == Variant::Sl4x;
    if lead_ta {
        r.skip(1, "timing advance")?;
    }
    let mcc = r.u16("MCC")?;
    let mnc = if mcc & 0x8000 != 0 || v == Variant::Sl4x {
        r.u16("MNC")?
    } else {
        u16::from(r.u8("MNC")?)
    };
    rec.p.attrs.int("mcc", i64::from(mcc & 0x7fff));
    rec.p.attrs.int("mnc", i64::from(mnc));
    let cell4g = t == WIFI_ALARM && r.u8("cell type")? > 0;
    let count = if v == Variant::WanwayS20 || t == WIFI_ALARM {
        r.u8("cell count")?
    } else if t == WIFI_5 {
        6
    } else {
        7
    };
    let mut list = Vec::new();
    for _ in 0..count {
        let (lac, cid) = if t == LBS_2 || t == WIFI_3 || cell4g {
            (i64::from(r.i32("LAC")?), r.i64("cell id")?)
        } else if t == WIFI_5 || t == 0x34 {
            (i64::from(r.u16("LAC")?), i64::from(r.u32("cell id")?))
        } else {
            (i64::from(r.u16("LAC")?), i64::from(r.u24("cell id")?))
        };
        let rssi = r.u8("cell signal")?;
        if lac > 0 {
            list.push(format!("{lac}/{cid}/-{rssi}"));
        }
    }
    if !list.is_empty() {
        rec.p.attrs.text("cells", list.join(","));
    }
    if !lead_ta {
        r.skip(1, "timing advance")?;
    }
    if !matches!(
        t,
        LBS_MULTIPLE_1 | LBS_MULTIPLE_2 | LBS_MULTIPLE_3 | LBS_2 | 0x34
    ) {
        let n = r.u8("WiFi count")?;
        let mut aps = Vec::new();
        for _ in 0..n {
            let mac = r.take(6, "MAC")?;
            let rssi = r.u8("WiFi signal")?;
            let m = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            aps.push(format!("{m}/-{rssi}"));
        }
        if !aps.is_empty() {
            rec.p.attrs.text("wifi", aps.join(","));
        }
    }
    if t == WIFI_ALARM {
        let alarm = r.u8("alarm")?;
        let lang = r.u8("language")?;
        rec.alarm(alarm_name(u16::from(lang >> 4) << 8 | u16::from(alarm), v));
    }
    Ok(())
}

/// Information transmission (0x94) in the long form: one sub-type per message.
fn info(f: &Frame<'_>, r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    let sub = r.u8("information type")?;
    let a = &mut rec.p.attrs;
    match sub {
        0x00 => {
            rec.p.power_v = Some(f64::from(r.u16("external voltage")?) / 100.0);
        }
        0x04 => {
            let text = ascii(r.take(left(r), "status text")?);
            for pair in text.split(';') {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                let Ok(n) = i64::from_str_radix(v.trim(), 16) else {
                    continue;
                };
                let key: &'static str = match k {
                    "ALM1" => "alarm1_status",
                    "ALM2" => "alarm2_status",
                    "ALM3" => "alarm3_status",
                    "ALM4" => "alarm4_status",
                    "STA1" => "other_status",
                    "DYD" => "engine_status",
                    _ => continue,
                };
                a.int(key, n);
            }
        }
        0x05 => {
            if left(r) >= 7 {
                r.skip(6, "date")?;
            }
            let flags = r.u8("door status")?;
            a.flag("door", flags & 0x01 != 0);
            a.flag("io1", flags & 0x04 != 0);
        }
        0x0a => {
            r.skip(16, "IMEI and IMSI")?;
            let iccid = hex::encode(r.take(10, "ICCID")?);
            a.text("iccid", iccid.trim_end_matches('f'));
        }
        0x0b => match f.length.checked_sub(6) {
            Some(1) => a.text("network", if r.u8("network")? > 0 { "4G" } else { "2G" }),
            Some(2) => rec.p.power_v = Some(f64::from(r.u16("external voltage")?) / 100.0),
            _ => {}
        },
        0x0d => {
            if r.rest().first() != Some(&b'!') {
                r.skip(6, "date")?;
            }
            let text = ascii(r.take(left(r), "fuel sensor")?);
            // !AIOIL,<addr>,<output>,<temperature>,<version>,<status>,<measured>,…
            let fields: Vec<&str> = text.split(',').collect();
            if fields.first() == Some(&"!AIOIL") {
                if let Some(t) = fields.get(3).and_then(|s| s.parse::<f64>().ok()) {
                    a.float("temp1", t);
                }
                if let Some(v) = fields.get(6).and_then(|s| s.parse::<f64>().ok()) {
                    a.float("fuel", v);
                }
            }
        }
        0x1b => {
            if r.rest().first().is_some_and(u8::is_ascii_alphabetic) {
                let text = ascii(r.take(left(r), "serial")?);
                a.text("serial", text.trim());
            } else {
                r.skip(2, "header and type")?;
                let id = hex::encode(r.take(4, "driver id")?);
                a.text("driver_id", id);
            }
        }
        0x1e => {
            a.float("temp1", f64::from(r.i32("temperature")?) / 10.0);
            a.float("humidity", f64::from(r.i32("humidity")?) / 10.0);
        }
        other => {
            let raw = r.take(left(r), "information content")?;
            a.push(
                AttrKey::Dyn(format!("info_{other:02x}").into()),
                AttrValue::Bytes(raw.into()),
            );
        }
    }
    Ok(())
}

/// 0x70: modules `u16 type | u16 length | value` until the serial.
fn modular(r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    while left(r) > 0 {
        let module = r.u16("module type")?;
        let len = usize::from(r.u16("module length")?);
        let data = r.take(len, "module")?;
        let mut m = Reader::new(NAME, data);
        let a = &mut rec.p.attrs;
        match module {
            0x03 => a.text("iccid", hex::encode(m.take(10, "ICCID")?)),
            0x09 => rec.p.satellites = Some(u16::from(m.u8("satellites")?)),
            0x0a => a.int("satellites_visible", i64::from(m.u8("satellites visible")?)),
            0x11 => {
                let mcc = m.u16("MCC")?;
                let mnc = m.u16("MNC")?;
                let lac = m.u16("LAC")?;
                let cid = m.u24("cell id")?;
                if cid > 0 {
                    cell(rec, mcc, mnc, u64::from(lac), u64::from(cid));
                }
            }
            0x18 => a.float("battery_v", f64::from(m.u16("battery")?) / 100.0),
            0x28 => a.float("hdop", f64::from(m.u8("HDOP")?) / 10.0),
            0x29 => a.int("index", i64::from(m.u32("index")?)),
            0x2a => {
                let input = m.u8("input")?;
                a.flag("door", input & 0x0f > 0);
                a.flag("tamper", input >> 4 > 0);
            }
            0x2b => a.int("boot_reason", i64::from(m.u8("boot reason")?)),
            0x2e => rec.p.odometer_m = Some(f64::from(m.u32_le("odometer")?)),
            0x33 => {
                let secs = m.u32("time")?;
                let sats = m.u8("satellites")?;
                let alt = m.i16("altitude")?;
                let lat = f64::from(m.u32("latitude")?) / 1_800_000.0;
                let lon = f64::from(m.u32("longitude")?) / 1_800_000.0;
                let speed = m.u8("speed")?;
                let flags = m.u16("course and status")?;
                rec.p.satellites = Some(u16::from(sats));
                rec.p.altitude = f64::from(alt);
                rec.p.speed_kmh = f64::from(speed);
                apply_course(rec, flags, lat, lon);
                if let Some(t) = from_secs(i64::from(secs)).filter(|_| secs > 0) {
                    rec.p.fix_time = t;
                    rec.fix = rec.p.valid || rec.p.lat != 0.0 || rec.p.lon != 0.0;
                }
            }
            0x34 => {
                let event = m.u8("event")?;
                rec.alarm(match event {
                    0x10 => Some("door"),
                    0x12 => Some("removing"),
                    0x14 => Some("geofence_enter"),
                    0x15 => Some("geofence_exit"),
                    0x16 => Some("temperature"),
                    0x1A => Some("low_battery"),
                    0x1B => Some("overspeed"),
                    0x1C => Some("power_on"),
                    0x1D => Some("power_off"),
                    0x20 => Some("vibration"),
                    0x21 => Some("power_cut"),
                    0x23 => Some("tampering"),
                    _ => None,
                });
                rec.p.attrs.int("event", i64::from(event));
            }
            0x7f => {
                a.text("tag1_id", hex::encode(m.take(6, "tag id")?));
                a.float("tag1_battery_v", f64::from(m.u16("tag battery")?) / 1000.0);
                a.int("tag1_battery_level", i64::from(m.u8("tag battery level")?));
                a.float("tag1_temp", f64::from(m.i16("tag temperature")?) / 10.0);
                a.int("tag1_humidity", i64::from(m.i16("tag humidity")?));
                a.int("tag1_status", i64::from(m.u8("tag status")?));
            }
            other => rec
                .p
                .attrs
                .push(AttrKey::Io(u32::from(other)), AttrValue::Bytes(data.into())),
        }
    }
    Ok(())
}

/// 0xF2 peripheral / 0xF1 device status items.
fn peripheral(t: u8, r: &mut Reader<'_>, rec: &mut Rec) -> Result<(), DecodeError> {
    while left(r) > 0 {
        let id = r.u16("status id")?;
        let a = &mut rec.p.attrs;
        if t == msg::PERIPHERAL {
            match id {
                0x000A => {
                    let len = usize::from(r.u16("status length")?);
                    r.skip(1, "MAC type")?;
                    a.text("mac", hex::encode(r.take(6, "MAC")?));
                    let event = r.u8("event")?;
                    a.int("event", i64::from(event));
                    let data = r.u8("event data")?;
                    if event > 0 {
                        a.int("event_data", i64::from(data));
                    }
                    a.int("data_type", i64::from(r.u8("data type")?));
                    let n = len.saturating_sub(10);
                    a.text("data_details", hex::encode(r.take(n, "data details")?));
                }
                0x000C => {
                    r.skip(1, "length")?;
                    a.int("external_battery_level", i64::from(r.u8("battery level")?));
                    if r.u8("charge")? > 0 {
                        a.flag("external_battery_charge", true);
                    }
                    a.int("external_battery_cycles", i64::from(r.u16("cycles")?));
                    r.skip(6, "reserved")?;
                }
                _ => {
                    let len = usize::from(r.u8("status length")?);
                    let n = if len == 0 {
                        usize::from(r.u8("status length")?)
                    } else {
                        len
                    };
                    r.skip(n, "status")?;
                }
            }
        } else {
            let len = usize::from(r.u8("status length")?);
            match id {
                0x0001 => {
                    let m = r.u8("motion")?;
                    rec.p.motion = Some(m == 0x02 || m == 0x04);
                }
                0x0002 => a.flag("armed", r.u8("armed")? > 0),
                0x0004 => rec.p.ignition = Some(r.u8("ACC")? > 0),
                0x0005 => rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0),
                0x0007 => a.flag("charging", r.u8("charge")? > 0),
                0x000A => a.int("charge_voltage", i64::from(r.u16("charge voltage")?)),
                0x000B => a.float(
                    "battery_temp",
                    f64::from(r.u16("battery temperature")?) / 10.0,
                ),
                _ => r.skip(len, "status")?,
            }
        }
    }
    Ok(())
}

/// `Current position!Lat:N54.739332,Lon:E25.277563,Course:0.00,Speed:0.00,DateTime:2017-…`
fn current_position(text: &str) -> Option<Position> {
    let rest = text.strip_prefix("Current position!")?;
    let mut lat = None;
    let mut lon = None;
    let mut course = 0.0;
    let mut speed = 0.0;
    let mut time = None;
    for part in rest.split(',') {
        let (k, v) = part.split_once(':')?;
        match k.trim() {
            "Lat" | "Lon" => {
                let (hem, num) = v.split_at_checked(1)?;
                let mut x: f64 = num.parse().ok()?;
                if hem == "S" || hem == "W" {
                    x = -x;
                }
                if k.trim() == "Lat" {
                    lat = Some(x);
                } else {
                    lon = Some(x);
                }
            }
            "Course" => course = v.parse().ok()?,
            "Speed" => speed = v.parse().ok()?,
            "DateTime" => {
                let t =
                    chrono::NaiveDateTime::parse_from_str(v.trim(), "%Y-%m-%d %H:%M:%S").ok()?;
                time = Some(t.and_utc());
            }
            _ => {}
        }
    }
    let mut p = Position::new(time?, true, lat?, lon?);
    p.course = course;
    p.speed_kmh = speed;
    Some(p)
}

// ---------------------------------------------------------------------------------------------
// Encoders

/// The server command packet 0x80: `cmd len | server flag (u32) | ASCII command | language
/// (0x0002 English) | serial`. `None` when the text does not fit a short frame.
pub fn encode_command_packet(text: &str, server_flag: u32, serial: u16) -> Option<Bytes> {
    if !text.is_ascii() || text.len() > 255 - 4 - 1 - 2 - 4 - 1 {
        return None;
    }
    let mut c = Vec::with_capacity(text.len() + 7);
    c.push((4 + text.len()) as u8);
    c.extend_from_slice(&server_flag.to_be_bytes());
    c.extend_from_slice(text.as_bytes());
    c.extend_from_slice(&[0x00, 0x02]);
    Some(build_packet(false, msg::COMMAND_0, &c, serial))
}

/// A device's answer to a command (0x15), as a device sends it; for tests and the simulator.
pub fn encode_command_response(text: &str, server_flag: u32, serial: u16) -> Bytes {
    let text = &text.as_bytes()[..text.len().min(200)];
    let mut c = Vec::with_capacity(text.len() + 7);
    c.push((4 + text.len()) as u8);
    c.extend_from_slice(&server_flag.to_be_bytes());
    c.extend_from_slice(text);
    c.extend_from_slice(&[0x00, 0x02]);
    build_packet(false, msg::STRING, &c, serial)
}

/// The login packet 0x01 a device opens its session with (IMEI as 8 BCD bytes).
pub fn encode_login(imei: &str, serial: u16) -> Bytes {
    let digits: Vec<u8> = imei
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    let mut padded = vec![0u8; 16usize.saturating_sub(digits.len())];
    padded.extend(digits.iter().rev().take(16).rev());
    let imei: Vec<u8> = padded.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    build_packet(false, msg::LOGIN, &imei, serial)
}

/// One fix for [`encode_gps`].
#[derive(Clone, Debug)]
pub struct GpsFix {
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: u8,
    pub course: u16,
    pub satellites: u8,
    pub ignition: bool,
    /// Serving cell: MCC, MNC, LAC, cell id (24 bits).
    pub cell: (u16, u8, u16, u32),
}

/// A GPS + LBS report 0x22 with ACC, upload mode and re-upload bytes, time in UTC.
pub fn encode_gps(fix: &GpsFix, serial: u16) -> Bytes {
    let mut c = Vec::with_capacity(30);
    let t = fix.time;
    c.extend_from_slice(&[
        (t.year() - 2000).clamp(0, 255) as u8,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    ]);
    c.push(0xC0 | (fix.satellites.min(15)));
    c.extend_from_slice(&((fix.lat.abs() * 1_800_000.0).round() as u32).to_be_bytes());
    c.extend_from_slice(&((fix.lon.abs() * 1_800_000.0).round() as u32).to_be_bytes());
    c.push(fix.speed_kmh);
    let mut flags = fix.course.min(359) & 0x03ff;
    if fix.lat >= 0.0 {
        flags |= 0x0400;
    }
    if fix.lon < 0.0 {
        flags |= 0x0800;
    }
    if fix.valid {
        flags |= 0x1000;
    }
    c.extend_from_slice(&flags.to_be_bytes());
    let (mcc, mnc, lac, cid) = fix.cell;
    c.extend_from_slice(&mcc.to_be_bytes());
    c.push(mnc);
    c.extend_from_slice(&lac.to_be_bytes());
    c.extend_from_slice(&cid.to_be_bytes()[1..]);
    c.push(u8::from(fix.ignition));
    c.push(0x00); // upload mode: timed
    c.push(0x00); // real time, not re-uploaded
    build_packet(false, msg::GPS_LBS_2, &c, serial)
}

mod message;
use message::*;

#[cfg(test)]
mod tests;
