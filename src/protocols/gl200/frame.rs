//! Cutting Queclink frames out of a byte stream.
//!
//! Text messages run from `+` to the `$` tail character. A few firmwares (and NUL-padded UDP
//! senders) end a message with NUL, CR or LF instead, and some old ones send no tail at all:
//! such a message is taken as whole when another message header follows it, when it is a UDP
//! datagram, or when the buffer ends in the `,<14-digit send time>,<4-hex count>` every
//! message closes with. Binary frames carry their total length at a header-specific offset.

use super::binary::{binary_frame_len, is_tlv};
use super::{MAX_FRAME, NAME};
use crate::protocols::DecodeReason;
use crate::protocols::{DecodeError, FrameCut, Transport};

/// Bytes needed before a binary header can be told from a text one and its length read.
pub const MIN_BINARY: usize = 11;

/// The headers a binary frame starts with (`+ACK` only when no `:` follows).
pub const BINARY_HEADERS: [&[u8; 4]; 10] = [
    b"+RSP", b"+BSP", b"+EVT", b"+BVT", b"+INF", b"+BNF", b"+HBD", b"+CRD", b"+BRD", b"+LGN",
];

/// Text message starts a frame boundary can be found at when a tail is missing.
const TEXT_STARTS: [&[u8]; 4] = [b"+RESP:", b"+BUFF:", b"+ACK:", b"+SACK:"];

pub fn next_frame(buf: &[u8], transport: Transport) -> Result<FrameCut, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(FrameCut::NeedMore);
    };
    if first != b'+' {
        // Noise, or the CR LF some firmwares put after the tail: drop it up to the next '+'.
        let n = buf.iter().position(|&b| b == b'+').unwrap_or(buf.len());
        return Ok(FrameCut::Skip(n));
    }
    if could_be_binary_prefix(buf) {
        if buf.len() < MIN_BINARY {
            return Ok(if transport == Transport::Udp && !maybe_binary_short(buf) {
                text_frame(buf, transport)?
            } else {
                FrameCut::NeedMore
            });
        }
        let len = binary_frame_len(buf)?;
        if len > MAX_FRAME {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::TooLarge,
                0,
                format!("binary length {len} over {MAX_FRAME}"),
            ));
        }
        if len < MIN_BINARY {
            return Err(DecodeError::new(
                NAME,
                DecodeReason::Framing,
                0,
                format!("binary length {len} too short"),
            ));
        }
        return Ok(if buf.len() >= len {
            FrameCut::Frame(len)
        } else {
            FrameCut::NeedMore
        });
    }
    text_frame(buf, transport)
}

/// True while `buf` may still turn out to be a binary frame.
fn could_be_binary_prefix(buf: &[u8]) -> bool {
    if is_tlv(buf) {
        return true;
    }
    let head = &buf[..buf.len().min(4)];
    if BINARY_HEADERS.iter().any(|h| h.starts_with(head)) {
        return true;
    }
    if b"+ACK".starts_with(head) {
        // "+ACK:" is text, "+ACK" and any other byte binary.
        return buf.get(4).map(|&b| b != b':').unwrap_or(true);
    }
    false
}

/// A short UDP datagram is binary only when its header is complete and binary.
fn maybe_binary_short(buf: &[u8]) -> bool {
    is_tlv(buf) || buf.len() >= 4 && BINARY_HEADERS.iter().any(|h| &buf[..4] == *h)
}

fn text_frame(buf: &[u8], transport: Transport) -> Result<FrameCut, DecodeError> {
    if let Some(i) = buf
        .iter()
        .position(|&b| matches!(b, b'$' | 0 | b'\r' | b'\n'))
    {
        if i + 1 > MAX_FRAME {
            return Err(too_long());
        }
        return Ok(FrameCut::Frame(i + 1));
    }
    // A message that lost its tail, followed by the next one.
    if let Some(j) = (1..buf.len()).find(|&j| TEXT_STARTS.iter().any(|s| buf[j..].starts_with(s))) {
        return Ok(FrameCut::Frame(j.min(MAX_FRAME)));
    }
    if buf.len() > MAX_FRAME {
        return Err(too_long());
    }
    if transport == Transport::Udp || ends_like_whole_message(buf) {
        return Ok(FrameCut::Frame(buf.len()));
    }
    Ok(FrameCut::NeedMore)
}

fn too_long() -> DecodeError {
    DecodeError::new(
        NAME,
        DecodeReason::TooLarge,
        0,
        format!("text message without tail over {MAX_FRAME} bytes"),
    )
}

/// `…,<not a latitude>,<YYYYMMDDHHMMSS>,<XXXX>` at the end of the buffer: the send time and
/// count that close every message. A latitude before it would be a fix time and an MCC in the
/// middle of a position block, cut by a TCP segment boundary.
pub fn ends_like_whole_message(buf: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(buf) else {
        return false;
    };
    let fields: Vec<&str> = s.rsplitn(4, ',').collect();
    // GL100: `…,<ta>,<count>,<version>`.
    if let [ver, count, ta, _] = fields[..] {
        if super::text::is_gl100_tail(&[count, ver])
            && ta.len() == 2
            && ta.bytes().all(|b| b.is_ascii_digit())
        {
            return true;
        }
    }
    let mut it = s.rsplit(',');
    let (Some(count), Some(time), Some(before)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    count.len() == 4
        && count.bytes().all(|b| b.is_ascii_hexdigit())
        && time.len() == 14
        && time.bytes().all(|b| b.is_ascii_digit())
        && !super::text::is_coordinate(before)
}
