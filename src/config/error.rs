//! The error every config section's `validate()` returns. A leaf: a section kept beside the
//! module that owns it needs this and nothing else of the root config.

use std::path::PathBuf;

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

/// A value serde accepted but the section refuses; `key` is the full dotted path
/// (`mqtt.keep_alive_s`), so the operator finds it in the file.
pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}
