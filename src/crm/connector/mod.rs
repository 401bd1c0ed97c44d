//! Connectors turn outbox events into calls of one CRM (`[crm] kind`): a signed webhook,
//! amoCRM API v4, or a Bitrix24 incoming webhook. Each paces itself with a [`RateLimiter`]
//! and reports per event whether it was delivered, should be retried, or can never succeed.

pub mod amocrm;
pub mod bitrix24;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::config::CrmConfig;
use super::event::OutboxEvent;
use super::ratelimit::RateLimiter;

/// The fate of one delivery attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again later; `after` is the CRM's own Retry-After, when it gave one.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The CRM refused the event itself (bad deal id, validation): dead-lettered at once.
    Failed(String),
}

/// The outcome of an event made of several calls: a refusal beats a retry beats success.
pub(crate) fn worse(a: Outcome, b: Outcome) -> Outcome {
    match (a, b) {
        (f @ Outcome::Failed(_), _) | (_, f @ Outcome::Failed(_)) => f,
        (r @ Outcome::Retry { .. }, _) | (_, r @ Outcome::Retry { .. }) => r,
        _ => Outcome::Delivered,
    }
}

/// A stage event is late once it was retried or has waited this long: the deal is read before
/// it is sent (an event on time costs no extra request).
pub const LATE_AFTER: chrono::Duration = chrono::Duration::seconds(10);

/// A deal as the CRM shows it now: its stage (connector-specific spelling) and last change.
#[derive(Clone, Debug, PartialEq)]
pub struct DealNow {
    pub stage: String,
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

/// Whether a late stage event is superseded: the CRM moved the deal to another stage after the
/// event was created, and not by fleetgate's own write (`own_write`: the change time our last
/// write of this deal got back). `Some(why)` drops it; a deal already at the event's stage, or
/// unchanged since the event, gets it. CRM times have second precision: a change counts when it
/// is in a later second than the event.
pub fn superseded(
    created: chrono::DateTime<chrono::Utc>,
    target: &str,
    now: &DealNow,
    own_write: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<String> {
    if now.stage == target || own_write == Some(now.changed_at) {
        return None;
    }
    (now.changed_at.timestamp() > created.timestamp()).then(|| {
        format!(
            "superseded: the deal moved to stage {} at {} (the event is of {})",
            now.stage,
            now.changed_at.to_rfc3339(),
            created.to_rfc3339()
        )
    })
}

/// Who a balance check is about.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceQuery {
    pub driver_id: String,
    pub vehicle_id: String,
    pub deal_id: Option<String>,
}

/// A balance read from the CRM.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PulledBalance {
    pub rub: f64,
    /// When the CRM last changed the record holding it (amoCRM `updated_at`, Bitrix24
    /// `DATE_MODIFY`, the webhook's `as_of`), when it says.
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("http: {0}")]
    Http(String),
    #[error("{0}")]
    Response(String),
    #[error("balance is not configured for this CRM")]
    NoBalance,
    #[error("this CRM connector cannot read deals back")]
    Unsupported,
}

/// A deal as read back after a webhook that carried only its id (Bitrix24).
#[derive(Clone, Debug, PartialEq)]
pub struct DealFacts {
    /// Bitrix24 `STAGE_ID`.
    pub stage_id: String,
    /// The balance field (`[crm.fields] balance_field_code`), when configured and numeric.
    pub balance_rub: Option<f64>,
    /// `MODIFY_BY_ID`: who changed it last.
    pub modified_by: Option<String>,
    /// `DATE_MODIFY`.
    pub changed_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[async_trait]
pub trait Connector: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Deliver events (at most one per vehicle, oldest first); one outcome per event, in order.
    async fn deliver(&self, events: &[OutboxEvent]) -> Vec<Outcome>;
    /// Shutting down: start no further request (those in flight go on).
    fn close(&self);
    /// The driver's balance as the CRM knows it, in roubles, with its time when known.
    async fn balance(&self, q: &BalanceQuery) -> Result<PulledBalance, ConnectorError>;
    /// For a late stage event: read the deal and tell whether it is [`superseded`]. `Err`: the
    /// deal could not be read (the event is retried, not sent blind). The webhook cannot
    /// tell: its receiver orders events by `created_at`.
    async fn late_stage(&self, _e: &OutboxEvent) -> Result<Option<String>, Outcome> {
        Ok(None)
    }
    /// Balances of many drivers, one result per query in the same order. By default one
    /// [`Connector::balance`] call each; amoCRM and Bitrix24 read many deals per request, so
    /// 1,500 drivers cost a handful of requests per check.
    async fn balances(&self, qs: &[BalanceQuery]) -> Vec<Result<PulledBalance, ConnectorError>> {
        let mut out = Vec::with_capacity(qs.len());
        for q in qs {
            out.push(self.balance(q).await);
        }
        out
    }
    /// The company card linked to a deal (`[crm] car_entity = "company"`, when the vehicle has
    /// no `crm_company_id`): `Ok(None)` when the deal has none. `Err`: the deal could not be read.
    async fn deal_company(&self, _deal: &str) -> Result<Option<String>, Outcome> {
        Ok(None)
    }
    /// Read a deal back (for inbound webhooks that name only the deal).
    async fn read_deal(&self, _deal: &str) -> Result<DealFacts, ConnectorError> {
        Err(ConnectorError::Unsupported)
    }
}

/// Build the configured connector; `None` when `kind = "off"`.
pub fn build(
    cfg: &CrmConfig,
    store: Arc<dyn super::store::CrmStore>,
) -> Result<Option<Arc<dyn Connector>>, ConnectorError> {
    let (rate, burst) = cfg.rate();
    let mut limiter = RateLimiter::new(rate, burst);
    if cfg.kind == "amocrm" {
        // amoCRM counts requests per second: never 8 within one (20 ms of clock slack).
        limiter = limiter.with_window(rate.floor().max(1.0) as usize, Duration::from_millis(1020));
    }
    let limiter = Arc::new(limiter);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_s))
        .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConnectorError::Http(e.to_string()))?;
    Ok(match cfg.kind.as_str() {
        "webhook" => Some(Arc::new(webhook::Webhook::new(cfg.clone(), http, limiter))),
        "amocrm" => Some(Arc::new(amocrm::AmoCrm::new(
            cfg.clone(),
            http,
            limiter,
            store,
        ))),
        "bitrix24" => Some(Arc::new(bitrix24::Bitrix24::new(
            cfg.clone(),
            http,
            limiter,
        ))),
        _ => None,
    })
}

/// The CRM refusing fleetgate's credentials (401/403, Bitrix24 `expired_token`,
/// `INVALID_CREDENTIALS`, `NO_AUTH_FOUND`) is not any one event's fault: the whole connector
/// pauses for `[crm] auth_pause_s` (deliveries and balance checks alike wait on the shared rate
/// limiter), `fleetgate_crm_auth_failed` is 1 and the error is logged at most once a minute.
/// The first request after the pause probes; a success clears the state, so delivery resumes by
/// itself once the token is fixed.
pub(crate) struct AuthWatch {
    crm: &'static str,
    pause: Duration,
    down: std::sync::atomic::AtomicBool,
}

impl AuthWatch {
    pub(crate) fn new(crm: &'static str, pause: Duration) -> Self {
        AuthWatch {
            crm,
            pause,
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) async fn failed(&self, limiter: &RateLimiter, detail: &str) {
        use std::sync::atomic::Ordering;
        self.down.store(true, Ordering::Relaxed);
        metrics::gauge!("fleetgate_crm_auth_failed", "crm" => self.crm).set(1.0);
        metrics::counter!("fleetgate_crm_auth_failures_total", "crm" => self.crm).increment(1);
        if let Some(suppressed) = crate::ops::ratelimit::warnings()
            .check(&format!("crm-auth/{}", self.crm), std::time::Instant::now())
        {
            tracing::error!(
                crm = self.crm,
                suppressed,
                pause_s = self.pause.as_secs(),
                "{}: the CRM refuses fleetgate's credentials ({detail}); the connector pauses and retries (logged at most once a minute)",
                self.crm
            );
        }
        limiter.pause(self.pause).await;
    }

    pub(crate) fn ok(&self) {
        use std::sync::atomic::Ordering;
        if self.down.swap(false, Ordering::Relaxed) {
            metrics::gauge!("fleetgate_crm_auth_failed", "crm" => self.crm).set(0.0);
            tracing::info!(
                crm = self.crm,
                "the CRM accepts fleetgate's credentials again; delivery resumes"
            );
        }
    }
}

/// `Retry-After` in seconds (HTTP dates are rare from these APIs and are treated as absent).
pub(crate) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// The outcome of a non-2xx status that needs no body to classify.
pub(crate) fn classify(status: reqwest::StatusCode, body: &str) -> Outcome {
    let short: String = body.chars().take(300).collect();
    let error = format!("HTTP {status}: {short}");
    if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
        Outcome::Retry { error, after: None }
    } else {
        Outcome::Failed(error)
    }
}

/// A number that may arrive as a JSON number or a string (`"4 500,50"` too).
/// The balances of `qs` from deals read in bulk (`found`: a deal's record, or why the request
/// that should have carried it failed), one result per query in order; `record` names the
/// CRM's word for a deal in the "not found" error, `read` takes the balance from a record.
pub(crate) fn per_deal(
    qs: &[BalanceQuery],
    found: &std::collections::HashMap<String, Result<serde_json::Value, String>>,
    record: &str,
    read: impl Fn(&serde_json::Value, &str) -> Result<PulledBalance, ConnectorError>,
) -> Vec<Result<PulledBalance, ConnectorError>> {
    qs.iter()
        .map(|q| {
            let deal = q
                .deal_id
                .as_deref()
                .ok_or_else(|| ConnectorError::Response("the vehicle has no crm_deal_id".into()))?;
            match found.get(deal) {
                Some(Ok(r)) => read(r, deal),
                Some(Err(e)) => Err(ConnectorError::Response(e.clone())),
                None => Err(ConnectorError::Response(format!(
                    "{record} {deal} not found"
                ))),
            }
        })
        .collect()
}

/// A money value as CRMs write it: a JSON number, `"9 000,00"` (amoCRM text field, spaces and a
/// decimal comma), `"3000|RUB"` (Bitrix24's money field: amount, `|`, currency), `"1500 ₽"` or
/// `"1500 руб."`. The currency is dropped (fleetgate counts roubles); anything else is `None`.
pub(crate) fn as_rub(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => {
            let amount = s.split('|').next().unwrap_or_default();
            let amount = amount.trim_end_matches(|c: char| {
                c.is_alphabetic() || c == '₽' || c == '.' || c.is_whitespace()
            });
            let cleaned: String = amount
                .chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| if c == ',' { '.' } else { c })
                .collect();
            cleaned.parse().ok()
        }
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    #[test]
    fn money_fields_read_in_every_form_the_crms_write_them() {
        for (v, rub) in [
            (json!(3000), Some(3000.0)),
            (json!("3000|RUB"), Some(3000.0)),
            (json!("2999.50|RUB"), Some(2999.5)),
            (json!("9 000,00"), Some(9000.0)),
            (json!("9\u{a0}000,00"), Some(9000.0)),
            (json!("1500 ₽"), Some(1500.0)),
            (json!("1500 руб."), Some(1500.0)),
            (json!("-250|RUB"), Some(-250.0)),
            (json!(""), None),
            (json!("|RUB"), None),
            (json!("abc"), None),
            (json!(null), None),
            (json!("NaN"), None),
        ] {
            assert_eq!(as_rub(&v), rub, "{v}");
        }
    }

    fn at(s: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_manager_move_after_the_event_supersedes_it_and_nothing_else_does() {
        let created = at(0) + chrono::Duration::milliseconds(300);
        let moved = |stage: &str, t| DealNow {
            stage: stage.into(),
            changed_at: at(t),
        };
        assert!(superseded(created, "7001:142001", &moved("7001:143", 40), None).is_some());
        // Already where the event goes; unchanged since; changed by our own write.
        assert_eq!(
            superseded(created, "7001:142001", &moved("7001:142001", 40), None),
            None
        );
        assert_eq!(
            superseded(created, "7001:142001", &moved("7001:143", -60), None),
            None
        );
        assert_eq!(
            superseded(created, "7001:142001", &moved("7001:143", 0), None),
            None
        );
        assert_eq!(
            superseded(created, "7001:142001", &moved("7001:143", 40), Some(at(40))),
            None
        );
    }
}
