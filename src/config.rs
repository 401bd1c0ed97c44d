//! Configuration: one serde struct per section, every key with a default (so `fleetgate run`
//! works with no file), `FLEETGATE_<SECTION>_<KEY>` environment overrides, and a `validate()`
//! whose errors name the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocols::{Protocol, Transport};

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
    /// An environment override names no key (a typo in the variable).
    #[error("{var}: {message}")]
    Env { var: String, message: String },
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

/// An API bearer token. Written either as a bare string or as `{ name, token, role }` so the
/// audit log can say who acted and a dispatcher's screen can be given a token that only reads.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenEntry {
    Bare(String),
    Named {
        name: String,
        token: String,
        /// `operate` (the default: every route) or `read` (GET only: the console shows no
        /// block/unblock buttons and the API answers 403 to anything else). Kept as written
        /// so a wrong value is reported by key (`api.tokens[i].role`) by validation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
}

/// What a token may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenRole {
    /// Read only: `GET` and `HEAD`.
    Read,
    /// Everything, as before roles existed.
    #[default]
    Operate,
}

impl TokenRole {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(TokenRole::Read),
            "operate" => Some(TokenRole::Operate),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenRole::Read => "read",
            TokenRole::Operate => "operate",
        }
    }
}

impl TokenEntry {
    /// A named token that may do everything.
    pub fn named(name: &str, token: &str) -> Self {
        TokenEntry::Named {
            name: name.into(),
            token: token.into(),
            role: None,
        }
    }
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
    pub fn role(&self) -> TokenRole {
        match self {
            TokenEntry::Bare(_) => TokenRole::Operate,
            // Validation refuses any other value; an unvalidated one reads as the safer role.
            TokenEntry::Named { role, .. } => role.as_deref().map_or(TokenRole::Operate, |r| {
                TokenRole::parse(r).unwrap_or(TokenRole::Read)
            }),
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
    /// SQLite: below this much free disk space (MB) new records are refused (not acked)
    /// before the database hits a full disk; 0 turns the check off.
    pub min_free_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://data/fleetgate.db".into(),
            batch_max_rows: 10_000,
            batch_max_wait_ms: 0,
            sqlite_synchronous: "full".into(),
            max_connections: 8,
            min_free_mb: 128,
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
    /// An unknown IMEI is registered only with a valid Luhn check digit (off: test rigs and
    /// some clones send ids without one).
    pub imei_check_digit: bool,
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
            imei_check_digit: false,
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
    /// A fix reporting a speed above this (km/h), negative or not a number is refused.
    pub max_speed_kmh: f64,
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
            max_speed_kmh: 400.0,
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
    /// Largest share (0–1) of the cars inside a service area one zone change may put
    /// outside it without `force=true`.
    pub max_exit_share: f64,
}

impl Default for GeofencesConfig {
    fn default() -> Self {
        GeofencesConfig {
            dir: "geofences".into(),
            debounce: Default::default(),
            max_exit_share: 0.10,
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
        let api: SocketAddr = self.api.listen.parse().map_err(|_| {
            invalid(
                "api.listen",
                format!("'{}' is not an ADDR:PORT socket address", self.api.listen),
            )
        })?;
        for (i, t) in self.api.tokens.iter().enumerate() {
            if t.secret().trim().len() < 16 || t.secret().chars().any(char::is_whitespace) {
                return Err(invalid(
                    format!("api.tokens[{i}]"),
                    "a token must be at least 16 characters, none of them blank (spaces cannot be sent in a Bearer header)",
                ));
            }
            if let TokenEntry::Named {
                role: Some(role), ..
            } = t
            {
                if TokenRole::parse(role).is_none() {
                    return Err(invalid(
                        format!("api.tokens[{i}].role"),
                        format!("\"{role}\" is not a role: use \"read\" (GET only) or \"operate\""),
                    ));
                }
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
        let sqlite_path = self
            .storage
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.storage.url.strip_prefix("sqlite:"))
            .map(|rest| rest.split('?').next().unwrap_or(""));
        if sqlite_path.is_some_and(|p| p.trim().is_empty()) {
            return Err(invalid(
                "storage.url",
                format!(
                    "'{}' names no database file (e.g. sqlite:///var/lib/fleetgate/fleetgate.db)",
                    self.storage.url
                ),
            ));
        }
        for (key, v) in [
            (
                "limits.handshake_timeout_s",
                self.limits.handshake_timeout_s,
            ),
            ("limits.idle_timeout_s", self.limits.idle_timeout_s),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (0 would refuse or drop every tracker)",
                ));
            }
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
        self.check_ports(api)?;
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
        if !(self.filters.max_speed_kmh.is_finite() && self.filters.max_speed_kmh >= 100.0) {
            return Err(invalid(
                "filters.max_speed_kmh",
                "must be a number of km/h, at least 100",
            ));
        }
        if !(0.0..=1.0).contains(&self.geofences.max_exit_share) {
            return Err(invalid(
                "geofences.max_exit_share",
                format!(
                    "{} is not a share between 0 and 1 (0.10 = 10 %)",
                    self.geofences.max_exit_share
                ),
            ));
        }
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
