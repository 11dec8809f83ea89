//! `GET /metrics`: the Prometheus text format, from the `metrics` recorder this process
//! installed ([`Console::prometheus`](crate::Console::prometheus), or the one the console
//! installs itself), after setting the gauges read from the database
//! ([`chronik_postgres::metrics::record_store_gauges`]).

use std::sync::OnceLock;

use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chronik_postgres::metrics::{APPEND_DURATION, APPEND_DURATION_BUCKETS};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::State;

static INSTALLED: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The Prometheus recorder of this process, installed on first use (with the buckets of
/// the append histogram); an error when another recorder was installed first.
pub(crate) fn installed() -> Result<PrometheusHandle, String> {
    INSTALLED
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(APPEND_DURATION.to_owned()),
                    APPEND_DURATION_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| {
                    format!(
                        "cannot install the Prometheus recorder ({e}): pass the handle of the \
                         one this process installed to Console::prometheus"
                    )
                })?;
            chronik_postgres::metrics::describe();
            Ok(handle)
        })
        .clone()
}

pub(crate) async fn serve(Extract(state): Extract<State>) -> Response {
    let handle = match &state.prometheus {
        Ok(h) => h,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.clone()).into_response(),
    };
    // A scrape while the database is down still answers, with the in-process metrics and
    // `chronik_store_up 0`, so that the outage itself is visible.
    let up = match chronik_postgres::metrics::record_store_gauges(&state.store).await {
        Ok(()) => 1.0,
        Err(e) => {
            tracing::warn!(error = %e, "console: /metrics cannot read the store");
            0.0
        }
    };
    metrics::gauge!(chronik_postgres::metrics::STORE_UP).set(up);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
