//! Configuration: one serde struct per section, every key with a default (so `fleetgate run`
//! works with no file), `FLEETGATE_<SECTION>_<KEY>` environment overrides, and a `validate()`
//! whose errors name the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocols::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

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
}

/// An API bearer token. Written either as a bare string or as `{ name, token }` so the audit
/// log can say who acted.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenEntry {
    Bare(String),
    Named { name: String, token: String },
}

impl TokenEntry {
    pub fn name(&self, index: usize) -> String {
        match self {
            TokenEntry::Bare(_) => format!("token{}", index + 1),
            TokenEntry::Named { name, .. } => name.clone(),
        }
    }
    pub fn secret(&self) -> &str {
        match self {
            TokenEntry::Bare(t) => t,
            TokenEntry::Named { token, .. } => token,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: String,
    pub tokens: Vec<TokenEntry>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub url: String,
    /// Most rows one group commit writes. A commit takes whatever is queued up to this, so
    /// a large cap costs nothing at low load; under load fewer, larger commits write each
    /// B-tree page and fsync once for more rows (2,000 → 5,000: +40 % on SQLite flat out,
    /// docs/performance.md).
    pub batch_max_rows: usize,
    /// Longest a record waits for others to share its commit, in milliseconds. 0: commit
    /// what is queued at once (batches still form while a commit runs) — lowest latency, and
    /// on SQLite no slower; PostgreSQL gains from 2 (docs/performance.md).
    pub batch_max_wait_ms: u64,
    /// SQLite `synchronous`: `full` survives power loss, `normal` survives a process crash.
    pub sqlite_synchronous: String,
    /// Pool size (PostgreSQL; SQLite uses one writer plus readers).
    pub max_connections: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://data/fleetgate.db".into(),
            batch_max_rows: 10_000,
            batch_max_wait_ms: 0,
            sqlite_synchronous: "full".into(),
            max_connections: 8,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Unknown devices become vehicles with id = device id; when false they are refused.
    pub register_unknown: bool,
    /// A device not heard from for this long is offline (TCP connected or not).
    pub offline_after_s: u64,
    /// A second live session claiming a device: `keep_established` (default), `hold`, `newest`.
    pub identity_conflict: crate::ingest::sessions::ConflictPolicy,
    /// A live session silent this long is taken for dead: a new one takes over without conflict.
    pub takeover_silence_s: u64,
}

impl DevicesConfig {
    pub fn session_policy(&self) -> crate::ingest::sessions::SessionPolicy {
        crate::ingest::sessions::SessionPolicy {
            conflict: self.identity_conflict,
            takeover_silence: chrono::Duration::seconds(self.takeover_silence_s as i64),
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            register_unknown: true,
            offline_after_s: 600,
            identity_conflict: Default::default(),
            takeover_silence_s: 300,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// Drop fixes the device marks invalid (no GPS lock).
    pub invalid: bool,
    /// Drop fixes at exactly 0°/0°.
    pub zero: bool,
    /// Drop fixes dated further than this into the future, in seconds.
    pub max_future_s: i64,
    /// Drop a fix implying a speed above this from the previous accepted fix (a GPS jump).
    /// 0 disables.
    pub max_implied_speed_kmh: f64,
}

impl Default for FiltersConfig {
    fn default() -> Self {
        FiltersConfig {
            invalid: true,
            zero: true,
            max_future_s: 300,
            max_implied_speed_kmh: 300.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Device workers; 0 = one per CPU.
    pub shards: usize,
    /// Messages a shard queues before connections wait (backpressure).
    pub queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            shards: 0,
            queue: 1024,
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

/// `[geofences]`: where zone files live and how zone changes are debounced per zone kind.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeofencesConfig {
    /// Directory of `*.geojson` zone files (loaded at start and on SIGHUP).
    pub dir: String,
    /// `[geofences.debounce.<kind>] fixes, secs, hysteresis_m` per zone kind.
    pub debounce: crate::geofence::DebounceConfig,
}

impl Default for GeofencesConfig {
    fn default() -> Self {
        GeofencesConfig {
            dir: "geofences".into(),
            debounce: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `plain` or `json`.
    pub format: String,
    /// A `tracing` env-filter; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "plain".into(),
            filter: "info".into(),
        }
    }
}

const SECTIONS: &[&str] = &[
    "geofences",
    "api",
    "storage",
    "listeners",
    "devices",
    "filters",
    "pipeline",
    "limits",
    "log",
    "mqtt",
    "crm",
    "rules",
    "status",
    "immobiliser",
];

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
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("FLEETGATE_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
                continue;
            };
            let key = &rest[section.len() + 1..];
            let value = parse_env_value(&v);
            let table = doc
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table {
                toml::Value::Table(t) => {
                    t.insert(key.to_string(), value);
                }
                _ => return Err(invalid(*section, "is not a table")),
            }
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: name.into(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every value that serde's types cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let api: SocketAddr = self.api.listen.parse().map_err(|_| {
            invalid(
                "api.listen",
                format!("'{}' is not an ADDR:PORT socket address", self.api.listen),
            )
        })?;
        for (i, t) in self.api.tokens.iter().enumerate() {
            if t.secret().len() < 16 {
                return Err(invalid(
                    format!("api.tokens[{i}]"),
                    "a token must be at least 16 characters",
                ));
            }
        }
        if !api.ip().is_loopback() && self.api.tokens.is_empty() {
            return Err(invalid(
                "api.tokens",
                format!("the API listens on non-loopback {api} but no token is configured; refusing to start open"),
            ));
        }
        if !(self.storage.url.starts_with("sqlite:")
            || self.storage.url.starts_with("postgres://")
            || self.storage.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "storage.url",
                format!(
                    "'{}' must start with sqlite:// or postgres://",
                    self.storage.url
                ),
            ));
        }
        if self.devices.takeover_silence_s == 0 {
            return Err(invalid(
                "devices.takeover_silence_s",
                "must be at least 1 s (0 would let any new login take a live car's commands)",
            ));
        }
        if self.storage.batch_max_rows == 0 {
            return Err(invalid("storage.batch_max_rows", "must be at least 1"));
        }
        if !["off", "normal", "full", "extra"].contains(&self.storage.sqlite_synchronous.as_str()) {
            return Err(invalid(
                "storage.sqlite_synchronous",
                "must be off, normal, full or extra",
            ));
        }
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
        for (key, value) in [
            ("limits.udp_max_sources", self.limits.udp_max_sources),
            (
                "limits.udp_datagrams_per_s",
                self.limits.udp_datagrams_per_s as usize,
            ),
            ("limits.udp_max_queued", self.limits.udp_max_queued),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.pipeline.queue == 0 {
            return Err(invalid("pipeline.queue", "must be at least 1"));
        }
        if !["plain", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid("log.format", "must be plain or json"));
        }
        self.geofences.debounce.validate().map_err(|e| {
            invalid(
                format!("geofences.debounce.{}", e.split(':').next().unwrap_or("")),
                e,
            )
        })?;
        if self.filters.max_future_s < 0 {
            return Err(invalid("filters.max_future_s", "must not be negative"));
        }
        self.mqtt.validate()?;
        self.crm.validate()?;
        self.rules.validate()?;
        self.status.validate()?;
        self.immobiliser.validate()?;
        self.protocols.validate()?;
        self.cluster.validate()?;
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
        if self.pipeline.shards > 0 {
            self.pipeline.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

/// An environment value is TOML when it parses as such (`true`, `5`, `["a"]`), else a string.
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
}
