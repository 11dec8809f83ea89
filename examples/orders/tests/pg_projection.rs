//! Exactly-once PostgreSQL read models (changes and checkpoint in one transaction) on a
//! real server: crashes mid-batch and between batches, concurrent writers with
//! transactions held open, two runners for one projection, a shadow rebuild that keeps
//! serving, lag, and parking.
// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronik::RunnerBuilder as _;
use chronik::postgres::{
    HandlerError, ParkedEvent, PgEventStore, PgProjection, PgProjectionRunner, PgTransaction,
    ProjectionState, ProjectionStatus, RunnerHandle, RunnerOptions, park_event, parked_events,
    projection_reports, rebuild, rebuild_shadow, wait_for_projection,
};
use chronik::{
    Aggregate, DomainEvent, EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent,
    RecordedEvent, StreamId, Version,
};
use chronik::{EventStore, FeedFilter};
use futures::TryStreamExt;
use orders::{
    LineAdded, Order, OrderCancelled, OrderEvent, OrderPlaced, OrderProjection, OrderShipped,
};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use uuid::Uuid;

/// Generous: the feed horizon is cluster-wide, so other sessions' open transactions can
/// delay visibility. Conditions are polled; nothing waits for a fixed time.
const DEADLINE: Duration = Duration::from_secs(90);

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 7,
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(50),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        standby_poll: Duration::from_millis(20),
        listen_channel: None,
        ..RunnerOptions::default()
    }
}

fn new_event(e: &OrderEvent) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new(e.event_type()).unwrap(),
        e.schema_version(),
        e.to_payload().unwrap(),
        Metadata::default(),
    )
    .unwrap()
}

/// The life of order `i`: placed, `i % 3` lines, then shipped, cancelled or left open.
fn script(i: usize) -> Vec<OrderEvent> {
    let n = i64::try_from(i).unwrap();
    let mut events = vec![OrderEvent::OrderPlaced(OrderPlaced {
        customer_id: format!("c-{}", i % 4),
        total_amount: 100 + n,
    })];
    for _ in 0..i % 3 {
        events.push(OrderEvent::LineAdded(LineAdded {
            sku: "sku".into(),
            quantity: 2,
            unit_price: 10 + n,
        }));
    }
    match i % 3 {
        0 => events.push(OrderEvent::OrderShipped(OrderShipped {
            carrier: "dhl".into(),
        })),
        1 => events.push(OrderEvent::OrderCancelled(OrderCancelled {
            reason: "changed mind".into(),
        })),
        _ => {}
    }
    events
}

/// Appends orders `from..to`, one event per append (many small transactions); returns
/// the last cursor.
async fn append_orders(store: &PgEventStore, from: usize, to: usize) -> FeedCursor {
    let mut last = FeedCursor::START;
    for i in from..to {
        let id = StreamId::new(format!("order-{i}")).unwrap();
        for (k, e) in script(i).iter().enumerate() {
            let expected = if k == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(Version::new(k as u64).unwrap())
            };
            last = store
                .append(&id, expected, &[new_event(e)])
                .await
                .unwrap()
                .cursor;
        }
    }
    last
}

type Row7 = (String, String, String, i64, i64, Option<String>, i64);

/// The read model as the domain's fold says it must be, from the events table.
async fn expected_model(store: &PgEventStore) -> Vec<Row7> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT stream_id FROM streams WHERE stream_type = 'order'")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let mut rows = Vec::new();
    for id in ids {
        let stream = StreamId::new(id.clone()).unwrap();
        let recorded: Vec<RecordedEvent> = store
            .read_stream(&stream, Version::ZERO)
            .try_collect()
            .await
            .unwrap();
        let events: Vec<OrderEvent> = recorded
            .iter()
            .map(|r| OrderEvent::from_payload(r.event_type.as_str(), r.payload.clone()).unwrap())
            .collect();
        let order = Order::replay(&events);
        rows.push((
            id,
            order.customer_id,
            order.status.as_str().to_owned(),
            order.total_amount,
            i64::try_from(order.lines).unwrap(),
            order.carrier,
            recorded.last().unwrap().version.as_i64(),
        ));
    }
    rows.sort();
    rows
}

async fn actual_model(pool: &PgPool) -> Vec<Row7> {
    let mut rows: Vec<Row7> = OrderProjection::new(&chronik::postgres::SchemaName::default())
        .all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.order_id,
                s.customer_id,
                s.status,
                s.total_amount,
                s.lines,
                s.carrier,
                s.version,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// `OrderProjection` plus an audit row per application (no unique key: a repeat shows),
/// with fault injection.
#[derive(Debug, Clone)]
struct Audited {
    inner: OrderProjection,
    calls: Arc<AtomicUsize>,
    /// Call number at which to hang (simulating a process that stops mid-work), and
    /// whether to hang after the event's writes (mid-batch) or before them.
    trip: Option<(usize, bool)>,
    tripped: Arc<Notify>,
    poison: Arc<Mutex<HashSet<EventId>>>,
    /// Events whose handler panics, after writing, this many more times.
    panics: Arc<Mutex<HashMap<EventId, usize>>>,
}

impl Audited {
    fn new(inner: OrderProjection) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            trip: None,
            tripped: Arc::default(),
            poison: Arc::default(),
            panics: Arc::default(),
        }
    }
}

impl chronik::postgres::ShadowProjection for Audited {
    fn table(&self) -> &str {
        self.inner.table()
    }

    fn with_table(&self, table: &str) -> Self {
        Self {
            inner: self.inner.with_table(table),
            ..self.clone()
        }
    }
}

async fn setup(pool: &PgPool) -> PgEventStore {
    sqlx::query(
        "CREATE TABLE applied (seq bigserial PRIMARY KEY, event_id uuid NOT NULL, \
         stream_id text NOT NULL, version bigint NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
    let store = PgEventStore::from_pool(pool.clone());
    // The read model's table is the example's own, not chronik's.
    OrderProjection::create_table(&store).await.unwrap();
    store
}

/// Makes the database itself check, at every commit that applies events, that the read
/// model's audit and the checkpoint moved together (a deferred constraint trigger runs
/// just before the commit, inside the transaction). An implementation that committed
/// effects and checkpoint separately would fail here on its first batch, whether or not
/// a crash happens to land in between.
async fn check_effects_commit_with_checkpoint(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE FUNCTION applied_matches_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF (SELECT count(*) FROM applied) <> (SELECT coalesce(sum(events_processed), 0) \
                 FROM projection_checkpoints WHERE name = 'orders') THEN \
             RAISE EXCEPTION 'read model and checkpoint disagree at commit'; \
           END IF; \
           RETURN NULL; \
         END $$; \
         CREATE CONSTRAINT TRIGGER applied_matches_checkpoint AFTER INSERT ON applied \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
           EXECUTE FUNCTION applied_matches_checkpoint();",
    )
    .execute(pool)
    .await
    .unwrap();
}

impl PgProjection for Audited {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn filter(&self) -> FeedFilter {
        self.inner.filter()
    }
    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.trip == Some((call, false)) {
            self.tripped.notify_one();
            std::future::pending::<()>().await;
        }
        if self.poison.lock().unwrap().contains(&event.event_id) {
            return Err(HandlerError::new("poison event"));
        }
        self.inner.handle(tx, event).await?;
        sqlx::query("INSERT INTO applied (event_id, stream_id, version) VALUES ($1, $2, $3)")
            .bind(event.event_id.as_uuid())
            .bind(event.stream_id.as_str())
            .bind(event.version.as_i64())
            .execute(&mut **tx)
            .await?;
        let panic_now = self
            .panics
            .lock()
            .unwrap()
            .get_mut(&event.event_id)
            .is_some_and(|left| {
                let now = *left > 0;
                *left = left.saturating_sub(1);
                now
            });
        assert!(!panic_now, "handler panics on {}", event.event_id);
        if self.trip == Some((call, true)) {
            self.tripped.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        self.inner.clear(tx).await?;
        sqlx::query("DELETE FROM applied")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn spawn(store: &PgEventStore, p: Audited) -> RunnerHandle {
    PgProjectionRunner::new(store.clone(), Arc::new(p))
        .with_options(options())
        .spawn()
        .unwrap()
}

/// The status of `h`'s one projection.
fn status_of(h: &RunnerHandle) -> ProjectionStatus {
    h.statuses().remove(0)
}

/// A live view of `h`'s one projection's status.
fn watch_one(h: &RunnerHandle) -> tokio::sync::watch::Receiver<ProjectionStatus> {
    h.subscribe(&status_of(h).name).unwrap()
}

/// Stops `h` and returns its one projection's final status.
async fn stop_one(h: RunnerHandle) -> ProjectionStatus {
    h.stop().await.unwrap().remove(0)
}

async fn until(h: &RunnerHandle, f: impl Fn(&ProjectionStatus) -> bool) -> ProjectionStatus {
    let mut rx = watch_one(h);
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| f(s)))
        .await
        .expect("condition not reached before the deadline")
        .unwrap()
        .clone()
}

/// Audit rows: (stream, version) in application order.
async fn applied(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query("SELECT stream_id, version FROM applied ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Every committed order event applied exactly once, each stream in version order.
async fn assert_exactly_once_in_stream_order(pool: &PgPool) {
    assert_exactly_once_except(pool, &[]).await;
}

/// Every committed order event but those `parked` (stream, version) applied exactly once,
/// each stream in version order.
async fn assert_exactly_once_except(pool: &PgPool, parked: &[(String, i64)]) {
    let mut committed: Vec<(String, i64)> = sqlx::query(
        "SELECT stream_id, version FROM events WHERE stream_type = 'order' ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .filter(|e| !parked.contains(e))
    .collect();
    let seen = applied(pool).await;
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (stream, version) in &seen {
        let mut prev = last.insert(stream, *version).unwrap_or(0);
        if parked.contains(&(stream.clone(), prev + 1)) {
            prev += 1;
        }
        assert_eq!(
            *version,
            prev + 1,
            "{stream}: v{version} applied after v{prev}"
        );
    }
    let mut sorted = seen.clone();
    sorted.sort();
    committed.sort();
    assert_eq!(sorted, committed, "each committed event exactly once");
}

async fn count_applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM applied")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_crash_mid_batch_or_between_batches_applies_nothing_twice(pool: PgPool) {
    let store = setup(&pool).await;
    check_effects_commit_with_checkpoint(&pool).await;
    let last = append_orders(&store, 0, 12).await;
    // All visible before the runner starts, so batch boundaries are exactly 7 events
    // (other sessions of the cluster could otherwise hold part of the feed back).
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let orders = OrderProjection::new(store.schema());

    // Run 1 hangs after writing the 3rd event of batch 2 (call 10); killed there.
    let mut p = Audited::new(orders.clone());
    p.trip = Some((10, true));
    let tripped = Arc::clone(&p.tripped);
    let h = spawn(&store, p);
    tokio::time::timeout(DEADLINE, tripped.notified())
        .await
        .unwrap();
    h.abort().await;
    assert_eq!(count_applied(&pool).await, 7, "only batch 1 committed");

    // Run 2 hangs before writing the first event after one more batch; killed there.
    let mut p = Audited::new(orders.clone());
    p.trip = Some((8, false));
    let tripped = Arc::clone(&p.tripped);
    let h = spawn(&store, p);
    tokio::time::timeout(DEADLINE, tripped.notified())
        .await
        .unwrap();
    h.abort().await;
    assert_eq!(count_applied(&pool).await, 14, "two batches committed");

    // Run 3 finishes.
    let h = spawn(&store, Audited::new(orders.clone()));
    wait_for_projection(&store, OrderProjection::NAME, last, DEADLINE)
        .await
        .unwrap();
    let status = stop_one(h).await;
    assert_eq!(status.state, ProjectionState::Stopped);
    assert_exactly_once_in_stream_order(&pool).await;
    let after_crashes = actual_model(&pool).await;
    assert_eq!(after_crashes, expected_model(&store).await);

    // A from-scratch rebuild gives the same read model.
    let mut reports = Vec::new();
    let done = rebuild(&store, Arc::new(Audited::new(orders)), None, 5, &mut |p| {
        reports.push(*p);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(done.scanned, done.total);
    assert!(reports.windows(2).all(|w| w[0].scanned <= w[1].scanned));
    assert_eq!(actual_model(&pool).await, after_crashes);
    assert_exactly_once_in_stream_order(&pool).await;
}

/// A tiny deterministic generator (no RNG dependency needed).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn concurrent_writers_holding_transactions_open_reach_the_projection_once_in_order(
    pool: PgPool,
) {
    let store = setup(&pool).await;
    check_effects_commit_with_checkpoint(&pool).await;
    let h = spawn(&store, Audited::new(OrderProjection::new(store.schema())));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
            let streams: Vec<usize> = (0..3).map(|k| (w as usize) * 100 + k).collect();
            let mut done = vec![0usize; streams.len()];
            while done
                .iter()
                .zip(&streams)
                .any(|(d, s)| *d < script(*s).len())
            {
                let k = usize::try_from(rng.next(streams.len() as u64)).unwrap();
                let i = streams[k];
                let events = script(i);
                if done[k] == events.len() {
                    continue;
                }
                let id = StreamId::new(format!("order-{i}")).unwrap();
                let expected = if done[k] == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(Version::new(done[k] as u64).unwrap())
                };
                let mut tx = store.pool().begin().await.unwrap();
                store
                    .append_in(&mut tx, &id, expected, &[new_event(&events[done[k]])])
                    .await
                    .unwrap();
                // Workload shape, not synchronisation: keep the transaction open a while.
                tokio::time::sleep(Duration::from_millis(rng.next(15))).await;
                if rng.next(5) == 0 {
                    tx.rollback().await.unwrap(); // never committed: must never be seen
                } else {
                    tx.commit().await.unwrap();
                    done[k] += 1;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let newest = store.newest_committed().await.unwrap().unwrap();
    wait_for_projection(&store, OrderProjection::NAME, newest, DEADLINE)
        .await
        .unwrap();
    stop_one(h).await;
    assert_exactly_once_in_stream_order(&pool).await;
    assert_eq!(actual_model(&pool).await, expected_model(&store).await);
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn two_runners_one_active_and_the_other_takes_over(pool: PgPool) {
    let store = setup(&pool).await;
    check_effects_commit_with_checkpoint(&pool).await;
    let orders = OrderProjection::new(store.schema());
    let a = spawn(&store, Audited::new(orders.clone()));
    until(&a, |s| s.lock_pid.is_some()).await;
    let b = spawn(&store, Audited::new(orders.clone()));
    until(&b, |s| s.state == ProjectionState::Standby).await;

    let first = append_orders(&store, 0, 6).await;
    wait_for_projection(&store, OrderProjection::NAME, first, DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        status_of(&b).batches,
        0,
        "the standby runner processed nothing"
    );
    assert_eq!(status_of(&b).state, ProjectionState::Standby);

    let a_done = stop_one(a).await;
    assert!(a_done.batches > 0);
    let s = until(&b, |s| s.lock_pid.is_some()).await;
    assert_ne!(s.state, ProjectionState::Standby);
    let second = append_orders(&store, 6, 12).await;
    wait_for_projection(&store, OrderProjection::NAME, second, DEADLINE)
        .await
        .unwrap();
    assert!(stop_one(b).await.batches > 0, "the survivor took over");
    assert_exactly_once_in_stream_order(&pool).await;
    assert_eq!(actual_model(&pool).await, expected_model(&store).await);
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_shadow_rebuild_keeps_serving_the_old_table_then_swaps(pool: PgPool) {
    let store = setup(&pool).await;
    let orders = OrderProjection::new(store.schema());
    let first = append_orders(&store, 0, 9).await;
    let live = spawn(&store, Audited::new(orders.clone()));
    wait_for_projection(&store, OrderProjection::NAME, first, DEADLINE)
        .await
        .unwrap();
    // A bug left the live table wrong; the rebuild will fix it.
    sqlx::query("UPDATE order_summaries SET customer_id = 'stale'")
        .execute(&pool)
        .await
        .unwrap();

    // The rebuild runs on its own thread and runtime, so that its progress callback can
    // hold it *between* shadow batches (no transaction of its own open: an open write
    // transaction would hold the feed's horizon, and the live runner with it).
    let paused = Arc::new(Notify::new());
    let (release, released) = std::sync::mpsc::channel::<()>();
    let rebuilding = {
        let options = pool.connect_options();
        let paused = Arc::clone(&paused);
        let orders = orders.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let pool = PgPool::connect_with((*options).clone()).await.unwrap();
                let store = PgEventStore::from_pool(pool);
                let mut calls = 0;
                rebuild_shadow(&store, Arc::new(orders), None, 3, &mut move |_| {
                    calls += 1;
                    if calls == 3 {
                        paused.notify_one();
                        released.recv().unwrap();
                    }
                    ControlFlow::Continue(())
                })
                .await
            })
        })
    };
    tokio::time::timeout(DEADLINE, paused.notified())
        .await
        .unwrap();
    // Mid-rebuild: the shadow has part of the data; readers still get the old table,
    // which its runner keeps updating.
    let shadow_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM order_summaries__shadow")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(shadow_rows > 0);
    let serving = actual_model(&pool).await;
    assert_eq!(serving.len(), 9);
    assert!(serving.iter().all(|r| r.1 == "stale"));
    let more = append_orders(&store, 9, 12).await;
    wait_for_projection(&store, OrderProjection::NAME, more, DEADLINE)
        .await
        .unwrap();
    let serving = actual_model(&pool).await;
    assert_eq!(serving.len(), 12, "the live table is still maintained");
    assert_eq!(serving.iter().filter(|r| r.1 == "stale").count(), 9);

    release.send(()).unwrap();
    let done = tokio::task::spawn_blocking(move || rebuilding.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(done.scanned >= done.total);
    let last = append_orders(&store, 12, 14).await;
    wait_for_projection(&store, OrderProjection::NAME, last, DEADLINE)
        .await
        .unwrap();
    stop_one(live).await;
    assert_eq!(actual_model(&pool).await, expected_model(&store).await);
    let shadow_left: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('order_summaries__shadow')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shadow_left, None);
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn lag_is_n_events_behind_then_zero_and_names_the_horizon_holder(pool: PgPool) {
    let store = setup(&pool).await;
    let orders = OrderProjection::new(store.schema());
    let first = append_orders(&store, 0, 3).await;
    let h = spawn(&store, Audited::new(orders.clone()));
    wait_for_projection(&store, OrderProjection::NAME, first, DEADLINE)
        .await
        .unwrap();
    stop_one(h).await;

    let behind = append_orders(&store, 3, 5).await; // orders 3 and 4: 2 + 3 events
    store
        .wait_for_feed(behind, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let r = projection_reports(&store).await.unwrap();
    let r = r.iter().find(|r| r.name == OrderProjection::NAME).unwrap();
    assert_eq!(r.lag_events, 5);
    assert!(r.lag_seconds >= 0.0);
    assert_eq!(r.state.as_deref(), Some("stopped"));

    let h = spawn(&store, Audited::new(orders));
    wait_for_projection(&store, OrderProjection::NAME, behind, DEADLINE)
        .await
        .unwrap();
    let r = projection_reports(&store).await.unwrap();
    let r = r.iter().find(|r| r.name == OrderProjection::NAME).unwrap();
    assert_eq!((r.lag_events, r.lag_seconds), (0, 0.0));

    // An open write transaction holds the horizon: a later commit stays invisible, and
    // the report says who is holding it.
    let mut open = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *open)
        .await
        .unwrap();
    append_orders(&store, 5, 6).await;
    let r = projection_reports(&store).await.unwrap();
    let r = r.iter().find(|r| r.name == OrderProjection::NAME).unwrap();
    assert!(r.held_back_by.is_some(), "{r:?}");
    let holders = store.horizon_holders().await.unwrap();
    assert!(holders.iter().any(|x| x.pid == Some(pid)));
    open.rollback().await.unwrap();
    stop_one(h).await;
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_failing_event_is_retried_until_a_recorded_park_decision(pool: PgPool) {
    let store = setup(&pool).await;
    let last = append_orders(&store, 0, 3).await;
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let bad = &feed[3];
    let p = Audited::new(OrderProjection::new(store.schema()));
    p.poison.lock().unwrap().insert(bad.event_id);
    let h = spawn(&store, p);
    let s = until(&h, |s| {
        s.state == ProjectionState::Failing && s.attempts >= 3
    })
    .await;
    assert_eq!(s.failing_event.map(|e| e.event_id), Some(bad.event_id));
    assert_eq!(
        s.checkpoint, feed[2].cursor,
        "the events before it are committed"
    );
    let r = projection_reports(&store).await.unwrap();
    let r = r.iter().find(|r| r.name == OrderProjection::NAME).unwrap();
    assert_eq!(r.state.as_deref(), Some("failing"));
    assert!(r.last_error.as_deref().unwrap().contains("poison"));
    assert_eq!(r.failing_event, Some(bad.event_id));

    park_event(
        &store,
        &ParkedEvent {
            projection: OrderProjection::NAME.into(),
            event_id: bad.event_id,
            stream_id: bad.stream_id.clone(),
            version: bad.version,
            reason: "corrupt payload, ticket 7".into(),
            decided_by: "ops".into(),
            decided_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    wait_for_projection(&store, OrderProjection::NAME, last, DEADLINE)
        .await
        .unwrap();
    let s = stop_one(h).await;
    assert_eq!(s.parked_skipped, 1);
    let seen = applied(&pool).await;
    assert_eq!(seen.len(), feed.len() - 1);
    assert!(!seen.contains(&(bad.stream_id.to_string(), bad.version.as_i64())));
    assert_eq!(
        parked_events(&store, OrderProjection::NAME)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A handler that panics is a failing handler, not a dead runner: the panic is caught, its
/// batch rolled back (the write it made before panicking included), the event retried with
/// backoff and shown in both statuses, and parked by decision; the runner keeps going.
/// (No test caught the missing guard before: every injected fault returned an error, the
/// generic runner's panic test had no PostgreSQL twin, and the torture harness only killed
/// runners from outside.)
#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_panicking_handler_is_retried_shown_parked_and_the_runner_goes_on(pool: PgPool) {
    let store = setup(&pool).await;
    check_effects_commit_with_checkpoint(&pool).await;
    let first = append_orders(&store, 0, 4).await;
    store
        .wait_for_feed(first, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let (flaky, bad) = (&feed[2], &feed[5]);
    let p = Audited::new(OrderProjection::new(store.schema()));
    p.panics.lock().unwrap().insert(flaky.event_id, 2);
    p.panics.lock().unwrap().insert(bad.event_id, usize::MAX);
    let h = spawn(&store, p.clone());
    let s = until(&h, |s| {
        s.state == ProjectionState::Failing
            && s.failing_event.as_ref().map(|e| e.event_id) == Some(bad.event_id)
            && s.attempts >= 3
    })
    .await;
    assert!(
        s.last_error
            .as_deref()
            .unwrap()
            .contains("handler panicked"),
        "{s:?}"
    );
    assert_eq!(
        s.checkpoint, feed[4].cursor,
        "the events before it are committed"
    );
    assert!(
        s.lag.events > 0 && s.lag_measured_at.is_some(),
        "a failing runner's status has its lag: {s:?}"
    );
    let r = report_of(&store, OrderProjection::NAME).await;
    assert_eq!(r.state.as_deref(), Some("failing"));
    assert!(
        r.last_error
            .as_deref()
            .unwrap()
            .contains("handler panicked")
    );
    assert_eq!(r.failing_event, Some(bad.event_id));
    assert!(r.owner.is_some(), "the runner still holds its lock: {r:?}");

    park_event(
        &store,
        &ParkedEvent {
            projection: OrderProjection::NAME.into(),
            event_id: bad.event_id,
            stream_id: bad.stream_id.clone(),
            version: bad.version,
            reason: "handler panics on it".into(),
            decided_by: "ops".into(),
            decided_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    // Still running: events appended after the park reach the read model too.
    let last = append_orders(&store, 4, 7).await;
    wait_for_projection(&store, OrderProjection::NAME, last, DEADLINE)
        .await
        .unwrap();
    let s = stop_one(h).await;
    assert_eq!(s.state, ProjectionState::Stopped);
    assert_eq!(s.parked_skipped, 1);
    assert_exactly_once_except(&pool, &[(bad.stream_id.to_string(), bad.version.as_i64())]).await;
    assert_eq!(
        p.panics.lock().unwrap().get(&flaky.event_id),
        Some(&0),
        "the flaky event panicked twice, then applied"
    );

    // A task that is gone is shown as gone, never as its last state.
    let h = spawn(&store, Audited::new(OrderProjection::new(store.schema())));
    let mut rx = watch_one(&h);
    until(&h, |s| s.state == ProjectionState::Live).await;
    h.abort().await;
    let s = rx.borrow_and_update().clone();
    assert_eq!(s.state, ProjectionState::Crashed, "{s:?}");
    assert!(s.last_error.as_deref().unwrap().contains("aborted"));
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_notification_after_commit_wakes_a_listening_runner(pool: PgPool) {
    let store = setup(&pool).await;
    // Polling so slow that only the notification can deliver within the deadline.
    let h = PgProjectionRunner::new(
        store.clone(),
        Arc::new(Audited::new(OrderProjection::new(store.schema()))),
    )
    .with_options(RunnerOptions {
        poll_min: Duration::from_secs(600),
        poll_max: Duration::from_secs(600),
        listen_channel: Some("chronik_feed".into()),
        ..options()
    })
    .spawn()
    .unwrap();
    until(&h, |s| s.state == ProjectionState::Live).await;
    let last = append_orders(&store, 0, 2).await;
    // Notify once the events are visible (after commit, outside any append transaction).
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    chronik::postgres::notify_feed(store.pool(), "chronik_feed")
        .await
        .unwrap();
    wait_for_projection(&store, OrderProjection::NAME, last, DEADLINE)
        .await
        .unwrap();
    stop_one(h).await;
    assert_exactly_once_in_stream_order(&pool).await;
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn connections_killed_at_random_mid_batch_still_apply_each_event_once(pool: PgPool) {
    let store = setup(&pool).await;
    check_effects_commit_with_checkpoint(&pool).await;
    let last = append_orders(&store, 0, 30).await;
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let h = spawn(&store, Audited::new(OrderProjection::new(store.schema())));
    // Terminate every other session of this test's database (the runner's batch
    // transactions, its feed reads and its lock session) over and over while it works.
    let mut killer = pool.acquire().await.unwrap().detach();
    let mut rng = XorShift(42);
    let mut kills = 0i64;
    for _ in 0..40 {
        kills += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
        )
        .fetch_one(&mut killer)
        .await
        .unwrap();
        // Workload shape, not synchronisation: let the runner get into its next batch.
        tokio::time::sleep(Duration::from_millis(1 + rng.next(10))).await;
    }
    assert!(kills > 0);
    wait_for_projection(&store, OrderProjection::NAME, last, DEADLINE)
        .await
        .unwrap();
    let s = stop_one(h).await;
    assert!(
        s.last_error.is_some(),
        "the runner saw the dropped connections"
    );
    assert_exactly_once_in_stream_order(&pool).await;
    assert_eq!(actual_model(&pool).await, expected_model(&store).await);
}

/// Compile-time check: rebuild futures are `Send`, so services and the CLI can spawn them.
#[allow(dead_code)]
fn rebuilds_can_be_spawned(store: PgEventStore) {
    let a = store.clone();
    drop(tokio::spawn(async move {
        let p = Arc::new(Audited::new(OrderProjection::new(a.schema())));
        rebuild(&a, p, None, 0, &mut |_| ControlFlow::Continue(())).await
    }));
    let s = store.clone();
    drop(tokio::spawn(async move {
        let p = Arc::new(OrderProjection::new(s.schema()));
        rebuild(&s, p, None, 0, &mut |_| ControlFlow::Continue(())).await
    }));
    drop(tokio::spawn(async move {
        let p = Arc::new(OrderProjection::new(store.schema()));
        rebuild_shadow(&store, p, None, 0, &mut |_| ControlFlow::Continue(())).await
    }));
}

/// A second pool on the same database: another process's runner, as far as the server sees.
async fn second_store(pool: &PgPool) -> PgEventStore {
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    PgEventStore::from_pool(other)
}

async fn report_of(store: &PgEventStore, name: &str) -> chronik::postgres::ProjectionReport {
    projection_reports(store)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no report for {name}"))
}

/// Issue 11, defect 3: with one active runner and one standby (separate pools, as two
/// processes would have), the report names the owner and lists the standby apart; a
/// standby that stops never hides the live owner, and after the owner stops the standby
/// that takes over is the owner.
#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn status_shows_the_owner_and_the_standby_apart_and_survives_either_stopping(pool: PgPool) {
    let store = setup(&pool).await;
    let other = second_store(&pool).await;
    let orders = OrderProjection::new(store.schema());
    let name = OrderProjection::NAME;
    let a = spawn(&store, Audited::new(orders.clone()));
    let a_pid = until(&a, |s| s.state == ProjectionState::Live)
        .await
        .lock_pid;
    let b = spawn(&other, Audited::new(orders.clone()));
    until(&b, |s| s.state == ProjectionState::Standby).await;

    let r = report_of(&store, name).await;
    let owner = r
        .owner
        .clone()
        .unwrap_or_else(|| panic!("no owner: {r:#?}"));
    assert_eq!(
        (r.state.as_deref(), owner.pid),
        (Some("live"), a_pid),
        "{r:#?}"
    );
    assert!(owner.owner_since.is_some(), "{r:#?}");
    assert_eq!(r.standbys.len(), 1, "{r:#?}");
    assert_eq!(r.standbys[0].state, "standby");
    assert!(
        r.standbys[0].pid.is_some() && r.standbys[0].pid != a_pid,
        "{r:#?}"
    );
    assert!(r.dead.is_empty() && r.locked_by.is_none(), "{r:#?}");

    // The standby stops: the owner is still the owner, and still live.
    stop_one(b).await;
    let r = report_of(&store, name).await;
    assert_eq!(
        (r.state.as_deref(), r.owner.as_ref().and_then(|o| o.pid)),
        (Some("live"), a_pid),
        "{r:#?}"
    );
    assert!(r.standbys.is_empty() && r.dead.is_empty(), "{r:#?}");

    // A new standby, then the owner stops: the standby takes over and is the owner.
    let c = spawn(&other, Audited::new(orders));
    until(&c, |s| s.state == ProjectionState::Standby).await;
    stop_one(a).await;
    let c_pid = until(&c, |s| s.state == ProjectionState::Live)
        .await
        .lock_pid;
    let r = report_of(&store, name).await;
    assert_eq!(
        (r.state.as_deref(), r.owner.as_ref().and_then(|o| o.pid)),
        (Some("live"), c_pid),
        "{r:#?}"
    );
    assert!(r.standbys.is_empty() && r.dead.is_empty(), "{r:#?}");

    stop_one(c).await;
    let r = report_of(&store, name).await;
    assert_eq!(r.state.as_deref(), Some("stopped"), "{r:#?}");
    assert!(
        r.owner.is_none() && r.standbys.is_empty() && r.dead.is_empty(),
        "{r:#?}"
    );
}

/// An owner that dies (its task killed, its session gone) is reported dead, not live,
/// until another instance takes over.
#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_dead_owner_is_reported_dead_until_another_takes_over(pool: PgPool) {
    let store = setup(&pool).await;
    let other = second_store(&pool).await;
    let orders = OrderProjection::new(store.schema());
    let name = OrderProjection::NAME;
    let a = spawn(&other, Audited::new(orders.clone()));
    let a_pid = until(&a, |s| s.state == ProjectionState::Live)
        .await
        .lock_pid
        .unwrap();
    a.abort().await;
    // The server ends the session once it sees the socket closed.
    tokio::time::timeout(DEADLINE, async {
        loop {
            let gone: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            )
            .bind(a_pid)
            .fetch_one(&pool)
            .await
            .unwrap();
            if gone {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the killed runner's session ends");

    let r = report_of(&store, name).await;
    assert_eq!(r.state.as_deref(), Some("dead"), "{r:#?}");
    assert!(r.owner.is_none() && r.standbys.is_empty(), "{r:#?}");
    assert_eq!(r.dead.len(), 1, "{r:#?}");
    assert_eq!(
        (r.dead[0].pid, r.dead[0].state.as_str()),
        (Some(a_pid), "live")
    );
    assert!(r.dead[0].owner_since.is_some(), "{r:#?}");

    let b = spawn(&store, Audited::new(orders));
    let b_pid = until(&b, |s| s.state == ProjectionState::Live)
        .await
        .lock_pid;
    let r = report_of(&store, name).await;
    assert_eq!(
        (r.state.as_deref(), r.owner.as_ref().and_then(|o| o.pid)),
        (Some("live"), b_pid),
        "{r:#?}"
    );
    assert!(
        r.dead.is_empty(),
        "the new owner pruned the dead one: {r:#?}"
    );
    stop_one(b).await;
}

/// The checkpoint row of `name`: (transaction, position, events processed).
async fn checkpoint_row(pool: &PgPool, name: &str) -> Option<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT transaction_id, global_position, events_processed \
           FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Whether a shadow rebuild left its table or its checkpoint behind.
async fn shadow_leftovers(pool: &PgPool) -> (bool, bool) {
    let table: bool =
        sqlx::query_scalar("SELECT to_regclass('order_summaries__shadow') IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    (
        table,
        checkpoint_row(pool, "orders__shadow").await.is_some(),
    )
}

#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn rebuilds_that_fail_or_are_stopped_change_nothing_and_leave_nothing_behind(pool: PgPool) {
    use chronik::postgres::ProjectionError;
    let store = setup(&pool).await;
    let last = append_orders(&store, 0, 6).await;
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let orders = OrderProjection::new(store.schema());
    rebuild(&store, Arc::new(orders.clone()), None, 4, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    let before = actual_model(&pool).await;
    let checkpoint = checkpoint_row(&pool, "orders").await;
    assert_eq!(before, expected_model(&store).await);
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let bad = feed[feed.len() - 2].clone();
    let poisoned = || {
        let p = Audited::new(orders.clone());
        p.poison.lock().unwrap().insert(bad.event_id);
        Arc::new(p)
    };

    // A handler failure on the next-to-last event: the error names the event's cursor, and
    // the read model and checkpoint are as they were, not cleared nor half rebuilt.
    let err = rebuild(&store, poisoned(), None, 4, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Handler { event, .. }
            if event.cursor == bad.cursor && event.event_id == bad.event_id),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("cursor {}", bad.cursor)),
        "{err}"
    );
    assert_eq!(actual_model(&pool).await, before);
    assert_eq!(checkpoint_row(&pool, "orders").await, checkpoint);
    let err = rebuild_shadow(&store, poisoned(), None, 4, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ProjectionError::Handler { .. }), "{err}");
    assert_eq!(shadow_leftovers(&pool).await, (false, false));
    assert_eq!(actual_model(&pool).await, before);

    // Stopped by the progress callback after the second batch: the same.
    for shadow in [false, true] {
        let mut calls = 0;
        let mut stop = |_: &chronik::postgres::RebuildProgress| {
            calls += 1;
            if calls == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let p = Arc::new(orders.clone());
        let err = if shadow {
            rebuild_shadow(&store, p, None, 4, &mut stop).await
        } else {
            rebuild(&store, p, None, 4, &mut stop).await
        }
        .unwrap_err();
        assert!(
            matches!(&err, ProjectionError::Interrupted { projection, scanned: 4 } if projection == "orders"),
            "shadow {shadow}: {err}"
        );
        assert_eq!(actual_model(&pool).await, before, "shadow {shadow}");
        assert_eq!(checkpoint_row(&pool, "orders").await, checkpoint);
        assert_eq!(shadow_leftovers(&pool).await, (false, false));
    }

    // A recorded park decision is honoured by rebuilds as by the runner.
    park_event(
        &store,
        &ParkedEvent {
            projection: OrderProjection::NAME.into(),
            event_id: bad.event_id,
            stream_id: bad.stream_id.clone(),
            version: bad.version,
            reason: "poison, ticket 9".into(),
            decided_by: "ops".into(),
            decided_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    for shadow in [false, true] {
        let done = if shadow {
            rebuild_shadow(&store, poisoned(), None, 4, &mut |_| {
                ControlFlow::Continue(())
            })
            .await
        } else {
            rebuild(&store, poisoned(), None, 4, &mut |_| {
                ControlFlow::Continue(())
            })
            .await
        }
        .unwrap();
        assert_eq!(done.scanned, feed.len() as u64, "shadow {shadow}");
        assert_eq!(done.handled, feed.len() as u64 - 1, "shadow {shadow}");
    }
    assert_eq!(shadow_leftovers(&pool).await, (false, false));
}

/// Issue 14, item 12: a rebuild or a `forget` refused because another session holds the
/// projection's lock names that session's pid (read from `pg_locks`) and the statement
/// that ends it.
#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_refused_rebuild_or_forget_names_the_pid_holding_the_lock(pool: PgPool) {
    use chronik::postgres::{ProjectionError, forget_projection, how_to_end};
    let store = setup(&pool).await;
    append_orders(&store, 0, 2).await;
    let orders = OrderProjection::new(store.schema());
    let runner = spawn(&store, Audited::new(orders.clone()));
    let pid = until(&runner, |s| s.lock_pid.is_some())
        .await
        .lock_pid
        .unwrap();
    let busy = |err: &ProjectionError, name: &str, holder: i32| {
        assert!(
            matches!(err, ProjectionError::Busy { projection, pid: Some(p) }
                if projection == name && *p == holder),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "projection {name} is running in another session (pid {holder}); stop it or wait"
            )
        );
        assert_eq!(err.holder_pid(), Some(holder));
        assert_eq!(
            how_to_end(err).as_deref(),
            Some(format!("SELECT pg_terminate_backend({holder})").as_str())
        );
    };
    let err = rebuild(&store, Arc::new(orders.clone()), None, 0, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap_err();
    busy(&err, "orders", pid);
    let err = forget_projection(&store, "orders").await.unwrap_err();
    busy(&err, "orders", pid);
    stop_one(runner).await;

    // A shadow rebuild's lock, held by a session of its own.
    let mut holder = pool.acquire().await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!(
            "chronik.projection:{}:orders__shadow",
            store.schema().as_str()
        ))
        .execute(&mut *holder)
        .await
        .unwrap();
    let err = rebuild_shadow(&store, Arc::new(orders.clone()), None, 0, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap_err();
    busy(&err, "orders__shadow", holder_pid);
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *holder)
        .await
        .unwrap();
}

/// Issue 14, item 12: a rebuild records how it ended. A failed one (a handler error, an
/// interruption, a process that died while it ran) stays in the status, with when and why,
/// until a later rebuild succeeds.
#[sqlx::test(migrator = "chronik::postgres::MIGRATOR")]
async fn a_failed_rebuild_stays_in_the_status_until_one_succeeds(pool: PgPool) {
    use chronik::postgres::{RebuildOutcome, forget_projection};
    let store = setup(&pool).await;
    let last = append_orders(&store, 0, 6).await;
    store
        .wait_for_feed(last, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let orders = OrderProjection::new(store.schema());
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let bad = feed[feed.len() - 2].clone();
    let poisoned = || {
        let p = Audited::new(orders.clone());
        p.poison.lock().unwrap().insert(bad.event_id);
        Arc::new(p)
    };
    let go = |_: &chronik::postgres::RebuildProgress| ControlFlow::Continue(());

    let done = rebuild(&store, Arc::new(orders.clone()), None, 4, &mut { go })
        .await
        .unwrap();
    let b = report_of(&store, "orders").await.last_rebuild.unwrap();
    assert_eq!(b.outcome, RebuildOutcome::Succeeded, "{b:?}");
    assert!(!b.shadow && b.error.is_none(), "{b:?}");
    assert_eq!((b.scanned, b.total), (done.scanned, feed.len() as u64));
    assert!(b.finished_at.is_some_and(|f| f >= b.started_at), "{b:?}");

    // A handler failure, from scratch and into a shadow table: failed, naming the event.
    for shadow in [false, true] {
        let err = if shadow {
            rebuild_shadow(&store, poisoned(), None, 4, &mut { go }).await
        } else {
            rebuild(&store, poisoned(), None, 4, &mut { go }).await
        }
        .unwrap_err();
        let b = report_of(&store, "orders").await.last_rebuild.unwrap();
        assert_eq!(b.outcome, RebuildOutcome::Failed, "shadow {shadow}: {b:?}");
        assert_eq!(b.shadow, shadow);
        assert_eq!(b.error.as_deref(), Some(err.to_string().as_str()));
        assert!(
            err.to_string().contains(&format!("cursor {}", bad.cursor)),
            "{err}"
        );
        assert!(b.finished_at.is_some_and(|f| f >= b.started_at), "{b:?}");
        assert!(b.pid.is_some(), "{b:?}");
    }

    // Stopped by its caller: failed too, saying how far it got.
    let mut calls = 0;
    let mut stop = |_: &chronik::postgres::RebuildProgress| {
        calls += 1;
        if calls == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    rebuild(&store, Arc::new(orders.clone()), None, 4, &mut stop)
        .await
        .unwrap_err();
    let b = report_of(&store, "orders").await.last_rebuild.unwrap();
    assert_eq!(b.outcome, RebuildOutcome::Failed, "{b:?}");
    assert_eq!((b.scanned, b.total), (4, feed.len() as u64));
    assert!(
        b.error
            .as_deref()
            .is_some_and(|e| e.contains("was stopped after 4 events")),
        "{b:?}"
    );

    // A later success clears it.
    rebuild_shadow(&store, Arc::new(orders.clone()), None, 4, &mut { go })
        .await
        .unwrap();
    let b = report_of(&store, "orders").await.last_rebuild.unwrap();
    assert_eq!(b.outcome, RebuildOutcome::Succeeded, "{b:?}");
    assert!(b.shadow && b.error.is_none(), "{b:?}");

    // A rebuild recorded as running whose session is gone (its process was killed) did not
    // finish: failed, and says so. (No backend has pid 0.)
    sqlx::query(
        "INSERT INTO projection_rebuilds (name, shadow, outcome, started_at, pid, backend_start) \
         VALUES ('killed', false, 'running', now(), 0, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let b = report_of(&store, "killed").await.last_rebuild.unwrap();
    assert_eq!(b.outcome, RebuildOutcome::Failed, "{b:?}");
    assert!(b.finished_at.is_none(), "{b:?}");
    assert!(
        b.error
            .as_deref()
            .is_some_and(|e| e.starts_with("its session ended before it finished")),
        "{b:?}"
    );
    // Forgetting a projection forgets its record.
    forget_projection(&store, "killed").await.unwrap();
    assert!(
        projection_reports(&store)
            .await
            .unwrap()
            .iter()
            .all(|r| r.name != "killed")
    );
}
