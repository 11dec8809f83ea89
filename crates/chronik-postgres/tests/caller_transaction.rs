//! Appends inside a caller's transaction when they lose a race: every outcome leaves the
//! transaction usable, and nothing acknowledged in it is lost when it commits (issue 11,
//! defect 1).

use chronik_core::{ExpectedVersion, NewEvent, StreamId, Version};
use chronik_postgres::PgEventStore;
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
