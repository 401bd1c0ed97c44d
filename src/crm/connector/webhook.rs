//! `kind = "webhook"`: every event POSTed as JSON to `[crm] url`, signed
//! `X-Fleetgate-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, with `Idempotency-Key`.

use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    as_rub, classify, retry_after, BalanceQuery, Connector, ConnectorError, Outcome, PulledBalance,
};
use crate::crm::config::CrmConfig;
use crate::crm::event::OutboxEvent;
use crate::crm::ratelimit::RateLimiter;

pub const SIGNATURE_HEADER: &str = "x-fleetgate-signature";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// `sha256=<hex>` of HMAC-SHA256 over `data`.
pub fn sign(secret: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(data);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub struct Webhook {
    cfg: CrmConfig,
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
}

impl Webhook {
    pub fn new(cfg: CrmConfig, http: reqwest::Client, limiter: Arc<RateLimiter>) -> Self {
        Webhook { cfg, http, limiter }
    }

    async fn post(&self, e: &OutboxEvent) -> Outcome {
        let body = match serde_json::to_vec(&e.webhook_body()) {
            Ok(b) => b,
            Err(err) => return Outcome::Failed(format!("cannot encode event: {err}")),
        };
        let _permit = self.limiter.acquire().await;
        let resp = self
            .http
            .post(&self.cfg.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign(&self.cfg.secret, &body))
            .header(IDEMPOTENCY_HEADER, &e.key)
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(err) => {
                return Outcome::Retry {
                    error: format!("POST {}: {err}", self.cfg.url),
                    after: None,
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let after = retry_after(resp.headers());
        if status.as_u16() == 429 || status.as_u16() == 503 {
            self.limiter
                .pause(after.unwrap_or(std::time::Duration::from_secs(1)))
                .await;
        }
        let text = resp.text().await.unwrap_or_default();
        match classify(status, &text) {
            Outcome::Retry { error, .. } => Outcome::Retry { error, after },
            o => o,
        }
    }
}

#[async_trait]
impl Connector for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn close(&self) {
        self.limiter.close();
    }

    async fn deliver(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.post(e).await);
        }
        out
    }

    async fn balance(&self, q: &BalanceQuery) -> Result<PulledBalance, ConnectorError> {
        if self.cfg.balance_url.is_empty() {
            return Err(ConnectorError::NoBalance);
        }
        let mut url = reqwest::Url::parse(&self.cfg.balance_url)
            .map_err(|e| ConnectorError::Http(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("driver_id", &q.driver_id)
            .append_pair("vehicle_id", &q.vehicle_id)
            .append_pair("deal_id", q.deal_id.as_deref().unwrap_or(""));
        let query = url.query().unwrap_or("").to_string();
        let _permit = self.limiter.acquire().await;
        let resp = self
            .http
            .get(url)
            .header(SIGNATURE_HEADER, sign(&self.cfg.secret, query.as_bytes()))
            .send()
            .await
            .map_err(|e| ConnectorError::Http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(ConnectorError::Response(format!(
                "balance endpoint answered {}",
                resp.status()
            )));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| ConnectorError::Response(format!("balance endpoint: {e}")))?;
        let rub = v.get("balance_rub").and_then(as_rub).ok_or_else(|| {
            ConnectorError::Response(format!("balance endpoint: no numeric balance_rub in {v}"))
        })?;
        let as_of = v["as_of"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        Ok(PulledBalance { rub, as_of })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
