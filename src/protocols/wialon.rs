//! Wialon IPS 1.1 and 2.0 (Gurtam's open text protocol), over TCP and UDP.
//!
//! TCP: every packet is one line `#TYPE#message\r\n`. The device logs in first
//! (`#L#imei;password` in 1.1, `#L#2.0;imei;password;CRC` in 2.0) and is answered `#AL#1`; then
//! it sends `#SD#` short data, `#D#` extended data, `#B#` black box batches (messages joined by
//! `|`), `#P#` pings and `#M#` driver messages, each answered with `#A<TYPE>#<code>\r\n`.
//! Version 2.0 ends the login, data and message packets with a CRC-16/IBM of the message body, as
//! hex, after the last `;` (or `|` for a black box); a mismatch is answered with the protocol's
//! own checksum error code so the device resends.
//! UDP: one packet per datagram, prefixed with the device id: `imei#TYPE#…` (1.1) or
//! `2.0;imei#TYPE#…` (2.0); answered the same way.
//! The server sends text commands as driver messages `#M#text\r\n` and the device answers `#AM#1`.
//! Notes in our own words and the real packets: `protocols/wialon/`.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, Datelike, Duration, Utc};

use super::util::{utc, CRC16_IBM};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "wialon";
/// Largest packet accepted. A black box batch of a few hundred extended messages fits well
/// under 64 KiB (Traccar's line limit for this protocol is the same order).
pub const MAX_FRAME: usize = 65_536;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5039,
    transports: &[Transport::Tcp, Transport::Udp],
    max_frame: MAX_FRAME,
    session: |t| Box::new(WialonSession::new(t)),
};

/// Default driver-message texts for engine stop / resume. Wialon IPS has no standard
/// immobiliser command: devices that accept commands over IPS take them as `#M#` text, and the
/// output-control syntax `L<n>=<0|1>` (output n on/off) is the one Traccar's encoder uses for
/// this protocol. A fleet whose devices use another text sets it with
/// [`WialonSession::with_engine_texts`] or sends `CommandBody::Text`.
pub const DEFAULT_ENGINE_STOP: &str = "L1=1";
pub const DEFAULT_ENGINE_RESUME: &str = "L1=0";

/// Protocol version the device announced (login, or the UDP prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1_1,
    V2_0,
}

/// Wialon IPS state of one TCP connection or UDP peer.
pub struct WialonSession {
    transport: Transport,
    version: Option<Version>,
    /// The connection has sent at least one line terminator: from then on only whole lines
    /// are frames.
    terminated: bool,
    engine_stop: Cow<'static, str>,
    engine_resume: Cow<'static, str>,
}

impl WialonSession {
    pub fn new(transport: Transport) -> Self {
        WialonSession {
            transport,
            version: None,
            terminated: false,
            engine_stop: Cow::Borrowed(DEFAULT_ENGINE_STOP),
            engine_resume: Cow::Borrowed(DEFAULT_ENGINE_RESUME),
        }
    }

    /// A session whose engine stop / resume commands send these driver-message texts.
    pub fn with_engine_texts(
        transport: Transport,
        stop: impl Into<String>,
        resume: impl Into<String>,
    ) -> Self {
        WialonSession {
            engine_stop: Cow::Owned(stop.into()),
            engine_resume: Cow::Owned(resume.into()),
            ..WialonSession::new(transport)
        }
    }

    /// The protocol version announced so far (`None` before the login).
    pub fn version(&self) -> Option<Version> {
        self.version
    }
}

impl Session for WialonSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        match self.transport {
            // One packet per datagram; should a datagram hold several lines, each is one.
            Transport::Udp => {
                let blank = buf
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                Ok(match buf.iter().position(|&b| b == b'\n') {
                    _ if blank > 0 => FrameCut::Skip(blank),
                    _ if buf.is_empty() => FrameCut::NeedMore,
                    Some(eol) => FrameCut::Frame(eol + 1),
                    None => FrameCut::Frame(buf.len()),
                })
            }
            Transport::Tcp => self.tcp_frame(buf),
        }
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let line = trim_eol(frame);
        let Header { prefix, kind, body } = split_header(line)?;
        let mut version = self.version;
        let mut device = None;
        if !prefix.is_empty() {
            let (v, id) = parse_prefix(prefix);
            // The prefix speaks for its own packet only.
            if v.is_some() {
                version = v;
            }
            if !id.is_empty() {
                device = Some(DeviceId::new(id));
            }
        }
        let mut d = match kind {
            b"L" => {
                let (d, v) = decode_login(body);
                if v.is_some() {
                    self.version = v;
                }
                d
            }
            b"P" => Decoded {
                reply: Some(Bytes::from_static(b"#AP#\r\n")),
                ..Decoded::kind(MessageKind::Heartbeat)
            },
            b"SD" => decode_data(body, ctx, MsgKind::Short),
            b"D" => decode_data(body, ctx, MsgKind::Extended),
            b"B" => decode_black_box(body, ctx),
            b"M" => decode_driver_message(body, version),
            b"AM" => {
                let text = String::from_utf8_lossy(body).into_owned();
                let success = match text.as_str() {
                    "1" => Some(true),
                    "0" | "01" => Some(false),
                    _ => None,
                };
                Decoded {
                    command_response: Some(CommandResponse {
                        text,
                        success,
                        seq: None,
                    }),
                    ..Decoded::kind(MessageKind::CommandResponse)
                }
            }
            // Photos (I), tachograph files (IT, T) and anything newer: nothing the fleet uses.
            _ => Decoded::kind(MessageKind::Other),
        };
        if d.device.is_none() {
            d.device = device;
        }
        Ok(d)
    }

    fn reject_reply(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b"#AL#0\r\n"))
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        // The UDP channel of Wialon IPS carries data from the device only.
        if self.transport == Transport::Udp {
            return Err(CommandError::Unsupported(NAME));
        }
        let v2 = self.version == Some(Version::V2_0);
        Ok(match &cmd.body {
            CommandBody::EngineStop => encode_message(&self.engine_stop, v2),
            CommandBody::EngineResume => encode_message(&self.engine_resume, v2),
            // An already framed IPS packet (`#US#…`, `#M#…`) goes out as written.
            CommandBody::Text(t) if t.starts_with('#') => {
                let mut s = t.trim_end_matches(['\r', '\n']).to_string();
                s.push_str("\r\n");
                Bytes::from(s)
            }
            CommandBody::Text(t) => encode_message(t, v2),
        })
    }

    fn protocol(&self) -> Protocol {
        Protocol::Wialon
    }
}

impl WialonSession {
    fn tcp_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        // Blank lines between packets.
        let blank = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            self.terminated = true;
            return Ok(FrameCut::Skip(blank));
        }
        if buf.is_empty() {
            return Ok(FrameCut::NeedMore);
        }
        let window = &buf[..buf.len().min(MAX_FRAME)];
        if let Some(eol) = window.iter().position(|&b| b == b'\n') {
            self.terminated = true;
            let line_len = eol + 1;
            // A photo packet is followed by `sz` bytes of image data.
            if let Some(sz) = image_size(&buf[..eol]) {
                let total = line_len.saturating_add(sz);
                if total > MAX_FRAME {
                    return Err(DecodeError::new(
                        NAME,
                        DecodeReason::TooLarge,
                        0,
                        format!("image of {sz} bytes"),
                    ));
                }
                return Ok(if buf.len() >= total {
                    FrameCut::Frame(total)
                } else {
                    FrameCut::NeedMore
                });
            }
            return Ok(FrameCut::Frame(line_len));
        }
        if buf.len() >= MAX_FRAME {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                0,
                format!("no line end within {MAX_FRAME} bytes"),
            ));
        }
        // A connection that has never sent a line end may be a device that omits it: a
        // packet that is complete by its own structure is taken as a frame. Once the device
        // has terminated a line, only whole lines are frames.
        if !self.terminated && is_complete_unterminated(buf, self.version) {
            return Ok(FrameCut::Frame(buf.len()));
        }
        Ok(FrameCut::NeedMore)
    }
}

fn trim_eol(frame: &[u8]) -> &[u8] {
    let mut end = frame.len();
    while end > 0 && (frame[end - 1] == b'\n' || frame[end - 1] == b'\r') {
        end -= 1;
    }
    &frame[..end]
}

/// The parts of one packet line `[prefix]#TYPE#body`.
struct Header<'a> {
    /// UDP device prefix (`imei` or `2.0;imei`), empty on TCP.
    prefix: &'a [u8],
    kind: &'a [u8],
    body: &'a [u8],
}

fn split_header(line: &[u8]) -> Result<Header<'_>, DecodeError> {
    let first = line
        .iter()
        .position(|&b| b == b'#')
        .ok_or_else(|| DecodeError::new(NAME, DecodeReason::Framing, 0, "no '#' start byte"))?;
    let rest = &line[first + 1..];
    let second = rest.iter().position(|&b| b == b'#').ok_or_else(|| {
        DecodeError::new(
            NAME,
            DecodeReason::Framing,
            first + 1,
            "no '#' after the packet type",
        )
    })?;
    let kind = &rest[..second];
    if kind.is_empty() || kind.len() > 4 || !kind.iter().all(u8::is_ascii_uppercase) {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            first + 1,
            format!("packet type {:?}", String::from_utf8_lossy(kind)),
        ));
    }
    Ok(Header {
        prefix: &line[..first],
        kind,
        body: &rest[second + 1..],
    })
}

/// The UDP prefix: `imei` (1.1) or `2.0;imei` (2.0).
fn parse_prefix(prefix: &[u8]) -> (Option<Version>, String) {
    let text = String::from_utf8_lossy(prefix);
    match text.split_once(';') {
        Some((v, id)) => (Some(parse_version(v)), id.trim().to_string()),
        None => (None, text.trim().to_string()),
    }
}

fn parse_version(v: &str) -> Version {
    if v.trim() == "1.1" {
        Version::V1_1
    } else {
        Version::V2_0
    }
}

/// `#I#sz;…` header line: the image size that follows it.
fn image_size(line: &[u8]) -> Option<usize> {
    let Header { kind, body, .. } = split_header(line).ok()?;
    if kind != b"I" {
        return None;
    }
    let sz = body.split(|&b| b == b';').next()?;
    std::str::from_utf8(sz).ok()?.trim().parse().ok()
}

/// Hex CRC text as devices write it: `7A01`, `8A7`, `0x9b0`.
fn parse_crc(text: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(text).ok()?.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if s.is_empty() || s.len() > 4 {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

/// Where a trailing CRC sits: the body split into (checked part including its trailing
/// separator, CRC text).
fn split_crc(body: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let pos = body.iter().rposition(|&b| b == sep)?;
    Some((&body[..=pos], &body[pos + 1..]))
}

fn crc_ok(data: &[u8], crc_text: &[u8]) -> bool {
    parse_crc(crc_text) == Some(CRC16_IBM.checksum(data))
}

fn field_count(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b';').count() + 1
}

/// Decides whether an unterminated buffer already holds a whole packet (see `tcp_frame`).
fn is_complete_unterminated(buf: &[u8], version: Option<Version>) -> bool {
    let Ok(Header { prefix, kind, body }) = split_header(buf) else {
        return false;
    };
    let version = if prefix.contains(&b';') {
        Some(Version::V2_0)
    } else {
        version
    };
    let v2 = version == Some(Version::V2_0);
    let with_crc = |min: usize| -> bool {
        let n = field_count(body);
        if n == min + 1 {
            split_crc(body, b';').is_some_and(|(data, crc)| crc_ok(data, crc))
        } else {
            n == min && !v2
        }
    };
    match kind {
        b"P" => body.is_empty(),
        b"L" => {
            let n = field_count(body);
            let versioned = body
                .split(|&b| b == b';')
                .next()
                .is_some_and(|f| f.contains(&b'.'));
            if versioned {
                n >= 4 && split_crc(body, b';').is_some_and(|(_, c)| parse_crc(c).is_some())
            } else {
                n == 2
            }
        }
        b"SD" => with_crc(10),
        b"D" => with_crc(16),
        b"B" => {
            let segments: Vec<&[u8]> = body.split(|&b| b == b'|').collect();
            match segments.split_last() {
                Some((last, msgs)) if !last.contains(&b';') && !msgs.is_empty() => {
                    split_crc(body, b'|').is_some_and(|(data, crc)| crc_ok(data, crc))
                }
                Some(_) => segments.iter().all(|m| field_count(m) >= 10),
                None => false,
            }
        }
        b"M" => {
            if v2 {
                split_crc(body, b';').is_some_and(|(data, crc)| crc_ok(data, crc))
            } else {
                !body.is_empty()
            }
        }
        b"AM" => !body.is_empty(),
        _ => false,
    }
}

fn reply(kind: &str, code: &str) -> Option<Bytes> {
    Some(Bytes::from(format!("#A{kind}#{code}\r\n")))
}

fn decode_login(body: &[u8]) -> (Decoded, Option<Version>) {
    let text = String::from_utf8_lossy(body);
    let fields: Vec<&str> = text.split(';').collect();
    let mut d = Decoded::kind(MessageKind::Login);
    let (version, imei) = match fields.as_slice() {
        [v, imei, ..] if v.contains('.') => {
            let version = parse_version(v);
            if fields.len() >= 4 {
                if let Some((data, crc)) = split_crc(body, b';') {
                    if !crc_ok(data, crc) {
                        d.kind = MessageKind::CrcError;
                        d.reply = reply("L", "10");
                        return (d, Some(version));
                    }
                }
            }
            (Some(version), imei.trim())
        }
        [imei, ..] => (Some(Version::V1_1), imei.trim()),
        [] => (None, ""),
    };
    if imei.is_empty() || imei == "NA" {
        d.reply = reply("L", "0");
        return (d, version);
    }
    // Passwords are not checked here: whether the device may send is the registry's decision
    // (its refusal is `reject_reply`, `#AL#0`).
    d.device = Some(DeviceId::new(imei));
    d.reply = reply("L", "1");
    (d, version)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MsgKind {
    Short,
    Extended,
}

/// Why a message was refused, as the AD/ASD answer codes of the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Structure,
    Time,
    Coordinates,
    SpeedCourseAltitude,
    SatellitesHdop,
    InputsOutputs,
    Adc,
}

impl Refusal {
    /// The answer code; the same numbers serve SD and D (a short packet has no fields that
    /// could raise 13 or 14).
    fn code(self) -> &'static str {
        match self {
            Refusal::Structure => "-1",
            Refusal::Time => "0",
            Refusal::Coordinates => "10",
            Refusal::SpeedCourseAltitude => "11",
            Refusal::SatellitesHdop => "12",
            Refusal::InputsOutputs => "13",
            Refusal::Adc => "14",
        }
    }
}

/// One decoded SD/D message: a fix, or attributes without a fix (NA coordinates).
enum Record {
    Fix(Position),
    NoFix(Attributes),
}

fn decode_data(body: &[u8], ctx: &DecodeCtx, kind: MsgKind) -> Decoded {
    let (tag, base, crc_code) = match kind {
        MsgKind::Short => ("SD", 10, "13"),
        MsgKind::Extended => ("D", 16, "16"),
    };
    let n = field_count(body);
    let mut msg = body;
    if n == base + 1 {
        if let Some((data, crc)) = split_crc(body, b';') {
            if !crc_ok(data, crc) {
                return Decoded {
                    reply: reply(tag, crc_code),
                    ..Decoded::kind(MessageKind::CrcError)
                };
            }
            msg = &data[..data.len() - 1];
        }
    }
    let text = String::from_utf8_lossy(msg);
    let fields: Vec<&str> = text.split(';').collect();
    let mut d = Decoded::kind(MessageKind::Data);
    match parse_record(&fields, ctx, kind) {
        Ok(Record::Fix(p)) => {
            d.positions.push(p);
            d.reply = reply(tag, "1");
        }
        Ok(Record::NoFix(a)) => {
            d.kind = MessageKind::Status;
            d.status = Some(a);
            d.reply = reply(tag, "1");
        }
        Err(r) => {
            d.kind = MessageKind::Invalid;
            d.reply = reply(tag, r.code());
        }
    }
    d
}

fn decode_black_box(body: &[u8], ctx: &DecodeCtx) -> Decoded {
    let mut msgs = body;
    let segments = body.split(|&b| b == b'|').count();
    // 2.0 puts the CRC after the last `|`.
    if segments > 1 {
        if let Some((data, crc)) = split_crc(body, b'|') {
            if !crc.contains(&b';') && parse_crc(crc).is_some() {
                if !crc_ok(data, crc) {
                    return Decoded {
                        reply: reply("B", ""),
                        ..Decoded::kind(MessageKind::CrcError)
                    };
                }
                msgs = &data[..data.len() - 1];
            }
        }
    }
    let text = String::from_utf8_lossy(msgs);
    let mut d = Decoded::kind(MessageKind::Data);
    let mut accepted = 0usize;
    for m in text.split('|') {
        let fields: Vec<&str> = m.split(';').collect();
        let kind = if fields.len() > 10 {
            MsgKind::Extended
        } else {
            MsgKind::Short
        };
        match parse_record(&fields, ctx, kind) {
            Ok(Record::Fix(mut p)) => {
                p.attrs.flag("archive", true);
                d.positions.push(p);
                accepted += 1;
            }
            Ok(Record::NoFix(a)) => {
                d.status = Some(a);
                accepted += 1;
            }
            Err(_) => {}
        }
    }
    d.reply = reply("B", &accepted.to_string());
    d
}

fn decode_driver_message(body: &[u8], version: Option<Version>) -> Decoded {
    let mut msg = body;
    if version == Some(Version::V2_0) {
        if let Some((data, crc)) = split_crc(body, b';') {
            if parse_crc(crc).is_some() {
                if !crc_ok(data, crc) {
                    return Decoded {
                        reply: reply("M", "01"),
                        ..Decoded::kind(MessageKind::CrcError)
                    };
                }
                msg = &data[..data.len() - 1];
            }
        }
    }
    // A text from the device: a driver's message or a device's answer to a text command.
    Decoded {
        command_response: Some(CommandResponse {
            text: String::from_utf8_lossy(msg).into_owned(),
            success: None,
            seq: None,
        }),
        reply: reply("M", "1"),
        ..Decoded::kind(MessageKind::Message)
    }
}

fn is_na(f: &str) -> bool {
    let f = f.trim();
    f.is_empty() || f.eq_ignore_ascii_case("NA")
}

/// A field that is NA/empty → `None`; otherwise parsed, or the refusal.
fn opt<T: std::str::FromStr>(f: Option<&&str>, why: Refusal) -> Result<Option<T>, Refusal> {
    match f {
        None => Ok(None),
        Some(f) if is_na(f) => Ok(None),
        Some(f) => f.trim().parse().map(Some).map_err(|_| why),
    }
}

fn parse_time(
    date: Option<&&str>,
    time: Option<&&str>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Refusal> {
    let digits = |f: &str, n: usize| -> Result<Option<[u32; 3]>, Refusal> {
        let f = f.trim();
        if is_na(f) {
            return Ok(None);
        }
        // 2.1 allows a fraction of a second after hhmmss.
        let head = f.split('.').next().unwrap_or("");
        if head.len() != n || !head.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::Time);
        }
        let v: Vec<u32> = head
            .as_bytes()
            .chunks(2)
            .map(|c| u32::from(c[0] - b'0') * 10 + u32::from(c[1] - b'0'))
            .collect();
        Ok(Some([v[0], v[1], v[2]]))
    };
    // An all-zero date is what some firmwares send before the first fix: no date.
    let date = match date.map(|d| d.trim()) {
        Some("000000") | None => None,
        Some(d) => digits(d, 6)?,
    };
    let time = match time {
        Some(t) => digits(t, 6)?,
        None => None,
    };
    match (date, time) {
        (Some([dd, mm, yy]), Some([h, mi, s])) => {
            utc(2000 + yy as i32, mm, dd, h, mi, s).ok_or(Refusal::Time)
        }
        (None, Some([h, mi, s])) => {
            // Time of day only: today's (server) date, or yesterday's just after midnight.
            let t = utc(now.year(), now.month(), now.day(), h, mi, s).ok_or(Refusal::Time)?;
            Ok(if t > now + Duration::hours(12) {
                t - Duration::days(1)
            } else {
                t
            })
        }
        _ => Ok(now),
    }
}

/// `ddmm.mmmm` / `dddmm.mmmm` with its hemisphere letter to signed degrees.
fn parse_coord(value: &str, hemi: &str, negative: char) -> Result<Option<f64>, Refusal> {
    if is_na(value) {
        return Ok(None);
    }
    let v: f64 = value.trim().parse().map_err(|_| Refusal::Coordinates)?;
    if !v.is_finite() || v < 0.0 {
        return Err(Refusal::Coordinates);
    }
    let deg = (v / 100.0).trunc();
    let deg = deg + (v - deg * 100.0) / 60.0;
    let hemi = hemi.trim();
    Ok(Some(if hemi.eq_ignore_ascii_case(&negative.to_string()) {
        -deg
    } else {
        deg
    }))
}

fn parse_record(f: &[&str], ctx: &DecodeCtx, kind: MsgKind) -> Result<Record, Refusal> {
    if f.len() < 10 || (kind == MsgKind::Short && f.len() > 10) {
        return Err(Refusal::Structure);
    }
    let time = parse_time(f.first(), f.get(1), ctx.now)?;
    let lat = parse_coord(f[2], f[3], 'S')?;
    let lon = parse_coord(f[4], f[5], 'W')?;
    if let Some(l) = lat {
        if l.abs() > 90.0 {
            return Err(Refusal::Coordinates);
        }
    }
    if let Some(l) = lon {
        if l.abs() > 180.0 {
            return Err(Refusal::Coordinates);
        }
    }
    let speed: Option<f64> = opt(f.get(6), Refusal::SpeedCourseAltitude)?;
    let course: Option<f64> = opt(f.get(7), Refusal::SpeedCourseAltitude)?;
    let altitude: Option<f64> = opt(f.get(8), Refusal::SpeedCourseAltitude)?;
    let sats: Option<u16> = opt(f.get(9), Refusal::SatellitesHdop)?;

    let mut p = Position::new(time, false, 0.0, 0.0);
    p.speed_kmh = speed.unwrap_or(0.0);
    p.course = course.unwrap_or(0.0);
    p.altitude = altitude.unwrap_or(0.0);
    p.satellites = sats;
    let mut valid_override = None;

    if kind == MsgKind::Extended {
        let hdop: Option<f64> = opt(f.get(10), Refusal::SatellitesHdop)?;
        if let Some(h) = hdop {
            p.attrs.float("hdop", h);
        }
        p.inputs = opt(f.get(11), Refusal::InputsOutputs)?;
        p.outputs = opt(f.get(12), Refusal::InputsOutputs)?;
        if let Some(adc) = f.get(13).filter(|a| !is_na(a)) {
            for (i, v) in adc.split(',').enumerate() {
                if is_na(v) {
                    continue;
                }
                let v: f64 = v.trim().parse().map_err(|_| Refusal::Adc)?;
                p.attrs.push(
                    AttrKey::Dyn(format!("adc{}", i + 1).into()),
                    AttrValue::Float(v),
                );
            }
        }
        if let Some(ib) = f.get(14).filter(|a| !is_na(a)) {
            p.attrs.text("driver_unique_id", ib.trim());
        }
        if let Some(params) = f.get(15).filter(|a| !is_na(a)) {
            for param in params.split(',') {
                apply_param(&mut p, param, &mut valid_override);
            }
        }
    }

    match (lat, lon) {
        (Some(lat), Some(lon)) => {
            p.lat = lat;
            p.lon = lon;
            // Satellites decide validity (3 or more), unless the device says it outright;
            // coordinates without a satellite count are taken as a fix.
            p.valid = valid_override.unwrap_or_else(|| sats.map(|s| s >= 3).unwrap_or(true));
            Ok(Record::Fix(p))
        }
        _ => Ok(Record::NoFix(status_of(p))),
    }
}

/// The attributes of a message without coordinates, typed fields included under their names.
fn status_of(p: Position) -> Attributes {
    let mut a = p.attrs;
    if let Some(s) = p.satellites {
        a.int("satellites", i64::from(s));
    }
    if let Some(v) = p.ignition {
        a.flag("ignition", v);
    }
    if let Some(v) = p.motion {
        a.flag("motion", v);
    }
    if let Some(v) = p.inputs {
        a.int("inputs", i64::from(v));
    }
    if let Some(v) = p.outputs {
        a.int("outputs", i64::from(v));
    }
    if let Some(v) = p.power_v {
        a.float("power_v", v);
    }
    if let Some(v) = p.alarm {
        a.text("alarm", v);
    }
    a
}

/// A param value by its declared type (1 integer, 2 double, 3 string). A value that does not
/// parse as its type is kept as text rather than losing the whole message.
fn param_value(ty: &str, raw: &str) -> AttrValue {
    let raw = raw.trim();
    match ty {
        "1" => raw
            .parse::<i64>()
            .map(AttrValue::Int)
            .or_else(|_| raw.parse::<f64>().map(AttrValue::Float))
            .unwrap_or_else(|_| AttrValue::Text(raw.into())),
        "2" => raw
            .parse::<f64>()
            .map(AttrValue::Float)
            .unwrap_or_else(|_| AttrValue::Text(raw.into())),
        _ => AttrValue::Text(raw.into()),
    }
}

fn as_f64(v: &AttrValue) -> Option<f64> {
    match v {
        AttrValue::Int(i) => Some(*i as f64),
        AttrValue::Float(f) => Some(*f),
        AttrValue::Bool(b) => Some(f64::from(u8::from(*b))),
        AttrValue::Text(t) => t.trim().parse().ok(),
        AttrValue::Bytes(_) => None,
    }
}

fn as_bool(v: &AttrValue) -> Option<bool> {
    match v {
        AttrValue::Text(t) if t.eq_ignore_ascii_case("true") => Some(true),
        AttrValue::Text(t) if t.eq_ignore_ascii_case("false") => Some(false),
        other => as_f64(other).map(|f| f != 0.0),
    }
}

/// `name:type:value` → a typed field for the names with an obvious meaning, else an attribute
/// under the device's own (lower-cased) name.
fn apply_param(p: &mut Position, param: &str, valid: &mut Option<bool>) {
    let Some((name, rest)) = param.split_once(':') else {
        return;
    };
    let Some((ty, raw)) = rest.split_once(':') else {
        return;
    };
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        return;
    }
    let value = param_value(ty.trim(), raw);
    match name.as_str() {
        "ign" | "ignition" | "acc" => {
            if let Some(b) = as_bool(&value) {
                p.ignition = Some(b);
                return;
            }
        }
        "motion" | "moving" => {
            if let Some(b) = as_bool(&value) {
                p.motion = Some(b);
                return;
            }
        }
        "valid" | "valid_coords" => {
            if let Some(b) = as_bool(&value) {
                *valid = Some(b);
            }
        }
        "pwr_ext" | "power" | "uext" | "board" | "ext_voltage" => {
            if let Some(v) = as_f64(&value) {
                // Volts, or millivolts from firmwares that send integers.
                p.power_v = Some(if v > 1000.0 { v / 1000.0 } else { v });
            }
        }
        "sos" | "alarm" if as_bool(&value) == Some(true) => p.alarm = Some("sos"),
        "bat" => {
            if let Some(v) = as_f64(&value) {
                p.attrs
                    .push(AttrKey::Name("battery_level"), AttrValue::Int(v as i64));
                return;
            }
        }
        "temp" => {
            if let Some(v) = as_f64(&value) {
                p.attrs
                    .push(AttrKey::Name("device_temp"), AttrValue::Float(v));
                return;
            }
        }
        _ => {}
    }
    p.attrs.push(AttrKey::Dyn(name.into()), value);
}

/// A server → device driver message / text command: `#M#text\r\n`, with `;CRC` in 2.0.
pub fn encode_message(text: &str, v2: bool) -> Bytes {
    Bytes::from(packet("M", text, v2))
}

fn packet(kind: &str, body: &str, v2: bool) -> String {
    if v2 {
        let data = format!("{body};");
        let crc = CRC16_IBM.checksum(data.as_bytes());
        format!("#{kind}#{data}{crc:04X}\r\n")
    } else {
        format!("#{kind}#{body}\r\n")
    }
}

/// The login a device opens its TCP session with (`password` `None` → `NA`).
pub fn encode_login(imei: &str, password: Option<&str>, v2: bool) -> Bytes {
    let password = password.unwrap_or("NA");
    Bytes::from(if v2 {
        packet("L", &format!("2.0;{imei};{password}"), true)
    } else {
        packet("L", &format!("{imei};{password}"), false)
    })
}

/// The ping packet.
pub fn encode_ping() -> Bytes {
    Bytes::from_static(b"#P#\r\n")
}

/// A param value a simulated device reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Int(i64),
    Double(f64),
    Text(String),
}

/// One message for the `encode_*` helpers: what a device reports (`None` → `NA`).
#[derive(Clone, Debug, Default)]
pub struct IpsRecord {
    pub time: Option<DateTime<Utc>>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub speed_kmh: Option<f64>,
    pub course: Option<f64>,
    pub altitude: Option<f64>,
    pub satellites: Option<u16>,
    pub hdop: Option<f64>,
    pub inputs: Option<u32>,
    pub outputs: Option<u32>,
    pub adc: Vec<f64>,
    pub ibutton: Option<String>,
    pub params: Vec<(String, ParamValue)>,
}

fn na<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "NA".into())
}

fn coord(v: Option<f64>, deg_width: usize, pos: char, neg: char) -> String {
    match v {
        None => "NA;NA".into(),
        Some(v) => {
            let a = v.abs();
            let deg = a.trunc();
            let min = (a - deg) * 60.0;
            let hemi = if v < 0.0 { neg } else { pos };
            format!("{:0dw$}{:08.5};{hemi}", deg as u32, min, dw = deg_width)
        }
    }
}

fn short_fields(r: &IpsRecord) -> String {
    let (date, time) = match r.time {
        Some(t) => (
            t.format("%d%m%y").to_string(),
            t.format("%H%M%S").to_string(),
        ),
        None => ("NA".into(), "NA".into()),
    };
    format!(
        "{date};{time};{};{};{};{};{};{}",
        coord(r.lat, 2, 'N', 'S'),
        coord(r.lon, 3, 'E', 'W'),
        na(r.speed_kmh),
        na(r.course),
        na(r.altitude),
        na(r.satellites)
    )
}

fn extended_fields(r: &IpsRecord) -> String {
    let adc = if r.adc.is_empty() {
        "NA".to_string()
    } else {
        r.adc
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let params = if r.params.is_empty() {
        "NA".to_string()
    } else {
        r.params
            .iter()
            .map(|(n, v)| match v {
                ParamValue::Int(i) => format!("{n}:1:{i}"),
                ParamValue::Double(d) => format!("{n}:2:{d}"),
                ParamValue::Text(t) => format!("{n}:3:{t}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{};{};{};{};{adc};{};{params}",
        short_fields(r),
        na(r.hdop),
        na(r.inputs),
        na(r.outputs),
        na(r.ibutton.as_deref())
    )
}

/// An extended data packet `#D#…`, as a device sends it.
pub fn encode_data(r: &IpsRecord, v2: bool) -> Bytes {
    Bytes::from(packet("D", &extended_fields(r), v2))
}

/// A short data packet `#SD#…`, as a device sends it.
pub fn encode_short_data(r: &IpsRecord, v2: bool) -> Bytes {
    Bytes::from(packet("SD", &short_fields(r), v2))
}

/// A black box packet of extended messages `#B#m1|m2|…` (2.0: `|CRC` after the last one).
pub fn encode_black_box(records: &[IpsRecord], v2: bool) -> Bytes {
    let body = records
        .iter()
        .map(extended_fields)
        .collect::<Vec<_>>()
        .join("|");
    Bytes::from(if v2 {
        let data = format!("{body}|");
        let crc = CRC16_IBM.checksum(data.as_bytes());
        format!("#B#{data}{crc:04X}\r\n")
    } else {
        format!("#B#{body}\r\n")
    })
}

/// The same packet as a UDP datagram: `imei#…` (1.1) or `2.0;imei#…` (2.0).
pub fn udp_datagram(imei: &str, packet: &[u8], v2: bool) -> Bytes {
    let mut out = Vec::with_capacity(packet.len() + imei.len() + 4);
    if v2 {
        out.extend_from_slice(b"2.0;");
    }
    out.extend_from_slice(imei.as_bytes());
    out.extend_from_slice(packet);
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
