use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chronik_core::{
    Aggregate, DomainEvent, EventId, EventType, ExpectedVersion, Metadata, NewEvent, RecordedEvent,
    RetryPolicy, SnapshotPolicy, SnapshotState, StreamId, Version,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use thiserror::Error;
use tracing::Instrument as _;
use tracing::field::Empty;
use uuid::Uuid;

use crate::cache::StateCache;
use crate::error::StoreError;
use crate::port::{
    AppendResult, BoxSession, EventStore, Payload, PayloadStream, SnapshotStore, StreamAppend,
    StreamEvent,
};

/// The span of one load of `id` (`chronik.load`): its versions are recorded when it ends.
fn load_span<A: Aggregate>(id: &StreamId) -> tracing::Span {
    tracing::info_span!(
        "chronik.load",
        stream = %id,
        aggregate = A::TYPE,
        snapshot_version = Empty,
        version = Empty,
        events_replayed = Empty,
    )
}

/// Records a finished load on its span (versions and counts; never the state).
fn record_loaded<A: Aggregate>(span: &tracing::Span, loaded: Result<&Loaded<A>, &StoreError>) {
    if let Ok(l) = loaded {
        span.record("snapshot_version", l.snapshot_version.get());
        span.record("version", l.version.get());
        span.record("events_replayed", l.events_replayed);
    }
}

/// Records why a command was not carried out on its span: the kind, and for a give-up
/// the attempts and conflicts (never the domain error's text, which may quote a command).
fn record_failure<E: std::error::Error + 'static>(span: &tracing::Span, e: &RepositoryError<E>) {
    let outcome = match e {
        RepositoryError::Domain(_) => "rejected",
        RepositoryError::Store(_) => "failed",
        RepositoryError::RetriesExhausted {
            attempts,
            conflicts,
            ..
        } => {
            span.record("attempts", *attempts);
            span.record("conflicts", *conflicts);
            "retries_exhausted"
        }
        RepositoryError::Conflict(_) => "conflict",
    };
    span.record("outcome", outcome);
}

/// Waiting between retries. [`DefaultSleep`] works under any async runtime; pass another
/// (e.g. `tokio::time::sleep`, or a recorder in tests) with [`Repository::with_sleep`].
pub trait Sleep: Send + Sync {
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

impl<F, Fut> Sleep for F
where
    F: Fn(Duration) -> Fut + Send + Sync,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(self(d))
    }
}

/// The default [`Sleep`]: a timer that works under any async runtime (tokio, async-std,
/// a plain executor), so that a [`Repository`] backs off between conflict retries however it
/// is built. Its timer runs on one helper thread shared by the process; this crate still
/// starts no runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultSleep;

impl Sleep for DefaultSleep {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures_timer::Delay::new(d))
    }
}

/// Runs a future in the background on the caller's runtime (e.g. `|f| { tokio::spawn(f); }`).
pub trait Spawn: Send + Sync {
    /// Starts `task` and returns at once.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

impl<F: Fn(BoxFuture<'static, ()>) + Send + Sync> Spawn for F {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self(task);
    }
}

/// An aggregate as loaded: its state and the version it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The folded state.
    pub state: A,
    /// The stream version the state reflects (`Version::ZERO` for a new aggregate).
    pub version: Version,
    /// The version of the snapshot the load started from (`Version::ZERO` if none).
    pub snapshot_version: Version,
    /// How many events were replayed on top of the snapshot.
    pub events_replayed: u64,
}

/// What [`Repository::execute`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteOutcome {
    /// The stream's version after the command.
    pub version: Version,
    /// How many events the command recorded (0 when it decided nothing changes).
    pub events_written: usize,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// Optimistic-concurrency conflicts met and retried.
    pub conflicts: u32,
    /// The append, when something was written.
    pub append: Option<AppendResult>,
    /// Whether a snapshot was written after the append.
    pub snapshot_taken: bool,
    /// Time spent backing off between attempts (zero when the first attempt succeeded).
    pub backoff: Duration,
    /// Whether the successful attempt decided on the state an earlier command left in the
    /// cache ([`Repository::with_cache`]), without reading the stream.
    pub cached: bool,
}

/// What [`Repository::react`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReactOutcome {
    /// The reaction was carried out now.
    Executed(ExecuteOutcome),
    /// An earlier delivery of the trigger already carried it out: nothing was written.
    AlreadyDone,
    /// The aggregate decided that nothing changes: nothing was written (a later delivery
    /// decides again).
    Nothing,
}

/// The id of event `index` of the reaction of `reactor` to event `trigger` on `stream`:
/// a name-based (v5) UUID of the four, so every delivery of the trigger gives the same ids.
///
/// # Errors
/// Never in practice ([`StoreError::Invalid`] if the derived UUID were nil).
pub fn reaction_event_id(
    reactor: &str,
    trigger: EventId,
    stream: &StreamId,
    index: usize,
) -> Result<EventId, StoreError> {
    /// The namespace of chronik's reaction ids (a fixed, random v4 UUID).
    const NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_27a4_43c1_4d8e_9a5e_2b7d_14c3_88f1);
    let name = format!(
        "{reactor}\u{0}{}\u{0}{stream}\u{0}{index}",
        trigger.as_uuid()
    );
    Ok(EventId::new(Uuid::new_v5(&NAMESPACE, name.as_bytes()))?)
}

/// What [`Repository::execute_across`] (or [`Repository::execute_all`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiOutcome {
    /// Each stream's version after the command, in the order given.
    pub versions: Vec<Version>,
    /// How many events the command recorded on each stream, in the order given.
    pub events_written: Vec<usize>,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// Optimistic-concurrency conflicts met and retried.
    pub conflicts: u32,
    /// The append's results, one per stream that recorded events (in the order given);
    /// empty when the decision recorded nothing.
    pub appends: Vec<AppendResult>,
    /// Time spent backing off between attempts.
    pub backoff: Duration,
}

/// Why a command was not carried out.
#[derive(Debug, Error)]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a business rule). Not retried.
    #[error("command rejected: {0}")]
    Domain(#[source] E),
    /// The store failed in a way retrying will not fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every attempt met a retryable failure (usually a conflict): the command was given up,
    /// nothing of it was written. `last` is the final failure, typically the
    /// [`StoreError::Conflict`] naming the version another writer got to first.
    #[error(
        "gave up after {attempts} attempts ({conflicts} conflicts, {waited:?} backing off): {last}"
    )]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// How many of them lost an optimistic-concurrency race.
        conflicts: u32,
        /// Time spent backing off between them.
        waited: Duration,
        /// The last failure.
        #[source]
        last: StoreError,
    },
    /// A command that is not retry-safe ([`Aggregate::retry_safe`] is false for it) lost an
    /// optimistic-concurrency race: it was decided once, nothing of it was written, and it
    /// was not decided again. The error is the conflict as the store reported it
    /// ([`StoreError::Conflict`], or [`StoreError::Conflicts`] naming every stream of a
    /// command across streams that another writer changed), for the caller to settle.
    #[error("not retried (the command is not retry-safe): {0}")]
    Conflict(#[source] StoreError),
}

impl<E: std::error::Error + 'static> RepositoryError<E> {
    /// Whether the command lost an optimistic-concurrency race: given up after retries
    /// ([`RepositoryError::RetriesExhausted`] with a conflict last) or not retried
    /// ([`RepositoryError::Conflict`]). Nothing of the command was written either way.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Conflict(_) => true,
            Self::RetriesExhausted { last, .. } => last.is_conflict(),
            _ => false,
        }
    }
}

/// A decision across streams waiting to be appended: the states it was made on, the
/// events per stream (in the order given), and the parts to append (streams with events).
struct DecidedAcross<A: Aggregate> {
    loaded: Vec<Loaded<A>>,
    decided: Vec<Vec<A::Event>>,
    parts: Vec<StreamAppend>,
}

/// A decision waiting to be appended.
struct Decided<A: Aggregate> {
    /// The state it was made on.
    loaded: Loaded<A>,
    /// The events decided.
    events: Vec<A::Event>,
    /// Their envelopes (ids fixed, so that a re-send is idempotent).
    new: Vec<NewEvent>,
    /// Whether `loaded` came from the cache rather than the store.
    from_cache: bool,
}

type LoadSnapshot<A, S> = for<'a> fn(&'a S, &'a StreamId) -> BoxFuture<'a, Option<(A, Version)>>;
type SaveSnapshot<A, S> =
    fn(&S, StreamId, &A, Version) -> Result<BoxFuture<'static, Result<(), StoreError>>, StoreError>;

struct SnapshotHooks<A, S> {
    policy: SnapshotPolicy,
    load: LoadSnapshot<A, S>,
    /// Serializes the state now and returns the write, which owns everything it needs.
    save: SaveSnapshot<A, S>,
    background: Option<Arc<dyn Spawn>>,
}

fn load_snapshot<'a, A: SnapshotState, S: SnapshotStore>(
    store: &'a S,
    id: &'a StreamId,
) -> BoxFuture<'a, Option<(A, Version)>> {
    Box::pin(async move {
        match store.load_snapshot(id, A::STATE_SCHEMA_VERSION).await {
            Ok(Some(s)) => match A::from_state(s.state) {
                Ok(state) => Some((state, s.version)),
                Err(e) => {
                    // Not `%e`: serde quotes the state's values, which come from payloads.
                    let error = chronik_core::json_error_without_values(&e);
                    tracing::warn!(stream = %id, %error, "ignoring snapshot that does not decode; replaying events");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(stream = %id, error = %e, "snapshot load failed; replaying events");
                None
            }
        }
    })
}

fn save_snapshot<A: SnapshotState, S: SnapshotStore + Clone + 'static>(
    store: &S,
    id: StreamId,
    state: &A,
    version: Version,
) -> Result<BoxFuture<'static, Result<(), StoreError>>, StoreError> {
    let value = state
        .to_state()
        .map_err(|e| StoreError::InvalidRequest(format!("cannot serialize snapshot: {e}")))?;
    let store = store.clone();
    Ok(Box::pin(async move {
        store
            .save_snapshot(&id, version, A::STATE_SCHEMA_VERSION, &value)
            .await
    }))
}

fn warn_snapshot_failed(id: &StreamId, version: Version, e: &StoreError) {
    tracing::warn!(stream = %id, %version, error = %e, "snapshot write failed; a later command will try again");
}

/// Loads, decides and saves aggregates of type `A` through store `S`.
///
/// - `load` starts from the latest usable snapshot (when configured) and folds the tail of
///   the stream event by event, never collecting it first.
/// - `save` appends with the loaded version as the exact expected version.
/// - `execute` = load + `handle` + save, retried on conflict per the [`RetryPolicy`], with
///   the given metadata (correlation, causation) on every event it writes.
///
/// Reads are upcast when `S` is wrapped in [`crate::Upcasting`].
pub struct Repository<A, S> {
    store: S,
    retry: RetryPolicy,
    sleep: Arc<dyn Sleep>,
    jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
    snapshots: Option<SnapshotHooks<A, S>>,
    cache: Option<StateCache<A>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A, S> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &std::any::type_name::<A>())
            .field("retry", &self.retry)
            .field(
                "snapshot_policy",
                &self.snapshots.as_ref().map(|h| h.policy),
            )
            .field(
                "cache_capacity",
                &self.cache.as_ref().map(StateCache::capacity),
            )
            .finish_non_exhaustive()
    }
}

fn random_unit() -> f64 {
    // 53 random bits from a v4 UUID, as a float in [0, 1).
    (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store` that retries conflicts with the default [`RetryPolicy`]
    /// (5 attempts, exponential backoff from 5 ms capped at 500 ms, with jitter), waiting on
    /// [`DefaultSleep`] between attempts; no snapshots.
    pub fn new(store: S) -> Self {
        Self {
            store,
            retry: RetryPolicy::default(),
            sleep: Arc::new(DefaultSleep),
            jitter: Arc::new(random_unit),
            snapshots: None,
            cache: None,
            _aggregate: PhantomData,
        }
    }

    /// Sets the retry policy (`RetryPolicy::no_retry()` for a single attempt).
    #[must_use]
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets how to wait between attempts (default [`DefaultSleep`]), e.g.
    /// `tokio::time::sleep`, or a recorder in a test.
    #[must_use]
    pub fn with_sleep(mut self, sleep: impl Sleep + 'static) -> Self {
        self.sleep = Arc::new(sleep);
        self
    }

    /// Sets the jitter source (values in `[0, 1)`), e.g. a seeded generator in tests.
    #[must_use]
    pub fn with_jitter(mut self, jitter: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.jitter = Arc::new(jitter);
        self
    }

    /// Enables snapshots (the store must also be a [`SnapshotStore`]). Loads start from the
    /// latest usable snapshot; after a successful command the snapshot is written inline when
    /// `policy` asks for one. A failed write is logged, never returned.
    #[must_use]
    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> Self
    where
        A: SnapshotState,
        S: SnapshotStore + Clone + 'static,
    {
        self.snapshots = Some(SnapshotHooks {
            policy,
            load: load_snapshot::<A, S>,
            save: save_snapshot::<A, S>,
            background: None,
        });
        self
    }

    /// Like [`Repository::with_snapshots`], but the snapshot write runs on `spawn` (for
    /// example `|f| { tokio::spawn(f); }`), off the command's critical path: `execute`
    /// returns as soon as the events are stored. `ExecuteOutcome::snapshot_taken` then
    /// means "a snapshot write was started".
    #[must_use]
    pub fn with_background_snapshots(
        mut self,
        policy: SnapshotPolicy,
        spawn: impl Spawn + 'static,
    ) -> Self
    where
        A: SnapshotState,
        S: SnapshotStore + Clone + 'static,
    {
        self.snapshots = Some(SnapshotHooks {
            policy,
            load: load_snapshot::<A, S>,
            save: save_snapshot::<A, S>,
            background: Some(Arc::new(spawn)),
        });
        self
    }

    /// Keeps the state each command leaves behind for up to `capacity` streams (the least
    /// recently used goes first; `0`, the default, keeps none), so that the next command on
    /// a cached stream decides on it and appends at its version without reading the stream:
    /// one round trip instead of two. [`Repository::load`] always reads the store.
    ///
    /// Correctness does not depend on the cache being fresh. Another writer (another
    /// repository, another process, [`Repository::save`]) makes a cached state stale; the
    /// append expecting its version then meets a conflict, and the command is decided again
    /// at once on a fresh load, then retried as usual. That extra attempt is counted in
    /// `attempts` and `conflicts` but neither waits nor uses up the retry policy. A refusal,
    /// or a decision to write nothing, is never made on a cached state (no append would
    /// check it): the command is decided again on a fresh load. Concurrent commands on one
    /// stream through one repository do not share its entry: one decides on it, the others
    /// read the stream.
    ///
    /// A cached state is the fold of the events as the command decided them; a reload folds
    /// them as decoded from the store. The two agree when events read back as they were
    /// written (as serde-derived events without skipped fields do; `DomainEvent::encode`
    /// checks that an event decodes, not that it decodes to an equal value).
    ///
    /// Costs: one state per cached stream in memory, and one wasted append round trip per
    /// command on a stream that changed elsewhere since it was cached.
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| StateCache::new(capacity));
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the aggregate (snapshot, then the tail folded one event at a time), from the
    /// store: the cache of [`Repository::with_cache`] is neither read nor filled.
    ///
    /// # Errors
    /// [`StoreError::Decode`] when a stored event does not decode as `A::Event` (named by
    /// stream, version and id), or any read error.
    pub async fn load(&self, id: &StreamId) -> Result<Loaded<A>, StoreError> {
        let span = load_span::<A>(id);
        let loaded = async {
            let (state, snapshot_version) = self.start(id).await;
            let events = self.store.read_payloads(id, snapshot_version.next()?);
            Ok(Self::fold(id, state, snapshot_version, None, events)
                .await?
                .0)
        }
        .instrument(span.clone())
        .await;
        record_loaded(&span, loaded.as_ref());
        loaded
    }

    /// [`Repository::load`] for one attempt of a command: the stream is read on a session
    /// of the store when it offers one ([`EventStore::session`]), returned for the append.
    /// The snapshot is read first, so that the session is the only connection held.
    async fn load_for_command(
        &self,
        id: &StreamId,
    ) -> Result<(Loaded<A>, Option<BoxSession>), StoreError> {
        let span = load_span::<A>(id);
        let loaded = async {
            let (state, snapshot_version) = self.start(id).await;
            let from = snapshot_version.next()?;
            let mut session = self.store.session().await?;
            let (loaded, _) = match session.as_deref_mut() {
                Some(s) => {
                    Self::fold(id, state, snapshot_version, None, s.read_payloads(id, from)).await
                }
                None => {
                    let events = self.store.read_payloads(id, from);
                    Self::fold(id, state, snapshot_version, None, events).await
                }
            }?;
            Ok((loaded, session))
        }
        .instrument(span.clone())
        .await;
        record_loaded(&span, loaded.as_ref().map(|(l, _)| l));
        loaded
    }

    /// Where a load starts: the latest usable snapshot, or the empty state.
    async fn start(&self, id: &StreamId) -> (A, Version) {
        match &self.snapshots {
            Some(h) => (h.load)(&self.store, id)
                .await
                .map_or((A::default(), Version::ZERO), |(s, v)| (s, v)),
            None => (A::default(), Version::ZERO),
        }
    }

    /// Folds `events` (the stream of `id` after `snapshot_version`) onto `state`, one at a
    /// time; also tells whether an event with id `watch` went by.
    async fn fold(
        id: &StreamId,
        mut state: A,
        snapshot_version: Version,
        watch: Option<EventId>,
        mut events: PayloadStream<'_>,
    ) -> Result<(Loaded<A>, bool), StoreError> {
        let mut version = snapshot_version;
        let mut replayed = 0;
        let mut seen = false;
        while let Some(stored) = events.next().await {
            let StreamEvent {
                version: at,
                event_id,
                event_type,
                payload,
                ..
            } = stored?;
            seen |= watch == Some(event_id);
            let event = match payload {
                Payload::Json(text) => A::Event::from_json(event_type.as_str(), &text),
                Payload::Value(value) => A::Event::from_payload(event_type.as_str(), value),
            }
            .map_err(|e| StoreError::Decode {
                stream: id.clone(),
                version: at,
                event_id,
                // A fold reads payloads only, without feed positions.
                cursor: None,
                reason: e.to_string(),
            })?;
            state.apply(&event);
            version = at;
            replayed += 1;
        }
        Ok((
            Loaded {
                state,
                version,
                snapshot_version,
                events_replayed: replayed,
            },
            seen,
        ))
    }

    /// Executes `command` on `id` in reaction to `trigger`, exactly once per
    /// `(reactor, trigger, stream)` however often the trigger is delivered: what a reactor
    /// (a process manager following the feed at least once) calls.
    ///
    /// The reaction's events get ids derived from `reactor`, the trigger's id and the
    /// stream ([`reaction_event_id`]), and its metadata is [`Metadata::caused_by`] the
    /// trigger (same correlation, the trigger as causation). Before deciding, the stream
    /// is read from its start (not from a snapshot, and not from the cache) looking for the
    /// reaction's first id: when it is there, the reaction was already carried out by an
    /// earlier delivery and nothing is done ([`ReactOutcome::AlreadyDone`]), whatever the
    /// aggregate would decide now. A concurrent delivery that wins the race makes this
    /// append meet the same ids: at the same place (it decided on the same state) the
    /// store answers "already appended", elsewhere [`StoreError::DuplicateEventId`]; both
    /// are `AlreadyDone`, so exactly one delivery reports `Executed`. Conflicts with other writers are retried as in
    /// [`Repository::execute_with`].
    ///
    /// A reaction whose command is not retry-safe ([`Aggregate::retry_safe`]) is decided
    /// once per call: a conflict with another writer is returned as
    /// [`RepositoryError::Conflict`], nothing written. A reactor that returns it as a
    /// handler error has the trigger redelivered (and the reaction decided again, on the
    /// state then, by that delivery); one that must not, parks the trigger instead.
    ///
    /// # Errors
    /// As [`Repository::execute_with`]; a refusal by the aggregate is
    /// [`RepositoryError::Domain`] (a reactor decides whether to park the trigger).
    pub async fn react(
        &self,
        id: &StreamId,
        command: A::Command,
        trigger: &RecordedEvent,
        reactor: &str,
    ) -> Result<ReactOutcome, RepositoryError<A::Error>> {
        let span = tracing::info_span!(
            "chronik.react",
            stream = %id,
            aggregate = A::TYPE,
            reactor,
            trigger_stream = %trigger.stream_id,
            trigger_version = trigger.version.get(),
            trigger_cursor = %trigger.cursor,
            outcome = Empty,
            attempts = Empty,
            conflicts = Empty,
            version = Empty,
        );
        let result = self
            .react_inner(id, command, trigger, reactor)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(ReactOutcome::Executed(o)) => {
                span.record("outcome", "executed");
                span.record("attempts", o.attempts);
                span.record("conflicts", o.conflicts);
                span.record("version", o.version.get());
            }
            Ok(_) => {
                span.record("outcome", "already_done");
            }
            Err(e) => record_failure(&span, e),
        }
        result
    }

    /// [`Repository::react`] without its span.
    async fn react_inner(
        &self,
        id: &StreamId,
        command: A::Command,
        trigger: &RecordedEvent,
        reactor: &str,
    ) -> Result<ReactOutcome, RepositoryError<A::Error>> {
        let metadata = Metadata::caused_by(trigger);
        let first_id = reaction_event_id(reactor, trigger.event_id, id, 0)?;
        let retry_safe = A::retry_safe(&command);
        let max = self.retry.max_attempts();
        let mut waited = Duration::ZERO;
        let mut conflicts = 0;
        let mut attempt = 0;
        // A once-only decision whose append must be re-sent as it was.
        let mut pending: Option<Decided<A>> = None;
        loop {
            attempt += 1;
            if attempt > 1 {
                waited += self.back_off(attempt).await;
            }
            let Decided {
                loaded,
                events,
                new,
                ..
            } = match pending.take() {
                Some(p) => p,
                None => {
                    let events = self.store.read_payloads(id, Version::FIRST);
                    let (loaded, done) =
                        Self::fold(id, A::default(), Version::ZERO, Some(first_id), events).await?;
                    if done {
                        return Ok(ReactOutcome::AlreadyDone);
                    }
                    let events = loaded
                        .state
                        .handle(&command)
                        .map_err(RepositoryError::Domain)?;
                    if events.is_empty() {
                        return Ok(ReactOutcome::Nothing);
                    }
                    let mut new = to_new_events(&events, &metadata)?;
                    for (i, e) in new.iter_mut().enumerate() {
                        *e = NewEvent::new(
                            reaction_event_id(reactor, trigger.event_id, id, i)?,
                            e.event_type().clone(),
                            e.schema_version(),
                            e.payload().clone(),
                            e.metadata().clone(),
                        )
                        .map_err(StoreError::Invalid)?;
                    }
                    Decided {
                        loaded,
                        events,
                        new,
                        from_cache: false,
                    }
                }
            };
            match self
                .store
                .append(id, ExpectedVersion::Exact(loaded.version), &new)
                .await
            {
                // The same ids at the same place: a concurrent delivery decided the same
                // reaction on the same state and appended it first.
                Ok(append) if append.already_appended => return Ok(ReactOutcome::AlreadyDone),
                Ok(append) => {
                    if let Some(cache) = &self.cache {
                        cache.take(id);
                    }
                    let snapshot_taken = self
                        .after_append(id, loaded, &events, append.last_version)
                        .await;
                    return Ok(ReactOutcome::Executed(ExecuteOutcome {
                        version: append.last_version,
                        events_written: events.len(),
                        attempts: attempt,
                        conflicts,
                        append: Some(append),
                        snapshot_taken,
                        backoff: waited,
                        cached: false,
                    }));
                }
                Err(StoreError::DuplicateEventId { event_id, .. }) if event_id == first_id => {
                    return Ok(ReactOutcome::AlreadyDone);
                }
                Err(e) if e.is_conflict() && !retry_safe => {
                    return Err(RepositoryError::Conflict(e));
                }
                // Outcome unknown: the next attempt reads the stream, and finds the
                // reaction there if it landed (a once-only decision is re-sent as it was,
                // and its ids tell the same).
                Err(e) if e.is_retryable() && attempt < max => {
                    if e.is_conflict() {
                        conflicts += 1;
                    } else if !retry_safe {
                        pending = Some(Decided {
                            loaded,
                            events,
                            new,
                            from_cache: false,
                        });
                    }
                }
                Err(e) if e.is_retryable() => {
                    if e.is_conflict() {
                        conflicts += 1;
                    }
                    return Err(RepositoryError::RetriesExhausted {
                        attempts: attempt,
                        conflicts,
                        waited,
                        last: e,
                    });
                }
                Err(e) => return Err(RepositoryError::Store(e)),
            }
        }
    }

    /// Appends `events` expecting the stream at `expected` (the loaded version).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another writer got there first; any store error.
    pub async fn save(
        &self,
        id: &StreamId,
        expected: Version,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<AppendResult, StoreError> {
        let new = to_new_events(events, metadata)?;
        self.store
            .append(id, ExpectedVersion::Exact(expected), &new)
            .await
    }

    /// Load, decide, save with default (empty) metadata; see [`Repository::execute_with`].
    ///
    /// # Errors
    /// As [`Repository::execute_with`].
    pub async fn execute(
        &self,
        id: &StreamId,
        command: A::Command,
    ) -> Result<ExecuteOutcome, RepositoryError<A::Error>> {
        self.execute_with(id, command, Metadata::default()).await
    }

    /// Load, decide, save, with `metadata` (correlation, causation, headers) on every event
    /// written; a conflict is retried per the retry policy: back off (with jitter), reload,
    /// decide again.
    ///
    /// The command gets an id of its own (time-ordered): its events' causation id unless
    /// `metadata` names one (a reaction names its triggering event, see
    /// [`Metadata::caused_by`]), and their correlation id unless `metadata` names one (the
    /// command then starts a new chain). `chronik trace` follows these ids.
    ///
    /// An ambiguous backend failure (commit acknowledgement lost) re-sends the *same*
    /// events with the same ids, so the store's idempotent append tells whether they landed.
    ///
    /// With [`Repository::with_cache`], a cached stream is not read first; a stale cached
    /// state costs one extra attempt beyond the policy's (see there).
    ///
    /// A command that is not retry-safe ([`Aggregate::retry_safe`]: its decision goes with an
    /// effect outside the store, say a card already charged) is decided once, on a fresh
    /// load even when the stream is cached, and a conflict is returned as
    /// [`RepositoryError::Conflict`] with nothing written instead of being decided again.
    /// Failures that leave its decision valid (a lost acknowledgement, a transaction-order
    /// refusal) re-send the same events, per the retry policy.
    ///
    /// # Errors
    /// [`RepositoryError::Domain`] when the aggregate refuses; [`RepositoryError::RetriesExhausted`]
    /// when every attempt conflicted (it keeps the last conflict); [`RepositoryError::Conflict`]
    /// when a command that is not retry-safe met a conflict; [`RepositoryError::Store`]
    /// otherwise, including an event that does not encode under its own type
    /// ([`StoreError::InvalidRequest`], nothing written).
    pub async fn execute_with(
        &self,
        id: &StreamId,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<ExecuteOutcome, RepositoryError<A::Error>> {
        let span = tracing::info_span!(
            "chronik.execute",
            stream = %id,
            aggregate = A::TYPE,
            retry_safe = A::retry_safe(&command),
            outcome = Empty,
            attempts = Empty,
            conflicts = Empty,
            version = Empty,
            events_written = Empty,
            cursor = Empty,
        );
        let result = self
            .execute_inner(id, command, metadata)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(o) => {
                span.record(
                    "outcome",
                    if o.events_written == 0 {
                        "nothing_to_write"
                    } else {
                        "written"
                    },
                );
                span.record("attempts", o.attempts);
                span.record("conflicts", o.conflicts);
                span.record("version", o.version.get());
                span.record("events_written", o.events_written);
                if let Some(a) = &o.append {
                    span.record("cursor", tracing::field::display(a.cursor));
                }
            }
            Err(e) => record_failure(&span, e),
        }
        result
    }

    /// [`Repository::execute_with`] without its span.
    async fn execute_inner(
        &self,
        id: &StreamId,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<ExecuteOutcome, RepositoryError<A::Error>> {
        let command = &command;
        let retry_safe = A::retry_safe(command);
        // The command's own id is its events' causation (and, for a new chain, their
        // correlation): fixed once, so a re-send after a lost acknowledgement is identical.
        let metadata = &metadata.for_command(Uuid::now_v7());
        let mut waited = Duration::ZERO;
        let mut conflicts = 0;
        let mut pending: Option<Decided<A>> = None;
        let max = self.retry.max_attempts();
        // Attempts made, and attempts the retry policy counts: the one that decided on a
        // cached state found stale is followed at once by one on a fresh load, uncounted.
        let mut attempt = 0;
        let mut counted = 0;
        // A command that may not be decided again is never decided on a cached state: a
        // stale one would cost it the one decision it has.
        let mut cached = if retry_safe {
            self.cache.as_ref().and_then(|c| c.take(id))
        } else {
            None
        };
        let mut stale_retry = false;
        loop {
            attempt += 1;
            if stale_retry {
                stale_retry = false;
            } else {
                counted += 1;
                if counted > 1 {
                    waited += self.back_off(counted).await;
                }
            }
            // The session this attempt read on, if any: its append goes through it too.
            let mut session: Option<BoxSession> = None;
            let decided = match pending.take() {
                Some(p) => p,
                None => {
                    // On a cached state only a decision to write is made: the append checks
                    // the version it was made at. A refusal or a decision to write nothing
                    // would go unchecked, so those are made again on a fresh load.
                    let hit = cached
                        .take()
                        .and_then(|loaded| match loaded.state.handle(command) {
                            Ok(events) if !events.is_empty() => Some((loaded, events)),
                            _ => None,
                        });
                    match hit {
                        Some((loaded, events)) => Decided {
                            new: to_new_events(&events, metadata)?,
                            loaded,
                            events,
                            from_cache: true,
                        },
                        None => {
                            let (loaded, read_on) = self.load_for_command(id).await?;
                            session = read_on;
                            let decision = loaded.state.handle(command);
                            match decision {
                                Err(e) => {
                                    self.remember(id, loaded);
                                    return Err(RepositoryError::Domain(e));
                                }
                                Ok(events) if events.is_empty() => {
                                    let version = loaded.version;
                                    self.remember(id, loaded);
                                    return Ok(ExecuteOutcome {
                                        version,
                                        events_written: 0,
                                        attempts: attempt,
                                        conflicts,
                                        append: None,
                                        snapshot_taken: false,
                                        backoff: waited,
                                        cached: false,
                                    });
                                }
                                Ok(events) => Decided {
                                    new: to_new_events(&events, metadata)?,
                                    loaded,
                                    events,
                                    from_cache: false,
                                },
                            }
                        }
                    }
                }
            };
            let expected = ExpectedVersion::Exact(decided.loaded.version);
            let appended = match session.as_deref_mut() {
                Some(s) => s.append(id, expected, &decided.new).await,
                None => self.store.append(id, expected, &decided.new).await,
            };
            // Released before anything else touches the store (a snapshot write, the next
            // attempt's backoff): a session holds a connection.
            drop(session);
            match appended {
                Ok(append) => {
                    let from_cache = decided.from_cache;
                    let events_written = decided.events.len();
                    let snapshot_taken = self
                        .after_append(id, decided.loaded, &decided.events, append.last_version)
                        .await;
                    return Ok(ExecuteOutcome {
                        version: append.last_version,
                        events_written,
                        attempts: attempt,
                        conflicts,
                        append: Some(append),
                        snapshot_taken,
                        backoff: waited,
                        cached: from_cache,
                    });
                }
                Err(e) if e.is_conflict() && !retry_safe => {
                    tracing::debug!(stream = %id, attempt, error = %e, "conflict on a command that is not retry-safe; not deciding it again");
                    return Err(RepositoryError::Conflict(e));
                }
                Err(e) if e.is_conflict() && decided.from_cache => {
                    // The cached state was stale: another writer got there since. Not a
                    // sign of contention, so no waiting: decide again on a fresh load.
                    conflicts += 1;
                    stale_retry = true;
                    tracing::debug!(stream = %id, attempt, error = %e, "cached state was stale; reloading");
                }
                Err(e) if e.is_retryable() && counted < max => {
                    if e.is_conflict() {
                        conflicts += 1;
                        tracing::debug!(stream = %id, attempt, error = %e, "conflict; reloading and retrying");
                    } else if !retry_safe || matches!(e, StoreError::Backend { .. }) {
                        // Outcome unknown (or, for a command that is not retry-safe, a
                        // refusal that leaves its decision valid): re-send the identical
                        // append (idempotent).
                        pending = Some(decided);
                    }
                }
                Err(e) if e.is_retryable() => {
                    if e.is_conflict() {
                        conflicts += 1;
                    }
                    return Err(RepositoryError::RetriesExhausted {
                        attempts: attempt,
                        conflicts,
                        waited,
                        last: e,
                    });
                }
                Err(e) => return Err(RepositoryError::Store(e)),
            }
        }
    }

    /// Commands on several aggregates of this type, decided together and appended
    /// atomically: each `(stream, command)` is decided on its own loaded state (a refusal of
    /// any of them refuses all), and every stream's events are appended in one
    /// [`EventStore::append_streams`], each part expecting the version its state was loaded
    /// at. A transfer is `[(from, Withdraw(n)), (to, Deposit(n))]`. Same metadata, retry
    /// and give-up semantics as [`Repository::execute_with`]; see
    /// [`Repository::execute_across`] for a decision that needs every state at once.
    ///
    /// When any of the commands is not retry-safe ([`Aggregate::retry_safe`]), the whole
    /// decision is made once: a conflict on any stream is returned as
    /// [`RepositoryError::Conflict`] (its [`StoreError::Conflicts`] names every stream another
    /// writer changed) and nothing is written on any stream.
    ///
    /// # Errors
    /// As [`Repository::execute_across`], and [`RepositoryError::Conflict`] as above.
    pub async fn execute_all(
        &self,
        commands: &[(StreamId, A::Command)],
        metadata: Metadata,
    ) -> Result<MultiOutcome, RepositoryError<A::Error>> {
        let ids: Vec<StreamId> = commands.iter().map(|(id, _)| id.clone()).collect();
        let retry_safe = commands.iter().all(|(_, command)| A::retry_safe(command));
        self.across(
            &ids,
            |states| {
                states
                    .iter()
                    .zip(commands)
                    .map(|(state, (_, command))| state.handle(command))
                    .collect()
            },
            metadata,
            retry_safe,
        )
        .await
    }

    /// Loads the aggregates at `ids`, lets `decide` make one decision on all their states
    /// (in the order of `ids`; it returns the events to record on each, in the same order),
    /// and appends them in one atomic [`EventStore::append_streams`], every stream expecting
    /// the version its state was loaded at. A conflict on any of them (another writer got
    /// to one first) reloads them all and decides again, per the retry policy, with backoff
    /// and jitter; an ambiguous failure re-sends the identical append. `decide` may run
    /// several times, so it must only decide (no side effects); a decision that must be made
    /// only once is [`Repository::execute_all`] with a command that is not retry-safe.
    ///
    /// A stream for which `decide` records nothing is not part of the append, so its
    /// version is not checked: the decision must not depend on a state it leaves
    /// unchanged. The states are read from the store (the cache of
    /// [`Repository::with_cache`] is not used for the decision; it is refreshed after).
    ///
    /// # Errors
    /// [`RepositoryError::Domain`] when `decide` refuses (nothing written);
    /// [`RepositoryError::RetriesExhausted`] when every attempt conflicted (it keeps the
    /// last [`StoreError::Conflicts`], naming every stream another writer changed);
    /// [`RepositoryError::Store`] otherwise: [`StoreError::InvalidRequest`] when `ids` is
    /// empty or names a stream twice, or `decide` returns another number of event lists
    /// than there are streams.
    pub async fn execute_across<F>(
        &self,
        ids: &[StreamId],
        decide: F,
        metadata: Metadata,
    ) -> Result<MultiOutcome, RepositoryError<A::Error>>
    where
        F: Fn(&[&A]) -> Result<Vec<Vec<A::Event>>, A::Error>,
    {
        self.across(ids, decide, metadata, true).await
    }

    /// [`Repository::execute_across`]; when not `retry_safe`, `decide` runs once and a
    /// conflict is returned as [`RepositoryError::Conflict`].
    async fn across<F>(
        &self,
        ids: &[StreamId],
        decide: F,
        metadata: Metadata,
        retry_safe: bool,
    ) -> Result<MultiOutcome, RepositoryError<A::Error>>
    where
        F: Fn(&[&A]) -> Result<Vec<Vec<A::Event>>, A::Error>,
    {
        let named: Vec<&str> = ids.iter().take(16).map(StreamId::as_str).collect();
        let span = tracing::info_span!(
            "chronik.execute_across",
            streams = ids.len(),
            stream_ids = %format_args!("{}{}", named.join(","), if ids.len() > 16 { ",..." } else { "" }),
            aggregate = A::TYPE,
            retry_safe,
            outcome = Empty,
            attempts = Empty,
            conflicts = Empty,
            events_written = Empty,
        );
        let result = self
            .across_inner(ids, decide, metadata, retry_safe)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(o) => {
                let written: usize = o.events_written.iter().sum();
                span.record(
                    "outcome",
                    if written == 0 {
                        "nothing_to_write"
                    } else {
                        "written"
                    },
                );
                span.record("attempts", o.attempts);
                span.record("conflicts", o.conflicts);
                span.record("events_written", written);
            }
            Err(e) => record_failure(&span, e),
        }
        result
    }

    /// [`Repository::across`] without its span.
    async fn across_inner<F>(
        &self,
        ids: &[StreamId],
        decide: F,
        metadata: Metadata,
        retry_safe: bool,
    ) -> Result<MultiOutcome, RepositoryError<A::Error>>
    where
        F: Fn(&[&A]) -> Result<Vec<Vec<A::Event>>, A::Error>,
    {
        if ids.is_empty() {
            return Err(StoreError::InvalidRequest(
                "a command across streams needs at least one stream".to_owned(),
            )
            .into());
        }
        if let Some(twice) = ids
            .iter()
            .enumerate()
            .find_map(|(i, id)| ids[..i].contains(id).then_some(id))
        {
            return Err(StoreError::InvalidRequest(format!(
                "stream {twice} is named twice in one command across streams"
            ))
            .into());
        }
        let metadata = &metadata.for_command(Uuid::now_v7());
        let max = self.retry.max_attempts();
        let mut waited = Duration::ZERO;
        let mut conflicts = 0;
        let mut attempt = 0;
        // A decision whose append had an unknown outcome, re-sent as it was.
        let mut pending: Option<DecidedAcross<A>> = None;
        loop {
            attempt += 1;
            if attempt > 1 {
                waited += self.back_off(attempt).await;
            }
            let DecidedAcross {
                loaded,
                decided,
                parts,
            } = match pending.take() {
                Some(p) => p,
                None => {
                    let mut loaded = Vec::with_capacity(ids.len());
                    for id in ids {
                        loaded.push(self.load(id).await?);
                    }
                    let states: Vec<&A> = loaded.iter().map(|l| &l.state).collect();
                    let decided = decide(&states).map_err(RepositoryError::Domain)?;
                    if decided.len() != ids.len() {
                        return Err(StoreError::InvalidRequest(format!(
                            "the decision returned {} event lists for {} streams",
                            decided.len(),
                            ids.len()
                        ))
                        .into());
                    }
                    let mut parts = Vec::new();
                    for ((id, l), events) in ids.iter().zip(&loaded).zip(&decided) {
                        if !events.is_empty() {
                            parts.push(StreamAppend::new(
                                id.clone(),
                                ExpectedVersion::Exact(l.version),
                                to_new_events(events, metadata)?,
                            ));
                        }
                    }
                    DecidedAcross {
                        loaded,
                        decided,
                        parts,
                    }
                }
            };
            if parts.is_empty() {
                return Ok(MultiOutcome {
                    versions: loaded.iter().map(|l| l.version).collect(),
                    events_written: vec![0; ids.len()],
                    attempts: attempt,
                    conflicts,
                    appends: Vec::new(),
                    backoff: waited,
                });
            }
            match self.store.append_streams(&parts).await {
                Ok(appends) => {
                    let mut results = appends.iter();
                    let mut versions = Vec::with_capacity(ids.len());
                    for ((id, l), events) in ids.iter().zip(loaded).zip(&decided) {
                        if events.is_empty() {
                            versions.push(l.version);
                            continue;
                        }
                        let version = results.next().map_or(l.version, |r| r.last_version);
                        if let Some(cache) = &self.cache {
                            cache.take(id);
                        }
                        self.after_append(id, l, events, version).await;
                        versions.push(version);
                    }
                    return Ok(MultiOutcome {
                        versions,
                        events_written: decided.iter().map(Vec::len).collect(),
                        attempts: attempt,
                        conflicts,
                        appends,
                        backoff: waited,
                    });
                }
                Err(e) if e.is_conflict() && !retry_safe => {
                    tracing::debug!(attempt, error = %e, "conflict across streams on a command that is not retry-safe; not deciding it again");
                    return Err(RepositoryError::Conflict(e));
                }
                Err(e) if e.is_retryable() && attempt < max => {
                    if e.is_conflict() {
                        conflicts += 1;
                        tracing::debug!(attempt, error = %e, "conflict across streams; reloading and retrying");
                    } else if !retry_safe || matches!(e, StoreError::Backend { .. }) {
                        // Outcome unknown (or a refusal that leaves a once-only decision
                        // valid): re-send the identical append (idempotent).
                        pending = Some(DecidedAcross {
                            loaded,
                            decided,
                            parts,
                        });
                    }
                }
                Err(e) if e.is_retryable() => {
                    if e.is_conflict() {
                        conflicts += 1;
                    }
                    return Err(RepositoryError::RetriesExhausted {
                        attempts: attempt,
                        conflicts,
                        waited,
                        last: e,
                    });
                }
                Err(e) => return Err(RepositoryError::Store(e)),
            }
        }
    }

    /// Waits before attempt `attempt` (from 2) as the retry policy says, with jitter;
    /// returns how long it waited.
    async fn back_off(&self, attempt: u32) -> Duration {
        let delay = self
            .retry
            .delay_before(attempt, (self.jitter)())
            .unwrap_or_default();
        if !delay.is_zero() {
            self.sleep.sleep(delay).await;
        }
        delay
    }

    /// Keeps `loaded` in the cache, if there is one.
    fn remember(&self, id: &StreamId, loaded: Loaded<A>) {
        if let Some(cache) = &self.cache {
            cache.put(id, loaded);
        }
    }

    /// After a successful append at `version`: writes a snapshot when the policy asks for
    /// one, and caches the new state when there is a cache. Returns whether a snapshot was
    /// taken (or, in the background, started).
    async fn after_append(
        &self,
        id: &StreamId,
        loaded: Loaded<A>,
        events: &[A::Event],
        version: Version,
    ) -> bool {
        let snapshot_due = self
            .snapshots
            .as_ref()
            .is_some_and(|h| h.policy.should_snapshot(loaded.snapshot_version, version));
        if !snapshot_due && self.cache.is_none() {
            return false;
        }
        let mut state = loaded.state;
        for e in events {
            state.apply(e);
        }
        let snapshot_taken = snapshot_due && self.write_snapshot(id, &state, version).await;
        self.remember(
            id,
            Loaded {
                state,
                version,
                snapshot_version: if snapshot_taken {
                    version
                } else {
                    loaded.snapshot_version
                },
                events_replayed: 0,
            },
        );
        snapshot_taken
    }

    /// Writes a snapshot of `state` at `version`. A failure is logged, never returned:
    /// snapshots are a cache, and the command already succeeded.
    async fn write_snapshot(&self, id: &StreamId, state: &A, version: Version) -> bool {
        let Some(h) = &self.snapshots else {
            return false;
        };
        match (h.save)(&self.store, id.clone(), state, version) {
            Ok(write) => match &h.background {
                Some(spawn) => {
                    let id = id.clone();
                    spawn.spawn(Box::pin(async move {
                        if let Err(e) = write.await {
                            warn_snapshot_failed(&id, version, &e);
                        }
                    }));
                    true
                }
                None => match write.await {
                    Ok(()) => true,
                    Err(e) => {
                        warn_snapshot_failed(id, version, &e);
                        false
                    }
                },
            },
            Err(e) => {
                tracing::warn!(stream = %id, %version, error = %e, "snapshot not taken: the state does not serialize");
                false
            }
        }
    }
}

fn to_new_events<E: DomainEvent>(
    events: &[E],
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, StoreError> {
    events
        .iter()
        .map(|e| {
            // Checked: an event whose payload would not read back under its type is refused
            // here, before anything is written.
            let encoded = e
                .encode()
                .map_err(|err| StoreError::InvalidRequest(err.to_string()))?;
            // Time-ordered (v7): consecutive appends land on the same few pages of the
            // event-id index instead of a random one each (docs/benchmarks.md).
            Ok(NewEvent::new(
                EventId::new(Uuid::now_v7())?,
                EventType::new(encoded.event_type)?,
                encoded.schema_version,
                encoded.payload,
                metadata.clone(),
            )?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chronik_core::{FeedCursor, decode_event, encode_event};
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use super::*;
    use crate::port::MockEventStore;

    #[derive(Debug, Default, PartialEq)]
    struct Counter(u64);

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum CounterEvent {
        Incremented,
    }

    impl DomainEvent for CounterEvent {
        fn event_type(&self) -> &'static str {
            "Incremented"
        }
        fn to_payload(&self) -> Result<Value, serde_json::Error> {
            encode_event(self)
        }
        fn from_payload(t: &str, p: Value) -> Result<Self, serde_json::Error> {
            decode_event(t, p)
        }
    }

    #[derive(Debug, Error, PartialEq)]
    #[error("limit reached")]
    struct Limit;

    impl Aggregate for Counter {
        const TYPE: &'static str = "counter";
        type Command = u64;
        type Event = CounterEvent;
        type Error = Limit;
        fn handle(&self, limit: &u64) -> Result<Vec<CounterEvent>, Limit> {
            if self.0 >= *limit {
                Err(Limit)
            } else {
                Ok(vec![CounterEvent::Incremented])
            }
        }
        fn apply(&mut self, _: &CounterEvent) {
            self.0 += 1;
        }
        fn retry_safe(limit: &u64) -> bool {
            *limit != ONCE
        }
    }

    /// The limit of the one command that is not retry-safe.
    const ONCE: u64 = 77;

    fn id() -> StreamId {
        StreamId::new("counter-1").unwrap()
    }

    fn empty_stream(mock: &mut MockEventStore) {
        mock.expect_session()
            .returning(|| Box::pin(async { Ok(None) }));
        mock.expect_read_payloads()
            .returning(|_, _| Box::pin(futures::stream::empty()));
    }

    fn policy(n: u32) -> RetryPolicy {
        RetryPolicy::new(n, Duration::ZERO, Duration::ZERO).unwrap()
    }

    #[tokio::test]
    async fn conflicts_are_retried_until_the_policy_gives_up() {
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append().times(3).returning(|s, expected, _| {
            let err = StoreError::Conflict {
                stream: s.clone(),
                expected,
                actual: Version::FIRST,
            };
            Box::pin(async move { Err(err) })
        });
        let repo = Repository::<Counter, _>::new(mock)
            .with_retry(policy(3))
            .with_sleep(|_| async {});
        match repo.execute(&id(), 10).await {
            Err(RepositoryError::RetriesExhausted {
                attempts: 3,
                conflicts: 3,
                last,
                ..
            }) => {
                assert!(last.is_conflict());
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn domain_refusals_are_not_retried_and_write_nothing() {
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append().never();
        let repo = Repository::<Counter, _>::new(mock);
        assert!(matches!(
            repo.execute(&id(), 0).await,
            Err(RepositoryError::Domain(Limit))
        ));
    }

    #[tokio::test]
    async fn non_retryable_store_errors_stop_at_once() {
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append()
            .times(1)
            .returning(|_, _, _| Box::pin(async { Err(StoreError::backend("disk full", false)) }));
        let repo = Repository::<Counter, _>::new(mock)
            .with_retry(policy(5))
            .with_sleep(|_| async {});
        assert!(matches!(
            repo.execute(&id(), 10).await,
            Err(RepositoryError::Store(StoreError::Backend { .. }))
        ));
    }

    #[tokio::test]
    async fn an_ambiguous_failure_resends_the_same_event_ids() {
        let seen: Arc<Mutex<Vec<Vec<EventId>>>> = Arc::default();
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        let log = seen.clone();
        mock.expect_append()
            .times(2)
            .returning(move |_, expected, events| {
                let mut log = log.lock().unwrap();
                log.push(events.iter().map(NewEvent::event_id).collect());
                let first = log.len() == 1;
                assert_eq!(
                    expected,
                    ExpectedVersion::Exact(Version::ZERO),
                    "same expected version on re-send"
                );
                Box::pin(async move {
                    if first {
                        Err(StoreError::backend("connection reset", true))
                    } else {
                        Ok(AppendResult {
                            first_version: Version::FIRST,
                            last_version: Version::FIRST,
                            cursor: FeedCursor::new(1, 1).expect("in range"),
                            already_appended: true,
                        })
                    }
                })
            });
        let repo = Repository::<Counter, _>::new(mock)
            .with_retry(policy(3))
            .with_sleep(|_| async {});
        let out = repo.execute(&id(), 10).await.unwrap();
        assert_eq!(
            (out.attempts, out.conflicts, out.version),
            (2, 0, Version::FIRST)
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], seen[1], "the re-send carries the identical ids");
    }

    #[tokio::test]
    async fn a_command_that_is_not_retry_safe_resends_its_one_decision_after_a_transaction_order_refusal()
     {
        type Sent = (ExpectedVersion, Vec<EventId>);
        let seen: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let mut mock = MockEventStore::new();
        mock.expect_session()
            .returning(|| Box::pin(async { Ok(None) }));
        mock.expect_read_payloads()
            .times(1)
            .returning(|_, _| Box::pin(futures::stream::empty()));
        let log = seen.clone();
        mock.expect_append()
            .times(2)
            .returning(move |s, expected, events| {
                let mut log = log.lock().unwrap();
                log.push((expected, events.iter().map(NewEvent::event_id).collect()));
                let first = log.len() == 1;
                let stream = s.clone();
                Box::pin(async move {
                    if first {
                        Err(StoreError::TransactionOrder { stream })
                    } else {
                        Ok(AppendResult {
                            first_version: Version::FIRST,
                            last_version: Version::FIRST,
                            cursor: FeedCursor::new(1, 1).expect("in range"),
                            already_appended: false,
                        })
                    }
                })
            });
        let repo = Repository::<Counter, _>::new(mock)
            .with_retry(policy(3))
            .with_sleep(|_| async {});
        let out = repo.execute(&id(), ONCE).await.unwrap();
        assert_eq!((out.attempts, out.conflicts), (2, 0));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], seen[1], "the same decision, not a new one");
    }

    #[tokio::test]
    async fn a_conflict_on_a_command_that_is_not_retry_safe_is_returned_at_once() {
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append().times(1).returning(|s, expected, _| {
            let err = StoreError::Conflict {
                stream: s.clone(),
                expected,
                actual: Version::FIRST,
            };
            Box::pin(async move { Err(err) })
        });
        let repo = Repository::<Counter, _>::new(mock)
            .with_retry(policy(5))
            .with_sleep(|_| async {});
        match repo.execute(&id(), ONCE).await {
            Err(e @ RepositoryError::Conflict(StoreError::Conflict { .. })) => {
                assert!(e.is_conflict());
            }
            other => panic!("expected the conflict, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn backoff_sleeps_between_attempts_with_the_given_jitter() {
        let slept: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append().times(3).returning(|s, expected, _| {
            let err = StoreError::Conflict {
                stream: s.clone(),
                expected,
                actual: Version::FIRST,
            };
            Box::pin(async move { Err(err) })
        });
        let log = slept.clone();
        let policy =
            RetryPolicy::new(3, Duration::from_millis(10), Duration::from_secs(1)).unwrap();
        let repo = Repository::<Counter, _>::new(mock)
            .with_retry(policy)
            .with_sleep(move |d| {
                log.lock().unwrap().push(d);
                async {}
            })
            .with_jitter(|| 1.0);
        let _ = repo.execute(&id(), 10).await;
        assert_eq!(
            *slept.lock().unwrap(),
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
    }

    /// A store that loses every append to another writer.
    fn always_conflicting() -> MockEventStore {
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append().returning(|s, expected, _| {
            let err = StoreError::Conflict {
                stream: s.clone(),
                expected,
                actual: Version::FIRST,
            };
            Box::pin(async move { Err(err) })
        });
        mock
    }

    #[tokio::test]
    async fn a_repository_built_the_default_way_backs_off_between_conflict_retries() {
        // Only the sleep is replaced, by a recorder: policy and jitter are the defaults.
        let slept: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let log = slept.clone();
        let repo = Repository::<Counter, _>::new(always_conflicting()).with_sleep(move |d| {
            log.lock().unwrap().push(d);
            async {}
        });
        let Err(RepositoryError::RetriesExhausted {
            attempts,
            conflicts,
            waited,
            last,
        }) = repo.execute(&id(), 10).await
        else {
            panic!("every attempt conflicts");
        };
        assert_eq!((attempts, conflicts), (5, 5));
        assert!(
            matches!(last, StoreError::Conflict { .. }),
            "the last conflict stays visible"
        );
        let slept = slept.lock().unwrap().clone();
        assert_eq!(slept.len(), 4, "one wait before each retry: {slept:?}");
        // The default schedule: d = 5 ms * 2^(k-1), capped at 500 ms; equal jitter keeps
        // each wait within [d/2, d].
        for (k, d) in slept.iter().enumerate() {
            let full = Duration::from_millis(5) * 2u32.pow(u32::try_from(k).unwrap());
            assert!(*d >= full / 2 && *d <= full, "wait {k}: {d:?} for {full:?}");
        }
        assert_eq!(waited, slept.iter().sum::<Duration>());
        assert!(waited >= Duration::from_micros(37_500), "never a hot loop");
    }

    #[test]
    fn the_default_sleep_really_waits() {
        // Polled once, a one-hour DefaultSleep is still pending: it is a timer, not a
        // no-op that would turn retries into a hot loop.
        let mut sleep = DefaultSleep.sleep(Duration::from_secs(3_600));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let mut done = DefaultSleep.sleep(Duration::ZERO);
        futures::executor::block_on(&mut done);
    }

    #[tokio::test]
    async fn the_default_sleep_backs_off_for_real_and_reports_it() {
        let repo = Repository::<Counter, _>::new(always_conflicting())
            .with_retry(
                RetryPolicy::new(2, Duration::from_millis(2), Duration::from_millis(2)).unwrap(),
            )
            .with_jitter(|| 1.0);
        match repo.execute(&id(), 10).await {
            Err(RepositoryError::RetriesExhausted { waited, .. }) => {
                assert_eq!(waited, Duration::from_millis(2));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    /// A hand-written event whose declared type is not its serde tag.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Drifted {
        Increment,
    }

    impl DomainEvent for Drifted {
        fn event_type(&self) -> &'static str {
            "Incremented"
        }
        fn to_payload(&self) -> Result<Value, serde_json::Error> {
            encode_event(self)
        }
        fn from_payload(t: &str, p: Value) -> Result<Self, serde_json::Error> {
            decode_event(t, p)
        }
    }

    #[derive(Debug, Default)]
    struct DriftedCounter;

    impl Aggregate for DriftedCounter {
        const TYPE: &'static str = "drifted";
        type Command = ();
        type Event = Drifted;
        type Error = Limit;
        fn handle(&self, (): &()) -> Result<Vec<Drifted>, Limit> {
            Ok(vec![Drifted::Increment])
        }
        fn apply(&mut self, _: &Drifted) {}
    }

    #[tokio::test]
    async fn an_event_whose_type_drifts_from_serde_is_refused_before_anything_is_written() {
        let mut mock = MockEventStore::new();
        empty_stream(&mut mock);
        mock.expect_append().never();
        let repo = Repository::<DriftedCounter, _>::new(mock);
        match repo
            .execute(&DriftedCounter::stream_id(1).unwrap(), ())
            .await
        {
            Err(RepositoryError::Store(StoreError::InvalidRequest(m))) => {
                assert!(m.contains("event type mismatch"), "{m}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
