//! `[devices]` (who may connect, identity conflicts) and `[limits]` (connection limits).

use serde::{Deserialize, Serialize};

use super::sessions::{ConflictPolicy, SessionPolicy};
use crate::config::error::{invalid, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Unknown devices become vehicles with id = device id; when false they are refused.
    pub register_unknown: bool,
    /// A device not heard from for this long is offline (TCP connected or not).
    pub offline_after_s: u64,
    /// A second live session claiming a device: `keep_established` (default), `hold`, `newest`.
    pub identity_conflict: ConflictPolicy,
    /// A live session silent this long is taken for dead: a new one takes over without conflict.
    pub takeover_silence_s: u64,
    /// An unknown IMEI is registered only with a valid Luhn check digit (off: test rigs and
    /// some clones send ids without one).
    pub imei_check_digit: bool,
}

impl DevicesConfig {
    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            conflict: self.identity_conflict,
            takeover_silence: chrono::Duration::seconds(self.takeover_silence_s as i64),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.takeover_silence_s == 0 {
            return Err(invalid(
                "devices.takeover_silence_s",
                "must be at least 1 s (0 would let any new login take a live car's commands)",
            ));
        }
        Ok(())
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            register_unknown: true,
            offline_after_s: 600,
            identity_conflict: Default::default(),
            takeover_silence_s: 300,
            imei_check_digit: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A connection that has not identified itself within this many seconds is closed.
    pub handshake_timeout_s: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout_s: u64,
    /// Most tracker connections held at once (all protocols).
    pub max_connections: usize,
    /// Most tracker connections from one IP address.
    pub max_connections_per_ip: usize,
    /// UDP sources (`ip:port`) whose sessions each UDP listener keeps; past it the least
    /// recently heard is forgotten. ~0.3 KB each (docs/reliability.md).
    pub udp_max_sources: usize,
    /// Datagrams per second one UDP source may send (bursts up to one second's worth); more
    /// are dropped unacked and counted.
    pub udp_datagrams_per_s: u32,
    /// Frames each UDP listener commits at once; more are dropped unacked and counted.
    pub udp_max_queued: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout_s: 60,
            idle_timeout_s: 900,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            udp_max_sources: 100_000,
            udp_datagrams_per_s: 50,
            udp_max_queued: 1024,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("limits.handshake_timeout_s", self.handshake_timeout_s),
            ("limits.idle_timeout_s", self.idle_timeout_s),
            ("limits.max_connections", self.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                self.max_connections_per_ip as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (0 would refuse or drop every tracker)",
                ));
            }
        }
        for (key, value) in [
            ("limits.udp_max_sources", self.udp_max_sources),
            (
                "limits.udp_datagrams_per_s",
                self.udp_datagrams_per_s as usize,
            ),
            ("limits.udp_max_queued", self.udp_max_queued),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}
