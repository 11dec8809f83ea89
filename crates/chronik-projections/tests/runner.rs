//! Behaviour of the projection runner on the in-memory store (no database).
// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{EventId, ExpectedVersion, FeedCursor, RecordedEvent, StreamId};
use chronik_memory::MemoryStore;
use chronik_projections::{
    HandlerError, Lag, ParkedEvent, PollingOnly, Projection, ProjectionError, ProjectionRunner,
    ProjectionState, ProjectionStatus, RebuildOptions, RebuildProgress, RunnerHandle,
    RunnerOptions, checkpoint_lag, measure_lag, rebuild,
};
use chronik_store::{CheckpointStore, EventStore, FeedFilter};
use chronik_testkit::conformance::{event, stream};
use serde_json::json;
use tokio::sync::Notify;

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
async fn append(store: &MemoryStore, n: usize, event_type: &str) -> FeedCursor {
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
    last
}

async fn all_ids(store: &MemoryStore) -> Vec<EventId> {
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10_000)
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect()
}

fn start(store: &MemoryStore, p: &Arc<Recorder>, options: RunnerOptions) -> RunnerHandle {
    ProjectionRunner::new(Arc::new(store.clone()))
        .with_options(options)
        .with_wake(store.subscribe())
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

#[tokio::test]
async fn catches_up_then_stays_live_woken_by_the_store() {
    let store = MemoryStore::new();
    let first = append(&store, 25, "OrderPlaced").await;
    let p = Recorder::new("orders");
    // Polling so slow that only the wake-up can deliver within the deadline.
    let options = RunnerOptions {
        poll_min: Duration::from_secs(600),
        poll_max: Duration::from_secs(600),
        ..fast()
    };
    let h = start(&store, &p, options);
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

#[tokio::test]
async fn no_checkpoint_is_saved_until_the_projection_flushes() {
    let store = MemoryStore::new();
    let last = append(&store, 3, "OrderPlaced").await;
    let p = Recorder::new("pipelined");
    p.unflushable.store(true, Ordering::SeqCst);
    let h = start(&store, &p, fast());
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

#[tokio::test]
async fn polling_alone_delivers_when_there_is_no_wake_up() {
    let store = MemoryStore::new();
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

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_without_repeats() {
    let store = MemoryStore::new();
    let p = Recorder::new("resume");
    let a = append(&store, 12, "OrderPlaced").await;
    let h = start(&store, &p, fast());
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
    let h = start(&store, &p, fast());
    let s = h.wait_for("resume", b, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 19);
    assert_eq!(
        p.ids(),
        all_ids(&store).await,
        "nothing repeated, nothing lost"
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_shown_in_status_never_skipped() {
    let store = MemoryStore::new();
    append(&store, 4, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let p = Recorder::new("retry");
    let flag = p.poison(feed[2].event_id);
    let h = start(&store, &p, fast());

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

#[tokio::test]
async fn a_poison_event_is_skipped_only_after_a_recorded_park_decision() {
    let store = MemoryStore::new();
    let last = append(&store, 3, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let p = Recorder::new("parking");
    let _flag = p.poison(feed[1].event_id);
    let h = start(&store, &p, fast());
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

#[tokio::test]
async fn a_panicking_handler_is_a_failure_not_a_dead_task() {
    let store = MemoryStore::new();
    let last = append(&store, 2, "OrderPlaced").await;
    let first = all_ids(&store).await[0];
    let p = Recorder::new("panics");
    p.panic_on.lock().unwrap().insert(first);
    let h = start(&store, &p, fast());
    let s = h.wait_for("panics", last, DEADLINE).await.unwrap();
    assert!(s.last_error.unwrap().contains("panicked"));
    assert_eq!(p.ids(), all_ids(&store).await);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn an_aborted_runner_is_shown_crashed_not_as_its_last_state() {
    let store = MemoryStore::new();
    let last = append(&store, 2, "OrderPlaced").await;
    let p = Recorder::new("aborted");
    let h = start(&store, &p, fast());
    h.wait_for("aborted", last, DEADLINE).await.unwrap();
    let mut rx = h.subscribe("aborted").unwrap();
    h.abort().await;
    let s = rx.borrow_and_update().clone();
    assert_eq!(s.state, ProjectionState::Crashed, "{s:?}");
    assert!(s.last_error.unwrap().contains("aborted"));
}

#[tokio::test]
async fn lag_counts_events_behind_then_zero() {
    let store = MemoryStore::new();
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
    let h = start(&store, &p, fast());
    let s = until(&h, "lagging", |s| s.state == ProjectionState::Failing).await;
    assert_eq!(s.lag.events, 7);
    flag.store(false, Ordering::SeqCst);
    until(&h, "lagging", |s| s.state == ProjectionState::Live).await;
    let s = h.status("lagging").unwrap();
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

#[tokio::test]
async fn stop_lets_the_current_batch_finish_and_checkpoint() {
    let store = MemoryStore::new();
    append(&store, 15, "OrderPlaced").await;
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 100)
        .await
        .unwrap()
        .events;
    let p = Recorder::new("graceful");
    p.gate.store(true, Ordering::SeqCst);
    let h = start(&store, &p, fast());
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

#[tokio::test]
async fn wait_for_reports_unknown_and_stopped_projections() {
    let store = MemoryStore::new();
    let p = Recorder::new("waits");
    let h = start(&store, &p, fast());
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

#[tokio::test]
async fn a_filtered_projection_sees_only_its_types_and_still_reaches_the_head() {
    let store = MemoryStore::new();
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
    let h = start(&store, &p, fast());
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

#[tokio::test]
async fn rebuild_clears_and_replays_with_progress() {
    let store = MemoryStore::new();
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
    let h = start(&store, &p, fast());
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

#[tokio::test]
async fn handlers_see_upcast_events() {
    let store = MemoryStore::new();
    let old = chronik_core::NewEvent::new(
        EventId::new(uuid::Uuid::new_v4()).unwrap(),
        chronik_core::EventType::new("OrderPlaced").unwrap(),
        1,
        json!({ "customer_id": "c-1", "amount": 500 }),
        chronik_core::Metadata::default(),
    )
    .unwrap();
    let at = store
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::NoStream,
            &[old],
        )
        .await
        .unwrap()
        .cursor;
    let p = Recorder::new("upcast");
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_options(fast())
        .with_upcasters(Arc::new(orders::upcasters().unwrap()))
        .with_projection(Arc::clone(&p) as Arc<dyn Projection>)
        .start()
        .unwrap();
    h.wait_for("upcast", at, DEADLINE).await.unwrap();
    let seen = p.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.schema_version, 2);
    assert_eq!(
        seen.payload,
        json!({ "customer_id": "c-1", "total_amount": 500 })
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn duplicate_names_and_bad_options_are_refused() {
    let store = Arc::new(MemoryStore::new());
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

#[tokio::test]
async fn follow_tails_the_feed_then_new_events_with_a_filter() {
    use futures::StreamExt;
    let store = MemoryStore::new();
    append(&store, 2, "OrderPlaced").await;
    append(&store, 1, "OrderShipped").await;
    let wake = store.subscribe();
    let mut tail = chronik_projections::follow(
        &store,
        FeedCursor::START,
        FeedFilter {
            event_types: vec!["OrderPlaced".into()],
            categories: vec![],
        },
        &wake,
        chronik_projections::FollowOptions {
            poll_min: Duration::from_secs(600),
            poll_max: Duration::from_secs(600),
            ..Default::default()
        },
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(tail.next().await.unwrap().unwrap().event_id);
    }
    // Only the wake-up can deliver this one before the deadline.
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
