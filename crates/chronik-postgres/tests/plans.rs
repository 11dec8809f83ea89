//! Every statement of `append_events`, and every read by key (stream loads, feed pages,
//! snapshot and checkpoint loads), uses its index whatever the statistics were when a
//! session first planned it (issue 12).
//!
//! A session caches the plan of every statement PL/pgSQL runs and keeps it until the
//! table's statistics change. Planned against the statistics of a new, empty store (what
//! autovacuum's first analyze records), a lookup by key is a sequential scan, and it stays
//! one while the table grows: every append then reads the whole table. So: analyze the
//! empty store, run every append path from one session many times, count sequential scans.

use chronik_core::{ExpectedVersion, FeedCursor, Version};
use chronik_postgres::{PgEventStore, PgStoreConfig};
use chronik_store::{CheckpointStore, EventStore, FeedFilter, SnapshotStore, StoreError};
use chronik_testkit::conformance::{events, stream};
use futures::TryStreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions as _, PgPool};

/// More rounds than PostgreSQL's five custom plans before it settles on a generic one.
const ROUNDS: u64 = 40;

/// Tables whose scans are counted: the ones `append_events` reads and writes.
const TABLES: &str = "'events', 'streams'";

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

/// Tables whose scans the reads must not move: the ones that grow with the store.
const READ_TABLES: &str = "'events', 'streams', 'snapshots'";

/// `(table, seq_scan)` of the counted tables, as this session's flushed statistics say.
async fn seq_scans(pool: &PgPool) -> Vec<(String, i64)> {
    scans_of(pool, TABLES).await
}

/// `(table, seq_scan)` of `tables` (a SQL list of names).
async fn scans_of(pool: &PgPool, tables: &str) -> Vec<(String, i64)> {
    // The session's own counters reach the statistics when it next goes idle, at once
    // when asked to: ask, go idle, then read (in a new transaction, so not cached).
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .expect("flush statistics");
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT relname::text, seq_scan FROM pg_stat_user_tables \
          WHERE schemaname = current_schema() AND relname IN ({tables}) ORDER BY relname"
    )))
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

/// A store connected as a service connects it, on one session (so that every statement is
/// planned once and then reused) to `pool`'s database, with the store analyzed empty.
async fn planned_empty(pool: &PgPool) -> (PgPool, PgEventStore) {
    let url = pool.connect_options().to_url_lossy();
    let store = PgEventStore::connect_with(
        url.as_str(),
        PgStoreConfig::default().with_max_connections(1),
    )
    .await
    .expect("connect");
    let session = store.pool().clone();
    sqlx::query("ANALYZE events, streams, snapshots, projection_checkpoints")
        .execute(&session)
        .await
        .expect("analyze the empty store");
    (session, store)
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn appends_on_store_sessions_never_scan_a_table_planned_empty(pool: PgPool) {
    // The store's own sessions: one-event appends take the one-statement fast path, whose
    // stream-row lookups are planned by the session (not inside `append_events`).
    let (session, store) = planned_empty(&pool).await;
    let before = seq_scans(&session).await;
    assert_eq!(before.len(), 2, "{before:?}");
    for r in 0..ROUNDS {
        round(&store, r).await;
    }
    assert_eq!(seq_scans(&session).await, before);
}

/// One round of every read by key, each on a store that grows between rounds.
async fn read_round(store: &PgEventStore, r: u64) {
    let id = stream("plans");
    store
        .append(&id, ExpectedVersion::NoStream, &events(3))
        .await
        .expect("append");
    let read: Vec<_> = store
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read stream");
    assert_eq!(read.len(), 3, "round {r}");
    let from_two: Vec<_> = store
        .read_payloads(&id, v(2))
        .try_collect()
        .await
        .expect("read payloads");
    assert_eq!(from_two.len(), 2, "round {r}");
    assert_eq!(store.stream_version(&id).await.expect("version"), v(3));
    // The feed from its start and from the last event read: pages by the feed index.
    // (What a page holds depends on the cluster's horizon, which other tests may hold.)
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 2)
        .await
        .expect("feed page");
    let filter = FeedFilter {
        event_types: Vec::new(),
        categories: vec!["plans".to_owned()],
    };
    store
        .read_feed(read[2].cursor, &filter, 10)
        .await
        .expect("filtered feed page");
    store
        .save_snapshot(&id, v(3), 1, &serde_json::json!({ "n": r }))
        .await
        .expect("save snapshot");
    let snapshot = store.load_snapshot(&id, 1).await.expect("load snapshot");
    assert!(snapshot.is_some(), "round {r}");
    let name = format!("plans-{}", r % 4);
    store
        .save_checkpoint(&name, read[2].cursor, r)
        .await
        .expect("save checkpoint");
    assert!(
        store
            .load_checkpoint(&name)
            .await
            .expect("load checkpoint")
            .is_some(),
        "round {r}"
    );
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn reads_never_scan_a_table_planned_empty(pool: PgPool) {
    let (session, store) = planned_empty(&pool).await;
    let before = scans_of(&session, READ_TABLES).await;
    assert_eq!(before.len(), 3, "{before:?}");
    for r in 0..ROUNDS {
        read_round(&store, r).await;
    }
    assert_eq!(scans_of(&session, READ_TABLES).await, before);
}
