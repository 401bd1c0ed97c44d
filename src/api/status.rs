//! The operator's status page: `GET /` is one self-contained HTML file (no CDN, tiles or web
//! fonts; it works on an isolated network), which draws `GET /api/v1/map` (zones) and polls
//! `GET /api/v1/map/vehicles` (dots and counts). The page is open; the data behind it is
//! under the API's token auth like every `/api/v1` route.

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::fleet::{self, Fleet};
use super::map::{self, MapData};
use super::{ApiError, AppState};
use crate::config::error::{invalid, ConfigError};

const PAGE: &str = include_str!("status.html");

/// `[status]`: the status page and its map.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Serve the page at `/`.
    pub enabled: bool,
    /// Extra GeoJSON files, or directories of `*.geojson`, drawn on the map besides the zones
    /// in force (`[geofences]`); reloaded on SIGHUP.
    pub map_layers: Vec<String>,
    /// Douglas–Peucker tolerance for drawing zone outlines, metres (0 = every vertex).
    pub simplify_m: f64,
    /// Attribution shown under the map when zones are drawn.
    pub map_attribution: String,
    /// Seconds between the page's refreshes.
    pub refresh_s: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            enabled: true,
            map_layers: Vec::new(),
            simplify_m: 100.0,
            map_attribution: "Zones © OpenStreetMap contributors, ODbL".into(),
            refresh_s: 5,
        }
    }
}

impl StatusConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.simplify_m.is_finite() || self.simplify_m < 0.0 {
            return Err(invalid("status.simplify_m", "must be 0 or more metres"));
        }
        if self.refresh_s == 0 {
            return Err(invalid("status.refresh_s", "must be at least 1"));
        }
        for (i, p) in self.map_layers.iter().enumerate() {
            // A missing file is only a warning at load: the map is not worth refusing to start.
            if p.trim().is_empty() {
                return Err(invalid(format!("status.map_layers[{i}]"), "is empty"));
            }
        }
        Ok(())
    }
}

pub async fn page(State(s): State<AppState>) -> impl IntoResponse {
    if !s.settings.status.enabled {
        return (axum::http::StatusCode::NOT_FOUND, Html("")).into_response();
    }
    (
        [
            ("cache-control", "no-store"),
            (
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// `GET /api/v1/map`: zone outlines to draw.
pub async fn zones(State(s): State<AppState>) -> Json<MapData> {
    Json((*s.map.with_zones(s.zones.current())).clone())
}

/// `GET /api/v1/map/vehicles`: every vehicle (dots for the located ones) and the fleet counts,
/// in the vocabulary of [`fleet`].
pub async fn vehicles(State(s): State<AppState>) -> Result<Json<Fleet>, ApiError> {
    Ok(Json(fleet::current(&s).await?))
}

/// Reload the map layers whenever a new configuration is published (SIGHUP). A file that no
/// longer loads keeps the previous layers.
/// `status` picks the `[status]` section out of whatever the reload channel carries.
pub async fn follow_reloads<C: Send + Sync + 'static>(
    layers: map::MapLayers,
    mut reloads: tokio::sync::watch::Receiver<C>,
    status: fn(&C) -> StatusConfig,
) {
    while reloads.changed().await.is_ok() {
        let cfg = status(&reloads.borrow_and_update());
        match tokio::task::spawn_blocking(move || map::load(&cfg)).await {
            Ok(Ok(m)) => {
                // Only the extra `[status] map_layers` shapes: the zones in force are counted
                // by the zones' own reload line and drawn from the live zone set.
                tracing::info!(
                    map_layers_shapes = m.zones.len(),
                    "status map: [status] map_layers reloaded"
                );
                layers.set(m);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "status map layers not reloaded; keeping the previous ones")
            }
            Err(e) => tracing::error!(error = %e, "status map reload task failed"),
        }
    }
}
