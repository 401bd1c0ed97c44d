//! Queclink @Track trackers (GL200/GL300/GL500 personal trackers, GV55/GV300/GV350/GV500/GV600
//! vehicle trackers, CV100/CV200 …) over TCP and UDP, Traccar's `gl200` port 5004.
//!
//! Two wire forms share the port:
//! * ASCII reports `+RESP:GTxxx,<protocol version>,<imei>,<device name>,…,<send time>,<count>$`,
//!   buffered ones as `+BUFF:` with the same layout, command acknowledgements `+ACK:GTxxx,…`
//!   and the heartbeat `+ACK:GTHBD,…` ([`text`]).
//! * Binary frames `+RSP`/`+EVT`/`+INF`/`+ACK` with a length field, and the newer frames whose
//!   second byte is 0 ([`binary`]).
//!
//! Frame cutting is in [`frame`], command encoding and device-side packet builders in
//! [`encode`]. Notes in our own words: `protocols/gl200/README.md`.

use bytes::Bytes;

use super::{
    CommandBody, CommandError, DecodeCtx, DecodeError, Decoded, DeviceCommand, FrameCut, Protocol,
    ProtocolSpec, Session, Transport,
};
use crate::model::DeviceId;

pub mod binary;
pub mod encode;
pub mod frame;
pub mod text;

pub use encode::{encode_command_text, encode_fri, encode_heartbeat, FriFix};

pub(crate) const NAME: &str = "gl200";

/// Largest frame accepted. Text reports are a few hundred bytes (CAN reports with every field
/// about 700); binary frames carry a 16-bit length, compressed position batches ~1.5 KiB.
pub const MAX_FRAME: usize = 16_384;

/// The password Queclink ships GL200-family devices with; `AT+GT…` commands start with it.
pub const DEFAULT_PASSWORD: &str = "gl200";

pub const SPEC: ProtocolSpec = ProtocolSpec {
    name: NAME,
    port: 5004,
    transports: &[Transport::Tcp, Transport::Udp],
    max_frame: MAX_FRAME,
    session: |t| Box::new(Gl200Session::new(t)),
};

/// Queclink protocol state of one connection or UDP peer.
pub struct Gl200Session {
    transport: Transport,
    device: Option<DeviceId>,
    /// Answer every report with `+SACK:<count>$` (devices configured for server acks with
    /// `AT+GTSRI`); off by default, as in Traccar.
    report_acks: bool,
    password: String,
}

impl Gl200Session {
    pub fn new(transport: Transport) -> Self {
        Gl200Session {
            transport,
            device: None,
            report_acks: false,
            password: DEFAULT_PASSWORD.to_string(),
        }
    }

    /// Turn `+SACK:<count>$` answers to reports on or off.
    pub fn with_report_acks(mut self, on: bool) -> Self {
        self.report_acks = on;
        self
    }

    /// The device password commands are sent with (`gl200` unless the installer changed it).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = password.into();
        self
    }

    /// The device this session has seen, if any.
    pub fn device(&self) -> Option<&DeviceId> {
        self.device.as_ref()
    }
}

impl Session for Gl200Session {
    fn next_frame(&mut self, buf: &[u8]) -> Result<FrameCut, DecodeError> {
        frame::next_frame(buf, self.transport)
    }

    fn decode(&mut self, frame: &[u8], ctx: &DecodeCtx) -> Result<Decoded, DecodeError> {
        let d = if binary::is_binary(frame) {
            binary::decode(frame)?
        } else {
            text::decode(frame, ctx, self.report_acks)?
        };
        if let Some(id) = &d.device {
            self.device = Some(id.clone());
        }
        Ok(d)
    }

    fn encode_command(&mut self, cmd: &DeviceCommand) -> Result<Bytes, CommandError> {
        let text = match &cmd.body {
            CommandBody::EngineStop => encode::engine_command(&self.password, true, cmd.seq),
            CommandBody::EngineResume => encode::engine_command(&self.password, false, cmd.seq),
            CommandBody::Text(t) => encode_command_text(t),
        };
        Ok(Bytes::from(text.into_bytes()))
    }

    fn protocol(&self) -> Protocol {
        Protocol::Gl200
    }
}

/// The device family a protocol version names: its first two hex digits, or the first six
/// for the ten-digit versions of the newer models. Empty when unknown.
pub fn model_of(protocol_version: &str) -> &'static str {
    let key = if protocol_version.len() > 6 {
        protocol_version.get(..6)
    } else {
        protocol_version.get(..2)
    };
    let Some(key) = key else { return "" };
    MODELS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, m)| *m)
        .unwrap_or("")
}

/// Protocol-version prefixes of the models seen in the field.
const MODELS: &[(&str, &str)] = &[
    ("02", "GL200"),
    ("04", "GV200"),
    ("06", "GV300"),
    ("08", "GMT100"),
    ("09", "GV50P"),
    ("0F", "GV55"),
    ("10", "GV55 LITE"),
    ("11", "GL500"),
    ("1A", "GL300"),
    ("1F", "GV500"),
    ("21", "GL200"),
    ("25", "GV300"),
    ("27", "GV300W"),
    ("28", "GL300VC"),
    ("2C", "GL300W"),
    ("2D", "GV500VC"),
    ("2F", "GV55"),
    ("30", "GL300"),
    ("31", "GV65"),
    ("35", "GV200"),
    ("36", "GV500"),
    ("3F", "GMT100"),
    ("40", "GL500"),
    ("41", "GV75W"),
    ("42", "GT501"),
    ("44", "GL530"),
    ("45", "GB100"),
    ("4F", "GV56"),
    ("50", "GV55W"),
    ("52", "GL50"),
    ("55", "GL50B"),
    ("5E", "GV500MAP"),
    ("6E", "GV310LAU"),
    ("BD", "CV200"),
    ("C2", "GV600M"),
    ("C3", "GL320M"),
    ("DC", "GV600MG"),
    ("DE", "GL500M"),
    ("DF", "CV100LG"),
    ("F1", "GV350M"),
    ("F8", "GV800W"),
    ("FC", "GV600W"),
    ("802004", "GV58LAU"),
    ("802005", "GV355CEU"),
    ("80201E", "GV30CEU"),
];

#[cfg(test)]
mod tests;
