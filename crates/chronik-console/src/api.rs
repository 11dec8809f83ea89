//! The JSON API: the same facts as the pages, as documents. Every failure is a status and
//! `{"error": "<message>"}`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as Extract};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chronik_core::{EventId, StreamId};
use chronik_postgres::StreamQuery;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::state::State;
use crate::{DEFAULT_PAGE, MAX_PAGE, view};

/// The query parameters, or a 400 naming what is wrong with them.
pub(crate) fn params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(p)| p)
        .map_err(|e| ApiError::BadRequest(format!("bad query parameters: {}", e.body_text())))
}

/// A parameter as given, with an empty value (an empty form field) as absent.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `limit`: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
pub(crate) fn limit(value: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_PAGE);
    };
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be a whole number from 1 to {MAX_PAGE}, got {text:?}"
        ))),
    }
}

/// `from`: a version from 1, 1 when absent.
pub(crate) fn from(value: Option<&str>) -> Result<u64, ApiError> {
    let Some(text) = value.filter(|v| !v.is_empty()) else {
        return Ok(1);
    };
    match text.parse::<u64>() {
        Ok(n) if n >= 1 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "from must be a stream version (a whole number from 1), got {text:?}"
        ))),
    }
}

pub(crate) fn stream_id(text: &str) -> Result<StreamId, ApiError> {
    StreamId::new(text).map_err(|e| ApiError::BadRequest(format!("bad stream id: {e}")))
}

pub(crate) fn event_id(text: &str) -> Result<EventId, ApiError> {
    let uuid: uuid::Uuid = text
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("bad event id {text:?}: {e}")))?;
    EventId::new(uuid).map_err(|e| ApiError::BadRequest(format!("bad event id {text:?}: {e}")))
}

/// Parameters of the stream listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamsParams {
    pub(crate) prefix: Option<String>,
    pub(crate) category: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<String>,
}

impl StreamsParams {
    pub(crate) fn query(self) -> Result<(StreamQuery, u32), ApiError> {
        let limit = limit(self.limit.as_deref())?;
        let query = StreamQuery {
            prefix: given(self.prefix),
            category: given(self.category),
            after: given(self.after),
        };
        Ok((query, limit))
    }
}

/// Parameters of one stream's events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamParams {
    pub(crate) from: Option<String>,
    pub(crate) limit: Option<String>,
}

/// Parameters of a page that takes none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

pub(crate) async fn overview(
    Extract(state): Extract<State>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    params(query)?;
    Ok(Json(view::overview(&state).await?).into_response())
}

pub(crate) async fn streams(
    Extract(state): Extract<State>,
    query: Result<Query<StreamsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (query, limit) = params(query)?.query()?;
    Ok(Json(view::streams(&state, query, limit).await?).into_response())
}

pub(crate) async fn stream(
    Extract(state): Extract<State>,
    Path(id): Path<String>,
    query: Result<Query<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(query)?;
    let id = stream_id(&id)?;
    let page = view::stream(
        &state,
        &id,
        from(p.from.as_deref())?,
        limit(p.limit.as_deref())?,
    )
    .await?;
    Ok(Json(page).into_response())
}

pub(crate) async fn event(
    Extract(state): Extract<State>,
    Path(id): Path<String>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    params(query)?;
    let id = event_id(&id)?;
    Ok(Json(view::event(&state, id).await?).into_response())
}

pub(crate) async fn trace(
    Extract(state): Extract<State>,
    Path(id): Path<String>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    params(query)?;
    let id = event_id(&id)?;
    Ok(Json(view::trace(&state, id).await?).into_response())
}

pub(crate) async fn projections(
    Extract(state): Extract<State>,
    query: Result<Query<NoParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    params(query)?;
    Ok(Json(view::projections(&state).await?).into_response())
}

/// `POST /api/projections/{name}/rebuild`: refused (403) when the console has no admin
/// token, refused (401) without the right `Authorization: Bearer TOKEN`, 404 for a
/// projection this binary cannot rebuild; otherwise runs the rebuild and answers when it
/// is done.
pub(crate) async fn rebuild(
    Extract(state): Extract<State>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.admin_token.is_none() {
        return Err(ApiError::Forbidden(format!(
            "rebuilds are off: start the console with --admin-token (or CHRONIK_CONSOLE_ADMIN_TOKEN) \
             to allow them, e.g. `{} console --admin-token ...`",
            state.binary
        )));
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => {
            return Err(ApiError::Unauthorized(
                "a rebuild needs the admin token: send `Authorization: Bearer TOKEN`".to_owned(),
            ));
        }
        Some(token) if !state.token_matches(token) => {
            return Err(ApiError::Unauthorized(
                "the admin token is wrong".to_owned(),
            ));
        }
        Some(_) => {}
    }
    if !state.rebuildable.contains(&name) {
        return Err(ApiError::NotFound(format!(
            "{} cannot rebuild projection {name:?}: it rebuilds only the projections it registers{}",
            state.binary,
            if state.rebuildable.is_empty() {
                String::from(" (none)")
            } else {
                format!(" ({})", state.rebuildable.join(", "))
            }
        )));
    }
    let (request, reply) = crate::rebuild_request(name.clone());
    state
        .rebuilds
        .send(request)
        .await
        .map_err(|_| ApiError::Internal("the console is shutting down".to_owned()))?;
    let done = reply
        .await
        .map_err(|_| ApiError::Internal("the rebuild was abandoned".to_owned()))?
        .map_err(|e| ApiError::Internal(format!("rebuilding {name:?} failed: {e}")))?;
    Ok(Json(json!({
        "name": name,
        "scanned": done.scanned,
        "handled": done.handled,
    }))
    .into_response())
}

/// Anything else: 404 as JSON under `/api/`, as a page elsewhere.
pub(crate) async fn not_found(Extract(state): Extract<State>, uri: axum::http::Uri) -> Response {
    let e = ApiError::NotFound(format!("no such page: {}", uri.path()));
    if uri.path().starts_with("/api/") || uri.path() == "/metrics" {
        e.into_response()
    } else {
        crate::html::error_page(&state, "", "Not found", &e)
    }
}
