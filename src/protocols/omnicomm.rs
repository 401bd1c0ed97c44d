//! Omnicomm (Profi, Optim, Light terminals): binary frames over TCP carrying protobuf records.
//!
//! Frame: 0xC0 | type | length u16 LE | data | CRC-16/CCITT-FALSE over type, length and data,
//! big-endian (as the terminals send it). After the 0xC0 byte, 0xC0 is sent as 0xDB 0xDC and 0xDB as 0xDB 0xDD; the length
//! and the CRC are those of the unescaped bytes. Types: 0x80 identification (terminal id u32,
//! answered 0x85 "send the archive from record 0"), 0x86 archive data (first record number u32,
//! time u32, priority u8, then records each led by its u16 LE length, every record a protobuf
//! `OmnicommMessage`), answered 0x87 "delete the archive up to record n" once stored.
//! Times count seconds from 2009-01-01 00:00 UTC. Notes in our own words: `protocols/omnicomm/`.

mod proto;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::util::CRC16_CCITT_FALSE;
use super::{
    DecodeCtx, DecodeError, DecodeReason, Decoded, FrameCut, MessageKind, Protocol, ProtocolSpec,
    Session, Transport,
};
use crate::model::{Attributes, DeviceId, Position};
use proto::Fields;

const NAME: &str = "omnicomm";
/// Largest frame: the length field is u16, doubled at worst by escaping.
pub const MAX_FRAME: usize = 6 + 2 * 65_535;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5203,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(OmnicommSession::default()),
};

const IDENTIFICATION: u8 = 0x80;
const ARCHIVE_INQUIRY: u8 = 0x85;
const ARCHIVE_DATA: u8 = 0x86;
const REMOVE_ARCHIVE: u8 = 0x87;
/// 2009-01-01 00:00:00 UTC, Omnicomm's epoch.
const EPOCH: i64 = 1_230_768_000;

/// Omnicomm protocol state of one connection.
#[derive(Default)]
pub struct OmnicommSession {
    id: Option<String>,
}

/// Remove the byte stuffing of everything after the 0xC0.
fn unescape(f: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(f.len());
    let mut it = f.iter().enumerate();
    while let Some((i, &b)) = it.next() {
        if b == 0xDB && i > 0 {
            match it.next() {
                Some((_, 0xDC)) => out.push(0xC0),
                Some((_, 0xDD)) => out.push(0xDB),
                other => {
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::Framing,
                        i,
                        format!("0xDB followed by {:?}", other.map(|(_, b)| *b)),
                    ))
                }
            }
        } else {
            out.push(b);
        }
    }
    Ok(out)
}

/// A frame from the server: `type`, `payload`, CRC, escaped.
pub fn frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut body = vec![kind];
    body.extend((payload.len() as u16).to_le_bytes());
    body.extend_from_slice(payload);
    body.extend(CRC16_CCITT_FALSE.checksum(&body).to_be_bytes());
    let mut out = vec![0xC0];
    for b in body {
        match b {
            0xC0 => out.extend([0xDB, 0xDC]),
            0xDB => out.extend([0xDB, 0xDD]),
            _ => out.push(b),
        }
    }
    Bytes::from(out)
}

impl Session for OmnicommSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(FrameCut::NeedMore);
        };
        if first != 0xC0 {
            let n = buf.iter().position(|&b| b == 0xC0).unwrap_or(buf.len());
            return Ok(FrameCut::Skip(n));
        }
        // Unescaped bytes still to read after the 0xC0: type, length, data, CRC; the length
        // itself may be escaped, so count as we go.
        let mut want: Option<usize> = None;
        let mut plain = Vec::with_capacity(3);
        let mut unescaped = 0;
        let mut i = 1;
        while i < buf.len() {
            let b = if buf[i] == 0xDB {
                let Some(&next) = buf.get(i + 1) else {
                    return Ok(FrameCut::NeedMore);
                };
                i += 1;
                match next {
                    0xDC => 0xC0,
                    _ => 0xDB,
                }
            } else {
                buf[i]
            };
            i += 1;
            unescaped += 1;
            if plain.len() < 3 {
                plain.push(b);
                if plain.len() == 3 {
                    want = Some(3 + usize::from(u16::from_le_bytes([plain[1], plain[2]])) + 2);
                }
            }
            if Some(unescaped) == want {
                return Ok(FrameCut::Frame(i));
            }
        }
        Ok(FrameCut::NeedMore)
    }

    fn decode(&mut self, raw: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        if raw.first() != Some(&0xC0) {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Framing,
                0,
                "no 0xC0 prefix",
            ));
        }
        let f = unescape(&raw[1..])?;
        if f.len() < 5 {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                f.len(),
                "frame header",
            ));
        }
        let len = usize::from(u16::from_le_bytes([f[1], f[2]]));
        if f.len() != 3 + len + 2 {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Framing,
                2,
                format!("length {len}, frame carries {}", f.len().saturating_sub(5)),
            ));
        }
        let (body, crc) = f.split_at(3 + len);
        let got = u16::from_be_bytes([crc[0], crc[1]]);
        let want = CRC16_CCITT_FALSE.checksum(body);
        if got != want {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                3 + len,
                format!("CRC {got:#06x}, computed {want:#06x}"),
            ));
        }
        let data = &body[3..];
        let u32_at = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut d = match body[0] {
            IDENTIFICATION => {
                let id = u32_at(0).ok_or_else(|| {
                    DecodeError::new(NAME, DecodeReason::Truncated, 3, "terminal id")
                })?;
                self.id = Some(id.to_string());
                let mut d = Decoded::kind(MessageKind::Login);
                d.device = self.id.clone().map(DeviceId);
                d.reply = Some(frame(ARCHIVE_INQUIRY, &0u32.to_le_bytes()));
                d
            }
            ARCHIVE_DATA => {
                let first = u32_at(0).ok_or_else(|| {
                    DecodeError::new(NAME, DecodeReason::Truncated, 3, "record number")
                })?;
                let mut d = Decoded::kind(MessageKind::Data);
                let mut at = 9;
                let mut records = 0u32;
                while at + 2 <= data.len() {
                    let n = usize::from(u16::from_le_bytes([data[at], data[at + 1]]));
                    let rec = data.get(at + 2..at + 2 + n).ok_or_else(|| {
                        DecodeError::new(
                            NAME,
                            DecodeReason::Truncated,
                            3 + at,
                            "record longer than the frame",
                        )
                    })?;
                    at += 2 + n;
                    records += 1;
                    let (p, status) = record(rec);
                    match p {
                        Some(p) => d.positions.push(p),
                        None => d.status = Some(status),
                    }
                }
                if d.positions.is_empty() {
                    d.kind = MessageKind::Status;
                }
                d.reply = Some(frame(
                    REMOVE_ARCHIVE,
                    &first.wrapping_add(records.max(1)).to_le_bytes(),
                ));
                d
            }
            _ => Decoded::kind(MessageKind::Other),
        };
        if d.device.is_none() {
            d.device = self.id.clone().map(DeviceId);
        }
        Ok(d)
    }

    fn protocol(&self) -> Protocol {
        Protocol::Omnicomm
    }
}

fn omnicomm_time(t: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(EPOCH + i64::try_from(t).ok()?, 0)
}

/// One `OmnicommMessage`: a position when it has a NAV group, status otherwise.
fn record(rec: &[u8]) -> (Option<Position>, Attributes) {
    let msg = Fields::parse(rec);
    let mut a = Attributes::default();
    if let Some(g) = msg.group(2) {
        if let Some(v) = g.uint(4) {
            a.int("flags", v as i64);
        }
        if let Some(v) = g.uint(5) {
            a.float("mileage_m", v as f64 / 10.0);
        }
        if let Some(v) = g.uint(7) {
            a.int("rpm", v as i64);
        }
        if let Some(v) = g.uint(9) {
            a.int("battery_level", v as i64);
        }
    }
    if let Some(g) = msg.group(8) {
        if let Some(v) = g.sint(1) {
            a.int("fuel1_temp", v);
        }
        if let Some(v) = g.uint(2) {
            a.int("fuel1", v as i64);
        }
        if let Some(v) = g.sint(3) {
            a.int("fuel1_state", v);
        }
    }
    let general = msg.group(2);
    let flags = general.as_ref().and_then(|g| g.uint(4));
    let ignition = flags.map(|f| f & 1 != 0);
    let power = general
        .as_ref()
        .and_then(|g| g.uint(8))
        .map(|v| v as f64 / 10.0);
    let nav = msg.group(5);
    let pos = nav.and_then(|n| {
        let lat = n.sint(1)? as f64 / 1e7;
        let lon = n.sint(2)? as f64 / 1e7;
        let time = omnicomm_time(n.uint(7)?)?;
        if lat.abs() > 90.0 || lon.abs() > 180.0 {
            return None;
        }
        // Flag bit 2: the terminal considers its GPS data correct; without flags, trust NAV.
        let mut p = Position::new(time, flags.map_or(true, |f| f & 0x04 != 0), lat, lon);
        p.speed_kmh = n.uint(3).unwrap_or(0) as f64 / 10.0;
        p.course = n.uint(4).unwrap_or(0) as f64;
        p.satellites = n.uint(5).map(|s| s.min(u64::from(u16::MAX)) as u16);
        p.altitude = n.sint(6).unwrap_or(0) as f64 / 10.0;
        p.ignition = ignition;
        p.power_v = power;
        Some(p)
    });
    match pos {
        Some(mut p) => {
            p.attrs = a;
            (Some(p), Attributes::default())
        }
        None => {
            if let Some(i) = ignition {
                a.int("ignition", i64::from(i));
            }
            (None, a)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Device-side encoders (tests, simulator)

/// What a simulated terminal reports in [`encode_archive`].
#[derive(Clone, Debug)]
pub struct Fix {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    /// km/h, sent in 0.1 km/h.
    pub speed_kmh: f64,
    pub course: u16,
}

/// The identification a terminal opens with.
pub fn encode_identification(id: u32) -> Bytes {
    let mut payload = id.to_le_bytes().to_vec();
    payload.extend(0x0134u32.to_le_bytes());
    frame(IDENTIFICATION, &payload)
}

/// An archive frame starting at record `first`, one record per fix (General + NAV groups).
pub fn encode_archive(first: u32, fixes: &[Fix]) -> Bytes {
    let mut payload = first.to_le_bytes().to_vec();
    payload.extend(0u32.to_le_bytes());
    payload.push(0);
    for f in fixes {
        let t = (f.time.timestamp() - EPOCH) as u64;
        let mut general = proto::Writer::default();
        general.uint(1, t);
        general.uint(4, 0b101); // ignition on, GPS correct
        let mut nav = proto::Writer::default();
        nav.sint(1, (f.lat * 1e7).round() as i64);
        nav.sint(2, (f.lon * 1e7).round() as i64);
        nav.uint(3, (f.speed_kmh * 10.0).round() as u64);
        nav.uint(4, u64::from(f.course));
        nav.uint(5, 11);
        nav.sint(6, 1500);
        nav.uint(7, t);
        let mut msg = proto::Writer::default();
        msg.group(2, &general);
        msg.group(5, &nav);
        let rec = msg.finish();
        payload.extend((rec.len() as u16).to_le_bytes());
        payload.extend(rec);
    }
    frame(ARCHIVE_DATA, &payload)
}

#[cfg(test)]
mod tests;
