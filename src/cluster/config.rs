//! The `[cluster]` section: how this instance names itself and cooperates with the other
//! fleetgate instances sharing its PostgreSQL database. Ignored on SQLite (one instance).

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This instance's name among those sharing the database; empty = the host name. Must be
    /// unique and stable across restarts (a restart purges the sessions recorded under it).
    pub instance_id: String,
    /// How often this instance renews its device sessions, seconds.
    pub heartbeat_s: u64,
    /// A session not renewed for this long belongs to a dead instance and is ignored, seconds.
    pub session_ttl_s: u64,
    /// Fallback poll for requests forwarded to this instance (NOTIFY is not durable), ms.
    pub poll_ms: u64,
    /// How long a request forwarded to the instance holding a device waits for its answer, s.
    pub forward_timeout_s: u64,
    /// How long a CRM outbox event claimed by this instance stays reserved to it, seconds;
    /// past it another instance takes the event over.
    pub outbox_lease_s: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            instance_id: String::new(),
            heartbeat_s: 5,
            session_ttl_s: 30,
            poll_ms: 1000,
            forward_timeout_s: 15,
            outbox_lease_s: 60,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.instance_id;
        if id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "cluster.instance_id",
                format!("'{id}': at most 64 of A-Z a-z 0-9 - _ ."),
            ));
        }
        for (key, v) in [
            ("heartbeat_s", self.heartbeat_s),
            ("session_ttl_s", self.session_ttl_s),
            ("poll_ms", self.poll_ms),
            ("forward_timeout_s", self.forward_timeout_s),
            ("outbox_lease_s", self.outbox_lease_s),
        ] {
            if v == 0 {
                return Err(invalid(format!("cluster.{key}"), "must be at least 1"));
            }
        }
        if self.session_ttl_s < 2 * self.heartbeat_s {
            return Err(invalid(
                "cluster.session_ttl_s",
                format!(
                    "{} must be at least twice heartbeat_s ({}), or live sessions expire",
                    self.session_ttl_s, self.heartbeat_s
                ),
            ));
        }
        Ok(())
    }

    /// `instance_id`, or the host name when it is empty.
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if host.is_empty() {
            "fleetgate".into()
        } else {
            host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        ClusterConfig::default().validate().unwrap();
        assert!(!ClusterConfig::default().instance().is_empty());
        let bad = ClusterConfig {
            instance_id: "a b".into(),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("cluster.instance_id"));
        let bad = ClusterConfig {
            heartbeat_s: 20,
            session_ttl_s: 30,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("cluster.session_ttl_s"));
        let named = ClusterConfig {
            instance_id: "fg-a.dc1".into(),
            ..Default::default()
        };
        named.validate().unwrap();
        assert_eq!(named.instance(), "fg-a.dc1");
    }
}
