//! API errors as JSON `{ "error": "..." }` with the matching status code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::pipeline::store::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Everything asked for has expired (`[retention]`); the body names `retained_from`.
    #[error("{message}")]
    Gone {
        message: String,
        retained_from: chrono::NaiveDate,
    },
    /// The database failed (after the store's own retries).
    #[error("storage unavailable: {0}")]
    Storage(#[source] StorageError),
    /// A stage cannot answer now (shutting down, another instance silent); said as the
    /// storage case is, since to the caller it is the same: try again later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::DeviceTaken(..) => ApiError::Conflict(e.to_string()),
            StorageError::Invalid(m) => ApiError::BadRequest(m),
            other => ApiError::Storage(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Gone { .. } => StatusCode::GONE,
            ApiError::Storage(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        metrics::counter!("fleetgate_api_errors_total", "status" => status.as_str().to_string())
            .increment(1);
        let body = match &self {
            ApiError::Gone { retained_from, .. } => serde_json::json!({
                "error": self.to_string(),
                "retained_from": retained_from.to_string(),
            }),
            _ => serde_json::json!({ "error": self.to_string() }),
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static header"));
        }
        resp
    }
}

/// Decode a JSON request body that must be an object. serde's derived `Deserialize` would
/// also take an array as a struct's fields in order (`[null, null]`), which no client means.
/// An empty body gives `T::default()` when `empty_ok`.
pub fn object_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    empty_ok: bool,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(ApiError::BadRequest(
                "a JSON object body is required".into(),
            ))
        };
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when a variant is added: add it to the list below too.
    fn _listed(e: &ApiError) {
        match e {
            ApiError::BadRequest(_)
            | ApiError::NotFound(_)
            | ApiError::Conflict(_)
            | ApiError::Forbidden(_)
            | ApiError::TooLarge(_)
            | ApiError::Unauthorized
            | ApiError::Gone { .. }
            | ApiError::Storage(_)
            | ApiError::Unavailable(_) => {}
        }
    }

    /// Every status the API answers with is in the README's error list.
    #[test]
    fn the_readme_lists_every_error_status() {
        let readme = include_str!("../../README.md");
        let line = readme
            .split("\n\n")
            .find(|p| p.starts_with("Errors are `{\"error\""))
            .expect("the README's error paragraph");
        for e in [
            ApiError::BadRequest(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::TooLarge(String::new()),
            ApiError::Unauthorized,
            ApiError::Gone {
                message: String::new(),
                retained_from: chrono::NaiveDate::MIN,
            },
            ApiError::Storage(StorageError::Invalid(String::new())),
            ApiError::Unavailable(String::new()),
        ] {
            let code = e.into_response().status();
            assert!(
                line.contains(code.as_str()),
                "README's error list lacks {code}: {line}"
            );
        }
    }
}
