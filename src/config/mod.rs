//! Configuration: one serde struct per section, every key with a default (so `fleetgate run`
//! works with no file), `FLEETGATE_<SECTION>_<KEY>` environment overrides, and a `validate()`
//! whose errors name the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocols::{Protocol, Transport};

pub mod error;

pub use crate::api::config::{ApiConfig, TokenEntry, TokenRole};
pub use crate::geofence::config::GeofencesConfig;
pub use crate::ingest::config::{DevicesConfig, LimitsConfig};
pub use crate::ops::logging::LogConfig;
pub use crate::pipeline::config::{FiltersConfig, PipelineConfig};
pub use crate::storage::config::StorageConfig;
use error::invalid;
pub use error::ConfigError;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub storage: StorageConfig,
    /// `protocol = "ADDR:PORT"`; `"off"` disables one. Unlisted protocols listen on
    /// `0.0.0.0:<Traccar's port>`.
    pub listeners: BTreeMap<String, String>,
    pub devices: DevicesConfig,
    pub filters: FiltersConfig,
    pub pipeline: PipelineConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub geofences: GeofencesConfig,
    pub mqtt: crate::ingest::mqtt::MqttConfig,
    pub crm: crate::crm::CrmConfig,
    pub rules: crate::crm::RulesConfig,
    pub status: crate::api::status::StatusConfig,
    pub immobiliser: crate::immobiliser::ImmobiliserConfig,
    /// Per-protocol session settings (`[protocols.gl200]`, `[protocols.gt06]`).
    pub protocols: crate::protocols::options::ProtocolOptions,
    pub cluster: crate::cluster::ClusterConfig,
    /// How long positions, events, commands and audit entries are kept (`[retention]`).
    pub retention: crate::archive::RetentionConfig,
}

impl Config {
    /// Load `path` (or only defaults when `None`), apply environment overrides, validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.into(),
                source,
            })?,
            None => String::new(),
        };
        let name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".into());
        Self::from_toml_with_env(&text, &name, std::env::vars())
    }

    /// Parse TOML text, apply `FLEETGATE_*` overrides from `env`, validate.
    pub fn from_toml_with_env(
        text: &str,
        name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.into(),
            message: e.to_string(),
        })?;
        // Every key `Config::default()` has (and any key of a map that is empty by default)
        // can be overridden; a variable naming a section but no key of it is a typo.
        let schema = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("FLEETGATE_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some(section) = schema
                .keys()
                .filter(|s| rest.starts_with(&format!("{s}_")))
                .max_by_key(|s| s.len())
            else {
                // FLEETGATE_CONFIG, the test suite's own variables…
                continue;
            };
            let key = &rest[section.len() + 1..];
            // A key the defaults leave out (an unset option) is taken as a key of the section;
            // if it is none, the variable is named in the error below.
            let path =
                env_path(&schema[section.as_str()], key).unwrap_or_else(|| vec![key.to_string()]);
            from_env.push((path.last().cloned().unwrap_or_default(), k.clone()));
            let mut table = &mut doc;
            for part in std::iter::once(section.as_str())
                .chain(path[..path.len() - 1].iter().map(String::as_str))
            {
                let entry = table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = match entry {
                    toml::Value::Table(t) => t,
                    _ => return Err(invalid(part, "is not a table")),
                };
            }
            if let Some(last) = path.last() {
                table.insert(last.clone(), parse_env_value(&v));
            }
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let message = e.to_string();
                let typo = from_env
                    .iter()
                    .find(|(key, _)| message.contains(&format!("unknown field `{key}`")));
                match typo {
                    Some((key, var)) => ConfigError::Env {
                        var: var.clone(),
                        message: format!("names no configuration key ('{key}' is unknown)"),
                    },
                    None => ConfigError::Parse {
                        path: name.into(),
                        message,
                    },
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every value that serde's types cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let api = self.api.validate()?;
        self.storage.validate()?;
        self.devices.validate()?;
        self.limits.validate()?;
        for (name, addr) in &self.listeners {
            if Protocol::from_name(name).is_none() {
                let known: Vec<_> = Protocol::ALL.iter().map(|p| p.name()).collect();
                return Err(invalid(
                    format!("listeners.{name}"),
                    format!("unknown protocol; known: {}", known.join(", ")),
                ));
            }
            if addr != "off" && addr.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    format!("listeners.{name}"),
                    format!("'{addr}' is not an ADDR:PORT socket address or \"off\""),
                ));
            }
        }
        self.check_ports(api)?;
        self.pipeline.validate()?;
        self.log.validate()?;
        self.geofences.validate()?;
        self.filters.validate()?;
        self.mqtt.validate()?;
        self.crm.validate()?;
        self.rules.validate()?;
        self.status.validate()?;
        self.immobiliser.validate()?;
        self.protocols.validate()?;
        self.cluster.validate()?;
        self.retention.validate()?;
        Ok(())
    }

    /// No two listeners (nor a listener and the API) on one port of one address: the second
    /// bind would fail at start. Port 0 (any free port) never clashes.
    fn check_ports(&self, api: SocketAddr) -> Result<(), ConfigError> {
        let key = |p: Protocol| {
            if self.listeners.contains_key(p.name()) {
                format!("listeners.{}", p.name())
            } else {
                format!("listeners.{} (default port {})", p.name(), p.default_port())
            }
        };
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        let all = self.listeners();
        for (i, &(p, a)) in all.iter().enumerate() {
            if p.transports().contains(&Transport::Tcp) && clash(a, api) {
                return Err(invalid(
                    key(p),
                    format!("{a} is also api.listen ({api}); one port, one listener"),
                ));
            }
            let shared = |q: Protocol| p.transports().iter().any(|t| q.transports().contains(t));
            if let Some(&(q, b)) = all[i + 1..]
                .iter()
                .find(|(q, b)| shared(*q) && clash(a, *b))
            {
                return Err(invalid(
                    key(q),
                    format!("{b} is also {} ({a}); one port, one listener", key(p)),
                ));
            }
        }
        Ok(())
    }

    /// Every enabled listener: protocol and address.
    pub fn listeners(&self) -> Vec<(Protocol, SocketAddr)> {
        Protocol::ALL
            .iter()
            .filter_map(|&p| match self.listeners.get(p.name()) {
                Some(a) if a == "off" => None,
                Some(a) => a.parse().ok().map(|a| (p, a)),
                None => Some((p, SocketAddr::from(([0, 0, 0, 0], p.default_port())))),
            })
            .collect()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.listen.parse().expect("validated")
    }

    pub fn shards(&self) -> usize {
        self.pipeline.shards()
    }
}

/// An environment value is TOML when it parses as such (`true`, `5`, `["a"]`), else a string.
/// The key path under a section that `key` (lower case, `_`-joined) names: a key of the
/// section, or a key of one of its tables; any key of a table that is empty by default (a
/// map such as `[listeners]`).
fn env_path(schema: &toml::Value, key: &str) -> Option<Vec<String>> {
    let t = schema.as_table()?;
    if t.is_empty() || t.contains_key(key) {
        return Some(vec![key.to_string()]);
    }
    t.iter().filter(|(_, v)| v.is_table()).find_map(|(k, v)| {
        let rest = key.strip_prefix(&format!("{k}_"))?;
        let mut p = env_path(v, rest)?;
        p.insert(0, k.clone());
        Some(p)
    })
}

fn parse_env_value(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_alone_are_valid() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:8080");
        assert_eq!(c.storage.url, "sqlite://data/fleetgate.db");
        assert!(c.devices.register_unknown);
        assert!(c
            .listeners()
            .iter()
            .any(|(p, a)| *p == Protocol::Teltonika && a.port() == 5027));
    }

    #[test]
    fn fixed_keys_parse() {
        let c = load(
            r#"
            [api]
            listen = "127.0.0.1:9000"
            tokens = ["0123456789abcdef", { name = "crm", token = "fedcba9876543210" }]
            [storage]
            url = "sqlite:///tmp/x.db"
            [listeners]
            teltonika = "127.0.0.1:15027"
            [devices]
            register_unknown = false
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(c.api.tokens[1].name(1), "crm");
        assert_eq!(c.api.tokens[0].name(0), "token1");
        assert_eq!(c.api.tokens[0].role(), TokenRole::Operate);
        assert_eq!(c.api.tokens[1].role(), TokenRole::Operate);
        let l = c.listeners();
        assert!(l.contains(&(Protocol::Teltonika, "127.0.0.1:15027".parse().unwrap())));
        assert!(
            l.contains(&(Protocol::Wialon, "0.0.0.0:5039".parse().unwrap())),
            "unlisted protocols keep Traccar's port"
        );
        assert!(!c.devices.register_unknown);
    }

    #[test]
    fn environment_overrides_file_values() {
        let c = load(
            "[api]\nlisten = \"127.0.0.1:9000\"",
            &[
                ("FLEETGATE_API_LISTEN", "127.0.0.1:9100"),
                ("FLEETGATE_DEVICES_REGISTER_UNKNOWN", "false"),
                ("FLEETGATE_LISTENERS_TELTONIKA", "off"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:9100");
        assert!(!c.devices.register_unknown);
        assert!(
            !c.listeners().iter().any(|(p, _)| *p == Protocol::Teltonika),
            "off disables"
        );
    }

    #[test]
    fn every_section_and_nested_key_can_be_overridden_and_a_typo_names_its_variable() {
        let c = load(
            "",
            &[
                ("FLEETGATE_IMMOBILISER_SAFE_FIXES", "4"),
                ("FLEETGATE_DEVICES_IDENTITY_CONFLICT", "hold"),
                ("FLEETGATE_CONFIG", "/etc/fleetgate/fleetgate.toml"),
                ("FLEETGATE_TEST_PG_URL", "postgres://x"),
            ],
        )
        .unwrap();
        assert_eq!(c.immobiliser.safe_fixes, 4);
        assert_eq!(
            c.devices.identity_conflict,
            crate::ingest::sessions::ConflictPolicy::Hold
        );
        let e = load("", &[("FLEETGATE_DEVICES_REGISTR_UNKNOWN", "false")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("FLEETGATE_DEVICES_REGISTR_UNKNOWN:"), "{e}");
        assert!(e.contains("registr_unknown"), "{e}");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        for section in ["cluster", "protocols"] {
            assert!(defaults.get(section).is_some(), "{section} has defaults");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[api]\nlisten = \"nowhere\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("api.listen:"), "{e}");
        let e = load("[listeners]\nfoo = \"0.0.0.0:1\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("listeners.foo:"), "{e}");
        let e = load("[api]\nlisen = \"x\"", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let e = load("[storage]\nurl = \"mysql://x\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("storage.url:"), "{e}");
        let e = load("[geofences]\nmax_exit_share = 1.5", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("geofences.max_exit_share:"), "{e}");
        let c = load("[geofences]\nmax_exit_share = 0.25", &[]).unwrap();
        assert_eq!(c.geofences.max_exit_share, 0.25);
        assert_eq!(load("", &[]).unwrap().geofences.max_exit_share, 0.10);
    }

    #[test]
    fn udp_limits_have_defaults_and_refuse_zero_by_name() {
        let c = load("", &[]).unwrap();
        assert_eq!(
            (
                c.limits.udp_max_sources,
                c.limits.udp_datagrams_per_s,
                c.limits.udp_max_queued
            ),
            (100_000, 50, 1024)
        );
        let c = load(
            "[limits]\nudp_max_sources = 10\nudp_datagrams_per_s = 5\nudp_max_queued = 7",
            &[],
        )
        .unwrap();
        assert_eq!(c.limits.udp_max_queued, 7);
        for key in ["udp_max_sources", "udp_datagrams_per_s", "udp_max_queued"] {
            let e = load(&format!("[limits]\n{key} = 0"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("limits.{key}:")), "{e}");
        }
    }

    #[test]
    fn refuses_an_open_api_on_a_public_address() {
        let e = load("[api]\nlisten = \"0.0.0.0:8080\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("api.tokens:"), "{e}");
        assert!(load(
            "[api]\nlisten = \"0.0.0.0:8080\"\ntokens = [\"0123456789abcdef\"]",
            &[]
        )
        .is_ok());
    }

    #[test]
    fn token_roles_parse_and_a_wrong_one_is_named() {
        let c = load(
            r#"
            [api]
            tokens = [
              { name = "screen", token = "0123456789abcdef", role = "read" },
              { name = "crm", token = "fedcba9876543210", role = "operate" },
            ]
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(c.api.tokens[0].role(), TokenRole::Read);
        assert_eq!(c.api.tokens[1].role(), TokenRole::Operate);
        let e = load(
            "[api]\ntokens = [{ name = \"x\", token = \"0123456789abcdef\", role = \"admin\" }]",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("api.tokens[0].role:"), "{e}");
        assert!(e.contains("\"admin\""), "{e}");
    }
}
