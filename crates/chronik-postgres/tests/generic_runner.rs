//! chronik-projections' runner on PostgreSQL with PostgreSQL's ports: durable park decisions
//! (`PgParkingLot`) and `LISTEN` wake-ups fed by the store's notification after commit
//! (`PgEventStore::wake_source`, `PgStoreConfig::notify_channel`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{EventId, ExpectedVersion, FeedCursor, RecordedEvent};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{PgEventStore, PgParkingLot, PgStoreConfig, park_records};
use chronik_projections::{
    HandlerError, ParkedEvent, ParkingLot, Projection, ProjectionRunner, ProjectionState,
    ProjectionStatus, RunnerHandle, RunnerOptions,
};
use chronik_store::{CheckpointStore, EventStore, FeedFilter};
use chronik_testkit::conformance::{events, stream};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(20);

/// Records what it applied; fails on the poisoned ids.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<EventId>>,
    poison: Mutex<HashSet<EventId>>,
}

impl Recorder {
    fn seen(&self) -> Vec<EventId> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if self
            .poison
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&event.event_id)
        {
            return Err(HandlerError::new(
                "poison: this payload predates validation",
            ));
        }
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.event_id);
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }
}

fn fast() -> RunnerOptions {
    RunnerOptions {
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(20),
        retry_base: Duration::from_millis(2),
        retry_max: Duration::from_millis(10),
        ..RunnerOptions::default()
    }
}

/// Polling effectively off: after its first read, the runner only reads again when woken.
fn woken_only() -> RunnerOptions {
    RunnerOptions {
        poll_min: Duration::from_secs(3_600),
        poll_max: Duration::from_secs(3_600),
        ..RunnerOptions::default()
    }
}

/// Waits (polling the handle, bounded by [`DEADLINE`]) until `name`'s status satisfies `f`.
async fn until(
    h: &RunnerHandle,
    name: &str,
    f: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = h.status(name)
            && f(&s)
        {
            return s;
        }
        assert!(start.elapsed() < DEADLINE, "{:?}", h.status(name));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The feed from the start, once `last` is visible in it (any transaction open in the
/// cluster holds the feed back for a moment; an empty page is not the end).
async fn feed(store: &PgEventStore, last: FeedCursor) -> Vec<RecordedEvent> {
    store.wait_for_feed(last, DEADLINE).await.expect("visible");
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .expect("feed")
        .events
}

/// A decision made through `PgParkingLot` lets the runner pass the poison event, and it is
/// still there after a restart: a new runner over a new store, replaying from the start,
/// skips the event again without a new decision; the operators' list shows it.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn park_decisions_survive_a_restart_and_show_in_the_operators_list(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("order");
    let r = store
        .append(&id, ExpectedVersion::NoStream, &events(3))
        .await
        .expect("append");
    let all = feed(&store, r.cursor).await;
    let (bad, last) = (all[1].clone(), all[2].cursor);

    let first = Arc::new(Recorder::default());
    first
        .poison
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(bad.event_id);
    let lot = Arc::new(PgParkingLot::new(store.clone()));
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(first.clone())
        .with_options(fast())
        .with_parking(lot.clone())
        .spawn()
        .expect("start");
    until(&h, "recorder", |s| s.attempts >= 2).await;
    lot.park(ParkedEvent {
        projection: "recorder".into(),
        event_id: bad.event_id,
        stream_id: bad.stream_id.clone(),
        version: bad.version,
        reason: "payload predates validation; ticket 42".into(),
        decided_by: "ops".into(),
        decided_at: chrono::Utc::now(),
    })
    .await
    .expect("park");
    let s = h
        .wait_for("recorder", last, DEADLINE)
        .await
        .expect("passes it");
    assert_eq!(s.parked_skipped, 1);
    assert_eq!(first.seen(), [all[0].event_id, all[2].event_id]);
    h.stop().await.expect("stop");

    // A restart: new store, new lot, the checkpoint gone, the handler still failing.
    let store = PgEventStore::from_pool(pool);
    store
        .delete_checkpoint("recorder")
        .await
        .expect("replay from the start");
    let again = Arc::new(Recorder::default());
    again
        .poison
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(bad.event_id);
    let lot = Arc::new(PgParkingLot::new(store.clone()));
    assert!(
        lot.is_parked("recorder", bad.event_id)
            .await
            .expect("is_parked")
    );
    let listed = lot.parked("recorder").await.expect("parked");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reason, "payload predates validation; ticket 42");
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(again.clone())
        .with_options(fast())
        .with_parking(lot)
        .spawn()
        .expect("start");
    let s = h
        .wait_for("recorder", last, DEADLINE)
        .await
        .expect("passes it again");
    assert_eq!(s.parked_skipped, 1);
    assert_eq!(again.seen(), [all[0].event_id, all[2].event_id]);
    h.stop().await.expect("stop");

    let records = park_records(&store, "recorder")
        .await
        .expect("operators' list");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].decision.event_id, bad.event_id);
}

/// An invalid decision is refused with a typed error and records nothing.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_decision_without_a_reason_is_refused(pool: PgPool) {
    let store = PgEventStore::from_pool(pool);
    let id = stream("order");
    let r = store
        .append(&id, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append");
    let e = &feed(&store, r.cursor).await[0];
    let lot = PgParkingLot::new(store.clone());
    let refused = lot
        .park(ParkedEvent {
            projection: "recorder".into(),
            event_id: e.event_id,
            stream_id: e.stream_id.clone(),
            version: e.version,
            reason: "  ".into(),
            decided_by: "ops".into(),
            decided_at: chrono::Utc::now(),
        })
        .await;
    assert!(
        matches!(refused, Err(chronik_store::StoreError::InvalidRequest(ref m)) if m.contains("reason")),
        "{refused:?}"
    );
    assert!(lot.parked("recorder").await.expect("parked").is_empty());
}

fn channel() -> String {
    format!("chronik_test_{}", uuid::Uuid::new_v4().simple())
}

/// Waits (bounded by [`DEADLINE`]) for a notification on `channel`.
async fn received(listener: &mut sqlx::postgres::PgListener, channel: &str) {
    let n = tokio::time::timeout(DEADLINE, listener.recv())
        .await
        .expect("a notification")
        .expect("recv");
    assert_eq!(n.channel(), channel);
}

/// The store's notification after commit: an owned append, an owned multi-stream append
/// and a committed transaction each notify the configured channel.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_store_with_a_notify_channel_notifies_after_each_commit(pool: PgPool) {
    let channel = channel();
    let config = PgStoreConfig {
        notify_channel: Some(channel.clone()),
        ..PgStoreConfig::default()
    };
    let store = PgEventStore::from_pool_with(pool.clone(), &config);
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("connect");
    listener.listen(&channel).await.expect("listen");
    store
        .append(&stream("order"), ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append");
    received(&mut listener, &channel).await;
    store
        .append_streams(&[
            chronik_store::StreamAppend::new(stream("order"), ExpectedVersion::NoStream, events(1)),
            chronik_store::StreamAppend::new(stream("order"), ExpectedVersion::NoStream, events(1)),
        ])
        .await
        .expect("append_streams");
    received(&mut listener, &channel).await;
    let mut tx = store.begin().await.expect("begin");
    tx.append(&stream("order"), ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append in");
    tx.commit().await.expect("commit");
    received(&mut listener, &channel).await;
}

/// With polling effectively off, a notification on the channel is what wakes the runner:
/// each event is applied without waiting for a poll an hour away. (The test makes each
/// event visible before it notifies: a notification that arrives while the event is still
/// behind the feed's horizon, which any transaction open in the cluster causes, finds
/// nothing to read, and then only the next wake or poll picks it up.)
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_notification_wakes_the_runner(pool: PgPool) {
    let channel = channel();
    let store = PgEventStore::from_pool(pool.clone());
    let wake = store.wake_source(&channel).await.expect("listen");
    assert_eq!(wake.channel(), channel);
    let recorder = Arc::new(Recorder::default());
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(recorder.clone())
        .with_options(woken_only())
        .with_wake(wake)
        .spawn()
        .expect("start");
    until(&h, "recorder", |s| s.state == ProjectionState::Live).await;
    for round in 1..=3 {
        let r = store
            .append(&stream("order"), ExpectedVersion::NoStream, &events(1))
            .await
            .expect("append");
        store
            .wait_for_feed(r.cursor, DEADLINE)
            .await
            .expect("visible");
        chronik_postgres::notify_feed(&pool, &channel)
            .await
            .expect("notify");
        h.wait_for("recorder", r.cursor, DEADLINE)
            .await
            .expect("woken by the notification, not by a poll an hour away");
        assert_eq!(recorder.seen().len(), round);
    }
    h.stop().await.expect("stop");
}

/// A notification lost while the listener was disconnected does not leave an event waiting
/// for a poll: the reconnection itself wakes the runner, which reads what committed.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_lost_listen_connection_wakes_the_runner_to_read_what_it_missed(pool: PgPool) {
    let channel = channel();
    // Nobody notifies: the append below is a notification lost.
    let store = PgEventStore::from_pool(pool.clone());
    let wake = store.wake_source(&channel).await.expect("listen");
    let recorder = Arc::new(Recorder::default());
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(recorder.clone())
        .with_options(woken_only())
        .with_wake(wake)
        .spawn()
        .expect("start");
    until(&h, "recorder", |s| s.state == ProjectionState::Live).await;
    let r = store
        .append(&stream("order"), ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append");
    store
        .wait_for_feed(r.cursor, DEADLINE)
        .await
        .expect("visible");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
          WHERE datname = current_database() AND query LIKE 'LISTEN %') k",
    )
    .fetch_one(&pool)
    .await
    .expect("terminate the listener");
    assert_eq!(killed, 1, "one LISTEN session");
    h.wait_for("recorder", r.cursor, DEADLINE)
        .await
        .expect("woken by the reconnection");
    assert_eq!(recorder.seen().len(), 1);
    h.stop().await.expect("stop");
}

/// The projection contract suite (`chronik_testkit::projections`) on PostgreSQL: the
/// generic runner with `PgParkingLot` and `PgWakeSource`, fed by the store's notification
/// after commit.
mod contract {
    use std::sync::Arc;

    use chronik_postgres::{PgEventStore, PgParkingLot, PgStoreConfig};
    use chronik_testkit::projections::{Generic, Ports};
    use sqlx::PgPool;

    macro_rules! postgres_cases {
        ($($case:ident),* $(,)?) => {$(
            #[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
            async fn $case(pool: PgPool) {
                let channel = super::channel();
                let config = PgStoreConfig {
                    notify_channel: Some(channel.clone()),
                    ..PgStoreConfig::default()
                };
                let store = PgEventStore::from_pool_with(pool, &config);
                let wake = store.wake_source(&channel).await.expect("listen");
                let parking = Arc::new(PgParkingLot::new(store.clone()));
                let ports = Ports::new(wake, parking).inexact();
                chronik_testkit::projections::$case(Generic::new(store, ports)).await;
            }
        )*};
    }

    chronik_testkit::projection_contract_cases!(postgres_cases);
    chronik_testkit::generic_runner_cases!(postgres_cases);
}

/// Counts what it is given; wants only `Wanted` events.
#[derive(Debug, Default)]
struct WantedOnly {
    seen: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Projection for WantedOnly {
    fn name(&self) -> &str {
        "wanted_only"
    }
    fn filter(&self) -> FeedFilter {
        FeedFilter {
            event_types: vec!["Wanted".to_owned()],
            categories: Vec::new(),
        }
    }
    async fn handle(&self, _event: &RecordedEvent) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Rows of `events` read by scans so far (sequential and through its indexes). A session
/// reports its counters when it ends, so the sessions measured are closed before this
/// runs; it reads until two readings half a second apart agree (a session's exit is
/// finished on the server a moment after the client has closed it).
async fn events_rows_read(pool: &PgPool) -> i64 {
    let read = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (coalesce(t.seq_tup_read, 0) \
                     + coalesce((SELECT sum(i.idx_tup_read) FROM pg_stat_user_indexes i \
                                  WHERE i.relid = t.relid), 0))::bigint \
               FROM pg_stat_user_tables t \
              WHERE t.schemaname = current_schema() AND t.relname = 'events'",
        )
        .fetch_one(pool)
        .await
        .expect("statistics")
    };
    let mut last = read().await;
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read().await;
        if now == last || start.elapsed() > DEADLINE {
            return now;
        }
        last = now;
    }
}

/// A store on sessions of its own (closed by the caller to report their counters).
async fn own_sessions(pool: &PgPool) -> PgEventStore {
    let sessions = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("sessions");
    PgEventStore::from_pool(sessions)
}

/// A filtered projection reads the feed's head before every page (so that a short page
/// can move its checkpoint past events it does not want). Catching up must not count the
/// whole feed each time: on PostgreSQL that count is a scan of every visible event, which
/// made catch-up quadratic in the feed's length. Measured in rows PostgreSQL read, not time.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_filtered_runner_does_not_count_the_feed_before_every_page(pool: PgPool) {
    const EVENTS: usize = 3_000;
    let writer = own_sessions(&pool).await;
    let mut last = None;
    for chunk in 0..EVENTS / 100 {
        let batch: Vec<_> = (0..100)
            .map(|i| {
                let kind = if i % 10 == 0 { "Wanted" } else { "Other" };
                chronik_testkit::conformance::event(kind, serde_json::json!({ "chunk": chunk }))
            })
            .collect();
        let r = writer
            .append(&stream("filtered"), ExpectedVersion::NoStream, &batch)
            .await
            .expect("append");
        last = Some(r.cursor);
    }
    let last = last.expect("appended");
    writer.wait_for_feed(last, DEADLINE).await.expect("visible");
    writer.pool().close().await;
    let before = events_rows_read(&pool).await;

    let store = own_sessions(&pool).await;
    let projection = Arc::new(WantedOnly::default());
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(projection.clone())
        .with_options(RunnerOptions {
            batch_size: 10,
            // One lag measurement at most while catching up: it counts the lag once.
            lag_every: Duration::from_secs(3_600),
            ..fast()
        })
        .spawn()
        .expect("start");
    h.wait_for("wanted_only", last, DEADLINE)
        .await
        .expect("caught up");
    h.stop().await.expect("stop");
    assert_eq!(
        projection.seen.load(std::sync::atomic::Ordering::SeqCst),
        EVENTS / 10
    );
    store.pool().close().await;

    let read = events_rows_read(&pool).await - before;
    let read = usize::try_from(read).expect("a count");
    // The pages read every wanted event once and pass over the others in the index; a
    // count of the feed per page (30 pages of 10 wanted events) would read 30 x 3,000.
    assert!(
        read < 10 * EVENTS,
        "catching up read {read} rows of a {EVENTS}-event feed in 30 pages"
    );
}
