//! PostgreSQL adapter for chronik: immutable events, race-free optimistic concurrency,
//! and a global feed that never skips an event.
//!
//! [`PgEventStore`] implements every port ([`EventStore`], [`SnapshotStore`],
//! [`CheckpointStore`]) with the semantics of the in-memory reference model, checked by
//! the same conformance suite.
//!
//! ```no_run
//! use chronik_core::{EventId, EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
//! use chronik_postgres::PgEventStore;
//! use chronik_store::{EventStore, StoreError};
//!
//! # async fn demo(id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! store.migrate().await?;
//! let stream = StreamId::new("account-42")?;
//! let opened = NewEvent::new(
//!     EventId::new(id)?,
//!     EventType::new("AccountOpened")?,
//!     1,
//!     serde_json::json!({ "total": 10 }),
//!     Metadata::default(),
//! )?;
//!
//! // Owned: one statement, one round trip, its own transaction.
//! store.append(&stream, ExpectedVersion::NoStream, &[opened.clone()]).await?;
//!
//! // Inside your transaction, with your other writes: append FIRST.
//! let mut tx = store.begin().await?;
//! match tx.append(&stream, ExpectedVersion::Any, &[opened]).await {
//!     // An idempotent retry: already there.
//!     Ok(r) => println!("already appended: {}", r.already_appended),
//!     // A refusal wrote nothing and leaves `tx` usable (go on, or roll back).
//!     Err(e @ StoreError::TransactionOrder { .. }) => {
//!         // retryable: roll back (drop `tx`) and run the whole unit of work again
//!         assert!(e.is_retryable());
//!         return Ok(());
//!     }
//!     // `TransactionAborted`: PostgreSQL aborted `tx`; `commit` would refuse it.
//!     Err(e) => return Err(e.into()),
//! }
//! // ... your other writes, through `&mut *tx` ...
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! **Invariants** (each has a test in `tests/`):
//! - the database refuses `UPDATE`, `DELETE` and `TRUNCATE` on `events` (trigger);
//! - an append is one statement (one round trip) calling `append_events`, which locks the
//!   stream's row, checks idempotency, then the expected version, then the order guard
//!   `streams.last_xid <= pg_current_xact_id()`, and reports each outcome as a typed value,
//!   never by raising (so a caller's transaction stays usable after a refusal, also one
//!   found by a race) and never by parsing an error message. An append expecting no
//!   stream or an exact version (a command's append) is first tried as one plain
//!   statement that writes only when all of those checks pass, and otherwise writes
//!   nothing and raises nothing (a batch of several events is tried so only when the
//!   append is its own transaction: an id stored elsewhere raises inside it and undoes
//!   it); the function then decides (`tests/fast_path.rs`; to
//!   existing streams only on sessions with `enable_seqscan = off`, as
//!   [`PgEventStore::connect_with`] opens them);
//! - an error that aborted a caller's transaction is [`StoreError::TransactionAborted`],
//!   and [`PgStoreTransaction::commit`] refuses such a transaction;
//! - the feed is read by `(transaction_id, global_position)` below
//!   `pg_snapshot_xmin(pg_current_snapshot())` (see `docs/ordering.md`), on the primary or
//!   on a hot standby ([`PgStandby`]) in one recovery snapshot, a prefix of the primary's;
//! - this crate never calls `pg_notify` in an append and never logs a connection string.
//!
//! [`EventStore`]: chronik_store::EventStore
//! [`StoreError::TransactionAborted`]: chronik_store::StoreError::TransactionAborted
//! [`SnapshotStore`]: chronik_store::SnapshotStore
//! [`CheckpointStore`]: chronik_store::CheckpointStore

mod checkpoint;
mod config;
mod error;
mod horizon;
mod inspect;
mod json;
mod lock_wait;
#[cfg(feature = "metrics")]
pub mod metrics;
mod migration;
mod multi;
mod notify;
mod overview;
mod parking;
mod probe;
mod projection;
mod roles;
mod row;
mod snapshot;
mod spans;
mod sql;
mod standby;
mod store;
mod trace;
mod transaction;
mod wake;

pub use config::{PgStoreConfig, SchemaName};
pub use horizon::{HolderKind, HorizonHolder};
pub use inspect::StreamSummary;
pub use lock_wait::{LOCK_PATIENCE, LockHolder, OPERATOR_TARGET, wait_saying_who_blocks};
pub use migration::{AppliedMigration, MigrationProblem, MigrationStatus};
pub use notify::{FEED_CHANNEL, PgFeedListener};
pub use overview::{CategoryStats, RATE_SAMPLE, StoreStats, StreamQuery};
pub use parking::PgParkingLot;
pub use projection::{
    Forgotten, HandlerError, ParkRecord, ParkState, ParkedEvent, PgPartitionedRunner, PgProjection,
    PgProjectionRunner, PgRunnerInstance, PgTransaction, PgTypedProjection, PgWorkerHandle,
    PgWorkerStatus, ProjectionError, ProjectionReport, ProjectionState, ProjectionStatus,
    RebuildOutcome, RebuildProgress, RebuildRecord, RetryOutcome, RunnerBuilder, RunnerConfig,
    RunnerHandle, RunnerOptions, ShadowLeftover, ShadowProjection, Typed, discard_shadow,
    drop_parked, forget_projection, how_to_end, lost_connection, notify_feed, park_event,
    park_records, parked_events, projection_reports, rebuild, rebuild_partitioned, rebuild_shadow,
    retry_parked, shadow_leftovers, wait_for_projection,
};
pub use roles::{
    APPLICATION_PRIVILEGES, ConnectedRole, READ_MODEL_PRIVILEGES, RoleName, application_role_sql,
    application_role_sql_with,
};
pub use standby::{PgStandby, PgStandbyFeed, StandbyLag, StandbyReport, standby_reports};
pub use store::PgEventStore;
pub use transaction::PgStoreTransaction;
pub use wake::PgWakeSource;

/// The schema migrations (`migrations/` at the workspace root), embedded once.
///
/// [`PgEventStore::migrate`] applies them inside the configured schema; tests pass it to
/// `#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
