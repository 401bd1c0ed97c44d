//! One decoder per terminal message that needs no session state: each takes the message body
//! and returns what it carried. Replies are chosen by `Jt808Session::dispatch`.

use super::{bcd_time, decode_location, msg, text_of, NAME};
use crate::model::Attributes;
use crate::protocols::util::Reader;
use crate::protocols::{CommandResponse, DecodeError, Decoded, MessageKind};

/// 0x0102: the authentication code, kept as status.
pub(super) fn auth(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Login);
    let code = text_of(body);
    if !code.is_empty() {
        let mut a = Attributes::default();
        a.text("auth_code", code);
        d.status = Some(a);
    }
    d
}

/// 0x0002: battery, signal and status bytes when the vendor sends them.
pub(super) fn heartbeat(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Heartbeat);
    if let [battery, rssi, status, ..] = body {
        let mut a = Attributes::default();
        a.int("battery_level", i64::from(*battery));
        a.int("rssi", i64::from(*rssi));
        a.int("status", i64::from(*status));
        d.status = Some(a);
    }
    d
}

/// 0x0001: the terminal's answer to a platform message (our command).
pub(super) fn terminal_response(body: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let serial = r.u16("reply serial")?;
    let reply_id = r.u16("reply message id")?;
    let result = r.u8("result")?;
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    let outcome = match result {
        0 => "success",
        1 => "failure",
        2 => "message error",
        3 => "not supported",
        _ => "other",
    };
    d.command_response = Some(CommandResponse {
        text: format!("{reply_id:04X}: {outcome} ({result})"),
        success: Some(result == 0),
        seq: Some(u32::from(serial)),
    });
    Ok(d)
}

/// 0x0200: one location report.
pub(super) fn location(body: &[u8]) -> Result<Decoded, DecodeError> {
    let p = decode_location(body)?;
    let mut d = Decoded::kind(if p.alarm.is_some() {
        MessageKind::Alarm
    } else {
        MessageKind::Data
    });
    d.positions.push(p);
    Ok(d)
}

/// 0x0201 / 0x0500: the answer to a location query or a vehicle control, with the fix.
pub(super) fn location_answer(id: u16, body: &[u8]) -> Result<Decoded, DecodeError> {
    let serial = Reader::new(NAME, body).u16("reply serial")?;
    let p = decode_location(body.get(2..).unwrap_or(&[]))?;
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    let text = if id == msg::VEHICLE_CONTROL_RESPONSE {
        format!(
            "vehicle control done, oil circuit {}",
            if p.outputs == Some(1) {
                "cut"
            } else {
                "connected"
            }
        )
    } else {
        "location".to_string()
    };
    d.command_response = Some(CommandResponse {
        text,
        success: Some(true),
        seq: Some(u32::from(serial)),
    });
    d.positions.push(p);
    Ok(d)
}

/// A 7-byte 0x0210: the vendor heartbeat (battery level and device time), not a batch.
pub(super) fn battery_heartbeat(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Heartbeat);
    let mut a = Attributes::default();
    if let Some(&level) = body.first() {
        a.int("battery_level", i64::from(level));
    }
    if let Ok(t) = bcd_time(body.get(1..).unwrap_or(&[]), 1) {
        a.text("device_time", t.to_rfc3339());
    }
    d.status = Some(a);
    d
}

/// 0x0107: terminal attributes (model, ICCID).
pub(super) fn attributes(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Other);
    let mut a = Attributes::default();
    if let Some(iccid) = body.get(34..44) {
        a.text("iccid", hex::encode(iccid));
    }
    if let Some(model) = body.get(7..27) {
        a.text("model", text_of(model));
    }
    d.status = Some(a);
    d
}

/// 0x6006: a text message the terminal reports.
pub(super) fn report_text(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    let text = text_of(body.get(1..).unwrap_or(&[]));
    d.command_response = Some(CommandResponse {
        text,
        success: None,
        seq: None,
    });
    d
}

/// 0x0300-style answer to a text message we sent: serial, then UTF-16 text.
pub(super) fn text_message_response(body: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let serial = r.u16("reply serial")?;
    let units: Vec<u16> = r
        .rest()
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16_lossy(&units)
        .trim_matches(|c: char| c.is_control() || c == ' ')
        .to_string();
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    d.command_response = Some(CommandResponse {
        text,
        success: None,
        seq: Some(u32::from(serial)),
    });
    Ok(d)
}

/// A vendor command answer: `length u32 | text`.
pub(super) fn command_response(body: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(NAME, body);
    let len = r.u32("response length")? as usize;
    let text = text_of(r.take(len.min(r.remaining()), "response")?);
    let mut d = Decoded::kind(MessageKind::CommandResponse);
    d.command_response = Some(CommandResponse {
        text,
        success: None,
        seq: None,
    });
    Ok(d)
}

/// Acceleration samples (12 bytes each; x, y, z as sign-magnitude words at 6, 8, 10).
pub(super) fn acceleration(body: &[u8]) -> Decoded {
    let mut d = Decoded::kind(MessageKind::Other);
    let samples: Vec<String> = body
        .chunks_exact(12)
        .map(|c| {
            let w = |i: usize| {
                let v = u16::from_be_bytes([c[i], c[i + 1]]);
                let m = i32::from(v & 0x7FFF);
                if v & 0x8000 != 0 {
                    -m
                } else {
                    m
                }
            };
            format!("[{},{},{}]", w(6), w(8), w(10))
        })
        .collect();
    let mut a = Attributes::default();
    a.text("g_sensor", format!("[{}]", samples.join(",")));
    d.status = Some(a);
    d
}
