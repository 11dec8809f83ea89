//! The projection contract suite: every backend of the projection engine must pass every
//! case (issue 15). Like [`conformance`](crate::conformance) for stores, each case is a plain
//! `async fn case<E: Engine>(engine: E)` that panics on a violation, and the cases are listed
//! once, by macro:
//!
//! - [`projection_contract_cases!`](crate::projection_contract_cases): every engine, driven
//!   through [`Engine`] and [`Runner`]: catch-up and live wake-ups, polling alone, restart
//!   from the checkpoint, a failing handler retried and never skipped, a poison event
//!   skipped only after a recorded park decision, the decisions every parking lot refuses, a
//!   panicking handler, an aborted runner shown crashed, lag, a graceful stop, wait-for on a
//!   stopped runner, a filtered head, a rebuild with progress;
//! - [`partition_contract_cases!`](crate::partition_contract_cases): every engine that runs
//!   a projection as partitions on several workers ([`PartitionedEngine`]): a worker killed
//!   in the middle of a batch, its partitions taken over, every event applied exactly once
//!   and in stream order;
//! - [`generic_runner_cases!`](crate::generic_runner_cases): what only the at-least-once
//!   runner of `chronik-projections` has ([`Generic`]): flushing before a checkpoint,
//!   several projections per runner, refused options, following the feed.
//!
//! A backend's tests instantiate them with a macro of their own that builds a fresh store
//! and its engine:
//!
//! ```text
//! macro_rules! memory_cases {
//!     ($($case:ident),* $(,)?) => {$(
//!         #[tokio::test]
//!         async fn $case() {
//!             let store = MemoryStore::new();
//!             let ports = Ports::new(store.subscribe(), Arc::new(MemoryParkingLot::new()));
//!             chronik_testkit::projections::$case(Generic::new(store, ports)).await
//!         }
//!     )*};
//! }
//! chronik_testkit::projection_contract_cases!(memory_cases);
//! chronik_testkit::generic_runner_cases!(memory_cases);
//! ```
//!
//! An engine runs a [`Recorder`], the suite's projection: it records what it is handed, and
//! can be told to fail, panic or wait inside a batch. What its read model holds is the
//! engine's to say ([`Engine::applied`]): an exactly-once engine keeps it with its
//! checkpoint (the PostgreSQL engine writes it through the batch's transaction), so that a
//! batch rolled back leaves nothing. Feed reads after appends wait until the appended events
//! are visible: on PostgreSQL any transaction open in the cluster holds the feed back for a
//! moment, by design.
// Helpers outside the cases unwrap too: a failure there is a contract violation.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{EventId, ExpectedVersion, FeedCursor, RecordedEvent, StreamId};
use chronik_projections::RunnerBuilder as _;
use chronik_projections::{
    HandlerError, Lag, ParkedEvent, ParkingLot, Partitions, PollingOnly, Projection,
    ProjectionError, ProjectionRunner, ProjectionState, ProjectionStatus, RebuildOptions,
    RebuildProgress, RunnerHandle, RunnerOptions, WakeSource, Wakeup, checkpoint_lag, measure_lag,
    rebuild, wait_for_status,
};
use chronik_store::{CheckpointStore as _, EventStore as _, FeedFilter};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::conformance::{Store, event, stream};

/// Lists every projection contract case that every engine passes, once, by calling
/// `$m! { case, case, ... }`.
#[macro_export]
macro_rules! projection_contract_cases {
    ($m:ident) => {
        $m! {
            catches_up_then_stays_live_woken_by_the_store,
            polling_alone_delivers_when_there_is_no_wake_up,
            restart_resumes_from_the_checkpoint_without_repeats,
            a_failing_handler_is_retried_and_shown_in_status_never_skipped,
            a_poison_event_is_skipped_only_after_a_recorded_park_decision,
            a_park_decision_without_a_reason_or_a_decider_is_refused,
            a_panicking_handler_is_a_failure_not_a_dead_task,
            an_aborted_runner_is_shown_crashed_not_as_its_last_state,
            lag_counts_events_behind_then_zero,
            stop_lets_the_current_batch_finish_and_checkpoint,
            wait_for_reports_a_stopped_projection,
            a_filtered_projection_sees_only_its_types_and_still_reaches_the_head,
            rebuild_clears_and_replays_with_progress,
        }
    };
}

/// Lists the contract cases of engines that run a projection as partitions
/// ([`PartitionedEngine`](crate::projections::PartitionedEngine)).
#[macro_export]
macro_rules! partition_contract_cases {
    ($m:ident) => {
        $m! {
            a_dead_workers_partitions_are_taken_over_and_applied_exactly_once,
        }
    };
}

/// Lists the cases of what only the at-least-once runner of `chronik-projections` has
/// ([`Generic`](crate::projections::Generic)): run them with a `Generic` engine.
#[macro_export]
macro_rules! generic_runner_cases {
    ($m:ident) => {
        $m! {
            no_checkpoint_is_saved_until_the_projection_flushes,
            wait_for_reports_unknown_projections,
            duplicate_names_and_bad_options_are_refused,
            follow_tails_the_feed_then_new_events_with_a_filter,
        }
    };
}

/// Which wake-ups a runner started by [`Engine::start`] gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The backend's own wake-up source (as in production), polling as the fallback.
    Backend,
    /// None: polling alone must deliver.
    PollingOnly,
}

/// One backend of the projection engine, as the contract drives it: a store, and runners of
/// a [`Recorder`] on it.
pub trait Engine: Send + Sync {
    /// The store the runners read.
    type Store: Store;
    /// A started runner.
    type Runner: Runner;

    /// The store (cases append to it and read its feed and checkpoints).
    fn store(&self) -> &Self::Store;

    /// Whether a wake-up always finds the commit that caused it visible, so that a case may
    /// turn polling off and rely on wake-ups alone. True in memory; false on PostgreSQL,
    /// where a notification can arrive while the event is still behind the feed's horizon
    /// (polling then picks it up).
    fn wake_is_exact(&self) -> bool;

    /// The parking lot whose decisions the runners honour.
    fn parking(&self) -> Arc<dyn ParkingLot>;

    /// Starts a runner of `projection` (one projection per runner) with `options`.
    fn start(
        &self,
        projection: &Arc<Recorder>,
        options: RunnerOptions,
        wake: Wake,
    ) -> impl Future<Output = Self::Runner> + Send;

    /// The events `projection`'s read model holds, in the order they were applied: only
    /// effects that were committed with a checkpoint, for an exactly-once engine.
    fn applied(&self, projection: &Arc<Recorder>) -> impl Future<Output = Vec<EventId>> + Send;

    /// Rebuilds `projection` from scratch (clear, replay the feed) in batches of `batch`,
    /// calling `progress` at the start and after every batch; panics if it fails.
    fn rebuild(
        &self,
        projection: &Arc<Recorder>,
        batch: usize,
        progress: &mut (dyn FnMut(&RebuildProgress) + Send),
    ) -> impl Future<Output = RebuildProgress> + Send;
}

/// A runner started by an [`Engine`].
pub trait Runner: Send + Sync {
    /// A live view of its projection's status.
    fn subscribe(&self) -> watch::Receiver<ProjectionStatus>;
    /// Sends the stop signal without waiting.
    fn request_stop(&self);
    /// Graceful stop: the current batch finishes and checkpoints; the final status.
    fn stop(self) -> impl Future<Output = ProjectionStatus> + Send;
    /// Kills the task as a crash would.
    fn abort(self) -> impl Future<Output = ()> + Send;
}

/// An engine that runs a projection as [`Partitions`] shared by several workers, each
/// partition owned by one worker at a time.
pub trait PartitionedEngine: Engine {
    /// A started worker.
    type Worker: Worker;

    /// Starts a worker of `projection` split into `partitions`, on sessions (a pool) of its
    /// own, as another process's worker would be.
    fn start_worker(
        &self,
        projection: &Arc<Recorder>,
        partitions: Partitions,
        options: RunnerOptions,
    ) -> impl Future<Output = Self::Worker> + Send;
}

/// A worker started by a [`PartitionedEngine`].
pub trait Worker: Send + Sync {
    /// The partitions it owns now, ascending.
    fn owned(&self) -> Vec<u32>;
    /// Kills it as a crash would: its open batches roll back, its partitions are freed.
    fn kill(self) -> impl Future<Output = ()> + Send;
    /// Graceful stop.
    fn stop(self) -> impl Future<Output = ()> + Send;
}

/// What a backend gives the at-least-once runner besides its store.
#[derive(Clone)]
pub struct Ports {
    /// Its live wake-up source (e.g. `MemoryStore::subscribe()`, `PgEventStore::wake_source`).
    pub wake: Arc<dyn WakeSource>,
    /// The parking lot every runner of the engine consults.
    pub parking: Arc<dyn ParkingLot>,
    /// See [`Engine::wake_is_exact`].
    pub wake_is_exact: bool,
}

impl Ports {
    /// Ports with an exact wake-up source (see [`Engine::wake_is_exact`]).
    pub fn new(wake: impl WakeSource + 'static, parking: Arc<dyn ParkingLot>) -> Self {
        Self {
            wake: Arc::new(wake),
            parking,
            wake_is_exact: true,
        }
    }

    /// The same ports, with wake-ups that may find nothing new yet.
    #[must_use]
    pub fn inexact(mut self) -> Self {
        self.wake_is_exact = false;
        self
    }
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports")
            .field("wake", &self.wake)
            .field("parking", &self.parking)
            .field("wake_is_exact", &self.wake_is_exact)
            .finish()
    }
}

/// The at-least-once engine, `chronik_projections::ProjectionRunner`, on any store with its
/// backend's [`Ports`]; its read model is what the [`Recorder`] was handed.
#[derive(Debug, Clone)]
pub struct Generic<S> {
    store: S,
    ports: Ports,
}

impl<S: Store> Generic<S> {
    /// The engine on `store` with `ports`.
    pub fn new(store: S, ports: Ports) -> Self {
        Self { store, ports }
    }

    fn runner(&self, options: RunnerOptions) -> ProjectionRunner<S> {
        ProjectionRunner::new(Arc::new(self.store.clone()))
            .with_options(options)
            .with_parking(Arc::clone(&self.ports.parking))
    }
}

/// A spawned runner of one projection, whichever engine spawned it (every engine's runner
/// is a [`RunnerHandle`]): the handle and that projection's name.
#[derive(Debug)]
pub struct Spawned {
    handle: RunnerHandle,
    name: String,
}

impl Spawned {
    /// `handle`, which runs projection `name`.
    pub fn new(handle: RunnerHandle, name: impl Into<String>) -> Self {
        Self {
            handle,
            name: name.into(),
        }
    }
}

impl Runner for Spawned {
    fn subscribe(&self) -> watch::Receiver<ProjectionStatus> {
        self.handle.subscribe(&self.name).unwrap()
    }
    fn request_stop(&self) {
        self.handle.request_stop();
    }
    async fn stop(self) -> ProjectionStatus {
        self.handle.stop().await.unwrap().remove(0)
    }
    async fn abort(self) {
        self.handle.abort().await;
    }
}

impl<S: Store> Engine for Generic<S> {
    type Store = S;
    type Runner = Spawned;

    fn store(&self) -> &S {
        &self.store
    }

    fn wake_is_exact(&self) -> bool {
        self.ports.wake_is_exact
    }

    fn parking(&self) -> Arc<dyn ParkingLot> {
        Arc::clone(&self.ports.parking)
    }

    async fn start(
        &self,
        projection: &Arc<Recorder>,
        options: RunnerOptions,
        wake: Wake,
    ) -> Spawned {
        let runner = self.runner(options);
        let runner = match wake {
            Wake::Backend => runner.with_wake(SharedWake(Arc::clone(&self.ports.wake))),
            Wake::PollingOnly => runner.with_wake(PollingOnly),
        };
        Spawned {
            handle: runner
                .with_projection(Arc::clone(projection) as Arc<dyn Projection>)
                .spawn()
                .unwrap(),
            name: projection.name.clone(),
        }
    }

    async fn applied(&self, projection: &Arc<Recorder>) -> Vec<EventId> {
        projection.ids()
    }

    async fn rebuild(
        &self,
        projection: &Arc<Recorder>,
        batch: usize,
        progress: &mut (dyn FnMut(&RebuildProgress) + Send),
    ) -> RebuildProgress {
        let options = RebuildOptions {
            batch_size: batch,
            upcasters: None,
        };
        rebuild(&self.store, &**projection, &options, progress)
            .await
            .unwrap()
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

/// The suite's projection: records what it is handed (in memory: what an at-least-once
/// engine applied), fails on poisoned events, panics once on chosen ones, can be held
/// inside a batch, and counts its clears. An engine that keeps its read model elsewhere
/// wraps it and calls its [`Projection`] methods first.
#[derive(Debug, Default)]
pub struct Recorder {
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
        Self::filtered(name, FeedFilter::all())
    }
    fn filtered(name: &str, filter: FeedFilter) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            filter,
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
        standby_poll: Duration::from_millis(30),
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

/// Appends `rounds` events to each of `streams`, interleaving them; returns the last cursor
/// without waiting for it to be visible.
async fn append_rounds<S: Store>(store: &S, streams: &[StreamId], rounds: usize) -> FeedCursor {
    let mut last = FeedCursor::START;
    for _ in 0..rounds {
        for id in streams {
            let r = store
                .append(id, ExpectedVersion::Any, &[event("OrderPlaced", json!({}))])
                .await
                .unwrap();
            last = r.cursor;
        }
    }
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

async fn feed<S: Store>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10_000)
        .await
        .unwrap()
        .events
}

async fn all_ids<S: Store>(store: &S) -> Vec<EventId> {
    feed(store).await.iter().map(|e| e.event_id).collect()
}

/// Waits until `h` has checkpointed `target` (the shared read-your-writes wait).
async fn wait_for<R: Runner>(
    h: &R,
    target: FeedCursor,
    timeout: Duration,
) -> Result<ProjectionStatus, ProjectionError> {
    wait_for_status(h.subscribe(), target, timeout).await
}

/// Waits (with a deadline) until the status satisfies `f`.
async fn until<R: Runner>(h: &R, f: impl Fn(&ProjectionStatus) -> bool) -> ProjectionStatus {
    let mut rx = h.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| f(s)))
        .await
        .expect("condition not reached before the deadline")
        .unwrap()
        .clone()
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`. For
/// conditions no status announces (rows in a table, a worker's partitions).
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Contract case `catches_up_then_stays_live_woken_by_the_store` (see the module docs).
pub async fn catches_up_then_stays_live_woken_by_the_store<E: Engine>(engine: E) {
    let store = engine.store();
    let first = append(store, 25, "OrderPlaced").await;
    let p = Recorder::new("orders");
    // With exact wake-ups, polling so slow that only the wake-up can deliver within the
    // deadline; otherwise (PostgreSQL) the usual polling backs the wake-ups up.
    let options = if engine.wake_is_exact() {
        RunnerOptions {
            poll_min: Duration::from_secs(600),
            poll_max: Duration::from_secs(600),
            ..fast()
        }
    } else {
        fast()
    };
    let h = engine.start(&p, options, Wake::Backend).await;
    let s = wait_for(&h, first, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 25);
    assert_eq!(engine.applied(&p).await, all_ids(store).await);
    let s = until(&h, |s| s.state == ProjectionState::Live).await;
    assert_eq!(s.checkpoint, first);

    let last = append(store, 5, "OrderShipped").await;
    wait_for(&h, last, DEADLINE).await.unwrap();
    assert_eq!(
        engine.applied(&p).await,
        all_ids(store).await,
        "each event once, in feed order"
    );
    h.stop().await;
}

/// Contract case `no_checkpoint_is_saved_until_the_projection_flushes` (see the module docs).
pub async fn no_checkpoint_is_saved_until_the_projection_flushes<S: Store>(engine: Generic<S>) {
    let store = engine.store();
    let last = append(store, 3, "OrderPlaced").await;
    let p = Recorder::new("pipelined");
    p.unflushable.store(true, Ordering::SeqCst);
    let h = engine.start(&p, fast(), Wake::Backend).await;
    let s = until(&h, |s| s.attempts >= 2).await;
    assert_eq!(s.state, ProjectionState::Failing);
    let error = s.last_error.unwrap();
    assert!(error.contains("flushing before the checkpoint"), "{error}");
    assert_eq!(p.ids(), all_ids(store).await, "handled, but not flushed");
    assert_eq!(store.load_checkpoint("pipelined").await.unwrap(), None);

    p.unflushable.store(false, Ordering::SeqCst);
    let s = wait_for(&h, last, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 3);
    assert_eq!(
        p.ids(),
        all_ids(store).await,
        "flushing handles nothing again"
    );
    h.stop().await;
}

/// Contract case `polling_alone_delivers_when_there_is_no_wake_up` (see the module docs).
pub async fn polling_alone_delivers_when_there_is_no_wake_up<E: Engine>(engine: E) {
    let p = Recorder::new("polled");
    let h = engine.start(&p, fast(), Wake::PollingOnly).await;
    until(&h, |s| s.state == ProjectionState::Live).await;
    let last = append(engine.store(), 3, "OrderPlaced").await;
    wait_for(&h, last, DEADLINE).await.unwrap();
    assert_eq!(engine.applied(&p).await, all_ids(engine.store()).await);
    h.stop().await;
}

/// Contract case `restart_resumes_from_the_checkpoint_without_repeats` (see the module docs).
pub async fn restart_resumes_from_the_checkpoint_without_repeats<E: Engine>(engine: E) {
    let store = engine.store();
    let p = Recorder::new("resume");
    let a = append(store, 12, "OrderPlaced").await;
    let h = engine.start(&p, fast(), Wake::Backend).await;
    wait_for(&h, a, DEADLINE).await.unwrap();
    let stopped = h.stop().await;
    assert_eq!(stopped.state, ProjectionState::Stopped);
    assert_eq!(
        store
            .load_checkpoint("resume")
            .await
            .unwrap()
            .unwrap()
            .cursor,
        a
    );

    let b = append(store, 7, "OrderPlaced").await;
    let h = engine.start(&p, fast(), Wake::Backend).await;
    let s = wait_for(&h, b, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 19);
    assert_eq!(
        engine.applied(&p).await,
        all_ids(store).await,
        "nothing repeated, nothing lost"
    );
    h.stop().await;
}

/// Contract case `a_failing_handler_is_retried_and_shown_in_status_never_skipped` (see the module docs).
pub async fn a_failing_handler_is_retried_and_shown_in_status_never_skipped<E: Engine>(engine: E) {
    let store = engine.store();
    append(store, 4, "OrderPlaced").await;
    let feed = feed(store).await;
    let p = Recorder::new("retry");
    let flag = p.poison(feed[2].event_id);
    let h = engine.start(&p, fast(), Wake::Backend).await;

    let s = until(&h, |s| {
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
    let err = wait_for(&h, feed[3].cursor, Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Timeout { last_error: Some(e), reached, .. } if e.contains("poison") && *reached == feed[1].cursor),
        "{err:?}"
    );

    flag.store(false, Ordering::SeqCst); // the bug is fixed
    let s = wait_for(&h, feed[3].cursor, DEADLINE).await.unwrap();
    assert_eq!(
        engine.applied(&p).await,
        all_ids(store).await,
        "retried, not skipped"
    );
    assert!(s.last_error.is_some(), "the last error stays visible");
    let s = until(&h, |s| s.state == ProjectionState::Live).await;
    assert_eq!(s.failing_event, None);
    h.stop().await;
}

/// Contract case `a_poison_event_is_skipped_only_after_a_recorded_park_decision` (see the module docs).
pub async fn a_poison_event_is_skipped_only_after_a_recorded_park_decision<E: Engine>(engine: E) {
    let store = engine.store();
    let last = append(store, 3, "OrderPlaced").await;
    let feed = feed(store).await;
    let p = Recorder::new("parking");
    let _flag = p.poison(feed[1].event_id);
    let h = engine.start(&p, fast(), Wake::Backend).await;
    let s = until(&h, |s| s.attempts >= 5).await;
    assert_eq!(s.parked_skipped, 0);
    assert_eq!(engine.applied(&p).await, vec![feed[0].event_id]);

    let bad = s.failing_event.unwrap();
    let parking = engine.parking();
    parking
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
    let s = wait_for(&h, last, DEADLINE).await.unwrap();
    assert_eq!(s.parked_skipped, 1);
    assert_eq!(
        engine.applied(&p).await,
        vec![feed[0].event_id, feed[2].event_id]
    );
    assert_eq!(parking.parked("parking").await.unwrap().len(), 1);
    h.stop().await;
}

/// Contract case `a_park_decision_without_a_reason_or_a_decider_is_refused` (see the module
/// docs): every parking lot refuses the same decisions, and a refused one parks nothing.
pub async fn a_park_decision_without_a_reason_or_a_decider_is_refused<E: Engine>(engine: E) {
    append(engine.store(), 1, "OrderPlaced").await;
    let event = feed(engine.store()).await.remove(0);
    let decision = |projection: &str, reason: &str, decided_by: &str| ParkedEvent {
        projection: projection.into(),
        event_id: event.event_id,
        stream_id: event.stream_id.clone(),
        version: event.version,
        reason: reason.into(),
        decided_by: decided_by.into(),
        decided_at: chrono::Utc::now(),
    };
    let parking = engine.parking();
    for refused in [
        decision("refusals", " ", "ops"),
        decision("refusals", "ticket 42", ""),
        decision("has space", "ticket 42", "ops"),
    ] {
        let e = parking.park(refused.clone()).await.unwrap_err();
        assert!(
            matches!(e, chronik_store::StoreError::InvalidRequest(_)),
            "{refused:?}: {e:?}"
        );
    }
    assert!(parking.parked("refusals").await.unwrap().is_empty());
    assert!(!parking.is_parked("refusals", event.event_id).await.unwrap());
    parking
        .park(decision("refusals", "ticket 42", "ops"))
        .await
        .unwrap();
    assert!(parking.is_parked("refusals", event.event_id).await.unwrap());
}

/// Contract case `a_panicking_handler_is_a_failure_not_a_dead_task` (see the module docs).
pub async fn a_panicking_handler_is_a_failure_not_a_dead_task<E: Engine>(engine: E) {
    let store = engine.store();
    let last = append(store, 2, "OrderPlaced").await;
    let first = all_ids(store).await[0];
    let p = Recorder::new("panics");
    p.panic_on.lock().unwrap().insert(first);
    let h = engine.start(&p, fast(), Wake::Backend).await;
    let s = wait_for(&h, last, DEADLINE).await.unwrap();
    assert!(s.last_error.unwrap().contains("panicked"));
    assert_eq!(engine.applied(&p).await, all_ids(store).await);
    h.stop().await;
}

/// Contract case `an_aborted_runner_is_shown_crashed_not_as_its_last_state` (see the module docs).
pub async fn an_aborted_runner_is_shown_crashed_not_as_its_last_state<E: Engine>(engine: E) {
    let last = append(engine.store(), 2, "OrderPlaced").await;
    let p = Recorder::new("aborted");
    let h = engine.start(&p, fast(), Wake::Backend).await;
    wait_for(&h, last, DEADLINE).await.unwrap();
    let mut rx = h.subscribe();
    h.abort().await;
    let s = rx.borrow_and_update().clone();
    assert_eq!(s.state, ProjectionState::Crashed, "{s:?}");
    assert!(s.last_error.unwrap().contains("aborted"));
}

/// Contract case `lag_counts_events_behind_then_zero` (see the module docs).
pub async fn lag_counts_events_behind_then_zero<E: Engine>(engine: E) {
    let store = engine.store();
    append(store, 7, "OrderPlaced").await;
    let feed = feed(store).await;
    // Scripted clock: lag seconds are measured from the oldest unprocessed event.
    let now = feed[0].recorded_at + chrono::Duration::seconds(90);
    assert_eq!(
        measure_lag(store, FeedCursor::START, now).await.unwrap(),
        Lag {
            events: 7,
            seconds: 90.0
        }
    );
    assert_eq!(checkpoint_lag(store, "lagging", now).await.unwrap(), None);

    let p = Recorder::new("lagging");
    let flag = p.poison(feed[0].event_id);
    let h = engine.start(&p, fast(), Wake::Backend).await;
    // The lag is measured after the state changes: wait for both.
    let s = until(&h, |s| {
        s.state == ProjectionState::Failing && s.lag.events == 7
    })
    .await;
    assert_eq!(s.lag.events, 7);
    flag.store(false, Ordering::SeqCst);
    let s = until(&h, |s| {
        s.state == ProjectionState::Live && s.lag == Lag::default()
    })
    .await;
    assert_eq!(s.lag, Lag::default());
    h.stop().await;

    // Behind again while stopped: 4 events, the oldest 30 s old on the scripted clock.
    append(store, 4, "OrderPlaced").await;
    let behind = store
        .read_feed(feed[6].cursor, &FeedFilter::all(), 1)
        .await
        .unwrap()
        .events[0]
        .recorded_at;
    let (cp, lag) = checkpoint_lag(store, "lagging", behind + chrono::Duration::seconds(30))
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
pub async fn stop_lets_the_current_batch_finish_and_checkpoint<E: Engine>(engine: E) {
    let store = engine.store();
    append(store, 15, "OrderPlaced").await;
    let feed = feed(store).await;
    let p = Recorder::new("graceful");
    p.gate.store(true, Ordering::SeqCst);
    let h = engine.start(&p, fast(), Wake::Backend).await;
    tokio::time::timeout(DEADLINE, p.entered.notified())
        .await
        .unwrap();
    h.request_stop(); // arrives while the first batch (10 events) is in flight
    p.release.notify_one();
    let s = h.stop().await;
    assert_eq!(s.state, ProjectionState::Stopped);
    assert_eq!(
        engine.applied(&p).await.len(),
        10,
        "the batch finished, the next did not start"
    );
    assert_eq!(s.checkpoint, feed[9].cursor);
    let cp = store.load_checkpoint("graceful").await.unwrap().unwrap();
    assert_eq!((cp.cursor, cp.events_processed), (feed[9].cursor, 10));
}

/// Contract case `wait_for_reports_a_stopped_projection` (see the module docs).
pub async fn wait_for_reports_a_stopped_projection<E: Engine>(engine: E) {
    let p = Recorder::new("waits");
    let h = engine.start(&p, fast(), Wake::Backend).await;
    // Nothing appended yet: the start is reached at once.
    wait_for(&h, FeedCursor::START, DEADLINE).await.unwrap();
    h.request_stop();
    until(&h, |s| s.state == ProjectionState::Stopped).await;
    let later = append(engine.store(), 1, "OrderPlaced").await;
    assert!(matches!(
        wait_for(&h, later, DEADLINE).await,
        Err(ProjectionError::Stopped(name)) if name == "waits"
    ));
    h.stop().await;
}

/// Contract case `wait_for_reports_unknown_projections` (see the module docs).
pub async fn wait_for_reports_unknown_projections<S: Store>(engine: Generic<S>) {
    let p = Recorder::new("known");
    let h = engine.start(&p, fast(), Wake::Backend).await;
    assert!(matches!(
        h.handle.wait_for("nope", FeedCursor::START, DEADLINE).await,
        Err(ProjectionError::UnknownProjection(_))
    ));
    h.stop().await;
}

/// Contract case `a_filtered_projection_sees_only_its_types_and_still_reaches_the_head` (see the module docs).
pub async fn a_filtered_projection_sees_only_its_types_and_still_reaches_the_head<E: Engine>(
    engine: E,
) {
    let store = engine.store();
    append(store, 3, "OrderPlaced").await;
    append(store, 2, "OrderShipped").await;
    let last = append(store, 4, "OrderPlaced").await;
    let shipped = FeedFilter {
        event_types: vec!["OrderShipped".into()],
        categories: vec![],
    };
    let p = Recorder::filtered("shipments", shipped.clone());
    let h = engine.start(&p, fast(), Wake::Backend).await;
    let s = wait_for(&h, last, DEADLINE).await.unwrap();
    assert_eq!(s.events_processed, 2);
    assert_eq!(engine.applied(&p).await, ids_of(store, &shipped).await);
    let s = until(&h, |s| s.state == ProjectionState::Live).await;
    assert_eq!(s.lag.events, 0);
    h.stop().await;
}

async fn ids_of<S: Store>(store: &S, filter: &FeedFilter) -> Vec<EventId> {
    store
        .read_feed(FeedCursor::START, filter, 10_000)
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.event_id)
        .collect()
}

/// Contract case `rebuild_clears_and_replays_with_progress` (see the module docs).
pub async fn rebuild_clears_and_replays_with_progress<E: Engine>(engine: E) {
    let store = engine.store();
    let last = append(store, 23, "OrderPlaced").await;
    append(store, 2, "Other").await;
    let placed = FeedFilter {
        event_types: vec!["OrderPlaced".into()],
        categories: vec![],
    };
    let p = Recorder::filtered("rebuilt", placed.clone());
    let h = engine.start(&p, fast(), Wake::Backend).await;
    wait_for(&h, last, DEADLINE).await.unwrap();
    h.stop().await;

    let mut reports: Vec<RebuildProgress> = Vec::new();
    let done = engine.rebuild(&p, 10, &mut |r| reports.push(*r)).await;
    assert_eq!(p.clears.load(Ordering::SeqCst), 1);
    assert_eq!((done.scanned, done.total, done.handled), (25, 25, 23));
    let scanned: Vec<u64> = reports.iter().map(|r| r.scanned).collect();
    assert_eq!(scanned, vec![0, 10, 20, 25]);
    assert_eq!(
        engine.applied(&p).await,
        ids_of(store, &placed).await,
        "each once after the clear"
    );
    let cp = store.load_checkpoint("rebuilt").await.unwrap().unwrap();
    assert_eq!(cp.cursor, store.feed_head().await.unwrap().last.unwrap());
}

/// Contract case `duplicate_names_and_bad_options_are_refused` (see the module docs).
pub async fn duplicate_names_and_bad_options_are_refused<S: Store>(engine: Generic<S>) {
    let p = Recorder::new("twice");
    let err = engine
        .runner(RunnerOptions::default())
        .with_projection(Arc::clone(&p) as Arc<dyn Projection>)
        .with_projection(p as Arc<dyn Projection>)
        .spawn()
        .unwrap_err();
    assert!(matches!(err, ProjectionError::DuplicateName(_)));
    let err = engine
        .runner(RunnerOptions {
            batch_size: 0,
            ..RunnerOptions::default()
        })
        .spawn()
        .unwrap_err();
    assert!(matches!(err, ProjectionError::InvalidOptions(_)));
}

/// Contract case `follow_tails_the_feed_then_new_events_with_a_filter` (see the module docs).
pub async fn follow_tails_the_feed_then_new_events_with_a_filter<S: Store>(engine: Generic<S>) {
    use futures::StreamExt;
    let store = engine.store();
    append(store, 2, "OrderPlaced").await;
    append(store, 1, "OrderShipped").await;
    let wake = SharedWake(Arc::clone(&engine.ports.wake));
    let placed = FeedFilter {
        event_types: vec!["OrderPlaced".into()],
        categories: vec![],
    };
    let mut tail = chronik_projections::follow(
        store,
        FeedCursor::START,
        placed.clone(),
        &wake,
        if engine.wake_is_exact() {
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
    let later = append(store, 1, "OrderPlaced").await;
    let next = tokio::time::timeout(DEADLINE, tail.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.cursor, later);
    seen.push(next.event_id);
    assert_eq!(seen, ids_of(store, &placed).await);
}

/// Contract case `a_dead_workers_partitions_are_taken_over_and_applied_exactly_once` (see the
/// module docs): four partitions on two workers; one is killed while it is inside a batch
/// (its handler waits there); the other takes all four over, and every event is applied
/// exactly once, each stream's in version order.
pub async fn a_dead_workers_partitions_are_taken_over_and_applied_exactly_once<
    E: PartitionedEngine,
>(
    engine: E,
) {
    let store = engine.store();
    // Forty streams: every partition gets some (the chance that one of four gets none of
    // forty random stream ids is below 1e-4).
    let streams: Vec<StreamId> = (0..40).map(|_| stream("order")).collect();
    until_visible(store, append_rounds(store, &streams, 2).await).await;
    let four = Partitions::new(4).unwrap();
    let options = RunnerOptions {
        batch_size: 5,
        ..fast()
    };
    let (victim, survivor) = (Recorder::new("takeover"), Recorder::new("takeover"));
    let a = engine.start_worker(&victim, four, options.clone()).await;
    let b = engine.start_worker(&survivor, four, options).await;
    eventually(
        "the two workers share the four partitions two and two",
        DEADLINE,
        async || a.owned().len() == 2 && b.owned().len() == 2,
    )
    .await;

    // The victim's next event holds its batch open: it dies in the middle of it. (Its
    // open batch holds the feed's horizon, so these events become visible once it died.)
    victim.gate.store(true, Ordering::SeqCst);
    let last = append_rounds(store, &streams, 3).await;
    tokio::time::timeout(DEADLINE, victim.entered.notified())
        .await
        .expect("the victim's handler is inside a batch");
    a.kill().await;
    until_visible(store, last).await;
    eventually("the survivor owns every partition", DEADLINE, async || {
        b.owned() == vec![0, 1, 2, 3]
    })
    .await;
    let all = feed(store).await;
    assert_eq!(all.last().map(|e| e.cursor), Some(last));
    eventually("every event is applied", DEADLINE, async || {
        engine.applied(&survivor).await.len() >= all.len()
    })
    .await;
    b.stop().await;

    let applied = engine.applied(&survivor).await;
    let unique: HashSet<EventId> = applied.iter().copied().collect();
    assert_eq!(unique.len(), applied.len(), "an event was applied twice");
    assert_eq!(
        unique,
        all.iter().map(|e| e.event_id).collect::<HashSet<_>>(),
        "an event was never applied"
    );
    let by_id: HashMap<EventId, &RecordedEvent> = all.iter().map(|e| (e.event_id, e)).collect();
    let mut next: HashMap<&StreamId, u64> = HashMap::new();
    for id in &applied {
        let e = by_id[id];
        let expected = next.entry(&e.stream_id).or_insert(1);
        assert_eq!(
            e.version.get(),
            *expected,
            "{} applied out of stream order",
            e.stream_id
        );
        *expected += 1;
    }
}
