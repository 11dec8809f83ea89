use std::sync::Arc;

use chronik_core::{
    EventType, ExpectedVersion, FeedCursor, NewEvent, RecordedEvent, StreamId, UpcasterRegistry,
    Version,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::StoreError;
use crate::port::{
    AppendResult, BoxSession, Checkpoint, CheckpointStore, EventStore, EventStream, FeedFilter,
    FeedHead, FeedPage, Payload, PayloadStream, SessionFuture, Snapshot, SnapshotStore,
    StoreSession, StreamAppend, StreamEvent,
};

/// Lifts one stored event to the current schema through `registry`.
///
/// # Errors
/// [`StoreError::Decode`] naming the stream, version, event id and cursor when the stored version
/// is newer than the code knows or a step rejects the payload.
pub fn upcast_recorded(
    registry: &UpcasterRegistry,
    mut event: RecordedEvent,
) -> Result<RecordedEvent, StoreError> {
    if !registry.needs_upcast(event.event_type.as_str(), event.schema_version) {
        return Ok(event);
    }
    let decode = |reason: String, e: &RecordedEvent| StoreError::Decode {
        stream: e.stream_id.clone(),
        version: e.version,
        event_id: e.event_id,
        cursor: Some(e.cursor),
        reason,
    };
    let payload = std::mem::take(&mut event.payload);
    let (event_type, schema_version, payload) = registry
        .upcast(event.event_type.as_str(), event.schema_version, payload)
        .map_err(|e| decode(e.to_string(), &event))?;
    event.event_type = EventType::new(event_type).map_err(|e| decode(e.to_string(), &event))?;
    event.schema_version = schema_version;
    event.payload = payload;
    Ok(event)
}

/// Lifts one event read for folding to the current schema through `registry`; events that
/// need no step keep their payload as it came (JSON text stays text).
///
/// # Errors
/// As [`upcast_recorded`].
pub fn upcast_stream_event(
    registry: &UpcasterRegistry,
    stream: &StreamId,
    mut event: StreamEvent,
) -> Result<StreamEvent, StoreError> {
    if !registry.needs_upcast(event.event_type.as_str(), event.schema_version) {
        return Ok(event);
    }
    // A payload-only read has no feed cursor.
    let decode = |reason: String, e: &StreamEvent| StoreError::Decode {
        stream: stream.clone(),
        version: e.version,
        event_id: e.event_id,
        cursor: None,
        reason,
    };
    let payload = match std::mem::replace(&mut event.payload, Payload::Value(Value::Null)) {
        Payload::Value(v) => v,
        Payload::Json(text) => serde_json::from_str(&text).map_err(|e| {
            let reason = format!(
                "payload is not json: {}",
                chronik_core::json_error_without_values(&e)
            );
            decode(reason, &event)
        })?,
    };
    let (event_type, schema_version, payload) = registry
        .upcast(event.event_type.as_str(), event.schema_version, payload)
        .map_err(|e| decode(e.to_string(), &event))?;
    event.event_type = EventType::new(event_type).map_err(|e| decode(e.to_string(), &event))?;
    event.schema_version = schema_version;
    event.payload = Payload::Value(payload);
    Ok(event)
}

/// Decorates any [`EventStore`] so that every read (stream and feed) is upcast.
///
/// Feed filters on event type match the *stored* names; register renames accordingly.
#[derive(Debug, Clone)]
pub struct Upcasting<S> {
    inner: S,
    registry: Arc<UpcasterRegistry>,
}

impl<S> Upcasting<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, registry: Arc<UpcasterRegistry>) -> Self {
        Self { inner, registry }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<UpcasterRegistry> {
        &self.registry
    }
}

impl<S: EventStore> EventStore for Upcasting<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    async fn append_streams(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.inner.append_streams(appends).await
    }

    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
        let registry = &self.registry;
        self.inner
            .read_stream(stream, from)
            .map(move |r| r.and_then(|e| upcast_recorded(registry, e)))
            .boxed()
    }

    fn read_payloads(&self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        let (registry, id) = (&self.registry, stream.clone());
        self.inner
            .read_payloads(stream, from)
            .map(move |r| r.and_then(|e| upcast_stream_event(registry, &id, e)))
            .boxed()
    }

    fn session(&self) -> SessionFuture<'_> {
        Box::pin(async move {
            Ok(self.inner.session().await?.map(|inner| {
                Box::new(UpcastingSession {
                    inner,
                    registry: self.registry.clone(),
                }) as BoxSession
            }))
        })
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let page = self.inner.read_feed(after, filter, limit).await?;
        let events = page
            .events
            .into_iter()
            .map(|e| upcast_recorded(&self.registry, e))
            .collect::<Result<_, _>>()?;
        Ok(FeedPage {
            events,
            next: page.next,
        })
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        self.inner.feed_head().await
    }

    async fn feed_last(&self) -> Result<Option<FeedCursor>, StoreError> {
        self.inner.feed_last().await
    }

    async fn count_after(&self, after: FeedCursor) -> Result<u64, StoreError> {
        self.inner.count_after(after).await
    }
}

/// The inner store's session, its reads upcast like [`Upcasting`]'s.
struct UpcastingSession {
    inner: BoxSession,
    registry: Arc<UpcasterRegistry>,
}

impl StoreSession for UpcastingSession {
    fn read_payloads(&mut self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        let (registry, id) = (&*self.registry, stream.clone());
        self.inner
            .read_payloads(stream, from)
            .map(move |r| r.and_then(|e| upcast_stream_event(registry, &id, e)))
            .boxed()
    }

    fn append<'s>(
        &'s mut self,
        stream: &'s StreamId,
        expected: ExpectedVersion,
        events: &'s [NewEvent],
    ) -> BoxFuture<'s, Result<AppendResult, StoreError>> {
        self.inner.append(stream, expected, events)
    }
}

/// Snapshots hold aggregate state, not events: they pass through unchanged.
impl<S: SnapshotStore> SnapshotStore for Upcasting<S> {
    fn load_snapshot(
        &self,
        stream: &StreamId,
        state_schema_version: u32,
    ) -> impl std::future::Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.inner.load_snapshot(stream, state_schema_version)
    }

    fn save_snapshot(
        &self,
        stream: &StreamId,
        version: Version,
        state_schema_version: u32,
        state: &serde_json::Value,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.inner
            .save_snapshot(stream, version, state_schema_version, state)
    }

    fn list_snapshots(
        &self,
        stream: &StreamId,
    ) -> impl std::future::Future<Output = Result<Vec<Snapshot>, StoreError>> + Send {
        self.inner.list_snapshots(stream)
    }

    fn delete_snapshots(
        &self,
        category: &str,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        self.inner.delete_snapshots(category)
    }
}

/// Checkpoints are feed positions: they pass through unchanged.
impl<S: CheckpointStore> CheckpointStore for Upcasting<S> {
    fn load_checkpoint(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<Checkpoint>, StoreError>> + Send {
        self.inner.load_checkpoint(name)
    }

    fn save_checkpoint(
        &self,
        name: &str,
        cursor: FeedCursor,
        events_processed: u64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.inner.save_checkpoint(name, cursor, events_processed)
    }

    fn delete_checkpoint(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send {
        self.inner.delete_checkpoint(name)
    }

    fn list_checkpoints(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send {
        self.inner.list_checkpoints()
    }
}
