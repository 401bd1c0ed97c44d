//! Bearer-token authentication for `/api/*`. Tokens are compared in constant time; the
//! matching token's name is attached to the request as the [`Actor`] for the audit trail, and
//! its role: a `read` token may only `GET`/`HEAD` (403 otherwise, counted), so the screen on a
//! dispatcher's wall can hold a token that cannot stop a car.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::config::TokenRole;
use super::error::ApiError;
use super::AppState;

/// Who made an API call: the configured token's name, or `anonymous` on an open loopback API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

/// The caller's role (an open loopback API operates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role(pub TokenRole);

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.settings.api.tokens;
    let (actor, role) = if tokens.is_empty() {
        (Actor("anonymous".into()), TokenRole::Operate)
    } else {
        let presented = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        // Check every token so the time taken does not reveal which one nearly matched.
        let mut found = None;
        for (i, t) in tokens.iter().enumerate() {
            if bool::from(t.secret().as_bytes().ct_eq(presented.as_bytes())) {
                found = Some((t.name(i), t.role()));
            }
        }
        match found {
            Some((name, role)) => (Actor(name), role),
            None => {
                let now = std::time::Instant::now();
                if let Some(suppressed) =
                    crate::ops::ratelimit::warnings().check("api/unauthorized", now)
                {
                    tracing::warn!(
                        path = req.uri().path(),
                        suppressed,
                        "API request with an unknown bearer token refused (logged at most once a minute)"
                    );
                }
                return Err(ApiError::Unauthorized);
            }
        }
    };
    let reads = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if role == TokenRole::Read && !reads {
        metrics::counter!("fleetgate_api_forbidden_total", "reason" => "read_only_token")
            .increment(1);
        return Err(ApiError::Forbidden(format!(
            "token \"{}\" is read-only (role = \"read\"): {} is not allowed",
            actor.0,
            req.method()
        )));
    }
    req.extensions_mut().insert(actor);
    req.extensions_mut().insert(Role(role));
    Ok(next.run(req).await)
}
