//! `/api/v1/geofences…` (zones as GeoJSON Features) and `/api/v1/events` (zone events).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::geofence::Zone;
use crate::model::VehicleId;
use crate::storage::zones::{EventQuery, StoredZone, StoredZoneEvent};

fn feature_with_source(state: &AppState, z: &Zone) -> serde_json::Value {
    let mut f = z.to_feature();
    let source = if state.zones.is_file_zone(&z.name) {
        "file"
    } else {
        "api"
    };
    if let Some(props) = f.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert("source".into(), source.into());
    }
    f
}

/// Every zone in force, as a FeatureCollection.
pub async fn list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let set = state.zones.current();
    let features: Vec<_> = set
        .zones()
        .iter()
        .map(|z| feature_with_source(&state, z))
        .collect();
    Json(serde_json::json!({ "type": "FeatureCollection", "features": features }))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let set = state.zones.current();
    let z = set
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("zone '{name}' not found")))?;
    Ok(Json(feature_with_source(&state, z)))
}

/// Add or replace a zone: the body is a GeoJSON Feature (`properties.kind`, optional
/// `buffer_m`, debounce overrides; the name comes from the path).
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(mut feature) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::BadRequest(
            "zone name must be 1 to 128 characters".into(),
        ));
    }
    let props = feature
        .get_mut("properties")
        .and_then(|p| p.as_object_mut())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "properties: a Feature with a properties object is required".into(),
            )
        })?;
    match props.get("name").and_then(|n| n.as_str()) {
        Some(n) if n != name => {
            return Err(ApiError::BadRequest(format!(
                "properties.name '{n}' differs from the path '{name}'"
            )));
        }
        _ => {
            props.insert("name".into(), name.clone().into());
        }
    }
    props.remove("source");
    let zone = Zone::from_feature(&feature).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let stored = StoredZone {
        name: zone.name.clone(),
        kind: zone.kind.as_str().into(),
        feature: zone.to_feature(),
    };
    state.store.put_zone(&stored).await?;
    reload(&state).await?;
    tracing::info!(zone = %name, "zone stored through the API");
    Ok(Json(feature_with_source(&state, &zone)))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = state.store.delete_zone(&name).await?;
    if !deleted {
        if state.zones.is_file_zone(&name) {
            return Err(ApiError::Conflict(format!(
                "zone '{name}' is defined in a file under the geofences directory; edit the file and send SIGHUP"
            )));
        }
        return Err(ApiError::NotFound(format!("zone '{name}' not found")));
    }
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rebuild the zone set from files and storage and hand it to the zone stage.
pub async fn reload(state: &AppState) -> Result<(), ApiError> {
    let cfg = &state.config.geofences;
    let (set, files) = crate::geofence::stage::load(
        std::path::Path::new(&cfg.dir),
        state.store.as_ref(),
        &cfg.debounce,
    )
    .await
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    state.zones.install(set, files).await;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub vehicle: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
}

/// Stored zone events, oldest first.
pub async fn events(
    State(state): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<StoredZoneEvent>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(k) = &q.kind {
        if k != "enter" && k != "exit" {
            return Err(ApiError::BadRequest(format!(
                "type: '{k}' is not enter or exit"
            )));
        }
    }
    let query = EventQuery {
        vehicle: q.vehicle.map(VehicleId),
        kind: q.kind,
        from: q.from,
        to: q.to,
        limit: q.limit.unwrap_or(10_000).clamp(1, 100_000),
    };
    Ok(Json(state.store.zone_events(&query).await?))
}
