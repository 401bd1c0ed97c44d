//! One decoder per GT06 message type that is not the standard GPS/LBS/status layout
//! (`standard`): each reads its content from `m.r` into `m.rec` / `m.d` and says whether the
//! message is finished as a record or complete as it is.

use chrono::{Datelike, Timelike};

use super::msg::*;
use super::*;

/// 0x01: the IMEI and, in the long form, the time zone the device reports in.
pub(super) fn login(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, d, reply, tz) = (&mut *m.r, &mut m.d, &mut m.reply, &mut *m.tz);
    let id = imei_string(r.take(8, "IMEI")?);
    d.kind = MessageKind::Login;
    d.device = Some(DeviceId::new(id));
    *tz = 0;
    if left(r) >= 4 {
        let _type_id = r.u16("type identifier")?;
        let ext = r.u16("time zone")?;
        let minutes = i32::from(ext >> 4);
        let mut offset = (minutes / 100 * 60 + minutes % 100) * 60;
        if ext & 0x08 != 0 {
            offset = -offset;
        }
        if offset.abs() <= 14 * 3600 {
            *tz = offset;
        }
    }
    d.reply = reply.take();
    Ok(Step::Done)
}

/// 0x23: terminal information, voltage and GSM signal.
pub(super) fn heartbeat(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d) = (&mut *m.r, &mut m.rec, &mut m.d);
    d.kind = MessageKind::Heartbeat;
    let status = r.u8("terminal information")?;
    rec.p.attrs.flag("armed", status & 0x01 != 0);
    rec.p.ignition = Some(status & 0x02 != 0);
    rec.p.attrs.flag("charging", status & 0x04 != 0);
    // Bit 7: oil and electricity cut, as in the status message.
    rec.set_output(status & 0x80 != 0);
    if left(r) >= 2 {
        let v = f64::from(r.u16("voltage")?) / 100.0;
        rec.p.attrs.float("battery_v", v);
    }
    if left(r) >= 1 {
        let rssi = r.u8("GSM signal")?;
        rec.p.attrs.int("rssi", i64::from(rssi));
    }
    Ok(Step::Finish)
}

/// 0x2A: answered with an empty address (`NA&&NA&&0##`) in a long 0x97 frame.
pub(super) fn address_request(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let d = &mut m.d;
    d.kind = MessageKind::Other;
    let text = b"NA&&NA&&0##";
    let mut c = Vec::with_capacity(5 + text.len());
    c.push(text.len() as u8);
    c.extend_from_slice(&[0, 0, 0, 0]);
    c.extend_from_slice(text);
    d.reply = Some(build_packet(true, ADDRESS_RESPONSE, &c, 0));
    Ok(Step::Done)
}

/// 0x8A: answered with the server time.
pub(super) fn time_request(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, ctx, d) = (m.f, m.ctx, &mut m.d);
    d.kind = MessageKind::TimeRequest;
    let n = ctx.now;
    let c = [
        (n.year() - 2000).clamp(0, 255) as u8,
        n.month() as u8,
        n.day() as u8,
        n.hour() as u8,
        n.minute() as u8,
        n.second() as u8,
    ];
    d.reply = Some(build_packet(false, TIME_REQUEST, &c, f.serial));
    Ok(Step::Done)
}

/// 0x34 X1 GPS report: fix, odometer, cell, driver, voltages, ports and ADCs; no ack.
pub(super) fn x1_gps(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, reply, tz) = (&mut *m.r, &mut m.rec, &mut m.reply, &mut *m.tz);
    *reply = None;
    r.skip(4, "data and alarm")?;
    gps(r, rec, *tz, GpsOpts::STD)?;
    let info = r.u16("terminal information")?;
    rec.p.attrs.int("status", i64::from(info));
    rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
    let mcc = r.u16("MCC")?;
    let mnc = r.u8("MNC")?;
    let lac = r.u16("LAC")?;
    let cid = r.u32("cell id")?;
    cell(rec, mcc, u16::from(mnc), u64::from(lac), u64::from(cid));
    let driver = r.u32("driver id")?;
    if driver > 0 {
        rec.p.attrs.text("driver_id", driver.to_string());
    }
    rec.p
        .attrs
        .float("battery_v", f64::from(r.u16("battery")?) / 100.0);
    rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0);
    let ports = r.u32("port info")?;
    rec.p.inputs = Some(u32::from(r.u8("inputs")?));
    rec.p.outputs = Some(u32::from(r.u8("outputs")?));
    for i in 1..=((ports >> 20) & 0x0f) {
        let v = f64::from(r.u16("ADC")?) / 100.0;
        rec.p
            .attrs
            .push(AttrKey::Dyn(format!("adc{i}").into()), AttrValue::Float(v));
    }
    Ok(Step::Finish)
}

/// Short 0x94: the external power voltage; no ack.
pub(super) fn info_power(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d, reply) = (&mut *m.r, &mut m.rec, &mut m.d, &mut m.reply);
    *reply = None;
    d.kind = MessageKind::Info;
    rec.p.power_v = Some(f64::from(r.i16("power")?) / 100.0);
    Ok(Step::Finish)
}

/// Long 0x94: the information types `info` reads; no ack.
pub(super) fn info_message(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, r, rec, d, reply) = (m.f, &mut *m.r, &mut m.rec, &mut m.d, &mut m.reply);
    *reply = None;
    d.kind = MessageKind::Info;
    info(f, r, rec)?;
    Ok(Step::Finish)
}

/// SR411 mini multi-cell report: fix, cell, ACC, power, battery.
pub(super) fn sr411_mini(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (v, t, r, rec, tz) = (m.v, m.f.typ, &mut *m.r, &mut m.rec, &mut *m.tz);
    gps(r, rec, *tz, GpsOpts::STD)?;
    lbs(r, rec, t, v, false)?;
    rec.p.ignition = Some(r.u8("ACC")? > 0);
    rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0);
    rec.p
        .attrs
        .float("battery_v", f64::from(r.u16("battery")?) / 100.0);
    Ok(Step::Finish)
}

/// 0x15: a command answer, or the ICCID some firmwares report this way.
pub(super) fn string_message(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d) = (&mut *m.r, &mut m.rec, &mut m.d);
    d.kind = MessageKind::CommandResponse;
    let len = usize::from(r.u8("command length")?);
    let flag = r.u32("server flag")?;
    // Some firmwares leave the command length at zero: the text then runs up to the
    // language field, padded with NULs.
    let n = if len >= 4 && len - 4 <= left(r) {
        len - 4
    } else {
        left(r).saturating_sub(2)
    };
    let text = ascii(r.take(n, "command content")?);
    let text = text.trim_end_matches('\0').to_string();
    {
        if let Some(iccid) = text.strip_prefix("<ICCID:") {
            let iccid: String = iccid.chars().take(20).collect();
            rec.p.attrs.text("iccid", iccid);
            d.kind = MessageKind::Info;
        } else {
            d.command_response = Some(response(text, flag));
        }
    }
    Ok(Step::Finish)
}

/// 0x13 with 16 content bytes: battery level and temperature.
pub(super) fn status_16(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d) = (&mut *m.r, &mut m.rec, &mut m.d);
    d.kind = MessageKind::Heartbeat;
    r.skip(1, "information content")?;
    r.skip(2, "satellites")?;
    r.skip(1, "alarm")?;
    r.skip(1, "language")?;
    rec.p
        .attrs
        .int("battery_level", i64::from(r.u8("battery level")?));
    r.skip(1, "working mode")?;
    r.skip(2, "working voltage")?;
    r.skip(1, "reserved")?;
    r.skip(4, "working times")?;
    let raw = r.u16("temperature")?;
    let mag = f64::from(raw & 0x7fff) / 10.0;
    rec.p
        .attrs
        .float("temp1", if raw & 0x8000 != 0 { mag } else { -mag });
    Ok(Step::Finish)
}

/// 0x61 iButton report: IMEI, fix, cell, driver id.
pub(super) fn ibutton(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (v, t, r, rec, tz) = (m.v, m.f.typ, &mut *m.r, &mut m.rec, &mut *m.tz);
    r.skip(8, "IMEI")?;
    gps(r, rec, *tz, GpsOpts::STD)?;
    lbs(r, rec, t, v, false)?;
    let hi = u64::from(r.u32("driver id")?);
    let lo = u64::from(r.u16("driver id")?);
    rec.p.attrs.text("driver_id", ((hi << 16) | lo).to_string());
    Ok(Step::Finish)
}

/// TRX16i status: fix, cell, ACC, upload mode, odometer, power, engine hours, driver.
pub(super) fn trx16i_status(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (v, t, r, rec, tz) = (m.v, m.f.typ, &mut *m.r, &mut m.rec, &mut *m.tz);
    gps(r, rec, *tz, GpsOpts::STD)?;
    lbs(r, rec, t, v, false)?;
    rec.p.ignition = Some(r.u8("ACC")? > 0);
    rec.p
        .attrs
        .int("upload_mode", i64::from(r.u8("upload mode")?));
    rec.p.attrs.flag("archive", r.u8("re-upload")? > 0);
    rec.p.odometer_m = Some(f64::from(r.u32("odometer")?));
    rec.p.power_v = Some(f64::from(r.u16("power")?) / 100.0);
    rec.p
        .attrs
        .float("battery_v", f64::from(r.u8("battery")?) / 10.0);
    rec.p
        .attrs
        .int("hours_ms", i64::from(r.u24("engine hours")?) * 60_000);
    driver_hex(r, rec)?;
    Ok(Step::Finish)
}

/// The standard GPS / LBS / status layouts (see `standard`).
pub(super) fn standard_message(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, v, t, r, rec, d, tz) = (
        m.f, m.v, m.f.typ, &mut *m.r, &mut m.rec, &mut m.d, &mut *m.tz,
    );
    if t == LBS_STATUS && v == Variant::Space10x {
        // A multi-cell report of one firmware that is not answered; nothing we keep.
        d.kind = MessageKind::Lbs;
        return Ok(Step::Done);
    }
    standard(f, v, r, rec, d, *tz)?;
    Ok(Step::Finish)
}

/// 0x95 alarm: event code, optional fix (JC400 layout), event files.
pub(super) fn alarm(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, v, r, rec, d, tz) = (m.f, m.v, &mut *m.r, &mut m.rec, &mut m.d, &mut *m.tz);
    d.kind = MessageKind::Alarm;
    let jc400 = v == Variant::Jc400;
    let extended_alarm = f.length > 12;
    if extended_alarm {
        if jc400 {
            r.skip(3, "marker and version")?;
        }
        let opts = GpsOpts {
            has_length: false,
            sats: jc400,
            speed: jc400,
            long_speed: jc400,
            swap: jc400,
        };
        gps(r, rec, *tz, opts)?;
    } else {
        r.skip(6, "date")?;
    }
    if jc400 {
        rec.p.power_v = Some(f64::from(r.u16("power")?) / 10.0);
    }
    let event = r.u8("event")?;
    rec.p.attrs.int("event", i64::from(event));
    rec.p
        .attrs
        .int("event_data", i64::from(r.u16("event data")?));
    rec.alarm(match event {
        0x01 if extended_alarm => Some("sos"),
        0x01 => Some("general"),
        0x0E => Some("low_power"),
        0x76 => Some("temperature"),
        0x80 => Some("vibration"),
        0x87 => Some("overspeed"),
        0x88 => Some("power_cut"),
        0x90 => Some("acceleration"),
        0x91 => Some("braking"),
        0x92 => Some("cornering"),
        0x93 => Some("accident"),
        _ => None,
    });
    let files = left(r);
    if files > 0 {
        let s = ascii(r.take(files, "event files")?);
        rec.p.attrs.text("event_files", s);
    }
    Ok(Step::Finish)
}

/// 0x21: a command answer (ASCII or UTF-16); a `Current position` answer is a fix.
pub(super) fn string_info(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d, reply) = (&mut *m.r, &mut m.rec, &mut m.d, &mut m.reply);
    *reply = None;
    d.kind = MessageKind::CommandResponse;
    let flag = r.u32("server flag")?;
    let enc = r.u8("encoding")?;
    let raw = r.take(left(r), "content")?;
    let text = if enc == 1 { ascii(raw) } else { utf16be(raw) };
    if let Some(p) = current_position(&text) {
        rec.p = p;
        rec.fix = true;
    }
    d.command_response = Some(response(text, flag));
    Ok(Step::Finish)
}

/// AZ735 long frames: fix, cell, extra cells, WiFi, status; answered in the long form.
pub(super) fn az735_long(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, v, t, r, rec, reply, tz) = (
        m.f,
        m.v,
        m.f.typ,
        &mut *m.r,
        &mut m.rec,
        &mut m.reply,
        &mut *m.tz,
    );
    // AZ735 long frames: fix, cell, extra cells, WiFi, status; answered in the long form.
    *reply = Some(build_packet(true, t, &[], f.serial));
    gps(
        r,
        rec,
        *tz,
        GpsOpts {
            has_length: true,
            ..GpsOpts::STD
        },
    )?;
    if lbs(r, rec, t, v, true)? {
        rec.p.attrs.int("rssi", i64::from(r.u8("signal")?));
    }
    let n = usize::from(r.u8("extra cells length")?);
    r.skip(n, "extra cells")?;
    let n = usize::from(r.u8("WiFi length")?);
    r.skip(n, "WiFi")?;
    let status = r.u8("status")?;
    rec.p.attrs.int("status", i64::from(status));
    if t == WIFI_5 {
        match status {
            0xA0 => rec.p.attrs.flag("armed", true),
            0xA1 => rec.p.attrs.flag("armed", false),
            0xA2 | 0xA3 => rec.alarm(Some("low_battery")),
            0xA4 => rec.alarm(Some("general")),
            0xA5 => rec.alarm(Some("door")),
            _ => {}
        }
    }
    let n = usize::from(r.u8("extension length")?);
    r.skip(n, "extension")?;
    Ok(Step::Finish)
}

/// 0x8C OBD data as `obd_<key>` attributes; no ack.
pub(super) fn obd(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d, reply) = (&mut *m.r, &mut m.rec, &mut m.d, &mut m.reply);
    *reply = None;
    d.kind = MessageKind::Obd;
    r.skip(6, "date")?;
    rec.p.ignition = Some(r.u8("ACC")? > 0);
    let n = r.remaining().saturating_sub(16);
    let text = ascii(r.take(n, "OBD data")?);
    for pair in text.split(',') {
        if let Some((k, val)) = pair.split_once('=') {
            rec.p.attrs.push(
                AttrKey::Dyn(format!("obd_{k}").into()),
                AttrValue::Text(val.into()),
            );
        }
    }
    Ok(Step::Finish)
}

/// 0x70 modular GPS report (`modular`).
pub(super) fn gps_modular(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, r, rec, reply) = (m.f, &mut *m.r, &mut m.rec, &mut m.reply);
    *reply = Some(ack(GPS_MODULAR, f.serial));
    modular(r, rec)?;
    Ok(Step::Finish)
}

/// 0x9B pass-through data of a serial device; no ack.
pub(super) fn serial(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (r, rec, d, reply) = (&mut *m.r, &mut m.rec, &mut m.d, &mut m.reply);
    *reply = None;
    d.kind = MessageKind::Serial;
    r.skip(1, "external device type")?;
    let data = r.take(left(r), "serial data")?;
    let text = if data
        .iter()
        .all(|b| (0x20..0x7f).contains(b) || *b == b'\r' || *b == b'\n')
    {
        String::from_utf8_lossy(data).trim().to_string()
    } else {
        hex::encode(data)
    };
    rec.p.attrs.text("result", text);
    Ok(Step::Finish)
}

/// 0xF2 / device status: peripheral data (`peripheral`).
pub(super) fn peripheral_status(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (t, r, rec, d) = (m.f.typ, &mut *m.r, &mut m.rec, &mut m.d);
    d.kind = MessageKind::Status;
    let _time = r.u32("time")?;
    peripheral(t, r, rec)?;
    Ok(Step::Finish)
}

/// 0x38 GPS + LBS with upload mode; no ack.
pub(super) fn gps_lbs_8(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (v, t, r, rec, reply, tz) = (
        m.v,
        m.f.typ,
        &mut *m.r,
        &mut m.rec,
        &mut m.reply,
        &mut *m.tz,
    );
    *reply = None;
    gps(r, rec, *tz, GpsOpts::STD)?;
    r.skip(2, "upload mode")?;
    lbs(r, rec, t, v, false)?;
    Ok(Step::Finish)
}

/// A type fleetgate does not decode: acked when short and not a command type.
pub(super) fn other(m: &mut Msg<'_, '_>) -> Result<Step, DecodeError> {
    let (f, t, d, reply) = (m.f, m.f.typ, &mut m.d, &mut m.reply);
    d.kind = MessageKind::Other;
    d.reply = if !f.extended && !matches!(t, COMMAND_0 | COMMAND_1 | COMMAND_2) {
        reply.take()
    } else {
        None
    };
    Ok(Step::Done)
}
