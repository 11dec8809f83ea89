//! Projection runner for chronik: read models and side effects fed from the global feed.
//!
//! A [`Projection`] names itself, filters the feed and handles recorded events; a
//! [`TypedProjection`] receives the service's own decoded events instead (run it wrapped in
//! [`Typed`]). A
//! [`ProjectionRunner`] catches each projection up from its checkpoint in batches, then
//! stays live, woken by a [`WakeSource`] with adaptive polling as the fallback. Delivery is
//! at-least-once (checkpoint after effect); failures are retried with backoff and shown in
//! [`ProjectionStatus`], never skipped unless parked by a recorded decision
//! ([`ParkingLot`]). [`rebuild`] replays a projection from scratch with progress reports;
//! [`follow`] tails the feed live. [`Partitions`] splits a projection by a stable hash of
//! the stream id, for engines that run partitions on several workers (PostgreSQL).
//!
//! **Invariant:** this crate knows the store only through the `chronik-store` ports; it
//! names no database. Exactly-once PostgreSQL read models live in `chronik-postgres`.

mod error;
mod follow;
mod handle;
mod name;
mod options;
mod outage;
mod park;
mod partition;
mod projection;
mod rebuild;
mod runner;
mod status;
mod typed;
mod wake;

/// The `tracing` target of the messages written for the operator, to be read as they are:
/// a parked event passed over, who holds the lock a statement waits for, what a failed
/// clean-up left behind. They are `warn` events whose message is the whole sentence (no
/// fields); the `chronik` binary prints them on stderr as `warning: <message>`, without the
/// timestamp, level and target of its other log lines, and a service's own subscriber shows
/// them as any other warning.
pub const OPERATOR_TARGET: &str = "chronik::operator";

pub use error::ProjectionError;
pub use follow::{FollowOptions, follow};
pub use handle::{RunnerHandle, RunnerTask};
pub use name::ProjectionName;
pub use options::{RunnerBuilder, RunnerConfig, RunnerOptions};
pub use outage::Outage;
pub use park::{MemoryParkingLot, ParkedEvent, ParkingLot};
pub use partition::{MAX_PARTITIONS, Partitions, parse_partition, stream_hash};
pub use projection::{HandlerError, Projection};
pub use rebuild::{RebuildOptions, RebuildProgress, rebuild};
pub use runner::ProjectionRunner;
pub use status::{
    EventRef, Lag, LagMeter, ProjectionState, ProjectionStatus, checkpoint_lag, measure_lag,
    wait_for_status,
};
pub use typed::{Typed, TypedProjection, decode_recorded, typed_filter};
pub use wake::{PollingOnly, WakeSource, Wakeup};
