//! The fuzzing harness: what one fuzz input does to a protocol, shared by the cargo-fuzz
//! targets (`tests/fuzz/`, one per protocol plus `commands`) and the stable mutation fuzzer in
//! `tests/fuzz_decoders.rs`, so both exercise the same paths and a crash found by one replays
//! in the other.
//!
//! An input is one header byte and a payload. The header chooses the transport (TCP or UDP
//! when the protocol has both), whether the session first logs in with a real login packet
//! from the corpus (so the identified-device paths, data and command answers, are reached),
//! and the chunk size the payload is fed in (frames split across reads). The payload then
//! goes through [`SessionCodec`] exactly as the connection task feeds it; every frame cut must
//! lie within the buffer, the buffer must stay under the protocol's maximum frame, and
//! nothing may panic.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::BytesMut;
use chrono::{TimeZone, Utc};
use tokio_util::codec::Decoder;

use super::codec::SessionCodec;
use super::{CommandBody, DecodeCtx, DeviceCommand, FrameCut, Protocol, Session, Transport};

/// Real packets per protocol, and one login packet per protocol and transport that
/// identifies a device, all taken from `protocols/<name>/corpus.jsonl`.
#[derive(Default)]
pub struct Seeds {
    pub packets: BTreeMap<Protocol, Vec<(Transport, Vec<u8>)>>,
    pub logins: HashMap<(Protocol, Transport), Vec<u8>>,
}

/// Load every corpus packet under `dir` (the repository's `protocols/`).
pub fn seeds(dir: &Path) -> Seeds {
    let mut seeds = Seeds::default();
    for &protocol in Protocol::ALL {
        let path = dir.join(protocol.name()).join("corpus.jsonl");
        let Ok(entries) = super::corpus::load(&path) else {
            continue;
        };
        for e in entries {
            let Ok(bytes) = e.bytes() else { continue };
            let transport = if e.transport.as_deref() == Some("udp") {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            if !protocol.transports().contains(&transport) {
                continue;
            }
            if !seeds.logins.contains_key(&(protocol, transport))
                && identifies(protocol, transport, &bytes)
            {
                seeds.logins.insert((protocol, transport), bytes.clone());
            }
            seeds
                .packets
                .entry(protocol)
                .or_default()
                .push((transport, bytes));
        }
    }
    seeds
}

fn identifies(protocol: Protocol, transport: Transport, bytes: &[u8]) -> bool {
    let mut codec = SessionCodec::new(protocol.session(transport), protocol.max_frame());
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(item)) = codec.decode(&mut buf) {
        if item.is_ok_and(|d| d.device.is_some()) {
            return true;
        }
    }
    false
}

/// What the header byte of an input asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub udp: bool,
    pub login: bool,
    /// Payload bytes per read; 0 = all at once.
    pub chunk: usize,
}

impl Header {
    pub fn from_byte(b: u8) -> Header {
        Header {
            udp: b & 1 == 1,
            login: b & 2 == 2,
            chunk: match b >> 2 {
                0 => 0,
                n => n as usize,
            },
        }
    }

    pub fn to_byte(self) -> u8 {
        (self.udp as u8) | ((self.login as u8) << 1) | ((self.chunk.min(63) as u8) << 2)
    }
}

/// Build a fuzz input from its parts (used to write seed corpora).
pub fn input(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(header.to_byte());
    v.extend_from_slice(payload);
    v
}

/// A fixed receive time, so a crash replays identically.
fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc
            .with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .unwrap_or_default(),
    }
}

/// Run one fuzz input against `protocol`. Panics (the fuzzer's finding) when a decoder
/// panics or breaks the framing contract.
pub fn run(protocol: Protocol, seeds: &Seeds, data: &[u8]) {
    let Some((&h, payload)) = data.split_first() else {
        return;
    };
    let h = Header::from_byte(h);
    let transport = if h.udp && protocol.transports().contains(&Transport::Udp) {
        Transport::Udp
    } else if protocol.transports().contains(&Transport::Tcp) {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let mut codec = SessionCodec::new(protocol.session(transport), protocol.max_frame());
    if h.login {
        if let Some(login) = seeds.logins.get(&(protocol, transport)) {
            feed(&mut codec, protocol, login, 0);
        }
    }
    feed(&mut codec, protocol, payload, h.chunk);
    // The raw framer and decoder, without the codec's clamping, must keep their contract too.
    check_framer(codec.session_mut(), protocol, payload);
    let _ = codec.session_mut().decode(payload, &ctx());
}

/// Feed `bytes` through the codec `chunk` bytes at a time, as reads from a socket would.
fn feed(codec: &mut SessionCodec, protocol: Protocol, bytes: &[u8], chunk: usize) {
    let chunk = if chunk == 0 {
        bytes.len().max(1)
    } else {
        chunk
    };
    let mut buf = BytesMut::new();
    for part in bytes.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    assert!(
                        buf.len() <= protocol.max_frame(),
                        "{protocol}: {} bytes buffered, over the maximum frame",
                        buf.len()
                    );
                    break;
                }
                // A framing error closes the connection: the rest of the stream is not read.
                Err(_) => return,
            }
        }
    }
}

fn check_framer(session: &mut dyn Session, protocol: Protocol, bytes: &[u8]) {
    assert_eq!(
        session.next_frame(&[]),
        Ok(FrameCut::NeedMore),
        "{protocol}: an empty buffer needs more bytes"
    );
    let mut rest = bytes;
    // Bounded: every step consumes at least one byte or stops.
    while !rest.is_empty() {
        match session.next_frame(rest) {
            Ok(FrameCut::NeedMore) | Err(_) => return,
            Ok(FrameCut::Skip(n)) => {
                assert!(
                    (1..=rest.len()).contains(&n),
                    "{protocol}: skip {n} of a {}-byte buffer",
                    rest.len()
                );
                rest = &rest[n..];
            }
            Ok(FrameCut::Frame(n)) => {
                assert!(
                    (1..=rest.len()).contains(&n),
                    "{protocol}: frame of {n} from a {}-byte buffer",
                    rest.len()
                );
                let _ = session.decode(&rest[..n], &ctx());
                rest = &rest[n..];
            }
        }
    }
}

/// The real packets of `protocol` (`protocols/<name>/corpus.jsonl`, every transport).
pub fn corpus_packets(protocol: Protocol) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("protocols")
        .join(protocol.name())
        .join("corpus.jsonl");
    super::corpus::load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .filter_map(|e| e.bytes().ok())
        .collect()
}

/// Every prefix of `packet`, then `rounds` copies with one to four bytes replaced at random
/// (xorshift from `seed`, so a failure replays): the inputs of the per-protocol "never panics"
/// unit tests, which reach decoder states the codec-level fuzzer rarely does (a protocol's
/// own constructors, checksums fixed up after mutation).
pub fn truncations_and_mutations(packet: &[u8], rounds: usize, seed: &mut u64) -> Vec<Vec<u8>> {
    let mut rnd = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let mut out: Vec<Vec<u8>> = (0..=packet.len()).map(|n| packet[..n].to_vec()).collect();
    if packet.is_empty() {
        return out;
    }
    for _ in 0..rounds {
        let mut m = packet.to_vec();
        for _ in 0..1 + rnd() % 4 {
            let i = (rnd() as usize) % m.len();
            m[i] = (rnd() >> 24) as u8;
        }
        out.push(m);
    }
    out
}

/// Cut `bytes` with a fresh session's framer and decode each frame (every cut must lie inside
/// the buffer), then decode the whole buffer as one frame with another fresh session: none
/// of it may panic.
pub fn exercise(protocol: Protocol, new: impl Fn() -> Box<dyn Session>, bytes: &[u8]) {
    check_framer(new().as_mut(), protocol, bytes);
    let _ = new().decode(bytes, &ctx());
}

/// The command path: log in, encode every kind of command (text from the input), then take
/// the rest of the input as the device's answer. `data[0]` picks the protocol.
pub fn run_command(seeds: &Seeds, data: &[u8]) {
    let [pick, split, rest @ ..] = data else {
        return;
    };
    // Protocols with a listener; the MQTT JSON codec has no session transport to fuzz here.
    let listened: Vec<Protocol> = Protocol::ALL
        .iter()
        .copied()
        .filter(|p| !p.transports().is_empty())
        .collect();
    let protocol = listened[*pick as usize % listened.len()];
    let transport = protocol.transports()[0];
    let mut codec = SessionCodec::new(protocol.session(transport), protocol.max_frame());
    let at = (*split as usize).min(rest.len());
    let (text, answer) = rest.split_at(at);
    // Unidentified sessions must refuse cleanly, identified ones must encode or refuse.
    let text = String::from_utf8_lossy(text).into_owned();
    let bodies = [
        CommandBody::EngineStop,
        CommandBody::EngineResume,
        CommandBody::Text(text),
    ];
    for (seq, body) in bodies.iter().enumerate() {
        let _ = codec.session_mut().encode_command(&DeviceCommand {
            seq: seq as u32,
            body: body.clone(),
        });
    }
    if let Some(login) = seeds.logins.get(&(protocol, transport)) {
        feed(&mut codec, protocol, login, 0);
    }
    for (seq, body) in bodies.iter().enumerate() {
        let _ = codec.session_mut().encode_command(&DeviceCommand {
            seq: u32::MAX - seq as u32,
            body: body.clone(),
        });
    }
    feed(&mut codec, protocol, answer, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_byte_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(Header::from_byte(b).to_byte(), b);
        }
    }
}
