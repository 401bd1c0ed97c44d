//! In-test CRM servers that record every call: one following amoCRM's API v4 contract
//! (Bearer auth, lead PATCH single and bulk, notes, company PATCH bulk and single, company
//! notes, a lead's company in `_embedded.companies`, OAuth `POST /oauth2/access_token` with
//! single-use codes and rotating refresh tokens, 7 requests/s → 429), one Bitrix24 incoming
//! webhook (`crm.deal.update`, `crm.company.update`, `crm.deal.get` with `COMPANY_ID`,
//! `503 QUERY_LIMIT_EXCEEDED`), one plain webhook receiver (signature and idempotency key
//! headers).
#![allow(dead_code)]

pub mod config;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub status: u16,
    pub at: Instant,
}

#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<Vec<Call>>,
    /// amoCRM leads by id: status_id, pipeline_id, custom fields by id.
    pub leads: Mutex<HashMap<u64, Value>>,
    /// amoCRM notes as created: `{id, entity_id, note_type, params, created_at}`.
    pub notes: Mutex<Vec<Value>>,
    /// Bitrix24 deals by id as `crm.deal.update` left them, with `STAGE_ID` and `DATE_MODIFY`.
    pub deals: Mutex<HashMap<String, Value>>,
    /// Bitrix24 timeline comments as added: `{ID, ENTITY_ID, ENTITY_TYPE, COMMENT, CREATED}`.
    pub comments: Mutex<Vec<Value>>,
    /// Statuses to answer the next requests with, before serving normally.
    pub fail: Mutex<VecDeque<u16>>,
    recent: Mutex<VecDeque<Instant>>,
    /// The token the fake accepts (a manager may revoke or reissue it).
    pub token: Mutex<String>,
    pub secret: String,
    /// Webhook: wait this long after applying (recording) a call before answering it, so a
    /// client killed meanwhile never learns that the call was applied.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Company cards by id (amoCRM company id, Bitrix24 company `ID`): amoCRM `{id, fields,
    /// updated_at}`, Bitrix24 the fields as `crm.company.update` left them. A write to a
    /// company not here is refused, as the CRMs refuse an unknown id.
    pub companies: Mutex<HashMap<String, Value>>,
    /// amoCRM OAuth: the integration's keys, the codes it would accept (each once), the one
    /// refresh token that works now (rotated on every refresh), the access tokens' lifetime.
    pub oauth: Mutex<OAuthFake>,
}

#[derive(Default)]
pub struct OAuthFake {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub codes: Vec<String>,
    pub refresh_token: Option<String>,
    pub expires_in: i64,
    /// Pairs issued so far (access `acc-N`, refresh `ref-N`).
    pub issued: u64,
    /// Refresh tokens presented that were refused (an old, rotated one).
    pub refused: Vec<String>,
}

pub struct Server {
    pub fake: Arc<Fake>,
    pub addr: SocketAddr,
    pub url: String,
}

impl Fake {
    /// The texts of the amoCRM notes on lead `deal`, in the order they were added.
    pub fn note_texts(&self, deal: u64) -> Vec<String> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["entity_id"] == deal)
            .filter_map(|n| n["params"]["text"].as_str().map(str::to_string))
            .collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    /// Successful (2xx) calls with this method.
    pub fn ok(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && (200..300).contains(&c.status))
            .collect()
    }
    /// Values written to custom field `field_id` by accepted lead PATCHes (single or bulk),
    /// in call order.
    pub fn field_writes(&self, field_id: u64) -> Vec<Value> {
        self.ok("PATCH")
            .iter()
            .flat_map(|c| {
                let items = c
                    .body
                    .as_array()
                    .cloned()
                    .unwrap_or_else(|| vec![c.body.clone()]);
                items
                    .into_iter()
                    .filter_map(|i| {
                        i["custom_fields_values"]
                            .as_array()?
                            .iter()
                            .find(|f| f["field_id"] == field_id)
                            .map(|f| f["values"][0]["value"].clone())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
    pub fn fail_next(&self, statuses: &[u16]) {
        self.fail.lock().unwrap().extend(statuses);
    }
    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Value, status: u16) {
        self.calls.lock().unwrap().push(Call {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers: headers.clone(),
            body: body.clone(),
            status,
            at: Instant::now(),
        });
    }
    /// True when this request is the 8th or later within one second (amoCRM: 7 req/s).
    fn over_rate(&self, per_s: usize) -> bool {
        let mut r = self.recent.lock().unwrap();
        let now = Instant::now();
        while r.front().is_some_and(|t| now - *t > Duration::from_secs(1)) {
            r.pop_front();
        }
        r.push_back(now);
        r.len() > per_s
    }
    /// A manager moves an amoCRM lead to another stage in the CRM: its `updated_at` moves.
    pub fn manager_moves(&self, lead: u64, pipeline_id: u64, status_id: u64) {
        let mut leads = self.leads.lock().unwrap();
        let l = leads
            .entry(lead)
            .or_insert_with(|| json!({ "id": lead, "fields": {} }));
        l["pipeline_id"] = pipeline_id.into();
        l["status_id"] = status_id.into();
        l["updated_at"] = unix_now().into();
    }
    /// A manager moves a Bitrix24 deal to another stage: its `DATE_MODIFY` moves.
    pub fn manager_moves_deal(&self, deal: &str, stage_id: &str) {
        let mut deals = self.deals.lock().unwrap();
        let d = deals
            .entry(deal.to_string())
            .or_insert_with(|| json!({ "ID": deal }));
        d["STAGE_ID"] = stage_id.into();
        d["DATE_MODIFY"] = chrono::Utc::now().to_rfc3339().into();
    }
    /// A company card exists in the CRM (amoCRM or Bitrix24).
    pub fn add_company(&self, id: &str) {
        self.companies
            .lock()
            .unwrap()
            .insert(id.to_string(), json!({ "id": id, "fields": {} }));
    }
    /// amoCRM: the lead is linked to a company (shown in its `_embedded.companies`).
    pub fn link_company(&self, lead: u64, company: u64) {
        let mut leads = self.leads.lock().unwrap();
        let l = leads.entry(lead).or_insert_with(
            || json!({ "id": lead, "status_id": 1, "pipeline_id": 1, "fields": {} }),
        );
        l["company_id"] = company.into();
    }
    /// Values written to a company card's field (amoCRM field id or Bitrix24 code), in order.
    pub fn company_writes(&self, company: &str, field: &str) -> Vec<Value> {
        self.companies
            .lock()
            .unwrap()
            .get(company)
            .and_then(|c| c["history"][field].as_array().cloned())
            .unwrap_or_default()
    }
    pub fn set_field(&self, lead: u64, field: u64, value: Value) {
        let mut leads = self.leads.lock().unwrap();
        let l = leads
            .entry(lead)
            .or_insert_with(|| json!({ "id": lead, "fields": {} }));
        l["fields"][field.to_string()] = value;
        // A manager's edit in the CRM: the lead's change time moves.
        l["updated_at"] = unix_now().into();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn json_resp(status: u16, v: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(v)).into_response()
}

/// A lead as `GET /api/v4/leads…` returns it.
fn lead_json(id: u64, l: &Value) -> Value {
    let cf: Vec<Value> = l["fields"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| json!({ "field_id": k.parse::<u64>().unwrap(), "values": [{ "value": v }] }))
                .collect()
        })
        .unwrap_or_default();
    // As the real API: the lead's company (at most one) is always in `_embedded.companies`.
    let companies: Vec<Value> = l["company_id"]
        .as_u64()
        .map(|c| vec![json!({ "id": c, "_links": { "self": { "href": format!("/api/v4/companies/{c}") } } })])
        .unwrap_or_default();
    json!({ "id": id, "status_id": l["status_id"], "pipeline_id": l["pipeline_id"],
            "updated_at": l["updated_at"], "custom_fields_values": cf,
            "_embedded": { "tags": [], "companies": companies } })
}

/// Record a write of `field` = `value` on a company (kept in order under `history`).
fn company_write(c: &mut Value, field: &str, value: &Value) {
    c["fields"][field] = value.clone();
    if c["history"][field].is_null() {
        c["history"][field] = json!([]);
    }
    c["history"][field]
        .as_array_mut()
        .unwrap()
        .push(value.clone());
}

/// amoCRM `POST /oauth2/access_token`: `authorization_code` (a code once) or `refresh_token`
/// (only the newest; each refresh rotates it), problem+json 400 otherwise.
fn amo_token(fake: &Fake, body: &Value) -> (u16, Value) {
    let mut o = fake.oauth.lock().unwrap();
    let bad = |hint: &str| {
        (
            400,
            json!({ "hint": hint, "title": "Некорректный запрос", "type": "https://httpstatus.es/400", "status": 400, "detail": "В запросе отсутствует ряд параметров или параметры невалидны" }),
        )
    };
    if body["client_id"] != o.client_id.as_str()
        || body["client_secret"] != o.client_secret.as_str()
    {
        return (
            401,
            json!({ "hint": "Client authentication failed", "title": "Unauthorized", "status": 401 }),
        );
    }
    if body["redirect_uri"] != o.redirect_uri.as_str() {
        return bad("Redirect URI is not valid");
    }
    match body["grant_type"].as_str() {
        Some("authorization_code") => {
            let code = body["code"].as_str().unwrap_or_default().to_string();
            let Some(i) = o.codes.iter().position(|c| *c == code) else {
                return bad("Authorization code has been revoked");
            };
            o.codes.remove(i);
        }
        Some("refresh_token") => {
            let r = body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if o.refresh_token.as_deref() != Some(r.as_str()) {
                o.refused.push(r);
                return bad("Token has been revoked");
            }
        }
        _ => return bad("Unsupported grant type"),
    }
    o.issued += 1;
    let n = o.issued;
    let access = format!("acc-{n}");
    o.refresh_token = Some(format!("ref-{n}"));
    *fake.token.lock().unwrap() = access.clone();
    (
        200,
        json!({ "token_type": "Bearer", "expires_in": o.expires_in, "access_token": access,
                "refresh_token": format!("ref-{n}"), "server_time": unix_now() }),
    )
}

fn apply_lead(fake: &Fake, patch: &Value) -> Value {
    let id = patch["id"].as_u64().unwrap_or(0);
    let mut leads = fake.leads.lock().unwrap();
    let l = leads
        .entry(id)
        .or_insert_with(|| json!({ "id": id, "status_id": 1, "pipeline_id": 1, "fields": {} }));
    for k in ["status_id", "pipeline_id"] {
        if let Some(v) = patch.get(k) {
            l[k] = v.clone();
        }
    }
    if let Some(fs) = patch["custom_fields_values"].as_array() {
        for f in fs {
            l["fields"][f["field_id"].to_string()] = f["values"][0]["value"].clone();
        }
    }
    let updated = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    l["updated_at"] = updated.into();
    l.clone()
}

async fn amo(
    fake: Arc<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = |status: u16, v: Value| {
        fake.record(&method, &uri, &headers, &body, status);
        json_resp(status, v)
    };
    if fake.over_rate(7) {
        let mut r = reply(429, json!({ "title": "Too Many Requests" }));
        r.headers_mut().insert("retry-after", "1".parse().unwrap());
        return r;
    }
    if let Some(s) = fake.fail.lock().unwrap().pop_front() {
        let mut r = reply(s, json!({ "title": "injected failure" }));
        if s == 429 {
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
        }
        return r;
    }
    if uri.path() == "/oauth2/access_token" && method == Method::POST {
        let (st, v) = amo_token(&fake, &body);
        return reply(st, v);
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let expected = format!("Bearer {}", fake.token.lock().unwrap());
    if auth != Some(expected.as_str()) {
        return reply(401, json!({ "title": "Unauthorized" }));
    }
    let path = uri.path().to_string();
    let lead_id = path
        .strip_prefix("/api/v4/leads/")
        .and_then(|s| s.parse::<u64>().ok());
    let company_path = path.strip_prefix("/api/v4/companies/").map(|rest| {
        let (id, notes) = match rest.strip_suffix("/notes") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        (id.to_string(), notes)
    });
    // As the real API: bulk `PATCH /api/v4/companies` (an array, ≤ 50), one
    // `PATCH /api/v4/companies/{id}`; `_embedded.companies` with id and updated_at.
    let patch_company = |p: &Value| -> Option<Value> {
        let id = p["id"].as_u64()?.to_string();
        let mut cs = fake.companies.lock().unwrap();
        let c = cs.get_mut(&id)?;
        for f in p["custom_fields_values"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            company_write(c, &f["field_id"].to_string(), &f["values"][0]["value"]);
        }
        c["updated_at"] = unix_now().into();
        Some(json!({ "id": p["id"], "updated_at": c["updated_at"], "request_id": "0" }))
    };
    match (method.as_str(), path.as_str(), company_path) {
        ("PATCH", "/api/v4/companies", _) => {
            let Some(arr) = body.as_array().filter(|a| !a.is_empty() && a.len() <= 50) else {
                return reply(400, json!({ "title": "Bad Request", "status": 400 }));
            };
            let mut out = Vec::new();
            for p in arr {
                match patch_company(p) {
                    Some(v) => out.push(v),
                    None => {
                        return reply(
                            400,
                            json!({ "title": "Bad Request", "status": 400,
                                    "validation-errors": [{ "request_id": "0", "errors": [{ "code": "NotFound", "path": "id", "detail": "Company not found" }] }] }),
                        )
                    }
                }
            }
            return reply(
                200,
                json!({ "_links": {}, "_embedded": { "companies": out } }),
            );
        }
        ("PATCH", _, Some((id, false))) => {
            let mut p = body.clone();
            p["id"] = id.parse::<u64>().unwrap_or(0).into();
            return match patch_company(&p) {
                Some(v) => reply(200, v),
                None => reply(400, json!({ "title": "Bad Request", "status": 400 })),
            };
        }
        ("POST", _, Some((id, true))) => {
            if !fake.companies.lock().unwrap().contains_key(&id) {
                return reply(400, json!({ "title": "Bad Request", "status": 400 }));
            }
            let mut created = Vec::new();
            let mut all = fake.notes.lock().unwrap();
            for n in body.as_array().cloned().unwrap_or_default() {
                let nid = 1000 + all.len() as u64;
                let mut n = n.clone();
                n["id"] = nid.into();
                n["entity_id"] = id.parse::<u64>().unwrap_or(0).into();
                n["entity_type"] = "companies".into();
                n["created_at"] = unix_now().into();
                all.push(n);
                created.push(json!({ "id": nid, "entity_id": id.parse::<u64>().unwrap_or(0), "request_id": "0" }));
            }
            drop(all);
            return reply(200, json!({ "_embedded": { "notes": created } }));
        }
        ("GET", _, Some((id, true))) => {
            let id: u64 = id.parse().unwrap_or(0);
            let mut notes: Vec<Value> = fake
                .notes
                .lock()
                .unwrap()
                .iter()
                .filter(|n| n["entity_id"] == id && n["entity_type"] == "companies")
                .cloned()
                .collect();
            notes.reverse();
            return if notes.is_empty() {
                reply(204, Value::Null)
            } else {
                reply(200, json!({ "_embedded": { "notes": notes } }))
            };
        }
        _ => {}
    }
    match (method.as_str(), path.as_str(), lead_id) {
        ("PATCH", _, Some(id)) => {
            let mut p = body.clone();
            p["id"] = id.into();
            let l = apply_lead(&fake, &p);
            reply(
                200,
                json!({ "id": id, "status_id": l["status_id"], "pipeline_id": l["pipeline_id"],
                        "updated_at": l["updated_at"], "_links": {} }),
            )
        }
        ("PATCH", "/api/v4/leads", None) => {
            let Some(arr) = body.as_array() else {
                return reply(400, json!({ "title": "Bad Request" }));
            };
            let leads: Vec<Value> = arr
                .iter()
                .map(|p| {
                    let l = apply_lead(&fake, p);
                    json!({ "id": l["id"], "updated_at": l["updated_at"] })
                })
                .collect();
            reply(200, json!({ "_embedded": { "leads": leads } }))
        }
        ("POST", "/api/v4/leads/notes", None) => {
            let mut created = Vec::new();
            {
                let mut all = fake.notes.lock().unwrap();
                for n in body.as_array().cloned().unwrap_or_default() {
                    let id = 1000 + all.len() as u64;
                    let mut n = n.clone();
                    n["id"] = id.into();
                    n["created_at"] = unix_now().into();
                    all.push(n);
                    created.push(json!({ "id": id }));
                }
            }
            let r = reply(200, json!({ "_embedded": { "notes": created } }));
            // Applied, then slow to answer: the client may time out and retry.
            let delay = fake.delay_ms.swap(0, std::sync::atomic::Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            r
        }
        ("GET", p, None) if p.ends_with("/notes") => {
            let lead: u64 = p
                .trim_start_matches("/api/v4/leads/")
                .trim_end_matches("/notes")
                .parse()
                .unwrap_or(0);
            let mut notes: Vec<Value> = fake
                .notes
                .lock()
                .unwrap()
                .iter()
                .filter(|n| n["entity_id"] == lead && n["entity_type"] != "companies")
                .cloned()
                .collect();
            notes.reverse();
            if notes.is_empty() {
                reply(204, Value::Null)
            } else {
                reply(200, json!({ "_embedded": { "notes": notes } }))
            }
        }
        ("GET", _, Some(id)) => {
            let l = fake.leads.lock().unwrap().get(&id).cloned();
            match l {
                None => reply(204, Value::Null),
                Some(l) => reply(200, lead_json(id, &l)),
            }
        }
        // As the real API: `GET /api/v4/leads?filter[id][]=1&filter[id][]=2&limit=250`, at most
        // 250 per page, 204 with no body when nothing matches.
        ("GET", "/api/v4/leads", None) => {
            let query = uri.query().unwrap_or_default();
            let mut ids = Vec::new();
            let mut limit = 50usize;
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                match k.as_ref() {
                    "filter[id][]" | "filter[id]" => ids.extend(v.parse::<u64>().ok()),
                    k if k.starts_with("filter[id][") => ids.extend(v.parse::<u64>().ok()),
                    "limit" => limit = v.parse().unwrap_or(50),
                    _ => {}
                }
            }
            if limit > 250 {
                return reply(
                    400,
                    json!({ "title": "Bad Request", "detail": "limit > 250" }),
                );
            }
            let leads = fake.leads.lock().unwrap();
            let found: Vec<Value> = ids
                .iter()
                .filter_map(|id| leads.get(id).map(|l| lead_json(*id, l)))
                .take(limit)
                .collect();
            drop(leads);
            if found.is_empty() {
                reply(204, Value::Null)
            } else {
                reply(200, json!({ "_page": 1, "_embedded": { "leads": found } }))
            }
        }
        _ => reply(404, json!({ "title": "Not Found" })),
    }
}

async fn bitrix(
    fake: Arc<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = |status: u16, v: Value| {
        fake.record(&method, &uri, &headers, &body, status);
        json_resp(status, v)
    };
    if fake.over_rate(50) {
        return reply(
            503,
            json!({ "error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests" }),
        );
    }
    if let Some(s) = fake.fail.lock().unwrap().pop_front() {
        return reply(
            s,
            json!({ "error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests" }),
        );
    }
    match uri.path() {
        "/rest/1/s3cr3t/crm.deal.update" if body["id"].is_string() => {
            let id = body["id"].as_str().unwrap_or_default().to_string();
            {
                let mut deals = fake.deals.lock().unwrap();
                let d = deals
                    .entry(id.clone())
                    .or_insert_with(|| json!({ "ID": id }));
                if let Some(fs) = body["fields"].as_object() {
                    for (k, v) in fs {
                        d[k.as_str()] = v.clone();
                    }
                }
                d["DATE_MODIFY"] = chrono::Utc::now().to_rfc3339().into();
            }
            reply(200, json!({ "result": true }))
        }
        // As the portal: `{id, fields}`, `result: true`; an unknown company is "Not found".
        "/rest/1/s3cr3t/crm.company.update" => {
            let id = match &body["id"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            let mut cs = fake.companies.lock().unwrap();
            let Some(c) = cs.get_mut(&id) else {
                drop(cs);
                return reply(
                    400,
                    json!({ "error": "", "error_description": "Not found" }),
                );
            };
            if let Some(fs) = body["fields"].as_object() {
                for (k, v) in fs {
                    company_write(c, k, v);
                }
            }
            drop(cs);
            reply(200, json!({ "result": true }))
        }
        // As the real portal: the deal's fields, `DATE_MODIFY` in ISO 8601 with its offset,
        // `COMPANY_ID` "0" when no company is linked.
        "/rest/1/s3cr3t/crm.deal.get" => {
            let id = body["id"].as_str().unwrap_or_default().to_string();
            match fake.deals.lock().unwrap().get(&id).cloned() {
                Some(mut d) => {
                    if d.get("COMPANY_ID").is_none() {
                        d["COMPANY_ID"] = "0".into();
                    }
                    reply(200, json!({ "result": d }))
                }
                None => reply(
                    400,
                    json!({ "error": "", "error_description": "Not found" }),
                ),
            }
        }
        // As the portal: `batch` with up to 50 commands, each a method and its query string;
        // here `crm.deal.list` with `filter[@ID][]` (at most 50 rows a page) and `select`.
        "/rest/1/s3cr3t/batch" => {
            let Some(cmds) = body["cmd"].as_object() else {
                return reply(
                    400,
                    json!({ "error": "INVALID_REQUEST", "error_description": "no cmd" }),
                );
            };
            if cmds.len() > 50 {
                return reply(
                    400,
                    json!({ "error": "INVALID_REQUEST", "error_description": "Max batch length exceeded" }),
                );
            }
            let deals = fake.deals.lock().unwrap();
            let mut result = serde_json::Map::new();
            let mut errors = serde_json::Map::new();
            for (key, c) in cmds {
                let c = c.as_str().unwrap_or_default();
                let (method, query) = c.split_once('?').unwrap_or((c, ""));
                if method != "crm.deal.list" {
                    errors.insert(key.clone(), json!({ "error": "ERROR_METHOD_NOT_FOUND" }));
                    continue;
                }
                let mut ids = Vec::new();
                let mut select = Vec::new();
                for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                    if k.starts_with("filter[@ID]") {
                        ids.push(v.into_owned());
                    } else if k.starts_with("select[") {
                        select.push(v.into_owned());
                    }
                }
                let rows: Vec<Value> = ids
                    .iter()
                    .filter_map(|id| deals.get(id))
                    .take(50)
                    .map(|d| {
                        let mut row = serde_json::Map::new();
                        for f in &select {
                            row.insert(f.clone(), d.get(f).cloned().unwrap_or(Value::Null));
                        }
                        Value::Object(row)
                    })
                    .collect();
                result.insert(key.clone(), Value::Array(rows));
            }
            drop(deals);
            let errors = if errors.is_empty() {
                json!([])
            } else {
                Value::Object(errors)
            };
            reply(
                200,
                json!({ "result": { "result": result, "result_error": errors, "result_total": {},
                                    "result_next": {}, "result_time": {} } }),
            )
        }
        "/rest/1/s3cr3t/crm.timeline.comment.add" => {
            let id = {
                let mut all = fake.comments.lock().unwrap();
                let id = all.len() as u64 + 1;
                let mut c = body["fields"].clone();
                c["ID"] = id.to_string().into();
                c["CREATED"] = chrono::Utc::now().to_rfc3339().into();
                all.push(c);
                id
            };
            let r = reply(200, json!({ "result": id }));
            // Applied, then slow to answer: the client may time out and retry.
            let delay = fake.delay_ms.swap(0, std::sync::atomic::Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            r
        }
        "/rest/1/s3cr3t/crm.timeline.comment.list" => {
            let deal = body["filter"]["ENTITY_ID"].clone();
            let kind = body["filter"]["ENTITY_TYPE"].clone();
            let mut list: Vec<Value> = fake
                .comments
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c["ENTITY_ID"] == deal && (kind.is_null() || c["ENTITY_TYPE"] == kind))
                .cloned()
                .collect();
            list.reverse();
            reply(200, json!({ "result": list }))
        }
        _ => reply(400, json!({ "error": "ERROR_METHOD_NOT_FOUND" })),
    }
}

async fn webhook(
    fake: Arc<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = body.clone();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = |status: u16| {
        fake.record(&method, &uri, &headers, &body, status);
        json_resp(status, json!({}))
    };
    if let Some(s) = fake.fail.lock().unwrap().pop_front() {
        let mut r = reply(s);
        if s == 429 {
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
        }
        return r;
    }
    let sig = headers
        .get("x-fleetgate-signature")
        .and_then(|v| v.to_str().ok());
    if sig != Some(fleetgate::crm::connector::webhook::sign(&fake.secret, &raw).as_str()) {
        return reply(401);
    }
    // Idempotent receiver: a key seen before is acknowledged and not applied again.
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let seen = fake.calls().iter().any(|c| {
        c.status == 200
            && c.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                == Some(&key)
    });
    let r = reply(if seen { 208 } else { 200 });
    let delay = fake.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    r
}

/// Start one of the fakes (`amocrm`, `bitrix24`, `webhook`) on an ephemeral port.
pub async fn start(kind: &'static str) -> Server {
    start_on(kind, "127.0.0.1:0".parse().unwrap()).await
}

pub async fn start_on(kind: &'static str, addr: SocketAddr) -> Server {
    start_with(kind, tokio::net::TcpListener::bind(addr).await.unwrap()).await
}

/// Start a fake on a listener the test already holds (e.g. one that refused connections
/// while the CRM was "down", so no other socket could take its port meanwhile).
pub async fn start_with(kind: &'static str, l: tokio::net::TcpListener) -> Server {
    let fake = Arc::new(Fake {
        token: Mutex::new("amo-long-lived-token".into()),
        secret: "webhook-secret-123".into(),
        ..Default::default()
    });
    let f = fake.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let f = f.clone();
            async move {
                match kind {
                    "amocrm" => amo(f, method, uri, headers, body).await,
                    "bitrix24" => bitrix(f, method, uri, headers, body).await,
                    _ => webhook(f, method, uri, headers, body).await,
                }
            }
        },
    );
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Server {
        fake,
        addr,
        url: format!("http://{addr}"),
    }
}

/// Poll `f` every 50 ms until it is true or `secs` pass.
pub async fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
