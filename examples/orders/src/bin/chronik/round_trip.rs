//! A store decorator that makes the race between a command's read and its write real.

use chronik::{
    AppendResult, Checkpoint, CheckpointStore, EventStore, EventStream, FeedFilter, FeedHead,
    FeedPage, Snapshot, SnapshotStore, StoreError,
};
use chronik::{ExpectedVersion, FeedCursor, NewEvent, StreamId, Version};
use serde_json::Value;

/// Yields to the scheduler once before every append, as a network round trip would.
///
/// The in-memory store answers without ever suspending, so on its own a command's
/// load-decide-append runs without interruption and concurrent commands on one stream
/// never overlap. With this decorator every task that loaded a stream gets to load it
/// before the first of them appends, which is what happens against a real database: the
/// losers see a genuine `StoreError::Conflict` from the store and the repository retries
/// them. Nothing else changes: every call is forwarded unchanged.
#[derive(Debug, Clone)]
pub(crate) struct RoundTrip<S>(pub(crate) S);

impl<S: EventStore> EventStore for RoundTrip<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        tokio::task::yield_now().await;
        self.0.append(stream, expected, events).await
    }

    async fn append_streams(
        &self,
        appends: &[chronik::StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        tokio::task::yield_now().await;
        self.0.append_streams(appends).await
    }

    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
        self.0.read_stream(stream, from)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.0.stream_version(stream).await
    }

    async fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        self.0.read_feed(after, filter, limit).await
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        self.0.feed_head().await
    }

    async fn count_after(&self, after: FeedCursor) -> Result<u64, StoreError> {
        self.0.count_after(after).await
    }
}

impl<S: SnapshotStore> SnapshotStore for RoundTrip<S> {
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        state_schema_version: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.0.load_snapshot(stream, state_schema_version).await
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        version: Version,
        state_schema_version: u32,
        state: &Value,
    ) -> Result<(), StoreError> {
        self.0
            .save_snapshot(stream, version, state_schema_version, state)
            .await
    }

    async fn list_snapshots(&self, stream: &StreamId) -> Result<Vec<Snapshot>, StoreError> {
        self.0.list_snapshots(stream).await
    }

    async fn delete_snapshots(&self, category: &str) -> Result<u64, StoreError> {
        self.0.delete_snapshots(category).await
    }
}

impl<S: CheckpointStore> CheckpointStore for RoundTrip<S> {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.0.load_checkpoint(name).await
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        cursor: FeedCursor,
        events_processed: u64,
    ) -> Result<(), StoreError> {
        self.0.save_checkpoint(name, cursor, events_processed).await
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<bool, StoreError> {
        self.0.delete_checkpoint(name).await
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.0.list_checkpoints().await
    }
}
