//! EGTS (ERA-GLONASS telematics standard: GOST R 54619, GOST 33472, Mintrans order 285) over
//! TCP: a transport layer packet (`PRV=1 | SKID | flags | HL | HE | FDL | PID | PT | [routing] |
//! HCS`, CRC-8 over the header, then FDL bytes of service frame data and their CRC-16) that
//! carries service records (`RL | RN | RFL | [OID] [EVID] [TM] | SST | RST | subrecords`).
//!
//! The server answers every `PT_APPDATA` packet with a `PT_RESPONSE` packet (the device's packet
//! id, result 0) holding one `EGTS_SR_RECORD_RESPONSE` per record, and after a terminal
//! identified itself (`EGTS_SR_TERM_IDENTITY`) it also sends `EGTS_SR_RESULT_CODE` (0, accepted)
//! in an auth-service record of its own `PT_APPDATA` packet. Commands go out as
//! `EGTS_SR_COMMAND_DATA` (commands service) and come back as `CT_COMCONF` confirmations.
//! Notes in our own words: `protocols/egts/README.md`.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::util::{from_secs, Reader, CRC16_CCITT_FALSE, CRC8_EGTS};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "egts";
/// Routed header (16) + the largest FDL (65535) + CRC-16.
pub const MAX_FRAME: usize = 16 + 65_535 + 2;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5162,
    transports: &[Transport::Tcp],
    max_frame: MAX_FRAME,
    session: |_| Box::new(EgtsSession::new()),
};

/// Seconds between the Unix epoch and 2010-01-01 00:00:00 UTC, the EGTS time origin.
pub const EPOCH_2010: i64 = 1_262_304_000;

/// Transport packet types.
pub const PT_RESPONSE: u8 = 0;
pub const PT_APPDATA: u8 = 1;
pub const PT_SIGNED_APPDATA: u8 = 2;

/// Service types.
pub const AUTH_SERVICE: u8 = 1;
pub const TELEDATA_SERVICE: u8 = 2;
pub const COMMANDS_SERVICE: u8 = 4;

/// Processing result codes used in our replies (GOST R 54619 / Mintrans order 285, table of
/// processing result codes).
pub const RESULT_OK: u8 = 0;
/// `EGTS_PC_HEADERCRC_ERROR`: the transport header's CRC-8 does not match.
pub const RESULT_HEADERCRC_ERROR: u8 = 137;
/// `EGTS_PC_DATACRC_ERROR`: the frame data's CRC-16 does not match.
pub const RESULT_DATACRC_ERROR: u8 = 138;
/// `EGTS_PC_INVDATALEN`: a record or subrecord length runs past the data that holds it.
pub const RESULT_INVDATALEN: u8 = 139;
pub const RESULT_AUTH_DENIED: u8 = 151;

/// Subrecord types.
pub mod sr {
    pub const RECORD_RESPONSE: u8 = 0;
    pub const TERM_IDENTITY: u8 = 1;
    pub const MODULE_DATA: u8 = 2;
    pub const VEHICLE_DATA: u8 = 3;
    pub const DISPATCHER_IDENTITY: u8 = 5;
    pub const AUTH_PARAMS: u8 = 6;
    pub const AUTH_INFO: u8 = 7;
    pub const SERVICE_INFO: u8 = 8;
    pub const RESULT_CODE: u8 = 9;
    pub const POS_DATA: u8 = 16;
    pub const EXT_POS_DATA: u8 = 17;
    pub const AD_SENSORS_DATA: u8 = 18;
    pub const COUNTERS_DATA: u8 = 19;
    pub const ACCEL_DATA: u8 = 20;
    pub const STATE_DATA: u8 = 21;
    pub const LOOPIN_DATA: u8 = 22;
    pub const ABS_DIG_SENS_DATA: u8 = 23;
    pub const ABS_AN_SENS_DATA: u8 = 24;
    pub const ABS_CNTR_DATA: u8 = 25;
    pub const ABS_LOOPIN_DATA: u8 = 26;
    pub const LIQUID_LEVEL_SENSOR: u8 = 27;
    pub const PASSENGERS_COUNTERS: u8 = 28;
    pub const COMMAND_DATA: u8 = 51;
}

/// `EGTS_SR_COMMAND_DATA` command types (high nibble of the first byte).
pub const CT_COMCONF: u8 = 0x1;
pub const CT_MSGCONF: u8 = 0x2;
pub const CT_MSGFROM: u8 = 0x3;
pub const CT_MSGTO: u8 = 0x4;
pub const CT_COM: u8 = 0x5;
/// Confirmation types (low nibble).
pub const CC_OK: u8 = 0x0;
pub const CC_INPROG: u8 = 0x6;
/// Command code "raw data": the command text is passed to the terminal as is.
pub const EGTS_RAW_DATA: u16 = 0x0000;

/// Default engine stop / resume texts, sent as `CT_COM` with `EGTS_RAW_DATA`. They are the
/// Teltonika FMB command language (the EGTS trackers most common on our fleet); other makes
/// need a per-model `Text` override (README).
pub const ENGINE_STOP_TEXT: &str = "setdigout 1";
pub const ENGINE_RESUME_TEXT: &str = "setdigout 0";

/// EGTS protocol state of one TCP connection.
pub struct EgtsSession {
    /// Identity from `EGTS_SR_TERM_IDENTITY` (IMEI, else terminal id).
    terminal: Option<DeviceId>,
    /// Identity from a record's object id, used until a terminal identifies itself.
    object: Option<DeviceId>,
    /// Our own packet id counter (PID of every packet we send).
    next_pid: u16,
    /// Our own record number counter (RN of every record we send).
    next_rn: u16,
    /// The refusal to send instead of the last login's reply: the same record confirmation,
    /// then `EGTS_SR_RESULT_CODE` 151 (EGTS_PC_AUTH_DENIED).
    reject: Option<Bytes>,
    /// The last header failed its CRC: its FDL cannot be trusted, so the bytes after it are
    /// skipped up to the next header whose CRC holds.
    resync: bool,
}

impl Default for EgtsSession {
    fn default() -> Self {
        Self::new()
    }
}

impl EgtsSession {
    pub fn new() -> Self {
        EgtsSession {
            terminal: None,
            object: None,
            next_pid: 0,
            next_rn: 0,
            reject: None,
            resync: false,
        }
    }

    fn pid(&mut self) -> u16 {
        let p = self.next_pid;
        self.next_pid = self.next_pid.wrapping_add(1);
        p
    }

    fn rn(&mut self) -> u16 {
        let r = self.next_rn;
        self.next_rn = self.next_rn.wrapping_add(1);
        r
    }

    fn device(&self) -> Option<&DeviceId> {
        self.terminal.as_ref().or(self.object.as_ref())
    }
}

impl Session for EgtsSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        if self.resync {
            match find_header(buf) {
                Resync::At(0) => self.resync = false,
                Resync::At(i) | Resync::Wait(i) if i > 0 => return Ok(FrameCut::Skip(i)),
                Resync::Wait(_) => return Ok(FrameCut::NeedMore),
                _ if buf.is_empty() => return Ok(FrameCut::NeedMore),
                _ => return Ok(FrameCut::Skip(buf.len())),
            }
        }
        let cut = next_frame(buf)?;
        if let FrameCut::Frame(n) = cut {
            self.resync = !header_crc_ok(&buf[..n]);
        }
        Ok(cut)
    }

    fn decode(&mut self, frame: &[u8], _ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        self.decode_packet(frame)
    }

    fn reject_reply(&self) -> Option<Bytes> {
        self.reject.clone()
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        if self.device().is_none() {
            return Err(CommandError::NotIdentified(NAME));
        }
        let text = match &cmd.body {
            CommandBody::EngineStop => ENGINE_STOP_TEXT,
            CommandBody::EngineResume => ENGINE_RESUME_TEXT,
            CommandBody::Text(t) => t.as_str(),
        };
        let (pid, rn) = (self.pid(), self.rn());
        Ok(encode_command_packet(pid, rn, cmd.seq, text.as_bytes()))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Egts
    }
}

/// Where the search for the next header stands after a header with a bad CRC.
enum Resync {
    /// A header whose CRC holds starts here.
    At(usize),
    /// A header may start here; more bytes are needed to check it.
    Wait(usize),
    /// No header starts in the buffer.
    Nowhere,
}

fn find_header(buf: &[u8]) -> Resync {
    for (i, _) in buf.iter().enumerate().filter(|(_, &b)| b == 0x01) {
        let Some(&hl) = buf.get(i + 3) else {
            return Resync::Wait(i);
        };
        let hl = usize::from(hl);
        if hl != 11 && hl != 16 {
            continue;
        }
        let Some(h) = buf.get(i..i + hl) else {
            return Resync::Wait(i);
        };
        if CRC8_EGTS.checksum(&h[..hl - 1]) == h[hl - 1] {
            return Resync::At(i);
        }
    }
    Resync::Nowhere
}

/// The frame starts with a whole header whose CRC-8 matches.
fn header_crc_ok(frame: &[u8]) -> bool {
    let hl = usize::from(frame.get(3).copied().unwrap_or(0));
    hl >= 11
        && frame
            .get(..hl)
            .is_some_and(|h| CRC8_EGTS.checksum(&h[..hl - 1]) == h[hl - 1])
}

/// Cut one transport packet: the header is checked (version, length) as soon as it is
/// complete. A header whose CRC-8 fails is cut alone (its FDL cannot be trusted): decode
/// answers it with `EGTS_PC_HEADERCRC_ERROR`, and the session skips to the next good header.
pub fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    if buf.len() < 4 {
        return Ok(FrameCut::NeedMore);
    }
    if buf[0] != 0x01 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            format!("protocol version {:#04x}, expected 0x01", buf[0]),
        ));
    }
    let hl = usize::from(buf[3]);
    if hl != 11 && hl != 16 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            3,
            format!("header length {hl}, expected 11 or 16"),
        ));
    }
    if buf.len() < hl {
        return Ok(FrameCut::NeedMore);
    }
    if !header_crc_ok(buf) {
        return Ok(FrameCut::Frame(hl));
    }
    let fdl = usize::from(u16::from_le_bytes([buf[5], buf[6]]));
    let total = hl + fdl + if fdl > 0 { 2 } else { 0 };
    if total > MAX_FRAME {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            5,
            format!("frame length {total} over {MAX_FRAME}"),
        ));
    }
    Ok(if buf.len() >= total {
        FrameCut::Frame(total)
    } else {
        FrameCut::NeedMore
    })
}

/// The parsed transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub header_len: usize,
    pub data_len: usize,
    pub packet_id: u16,
    pub packet_type: u8,
}

fn parse_header(frame: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(NAME, frame);
    let prv = r.u8("PRV")?;
    if prv != 0x01 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Unsupported,
            0,
            format!("protocol version {prv:#04x}"),
        ));
    }
    r.skip(1, "SKID")?;
    let flags = r.u8("flags")?;
    let header_len = usize::from(r.u8("HL")?);
    let routed = flags & 0x20 != 0;
    if header_len != if routed { 16 } else { 11 } {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            3,
            format!("header length {header_len} with RTE={routed}"),
        ));
    }
    let he = r.u8("HE")?;
    if he != 0 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Unsupported,
            4,
            format!("header encoding {he}"),
        ));
    }
    let data_len = usize::from(r.u16_le("FDL")?);
    let packet_id = r.u16_le("PID")?;
    let packet_type = r.u8("PT")?;
    if routed {
        r.skip(5, "PRA/RCA/TTL")?;
    }
    let hcs = r.u8("HCS")?;
    let computed = CRC8_EGTS.checksum(&frame[..header_len - 1]);
    if hcs != computed {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            header_len - 1,
            format!("header CRC {hcs:#04x}, computed {computed:#04x}"),
        ));
    }
    Ok(Header {
        flags,
        header_len,
        data_len,
        packet_id,
        packet_type,
    })
}

/// One service record as read from the frame.
struct Record<'a> {
    number: u16,
    object_id: Option<u32>,
    time: Option<u32>,
    source_service: u8,
    data: &'a [u8],
    /// Offset of `data` in the frame, for error offsets.
    offset: usize,
}

fn read_record<'a>(r: &mut Reader<'a>, base: usize) -> Result<Record<'a>, DecodeError> {
    let len = usize::from(r.u16_le("RL")?);
    let number = r.u16_le("RN")?;
    let flags = r.u8("RFL")?;
    let object_id = if flags & 0x01 != 0 {
        Some(r.u32_le("OID")?)
    } else {
        None
    };
    if flags & 0x02 != 0 {
        r.skip(4, "EVID")?;
    }
    let time = if flags & 0x04 != 0 {
        Some(r.u32_le("TM")?)
    } else {
        None
    };
    let source_service = r.u8("SST")?;
    r.skip(1, "RST")?;
    let offset = base + r.pos();
    let data = r.take(len, "record data")?;
    Ok(Record {
        number,
        object_id,
        time,
        source_service,
        data,
        offset,
    })
}

fn egts_time(secs: u32) -> Option<DateTime<Utc>> {
    from_secs(EPOCH_2010 + i64::from(secs))
}

/// What one record contributed.
#[derive(Default)]
struct RecordOut {
    positions: Vec<Position>,
    status: Attributes,
    identity: Option<DeviceId>,
    command_response: Option<CommandResponse>,
}

/// The other subrecords of a record, attached to the position they follow.
enum Extra {
    Attr(AttrKey, AttrValue),
    Satellites(u16),
    Outputs(u32),
    /// Extra digital input bytes from AD_SENSORS (bits above the 8 of POS_DATA).
    InputsHigh(u32),
    PowerV(f64),
}

fn dyn_key(prefix: &str, n: impl std::fmt::Display) -> AttrKey {
    AttrKey::Dyn(format!("{prefix}{n}").into_boxed_str())
}

impl EgtsSession {
    /// A `PT_RESPONSE` refusing the whole packet `packet_id` with a processing result code:
    /// nothing of it is stored, and the terminal resends it at once instead of waiting for its
    /// response timeout.
    fn refuse(&mut self, packet_id: u16, result: u8, kind: MessageKind) -> Decoded {
        let mut d = Decoded::kind(kind);
        let pid = self.pid();
        d.reply = Some(encode_response(pid, packet_id, result, &[], &mut || 0));
        d
    }

    fn decode_packet(&mut self, frame: &[u8]) -> Result<Decoded, DecodeError> {
        if frame.len() >= 11 && !header_crc_ok(frame) {
            // The PID of a header that failed its CRC is what the terminal will resend.
            let packet_id = u16::from_le_bytes([frame[7], frame[8]]);
            return Ok(self.refuse(packet_id, RESULT_HEADERCRC_ERROR, MessageKind::CrcError));
        }
        let h = parse_header(frame)?;
        let end = h.header_len + h.data_len;
        if frame.len() < end + if h.data_len > 0 { 2 } else { 0 } {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Truncated,
                frame.len(),
                "frame shorter than FDL",
            ));
        }
        let data = &frame[h.header_len..end];
        if h.data_len > 0 {
            let crc_field = u16::from_le_bytes([frame[end], frame[end + 1]]);
            let crc = CRC16_CCITT_FALSE.checksum(data);
            if crc != crc_field {
                return Ok(self.refuse(h.packet_id, RESULT_DATACRC_ERROR, MessageKind::CrcError));
            }
        }
        if h.flags & 0x18 != 0 || h.flags & 0x04 != 0 {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Unsupported,
                2,
                "encrypted or compressed frame data",
            ));
        }
        let appdata = match h.packet_type {
            PT_RESPONSE => return self.decode_response(data, h.header_len),
            PT_APPDATA => self.decode_appdata(data, h.header_len, h.packet_id),
            PT_SIGNED_APPDATA => {
                let mut r = Reader::new(NAME, data);
                let sig_len = usize::from(r.u16_le("SIGL")?);
                r.skip(sig_len, "SIGD")?;
                let base = h.header_len + r.pos();
                self.decode_appdata(r.rest(), base, h.packet_id)
            }
            other => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Unsupported,
                    9,
                    format!("packet type {other}"),
                ))
            }
        };
        match appdata {
            // A record or subrecord length running past its data (the CRC held, so the
            // terminal built it so): the standard's "incorrect data length".
            Err(e) if e.reason == DecodeReason::Truncated => {
                Ok(self.refuse(h.packet_id, RESULT_INVDATALEN, MessageKind::Invalid))
            }
            other => other,
        }
    }

    /// A `PT_RESPONSE` from the device: the answer to a packet we sent. It may carry records
    /// (record responses to our result code or command); nothing in it needs a reply.
    fn decode_response(&mut self, data: &[u8], base: usize) -> Result<Decoded, DecodeError> {
        let mut r = Reader::new(NAME, data);
        let _rpid = r.u16_le("RPID")?;
        let pr = r.u8("PR")?;
        let mut d = Decoded::kind(MessageKind::Ack);
        if pr != 0 {
            let mut st = Attributes::default();
            st.int("result", i64::from(pr));
            d.status = Some(st);
        }
        while !r.is_empty() {
            let rec = read_record(&mut r, base)?;
            let out = self.decode_record(&rec)?;
            if out.command_response.is_some() {
                d.command_response = out.command_response;
                d.kind = MessageKind::CommandResponse;
            }
        }
        Ok(d)
    }

    fn decode_appdata(
        &mut self,
        data: &[u8],
        base: usize,
        packet_id: u16,
    ) -> Result<Decoded, DecodeError> {
        let mut r = Reader::new(NAME, data);
        let mut d = Decoded::kind(MessageKind::Data);
        let mut acks: Vec<(u16, u8)> = Vec::new();
        let mut status = Attributes::default();
        let mut identified = false;
        let mut any_identity = false;
        while !r.is_empty() {
            let rec = read_record(&mut r, base)?;
            acks.push((rec.number, rec.source_service));
            if self.terminal.is_none() {
                if let Some(oid) = rec.object_id.filter(|&o| o != 0) {
                    self.object = Some(DeviceId::new(oid.to_string()));
                    any_identity = true;
                }
            }
            let out = self.decode_record(&rec)?;
            if let Some(id) = out.identity {
                self.terminal = Some(id);
                identified = true;
            }
            d.positions.extend(out.positions);
            status.0.extend(out.status.0);
            if out.command_response.is_some() {
                d.command_response = out.command_response;
            }
        }
        if identified || any_identity {
            d.device = self.device().cloned();
        }
        d.kind = if identified {
            MessageKind::Login
        } else if d.command_response.is_some() {
            MessageKind::CommandResponse
        } else if d.positions.is_empty() {
            MessageKind::Other
        } else {
            MessageKind::Data
        };
        if !status.is_empty() {
            d.status = Some(status);
        }
        let pid = self.pid();
        let mut reply =
            BytesMut::from(&encode_response(pid, packet_id, 0, &acks, &mut || self.rn())[..]);
        if identified {
            let (pid, rn) = (self.pid(), self.rn());
            let mut reject = reply.clone();
            reply.put_slice(&encode_result_code(pid, rn, RESULT_OK));
            reject.put_slice(&encode_result_code(pid, rn, RESULT_AUTH_DENIED));
            self.reject = Some(reject.freeze());
        }
        d.reply = Some(reply.freeze());
        Ok(d)
    }

    fn decode_record(&mut self, rec: &Record<'_>) -> Result<RecordOut, DecodeError> {
        let mut out = RecordOut::default();
        let mut extras: Vec<(usize, Extra)> = Vec::new();
        let mut r = Reader::new(NAME, rec.data);
        while !r.is_empty() {
            let srt = r.u8("SRT")?;
            let srl = usize::from(r.u16_le("SRL")?);
            let at = rec.offset + r.pos();
            let body = r.take(srl, "subrecord data")?;
            let mut s = Reader::new(NAME, body);
            let target = out.positions.len().saturating_sub(1);
            let res = self.decode_subrecord(srt, &mut s, rec, &mut out, &mut |e| {
                extras.push((target, e))
            });
            res.map_err(|mut e| {
                e.offset += at;
                e
            })?;
        }
        // Subrecords that came before the first POS_DATA belong to it too.
        for (idx, extra) in extras {
            match out.positions.get_mut(idx) {
                Some(p) => apply_extra(p, extra),
                None => match extra {
                    Extra::Attr(k, v) => out.status.push(k, v),
                    Extra::Satellites(n) => out.status.int("satellites", i64::from(n)),
                    Extra::Outputs(m) => out.status.int("outputs", i64::from(m)),
                    Extra::InputsHigh(m) => out.status.int("inputs_high", i64::from(m)),
                    Extra::PowerV(v) => out.status.float("power_v", v),
                },
            }
        }
        Ok(out)
    }

    fn decode_subrecord(
        &mut self,
        srt: u8,
        s: &mut Reader<'_>,
        rec: &Record<'_>,
        out: &mut RecordOut,
        extra: &mut dyn FnMut(Extra),
    ) -> Result<(), DecodeError> {
        match (rec.source_service, srt) {
            (_, sr::RECORD_RESPONSE) => {
                let _crn = s.u16_le("CRN")?;
                let _rst = s.u8("RST")?;
            }
            (AUTH_SERVICE, sr::TERM_IDENTITY) => out.identity = Some(decode_term_identity(s)?),
            (AUTH_SERVICE, _) => {}
            (COMMANDS_SERVICE, sr::COMMAND_DATA) => decode_command_data(s, out)?,
            (_, sr::POS_DATA) => out.positions.push(decode_pos_data(s, rec)?),
            (_, sr::EXT_POS_DATA) => decode_ext_pos_data(s, extra)?,
            (_, sr::AD_SENSORS_DATA) => decode_ad_sensors(s, extra)?,
            (_, sr::COUNTERS_DATA) => decode_counters(s, extra)?,
            (_, sr::STATE_DATA) if s.remaining() >= 5 => decode_state(s, extra)?,
            (_, sr::ABS_DIG_SENS_DATA) => decode_abs_dig_sens(s, extra)?,
            (_, sr::ABS_AN_SENS_DATA) => decode_abs_an_sens(s, extra)?,
            (_, sr::ABS_CNTR_DATA) => decode_abs_cntr(s, extra)?,
            (_, sr::LIQUID_LEVEL_SENSOR) => decode_liquid_level(s, extra)?,
            // LOOPIN, ACCEL, passenger counters and anything else: kept raw, keyed by type.
            (_, other) => {
                extra(Extra::Attr(
                    dyn_key("sr", other),
                    AttrValue::Bytes(s.rest().into()),
                ));
            }
        }
        Ok(())
    }
}

/// EXT_POS_DATA: DOP values, satellites, navigation systems.
fn decode_ext_pos_data(
    s: &mut Reader<'_>,
    extra: &mut dyn FnMut(Extra),
) -> Result<(), DecodeError> {
    let flags = s.u8("EXT_POS flags")?;
    for (bit, key) in [(0x01, "vdop"), (0x02, "hdop"), (0x04, "pdop")] {
        if flags & bit != 0 {
            let v = f64::from(s.u16_le("DOP")?) / 100.0;
            extra(Extra::Attr(AttrKey::Name(key), AttrValue::Float(v)));
        }
    }
    if flags & 0x08 != 0 {
        extra(Extra::Satellites(u16::from(s.u8("SAT")?)));
    }
    if flags & 0x10 != 0 {
        let ns = s.u16_le("NS")?;
        extra(Extra::Attr(
            AttrKey::Name("nav_systems"),
            AttrValue::Int(i64::from(ns)),
        ));
    }
    Ok(())
}

/// AD_SENSORS_DATA: outputs, additional digital inputs, analogue inputs.
fn decode_ad_sensors(s: &mut Reader<'_>, extra: &mut dyn FnMut(Extra)) -> Result<(), DecodeError> {
    let dioe = s.u8("DIOE")?;
    let dout = s.u8("DOUT")?;
    let asfe = s.u8("ASFE")?;
    extra(Extra::Outputs(u32::from(dout)));
    let mut high = 0u32;
    for i in 0..8u32 {
        if dioe & (1 << i) != 0 {
            let v = s.u8("ADIO")?;
            if i < 3 {
                high |= u32::from(v) << (8 * (i + 1));
            } else {
                extra(Extra::Attr(
                    dyn_key("adio", i + 1),
                    AttrValue::Int(i64::from(v)),
                ));
            }
        }
    }
    if dioe & 0x07 != 0 {
        extra(Extra::InputsHigh(high));
    }
    for i in 0..8u32 {
        if asfe & (1 << i) != 0 {
            let v = s.u24_le("ANS")?;
            extra(Extra::Attr(
                dyn_key("adc", i + 1),
                AttrValue::Int(i64::from(v)),
            ));
        }
    }
    Ok(())
}

/// COUNTERS_DATA: the counters its CFE mask lists.
fn decode_counters(s: &mut Reader<'_>, extra: &mut dyn FnMut(Extra)) -> Result<(), DecodeError> {
    let cfe = s.u8("CFE")?;
    for i in 0..8u32 {
        if cfe & (1 << i) != 0 {
            let v = s.u24_le("CN")?;
            extra(Extra::Attr(
                dyn_key("counter", i + 1),
                AttrValue::Int(i64::from(v)),
            ));
        }
    }
    Ok(())
}

/// STATE_DATA: state, supply and battery voltages, flags.
fn decode_state(s: &mut Reader<'_>, extra: &mut dyn FnMut(Extra)) -> Result<(), DecodeError> {
    let st = s.u8("ST")?;
    let main = s.u8("MPSV")?;
    let backup = s.u8("BBV")?;
    let internal = s.u8("IBV")?;
    let flags = s.u8("state flags")?;
    extra(Extra::Attr(
        AttrKey::Name("state"),
        AttrValue::Int(i64::from(st)),
    ));
    extra(Extra::PowerV(f64::from(main) / 10.0));
    extra(Extra::Attr(
        AttrKey::Name("backup_battery_v"),
        AttrValue::Float(f64::from(backup) / 10.0),
    ));
    extra(Extra::Attr(
        AttrKey::Name("battery_v"),
        AttrValue::Float(f64::from(internal) / 10.0),
    ));
    extra(Extra::Attr(
        AttrKey::Name("state_flags"),
        AttrValue::Int(i64::from(flags)),
    ));
    Ok(())
}

/// ABS_DIG_SENS_DATA: one digital input state.
fn decode_abs_dig_sens(
    s: &mut Reader<'_>,
    extra: &mut dyn FnMut(Extra),
) -> Result<(), DecodeError> {
    let v = s.u16_le("DSN/DSST")?;
    let (state, number) = (v & 0x0F, v >> 4);
    extra(Extra::Attr(
        dyn_key("din", number),
        AttrValue::Int(i64::from(state)),
    ));
    Ok(())
}

/// ABS_AN_SENS_DATA: one analogue input.
fn decode_abs_an_sens(s: &mut Reader<'_>, extra: &mut dyn FnMut(Extra)) -> Result<(), DecodeError> {
    let n = s.u8("ASN")?;
    let v = s.u24_le("ASV")?;
    extra(Extra::Attr(dyn_key("adc", n), AttrValue::Int(i64::from(v))));
    Ok(())
}

/// ABS_CNTR_DATA: one counter.
fn decode_abs_cntr(s: &mut Reader<'_>, extra: &mut dyn FnMut(Extra)) -> Result<(), DecodeError> {
    let n = s.u8("CN")?;
    let v = s.u24_le("CNV")?;
    extra(Extra::Attr(
        dyn_key("counter", n),
        AttrValue::Int(i64::from(v)),
    ));
    Ok(())
}

/// LIQUID_LEVEL_SENSOR: a fuel level, raw sensor data or its error flag.
fn decode_liquid_level(
    s: &mut Reader<'_>,
    extra: &mut dyn FnMut(Extra),
) -> Result<(), DecodeError> {
    let flags = s.u8("LLS flags")?;
    let _addr = s.u16_le("MADDR")?;
    let n = flags & 0x07;
    if flags & 0x40 != 0 {
        extra(Extra::Attr(dyn_key("fuel_error", n), AttrValue::Bool(true)));
    } else if flags & 0x08 != 0 {
        extra(Extra::Attr(
            dyn_key("fuel_raw", n),
            AttrValue::Bytes(s.rest().into()),
        ));
    } else {
        let v = s.u32_le("LLSD")?;
        extra(Extra::Attr(
            dyn_key("fuel", n),
            AttrValue::Int(i64::from(v)),
        ));
    }
    Ok(())
}

fn apply_extra(p: &mut Position, e: Extra) {
    match e {
        Extra::Attr(k, v) => p.attrs.push(k, v),
        Extra::Satellites(n) => p.satellites = Some(n),
        Extra::Outputs(m) => p.outputs = Some(m),
        Extra::InputsHigh(m) => p.inputs = Some(p.inputs.unwrap_or(0) | m),
        Extra::PowerV(v) => p.power_v = Some(v),
    }
}

/// `EGTS_SR_TERM_IDENTITY`: the device id is the IMEI when one is sent (not blank, not all
/// zeros), else the terminal id in decimal.
fn decode_term_identity(s: &mut Reader<'_>) -> Result<DeviceId, DecodeError> {
    let tid = s.u32_le("TID")?;
    let flags = s.u8("TERM_IDENTITY flags")?;
    if flags & 0x01 != 0 {
        s.skip(2, "HDID")?;
    }
    let mut imei = None;
    if flags & 0x02 != 0 {
        let raw = s.take(15, "IMEI")?;
        let text: String = raw
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| char::from(b))
            .collect();
        let text = text.trim();
        if !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && text.bytes().any(|b| b != b'0')
        {
            imei = Some(text.to_string());
        }
    }
    // IMSI, language, network id, buffer size and MSISDN follow; the identity does not need them.
    Ok(DeviceId::new(imei.unwrap_or_else(|| tid.to_string())))
}

/// `EGTS_SR_POS_DATA`.
fn decode_pos_data(s: &mut Reader<'_>, rec: &Record<'_>) -> Result<Position, DecodeError> {
    let ntm = s.u32_le("NTM")?;
    let lat_raw = s.u32_le("LAT")?;
    let lon_raw = s.u32_le("LONG")?;
    let flags = s.u8("FLG")?;
    let spd = s.u16_le("SPD")?;
    let dir = s.u8("DIR")?;
    let odm = s.u24_le("ODM")?;
    let din = s.u8("DIN")?;
    let src = s.u8("SRC")?;
    let time = egts_time(ntm)
        .ok_or_else(|| s.error(DecodeReason::BadTime, format!("navigation time {ntm}")))?;
    let mut lat = f64::from(lat_raw) * 90.0 / f64::from(u32::MAX);
    let mut lon = f64::from(lon_raw) * 180.0 / f64::from(u32::MAX);
    if flags & 0x20 != 0 {
        lat = -lat;
    }
    if flags & 0x40 != 0 {
        lon = -lon;
    }
    let mut p = Position::new(time, flags & 0x01 != 0, lat, lon);
    p.speed_kmh = f64::from(spd & 0x3FFF) / 10.0;
    p.course = f64::from(dir) + if spd & 0x8000 != 0 { 256.0 } else { 0.0 };
    p.odometer_m = Some(f64::from(odm) * 100.0);
    p.inputs = Some(u32::from(din));
    p.motion = Some(flags & 0x10 != 0);
    if flags & 0x80 != 0 {
        let alt = f64::from(s.u24_le("ALT")?);
        p.altitude = if spd & 0x4000 != 0 { -alt } else { alt };
    }
    p.attrs.int("event", i64::from(src));
    if flags & 0x08 != 0 {
        p.attrs.flag("archive", true);
    }
    if let Some(tm) = rec.time.and_then(egts_time) {
        p.attrs.int("record_time", tm.timestamp());
    }
    Ok(p)
}

/// `EGTS_SR_COMMAND_DATA` from the device: a confirmation of our command (`CT_COMCONF`) or a
/// text message (`CT_MSGFROM`).
fn decode_command_data(s: &mut Reader<'_>, out: &mut RecordOut) -> Result<(), DecodeError> {
    let ct_cct = s.u8("CT/CCT")?;
    let (ct, cct) = (ct_cct >> 4, ct_cct & 0x0F);
    let cid = s.u32_le("CID")?;
    let _sid = s.u32_le("SID")?;
    let flags = s.u8("command flags")?;
    if flags & 0x40 != 0 {
        s.skip(1, "CHS")?;
    }
    if flags & 0x80 != 0 {
        let acl = usize::from(s.u8("ACL")?);
        s.skip(acl, "AC")?;
    }
    let cd = s.rest();
    match ct {
        CT_COMCONF => {
            // The confirmation repeats ADR, SZ/ACT and CCD before the answer data.
            let text = if cd.len() >= 5 { &cd[5..] } else { cd };
            let success = match cct {
                CC_OK => Some(true),
                CC_INPROG => None,
                _ => Some(false),
            };
            out.command_response = Some(CommandResponse {
                text: answer_text(text),
                success,
                seq: Some(cid),
            });
        }
        CT_MSGFROM => out.status.text("message", answer_text(cd)),
        _ => out.status.int("command_type", i64::from(ct)),
    }
    Ok(())
}

fn answer_text(b: &[u8]) -> String {
    if b.iter()
        .all(|&c| c == b'\t' || c == b'\r' || c == b'\n' || (0x20..0x7F).contains(&c) || c == 0)
    {
        String::from_utf8_lossy(b)
            .trim_end_matches(['\0', '\r', '\n'])
            .to_string()
    } else {
        hex::encode(b)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders: what the server sends, and what a device sends (tests, load simulator).

/// A transport packet (11-byte header, no routing) around `sfrd`.
pub fn encode_packet(packet_type: u8, packet_id: u16, sfrd: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(11 + sfrd.len() + 2);
    b.put_u8(0x01); // PRV
    b.put_u8(0x00); // SKID
    b.put_u8(0x00); // PRF 00, no routing, no encryption, no compression, priority highest
    b.put_u8(11); // HL
    b.put_u8(0x00); // HE
    b.put_u16_le(sfrd.len() as u16);
    b.put_u16_le(packet_id);
    b.put_u8(packet_type);
    let hcs = CRC8_EGTS.checksum(&b);
    b.put_u8(hcs);
    if !sfrd.is_empty() {
        b.put_slice(sfrd);
        b.put_u16_le(CRC16_CCITT_FALSE.checksum(sfrd));
    }
    b.freeze()
}

/// One service record: `RL | RN | RFL | [OID] | SST | RST | data`.
pub fn encode_record(
    out: &mut BytesMut,
    number: u16,
    object_id: Option<u32>,
    service: u8,
    data: &[u8],
) {
    out.put_u16_le(data.len() as u16);
    out.put_u16_le(number);
    out.put_u8(if object_id.is_some() { 0x01 } else { 0x00 });
    if let Some(oid) = object_id {
        out.put_u32_le(oid);
    }
    out.put_u8(service);
    out.put_u8(service);
    out.put_slice(data);
}

/// RFL bit 6, RSOD: the recipient service is on the terminal. Set in every record the server
/// sends (GOST 33472 record header; the reference server does the same).
pub const RFL_RSOD: u8 = 0x40;

/// A record the server sends: no OID, RSOD set.
fn server_record(out: &mut BytesMut, number: u16, service: u8, data: &[u8]) {
    let start = out.len();
    encode_record(out, number, None, service, data);
    out[start + 4] |= RFL_RSOD;
}

fn subrecord(out: &mut BytesMut, srt: u8, data: &[u8]) {
    out.put_u8(srt);
    out.put_u16_le(data.len() as u16);
    out.put_slice(data);
}

/// The `PT_RESPONSE` packet confirming a device packet: `RPID | PR`, then per confirmed record
/// a record of the same service (RSOD set) with one `EGTS_SR_RECORD_RESPONSE` (`CRN | RST=0`).
/// Our record numbers come from `next_rn`.
pub fn encode_response(
    packet_id: u16,
    response_to: u16,
    result: u8,
    records: &[(u16, u8)],
    next_rn: &mut dyn FnMut() -> u16,
) -> Bytes {
    let mut sfrd = BytesMut::with_capacity(3 + records.len() * 13);
    sfrd.put_u16_le(response_to);
    sfrd.put_u8(result);
    for &(crn, service) in records {
        let mut rd = BytesMut::with_capacity(6);
        let mut body = [0u8; 3];
        body[..2].copy_from_slice(&crn.to_le_bytes());
        subrecord(&mut rd, sr::RECORD_RESPONSE, &body);
        server_record(&mut sfrd, next_rn(), service, &rd);
    }
    encode_packet(PT_RESPONSE, packet_id, &sfrd)
}

/// The `PT_APPDATA` packet with `EGTS_SR_RESULT_CODE` (auth service) that ends authentication;
/// `code` 0 = EGTS_PC_OK.
pub fn encode_result_code(packet_id: u16, record_number: u16, code: u8) -> Bytes {
    let mut rd = BytesMut::with_capacity(4);
    subrecord(&mut rd, sr::RESULT_CODE, &[code]);
    let mut sfrd = BytesMut::with_capacity(16);
    server_record(&mut sfrd, record_number, AUTH_SERVICE, &rd);
    encode_packet(PT_APPDATA, packet_id, &sfrd)
}

/// A command packet: commands-service record with `EGTS_SR_COMMAND_DATA` of type `CT_COM`,
/// command id `cid`, no charset/authorisation fields (CP1251 by default, ASCII-compatible), and
/// command data `ADR=0 | SZ/ACT=0 | CCD=EGTS_RAW_DATA | text`.
pub fn encode_command_packet(packet_id: u16, record_number: u16, cid: u32, text: &[u8]) -> Bytes {
    let mut srd = BytesMut::with_capacity(15 + text.len());
    srd.put_u8(CT_COM << 4);
    srd.put_u32_le(cid);
    srd.put_u32_le(0); // SID
    srd.put_u8(0x00); // no CHS, no AC
    srd.put_u16_le(0); // ADR
    srd.put_u8(0x00); // SZ/ACT
    srd.put_u16_le(EGTS_RAW_DATA);
    srd.put_slice(text);
    let mut rd = BytesMut::with_capacity(srd.len() + 3);
    subrecord(&mut rd, sr::COMMAND_DATA, &srd);
    let mut sfrd = BytesMut::with_capacity(rd.len() + 7);
    server_record(&mut sfrd, record_number, COMMANDS_SERVICE, &rd);
    encode_packet(PT_APPDATA, packet_id, &sfrd)
}

/// A device's `CT_COMCONF` answer to command `cid` (tests, simulator).
pub fn encode_command_confirmation(
    packet_id: u16,
    record_number: u16,
    cid: u32,
    cct: u8,
    text: &[u8],
) -> Bytes {
    let mut srd = BytesMut::with_capacity(15 + text.len());
    srd.put_u8((CT_COMCONF << 4) | (cct & 0x0F));
    srd.put_u32_le(cid);
    srd.put_u32_le(0);
    srd.put_u8(0x00);
    srd.put_u16_le(0);
    srd.put_u8(0x00);
    srd.put_u16_le(EGTS_RAW_DATA);
    srd.put_slice(text);
    let mut rd = BytesMut::with_capacity(srd.len() + 3);
    subrecord(&mut rd, sr::COMMAND_DATA, &srd);
    let mut sfrd = BytesMut::with_capacity(rd.len() + 7);
    encode_record(&mut sfrd, record_number, None, COMMANDS_SERVICE, &rd);
    encode_packet(PT_APPDATA, packet_id, &sfrd)
}

/// The login a device sends: auth-service record with `EGTS_SR_TERM_IDENTITY` (terminal id,
/// IMEI when given).
pub fn encode_term_identity(
    packet_id: u16,
    record_number: u16,
    tid: u32,
    imei: Option<&str>,
) -> Bytes {
    let mut srd = BytesMut::with_capacity(20);
    srd.put_u32_le(tid);
    match imei {
        Some(imei) => {
            srd.put_u8(0x02);
            let mut field = [0u8; 15];
            for (dst, src) in field.iter_mut().zip(imei.bytes()) {
                *dst = src;
            }
            srd.put_slice(&field);
        }
        None => srd.put_u8(0x00),
    }
    let mut rd = BytesMut::with_capacity(srd.len() + 3);
    subrecord(&mut rd, sr::TERM_IDENTITY, &srd);
    let mut sfrd = BytesMut::with_capacity(rd.len() + 11);
    encode_record(&mut sfrd, record_number, Some(tid), AUTH_SERVICE, &rd);
    encode_packet(PT_APPDATA, packet_id, &sfrd)
}

/// One fix for [`encode_teledata`], as a simulated device reports it.
#[derive(Clone, Debug)]
pub struct Fix {
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: u16,
    pub altitude: i32,
    pub odometer_m: u32,
    pub inputs: u8,
    pub satellites: Option<u8>,
    pub outputs: Option<u8>,
}

/// A teledata packet, one record per fix: `EGTS_SR_POS_DATA` (+ `EXT_POS_DATA` with the
/// satellites, `AD_SENSORS_DATA` with the outputs). Records are numbered from `first_rn`.
pub fn encode_teledata(
    packet_id: u16,
    first_rn: u16,
    object_id: Option<u32>,
    fixes: &[Fix],
) -> Bytes {
    let mut sfrd = BytesMut::new();
    for (i, f) in fixes.iter().enumerate() {
        let mut pos = BytesMut::with_capacity(24);
        pos.put_u32_le((f.time.timestamp() - EPOCH_2010).clamp(0, i64::from(u32::MAX)) as u32);
        pos.put_u32_le((f.lat.abs() / 90.0 * f64::from(u32::MAX)).round() as u32);
        pos.put_u32_le((f.lon.abs() / 180.0 * f64::from(u32::MAX)).round() as u32);
        let mut flg = 0x80u8; // ALTE
        if f.valid {
            flg |= 0x01;
        }
        if f.speed_kmh > 0.0 {
            flg |= 0x10;
        }
        if f.lat < 0.0 {
            flg |= 0x20;
        }
        if f.lon < 0.0 {
            flg |= 0x40;
        }
        pos.put_u8(flg);
        let mut spd = ((f.speed_kmh * 10.0).round() as u16) & 0x3FFF;
        if f.altitude < 0 {
            spd |= 0x4000;
        }
        if f.course >= 256 {
            spd |= 0x8000;
        }
        pos.put_u16_le(spd);
        pos.put_u8((f.course & 0xFF) as u8);
        let odm = (f.odometer_m / 100).min(0xFF_FFFF);
        pos.put_slice(&odm.to_le_bytes()[..3]);
        pos.put_u8(f.inputs);
        pos.put_u8(0); // SRC: timer
        let alt = f.altitude.unsigned_abs().min(0xFF_FFFF);
        pos.put_slice(&alt.to_le_bytes()[..3]);
        let mut rd = BytesMut::with_capacity(40);
        subrecord(&mut rd, sr::POS_DATA, &pos);
        if let Some(sats) = f.satellites {
            subrecord(&mut rd, sr::EXT_POS_DATA, &[0x08, sats]);
        }
        if let Some(outs) = f.outputs {
            subrecord(&mut rd, sr::AD_SENSORS_DATA, &[0x00, outs, 0x00]);
        }
        encode_record(
            &mut sfrd,
            first_rn.wrapping_add(i as u16),
            object_id,
            TELEDATA_SERVICE,
            &rd,
        );
    }
    encode_packet(PT_APPDATA, packet_id, &sfrd)
}

#[cfg(test)]
mod tests;
