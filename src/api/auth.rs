//! Bearer-token authentication for `/api/*`. Tokens are compared in constant time; the
//! matching token's name is attached to the request as the [`Actor`] for the audit trail.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// Who made an API call: the configured token's name, or `anonymous` on an open loopback API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let tokens = &state.settings.api.tokens;
    let actor = if tokens.is_empty() {
        Actor("anonymous".into())
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
                found = Some(t.name(i));
            }
        }
        match found {
            Some(name) => Actor(name),
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
    req.extensions_mut().insert(actor);
    Ok(next.run(req).await)
}
