use chronik_core::{EventId, FeedCursor, RecordedEvent, StreamId, Version};
use chronik_store::{CheckpointStore, EventStore, FeedFilter, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ProjectionError;

/// What a projection task is doing (every engine: in memory, any store, PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProjectionState {
    /// Loading its checkpoint.
    Starting,
    /// Reading full batches behind the head.
    CatchingUp,
    /// Caught up; waiting for wake-ups or the next poll.
    Live,
    /// A handler (or the store) keeps failing; retrying with backoff. See `last_error`.
    Failing,
    /// Waiting for another process that holds the projection's lock.
    Standby,
    /// Stopped after its last batch was checkpointed.
    Stopped,
    /// The task ended abnormally (a panic outside any handler, or killed by `abort`);
    /// `last_error` says why. What it checkpointed stands; nothing restarts it: start the
    /// runner again.
    Crashed,
}

impl ProjectionState {
    /// Every state, in the order of a runner's life (for lists of labels, e.g. a metric's).
    pub const ALL: &'static [Self] = &[
        Self::Starting,
        Self::CatchingUp,
        Self::Live,
        Self::Failing,
        Self::Standby,
        Self::Stopped,
        Self::Crashed,
    ];

    /// The label used in status tables (`catching_up`, `live`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::CatchingUp => "catching_up",
            Self::Live => "live",
            Self::Failing => "failing",
            Self::Standby => "standby",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
        }
    }
}

/// Names one event in diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version.
    pub version: Version,
    /// Its id (what a park decision names).
    pub event_id: EventId,
    /// Its feed position.
    pub cursor: FeedCursor,
}

impl From<&RecordedEvent> for EventRef {
    fn from(e: &RecordedEvent) -> Self {
        Self {
            stream_id: e.stream_id.clone(),
            version: e.version,
            event_id: e.event_id,
            cursor: e.cursor,
        }
    }
}

impl EventRef {
    /// Tells the operator (a `warn` event of target [`crate::OPERATOR_TARGET`], one plain
    /// sentence) that `projection` passes over this event because a decision parked it,
    /// and how to apply it after all. Every engine and every rebuild says it the same way.
    pub fn warn_passed_over(&self, projection: &str) {
        tracing::warn!(
            target: crate::OPERATOR_TARGET,
            "projection {projection} passes over parked event {} ({} v{}, cursor {}); \
             `chronik projections retry {projection} {}` applies it",
            self.event_id,
            self.stream_id,
            self.version,
            self.cursor,
            self.event_id,
        );
    }
}

/// How far a checkpoint is behind the visible head of the feed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Lag {
    /// Visible feed events strictly after the checkpoint (all types, not only the
    /// projection's filter).
    pub events: u64,
    /// Age in seconds of the oldest of those events (`0.0` when `events == 0`).
    pub seconds: f64,
}

/// A snapshot of one projection's progress and health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// What it is doing.
    pub state: ProjectionState,
    /// Its saved checkpoint: every event at or before it has been applied.
    pub checkpoint: FeedCursor,
    /// Events applied in total (across restarts, from the checkpoint store).
    pub events_processed: u64,
    /// Lag when last measured (see [`ProjectionStatus::lag_measured_at`]).
    pub lag: Lag,
    /// When the lag was measured, if ever.
    pub lag_measured_at: Option<DateTime<Utc>>,
    /// The most recent error, kept after recovery so that operators can see it.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The event being retried, while `state == Failing` because of a handler.
    pub failing_event: Option<EventRef>,
    /// Consecutive failed attempts on the current event or read.
    pub attempts: u32,
    /// Events skipped because of a recorded park decision (this run).
    pub parked_skipped: u64,
    /// Batches this run committed (checkpoints it moved).
    pub batches: u64,
    /// Owner: the backend pid of the session holding the projection's lock, while this
    /// runner holds it (engines that take a lock: PostgreSQL). `None` otherwise.
    pub lock_pid: Option<i32>,
}

impl ProjectionStatus {
    /// A fresh status in state [`ProjectionState::Starting`].
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: ProjectionState::Starting,
            checkpoint: FeedCursor::START,
            events_processed: 0,
            lag: Lag::default(),
            lag_measured_at: None,
            last_error: None,
            last_error_at: None,
            failing_event: None,
            attempts: 0,
            parked_skipped: 0,
            batches: 0,
            lock_pid: None,
        }
    }
}

impl ProjectionStatus {
    /// Records that the task ended abnormally at `at`: state
    /// [`ProjectionState::Crashed`], `why` as the last error, no lock held. Every engine
    /// calls it, so that a dead runner is shown dead, never as its last state.
    pub fn crash(&mut self, why: String, at: DateTime<Utc>) {
        self.state = ProjectionState::Crashed;
        self.lock_pid = None;
        self.last_error = Some(why);
        self.last_error_at = Some(at);
    }

    /// Records failed attempt number `attempt` (1-based, consecutive) at `at`: state
    /// [`ProjectionState::Failing`], `error` as the last error, and `event` as the event
    /// being retried (`None` when what fails is not an event: a read, a checkpoint, the
    /// lock). Every engine's task calls it before it backs off, so that every engine shows
    /// a failure the same way.
    pub fn fail(
        &mut self,
        attempt: u32,
        error: String,
        event: Option<EventRef>,
        at: DateTime<Utc>,
    ) {
        self.state = ProjectionState::Failing;
        self.last_error = Some(error);
        self.last_error_at = Some(at);
        self.failing_event = event;
        self.attempts = attempt;
    }
}

/// Measures the lag of a position: visible events after `after`, and the age of the oldest.
///
/// # Errors
/// Store failures.
pub async fn measure_lag<S: EventStore + ?Sized>(
    store: &S,
    after: FeedCursor,
    now: DateTime<Utc>,
) -> Result<Lag, StoreError> {
    let events = store.count_after(after).await?;
    if events == 0 {
        return Ok(Lag::default());
    }
    let page = store.read_feed(after, &FeedFilter::all(), 1).await?;
    let seconds = page.events.first().map_or(0.0, |e| {
        let ms = (now - e.recorded_at).num_milliseconds().max(0);
        #[allow(clippy::cast_precision_loss)]
        let s = ms as f64 / 1000.0;
        s
    });
    Ok(Lag { events, seconds })
}

/// The persisted view of one projection, for operators (works while no runner is running
/// in this process): its checkpoint and lag. `None` when it has no checkpoint yet, in which
/// case its lag is the whole feed (`measure_lag(store, FeedCursor::START, now)`).
///
/// # Errors
/// Store failures, or an invalid name.
pub async fn checkpoint_lag<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Option<(chronik_store::Checkpoint, Lag)>, StoreError> {
    let Some(cp) = store.load_checkpoint(name).await? else {
        return Ok(None);
    };
    let lag = measure_lag(store, cp.cursor, now).await?;
    Ok(Some((cp, lag)))
}

/// Re-measures a runner's lag into its status at most every `every` (or at once when
/// forced): the one lag refresh every engine's task uses.
#[derive(Debug, Clone, Copy)]
pub struct LagMeter {
    every: std::time::Duration,
    last: Option<tokio::time::Instant>,
}

impl LagMeter {
    /// A meter that measures every `every` (`Duration::ZERO`: on every call).
    #[must_use]
    pub fn new(every: std::time::Duration) -> Self {
        Self { every, last: None }
    }

    /// Measures the lag of `status`'s checkpoint when due (or `force`d) and records it
    /// there with the time measured. A failed measurement leaves the last one.
    pub async fn refresh<S: EventStore + ?Sized>(
        &mut self,
        store: &S,
        status: &tokio::sync::watch::Sender<ProjectionStatus>,
        force: bool,
    ) {
        if !force && self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        let checkpoint = status.borrow().checkpoint;
        let now = Utc::now();
        if let Ok(lag) = measure_lag(store, checkpoint, now).await {
            self.last = Some(tokio::time::Instant::now());
            status.send_modify(|s| {
                s.lag = lag;
                s.lag_measured_at = Some(now);
            });
        }
    }
}

/// Read-your-writes on a runner's live status: waits until `status` shows the projection's
/// checkpoint at or past `target` (typically an `AppendResult::cursor`) and returns that
/// status. Every engine's handle waits through it (`RunnerHandle::wait_for`).
///
/// # Errors
/// [`ProjectionError::Stopped`] when the projection stops or crashes short of `target`
/// (it will never get there); [`ProjectionError::Timeout`] after `timeout`, with the
/// checkpoint reached and the last error, often the reason.
pub async fn wait_for_status(
    mut status: tokio::sync::watch::Receiver<ProjectionStatus>,
    target: FeedCursor,
    timeout: std::time::Duration,
) -> Result<ProjectionStatus, ProjectionError> {
    let waited = tokio::time::timeout(
        timeout,
        status.wait_for(|s| {
            s.checkpoint >= target
                || matches!(s.state, ProjectionState::Stopped | ProjectionState::Crashed)
        }),
    )
    .await
    .map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(s)) if s.checkpoint >= target => Ok(s),
        Ok(Ok(s)) => Err(ProjectionError::Stopped(s.name)),
        Ok(Err(_)) => Err(ProjectionError::Stopped(status.borrow().name.clone())),
        Err(_) => {
            let s = status.borrow();
            Err(ProjectionError::Timeout {
                projection: s.name.clone(),
                target,
                reached: s.checkpoint,
                last_error: s.last_error.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProjectionState;

    #[test]
    fn all_lists_every_state_once() {
        // Exhaustive: a new state does not compile until it has a place here and in ALL.
        let place = |s: ProjectionState| match s {
            ProjectionState::Starting => 0,
            ProjectionState::CatchingUp => 1,
            ProjectionState::Live => 2,
            ProjectionState::Failing => 3,
            ProjectionState::Standby => 4,
            ProjectionState::Stopped => 5,
            ProjectionState::Crashed => 6,
        };
        let places: Vec<usize> = ProjectionState::ALL.iter().map(|s| place(*s)).collect();
        assert_eq!(places, (0..7).collect::<Vec<_>>());
    }
}
