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
use chronik_testkit::conformance::{event, events, stream};
use futures::TryStreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions as _, PgPool};

mod support;
use support::stats;

/// More rounds than PostgreSQL's five custom plans before it settles on a generic one.
const ROUNDS: u64 = 40;

/// Tables whose scans are counted: the ones `append_events` reads and writes.
const TABLES: [&str; 2] = ["events", "streams"];

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

/// Tables whose scans the reads must not move: the ones that grow with the store.
const READ_TABLES: [&str; 3] = ["events", "snapshots", "streams"];

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
    let before = stats::seq_scans(&session, &TABLES).await;
    assert_eq!(before.len(), 2, "{before:?}");
    for r in 0..ROUNDS {
        round(&store, r).await;
    }
    assert_eq!(stats::seq_scans(&session, &TABLES).await, before);
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
    let before = stats::seq_scans(&session, &TABLES).await;
    assert_eq!(before.len(), 2, "{before:?}");
    for r in 0..ROUNDS {
        round(&store, r).await;
    }
    assert_eq!(stats::seq_scans(&session, &TABLES).await, before);
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
    let before = stats::seq_scans(&session, &READ_TABLES).await;
    assert_eq!(before.len(), 3, "{before:?}");
    for r in 0..ROUNDS {
        read_round(&store, r).await;
    }
    assert_eq!(stats::seq_scans(&session, &READ_TABLES).await, before);
}

/// Events a feed holds when its reads are measured: enough that a read of all of it is
/// many times what any read here may touch.
const FEED: usize = 2_000;

/// A feed page, and the events `tail -n` asks for.
const PAGE: usize = 10;

/// Rows of `events` any one of the feed reads below may read: twice what it walks to find
/// a page of the events a tenth of the feed holds. A read of the whole feed reads [`FEED`].
const ROWS_PER_READ: i64 = 2 * 10 * PAGE as i64;

/// The sequential scans and rows of `events` one feed read costs, summed over its calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Cost {
    calls: i64,
    seq_scans: i64,
    rows: i64,
}

impl Cost {
    async fn of<T, F: Future<Output = T>>(&mut self, session: &PgPool, read: F) -> T {
        let before = stats::events_reads(session).await;
        let out = read.await;
        let after = stats::events_reads(session).await;
        self.calls += 1;
        self.seq_scans += after.seq_scans - before.seq_scans;
        self.rows += after.rows - before.rows;
        out
    }
}

/// Appends `n` events to the feed, in one stream: every tenth is a `Wanted` event (what
/// the filtered reads below want), the others of 45 other types, as a service's feed
/// mixes many.
async fn grow(store: &PgEventStore, n: usize) {
    let feed: Vec<_> = (0..n)
        .map(|i| {
            let kind = if i % 10 == 0 {
                "Wanted".to_owned()
            } else {
                format!("Other{}", i % 45)
            };
            event(&kind, serde_json::json!({ "n": i }))
        })
        .collect();
    store
        .append(&stream("plans"), ExpectedVersion::NoStream, &feed)
        .await
        .expect("grow the feed");
}

/// The feed reads a projection and `tail` run on every page (issue 12: each of them once
/// read the whole feed): `feed_last` (a filtered or partitioned runner's head, every
/// page), a filtered page (`read_feed_filtered`) and `tail -n`'s start
/// (`feed_start_for_last`), each called [`ROUNDS`] times from one session. With `analyze`,
/// the feed holds [`FEED`] events and is analyzed before the first read; without, it was
/// never analyzed (autovacuum off) and grows to [`FEED`] events between the rounds, so the
/// plans a session caches while it is small serve it large. None may scan `events`
/// sequentially, and each call reads at most [`ROWS_PER_READ`] of its rows.
async fn feed_reads_stay_bounded(pool: PgPool, analyze: bool) {
    let session = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("connect");
    sqlx::query("ALTER TABLE events SET (autovacuum_enabled = off)")
        .execute(&session)
        .await
        .expect("no analyze but ours");
    let store = PgEventStore::from_pool(session.clone());
    let per_round = FEED / usize::try_from(ROUNDS).expect("few rounds");
    if analyze {
        for _ in 0..ROUNDS {
            grow(&store, per_round).await;
        }
        sqlx::query("ANALYZE events")
            .execute(&session)
            .await
            .expect("analyze the feed");
    }
    let filter = FeedFilter {
        event_types: vec!["Wanted".to_owned()],
        categories: Vec::new(),
    };
    let (mut last, mut filtered, mut tail) = (Cost::default(), Cost::default(), Cost::default());
    let mut cursor = FeedCursor::START;
    for _ in 0..ROUNDS {
        if !analyze {
            grow(&store, per_round).await;
        }
        last.of(&session, store.feed_last())
            .await
            .expect("feed_last");
        let page = filtered
            .of(&session, store.read_feed(cursor, &filter, PAGE))
            .await
            .expect("filtered page");
        // (How far the page reaches depends on the cluster's horizon, which other tests
        // may hold back: the cost of reading it does not.)
        cursor = page.next;
        tail.of(
            &session,
            store.feed_start_for_last(&filter, None, PAGE as u64),
        )
        .await
        .expect("tail's start");
    }
    let calls = i64::try_from(ROUNDS).expect("few rounds");
    let too_costly: Vec<_> = [
        ("feed_last", last),
        ("read_feed_filtered", filtered),
        ("feed_start_for_last", tail),
    ]
    .into_iter()
    .filter(|(_, cost)| {
        cost.calls != calls || cost.seq_scans != 0 || cost.rows > cost.calls * ROWS_PER_READ
    })
    .collect();
    assert!(
        too_costly.is_empty(),
        "feed reads that scanned events or read more than {ROWS_PER_READ} of its rows a call: \
         {too_costly:?}"
    );
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn feed_reads_never_scan_a_feed_never_analyzed(pool: PgPool) {
    feed_reads_stay_bounded(pool, false).await;
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn feed_reads_never_scan_an_analyzed_feed(pool: PgPool) {
    feed_reads_stay_bounded(pool, true).await;
}
