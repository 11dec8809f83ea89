//! The ports are implemented for `&S` and `Arc<S>` whenever `S` implements them, so a
//! repository, a runner or a test can borrow or share one store.

use std::future::Future;
use std::sync::Arc;

use chronik_core::{ExpectedVersion, FeedCursor, NewEvent, StreamId, Version};
use serde_json::Value;

use crate::error::StoreError;
use crate::port::{
    AppendResult, Checkpoint, CheckpointStore, EventStore, EventStream, FeedFilter, FeedHead,
    FeedPage, PayloadStream, SessionFuture, Snapshot, SnapshotStore, StreamAppend,
};

macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<S: EventStore + ?Sized> EventStore for $ptr {
            fn append(&self, stream: &StreamId, expected: ExpectedVersion, events: &[NewEvent]) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
                (**self).append(stream, expected, events)
            }
            fn append_streams(&self, appends: &[StreamAppend]) -> impl Future<Output = Result<Vec<AppendResult>, StoreError>> + Send {
                (**self).append_streams(appends)
            }
            fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
                (**self).read_stream(stream, from)
            }
            fn read_payloads(&self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
                (**self).read_payloads(stream, from)
            }
            fn session(&self) -> SessionFuture<'_> {
                (**self).session()
            }
            fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<Version, StoreError>> + Send {
                (**self).stream_version(stream)
            }
            fn read_feed(&self, after: FeedCursor, filter: &FeedFilter, limit: usize) -> impl Future<Output = Result<FeedPage, StoreError>> + Send {
                (**self).read_feed(after, filter, limit)
            }
            fn feed_head(&self) -> impl Future<Output = Result<FeedHead, StoreError>> + Send {
                (**self).feed_head()
            }
            fn feed_last(&self) -> impl Future<Output = Result<Option<FeedCursor>, StoreError>> + Send {
                (**self).feed_last()
            }
            fn count_after(&self, after: FeedCursor) -> impl Future<Output = Result<u64, StoreError>> + Send {
                (**self).count_after(after)
            }
        }

        impl<S: SnapshotStore + ?Sized> SnapshotStore for $ptr {
            fn load_snapshot(&self, stream: &StreamId, state_schema_version: u32) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
                (**self).load_snapshot(stream, state_schema_version)
            }
            fn save_snapshot(&self, stream: &StreamId, version: Version, state_schema_version: u32, state: &Value) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).save_snapshot(stream, version, state_schema_version, state)
            }
            fn list_snapshots(&self, stream: &StreamId) -> impl Future<Output = Result<Vec<Snapshot>, StoreError>> + Send {
                (**self).list_snapshots(stream)
            }
            fn delete_snapshots(&self, category: &str) -> impl Future<Output = Result<u64, StoreError>> + Send {
                (**self).delete_snapshots(category)
            }
        }

        impl<S: CheckpointStore + ?Sized> CheckpointStore for $ptr {
            fn load_checkpoint(&self, name: &str) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send {
                (**self).load_checkpoint(name)
            }
            fn save_checkpoint(&self, name: &str, cursor: FeedCursor, events_processed: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).save_checkpoint(name, cursor, events_processed)
            }
            fn delete_checkpoint(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).delete_checkpoint(name)
            }
            fn list_checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send {
                (**self).list_checkpoints()
            }
        }
    )*};
}

forward!(&S, Arc<S>);
