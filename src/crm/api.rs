//! CRM routes under `/api/v1`: return requests, balances, inspections and documents, the
//! outbox (dead letters) and the fleet summary.

use std::collections::{BTreeMap, HashMap};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::engine::{BalanceView, CrmError, InspectionOp, ReturnOutcome};
use super::event::{OutboxEvent, Status};
use super::rules::InspectionState;
use crate::api::{Actor, ApiError, AppState};
use crate::model::VehicleId;

impl From<CrmError> for ApiError {
    fn from(e: CrmError) -> Self {
        match e {
            CrmError::NotFound(m) => ApiError::NotFound(m),
            CrmError::BadRequest(m) => ApiError::BadRequest(m),
            CrmError::Storage(s) => ApiError::from(s),
            CrmError::Closed => ApiError::Storage("the CRM rules are shutting down".into()),
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vehicles/{id}/return-request", post(return_request))
        .route("/drivers/{id}/balance", put(put_balance))
        .route(
            "/vehicles/{id}/inspection",
            post(schedule).get(get_inspection),
        )
        .route("/vehicles/{id}/inspection/postpone", post(postpone))
        .route("/vehicles/{id}/inspection/complete", post(complete))
        .route("/vehicles/{id}/documents", put(documents))
        .route("/crm/outbox", get(outbox))
        .route("/crm/outbox/{id}/retry", post(retry))
        .route("/fleet/summary", get(summary))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn actor(a: Option<Extension<Actor>>) -> String {
    a.map(|Extension(Actor(n))| n)
        .unwrap_or_else(|| "anonymous".into())
}

async fn return_request(
    State(s): State<AppState>,
    Path(id): Path<String>,
    a: Option<Extension<Actor>>,
) -> Result<(StatusCode, Json<ReturnOutcome>), ApiError> {
    let r = s.crm.return_request(VehicleId(id), &actor(a)).await?;
    Ok((StatusCode::ACCEPTED, Json(r)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceBody {
    pub balance_rub: f64,
    /// The balance's own time; absent = now. The newest balance wins.
    #[serde(default)]
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
}

async fn put_balance(
    State(s): State<AppState>,
    Path(id): Path<String>,
    a: Option<Extension<Actor>>,
    b: Result<Json<BalanceBody>, JsonRejection>,
) -> Result<Json<BalanceView>, ApiError> {
    let b = body(b)?;
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::BadRequest(
            "driver id must be 1 to 128 characters".into(),
        ));
    }
    Ok(Json(
        s.crm
            .set_balance(&id, b.balance_rub, b.as_of, &actor(a))
            .await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DueBody {
    pub due_date: Option<NaiveDate>,
    pub due_odometer_km: Option<f64>,
}

async fn schedule(
    State(s): State<AppState>,
    Path(id): Path<String>,
    a: Option<Extension<Actor>>,
    b: Result<Json<DueBody>, JsonRejection>,
) -> Result<Json<InspectionState>, ApiError> {
    let b = body(b)?;
    let op = InspectionOp::Schedule {
        due_date: b.due_date,
        due_odometer_km: b.due_odometer_km,
    };
    Ok(Json(s.crm.inspection(VehicleId(id), op, &actor(a)).await?))
}

async fn get_inspection(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InspectionState>, ApiError> {
    Ok(Json(
        s.crm
            .inspection(VehicleId(id), InspectionOp::Get, "api")
            .await?,
    ))
}

async fn postpone(
    State(s): State<AppState>,
    Path(id): Path<String>,
    a: Option<Extension<Actor>>,
    body: axum::body::Bytes,
) -> Result<Json<InspectionState>, ApiError> {
    let b: DueBody = crate::api::object_body(&body, true)?;
    let op = InspectionOp::Postpone {
        due_date: b.due_date,
        due_odometer_km: b.due_odometer_km,
    };
    Ok(Json(s.crm.inspection(VehicleId(id), op, &actor(a)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub odometer_km: f64,
}

async fn complete(
    State(s): State<AppState>,
    Path(id): Path<String>,
    a: Option<Extension<Actor>>,
    b: Result<Json<CompleteBody>, JsonRejection>,
) -> Result<Json<InspectionState>, ApiError> {
    let b = body(b)?;
    let op = InspectionOp::Complete {
        odometer_km: b.odometer_km,
    };
    Ok(Json(s.crm.inspection(VehicleId(id), op, &actor(a)).await?))
}

/// `{"diagnostic_card": "2027-03-01", "osago": "2027-01-15"}`; `null` clears a date.
async fn documents(
    State(s): State<AppState>,
    Path(id): Path<String>,
    a: Option<Extension<Actor>>,
    b: Result<Json<BTreeMap<String, Option<NaiveDate>>>, JsonRejection>,
) -> Result<Json<InspectionState>, ApiError> {
    let documents = body(b)?;
    let op = InspectionOp::Documents { documents };
    Ok(Json(s.crm.inspection(VehicleId(id), op, &actor(a)).await?))
}

#[derive(Deserialize)]
pub struct OutboxQuery {
    pub status: Option<String>,
    pub vehicle: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Serialize)]
pub struct OutboxView {
    pub counts: BTreeMap<&'static str, u64>,
    pub events: Vec<OutboxEvent>,
}

async fn outbox(
    State(s): State<AppState>,
    q: Result<Query<OutboxQuery>, QueryRejection>,
) -> Result<Json<OutboxView>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(x) => Some(Status::parse(x).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status: '{x}' is not pending, delivered, dead, dropped or all"
            ))
        })?),
    };
    let vehicle = q.vehicle.map(VehicleId);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = s
        .crm
        .store
        .outbox_list(status, vehicle.as_ref(), limit)
        .await?;
    let mut counts = BTreeMap::from([
        ("pending", 0),
        ("delivered", 0),
        ("dead", 0),
        ("dropped", 0),
    ]);
    for (st, n) in s.crm.store.outbox_counts().await? {
        counts.insert(st.as_str(), n);
    }
    Ok(Json(OutboxView { counts, events }))
}

async fn retry(State(s): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    if s.crm.store.outbox_requeue(id, Utc::now()).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::NotFound(format!("no dead event {id}")))
    }
}

/// `GET /api/v1/fleet/summary`.
#[derive(Debug, Default, Serialize)]
pub struct FleetSummary {
    pub total: usize,
    pub on_line: usize,
    pub wants_to_return: usize,
    pub blocked: usize,
    pub blocked_by_reason: BTreeMap<String, usize>,
    pub block_pending: usize,
    pub offline: usize,
    pub outside_service_area: usize,
    pub by_status: BTreeMap<String, usize>,
    pub in_repair: usize,
    pub parking_lots: BTreeMap<String, usize>,
    /// Vehicle ids behind each count (except totals by status).
    pub vehicles: BTreeMap<&'static str, Vec<VehicleId>>,
}

async fn summary(State(s): State<AppState>) -> Result<Json<FleetSummary>, ApiError> {
    let vehicles = s.store.core.vehicles().await?;
    let mut latest: HashMap<_, _> = s
        .store
        .core
        .device_states()
        .await?
        .into_iter()
        .map(|d| (d.device_id.clone(), d))
        .collect();
    for d in s.pipeline.states().await {
        latest.insert(d.device_id.clone(), d);
    }
    let shifts = s.crm.shifts().await;
    let blocks = s.crm.wiring.reasons.snapshot().await;
    let zones = &s.crm.wiring.zones;
    let offline_after = chrono::Duration::seconds(s.config.devices.offline_after_s as i64);
    let now = Utc::now();
    let mut out = FleetSummary {
        total: vehicles.len(),
        ..Default::default()
    };
    let mut list = |k: &'static str, id: &VehicleId| {
        out.vehicles.entry(k).or_default().push(id.clone());
    };
    let mut counts: Vec<(&'static str, VehicleId)> = Vec::new();
    for v in &vehicles {
        *out.by_status.entry(v.status.clone()).or_default() += 1;
        if v.status == "in_repair" {
            counts.push(("in_repair", v.id.clone()));
        }
        if let Some(sh) = shifts.get(&v.id) {
            if sh.on_line && !sh.wants_to_return {
                counts.push(("on_line", v.id.clone()));
            }
            if sh.wants_to_return {
                counts.push(("wants_to_return", v.id.clone()));
            }
        }
        if let Some(b) = blocks.get(&v.id) {
            if !b.reasons.is_empty() {
                counts.push(("blocked", v.id.clone()));
                for r in &b.reasons {
                    *out.blocked_by_reason.entry(r.clone()).or_default() += 1;
                }
            }
            if b.pending {
                counts.push(("block_pending", v.id.clone()));
            }
        }
        let st = v.device_id.as_ref().and_then(|d| latest.get(d));
        if st.map_or(true, |d| now - d.last_seen >= offline_after) {
            counts.push(("offline", v.id.clone()));
        }
        if let Some(p) = st.and_then(|d| d.position.as_ref()) {
            if !zones.inside_service_area(&v.id, p.lat, p.lon).await {
                counts.push(("outside_service_area", v.id.clone()));
            }
            if let Some(lot) = zones.parking_lot(&v.id, p.lat, p.lon).await {
                *out.parking_lots.entry(lot).or_default() += 1;
            }
        }
    }
    for (k, id) in &counts {
        list(k, id);
    }
    for (k, ids) in &out.vehicles {
        let n = ids.len();
        match *k {
            "on_line" => out.on_line = n,
            "wants_to_return" => out.wants_to_return = n,
            "blocked" => out.blocked = n,
            "block_pending" => out.block_pending = n,
            "offline" => out.offline = n,
            "outside_service_area" => out.outside_service_area = n,
            "in_repair" => out.in_repair = n,
            _ => {}
        }
    }
    Ok(Json(out))
}
