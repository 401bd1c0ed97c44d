//! Binary @Track frames: `+RSP` positions (plain and compressed batches), `+EVT` events,
//! `+INF` information, `+ACK` command acknowledgements, and the newer tag-length-value frames
//! whose second byte is 0. Layouts as far as public decoders document them; see the README
//! for what is not understood.

use chrono::{DateTime, Utc};

use super::frame::{BINARY_HEADERS, MIN_BINARY};
use super::NAME;
use crate::model::{Attributes, DeviceId, Position};
use crate::protocols::util::{from_secs, utc, Reader, CRC8_EGTS};
use crate::protocols::{CommandResponse, DecodeError, Decoded};
use crate::protocols::{DecodeReason, MessageKind};

/// `+RSP` report types with an extra layout.
pub const RSP_LCB: u8 = 3;
pub const RSP_GEO: u8 = 8;
pub const RSP_COMPRESSED: u8 = 100;

/// `+EVT` event types with extra fields before the position, and their sizes.
const EVT_EXTRA: &[(u8, usize, &str)] = &[
    (6, 2, "BPL"),
    (45, 7, "VGN"),
    (46, 7, "VGF"),
    (15, 3, "UPD"),
    (17, 4, "IDF"),
    (21, 5, "GSS"),
    (26, 12, "GES"),
    (31, 2, "GPJ"),
    (35, 1, "RMD"),
    (33, 1, "JDS"),
    (23, 1, "CRA"),
    (34, 3, "UPC"),
];

/// Second byte of the newer frames: a report with records, or a heartbeat.
pub const TLV_REPORT: u8 = 0x00;
pub const TLV_HEARTBEAT: u8 = 0x10;

/// The newer binary frames: `'+'` and an identifier byte no text message has there.
pub fn is_tlv(buf: &[u8]) -> bool {
    buf.len() >= 2 && matches!(buf[1], TLV_REPORT | TLV_HEARTBEAT)
}

/// Whether a whole frame is binary (rather than a text message).
pub fn is_binary(frame: &[u8]) -> bool {
    if is_tlv(frame) {
        return true;
    }
    match frame.get(..4) {
        Some(b"+ACK") => frame.get(4).is_some_and(|&b| b != b':'),
        Some(h) => BINARY_HEADERS.iter().any(|b| &b[..] == h),
        None => false,
    }
}

/// The total length a binary header declares (`buf` holds at least [`MIN_BINARY`] bytes).
pub fn binary_frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let u8_at = |i: usize| buf.get(i).map(|&b| usize::from(b));
    let u16_at = |i: usize| {
        buf.get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let len = if buf.get(1) == Some(&TLV_REPORT) {
        u16_at(2)
    } else if buf.get(1) == Some(&TLV_HEARTBEAT) {
        u8_at(2)
    } else {
        match buf.get(..4) {
            Some(b"+ACK") => u8_at(6),
            Some(b"+INF") | Some(b"+BNF") => u16_at(7),
            Some(b"+HBD") => u8_at(5),
            Some(b"+CRD") | Some(b"+BRD") | Some(b"+LGN") => u16_at(6),
            _ => u16_at(9),
        }
    };
    len.ok_or_else(|| {
        DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            buf.len(),
            format!("binary header needs {MIN_BINARY} bytes"),
        )
    })
}

pub fn decode(frame: &[u8]) -> Result<Decoded, DecodeError> {
    if is_tlv(frame) {
        check_crc8(frame)?;
        return if frame[1] == TLV_HEARTBEAT {
            decode_tlv_heartbeat(frame)
        } else {
            decode_tlv(frame)
        };
    }
    let mut r = Reader::new(NAME, frame);
    let header = r.take(4, "header")?;
    match header {
        b"+RSP" | b"+BSP" => decode_rsp(&mut r, header == b"+BSP"),
        b"+EVT" | b"+BVT" => decode_evt(&mut r, header == b"+BVT"),
        b"+ACK" => decode_ack(frame),
        b"+INF" | b"+BNF" => decode_inf(&mut r),
        _ => {
            // +HBD/+CRD/+BRD/+LGN: which fields are present depends on a per-device mask;
            // keep the message type only.
            let mut d = Decoded::kind(MessageKind::Other);
            let mut a = Attributes::with_capacity(1);
            a.text("event", String::from_utf8_lossy(&header[1..]).into_owned());
            d.status = Some(a);
            Ok(d)
        }
    }
}

/// The common head of `+RSP`/`+EVT`: returns the device and (battery %, power mV, satellites).
fn read_head(r: &mut Reader<'_>) -> Result<(DeviceId, u8, u16), DecodeError> {
    r.skip(4, "report mask")?;
    r.skip(2, "length")?;
    r.skip(1, "device type")?;
    r.skip(2, "protocol version")?;
    r.skip(2, "firmware version")?;
    let id = unique_id(r.take(8, "unique id")?);
    let battery = r.u8("battery level")?;
    let power = r.u16("external power")?;
    Ok((id, battery, power))
}

/// The 8-byte unique id of the binary frames: the IMEI with each pair of digits as one byte
/// (`0D 39 5A 18 44 0B 16 00` is 135790246811220) or, when the device is set to identify by
/// name, the device name in ASCII padded with zeros.
pub fn unique_id(b: &[u8]) -> DeviceId {
    let is_imei = b.len() == 8 && b[..7].iter().all(|&x| x <= 99) && b[7] <= 9;
    if is_imei {
        let mut s = String::with_capacity(15);
        for &x in &b[..7] {
            s.push_str(&format!("{x:02}"));
        }
        s.push(char::from(b'0' + b[7]));
        DeviceId::new(s)
    } else {
        let name: String = b
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| {
                if c.is_ascii_graphic() {
                    char::from(c)
                } else {
                    '?'
                }
            })
            .collect();
        DeviceId::new(name)
    }
}

fn decode_rsp(r: &mut Reader<'_>, buffered: bool) -> Result<Decoded, DecodeError> {
    let kind = r.u8("report type")?;
    let (device, battery, power_mv) = read_head(r)?;
    if kind == RSP_GEO {
        r.skip(2, "reserved")?;
    }
    r.skip(1, "motion status")?;
    let sats = r.u8("satellites")?;
    let mut d = Decoded::kind(MessageKind::Data);
    d.device = Some(device);
    if kind == RSP_COMPRESSED {
        d.positions = decode_compressed(r)?;
    } else {
        r.skip(1, "index")?;
        if kind == RSP_LCB {
            r.skip(1, "phone number length")?;
            // BCD digits up to the first 0xF padding nibble.
            loop {
                let b = r.u8("phone number")?;
                if b & 0x0f == 0x0f || b & 0xf0 == 0xf0 {
                    break;
                }
            }
        }
        let count = r.u8("position count")?;
        for _ in 0..count {
            let mut p = read_block(r)?;
            p.satellites = Some(u16::from(sats));
            p.power_v = Some(f64::from(power_mv) / 1000.0);
            p.attrs.int("battery_level", i64::from(battery));
            p.attrs.int("report_type", i64::from(kind));
            d.positions.push(p);
        }
    }
    if buffered {
        for p in &mut d.positions {
            p.attrs.flag("buffered", true);
        }
    }
    Ok(d)
}

/// One 30-byte position block.
fn read_block(r: &mut Reader<'_>) -> Result<Position, DecodeError> {
    let hdop = r.u8("gps accuracy")?;
    // Whole km/h in two bytes, then tenths: 00 16 01 is 22.1 km/h (the compressed points a
    // second later in the same capture continue at 22.7 km/h).
    let speed_whole = r.u16("speed")?;
    let speed_tenths = r.u8("speed decimals")?;
    let course = r.u16("azimuth")?;
    let altitude = r.i16("altitude")?;
    let lon = f64::from(r.i32("longitude")?) / 1e6;
    let lat = f64::from(r.i32("latitude")?) / 1e6;
    let at = r.pos();
    let time = read_time(r)?
        .ok_or_else(|| DecodeError::new(NAME, DecodeReason::BadTime, at, "gps utc time"))?;
    let mut p = Position::new(time, hdop > 0, lat, lon);
    p.speed_kmh = f64::from(speed_whole) + f64::from(speed_tenths.min(9)) / 10.0;
    p.course = f64::from(course);
    p.altitude = f64::from(altitude);
    p.attrs.int("hdop", i64::from(hdop));
    p.attrs.int("mcc", hex_digits_as_decimal(r.u16("mcc")?));
    p.attrs.int("mnc", hex_digits_as_decimal(r.u16("mnc")?));
    p.attrs.int("lac", i64::from(r.u16("lac")?));
    p.attrs.int("cell_id", i64::from(r.u16("cell id")?));
    r.skip(1, "reserved")?;
    Ok(p)
}

/// MCC and MNC are sent as their decimal digits in hex nibbles (`02 68` is MCC 268);
/// a value with a nibble above 9 is kept as the plain number.
fn hex_digits_as_decimal(v: u16) -> i64 {
    let s = format!("{v:04x}");
    s.parse::<i64>().unwrap_or(i64::from(v))
}

/// `u16 year, month, day, hour, minute, second`.
fn read_time(r: &mut Reader<'_>) -> Result<Option<DateTime<Utc>>, DecodeError> {
    let year = r.u16("year")?;
    let b = r.take(5, "date and time")?;
    Ok(utc(
        i32::from(year),
        u32::from(b[0]),
        u32::from(b[1]),
        u32::from(b[2]),
        u32::from(b[3]),
        u32::from(b[4]),
    ))
}

/// Compressed batches: a full point (speed/heading bits, lon, lat, and the time of the first)
/// or a delta point against the previous one; times advance one second per point.
fn decode_compressed(r: &mut Reader<'_>) -> Result<Vec<Position>, DecodeError> {
    let count = r.u16("point count")?;
    let mut out = Vec::with_capacity(usize::from(count).min(2048));
    let (mut speed, mut heading, mut lat, mut lon, mut time) = (0i64, 0i64, 0i64, 0i64, 0i64);
    for _ in 0..count {
        if time > 0 {
            time += 1;
        }
        let Some(&first) = r.rest().first() else {
            return Err(r.error(DecodeReason::Truncated, "compressed point"));
        };
        match first >> 6 {
            1 => {
                let mut bits = Bits::new(r.take(3, "full point")?);
                bits.read(3); // point attribute, fix type
                speed = bits.read(12);
                heading = bits.read(9);
                lon = i64::from(r.i32("longitude")?);
                lat = i64::from(r.i32("latitude")?);
                if time == 0 {
                    time = i64::from(r.u32("time")?);
                }
            }
            2 => {
                let mut bits = Bits::new(r.take(5, "delta point")?);
                bits.read(3);
                speed += bits.signed(7);
                heading += bits.signed(7);
                lon += bits.signed(12);
                lat += bits.signed(11);
            }
            _ => {
                r.skip(1, "empty point")?;
                continue;
            }
        }
        let at = from_secs(time)
            .ok_or_else(|| r.error(DecodeReason::BadTime, format!("time {time}")))?;
        let mut p = Position::new(at, true, lat as f64 / 1e6, lon as f64 / 1e6);
        p.speed_kmh = speed as f64 / 10.0;
        p.course = heading as f64;
        out.push(p);
    }
    Ok(out)
}

fn decode_evt(r: &mut Reader<'_>, buffered: bool) -> Result<Decoded, DecodeError> {
    let kind = r.u8("event type")?;
    let (device, battery, power_mv) = read_head(r)?;
    r.skip(1, "motion status")?;
    let sats = r.u8("satellites")?;
    let extra = EVT_EXTRA.iter().find(|(k, _, _)| *k == kind);
    if let Some((_, n, _)) = extra {
        r.skip(*n, "event fields")?;
    }
    r.skip(1, "position count")?;
    let mut p = read_block(r)?;
    p.satellites = Some(u16::from(sats));
    p.power_v = Some(f64::from(power_mv) / 1000.0);
    p.attrs.int("battery_level", i64::from(battery));
    p.attrs.int("event_type", i64::from(kind));
    let name = extra.map(|(_, _, n)| *n);
    match name {
        Some("VGN") => p.ignition = Some(true),
        Some("VGF") => p.ignition = Some(false),
        Some("BPL") => p.alarm = Some("low_battery"),
        Some("JDS") => p.alarm = Some("jamming"),
        Some("CRA") => p.alarm = Some("accident"),
        _ => {}
    }
    if buffered {
        p.attrs.flag("buffered", true);
    }
    let mut d = Decoded::kind(if p.alarm.is_some() {
        MessageKind::Alarm
    } else {
        MessageKind::Data
    });
    d.device = Some(device);
    d.positions.push(p);
    Ok(d)
}

/// `+INF`: type, u16 mask, u16 length, unique id, device type, protocol and firmware
/// versions; the rest depends on the mask and is not decoded.
fn decode_inf(r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
    let kind = r.u8("information type")?;
    r.skip(2, "report mask")?;
    r.skip(2, "length")?;
    let device = unique_id(r.take(8, "unique id")?);
    let mut a = Attributes::with_capacity(4);
    a.text("event", "INF");
    a.int("report_type", i64::from(kind));
    a.int("device_type", i64::from(r.u8("device type")?));
    a.text(
        "protocol_version",
        format!("{:04X}", r.u16("protocol version")?),
    );
    a.text("firmware", format!("{:04X}", r.u16("firmware version")?));
    let mut d = Decoded::kind(MessageKind::Status);
    d.device = Some(device);
    d.status = Some(a);
    Ok(d)
}

/// Binary `+ACK`: `'+ACK' <type> <mask u8> <length u8> <device type> <u16 protocol>
/// <u16 firmware> <unique id 8> … <serial u16> <send time 7> <count u16> <check u16> CR LF`.
fn decode_ack(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let at = frame.len().checked_sub(15).filter(|&i| i >= 7);
    let Some(i) = at else {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            frame.len(),
            "binary ack shorter than its trailer",
        ));
    };
    let seq = u32::from(u16::from_be_bytes([frame[i], frame[i + 1]]));
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    // Header, type, mask, length, device type, protocol and firmware versions, unique id.
    d.device = frame.get(12..20).filter(|_| i >= 20).map(unique_id);
    d.command_response = Some(CommandResponse {
        text: hex::encode(frame),
        success: Some(true),
        seq: Some(seq),
    });
    Ok(d)
}

/// A length that is one byte below 0x80, else two bytes with the top bit cleared.
fn var_len(r: &mut Reader<'_>, field: &'static str) -> Result<usize, DecodeError> {
    let b = r.u8(field)?;
    if b & 0x80 == 0 {
        Ok(usize::from(b))
    } else {
        Ok(usize::from(b & 0x7f) << 8 | usize::from(r.u8(field)?))
    }
}

/// The newer binary frames: `'+' 00 <u16 length> <flags> [u16 packet index] <imei 8 bytes,
/// hex digits> <u16 device type> <u16 protocol> <u8 custom> <reserved>` then records of
/// tagged data items; item 0x52 is a GNSS fix. The frame closes with a u16 count, a check
/// byte and `$`.
fn decode_tlv(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    r.skip(2, "header")?;
    let length = usize::from(r.u16("frame length")?);
    if length != frame.len() {
        return Err(r.error(
            DecodeReason::Framing,
            format!("declared length {length}, frame {}", frame.len()),
        ));
    }
    if r.u8("flags")? & 0x80 != 0 {
        r.skip(2, "packet index")?;
    }
    let imei_raw = hex::encode(r.take(8, "imei")?);
    let imei = imei_raw.get(1..).unwrap_or("").to_string();
    r.skip(2, "device type")?;
    r.skip(2, "protocol version")?;
    r.skip(1, "custom version")?;
    let reserved = usize::from(r.u8("reserved length")?);
    r.skip(reserved, "reserved")?;
    let records_end = length
        .checked_sub(4)
        .ok_or_else(|| r.error(DecodeReason::Framing, "frame too short"))?;
    let mut d = Decoded::kind(MessageKind::Data);
    d.device = Some(DeviceId::new(imei));
    while r.pos() < records_end {
        let start = r.pos();
        let len = var_len(&mut r, "record length")?;
        let end = start + len;
        if end > records_end || len < 8 {
            return Err(r.error(
                DecodeReason::Framing,
                format!("record length {len} out of frame"),
            ));
        }
        r.skip(4, "generated time")?;
        r.skip(2, "record count")?;
        r.skip(1, "record id")?;
        let event = r.u8("event code")?;
        while r.pos() < end {
            let id = var_len(&mut r, "data id")?;
            let n = var_len(&mut r, "data length")?;
            let item = r.take(n, "data item")?;
            if r.pos() > end {
                return Err(r.error(DecodeReason::Framing, "data item runs past its record"));
            }
            if id == 0x52 {
                d.positions.push(read_gnss(item, event)?);
            }
        }
    }
    Ok(d)
}

/// The newer frames end in `<check byte> '$'`: CRC-8 (polynomial 0x31, initial 0xFF, the
/// NRSC-5 parameters) over everything before the check byte. Matches the two examples of
/// Queclink's published frame description and the captured report frame.
fn check_crc8(frame: &[u8]) -> Result<(), DecodeError> {
    let n = frame.len();
    if n < 4 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            n,
            "frame shorter than its tail",
        ));
    }
    let want = frame[n - 2];
    let got = CRC8_EGTS.checksum(&frame[..n - 2]);
    if want != got {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            n - 2,
            format!("check byte {want:#04x}, computed {got:#04x}"),
        ));
    }
    Ok(())
}

/// `'+' 10 <u8 length> <imei 8> <u16 device type> <u16 protocol> <u8 custom> <u32 time>
/// <u16 count> <check> '$'`: the binary heartbeat. Its answer is a binary SACK frame whose
/// layout is not public here, so none is sent.
fn decode_tlv_heartbeat(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    r.skip(3, "header")?;
    let imei_raw = hex::encode(r.take(8, "imei")?);
    r.skip(5, "device type and versions")?;
    r.skip(4, "generated time")?;
    r.skip(2, "count number")?;
    let mut d = Decoded::kind(MessageKind::Heartbeat);
    d.device = Some(DeviceId::new(imei_raw.get(1..).unwrap_or("")));
    Ok(d)
}

/// Data item 0x52: flags, lon, lat, UNIX time, speed, HDOP, course, altitude, satellites.
fn read_gnss(item: &[u8], event: u8) -> Result<Position, DecodeError> {
    let mut r = Reader::new(NAME, item);
    let flags = r.u8("fix flags")?;
    let lon = f64::from(r.i32("longitude")?) / 1e6;
    let lat = f64::from(r.i32("latitude")?) / 1e6;
    let t = r.u32("time")?;
    let time = from_secs(i64::from(t))
        .ok_or_else(|| r.error(DecodeReason::BadTime, format!("time {t}")))?;
    let mut p = Position::new(time, (flags >> 2) & 0b11 == 0b10, lat, lon);
    p.speed_kmh = f64::from(r.u16("speed")?) / 10.0;
    p.attrs.float("hdop", f64::from(r.u8("hdop")?) / 10.0);
    p.course = f64::from(r.u16("course")?);
    p.altitude = f64::from(r.u24("altitude")?) / 10.0;
    p.satellites = Some(u16::from(r.u8("satellites")?));
    p.attrs.int("event_code", i64::from(event));
    Ok(p)
}

/// MSB-first bit reader over a few bytes.
struct Bits<'a> {
    buf: &'a [u8],
    bit: usize,
}

impl<'a> Bits<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Bits { buf, bit: 0 }
    }
    fn read(&mut self, n: usize) -> i64 {
        let mut v = 0i64;
        for _ in 0..n {
            let byte = self.buf.get(self.bit / 8).copied().unwrap_or(0);
            let b = (byte >> (7 - self.bit % 8)) & 1;
            v = v << 1 | i64::from(b);
            self.bit += 1;
        }
        v
    }
    /// Two's complement of `n` bits.
    fn signed(&mut self, n: usize) -> i64 {
        let v = self.read(n);
        if n > 0 && v & (1 << (n - 1)) != 0 {
            v - (1 << n)
        } else {
            v
        }
    }
}
