//! `GET /metrics`: the Prometheus text format, parsed with a parser crate; its counters move
//! when events are appended, its gauges say what the store holds, and a scrape while the
//! database is down still answers, saying so. (One test: the recorder is global to the
//! process.)
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use chronik_console::Console;
use chronik_core::{ExpectedVersion, FeedCursor, Metadata, StreamId, Version};
use chronik_postgres::PgEventStore;
use chronik_store::{CheckpointStore as _, EventStore as _};
use common::{event, get};
use prometheus_parse::{Scrape, Value};
use serde_json::json;

async fn scrape(router: &axum::Router) -> Scrape {
    let r = get(router, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `metric` with exactly these `labels` (0 when absent: a counter
/// that never moved is not rendered).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| {
            x.metric == metric
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
                && x.labels.len() == labels.len()
        })
        .map_or(0.0, |x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

fn kind(s: &Scrape, metric: &str) -> &'static str {
    match s
        .samples
        .iter()
        .find(|x| x.metric == metric)
        .map(|x| &x.value)
    {
        Some(Value::Counter(_)) => "counter",
        Some(Value::Gauge(_)) => "gauge",
        Some(Value::Histogram(_)) => "histogram",
        Some(Value::Summary(_)) => "summary",
        Some(Value::Untyped(_)) => "untyped",
        None => "absent",
    }
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn metrics_parse_as_prometheus_text_and_move_with_appends(pool: sqlx::PgPool) {
    let store = PgEventStore::from_pool(pool);
    store
        .save_checkpoint("lagging", FeedCursor::START, 0)
        .await
        .unwrap();
    let (router, _rebuilds) = Console::new(store.clone()).into_parts();
    let before = scrape(&router).await;

    // Two appends that write 3 + 2 events, an idempotent retry, and a conflict.
    let one = StreamId::new("metered-1").unwrap();
    let first = vec![
        event("A", 1, json!({}), Metadata::default()),
        event("B", 1, json!({}), Metadata::default()),
        event("C", 1, json!({}), Metadata::default()),
    ];
    store
        .append(&one, ExpectedVersion::NoStream, &first)
        .await
        .unwrap();
    let retried = store
        .append(&one, ExpectedVersion::NoStream, &first)
        .await
        .unwrap();
    assert!(retried.already_appended);
    let conflict = store
        .append(
            &one,
            ExpectedVersion::Exact(Version::new(1).unwrap()),
            &[event("D", 1, json!({}), Metadata::default())],
        )
        .await;
    assert!(conflict.unwrap_err().is_conflict());
    common::append(
        &store,
        "metered-2",
        vec![
            event("A", 1, json!({}), Metadata::default()),
            event("B", 1, json!({}), Metadata::default()),
        ],
    )
    .await;

    let after = scrape(&router).await;
    let delta = |metric: &str, labels: &[(&str, &str)]| {
        value(&after, metric, labels) - value(&before, metric, labels)
    };
    let metered = [("category", "metered")];
    assert_eq!(kind(&after, "chronik_events_appended_total"), "counter");
    assert_eq!(delta("chronik_events_appended_total", &metered), 5.0);
    assert_eq!(delta("chronik_append_conflicts_total", &metered), 1.0);
    let outcome = |o| [("category", "metered"), ("outcome", o)];
    assert_eq!(delta("chronik_appends_total", &outcome("written")), 2.0);
    assert_eq!(
        delta("chronik_appends_total", &outcome("already_appended")),
        1.0
    );
    assert_eq!(delta("chronik_appends_total", &outcome("conflict")), 1.0);
    assert_eq!(kind(&after, "chronik_append_duration_seconds"), "histogram");
    assert_eq!(delta("chronik_append_duration_seconds", &[]), 4.0);

    // Read from the database: the same whatever process appended.
    assert_eq!(kind(&after, "chronik_stored_events_total"), "counter");
    assert_eq!(value(&after, "chronik_stored_events_total", &metered), 5.0);
    assert_eq!(value(&after, "chronik_streams", &metered), 2.0);
    assert_eq!(value(&after, "chronik_feed_visible_events", &[]), 5.0);
    assert!(value(&after, "chronik_feed_head_transaction", &[]) > 0.0);
    assert_eq!(value(&after, "chronik_feed_held_back", &[]), 0.0);
    assert!(value(&after, "chronik_horizon_age_seconds", &[]) >= 0.0);
    let lagging = [("projection", "lagging")];
    assert_eq!(
        value(&after, "chronik_projection_lag_events", &lagging),
        5.0
    );
    assert!(value(&after, "chronik_projection_lag_seconds", &lagging) >= 0.0);
    assert_eq!(
        value(
            &after,
            "chronik_projection_state",
            &[("projection", "lagging"), ("state", "none")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "chronik_projection_state",
            &[("projection", "lagging"), ("state", "live")]
        ),
        0.0
    );
    assert!(value(&after, "chronik_pool_max_connections", &[]) >= 1.0);
    assert!(value(&after, "chronik_pool_connections", &[("state", "in_use")]) >= 0.0);
    assert_eq!(value(&after, "chronik_store_up", &[]), 1.0);
    // Every metric has its help text.
    for metric in [
        "chronik_events_appended_total",
        "chronik_projection_lag_events",
        "chronik_horizon_age_seconds",
    ] {
        assert!(
            after.docs.contains_key(metric),
            "{metric} has no HELP: {:?}",
            after.docs.keys()
        );
    }

    // The checkpoint moves: the lag falls.
    let head = store.feed_head().await.unwrap().last.unwrap();
    store.save_checkpoint("lagging", head, 5).await.unwrap();
    let caught_up = scrape(&router).await;
    assert_eq!(
        value(&caught_up, "chronik_projection_lag_events", &lagging),
        0.0
    );

    // A console whose database is down still answers its scrape, and says so.
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let (dead, _rebuilds) = Console::new(PgEventStore::from_pool(down)).into_parts();
    let s = scrape(&dead).await;
    assert_eq!(value(&s, "chronik_store_up", &[]), 0.0);
    assert_eq!(value(&scrape(&router).await, "chronik_store_up", &[]), 1.0);
}
