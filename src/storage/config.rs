//! `[storage]`: the database URL and how the writer batches commits.

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

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
    /// Longest one storage call (a query or a short transaction) may take, in seconds, before
    /// it is abandoned as `StorageError::Timeout` and its connection closed: a task waiting on
    /// a network path to PostgreSQL that went silent (no FIN, no RST) would otherwise keep its
    /// pool connection for the ~15 minutes the kernel takes to notice (docs/reliability.md).
    pub statement_timeout_s: u64,
    /// The same bound for the calls that read or write in bulk (the group commit, the start-up
    /// loads of every device state, zone, membership and rule state, the outbox purge).
    pub bulk_timeout_s: u64,
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
            statement_timeout_s: 10,
            bulk_timeout_s: 60,
        }
    }
}

/// The database behind `[storage] url`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a URL names: `sqlite:…`, `postgres://…` or `postgresql://…`.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// Several instances may share the database (PostgreSQL); SQLite is one instance's.
    pub fn is_shared(self) -> bool {
        self == Backend::Postgres
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl StorageConfig {
    /// The backend `url` names (`None` only before `validate`).
    pub fn backend(&self) -> Option<Backend> {
        Backend::of_url(&self.url)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backend().is_none() {
            return Err(invalid(
                "storage.url",
                format!("'{}' must start with sqlite:// or postgres://", self.url),
            ));
        }
        let sqlite_path = self
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.url.strip_prefix("sqlite:"))
            .map(|rest| rest.split('?').next().unwrap_or(""));
        if sqlite_path.is_some_and(|p| p.trim().is_empty()) {
            return Err(invalid(
                "storage.url",
                format!(
                    "'{}' names no database file (e.g. sqlite:///var/lib/fleetgate/fleetgate.db)",
                    self.url
                ),
            ));
        }
        if self.batch_max_rows == 0 {
            return Err(invalid("storage.batch_max_rows", "must be at least 1"));
        }
        if !["off", "normal", "full", "extra"].contains(&self.sqlite_synchronous.as_str()) {
            return Err(invalid(
                "storage.sqlite_synchronous",
                "must be off, normal, full or extra",
            ));
        }
        if self.statement_timeout_s == 0 {
            return Err(invalid("storage.statement_timeout_s", "must be at least 1"));
        }
        if self.bulk_timeout_s < self.statement_timeout_s {
            return Err(invalid(
                "storage.bulk_timeout_s",
                format!(
                    "{} is below storage.statement_timeout_s ({}): a bulk call gets at least as long as one statement",
                    self.bulk_timeout_s, self.statement_timeout_s
                ),
            ));
        }
        Ok(())
    }

    /// The deadlines every storage call runs under (see [`super::deadline`]).
    pub fn deadlines(&self) -> super::deadline::Deadlines {
        super::deadline::Deadlines {
            call: std::time::Duration::from_secs(self.statement_timeout_s),
            bulk: std::time::Duration::from_secs(self.bulk_timeout_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_is_named_by_the_url_scheme() {
        for (url, b) in [
            ("sqlite://data/x.db", Some(Backend::Sqlite)),
            ("sqlite:x.db", Some(Backend::Sqlite)),
            ("postgres://u@h/db", Some(Backend::Postgres)),
            ("postgresql://u@h/db", Some(Backend::Postgres)),
            ("mysql://u@h/db", None),
        ] {
            assert_eq!(Backend::of_url(url), b, "{url}");
        }
        assert!(Backend::Postgres.is_shared() && !Backend::Sqlite.is_shared());
    }

    #[test]
    fn storage_deadlines_are_validated_by_key() {
        assert!(StorageConfig::default().validate().is_ok());
        let zero = StorageConfig {
            statement_timeout_s: 0,
            ..Default::default()
        };
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("storage.statement_timeout_s"), "{e}");
        let short_bulk = StorageConfig {
            statement_timeout_s: 30,
            bulk_timeout_s: 20,
            ..Default::default()
        };
        let e = short_bulk.validate().unwrap_err().to_string();
        assert!(e.contains("storage.bulk_timeout_s"), "{e}");
    }
}
