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
        if !api.ip().is_loopback() && self.tokens.is_empty() {
            return Err(invalid(
                "api.tokens",
                format!("the API listens on non-loopback {api} but no token is configured; refusing to start open"),
            ));
        }
        Ok(api)
    }
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
