use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chronik_core::{EventId, FeedCursor, RecordedEvent, UpcasterRegistry};
use chronik_projections::{
    EventRef, LagMeter, Partitions, ProjectionError, ProjectionName, ProjectionState,
    ProjectionStatus, RunnerOptions, wait_for_status,
};
use chronik_store::{EventStore, FeedFilter, StoreError, catch_panic, upcast_recorded};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::handler::{HandlerFailure, PgProjection, PgTransaction, handle_guarded};
use super::layout;
use super::sql::{ProjectionSql, lock_key};
use crate::error::backend;
use crate::row::to_u64;
use crate::standby::{PgStandby, StandbyMeter};
use crate::store::PgEventStore;

/// Errors of the PostgreSQL projection functions.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgProjectionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A handler failed on an event (rebuilds stop on it; the runner retries instead).
    /// Names the event's feed cursor, so that a reader can resume after it, and its id,
    /// which a park decision names.
    #[error(
        "projection {projection} failed on {stream} v{version} (event {event_id}, cursor {cursor}): {source}"
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The event's stream.
        stream: String,
        /// Its version.
        version: u64,
        /// Its id.
        event_id: EventId,
        /// Its position in the feed.
        cursor: FeedCursor,
        /// The handler's failure (boxed: it keeps the error small on the happy path).
        #[source]
        source: Box<HandlerFailure>,
    },
    /// A rebuild was stopped by its progress callback at a batch boundary, and cleaned up
    /// after itself: the read model is as it was before the rebuild started (an in-place
    /// rebuild's transaction is rolled back; a shadow rebuild's table and checkpoint are
    /// dropped). Running the rebuild again starts it over.
    #[error(
        "the rebuild of projection {projection} was stopped after {scanned} events; its read model is as it was before the rebuild"
    )]
    Interrupted {
        /// The projection.
        projection: String,
        /// Feed events examined before it stopped.
        scanned: u64,
    },
    /// Another session holds the projection's lock (a runner, a rebuild, or a `forget`).
    /// `pid` is the backend pid of the session holding it, read from `pg_locks` right after
    /// the lock was refused (`None` when that session let it go in between); ending that
    /// session is [`PgProjectionError::how_to_end`].
    #[error("projection {projection} is running in another session ({}); stop it or wait", holder(*.pid))]
    Busy {
        /// The projection (`<name>__shadow` for a shadow rebuild's lock).
        projection: String,
        /// Backend pid of the session holding its lock.
        pid: Option<i32>,
    },
    /// The projection's checkpoints were written with another number of partitions than
    /// it runs with now (`1`: a single runner). Running on would apply some events twice
    /// and skip others, so nothing runs: changing the number of partitions is a rebuild
    /// ([`crate::rebuild_partitioned`], `chronik projections rebuild <name> --partitions N`).
    #[error(
        "projection {projection} has checkpoints written by {}, but runs as {} now: changing the number of partitions is a rebuild; stop its runners, rebuild it with {wanted} (`chronik projections rebuild {projection} --partitions {wanted}`), then start them again",
        layout(*stored), layout(*wanted)
    )]
    PartitionsChanged {
        /// The projection.
        projection: String,
        /// The number of partitions its stored checkpoints were written with.
        stored: u32,
        /// The number it runs with now.
        wanted: u32,
    },
    /// The awaited position was not reached in time.
    #[error("projection {projection} reached {reached}, not {target}, in time")]
    Timeout {
        /// The projection.
        projection: String,
        /// The awaited position.
        target: FeedCursor,
        /// Its checkpoint when the wait gave up.
        reached: FeedCursor,
    },
}

fn layout(n: u32) -> String {
    if n == 1 {
        "a single runner".to_owned()
    } else {
        format!("{n} partitions")
    }
}

fn holder(pid: Option<i32>) -> String {
    pid.map_or_else(
        || "which let it go before its pid could be read; try again".to_owned(),
        |p| format!("pid {p}"),
    )
}

impl PgProjectionError {
    /// For [`PgProjectionError::Busy`]: the backend pid of the session holding the lock,
    /// when it could be read.
    #[must_use]
    pub fn holder_pid(&self) -> Option<i32> {
        match self {
            Self::Busy { pid, .. } => *pid,
            _ => None,
        }
    }

    /// For [`PgProjectionError::Busy`] with a known pid: the statement that ends the
    /// session holding the lock (`SELECT pg_terminate_backend(<pid>)`), shown to an
    /// operator, never run here. Ending a runner's session does not stop the runner: it
    /// takes the lock again when it is free; stop its process instead.
    #[must_use]
    pub fn how_to_end(&self) -> Option<String> {
        self.holder_pid().map(crate::horizon::terminate)
    }
}

/// [`PgProjectionError::Busy`] for the lock of `key_name`, with the pid of the session
/// holding it now.
pub(crate) async fn busy(store: &PgEventStore, key_name: &str) -> PgProjectionError {
    busy_on(store, key_name, &lock_key(store.schema(), key_name)).await
}

/// [`PgProjectionError::Busy`] for `projection`, whose advisory lock of key text `key`
/// another session holds, with that session's pid.
pub(crate) async fn busy_on(
    store: &PgEventStore,
    projection: &str,
    key: &str,
) -> PgProjectionError {
    let pid = sqlx::query_scalar::<_, i32>(super::sql::LOCK_HOLDER)
        .bind(key)
        .fetch_optional(store.pool())
        .await;
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!(projection, error = %backend(e), "could not read who holds the projection's lock");
            None
        }
    };
    PgProjectionError::Busy {
        projection: projection.to_owned(),
        pid,
    }
}

/// Ends a lock session (a rebuild's, a `forget`'s), its advisory locks released first: a
/// closed session's locks go only when its backend has exited, a moment after `close`
/// returns, and the next rebuild (or runner) would be refused as Busy meanwhile, with no
/// holder left to name. Best effort: a session that is gone has released them already.
pub(crate) async fn release(mut lock: PgConnection) {
    let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut lock)
        .await;
    let _ = lock.close().await;
}

impl From<sqlx::Error> for PgProjectionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(backend(e))
    }
}

/// Tuning of a [`PgProjectionRunner`]: the engine's shared [`RunnerOptions`] (this
/// runner reads `standby_poll` and `listen_channel` too; its backoff is the shared one).
pub type PgRunnerOptions = RunnerOptions;

pub(crate) fn validate(options: &RunnerOptions) -> Result<(), StoreError> {
    options
        .validate()
        .map_err(|e| StoreError::InvalidRequest(e.to_string()))
}

/// Sends a wake-up on `channel` for runners that `LISTEN` on it. Call it **after** the
/// append's transaction has committed, never inside it: `pg_notify` in the append
/// transaction serializes every commit on a global lock.
///
/// # Errors
/// [`StoreError::Backend`].
pub async fn notify_feed(pool: &PgPool, channel: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(())
}

/// What a PostgreSQL runner is doing: the engine's shared [`ProjectionState`] (its labels
/// are what `projection_runners.state` stores).
pub type PgRunnerState = ProjectionState;

/// A runner's in-process view of itself: the engine's shared [`ProjectionStatus`], with
/// lag, batches and the lock's owner pid (the persisted view is
/// [`crate::ProjectionReport`]).
pub type PgRunnerStatus = ProjectionStatus;

/// Applies feed events to one [`PgProjection`] exactly once, one transaction per batch.
///
/// Contract: each batch locks the projection's checkpoint row `FOR UPDATE`, reads the feed
/// after it, runs the handler for every matching event in the same transaction, moves the
/// checkpoint and commits. A crash anywhere rolls the whole batch back. A failing event
/// rolls its batch back; the events before it are committed first, then it alone is
/// retried with backoff until it succeeds or a park decision is recorded for it
/// ([`crate::park_event`]). At most one runner per projection name and schema is active
/// (`pg_try_advisory_lock` on a dedicated session); the others stay in
/// [`PgRunnerState::Standby`] and take over when that session ends.
#[derive(Debug)]
pub struct PgProjectionRunner<P> {
    store: PgEventStore,
    projection: Arc<P>,
    options: PgRunnerOptions,
    upcasters: Option<Arc<UpcasterRegistry>>,
    standby: Option<PgStandby>,
}

impl<P: PgProjection> PgProjectionRunner<P> {
    /// A runner with default options and no upcasting.
    pub fn new(store: PgEventStore, projection: Arc<P>) -> Self {
        Self {
            store,
            projection,
            options: PgRunnerOptions::default(),
            upcasters: None,
            standby: None,
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: PgRunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Upcasts events through `registry` before the handler sees them.
    #[must_use]
    pub fn with_upcasters(mut self, registry: Arc<UpcasterRegistry>) -> Self {
        self.upcasters = Some(registry);
        self
    }

    /// Reads the feed from `standby`, a hot standby of the store's primary, instead of the
    /// primary; the read model, the checkpoint, the lock and the status stay on the primary
    /// (`docs/projections.md`, "Reading the feed from a hot standby"). Still gap-free and
    /// exactly-once: each batch locks the checkpoint on the primary, then reads the page
    /// after it on the standby in one recovery snapshot, which is a prefix of the primary's
    /// feed. A standby that lags or is paused makes the runner wait (empty pages; the lag,
    /// measured on the primary, shows it); a promoted standby is refused (the runner fails,
    /// retrying, until it is pointed elsewhere). `LISTEN` (`listen_channel`) stays on the
    /// primary, a hint after which the runner polls the standby from `poll_min` again. The
    /// standby's replication lag is recorded in the status row every `lag_every`
    /// ([`crate::standby_reports`], `doctor`).
    #[must_use]
    pub fn with_standby(mut self, standby: PgStandby) -> Self {
        self.standby = Some(standby);
        self
    }

    /// Spawns the runner on the current tokio runtime.
    ///
    /// # Errors
    /// An invalid projection name or options; nothing is spawned then.
    pub fn spawn(self) -> Result<PgRunnerHandle, PgProjectionError> {
        ProjectionName::new(self.projection.name())?;
        validate(&self.options)?;
        let mut engine = Engine::new(&self.store, self.projection, self.upcasters);
        engine.check_layout = true;
        engine.standby = self.standby;
        Ok(start(engine, self.options, None))
    }
}

/// Spawns the task of `engine`. With `owner`, the engine's lock is held by that session
/// (a partitioned worker's), which the task records as its own and never takes itself.
pub(crate) fn start<P: PgProjection>(
    engine: Engine<P>,
    options: PgRunnerOptions,
    owner: Option<SessionInfo>,
) -> PgRunnerHandle {
    let (stop_tx, stop_rx) = watch::channel(false);
    let status = Arc::new(watch::Sender::new(ProjectionStatus::new(engine.name())));
    let standby_meter = engine
        .standby
        .clone()
        .map(|s| StandbyMeter::new(s, options.lag_every, engine.sql.record_standby_lag.clone()));
    let task = Task {
        engine,
        standby_meter,
        lag: LagMeter::new(options.lag_every),
        options,
        status: Arc::clone(&status),
        stop: stop_rx,
        lock: None,
        held: false,
        external: owner.is_some(),
        listener: None,
        instance: Uuid::new_v4(),
        session: owner,
        saved: None,
    };
    PgRunnerHandle {
        stop: stop_tx,
        status,
        task: tokio::spawn(task.run()),
    }
}

/// Controls a spawned [`PgProjectionRunner`].
#[derive(Debug)]
pub struct PgRunnerHandle {
    stop: watch::Sender<bool>,
    status: Arc<watch::Sender<PgRunnerStatus>>,
    task: JoinHandle<()>,
}

impl PgRunnerHandle {
    /// The runner's current status.
    #[must_use]
    pub fn status(&self) -> PgRunnerStatus {
        self.status.borrow().clone()
    }

    /// A live view of the status.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<PgRunnerStatus> {
        self.status.subscribe()
    }

    /// Read-your-writes in this process: waits until the runner has committed `target`
    /// (typically an `AppendResult::cursor`) and returns its status then. Across processes,
    /// or for a partitioned projection, use [`crate::wait_for_projection`].
    ///
    /// # Errors
    /// [`ProjectionError::Timeout`] after `timeout` (with the checkpoint reached and the
    /// last error, often the reason); [`ProjectionError::Stopped`] when the runner stopped
    /// or crashed before reaching `target`.
    pub async fn wait_for(
        &self,
        target: FeedCursor,
        timeout: Duration,
    ) -> Result<PgRunnerStatus, ProjectionError> {
        wait_for_status(self.subscribe(), target, timeout).await
    }

    /// Sends the stop signal without waiting.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Graceful shutdown: the current batch commits, the lock is released, and the final
    /// status is returned.
    ///
    /// A task that ended abnormally is reported, never hidden: the status is then
    /// [`PgRunnerState::Crashed`] with `last_error` saying why.
    pub async fn stop(self) -> PgRunnerStatus {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            crashed(&self.status, &e);
        }
        self.status.borrow().clone()
    }

    /// Cancels the task now, without waiting (a partitioned worker's partitions die with it).
    pub(crate) fn cancel(&self) {
        self.task.abort();
    }

    /// Whether the task has ended (stopped, or crashed).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Kills the task at its next await point, as a crash would: an open batch transaction
    /// is rolled back and the lock session is dropped. Subscribers then see
    /// [`PgRunnerState::Crashed`]; the status row is left as it was, and
    /// [`crate::projection_reports`] shows the instance dead once its session is gone.
    pub async fn abort(self) {
        self.task.abort();
        if let Err(e) = self.task.await {
            crashed(&self.status, &e);
        }
    }
}

/// Marks the in-process status of a task that ended abnormally.
fn crashed(status: &watch::Sender<PgRunnerStatus>, e: &tokio::task::JoinError) {
    let why = if e.is_cancelled() {
        "runner task aborted".to_owned()
    } else {
        format!("runner task ended abnormally: {e}")
    };
    status.send_modify(|s| s.crash(why, Utc::now()));
}

/// What one batch did.
#[derive(Debug)]
pub(crate) enum Batch {
    /// Committed: the checkpoint moved.
    Committed {
        cursor: FeedCursor,
        processed: u64,
        /// Events matching the filter (handled or parked).
        events: usize,
        /// Feed events read.
        scanned: usize,
        full: bool,
        parked: u64,
        /// With [`Engine::tally`]: the events handled, by the partition of that layout
        /// their stream belongs to (empty otherwise).
        by_partition: Vec<u64>,
    },
    /// Nothing to do; nothing written.
    Idle { cursor: FeedCursor, processed: u64 },
    /// The handler failed on the event at `index` of the page; everything rolled back.
    Failed {
        index: usize,
        event: Box<RecordedEvent>,
        failure: HandlerFailure,
    },
}

/// Records how one batch ended on its span (`chronik.projection.batch`): the checkpoint it
/// moved to and the events it applied, or the event it failed on (stream, version, cursor;
/// never the payload or the handler's message, which may quote it).
fn record_batch(span: &tracing::Span, batch: Result<&Batch, &StoreError>) {
    match batch {
        Ok(Batch::Committed {
            cursor,
            processed,
            events,
            ..
        }) => {
            span.record("outcome", "committed");
            span.record("to", tracing::field::display(cursor));
            span.record("events", *events);
            span.record("processed", *processed);
        }
        Ok(Batch::Idle { cursor, processed }) => {
            span.record("outcome", "idle");
            span.record("to", tracing::field::display(cursor));
            span.record("events", 0);
            span.record("processed", *processed);
        }
        Ok(Batch::Failed { event, .. }) => {
            span.record("outcome", "handler_failed");
            span.record("failed_stream", tracing::field::display(&event.stream_id));
            span.record("failed_version", event.version.get());
            span.record("failed_cursor", tracing::field::display(event.cursor));
        }
        Err(e) => {
            span.record("outcome", "failed");
            span.record("error_kind", crate::spans::kind(e));
        }
    }
}

/// Applies batches of one projection under its checkpoint row lock.
#[derive(Debug)]
pub(crate) struct Engine<P> {
    /// Checkpoint and lock name (the projection's, or its shadow's during a rebuild).
    pub(crate) name: String,
    /// Read every event and filter here (exact progress for rebuilds).
    pub(crate) scan_all: bool,
    pub(crate) store: PgEventStore,
    pub(crate) sql: Arc<ProjectionSql>,
    pub(crate) projection: Arc<P>,
    filter: FeedFilter,
    upcasters: Option<Arc<UpcasterRegistry>>,
    /// Events to pass over without handling (a rebuild honours the park decisions the
    /// runner does; see [`crate::park_event`]).
    pub(crate) skip: HashSet<EventId>,
    /// The partition applied (index, count): only its streams' events are read. `None`:
    /// the whole feed, under the projection's own checkpoint.
    pub(crate) partition: Option<(u32, Partitions)>,
    /// Whether a missing checkpoint is created only after checking the stored layout
    /// (runners do; a rebuild writes the layout itself).
    pub(crate) check_layout: bool,
    /// Where the feed is read: a hot standby, or the primary (`None`).
    pub(crate) standby: Option<PgStandby>,
    /// Counts the handled events of each batch by their partition of this layout
    /// ([`Batch::Committed`]'s `by_partition`): a rebuild into partitions sets it, so that
    /// each partition's checkpoint starts with its own count.
    pub(crate) tally: Option<Partitions>,
}

/// Locks `name`'s checkpoint row in `tx` (`FOR UPDATE`) and returns its cursor, `None`
/// when the projection has no checkpoint.
pub(crate) async fn locked_checkpoint(
    tx: &mut sqlx::PgConnection,
    sql: &ProjectionSql,
    name: &str,
) -> Result<Option<FeedCursor>, PgProjectionError> {
    let row = sqlx::query(sql.lock_checkpoint.clone())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(row
        .map(|r| -> Result<FeedCursor, StoreError> {
            cursor_of(
                r.try_get(0).map_err(backend)?,
                r.try_get(1).map_err(backend)?,
            )
        })
        .transpose()?)
}

pub(crate) fn cursor_of(tx: i64, pos: i64) -> Result<FeedCursor, StoreError> {
    Ok(FeedCursor::new(
        to_u64(tx, "checkpoint transaction")?,
        to_u64(pos, "checkpoint position")?,
    )?)
}

pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<P: PgProjection> Engine<P> {
    pub(crate) fn new(
        store: &PgEventStore,
        projection: Arc<P>,
        upcasters: Option<Arc<UpcasterRegistry>>,
    ) -> Self {
        Self {
            name: projection.name().to_owned(),
            scan_all: false,
            sql: Arc::new(ProjectionSql::new(store.schema())),
            store: store.clone(),
            filter: projection.filter(),
            projection,
            upcasters,
            skip: HashSet::new(),
            partition: None,
            check_layout: false,
            standby: None,
            tally: None,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Locks the checkpoint row in `tx` (creating it at the start if missing).
    pub(crate) async fn lock_checkpoint(
        &self,
        conn: &mut PgConnection,
    ) -> Result<(FeedCursor, u64), StoreError> {
        for _ in 0..2 {
            let row = sqlx::query(self.sql.lock_checkpoint.clone())
                .bind(self.name())
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
            if let Some(row) = row {
                let cursor = cursor_of(
                    row.try_get(0).map_err(backend)?,
                    row.try_get(1).map_err(backend)?,
                )?;
                let processed = to_u64(row.try_get(2).map_err(backend)?, "events processed")?;
                return Ok((cursor, processed));
            }
            if self.check_layout {
                let wanted = self.partition.map_or(Partitions::ONE, |(_, n)| n);
                let base = self.projection.name();
                layout::check(conn, &self.sql, self.store.schema(), base, wanted)
                    .await
                    .map_err(|e| match e {
                        PgProjectionError::Store(e) => e,
                        other => StoreError::InvalidRequest(other.to_string()),
                    })?;
            }
            sqlx::query(self.sql.create_checkpoint.clone())
                .bind(self.name())
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        Err(StoreError::backend(
            "projection checkpoint row vanished while being created",
            true,
        ))
    }

    /// One batch of at most `limit` events in one transaction. With `retrying`, the first
    /// event is skipped when a park decision is recorded for it.
    pub(crate) async fn batch(&self, limit: usize, retrying: bool) -> Result<Batch, StoreError> {
        let mut tx = self.store.pool().begin().await.map_err(backend)?;
        let outcome = self.apply_page(&mut tx, limit, retrying).await?;
        match &outcome {
            Batch::Committed { .. } => tx.commit().await.map_err(backend)?,
            // Dropping `tx` would roll back too; say it explicitly when it is still usable.
            Batch::Idle { .. } => tx.rollback().await.map_err(backend)?,
            Batch::Failed { .. } => drop(tx),
        }
        Ok(outcome)
    }

    /// Applies one page inside `tx` and moves the checkpoint in it, without committing.
    /// `Batch::Committed` then means "ready to commit".
    pub(crate) async fn apply_page(
        &self,
        tx: &mut PgTransaction,
        limit: usize,
        retrying: bool,
    ) -> Result<Batch, StoreError> {
        let span = tracing::info_span!(
            "chronik.projection.batch",
            projection = %self.name,
            engine = "postgres",
            limit,
            from = tracing::field::Empty,
            to = tracing::field::Empty,
            events = tracing::field::Empty,
            processed = tracing::field::Empty,
            outcome = tracing::field::Empty,
            failed_stream = tracing::field::Empty,
            failed_version = tracing::field::Empty,
            failed_cursor = tracing::field::Empty,
            error_kind = tracing::field::Empty,
        );
        let batch = tracing::Instrument::instrument(
            self.apply_page_inner(tx, limit, retrying),
            span.clone(),
        )
        .await;
        record_batch(&span, batch.as_ref());
        batch
    }

    /// [`Engine::apply_page`] without its span.
    async fn apply_page_inner(
        &self,
        tx: &mut PgTransaction,
        limit: usize,
        retrying: bool,
    ) -> Result<Batch, StoreError> {
        let (start, processed_before) = self.lock_checkpoint(tx).await?;
        tracing::Span::current().record("from", tracing::field::display(start));
        let filtered = self.filter != FeedFilter::all() || self.partition.is_some();
        let read_filter = if self.scan_all {
            FeedFilter::all()
        } else {
            self.filter.clone()
        };
        // With a filter (or a partition), a short page may move the checkpoint to the head
        // read *before* it (or in the same snapshot, on a standby): every later commit lands
        // after that head.
        let want_head = filtered && !self.scan_all;
        let (head, page) = match self.partition {
            Some((index, count)) if !self.scan_all => {
                // Only the cursor: `feed_head` also counts every visible event, on every
                // batch of a filtered runner or a partition.
                let head = if want_head {
                    self.store.feed_last().await?
                } else {
                    None
                };
                let page = self
                    .store
                    .read_feed_partition(start, &read_filter, (index, count.get()), limit)
                    .await?;
                (head, page)
            }
            _ => {
                self.read_page(start, &read_filter, limit, want_head)
                    .await?
            }
        };
        let full = page.events.len() == limit;
        let scanned = page.events.len();
        let mut events = 0;
        let mut cursor = start;
        let mut processed = processed_before;
        let mut parked = 0;
        let mut by_partition = vec![0; self.tally.map_or(0, |n| n.get() as usize)];
        for (index, raw) in page.events.into_iter().enumerate() {
            if self.scan_all && !self.filter.matches(&raw) {
                cursor = raw.cursor;
                continue;
            }
            events += 1;
            if self.skip.contains(&raw.event_id) {
                tracing::warn!(projection = %self.name, event = %raw.event_id, "skipping parked event");
                parked += 1;
                cursor = raw.cursor;
                continue;
            }
            if retrying && index == 0 {
                // A partition honours decisions recorded for itself or for its projection
                // (which outlive a change of the number of partitions).
                let names = [self.name.clone(), self.projection.name().to_owned()];
                let is_parked: bool = sqlx::query_scalar(self.sql.is_parked_any.clone())
                    .bind(&names[..])
                    .bind(raw.event_id.as_uuid())
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(backend)?;
                if is_parked {
                    tracing::warn!(projection = %self.name, event = %raw.event_id, "skipping parked event");
                    parked += 1;
                    cursor = raw.cursor;
                    continue;
                }
            }
            let event = match &self.upcasters {
                Some(r) => match upcast_recorded(r, raw.clone()) {
                    Ok(e) => e,
                    Err(e) => {
                        return Ok(Batch::Failed {
                            index,
                            event: Box::new(raw),
                            failure: upcast_failure(&e),
                        });
                    }
                },
                None => raw,
            };
            if let Err(failure) = handle_guarded(&*self.projection, tx, &event).await {
                return Ok(Batch::Failed {
                    index,
                    event: Box::new(event),
                    failure,
                });
            }
            processed += 1;
            if let Some(n) = self.tally {
                by_partition[n.of(event.stream_id.as_str()) as usize] += 1;
            }
            cursor = event.cursor;
        }
        if !full
            && let Some(h) = head
            && h > cursor
        {
            cursor = h;
        }
        if cursor == start {
            return Ok(Batch::Idle {
                cursor,
                processed: processed_before,
            });
        }
        self.set_checkpoint(tx, &self.name, cursor, processed)
            .await?;
        Ok(Batch::Committed {
            cursor,
            processed,
            events,
            scanned,
            full,
            parked,
            by_partition,
        })
    }

    /// The page after `start` and, with `want_head`, the feed's head read before it (or in
    /// the same snapshot, on a standby).
    async fn read_page(
        &self,
        start: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
        want_head: bool,
    ) -> Result<(Option<FeedCursor>, chronik_store::FeedPage), StoreError> {
        if let Some(standby) = &self.standby {
            return standby
                .read_page(&self.store, start, filter, limit, want_head)
                .await;
        }
        let head = if want_head {
            self.store.feed_last().await?
        } else {
            None
        };
        Ok((head, self.store.read_feed(start, filter, limit).await?))
    }

    /// Writes a checkpoint row inside `conn`'s transaction.
    pub(crate) async fn set_checkpoint(
        &self,
        conn: &mut PgConnection,
        name: &str,
        cursor: FeedCursor,
        processed: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql.set_checkpoint.clone())
            .bind(name)
            .bind(cursor.transaction_i64())
            .bind(cursor.position_i64())
            .bind(as_i64(processed))
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Opens a dedicated session for the advisory lock (outside the pool: the lock lives
    /// as long as the session).
    pub(crate) async fn lock_session(&self) -> Result<PgConnection, StoreError> {
        let options = self.store.pool().connect_options();
        PgConnection::connect_with(&options).await.map_err(backend)
    }

    /// Tries the projection's advisory lock on `conn`; returns the session's backend pid
    /// when taken.
    pub(crate) async fn try_lock_on(
        &self,
        conn: &mut PgConnection,
        key_name: &str,
    ) -> Result<Option<i32>, StoreError> {
        let got: bool = sqlx::query_scalar(self.sql.try_lock)
            .bind(lock_key(self.store.schema(), key_name))
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        if !got {
            return Ok(None);
        }
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(Some(pid))
    }

    /// Takes the projection's advisory lock on a new dedicated session, if free.
    pub(crate) async fn try_lock(
        &self,
        key_name: &str,
    ) -> Result<Option<(PgConnection, i32)>, StoreError> {
        let mut conn = self.lock_session().await?;
        match self.try_lock_on(&mut conn, key_name).await? {
            Some(pid) => Ok(Some((conn, pid))),
            None => {
                let _ = conn.close().await;
                Ok(None)
            }
        }
    }

    /// The lock session as the server sees it, recorded in the instance's status row.
    pub(crate) async fn session_info(
        &self,
        conn: &mut PgConnection,
    ) -> Result<SessionInfo, StoreError> {
        let row = sqlx::query(self.sql.session_info)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(SessionInfo {
            pid: row.try_get(0).map_err(backend)?,
            backend_start: row.try_get(1).map_err(backend)?,
            application_name: row.try_get(2).map_err(backend)?,
            client_addr: row.try_get(3).map_err(backend)?,
        })
    }

    /// Writes instance `instance`'s own status row (never another instance's).
    pub(crate) async fn save_status(
        &self,
        instance: Uuid,
        s: &PgRunnerStatus,
        session: Option<&SessionInfo>,
    ) {
        let result = sqlx::query(self.sql.save_status.clone())
            .bind(self.name())
            .bind(instance)
            .bind(s.state.as_str())
            .bind(session.map(|x| x.pid))
            .bind(session.and_then(|x| x.backend_start))
            .bind(session.and_then(|x| x.application_name.as_deref()))
            .bind(session.and_then(|x| x.client_addr.as_deref()))
            .bind(s.lock_pid.is_some())
            .bind(s.last_error.as_deref())
            .bind(s.last_error_at)
            .bind(s.failing_event.as_ref().map(|e| e.event_id.as_uuid()))
            .bind(i32::try_from(s.attempts).unwrap_or(i32::MAX))
            .execute(self.store.pool())
            .await;
        if let Err(e) = result {
            tracing::warn!(projection = self.name(), error = %e, "could not save projection status");
        }
    }

    /// Removes instance `instance`'s status row (a standby that stops leaves nothing).
    pub(crate) async fn delete_status(&self, instance: Uuid) {
        let result = sqlx::query(self.sql.delete_status.clone())
            .bind(self.name())
            .bind(instance)
            .execute(self.store.pool())
            .await;
        if let Err(e) = result {
            tracing::warn!(projection = self.name(), error = %e, "could not remove projection status");
        }
    }

    /// Removes the rows of stopped instances and of instances whose session is gone,
    /// except `instance`'s own; run by an instance that just took the lock.
    pub(crate) async fn prune_statuses(&self, instance: Uuid) {
        let result = sqlx::query(self.sql.prune_statuses.clone())
            .bind(self.name())
            .bind(instance)
            .execute(self.store.pool())
            .await;
        if let Err(e) = result {
            tracing::warn!(projection = self.name(), error = %e, "could not prune projection statuses");
        }
    }
}

/// A runner's lock session, as `pg_stat_activity` shows it.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub(crate) pid: i32,
    backend_start: Option<DateTime<Utc>>,
    application_name: Option<String>,
    client_addr: Option<String>,
}

struct Task<P> {
    engine: Engine<P>,
    /// Records the standby's replication lag, for a standby-fed runner.
    standby_meter: Option<StandbyMeter>,
    options: PgRunnerOptions,
    status: Arc<watch::Sender<PgRunnerStatus>>,
    stop: watch::Receiver<bool>,
    /// The dedicated lock session (kept while in standby too, to retry on it).
    lock: Option<PgConnection>,
    /// Whether `lock` holds the projection's advisory lock (or, `external`, the owner's
    /// session does).
    held: bool,
    /// The lock is held by another session (a partitioned worker's: `session`), never
    /// taken or released here.
    external: bool,
    listener: Option<PgListener>,
    /// This instance's id: the key of its own status row.
    instance: Uuid,
    /// `lock`'s session, as recorded in the status row.
    session: Option<SessionInfo>,
    /// What the status row last received: state and lock session.
    saved: Option<(PgRunnerState, Option<i32>)>,
    /// Measures the lag into the status every `lag_every`.
    lag: LagMeter,
}

struct Stopping;

impl<P: PgProjection> Task<P> {
    async fn pause(&mut self, d: Duration) -> Result<(), Stopping> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            _ = self.stop.wait_for(|s| *s) => Err(Stopping),
        }
    }

    /// Waits `d` or until a notification; returns whether one came.
    async fn idle(&mut self, d: Duration) -> Result<bool, Stopping> {
        let Some(listener) = self.listener.as_mut() else {
            return self.pause(d).await.map(|()| false);
        };
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(false),
            r = listener.recv() => {
                if r.is_err() {
                    // Lost connection: polling carries on; reconnect on the next start.
                    self.listener = None;
                }
                Ok(r.is_ok())
            }
            _ = self.stop.wait_for(|s| *s) => Err(Stopping),
        }
    }

    /// [`Task::idle`], then the next idle interval: a notification read by a standby-fed
    /// runner starts polling again from `poll_min`, since the standby may not have replayed
    /// the commit it announces yet.
    async fn idle_next(&mut self, d: Duration) -> Result<Duration, Stopping> {
        let woken = self.idle(d).await?;
        Ok(if woken && self.engine.standby.is_some() {
            self.options.poll_min
        } else {
            d
        })
    }

    /// Sets the state. Persists it first when it or the lock session changed, so that a
    /// watcher of the in-process status that sees the new state finds it stored too.
    async fn set_state(&mut self, state: PgRunnerState) {
        self.set_state_with(state, |_| {}).await;
    }

    /// [`Task::set_state`], with `also` applied to the same update.
    async fn set_state_with(
        &mut self,
        state: PgRunnerState,
        also: impl FnOnce(&mut PgRunnerStatus),
    ) {
        let mut next = self.status.borrow().clone();
        next.state = state;
        also(&mut next);
        if state != PgRunnerState::Failing {
            next.failing_event = None;
            next.attempts = 0;
        }
        let pid = self.session.as_ref().map(|x| x.pid);
        if self.saved != Some((state, pid)) {
            self.persist(&next).await;
        }
        self.status.send_replace(next);
    }

    /// Writes `s` to this instance's status row.
    async fn persist(&mut self, s: &PgRunnerStatus) {
        self.engine
            .save_status(self.instance, s, self.session.as_ref())
            .await;
        self.saved = Some((s.state, self.session.as_ref().map(|x| x.pid)));
    }

    async fn fail(
        &mut self,
        attempt: u32,
        error: String,
        event: Option<EventRef>,
    ) -> Result<(), Stopping> {
        tracing::warn!(projection = self.engine.name(), attempt, %error, "projection failing; retrying");
        let mut next = self.status.borrow().clone();
        next.state = PgRunnerState::Failing;
        next.last_error = Some(error);
        next.last_error_at = Some(Utc::now());
        next.failing_event = event;
        next.attempts = attempt;
        self.persist(&next).await;
        self.status.send_replace(next);
        self.refresh_lag(true).await;
        self.pause(self.options.backoff(attempt)).await
    }

    /// Measures the lag of the checkpoint (due every `lag_every`, or now with `force`).
    async fn refresh_lag(&mut self, force: bool) {
        self.lag
            .refresh(&self.engine.store, &self.status, force)
            .await;
        if let Some(meter) = self.standby_meter.as_mut() {
            meter
                .refresh(&self.engine.store, &self.engine.name, self.instance)
                .await;
        }
    }

    async fn run(mut self) {
        // A handler's panic is caught per event (`handle_guarded`); this catches the rest,
        // so that the status says the task is gone instead of showing its last state.
        let crashed = catch_panic(self.run_inner()).await.err();
        // Recorded before the lock session closes, so that a standby taking over never
        // finds this instance's row still claiming the lock.
        let owned = self.held;
        self.status.send_modify(|s| s.lock_pid = None);
        self.session = None;
        if let Some(panic) = crashed {
            tracing::error!(projection = self.engine.name(), %panic, "projection runner task panicked");
            self.set_state_with(PgRunnerState::Crashed, |s| {
                s.last_error = Some(format!("runner task panicked: {panic}"));
                s.last_error_at = Some(Utc::now());
            })
            .await;
        } else if owned {
            self.set_state(PgRunnerState::Stopped).await;
        } else {
            // A standby that stops leaves no row behind.
            self.engine.delete_status(self.instance).await;
            self.status
                .send_modify(|s| s.state = PgRunnerState::Stopped);
        }
        if let Some(conn) = self.lock.take() {
            // Unlocked before the close, so that a rebuild started right after `stop`
            // returns finds the lock free.
            release(conn).await;
        }
    }

    /// Holds the lock (taking it when free), or waits in standby.
    async fn ensure_lock(&mut self) -> Result<bool, Stopping> {
        if self.external {
            if !self.held {
                self.held = true;
                let pid = self.session.as_ref().map(|x| x.pid);
                self.begin_owning(pid).await;
            }
            return Ok(true);
        }
        if let Some(conn) = self.lock.as_mut() {
            if conn.ping().await.is_ok() {
                if self.held {
                    return Ok(true);
                }
            } else {
                // The session died (and any lock with it): another runner may be active now.
                self.lock = None;
                self.session = None;
                self.held = false;
                self.status.send_modify(|s| s.lock_pid = None);
            }
        }
        let conn = match self.lock.take() {
            Some(conn) => Ok(conn),
            None => match self.engine.lock_session().await {
                Ok(mut conn) => match self.engine.session_info(&mut conn).await {
                    Ok(info) => {
                        self.session = Some(info);
                        Ok(conn)
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        let name = self.engine.name().to_owned();
        let attempt = match conn {
            Ok(mut conn) => {
                let r = self.engine.try_lock_on(&mut conn, &name).await;
                self.lock = Some(conn);
                r
            }
            Err(e) => Err(e),
        };
        match attempt {
            Ok(Some(pid)) => {
                self.held = true;
                self.begin_owning(Some(pid)).await;
                Ok(true)
            }
            Ok(None) => {
                self.set_state(PgRunnerState::Standby).await;
                self.pause(self.options.standby_poll).await?;
                Ok(false)
            }
            Err(e) => {
                self.lock = None;
                self.session = None;
                let attempt = self.status.borrow().attempts + 1;
                self.fail(attempt, format!("taking the projection lock: {e}"), None)
                    .await?;
                Ok(false)
            }
        }
    }

    /// Just took the lock (held by session `pid`): prunes the history rows, listens, and
    /// says so.
    async fn begin_owning(&mut self, pid: Option<i32>) {
        self.engine.prune_statuses(self.instance).await;
        if let Some(channel) = self.options.listen_channel.clone() {
            match PgListener::connect_with(self.engine.store.pool()).await {
                Ok(mut l) => {
                    if l.listen(&channel).await.is_ok() {
                        self.listener = Some(l);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen; polling only"),
            }
        }
        // The lock pid and the new state become visible together.
        self.set_state_with(PgRunnerState::CatchingUp, |s| s.lock_pid = pid)
            .await;
    }

    async fn run_inner(&mut self) -> Result<(), Stopping> {
        let batch = self.options.batch_size;
        let mut limit = batch;
        let mut retrying = false;
        let mut attempt = 0;
        let mut idle = self.options.poll_min;
        while !*self.stop.borrow() {
            if !self.ensure_lock().await? {
                continue;
            }
            match self.engine.batch(limit, retrying).await {
                Ok(Batch::Committed {
                    cursor,
                    processed,
                    events,
                    full,
                    parked,
                    ..
                }) => {
                    self.status.send_modify(|s| {
                        s.checkpoint = cursor;
                        s.events_processed = processed;
                        s.batches += 1;
                        s.parked_skipped += parked;
                    });
                    let was_limited = limit < batch;
                    limit = batch;
                    retrying = false;
                    attempt = 0;
                    if full || was_limited {
                        self.set_state(PgRunnerState::CatchingUp).await;
                        self.refresh_lag(false).await;
                        continue;
                    }
                    self.set_state(PgRunnerState::Live).await;
                    self.refresh_lag(true).await;
                    idle = if events > 0 {
                        self.options.poll_min
                    } else {
                        (idle * 2).min(self.options.poll_max)
                    };
                    idle = self.idle_next(idle).await?;
                }
                Ok(Batch::Idle { cursor, processed }) => {
                    self.status.send_modify(|s| {
                        s.checkpoint = cursor;
                        s.events_processed = processed;
                    });
                    self.set_state(PgRunnerState::Live).await;
                    self.refresh_lag(false).await;
                    idle = (idle * 2).min(self.options.poll_max);
                    idle = self.idle_next(idle).await?;
                }
                Ok(Batch::Failed { index, .. }) if index > 0 => {
                    // Commit the good events before the failing one first.
                    limit = index;
                }
                Ok(Batch::Failed { event, failure, .. }) => {
                    attempt += 1;
                    limit = 1;
                    retrying = true;
                    let message = format!(
                        "{} v{} (event {}, cursor {}): {failure}",
                        event.stream_id, event.version, event.event_id, event.cursor
                    );
                    let at = EventRef {
                        stream_id: event.stream_id,
                        version: event.version,
                        event_id: event.event_id,
                        cursor: event.cursor,
                    };
                    self.fail(attempt, message, Some(at)).await?;
                }
                Err(e) => {
                    attempt += 1;
                    self.fail(attempt, e.to_string(), None).await?;
                }
            }
        }
        Ok(())
    }
}

/// The failure of an event that does not upcast, for an error that already names the
/// event and its cursor ([`PgProjectionError::Handler`], the runner's last error): the
/// reason only, not the event a second time.
pub(crate) fn upcast_failure(e: &StoreError) -> HandlerFailure {
    match e {
        StoreError::Decode { reason, .. } => {
            HandlerFailure::new(format!("it does not upcast: {reason}"))
        }
        other => HandlerFailure::new(other.to_string()),
    }
}

/// Parses a uuid column into an event id.
pub(crate) fn event_id(u: Uuid) -> Result<EventId, StoreError> {
    EventId::new(u).map_err(|e| StoreError::backend(format!("stored event id: {e}"), false))
}
