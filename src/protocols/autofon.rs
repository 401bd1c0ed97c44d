//! Autofon (Автофон SE, SE+ and the 4.5 protocol generation): fixed-length binary frames over
//! TCP whose first byte names the type and so the length.
//!
//! | type | length | message |
//! |---|---|---|
//! | 0x10 | 12 | login: hardware and software version, IMEI (8 bytes BCD, first nibble padding) |
//! | 0x11 | 78 | current position with the device's settings |
//! | 0x12 | 257 | history: up to 6 positions of 42 bytes |
//! | 0x41 | 19 | protocol 4.5 login: IMEI (8 bytes BCD) and device data |
//! | 0x02 | 34 | protocol 4.5 position |
//!
//! The last byte of every frame is a checksum. For the 4.5 frames the document defines it
//! (start 0x3B, per byte `c += 0x56 ^ b; c += 1; c ^= 0xC5 + b; c -= 1`, all mod 256) and we check
//! it; the older frames' checksum is not documented and not checked. Logins are answered
//! `resp_crc=<checksum byte>`; positions get no answer. Big-endian numbers.
//! Notes in our own words: `protocols/autofon/`.

use bytes::Bytes;

use super::util::utc;
use super::{
    DecodeCtx, DecodeError, DecodeReason, Decoded, FrameCut, MessageKind, Protocol, ProtocolSpec,
    Session, Transport,
};
use crate::model::{Attributes, DeviceId, Position};

const NAME: &str = "autofon";
pub const MAX_FRAME: usize = 257;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5077,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(AutofonSession::default()),
};

const LOGIN: u8 = 0x10;
const POSITION: u8 = 0x11;
const HISTORY: u8 = 0x12;
const LOGIN_45: u8 = 0x41;
const POSITION_45: u8 = 0x02;

/// Bytes of one record in a history frame.
const HISTORY_RECORD: usize = 42;

/// Autofon protocol state of one connection.
#[derive(Default)]
pub struct AutofonSession {
    imei: Option<String>,
}

fn frame_len(kind: u8) -> Option<usize> {
    Some(match kind {
        LOGIN => 12,
        POSITION => 78,
        HISTORY => 257,
        LOGIN_45 => 19,
        POSITION_45 => 34,
        _ => return None,
    })
}

/// The 4.5 protocol's checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0x3B_u8, |c, &b| {
        let c = c.wrapping_add(0x56 ^ b).wrapping_add(1);
        (c ^ 0xC5_u8.wrapping_add(b)).wrapping_sub(1)
    })
}

impl Session for AutofonSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        let Some(&kind) = buf.first() else {
            return Ok(FrameCut::NeedMore);
        };
        let len = frame_len(kind).ok_or_else(|| {
            DecodeError::new(
                NAME,
                DecodeReason::Framing,
                0,
                format!("unknown type {kind:#04x}"),
            )
        })?;
        Ok(if buf.len() >= len {
            FrameCut::Frame(len)
        } else {
            FrameCut::NeedMore
        })
    }

    fn decode(&mut self, f: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let kind = *f
            .first()
            .ok_or_else(|| DecodeError::new(NAME, DecodeReason::Truncated, 0, "empty frame"))?;
        let len = frame_len(kind).ok_or_else(|| {
            DecodeError::new(
                NAME,
                DecodeReason::Framing,
                0,
                format!("unknown type {kind:#04x}"),
            )
        })?;
        if f.len() != len {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                f.len(),
                format!("type {kind:#04x} is {len} bytes, have {}", f.len()),
            ));
        }
        let (body, sum) = f.split_at(len - 1);
        if matches!(kind, LOGIN_45 | POSITION_45) && checksum(body) != sum[0] {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                len - 1,
                format!("checksum {:#04x}, computed {:#04x}", sum[0], checksum(body)),
            ));
        }
        let mut d = match kind {
            LOGIN | LOGIN_45 => {
                let at = if kind == LOGIN { 3 } else { 1 };
                let digits = hex::encode(&f[at..at + 8]);
                let imei = &digits[1..];
                if !imei.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::BadIdentity,
                        at,
                        "IMEI is not BCD",
                    ));
                }
                self.imei = Some(imei.to_string());
                let mut d = Decoded::kind(MessageKind::Login);
                d.device = Some(DeviceId::new(imei));
                let mut reply = b"resp_crc=".to_vec();
                reply.push(sum[0]);
                d.reply = Some(Bytes::from(reply));
                d
            }
            POSITION => {
                let mut d = Decoded::kind(MessageKind::Data);
                d.positions.extend(position(f[10], f[13], &f[44..77]));
                d
            }
            HISTORY => {
                let count = usize::from(f[1] & 0x0f).min((len - 5) / HISTORY_RECORD);
                let mut d = Decoded::kind(MessageKind::Data);
                for rec in f[4..].chunks_exact(HISTORY_RECORD).take(count) {
                    d.positions.extend(position(rec[0], rec[1], &rec[8..41]));
                }
                d
            }
            _ => position_45(f),
        };
        if d.kind == MessageKind::Data && d.positions.is_empty() {
            d.kind = MessageKind::Other;
        }
        d.device = self.imei.clone().map(DeviceId);
        Ok(d)
    }

    fn protocol(&self) -> Protocol {
        Protocol::Autofon
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// `DDMMmmmm` as a signed integer: degrees, then minutes with four decimals.
fn old_coordinate(raw: i32) -> f64 {
    let deg = f64::from(raw / 1_000_000);
    let min = f64::from(raw % 1_000_000) / 10_000.0;
    deg + min / 60.0
}

/// The fix part shared by current and history records, from the temperature on (33 bytes):
/// temperature, rssi, mcc, mnc, lac, cid, satellites/validity, date (d m y), time (h m s),
/// latitude, longitude, altitude, speed, course / 2, hdop.
fn position(status: u8, battery: u8, b: &[u8]) -> Option<Position> {
    let time = utc(
        2000 + i32::from(b[13]),
        u32::from(b[12]),
        u32::from(b[11]),
        u32::from(b[14]),
        u32::from(b[15]),
        u32::from(b[16]),
    )?;
    let lat = old_coordinate(i32::from_be_bytes([b[17], b[18], b[19], b[20]]));
    let lon = old_coordinate(i32::from_be_bytes([b[21], b[22], b[23], b[24]]));
    if lat.abs() > 90.0 || lon.abs() > 180.0 {
        return None;
    }
    let mut p = Position::new(time, b[10] & 0xC0 != 0, lat, lon);
    p.satellites = Some(u16::from(b[10] & 0x3F));
    p.altitude = f64::from(i16::from_be_bytes([b[25], b[26]]));
    p.speed_kmh = f64::from(b[27]) * crate::model::KNOTS_TO_KMH;
    p.course = f64::from(b[28]) * 2.0;
    let a = &mut p.attrs;
    a.int("status", i64::from(status));
    a.int("battery_level", i64::from(battery));
    a.int("temp1", i64::from(b[0] as i8));
    a.int("rssi", i64::from(b[1]));
    cells(a, &b[2..10]);
    a.int("hdop", i64::from(be16(&b[29..31])));
    Some(p)
}

fn cells(a: &mut Attributes, b: &[u8]) {
    a.int("mcc", i64::from(be16(&b[0..2])));
    a.int("mnc", i64::from(be16(&b[2..4])));
    a.int("lac", i64::from(be16(&b[4..6])));
    a.int("cell_id", i64::from(be16(&b[6..8])));
}

/// 4.5 coordinate: whole degrees, then a 24-bit field whose upper 20 bits are 1/600000 degree
/// and whose bit 0 is the hemisphere (set: north / east).
fn coordinate_45(deg: u8, b: &[u8]) -> f64 {
    let raw = u32::from_be_bytes([0, b[0], b[1], b[2]]);
    let v = f64::from(deg) + f64::from(raw >> 4) / 600_000.0;
    if raw & 1 == 1 {
        v
    } else {
        -v
    }
}

/// The 4.5 position (34 bytes): status (bit 7 alarm, bits 0–6 battery %), remaining time,
/// temperature, timer, mode, GPRS interval, mcc/mnc/lac/cid (6 bytes), fix state (bits 6–7 valid,
/// 0–5 satellites), time hhmmss and date ddmmyy as 24-bit numbers, latitude, longitude, speed,
/// course.
fn position_45(f: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Data);
    let n24 = |b: &[u8]| u32::from_be_bytes([0, b[0], b[1], b[2]]);
    let (t, dt) = (n24(&f[16..19]), n24(&f[19..22]));
    let Some(time) = utc(
        2000 + (dt % 100) as i32,
        dt / 100 % 100,
        dt / 10_000,
        t / 10_000,
        t / 100 % 100,
        t % 100,
    ) else {
        return d;
    };
    let lat = coordinate_45(f[22], &f[23..26]);
    let lon = coordinate_45(f[26], &f[27..30]);
    if lat.abs() > 90.0 || lon.abs() > 180.0 {
        return d;
    }
    let mut p = Position::new(time, f[15] & 0xC0 != 0, lat, lon);
    p.satellites = Some(u16::from(f[15] & 0x3F));
    p.speed_kmh = f64::from(f[30]) * crate::model::KNOTS_TO_KMH;
    p.course = f64::from(be16(&f[31..33]));
    if f[1] & 0x80 != 0 {
        p.alarm = Some("general");
    }
    p.attrs.int("battery_level", i64::from(f[1] & 0x7F));
    p.attrs.int("temp1", i64::from(f[4] as i8));
    d.kind = if p.alarm.is_some() {
        MessageKind::Alarm
    } else {
        MessageKind::Data
    };
    d.positions.push(p);
    d
}

// ---------------------------------------------------------------------------------------------
// Device-side encoders (tests, simulator)

/// A 4.5 login (0x41) for `imei`, checksum as the document defines it.
pub fn encode_login_45(imei: &str) -> Bytes {
    let mut out = vec![LOGIN_45];
    out.extend(hex::decode(format!("0{imei:0>15}")).unwrap_or_else(|_| vec![0; 8]));
    out.resize(18, 0);
    out.push(checksum(&out));
    Bytes::from(out)
}

/// What a simulated device reports in [`encode_position_45`].
#[derive(Clone, Debug)]
pub struct Fix {
    pub time: chrono::DateTime<chrono::Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_knots: u8,
    pub course: u16,
}

fn put_coordinate_45(out: &mut Vec<u8>, v: f64) {
    let a = v.abs();
    let deg = a.trunc();
    let frac = ((a - deg) * 600_000.0).round() as u32;
    out.push(deg as u8);
    let raw = (frac << 4) | u32::from(v >= 0.0);
    out.extend(&raw.to_be_bytes()[1..]);
}

/// A 4.5 position (0x02), checksum as the document defines it.
pub fn encode_position_45(fix: &Fix) -> Bytes {
    use chrono::{Datelike, Timelike};
    let t = fix.time;
    let mut out = vec![POSITION_45, 90, 0, 0, 20, 0, 0x4D, 0x41, 0x1E];
    out.extend([0xFA, 0x01, 0x77, 0x2F, 0x18, 0x52]);
    out.push(0x80 | 9);
    let hms = t.hour() * 10_000 + t.minute() * 100 + t.second();
    let dmy = t.day() * 10_000 + t.month() * 100 + (t.year() % 100) as u32;
    out.extend(&hms.to_be_bytes()[1..]);
    out.extend(&dmy.to_be_bytes()[1..]);
    put_coordinate_45(&mut out, fix.lat);
    put_coordinate_45(&mut out, fix.lon);
    out.push(fix.speed_knots);
    out.extend(fix.course.to_be_bytes());
    out.push(checksum(&out));
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
