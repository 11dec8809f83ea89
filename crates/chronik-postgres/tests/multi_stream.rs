//! Multi-stream appends on PostgreSQL beyond the conformance suite: inside a caller's
//! transaction (refusals leave it usable), the feed-order guard on every stream, and the
//! owned append's retry when a later stream's lock was taken by a newer transaction.

use chronik_core::{ExpectedVersion, StreamId, Version};
use chronik_postgres::{PgEventStore, PgStoreConfig};
use chronik_store::{EventStore, StoreError, StreamAppend};
use chronik_testkit::conformance::{events, stream};
use futures::TryStreamExt;
use sqlx::PgPool;

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

async fn versions(store: &PgEventStore, id: &StreamId) -> Vec<u64> {
    store
        .read_stream(id, Version::ZERO)
        .try_collect::<Vec<_>>()
        .await
        .expect("read")
        .iter()
        .map(|e| e.version.get())
        .collect()
}

/// Waits until a session running `append_streams` in this test's database is blocked on a
/// lock (polled). Only this database: the other tests of this binary run at the same time
/// in databases of their own, with multi-stream appends waiting too.
async fn until_a_multi_stream_append_waits(pool: &PgPool) {
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                             WHERE wait_event_type = 'Lock' AND query LIKE '%append_streams(%' \
                               AND pid <> pg_backend_pid() AND datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// A transaction that wrote first holds an older id; a newer one commits to `b`; the
/// multi-stream append in the older one is refused for `b` with `TransactionOrder`, nothing
/// of it is written (not `a` either), and the transaction is still usable: its first write
/// commits.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_order_guard_holds_for_every_stream_and_leaves_the_transaction_usable(pool: PgPool) {
    let store = PgEventStore::from_pool(pool);
    let (first, a, b) = (stream("account"), stream("account"), stream("account"));
    let mut tx = store.begin().await.expect("begin");
    tx.append(&first, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("first write: the transaction now has its id");
    store
        .append(&b, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("a newer transaction commits to b");
    let refused = tx
        .append_streams(&[
            StreamAppend::new(a.clone(), ExpectedVersion::NoStream, events(1)),
            StreamAppend::new(b.clone(), ExpectedVersion::Exact(v(1)), events(1)),
        ])
        .await;
    assert!(
        matches!(refused, Err(StoreError::TransactionOrder { ref stream }) if *stream == b),
        "{refused:?}"
    );
    assert!(!tx.is_aborted());
    let conflict = tx
        .append_streams(&[
            StreamAppend::new(a.clone(), ExpectedVersion::Exact(v(4)), events(1)),
            StreamAppend::new(first.clone(), ExpectedVersion::Exact(v(1)), events(1)),
        ])
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflicts { ref conflicts }) if conflicts.len() == 1 && conflicts[0].stream == a),
        "{conflict:?}"
    );
    let results = tx
        .append_streams(&[StreamAppend::new(
            first.clone(),
            ExpectedVersion::Exact(v(1)),
            events(2),
        )])
        .await
        .expect("a later multi-stream append in the same transaction");
    assert_eq!(results[0].last_version, v(3));
    tx.commit().await.expect("commit");
    assert_eq!(versions(&store, &first).await, [1, 2, 3]);
    assert!(versions(&store, &a).await.is_empty(), "a was never written");
    assert_eq!(versions(&store, &b).await, [1]);
}

/// The owned append meets the guard on its second stream: it took its transaction id on
/// `a` (waiting there for another transaction's first event of `a`), and meanwhile a newer
/// transaction committed to `b`. With no retries it is refused and writes nothing; by
/// default it is re-run in a new transaction and lands on both streams.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn an_owned_multi_stream_append_behind_a_newer_writer_is_retried(pool: PgPool) {
    for retries in [0, 5] {
        let config = PgStoreConfig {
            transaction_order_retries: retries,
            ..PgStoreConfig::default()
        };
        let store = PgEventStore::from_pool_with(pool.clone(), &config);
        // Stream ids sort "a" before "b": `append_streams` takes a first.
        let a: StreamId = format!("account-a{}", uuid::Uuid::new_v4())
            .parse()
            .expect("id");
        let b: StreamId = format!("account-b{}", uuid::Uuid::new_v4())
            .parse()
            .expect("id");
        let mut holder = store.begin().await.expect("begin");
        holder
            .append(&a, ExpectedVersion::NoStream, &events(1))
            .await
            .expect("holder creates a, uncommitted");
        let multi = {
            let (store, a, b) = (store.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                store
                    .append_streams(&[
                        StreamAppend::new(b, ExpectedVersion::Any, events(1)),
                        StreamAppend::new(a, ExpectedVersion::Any, events(1)),
                    ])
                    .await
            })
        };
        until_a_multi_stream_append_waits(&pool).await;
        store
            .append(&b, ExpectedVersion::NoStream, &events(1))
            .await
            .expect("a newer transaction commits to b");
        holder.commit().await.expect("holder commits a");
        let result = multi.await.expect("task");
        if retries == 0 {
            assert!(
                matches!(result, Err(StoreError::TransactionOrder { ref stream }) if *stream == b),
                "{result:?}"
            );
            assert_eq!(
                versions(&store, &a).await,
                [1],
                "nothing of the refused append"
            );
            assert_eq!(versions(&store, &b).await, [1]);
        } else {
            let results = result.expect("retried in a new transaction");
            assert_eq!(
                results.iter().map(|r| r.last_version).collect::<Vec<_>>(),
                [v(2), v(2)],
                "parts in the order given: b, then a"
            );
            assert_eq!(versions(&store, &a).await, [1, 2]);
            assert_eq!(versions(&store, &b).await, [1, 2]);
        }
    }
}

/// How many sessions running `append_streams` are blocked on a lock.
async fn multi_stream_appends_waiting(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE wait_event_type = 'Lock' AND query LIKE '%append_streams(%' \
            AND pid <> pg_backend_pid() AND datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

/// Two multi-stream appends never trip each other's order guard, even with no retries:
/// the first takes every stream's lock before its transaction has an id, so the second,
/// which shares `b` with it, waits for it instead of committing to `b` with a newer id
/// in between (the conformance suite's opposite-order race failed this way).
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn multi_stream_appends_sharing_a_stream_never_trip_each_others_order_guard(pool: PgPool) {
    let config = PgStoreConfig {
        transaction_order_retries: 0,
        ..PgStoreConfig::default()
    };
    let store = PgEventStore::from_pool_with(pool.clone(), &config);
    let a: StreamId = format!("account-a{}", uuid::Uuid::new_v4())
        .parse()
        .expect("id");
    let b: StreamId = format!("account-b{}", uuid::Uuid::new_v4())
        .parse()
        .expect("id");
    let c: StreamId = format!("account-c{}", uuid::Uuid::new_v4())
        .parse()
        .expect("id");
    let mut holder = store.begin().await.expect("begin");
    holder
        .append(&a, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("holder creates a, uncommitted");
    let first = {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            store
                .append_streams(&[
                    StreamAppend::new(a, ExpectedVersion::Any, events(1)),
                    StreamAppend::new(b, ExpectedVersion::Any, events(1)),
                ])
                .await
        })
    };
    until_a_multi_stream_append_waits(&pool).await;
    let second = {
        let (store, b, c) = (store.clone(), b.clone(), c.clone());
        tokio::spawn(async move {
            store
                .append_streams(&[
                    StreamAppend::new(c, ExpectedVersion::Any, events(1)),
                    StreamAppend::new(b, ExpectedVersion::Any, events(1)),
                ])
                .await
        })
    };
    // The second either waits for the first (the fix) or commits to b at once (the bug).
    while !second.is_finished() && multi_stream_appends_waiting(&pool).await < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    holder.commit().await.expect("holder commits a");
    let first = first.await.expect("task");
    let second = second.await.expect("task");
    assert!(first.is_ok(), "first: {first:?}");
    assert!(second.is_ok(), "second: {second:?}");
    assert_eq!(versions(&store, &a).await, [1, 2]);
    assert_eq!(versions(&store, &b).await, [1, 2]);
    assert_eq!(versions(&store, &c).await, [1]);
}
