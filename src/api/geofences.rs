//! `/api/v1/geofences…` (zones as GeoJSON Features) and `/api/v1/events` (zone events).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::rows;
use super::{Actor, ApiError, AppState};
use crate::geofence::edit::{self, fleet_positions, Proposal, Refusal, Verdict};
use crate::geofence::store::{EventQuery, StoredZone, ZoneStore};
use crate::geofence::{Zone, ZoneSet};
use crate::immobiliser::store::{AuditEntry, AuditPosition, ImmobChanges};
use crate::model::VehicleId;
use crate::pipeline::store::StorageError;

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

/// `?force=true`: apply a change that moves more than `[geofences] max_exit_share` of the
/// cars out of the service area.
#[derive(Debug, Default, Deserialize)]
pub struct ForceQuery {
    #[serde(default)]
    pub force: bool,
}

/// Add or replace a zone: the body is a GeoJSON Feature (`properties.kind`, optional
/// `buffer_m`, debounce overrides; the name comes from the path; an optional top-level
/// `force` as the query parameter). Reviewed by [`crate::geofence::edit`] before it is
/// stored: a refused zone is never stored.
pub async fn put(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    q: Result<Query<ForceQuery>, QueryRejection>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(mut feature) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::BadRequest(
            "zone name must be 1 to 128 characters".into(),
        ));
    }
    let body_force = match feature.as_object_mut().and_then(|o| o.remove("force")) {
        None => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "force: expected true or false, got {other}"
            )))
        }
    };
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
    let verdict = apply(
        &state,
        &actor,
        &name,
        Some(zone.clone()),
        q.force || body_force,
        |store| Box::pin(async move { store.put_zone(&stored).await.map(|()| true) }),
    )
    .await?;
    let mut out = feature_with_source(&state, &zone);
    if !verdict.warnings.is_empty() {
        if let Some(o) = out.as_object_mut() {
            o.insert("warnings".into(), verdict.warnings.into());
        }
    }
    Ok(Json(out))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    q: Result<Query<ForceQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let is_stored = state
        .store
        .zones
        .zones()
        .await?
        .iter()
        .any(|z| z.name == name);
    if !is_stored {
        if state.zones.is_file_zone(&name) {
            return Err(ApiError::Conflict(format!(
                "zone '{name}' is defined in a file under the geofences directory; edit the file and send SIGHUP"
            )));
        }
        return Err(ApiError::NotFound(format!("zone '{name}' not found")));
    }
    // The file's zone of that name, if any, comes back in force.
    let fallback = state.zones.file_zone(&name);
    let owned = name.clone();
    apply(&state, &actor, &name, fallback, q.force, |store| {
        Box::pin(async move { store.delete_zone(&owned).await })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

type StoreStep<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, StorageError>> + Send + 'a>>;

/// Review the set in force with zone `name` replaced by `zone` (or removed), then store
/// (`save`) and install it; a refusal stores nothing. Edits are serialised, and the set is
/// built from the one in force, so a broken zone file elsewhere neither blocks nor leaks
/// into this change.
async fn apply(
    state: &AppState,
    actor: &Actor,
    name: &str,
    zone: Option<Zone>,
    force: bool,
    save: impl for<'s> FnOnce(&'s dyn ZoneStore) -> StoreStep<'s>,
) -> Result<Verdict, ApiError> {
    let cfg = &state.settings.geofences;
    let _edit = state.zones.lock_edits().await;
    let current = state.zones.current();
    let mut zones: Vec<Zone> = current
        .zones()
        .iter()
        .filter(|z| z.name != name)
        .cloned()
        .collect();
    zones.extend(zone);
    let candidate = ZoneSet::from_zones_with(zones, &cfg.debounce)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fleet = fleet_positions(state.store.core.as_ref()).await?;
    let proposal = Proposal {
        current: &current,
        candidate: &candidate,
        changed: edit::changed(&current, &candidate),
        max_exit_share: cfg.max_exit_share,
        force,
    };
    let verdict = match edit::review(&proposal, &fleet) {
        Ok(v) => v,
        Err(refusal) => {
            let reason = match &refusal {
                Refusal::Geometry(_) => "geometry",
                Refusal::Swapped(_) => "swapped",
                Refusal::MassExit { .. } => "mass_exit",
            };
            metrics::counter!("fleetgate_zone_changes_refused_total", "reason" => reason)
                .increment(1);
            tracing::warn!(zone = %name, actor = %actor.0, %refusal, "zone change refused; nothing stored");
            return Err(match refusal {
                Refusal::MassExit { .. } => ApiError::Conflict(format!(
                    "zone '{name}': {refusal}; nothing was stored. Repeat with force=true (query parameter or body field) to apply it anyway"
                )),
                other => ApiError::BadRequest(other.to_string()),
            });
        }
    };
    save(state.store.zones.as_ref()).await?;
    state.zones.install(candidate, state.zones.files()).await;
    for w in &verdict.warnings {
        tracing::warn!(zone = %name, actor = %actor.0, warning = %w, "zone stored with a warning");
    }
    if verdict.forced {
        audit_forced(state, actor, name, &verdict).await?;
    }
    tracing::info!(zone = %name, actor = %actor.0, forced = verdict.forced, "zone change applied through the API");
    Ok(verdict)
}

/// One audit record per car a forced change moves out of the service area, so each car's
/// trail says who moved it there and why before its `outside_service_area` block appears.
async fn audit_forced(
    state: &AppState,
    actor: &Actor,
    name: &str,
    verdict: &Verdict,
) -> Result<(), ApiError> {
    let share = state.settings.geofences.max_exit_share;
    tracing::warn!(
        zone = %name,
        actor = %actor.0,
        leaving = verdict.exits.leaving,
        inside = verdict.exits.inside,
        "zone change forced: cars are moved out of the service area"
    );
    metrics::counter!("fleetgate_zone_changes_forced_total").increment(1);
    let vehicles: std::collections::HashMap<_, _> = state
        .store
        .core
        .vehicles()
        .await?
        .into_iter()
        .filter_map(|v| v.device_id.map(|d| (d, v.id)))
        .collect();
    let now = Utc::now();
    let audit = verdict
        .leaving
        .iter()
        .filter_map(|p| {
            let vehicle = vehicles.get(&p.device)?;
            Some(AuditEntry {
                id: 0,
                time: now,
                vehicle_id: vehicle.clone(),
                event: "zone_change_forced".into(),
                reason: None,
                actor: actor.0.clone(),
                comment: Some(format!(
                    "zone '{name}' changed with force=true: {} of the {} cars inside the service area are now outside it (max_exit_share {:.1} %)",
                    verdict.exits.leaving,
                    verdict.exits.inside,
                    share * 100.0
                )),
                state_from: None,
                state_to: None,
                command_id: None,
                forced: true,
                position: Some(AuditPosition {
                    time: p.time,
                    lat: p.lat,
                    lon: p.lon,
                    speed_kmh: p.speed_kmh,
                    ignition: p.ignition,
                }),
            })
        })
        .collect();
    state
        .store
        .immobiliser
        .immobiliser_apply(&ImmobChanges {
            audit,
            ..ImmobChanges::default()
        })
        .await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub vehicle: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "super::params::opt_time")]
    pub from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::params::opt_time")]
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
}

/// Stored zone events, oldest first.
pub async fn events(
    State(state): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<rows::ZoneEvent>>, ApiError> {
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
    Ok(Json(rows::all(
        state.store.zones.zone_events(&query).await?,
    )))
}
