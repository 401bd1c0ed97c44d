//! `kind = "amocrm"`: amoCRM API v4 with a private integration's long-lived token, or OAuth 2.0
//! tokens (`[crm.amocrm]`, see [`crate::crm::oauth`]). With `[crm] car_entity = "company"` car
//! facts go to the car's company card (bulk `PATCH /api/v4/companies`, notes
//! `POST /api/v4/companies/{id}/notes`) while stages move on the lead.
//! Stage moves and custom fields are lead PATCHes (`PATCH /api/v4/leads/{id}` for one,
//! bulk `PATCH /api/v4/leads` for several, ≤ 50 per call); driver messages and document
//! warnings become lead notes (`POST /api/v4/leads/notes`). A 200 is checked against the
//! returned entities: a lead missing from the answer, or with another status, is an error.

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

pub struct AmoCrm {
    cfg: CrmConfig,
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
    /// Per lead, the `updated_at` our last PATCH got back: that change is ours, not a
    /// manager's (see [`superseded`]).
    own: std::sync::Mutex<std::collections::HashMap<u64, i64>>,
    auth: super::AuthWatch,
    /// `[crm.amocrm]` OAuth tokens; `None`: the long-lived `token`.
    oauth: Option<crate::crm::oauth::Session>,
}

/// What one event asks of amoCRM.
enum Call {
    Lead(Value),
    Note(Value),
    /// A company card's fields (`[crm] car_entity = "company"`): bulk `PATCH /api/v4/companies`.
    Company(Value),
    /// A note on a company card: `POST /api/v4/companies/{id}/notes`.
    CompanyNote(u64, Value),
    Nothing,
}

fn field(id: u64, value: Value) -> Option<Value> {
    (id != 0).then(|| json!({ "field_id": id, "values": [{ "value": value }] }))
}

impl AmoCrm {
    /// `store` keeps the OAuth tokens when `[crm.amocrm]` is set.
    pub fn new(
        cfg: CrmConfig,
        http: reqwest::Client,
        limiter: Arc<RateLimiter>,
        store: Arc<dyn crate::crm::store::CrmStore>,
    ) -> Self {
        let auth = super::AuthWatch::new("amocrm", Duration::from_secs(cfg.auth_pause_s));
        let oauth = cfg
            .amocrm
            .enabled()
            .then(|| crate::crm::oauth::Session::new(cfg.clone(), http.clone(), store));
        AmoCrm {
            cfg,
            http,
            limiter,
            own: Default::default(),
            auth,
            oauth,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.base_url.trim_end_matches('/'))
    }

    fn call(&self, e: &OutboxEvent) -> Result<Vec<Call>, String> {
        let deal = || -> Result<u64, String> {
            e.deal_id
                .as_deref()
                .ok_or("the vehicle has no crm_deal_id")?
                .parse()
                .map_err(|_| {
                    format!(
                        "crm_deal_id '{}' is not an amoCRM lead id",
                        e.deal_id.as_deref().unwrap_or("")
                    )
                })
        };
        let f = &self.cfg.fields;
        let on_company = self.cfg.car_entity() == CarEntity::Company;
        let company = || -> Result<u64, String> {
            let c = e.company_id.as_deref().ok_or(
                "no company card: the vehicle has no crm_company_id and its deal has no linked company",
            )?;
            c.parse()
                .map_err(|_| format!("crm_company_id '{c}' is not an amoCRM company id"))
        };
        let lead = |mut body: serde_json::Map<String, Value>,
                    fields: Vec<Option<Value>>|
         -> Result<Call, String> {
            let fields: Vec<Value> = fields.into_iter().flatten().collect();
            if !fields.is_empty() {
                body.insert("custom_fields_values".into(), Value::Array(fields));
            }
            if body.is_empty() {
                return Ok(Call::Nothing);
            }
            body.insert("id".into(), deal()?.into());
            Ok(Call::Lead(Value::Object(body)))
        };
        // Car facts: on the deal, or on the company card.
        let card = |fields: Vec<Option<Value>>| -> Result<Call, String> {
            if !on_company {
                return lead(serde_json::Map::new(), fields);
            }
            let fields: Vec<Value> = fields.into_iter().flatten().collect();
            if fields.is_empty() {
                return Ok(Call::Nothing);
            }
            Ok(Call::Company(
                json!({ "id": company()?, "custom_fields_values": fields }),
            ))
        };
        let note = |text: String| -> Result<Call, String> {
            Ok(Call::Note(
                json!({ "entity_id": deal()?, "note_type": "common", "params": { "text": text } }),
            ))
        };
        let card_note = |text: String| -> Result<Call, String> {
            if !on_company {
                return note(text);
            }
            Ok(Call::CompanyNote(
                company()?,
                json!({ "note_type": "common", "params": { "text": text } }),
            ))
        };
        let loc =
            |lat: f64, lon: f64| field(f.location_field_id, format!("{lat:.6},{lon:.6}").into());
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
                let mut body = serde_json::Map::new();
                body.insert("status_id".into(), s.status_id.into());
                body.insert("pipeline_id".into(), s.pipeline_id.into());
                let loc = match (lat, lon) {
                    (Some(a), Some(o)) => loc(*a, *o),
                    _ => None,
                };
                let km =
                    odometer_km.and_then(|k| field(f.mileage_field_id, (k.round() as i64).into()));
                if !on_company {
                    vec![lead(body, vec![loc, km])?]
                } else if e.company_id.is_none() {
                    // The stage still moves; the card's facts have nowhere to go.
                    tracing::warn!(vehicle = %e.vehicle_id, "crm: no company card for the car: the stage moves, location and mileage are not written");
                    vec![lead(body, Vec::new())?]
                } else {
                    vec![lead(body, Vec::new())?, card(vec![loc, km])?]
                }
            }
            Payload::Location { lat, lon, .. } => vec![card(vec![loc(*lat, *lon)])?],
            Payload::Mileage { odometer_km, .. } => vec![card(vec![field(
                f.mileage_field_id,
                (odometer_km.round() as i64).into(),
            )])?],
            // The field with what is left before the inspection, and a note.
            Payload::InspectionDue {
                left_text, note: n, ..
            } => {
                let mut calls = Vec::new();
                if f.inspection_left_field_id != 0 {
                    calls.push(card(vec![field(
                        f.inspection_left_field_id,
                        left_text.clone().into(),
                    )])?);
                }
                if !n.is_empty() {
                    calls.push(card_note(n.clone())?);
                }
                calls
            }
            // The blocked field and a note naming the reasons: two calls, one event.
            Payload::BlockState { blocked, text, .. } => {
                let set = card(vec![field(f.blocked_field_id, (*blocked).into())])?;
                if text.is_empty() {
                    vec![set]
                } else {
                    vec![set, card_note(text.clone())?]
                }
            }
            Payload::DriverMessage { text, .. } => vec![note(text.clone())?],
            Payload::DocumentExpiring {
                document,
                expires_on,
                days_left,
            } => vec![card_note(if *days_left < 0 {
                format!("Документ {document} истёк {expires_on}")
            } else {
                format!("Документ {document} истекает {expires_on} (осталось дней: {days_left})")
            })?],
        })
    }

    /// The Bearer token: the long-lived one, or the OAuth session's (refreshed before expiry,
    /// and after amoCRM refused `refused`). A session that cannot get one pauses the connector
    /// like a 401 does.
    async fn bearer(&self, refused: Option<&str>) -> Result<String, Outcome> {
        let Some(session) = &self.oauth else {
            return Ok(self.cfg.token.clone());
        };
        match session.access_token(refused).await {
            Ok(t) => Ok(t),
            Err(e @ crate::crm::oauth::OAuthError::Http(_)) => Err(Outcome::Retry {
                error: e.to_string(),
                after: None,
            }),
            Err(e) => {
                self.auth.failed(&self.limiter, &e.to_string()).await;
                Err(Outcome::Retry {
                    error: e.to_string(),
                    after: None,
                })
            }
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, Outcome> {
        let mut refused: Option<String> = None;
        loop {
            let token = self.bearer(refused.as_deref()).await?;
            let _permit = self.limiter.acquire().await;
            let mut req = self
                .http
                .request(method.clone(), self.url(path))
                .bearer_auth(&token);
            if !body.is_null() {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| Outcome::Retry {
                error: format!("{method} {path}: {e}"),
                after: None,
            })?;
            let status = resp.status();
            if status.as_u16() == 429 {
                let after = retry_after(resp.headers()).unwrap_or(Duration::from_secs(1));
                self.limiter.pause(after).await;
                return Err(Outcome::Retry {
                    error: format!("{method} {path}: 429 Too Many Requests"),
                    after: Some(after),
                });
            }
            // An OAuth access token refused: refresh once and repeat the call before pausing.
            if status.as_u16() == 401 && self.oauth.is_some() && refused.is_none() {
                tracing::info!(
                    crm = "amocrm",
                    "{method} {path}: 401; refreshing the access token once"
                );
                refused = Some(token);
                continue;
            }
            // amoCRM answers a GET of a lead it does not have with 204 and no body.
            if status.as_u16() == 204 {
                self.auth.ok();
                return Ok(Value::Null);
            }
            let text = resp.text().await.unwrap_or_default();
            if matches!(status.as_u16(), 401 | 403) {
                self.auth
                    .failed(&self.limiter, &format!("{method} {path}: {status}"))
                    .await;
            } else if status.is_success() {
                self.auth.ok();
            }
            if !status.is_success() {
                return Err(match classify(status, &text) {
                    // A bad or expired token is not the event's fault: keep it until fixed or TTL.
                    Outcome::Failed(error) if matches!(status.as_u16(), 401 | 403) => {
                        Outcome::Retry { error, after: None }
                    }
                    o => o,
                });
            }
            return serde_json::from_str(&text).map_err(|e| Outcome::Retry {
                error: format!("{method} {path}: 200 with a body that is not JSON: {e}"),
                after: None,
            });
        }
    }

    fn remember(&self, answer: &[Value]) {
        if let Ok(mut own) = self.own.lock() {
            for a in answer {
                if let (Some(id), Some(t)) = (a["id"].as_u64(), a["updated_at"].as_i64()) {
                    own.insert(id, t);
                }
            }
        }
    }

    /// Check that the answer carries every lead we sent, with the status we asked for.
    fn verify_leads(sent: &[&Value], answer: &[Value]) -> Vec<Outcome> {
        sent.iter()
            .map(|s| {
                let id = s["id"].as_u64();
                match answer.iter().find(|a| a["id"].as_u64() == id) {
                    None => Outcome::Retry {
                        error: format!("amoCRM answered 200 but did not return lead {id:?}: nothing changed"),
                        after: None,
                    },
                    Some(a) if a.get("updated_at").is_none() => Outcome::Retry {
                        error: format!("amoCRM answered 200 without updated_at for lead {id:?}"),
                        after: None,
                    },
                    Some(a) => {
                        for k in ["status_id", "pipeline_id"] {
                            if let (Some(want), Some(got)) = (s.get(k), a.get(k)) {
                                if want != got {
                                    return Outcome::Retry {
                                        error: format!("amoCRM answered 200 but lead {id:?} has {k} {got}, not {want}"),
                                        after: None,
                                    };
                                }
                            }
                        }
                        Outcome::Delivered
                    }
                }
            })
            .collect()
    }

    async fn patch_leads(&self, leads: &[&Value]) -> Vec<Outcome> {
        if let [one] = leads {
            let id = one["id"].as_u64().unwrap_or(0);
            return match self
                .send(reqwest::Method::PATCH, &format!("/api/v4/leads/{id}"), one)
                .await
            {
                Ok(a) => {
                    self.remember(std::slice::from_ref(&a));
                    Self::verify_leads(leads, std::slice::from_ref(&a))
                }
                Err(o) => vec![o],
            };
        }
        let body = Value::Array(leads.iter().map(|v| (*v).clone()).collect());
        match self
            .send(reqwest::Method::PATCH, "/api/v4/leads", &body)
            .await
        {
            Ok(a) => {
                let answer = a["_embedded"]["leads"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                self.remember(&answer);
                Self::verify_leads(leads, &answer)
            }
            // One bad lead fails a whole bulk call: find it by sending them one by one.
            Err(Outcome::Failed(_)) => {
                let mut out = Vec::with_capacity(leads.len());
                for l in leads {
                    out.extend(Box::pin(self.patch_leads(std::slice::from_ref(l))).await);
                }
                out
            }
            Err(o) => vec![o; leads.len()],
        }
    }

    /// Is this note already on its lead or company (same text, created since the event was)?
    /// The newest common notes are read: `GET /api/v4/{leads|companies}/{id}/notes` (204 =
    /// none).
    async fn note_exists(
        &self,
        entity: &str,
        id: u64,
        text: &Value,
        e: &OutboxEvent,
    ) -> Result<bool, Outcome> {
        let path =
            format!("/api/v4/{entity}/{id}/notes?filter[note_type]=common&order[id]=desc&limit=50");
        let list = match self.send(reqwest::Method::GET, &path, &Value::Null).await {
            Ok(l) => l,
            Err(Outcome::Failed(error)) => return Err(Outcome::Retry { error, after: None }),
            Err(o) => return Err(o),
        };
        // amoCRM's clock and ours may differ by a little: a minute's slack.
        let since = e.created_at.timestamp() - 60;
        Ok(list["_embedded"]["notes"].as_array().is_some_and(|ns| {
            ns.iter().any(|n| {
                n["params"]["text"] == *text && n["created_at"].as_i64().is_some_and(|t| t >= since)
            })
        }))
    }

    /// Company cards' fields in one bulk `PATCH /api/v4/companies` (≤ `batch_max`); the answer
    /// must carry every company sent, with its `updated_at`.
    async fn patch_companies(&self, companies: &[&Value]) -> Vec<Outcome> {
        let body = Value::Array(companies.iter().map(|v| (*v).clone()).collect());
        match self
            .send(reqwest::Method::PATCH, "/api/v4/companies", &body)
            .await
        {
            Ok(a) => {
                let answer = a["_embedded"]["companies"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                companies
                    .iter()
                    .map(|c| {
                        let id = c["id"].as_u64();
                        match answer.iter().find(|a| a["id"].as_u64() == id) {
                            Some(a) if a.get("updated_at").is_some() => Outcome::Delivered,
                            _ => Outcome::Retry {
                                error: format!("amoCRM answered 200 but did not return company {id:?}: nothing changed"),
                                after: None,
                            },
                        }
                    })
                    .collect()
            }
            // One bad company fails a whole bulk call: find it by sending them one by one.
            Err(Outcome::Failed(_)) if companies.len() > 1 => {
                let mut out = Vec::with_capacity(companies.len());
                for c in companies {
                    out.extend(Box::pin(self.patch_companies(std::slice::from_ref(c))).await);
                }
                out
            }
            Err(o) => vec![o; companies.len()],
        }
    }

    /// A note on a company card: `POST /api/v4/companies/{id}/notes`.
    async fn add_company_note(&self, company: u64, note: &Value) -> Outcome {
        let body = Value::Array(vec![note.clone()]);
        match self
            .send(
                reqwest::Method::POST,
                &format!("/api/v4/companies/{company}/notes"),
                &body,
            )
            .await
        {
            Ok(a) if a["_embedded"]["notes"].as_array().map_or(0, Vec::len) == 1 => {
                Outcome::Delivered
            }
            Ok(_) => Outcome::Retry {
                error: format!("amoCRM created no note on company {company}"),
                after: None,
            },
            Err(o) => o,
        }
    }

    async fn add_notes(&self, notes: &[&Value]) -> Vec<Outcome> {
        let body = Value::Array(notes.iter().map(|v| (*v).clone()).collect());
        match self
            .send(reqwest::Method::POST, "/api/v4/leads/notes", &body)
            .await
        {
            Ok(a) => {
                let n = a["_embedded"]["notes"].as_array().map_or(0, Vec::len);
                if n == notes.len() {
                    vec![Outcome::Delivered; notes.len()]
                } else {
                    vec![
                        Outcome::Retry {
                            error: format!("amoCRM created {n} of {} notes", notes.len()),
                            after: None,
                        };
                        notes.len()
                    ]
                }
            }
            Err(o) => vec![o; notes.len()],
        }
    }
}

#[async_trait]
impl Connector for AmoCrm {
    fn name(&self) -> &'static str {
        "amocrm"
    }

    fn close(&self) {
        self.limiter.close();
    }

    async fn deliver(&self, events: &[OutboxEvent]) -> Vec<Outcome> {
        // An event may need a lead update and a note: its outcome is the worse of the two.
        let mut out: Vec<Option<Outcome>> = vec![None; events.len()];
        let put = |out: &mut Vec<Option<Outcome>>, i: usize, o: Outcome| {
            out[i] = Some(match out[i].take() {
                None => o,
                Some(prev) => worse(prev, o),
            });
        };
        let mut leads = Vec::new();
        let mut notes = Vec::new();
        let mut companies = Vec::new();
        let mut company_notes = Vec::new();
        let calls: Vec<_> = events.iter().map(|e| self.call(e)).collect();
        for (i, c) in calls.iter().enumerate() {
            match c {
                Err(e) => put(&mut out, i, Outcome::Failed(e.clone())),
                Ok(cs) => {
                    for c in cs {
                        match c {
                            Call::Nothing => put(&mut out, i, Outcome::Delivered),
                            Call::Lead(v) => leads.push((i, v)),
                            Call::Note(v) => notes.push((i, v)),
                            Call::Company(v) => companies.push((i, v)),
                            Call::CompanyNote(id, v) => company_notes.push((i, *id, v)),
                        }
                    }
                }
            }
        }
        for chunk in leads.chunks(self.cfg.batch_max.max(1)) {
            let bodies: Vec<&Value> = chunk.iter().map(|(_, v)| *v).collect();
            for ((i, _), o) in chunk.iter().zip(self.patch_leads(&bodies).await) {
                put(&mut out, *i, o);
            }
        }
        for chunk in companies.chunks(self.cfg.batch_max.max(1)) {
            let bodies: Vec<&Value> = chunk.iter().map(|(_, v)| *v).collect();
            for ((i, _), o) in chunk.iter().zip(self.patch_companies(&bodies).await) {
                put(&mut out, *i, o);
            }
        }
        // A note retried after an attempt that may have landed (a timeout, a lost answer) is
        // looked up first: amoCRM has no idempotency key, and a second note would show twice.
        let mut fresh = Vec::new();
        for (i, v) in notes {
            if events[i].attempts == 0 {
                fresh.push((i, v));
                continue;
            }
            let lead = v["entity_id"].as_u64().unwrap_or(0);
            match self
                .note_exists("leads", lead, &v["params"]["text"], &events[i])
                .await
            {
                Ok(true) => {
                    tracing::info!(key = %events[i].key, "crm: note already in amoCRM, not posted again");
                    put(&mut out, i, Outcome::Delivered);
                }
                Ok(false) => fresh.push((i, v)),
                Err(o) => put(&mut out, i, o),
            }
        }
        let notes = fresh;
        for chunk in notes.chunks(self.cfg.batch_max.max(1)) {
            let bodies: Vec<&Value> = chunk.iter().map(|(_, v)| *v).collect();
            for ((i, _), o) in chunk.iter().zip(self.add_notes(&bodies).await) {
                put(&mut out, *i, o);
            }
        }
        for (i, company, v) in company_notes {
            if events[i].attempts > 0 {
                match self
                    .note_exists("companies", company, &v["params"]["text"], &events[i])
                    .await
                {
                    Ok(true) => {
                        put(&mut out, i, Outcome::Delivered);
                        continue;
                    }
                    Ok(false) => {}
                    Err(o) => {
                        put(&mut out, i, o);
                        continue;
                    }
                }
            }
            let o = self.add_company_note(company, v).await;
            put(&mut out, i, o);
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Retry {
                    error: "no answer for this event".into(),
                    after: None,
                })
            })
            .collect()
    }

    /// The company linked to a lead: `GET /api/v4/leads/{id}` answers it in
    /// `_embedded.companies` (a lead has at most one; no `with` needed); 204 = no such lead.
    async fn deal_company(&self, deal: &str) -> Result<Option<String>, Outcome> {
        let lead = self
            .send(
                reqwest::Method::GET,
                &format!("/api/v4/leads/{}", urlencode(deal)),
                &Value::Null,
            )
            .await?;
        Ok(lead["_embedded"]["companies"][0]["id"]
            .as_u64()
            .map(|id| id.to_string()))
    }

    async fn late_stage(&self, e: &OutboxEvent) -> Result<Option<String>, Outcome> {
        let Payload::StageChanged { stage, .. } = &e.payload else {
            return Ok(None);
        };
        let Some(deal) = e.deal_id.as_deref().and_then(|d| d.parse::<u64>().ok()) else {
            return Ok(None);
        };
        let s = match stage {
            StageName::OnLine => &self.cfg.stages.on_line,
            StageName::WantsToReturn => &self.cfg.stages.wants_to_return,
        };
        let lead = match self
            .send(
                reqwest::Method::GET,
                &format!("/api/v4/leads/{deal}"),
                &Value::Null,
            )
            .await
        {
            Ok(l) => l,
            // Refused: nothing to protect; the PATCH will tell. Unreachable: retried.
            Err(Outcome::Failed(_)) => return Ok(None),
            Err(o) => return Err(o),
        };
        if lead.is_null() {
            // No such lead: nothing to protect; the PATCH will tell.
            return Ok(None);
        }
        let changed_at = lead["updated_at"]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .ok_or_else(|| Outcome::Retry {
                error: format!("GET lead {deal}: no updated_at"),
                after: None,
            })?;
        let now = DealNow {
            stage: format!("{}:{}", lead["pipeline_id"], lead["status_id"]),
            changed_at,
        };
        let own = self
            .own
            .lock()
            .ok()
            .and_then(|o| o.get(&deal).copied())
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0));
        let target = format!("{}:{}", s.pipeline_id, s.status_id);
        Ok(superseded(e.created_at, &target, &now, own))
    }

    async fn balances(&self, qs: &[BalanceQuery]) -> Vec<Result<PulledBalance, ConnectorError>> {
        let field = self.cfg.fields.balance_field_id;
        if field == 0 {
            return qs.iter().map(|_| Err(ConnectorError::NoBalance)).collect();
        }
        let mut ids: Vec<&str> = qs.iter().filter_map(|q| q.deal_id.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        // `GET /api/v4/leads?filter[id][]=…&limit=250`: up to 250 leads per request.
        let mut leads: std::collections::HashMap<String, Result<Value, String>> =
            std::collections::HashMap::new();
        for chunk in ids.chunks(250) {
            let mut path = format!("/api/v4/leads?limit={}", chunk.len());
            for id in chunk {
                path.push_str("&filter%5Bid%5D%5B%5D=");
                path.push_str(&urlencode(id));
            }
            match self.send(reqwest::Method::GET, &path, &Value::Null).await {
                Ok(answer) => {
                    let found = answer["_embedded"]["leads"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for l in found {
                        let id = match &l["id"] {
                            Value::Number(n) => n.to_string(),
                            Value::String(s) => s.clone(),
                            _ => continue,
                        };
                        leads.insert(id, Ok(l));
                    }
                }
                Err(o) => {
                    for id in chunk {
                        leads.insert(id.to_string(), Err(format!("GET leads: {o:?}")));
                    }
                }
            }
        }
        super::per_deal(qs, &leads, "lead", |lead, deal| {
            lead_balance(lead, deal, field)
        })
    }

    async fn balance(&self, q: &BalanceQuery) -> Result<PulledBalance, ConnectorError> {
        let field = self.cfg.fields.balance_field_id;
        if field == 0 {
            return Err(ConnectorError::NoBalance);
        }
        let deal = q
            .deal_id
            .as_deref()
            .ok_or_else(|| ConnectorError::Response("the vehicle has no crm_deal_id".into()))?;
        let lead = self
            .send(
                reqwest::Method::GET,
                &format!("/api/v4/leads/{deal}"),
                &Value::Null,
            )
            .await
            .map_err(|o| ConnectorError::Response(format!("GET lead {deal}: {o:?}")))?;
        lead_balance(&lead, deal, field)
    }
}

/// The balance field of a lead as amoCRM returns it.
fn lead_balance(lead: &Value, deal: &str, field: u64) -> Result<PulledBalance, ConnectorError> {
    let rub = lead["custom_fields_values"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["field_id"].as_u64() == Some(field)))
        .and_then(|f| as_rub(&f["values"][0]["value"]))
        .ok_or_else(|| {
            ConnectorError::Response(format!("lead {deal} has no numeric field {field}"))
        })?;
    let as_of = lead["updated_at"]
        .as_i64()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0));
    Ok(PulledBalance { rub, as_of })
}

/// Percent-encode a query value (deal ids are digits; anything else is escaped).
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_that_changed_nothing_is_not_delivered() {
        let sent = json!({ "id": 42, "status_id": 142001, "pipeline_id": 7001 });
        let ok = json!({ "id": 42, "status_id": 142001, "pipeline_id": 7001, "updated_at": 1 });
        assert_eq!(
            AmoCrm::verify_leads(&[&sent], &[ok]),
            vec![Outcome::Delivered]
        );
        let unchanged = json!({ "id": 42, "status_id": 143, "pipeline_id": 7001, "updated_at": 1 });
        assert!(matches!(
            &AmoCrm::verify_leads(&[&sent], &[unchanged])[0],
            Outcome::Retry { error, .. } if error.contains("status_id")
        ));
        let other = json!({ "id": 43, "updated_at": 1 });
        assert!(matches!(
            &AmoCrm::verify_leads(&[&sent], &[other])[0],
            Outcome::Retry { error, .. } if error.contains("did not return lead")
        ));
        let no_stamp = json!({ "id": 42 });
        assert!(matches!(
            AmoCrm::verify_leads(&[&sent], &[no_stamp])[0],
            Outcome::Retry { .. }
        ));
    }
}
