//! Reactors under faults: two runners of one reactor (the same name, so one checkpoint)
//! race over the feed on the at-least-once `ProjectionRunner` while they are aborted (as a
//! crash would, between a reaction's append and the checkpoint) and their handler fails
//! right after a reaction was appended; every selected trigger must still get exactly one
//! reaction, at the place its id names.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{Aggregate, DomainEvent, EventId, FeedCursor, RecordedEvent, StreamId};
use chronik_postgres::PgEventStore;
use chronik_projections::RunnerBuilder as _;
use chronik_projections::{
    HandlerError, Projection, ProjectionRunner, ProjectionState, RunnerHandle, RunnerOptions,
};
use chronik_store::{FeedFilter, ReactOutcome, Repository, reaction_event_id};
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::world::{C, World, between};

/// The reactor's name: its checkpoint, and part of its reactions' ids.
pub(crate) const NAME: &str = "torture-reactor";
/// The categories whose events are triggers (the writers' streams).
const TRIGGER_CATEGORIES: [&str; 2] = ["hot", "cold"];
/// The category of the reactions' streams.
const TARGET_CATEGORY: &str = "reaction";
/// How many reaction streams (few, so that reactions to different triggers conflict).
const TARGETS: u128 = 5;
/// One trigger in this many is selected.
const SELECT_ONE_IN: u128 = 7;

/// Whether the reactor reacts to the event with id `id` in `stream`.
pub(crate) fn selected(stream: &str, id: Uuid) -> bool {
    TRIGGER_CATEGORIES
        .iter()
        .any(|c| stream.strip_prefix(c).is_some_and(|r| r.starts_with('-')))
        && id.as_u128().is_multiple_of(SELECT_ONE_IN)
}

/// The stream the reaction to `trigger` goes to.
pub(crate) fn target(trigger: Uuid) -> String {
    format!("{TARGET_CATEGORY}-{}", trigger.as_u128() % TARGETS)
}

/// The id of the reaction to `trigger` (what `Repository::react` gives it).
pub(crate) fn reaction_id(trigger: Uuid) -> Option<Uuid> {
    let stream = StreamId::new(target(trigger)).ok()?;
    let trigger = EventId::new(trigger).ok()?;
    reaction_event_id(NAME, trigger, &stream, 0)
        .ok()
        .map(|id| id.as_uuid())
}

/// A reaction stream: one event per trigger reacted to.
#[derive(Debug, Default)]
struct Echoes;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
enum EchoEvent {
    Echoed { trigger: Uuid },
}

impl Aggregate for Echoes {
    const TYPE: &'static str = TARGET_CATEGORY;
    type Command = Uuid;
    type Event = EchoEvent;
    type Error = Infallible;

    fn handle(&self, trigger: &Uuid) -> Result<Vec<EchoEvent>, Infallible> {
        Ok(vec![EchoEvent::Echoed { trigger: *trigger }])
    }

    fn apply(&mut self, _: &EchoEvent) {}
}

/// Reacts to the selected triggers with `Repository::react`, and fails one call in
/// `crash_one_in` right after a reaction was appended (the crash between append and
/// checkpoint), so that the runner delivers the trigger again.
pub(crate) struct TortureReactor {
    repo: Repository<Echoes, PgEventStore>,
    calls: AtomicU64,
    crash_one_in: u64,
    world: Arc<World>,
}

impl std::fmt::Debug for TortureReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TortureReactor")
            .field("crash_one_in", &self.crash_one_in)
            .finish_non_exhaustive()
    }
}

impl TortureReactor {
    /// Reacts through `store`, failing one call in `crash_one_in` right after its append
    /// (0: never).
    pub(crate) fn new(world: Arc<World>, store: PgEventStore, crash_one_in: u64) -> Self {
        Self {
            repo: Repository::new(store).with_sleep(tokio::time::sleep),
            calls: AtomicU64::new(0),
            crash_one_in,
            world,
        }
    }
}

#[async_trait]
impl Projection for TortureReactor {
    fn name(&self) -> &str {
        NAME
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter {
            event_types: Vec::new(),
            categories: TRIGGER_CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let trigger = event.event_id.as_uuid();
        if !selected(event.stream_id.as_str(), trigger) {
            return Ok(());
        }
        let stream = StreamId::new(target(trigger)).map_err(HandlerError::from_error)?;
        let outcome = self
            .repo
            .react(&stream, trigger, event, NAME)
            .await
            .map_err(HandlerError::from_error)?;
        match outcome {
            ReactOutcome::Executed(_) => self.world.counts.inc(C::reactions_executed),
            ReactOutcome::AlreadyDone => self.world.counts.inc(C::reactions_already_done),
            ReactOutcome::Nothing => {}
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, ReactOutcome::Executed(_))
            && self.crash_one_in > 0
            && n % self.crash_one_in == self.crash_one_in - 1
        {
            self.world.counts.inc(C::reactor_crashes);
            return Err(HandlerError::new(
                "injected crash after the reaction's append",
            ));
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn options(rng: &mut ChaCha8Rng) -> RunnerOptions {
    RunnerOptions {
        batch_size: [1, 7, 50][rng.gen_range(0..3)],
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(100),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(200),
        ..RunnerOptions::default()
    }
}

fn spawn(
    store: &PgEventStore,
    reactor: &Arc<TortureReactor>,
    options: RunnerOptions,
    world: &World,
) -> Option<RunnerHandle> {
    let runner = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(Arc::clone(reactor) as Arc<dyn Projection>)
        .with_options(options)
        .spawn();
    match runner {
        Ok(h) => {
            world.counts.inc(C::reactor_runner_starts);
            Some(h)
        }
        Err(e) => {
            eprintln!("warning: cannot start a reactor runner: {e}");
            None
        }
    }
}

/// Keeps two runners of the reactor racing (the same name: one checkpoint, each
/// delivering what the other may already have), aborting one now and then as a crash
/// would and starting another, until the run ends.
pub(crate) async fn reactor_chaos(
    world: Arc<World>,
    store: PgEventStore,
    reactor: Arc<TortureReactor>,
) {
    let mut rng = world.rng("reactors", 0);
    let mut handles: Vec<RunnerHandle> = Vec::new();
    let every = world.plan.kill_every * 4;
    loop {
        while handles.len() < 2 {
            match spawn(&store, &reactor, options(&mut rng), &world) {
                Some(h) => handles.push(h),
                None => break,
            }
        }
        if !world.pause(between(&mut rng, every / 4, every)).await {
            break;
        }
        if !handles.is_empty() && rng.gen_bool(0.7) {
            let h = handles.swap_remove(rng.gen_range(0..handles.len()));
            h.abort().await;
            world.counts.inc(C::reactor_runner_aborts);
        }
    }
    for h in handles {
        h.abort().await;
    }
}

/// Runs one runner of `reactor` (built without injected crashes) until it has handled
/// `last` (the newest selected trigger), then stops it. Returns why it did not get there.
pub(crate) async fn catch_up(
    world: &World,
    store: &PgEventStore,
    reactor: &Arc<TortureReactor>,
    last: FeedCursor,
    timeout: Duration,
) -> Result<(), String> {
    let handle = spawn(
        store,
        reactor,
        options(&mut world.rng("final-reactor", 0)),
        world,
    )
    .ok_or_else(|| "cannot start the final reactor runner".to_owned())?;
    let reached = handle.wait_for(NAME, last, timeout).await;
    let status = handle.status(NAME);
    let stopped = tokio::time::timeout(Duration::from_secs(10), handle.stop()).await;
    reached.map_err(|e| format!("the reactor did not react to every trigger: {e} ({status:?})"))?;
    match stopped {
        Ok(Ok(statuses)) if statuses.iter().all(|s| s.state != ProjectionState::Crashed) => Ok(()),
        other => Err(format!(
            "the final reactor runner did not stop cleanly: {other:?}"
        )),
    }
}
