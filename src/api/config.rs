//! `[api]`: where the HTTP API listens and who may call it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

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

impl ApiConfig {
    /// Check `listen` and the tokens; returns the address to bind.
    pub fn validate(&self) -> Result<SocketAddr, ConfigError> {
        let api: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "api.listen",
                format!("'{}' is not an ADDR:PORT socket address", self.listen),
            )
        })?;
        for (i, t) in self.tokens.iter().enumerate() {
            if t.secret().trim().len() < 16 || t.secret().chars().any(char::is_whitespace) {
                return Err(invalid(
                    format!("api.tokens[{i}]"),
                    "a token must be at least 16 characters, none of them blank (spaces cannot be sent in a Bearer header)",
                ));
            }
        }
        if !api.ip().is_loopback() && self.tokens.is_empty() {
            return Err(invalid(
                "api.tokens",
                format!("the API listens on non-loopback {api} but no token is configured; refusing to start open"),
            ));
        }
        Ok(api)
    }
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
