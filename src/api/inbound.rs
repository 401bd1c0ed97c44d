//! The CRMs' own webhooks into fleetgate, no middleware:
//!
//! - `POST /api/v1/crm/inbound/amocrm/{secret}`: amoCRM account webhooks and Digital Pipeline
//!   "webhook" actions (form bodies). amoCRM cannot send an Authorization header: the secret
//!   path segment (`[crm.inbound] secret`) authenticates it, compared in constant time.
//! - `POST /api/v1/crm/inbound/bitrix24`: Bitrix24 event handlers (`ONCRMDEALUPDATE`, …),
//!   authenticated by `auth[application_token]` (`[crm.inbound] application_token`); the deal
//!   is read back with `crm.deal.get` (the event carries only its id).
//!
//! Both answer at once (amoCRM gives a webhook 2 s and switches off one that keeps failing;
//! Bitrix24 likewise drops handlers that do not answer) and do the work afterwards; a body
//! delivered again acts once; an unknown deal is acknowledged, counted and ignored, so a CRM
//! never retries into an error loop. Outcomes: `fleetgate_crm_inbound_total{crm,outcome}` and
//! `fleetgate_crm_inbound_actions_total{crm,action,outcome}`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::crm::inbound::{
    self, parse_amocrm, parse_bitrix, stage_actions, Action, Form, Notice, StageNow,
    REASON_CRM_MANUAL,
};
use crate::model::VehicleId;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/crm/inbound/amocrm/{secret}", post(amocrm))
        .route("/api/v1/crm/inbound/bitrix24", post(bitrix24))
}

fn count(crm: &'static str, outcome: &'static str) {
    metrics::counter!("fleetgate_crm_inbound_total", "crm" => crm, "outcome" => outcome)
        .increment(1);
}

fn answer(crm: &'static str, status: StatusCode, outcome: &'static str, msg: &str) -> Response {
    count(crm, outcome);
    if status.is_client_error() {
        if let Some(suppressed) = crate::ops::ratelimit::warnings()
            .check(&format!("crm-inbound/{crm}/{outcome}"), Instant::now())
        {
            tracing::warn!(
                crm,
                outcome,
                suppressed,
                "inbound CRM webhook refused: {msg} (logged at most once a minute)"
            );
        }
        return (status, Json(json!({ "error": msg }))).into_response();
    }
    (status, Json(json!({ "outcome": outcome }))).into_response()
}

fn same(a: &str, b: &str) -> bool {
    !b.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// First delivery of this body within `[crm.inbound] dedup_s`?
fn first(s: &AppState, crm: &str, body: &[u8]) -> bool {
    match s.crm.inbound_seen.lock() {
        Ok(mut g) => g.first(crm, body, Instant::now()),
        Err(p) => p.into_inner().first(crm, body, Instant::now()),
    }
}

async fn amocrm(State(s): State<AppState>, Path(secret): Path<String>, body: Bytes) -> Response {
    const CRM: &str = "amocrm";
    let cfg = &s.crm.config.inbound;
    if cfg.secret.is_empty() {
        return answer(
            CRM,
            StatusCode::NOT_FOUND,
            "not_configured",
            "[crm.inbound] secret is not set",
        );
    }
    if !same(&secret, &cfg.secret) {
        return answer(CRM, StatusCode::FORBIDDEN, "refused", "wrong secret");
    }
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(e) => return answer(CRM, StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let notices = parse_amocrm(&form);
    if notices.is_empty() {
        return answer(CRM, StatusCode::OK, "ignored", "");
    }
    if !first(&s, CRM, &body) {
        return answer(CRM, StatusCode::OK, "duplicate", "");
    }
    tokio::spawn(act_all(s, CRM, notices));
    answer(CRM, StatusCode::OK, "accepted", "")
}

async fn bitrix24(State(s): State<AppState>, body: Bytes) -> Response {
    const CRM: &str = "bitrix24";
    let cfg = &s.crm.config.inbound;
    if cfg.application_token.is_empty() {
        return answer(
            CRM,
            StatusCode::NOT_FOUND,
            "not_configured",
            "[crm.inbound] application_token is not set",
        );
    }
    let event = match Form::parse(&body).and_then(|f| parse_bitrix(&f)) {
        Ok(e) => e,
        Err(e) => return answer(CRM, StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if !same(
        event.application_token.as_deref().unwrap_or_default(),
        &cfg.application_token,
    ) {
        return answer(
            CRM,
            StatusCode::FORBIDDEN,
            "refused",
            "wrong application_token",
        );
    }
    let Some(notice) = event.notice else {
        return answer(CRM, StatusCode::OK, "ignored", "");
    };
    if !first(&s, CRM, &body) {
        return answer(CRM, StatusCode::OK, "duplicate", "");
    }
    tokio::spawn(act_all(s, CRM, vec![notice]));
    answer(CRM, StatusCode::OK, "accepted", "")
}

fn done(crm: &'static str, action: &'static str, outcome: &'static str) {
    metrics::counter!("fleetgate_crm_inbound_actions_total", "crm" => crm, "action" => action, "outcome" => outcome)
        .increment(1);
}

async fn act_all(s: AppState, crm: &'static str, notices: Vec<Notice>) {
    for n in notices {
        act(&s, crm, n).await;
    }
}

/// The vehicle linked to a deal (`crm_deal_id`).
async fn by_deal(s: &AppState, deal: &str) -> Option<crate::storage::Vehicle> {
    match s.store.core.vehicles().await {
        Ok(vs) => vs
            .into_iter()
            .find(|v| v.crm_deal_id.as_deref() == Some(deal)),
        Err(e) => {
            tracing::error!(error = %e, deal, "inbound CRM webhook: vehicles not readable");
            None
        }
    }
}

async fn act(s: &AppState, crm: &'static str, n: Notice) {
    let (deal, actions, user) = match n {
        Notice::LeadStatus {
            lead_id,
            pipeline_id,
            status_id,
            user,
            ..
        } => {
            let Some(v) = by_deal(s, &lead_id).await else {
                return unknown(crm, "deal", &lead_id);
            };
            let standing = crm_block_standing(s, &v.id).await;
            let now = StageNow::Amo {
                pipeline_id,
                status_id,
            };
            let a = stage_actions(&s.crm.config.inbound.stages, &now, standing);
            (v, a, user)
        }
        Notice::LeadFields {
            lead_id,
            fields,
            updated_at,
            user,
        } => {
            let id = s.crm.config.fields.balance_field_id;
            let balance = fields
                .iter()
                .find(|(f, _)| id != 0 && *f == id)
                .and_then(|(_, v)| crate::crm::connector::as_rub(&json!(v)));
            let Some(rub) = balance else {
                done(crm, "fields", "ignored");
                return;
            };
            let Some(v) = by_deal(s, &lead_id).await else {
                return unknown(crm, "deal", &lead_id);
            };
            (
                v,
                vec![Action::Balance {
                    rub,
                    as_of: updated_at,
                }],
                user,
            )
        }
        Notice::BitrixDeal { deal_id } => {
            let Some(v) = by_deal(s, &deal_id).await else {
                return unknown(crm, "deal", &deal_id);
            };
            let Some(c) = s.crm.connector.clone() else {
                done(crm, "read_deal", "failed");
                tracing::warn!(deal = %deal_id, "inbound Bitrix24 webhook: [crm] kind is not bitrix24; the deal cannot be read back");
                return;
            };
            let facts = match c.read_deal(&deal_id).await {
                Ok(f) => f,
                Err(e) => {
                    done(crm, "read_deal", "failed");
                    tracing::warn!(deal = %deal_id, error = %e, "inbound Bitrix24 webhook: deal not read back; nothing done");
                    return;
                }
            };
            let standing = crm_block_standing(s, &v.id).await;
            let mut a = stage_actions(
                &s.crm.config.inbound.stages,
                &StageNow::Bitrix(&facts.stage_id),
                standing,
            );
            if let Some(rub) = facts.balance_rub {
                a.push(Action::Balance {
                    rub,
                    as_of: facts.changed_at.map(|t| t.timestamp()),
                });
            }
            (v, a, facts.modified_by)
        }
        Notice::CompanyFields { company_id, .. } | Notice::BitrixCompany { company_id } => {
            // Company cards carry the car's facts; nothing on them drives the car yet.
            done(crm, "company", "ignored");
            tracing::debug!(company = %company_id, "inbound CRM webhook about a company card: nothing to do");
            return;
        }
    };
    let actor = inbound::actor(crm, user.as_deref());
    let deal_id = deal.crm_deal_id.clone().unwrap_or_default();
    for a in actions {
        let name = a.name();
        let result: Result<(), String> = match a.clone() {
            Action::Block | Action::Unblock => {
                let block = a == Action::Block;
                let why = if block {
                    "moved to the block stage"
                } else {
                    "left the block stage"
                };
                s.crm
                    .wiring
                    .reasons
                    .set_reason(
                        &deal.id,
                        REASON_CRM_MANUAL,
                        block,
                        &actor,
                        &format!("deal {deal_id} {why} in {crm}"),
                    )
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::Return => s
                .crm
                .return_request(deal.id.clone(), &actor)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Action::Issued => {
                if deal.status == "issued" {
                    Ok(())
                } else {
                    let update = super::rows::VehicleBody {
                        status: Some("issued".into()),
                        ..Default::default()
                    };
                    super::vehicles::put(
                        State(s.clone()),
                        Path(deal.id.0.clone()),
                        Ok(Json(update)),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                }
            }
            Action::Balance { rub, as_of } => match &deal.driver_id {
                Some(driver) => s
                    .crm
                    .set_balance(
                        driver,
                        rub,
                        as_of.and_then(|t| chrono::DateTime::from_timestamp(t, 0)),
                        &actor,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => Err("the vehicle has no driver_id".into()),
            },
        };
        match result {
            Ok(()) => {
                done(crm, name, "ok");
                tracing::info!(crm, vehicle = %deal.id, deal = %deal_id, action = name, %actor, "inbound CRM webhook acted");
            }
            Err(e) => {
                done(crm, name, "failed");
                tracing::warn!(crm, vehicle = %deal.id, deal = %deal_id, action = name, error = %e, "inbound CRM webhook: action failed");
            }
        }
    }
}

fn unknown(crm: &'static str, what: &'static str, id: &str) {
    done(crm, what, "unknown");
    tracing::debug!(
        crm,
        id,
        "inbound CRM webhook about a {what} no vehicle is linked to; ignored"
    );
}

async fn crm_block_standing(s: &AppState, v: &VehicleId) -> bool {
    s.crm
        .wiring
        .reasons
        .snapshot()
        .await
        .get(v)
        .is_some_and(|b| b.reasons.iter().any(|r| r == REASON_CRM_MANUAL))
}
