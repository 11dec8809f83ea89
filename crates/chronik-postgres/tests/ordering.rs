//! The feed's ordering guarantees on a real server: late commits are never skipped
//! (the feed is read by `(transaction_id, global_position)` below the oldest running
//! transaction) and feed order agrees with stream order (the `streams.last_xid` guard).

mod support;

use chronik_core::{EventId, ExpectedVersion, FeedCursor, Version};
use chronik_postgres::{HolderKind, PgEventStore};
use chronik_store::{EventStore, FeedFilter, StoreError};
use chronik_testkit::conformance::{events, stream};
use sqlx::{PgPool, Row};
use uuid::Uuid;

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

/// A naive reader, as hand-written stores do it: `global_position > checkpoint`, committed rows.
async fn naive_read(pool: &PgPool, checkpoint: i64) -> Vec<(i64, Uuid)> {
    sqlx::query(
        "SELECT global_position, event_id FROM events \
          WHERE global_position > $1 ORDER BY global_position",
    )
    .bind(checkpoint)
    .fetch_all(pool)
    .await
    .expect("naive read")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn ids(events: &[chronik_core::RecordedEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.event_id).collect()
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_late_commit_is_never_skipped(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let all = FeedFilter::all();

    // C commits first and is visible once older transactions in the cluster are done.
    let c_batch = events(1);
    let c = store
        .append(&stream("order"), ExpectedVersion::NoStream, &c_batch)
        .await
        .expect("append c");
    store
        .wait_for_feed(c.cursor, std::time::Duration::from_secs(60))
        .await
        .expect("wait");

    // A appends inside a transaction that stays open: older xid, smaller position.
    let a_batch = events(1);
    let mut tx_a = pool.begin().await.expect("begin a");
    let a = store
        .append_in(
            &mut tx_a,
            &stream("order"),
            ExpectedVersion::NoStream,
            &a_batch,
        )
        .await
        .expect("append a");
    // B appends and commits while A is open: newer xid, larger position.
    let b_batch = events(1);
    let b = store
        .append(&stream("order"), ExpectedVersion::NoStream, &b_batch)
        .await
        .expect("append b");
    assert!(a.cursor.position() < b.cursor.position(), "{a:?} {b:?}");
    assert!(
        a.cursor.transaction() < b.cursor.transaction(),
        "{a:?} {b:?}"
    );

    // The feed stops at A's horizon: neither A (uncommitted) nor B (committed) shows.
    let page = store
        .read_feed(FeedCursor::START, &all, 100)
        .await
        .expect("feed");
    assert_eq!(ids(&page.events), vec![c_batch[0].event_id()]);
    let reader = page.next;
    assert_eq!(reader, c.cursor);
    let head = store.feed_head().await.expect("head");
    assert_eq!((head.last, head.visible_events), (Some(c.cursor), 1));
    assert_eq!(store.count_after(reader).await.expect("count"), 0);

    // The naive reader sees B now and moves its checkpoint past A's position.
    let seen = naive_read(&pool, 0).await;
    assert_eq!(
        seen.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        vec![
            c_batch[0].event_id().as_uuid(),
            b_batch[0].event_id().as_uuid()
        ]
    );
    let naive_checkpoint = seen.last().expect("rows").0;

    tx_a.commit().await.expect("commit a");
    store
        .wait_for_feed(b.cursor, std::time::Duration::from_secs(60))
        .await
        .expect("wait");

    // ...and has skipped A for good: this is the bug the feed exists to prevent.
    let after = naive_read(&pool, naive_checkpoint).await;
    assert!(after.is_empty(), "the naive reader never gets A: {after:?}");

    // The feed reader, which had read everything it was shown, still gets A, then B.
    let page = store.read_feed(reader, &all, 100).await.expect("feed");
    assert_eq!(
        ids(&page.events),
        vec![a_batch[0].event_id(), b_batch[0].event_id()]
    );
    assert_eq!(page.next, b.cursor);
    assert_eq!(store.count_after(reader).await.expect("count"), 2);
    let head = store.feed_head().await.expect("head");
    assert_eq!((head.last, head.visible_events), (Some(b.cursor), 3));
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn an_append_behind_a_newer_commit_is_refused_and_a_retry_lands_in_order(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("order");
    store
        .append(&id, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("v1");
    sqlx::query("CREATE TABLE side_effects (n int)")
        .execute(&pool)
        .await
        .expect("side table");

    // The caller's transaction writes something first: it now holds an older xid...
    let mut t = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO side_effects VALUES (1)")
        .execute(&mut *t)
        .await
        .expect("write first");
    let t_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *t)
        .await
        .expect("xid");
    // ...than a transaction that appends v2 and commits meanwhile.
    let v2 = store
        .append(&id, ExpectedVersion::Exact(v(1)), &events(1))
        .await
        .expect("v2");
    assert!(
        u64::try_from(t_xid).expect("xid") < v2.cursor.transaction(),
        "were v3 written by T, the feed would order it before v2"
    );

    let late = events(1);
    let refused = store
        .append_in(&mut t, &id, ExpectedVersion::Exact(v(2)), &late)
        .await;
    match refused {
        Err(e @ StoreError::TransactionOrder { .. }) => assert!(e.is_retryable()),
        other => panic!("expected TransactionOrder, got {other:?}"),
    }
    // Nothing was written and the transaction is still usable; the unit of work is undone.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *t)
        .await
        .expect("count");
    assert_eq!(n, 2);
    t.rollback().await.expect("rollback");

    // Retried in a new transaction, appending first: accepted, and in order.
    let mut t2 = pool.begin().await.expect("begin");
    let v3 = store
        .append_in(&mut t2, &id, ExpectedVersion::Exact(v(2)), &late)
        .await
        .expect("retry");
    sqlx::query("INSERT INTO side_effects VALUES (1)")
        .execute(&mut *t2)
        .await
        .expect("then the other writes");
    t2.commit().await.expect("commit");
    assert_eq!(v3.last_version, v(3));
    assert!(v3.cursor > v2.cursor);

    let filter = FeedFilter {
        event_types: vec![],
        categories: vec!["order".into()],
    };
    let feed = support::whole_feed(&store, &filter).await;
    assert_eq!(
        feed.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "feed order agrees with stream order"
    );
    assert_eq!(feed[2].event_id, late[0].event_id());
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn appends_in_one_transaction_share_its_position_in_the_feed(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let (x, y) = (stream("order"), stream("invoice"));
    let mut t = pool.begin().await.expect("begin");
    let rx = store
        .append_in(&mut t, &x, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("x");
    let ry = store
        .append_in(&mut t, &y, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("y");
    // appending twice to one stream in one transaction is fine (same xid, not older)
    let rx2 = store
        .append_in(&mut t, &x, ExpectedVersion::Exact(v(2)), &events(1))
        .await
        .expect("x again");
    t.commit().await.expect("commit");
    assert_eq!(rx.cursor.transaction(), ry.cursor.transaction());
    assert_eq!(rx.cursor.transaction(), rx2.cursor.transaction());
    assert!(rx.cursor < ry.cursor && ry.cursor < rx2.cursor);
    let feed = support::whole_feed(&store, &FeedFilter::all()).await;
    assert_eq!(feed.len(), 4);
    assert!(feed.windows(2).all(|w| w[0].cursor < w[1].cursor));
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_transaction_holding_the_feed_back_is_named(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let mut t = pool.begin().await.expect("begin");
    let (pid, xid): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *t)
            .await
            .expect("pid");
    let r = store
        .append(&stream("order"), ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append");
    assert!(u64::try_from(xid).expect("xid") < r.cursor.transaction());
    assert!(store.feed_horizon().await.expect("horizon") <= u64::try_from(xid).expect("xid"));
    let holders = store.horizon_holders().await.expect("holders");
    let ours = holders
        .iter()
        .find(|h| h.pid == Some(pid))
        .expect("the open transaction is listed");
    assert_eq!(ours.kind, HolderKind::Session);
    assert_eq!(ours.xid, u64::try_from(xid).expect("xid"));
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .expect("user");
    assert_eq!(ours.user.as_deref(), Some(me.as_str()));
    assert_eq!(ours.gid, None);
    assert_eq!(
        ours.database.as_deref(),
        Some(current_database(&pool).await.as_str())
    );
    assert!(
        ours.detail.starts_with("idle in transaction"),
        "{}",
        ours.detail
    );
    // While it stays open, a bounded wait gives up with a typed error naming that pid.
    let waited = store
        .wait_for_feed(r.cursor, std::time::Duration::from_millis(300))
        .await;
    match &waited {
        Err(StoreError::FeedTimeout {
            target,
            horizon,
            held_back_by: Some(by),
        }) => {
            assert_eq!(*target, r.cursor);
            assert!(*horizon <= u64::try_from(xid).expect("xid"));
            // Another test's older transaction may be the blocker in a shared cluster;
            // when ours is the horizon, ours is the one named.
            if *horizon == u64::try_from(xid).expect("xid") {
                assert!(by.contains(&format!("pid {pid}")), "{by}");
            }
            let message = waited.as_ref().unwrap_err().to_string();
            assert!(message.contains("pg_terminate_backend"), "{message}");
        }
        other => panic!("expected a feed timeout naming pid {pid}, got {other:?}"),
    }
    t.commit().await.expect("commit");
    store
        .wait_for_feed(r.cursor, std::time::Duration::from_secs(60))
        .await
        .expect("visible once it ends");
    assert!(
        !store
            .horizon_holders()
            .await
            .expect("holders")
            .iter()
            .any(|h| h.pid == Some(pid) && h.xid == u64::try_from(xid).expect("xid"))
    );
}

/// A session's backend pid and, after `sql` (a write), its 64-bit transaction id.
async fn write_on(conn: &mut sqlx::PgConnection, sql: &str) -> (i32, u64) {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .expect("write");
    let (pid, xid): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *conn)
            .await
            .expect("pid and xid");
    (pid, u64::try_from(xid).expect("xid"))
}

/// Issue 11, reproduction A: L opens first but writes last, so E's transaction id is the
/// older one and E pins the horizon. The holders are listed by transaction id, so E comes
/// first and is the one marked as the blocker (the age of the transaction is irrelevant).
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_blocker_is_the_oldest_transaction_id_not_the_oldest_transaction(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    sqlx::query("CREATE TABLE probe (x int)")
        .execute(&pool)
        .await
        .expect("probe table");
    let mut l = pool.begin().await.expect("begin l");
    sqlx::query("SELECT 1")
        .execute(&mut *l)
        .await
        .expect("l reads");
    let mut e = pool.begin().await.expect("begin e");
    let (e_pid, e_xid) = write_on(&mut e, "INSERT INTO probe VALUES (1)").await;
    let (l_pid, l_xid) = write_on(&mut l, "INSERT INTO probe VALUES (2)").await;
    assert!(e_xid < l_xid);
    let holders = store.horizon_holders().await.expect("holders");
    let at = |pid| {
        holders
            .iter()
            .position(|h| h.pid == Some(pid))
            .unwrap_or_else(|| panic!("pid {pid} is listed: {holders:#?}"))
    };
    let (e_at, l_at) = (at(e_pid), at(l_pid));
    assert!(e_at < l_at, "E, the older xid, comes first: {holders:#?}");
    assert_eq!((holders[e_at].xid, holders[l_at].xid), (e_xid, l_xid));
    assert_ordered_with_one_blocker(&holders, e_xid);

    e.rollback().await.expect("end e");
    let holders = store.horizon_holders().await.expect("holders");
    assert!(
        !holders.iter().any(|h| h.pid == Some(e_pid)),
        "{holders:#?}"
    );
    assert_ordered_with_one_blocker(&holders, l_xid);
    l.rollback().await.expect("end l");
}

/// Issue 11, reproduction B: P writes, S writes, P prepares. P's transaction id is the
/// older one, so the prepared transaction pins the horizon and is listed first, although
/// it was prepared after S began.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_prepared_transaction_with_the_oldest_xid_is_the_blocker(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    sqlx::query("CREATE TABLE probe (x int)")
        .execute(&pool)
        .await
        .expect("probe table");
    let gid = format!("chronik-test-{}", Uuid::new_v4());
    // Raw BEGIN: PREPARE TRANSACTION ends the transaction behind sqlx's back.
    let mut p = pool.acquire().await.expect("p");
    sqlx::query("BEGIN")
        .execute(&mut *p)
        .await
        .expect("begin p");
    let (_, p_xid) = write_on(&mut p, "INSERT INTO probe VALUES (1)").await;
    let mut s = pool.begin().await.expect("begin s");
    let (s_pid, s_xid) = write_on(&mut s, "INSERT INTO probe VALUES (2)").await;
    sqlx::query(sqlx::AssertSqlSafe(format!("PREPARE TRANSACTION '{gid}'")))
        .execute(&mut *p)
        .await
        .expect("prepare p");
    let holders = store.horizon_holders().await;
    // End both before asserting: a prepared transaction left behind would pause every
    // feed of the cluster and keep the test database from being dropped.
    sqlx::query(sqlx::AssertSqlSafe(format!("ROLLBACK PREPARED '{gid}'")))
        .execute(&mut *p)
        .await
        .expect("rollback prepared");
    s.rollback().await.expect("end s");
    let holders = holders.expect("holders");
    let prepared = holders
        .iter()
        .position(|h| h.kind == HolderKind::Prepared && h.detail.contains(&gid))
        .unwrap_or_else(|| panic!("the prepared transaction is listed: {holders:#?}"));
    let session = holders
        .iter()
        .position(|h| h.pid == Some(s_pid))
        .unwrap_or_else(|| panic!("S is listed: {holders:#?}"));
    assert!(
        prepared < session,
        "P, the older xid, comes first: {holders:#?}"
    );
    assert_eq!(
        (holders[prepared].xid, holders[session].xid),
        (p_xid, s_xid)
    );
    assert_ordered_with_one_blocker(&holders, p_xid);
    // Issue 14, item 6: who holds it, and the exact command that ends it, in its database.
    let db = current_database(&pool).await;
    let p = &holders[prepared];
    assert_eq!(p.gid.as_deref(), Some(gid.as_str()));
    assert_eq!(
        p.how_to_end(),
        format!("psql -d {db} -c \"ROLLBACK PREPARED '{gid}'\"")
    );
    assert!(p.user.is_some(), "{p:?}");
    let s = &holders[session];
    assert_eq!(
        s.how_to_end(),
        format!("SELECT pg_terminate_backend({s_pid})")
    );
    assert!(s.describe().contains(&s.how_to_end()), "{}", s.describe());
}

/// Holders strictly ascending by transaction id, and the first one, at or below
/// `at_most` (other tests' transactions may be older), is the only blocker.
fn assert_ordered_with_one_blocker(holders: &[chronik_postgres::HorizonHolder], at_most: u64) {
    assert!(
        holders.windows(2).all(|w| w[0].xid < w[1].xid),
        "{holders:#?}"
    );
    assert!(holders[0].xid <= at_most, "{holders:#?}");
    let blockers: Vec<bool> = holders.iter().map(|h| h.blocker).collect();
    let mut expected = vec![false; holders.len()];
    expected[0] = true;
    assert_eq!(blockers, expected, "{holders:#?}");
}

async fn current_database(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await
        .expect("database")
}

/// Creating a stream is where an owned `Any` append can legitimately trip the order
/// guard: two creators take their transaction ids in one order and the new row's lock in
/// the other. The store retries that in a fresh transaction, so no caller ever sees it.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn concurrent_creators_with_any_all_succeed(pool: PgPool) {
    use chronik_postgres::PgStoreConfig;
    use std::sync::Arc;

    const CREATORS: usize = 6;
    const STREAMS: usize = 60;
    let race = |store: PgEventStore| async move {
        let mut order_errors = 0;
        let mut ids = Vec::new();
        for _ in 0..STREAMS {
            let id = Arc::new(stream("new"));
            let barrier = Arc::new(tokio::sync::Barrier::new(CREATORS));
            let handles: Vec<_> = (0..CREATORS)
                .map(|_| {
                    let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        store.append(&id, ExpectedVersion::Any, &events(1)).await
                    })
                })
                .collect();
            for h in handles {
                match h.await.expect("task") {
                    Ok(_) => {}
                    Err(StoreError::TransactionOrder { .. }) => order_errors += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            ids.push(id);
        }
        (order_errors, ids)
    };
    // Without the retry, callers see the error (how often depends on scheduling).
    let bare = PgStoreConfig {
        transaction_order_retries: 0,
        ..PgStoreConfig::default()
    };
    let (seen, _) = race(PgEventStore::from_pool_with(pool.clone(), &bare)).await;
    eprintln!(
        "order-guard trips without the retry: {seen} of {}",
        CREATORS * STREAMS
    );
    // With it (the default), every append succeeds and lands in order.
    let store = PgEventStore::from_pool(pool);
    let (seen, ids) = race(store.clone()).await;
    assert_eq!(seen, 0);
    for id in &ids {
        assert_eq!(
            store.stream_version(id).await.expect("version"),
            v(CREATORS as u64)
        );
    }
    let feed = support::whole_feed(&store, &FeedFilter::all()).await;
    let mut last = std::collections::HashMap::new();
    for e in &feed {
        let prev = last
            .insert(e.stream_id.clone(), e.version.get())
            .unwrap_or(0);
        assert_eq!(
            e.version.get(),
            prev + 1,
            "feed order agrees with stream order"
        );
    }
}
