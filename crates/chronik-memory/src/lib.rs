//! In-memory adapter for chronik: the reference model.
//!
//! [`MemoryStore`] implements every port ([`EventStore`], [`SnapshotStore`],
//! [`CheckpointStore`]) with the same semantics as the PostgreSQL adapter, checked by the
//! same conformance suite. Use it to unit-test services without a database.
//!
//! **Invariant:** every append is atomic under one lock, so the feed order (commit order)
//! always agrees with stream order and there is never an in-flight transaction to wait for.
//!
//! [`EventStore`]: chronik_store::EventStore
//! [`SnapshotStore`]: chronik_store::SnapshotStore
//! [`CheckpointStore`]: chronik_store::CheckpointStore

mod store;

pub use store::MemoryStore;
