//! Small tools every codec uses: a bounds-checked big/little-endian reader that reports the
//! offset of a short read, the checksum algorithms trackers use, and BCD/time helpers.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use crc::{Crc, CRC_16_ARC, CRC_16_IBM_SDLC, CRC_16_MODBUS, CRC_16_XMODEM};

use super::{DecodeError, DecodeReason};

// Slice-by-16 tables (8 KiB each, built at compile time): a 25-record Teltonika packet is
// ~2 KB, and a byte-at-a-time table made the CRC a third of its decode time.
type Crc16 = Crc<u16, crc::Table<16>>;

/// CRC-16/IBM (ARC): Teltonika AVL packets, Wialon IPS 2.0.
pub const CRC16_IBM: Crc16 = Crc16::new(&CRC_16_ARC);
/// CRC-16/X-25, "CRC-ITU" in GT06 documents.
pub const CRC16_X25: Crc16 = Crc16::new(&CRC_16_IBM_SDLC);
/// CRC-16/MODBUS: Galileosky.
pub const CRC16_MODBUS: Crc16 = Crc16::new(&CRC_16_MODBUS);
/// CRC-16/XMODEM (CCITT, init 0).
pub const CRC16_XMODEM: Crc16 = Crc16::new(&CRC_16_XMODEM);
/// CRC-16/CCITT-FALSE (init 0xFFFF): EGTS service data.
pub const CRC16_CCITT_FALSE: Crc16 = Crc16::new(&crc::CRC_16_IBM_3740);
/// CRC-8 with polynomial 0x31, init 0xFF: EGTS transport header.
pub const CRC8_EGTS: Crc<u8> = Crc::<u8>::new(&crc::CRC_8_NRSC_5);

/// A cursor over one frame. Every read is bounds-checked and a short read names the field.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    protocol: &'static str,
}

macro_rules! read_int {
    ($be:ident, $le:ident, $t:ty, $n:expr) => {
        #[inline]
        pub fn $be(&mut self, field: &'static str) -> Result<$t, DecodeError> {
            Ok(<$t>::from_be_bytes(self.array::<$n>(field)?))
        }
        #[inline]
        pub fn $le(&mut self, field: &'static str) -> Result<$t, DecodeError> {
            Ok(<$t>::from_le_bytes(self.array::<$n>(field)?))
        }
    };
}

impl<'a> Reader<'a> {
    pub fn new(protocol: &'static str, buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            protocol,
        }
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    /// The unread rest of the frame.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// An error at the current offset.
    pub fn error(&self, reason: DecodeReason, what: impl Into<String>) -> DecodeError {
        DecodeError::new(self.protocol, reason, self.pos, what)
    }

    #[inline]
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.short_read(n, field)),
        }
    }

    /// The next `N` bytes as an array: one bounds check, no slice-to-array conversion.
    #[inline]
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        match self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
        {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.short_read(N, field)),
        }
    }

    /// The error of a read past the end; out of line, so that the message is only built (and
    /// its code only kept in the instruction cache) when a frame is actually short.
    #[cold]
    #[inline(never)]
    fn short_read(&self, n: usize, field: &'static str) -> DecodeError {
        self.error(
            DecodeReason::Truncated,
            format!("{field}: need {n} bytes, {} left", self.remaining()),
        )
    }

    #[inline]
    pub fn skip(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        self.take(n, field).map(|_| ())
    }

    #[inline]
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    #[inline]
    pub fn i8(&mut self, field: &'static str) -> Result<i8, DecodeError> {
        Ok(self.u8(field)? as i8)
    }

    read_int!(u16, u16_le, u16, 2);
    read_int!(i16, i16_le, i16, 2);
    read_int!(u32, u32_le, u32, 4);
    read_int!(i32, i32_le, i32, 4);
    read_int!(u64, u64_le, u64, 8);
    read_int!(i64, i64_le, i64, 8);

    #[inline]
    pub fn u24(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.array::<3>(field)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
    #[inline]
    pub fn u24_le(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.array::<3>(field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }
    #[inline]
    pub fn f32_le(&mut self, field: &'static str) -> Result<f32, DecodeError> {
        Ok(f32::from_bits(self.u32_le(field)?))
    }
    #[inline]
    pub fn f32(&mut self, field: &'static str) -> Result<f32, DecodeError> {
        Ok(f32::from_bits(self.u32(field)?))
    }
}

/// Two BCD digits of one byte as a number (0x59 → 59); `None` for a nibble above 9.
pub fn bcd(b: u8) -> Option<u32> {
    let (hi, lo) = (b >> 4, b & 0x0f);
    (hi <= 9 && lo <= 9).then_some(u32::from(hi) * 10 + u32::from(lo))
}

/// BCD bytes as a digit string (IMEI in GT06/JT808 logins); a trailing 0xF nibble is padding.
pub fn bcd_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for nib in [b >> 4, b & 0x0f] {
            if nib <= 9 {
                s.push(char::from(b'0' + nib));
            }
        }
    }
    s
}

/// A UTC time from calendar fields, `None` when out of range (devices send zeros and garbage).
pub fn utc(
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
) -> Option<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(year, month, day)?
        .and_hms_opt(hour, min, sec)
        .map(|t| Utc.from_utc_datetime(&t))
}

/// Milliseconds since the Unix epoch as UTC.
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Seconds since the Unix epoch as UTC.
pub fn from_secs(s: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_catalogue_check_values() {
        // "123456789" check values from the CRC catalogue.
        let data = b"123456789";
        assert_eq!(CRC16_IBM.checksum(data), 0xBB3D);
        assert_eq!(CRC16_X25.checksum(data), 0x906E);
        assert_eq!(CRC16_MODBUS.checksum(data), 0x4B37);
        assert_eq!(CRC16_CCITT_FALSE.checksum(data), 0x29B1);
        assert_eq!(CRC8_EGTS.checksum(data), 0xF7);
    }

    #[test]
    fn reader_reports_short_reads_with_offset() {
        let mut r = Reader::new("t", &[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        let e = r.u16("b").unwrap_err();
        assert_eq!(e.offset, 2);
        assert_eq!(e.reason, DecodeReason::Truncated);
        assert_eq!(e.what, "b: need 2 bytes, 1 left");
        assert_eq!(r.pos(), 2, "a short read consumes nothing");
        assert_eq!(r.u8("c").unwrap(), 3);
        let e = r.take(1, "d").unwrap_err();
        assert_eq!((e.offset, e.what.as_str()), (3, "d: need 1 bytes, 0 left"));
        assert!(r.is_empty());
    }

    #[test]
    fn bcd_decodes_digits_and_skips_padding() {
        assert_eq!(bcd(0x59), Some(59));
        assert_eq!(bcd(0x5a), None);
        assert_eq!(bcd_string(&[0x01, 0x23, 0x45, 0x6f]), "0123456");
    }
}
