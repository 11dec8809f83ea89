//! Every statement of `append_events` uses its index whatever the statistics were when a
//! session first planned it (issue 12).
//!
//! A session caches the plan of every statement PL/pgSQL runs and keeps it until the
//! table's statistics change. Planned against the statistics of a new, empty store (what
//! autovacuum's first analyze records), a lookup by key is a sequential scan, and it stays
//! one while the table grows: every append then reads the whole table. So: analyze the
//! empty store, run every append path from one session many times, count sequential scans.

use chronik_core::{ExpectedVersion, Version};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore, StoreError};
use chronik_testkit::conformance::{events, stream};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// More rounds than PostgreSQL's five custom plans before it settles on a generic one.
const ROUNDS: u64 = 40;

/// Tables whose scans are counted: the ones `append_events` reads and writes.
const TABLES: &str = "'events', 'streams'";

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

/// `(table, seq_scan)` of the counted tables, as this session's flushed statistics say.
async fn seq_scans(pool: &PgPool) -> Vec<(String, i64)> {
    // The session's own counters reach the statistics when it next goes idle, at once
    // when asked to: ask, go idle, then read (in a new transaction, so not cached).
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .expect("flush statistics");
    sqlx::query_as(&format!(
        "SELECT relname::text, seq_scan FROM pg_stat_user_tables \
          WHERE schemaname = current_schema() AND relname IN ({TABLES}) ORDER BY relname"
    ))
    .fetch_all(pool)
    .await
    .expect("read statistics")
}

/// One round of every append path: appends that create streams and that extend them, of
/// one event and of several, their idempotent retries, a duplicate id, a conflict.
async fn round(store: &PgEventStore, r: u64) {
    let (one, many) = (stream("plans"), stream("plans"));
    let first = events(1);
    store
        .append(&one, ExpectedVersion::NoStream, &first)
        .await
        .expect("new stream, one event");
    let second = events(1);
    store
        .append(&one, ExpectedVersion::Exact(v(1)), &second)
        .await
        .expect("existing stream, one event");
    let batch = events(3);
    store
        .append(&many, ExpectedVersion::NoStream, &batch)
        .await
        .expect("new stream, several events");
    store
        .append(&many, ExpectedVersion::Exact(v(3)), &events(2))
        .await
        .expect("existing stream, several events");
    store
        .append(&many, ExpectedVersion::Any, &events(2))
        .await
        .expect("any version, several events");

    // The duplicate path: retries, an id stored elsewhere, a conflict.
    let retried = store
        .append(&one, ExpectedVersion::Exact(v(1)), &second)
        .await
        .expect("retry of one event");
    assert!(retried.already_appended, "round {r}: {retried:?}");
    let retried = store
        .append(&many, ExpectedVersion::NoStream, &batch)
        .await
        .expect("retry of several events");
    assert!(retried.already_appended, "round {r}: {retried:?}");
    let elsewhere = store
        .append(&stream("plans"), ExpectedVersion::NoStream, &first)
        .await;
    assert!(
        matches!(elsewhere, Err(StoreError::DuplicateEventId { .. })),
        "round {r}: {elsewhere:?}"
    );
    let conflict = store
        .append(&one, ExpectedVersion::Exact(v(1)), &events(1))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "round {r}: {conflict:?}"
    );
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn appends_never_scan_a_table_planned_empty(pool: PgPool) {
    // One session, so that every statement is planned once and then reused.
    let session = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("connect");
    sqlx::query("ANALYZE events, streams")
        .execute(&session)
        .await
        .expect("analyze the empty store");
    let store = PgEventStore::from_pool(session.clone());
    let before = seq_scans(&session).await;
    assert_eq!(before.len(), 2, "{before:?}");
    for r in 0..ROUNDS {
        round(&store, r).await;
    }
    assert_eq!(seq_scans(&session).await, before);
}
