//! `[immobiliser]`: safety thresholds, force policy, command retries, and per-model command
//! profiles.
//!
//! ```toml
//! [immobiliser]
//! max_block_speed_kmh = 5
//! safe_for = 10                # seconds, by fix time
//! safe_fixes = 3               # consecutive stopped fixes on the command's connection
//! allow_force = false
//! [immobiliser.profiles.concox_dyd]
//! block = "DYD,000000#"
//! unblock = "HFYD,000000#"
//! [immobiliser.protocol_profiles]   # every device of a protocol
//! gt06 = "concox_dyd"
//! [immobiliser.vehicle_profiles]    # one vehicle (or device id); wins over the protocol
//! car-17 = "concox_dyd"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::RetryPolicy;
use super::safety::SafetyRules;
use crate::config::error::{invalid, ConfigError};
use crate::protocols::Protocol;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImmobiliserConfig {
    /// A car is safe to block at or under this speed (km/h)…
    pub max_block_speed_kmh: f64,
    /// …held for this many seconds by fix time (or with the ignition off).
    pub safe_for: u64,
    /// Consecutive stopped fixes, on the connection the block will go to, before a block.
    pub safe_fixes: u32,
    /// A fix dated more than this many seconds after it reached the gateway is no evidence.
    pub max_fix_ahead_s: u64,
    /// A fix older than this many seconds when it arrived is no evidence of what the car does now.
    pub max_fix_age_s: u64,
    /// Accept `force: true` (block without waiting for safe conditions).
    pub allow_force: bool,
    /// A command not done within this many seconds expires (default 24 h).
    pub command_ttl_s: u64,
    /// Most times one command is written to the device.
    pub max_attempts: u32,
    /// A sent command with no answer after this many seconds is retried.
    pub ack_timeout_s: u64,
    /// Wait before the first retry, doubled for each further one.
    pub retry_backoff_s: u64,
    /// Longest wait between retries.
    pub max_backoff_s: u64,
    /// Command texts per device model, by profile name.
    pub profiles: BTreeMap<String, CommandProfile>,
    /// Protocol name → profile, for fleets with one model per protocol.
    pub protocol_profiles: BTreeMap<String, String>,
    /// Vehicle id (or device id) → profile; wins over `protocol_profiles`.
    pub vehicle_profiles: BTreeMap<String, String>,
    /// Lift `outside_service_area` when the car is confirmed back inside the service area.
    pub lift_on_return: bool,
}

impl Default for ImmobiliserConfig {
    fn default() -> Self {
        ImmobiliserConfig {
            max_block_speed_kmh: 5.0,
            safe_fixes: 3,
            max_fix_ahead_s: 30,
            max_fix_age_s: 180,
            safe_for: 10,
            allow_force: false,
            command_ttl_s: 24 * 3600,
            max_attempts: 5,
            ack_timeout_s: 60,
            retry_backoff_s: 30,
            max_backoff_s: 1800,
            profiles: BTreeMap::new(),
            protocol_profiles: BTreeMap::new(),
            vehicle_profiles: BTreeMap::new(),
            lift_on_return: true,
        }
    }
}

/// The commands one device model understands, overriding the protocol's default encoding.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CommandProfile {
    /// Text sent to block (`"setdigout 1"`, `"DYD,000000#"`…); the codec's default when absent.
    pub block: Option<String>,
    pub unblock: Option<String>,
    /// The digital output (1-based) wired to the relay, for confirmation by telemetry.
    pub output: Option<u8>,
}

/// Above this a "stopped" car is not stopped: a block would reach a car in traffic.
pub const MAX_SAFE_BLOCK_SPEED_KMH: f64 = 30.0;

impl ImmobiliserConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_block_speed_kmh.is_finite() && self.max_block_speed_kmh >= 0.0) {
            return Err(invalid(
                "immobiliser.max_block_speed_kmh",
                "must be a number of km/h, at least 0",
            ));
        }
        if self.safe_fixes == 0 || self.safe_fixes > 100 {
            return Err(invalid(
                "immobiliser.safe_fixes",
                "must be from 1 to 100 consecutive stopped fixes",
            ));
        }
        if self.max_fix_ahead_s > 600 {
            return Err(invalid(
                "immobiliser.max_fix_ahead_s",
                "must be at most 600 s (a fix dated further ahead is never evidence)",
            ));
        }
        if self.max_fix_age_s == 0 || self.max_fix_age_s > 3600 {
            return Err(invalid(
                "immobiliser.max_fix_age_s",
                "must be from 1 to 3600 s",
            ));
        }
        if self.max_block_speed_kmh > MAX_SAFE_BLOCK_SPEED_KMH {
            return Err(invalid(
                "immobiliser.max_block_speed_kmh",
                format!(
                    "{} km/h would let a block reach a moving car; at most {MAX_SAFE_BLOCK_SPEED_KMH}",
                    self.max_block_speed_kmh
                ),
            ));
        }
        if self.safe_for == 0 {
            return Err(invalid(
                "immobiliser.safe_for",
                "must be at least 1 s: 0 would block on the first slow fix",
            ));
        }
        if self.command_ttl_s == 0 {
            return Err(invalid("immobiliser.command_ttl_s", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("immobiliser.max_attempts", "must be at least 1"));
        }
        if self.ack_timeout_s == 0 {
            return Err(invalid("immobiliser.ack_timeout_s", "must be at least 1"));
        }
        for (name, p) in &self.profiles {
            for (k, v) in [("block", &p.block), ("unblock", &p.unblock)] {
                if matches!(v, Some(t) if t.trim().is_empty() || t.len() > 512) {
                    return Err(invalid(
                        format!("immobiliser.profiles.{name}.{k}"),
                        "must be 1 to 512 characters",
                    ));
                }
            }
            if matches!(p.output, Some(o) if o == 0 || o > 32) {
                return Err(invalid(
                    format!("immobiliser.profiles.{name}.output"),
                    "must be an output number from 1 to 32",
                ));
            }
        }
        for (proto, profile) in &self.protocol_profiles {
            if Protocol::from_name(proto).is_none() {
                return Err(invalid(
                    format!("immobiliser.protocol_profiles.{proto}"),
                    "unknown protocol",
                ));
            }
            self.check_profile(&format!("immobiliser.protocol_profiles.{proto}"), profile)?;
        }
        for (vehicle, profile) in &self.vehicle_profiles {
            self.check_profile(&format!("immobiliser.vehicle_profiles.{vehicle}"), profile)?;
        }
        Ok(())
    }

    fn check_profile(&self, key: &str, profile: &str) -> Result<(), ConfigError> {
        if self.profiles.contains_key(profile) {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("no [immobiliser.profiles.{profile}] is defined"),
            ))
        }
    }

    pub fn safety(&self) -> SafetyRules {
        SafetyRules {
            max_speed_kmh: self.max_block_speed_kmh,
            safe_for: chrono::Duration::seconds(self.safe_for as i64),
            min_fixes: self.safe_fixes,
            max_ahead: chrono::Duration::seconds(self.max_fix_ahead_s as i64),
            max_age: chrono::Duration::seconds(self.max_fix_age_s as i64),
        }
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            ack_timeout: chrono::Duration::seconds(self.ack_timeout_s as i64),
            backoff: chrono::Duration::seconds(self.retry_backoff_s as i64),
            max_backoff: chrono::Duration::seconds(self.max_backoff_s as i64),
            ttl: chrono::Duration::seconds(self.command_ttl_s as i64),
        }
    }

    /// The profile for a vehicle: by vehicle id, then device id, then protocol.
    pub fn profile_for(
        &self,
        vehicle: &str,
        device: Option<&str>,
        protocol: Option<&str>,
    ) -> Option<&CommandProfile> {
        let name = self
            .vehicle_profiles
            .get(vehicle)
            .or_else(|| device.and_then(|d| self.vehicle_profiles.get(d)))
            .or_else(|| protocol.and_then(|p| self.protocol_profiles.get(p)))?;
        self.profiles.get(name)
    }

    /// How often the actor looks for due retries and expiries.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ImmobiliserConfig, ConfigError> {
        let c: ImmobiliserConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_match_the_issue() {
        let c = parse("").unwrap();
        assert_eq!(c.max_block_speed_kmh, 5.0);
        assert_eq!(c.safe_for, 10);
        assert!(!c.allow_force);
        assert_eq!(c.command_ttl_s, 86_400);
    }

    #[test]
    fn profiles_resolve_by_vehicle_then_device_then_protocol() {
        let c = parse(
            r#"
            [profiles.dyd]
            block = "DYD,000000#"
            unblock = "HFYD,000000#"
            [profiles.relay2]
            block = "setdigout ?1"
            unblock = "setdigout ?0"
            output = 2
            [protocol_profiles]
            gt06 = "dyd"
            [vehicle_profiles]
            car-1 = "relay2"
            "356307042441013" = "relay2"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.profile_for("car-9", None, Some("gt06"))
                .unwrap()
                .block
                .as_deref(),
            Some("DYD,000000#")
        );
        assert_eq!(
            c.profile_for("car-1", None, Some("gt06")).unwrap().output,
            Some(2)
        );
        assert_eq!(
            c.profile_for("x", Some("356307042441013"), Some("teltonika"))
                .unwrap()
                .output,
            Some(2)
        );
        assert!(c.profile_for("car-9", None, Some("teltonika")).is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[vehicle_profiles]\ncar-1 = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("immobiliser.vehicle_profiles.car-1:"), "{e}");
        let e = parse("[protocol_profiles]\nfoo = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("immobiliser.protocol_profiles.foo:"), "{e}");
        let e = parse("max_attempts = 0").unwrap_err().to_string();
        assert!(e.starts_with("immobiliser.max_attempts:"), "{e}");
        let e = parse("[profiles.p]\nblock = \"\"").unwrap_err().to_string();
        assert!(e.starts_with("immobiliser.profiles.p.block:"), "{e}");
    }
}
