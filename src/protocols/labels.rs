//! The two closed sets a codec reports to the connection: what kind of message a frame was
//! ([`MessageKind`]) and why a frame failed ([`DecodeReason`]). The connection branches on
//! them (an oversize frame closes it as a `max_frame` violation, `other` messages go to the
//! rate-limited log) and counts them: `as_str()` is the metric label documented in
//! docs/metrics.md, so a new variant is a new label value there too.

use std::fmt;

/// Message type of one decoded frame: the `kind` label of `fleetgate_ingest_messages_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A device identifying itself (login, handshake, auth).
    Login,
    /// One or more fixes.
    Data,
    /// A keep-alive.
    Heartbeat,
    /// Device state without a fix.
    Status,
    /// An alarm report.
    Alarm,
    /// Cell-tower (LBS) location without GPS.
    Lbs,
    /// The device's answer to a command we sent.
    CommandResponse,
    /// A frame the protocol answers with a checksum-error reply (Wialon `#AD#10`…).
    CrcError,
    /// Device information (firmware, ICCID, IMSI…).
    Info,
    /// The device asks for the server time (GT06 0x8A).
    TimeRequest,
    /// The device acknowledges something we sent.
    Ack,
    /// Diagnostic trouble codes.
    Dtc,
    /// A text message from the driver.
    Message,
    /// A photo (or a chunk of one).
    Photo,
    /// A ping that needs no answer beyond its reply.
    Ping,
    /// OBD data (GT06 0x8C).
    Obd,
    /// Pass-through data of a serial device (GT06 0x9B).
    Serial,
    /// A data message refused by its own protocol's rules (Wialon answers it with an error code).
    Invalid,
    /// An OsmAnd JSON body that does not parse (answered 400).
    BadJson,
    /// An OsmAnd request without a device id (answered 400).
    NoDevice,
    /// An OsmAnd request without a usable location (answered 400).
    NoLocation,
    /// Something fleetgate does not use (logged at a limited rate).
    #[default]
    Other,
}

impl MessageKind {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Login => "login",
            MessageKind::Data => "data",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Status => "status",
            MessageKind::Alarm => "alarm",
            MessageKind::Lbs => "lbs",
            MessageKind::CommandResponse => "command_response",
            MessageKind::CrcError => "crc_error",
            MessageKind::Info => "info",
            MessageKind::TimeRequest => "time_request",
            MessageKind::Ack => "ack",
            MessageKind::Dtc => "dtc",
            MessageKind::Message => "message",
            MessageKind::Photo => "photo",
            MessageKind::Ping => "ping",
            MessageKind::Obd => "obd",
            MessageKind::Serial => "serial",
            MessageKind::Invalid => "invalid",
            MessageKind::BadJson => "bad_json",
            MessageKind::NoDevice => "no_device",
            MessageKind::NoLocation => "no_location",
            MessageKind::Other => "other",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame could not be cut or decoded: the `reason` label of
/// `fleetgate_ingest_decode_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeReason {
    /// A checksum or CRC does not match the bytes.
    Crc,
    /// Bad markers, a length field that contradicts the frame, a malformed structure.
    Framing,
    /// A frame (declared or unterminated) over the protocol's maximum: the connection closes
    /// as a `max_frame` violation.
    TooLarge,
    /// The frame ends before a field it declares.
    Truncated,
    /// A device id that is not one (empty, not digits, wrong length).
    BadIdentity,
    /// A date or time that does not exist.
    BadTime,
    /// A field whose value is out of its range or not a number.
    BadField,
    /// Text that is not the encoding the protocol uses.
    Encoding,
    /// A JSON body that does not parse or lacks a required member.
    Json,
    /// A valid frame of a version or type fleetgate does not decode.
    Unsupported,
    /// A payload type the protocol does not define.
    UnknownPayload,
    /// Two counts of one frame disagree (Teltonika's leading and trailing record counts).
    CountMismatch,
}

impl DecodeReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeReason::Crc => "crc",
            DecodeReason::Framing => "framing",
            DecodeReason::TooLarge => "too_large",
            DecodeReason::Truncated => "truncated",
            DecodeReason::BadIdentity => "bad_identity",
            DecodeReason::BadTime => "bad_time",
            DecodeReason::BadField => "bad_field",
            DecodeReason::Encoding => "encoding",
            DecodeReason::Json => "json",
            DecodeReason::Unsupported => "unsupported",
            DecodeReason::UnknownPayload => "unknown_payload",
            DecodeReason::CountMismatch => "count_mismatch",
        }
    }
}

impl fmt::Display for DecodeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
