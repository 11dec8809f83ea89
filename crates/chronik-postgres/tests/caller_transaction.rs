//! Appends inside a caller's transaction when they lose a race: every outcome leaves the
//! transaction usable, and nothing acknowledged in it is lost when it commits (issue 11,
//! defect 1).

use chronik_core::{ExpectedVersion, NewEvent, StreamId, Version};
use chronik_postgres::PgEventStore;
use chronik_postgres::RunnerBuilder as _;
use chronik_store::{AppendResult, EventStore, StoreError};
use chronik_testkit::conformance::{event, events, stream};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
}

/// Waits until session `pid` is blocked on a lock (a condition, polled; never a fixed
/// sleep standing in for it).
async fn until_blocked(pool: &PgPool, pid: i32) {
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) \
               FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

async fn read(store: &PgEventStore, id: &StreamId) -> Vec<chronik_core::RecordedEvent> {
    store
        .read_stream(id, Version::ZERO)
        .try_collect()
        .await
        .expect("read")
}

/// Runs `append_in` on `tx` in a task of its own, so that it can block while the test
/// goes on; the transaction comes back with the result.
fn append_in_background(
    store: &PgEventStore,
    mut tx: Transaction<'static, Postgres>,
    stream: StreamId,
    expected: ExpectedVersion,
    batch: Vec<NewEvent>,
) -> tokio::task::JoinHandle<(
    Transaction<'static, Postgres>,
    Result<AppendResult, StoreError>,
)> {
    let store = store.clone();
    tokio::spawn(async move {
        let r = store.append_in(&mut tx, &stream, expected, &batch).await;
        (tx, r)
    })
}

/// The reproduction. T1 appends `e` to order-a and stays open. T2 appends `f` to
/// order-c, then `e` to order-b, which blocks on T1's unique key. T1 commits. T2 must be
/// told `DuplicateEventId` (where `e` is), and its commit must store `f`; when T2 appends
/// again after the refusal, that works too and is stored as well.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_duplicate_found_by_a_race_leaves_the_transaction_usable(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    for (shape, append_after) in [
        ("single event", false),
        ("single event", true),
        ("raced id first of two", false),
        ("raced id second of two", true),
    ] {
        let (a, b, c, d) = (
            stream("order"),
            stream("order"),
            stream("order"),
            stream("order"),
        );
        let e = event("OrderPlaced", json!({ "shape": shape }));
        let f = events(1);
        let g = events(1);
        let raced = match shape {
            "single event" => vec![e.clone()],
            "raced id first of two" => vec![e.clone(), event("Extra", json!({}))],
            _ => vec![event("Extra", json!({})), e.clone()],
        };

        let mut t1 = pool.begin().await.expect("begin t1");
        store
            .append_in(
                &mut t1,
                &a,
                ExpectedVersion::NoStream,
                std::slice::from_ref(&e),
            )
            .await
            .expect("t1 appends e");
        let mut t2 = pool.begin().await.expect("begin t2");
        store
            .append_in(&mut t2, &c, ExpectedVersion::NoStream, &f)
            .await
            .expect("t2 appends f");
        let pid = backend_pid(&mut t2).await;
        let blocked = append_in_background(&store, t2, b.clone(), ExpectedVersion::NoStream, raced);
        until_blocked(&pool, pid).await;
        t1.commit().await.expect("t1 commits");
        let (mut t2, r) = blocked.await.expect("task");
        match r {
            Err(StoreError::DuplicateEventId {
                event_id,
                stream,
                version,
            }) => {
                assert_eq!(
                    (event_id, &stream, version),
                    (e.event_id(), &a, v(1)),
                    "{shape}"
                );
            }
            other => panic!("{shape}: expected DuplicateEventId, got {other:?}"),
        }
        // Still usable: another append in it succeeds, and the commit keeps everything.
        if append_after {
            store
                .append_in(&mut t2, &d, ExpectedVersion::NoStream, &g)
                .await
                .unwrap_or_else(|err| panic!("{shape}: t2 is not usable after the refusal: {err}"));
        }
        t2.commit().await.expect("t2 commits");
        assert_eq!(
            read(&store, &c).await.len(),
            1,
            "{shape}: f was acknowledged, then lost"
        );
        assert_eq!(
            read(&store, &d).await.len(),
            usize::from(append_after),
            "{shape}: g was acknowledged, then lost"
        );
        assert!(
            read(&store, &b).await.is_empty(),
            "{shape}: the refused append wrote"
        );
        assert_eq!(
            store.stream_version(&b).await.expect("version"),
            Version::ZERO,
            "{shape}: the refused append left a stream behind"
        );
    }
}

/// The same race when the holder rolls back: the blocked append then goes in.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_race_whose_winner_rolls_back_appends(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let (a, b) = (stream("order"), stream("order"));
    let e = event("OrderPlaced", json!({}));
    let mut t1 = pool.begin().await.expect("begin t1");
    store
        .append_in(
            &mut t1,
            &a,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&e),
        )
        .await
        .expect("t1 appends e");
    let mut t2 = pool.begin().await.expect("begin t2");
    let pid = backend_pid(&mut t2).await;
    let blocked = append_in_background(
        &store,
        t2,
        b.clone(),
        ExpectedVersion::NoStream,
        vec![event("Extra", json!({})), e.clone()],
    );
    until_blocked(&pool, pid).await;
    t1.rollback().await.expect("t1 rolls back");
    let (t2, r) = blocked.await.expect("task");
    let r = r.expect("the id is free again: t2 appends");
    assert_eq!((r.first_version, r.last_version), (v(1), v(2)));
    t2.commit().await.expect("t2 commits");
    assert_eq!(read(&store, &b).await.len(), 2);
    assert!(read(&store, &a).await.is_empty());
}

/// An owned append that races with an open transaction holding the same id waits for it
/// and then answers precisely.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn an_owned_append_racing_a_held_id_answers_duplicate(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let (a, b) = (stream("order"), stream("order"));
    let e = event("OrderPlaced", json!({}));
    let mut t1 = pool.begin().await.expect("begin t1");
    store
        .append_in(
            &mut t1,
            &a,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&e),
        )
        .await
        .expect("t1 appends e");
    let owned = {
        let (store, b, e) = (store.clone(), b.clone(), e.clone());
        tokio::spawn(async move {
            store
                .append(&b, ExpectedVersion::Any, &[event("Extra", json!({})), e])
                .await
        })
    };
    // The pool hands the owned append some session: wait until one blocks (T1 does not).
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    t1.commit().await.expect("t1 commits");
    assert!(matches!(
        owned.await.expect("task"),
        Err(StoreError::DuplicateEventId { event_id, ref stream, version })
            if event_id == e.event_id() && *stream == a && version == v(1)
    ));
    assert!(read(&store, &b).await.is_empty());
}

/// Holds `stream`'s row lock in a transaction of its own (an append, left open).
async fn hold_stream(
    store: &PgEventStore,
    pool: &PgPool,
    stream: &StreamId,
) -> Transaction<'static, Postgres> {
    let mut holder = pool.begin().await.expect("begin holder");
    store
        .append_in(&mut holder, stream, ExpectedVersion::Any, &events(1))
        .await
        .expect("holder appends");
    holder
}

/// A backend error inside a caller's transaction (here a lock timeout) is reported as
/// `TransactionAborted`, and the transaction really is aborted: the error cannot be
/// mistaken for a refusal that leaves it usable.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_backend_error_in_a_caller_transaction_says_it_aborted_it(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let (held, mine) = (stream("order"), stream("order"));
    let holder = hold_stream(&store, &pool, &held).await;
    let mut tx = pool.begin().await.expect("begin");
    store
        .append_in(&mut tx, &mine, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("first append");
    sqlx::query("SET LOCAL lock_timeout = '20ms'")
        .execute(&mut *tx)
        .await
        .expect("lock timeout");
    let err = store
        .append_in(&mut tx, &held, ExpectedVersion::Any, &events(1))
        .await
        .expect_err("the row is locked");
    assert!(err.is_transaction_aborted(), "{err:?}");
    assert!(err.is_retryable(), "a lock timeout may pass: {err}");
    assert!(
        err.to_string().contains("roll it back"),
        "the message says what to do: {err}"
    );
    let next = sqlx::query("SELECT 1").execute(&mut *tx).await;
    assert!(
        next.is_err(),
        "PostgreSQL aborted the transaction, as the error says"
    );
    drop(tx);
    holder.commit().await.expect("holder commits");
    assert!(read(&store, &mine).await.is_empty());
}

/// chronik's transaction refuses to commit once an append reported it aborted: the commit
/// is an error, later appends are refused unsent, and nothing of it is stored.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_chronik_transaction_refuses_to_commit_once_aborted(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let (held, mine, later) = (stream("order"), stream("order"), stream("order"));
    let holder = hold_stream(&store, &pool, &held).await;
    let mut tx = store.begin().await.expect("begin");
    tx.append(&mine, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("first append");
    sqlx::query("SET LOCAL lock_timeout = '20ms'")
        .execute(&mut *tx)
        .await
        .expect("lock timeout");
    let err = tx
        .append(&held, ExpectedVersion::Any, &events(1))
        .await
        .expect_err("the row is locked");
    assert!(err.is_transaction_aborted(), "{err:?}");
    assert!(tx.is_aborted());
    let refused = tx
        .append(&later, ExpectedVersion::NoStream, &events(1))
        .await
        .expect_err("an aborted transaction takes no more appends");
    assert!(refused.is_transaction_aborted(), "{refused:?}");
    let commit = tx.commit().await.expect_err("the commit is refused");
    assert!(commit.is_transaction_aborted(), "{commit:?}");
    holder.commit().await.expect("holder commits");
    assert!(read(&store, &mine).await.is_empty());
    assert!(read(&store, &later).await.is_empty());
}

/// A statement of the caller's own that fails, and whose error the caller ignores, aborts
/// the transaction too: chronik's transaction finds out at commit and refuses.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_chronik_transaction_refuses_to_commit_after_an_ignored_error(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let mine = stream("order");
    let mut tx = store.begin().await.expect("begin");
    tx.append(&mine, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("append");
    let ignored = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
    assert!(ignored.is_err());
    let commit = tx.commit().await.expect_err("the commit is refused");
    assert!(commit.is_transaction_aborted(), "{commit:?}");
    assert!(commit.to_string().contains("not committed"), "{commit}");
    assert!(read(&store, &mine).await.is_empty());

    // Used directly without an error, it commits (after asking the server).
    let mut tx = store.begin().await.expect("begin");
    tx.append(&mine, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append");
    sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .expect("own statement");
    tx.commit().await.expect("commit");
    assert_eq!(read(&store, &mine).await.len(), 1);
}

/// Every refusal leaves chronik's transaction usable and committable, with what it did
/// before and after the refusals.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn refusals_leave_a_chronik_transaction_usable(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let (a, b, committed) = (stream("order"), stream("order"), stream("order"));
    let stored = events(1);
    store
        .append(&committed, ExpectedVersion::NoStream, &stored)
        .await
        .expect("stored before");
    let reused = vec![
        chronik_core::NewEvent::new(
            stored[0].event_id(),
            stored[0].event_type().clone(),
            stored[0].schema_version(),
            json!({ "other": "content" }),
            stored[0].metadata().clone(),
        )
        .expect("event"),
    ];
    let mut tx = store.begin().await.expect("begin");
    tx.append(&a, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("append to a");
    let conflict = tx.append(&a, ExpectedVersion::NoStream, &events(1)).await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { actual, .. }) if actual == v(2)),
        "{conflict:?}"
    );
    let duplicate = tx.append(&b, ExpectedVersion::NoStream, &stored).await;
    assert!(
        matches!(duplicate, Err(StoreError::DuplicateEventId { ref stream, .. }) if *stream == committed),
        "{duplicate:?}"
    );
    let reuse = tx
        .append(&committed, ExpectedVersion::NoStream, &reused)
        .await;
    assert!(
        matches!(reuse, Err(StoreError::EventIdReused { event_id, .. }) if event_id == stored[0].event_id()),
        "{reuse:?}"
    );
    assert!(!tx.is_aborted());
    tx.append(&b, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append to b after the refusals");
    tx.commit().await.expect("commit");
    assert_eq!(read(&store, &a).await.len(), 2);
    assert_eq!(read(&store, &b).await.len(), 1);
    assert_eq!(
        read(&store, &committed).await[0].payload,
        *stored[0].payload()
    );
}

/// A projection whose handler, for one event, runs a failing statement and ignores the
/// error (until told to stop), and otherwise records every event it applies.
struct Careless {
    swallow: chronik_core::EventId,
    careless: std::sync::atomic::AtomicBool,
    /// After ignoring the error, run another statement (which PostgreSQL refuses).
    goes_on: bool,
}

impl chronik_postgres::PgProjection for Careless {
    fn name(&self) -> &str {
        "careless"
    }

    async fn handle(
        &self,
        tx: &mut chronik_postgres::PgTransaction,
        event: &chronik_core::RecordedEvent,
    ) -> Result<(), chronik_postgres::HandlerError> {
        if event.event_id == self.swallow && self.careless.load(std::sync::atomic::Ordering::SeqCst)
        {
            let ignored = sqlx::query("SELECT 1 / 0").execute(&mut **tx).await;
            assert!(ignored.is_err());
            if self.goes_on {
                sqlx::query("SELECT 1").execute(&mut **tx).await?;
            }
            return Ok(());
        }
        sqlx::query("INSERT INTO careless_applied (event_id) VALUES ($1)")
            .bind(event.event_id.as_uuid())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn clear(
        &self,
        tx: &mut chronik_postgres::PgTransaction,
    ) -> Result<(), chronik_postgres::HandlerError> {
        sqlx::query("DELETE FROM careless_applied")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The projection handlers' transaction: a handler that ignores a failed statement cannot
/// make its batch commit (the runner's checkpoint write in the aborted transaction fails),
/// so no event is skipped: once the handler behaves, every event is applied exactly once.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_handler_that_ignores_an_error_never_commits_its_batch(pool: PgPool) {
    use chronik_store::CheckpointStore as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    sqlx::query("CREATE TABLE careless_applied (event_id uuid PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("table");
    let store = PgEventStore::from_pool(pool.clone());
    let mut last = None;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let batch = events(2);
        ids.extend(batch.iter().map(NewEvent::event_id));
        let r = store
            .append(&stream("order"), ExpectedVersion::NoStream, &batch)
            .await
            .expect("append");
        last = Some(r.cursor);
    }
    let last = last.expect("appended");
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .expect("visible");
    let projection = std::sync::Arc::new(Careless {
        swallow: ids[5],
        careless: AtomicBool::new(true),
        goes_on: false,
    });
    let handle = chronik_postgres::PgProjectionRunner::new(store.clone(), projection.clone())
        .with_options(chronik_postgres::RunnerOptions {
            batch_size: 4,
            retry_base: std::time::Duration::from_millis(5),
            retry_max: std::time::Duration::from_millis(20),
            ..chronik_postgres::RunnerOptions::default()
        })
        .spawn()
        .expect("spawn");
    // The careless batch is tried again and again; count the attempts in the database,
    // where every try leaves a failed transaction behind (xact_rollback moves).
    let rollbacks = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .expect("stats")
    };
    let before = rollbacks().await;
    while rollbacks().await < before + 5 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let checkpoint = store
        .load_checkpoint("careless")
        .await
        .expect("checkpoint")
        .map(|c| c.cursor);
    let applied: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM careless_applied")
        .fetch_all(&pool)
        .await
        .expect("applied");
    assert!(
        !applied.contains(&ids[5].as_uuid()) && applied.len() <= 5,
        "nothing at or after the careless event was committed: {applied:?}"
    );
    let feed: Vec<_> = store
        .read_feed(
            chronik_core::FeedCursor::START,
            &chronik_store::FeedFilter::all(),
            100,
        )
        .await
        .expect("feed")
        .events;
    assert!(
        checkpoint.is_none_or(|c| c < feed[5].cursor),
        "the checkpoint did not pass the careless event: {checkpoint:?}"
    );
    projection.careless.store(false, Ordering::SeqCst);
    loop {
        let c = store.load_checkpoint("careless").await.expect("checkpoint");
        if c.is_some_and(|c| c.cursor == last) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    handle.stop().await.expect("stopped");
    let mut applied: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM careless_applied")
        .fetch_all(&pool)
        .await
        .expect("applied");
    applied.sort();
    let mut all: Vec<uuid::Uuid> = ids.iter().map(chronik_core::EventId::as_uuid).collect();
    all.sort();
    assert_eq!(applied, all, "every event exactly once");
}

/// A handler that ignores a failed statement and goes on: the statement PostgreSQL then
/// refuses is not the cause, and the error the runner shows says where to look.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_refused_statement_after_an_ignored_error_says_so(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let batch = events(1);
    let r = store
        .append(&stream("order"), ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    store
        .wait_for_feed(r.cursor, std::time::Duration::from_secs(60))
        .await
        .expect("visible");
    let projection = std::sync::Arc::new(Careless {
        swallow: batch[0].event_id(),
        careless: std::sync::atomic::AtomicBool::new(true),
        goes_on: true,
    });
    let handle = chronik_postgres::PgProjectionRunner::new(store.clone(), projection)
        .spawn()
        .expect("spawn");
    let mut status = handle.subscribe("careless").expect("its status");
    let shown = status
        .wait_for(|s| s.last_error.is_some())
        .await
        .expect("a status")
        .last_error
        .clone()
        .unwrap_or_default();
    handle.stop().await.expect("stopped");
    assert!(
        shown.contains(
            "an earlier statement of the batch's transaction failed and the handler went on; \
             return that error from `handle` instead of ignoring it"
        ),
        "{shown}"
    );
}
