//! Meitrack trackers (MVT100/340/380/600/800, T1/T3/T333/T366, MT90, P66…) over TCP and UDP.
//!
//! Device messages: `$$ | flag | length | ,IMEI,TYPE,data | *XX | \r\n`. The flag is one
//! character (`A`..`z`) the server echoes in an answer; the length is decimal and counts
//! from the comma after it up to and including the CR LF; `XX` is the hex sum (mod 256) of
//! every byte from `$$` up to and including `*`. `AAA` (and the cached variant `AFF`) is the
//! text event report; `CCC` and `CCE` carry buffered records in binary (little-endian).
//! Server commands: `@@ | flag | length | ,IMEI,COMMAND,params | *XX\r\n`, answered by the
//! device with `$$…,IMEI,COMMAND,result*XX\r\n`.
//! Notes in our own words and the real packets: `protocols/meitrack/`.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::util::{from_secs, utc, Reader};
use super::{
    CommandBody, CommandError, CommandResponse, DecodeCtx, DecodeError, Decoded, DeviceCommand,
    FrameCut, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{AttrKey, AttrValue, Attributes, DeviceId, Position};
use crate::protocols::{DecodeReason, MessageKind};

const NAME: &str = "meitrack";
/// CCE batches reach about 1.1 KiB and photo chunks (D00) about 1 KiB; 16 KiB is ample.
pub const MAX_FRAME: usize = 16_384;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5020,
    transports: &[Transport::Tcp, Transport::Udp],
    max_frame: MAX_FRAME,
    session: |t| Box::new(MeitrackSession::new(t)),
};

/// Engine block: output control `C01`, speed threshold 0, output A (1) on, B..E unchanged (2).
pub const ENGINE_STOP: &str = "C01,0,12222";
/// Engine unblock: output A off, others unchanged.
pub const ENGINE_RESUME: &str = "C01,0,02222";

/// Seconds from the Unix epoch to 2000-01-01, the epoch of the binary records.
const EPOCH_2000: i64 = 946_684_800;

/// Meitrack protocol state of one connection or UDP peer.
pub struct MeitrackSession {
    transport: Transport,
    imei: Option<DeviceId>,
}

impl MeitrackSession {
    pub fn new(transport: Transport) -> Self {
        MeitrackSession {
            transport,
            imei: None,
        }
    }
}

impl Session for MeitrackSession {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        next_frame(buf)
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let d = decode(frame, ctx)?;
        if let Some(id) = &d.device {
            self.imei = Some(id.clone());
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let _ = self.transport;
        let imei = self
            .imei
            .as_ref()
            .ok_or(CommandError::NotIdentified(NAME))?;
        let content = match &cmd.body {
            CommandBody::EngineStop => ENGINE_STOP,
            CommandBody::EngineResume => ENGINE_RESUME,
            CommandBody::Text(t) => t.as_str(),
        };
        Ok(encode_command(
            flag_for_seq(cmd.seq),
            imei.as_str(),
            content,
        ))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Meitrack
    }
}

/// The command flag for a sequence number: `A`..`Z`, `a`..`z`, cycling.
pub fn flag_for_seq(seq: u32) -> u8 {
    let i = (seq % 52) as u8;
    if i < 26 {
        b'A' + i
    } else {
        b'a' + (i - 26)
    }
}

/// Sum of the bytes mod 256, the checksum of both directions.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `*XX` at `star` with XX equal to the sum of everything before it (including the `*`).
fn checksum_ok(buf: &[u8], star: usize) -> bool {
    match (buf.get(star), buf.get(star + 1), buf.get(star + 2)) {
        (Some(b'*'), Some(&h), Some(&l)) => match (hex_digit(h), hex_digit(l)) {
            (Some(h), Some(l)) => buf.get(..=star).map(checksum) == Some(h << 4 | l),
            _ => false,
        },
        _ => false,
    }
}

/// `*` and two hex digits at `star`.
fn star_at(buf: &[u8], star: usize) -> bool {
    matches!(
        (
            buf.get(star),
            buf.get(star + 1).copied().and_then(hex_digit),
            buf.get(star + 2).copied().and_then(hex_digit)
        ),
        (Some(b'*'), Some(_), Some(_))
    )
}

/// Where the header `$$F<digits>,` ends: (index of the comma, declared length).
fn parse_header(buf: &[u8], marker: &[u8; 2]) -> Result<Option<(usize, usize)>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    if &buf[..2] != marker {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            "no $$ marker",
        ));
    }
    let mut len = 0usize;
    for (i, &c) in buf.iter().enumerate().skip(3) {
        match c {
            b',' if i > 3 => return Ok(Some((i, len))),
            b'0'..=b'9' if i < 9 => len = len * 10 + usize::from(c - b'0'),
            _ => {
                return Err(DecodeError::new(
                    NAME,
                    DecodeReason::Framing,
                    i,
                    "bad length digits",
                ))
            }
        }
    }
    Ok(None)
}

/// Binary message types: their frame can only be cut by the declared length.
fn is_binary(buf: &[u8], comma: usize) -> bool {
    // ,IMEI,TYPE, — the type follows the second comma.
    let Some(rest) = buf.get(comma + 1..) else {
        return false;
    };
    let Some(second) = rest.iter().position(|&c| c == b',') else {
        return false;
    };
    matches!(
        rest.get(second + 1..second + 4),
        Some(b"CCC" | b"CCE" | b"D00")
    )
}

fn next_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    if buf.is_empty() {
        return Ok(FrameCut::NeedMore);
    }
    // Line ends left over from a frame cut at its checksum, or noise: skip to the next `$$`.
    if buf.first() != Some(&b'$') || buf.get(1).is_some_and(|&c| c != b'$') {
        let skip = buf
            .iter()
            .skip(1)
            .position(|&c| c == b'$')
            .map_or(buf.len(), |p| p + 1);
        return Ok(FrameCut::Skip(skip.max(1)));
    }
    let Some((comma, len)) = parse_header(buf, b"$$")? else {
        return Ok(FrameCut::NeedMore);
    };
    let total = comma + len;
    if total > MAX_FRAME {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::TooLarge,
            3,
            format!("length {len} over {MAX_FRAME}"),
        ));
    }
    if total < comma + 5 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            3,
            format!("length {len} too short"),
        ));
    }
    let binary = is_binary(buf, comma);
    // A text frame never holds `$$`: one inside the declared span is the next frame, and this
    // one lost bytes (or miscounted). It ends there at the latest, so that the next frame is
    // not swallowed with it.
    let next_start = if binary {
        None
    } else {
        buf[comma..]
            .windows(2)
            .position(|w| w == b"$$")
            .map(|p| comma + p)
    };
    let fits = !matches!(next_start, Some(n) if n < total);
    // The declared length, when it lands on `*XX\r\n` (or on `*XX` at the end of what we have:
    // the line end is then skipped as the next frame's noise).
    // A bad checksum there is still this frame: decode reports it.
    if fits && buf.len() >= total && star_at(buf, total - 5) && &buf[total - 2..total] == b"\r\n" {
        return Ok(FrameCut::Frame(total));
    }
    if fits && buf.len() == total - 2 && star_at(buf, total - 5) {
        return Ok(FrameCut::Frame(total - 2));
    }
    if binary {
        return Ok(if buf.len() >= total {
            FrameCut::Frame(total)
        } else {
            FrameCut::NeedMore
        });
    }
    // Text message whose declared length is off (some firmwares miscount): the frame ends
    // at the first `*XX` whose checksum matches, followed by CR LF or by the end of input.
    let scan_end = buf
        .len()
        .min(total + 16)
        .min(next_start.unwrap_or(usize::MAX));
    for star in comma..scan_end.saturating_sub(2) {
        if buf[star] == b'*' && checksum_ok(buf, star) {
            let end = star + 3;
            return Ok(match buf.get(end..end + 2) {
                Some(b"\r\n") => FrameCut::Frame(end + 2),
                None if buf.len() == end => FrameCut::Frame(end),
                Some(_) => FrameCut::Frame(end),
                None => FrameCut::NeedMore,
            });
        }
    }
    if let Some(n) = next_start {
        // Nothing checks out before the next frame: this span fails alone (decode reports
        // it), and framing resynchronises at that `$$`.
        return Ok(FrameCut::Frame(n));
    }
    if buf.len() >= total + 16 {
        // Nothing checks out: hand over the declared length; decode reports the checksum.
        return Ok(FrameCut::Frame(total));
    }
    Ok(FrameCut::NeedMore)
}

/// Decode one `$$` frame (with or without its CR LF).
pub fn decode(frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let body = frame.strip_suffix(b"\r\n").unwrap_or(frame);
    let Some((comma, _len)) = parse_header(body, b"$$")? else {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            body.len(),
            "header",
        ));
    };
    let flag = body[2];
    if body.len() < comma + 4 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Truncated,
            body.len(),
            "checksum",
        ));
    }
    let star = body.len() - 3;
    if body[star] != b'*' {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            star,
            "no *XX checksum at the end",
        ));
    }
    if !checksum_ok(body, star) {
        let sent = String::from_utf8_lossy(&body[star + 1..]).into_owned();
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Crc,
            star + 1,
            format!("checksum {sent}, computed {:02X}", checksum(&body[..=star])),
        ));
    }
    // ,IMEI,TYPE,data
    let content = &body[comma + 1..star];
    let imei_end = content.iter().position(|&c| c == b',').ok_or_else(|| {
        DecodeError::new(
            NAME,
            DecodeReason::Framing,
            comma + 1,
            "no comma after IMEI",
        )
    })?;
    let imei = &content[..imei_end];
    if imei.is_empty() || !imei.iter().all(u8::is_ascii_alphanumeric) {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::BadIdentity,
            comma + 1,
            "IMEI is not alphanumeric",
        ));
    }
    let imei = String::from_utf8_lossy(imei).into_owned();
    let after = &content[imei_end + 1..];
    let type_end = after.iter().position(|&c| c == b',').unwrap_or(after.len());
    let kind = &after[..type_end];
    let data = after.get(type_end + 1..).unwrap_or_default();
    let data_offset = comma + 1 + imei_end + 1 + type_end + 1;

    let mut d = match kind {
        b"CCC" => decode_ccc(data, data_offset, flag, &imei)?,
        b"CCE" => decode_cce(data, data_offset, ctx)?,
        b"AAC" => {
            // The device asks for a confirmation of its connection.
            let mut d = Decoded::kind(MessageKind::Heartbeat);
            d.reply = Some(encode_frame(b"@@", flag, &imei, "AAC,1"));
            d
        }
        // Photo chunks: not stored by the fleet.
        b"D00" => Decoded::kind(MessageKind::Other),
        b"AAA" | b"AFF" => decode_text_report(data, data_offset)?,
        _ => match decode_text_report(data, data_offset) {
            // Some command answers (A10 position query) are reports in the AAA layout.
            Ok(d) if !d.positions.is_empty() => d,
            _ => command_answer(kind, data),
        },
    };
    d.device = Some(DeviceId::new(imei));
    Ok(d)
}

/// The device's answer to a command: `TYPE,result` as text.
fn command_answer(kind: &[u8], data: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    let printable = data.iter().all(|c| c.is_ascii_graphic() || *c == b' ');
    let result = if printable {
        String::from_utf8_lossy(data).into_owned()
    } else {
        hex::encode(data)
    };
    let lower = result.to_ascii_lowercase();
    let success = if lower == "ok" || lower == "1" || lower.starts_with("ok,") {
        Some(true)
    } else if lower.contains("error") || lower.contains("fail") {
        Some(false)
    } else {
        None
    };
    let text = if result.is_empty() {
        String::from_utf8_lossy(kind).into_owned()
    } else {
        format!("{},{result}", String::from_utf8_lossy(kind))
    };
    d.command_response = Some(CommandResponse {
        text,
        success,
        seq: None,
    });
    d
}

fn alarm_for_event(event: u32) -> Option<&'static str> {
    Some(match event {
        1 => "sos",
        17 => "low_battery",
        18 => "low_power",
        19 => "overspeed",
        20 => "geofence_enter",
        21 => "geofence_exit",
        22 => "power_restored",
        23 => "power_cut",
        36 => "tow",
        44 => "jamming",
        78 => "accident",
        90 | 91 => "hard_cornering",
        129 => "hard_braking",
        130 => "hard_acceleration",
        135 => "fatigue_driving",
        _ => return None,
    })
}

fn field_err(offset: usize, what: &str) -> DecodeError {
    DecodeError::new(NAME, DecodeReason::BadField, offset, what.to_string())
}

/// `yymmddHHMMSS`, UTC.
fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if s.len() != 12 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| s.get(i..i + 2).and_then(|v| v.parse::<u32>().ok());
    utc(2000 + n(0)? as i32, n(2)?, n(4)?, n(6)?, n(8)?, n(10)?)
}

/// The text report (`AAA`, `AFF`): event, fix, GSM, odometer, cell, IO, analog, extras.
fn decode_text_report(data: &[u8], offset: usize) -> Result<Decoded, DecodeError> {
    let text = std::str::from_utf8(data).map_err(|_| field_err(offset, "report is not ASCII"))?;
    let all: Vec<&str> = text.split(',').collect();
    // `AFF` (and some firmwares) put one more number before the event code.
    let f: &[&str] = if all.get(1).is_some_and(|s| !s.contains('.')) && all.len() > 2 {
        &all[1..]
    } else {
        &all[..]
    };
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    let event: u32 = get(0)
        .parse()
        .map_err(|_| field_err(offset, "event code"))?;
    let lat: f64 = get(1).parse().map_err(|_| field_err(offset, "latitude"))?;
    let lon: f64 = get(2).parse().map_err(|_| field_err(offset, "longitude"))?;
    if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
        return Err(field_err(offset, "coordinates out of range"));
    }
    let time = parse_datetime(get(3)).ok_or_else(|| field_err(offset, "date and time"))?;
    let valid = match get(4) {
        "A" => true,
        "V" => false,
        _ => return Err(field_err(offset, "validity flag")),
    };
    let mut p = Position::new(time, valid, lat, lon);
    p.attrs.int("event", i64::from(event));
    p.alarm = alarm_for_event(event);
    p.satellites = get(5).parse().ok();
    if let Ok(v) = get(6).parse::<i64>() {
        p.attrs.int("rssi", v);
    }
    p.speed_kmh = get(7).parse().unwrap_or(0.0);
    p.course = get(8).parse().unwrap_or(0.0);
    if let Ok(v) = get(9).parse::<f64>() {
        p.attrs.float("hdop", v);
    }
    p.altitude = get(10).parse().unwrap_or(0.0);
    p.odometer_m = get(11).parse::<f64>().ok();
    if let Ok(v) = get(12).parse::<i64>() {
        p.attrs.int("runtime_s", v);
    }
    let cell: Vec<&str> = get(13).split('|').collect();
    if let [mcc, mnc, lac, cid] = cell[..] {
        if let (Ok(mcc), Ok(mnc)) = (mcc.parse::<i64>(), mnc.parse::<i64>()) {
            if mcc != 0 {
                p.attrs.int("mcc", mcc);
                p.attrs.int("mnc", mnc);
                if let Ok(v) = i64::from_str_radix(lac, 16) {
                    p.attrs.int("lac", v);
                }
                if let Ok(v) = i64::from_str_radix(cid, 16) {
                    p.attrs.int("cell_id", v);
                }
            }
        }
    }
    let io = get(14);
    if io.len() == 4 {
        p.inputs = u32::from_str_radix(&io[..2], 16).ok();
        p.outputs = u32::from_str_radix(&io[2..], 16).ok();
    }
    let analog: Vec<&str> = get(15).split('|').collect();
    if analog.len() >= 5 && analog.iter().any(|a| a.contains('.')) {
        // Newer firmwares: battery|external|RTC|MCU|GPS voltages in volts.
        p.attrs.float("battery_v", analog[0].parse().unwrap_or(0.0));
        p.power_v = analog[1].parse().ok();
    } else if analog.len() == 5 {
        // Older firmwares: AD1|AD2|AD3|battery|external as raw ADC hex; the scale depends on
        // the model, so the raw values are kept.
        for (i, key) in ["adc1", "adc2", "adc3", "battery_raw", "power_raw"]
            .iter()
            .enumerate()
        {
            if let Ok(v) = i64::from_str_radix(analog[i], 16) {
                p.attrs.int(key, v);
            }
        }
    }
    let extra = get(16);
    if !extra.is_empty() {
        let key = if event == 37 {
            "driver_id"
        } else {
            "event_data"
        };
        p.attrs.text(key, extra);
    }
    let mut d = Decoded::kind(if p.alarm.is_some() {
        MessageKind::Alarm
    } else {
        MessageKind::Data
    });
    d.positions.push(p);
    Ok(d)
}

/// `CCC`: u16 version, u16 record size, u32 records still cached, then fixed-size records.
/// Answered with `@@F<len>,IMEI,CCC,<count>*XX\r\n` so the device deletes them.
fn decode_ccc(data: &[u8], offset: usize, flag: u8, imei: &str) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, data);
    let _version = r.u16_le("protocol version").map_err(|e| shift(e, offset))?;
    let size = usize::from(r.u16_le("record size").map_err(|e| shift(e, offset))?);
    let _cached = r.u32_le("cached records").map_err(|e| shift(e, offset))?;
    if size < 52 {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Unsupported,
            offset + 2,
            format!("record size {size}"),
        ));
    }
    let mut d = Decoded::kind(MessageKind::Data);
    let mut count = 0u32;
    while r.remaining() >= size {
        let rec = r.take(size, "record")?;
        let base = offset + r.pos() - size;
        let mut rr = Reader::new(NAME, rec);
        let p = decode_ccc_record(&mut rr).map_err(|e| shift(e, base))?;
        d.positions.push(p);
        count += 1;
    }
    d.reply = Some(encode_frame(b"@@", flag, imei, &format!("CCC,{count}")));
    Ok(d)
}

fn shift(mut e: DecodeError, by: usize) -> DecodeError {
    e.offset += by;
    e
}

fn decode_ccc_record(r: &mut Reader<'_>) -> Result<Position, DecodeError> {
    let event = r.u8("event")?;
    let lat = f64::from(r.i32_le("latitude")?) / 1e6;
    let lon = f64::from(r.i32_le("longitude")?) / 1e6;
    let secs = r.u32_le("time")?;
    let time = from_secs(EPOCH_2000 + i64::from(secs))
        .ok_or_else(|| r.error(DecodeReason::BadTime, "time"))?;
    let valid = r.u8("fix flag")? == 1;
    let sats = r.u8("satellites")?;
    let rssi = r.u8("GSM signal")?;
    let speed = r.u16_le("speed")?;
    let course = r.u16_le("course")?;
    let hdop = r.u16_le("HDOP")?;
    let altitude = r.u16_le("altitude")?;
    let odometer = r.u32_le("odometer")?;
    let runtime = r.u32_le("runtime")?;
    let mcc = r.u16_le("MCC")?;
    let mnc = r.u16_le("MNC")?;
    let lac = r.u16_le("LAC")?;
    let cid = r.u16_le("cell id")?;
    let status = r.u16_le("IO status")?;
    let adc1 = r.u16_le("AD1")?;
    let battery = r.u16_le("battery")?;
    let power = r.u16_le("external power")?;
    let _geofence = r.u32_le("geofence")?;

    let mut p = Position::new(time, valid, lat, lon);
    p.speed_kmh = f64::from(speed);
    p.course = f64::from(course);
    p.altitude = f64::from(altitude);
    p.satellites = Some(u16::from(sats));
    p.odometer_m = Some(f64::from(odometer));
    p.alarm = alarm_for_event(u32::from(event));
    p.attrs.int("event", i64::from(event));
    p.attrs.int("rssi", i64::from(rssi));
    p.attrs.float("hdop", f64::from(hdop) / 10.0);
    p.attrs.int("runtime_s", i64::from(runtime));
    if mcc != 0 {
        p.attrs.int("mcc", i64::from(mcc));
        p.attrs.int("mnc", i64::from(mnc));
        p.attrs.int("lac", i64::from(lac));
        p.attrs.int("cell_id", i64::from(cid));
    }
    p.attrs.int("io_status", i64::from(status));
    p.attrs.int("adc1", i64::from(adc1));
    p.attrs.float("battery_v", f64::from(battery) / 100.0);
    p.attrs.int("power_raw", i64::from(power));
    Ok(p)
}

/// `CCE`: u32 records still cached, u16 count, then per record u16 length, u16 index and
/// four groups of (id, value) with 1-, 2-, 4-byte and length-prefixed values. Ids are one
/// byte, or two when the first is 0xFE.
fn decode_cce(data: &[u8], offset: usize, ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, data);
    let res = (|| {
        let _cached = r.u32_le("cached records")?;
        let count = r.u16_le("record count")?;
        let mut d = Decoded::kind(MessageKind::Data);
        let mut status: Option<Attributes> = None;
        for _ in 0..count {
            let len = usize::from(r.u16_le("record length")?);
            let rec = r.take(len, "record")?;
            let mut rr = Reader::new(NAME, rec);
            match decode_cce_record(&mut rr, ctx) {
                Ok(CceRecord::Fix(p)) => d.positions.push(p),
                Ok(CceRecord::State(a)) => status = Some(a),
                Err(e) => {
                    let base = r.pos() - len;
                    return Err(shift(e, base));
                }
            }
        }
        d.status = status;
        Ok(d)
    })();
    res.map_err(|e| shift(e, offset))
}

enum CceRecord {
    Fix(Position),
    State(Attributes),
}

fn cce_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    let first = r.u8("parameter id")?;
    if first == 0xFE {
        Ok(0xFE00 | u16::from(r.u8("parameter id")?))
    } else {
        Ok(u16::from(first))
    }
}

fn decode_cce_record(r: &mut Reader<'_>, ctx: &DecodeCtx) -> Result<CceRecord, DecodeError> {
    let _index = r.u16_le("record index")?;
    let mut p = Position::new(ctx.now, false, 0.0, 0.0);
    let (mut has_lat, mut has_lon, mut has_time) = (false, false, false);
    let n = r.u8("1-byte count")?;
    for _ in 0..n {
        let id = cce_id(r)?;
        let v = r.u8("1-byte value")?;
        match id {
            0x01 => {
                p.attrs.int("event", i64::from(v));
                p.alarm = alarm_for_event(u32::from(v));
            }
            0x05 => p.valid = v > 0,
            0x06 => p.satellites = Some(u16::from(v)),
            0x07 => p.attrs.int("rssi", i64::from(v)),
            0x14 => p.outputs = Some(u32::from(v)),
            0x15 => p.inputs = Some(u32::from(v)),
            0xFE69 => p.attrs.int("battery_level", i64::from(v)),
            _ => p.attrs.io_int(u32::from(id), i64::from(v)),
        }
    }
    let n = r.u8("2-byte count")?;
    for _ in 0..n {
        let id = cce_id(r)?;
        let raw = r.u16_le("2-byte value")?;
        match id {
            0x08 => p.speed_kmh = f64::from(raw),
            0x09 => p.course = f64::from(raw),
            0x0A => p.attrs.float("hdop", f64::from(raw) / 10.0),
            0x0B => p.altitude = f64::from(raw as i16),
            0x16 => p.attrs.float("adc1_v", f64::from(raw) / 100.0),
            0x17 => p.attrs.float("adc2_v", f64::from(raw) / 100.0),
            0x19 => p.attrs.float("battery_v", f64::from(raw) / 100.0),
            0x1A => p.power_v = Some(f64::from(raw) / 100.0),
            0x40 => {
                p.attrs.int("event", i64::from(raw));
                p.alarm = p.alarm.or(alarm_for_event(u32::from(raw)));
            }
            _ => p.attrs.io_int(u32::from(id), i64::from(raw)),
        }
    }
    let n = r.u8("4-byte count")?;
    for _ in 0..n {
        let id = cce_id(r)?;
        let raw = r.u32_le("4-byte value")?;
        match id {
            0x02 => {
                p.lat = f64::from(raw as i32) / 1e6;
                has_lat = true;
            }
            0x03 => {
                p.lon = f64::from(raw as i32) / 1e6;
                has_lon = true;
            }
            0x04 => {
                p.fix_time = from_secs(EPOCH_2000 + i64::from(raw))
                    .ok_or_else(|| r.error(DecodeReason::BadTime, "time"))?;
                has_time = true;
            }
            0x0C => p.odometer_m = Some(f64::from(raw)),
            0x0D => p.attrs.int("runtime_s", i64::from(raw)),
            0x25 => p.attrs.text("driver_id", raw.to_string()),
            _ => p.attrs.io_int(u32::from(id), i64::from(raw)),
        }
    }
    let n = r.u8("N-byte count")?;
    for _ in 0..n {
        let id = cce_id(r)?;
        let len = usize::from(r.u8("N-byte length")?);
        let value = r.take(len, "N-byte value")?;
        p.attrs
            .push(AttrKey::Io(u32::from(id)), AttrValue::Bytes(value.into()));
    }
    if has_lat && has_lon && has_time {
        Ok(CceRecord::Fix(p))
    } else {
        let mut a = p.attrs;
        if has_time {
            a.int("time", p.fix_time.timestamp());
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
        Ok(CceRecord::State(a))
    }
}

/// `MM F <len> ,IMEI,content *XX\r\n` with the length and checksum filled in (`MM` is `@@`
/// for server commands, `$$` for device messages).
pub fn encode_frame(marker: &[u8; 2], flag: u8, imei: &str, content: &str) -> Bytes {
    // From the comma after the length to the end: ",IMEI," + content + "*XX\r\n".
    let len = 1 + imei.len() + 1 + content.len() + 5;
    let mut s = Vec::with_capacity(len + 8);
    s.extend_from_slice(marker);
    s.push(flag);
    s.extend_from_slice(format!("{len:02},{imei},{content}*").as_bytes());
    let sum = checksum(&s);
    s.extend_from_slice(format!("{sum:02X}\r\n").as_bytes());
    Bytes::from(s)
}

/// A server command: `@@F<len>,IMEI,COMMAND,params*XX\r\n`.
pub fn encode_command(flag: u8, imei: &str, content: &str) -> Bytes {
    encode_frame(b"@@", flag, imei, content)
}

/// One report for [`encode_aaa`].
#[derive(Clone, Debug)]
pub struct Report {
    pub event: u32,
    pub time: DateTime<Utc>,
    pub valid: bool,
    pub lat: f64,
    pub lon: f64,
    pub satellites: u8,
    pub speed_kmh: u32,
    pub course: u32,
    pub altitude: i32,
    pub odometer_m: u64,
    pub inputs: u8,
    pub outputs: u8,
    pub power_v: f64,
}

/// An `AAA` event report as a device sends it (newer firmware analog layout in volts).
pub fn encode_aaa(flag: u8, imei: &str, rep: &Report) -> Bytes {
    let content = format!(
        "AAA,{},{:.6},{:.6},{},{},{},20,{},{},1.0,{},{},3600,250|2|1A2B|3C4D,{:02X}{:02X},4.10|{:.2}|3.30|3.30|3.30,",
        rep.event,
        rep.lat,
        rep.lon,
        rep.time.format("%y%m%d%H%M%S"),
        if rep.valid { "A" } else { "V" },
        rep.satellites,
        rep.speed_kmh,
        rep.course,
        rep.altitude,
        rep.odometer_m,
        rep.inputs,
        rep.outputs,
        rep.power_v,
    );
    encode_frame(b"$$", flag, imei, &content)
}

/// A `CCC` packet of buffered records in the binary layout `decode_ccc` reads (protocol
/// version 0x0102, 52-byte records, nothing more cached), as a device sends it.
pub fn encode_ccc(flag: u8, imei: &str, reports: &[Report]) -> Bytes {
    let mut data = Vec::with_capacity(8 + reports.len() * 52);
    data.extend_from_slice(&0x0102u16.to_le_bytes());
    data.extend_from_slice(&52u16.to_le_bytes());
    data.extend_from_slice(&0u32.to_le_bytes());
    for rep in reports {
        data.push(rep.event as u8);
        data.extend_from_slice(&((rep.lat * 1e6).round() as i32).to_le_bytes());
        data.extend_from_slice(&((rep.lon * 1e6).round() as i32).to_le_bytes());
        let secs = (rep.time.timestamp() - EPOCH_2000).clamp(0, i64::from(u32::MAX)) as u32;
        data.extend_from_slice(&secs.to_le_bytes());
        data.push(u8::from(rep.valid));
        data.push(rep.satellites);
        data.push(20); // GSM signal
        data.extend_from_slice(&(rep.speed_kmh.min(0xFFFF) as u16).to_le_bytes());
        data.extend_from_slice(&(rep.course.min(359) as u16).to_le_bytes());
        data.extend_from_slice(&10u16.to_le_bytes()); // HDOP 1.0
        data.extend_from_slice(&(rep.altitude.clamp(0, 0xFFFF) as u16).to_le_bytes());
        data.extend_from_slice(&(rep.odometer_m.min(u64::from(u32::MAX)) as u32).to_le_bytes());
        data.extend_from_slice(&3600u32.to_le_bytes()); // runtime
        for v in [250u16, 2, 0x1A2B, 0x3C4D] {
            data.extend_from_slice(&v.to_le_bytes()); // MCC, MNC, LAC, cell id
        }
        let io = u16::from(rep.inputs) | u16::from(rep.outputs) << 8;
        data.extend_from_slice(&io.to_le_bytes());
        data.extend_from_slice(&0u16.to_le_bytes()); // AD1
        data.extend_from_slice(&410u16.to_le_bytes()); // battery, 0.01 V
        let power = (rep.power_v * 100.0).round().clamp(0.0, 65_535.0) as u16;
        data.extend_from_slice(&power.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes()); // geofence
    }
    // From the comma after the length to the end: ",IMEI,CCC," + data + "*XX\r\n".
    let len = 1 + imei.len() + 5 + data.len() + 5;
    let mut s = Vec::with_capacity(len + 8);
    s.extend_from_slice(b"$$");
    s.push(flag);
    s.extend_from_slice(format!("{len:02},{imei},CCC,").as_bytes());
    s.extend_from_slice(&data);
    s.push(b'*');
    let sum = checksum(&s);
    s.extend_from_slice(format!("{sum:02X}\r\n").as_bytes());
    Bytes::from(s)
}

#[cfg(test)]
mod tests;
