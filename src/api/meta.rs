//! The API about itself: the OpenAPI 3 document (`GET /api/v1/openapi.json`, open so tools
//! can load it; it holds no data), `GET /api/v1/whoami` (which token the caller used: the
//! name the audit trail records), and the counter for requests refused by `max_body_bytes`.
//!
//! The document is maintained by hand in `openapi.json` beside this file; the test
//! `tests/api_security.rs::openapi_document_matches_the_router` fails when a route is added
//! to the router without it (or the document lists a route the router does not serve).

use std::time::Instant;

use axum::extract::{Extension, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::Actor;

/// The OpenAPI document as served.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI_JSON)
}

pub async fn whoami(
    Extension(actor): Extension<Actor>,
    Extension(role): Extension<super::auth::Role>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "actor": actor.0, "role": role.0.as_str() }))
}

/// Count (and log, rate-limited) requests refused because the body was over `max_body_bytes`.
pub async fn count_refusals(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        metrics::counter!("fleetgate_api_limit_violations_total", "limit" => "max_body_bytes")
            .increment(1);
        if let Some(suppressed) =
            crate::ops::ratelimit::warnings().check("api/max_body_bytes", Instant::now())
        {
            tracing::warn!(
                path,
                suppressed,
                "API request refused: body over api.max_body_bytes (logged at most once a minute)"
            );
        }
    }
    resp
}
