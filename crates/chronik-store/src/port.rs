use std::future::Future;

use std::collections::HashSet;

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, InvalidInput, MAX_APPEND_EVENTS, NewEvent,
    RecordedEvent, StreamId, Version, validate_batch,
};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;

/// A stream of recorded events read lazily from a store.
pub type EventStream<'a> = BoxStream<'a, Result<RecordedEvent, StoreError>>;

/// A stream read for folding (see [`EventStore::read_payloads`]).
pub type PayloadStream<'a> = BoxStream<'a, Result<StreamEvent, StoreError>>;

/// A stored event's payload as a store hands it to a fold.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The JSON text as stored, decoded straight into the typed event
    /// ([`chronik_core::DomainEvent::from_json`]).
    Json(String),
    /// A parsed value ([`chronik_core::DomainEvent::from_payload`]), e.g. after upcasting.
    Value(Value),
}

/// One event of a stream with only what folding it needs: its place, its type and its
/// payload. Read by [`EventStore::read_payloads`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// Its version in the stream.
    pub version: Version,
    /// Its id (named in decode errors).
    pub event_id: EventId,
    /// Stored (or upcast) type name.
    pub event_type: EventType,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// The payload.
    pub payload: Payload,
}

impl From<RecordedEvent> for StreamEvent {
    fn from(e: RecordedEvent) -> Self {
        Self {
            version: e.version,
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: Payload::Value(e.payload),
        }
    }
}

/// A boxed [`StoreSession`] (see [`EventStore::session`]). It owns what it needs (a
/// connection, a handle on the store), so it borrows nothing.
pub type BoxSession = Box<dyn StoreSession>;

/// What [`EventStore::session`] returns.
pub type SessionFuture<'a> = BoxFuture<'a, Result<Option<BoxSession>, StoreError>>;

/// One backend session of an [`EventStore`]: what [`crate::Repository::execute`] reads and
/// appends for one attempt of a command, on one connection (see [`EventStore::session`]).
///
/// Contract: each method behaves exactly as the store's method of the same name (the same
/// results and errors, each operation its own transaction): a session only saves acquiring
/// and releasing a connection per operation. A stream it returns borrows the session, so
/// the session's next operation starts after the stream is dropped. Drop a session as soon
/// as its attempt is done: it holds its connection until then.
pub trait StoreSession: Send {
    /// As [`EventStore::read_payloads`].
    fn read_payloads(&mut self, stream: &StreamId, from: Version) -> PayloadStream<'_>;

    /// As [`EventStore::append`].
    fn append<'a>(
        &'a mut self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>>;
}

/// Largest feed page an adapter serves.
pub const MAX_FEED_PAGE: usize = 10_000;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Version of the first event of this append.
    pub first_version: Version,
    /// Version of the last event: the stream's version after the append.
    pub last_version: Version,
    /// Feed position of the last event.
    pub cursor: FeedCursor,
    /// `true` when these exact events were already stored at this place by an earlier
    /// attempt (idempotent retry); nothing was written this time.
    pub already_appended: bool,
}

/// Most streams one [`EventStore::append_streams`] may change.
pub const MAX_APPEND_STREAMS: usize = 100;

/// One stream's part of a multi-stream append ([`EventStore::append_streams`]): the events
/// to append to `stream` if it is at `expected`, exactly as one [`EventStore::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamId,
    /// The version the writer expects the stream to be at.
    pub expected: ExpectedVersion,
    /// The events, in order (at least one).
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// `events` for `stream`, expected at `expected`.
    #[must_use]
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }
}

/// Checks a multi-stream append before any I/O, as every adapter must: 1 to
/// [`MAX_APPEND_STREAMS`] streams, no stream twice, each part a valid batch
/// ([`validate_batch`]), at most [`chronik_core::MAX_APPEND_EVENTS`] events in all, and no
/// event id twice anywhere in the append.
///
/// # Errors
/// [`StoreError::InvalidRequest`] for the shape of the append (no stream, too many, a
/// stream twice, too many events in all), [`StoreError::Invalid`] for a part's events.
pub fn validate_appends(appends: &[StreamAppend]) -> Result<(), StoreError> {
    if appends.is_empty() {
        return Err(StoreError::InvalidRequest(
            "a multi-stream append needs at least one stream".to_owned(),
        ));
    }
    if appends.len() > MAX_APPEND_STREAMS {
        return Err(StoreError::InvalidRequest(format!(
            "a multi-stream append may change at most {MAX_APPEND_STREAMS} streams, got {}",
            appends.len()
        )));
    }
    let mut streams = HashSet::with_capacity(appends.len());
    let mut ids = HashSet::new();
    let mut total = 0_usize;
    for part in appends {
        if !streams.insert(&part.stream) {
            return Err(StoreError::InvalidRequest(format!(
                "stream {} appears twice in one multi-stream append: put all its events in one part",
                part.stream
            )));
        }
        validate_batch(&part.events)?;
        total += part.events.len();
        for e in &part.events {
            if !ids.insert(e.event_id()) {
                return Err(InvalidInput::DuplicateEventInBatch(e.event_id().as_uuid()).into());
            }
        }
    }
    if total > MAX_APPEND_EVENTS {
        return Err(StoreError::InvalidRequest(format!(
            "a multi-stream append may carry at most {MAX_APPEND_EVENTS} events in all, got {total}"
        )));
    }
    Ok(())
}

/// Which events of the feed to return. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedFilter {
    /// Only these event types (stored names).
    pub event_types: Vec<String>,
    /// Only streams of these categories (`order` for `order-...`).
    pub categories: Vec<String>,
}

impl FeedFilter {
    /// Everything.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether `event` passes.
    #[must_use]
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.event_types.is_empty()
            || self
                .event_types
                .iter()
                .any(|t| t == event.event_type.as_str()))
            && (self.categories.is_empty()
                || self
                    .categories
                    .iter()
                    .any(|c| c == event.stream_id.category()))
    }
}

/// One page of the global feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedPage {
    /// Events in feed order, all after the requested cursor.
    pub events: Vec<RecordedEvent>,
    /// Where to resume: after the last returned event, or the requested cursor if none.
    pub next: FeedCursor,
}

/// The visible end of the global feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHead {
    /// Cursor of the last event a reader can see now, if any.
    pub last: Option<FeedCursor>,
    /// How many events a reader can see now.
    pub visible_events: u64,
}

/// The append-only event store.
///
/// Contract (checked by `chronik-testkit`'s conformance suite for every adapter):
/// - `append` writes all events or none, numbered after the stream's current version,
///   only if `expected` matches; otherwise [`StoreError::Conflict`] and nothing is written.
/// - Appending the same event ids at the same place again returns success with
///   `already_appended: true` ("same place": the same stream, consecutive versions, and
///   where `expected` is `Exact(v)` / `NoStream` the first event at `v + 1` / `1`);
///   the same ids anywhere else is [`StoreError::DuplicateEventId`]. Idempotency is
///   checked before the expected version. At the same place, every event must also be
///   the same as the stored one (event type, schema version and payload; metadata is not
///   compared), or the append is [`StoreError::EventIdReused`] naming the first that
///   differs, and nothing is written.
/// - `append_streams` appends to several streams in one transaction: every part as one
///   `append` would (idempotency, expected version, feed order), and all parts or none.
/// - Input is validated before any I/O ([`StoreError::Invalid`]).
/// - `read_feed` returns events strictly after `after`, in feed order, never skipping an
///   event that commits later below a returned cursor, and never showing version `n + 1`
///   of a stream before version `n`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` if it is at `expected`.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;

    /// Appends to several streams at once, atomically: each [`StreamAppend`] is checked as
    /// [`EventStore::append`] checks one (idempotency first, then the expected version,
    /// then feed order), and either every part is written, in one transaction (so all of
    /// its events share one feed transaction and become visible together), or none is.
    ///
    /// Returns one [`AppendResult`] per part, in the order given. A part whose events are
    /// already stored at its place is `already_appended` (an idempotent retry of the same
    /// call after a lost acknowledgement succeeds once, every part `already_appended`);
    /// the other parts are then written as usual.
    ///
    /// Adapters take the streams' locks in one deterministic order (by stream id), so
    /// concurrent multi-stream appends naming the same streams in other orders cannot
    /// deadlock.
    ///
    /// # Errors
    /// Nothing is written on any error. Validation ([`validate_appends`]) comes first.
    /// When a part is refused for another reason than its version
    /// ([`StoreError::DuplicateEventId`], [`StoreError::EventIdReused`],
    /// [`StoreError::TransactionOrder`]), the first such part in the order given decides
    /// the error; otherwise, when parts conflict, [`StoreError::Conflicts`] names every
    /// conflicting stream with its actual version.
    fn append_streams(
        &self,
        appends: &[StreamAppend],
    ) -> impl Future<Output = Result<Vec<AppendResult>, StoreError>> + Send;

    /// Reads `stream` forward from version `from` (inclusive; `Version::ZERO` and
    /// `Version::FIRST` both mean "from the start"), lazily. A missing stream is empty.
    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_>;

    /// Reads `stream` like [`EventStore::read_stream`], with only what folding needs
    /// ([`StreamEvent`]): what [`crate::Repository::load`] reads. Same events, same order.
    ///
    /// The default maps `read_stream`. Adapters override it to read fewer columns and to
    /// hand over payloads as JSON text ([`Payload::Json`]), which typed events decode without
    /// an intermediate [`Value`]; decorators that change events (upcasting) override it too.
    fn read_payloads(&self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        Box::pin(futures::StreamExt::map(
            self.read_stream(stream, from),
            |r| r.map(StreamEvent::from),
        ))
    }

    /// A session for one command's read and append, or `None` (the default) when the
    /// adapter has nothing to save by holding a connection between them; callers then use
    /// the store's own methods. A session saves a command one connection acquire and release:
    /// for a pooled client, one round trip (sqlx pings every connection it gets back).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when no connection can be had (retryable).
    fn session(&self) -> SessionFuture<'_> {
        Box::pin(async { Ok(None) })
    }

    /// The stream's current version (`Version::ZERO` when it does not exist).
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Reads up to `limit` (1 to [`MAX_FEED_PAGE`]) feed events after `after`.
    fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> impl Future<Output = Result<FeedPage, StoreError>> + Send;

    /// The visible end of the feed.
    fn feed_head(&self) -> impl Future<Output = Result<FeedHead, StoreError>> + Send;

    /// The cursor of the last visible event: [`FeedHead::last`] without the count, which
    /// an adapter whose count is work (PostgreSQL counts the feed) skips. A runner that
    /// needs the head before every page asks this. The default asks
    /// [`EventStore::feed_head`].
    fn feed_last(&self) -> impl Future<Output = Result<Option<FeedCursor>, StoreError>> + Send {
        async move { Ok(self.feed_head().await?.last) }
    }

    /// How many visible feed events lie strictly after `after` (for lag).
    fn count_after(
        &self,
        after: FeedCursor,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A stored snapshot of an aggregate's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: StreamId,
    /// The stream version the state includes.
    pub version: Version,
    /// The state's own schema version.
    pub state_schema_version: u32,
    /// The serialized state.
    pub state: Value,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// Snapshots: a cache of aggregate state, never a source of truth.
///
/// Contract: one snapshot per stream. `save_snapshot` replaces the stored one when the new
/// one is at a higher version or under a different state schema version, and otherwise
/// keeps the newer one. `load_snapshot` returns it only when its schema version matches.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait SnapshotStore: Send + Sync {
    /// The stream's snapshot if it was taken under `state_schema_version`.
    fn load_snapshot(
        &self,
        stream: &StreamId,
        state_schema_version: u32,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Stores a snapshot (see the trait contract for replacement).
    fn save_snapshot(
        &self,
        stream: &StreamId,
        version: Version,
        state_schema_version: u32,
        state: &Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Snapshots of one stream, whatever their schema version.
    fn list_snapshots(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Vec<Snapshot>, StoreError>> + Send;

    /// Drops every snapshot of streams in `category`; returns how many.
    fn delete_snapshots(
        &self,
        category: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A projection's position in the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The projection's name.
    pub name: String,
    /// The last feed position it applied.
    pub cursor: FeedCursor,
    /// How many events it has applied in total.
    pub events_processed: u64,
    /// When it was last saved.
    pub updated_at: DateTime<Utc>,
}

/// Checks a projection name: 1 to 255 bytes, no whitespace or control characters.
///
/// # Errors
/// [`StoreError::InvalidRequest`].
pub fn validate_projection_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(StoreError::InvalidRequest(format!(
            "projection name must be 1-255 bytes without whitespace or control characters, got {:?}",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Projection checkpoints.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint of `name`, if any.
    fn load_checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;

    /// Stores the checkpoint of `name`.
    fn save_checkpoint(
        &self,
        name: &str,
        cursor: FeedCursor,
        events_processed: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the checkpoint of `name` (a rebuild starts from the beginning); returns
    /// whether there was one.
    fn delete_checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every checkpoint, by name.
    fn list_checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send;
}
