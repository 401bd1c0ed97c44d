//! What a simulated tracker puts on the wire and how it reads the server's answers, per
//! protocol. Encoding reuses the codecs' own device-side encoders (`teltonika::encode_*`,
//! `gt06::encode_*`, `wialon::encode_*`), so the CRCs are the ones the decoders check.
//! Reading is pure: [`next_message`] cuts one server message (an ack or a command) out of the
//! bytes received so far.

use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::route::Fix;
use crate::protocols::{gt06, teltonika, wialon};

/// The protocols the simulator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SimProtocol {
    /// Teltonika Codec 8E over TCP: IMEI handshake, AVL packets, 4-byte record-count ack.
    Teltonika,
    /// Concox GT06: login 0x01, GPS+LBS 0x22, each acked by serial (CRC-ITU).
    Gt06,
    /// Wialon IPS 2.0: `#L#`, `#D#` (one record) or `#B#` (several), with CRC16.
    Wialon,
}

impl SimProtocol {
    /// The fleetgate protocol name (its `[listeners]` key).
    pub fn name(self) -> &'static str {
        match self {
            SimProtocol::Teltonika => "teltonika",
            SimProtocol::Gt06 => "gt06",
            SimProtocol::Wialon => "wialon",
        }
    }

    /// The finest step of the protocol's fix time, milliseconds: two fixes of a device must
    /// differ by at least this much, or the second is taken for a resend.
    pub fn time_resolution_ms(self) -> i64 {
        match self {
            SimProtocol::Teltonika => 1,
            SimProtocol::Gt06 | SimProtocol::Wialon => 1000,
        }
    }

    /// fleetgate's default port for the protocol.
    pub fn default_port(self) -> u16 {
        match self {
            SimProtocol::Teltonika => 5027,
            SimProtocol::Gt06 => 5023,
            SimProtocol::Wialon => 5039,
        }
    }
}

/// One record as a device reports it.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub time: DateTime<Utc>,
    pub fix: Fix,
    /// Teltonika DIN2: the "wants to return" button on the default profile.
    pub din2: bool,
    /// The immobiliser relay (Teltonika DOUT1, Wialon output bit 0): on while blocked.
    pub dout1: bool,
}

/// What the device expects back for what it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Login,
    /// Teltonika / Wialon black box: this many records; GT06: the packet's serial.
    Records(u32),
    Serial(u16),
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// Login accepted (`true`) or refused.
    LoginAck(bool),
    /// Teltonika / Wialon: records acknowledged.
    RecordAck(u32),
    /// GT06: the ack of the packet with this serial.
    SerialAck(u16),
    /// A command to answer (its text) and the answer to write.
    Command { text: String, answer: Bytes },
    /// Anything else the server said (a checksum-error code, …).
    Other(String),
}

/// A device's outgoing side: builds the login and data packets.
pub struct Encoder {
    protocol: SimProtocol,
    imei: String,
    serial: u16,
}

impl Encoder {
    pub fn new(protocol: SimProtocol, imei: String) -> Encoder {
        Encoder {
            protocol,
            imei,
            serial: 0,
        }
    }

    fn next_serial(&mut self) -> u16 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// The session-opening packet.
    pub fn login(&mut self) -> (Bytes, Expect) {
        let b = match self.protocol {
            SimProtocol::Teltonika => teltonika::encode_imei(&self.imei),
            SimProtocol::Gt06 => {
                let s = self.next_serial();
                gt06::encode_login(&self.imei, s)
            }
            SimProtocol::Wialon => wialon::encode_login(&self.imei, None, true),
        };
        (b, Expect::Login)
    }

    /// Data packets for `records`: one packet for Teltonika and Wialon, one per record for
    /// GT06 (whose 0x22 message carries one fix), each with the ack it waits for.
    pub fn data(&mut self, records: &[Record], out: &mut Vec<(Bytes, Expect)>) {
        match self.protocol {
            SimProtocol::Teltonika => {
                let recs: Vec<teltonika::AvlRecord> = records.iter().map(avl).collect();
                out.push((
                    teltonika::encode_avl_packet(teltonika::CODEC_8E, &recs),
                    Expect::Records(records.len() as u32),
                ));
            }
            SimProtocol::Gt06 => {
                for r in records {
                    let s = self.next_serial();
                    let fix = gt06::GpsFix {
                        time: r.time,
                        valid: true,
                        lat: r.fix.lat,
                        lon: r.fix.lon,
                        speed_kmh: r.fix.speed_kmh.round().clamp(0.0, 255.0) as u8,
                        course: r.fix.course.round() as u16 % 360,
                        satellites: 9,
                        ignition: r.fix.ignition,
                        cell: (250, 1, 7701, 0x00_3a_21),
                    };
                    out.push((gt06::encode_gps(&fix, s), Expect::Serial(s)));
                }
            }
            SimProtocol::Wialon => {
                if records.len() == 1 {
                    out.push((
                        wialon::encode_data(&ips(&records[0]), true),
                        Expect::Records(1),
                    ));
                } else {
                    let recs: Vec<_> = records.iter().map(ips).collect();
                    out.push((
                        wialon::encode_black_box(&recs, true),
                        Expect::Records(records.len() as u32),
                    ));
                }
            }
        }
    }
}

fn avl(r: &Record) -> teltonika::AvlRecord {
    use teltonika::io;
    teltonika::AvlRecord {
        time: r.time,
        lat: r.fix.lat,
        lon: r.fix.lon,
        speed_kmh: r.fix.speed_kmh.round() as u16,
        course: r.fix.course.round() as u16 % 360,
        altitude: 150,
        satellites: 11,
        io: vec![
            (io::IGNITION, 1, u64::from(r.fix.ignition)),
            (io::MOVEMENT, 1, u64::from(r.fix.speed_kmh > 0.0)),
            (io::DIN2, 1, u64::from(r.din2)),
            (io::DOUT1, 1, u64::from(r.dout1)),
            (io::GSM_SIGNAL, 1, 4),
            (io::EXTERNAL_VOLTAGE, 2, 12_600),
            (io::TOTAL_ODOMETER, 4, r.fix.odometer_m as u64),
        ],
    }
}

fn ips(r: &Record) -> wialon::IpsRecord {
    wialon::IpsRecord {
        time: Some(r.time),
        lat: Some(r.fix.lat),
        lon: Some(r.fix.lon),
        speed_kmh: Some(r.fix.speed_kmh.round()),
        course: Some(r.fix.course.round()),
        altitude: Some(150.0),
        satellites: Some(11),
        hdop: Some(0.9),
        inputs: Some(u32::from(r.fix.ignition)),
        outputs: Some(u32::from(r.dout1)),
        adc: Vec::new(),
        ibutton: None,
        params: vec![(
            "odometer".into(),
            wialon::ParamValue::Double((r.fix.odometer_m / 1000.0).round()),
        )],
    }
}

/// Cut the next server message out of `buf`; `Ok(None)` = need more bytes. `login` says the
/// device is waiting for its login answer (Teltonika's is a bare byte).
pub fn next_message(
    protocol: SimProtocol,
    login: bool,
    buf: &mut BytesMut,
) -> Result<Option<ServerMsg>, String> {
    match protocol {
        SimProtocol::Teltonika => teltonika_msg(login, buf),
        SimProtocol::Gt06 => gt06_msg(buf),
        SimProtocol::Wialon => wialon_msg(buf),
    }
}

fn teltonika_msg(login: bool, buf: &mut BytesMut) -> Result<Option<ServerMsg>, String> {
    if login {
        if buf.is_empty() {
            return Ok(None);
        }
        let b = buf.get_u8();
        return Ok(Some(ServerMsg::LoginAck(b == 1)));
    }
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if n != 0 {
        buf.advance(4);
        return Ok(Some(ServerMsg::RecordAck(n)));
    }
    // Four zero bytes open a Codec 12 packet (an ack of 0 records is never due).
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > 65_536 {
        return Err(format!("teltonika: server packet of {len} bytes"));
    }
    if buf.len() < 8 + len + 4 {
        return Ok(None);
    }
    let packet = buf.split_to(8 + len + 4);
    if len < 8 || packet[8] != teltonika::CODEC_12 {
        return Ok(Some(ServerMsg::Other(hex::encode(&packet))));
    }
    let size = u32::from_be_bytes([packet[11], packet[12], packet[13], packet[14]]) as usize;
    let text = packet
        .get(15..15 + size)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default();
    let answer = teltonika::encode_codec12_response(format!("{text} ok").as_bytes());
    Ok(Some(ServerMsg::Command { text, answer }))
}

fn gt06_msg(buf: &mut BytesMut) -> Result<Option<ServerMsg>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let (head, total) = match (buf[0], buf[1]) {
        (0x78, 0x78) => (3, usize::from(buf[2]) + 5),
        (0x79, 0x79) => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 6),
        _ => return Err(format!("gt06: server sent {:02x}{:02x}", buf[0], buf[1])),
    };
    if buf.len() < total {
        return Ok(None);
    }
    let f = buf.split_to(total);
    if total < head + 7 {
        return Ok(Some(ServerMsg::Other(hex::encode(&f))));
    }
    let typ = f[head];
    let serial = u16::from_be_bytes([f[total - 6], f[total - 5]]);
    Ok(Some(match typ {
        gt06::msg::LOGIN => ServerMsg::LoginAck(true),
        gt06::msg::COMMAND_0 => {
            // cmd len | server flag (4) | text | language (2)
            let body = &f[head + 1..total - 6];
            let flag = body
                .get(1..5)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            let text_len = usize::from(body.first().copied().unwrap_or(4)).saturating_sub(4);
            let text = body
                .get(5..5 + text_len)
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default();
            let answer = gt06::encode_command_response(&format!("{text} OK"), flag, serial);
            ServerMsg::Command { text, answer }
        }
        _ => ServerMsg::SerialAck(serial),
    }))
}

fn wialon_msg(buf: &mut BytesMut) -> Result<Option<ServerMsg>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 65_536 {
            return Err("wialon: no line end within 64 KiB".into());
        }
        return Ok(None);
    };
    let line = buf.split_to(end + 2);
    let text = String::from_utf8_lossy(&line[..end]).into_owned();
    Ok(Some(if let Some(code) = text.strip_prefix("#AL#") {
        ServerMsg::LoginAck(code == "1")
    } else if text.starts_with("#AD#1") || text.starts_with("#ASD#1") {
        ServerMsg::RecordAck(1)
    } else if let Some(n) = text.strip_prefix("#AB#").and_then(|n| n.parse().ok()) {
        ServerMsg::RecordAck(n)
    } else if let Some(cmd) = text.strip_prefix("#M#") {
        let body = cmd.rsplit_once(';').map(|(b, _crc)| b).unwrap_or(cmd);
        ServerMsg::Command {
            text: body.to_string(),
            answer: Bytes::from_static(b"#AM#1\r\n"),
        }
    } else {
        ServerMsg::Other(text)
    }))
}

/// The relay state an engine command asks for: `Some(true)` = cut the engine (block),
/// `Some(false)` = release it; `None` for any other text. Knows the codecs' default texts
/// (Teltonika `setdigout 1`, GT06 `Relay,1#`, Wialon `L1=1`) and their `0` counterparts.
pub fn relay_command(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    let arg = t
        .strip_prefix("setdigout ")
        .or_else(|| t.strip_prefix("relay,"))
        .or_else(|| t.strip_prefix("l1="))?;
    // `setdigout 1` names DOUT1 first; `setdigout 10` sets DOUT1 on and DOUT2 off.
    match arg.chars().next() {
        Some('1') => Some(true),
        Some('0') => Some(false),
        _ => None,
    }
}

/// Whether `msg` is the answer `expect` waits for; `Err` says what came instead.
pub fn matches(expect: Expect, msg: &ServerMsg) -> Result<(), String> {
    match (expect, msg) {
        (Expect::Login, ServerMsg::LoginAck(true)) => Ok(()),
        (Expect::Login, ServerMsg::LoginAck(false)) => Err("login refused".into()),
        (Expect::Records(n), ServerMsg::RecordAck(m)) if n == *m => Ok(()),
        (Expect::Serial(s), ServerMsg::SerialAck(t)) if s == *t => Ok(()),
        (e, m) => Err(format!("expected {e:?}, got {m:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{DecodeCtx, FrameCut, Protocol, Transport};

    fn rec(i: i64) -> Record {
        Record {
            time: DateTime::from_timestamp(1_780_000_000 + i, 0).unwrap(),
            fix: Fix {
                lat: 55.75,
                lon: 37.62,
                speed_kmh: 42.0,
                course: 90.0,
                ignition: true,
                odometer_m: 1234.0,
            },
            din2: false,
            dout1: i % 2 == 1,
        }
    }

    /// Each packet the simulator writes decodes in fleetgate's own codec with the same number
    /// of positions, and the codec's ack is the one the simulator waits for.
    #[test]
    fn packets_decode_in_fleetgate_and_acks_match() {
        for (p, proto) in [
            (SimProtocol::Teltonika, Protocol::Teltonika),
            (SimProtocol::Gt06, Protocol::Gt06),
            (SimProtocol::Wialon, Protocol::Wialon),
        ] {
            for n in [1usize, 5] {
                let mut enc = Encoder::new(p, "356307042441013".into());
                let mut session = proto.session(Transport::Tcp);
                let mut packets = vec![enc.login()];
                let recs: Vec<_> = (0..n as i64).map(rec).collect();
                enc.data(&recs, &mut packets);
                let mut positions = 0;
                for (bytes, expect) in packets {
                    let Ok(FrameCut::Frame(len)) = session.next_frame(&bytes) else {
                        panic!("{p:?}: not one frame");
                    };
                    assert_eq!(len, bytes.len(), "{p:?}");
                    let d = session.decode(&bytes, &DecodeCtx::now()).expect("decodes");
                    positions += d.positions.len();
                    let mut reply = BytesMut::from(&d.reply.expect("acked")[..]);
                    let msg = next_message(p, expect == Expect::Login, &mut reply)
                        .unwrap()
                        .expect("whole ack");
                    matches(expect, &msg).unwrap_or_else(|e| panic!("{p:?}: {e}"));
                    assert!(reply.is_empty());
                }
                assert_eq!(positions, n, "{p:?}");
            }
        }
    }

    #[test]
    fn commands_are_recognised_and_answered() {
        let mut b = BytesMut::from(&teltonika::encode_codec12(b"setdigout 1")[..]);
        let m = next_message(SimProtocol::Teltonika, false, &mut b).unwrap();
        assert!(matches!(m, Some(ServerMsg::Command { ref text, .. }) if text == "setdigout 1"));
        let mut b = BytesMut::from(&gt06::encode_command_packet("RELAY,1#", 7, 3).unwrap()[..]);
        let m = next_message(SimProtocol::Gt06, false, &mut b).unwrap();
        assert!(matches!(m, Some(ServerMsg::Command { ref text, .. }) if text == "RELAY,1#"));
        let mut b = BytesMut::from(&wialon::encode_message("stop", true)[..]);
        let m = next_message(SimProtocol::Wialon, false, &mut b).unwrap();
        assert!(matches!(m, Some(ServerMsg::Command { ref text, .. }) if text == "stop"));
    }

    /// The relay a simulated car reports is the one fleetgate reads as output 1 (what confirms
    /// an immobiliser command).
    #[test]
    fn the_relay_output_reaches_the_decoded_position() {
        for (p, proto) in [
            (SimProtocol::Teltonika, Protocol::Teltonika),
            (SimProtocol::Wialon, Protocol::Wialon),
        ] {
            for on in [false, true] {
                let mut enc = Encoder::new(p, "356307042441013".into());
                let mut session = proto.session(Transport::Tcp);
                let mut packets = vec![enc.login()];
                let mut r = rec(0);
                r.dout1 = on;
                enc.data(&[r], &mut packets);
                let mut outputs = None;
                for (bytes, _) in packets {
                    let d = session.decode(&bytes, &DecodeCtx::now()).expect("decodes");
                    if let Some(pos) = d.positions.first() {
                        outputs = pos.outputs;
                    }
                }
                assert_eq!(outputs.map(|o| o & 1 == 1), Some(on), "{p:?} dout1={on}");
            }
        }
    }

    #[test]
    fn engine_commands_name_the_relay_state() {
        assert_eq!(relay_command("setdigout 1"), Some(true));
        assert_eq!(relay_command("setdigout 0"), Some(false));
        assert_eq!(relay_command("setdigout 10"), Some(true));
        assert_eq!(relay_command("Relay,1#"), Some(true));
        assert_eq!(relay_command("RELAY,0#"), Some(false));
        assert_eq!(relay_command("L1=1"), Some(true));
        assert_eq!(relay_command("L1=0"), Some(false));
        assert_eq!(relay_command("getinfo"), None);
        assert_eq!(relay_command("setdigout ?1"), None);
    }

    #[test]
    fn partial_input_needs_more() {
        for p in [
            SimProtocol::Teltonika,
            SimProtocol::Gt06,
            SimProtocol::Wialon,
        ] {
            let mut b = BytesMut::from(&[0u8, 0][..]);
            if p == SimProtocol::Gt06 {
                b = BytesMut::from(&[0x78u8, 0x78, 5][..]);
            }
            assert_eq!(next_message(p, false, &mut b).unwrap(), None, "{p:?}");
        }
    }
}
