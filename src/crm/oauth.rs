//! amoCRM OAuth 2.0 (`[crm.amocrm]`): the authorization code is exchanged once (`fleetgate crm
//! authorize CODE`), the access and refresh tokens are kept in the database (`crm_state`,
//! scope `oauth`, one row per CRM, written in one statement), and the connector refreshes them
//! before the access token expires and once after a 401. amoCRM rotates refresh tokens: each
//! refresh answers a new one and the old one stops working, so the new pair is stored before
//! it is used. Tokens never reach a log line or an error message.
//!
//! `POST https://{subdomain}.amocrm.ru/oauth2/access_token` with JSON `client_id`,
//! `client_secret`, `grant_type` (`authorization_code` | `refresh_token`), `code` or
//! `refresh_token`, `redirect_uri`; it answers `token_type`, `expires_in` (s), `access_token`,
//! `refresh_token`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::CrmConfig;
use super::store::{CrmStore, StateWrite};

/// The `crm_state` row holding the tokens.
pub const SCOPE: &str = "oauth";
pub const ID: &str = "amocrm";

/// An access token, the refresh token that renews it, and when the access token expires.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What the token endpoint is asked for.
pub enum Grant<'a> {
    /// The code amoCRM showed (or sent to `redirect_uri`) when the integration was installed.
    Code(&'a str),
    Refresh(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("amoCRM token endpoint unreachable: {0}")]
    Http(String),
    /// The grant was refused (code used or expired, refresh token rotated or revoked, wrong
    /// client or redirect URI): a person has to authorize again.
    #[error("amoCRM refused the {grant} grant: HTTP {status}: {detail}")]
    Refused {
        grant: &'static str,
        status: u16,
        detail: String,
    },
    #[error("amoCRM token endpoint answered {0}")]
    Response(String),
    #[error("no amoCRM tokens stored: run `fleetgate crm authorize CODE` with an authorization code of the integration")]
    NotAuthorized,
    #[error("[crm.amocrm] client_id, client_secret and redirect_uri are not set (crm.kind = \"amocrm\")")]
    NotConfigured,
    #[error("storage: {0}")]
    Storage(#[from] crate::pipeline::store::StorageError),
}

/// Exchange a code or a refresh token for a new pair.
pub async fn exchange(
    http: &reqwest::Client,
    cfg: &CrmConfig,
    grant: Grant<'_>,
) -> Result<Tokens, OAuthError> {
    let o = &cfg.amocrm;
    if !o.enabled() {
        return Err(OAuthError::NotConfigured);
    }
    let (kind, body) = match grant {
        Grant::Code(code) => (
            "authorization_code",
            serde_json::json!({ "client_id": o.client_id, "client_secret": o.client_secret,
                "grant_type": "authorization_code", "code": code, "redirect_uri": o.redirect_uri }),
        ),
        Grant::Refresh(token) => (
            "refresh_token",
            serde_json::json!({ "client_id": o.client_id, "client_secret": o.client_secret,
                "grant_type": "refresh_token", "refresh_token": token, "redirect_uri": o.redirect_uri }),
        ),
    };
    let url = format!("{}/oauth2/access_token", cfg.base_url.trim_end_matches('/'));
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| OAuthError::Http(e.without_url().to_string()))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        // amoCRM's problem+json names the cause in `hint` / `detail`; it carries no secret.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let detail = [&v["hint"], &v["detail"], &v["title"]]
            .iter()
            .find_map(|d| d.as_str().filter(|s| !s.is_empty()))
            .unwrap_or("no detail")
            .chars()
            .take(200)
            .collect();
        return Err(OAuthError::Refused {
            grant: kind,
            status: status.as_u16(),
            detail,
        });
    }
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        refresh_token: String,
        expires_in: i64,
    }
    let a: Answer = serde_json::from_str(&text).map_err(|e| {
        OAuthError::Response(format!(
            "a body without access_token, refresh_token, expires_in ({e})"
        ))
    })?;
    if a.access_token.is_empty() || a.refresh_token.is_empty() || a.expires_in <= 0 {
        return Err(OAuthError::Response(
            "empty tokens or a non-positive expires_in".into(),
        ));
    }
    Ok(Tokens {
        access_token: a.access_token,
        refresh_token: a.refresh_token,
        expires_at: Utc::now() + chrono::Duration::seconds(a.expires_in),
    })
}

/// The stored pair, if any.
pub async fn load(store: &dyn CrmStore) -> Result<Option<Tokens>, OAuthError> {
    match store.crm_state(SCOPE, ID).await? {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| OAuthError::Response(format!("stored tokens unreadable: {e}"))),
    }
}

/// Store a pair (one upsert: the old refresh token is replaced atomically).
pub async fn save(store: &dyn CrmStore, t: &Tokens) -> Result<(), OAuthError> {
    let state = serde_json::to_string(t)
        .map_err(|e| OAuthError::Response(format!("tokens not serializable: {e}")))?;
    store
        .crm_commit(
            &[StateWrite {
                scope: SCOPE,
                id: ID.into(),
                state,
            }],
            &[],
            Utc::now(),
            chrono::Duration::zero(),
        )
        .await?;
    Ok(())
}

/// `fleetgate crm authorize CODE`: exchange the code once and store the pair.
pub async fn authorize(
    cfg: &CrmConfig,
    store: Arc<dyn CrmStore>,
    code: &str,
) -> Result<Tokens, OAuthError> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(cfg.timeout_s))
        .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OAuthError::Http(e.to_string()))?;
    let t = exchange(&http, cfg, Grant::Code(code.trim())).await?;
    save(store.as_ref(), &t).await?;
    Ok(t)
}

/// The connector's side: the current access token, refreshed before it expires (`[crm.amocrm]
/// refresh_before_s`) or when amoCRM refused it.
pub struct Session {
    cfg: CrmConfig,
    http: reqwest::Client,
    store: Arc<dyn CrmStore>,
    current: tokio::sync::Mutex<Option<Tokens>>,
}

impl Session {
    pub fn new(cfg: CrmConfig, http: reqwest::Client, store: Arc<dyn CrmStore>) -> Self {
        Session {
            cfg,
            http,
            store,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The access token to send now. `refused`: amoCRM just answered 401 to `refused`, so that
    /// one is renewed whatever its expiry says.
    pub async fn access_token(&self, refused: Option<&str>) -> Result<String, OAuthError> {
        let mut cur = self.current.lock().await;
        if cur.is_none() {
            *cur = load(self.store.as_ref()).await?;
        }
        let Some(t) = cur.clone() else {
            return Err(OAuthError::NotAuthorized);
        };
        let margin = chrono::Duration::seconds(self.cfg.amocrm.refresh_before_s as i64);
        let stale = refused == Some(t.access_token.as_str());
        if !stale && t.expires_at - margin > Utc::now() {
            return Ok(t.access_token);
        }
        // Another instance, or `crm authorize`, may have stored a newer pair meanwhile.
        if let Some(stored) = load(self.store.as_ref()).await? {
            if stored != t
                && refused != Some(stored.access_token.as_str())
                && stored.expires_at - margin > Utc::now()
            {
                *cur = Some(stored.clone());
                return Ok(stored.access_token);
            }
        }
        let why = if stale {
            "refused by amoCRM"
        } else {
            "about to expire"
        };
        match exchange(&self.http, &self.cfg, Grant::Refresh(&t.refresh_token)).await {
            Ok(new) => {
                save(self.store.as_ref(), &new).await?;
                metrics::counter!("fleetgate_crm_oauth_refreshes_total", "result" => "ok")
                    .increment(1);
                tracing::info!(crm = "amocrm", expires_at = %new.expires_at, "amoCRM access token refreshed ({why})");
                *cur = Some(new.clone());
                Ok(new.access_token)
            }
            Err(e) => {
                metrics::counter!("fleetgate_crm_oauth_refreshes_total", "result" => "failed")
                    .increment(1);
                // Lost a race with another instance: its pair is stored.
                if let Some(stored) = load(self.store.as_ref()).await? {
                    if stored.refresh_token != t.refresh_token {
                        *cur = Some(stored.clone());
                        return Ok(stored.access_token);
                    }
                }
                // Not yet expired: keep using it while the refresh is retried.
                if !stale && t.expires_at > Utc::now() {
                    tracing::warn!(crm = "amocrm", error = %e, "amoCRM token refresh failed; the current access token is still valid");
                    return Ok(t.access_token);
                }
                Err(e)
            }
        }
    }
}
