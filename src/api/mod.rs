//! The control API the CRM core and operators call (axum, JSON). `/api/v1/*` requires a
//! bearer token when tokens are configured; `/healthz`, `/readyz` and `/metrics` stay open.

mod auth;
pub mod config;
mod crm;
mod error;
pub mod fleet;
mod geofences;
mod immobiliser;
mod inbound;
pub mod map;
mod meta;
mod params;
pub mod rows;
pub mod status;
mod summary;
pub mod track_format;
mod vehicles;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::ingest::Admission;
use crate::pipeline::Pipeline;
use crate::storage::Stores;

pub use auth::Actor;
pub use error::{object_body, ApiError};
pub use meta::OPENAPI_JSON;

/// The configuration the handlers read: the API's own sections and the one `[devices]` key
/// it shows. Only `app` sees the whole `Config`.
#[derive(Clone, Debug, Default)]
pub struct ApiSettings {
    pub api: config::ApiConfig,
    pub status: status::StatusConfig,
    pub geofences: crate::geofence::config::GeofencesConfig,
    /// `[devices] offline_after_s`: a vehicle not heard from for this long shows offline.
    pub offline_after_s: u64,
    /// `[retention]`: whether a track range before `retained_from` has expired.
    pub retention: crate::archive::RetentionConfig,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<ApiSettings>,
    /// The database, one handle per port.
    pub store: Stores,
    pub pipeline: Pipeline,
    pub admission: Arc<Admission>,
    /// Set once every listener is bound and storage is open.
    pub ready: Arc<AtomicBool>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub zones: crate::geofence::stage::ZonesHandle,
    pub crm: crate::crm::CrmHandle,
    /// Zone outlines the status page draws (replaced on reload).
    pub map: map::MapLayers,
    /// Engine block: reasons in, state and commands out.
    pub immobiliser: crate::immobiliser::ImmobiliserHandle,
    /// Live tracker sessions (identity conflicts).
    pub sessions: Arc<crate::ingest::Sessions>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/vehicles", get(vehicles::list_route))
        .route("/vehicles/{id}", get(vehicles::get_one).put(vehicles::put))
        .route("/vehicles/{id}/track", get(vehicles::track))
        .route("/vehicles/{id}/track.gpx", get(vehicles::track_gpx))
        .route("/vehicles/{id}/track/summary", get(vehicles::summary))
        .route("/vehicles/{id}/summaries", get(vehicles::summaries))
        .route("/geofences", get(geofences::list))
        .route(
            "/geofences/{name}",
            get(geofences::get_one)
                .put(geofences::put)
                .delete(geofences::delete),
        )
        .route("/events", get(geofences::events))
        .route("/identity-conflicts", get(identity_conflicts))
        .merge(crm::routes())
        .route("/map", get(status::zones))
        .route("/map/vehicles", get(status::vehicles))
        .merge(immobiliser::routes())
        .route("/whoami", get(meta::whoami))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(status::page))
        .route("/api/v1/openapi.json", get(meta::openapi))
        // The CRMs' own webhooks: authenticated by their secret / application token, not a
        // bearer token (amoCRM cannot send one).
        .merge(inbound::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            state.settings.api.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn(meta::count_refusals))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string());
    }
    if let Err(why) = s.pipeline.storage_health().check(std::time::Instant::now()) {
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    match s.store.core.ping().await {
        // Running, but not every zone is in force: say so (still ready: the others are).
        Ok(()) => match s.zones.broken_files() {
            broken if broken.is_empty() => (StatusCode::OK, "ready".to_string()),
            broken => (
                StatusCode::OK,
                format!("ready; zone files left out: {}", broken.join("; ")),
            ),
        },
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage unavailable".to_string(),
        ),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// `GET /api/v1/identity-conflicts`: sessions and datagrams that claimed a device another
/// session holds (active ones first, then the newest).
async fn identity_conflicts(
    State(state): State<AppState>,
) -> Json<Vec<crate::ingest::sessions::ConflictRecord>> {
    Json(state.sessions.conflicts())
}
