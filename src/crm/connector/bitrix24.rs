//! `kind = "bitrix24"`: REST calls through an incoming webhook
//! (`https://<portal>/rest/<user>/<secret>/<method>`). Stage moves and fields are
//! `crm.deal.update` with `fields[STAGE_ID]` / `UF_CRM_*`; driver messages and document
//! warnings are timeline comments (`crm.timeline.comment.add`). With `[crm] car_entity =
//! "company"` car facts go to `crm.company.update` and company comments instead. Over the portal's leaky
//! bucket Bitrix24 answers `503 QUERY_LIMIT_EXCEEDED`: the whole connector backs off.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{
    as_rub, classify, retry_after, superseded, worse, BalanceQuery, Connector, ConnectorError,
    DealNow, Outcome, PulledBalance,
};
use crate::crm::config::{CarEntity, CrmConfig};
use crate::crm::event::{OutboxEvent, Payload, StageName};
use crate::crm::ratelimit::RateLimiter;

pub struct Bitrix24 {
    cfg: CrmConfig,
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
    auth: super::AuthWatch,
}

impl Bitrix24 {
    pub fn new(cfg: CrmConfig, http: reqwest::Client, limiter: Arc<RateLimiter>) -> Self {
        let auth = super::AuthWatch::new("bitrix24", Duration::from_secs(cfg.auth_pause_s));
        Bitrix24 {
            cfg,
            http,
            limiter,
            auth,
        }
    }

    fn url(&self, method: &str) -> String {
        format!("{}/{method}", self.cfg.webhook_url.trim_end_matches('/'))
    }

    /// The REST calls (method, parameters) for one event, in order; none when nothing is
    /// configured. Car facts go to the deal, or with `[crm] car_entity = "company"` to the
    /// car's company (`crm.company.update`, comments with `ENTITY_TYPE` `company`).
    fn call(&self, e: &OutboxEvent) -> Result<Vec<(&'static str, Value)>, String> {
        let deal = || -> Result<String, String> {
            Ok(e.deal_id
                .as_deref()
                .ok_or("the vehicle has no crm_deal_id")?
                .to_string())
        };
        let on_company = self.cfg.car_entity() == CarEntity::Company;
        let company = || -> Result<String, String> {
            Ok(e.company_id
                .as_deref()
                .ok_or("no company card: the vehicle has no crm_company_id and its deal has no linked company")?
                .to_string())
        };
        let f = &self.cfg.fields;
        let update =
            |fields: serde_json::Map<String, Value>| -> Result<Vec<(&'static str, Value)>, String> {
                Ok(if fields.is_empty() {
                    Vec::new()
                } else {
                    vec![(
                        "crm.deal.update",
                        json!({ "id": deal()?, "fields": fields }),
                    )]
                })
            };
        let card =
            |fields: serde_json::Map<String, Value>| -> Result<Vec<(&'static str, Value)>, String> {
                if !on_company {
                    return update(fields);
                }
                Ok(if fields.is_empty() {
                    Vec::new()
                } else {
                    vec![(
                        "crm.company.update",
                        json!({ "id": company()?, "fields": fields }),
                    )]
                })
            };
        let comment = |entity: &str, id: String, text: String| {
            (
                "crm.timeline.comment.add",
                json!({ "fields": { "ENTITY_ID": id, "ENTITY_TYPE": entity, "COMMENT": text } }),
            )
        };
        let card_comment = |text: String| -> Result<(&'static str, Value), String> {
            Ok(if on_company {
                comment("company", company()?, text)
            } else {
                comment("deal", deal()?, text)
            })
        };
        let put = |fields: &mut serde_json::Map<String, Value>, code: &str, v: Value| {
            if !code.is_empty() {
                fields.insert(code.to_string(), v);
            }
        };
        let mut fields = serde_json::Map::new();
        Ok(match &e.payload {
            Payload::StageChanged {
                stage,
                lat,
                lon,
                odometer_km,
                ..
            } => {
                let s = match stage {
                    StageName::OnLine => &self.cfg.stages.on_line,
                    StageName::WantsToReturn => &self.cfg.stages.wants_to_return,
                };
                let mut facts = serde_json::Map::new();
                if let (Some(a), Some(o)) = (lat, lon) {
                    put(
                        &mut facts,
                        &f.location_field_code,
                        format!("{a:.6},{o:.6}").into(),
                    );
                }
                if let Some(k) = odometer_km {
                    put(&mut facts, &f.mileage_field_code, (k.round() as i64).into());
                }
                put(&mut fields, "STAGE_ID", s.stage_id.clone().into());
                if !on_company {
                    fields.extend(facts);
                    update(fields)?
                } else if e.company_id.is_none() {
                    tracing::warn!(vehicle = %e.vehicle_id, "crm: no company card for the car: the stage moves, location and mileage are not written");
                    update(fields)?
                } else {
                    let mut calls = update(fields)?;
                    calls.extend(card(facts)?);
                    calls
                }
            }
            Payload::Location { lat, lon, .. } => {
                put(
                    &mut fields,
                    &f.location_field_code,
                    format!("{lat:.6},{lon:.6}").into(),
                );
                card(fields)?
            }
            Payload::Mileage { odometer_km, .. } => {
                put(
                    &mut fields,
                    &f.mileage_field_code,
                    (odometer_km.round() as i64).into(),
                );
                card(fields)?
            }
            // The field with what is left before the inspection, and a comment.
            Payload::InspectionDue {
                left_text, note, ..
            } => {
                put(
                    &mut fields,
                    &f.inspection_left_field_code,
                    left_text.clone().into(),
                );
                let mut calls = card(fields)?;
                if !note.is_empty() {
                    calls.push(card_comment(note.clone())?);
                }
                calls
            }
            // The blocked field and a comment naming the reasons.
            Payload::BlockState { blocked, text, .. } => {
                put(
                    &mut fields,
                    &f.blocked_field_code,
                    (if *blocked { "Y" } else { "N" }).into(),
                );
                let mut calls = card(fields)?;
                if !text.is_empty() {
                    calls.push(card_comment(text.clone())?);
                }
                calls
            }
            Payload::DriverMessage { text, .. } => vec![comment("deal", deal()?, text.clone())],
            Payload::DocumentExpiring {
                document,
                expires_on,
                days_left,
            } => vec![card_comment(format!(
                "Документ {document}: срок {expires_on}, осталось дней: {days_left}"
            ))?],
        })
    }

    /// Is this comment already on the deal or company (same text, created since the event was)?
    /// `crm.timeline.comment.list` of the deal, newest first.
    async fn comment_exists(&self, params: &Value, e: &OutboxEvent) -> Result<bool, Outcome> {
        let f = &params["fields"];
        let list = self
            .rest(
                "crm.timeline.comment.list",
                &json!({ "filter": { "ENTITY_ID": f["ENTITY_ID"], "ENTITY_TYPE": f["ENTITY_TYPE"] },
                         "order": { "ID": "DESC" } }),
            )
            .await?;
        // The portal's clock and ours may differ by a little: a minute's slack.
        let since = e.created_at - chrono::Duration::seconds(60);
        Ok(list.as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["COMMENT"] == f["COMMENT"]
                    && c["CREATED"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t >= since)
            })
        }))
    }

    /// One call of an event. A comment retried after an attempt that may have landed is
    /// looked up first: Bitrix24 has no idempotency key, and a second comment would show twice.
    async fn one(&self, e: &OutboxEvent, method: &str, params: &Value) -> Outcome {
        if method == "crm.timeline.comment.add" && e.attempts > 0 {
            match self.comment_exists(params, e).await {
                Ok(true) => {
                    tracing::info!(key = %e.key, "crm: comment already in Bitrix24, not added again");
                    return Outcome::Delivered;
                }
                Ok(false) => {}
                Err(o) => return o,
            }
        }
        match self.rest(method, params).await {
            Ok(Value::Bool(false)) | Ok(Value::Null) => Outcome::Retry {
                error: format!("{method}: Bitrix24 answered result = false: nothing changed"),
                after: None,
            },
            Ok(_) => Outcome::Delivered,
            Err(o) => o,
        }
    }

    async fn rest(&self, method: &str, params: &Value) -> Result<Value, Outcome> {
        let _permit = self.limiter.acquire().await;
        let resp = self
            .http
            .post(self.url(method))
            .json(params)
            .send()
            .await
            // The webhook URL carries the portal's secret: never in an error (it is logged).
            .map_err(|e| Outcome::Retry {
                error: format!("{method}: {}", e.without_url()),
                after: None,
            })?;
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = body["error"].as_str().unwrap_or("");
        if code == "QUERY_LIMIT_EXCEEDED" || status.as_u16() == 429 {
            let d = after.unwrap_or(Duration::from_secs(1));
            self.limiter.pause(d).await;
            return Err(Outcome::Retry {
                error: format!("{method}: {status} QUERY_LIMIT_EXCEEDED"),
                after: Some(d),
            });
        }
        let auth_refused = matches!(status.as_u16(), 401 | 403)
            || matches!(
                code,
                "expired_token" | "INVALID_CREDENTIALS" | "NO_AUTH_FOUND" | "invalid_token"
            );
        if auth_refused {
            self.auth
                .failed(&self.limiter, &format!("{method}: {status} {code}"))
                .await;
        } else if status.is_success() && code.is_empty() {
            self.auth.ok();
        }
        if !status.is_success() || !code.is_empty() {
            let desc = body["error_description"].as_str().unwrap_or("");
            return Err(match classify(status, &text) {
                Outcome::Failed(_) if code == "expired_token" || code == "INVALID_CREDENTIALS" => {
                    Outcome::Retry {
                        error: format!("{method}: {code} {desc}"),
                        after: None,
                    }
                }
                Outcome::Failed(_) => Outcome::Failed(format!("{method}: {status} {code} {desc}")),
                o => o,
            });
        }
        Ok(body["result"].clone())
    }
}

#[async_trait]
impl Connector for Bitrix24 {
    fn name(&self) -> &'static str {
        "bitrix24"
    }

    fn close(&self) {
        self.limiter.close();
    }

    async fn deliver(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let calls = match self.call(e) {
                Ok(c) => c,
                Err(err) => {
                    out.push(Outcome::Failed(err));
                    continue;
                }
            };
            let mut outcome = Outcome::Delivered;
            for (method, params) in calls {
                let o = self.one(e, method, &params).await;
                let stop = o != Outcome::Delivered;
                outcome = worse(outcome, o);
                // The rest goes with the retry, in order.
                if stop {
                    break;
                }
            }
            out.push(outcome);
        }
        out
    }

    /// `crm.deal.update` answers only `true`, so our own writes carry no time to remember;
    /// events of one car go out in order, so a change after a pending event's creation is
    /// not one of that car's own.
    async fn late_stage(&self, e: &OutboxEvent) -> Result<Option<String>, Outcome> {
        let Payload::StageChanged { stage, .. } = &e.payload else {
            return Ok(None);
        };
        let Some(deal) = e.deal_id.as_deref() else {
            return Ok(None);
        };
        let target = match stage {
            StageName::OnLine => &self.cfg.stages.on_line.stage_id,
            StageName::WantsToReturn => &self.cfg.stages.wants_to_return.stage_id,
        };
        let d = match self.rest("crm.deal.get", &json!({ "id": deal })).await {
            Ok(d) => d,
            // Refused (no such deal, no right to read it): nothing to protect; the update
            // will tell. Unreachable or throttled: retried, not sent blind.
            Err(Outcome::Failed(_)) => return Ok(None),
            Err(o) => return Err(o),
        };
        let changed_at = d["DATE_MODIFY"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok_or_else(|| Outcome::Retry {
                error: format!("crm.deal.get {deal}: no DATE_MODIFY"),
                after: None,
            })?;
        let now = DealNow {
            stage: d["STAGE_ID"].as_str().unwrap_or_default().to_string(),
            changed_at,
        };
        Ok(superseded(e.created_at, target, &now, None))
    }

    async fn balances(&self, qs: &[BalanceQuery]) -> Vec<Result<PulledBalance, ConnectorError>> {
        let code = self.cfg.fields.balance_field_code.clone();
        if code.is_empty() {
            return qs.iter().map(|_| Err(ConnectorError::NoBalance)).collect();
        }
        let mut ids: Vec<&str> = qs.iter().filter_map(|q| q.deal_id.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        // `batch`: up to 50 commands per call, each a `crm.deal.list` of up to 50 deals (one
        // page): 2,500 deals per request.
        let mut deals: std::collections::HashMap<String, Result<Value, String>> =
            std::collections::HashMap::new();
        for batch in ids.chunks(50 * 50) {
            let mut cmd = serde_json::Map::new();
            for (i, chunk) in batch.chunks(50).enumerate() {
                let mut q = String::from("crm.deal.list?");
                for (j, id) in chunk.iter().enumerate() {
                    q.push_str(&format!("filter%5B%40ID%5D%5B{j}%5D={}&", enc(id)));
                }
                q.push_str(&format!(
                    "select%5B0%5D=ID&select%5B1%5D={}&select%5B2%5D=DATE_MODIFY",
                    enc(&code)
                ));
                cmd.insert(format!("c{i}"), Value::String(q));
            }
            match self.rest("batch", &json!({ "halt": 0, "cmd": cmd })).await {
                Ok(r) => {
                    for (i, chunk) in batch.chunks(50).enumerate() {
                        let key = format!("c{i}");
                        if let Some(list) = r["result"][&key].as_array() {
                            for d in list {
                                if let Some(id) = d["ID"].as_str() {
                                    deals.insert(id.to_string(), Ok(d.clone()));
                                }
                            }
                        } else {
                            let why = r["result_error"][&key].to_string();
                            for id in chunk {
                                deals.insert(id.to_string(), Err(format!("crm.deal.list: {why}")));
                            }
                        }
                    }
                }
                Err(o) => {
                    for id in batch {
                        deals.insert(id.to_string(), Err(format!("batch: {o:?}")));
                    }
                }
            }
        }
        super::per_deal(qs, &deals, "deal", |d, deal| {
            let rub = as_rub(&d[code.as_str()]).ok_or_else(|| {
                ConnectorError::Response(format!("deal {deal} has no numeric {code}"))
            })?;
            let as_of = d["DATE_MODIFY"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            Ok(PulledBalance { rub, as_of })
        })
    }

    /// `crm.deal.get`: `COMPANY_ID` is the deal's company (`"0"` or empty when none).
    async fn deal_company(&self, deal: &str) -> Result<Option<String>, Outcome> {
        let d = self.rest("crm.deal.get", &json!({ "id": deal })).await?;
        Ok(match &d["COMPANY_ID"] {
            Value::String(s) if !s.is_empty() && s != "0" => Some(s.clone()),
            Value::Number(n) if n.as_u64().is_some_and(|n| n != 0) => Some(n.to_string()),
            _ => None,
        })
    }

    async fn read_deal(&self, deal: &str) -> Result<super::DealFacts, ConnectorError> {
        let d = self
            .rest("crm.deal.get", &json!({ "id": deal }))
            .await
            .map_err(|o| ConnectorError::Response(format!("crm.deal.get {deal}: {o:?}")))?;
        let code = &self.cfg.fields.balance_field_code;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(super::DealFacts {
            stage_id: d["STAGE_ID"].as_str().unwrap_or_default().to_string(),
            balance_rub: (!code.is_empty())
                .then(|| as_rub(&d[code.as_str()]))
                .flatten(),
            modified_by: text(&d["MODIFY_BY_ID"]),
            changed_at: d["DATE_MODIFY"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        })
    }

    async fn balance(&self, q: &BalanceQuery) -> Result<PulledBalance, ConnectorError> {
        let code = &self.cfg.fields.balance_field_code;
        if code.is_empty() {
            return Err(ConnectorError::NoBalance);
        }
        let deal = q
            .deal_id
            .as_deref()
            .ok_or_else(|| ConnectorError::Response("the vehicle has no crm_deal_id".into()))?;
        let deal_json = self
            .rest("crm.deal.get", &json!({ "id": deal }))
            .await
            .map_err(|o| ConnectorError::Response(format!("crm.deal.get {deal}: {o:?}")))?;
        let rub = as_rub(&deal_json[code.as_str()]).ok_or_else(|| {
            ConnectorError::Response(format!("deal {deal} has no numeric {code}"))
        })?;
        let as_of = deal_json["DATE_MODIFY"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        Ok(PulledBalance { rub, as_of })
    }
}

/// Percent-encode a value inside a `batch` command's query string.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
