//! GPS103 / Coban TK103 (TK102B, TK103A/B, TK104, TK106 and clones): comma separated text
//! sentences over TCP and UDP.
//!
//! Device → server: login `##,imei:<IMEI>,A;` (answered `LOAD`), heartbeat `<IMEI>;` (answered
//! `ON`), reports `imei:<IMEI>,<keyword>,<local yymmddhhmm[ss]>,<phone/rfid>,F|L,...;`.
//! `F` carries a fix (`hhmmss.sss` UTC, `A|V`, `ddmm.mmmm,N|S`, `dddmm.mmmm,E|W`, knots,
//! course, then optional altitude, ignition, door, fuel %, temperature); `L` a cell (lac, cid in
//! hex) without one. `OBD` reports carry engine data; a variant ends in `*` with decimal
//! degrees and km/h. Sentences end in `;`, CR LF, LF or `*` (the delimiter is kept in the frame).
//! Commands `**,imei:<IMEI>,<letter>[,params]`: `J` cuts the fuel/engine, `K` restores it.
//! Notes in our own words and the real packets: `protocols/gps103/`.

use bytes::Bytes;
use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::util::utc;
use super::{
    CommandBody, CommandError, DecodeCtx, DecodeError, DecodeReason, Decoded, DeviceCommand,
    FrameCut, MessageKind, Protocol, ProtocolSpec, Session, Transport,
};
use crate::model::{Attributes, DeviceId, Position, KNOTS_TO_KMH};

const NAME: &str = "gps103";
/// Largest frame accepted: reports are under 200 bytes; a camera model's `vr` photo chunk is
/// about 1 KB of hex.
pub const MAX_FRAME: usize = 4096;

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5001,
    transports: &[Transport::Tcp, Transport::Udp],
    max_frame: MAX_FRAME,
    session: |t| Box::new(Gps103Session::new(t)),
};

/// GPS103 protocol state of one connection or UDP peer.
pub struct Gps103Session {
    transport: Transport,
    imei: Option<String>,
}

impl Gps103Session {
    pub fn new(transport: Transport) -> Self {
        Gps103Session {
            transport,
            imei: None,
        }
    }
}

impl Session for Gps103Session {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        match self.transport {
            Transport::Udp if buf.is_empty() => Ok(FrameCut::NeedMore),
            // Cut as on TCP; the end of the datagram ends the last sentence.
            Transport::Udp => match tcp_frame(buf)? {
                FrameCut::NeedMore => Ok(FrameCut::Frame(buf.len())),
                cut => Ok(cut),
            },
            Transport::Tcp => tcp_frame(buf),
        }
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let text = std::str::from_utf8(frame).map_err(|e| {
            DecodeError::new(
                NAME,
                DecodeReason::Encoding,
                e.valid_up_to(),
                "sentence is not ASCII",
            )
        })?;
        let mut d = decode_sentence(text, ctx)?;
        match &d.device {
            Some(id) => self.imei = Some(id.0.clone()),
            None => d.device = self.imei.clone().map(DeviceId),
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let imei = self
            .imei
            .as_deref()
            .ok_or(CommandError::NotIdentified(NAME))?;
        Ok(encode_command(imei, &cmd.body))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Gps103
    }
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b';' | b'\n' | b'*')
}

/// Cut at the first delimiter (taken with the frame, with a CR/LF after it). A device that
/// omits the delimiter is cut where its next message starts (`imei:`, `##,`); a heartbeat
/// (bare IMEI) glued to the next report is cut before `imei:`.
fn tcp_frame(buf: &[u8]) -> Result<FrameCut, DecodeError> {
    let lead = buf
        .iter()
        .take_while(|&&b| matches!(b, b'\r' | b'\n' | b' ' | b'\0'))
        .count();
    if lead > 0 {
        return Ok(FrameCut::Skip(lead));
    }
    if buf.is_empty() {
        return Ok(FrameCut::NeedMore);
    }
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 && buf[digits..].starts_with(b"imei:") {
        return Ok(FrameCut::Frame(digits));
    }
    let delimiter = buf.iter().position(|&b| is_delimiter(b));
    let own = find(buf, b"imei:");
    let next = own.and_then(|i| find(&buf[i + 5..], b"imei:").map(|j| i + 5 + j));
    let next_start = next.map(|n| {
        if n >= 3 && &buf[n - 3..n] == b"##," {
            n - 3
        } else {
            n
        }
    });
    match (delimiter, next_start) {
        (Some(d), n) if n.map_or(true, |n| d < n) => {
            if d >= MAX_FRAME {
                return Err(too_large());
            }
            let mut len = d + 1;
            while matches!(buf.get(len), Some(b'\r' | b'\n')) {
                len += 1;
            }
            Ok(FrameCut::Frame(len))
        }
        (_, Some(n)) if n > 0 => Ok(FrameCut::Frame(n.min(MAX_FRAME))),
        _ if buf.len() >= MAX_FRAME => Err(too_large()),
        _ => Ok(FrameCut::NeedMore),
    }
}

fn too_large() -> DecodeError {
    DecodeError::new(
        NAME,
        DecodeReason::TooLarge,
        0,
        format!("no delimiter within {MAX_FRAME} bytes"),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn imei_of(field: &str) -> Option<&str> {
    let id = field.trim().strip_prefix("imei:")?;
    (!id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

fn decode_sentence(text: &str, ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let body = text.trim_end_matches([';', '\r', '\n', ' ', '\0']);
    if let Some(rest) = body.strip_prefix("##,") {
        // Log-on request `##,imei:<IMEI>,A`.
        let id = rest.split(',').next().and_then(imei_of).ok_or_else(|| {
            DecodeError::new(
                NAME,
                DecodeReason::Framing,
                3,
                "log-on request without an IMEI",
            )
        })?;
        let mut d = Decoded::kind(MessageKind::Login);
        d.device = Some(DeviceId::new(id));
        d.reply = Some(Bytes::from_static(b"LOAD"));
        return Ok(d);
    }
    if !body.is_empty() && body.len() <= 20 && body.bytes().all(|b| b.is_ascii_digit()) {
        let mut d = Decoded::kind(MessageKind::Heartbeat);
        d.device = Some(DeviceId::new(body));
        d.reply = Some(Bytes::from_static(b"ON"));
        return Ok(d);
    }
    let fields: Vec<&str> = body.split(',').collect();
    let Some(imei) = imei_of(fields[0]) else {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            format!(
                "expected `imei:<digits>`, `##,` or a bare IMEI, got {:?}",
                body.chars().take(24).collect::<String>()
            ),
        ));
    };
    let keyword = fields.get(1).copied().unwrap_or("");
    let mut d = if keyword == "OBD" {
        decode_obd(&fields)
    } else if keyword.starts_with("vr") {
        // A chunk of a camera model's photo: not stored.
        Decoded::kind(MessageKind::Photo)
    } else if body.ends_with('*') {
        decode_alternative(&fields)
    } else {
        decode_report(&fields, ctx)
    };
    d.device = Some(DeviceId::new(imei));
    if keyword == "help me" {
        // The device repeats an SOS until the server confirms it (`E` cancels the alarm).
        d.reply = Some(Bytes::from(format!("**,imei:{imei},E;")));
    }
    Ok(d)
}

/// The report keyword as an alarm name.
fn alarm(keyword: &str) -> Option<&'static str> {
    if keyword.starts_with("T:") {
        return Some("temperature");
    }
    if keyword.starts_with("oil") {
        return Some("fuel_leak");
    }
    Some(match keyword {
        "help me" => "sos",
        "low battery" => "low_battery",
        "stockade" => "geofence",
        "move" => "movement",
        "speed" => "overspeed",
        "door alarm" => "door",
        "ac alarm" => "power_cut",
        "accident alarm" => "accident",
        "sensor alarm" => "vibration",
        "bonnet alarm" => "bonnet",
        "footbrake alarm" => "foot_brake",
        "DTC" => "fault",
        _ => return None,
    })
}

fn two(s: &str, at: usize) -> Option<u32> {
    let v = s.get(at..at + 2)?;
    v.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| v.parse().ok())?
}

/// The device's local date and time: `yymmddhhmm`, `yymmddhhmmss` or `yy/mm/dd hh:mm`.
fn local_time(field: &str) -> Option<(NaiveDate, u32, u32, u32)> {
    let digits: String = field
        .chars()
        .filter(|c| !matches!(c, '/' | ' ' | ':'))
        .collect();
    if !(digits.len() == 10 || digits.len() == 12) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        2000 + two(&digits, 0)? as i32,
        two(&digits, 2)?,
        two(&digits, 4)?,
    )?;
    let (h, m) = (two(&digits, 6)?, two(&digits, 8)?);
    let s = if digits.len() == 12 {
        two(&digits, 10)?
    } else {
        0
    };
    (h < 24 && m < 60 && s < 60).then_some((date, h, m, s))
}

/// `hhmmss` with optional fractional seconds: the UTC time of the fix.
fn utc_time(field: &str) -> Option<(u32, u32, u32)> {
    let int = field.split('.').next()?;
    if int.len() != 6 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m, s) = (two(int, 0)?, two(int, 2)?, two(int, 4)?);
    (h < 24 && m < 60 && s < 60).then_some((h, m, s))
}

/// The fix time: the device stamps its local date and time, the fix its UTC time of day; the
/// UTC date is the local date moved by at most 12 hours.
fn fix_time(local: &str, utc_field: &str, ctx: &DecodeCtx) -> DateTime<Utc> {
    let local = local_time(local);
    let utc_tod = utc_time(utc_field);
    match (local, utc_tod) {
        (Some((date, lh, lm, _)), Some((h, m, s))) => {
            let local_dt = date.and_hms_opt(lh, lm, 0).map(|t| t.and_utc());
            let fix = date.and_hms_opt(h, m, s).map(|t| t.and_utc());
            match (local_dt, fix) {
                (Some(l), Some(f)) if f - l > Duration::hours(12) => f - Duration::days(1),
                (Some(l), Some(f)) if l - f >= Duration::hours(12) => f + Duration::days(1),
                (_, Some(f)) => f,
                _ => ctx.now,
            }
        }
        (Some((date, h, m, s)), None) => date.and_hms_opt(h, m, s).map_or(ctx.now, |t| t.and_utc()),
        (None, Some((h, m, s))) => {
            let today = ctx.now.date_naive();
            let f = today.and_hms_opt(h, m, s).map_or(ctx.now, |t| t.and_utc());
            if f - ctx.now > Duration::hours(12) {
                f - Duration::days(1)
            } else {
                f
            }
        }
        (None, None) => ctx.now,
    }
}

/// `ddmm.mmmm` (any number of degree digits) with its hemisphere.
fn coordinate(raw: &str, hemisphere: Option<&str>, max: f64) -> Option<f64> {
    let (int, frac) = raw.trim().split_once('.')?;
    if int.len() < 3
        || int.len() > 5
        || frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let (deg, min) = int.split_at(int.len() - 2);
    let deg: f64 = deg.parse().ok()?;
    let min: f64 = format!("{min}.{frac}").parse().ok()?;
    if min >= 60.0 {
        return None;
    }
    let v = deg + min / 60.0;
    if v > max {
        return None;
    }
    Some(match hemisphere {
        Some("S" | "W") => -v,
        _ => v,
    })
}

fn number(s: Option<&&str>) -> Option<f64> {
    let s = s?.trim().trim_start_matches('+');
    (!s.is_empty() && s.len() <= 16)
        .then(|| s.parse::<f64>().ok())?
        .filter(|v| v.is_finite())
}

/// A regular report (`F` with a fix, `L` with a cell only).
fn decode_report(fields: &[&str], ctx: &DecodeCtx) -> Decoded {
    let keyword = fields.get(1).copied().unwrap_or("");
    let alarm = alarm(keyword);
    let kind = |fix: bool| match (alarm, fix) {
        (Some(_), _) => MessageKind::Alarm,
        (None, true) => MessageKind::Data,
        (None, false) => MessageKind::Lbs,
    };
    if fields.get(4) != Some(&"F") {
        // No fix: `L,,,<lac hex>,,<cid hex>,...` or nothing at all.
        let mut d = Decoded::kind(kind(false));
        let mut a = Attributes::default();
        if let Some(al) = alarm {
            a.text("alarm", al);
        }
        let hex = |i: usize| {
            fields
                .get(i)
                .filter(|s| !s.is_empty() && s.len() <= 8)
                .and_then(|s| i64::from_str_radix(s, 16).ok())
        };
        if let (Some(lac), Some(cid)) = (hex(7), hex(9)) {
            a.int("lac", lac);
            a.int("cell_id", cid);
        }
        if !keyword.is_empty() && keyword != "tracker" && alarm.is_none() {
            a.text("event", keyword);
        }
        d.status = Some(a);
        return d;
    }
    let mut d = Decoded::kind(kind(true));
    if let Some(p) = report_position(fields, ctx, alarm) {
        d.positions.push(p);
    } else {
        d.kind = MessageKind::Other;
    }
    d
}

fn report_position(
    fields: &[&str],
    ctx: &DecodeCtx,
    alarm: Option<&'static str>,
) -> Option<Position> {
    let keyword = fields[1];
    let valid = match *fields.get(6)? {
        "A" => true,
        "V" => false,
        _ => return None,
    };
    let hemi = |i: usize, set: &[&str]| fields.get(i).copied().filter(|h| set.contains(h));
    let mut i = 7;
    let mut lat_h = hemi(i, &["N", "S"]);
    i += usize::from(lat_h.is_some());
    let lat_raw = *fields.get(i)?;
    i += 1;
    if let Some(h) = hemi(i, &["N", "S"]) {
        lat_h = Some(h);
        i += 1;
    }
    let mut lon_h = hemi(i, &["E", "W"]);
    i += usize::from(lon_h.is_some());
    let lon_raw = *fields.get(i)?;
    i += 1;
    match fields.get(i).copied() {
        Some(h @ ("E" | "W")) => {
            lon_h = Some(h);
            i += 1;
        }
        // An empty hemisphere field (seen on some clones) means east.
        Some("") if lon_h.is_none() => i += 1,
        _ => {}
    }
    let lat = coordinate(lat_raw, lat_h, 90.0)?;
    let lon = coordinate(lon_raw, lon_h, 180.0)?;

    let mut p = Position::new(fix_time(fields[2], fields[5], ctx), valid, lat, lon);
    p.alarm = alarm;
    p.speed_kmh = number(fields.get(i)).unwrap_or(0.0) * KNOTS_TO_KMH;
    p.course = number(fields.get(i + 1)).unwrap_or(0.0);
    p.altitude = number(fields.get(i + 2)).unwrap_or(0.0);
    let flag = |k: usize| match fields.get(k).copied() {
        Some("1") => Some(true),
        Some("0") => Some(false),
        _ => None,
    };
    p.ignition = flag(i + 3);
    if let Some(door) = flag(i + 4) {
        p.attrs.int("door", i64::from(door));
    }
    let percent = |k: usize| {
        fields
            .get(k)
            .and_then(|s| s.strip_suffix('%'))
            .and_then(|s| number(Some(&s)))
    };
    if let Some(f) = percent(i + 5) {
        p.attrs.float("fuel1", f);
    }
    if let Some(f) = percent(i + 6) {
        p.attrs.float("fuel2", f);
    }
    if let Some(t) = fields
        .get(i + 7)
        .filter(|s| !s.is_empty())
        .and_then(|s| s.trim_start_matches('+').parse::<i64>().ok())
    {
        p.attrs.int("temp1", t);
    }
    match keyword {
        "acc on" => p.ignition = Some(true),
        "acc off" => p.ignition = Some(false),
        "rfid" => {
            if let Some(id) = fields.get(3).filter(|s| !s.is_empty()) {
                p.attrs.text("driver_id", *id);
            }
        }
        k if k.starts_with("T:") => {
            if let Some(t) = number(Some(&&k[2..])) {
                p.attrs.float("temp1", t);
            }
        }
        k if k.starts_with("oil ") => {
            if let Some(f) = number(Some(&&k[4..])) {
                p.attrs.float("fuel", f);
            }
        }
        "tracker" | "" => {}
        k if alarm.is_none() => p.attrs.text("event", k),
        _ => {}
    }
    Some(p)
}

/// The variant ending in `*`: `imei,name,event,sensor id,sensor V,hhmmss,ddmmyy,rssi,fix(0/1),
/// lat,lon (decimal degrees),speed km/h,course,altitude,hdop,satellites,ignition,charge,error`.
fn decode_alternative(fields: &[&str]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Other);
    let f = |i: usize| fields.get(i).copied().unwrap_or("");
    let (Some((h, mi, s)), Some(date)) = (utc_time(f(5)), Some(f(6)).filter(|v| v.len() == 6))
    else {
        return d;
    };
    let (Some(dd), Some(mo), Some(yy)) = (two(date, 0), two(date, 2), two(date, 4)) else {
        return d;
    };
    let Some(time) = utc(2000 + yy as i32, mo, dd, h, mi, s) else {
        return d;
    };
    let (Some(lat), Some(lon)) = (number(fields.get(9)), number(fields.get(10))) else {
        return d;
    };
    if lat.abs() > 90.0 || lon.abs() > 180.0 {
        return d;
    }
    let mut p = Position::new(time, f(8) != "0", lat, lon);
    p.speed_kmh = number(fields.get(11)).unwrap_or(0.0);
    p.course = number(fields.get(12)).unwrap_or(0.0);
    p.altitude = number(fields.get(13)).unwrap_or(0.0);
    if let Some(hdop) = number(fields.get(14)) {
        p.attrs.float("hdop", hdop);
    }
    p.satellites = f(15).parse().ok();
    p.ignition = match f(16) {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    if let Ok(rssi) = f(7).parse::<i64>() {
        p.attrs.int("rssi", rssi);
    }
    if !f(2).starts_with('-') && !f(2).is_empty() {
        p.attrs.text("event", f(2));
    }
    d.kind = MessageKind::Data;
    d.positions.push(p);
    d
}

/// `OBD,yymmddhhmmss,odometer,fuel instant,fuel average,hours,speed,load %,coolant,throttle %,
/// rpm,battery V,dtc...`: engine data without a fix, kept as status.
fn decode_obd(fields: &[&str]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Obd);
    let mut a = Attributes::default();
    let f = |i: usize| fields.get(i).copied().unwrap_or("").trim();
    let int = |i: usize| f(i).trim_start_matches('+').parse::<i64>().ok();
    if let Some(v) = int(3) {
        a.int("odometer_km", v);
    }
    if let Some(v) = number(fields.get(5)) {
        a.float("fuel_consumption", v);
    }
    if let Some(v) = int(6) {
        a.int("hours", v);
    }
    if let Some(v) = int(7) {
        a.int("obd_speed", v);
    }
    if let Some(v) = number(Some(&f(8).trim_end_matches('%'))) {
        a.float("engine_load", v);
    }
    if let Some(v) = int(9) {
        a.int("coolant_temp", v);
    }
    if let Some(v) = number(Some(&f(10).trim_end_matches('%'))) {
        a.float("throttle", v);
    }
    if let Some(v) = int(11) {
        a.int("rpm", v);
    }
    if let Some(v) = number(fields.get(12)) {
        a.float("battery_v", v);
    }
    let dtcs: Vec<&str> = fields
        .get(13..)
        .unwrap_or(&[])
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if !dtcs.is_empty() {
        a.text("dtcs", dtcs.join(" "));
    }
    d.status = Some(a);
    d
}

// ---------------------------------------------------------------------------------------------
// Commands and device-side encoders

/// `**,imei:<IMEI>,<letter>[,params]`: `J` stops the engine (cuts the relay), `K` resumes it;
/// a `Text` is the part after the IMEI (`B` one position, `C,30s` periodic…), or a whole
/// command when it starts with `**`.
pub fn encode_command(imei: &str, body: &CommandBody) -> Bytes {
    let tail = match body {
        CommandBody::EngineStop => "J",
        CommandBody::EngineResume => "K",
        CommandBody::Text(t) if t.starts_with("**") => return Bytes::from(t.clone()),
        CommandBody::Text(t) => t.trim(),
    };
    Bytes::from(format!("**,imei:{imei},{tail}"))
}

/// What a simulated device reports in [`encode_report`].
#[derive(Clone, Debug)]
pub struct Fix {
    pub time: DateTime<Utc>,
    /// The device's clock offset from UTC in minutes (it stamps local time).
    pub tz_minutes: i32,
    pub lat: f64,
    pub lon: f64,
    pub speed_knots: f64,
    pub course: f64,
    /// `tracker` for a periodic report, or an alarm keyword (`help me`, `ac alarm`…).
    pub keyword: &'static str,
}

fn ddmm(v: f64, deg_digits: usize) -> String {
    // In 1e-5 minutes, so rounding never prints 60 minutes.
    let units = (v.abs() * 60.0 * 100_000.0).round() as u64;
    let (deg, min) = (units / 6_000_000, units % 6_000_000);
    format!(
        "{deg:0w$}{:02}.{:05}",
        min / 100_000,
        min % 100_000,
        w = deg_digits
    )
}

/// A position report as a TK103 sends it (terminated by `;`).
pub fn encode_report(imei: &str, fix: &Fix) -> Bytes {
    let local = fix.time + Duration::minutes(i64::from(fix.tz_minutes));
    Bytes::from(format!(
        "imei:{imei},{},{},,F,{}.000,A,{},{},{},{},{:.2},{:.2},;",
        fix.keyword,
        local.format("%y%m%d%H%M"),
        fix.time.format("%H%M%S"),
        ddmm(fix.lat, 2),
        if fix.lat < 0.0 { 'S' } else { 'N' },
        ddmm(fix.lon, 3),
        if fix.lon < 0.0 { 'W' } else { 'E' },
        fix.speed_knots,
        fix.course
    ))
}

/// The log-on request a device sends first.
pub fn encode_login(imei: &str) -> Bytes {
    Bytes::from(format!("##,imei:{imei},A;"))
}

/// The heartbeat: the bare IMEI.
pub fn encode_heartbeat(imei: &str) -> Bytes {
    Bytes::from(format!("{imei};"))
}

#[cfg(test)]
mod tests;
