//! ASCII `+RESP:`/`+BUFF:`/`+ACK:` messages.
//!
//! Every report is `<header>:GT<type>,<protocol version>,<imei>,<device name>,<type prefix>,
//! <position block>…,<type suffix>,<send time>,<count>`. The position block is the same in
//! every report type and model:
//! `<gps accuracy>,<speed km/h>,<azimuth>,<altitude>,<lon>,<lat>,<gps utc time>,<mcc>,<mnc>,
//! <lac hex>,<cell hex>,<reserved | append mask | mileage>`. Rather than one layout table per
//! type × firmware, blocks are found by their anchor (two coordinates with six decimals and a
//! 14-digit time) and the prefix/suffix fields a type is known to carry are read around them.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{model_of, NAME};
use crate::model::{Attributes, DeviceId, Position};
use crate::protocols::util::utc;
use crate::protocols::{CommandResponse, DecodeCtx, DecodeError, Decoded};
use crate::protocols::{DecodeReason, MessageKind};

/// One parsed message: its fields and where the fixed ones are.
struct Msg<'a> {
    /// `+RESP`, `+BUFF`, `+ACK`.
    header: &'a str,
    /// The three letters after `GT`.
    kind: &'a str,
    v: Vec<&'a str>,
    imei_idx: usize,
    version: &'a str,
    model: &'static str,
    /// The GL100 layout: IMEI first, blocks `fix, speed, heading, altitude, accuracy, lon,
    /// lat, time, mcc, mnc, lac, cell, ta`, closed by `count, version` (no send time).
    gl100: bool,
}

impl<'a> Msg<'a> {
    fn get(&self, i: usize) -> &'a str {
        self.v.get(i).copied().unwrap_or("")
    }
    /// The last field: the message's count number.
    fn count(&self) -> &'a str {
        self.v.last().copied().unwrap_or("")
    }
    /// The second last field: the device's send time.
    fn send_time(&self) -> Option<DateTime<Utc>> {
        self.v
            .len()
            .checked_sub(2)
            .and_then(|i| parse_time(self.v[i]))
    }
    /// Index of the first field after the device name (and the VIN some models put before it).
    fn first_after_name(&self) -> usize {
        let after = self.imei_idx + 1;
        if is_vin(self.get(after)) && self.v.len() > after + 2 {
            after + 2
        } else {
            after + 1
        }
    }
    fn vin(&self) -> Option<&'a str> {
        let f = self.get(self.imei_idx + 1);
        is_vin(f).then_some(f)
    }
}

pub fn decode(frame: &[u8], ctx: &DecodeCtx, report_acks: bool) -> Result<Decoded, DecodeError> {
    let end = frame
        .iter()
        .rposition(|b| !matches!(b, b'$' | 0 | b'\r' | b'\n'))
        .map(|i| i + 1)
        .unwrap_or(0);
    let body = &frame[..end];
    let s = std::str::from_utf8(body).map_err(|e| {
        DecodeError::new(
            NAME,
            DecodeReason::Framing,
            e.valid_up_to(),
            "text message is not ASCII",
        )
    })?;
    let Some((header, rest)) = s.split_once(':') else {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            "no ':' after the message header",
        ));
    };
    if header == "+SACK" {
        // Our own acknowledgement echoed back: nothing to do.
        return Ok(Decoded::kind(MessageKind::Other));
    }
    if !matches!(header, "+RESP" | "+BUFF" | "+ACK") {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Framing,
            0,
            format!("unknown header {header:?}"),
        ));
    }
    let v: Vec<&str> = s.split(',').collect();
    let Some(kind) = rest
        .get(..5)
        .filter(|t| t.starts_with("GT"))
        .and_then(|t| t.get(2..))
    else {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::Unsupported,
            header.len() + 1,
            "message type is not GTxxx",
        ));
    };
    let imei_idx = if v.get(1).is_some_and(|f| is_imei(f)) {
        1
    } else if v.get(2).is_some_and(|f| is_imei(f)) {
        2
    } else {
        return Err(DecodeError::new(
            NAME,
            DecodeReason::BadIdentity,
            field_offset(&v, 2),
            "no IMEI in field 2 or 3",
        ));
    };
    let version = if imei_idx == 2 { v[1] } else { "" };
    let gl100 = imei_idx == 1 && is_gl100_tail(&v);
    let msg = Msg {
        header,
        kind,
        v,
        imei_idx,
        version,
        model: if gl100 { "GL100" } else { model_of(version) },
        gl100,
    };
    let device = DeviceId::new(msg.get(imei_idx));

    let mut d = if header == "+ACK" {
        decode_ack(&msg)
    } else {
        match kind {
            "INF" => decode_inf(&msg),
            "VER" => decode_ver(&msg),
            "PNA" | "PFA" => decode_power_event(&msg),
            "GSM" | "LBS" | "WIF" => decode_cells(&msg),
            _ => decode_report(&msg, ctx)?,
        }
    };
    // In server-ack mode the device wants "+SACK:<count>$" for every message it sends; the
    // heartbeat has its own answer.
    if d.reply.is_none() && report_acks && is_hex(msg.count(), 4) {
        d.reply = Some(Bytes::from(format!("+SACK:{}$", msg.count())));
    }
    d.device = Some(device);
    Ok(d)
}

/// Byte offset of field `i` (for error reports).
fn field_offset(v: &[&str], i: usize) -> usize {
    v.iter().take(i).map(|f| f.len() + 1).sum()
}

fn decode_ack(msg: &Msg<'_>) -> Decoded {
    if msg.kind == "HBD" {
        // The heartbeat is answered with the protocol version and count it carried.
        let mut d = Decoded::kind(MessageKind::Heartbeat);
        d.reply = Some(Bytes::from(format!(
            "+SACK:GTHBD,{},{}$",
            msg.version,
            msg.count()
        )));
        return d;
    }
    // `+ACK:GT<cmd>,<version>,<imei>,<name>,[<sub id>,]<serial>,<send time>,<count>`.
    let serial = msg.v.len().checked_sub(3).map(|i| msg.v[i]).unwrap_or("");
    let seq = is_hex(serial, 4)
        .then(|| u32::from_str_radix(serial, 16).ok())
        .flatten();
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    d.command_response = Some(CommandResponse {
        text: msg.v.join(","),
        success: Some(true),
        seq,
    });
    d
}

/// `+RESP:GTINF`: device state without a fix.
fn decode_inf(msg: &Msg<'_>) -> Decoded {
    let mut a = base_attrs(msg);
    let i = msg.first_after_name();
    let state = msg.get(i);
    if let Ok(st) = u8::from_str_radix(state, 16) {
        a.text("state", state);
        let (ignition, motion) = motion_state(st);
        if let Some(on) = ignition {
            a.flag("ignition", on);
        }
        if let Some(m) = motion {
            a.flag("motion", m);
        }
    }
    if !msg.get(i + 1).is_empty() {
        a.text("iccid", msg.get(i + 1));
    }
    if let Ok(rssi) = msg.get(i + 2).parse::<i64>() {
        a.int("rssi", rssi);
    }
    // i+3 signal quality, i+4 external power supply flag.
    let mut j = i + 5;
    let power = msg.get(j);
    if is_decimal(power) {
        if let Ok(km) = power.parse::<f64>() {
            a.float("odometer_m", km * 1000.0);
        }
    } else if let Some(v) = millivolts(power) {
        a.float("power_v", v);
    }
    j += 1;
    match msg.model {
        "GV500VC" => {}
        "GV350M" | "GV310LAU" => j += 1,
        _ => {
            if let Some(v) = millivolts(msg.get(j)) {
                a.float("power2_v", v);
            }
            j += 1;
        }
    }
    if let Ok(v) = msg.get(j).parse::<f64>() {
        a.float("battery_v", v);
    }
    let mut d = Decoded::kind(MessageKind::Status);
    d.status = Some(a);
    d
}

/// The motion state code of `GTINF`/`GTSTT`: 1x ignition off, 2x ignition on, 4x no
/// ignition sense; x1 stationary, x2/x6/xA moving.
fn motion_state(st: u8) -> (Option<bool>, Option<bool>) {
    match st {
        0x16 | 0x1A | 0x12 => (Some(false), Some(true)),
        0x11 => (Some(false), Some(false)),
        0x21 => (Some(true), Some(false)),
        0x22 => (Some(true), Some(true)),
        0x41 => (None, Some(false)),
        0x42 => (None, Some(true)),
        _ => (None, None),
    }
}

/// `+RESP:GTVER`: device type, firmware and hardware versions.
fn decode_ver(msg: &Msg<'_>) -> Decoded {
    let mut a = base_attrs(msg);
    let i = msg.imei_idx + 2;
    for (k, off) in [("device_type", 0), ("firmware", 1), ("hardware", 2)] {
        let f = msg.get(i + off);
        if !f.is_empty() {
            a.text(k, f);
        }
    }
    let mut d = Decoded::kind(MessageKind::Status);
    d.status = Some(a);
    d
}

/// `+RESP:GTPNA` / `GTPFA`: the device was switched on / off (no position in the message).
fn decode_power_event(msg: &Msg<'_>) -> Decoded {
    let mut a = base_attrs(msg);
    a.text(
        "alarm",
        if msg.kind == "PNA" {
            "power_on"
        } else {
            "power_off"
        },
    );
    let mut d = Decoded::kind(MessageKind::Alarm);
    d.status = Some(a);
    d
}

/// `GTGSM` / `GTLBS` / `GTWIF`: cell towers or Wi-Fi access points, no GPS fix.
fn decode_cells(msg: &Msg<'_>) -> Decoded {
    let mut a = base_attrs(msg);
    let end = msg.v.len().saturating_sub(2);
    let mut cells = 0;
    let mut i = msg.imei_idx + 1;
    while i + 3 < end {
        if is_cell(&msg.v[i..i + 4]) {
            if cells == 0 {
                push_cell(&mut a, &msg.v[i..i + 4]);
            }
            cells += 1;
            i += 4;
        } else {
            i += 1;
        }
    }
    if cells > 0 {
        a.int("cells", cells);
    }
    let aps = msg.v[..end]
        .iter()
        .filter(|f| f.len() == 12 && is_hex(f, 12))
        .count();
    if aps > 0 {
        a.int("wifi_aps", aps as i64);
    }
    let mut d = Decoded::kind(MessageKind::Lbs);
    d.status = Some(a);
    d
}

/// How the fields around the position blocks are laid out for a report type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `<ext power mV>,<report id/type>,<number>,blocks,<mileage>,<hour meter>,<adc…>,
    /// <battery %>,<device status>,…` (GV models; GL models keep only the shape).
    Fri,
    /// `<ERI mask>,<ext power mV>,<report id/type>,<number>,blocks,<mileage>,…`.
    Eri,
    /// `<duration>,block,<hour meter>,<mileage>`.
    Ignition,
    /// Anything else: blocks only.
    Plain,
}

fn layout(kind: &str) -> Layout {
    match kind {
        "FRI" | "GEO" | "RTL" | "DOG" | "SPD" | "SOS" | "PNL" | "IGL" | "HBM" | "DIS" | "IOB"
        | "TOW" | "AIS" | "IDA" | "CTN" | "STR" | "NMR" => Layout::Fri,
        "ERI" => Layout::Eri,
        "IGN" | "IGF" | "VGN" | "VGF" => Layout::Ignition,
        _ => Layout::Plain,
    }
}

/// `…,<count 4 hex>,<version 10 hex>`: how every GL100 message ends (GL100 @Track air
/// interface protocol: `count num`, `ver HHHHSSPPPP`).
pub fn is_gl100_tail(v: &[&str]) -> bool {
    match v {
        [.., count, ver] => is_hex(count, 4) && is_hex(ver, 10),
        _ => false,
    }
}

/// The `<Number>` field: how many position blocks the report says it carries. In the GL200
/// family it is the field just before the first block (firmwares differ in the fields before
/// it, not in that).
fn declared_points(msg: &Msg<'_>, lay: Layout, first_anchor: Option<usize>) -> Option<usize> {
    let f = match (msg.gl100, lay) {
        // GTSOS, GTRTL, GTEST always say 0 (the document), with one block.
        (true, _) if msg.kind == "TRI" => msg.get(msg.imei_idx + 1),
        (true, _) => return None,
        (false, Layout::Fri | Layout::Eri) => msg.get(first_anchor?.checked_sub(5)?),
        _ => return None,
    };
    (!f.is_empty() && f.len() <= 2 && f.bytes().all(|b| b.is_ascii_digit()))
        .then(|| f.parse().ok())
        .flatten()
}

/// Every other report: position blocks with type-specific fields around them.
fn decode_report(msg: &Msg<'_>, ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
    let lay = if msg.gl100 {
        Layout::Plain
    } else {
        layout(msg.kind)
    };
    let first = msg.first_after_name();
    let report_type = match lay {
        Layout::Fri => msg.get(first + 1),
        Layout::Eri => msg.get(first + 2),
        _ => "",
    };
    let power_field = match lay {
        Layout::Fri => msg.get(first),
        Layout::Eri => msg.get(first + 1),
        _ => "",
    };
    let power_v = millivolts(power_field);

    let alarm = alarm_of(msg.kind, report_type);
    let state = match msg.kind {
        "STT" => u8::from_str_radix(msg.get(first), 16)
            .map(motion_state)
            .unwrap_or((None, None)),
        _ => (None, None),
    };
    let ignition = match msg.kind {
        "IGN" | "VGN" => Some(true),
        "IGF" | "VGF" => Some(false),
        "IGL" => u8::from_str_radix(report_type, 16)
            .ok()
            .map(|t| t % 0x10 == 1),
        _ => state.0,
    };
    let motion = match msg.kind {
        "NMR" => u8::from_str_radix(report_type, 16).ok().map(|t| t == 1),
        _ => state.1,
    };
    let input_change = match msg.kind {
        "DIS" => u8::from_str_radix(report_type, 16)
            .ok()
            .map(|t| (t / 0x10, t % 0x10 == 1)),
        _ => None,
    };

    let send_time = msg.send_time();
    let anchors = find_anchors(&msg.v);
    let mut positions = Vec::with_capacity(anchors.len());
    let mut next = 0;
    for &a in &anchors {
        let (p, n) = if msg.gl100 {
            decode_block_gl100(msg, a, ctx.now)
        } else {
            decode_block(msg, a, send_time.unwrap_or(ctx.now))
        };
        positions.push(p);
        next = n;
    }
    let declared = declared_points(msg, lay, anchors.first().copied());
    if let Some(n) = declared.filter(|&n| n < anchors.len()) {
        // More blocks than the report says: the layout was misread, and its numbers would be
        // wrong ones. Refused and counted rather than stored.
        return Err(DecodeError::new(
            NAME,
            DecodeReason::BadField,
            field_offset(&msg.v, first),
            format!(
                "GT{}: Number says {n} points, {} position blocks found",
                msg.kind,
                anchors.len()
            ),
        ));
    }

    let mut extra = Extra {
        power_v,
        ..Extra::default()
    };
    if !anchors.is_empty() {
        read_suffix(msg, lay, next, &mut extra);
    }

    if positions.is_empty() {
        let mut a = base_attrs(msg);
        if let Some(al) = alarm {
            a.text("alarm", al);
        }
        if let Some(on) = ignition.or(extra.ignition) {
            a.flag("ignition", on);
        }
        if let Some(v) = power_v {
            a.float("power_v", v);
        }
        let end = msg.v.len().saturating_sub(2);
        let cell = (first..end.saturating_sub(3)).find(|&i| is_cell(&msg.v[i..i + 4]));
        if let Some(i) = cell {
            push_cell(&mut a, &msg.v[i..i + 4]);
        }
        let kind = if alarm.is_some() {
            MessageKind::Alarm
        } else if cell.is_some() {
            MessageKind::Lbs
        } else {
            MessageKind::Other
        };
        let mut d = Decoded::kind(kind);
        d.status = Some(a);
        return Ok(d);
    }

    let last = positions.len() - 1;
    for (i, p) in positions.iter_mut().enumerate() {
        p.alarm = alarm;
        if let Some(on) = ignition {
            p.ignition = Some(on);
        }
        if let Some(m) = motion {
            p.motion = Some(m);
        }
        if let Some((n, on)) = input_change.filter(|(n, _)| (1..=8).contains(n)) {
            let bit = 1u32 << (n - 1);
            p.inputs = Some(if on { bit } else { 0 });
            p.attrs.int("input_changed", i64::from(n));
        }
        if i == last {
            std::mem::take(&mut extra).apply(p);
            if let Some(n) = declared.filter(|&n| n > anchors.len()) {
                // Blocks without a fix (no coordinates) are not positions: say so.
                p.attrs.int("points_declared", n as i64);
            }
        }
    }
    let mut d = Decoded::kind(if alarm.is_some() {
        MessageKind::Alarm
    } else {
        MessageKind::Data
    });
    d.positions = positions;
    Ok(d)
}

/// One GL100 block around the longitude at `a`: `fix, speed, heading, altitude, accuracy`
/// before it, `lat, time, mcc, mnc, lac, cell, ta` after; returns the position and the index
/// of the first field after the block. GL100 reports carry no send time: a block without a
/// GPS time takes the receive time.
fn decode_block_gl100(msg: &Msg<'_>, a: usize, now: DateTime<Utc>) -> (Position, usize) {
    let v = &msg.v;
    let before = |k: usize| {
        a.checked_sub(k)
            .and_then(|i| v.get(i))
            .copied()
            .unwrap_or("")
    };
    let lon = v[a].parse::<f64>().unwrap_or(0.0);
    let lat = v[a + 1].parse::<f64>().unwrap_or(0.0);
    let (time, timed) = match parse_time(v[a + 2]) {
        Some(t) => (t, true),
        None => (now, false),
    };
    // `gps fix`: 1 successful, 0 failed.
    let mut p = Position::new(time, timed && before(5) == "1", lat, lon);
    p.speed_kmh = number(before(4)).max(0.0);
    p.course = number(before(3));
    p.altitude = number(before(2));
    if let Ok(h) = before(1).parse::<f64>() {
        p.attrs.float("hdop", h);
    }
    let mut next = a + 3;
    if next + 4 <= v.len() && is_cell(&v[next..next + 4]) {
        push_cell(&mut p.attrs, &v[next..next + 4]);
    }
    next += 5; // mcc, mnc, lac, cell, ta
    push_common(msg, &mut p.attrs);
    (p, next.min(v.len()))
}

/// Report-level values found after the last block.
#[derive(Default)]
struct Extra {
    power_v: Option<f64>,
    odometer_m: Option<f64>,
    hours_s: Option<i64>,
    ignition: Option<bool>,
    inputs: Option<u32>,
    outputs: Option<u32>,
    status: Option<String>,
}

impl Extra {
    fn apply(self, p: &mut Position) {
        if self.power_v.is_some() {
            p.power_v = self.power_v;
        }
        if self.odometer_m.is_some() {
            p.odometer_m = self.odometer_m;
        }
        if let Some(h) = self.hours_s {
            p.attrs.int("engine_hours_s", h);
        }
        if p.ignition.is_none() {
            p.ignition = self.ignition;
        }
        if p.inputs.is_none() {
            p.inputs = self.inputs;
        }
        if self.outputs.is_some() {
            p.outputs = self.outputs;
        }
        if let Some(s) = self.status {
            p.attrs.text("device_status", s);
        }
    }
}

/// Mileage, hour meter and the 6-hex device status after the last block (`next` is the first
/// field after it).
fn read_suffix(msg: &Msg<'_>, lay: Layout, mut next: usize, extra: &mut Extra) {
    let end = msg.v.len().saturating_sub(2);
    match lay {
        Layout::Ignition => {
            if let Some(h) = parse_hours(msg.get(next)) {
                extra.hours_s = Some(h);
            }
            if next + 1 < end {
                if let Some(km) = decimal(msg.get(next + 1)) {
                    extra.odometer_m = Some(km * 1000.0);
                }
            }
        }
        Layout::Fri | Layout::Eri => {
            if next < end {
                if let Some(km) = decimal(msg.get(next)) {
                    extra.odometer_m = Some(km * 1000.0);
                    next += 1;
                }
            }
            if next < end {
                if let Some(h) = parse_hours(msg.get(next)) {
                    extra.hours_s = Some(h);
                    next += 1;
                }
            }
            // <adc 1>,<adc 2>,[<adc 3>,]<battery %>,<device status>: the status is the first
            // 6-hex field that follows a percentage (or an empty one).
            let stop = end.min(next + 7);
            for j in next..stop {
                let f = msg.v[j];
                let before = if j > 0 { msg.v[j - 1] } else { "" };
                if f.len() == 6
                    && is_hex(f, 6)
                    && before.len() <= 3
                    && before.bytes().all(|b| b.is_ascii_digit())
                {
                    if let Ok(st) = u32::from_str_radix(f, 16) {
                        apply_device_status(extra, st);
                        extra.status = Some(f.to_string());
                    }
                    break;
                }
            }
        }
        Layout::Plain => {}
    }
}

/// The GV device status: ignition state, digital inputs, digital outputs, one byte each.
fn apply_device_status(extra: &mut Extra, st: u32) {
    let state = (st >> 16) & 0xff;
    if state & 0x10 != 0 {
        extra.ignition = Some(false);
    } else if state & 0x20 != 0 {
        extra.ignition = Some(true);
    }
    // Input bit 0 is the ignition sense line; digital input 1 is bit 1.
    extra.inputs = Some(((st >> 8) & 0xff) >> 1);
    extra.outputs = Some(st & 0xff);
}

/// The alarm a report type raises (`report_type` is the report id/type field where it matters).
fn alarm_of(kind: &str, report_type: &str) -> Option<&'static str> {
    Some(match kind {
        "SOS" => "sos",
        "SPD" => "overspeed",
        "TOW" => "tow",
        "IDL" => "idle",
        "EPN" | "MPN" => "power_restored",
        "EPF" | "MPF" => "power_cut",
        "BPL" => "low_battery",
        "SWG" => "geofence",
        "GEO" => match report_type.as_bytes() {
            [_, b'1'] => "geofence_enter",
            [_, b'0'] => "geofence_exit",
            _ => "geofence",
        },
        "TMP" | "TEM" => "temperature",
        "JDR" | "JDS" => "jamming",
        "CRA" => "accident",
        "HBM" => match u8::from_str_radix(report_type, 16).map(|t| t % 0x10) {
            Ok(0) | Ok(3) => "hard_braking",
            Ok(1) | Ok(4) => "hard_acceleration",
            Ok(2) => "hard_cornering",
            _ => return None,
        },
        _ => return None,
    })
}

/// Indices of the longitude field of every position block.
fn find_anchors(v: &[&str]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 4;
    while i + 2 < v.len() {
        if is_coordinate(v[i]) && is_coordinate(v[i + 1]) && is_time14(v[i + 2]) {
            let lon_ok = v[i].parse::<f64>().is_ok_and(|x| x.abs() <= 180.0);
            let lat_ok = v[i + 1].parse::<f64>().is_ok_and(|x| x.abs() <= 90.0);
            if lon_ok && lat_ok {
                out.push(i);
                i += 3;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// One position block around the longitude at `a`; returns the position and the index of the
/// first field after the block.
fn decode_block(msg: &Msg<'_>, a: usize, fallback_time: DateTime<Utc>) -> (Position, usize) {
    let v = &msg.v;
    let hdop = v[a - 4];
    let lon = v[a].parse::<f64>().unwrap_or(0.0);
    let lat = v[a + 1].parse::<f64>().unwrap_or(0.0);
    let mut valid = hdop.is_empty() || hdop.parse::<f64>().is_ok_and(|h| h > 0.0);
    let time = match parse_time(v[a + 2]) {
        Some(t) => t,
        None => {
            valid = false;
            fallback_time
        }
    };
    let mut p = Position::new(time, valid, lat, lon);
    p.speed_kmh = number(v[a - 3]);
    p.course = number(v[a - 2]);
    p.altitude = number(v[a - 1]);
    if let Ok(h) = hdop.parse::<f64>() {
        p.attrs.float("hdop", h);
    }
    let mut next = a + 3;
    if next + 4 <= v.len() && is_cell(&v[next..next + 4]) {
        push_cell(&mut p.attrs, &v[next..next + 4]);
    }
    next += 4;
    if msg.model.starts_with("GL5") {
        next += 2; // CSQ RSSI and BER
    }
    // The last block field: reserved, an append mask (bit 0: satellites follow, bit 1: a
    // trigger type follows) on newer firmwares, or the mileage on GL3xx.
    if let Some(&f) = v.get(next) {
        next += 1;
        if let Some(km) = decimal(f).filter(|_| f.contains('.')) {
            p.odometer_m = Some(km * 1000.0);
        } else if let Some(mask) =
            append_mask(f).filter(|_| msg.model != "GL320M" && next + 2 < v.len())
        {
            if mask & 1 != 0 {
                if let Ok(n) = v[next].parse::<u16>() {
                    p.satellites = Some(n);
                }
                next += 1;
            }
            if mask & 2 != 0 {
                next += 1;
            }
        }
    }
    push_common(msg, &mut p.attrs);
    (p, next.min(v.len()))
}

/// `00`–`03`: the append mask newer firmwares put in the block's reserved field. Older
/// firmwares put other two-digit values (signal level) there, which are left alone.
fn append_mask(f: &str) -> Option<u8> {
    match f {
        "00" | "01" | "02" | "03" => f.parse().ok(),
        _ => None,
    }
}

/// Attributes every record of a message carries.
fn push_common(msg: &Msg<'_>, a: &mut Attributes) {
    a.text("event", msg.kind);
    if msg.header == "+BUFF" {
        a.flag("buffered", true);
    }
    if let Some(vin) = msg.vin() {
        a.text("vin", vin);
    }
}

fn base_attrs(msg: &Msg<'_>) -> Attributes {
    let mut a = Attributes::with_capacity(8);
    push_common(msg, &mut a);
    if !msg.version.is_empty() {
        a.text("protocol_version", msg.version);
    }
    if !msg.model.is_empty() {
        a.text("model", msg.model);
    }
    a
}

fn push_cell(a: &mut Attributes, f: &[&str]) {
    if let [mcc, mnc, lac, cell] = f {
        let parsed = (
            mcc.parse::<i64>(),
            mnc.parse::<i64>(),
            i64::from_str_radix(lac, 16),
            i64::from_str_radix(cell, 16),
        );
        if let (Ok(mcc), Ok(mnc), Ok(lac), Ok(cell)) = parsed {
            a.int("mcc", mcc);
            a.int("mnc", mnc);
            a.int("lac", lac);
            a.int("cell_id", cell);
        }
    }
}

/// `<mcc>,<mnc>,<lac hex>,<cell hex>` with a real country code.
fn is_cell(f: &[&str]) -> bool {
    let [mcc, mnc, lac, cell] = f else {
        return false;
    };
    (3..=4).contains(&mcc.len())
        && mcc.bytes().all(|b| b.is_ascii_digit())
        && mcc.parse::<u32>().is_ok_and(|m| m >= 200)
        && (1..=4).contains(&mnc.len())
        && mnc.bytes().all(|b| b.is_ascii_digit())
        && (1..=8).contains(&lac.len())
        && is_hex(lac, lac.len())
        && (1..=8).contains(&cell.len())
        && is_hex(cell, cell.len())
}

/// A supply voltage in millivolts as volts. GL models put a 0/1 flag or a reserved 0 where
/// the GV models report the voltage, so values of 10 mV or less are not voltages.
fn millivolts(f: &str) -> Option<f64> {
    f.parse::<u32>()
        .ok()
        .filter(|&mv| mv > 10)
        .map(|mv| f64::from(mv) / 1000.0)
}

fn number(f: &str) -> f64 {
    f.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .unwrap_or(0.0)
}

/// `123.4`-style decimal (mileage in km).
fn decimal(f: &str) -> Option<f64> {
    is_decimal(f).then(|| f.parse::<f64>().ok()).flatten()
}

fn is_decimal(f: &str) -> bool {
    let Some((int, frac)) = f.split_once('.') else {
        return false;
    };
    !int.is_empty()
        && !frac.is_empty()
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
}

/// Hour meter `HHHHH:MM:SS` as seconds.
fn parse_hours(f: &str) -> Option<i64> {
    let mut it = f.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let h: i64 = h.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    let s: i64 = s.parse().ok()?;
    Some(h * 3600 + m * 60 + s)
}

/// A coordinate as the devices write it: optional sign, 1–3 integer digits, 6 decimals.
pub fn is_coordinate(f: &str) -> bool {
    let f = f.strip_prefix('-').unwrap_or(f);
    let Some((int, frac)) = f.split_once('.') else {
        return false;
    };
    (1..=3).contains(&int.len())
        && frac.len() == 6
        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
}

fn is_time14(f: &str) -> bool {
    f.len() == 14 && f.bytes().all(|b| b.is_ascii_digit())
}

/// `YYYYMMDDHHMMSS` (UTC).
pub fn parse_time(f: &str) -> Option<DateTime<Utc>> {
    if !is_time14(f) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| f.get(r).and_then(|s| s.parse::<u32>().ok());
    utc(
        n(0..4)? as i32,
        n(4..6)?,
        n(6..8)?,
        n(8..10)?,
        n(10..12)?,
        n(12..14)?,
    )
}

fn is_hex(f: &str, len: usize) -> bool {
    f.len() == len && f.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 15-digit IMEI, or the 14-hex-digit MEID of CDMA models.
fn is_imei(f: &str) -> bool {
    f.len() == 15 && f.bytes().all(|b| b.is_ascii_digit()) || is_hex(f, 14)
}

fn is_vin(f: &str) -> bool {
    f.len() == 17
        && f.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}
