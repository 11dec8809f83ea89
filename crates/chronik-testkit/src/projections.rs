//! The projection contract suite: every backend of the projection engine must pass every
//! case (issue 15). Like [`conformance`](crate::conformance) for stores, each case is a plain
//! `async fn case<S: Store>(store: S, ports: Ports)` that panics on a violation, listed once
//! by [`projection_contract_cases!`](crate::projection_contract_cases); a backend's tests
//! instantiate them with a macro of their own that builds a fresh store and its ports:
//!
//! ```text
//! macro_rules! memory_cases {
//!     ($($case:ident),* $(,)?) => {$(
//!         #[tokio::test]
//!         async fn $case() {
//!             let store = MemoryStore::new();
//!             let ports = Ports::new(store.subscribe(), || Arc::new(MemoryParkingLot::new()));
//!             chronik_testkit::projections::$case(store, ports).await
//!         }
//!     )*};
//! }
//! chronik_testkit::projection_contract_cases!(memory_cases);
//! ```
//!
//! The cases drive `chronik_projections::ProjectionRunner` (the at-least-once engine, any
//! store) through the backend's store, wake-up source and parking lot: catch-up and live
//! wake-ups, polling alone, restart from the checkpoint, a failing handler retried and never
//! skipped, a poison event skipped only after a recorded park decision, a panicking handler,
//! an aborted runner shown crashed, lag, a graceful stop, wait-for, filters, rebuilds,
//! refused options and following the feed. Feed reads after appends wait until the appended
//! events are visible: on PostgreSQL any transaction open in the cluster holds the feed back
//! for a moment, by design.
// Helpers outside the cases unwrap too: a failure there is a contract violation.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{EventId, ExpectedVersion, FeedCursor, RecordedEvent};
use chronik_projections::{
    HandlerError, Lag, ParkedEvent, ParkingLot, PollingOnly, Projection, ProjectionError,
    ProjectionRunner, ProjectionState, ProjectionStatus, RebuildOptions, RebuildProgress,
    RunnerHandle, RunnerOptions, WakeSource, Wakeup, checkpoint_lag, measure_lag, rebuild,
};
use chronik_store::FeedFilter;
use serde_json::json;
use tokio::sync::Notify;

use crate::conformance::{Store, event, stream};

/// Lists every projection contract case, once, by calling `$m! { case, case, ... }`.
#[macro_export]
macro_rules! projection_contract_cases {
    ($m:ident) => {
        $m! {
            catches_up_then_stays_live_woken_by_the_store,
            no_checkpoint_is_saved_until_the_projection_flushes,
            polling_alone_delivers_when_there_is_no_wake_up,
            restart_resumes_from_the_checkpoint_without_repeats,
            a_failing_handler_is_retried_and_shown_in_status_never_skipped,
            a_poison_event_is_skipped_only_after_a_recorded_park_decision,
            a_panicking_handler_is_a_failure_not_a_dead_task,
            an_aborted_runner_is_shown_crashed_not_as_its_last_state,
            lag_counts_events_behind_then_zero,
            stop_lets_the_current_batch_finish_and_checkpoint,
            wait_for_reports_unknown_and_stopped_projections,
            a_filtered_projection_sees_only_its_types_and_still_reaches_the_head,
            rebuild_clears_and_replays_with_progress,
            duplicate_names_and_bad_options_are_refused,
            follow_tails_the_feed_then_new_events_with_a_filter,
        }
    };
}

/// What a backend gives the runner besides its store.
#[derive(Clone)]
pub struct Ports {
    /// Its live wake-up source (e.g. `MemoryStore::subscribe()`, `PgEventStore::wake_source`).
    pub wake: Arc<dyn WakeSource>,
    /// A parking lot for each runner the case starts (a lot that keeps decisions across
    /// runners, as a durable one does, passes too).
    pub parking: Arc<dyn Fn() -> Arc<dyn ParkingLot> + Send + Sync>,
    /// Whether a wake-up always finds the commit that caused it visible, so that a case may
    /// turn polling off and rely on wake-ups alone. True in memory; false on PostgreSQL,
    /// where a notification can arrive while the event is still behind the feed's horizon
    /// (polling then picks it up).
    pub wake_is_exact: bool,
}

impl Ports {
    /// Ports with an exact wake-up source (see [`Ports::wake_is_exact`]).
    pub fn new(
        wake: impl WakeSource + 'static,
        parking: impl Fn() -> Arc<dyn ParkingLot> + Send + Sync + 'static,
    ) -> Self {
        Self {
            wake: Arc::new(wake),
            parking: Arc::new(parking),
            wake_is_exact: true,
        }
    }

    /// The same ports, with wake-ups that may find nothing new yet.
    #[must_use]
    pub fn inexact(mut self) -> Self {
        self.wake_is_exact = false;
        self
    }

    fn parking(&self) -> Arc<dyn ParkingLot> {
        (self.parking)()
    }
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports")
            .field("wake", &self.wake)
            .field("wake_is_exact", &self.wake_is_exact)
            .finish_non_exhaustive()
    }
}

/// A shared wake-up source, as the runner takes one by value.
#[derive(Debug)]
struct SharedWake(Arc<dyn WakeSource>);

impl WakeSource for SharedWake {
    fn subscribe(&self) -> Box<dyn Wakeup> {
        self.0.subscribe()
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct Recorder {
    name: String,
    filter: FeedFilter,
    seen: Mutex<Vec<RecordedEvent>>,
    /// Events that fail while their flag is set.
    poison: Mutex<HashMap<EventId, Arc<AtomicBool>>>,
    panic_on: Mutex<HashSet<EventId>>,
    /// When set, the handler announces itself on `entered` and waits for `release`.
    gate: AtomicBool,
    entered: Notify,
    release: Notify,
    clears: AtomicU32,
    /// While set, `flush` fails (a pipelined effect not yet durable).
    unflushable: AtomicBool,
}

impl Recorder {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            ..Self::default()
        })
    }
    fn ids(&self) -> Vec<EventId> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect()
    }
    fn poison(&self, id: EventId) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(true));
        self.poison.lock().unwrap().insert(id, Arc::clone(&flag));
        flag
    }
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &str {
        &self.name
    }
    fn filter(&self) -> FeedFilter {
        self.filter.clone()
    }
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if self.gate.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        let failing = self
            .poison
            .lock()
            .unwrap()
            .get(&event.event_id)
            .is_some_and(|f| f.load(Ordering::SeqCst));
        if failing {
            return Err(HandlerError::new(format!("poison {}", event.event_id)));
        }
        assert!(
            !self.panic_on.lock().unwrap().remove(&event.event_id),
            "boom"
        );
        self.seen.lock().unwrap().push(event.clone());
        Ok(())
    }
    async fn flush(&self) -> Result<(), HandlerError> {
        if self.unflushable.load(Ordering::SeqCst) {
            return Err(HandlerError::new("acknowledgements outstanding"));
        }
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        self.clears.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().clear();
        Ok(())
    }
}

fn fast() -> RunnerOptions {
    RunnerOptions {
        batch_size: 10,
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(20),
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        lag_every: Duration::ZERO,
        ..RunnerOptions::default()
    }
}

/// Appends `n` events to fresh `order` streams, one per append; returns the last cursor.
async fn append<S: Store>(store: &S, n: usize, event_type: &str) -> FeedCursor {
    let mut last = FeedCursor::START;
    for i in 0..n {
        let r = store
            .append(
                &stream("order"),
                ExpectedVersion::NoStream,
                &[event(event_type, json!({ "i": i }))],
            )
            .await
            .unwrap();
        last = r.cursor;
    }
    until_visible(store, last).await;
    last
}

/// Waits (bounded by [`DEADLINE`]) until the feed shows `last`.
async fn until_visible<S: Store>(store: &S, last: FeedCursor) {
    let start = std::time::Instant::now();
    while store.feed_head().await.unwrap().last < Some(last) {
        assert!(start.elapsed() < DEADLINE, "{last:?} never became visible");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn all_ids<S: Store>(store: &S) -> Vec<EventId> {
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10_000)
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect()
}

fn start<S: Store>(
    store: &S,
    ports: &Ports,
    p: &Arc<Recorder>,
    options: RunnerOptions,
) -> RunnerHandle {
    ProjectionRunner::new(Arc::new(store.clone()))
        .with_options(options)
        .with_wake(SharedWake(ports.wake.clone()))
        .with_parking(ports.parking())
        .with_projection(Arc::clone(p) as Arc<dyn Projection>)
        .start()
        .unwrap()
}

/// Waits (with a deadline) until the status satisfies `f`.
async fn until(
    h: &RunnerHandle,
    name: &str,
    f: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let mut rx = h.subscribe(name).unwrap();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| f(s)))
        .await
        .expect("condition not reached before the deadline")
        .unwrap()
        .clone()
}

/// Contract case `catches_up_then_stays_live_woken_by_the_store` (see the module docs).
pub async fn catches_up_then_stays_live_woken_by_the_store<S: Store>(store: S, ports: Ports) {
    let first = append(&store, 25, "OrderPlaced").await;
    let p = Recorder::new("orders");
    // With exact wake-ups, polling so slow that only the wake-up can deliver within the
    // deadline; otherwise (PostgreSQL) the usual polling backs the wake-ups up.
    let options = if ports.wake_is_exact {
        RunnerOptions {
            poll_min: Duration::from_secs(600),
            poll_max: Duration::from_secs(600),
            ..fast()
        }
    } else {
        fast()
    };
    let h = start(&store, &ports, &p, options);
    let s = h.wait_for("orders", first, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 25);
    assert_eq!(p.ids(), all_ids(&store).await);
    let s = until(&h, "orders", |s| s.state == ProjectionState::Live).await;
    assert_eq!(s.checkpoint, first);

    let last = append(&store, 5, "OrderShipped").await;
    h.wait_for("orders", last, DEADLINE).await.unwrap();
    assert_eq!(
        p.ids(),
        all_ids(&store).await,
        "each event once, in feed order"
    );
    h.stop().await.unwrap();
}

/// Contract case `no_checkpoint_is_saved_until_the_projection_flushes` (see the module docs).
pub async fn no_checkpoint_is_saved_until_the_projection_flushes<S: Store>(store: S, ports: Ports) {
    let last = append(&store, 3, "OrderPlaced").await;
    let p = Recorder::new("pipelined");
    p.unflushable.store(true, Ordering::SeqCst);
    let h = start(&store, &ports, &p, fast());
    let s = until(&h, "pipelined", |s| s.attempts >= 2).await;
    assert_eq!(s.state, ProjectionState::Failing);
    let error = s.last_error.unwrap();
    assert!(error.contains("flushing before the checkpoint"), "{error}");
    assert_eq!(p.ids(), all_ids(&store).await, "handled, but not flushed");
    assert_eq!(store.load_checkpoint("pipelined").await.unwrap(), None);

    p.unflushable.store(false, Ordering::SeqCst);
    let s = h.wait_for("pipelined", last, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 3);
    assert_eq!(
        p.ids(),
        all_ids(&store).await,
        "flushing handles nothing again"
    );
    h.stop().await.unwrap();
}

/// Contract case `polling_alone_delivers_when_there_is_no_wake_up` (see the module docs).
pub async fn polling_alone_delivers_when_there_is_no_wake_up<S: Store>(store: S, ports: Ports) {
    let _ = ports;
    let p = Recorder::new("polled");
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_options(fast())
        .with_wake(PollingOnly)
        .with_projection(Arc::clone(&p) as Arc<dyn Projection>)
        .start()
        .unwrap();
    until(&h, "polled", |s| s.state == ProjectionState::Live).await;
    let last = append(&store, 3, "OrderPlaced").await;
    h.wait_for("polled", last, DEADLINE).await.unwrap();
    assert_eq!(p.ids(), all_ids(&store).await);
    h.stop().await.unwrap();
}

/// Contract case `restart_resumes_from_the_checkpoint_without_repeats` (see the module docs).
pub async fn restart_resumes_from_the_checkpoint_without_repeats<S: Store>(store: S, ports: Ports) {
    let p = Recorder::new("resume");
    let a = append(&store, 12, "OrderPlaced").await;
    let h = start(&store, &ports, &p, fast());
    h.wait_for("resume", a, DEADLINE).await.unwrap();
    let stopped = h.stop().await.unwrap();
    assert_eq!(stopped[0].state, ProjectionState::Stopped);
    assert_eq!(
        store
            .load_checkpoint("resume")
            .await
            .unwrap()
            .unwrap()
            .cursor,
        a
    );

    let b = append(&store, 7, "OrderPlaced").await;
    let h = start(&store, &ports, &p, fast());
    let s = h.wait_for("resume", b, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 19);
    assert_eq!(
        p.ids(),
        all_ids(&store).await,
        "nothing repeated, nothing lost"
    );
    h.stop().await.unwrap();
}

/// Contract case `a_failing_handler_is_retried_and_shown_in_status_never_skipped` (see the module docs).
pub async fn a_failing_handler_is_retried_and_shown_in_status_never_skipped<S: Store>(
    store: S,
    ports: Ports,
) {
    append(&store, 4, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let p = Recorder::new("retry");
    let flag = p.poison(feed[2].event_id);
    let h = start(&store, &ports, &p, fast());

    let s = until(&h, "retry", |s| {
        s.state == ProjectionState::Failing && s.attempts >= 3
    })
    .await;
    assert!(s.last_error.as_deref().unwrap().contains("poison"), "{s:?}");
    assert_eq!(s.failing_event.as_ref().unwrap().event_id, feed[2].event_id);
    assert_eq!(
        s.checkpoint, feed[1].cursor,
        "progress before the poison is saved"
    );
    assert_eq!(s.lag.events, 2, "the poison event and the one after it");
    let err = h
        .wait_for("retry", feed[3].cursor, Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Timeout { last_error: Some(e), reached, .. } if e.contains("poison") && *reached == feed[1].cursor),
        "{err:?}"
    );

    flag.store(false, Ordering::SeqCst); // the bug is fixed
    let s = h.wait_for("retry", feed[3].cursor, DEADLINE).await.unwrap();
    assert_eq!(p.ids(), all_ids(&store).await, "retried, not skipped");
    assert!(s.last_error.is_some(), "the last error stays visible");
    let s = until(&h, "retry", |s| s.state == ProjectionState::Live).await;
    assert_eq!(s.failing_event, None);
    h.stop().await.unwrap();
}

/// Contract case `a_poison_event_is_skipped_only_after_a_recorded_park_decision` (see the module docs).
pub async fn a_poison_event_is_skipped_only_after_a_recorded_park_decision<S: Store>(
    store: S,
    ports: Ports,
) {
    let last = append(&store, 3, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let p = Recorder::new("parking");
    let _flag = p.poison(feed[1].event_id);
    let h = start(&store, &ports, &p, fast());
    let s = until(&h, "parking", |s| s.attempts >= 5).await;
    assert_eq!(s.parked_skipped, 0);
    assert_eq!(p.ids(), vec![feed[0].event_id]);

    let bad = s.failing_event.unwrap();
    h.parking()
        .park(ParkedEvent {
            projection: "parking".into(),
            event_id: bad.event_id,
            stream_id: bad.stream_id,
            version: bad.version,
            reason: "payload predates validation; ticket 42".into(),
            decided_by: "ops".into(),
            decided_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let s = h.wait_for("parking", last, DEADLINE).await.unwrap();
    assert_eq!(s.parked_skipped, 1);
    assert_eq!(p.ids(), vec![feed[0].event_id, feed[2].event_id]);
    assert_eq!(h.parking().parked("parking").await.unwrap().len(), 1);
    h.stop().await.unwrap();
}

/// Contract case `a_panicking_handler_is_a_failure_not_a_dead_task` (see the module docs).
pub async fn a_panicking_handler_is_a_failure_not_a_dead_task<S: Store>(store: S, ports: Ports) {
    let last = append(&store, 2, "OrderPlaced").await;
    let first = all_ids(&store).await[0];
    let p = Recorder::new("panics");
    p.panic_on.lock().unwrap().insert(first);
    let h = start(&store, &ports, &p, fast());
    let s = h.wait_for("panics", last, DEADLINE).await.unwrap();
    assert!(s.last_error.unwrap().contains("panicked"));
    assert_eq!(p.ids(), all_ids(&store).await);
    h.stop().await.unwrap();
}

/// Contract case `an_aborted_runner_is_shown_crashed_not_as_its_last_state` (see the module docs).
pub async fn an_aborted_runner_is_shown_crashed_not_as_its_last_state<S: Store>(
    store: S,
    ports: Ports,
) {
    let last = append(&store, 2, "OrderPlaced").await;
    let p = Recorder::new("aborted");
    let h = start(&store, &ports, &p, fast());
    h.wait_for("aborted", last, DEADLINE).await.unwrap();
    let mut rx = h.subscribe("aborted").unwrap();
    h.abort().await;
    let s = rx.borrow_and_update().clone();
    assert_eq!(s.state, ProjectionState::Crashed, "{s:?}");
    assert!(s.last_error.unwrap().contains("aborted"));
}

/// Contract case `lag_counts_events_behind_then_zero` (see the module docs).
pub async fn lag_counts_events_behind_then_zero<S: Store>(store: S, ports: Ports) {
    append(&store, 7, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    // Scripted clock: lag seconds are measured from the oldest unprocessed event.
    let now = feed[0].recorded_at + chrono::Duration::seconds(90);
    assert_eq!(
        measure_lag(&store, FeedCursor::START, now).await.unwrap(),
        Lag {
            events: 7,
            seconds: 90.0
        }
    );
    assert_eq!(checkpoint_lag(&store, "lagging", now).await.unwrap(), None);

    let p = Recorder::new("lagging");
    let flag = p.poison(feed[0].event_id);
    let h = start(&store, &ports, &p, fast());
    // The lag is measured after the state changes: wait for both.
    let s = until(&h, "lagging", |s| {
        s.state == ProjectionState::Failing && s.lag.events == 7
    })
    .await;
    assert_eq!(s.lag.events, 7);
    flag.store(false, Ordering::SeqCst);
    let s = until(&h, "lagging", |s| {
        s.state == ProjectionState::Live && s.lag == Lag::default()
    })
    .await;
    assert_eq!(s.lag, Lag::default());
    h.stop().await.unwrap();

    // Behind again while stopped: 4 events, the oldest 30 s old on the scripted clock.
    append(&store, 4, "OrderPlaced").await;
    let behind = store
        .read_feed(feed[6].cursor, &FeedFilter::all(), 1)
        .await
        .unwrap()
        .events[0]
        .recorded_at;
    let (cp, lag) = checkpoint_lag(&store, "lagging", behind + chrono::Duration::seconds(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.cursor, feed[6].cursor);
    assert_eq!(
        lag,
        Lag {
            events: 4,
            seconds: 30.0
        }
    );
}

/// Contract case `stop_lets_the_current_batch_finish_and_checkpoint` (see the module docs).
pub async fn stop_lets_the_current_batch_finish_and_checkpoint<S: Store>(store: S, ports: Ports) {
    append(&store, 15, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let p = Recorder::new("graceful");
    p.gate.store(true, Ordering::SeqCst);
    let h = start(&store, &ports, &p, fast());
    tokio::time::timeout(DEADLINE, p.entered.notified())
        .await
        .unwrap();
    h.request_stop(); // arrives while the first batch (10 events) is in flight
    p.release.notify_one();
    let s = h.stop().await.unwrap().remove(0);
    assert_eq!(s.state, ProjectionState::Stopped);
    assert_eq!(
        p.ids().len(),
        10,
        "the batch finished, the next did not start"
    );
    assert_eq!(s.checkpoint, feed[9].cursor);
    let cp = store.load_checkpoint("graceful").await.unwrap().unwrap();
    assert_eq!((cp.cursor, cp.events_processed), (feed[9].cursor, 10));
}

/// Contract case `wait_for_reports_unknown_and_stopped_projections` (see the module docs).
pub async fn wait_for_reports_unknown_and_stopped_projections<S: Store>(store: S, ports: Ports) {
    let p = Recorder::new("waits");
    let h = start(&store, &ports, &p, fast());
    assert!(matches!(
        h.wait_for("nope", FeedCursor::START, DEADLINE).await,
        Err(ProjectionError::UnknownProjection(_))
    ));
    // Nothing appended yet: the start is reached at once.
    h.wait_for("waits", FeedCursor::START, DEADLINE)
        .await
        .unwrap();
    h.request_stop();
    until(&h, "waits", |s| s.state == ProjectionState::Stopped).await;
    let later = append(&store, 1, "OrderPlaced").await;
    assert!(matches!(
        h.wait_for("waits", later, DEADLINE).await,
        Err(ProjectionError::Stopped(_))
    ));
    h.stop().await.unwrap();
}

/// Contract case `a_filtered_projection_sees_only_its_types_and_still_reaches_the_head` (see the module docs).
pub async fn a_filtered_projection_sees_only_its_types_and_still_reaches_the_head<S: Store>(
    store: S,
    ports: Ports,
) {
    append(&store, 3, "OrderPlaced").await;
    append(&store, 2, "OrderShipped").await;
    let last = append(&store, 4, "OrderPlaced").await;
    let p = Arc::new(Recorder {
        name: "shipments".into(),
        filter: FeedFilter {
            event_types: vec!["OrderShipped".into()],
            categories: vec![],
        },
        ..Recorder::default()
    });
    let h = start(&store, &ports, &p, fast());
    let s = h.wait_for("shipments", last, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 2);
    assert!(
        p.seen
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.event_type.as_str() == "OrderShipped")
    );
    let s = until(&h, "shipments", |s| s.state == ProjectionState::Live).await;
    assert_eq!(s.lag.events, 0);
    h.stop().await.unwrap();
}

/// Contract case `rebuild_clears_and_replays_with_progress` (see the module docs).
pub async fn rebuild_clears_and_replays_with_progress<S: Store>(store: S, ports: Ports) {
    let last = append(&store, 23, "OrderPlaced").await;
    append(&store, 2, "Other").await;
    let p = Arc::new(Recorder {
        name: "rebuilt".into(),
        filter: FeedFilter {
            event_types: vec!["OrderPlaced".into()],
            categories: vec![],
        },
        ..Recorder::default()
    });
    let h = start(&store, &ports, &p, fast());
    h.wait_for("rebuilt", last, DEADLINE).await.unwrap();
    h.stop().await.unwrap();

    let mut reports: Vec<RebuildProgress> = Vec::new();
    let done = rebuild(
        &store,
        &*p,
        &RebuildOptions {
            batch_size: 10,
            upcasters: None,
        },
        &mut |r| reports.push(*r),
    )
    .await
    .unwrap();
    assert_eq!(p.clears.load(Ordering::SeqCst), 1);
    assert_eq!((done.scanned, done.total, done.handled), (25, 25, 23));
    let scanned: Vec<u64> = reports.iter().map(|r| r.scanned).collect();
    assert_eq!(scanned, vec![0, 10, 20, 25]);
    let expected: Vec<EventId> = store
        .read_feed(
            FeedCursor::START,
            &FeedFilter {
                event_types: vec!["OrderPlaced".into()],
                categories: vec![],
            },
            100,
        )
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(p.ids(), expected, "each once after the clear");
    let cp = store.load_checkpoint("rebuilt").await.unwrap().unwrap();
    assert_eq!(cp.cursor, store.feed_head().await.unwrap().last.unwrap());
}

/// Contract case `duplicate_names_and_bad_options_are_refused` (see the module docs).
pub async fn duplicate_names_and_bad_options_are_refused<S: Store>(store: S, ports: Ports) {
    let _ = ports;
    let store = Arc::new(store);
    let p = Recorder::new("twice");
    let err = ProjectionRunner::new(Arc::clone(&store))
        .with_projection(Arc::clone(&p) as Arc<dyn Projection>)
        .with_projection(p as Arc<dyn Projection>)
        .start()
        .unwrap_err();
    assert!(matches!(err, ProjectionError::DuplicateName(_)));
    let err = ProjectionRunner::new(store)
        .with_options(RunnerOptions {
            batch_size: 0,
            ..RunnerOptions::default()
        })
        .start()
        .unwrap_err();
    assert!(matches!(err, ProjectionError::InvalidOptions(_)));
}

/// Contract case `follow_tails_the_feed_then_new_events_with_a_filter` (see the module docs).
pub async fn follow_tails_the_feed_then_new_events_with_a_filter<S: Store>(store: S, ports: Ports) {
    use futures::StreamExt;
    append(&store, 2, "OrderPlaced").await;
    append(&store, 1, "OrderShipped").await;
    let wake = SharedWake(ports.wake.clone());
    let mut tail = chronik_projections::follow(
        &store,
        FeedCursor::START,
        FeedFilter {
            event_types: vec!["OrderPlaced".into()],
            categories: vec![],
        },
        &wake,
        if ports.wake_is_exact {
            chronik_projections::FollowOptions {
                poll_min: Duration::from_secs(600),
                poll_max: Duration::from_secs(600),
                ..Default::default()
            }
        } else {
            chronik_projections::FollowOptions::default()
        },
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(tail.next().await.unwrap().unwrap().event_id);
    }
    // With exact wake-ups, only the wake-up can deliver this one before the deadline.
    let later = append(&store, 1, "OrderPlaced").await;
    let next = tokio::time::timeout(DEADLINE, tail.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.cursor, later);
    seen.push(next.event_id);
    let placed: Vec<EventId> = store
        .read_feed(
            FeedCursor::START,
            &FeedFilter {
                event_types: vec!["OrderPlaced".into()],
                categories: vec![],
            },
            100,
        )
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(seen, placed);
}
