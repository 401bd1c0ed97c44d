//! Navtelecom (SIGNAL, SMART, START series): NTCB frames for the session and commands, FLEX
//! frames for telemetry, over TCP.
//!
//! NTCB: `@NTC`, receiver id (u32 LE), sender id (u32 LE), data length (u16 LE), XOR of the
//! data, XOR of the 15 header bytes before it, then the data: `*>S:<IMEI>` (answered `*<S`),
//! `*>FLEX` + 0xB0, protocol version, structure version, field count and field mask (answered
//! `*<FLEX` + 0xB0 + the versions), `*@C…` answers to our `*!…` commands. FLEX: `~A` + count +
//! records (archive, answered `~A` + count), `~T` + event index + record (answered `~T` +
//! index), `~C` + record (current state, answered `~C` + record number), `~X`/`~E` (FLEX 2.0
//! extra records, answered by index/count), each closed by CRC-8 (poly 0x31, init 0xFF); a
//! lone 0x7F is a keep-alive. The record layout is the negotiated mask (`flex.rs`). Devices
//! not switched to FLEX send native NTCB records (`*>T`, `*>A`; `ntcb.rs`).
//! Notes in our own words: `protocols/navtelecom/`.

pub mod flex;
mod ntcb;

use bytes::Bytes;

use super::util::CRC8_EGTS;
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, DecodeReason, Decoded,
    DeviceCommand, FrameCut, MessageKind, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{DeviceId, Position};
use flex::Mask;

const NAME: &str = "navtelecom";
/// Largest frame accepted: a `~A` of up to 255 records of a few hundred bytes each.
pub const MAX_FRAME: usize = 65_536;
const NTCB_HEADER: usize = 16;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    // Traccar decodes NTCB and FLEX in its `navis` protocol, on 5019.
    port: 5019,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(NavtelecomSession::default()),
};

/// Navtelecom protocol state of one connection.
#[derive(Default)]
pub struct NavtelecomSession {
    imei: Option<String>,
    /// The FLEX fields negotiated on this connection.
    mask: Option<Mask>,
    /// Receiver and sender ids of the device's last NTCB header (ours is its receiver).
    ids: (u32, u32),
}

impl Session for NavtelecomSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(FrameCut::NeedMore);
        };
        match first {
            b'@' => ntcb_frame(buf),
            b'~' => self.flex_frame(buf),
            0x7F => Ok(FrameCut::Frame(1)),
            _ => Ok(FrameCut::Skip(
                buf.iter()
                    .position(|b| matches!(b, b'@' | b'~' | 0x7F))
                    .unwrap_or(buf.len()),
            )),
        }
    }

    fn decode(&mut self, frame: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let mut d = match frame.first() {
            Some(b'@') => self.decode_ntcb(frame)?,
            Some(b'~') => self.decode_flex(frame)?,
            Some(0x7F) => Decoded::kind(MessageKind::Heartbeat),
            _ => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    0,
                    "no frame marker",
                ))
            }
        };
        if d.device.is_none() {
            d.device = self.imei.clone().map(DeviceId);
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        if self.imei.is_none() {
            return Err(CommandError::NotIdentified(NAME));
        }
        let text = match &cmd.body {
            CommandBody::EngineStop => "*!1Y",
            CommandBody::EngineResume => "*!1N",
            CommandBody::Text(t) => t.as_str(),
        };
        Ok(ntcb(self.ids.1, self.ids.0, text.as_bytes()))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Navtelecom
    }
}

fn xor(b: &[u8]) -> u8 {
    b.iter().fold(0, |a, x| a ^ x)
}

/// An NTCB frame from `sender` to `receiver` carrying `data`.
pub fn ntcb(receiver: u32, sender: u32, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(NTCB_HEADER + data.len());
    out.extend_from_slice(b"@NTC");
    out.extend(receiver.to_le_bytes());
    out.extend(sender.to_le_bytes());
    out.extend((data.len() as u16).to_le_bytes());
    out.push(xor(data));
    out.push(xor(&out));
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// `data` followed by its FLEX CRC-8.
pub fn with_crc8(mut data: Vec<u8>) -> Bytes {
    data.push(CRC8_EGTS.checksum(&data));
    Bytes::from(data)
}

fn ntcb_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let head = &buf[..buf.len().min(4)];
    if !b"@NTC".starts_with(head) {
        let next = buf[1..]
            .iter()
            .position(|b| matches!(b, b'@' | b'~' | 0x7F))
            .map_or(buf.len(), |i| i + 1);
        return Ok(FrameCut::Skip(next));
    }
    if buf.len() < NTCB_HEADER {
        return Ok(FrameCut::NeedMore);
    }
    let len = NTCB_HEADER + usize::from(u16::from_le_bytes([buf[12], buf[13]]));
    Ok(if buf.len() >= len {
        FrameCut::Frame(len)
    } else {
        FrameCut::NeedMore
    })
}

impl NavtelecomSession {
    fn record_len(&self, kind: u8) -> Result<usize, DecodeError> {
        self.mask.as_ref().map(|m| m.record_len).ok_or_else(|| {
            DecodeError::new(
                NAME,
                DecodeReason::Unsupported,
                1,
                format!("~{} before the *>FLEX negotiation", kind as char),
            )
        })
    }

    fn flex_frame(&self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        let Some(&kind) = buf.get(1) else {
            return Ok(FrameCut::NeedMore);
        };
        let need = |len: usize| {
            if len > MAX_FRAME {
                Err(DecodeError::new(
                    NAME,
                    DecodeReason::TooLarge,
                    0,
                    format!("{len} bytes"),
                ))
            } else if buf.len() >= len {
                Ok(FrameCut::Frame(len))
            } else {
                Ok(FrameCut::NeedMore)
            }
        };
        match kind {
            b'A' => {
                let Some(&count) = buf.get(2) else {
                    return Ok(FrameCut::NeedMore);
                };
                need(3 + usize::from(count) * self.record_len(kind)? + 1)
            }
            b'T' => need(2 + 4 + self.record_len(kind)? + 1),
            b'C' => need(2 + self.record_len(kind)? + 1),
            // FLEX 2.0 extra records: event index / count, then records of u16 LE length.
            b'X' => extra_len(buf, 6, 1).map_or(Ok(FrameCut::NeedMore), need),
            b'E' => match buf.get(2) {
                Some(&n) => extra_len(buf, 3, usize::from(n)).map_or(Ok(FrameCut::NeedMore), need),
                None => Ok(FrameCut::NeedMore),
            },
            other => Err(DecodeError::new(
                NAME,
                DecodeReason::Framing,
                1,
                format!("unknown FLEX message ~{}", other as char),
            )),
        }
    }

    fn decode_ntcb(&mut self, f: &[u8]) -> Result<Decoded, DecodeError> {
        if f.len() < NTCB_HEADER {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                f.len(),
                "NTCB header",
            ));
        }
        let data = &f[NTCB_HEADER..];
        if xor(&f[..15]) != f[15] {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                15,
                format!("header XOR {:#04x}, computed {:#04x}", f[15], xor(&f[..15])),
            ));
        }
        if xor(data) != f[14] {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                14,
                format!("data XOR {:#04x}, computed {:#04x}", f[14], xor(data)),
            ));
        }
        let id = |at: usize| u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
        self.ids = (id(4), id(8));
        let reply = |s: &Self, body: &[u8]| Some(ntcb(s.ids.1, s.ids.0, body));
        if data.is_empty() {
            return Ok(Decoded::kind(MessageKind::Heartbeat));
        }
        if let Some(imei) = data.strip_prefix(b"*>S:") {
            let imei = std::str::from_utf8(imei)
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    DecodeError::new(NAME, DecodeReason::BadIdentity, 20, "IMEI is not digits")
                })?;
            self.imei = Some(imei.to_string());
            let mut d = Decoded::kind(MessageKind::Login);
            d.device = Some(DeviceId::new(imei));
            d.reply = reply(self, b"*<S");
            return Ok(d);
        }
        if let Some(rest) = data.strip_prefix(b"*>FLEX") {
            let [proto, version, structure, bits, mask @ ..] = rest else {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Truncated,
                    22,
                    "*>FLEX header",
                ));
            };
            let bits = usize::from(*bits);
            if *proto != 0xB0 || mask.len() < bits.div_ceil(8) {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    22,
                    format!(
                        "*>FLEX protocol {proto:#04x}, {bits} fields, {} mask bytes",
                        mask.len()
                    ),
                ));
            }
            let m = Mask::from_bits(bits, mask).map_err(|field| {
                DecodeError::new(
                    NAME,
                    DecodeReason::BadField,
                    26,
                    format!("field {field} beyond FLEX 3.0"),
                )
            })?;
            self.mask = Some(m);
            // The second half of the session set-up, counted with the handshake.
            let mut d = Decoded::kind(MessageKind::Login);
            d.reply = reply(
                self,
                &[
                    b'*', b'<', b'F', b'L', b'E', b'X', 0xB0, *version, *structure,
                ],
            );
            return Ok(d);
        }
        if let Some(answer) = data.strip_prefix(b"*@") {
            let text = String::from_utf8_lossy(data).into_owned();
            let upper = String::from_utf8_lossy(answer).to_ascii_uppercase();
            let mut d = Decoded::kind(MessageKind::CommandResponse);
            d.command_response = Some(CommandResponse {
                text,
                success: if upper.contains("ERR") {
                    Some(false)
                } else if upper.ends_with("OK") {
                    Some(true)
                } else {
                    None
                },
                seq: None,
            });
            return Ok(d);
        }
        if let Some(array) = match data.get(..3) {
            Some(b"*>T") => Some(false),
            Some(b"*>A") => Some(true),
            _ => None,
        } {
            let recs = ntcb::records(&data[3..], array).ok_or_else(|| {
                DecodeError::new(
                    NAME,
                    DecodeReason::Truncated,
                    19,
                    "native NTCB record cut short or of an unknown format",
                )
            })?;
            let mut d = Decoded::kind(MessageKind::Data);
            let ack = if array {
                vec![b'*', b'<', b'A', recs.len() as u8]
            } else {
                let mut ack = b"*<T".to_vec();
                ack.extend(recs.first().map_or(0, |r| r.number).to_le_bytes());
                ack
            };
            for r in recs {
                push(&mut d, r.position, r.status);
            }
            if d.positions.is_empty() {
                d.kind = MessageKind::Status;
            }
            d.reply = reply(self, &ack);
            return Ok(d);
        }
        // Queries and messages fleetgate does not use: not acknowledged.
        Ok(Decoded::kind(MessageKind::Other))
    }

    fn decode_flex(&mut self, f: &[u8]) -> Result<Decoded, DecodeError> {
        let Some((&crc, body)) = f.split_last() else {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                0,
                "empty FLEX frame",
            ));
        };
        let want = CRC8_EGTS.checksum(body);
        if crc != want {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Crc,
                f.len() - 1,
                format!("CRC-8 {crc:#04x}, computed {want:#04x}"),
            ));
        }
        let kind = body.get(1).copied().unwrap_or(0);
        let u32_at = |at: usize| {
            body.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut d = Decoded::kind(MessageKind::Data);
        match kind {
            b'A' | b'T' | b'C' => {
                let mask = self.mask.clone().ok_or_else(|| {
                    DecodeError::new(NAME, DecodeReason::Unsupported, 1, "no FLEX negotiation")
                })?;
                let (start, count) = match kind {
                    b'A' => (3, usize::from(body[2])),
                    b'T' => (6, 1),
                    _ => (2, 1),
                };
                let mut last_number = 0;
                for i in 0..count {
                    let at = start + i * mask.record_len;
                    let rec = body.get(at..at + mask.record_len).ok_or_else(|| {
                        DecodeError::new(NAME, DecodeReason::Truncated, at, "FLEX record")
                    })?;
                    let r = flex::decode_record(&mask, rec);
                    last_number = r.number;
                    push(&mut d, r.position, r.status);
                }
                let mut ack = vec![b'~', kind];
                match kind {
                    b'A' => ack.push(body[2]),
                    b'T' => ack.extend(u32_at(2).unwrap_or(0).to_le_bytes()),
                    _ => ack.extend(last_number.to_le_bytes()),
                }
                d.reply = Some(with_crc8(ack));
            }
            b'X' | b'E' => {
                // FLEX 2.0 extra records: acknowledged; their layout is model specific.
                d.kind = MessageKind::Other;
                let mut ack = vec![b'~', kind];
                if kind == b'X' {
                    ack.extend(u32_at(2).unwrap_or(0).to_le_bytes());
                } else {
                    ack.push(body.get(2).copied().unwrap_or(0));
                }
                d.reply = Some(with_crc8(ack));
            }
            other => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    1,
                    format!("unknown FLEX message ~{}", other as char),
                ))
            }
        }
        if d.positions.is_empty() && d.kind == MessageKind::Data {
            d.kind = MessageKind::Status;
        }
        Ok(d)
    }
}

fn push(d: &mut Decoded, position: Option<Position>, status: crate::model::Attributes) {
    match position {
        Some(p) => d.positions.push(p),
        None => d.status = Some(status),
    }
}

/// The length of a FLEX 2.0 extra-records frame: `head` bytes, `count` records each led by
/// its u16 LE length, and the CRC; `None` while it has not all arrived.
fn extra_len(buf: &[u8], head: usize, count: usize) -> Option<usize> {
    let mut at = head;
    for _ in 0..count {
        let len = buf.get(at..at + 2)?;
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    Some(at + 1)
}

// ---------------------------------------------------------------------------------------------
// Device-side encoders (tests, simulator)

/// The handshake a device opens with: `*>S:<IMEI>` to receiver (server) id 1 from sender 0.
pub fn encode_handshake(imei: &str) -> Bytes {
    ntcb(1, 0, format!("*>S:{imei}").as_bytes())
}

/// `*>FLEX` for FLEX `version` (10, 20, 30) sending `fields`.
pub fn encode_negotiation(version: u8, fields: &[usize]) -> Bytes {
    let bits = match version {
        10 => 69,
        20 => 122,
        _ => 255,
    };
    let mut data = b"*>FLEX".to_vec();
    data.extend([0xB0, version, version, bits as u8]);
    data.extend(Mask::to_bits(fields, bits));
    ntcb(1, 0, &data)
}

/// A `~A` archive packet of `records` (each already encoded for the negotiated mask).
pub fn encode_archive(records: &[Vec<u8>]) -> Bytes {
    let mut data = vec![b'~', b'A', records.len() as u8];
    for r in records {
        data.extend_from_slice(r);
    }
    with_crc8(data)
}

/// A `~T` packet (urgent event `index`) of one record.
pub fn encode_event(index: u32, record: &[u8]) -> Bytes {
    let mut data = vec![b'~', b'T'];
    data.extend(index.to_le_bytes());
    data.extend_from_slice(record);
    with_crc8(data)
}

#[cfg(test)]
mod tests;
