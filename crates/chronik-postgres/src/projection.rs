//! Exactly-once PostgreSQL read models: read-model changes and the checkpoint commit in one
//! transaction.
//!
//! A [`PgProjection`] handler receives the open transaction of its batch. The runner
//! ([`PgProjectionRunner`]) applies a batch of feed events and moves the projection's
//! checkpoint in that same transaction, then commits: each event's effect lands exactly
//! once, across crashes. The checkpoint row is locked `FOR UPDATE` at the start of every
//! batch and the feed is read after it, so even two runners that both think they are
//! active can never apply an event twice; one `pg_try_advisory_lock` per projection keeps
//! all but one of them in standby (they take over when its session ends).
//!
//! A projection can also run as `N` partitions shared by any number of worker processes
//! ([`PgPartitionedRunner`]): events are assigned by a stable hash of their stream id, each
//! partition has its own checkpoint and is owned by one worker at a time (an advisory lock
//! on the worker's session), and a dead worker's partitions are taken over by the others.
//!
//! Also here: rebuilds from scratch ([`rebuild()`]) and into a shadow table swapped in atomically ([`rebuild_shadow`]),
//! what a killed shadow rebuild left behind ([`shadow_leftovers`], [`discard_shadow`]),
//! recorded park decisions ([`park_event`]) and their resolution ([`park_records`],
//! [`retry_parked`], [`drop_parked`]), forgetting a projection ([`forget_projection`]), cross-process read-your-writes
//! ([`wait_for_projection`]) and operator status ([`projection_reports`]).

mod handler;
mod layout;
mod leftover;
mod ops;
mod park;
mod partition;
mod rebuild;
mod record;
mod runner;
mod sql;
mod typed;

pub(crate) use sql::ProjectionSql;

pub use chronik_projections::{
    HandlerError, ParkedEvent, ProjectionError, ProjectionState, ProjectionStatus, RebuildProgress,
    RunnerBuilder, RunnerConfig, RunnerHandle, RunnerOptions, Typed,
};
pub use handler::{PgProjection, PgTransaction, ShadowProjection, lost_connection};
pub use leftover::{ShadowLeftover, discard_shadow, shadow_leftovers};
pub use ops::{
    PgRunnerInstance, ProjectionReport, park_event, parked_events, projection_reports,
    wait_for_projection,
};
pub use park::{
    Forgotten, ParkRecord, ParkState, RetryOutcome, drop_parked, forget_projection, park_records,
    retry_parked,
};
pub use partition::{PgPartitionedRunner, PgWorkerHandle, PgWorkerStatus};
pub use rebuild::{rebuild, rebuild_partitioned, rebuild_shadow};
pub use record::{RebuildOutcome, RebuildRecord};
pub use runner::{PgProjectionRunner, how_to_end, notify_feed};
pub use typed::PgTypedProjection;
