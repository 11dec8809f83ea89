//! How a request fails: one status and one message for a person, as JSON for the API and
//! as a page (with a banner when the database is unreachable) for the pages.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chronik_store::StoreError;
use serde_json::json;

/// A failed request.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: a malformed parameter; the message says which and why.
    BadRequest(String),
    /// 401: a rebuild without the admin token, or with a wrong one.
    Unauthorized(String),
    /// 403: rebuilds are off (no admin token was configured).
    Forbidden(String),
    /// 404: no such stream, event, projection or page.
    NotFound(String),
    /// 503: the database cannot be reached.
    Unavailable(String),
    /// 500: anything else (the store refused, a rebuild failed).
    Internal(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Self::BadRequest(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Unavailable(m)
            | Self::Internal(m) => m,
        }
    }

    /// A store failure: unreachable (a backend error) or anything else.
    pub(crate) fn store(what: &str, e: &StoreError) -> Self {
        match e {
            StoreError::Backend { .. } => Self::Unavailable(format!("{what}: {e}")),
            StoreError::InvalidRequest(m) => Self::BadRequest(m.clone()),
            other => Self::Internal(format!("{what}: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, Json(json!({ "error": self.message() }))).into_response()
    }
}
