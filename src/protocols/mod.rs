//! Tracker protocols: one module per protocol, each a pure codec (bytes in, messages and
//! replies out) that never sees a socket. The listeners in `crate::ingest` drive them.
//!
//! A protocol is used through a [`Session`]: per-connection state (for TCP) or per-peer state
//! (for UDP) that first cuts frames out of a byte stream ([`Session::next_frame`]) and then
//! decodes one frame ([`Session::decode`]). Replies are computed by the codec but sent by the
//! connection only after the frame's positions are committed to storage.

pub mod codec;
pub mod corpus;
pub mod fuzz;
mod labels;
pub mod options;
pub mod util;

pub mod adm;
pub mod arnavi;
pub mod autofon;
pub mod egts;
pub mod galileo;
pub mod gl200;
pub mod gps103;
pub mod gt06;
pub mod h02;
pub mod jt808;
pub mod meitrack;
pub mod mqtt_json;
pub mod navtelecom;
pub mod omnicomm;
pub mod osmand;
pub mod ruptela;
pub mod teltonika;
pub mod wialon;

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::model::{Attributes, DeviceId, Position};

pub use labels::{DecodeReason, MessageKind};

/// The network transport a session runs over; some protocols frame differently on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What the framer found at the start of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameCut {
    /// The buffer does not yet hold a whole frame.
    NeedMore,
    /// Drop this many leading bytes (noise before a frame marker) and try again.
    Skip(usize),
    /// A whole frame: the first `len` bytes of the buffer.
    Frame(usize),
}

/// Context the decoder may need that does not come from the bytes.
#[derive(Clone, Copy, Debug)]
pub struct DecodeCtx {
    /// Server receive time: used where a protocol omits the fix time (Wialon `NA`) and to
    /// resolve partial dates. Injected so that tests and replays are deterministic.
    pub now: DateTime<Utc>,
}

impl DecodeCtx {
    pub fn now() -> Self {
        DecodeCtx { now: Utc::now() }
    }
}

/// A device's answer to a command we sent.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandResponse {
    /// The text (or hex of a binary answer) as the device sent it.
    pub text: String,
    /// The device said the command failed (when the protocol tells); `None` when it does not say.
    pub success: Option<bool>,
    /// The sequence/serial number the device echoed, for protocols that carry one.
    pub seq: Option<u32>,
}

/// Everything one frame carried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// The device this frame identifies (login/handshake, or an id carried in every message).
    pub device: Option<DeviceId>,
    /// Fixes, in the order the device sent them.
    pub positions: Vec<Position>,
    /// Device state without a fix (heartbeat battery level, alarm without GPS…).
    pub status: Option<Attributes>,
    /// Bytes to send back: after the positions are committed, or at once when there are none.
    pub reply: Option<Bytes>,
    /// The answer to a command we sent.
    pub command_response: Option<CommandResponse>,
    /// Message type, the label for metrics and logs.
    pub kind: MessageKind,
}

impl Decoded {
    pub fn kind(kind: MessageKind) -> Self {
        Decoded {
            kind,
            ..Decoded::default()
        }
    }
}

/// A decode failure: which protocol, which field, where, and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{protocol}: {what} at offset {offset}")]
pub struct DecodeError {
    pub protocol: &'static str,
    pub offset: usize,
    pub what: String,
    /// Why, as the rejects metric counts it.
    pub reason: DecodeReason,
}

impl DecodeError {
    pub fn new(
        protocol: &'static str,
        reason: DecodeReason,
        offset: usize,
        what: impl Into<String>,
    ) -> Self {
        DecodeError {
            protocol,
            offset,
            what: what.into(),
            reason,
        }
    }
}

/// A command to put on the wire. Which text or bytes an engine stop becomes is the codec's
/// knowledge (or a per-model override sent as `Text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBody {
    /// Cut the engine (set the immobiliser output).
    EngineStop,
    /// Allow the engine to start again (clear the immobiliser output).
    EngineResume,
    /// A raw command text in the device's own command language (`setdigout 1`, `Relay,1#`…).
    Text(String),
}

/// One command, with a sequence number the protocol may carry to match the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCommand {
    pub seq: u32,
    pub body: CommandBody,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}: this protocol has no encoding for that command")]
    Unsupported(&'static str),
    #[error("{0}: command cannot be sent before the device has identified itself")]
    NotIdentified(&'static str),
}

/// Per-connection (TCP) or per-peer (UDP) protocol state.
pub trait Session: Send + 'static {
    /// Find the next frame at the start of `buf`. Must not panic on any input; a frame that
    /// can never become valid (bad marker, declared length over the protocol's maximum) is an
    /// error, after which the connection is closed.
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError>;

    /// Decode one whole frame as cut by [`Session::next_frame`].
    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError>;

    /// The reply that refuses the device identified by the last frame (Teltonika answers
    /// `0x00` to an unknown IMEI). `None`: the connection is just closed.
    fn reject_reply(&self) -> Option<Bytes> {
        None
    }

    /// Encode a command for this device in its own command format.
    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let _ = cmd;
        Err(CommandError::Unsupported(self.protocol().name()))
    }

    fn protocol(&self) -> Protocol;
}

/// What the rest of fleetgate needs to know about one protocol; each module exports one.
pub struct ProtocolSpec {
    /// Lower-case name: the `[listeners]` key, the corpus directory, the metrics label.
    pub name: &'static str,
    /// Traccar's port numbering, which installers already configure trackers for.
    pub port: u16,
    /// Transports the devices use; a UDP listener shares the TCP port number.
    pub transports: &'static [Transport],
    /// Largest frame a device of this protocol can legitimately send; more is hostile.
    pub max_frame: usize,
    /// A fresh session for one connection (TCP) or one peer (UDP).
    pub session: fn(Transport) -> Box<dyn Session>,
}

/// Every protocol fleetgate speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Teltonika,
    Gt06,
    Wialon,
    Egts,
    Galileo,
    Adm,
    Ruptela,
    H02,
    Arnavi,
    Gl200,
    Meitrack,
    Jt808,
    OsmAnd,
    Gps103,
    Navtelecom,
    Autofon,
    Omnicomm,
    /// fleetgate's JSON position over MQTT (no socket listener of its own).
    Mqtt,
}

/// What a device id of a protocol looks like, checked before an unknown device is registered
/// (a known vehicle's tracker is admitted whatever its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdForm {
    /// An IMEI (15 digits; the check digit is verified only when `[devices] imei_check_digit`).
    Imei,
    /// A terminal or unit number: digits only, 1 to `max`.
    Digits { max: usize },
    /// A name the user chose: printable ASCII without spaces, 1 to `max`.
    Printable { max: usize },
}

impl IdForm {
    /// `Err` says what is wrong with `id`.
    pub fn check(self, id: &str, imei_check_digit: bool) -> Result<(), &'static str> {
        match self {
            IdForm::Imei => {
                // Test rigs and clones send shorter or longer numbers: digits, 8 to 17.
                if !(8..=17).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("an IMEI is 8 to 17 digits");
                }
                if imei_check_digit && (id.len() != 15 || !luhn(id)) {
                    return Err("not a 15-digit IMEI with a valid check digit");
                }
                Ok(())
            }
            IdForm::Digits { max } => {
                if id.is_empty() || id.len() > max || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("a terminal number is digits only");
                }
                Ok(())
            }
            IdForm::Printable { max } => {
                if id.is_empty() || id.len() > max || !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("a unit id is printable ASCII without spaces");
                }
                Ok(())
            }
        }
    }
}

/// The Luhn check digit of an IMEI.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

impl Protocol {
    /// The form of this protocol's device ids (docs/protocols.md, "Device ids").
    pub fn id_form(self) -> IdForm {
        match self {
            Protocol::Teltonika
            | Protocol::Gt06
            | Protocol::Galileo
            | Protocol::Adm
            | Protocol::Ruptela
            | Protocol::Gl200
            | Protocol::Meitrack
            | Protocol::Gps103
            | Protocol::Navtelecom
            | Protocol::Autofon => IdForm::Imei,
            // H02 sends a 10- or 15-digit id, JT/T 808 a 12-digit BCD phone number, EGTS and
            // Arnavi a numeric terminal or unit id.
            Protocol::H02
            | Protocol::Jt808
            | Protocol::Egts
            | Protocol::Arnavi
            | Protocol::Omnicomm => IdForm::Digits { max: 20 },
            Protocol::Wialon | Protocol::OsmAnd | Protocol::Mqtt => IdForm::Printable { max: 64 },
        }
    }

    pub const ALL: &'static [Protocol] = &[
        Protocol::Teltonika,
        Protocol::Gt06,
        Protocol::Wialon,
        Protocol::Egts,
        Protocol::Galileo,
        Protocol::Adm,
        Protocol::Ruptela,
        Protocol::H02,
        Protocol::Arnavi,
        Protocol::Gl200,
        Protocol::Meitrack,
        Protocol::Jt808,
        Protocol::OsmAnd,
        Protocol::Gps103,
        Protocol::Navtelecom,
        Protocol::Autofon,
        Protocol::Omnicomm,
        Protocol::Mqtt,
    ];

    pub fn spec(self) -> &'static ProtocolSpec {
        match self {
            Protocol::Teltonika => &teltonika::SPEC,
            Protocol::Gt06 => &gt06::SPEC,
            Protocol::Wialon => &wialon::SPEC,
            Protocol::Egts => &egts::SPEC,
            Protocol::Galileo => &galileo::SPEC,
            Protocol::Adm => &adm::SPEC,
            Protocol::Ruptela => &ruptela::SPEC,
            Protocol::H02 => &h02::SPEC,
            Protocol::Arnavi => &arnavi::SPEC,
            Protocol::Gl200 => &gl200::SPEC,
            Protocol::Meitrack => &meitrack::SPEC,
            Protocol::Jt808 => &jt808::SPEC,
            Protocol::OsmAnd => &osmand::SPEC,
            Protocol::Gps103 => &gps103::SPEC,
            Protocol::Navtelecom => &navtelecom::SPEC,
            Protocol::Autofon => &autofon::SPEC,
            Protocol::Omnicomm => &omnicomm::SPEC,
            Protocol::Mqtt => &mqtt_json::SPEC,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn default_port(self) -> u16 {
        self.spec().port
    }

    pub fn transports(self) -> &'static [Transport] {
        self.spec().transports
    }

    pub fn max_frame(self) -> usize {
        self.spec().max_frame
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        let name = name.to_ascii_lowercase();
        Protocol::ALL.iter().copied().find(|p| p.name() == name)
    }

    pub fn session(self, transport: Transport) -> Box<dyn Session> {
        (self.spec().session)(transport)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod id_form_tests {
    use super::*;

    #[test]
    fn device_ids_must_match_their_protocols_form() {
        let imei = Protocol::Teltonika.id_form();
        assert!(imei.check("356307042441101", false).is_ok());
        assert!(
            imei.check("490154203237518", true).is_ok(),
            "a valid check digit"
        );
        assert!(
            imei.check("490154203237519", true).is_err(),
            "a wrong check digit"
        );
        assert!(
            imei.check("490154203237519", false).is_ok(),
            "not checked by default"
        );
        for bad in [
            "",
            "12345",
            "35630704244110\n",
            "\u{0}\u{1}abc",
            "356307042441101234",
        ] {
            assert!(imei.check(bad, false).is_err(), "{bad:?}");
        }
        let jt = Protocol::Jt808.id_form();
        assert!(jt.check("013912345678", false).is_ok());
        assert!(jt.check("01391234567a", false).is_err());
        let wialon = Protocol::Wialon.id_form();
        assert!(wialon.check("phone-77", false).is_ok());
        for bad in ["a b", "x\r\ny", "\u{202e}evil", &"a".repeat(65)] {
            assert!(wialon.check(bad, false).is_err(), "{bad:?}");
        }
    }
}
