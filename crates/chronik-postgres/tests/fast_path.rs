//! Appends expecting no stream or an exact version take a one-statement fast path instead
//! of calling `append_events` (issue 12; batches of several events only when the append is
//! its own transaction), and fall back to the function for every outcome but "appended". These tests count the function's calls
//! (`track_functions`) to prove which path ran: the conformance suite proves that both
//! paths behave alike, and cannot tell them apart by design.

use chronik_core::{ExpectedVersion, Version};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore, StoreError};
use chronik_testkit::conformance::{events, stream};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

mod support;

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

/// A store on one session of `pool`'s database that counts function calls, set up as the
/// store's own sessions are (`enable_seqscan = off`) when `store_sessions`, else as a
/// caller's pool without that setting.
async fn counting_store(pool: &PgPool, store_sessions: bool) -> (PgPool, PgEventStore) {
    let mut options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("track_functions", "pl")]);
    if store_sessions {
        options = options.options([("enable_seqscan", "off")]);
    }
    let session = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect");
    (session.clone(), PgEventStore::from_pool(session))
}

/// Calls of `append_events` by the session so far.
async fn function_calls(session: &PgPool) -> i64 {
    support::stats::flush(session).await;
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions \
          WHERE schemaname = current_schema() AND funcname = 'append_events'",
    )
    .fetch_one(session)
    .await
    .expect("read statistics")
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn one_event_appends_on_store_sessions_never_call_the_function(pool: PgPool) {
    let (session, store) = counting_store(&pool, true).await;
    let long = stream("fast");
    for n in 0..10 {
        let r = store
            .append(&stream("fast"), ExpectedVersion::NoStream, &events(1))
            .await
            .expect("new stream");
        assert_eq!((r.first_version, r.last_version), (v(1), v(1)));
        let expected = if n == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(v(n))
        };
        let r = store
            .append(&long, expected, &events(1))
            .await
            .expect("next event");
        assert_eq!((r.first_version, r.last_version), (v(n + 1), v(n + 1)));
        assert!(!r.already_appended);
    }
    assert_eq!(
        function_calls(&session).await,
        0,
        "every append took the fast path"
    );
    assert_eq!(store.stream_version(&long).await.expect("version"), v(10));

    // Every other outcome is the function's to find: one call each.
    let batch = events(1);
    let stored = store
        .append(&long, ExpectedVersion::Exact(v(10)), &batch)
        .await
        .expect("append");
    let retry = store
        .append(&long, ExpectedVersion::Exact(v(10)), &batch)
        .await
        .expect("idempotent retry");
    assert!(retry.already_appended, "{retry:?}");
    assert_eq!(retry.cursor, stored.cursor);
    assert_eq!(function_calls(&session).await, 1);
    let conflict = store
        .append(&long, ExpectedVersion::Exact(v(3)), &events(1))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { actual, .. }) if actual == v(11)),
        "{conflict:?}"
    );
    let elsewhere = store
        .append(&stream("fast"), ExpectedVersion::NoStream, &batch)
        .await;
    assert!(
        matches!(elsewhere, Err(StoreError::DuplicateEventId { .. })),
        "{elsewhere:?}"
    );
    assert_eq!(function_calls(&session).await, 3);
    // A looser expectation always goes to the function.
    store
        .append(&long, ExpectedVersion::Any, &events(1))
        .await
        .expect("any version");
    store
        .append(&long, ExpectedVersion::StreamExists, &events(1))
        .await
        .expect("stream exists");
    assert_eq!(function_calls(&session).await, 5);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn owned_batches_take_the_fast_path_and_refusals_the_function(pool: PgPool) {
    let (session, store) = counting_store(&pool, true).await;
    let id = stream("batch");
    let first = store
        .append(&id, ExpectedVersion::NoStream, &events(100))
        .await
        .expect("new stream");
    assert_eq!((first.first_version, first.last_version), (v(1), v(100)));
    let next = store
        .append(&id, ExpectedVersion::Exact(v(100)), &events(3))
        .await
        .expect("next batch");
    assert_eq!((next.first_version, next.last_version), (v(101), v(103)));
    assert_eq!(
        function_calls(&session).await,
        0,
        "both batches took the fast path"
    );
    // The cursor is the last event's, and the feed holds the batch in version order.
    let (tx, pos, versions): (i64, i64, Vec<i64>) = sqlx::query_as(
        "SELECT max(transaction_id::text::bigint), max(global_position), \
                array_agg(version ORDER BY transaction_id, global_position) \
           FROM events WHERE stream_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&pool)
    .await
    .expect("rows");
    assert_eq!(versions, (1..=103).collect::<Vec<i64>>());
    assert_eq!(
        (next.cursor.transaction(), next.cursor.position()),
        (
            u64::try_from(tx).expect("tx"),
            u64::try_from(pos).expect("pos")
        )
    );
    let row: (i64, i64) = sqlx::query_as(
        "SELECT version, (SELECT count(*) FROM events WHERE stream_id = $1) FROM streams WHERE stream_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&pool)
    .await
    .expect("stream row");
    assert_eq!(row, (103, 103));

    // Refusals write nothing and are the function's to report: a retry, a conflict, and
    // a later event's id stored elsewhere (the statement raised and undid itself).
    let batch = events(5);
    store
        .append(&id, ExpectedVersion::Exact(v(103)), &batch)
        .await
        .expect("append");
    let retry = store
        .append(&id, ExpectedVersion::Exact(v(103)), &batch)
        .await
        .expect("idempotent retry");
    assert!(retry.already_appended, "{retry:?}");
    assert_eq!(function_calls(&session).await, 1);
    let conflict = store
        .append(&id, ExpectedVersion::Exact(v(50)), &events(2))
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "{conflict:?}"
    );
    let mut mixed = events(2);
    mixed.push(batch[3].clone());
    let other = stream("batch");
    let dup = store
        .append(&other, ExpectedVersion::NoStream, &mixed)
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateEventId { .. })),
        "{dup:?}"
    );
    assert_eq!(
        store.stream_version(&other).await.expect("version"),
        Version::ZERO
    );
    let dup = store
        .append(&id, ExpectedVersion::Exact(v(108)), &mixed)
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateEventId { .. })),
        "{dup:?}"
    );
    assert_eq!(store.stream_version(&id).await.expect("version"), v(108));
    assert_eq!(function_calls(&session).await, 4);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn batches_in_a_callers_transaction_go_to_the_function(pool: PgPool) {
    // The batch statement raises on an id stored elsewhere, which would abort the caller's
    // transaction: in one, batches are the function's, which never raises on a refusal.
    let (session, store) = counting_store(&pool, true).await;
    let stored = events(2);
    store
        .append(&stream("tx"), ExpectedVersion::NoStream, &stored)
        .await
        .expect("stored");
    let mut tx = session.begin().await.expect("begin");
    let mut mixed = events(1);
    mixed.push(stored[1].clone());
    let dup = store
        .append_in(&mut tx, &stream("tx"), ExpectedVersion::NoStream, &mixed)
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateEventId { .. })),
        "{dup:?}"
    );
    let id = stream("tx");
    store
        .append_in(&mut tx, &id, ExpectedVersion::NoStream, &events(3))
        .await
        .expect("the transaction is still usable");
    tx.commit().await.expect("commit");
    assert_eq!(store.stream_version(&id).await.expect("version"), v(3));
    assert_eq!(function_calls(&session).await, 2);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_callers_pool_takes_the_fast_path_only_for_new_streams(pool: PgPool) {
    // Without `enable_seqscan = off` a session may plan the stream row's lookup as a
    // sequential scan (tests/plans.rs), which the function is proof against and the fast
    // path for existing streams is not: so only the plan-proof statement is used.
    let (session, store) = counting_store(&pool, false).await;
    let id = stream("fast");
    store
        .append(&id, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("new stream");
    assert_eq!(function_calls(&session).await, 0);
    store
        .append(&id, ExpectedVersion::Exact(v(1)), &events(1))
        .await
        .expect("next event");
    assert_eq!(function_calls(&session).await, 1);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn racing_fast_appends_keep_the_stream_row_and_its_events_in_step(pool: PgPool) {
    // Many connections extend one stream at once, each expecting the version it read and
    // retrying on a conflict, on store sessions (fast path) and on a caller's pool
    // (the function) at the same time.
    let fast = {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("enable_seqscan", "off")]);
        PgEventStore::from_pool(
            PgPoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .expect("connect"),
        )
    };
    let plain = PgEventStore::from_pool(pool.clone());
    let id = stream("race");
    const TASKS: usize = 12;
    const EACH: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = if t % 3 == 0 {
            plain.clone()
        } else {
            fast.clone()
        };
        let id = id.clone();
        tasks.spawn(async move {
            let mut won = 0;
            let mut conflicts = 0;
            while won < EACH {
                let current = store.stream_version(&id).await.expect("version");
                let expected = if current == Version::ZERO {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(current)
                };
                match store.append(&id, expected, &events(1)).await {
                    Ok(r) => {
                        assert_eq!(r.first_version.get(), current.get() + 1, "{r:?}");
                        won += 1;
                    }
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("task {t}: {e}"),
                }
            }
            conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(done) = tasks.join_next().await {
        conflicts += done.expect("task");
    }
    let total = u64::try_from(TASKS * EACH).expect("small");
    assert_eq!(plain.stream_version(&id).await.expect("version"), v(total));
    let (count, max, distinct): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), max(version), count(DISTINCT version) FROM events WHERE stream_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&pool)
    .await
    .expect("events");
    assert_eq!(
        (count, max, distinct),
        (total as i64, total as i64, total as i64)
    );
    // The feed shows the stream's events in version order (the order guard held).
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM events WHERE stream_id = $1 ORDER BY transaction_id, global_position",
    )
    .bind(id.as_str())
    .fetch_all(&pool)
    .await
    .expect("feed order");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    eprintln!("{conflicts} conflicts among {TASKS} tasks");
}
