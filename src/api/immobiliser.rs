//! `/api/v1/vehicles/{id}/block|unblock|commands`, `/api/v1/commands/{id}`, `/api/v1/audit`:
//! the immobiliser as operators and the CRM drive and inspect it. The caller's token name
//! is the actor in the audit trail.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::rows;
use super::{Actor, ApiError, AppState};
use crate::immobiliser::actor::{ImmobView, ReasonChange};
use crate::immobiliser::store::AuditQuery;
use crate::immobiliser::{BlockReason, Command, ImmobError};
use crate::model::VehicleId;

/// Most rows one commands or audit request returns.
const MAX_LIMIT: u32 = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vehicles/{id}/block", post(block))
        .route("/vehicles/{id}/unblock", post(unblock))
        .route("/vehicles/{id}/commands", get(commands))
        .route("/commands/{id}", get(command))
        .route("/audit", get(audit))
}

impl From<ImmobError> for ApiError {
    fn from(e: ImmobError) -> Self {
        match e {
            ImmobError::BadReason(_) => ApiError::BadRequest(e.to_string()),
            ImmobError::ForceNotAllowed => ApiError::Forbidden(e.to_string()),
            ImmobError::UnknownVehicle(_) => ApiError::NotFound(e.to_string()),
            ImmobError::Storage(_) | ImmobError::Closed | ImmobError::OwnerSilent(..) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    /// `manual` for operators; rules may name their own reason. Default `manual`.
    pub reason: Option<String>,
    pub comment: Option<String>,
    /// Skip the safety wait (only with `[immobiliser] allow_force = true`).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnblockRequest {
    /// A reason to lift, or `all`. Default `manual`.
    pub reason: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ImmobResponse {
    pub vehicle_id: VehicleId,
    pub immobiliser: ImmobView,
}

fn check_comment(c: &Option<String>) -> Result<(), ApiError> {
    if matches!(c, Some(t) if t.len() > 1000) {
        return Err(ApiError::BadRequest(
            "comment: at most 1000 characters".into(),
        ));
    }
    Ok(())
}

pub async fn block(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ImmobResponse>, ApiError> {
    let req: BlockRequest = super::error::object_body(&body, true)?;
    check_comment(&req.comment)?;
    let reason = BlockReason::parse(req.reason.as_deref().unwrap_or(BlockReason::MANUAL))?;
    let vehicle = VehicleId(id);
    let view = state
        .immobiliser
        .change(ReasonChange {
            vehicle: vehicle.clone(),
            reason: Some(reason),
            active: true,
            force: req.force,
            actor: actor.0,
            comment: req.comment,
        })
        .await?;
    Ok(Json(ImmobResponse {
        vehicle_id: vehicle,
        immobiliser: view,
    }))
}

pub async fn unblock(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ImmobResponse>, ApiError> {
    let req: UnblockRequest = super::error::object_body(&body, true)?;
    check_comment(&req.comment)?;
    let reason = match req.reason.as_deref().unwrap_or(BlockReason::MANUAL) {
        "all" => None,
        r => Some(BlockReason::parse(r)?),
    };
    let vehicle = VehicleId(id);
    let view = state
        .immobiliser
        .change(ReasonChange {
            vehicle: vehicle.clone(),
            reason,
            active: false,
            force: false,
            actor: actor.0,
            comment: req.comment,
        })
        .await?;
    Ok(Json(ImmobResponse {
        vehicle_id: vehicle,
        immobiliser: view,
    }))
}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    pub limit: Option<u32>,
}

pub async fn commands(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<Command>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let vehicle = VehicleId(id);
    if state.store.core.vehicle(&vehicle).await?.is_none() {
        return Err(ApiError::NotFound(format!("vehicle '{vehicle}' not found")));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    Ok(Json(
        state.store.immobiliser.commands(&vehicle, limit).await?,
    ))
}

pub async fn command(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Command>, ApiError> {
    let n: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("command id '{id}' is not a number")))?;
    state
        .store
        .immobiliser
        .command(n)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("command {n} not found")))
}

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    pub vehicle: Option<String>,
    #[serde(default, deserialize_with = "super::params::opt_time")]
    pub from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::params::opt_time")]
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
}

pub async fn audit(
    State(state): State<AppState>,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<rows::Audit>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let to = q.to.unwrap_or_else(|| Utc::now() + Duration::minutes(10));
    let from = q.from.unwrap_or(to - Duration::hours(24));
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    let query = AuditQuery {
        vehicle: q.vehicle.filter(|v| !v.is_empty()).map(VehicleId),
        from,
        to,
        limit: q.limit.unwrap_or(1000).clamp(1, MAX_LIMIT),
    };
    Ok(Json(rows::all(
        state.store.immobiliser.audit(&query).await?,
    )))
}
