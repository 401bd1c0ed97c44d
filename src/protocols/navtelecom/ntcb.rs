//! Native NTCB telemetry, the record formats before FLEX: `*>T` (one record, answered `*<T` +
//! record number) and `*>A` (count + records, answered `*<A` + count). A record starts with its
//! format (one byte, or two when the first is 0): 1.0 (0x01), 2.0 (0x02), 3.0 (0x03), 4.0 (0x04),
//! 5.0 (0x05), 5.1 (0x15), 5.2 (0x25), 6.0 (0x06); the format decides which blocks follow.
//! Formats 1.0, 3.0 and 4.0 carry no navigation block, so no position. Little-endian.

use chrono::NaiveDate;

use crate::model::{Attributes, Position};

const F10: u16 = 0x01;
const F20: u16 = 0x02;
const F30: u16 = 0x03;
const F40: u16 = 0x04;
const F50: u16 = 0x05;
const F51: u16 = 0x15;
const F52: u16 = 0x25;
const F60: u16 = 0x06;

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn f32(&mut self) -> Option<f64> {
        self.u32().map(|v| f64::from(f32::from_bits(v)))
    }
}

/// One decoded native record.
pub struct Record {
    pub number: u32,
    pub position: Option<Position>,
    pub status: Attributes,
}

fn one(r: &mut Reader) -> Option<Record> {
    let format = match r.b.get(r.at)? {
        0 => r.u16()?,
        _ => u16::from(r.u8()?),
    };
    let is = |set: &[u16]| set.contains(&format);
    if !is(&[F10, F20, F30, F40, F50, F51, F52, F60]) {
        return None;
    }
    let mut a = Attributes::default();
    a.int("format", i64::from(format));
    let number = r.u32()?;
    a.int("index", i64::from(number));
    a.int("event", i64::from(r.u16()?));
    r.take(6)?; // event time
    a.int("armed", i64::from(r.u8()?));
    a.int("device_status", i64::from(r.u8()?));
    a.int("gsm_level", i64::from(r.u8()?));
    let mut satellites = None;
    let outputs = if is(&[F10, F20, F30]) {
        u32::from(r.u16()?)
    } else if is(&[F50, F51, F52]) {
        let ext = r.u8()?;
        satellites = Some(u16::from(ext >> 2));
        u32::from(ext & 0x03)
    } else {
        u32::from(r.u8()? & 0x0F)
    };
    let inputs = if is(&[F10, F20, F30, F40]) {
        u32::from(r.u16()?)
    } else {
        u32::from(r.u8()?)
    };
    let power = f64::from(r.u16()?) / 1000.0;
    a.float("battery_v", f64::from(r.u16()?) / 1000.0);
    if is(&[F10, F20, F30]) {
        a.int("temp1", i64::from(r.u16()? as i16));
    }
    if is(&[F10, F20, F50, F51, F52, F60]) {
        a.int("adc1", i64::from(r.u16()?));
        a.int("adc2", i64::from(r.u16()?));
    }
    if is(&[F60]) {
        a.int("adc3", i64::from(r.u16()?));
    }
    if is(&[F20, F50, F51, F52, F60]) {
        a.int("count1", i64::from(r.u32()?));
        a.int("count2", i64::from(r.u32()?));
    }
    if is(&[F60]) {
        r.take(28)?; // fuel sensors
        for key in ["temp1", "temp2", "temp3", "temp4"] {
            a.int(key, i64::from(r.u8()? as i8));
        }
        a.int("axle_weight", i64::from(r.u32()? as i32));
        a.int("rpm", i64::from(r.u16()?));
    }
    let mut position = None;
    if is(&[F20, F50, F51, F52, F60]) {
        let nav = r.u8()?;
        if is(&[F60]) {
            satellites = Some(u16::from(nav >> 2));
        }
        let (h, mi, s) = (r.u8()?, r.u8()?, r.u8()?);
        let (day, month0, year) = (r.u8()?, r.u8()?, r.u8()?);
        let (lat, lon, alt) = if is(&[F60]) {
            (
                f64::from(r.u32()? as i32) / 600_000.0,
                f64::from(r.u32()? as i32) / 600_000.0,
                f64::from(r.u32()? as i32) / 10.0,
            )
        } else {
            (r.f32()?.to_degrees(), r.f32()?.to_degrees(), 0.0)
        };
        let speed = r.f32()?;
        let course = f64::from(r.u16()?);
        let odometer = r.f32()?;
        r.f32()?; // distance since the last record
        r.take(4)?; // segment times
        let time = NaiveDate::from_ymd_opt(
            2000 + i32::from(year),
            u32::from(month0) + 1,
            u32::from(day),
        )
        .and_then(|d| d.and_hms_opt(u32::from(h), u32::from(mi), u32::from(s)))
        .map(|t| t.and_utc());
        if let Some(t) = time.filter(|_| lat.abs() <= 90.0 && lon.abs() <= 180.0) {
            let mut p = Position::new(t, nav & 0x02 != 0, lat, lon);
            p.altitude = alt;
            p.speed_kmh = if speed.is_finite() { speed } else { 0.0 };
            p.course = course;
            p.odometer_m = odometer.is_finite().then_some(odometer * 1000.0);
            position = Some(p);
        }
    }
    if is(&[F51, F52]) {
        r.take(15)?; // other sensors
    }
    if is(&[F40, F52]) {
        for key in ["temp1", "temp2", "temp3", "temp4"] {
            a.int(key, i64::from(r.u8()? as i8));
        }
    }
    let position = position.map(|mut p| {
        p.satellites = satellites;
        p.outputs = Some(outputs);
        p.inputs = Some(inputs);
        p.power_v = Some(power);
        p.attrs = std::mem::take(&mut a);
        p
    });
    Some(Record {
        number,
        position,
        status: a,
    })
}

/// The records of a `*>T` (`count` None) or `*>A` body (after the 3-byte type); `None` when
/// a record is cut short or of an unknown format.
pub fn records(body: &[u8], array: bool) -> Option<Vec<Record>> {
    let mut r = Reader { b: body, at: 0 };
    let count = if array { usize::from(r.u8()?) } else { 1 };
    (0..count).map(|_| one(&mut r)).collect()
}
