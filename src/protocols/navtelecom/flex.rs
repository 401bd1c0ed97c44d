//! FLEX: the telemetry records Navtelecom devices send after the `*>FLEX` negotiation. A
//! record is the concatenation of the fields whose bit is set in the negotiated mask, in field
//! order, each of the fixed size the FLEX table gives (FLEX 1.0 defines fields 1–69, 2.0 adds
//! 70–122, 3.0 adds 123–255). Numbers are little-endian.

use chrono::{DateTime, Utc};

use super::super::util::from_secs;
use crate::model::{AttrKey, AttrValue, Attributes, Position};

/// Size in bytes of every FLEX field, as runs `(first field, last field, size)`.
const SIZE_RUNS: &[(u8, u8, u8)] = &[
    (1, 1, 4),
    (2, 2, 2),
    (3, 3, 4),
    (4, 8, 1),
    (9, 13, 4),
    (14, 14, 2),
    (15, 16, 4),
    (17, 28, 2),
    (29, 32, 1),
    (33, 34, 4),
    (35, 36, 2),
    (37, 37, 4),
    (38, 44, 2),
    (45, 52, 1),
    (53, 53, 2),
    (54, 54, 4),
    (55, 55, 2),
    (56, 56, 1),
    (57, 57, 4),
    (58, 62, 2),
    (63, 65, 1),
    (66, 66, 2),
    (67, 67, 4),
    (68, 68, 2),
    (69, 69, 1),
    // FLEX 2.0
    (70, 70, 8),
    (71, 71, 2),
    (72, 72, 1),
    (73, 73, 16),
    (74, 74, 4),
    (75, 75, 2),
    (76, 76, 4),
    (77, 77, 37),
    (78, 83, 1),
    (84, 93, 3),
    (94, 94, 6),
    (95, 95, 12),
    (96, 96, 24),
    (97, 97, 48),
    (98, 101, 1),
    (102, 103, 4),
    (104, 104, 1),
    (105, 105, 4),
    (106, 106, 2),
    (107, 107, 6),
    (108, 108, 2),
    (109, 109, 6),
    (110, 117, 2),
    (118, 118, 1),
    (119, 121, 2),
    (122, 122, 1),
    // FLEX 3.0
    (123, 126, 1),
    (127, 132, 4),
    (133, 138, 2),
    (139, 140, 1),
    (141, 141, 2),
    (142, 142, 3),
    (143, 143, 2),
    (144, 145, 1),
    (146, 146, 3),
    (147, 166, 2),
    (167, 170, 1),
    (171, 171, 2),
    (172, 174, 4),
    (175, 175, 2),
    (176, 176, 4),
    (177, 178, 2),
    (179, 179, 4),
    (180, 192, 2),
    (193, 196, 4),
    (197, 197, 6),
    (198, 198, 3),
    (199, 199, 1),
    (200, 201, 2),
    (202, 202, 1),
    (203, 203, 4),
    (204, 204, 5),
    (205, 206, 4),
    (207, 222, 1),
    (223, 237, 2),
    (238, 252, 4),
    (253, 255, 8),
];

/// The highest field number FLEX 3.0 defines.
pub const MAX_FIELD: usize = 255;

/// The size of FLEX field `n` (1-based), `None` beyond the table.
pub fn field_size(n: usize) -> Option<usize> {
    SIZE_RUNS
        .iter()
        .find(|(a, b, _)| (usize::from(*a)..=usize::from(*b)).contains(&n))
        .map(|(_, _, s)| usize::from(*s))
}

/// The negotiated field set of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Field numbers (1-based) present in every record, ascending.
    pub fields: Vec<usize>,
    /// Bytes of one record.
    pub record_len: usize,
}

impl Mask {
    /// `bits` fields described by `mask` (field 1 is the most significant bit of byte 0).
    /// `Err` names the first field beyond the FLEX table.
    pub fn from_bits(bits: usize, mask: &[u8]) -> Result<Mask, usize> {
        let mut fields = Vec::new();
        let mut record_len = 0;
        for i in 0..bits {
            let set = mask.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
            if set {
                let size = field_size(i + 1).ok_or(i + 1)?;
                fields.push(i + 1);
                record_len += size;
            }
        }
        Ok(Mask { fields, record_len })
    }

    /// The mask bytes for `fields` (device-side encoder).
    pub fn to_bits(fields: &[usize], bits: usize) -> Vec<u8> {
        let mut out = vec![0u8; bits.div_ceil(8)];
        for &f in fields {
            if (1..=bits).contains(&f) {
                out[(f - 1) / 8] |= 0x80 >> ((f - 1) % 8);
            }
        }
        out
    }
}

/// One decoded record: a position when it carries a fix time and coordinates, otherwise
/// its fields as status.
pub struct Record {
    pub position: Option<Position>,
    pub status: Attributes,
    /// Field 1, the record's number in the device's archive (0 when not sent).
    pub number: u32,
}

fn le(b: &[u8]) -> u64 {
    b.iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

fn f32_le(b: &[u8]) -> Option<f64> {
    let v = f32::from_le_bytes(b.try_into().ok()?);
    v.is_finite().then_some(f64::from(v))
}

/// Decode one record of `mask.record_len` bytes.
pub fn decode_record(mask: &Mask, rec: &[u8]) -> Record {
    let mut a = Attributes::default();
    let mut at = 0;
    let mut time: Option<DateTime<Utc>> = None;
    let (mut lat, mut lon) = (None, None);
    let mut valid = false;
    let mut number = 0;
    let mut fix = FixFields::default();
    let mut inputs: Option<u32> = None;
    let mut outputs: Option<u32> = None;
    for &n in &mask.fields {
        let size = field_size(n).unwrap_or(0);
        let Some(b) = rec.get(at..at + size) else {
            break;
        };
        at += size;
        let u = le(b);
        match n {
            1 => {
                number = u as u32;
                a.int("index", u as i64);
            }
            2 => a.int("event", u as i64),
            3 => a.int("event_time", u as i64),
            4 => a.int("device_status", u as i64),
            5 => a.int("module_status1", u as i64),
            6 => a.int("module_status2", u as i64),
            7 => a.int("gsm_level", u as i64),
            8 => {
                valid = u & 0x02 != 0;
                fix.satellites = Some((u >> 2) as u16);
            }
            // 0: the device never had a fix.
            9 => time = (u != 0).then(|| from_secs(u as i64)).flatten(),
            10 => lat = Some(f64::from(u as u32 as i32) / 600_000.0),
            11 => lon = Some(f64::from(u as u32 as i32) / 600_000.0),
            12 => fix.altitude = Some(f64::from(u as u32 as i32) / 10.0),
            13 => fix.speed_kmh = f32_le(b),
            14 => fix.course = Some(u as f64),
            15 => fix.odometer_km = f32_le(b),
            16 => {
                if let Some(v) = f32_le(b) {
                    a.float("distance_km", v);
                }
            }
            19 => fix.power_v = Some(u as f64 / 1000.0),
            20 => a.float("battery_v", u as f64 / 1000.0),
            21..=28 => a.push(AttrKey::Name(ADC[n - 21]), AttrValue::Int(u as i64)),
            29 => inputs = Some(inputs.unwrap_or(0) | u as u32),
            30 => inputs = Some(inputs.unwrap_or(0) | (u as u32) << 8),
            31 => outputs = Some(outputs.unwrap_or(0) | u as u32),
            32 => outputs = Some(outputs.unwrap_or(0) | (u as u32) << 8),
            37 => a.int("engine_hours", u as i64),
            38..=43 if u < 65_500 => a.push(AttrKey::Name(LLS[n - 38]), AttrValue::Int(u as i64)),
            44 if u < 65_500 => a.int("fuel", u as i64),
            45..=52 => a.push(
                AttrKey::Name(TEMP[n - 45]),
                AttrValue::Int(i64::from(b[0] as i8)),
            ),
            53 if u != 0x7FFF => {
                if u & 0x8000 != 0 {
                    a.int("can_fuel_percent", (u & 0x3FFF) as i64);
                } else {
                    a.float("can_fuel_l", (u & 0x3FFF) as f64 / 10.0);
                }
            }
            54 => {
                if let Some(v) = f32_le(b).filter(|v| *v >= 0.0) {
                    a.float("can_fuel_used_l", v * 0.5);
                }
            }
            55 if u != 0xFFFF => a.int("can_rpm", u as i64),
            56 if b[0] != 0x80 => a.int("can_coolant_temp", i64::from(b[0] as i8)),
            57 => {
                if let Some(v) = f32_le(b) {
                    a.float("can_odometer_km", v);
                }
            }
            69 => a.int("can_speed", u as i64),
            // Kept as they came: CAN, sensors and user fields by FLEX number.
            _ if size <= 8 => a.push(AttrKey::Io(n as u32), AttrValue::Int(u as i64)),
            _ => a.push(
                AttrKey::Io(n as u32),
                AttrValue::Text(hex::encode(b).into()),
            ),
        }
    }
    let position = match (time, lat, lon) {
        (Some(t), Some(la), Some(lo)) if la.abs() <= 90.0 && lo.abs() <= 180.0 => {
            let mut p = Position::new(t, valid, la, lo);
            p.satellites = fix.satellites;
            p.altitude = fix.altitude.unwrap_or(0.0);
            p.speed_kmh = fix.speed_kmh.unwrap_or(0.0);
            p.course = fix.course.unwrap_or(0.0);
            p.odometer_m = fix.odometer_km.map(|km| km * 1000.0);
            p.power_v = fix.power_v;
            p.inputs = inputs;
            p.outputs = outputs;
            p.attrs = std::mem::take(&mut a);
            Some(p)
        }
        _ => None,
    };
    if position.is_none() {
        if let Some(i) = inputs {
            a.int("inputs", i64::from(i));
        }
        if let Some(o) = outputs {
            a.int("outputs", i64::from(o));
        }
    }
    Record {
        position,
        status: a,
        number,
    }
}

#[derive(Default)]
struct FixFields {
    satellites: Option<u16>,
    altitude: Option<f64>,
    speed_kmh: Option<f64>,
    course: Option<f64>,
    odometer_km: Option<f64>,
    power_v: Option<f64>,
}

const ADC: [&str; 8] = [
    "adc1", "adc2", "adc3", "adc4", "adc5", "adc6", "adc7", "adc8",
];
const LLS: [&str; 6] = [
    "fuel_lls1",
    "fuel_lls2",
    "fuel_lls3",
    "fuel_lls4",
    "fuel_lls5",
    "fuel_lls6",
];
const TEMP: [&str; 8] = [
    "temp1", "temp2", "temp3", "temp4", "temp5", "temp6", "temp7", "temp8",
];

/// What a simulated device puts in a record with the fields [`FIX_FIELDS`].
#[derive(Clone, Debug)]
pub struct Fix {
    pub number: u32,
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f32,
    pub course: u16,
    /// Outputs 1–8 (bit 0 = output 1).
    pub outputs: u8,
}

/// The fields the device-side encoder sends: number, event, event time, navigation state,
/// fix time, latitude, longitude, altitude, speed, course, odometer, main power, outputs.
pub const FIX_FIELDS: &[usize] = &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 19, 31];

/// One record with [`FIX_FIELDS`] (device-side encoder).
pub fn encode_record(fix: &Fix) -> Vec<u8> {
    let secs = fix.time.timestamp() as u32;
    let mut out = Vec::new();
    out.extend(fix.number.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(secs.to_le_bytes());
    out.push((12 << 2) | 0x02);
    out.extend(secs.to_le_bytes());
    out.extend(((fix.lat * 600_000.0).round() as i32).to_le_bytes());
    out.extend(((fix.lon * 600_000.0).round() as i32).to_le_bytes());
    out.extend(1500i32.to_le_bytes());
    out.extend(fix.speed_kmh.to_le_bytes());
    out.extend(fix.course.to_le_bytes());
    out.extend(1234.5f32.to_le_bytes());
    out.extend(12_600u16.to_le_bytes());
    out.push(fix.outputs);
    out
}
