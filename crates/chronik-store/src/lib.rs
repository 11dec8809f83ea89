//! Store ports for chronik: [`EventStore`], [`SnapshotStore`], [`CheckpointStore`], the one
//! [`StoreError`] every adapter returns, and the [`Repository`] that loads, decides and saves
//! aggregates with optimistic concurrency and retry.
//!
//! **Invariant:** this crate names no database type and starts no runtime. Adapters
//! (`chronik-memory`, `chronik-postgres`) implement the ports; the [`Upcasting`] decorator
//! lifts old event schemas on every read path of any adapter.

mod cache;
mod error;
mod forward;
mod panic;
mod port;
mod repository;
mod upcasting;

pub use error::{StoreError, StreamConflict};
pub use panic::{catch_panic, panic_message};
pub use port::{
    AppendResult, BoxSession, Checkpoint, CheckpointStore, EventStore, EventStream, FeedFilter,
    FeedHead, FeedPage, MAX_APPEND_STREAMS, MAX_FEED_PAGE, Payload, PayloadStream, SessionFuture,
    Snapshot, SnapshotStore, StoreSession, StreamAppend, StreamEvent, validate_appends,
    validate_projection_name,
};
#[cfg(any(test, feature = "mocks"))]
pub use port::{MockCheckpointStore, MockEventStore, MockSnapshotStore};
pub use repository::{
    DefaultSleep, ExecuteOutcome, Loaded, MultiOutcome, ReactOutcome, Repository, RepositoryError,
    Sleep, Spawn, reaction_event_id,
};
pub use upcasting::{Upcasting, upcast_recorded, upcast_stream_event};
