//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`):
//! the store counts and times the appends of this process as they happen (the first four
//! below), and [`record_store_gauges`] sets what is read from the database (events stored,
//! feed head, horizon, projection lag and state, pool usage: the same for every process)
//! when called, typically just before a scrape. Install any `metrics` recorder
//! (e.g. `metrics-exporter-prometheus`) to export them; without one they cost nothing.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `chronik_appends_total` | counter | `category`, `outcome` | appends per stream: `written`, `already_appended` (an idempotent retry), `conflict`, `refused` (other typed refusals), `failed` (backend errors) |
//! | `chronik_events_appended_total` | counter | `category` | events written |
//! | `chronik_append_conflicts_total` | counter | `category` | appends refused for their expected version |
//! | `chronik_append_duration_seconds` | histogram | | time of one append call (all its streams), as the caller waits for it |
//! | `chronik_store_up` | gauge | | 1 when the database could be read for the gauges below, 0 when not (the console's `/metrics` sets it) |
//! | `chronik_stored_events_total` | counter | `category` | events stored, read from the database (so it moves with every process's appends) |
//! | `chronik_streams` | gauge | `category` | streams stored |
//! | `chronik_feed_visible_events` | gauge | | events a feed reader can see |
//! | `chronik_feed_head_transaction` | gauge | | transaction id of the last visible event |
//! | `chronik_horizon_holders` | gauge | | open write or prepared transactions in the cluster |
//! | `chronik_horizon_age_seconds` | gauge | | age of the transaction that is the horizon (0 when none) |
//! | `chronik_feed_held_back` | gauge | | 1 while committed events are invisible because of it |
//! | `chronik_projection_lag_events` | gauge | `projection` | visible events after its checkpoint |
//! | `chronik_projection_lag_seconds` | gauge | `projection` | age of the oldest of them |
//! | `chronik_projection_events_processed` | gauge | `projection` | events applied in total |
//! | `chronik_projection_state` | gauge | `projection`, `state` | 1 for its current state, 0 for the others |
//! | `chronik_pool_connections` | gauge | `state` (`idle`, `in_use`) | the store's connection pool |
//! | `chronik_pool_max_connections` | gauge | | its size limit |

use std::time::Duration;

use chronik_core::StreamId;
use chronik_store::{AppendResult, EventStore as _, StoreError};

use crate::PgEventStore;

/// `chronik_appends_total`.
pub const APPENDS: &str = "chronik_appends_total";
/// `chronik_events_appended_total`.
pub const EVENTS_APPENDED: &str = "chronik_events_appended_total";
/// `chronik_append_conflicts_total`.
pub const APPEND_CONFLICTS: &str = "chronik_append_conflicts_total";
/// `chronik_append_duration_seconds`.
pub const APPEND_DURATION: &str = "chronik_append_duration_seconds";
/// `chronik_store_up`: 1 when the last [`record_store_gauges`] could read the store, 0
/// when it could not (set by its caller, e.g. the console's `/metrics`).
pub const STORE_UP: &str = "chronik_store_up";
/// `chronik_stored_events_total`.
pub const STORED_EVENTS: &str = "chronik_stored_events_total";
/// `chronik_streams`.
pub const STREAMS: &str = "chronik_streams";
/// `chronik_feed_visible_events`.
pub const FEED_VISIBLE_EVENTS: &str = "chronik_feed_visible_events";
/// `chronik_feed_head_transaction`.
pub const FEED_HEAD_TRANSACTION: &str = "chronik_feed_head_transaction";
/// `chronik_horizon_holders`.
pub const HORIZON_HOLDERS: &str = "chronik_horizon_holders";
/// `chronik_horizon_age_seconds`.
pub const HORIZON_AGE: &str = "chronik_horizon_age_seconds";
/// `chronik_feed_held_back`.
pub const FEED_HELD_BACK: &str = "chronik_feed_held_back";
/// `chronik_projection_lag_events`.
pub const PROJECTION_LAG_EVENTS: &str = "chronik_projection_lag_events";
/// `chronik_projection_lag_seconds`.
pub const PROJECTION_LAG_SECONDS: &str = "chronik_projection_lag_seconds";
/// `chronik_projection_events_processed`.
pub const PROJECTION_EVENTS_PROCESSED: &str = "chronik_projection_events_processed";
/// `chronik_projection_state`.
pub const PROJECTION_STATE: &str = "chronik_projection_state";
/// `chronik_pool_connections`.
pub const POOL_CONNECTIONS: &str = "chronik_pool_connections";
/// `chronik_pool_max_connections`.
pub const POOL_MAX_CONNECTIONS: &str = "chronik_pool_max_connections";

/// The states `chronik_projection_state` reports (see `ProjectionReport::state`): every
/// runner state a report can show (an owner's, `starting` included), `dead` for a crashed
/// owner, and `none` for a projection no runner ever ran.
pub const PROJECTION_STATES: &[&str] = &[
    "starting",
    "catching_up",
    "live",
    "failing",
    "standby",
    "dead",
    "stopped",
    "none",
];

/// Suggested upper bounds (seconds) of the `chronik_append_duration_seconds` buckets, for
/// an exporter that needs them (a single-event append takes about a millisecond locally).
pub const APPEND_DURATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Describes every metric to the installed recorder (units and help texts), once.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(APPENDS, "appends per stream, by category and outcome");
    describe_counter!(EVENTS_APPENDED, "events written, by category");
    describe_counter!(
        APPEND_CONFLICTS,
        "appends refused for their expected version, by category"
    );
    describe_histogram!(APPEND_DURATION, Unit::Seconds, "time of one append call");
    describe_gauge!(
        STORE_UP,
        "1 when the store could be read for the gauges, 0 when not"
    );
    describe_counter!(
        STORED_EVENTS,
        "events stored, by category, read from the database"
    );
    describe_gauge!(STREAMS, "streams stored, by category");
    describe_gauge!(FEED_VISIBLE_EVENTS, "events a feed reader can see");
    describe_gauge!(
        FEED_HEAD_TRANSACTION,
        "transaction id of the last visible event"
    );
    describe_gauge!(
        HORIZON_HOLDERS,
        "open write or prepared transactions in the cluster"
    );
    describe_gauge!(
        HORIZON_AGE,
        Unit::Seconds,
        "age of the transaction that is the feed horizon (0 when none)"
    );
    describe_gauge!(
        FEED_HELD_BACK,
        "1 while committed events are invisible because of the horizon"
    );
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        "visible events after the projection's checkpoint"
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "age of the oldest event the projection has not processed"
    );
    describe_gauge!(PROJECTION_EVENTS_PROCESSED, "events the projection applied");
    describe_gauge!(
        PROJECTION_STATE,
        "1 for the projection's current state, 0 for the others"
    );
    describe_gauge!(POOL_CONNECTIONS, "the store's pooled connections, by state");
    describe_gauge!(POOL_MAX_CONNECTIONS, "the store's pool size limit");
}

/// What one append call did to one stream, for the counters.
pub(crate) fn append_outcome(
    stream: &StreamId,
    events: usize,
    result: Result<&AppendResult, &StoreError>,
) {
    let category = stream.category().to_owned();
    let outcome = match result {
        Ok(r) if r.already_appended => "already_appended",
        Ok(_) => {
            metrics::counter!(EVENTS_APPENDED, "category" => category.clone())
                .increment(events as u64);
            "written"
        }
        Err(e) if e.is_conflict() => {
            metrics::counter!(APPEND_CONFLICTS, "category" => category.clone()).increment(1);
            "conflict"
        }
        Err(StoreError::Backend { .. } | StoreError::TransactionAborted { .. }) => "failed",
        Err(_) => "refused",
    };
    metrics::counter!(APPENDS, "category" => category, "outcome" => outcome).increment(1);
}

/// What one multi-stream append call did to each of its streams: on a
/// [`StoreError::Conflicts`] the streams it names conflicted and the others were refused
/// with them; any other error counts for every stream.
pub(crate) fn append_streams_outcome(
    appends: &[chronik_store::StreamAppend],
    result: Result<&[AppendResult], &StoreError>,
) {
    for (i, part) in appends.iter().enumerate() {
        match result {
            Ok(results) => match results.get(i) {
                Some(r) => append_outcome(&part.stream, part.events.len(), Ok(r)),
                None => continue,
            },
            Err(StoreError::Conflicts { conflicts })
                if !conflicts.iter().any(|c| c.stream == part.stream) =>
            {
                let refused = StoreError::InvalidRequest(String::new());
                append_outcome(&part.stream, part.events.len(), Err(&refused));
            }
            Err(e) => append_outcome(&part.stream, part.events.len(), Err(e)),
        }
    }
}

/// The time of one append call.
pub(crate) fn append_duration(elapsed: Duration) {
    metrics::histogram!(APPEND_DURATION).record(elapsed.as_secs_f64());
}

/// Sets the gauges read from the database: the feed head, the horizon (the same facts as
/// `chronik doctor`), every projection's lag and state, and the pool's usage. Call it
/// before each scrape (the console's `/metrics` does), or on a timer.
///
/// # Errors
/// [`StoreError::Backend`] when the database cannot be read (the gauges set before the
/// failure keep their new values, the others their old ones).
pub async fn record_store_gauges(store: &PgEventStore) -> Result<(), StoreError> {
    let pool = store.pool();
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use")
        .set(f64::from(size.saturating_sub(idle)));
    metrics::gauge!(POOL_MAX_CONNECTIONS).set(f64::from(pool.options().get_max_connections()));

    for c in store.store_stats().await?.categories {
        metrics::counter!(STORED_EVENTS, "category" => c.category.clone()).absolute(c.events);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(STREAMS, "category" => c.category).set(c.streams as f64);
    }
    let head = store.feed_head().await?;
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(FEED_VISIBLE_EVENTS).set(head.visible_events as f64);
        metrics::gauge!(FEED_HEAD_TRANSACTION)
            .set(head.last.map_or(0.0, |c| c.transaction() as f64));
    }
    let newest = store.newest_committed().await?;
    let holders = store.horizon_holders().await?;
    let blocker_age = holders
        .iter()
        .find(|h| h.blocker)
        .map_or(0.0, |h| h.age_seconds.unwrap_or(0.0));
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(HORIZON_HOLDERS).set(holders.len() as f64);
    metrics::gauge!(HORIZON_AGE).set(blocker_age);
    metrics::gauge!(FEED_HELD_BACK).set(if newest.is_some() && newest > head.last {
        1.0
    } else {
        0.0
    });

    for r in crate::projection_reports(store).await? {
        let name = r.name.clone();
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!(PROJECTION_LAG_EVENTS, "projection" => name.clone())
                .set(r.lag_events as f64);
            metrics::gauge!(PROJECTION_EVENTS_PROCESSED, "projection" => name.clone())
                .set(r.events_processed as f64);
        }
        metrics::gauge!(PROJECTION_LAG_SECONDS, "projection" => name.clone()).set(r.lag_seconds);
        let current = r.state.as_deref().unwrap_or("none");
        for state in PROJECTION_STATES {
            metrics::gauge!(PROJECTION_STATE, "projection" => name.clone(), "state" => *state)
                .set(if *state == current { 1.0 } else { 0.0 });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chronik_projections::ProjectionState;

    use super::PROJECTION_STATES;

    /// What `ProjectionReport::state` says for a projection whose instance is in `state`:
    /// an owner's own state, `dead` for a crashed one.
    fn reported(state: ProjectionState) -> &'static str {
        match state {
            ProjectionState::Crashed => "dead",
            other => other.as_str(),
        }
    }

    #[test]
    fn every_state_a_report_shows_has_a_series() {
        for state in ProjectionState::ALL {
            assert!(
                PROJECTION_STATES.contains(&reported(*state)),
                "{} is missing from PROJECTION_STATES",
                reported(*state)
            );
        }
        assert!(PROJECTION_STATES.contains(&"none"));
    }
}
