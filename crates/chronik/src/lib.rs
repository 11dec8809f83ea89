//! chronik: event sourcing for Rust services, with PostgreSQL as the production store.
//!
//! This is the one crate a service depends on. It re-exports what a service needs from
//! chronik's library crates:
//!
//! - the domain: [`Aggregate`] (decide with `handle`, evolve with `apply`), [`DomainEvent`]
//!   (derive it on a serde enum tagged `#[serde(tag = "type", content = "data")]`: the
//!   stored type is always serde's variant name), ids, versions, [`Metadata`], upcasting
//!   ([`UpcasterRegistry`]) and snapshots ([`SnapshotState`], [`SnapshotPolicy`]);
//! - the [`Repository`]: `execute(&id, command)` loads, decides and appends with
//!   optimistic concurrency, retrying a conflict with exponential backoff and jitter
//!   ([`RetryPolicy`], on [`DefaultSleep`] under any runtime) and giving up with
//!   [`RepositoryError::RetriesExhausted`], which keeps the last conflict; a command that
//!   is not retry-safe ([`Aggregate::retry_safe`]) gets its conflict back instead
//!   ([`RepositoryError::Conflict`]);
//! - the stores: [`MemoryStore`] (feature `memory`) and [`PgEventStore`] (feature
//!   `postgres`);
//! - projections (feature `projections`): [`ProjectionRunner`] for any store, typed with
//!   [`TypedProjection`]; exactly-once PostgreSQL read models in [`postgres`]
//!   ([`postgres::PgTypedProjection`]);
//! - the relay of the feed to NATS JetStream (feature `relay`): `relay::NatsRelay`;
//! - the operator tool (feature `cli`): `cli::Operator`, a service's own operator binary in
//!   a few lines;
//! - test support (feature `testkit`): the `testkit` module.
//!
//! Features `memory`, `postgres` and `projections` are on by default.
//!
//! # PostgreSQL
//!
//! ```no_run
//! # async fn connect(url: &str) -> Result<(), chronik::StoreError> {
//! use chronik::{PgEventStore, PgStoreConfig};
//!
//! // A pool of 20 connections (default 10): size it to the number of commands your
//! // service runs at once, plus one per projection runner.
//! let config = PgStoreConfig::default().with_max_connections(20);
//! let store = PgEventStore::connect_with(url, config).await?;
//! // Creates or upgrades the store's tables; idempotent and safe to run concurrently.
//! store.migrate().await?;
//! # Ok(()) }
//! ```
//!
//! `docs/adopting.md` in the repository walks from `cargo add` to a running projection
//! and an operator binary.

// So that `::chronik::...`, which `#[derive(DomainEvent)]` emits, resolves here too.
extern crate self as chronik;

pub use chronik_core::{
    Aggregate, CausationId, CorrelationId, DomainEvent, Either, EncodeError, EncodedEvent, EventId,
    EventType, EventTypeInfo, ExpectedVersion, FeedCursor, InvalidInput, JitterSource,
    MAX_APPEND_EVENTS, MAX_EVENT_TYPE_LEN, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH,
    MAX_STREAM_ID_LEN, Metadata, NewEvent, OneOf, OneOfError, RecordedEvent, RetryPolicy,
    SnapshotPolicy, SnapshotState, StreamId, UpcastError, Upcaster, UpcasterRegistry,
    UpcasterRegistryBuilder, Version, decode_event, decode_event_json, encode_event, encode_tagged,
    json_error_without_values,
};
pub use chronik_store::{
    AppendResult, Checkpoint, CheckpointStore, DefaultSleep, EventStore, EventStream,
    ExecuteOutcome, FeedFilter, FeedHead, FeedPage, Loaded, MAX_APPEND_STREAMS, MAX_FEED_PAGE,
    MultiOutcome, Payload, PayloadStream, ReactOutcome, Repository, RepositoryError, Sleep,
    Snapshot, SnapshotStore, Spawn, StoreError, StreamAppend, StreamConflict, StreamEvent,
    Upcasting, reaction_event_id, upcast_recorded, upcast_stream_event, validate_appends,
};
/// Event and correlation ids are UUIDs. Prefer time-ordered ones for events,
/// `EventId::new(Uuid::now_v7())` (what `Repository` generates): they keep the event-id
/// index's inserts on its newest pages. Any non-nil UUID is accepted.
pub use uuid::Uuid;

#[cfg(feature = "memory")]
pub use chronik_memory::MemoryStore;

#[cfg(feature = "postgres")]
pub use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};

#[cfg(feature = "projections")]
pub use chronik_projections::{
    HandlerError, Projection, ProjectionRunner, RunnerBuilder, RunnerHandle, Typed, TypedProjection,
};

/// The PostgreSQL store in full: exactly-once projections ([`postgres::PgProjectionRunner`],
/// [`postgres::PgTypedProjection`]), rebuilds, horizon diagnostics, roles, and [`sqlx`]
/// (the version chronik uses) for a read model's own SQL.
///
/// [`sqlx`]: postgres::sqlx
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use chronik_postgres::*;
    pub use sqlx;
}

/// The projection runner for any store in full: options, status and lag, parking,
/// rebuilds and `follow`.
#[cfg(feature = "projections")]
pub mod projections {
    pub use chronik_projections::*;
}

/// The relay of the feed to NATS JetStream (feature `relay`, on with `cli`):
/// [`relay::NatsRelay`], a projection that publishes every event to
/// `<prefix>.<category>.<stream id>` with its id as `Nats-Msg-Id`, and
/// [`relay::async_nats`], the client it uses, for the services that consume the stream.
#[cfg(feature = "relay")]
pub mod relay {
    pub use chronik_relay::*;
}

/// The operator tool for a service (feature `cli`): [`cli::Operator`] registers the
/// service's upcasters, projections and snapshotted aggregates and runs every operator
/// command for them (`migrate`, `tail`, `streams list | show`, `projections status |
/// rebuild`, `snapshots`, `doctor`, `append`, `roles grant`).
#[cfg(feature = "cli")]
pub mod cli {
    pub use chronik_cli::*;
}

/// Test support: given/when/then for aggregates, the adapter conformance suite, proptest
/// strategies.
#[cfg(feature = "testkit")]
pub mod testkit {
    pub use chronik_testkit::*;
}

/// What `#[derive(DomainEvent)]` expands to needs; not part of the API.
#[doc(hidden)]
pub use chronik_core::__private;

/// The README's example, compiled and run by `cargo test` as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
