//! The `[mqtt]` config section.

use serde::{Deserialize, Serialize};

use super::topic;
use crate::config::error::{invalid, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker: `mqtt://HOST[:1883]` or `mqtts://HOST[:8883]` (TLS). Empty disables MQTT.
    pub url: String,
    /// The session name at the broker: unique per fleetgate instance, stable across restarts
    /// (the broker keeps the session, and queues QoS 1 messages for it while we are down).
    pub client_id: String,
    /// Telemetry topic filters; the first `+` level is the device id.
    pub topics: Vec<String>,
    pub username: String,
    pub password: String,
    /// Subscribe as `$share/<group>/<topic>` so instances in the group split the messages.
    pub shared_group: String,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`); empty = the
    /// system's roots.
    pub ca_file: String,
    pub keep_alive_s: u64,
    /// Messages being committed at once (their PUBACKs go out in arrival order).
    pub max_inflight: usize,
    /// Where commands for a device are published.
    pub command_topic: String,
    /// Where devices answer commands (subscribed with `{device}` as `+`).
    pub response_topic: String,
    /// A device that published has a command session (like a TCP connection) until it has
    /// been silent this long; commands for it wait meanwhile.
    pub session_idle_s: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: String::new(),
            client_id: "fleetgate".into(),
            topics: vec!["fleet/+/telemetry".into()],
            username: String::new(),
            password: String::new(),
            shared_group: String::new(),
            ca_file: String::new(),
            keep_alive_s: 30,
            max_inflight: 64,
            command_topic: "fleet/{device}/commands".into(),
            response_topic: "fleet/{device}/responses".into(),
            session_idle_s: 900,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// A broker address from `[mqtt] url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `mqtt://host[:port]` / `tcp://…` / `mqtts://…` / `ssl://…`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("'{url}' is not SCHEME://HOST[:PORT]"))?;
    let (tls, default_port) = match scheme {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        other => return Err(format!("scheme '{other}': use mqtt:// or mqtts://")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') || rest.contains('/') || rest.contains('?') {
        return Err("put credentials in mqtt.username/mqtt.password; no path or query".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse()
                .map_err(|_| format!("port '{p}' is not a number"))?;
            (h, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(BrokerAddr {
        tls,
        host: host.to_string(),
        port,
    })
}

fn check_template(key: &str, t: &str) -> Result<(), ConfigError> {
    if !t.split('/').any(|l| l == "{device}") || t.contains('+') || t.contains('#') {
        return Err(invalid(
            key,
            format!("'{t}' needs a whole `{{device}}` level and no wildcards"),
        ));
    }
    Ok(())
}

impl MqttConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        parse_url(&self.url).map_err(|m| invalid("mqtt.url", m))?;
        if self.client_id.is_empty()
            || !self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "mqtt.client_id",
                "must be non-empty letters, digits, '-', '_' or '.' (a persistent session needs a stable id)",
            ));
        }
        if self.topics.is_empty() {
            return Err(invalid("mqtt.topics", "at least one topic filter"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            topic::valid_filter(t).map_err(|m| invalid(format!("mqtt.topics[{i}]"), m))?;
        }
        if self.shared_group.contains(['/', '+', '#']) {
            return Err(invalid(
                "mqtt.shared_group",
                "must not contain '/', '+' or '#'",
            ));
        }
        if self.username.is_empty() && !self.password.is_empty() {
            return Err(invalid("mqtt.password", "set without mqtt.username"));
        }
        check_template("mqtt.command_topic", &self.command_topic)?;
        check_template("mqtt.response_topic", &self.response_topic)?;
        if self.max_inflight == 0 {
            return Err(invalid("mqtt.max_inflight", "must be at least 1"));
        }
        if self.keep_alive_s < 5 {
            return Err(invalid("mqtt.keep_alive_s", "must be at least 5"));
        }
        if self.session_idle_s == 0 {
            return Err(invalid("mqtt.session_idle_s", "must be at least 1"));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(invalid(
                "mqtt.reconnect_min_ms",
                "must be at least 1 and at most mqtt.reconnect_max_ms",
            ));
        }
        Ok(())
    }

    /// Every filter to subscribe to: telemetry (shared when a group is set) and responses.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subs: Vec<String> = self
            .topics
            .iter()
            .map(|t| topic::shared(t, &self.shared_group))
            .collect();
        subs.push(topic::shared(
            &topic::template_filter(&self.response_topic),
            &self.shared_group,
        ));
        subs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let a = parse_url("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!((a.tls, a.host.as_str(), a.port), (false, "127.0.0.1", 1883));
        let a = parse_url("mqtts://broker.example.com").unwrap();
        assert_eq!((a.tls, a.port), (true, 8883));
        assert_eq!(parse_url("tcp://[::1]:1884").unwrap().host, "::1");
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://user:pw@x").is_err());
        assert!(parse_url("mqtt://x:port").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[test]
    fn disabled_by_default_and_errors_name_the_key() {
        let mut c = MqttConfig::default();
        assert!(!c.enabled());
        assert!(c.validate().is_ok());
        c.url = "mqtt://127.0.0.1".into();
        assert!(c.validate().is_ok());
        let e = |c: &MqttConfig| c.validate().unwrap_err().to_string();
        let mut bad = c.clone();
        bad.client_id = "a b".into();
        assert!(e(&bad).starts_with("mqtt.client_id:"));
        let mut bad = c.clone();
        bad.topics = vec!["fleet/#/x".into()];
        assert!(e(&bad).starts_with("mqtt.topics[0]:"));
        let mut bad = c.clone();
        bad.command_topic = "fleet/commands".into();
        assert!(e(&bad).starts_with("mqtt.command_topic:"));
        let mut bad = c.clone();
        bad.url = "amqp://x".into();
        assert!(e(&bad).starts_with("mqtt.url:"));
    }

    #[test]
    fn subscriptions_include_responses_and_the_share_group() {
        let c = MqttConfig {
            url: "mqtt://x".into(),
            shared_group: "gw".into(),
            ..Default::default()
        };
        assert_eq!(
            c.subscriptions(),
            ["$share/gw/fleet/+/telemetry", "$share/gw/fleet/+/responses"]
        );
    }
}
