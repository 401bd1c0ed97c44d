//! Commands to the device (`AT+GT…=<password>,…,<serial>$`) and device-side message builders
//! for tests and the load simulator.

use chrono::{DateTime, Utc};

/// `AT+GTOUT` output control: output 1 on (engine stop) or off (engine resume), the other
/// outputs left off, no pulse/duration; the serial number is echoed in `+ACK:GTOUT`.
pub fn engine_command(password: &str, stop: bool, seq: u32) -> String {
    let status = if stop { 1 } else { 0 };
    format!(
        "AT+GTOUT={password},{status},,,0,0,0,0,0,0,0,,,,,,,{:04X}$",
        seq & 0xFFFF
    )
}

/// A raw command text, given its `$` tail if it lacks one.
pub fn encode_command_text(text: &str) -> String {
    if text.ends_with('$') {
        text.to_string()
    } else {
        format!("{text}$")
    }
}

/// One fix of a simulated `+RESP:GTFRI`.
#[derive(Clone, Debug)]
pub struct FriFix {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: u16,
    pub altitude: f64,
    /// GPS accuracy (HDOP); 0 means "no fix, last known position".
    pub hdop: u8,
}

/// A GV300-style fixed report: external power (mV), the fixes, mileage (km), device status.
#[allow(clippy::too_many_arguments)]
pub fn encode_fri(
    protocol_version: &str,
    imei: &str,
    power_mv: u32,
    fixes: &[FriFix],
    mileage_km: f64,
    device_status: &str,
    send_time: DateTime<Utc>,
    count: u16,
) -> String {
    let mut s = format!(
        "+RESP:GTFRI,{protocol_version},{imei},,{power_mv},10,{}",
        fixes.len()
    );
    for f in fixes {
        s.push_str(&format!(
            ",{},{:.1},{},{:.1},{:.6},{:.6},{},0250,0001,1A2B,0C3D,00",
            f.hdop,
            f.speed_kmh,
            f.course,
            f.altitude,
            f.lon,
            f.lat,
            f.time.format("%Y%m%d%H%M%S"),
        ));
    }
    s.push_str(&format!(
        ",{mileage_km:.1},,,,100,{device_status},,,,{},{count:04X}$",
        send_time.format("%Y%m%d%H%M%S")
    ));
    s
}

/// The heartbeat a device sends on an idle connection; it identifies the device and wants
/// `+SACK:GTHBD,<protocol version>,<count>$` back.
pub fn encode_heartbeat(
    protocol_version: &str,
    imei: &str,
    send_time: DateTime<Utc>,
    count: u16,
) -> String {
    format!(
        "+ACK:GTHBD,{protocol_version},{imei},,{},{count:04X}$",
        send_time.format("%Y%m%d%H%M%S")
    )
}
