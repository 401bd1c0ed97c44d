//! Per-protocol settings, `[protocols.<name>]`: how a session is built for each connection or
//! UDP peer. Only what real fleets need to switch: Queclink devices configured to wait for
//! the server's acknowledgement of every report (`+SACK`), a non-default Queclink command
//! password, and GT06 clones that compute the CRC-ITU wrongly.

use serde::{Deserialize, Serialize};

use super::gl200::{Gl200Session, DEFAULT_PASSWORD};
use super::gt06::Gt06Session;
use super::{Protocol, Session, Transport};
use crate::config::error::{invalid, ConfigError};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolOptions {
    pub gl200: Gl200Options,
    pub gt06: Gt06Options,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gl200Options {
    /// Answer each `+RESP`/`+BUFF` report with `+SACK:<count>$`: for devices whose
    /// `AT+GTSRI` has the server acknowledgement on (they resend an unacknowledged report).
    pub report_acks: bool,
    /// The device password commands are sent with (`AT+GTOUT=<password>,…`).
    pub password: String,
}

impl Default for Gl200Options {
    fn default() -> Self {
        Gl200Options {
            report_acks: false,
            password: DEFAULT_PASSWORD.into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gt06Options {
    /// Drop frames whose CRC-ITU is wrong. `false` accepts them, for fleets of clones that
    /// compute it wrongly (their frames are then only checked for framing).
    pub crc_check: bool,
}

impl Default for Gt06Options {
    fn default() -> Self {
        Gt06Options { crc_check: true }
    }
}

impl ProtocolOptions {
    /// A new session for one connection (TCP) or peer (UDP).
    pub fn session(&self, protocol: Protocol, transport: Transport) -> Box<dyn Session> {
        match protocol {
            Protocol::Gl200 => Box::new(
                Gl200Session::new(transport)
                    .with_report_acks(self.gl200.report_acks)
                    .with_password(self.gl200.password.clone()),
            ),
            Protocol::Gt06 if !self.gt06.crc_check => Box::new(Gt06Session::without_crc_check()),
            _ => protocol.session(transport),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.gl200.password;
        if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(
                "protocols.gl200.password",
                format!("'{p}' must be 1 to 20 ASCII letters or digits"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocols::DecodeCtx;

    fn config(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(extra, "test", Vec::new())
    }

    #[test]
    fn defaults_check_gt06_crc_and_send_no_gl200_acks() {
        let c = config("").unwrap();
        assert!(c.protocols.gt06.crc_check);
        assert!(!c.protocols.gl200.report_acks);
        assert_eq!(c.protocols.gl200.password, "gl200");
    }

    #[test]
    fn gl200_report_acks_answer_a_report() {
        let c = config("[protocols.gl200]\nreport_acks = true\n").unwrap();
        let report = b"+RESP:GTFRI,060228,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,31.222073,20090214013254,0460,0000,18d8,6141,00,,20090214093254,11F0$";
        let mut s = c.protocols.session(Protocol::Gl200, Transport::Tcp);
        let d = s.decode(report, &DecodeCtx::now()).unwrap();
        let reply = d.reply.expect("a +SACK answer");
        assert!(reply.starts_with(b"+SACK:"), "{reply:?}");
        let mut plain = config("")
            .unwrap()
            .protocols
            .session(Protocol::Gl200, Transport::Tcp);
        assert!(plain
            .decode(report, &DecodeCtx::now())
            .unwrap()
            .reply
            .is_none());
    }

    #[test]
    fn gt06_crc_check_off_accepts_a_bad_crc() {
        // A GT06 login (IMEI 0123456789012345) with its CRC zeroed.
        let mut login = hex::decode("78780d01012345678901234500018cdd0d0a").unwrap();
        let n = login.len();
        login[n - 4] = 0;
        login[n - 3] = 0;
        let strict = config("").unwrap().protocols;
        assert!(strict
            .session(Protocol::Gt06, Transport::Tcp)
            .decode(&login, &DecodeCtx::now())
            .is_err());
        let lax = config("[protocols.gt06]\ncrc_check = false\n")
            .unwrap()
            .protocols;
        let d = lax
            .session(Protocol::Gt06, Transport::Tcp)
            .decode(&login, &DecodeCtx::now())
            .unwrap();
        assert!(d.device.is_some(), "logged in despite the CRC");
    }

    #[test]
    fn a_bad_password_names_the_key() {
        let e = config("[protocols.gl200]\npassword = \"a b\"\n").unwrap_err();
        assert!(e.to_string().contains("protocols.gl200.password"), "{e}");
        let e = config("[protocols.gt06]\ncrc = false\n").unwrap_err();
        assert!(e.to_string().contains("crc"), "{e}");
    }
}
