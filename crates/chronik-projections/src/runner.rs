use std::sync::Arc;
use std::time::Duration;

use chronik_core::{FeedCursor, RecordedEvent, UpcasterRegistry};
use chronik_store::{
    CheckpointStore, EventStore, FeedFilter, StoreError, catch_panic, upcast_recorded,
};
use chrono::Utc;
use tokio::sync::watch;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::error::ProjectionError;
use crate::handle::{RunnerHandle, RunnerTask};
use crate::name::ProjectionName;
use crate::options::{RunnerBuilder, RunnerConfig, RunnerOptions};
use crate::outage::Outage;
use crate::park::{MemoryParkingLot, ParkingLot};
use crate::projection::{HandlerError, Projection};
use crate::status::{EventRef, LagMeter, ProjectionState, ProjectionStatus};
use crate::wake::{PollingOnly, WakeSource, Wakeup};

/// Runs projections against a store: catch-up from each checkpoint in batches, then live.
///
/// Contract (at-least-once): for each projection, every event matching its filter is
/// handled at least once, in feed order; the checkpoint is saved *after* the effects of a
/// batch, so a crash replays at most the unsaved batch. A failing event is retried with
/// backoff forever (state [`ProjectionState::Failing`], `last_error` set) and skipped only
/// when a [`ParkingLot`] holds a recorded decision for it. A lost wake-up delays an event by
/// at most [`RunnerOptions::poll_max`].
///
/// Only one runner may drive a given projection name at a time; across processes use the
/// PostgreSQL runner, which takes an advisory lock.
#[derive(Debug)]
pub struct ProjectionRunner<S> {
    store: Arc<S>,
    projections: Vec<Arc<dyn Projection>>,
    config: RunnerConfig,
    wake: Arc<dyn WakeSource>,
    parking: Arc<dyn ParkingLot>,
}

impl<S> RunnerBuilder for ProjectionRunner<S> {
    fn config_mut(&mut self) -> &mut RunnerConfig {
        &mut self.config
    }
}

impl<S: EventStore + CheckpointStore + 'static> ProjectionRunner<S> {
    /// A runner over `store` with default options, polling only, no upcasting and an
    /// in-memory parking lot.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            projections: Vec::new(),
            config: RunnerConfig::default(),
            wake: Arc::new(PollingOnly),
            parking: Arc::new(MemoryParkingLot::new()),
        }
    }

    /// Registers a projection.
    #[must_use]
    pub fn with_projection(mut self, projection: Arc<dyn Projection>) -> Self {
        self.projections.push(projection);
        self
    }

    /// Wakes live projections from `wake` (for example `MemoryStore::subscribe()`).
    #[must_use]
    pub fn with_wake(mut self, wake: impl WakeSource + 'static) -> Self {
        self.wake = Arc::new(wake);
        self
    }

    /// Where park decisions are read from (and recorded through [`RunnerHandle::parking`]).
    #[must_use]
    pub fn with_parking(mut self, parking: Arc<dyn ParkingLot>) -> Self {
        self.parking = parking;
        self
    }

    /// Spawns one task per projection on the current tokio runtime (the verb of every
    /// engine's runner).
    ///
    /// # Errors
    /// Invalid options, an invalid or duplicate projection name. Nothing is spawned then.
    pub fn spawn(self) -> Result<RunnerHandle, ProjectionError> {
        let RunnerConfig { options, upcasters } = self.config;
        options.validate()?;
        let mut seen = std::collections::HashSet::new();
        for p in &self.projections {
            ProjectionName::new(p.name())?;
            if !seen.insert(p.name().to_owned()) {
                return Err(ProjectionError::DuplicateName(p.name().to_owned()));
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for projection in self.projections {
            let name = projection.name().to_owned();
            let status = Arc::new(watch::Sender::new(ProjectionStatus::new(name.clone())));
            let task = Task {
                store: Arc::clone(&self.store),
                filter: projection.filter(),
                projection,
                options: options.clone(),
                upcasters: upcasters.clone(),
                parking: Arc::clone(&self.parking),
                status: Arc::clone(&status),
                stop: stop_rx.clone(),
                wake: self.wake.subscribe(),
                lag: LagMeter::new(options.lag_every),
                outage: Outage::new(),
            };
            tasks.push(RunnerTask {
                name,
                status,
                join: tokio::spawn(task.run()),
            });
        }
        Ok(RunnerHandle::new(stop_tx, tasks, self.parking))
    }
}

struct Task<S> {
    store: Arc<S>,
    projection: Arc<dyn Projection>,
    filter: FeedFilter,
    options: RunnerOptions,
    upcasters: Option<Arc<UpcasterRegistry>>,
    parking: Arc<dyn ParkingLot>,
    status: Arc<watch::Sender<ProjectionStatus>>,
    stop: watch::Receiver<bool>,
    wake: Box<dyn Wakeup>,
    lag: LagMeter,
    /// The store unreachable since when: said once, and once when it is back.
    outage: Outage,
}

/// Outcome of waiting: the stop signal arrived.
struct Stopping;

impl<S: EventStore + CheckpointStore + 'static> Task<S> {
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d` unless a stop arrives first.
    async fn pause(&mut self, d: Duration) -> Result<(), Stopping> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            _ = self.stop.wait_for(|s| *s) => Err(Stopping),
        }
    }

    /// Idle wait: a wake-up, the poll interval, or a stop.
    async fn idle(&mut self, d: Duration) -> Result<(), Stopping> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = self.wake.notified() => Ok(()),
            _ = self.stop.wait_for(|s| *s) => Err(Stopping),
        }
    }

    async fn refresh_lag(&mut self, force: bool) {
        self.lag.refresh(&*self.store, &self.status, force).await;
    }

    /// Records a failure, then backs off.
    async fn fail(
        &mut self,
        attempt: u32,
        error: String,
        event: Option<EventRef>,
    ) -> Result<(), Stopping> {
        if self.outage.is_on() {
            tracing::debug!(projection = self.name(), attempt, %error, "projection failing; retrying");
        } else {
            tracing::warn!(projection = self.name(), attempt, %error, "projection failing; retrying");
        }
        self.status
            .send_modify(|s| s.fail(attempt, error, event, Utc::now()));
        self.refresh_lag(true).await;
        self.pause(self.options.backoff(attempt)).await
    }

    async fn save(&mut self, cursor: FeedCursor, processed: u64) -> Result<(), Stopping> {
        let mut attempt = 0;
        // The checkpoint must not cover an effect still in flight.
        while let Err(e) = HandlerError::guard_flush(&*self.projection).await {
            attempt += 1;
            self.fail(
                attempt,
                format!("flushing before the checkpoint: {e}"),
                None,
            )
            .await?;
        }
        loop {
            match self
                .store
                .save_checkpoint(self.projection.name(), cursor, processed)
                .await
            {
                Ok(()) => {
                    self.status.send_modify(|s| {
                        s.checkpoint = cursor;
                        s.events_processed = processed;
                    });
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    self.fail(attempt, format!("saving checkpoint: {e}"), None)
                        .await?;
                }
            }
        }
    }

    async fn call(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        HandlerError::guard(&*self.projection, event).await
    }

    fn upcast(&self, event: RecordedEvent) -> Result<RecordedEvent, StoreError> {
        match &self.upcasters {
            Some(r) => upcast_recorded(r, event),
            None => Ok(event),
        }
    }

    async fn run(mut self) {
        // A handler's panic is caught per event (`HandlerError::guard`); this catches the
        // rest, so that the status says the task is gone instead of showing its last state.
        match catch_panic(self.run_inner()).await {
            Ok(_) => self
                .status
                .send_modify(|s| s.state = ProjectionState::Stopped),
            Err(panic) => {
                tracing::error!(projection = self.name(), %panic, "projection task panicked");
                let why = format!("runner task panicked: {panic}");
                self.status.send_modify(|s| s.crash(why, Utc::now()));
            }
        }
    }

    async fn run_inner(&mut self) -> Result<(), Stopping> {
        let name = self.name().to_owned();
        let mut attempt = 0;
        let (mut cursor, mut processed) = loop {
            match self.store.load_checkpoint(&name).await {
                Ok(cp) => {
                    break cp.map_or((FeedCursor::START, 0), |c| (c.cursor, c.events_processed));
                }
                Err(e) => {
                    attempt += 1;
                    self.fail(attempt, format!("loading checkpoint: {e}"), None)
                        .await?;
                }
            }
        };
        self.status.send_modify(|s| {
            s.checkpoint = cursor;
            s.events_processed = processed;
            s.state = ProjectionState::CatchingUp;
        });
        let filtered = self.filter != FeedFilter::all();
        let batch = self.options.batch_size;
        let mut idle = self.options.poll_min;
        let mut attempt = 0;
        while !self.stopping() {
            // With a filter, events outside it never come back from `read_feed`; the head
            // read *before* the page lets a short page advance the checkpoint past them.
            // Safe: anything committing later lands after this head in the feed.
            let head = if filtered {
                // The cursor only: counting the feed before every page is a scan of it.
                match self.store.feed_last().await {
                    Ok(last) => last,
                    Err(e) => {
                        attempt += 1;
                        self.fail(attempt, format!("reading feed head: {e}"), None)
                            .await?;
                        continue;
                    }
                }
            } else {
                None
            };
            // One batch, one span: where it starts and ends, how many events (never a
            // payload); handler failures and parked events are events inside it.
            let span = tracing::info_span!(
                "chronik.projection.batch",
                projection = %name,
                engine = "generic",
                limit = batch,
                from = %cursor,
                to = Empty,
                events = Empty,
                processed = Empty,
                outcome = Empty,
            );
            let step = async {
                let page = match self.store.read_feed(cursor, &self.filter, batch).await {
                    Ok(p) => p,
                    Err(e) => {
                        attempt += 1;
                        tracing::Span::current().record("outcome", "read_failed");
                        if e.is_retryable() {
                            let name = self.projection.name().to_owned();
                            self.outage.lost(&name, "its store", &e.to_string());
                        }
                        self.fail(attempt, format!("reading feed: {e}"), None)
                            .await?;
                        return Ok(None);
                    }
                };
                attempt = 0;
                let name = self.projection.name().to_owned();
                self.outage.back(&name, cursor);
                let full = page.events.len() == batch;
                let seen = !page.events.is_empty();
                tracing::Span::current().record("events", page.events.len());
                let before = cursor;
                let mut outcome = Ok(());
                for raw in page.events {
                    let at = raw.cursor;
                    match self.apply(raw, cursor, processed).await {
                        Ok(applied) => {
                            processed += u64::from(applied);
                            cursor = at;
                        }
                        Err(Stopping) => {
                            outcome = Err(Stopping);
                            break;
                        }
                    }
                }
                if outcome.is_err() {
                    // Stopped while retrying a failing event: keep what was applied.
                    if cursor != before {
                        let _ = self.save(cursor, processed).await;
                    }
                    tracing::Span::current().record("outcome", "stopped");
                    return outcome.map(|()| None);
                }
                if !full
                    && let Some(h) = head
                    && h > cursor
                {
                    cursor = h;
                }
                if cursor != before {
                    self.save(cursor, processed).await?;
                }
                let span = tracing::Span::current();
                span.record("to", tracing::field::display(cursor));
                span.record("processed", processed);
                span.record(
                    "outcome",
                    if cursor == before {
                        "idle"
                    } else {
                        "committed"
                    },
                );
                Ok(Some((full, seen)))
            }
            .instrument(span)
            .await?;
            let Some((full, seen)) = step else {
                continue;
            };
            self.status.send_modify(|s| {
                s.state = if full {
                    ProjectionState::CatchingUp
                } else {
                    ProjectionState::Live
                };
                s.failing_event = None;
                s.attempts = 0;
            });
            self.refresh_lag(!full).await;
            if full {
                continue;
            }
            idle = if seen {
                self.options.poll_min
            } else {
                (idle * 2).min(self.options.poll_max)
            };
            self.idle(idle).await?;
        }
        Ok(())
    }

    /// Applies one event, retrying until it succeeds or is parked. Returns whether it was
    /// applied (`false`: skipped by a recorded park decision).
    async fn apply(
        &mut self,
        raw: RecordedEvent,
        applied_to: FeedCursor,
        processed: u64,
    ) -> Result<bool, Stopping> {
        let event_ref = EventRef::from(&raw);
        let event = self.upcast(raw);
        let mut attempt = 0;
        loop {
            let result = match &event {
                Ok(e) => self.call(e).await,
                Err(e) => Err(HandlerError::new(e.to_string())),
            };
            let Err(error) = result else {
                return Ok(true);
            };
            attempt += 1;
            if attempt == 1 {
                // Save the progress before the poison event so a restart does not repeat it.
                let saved = self.status.borrow().checkpoint;
                if applied_to != saved {
                    self.save(applied_to, processed).await?;
                }
            }
            match self
                .parking
                .is_parked(self.name(), event_ref.event_id)
                .await
            {
                Ok(true) => {
                    event_ref.warn_passed_over(self.name());
                    self.status.send_modify(|s| s.parked_skipped += 1);
                    return Ok(false);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(projection = self.name(), error = %e, "parking lot unavailable");
                }
            }
            let message = format!(
                "{} v{} ({}): {error}",
                event_ref.stream_id, event_ref.version, event_ref.event_id
            );
            self.fail(attempt, message, Some(event_ref.clone())).await?;
        }
    }
}
