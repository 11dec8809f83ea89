//! The exactly-once runner of one [`PgProjection`]: the builder here; its options,
//! status, errors, advisory lock, batch loop ([`engine`]) and task in the files below. Its
//! handle is every engine's, [`RunnerHandle`].

mod engine;
mod lock;
mod options;
mod status;
mod task;

use std::sync::Arc;

use chronik_projections::{
    ProjectionError, ProjectionName, RunnerBuilder, RunnerConfig, RunnerHandle,
};
use tokio::sync::watch;

pub(crate) use engine::{
    Batch, Engine, as_i64, cursor_of, event_id, locked_checkpoint, upcast_failure,
};
pub use lock::how_to_end;
pub(crate) use lock::{SessionInfo, busy, busy_on, release};
pub use options::notify_feed;
pub(crate) use options::validate;
pub(crate) use task::spawn_task;

use super::handler::PgProjection;
use crate::parking::PgParkingLot;
use crate::standby::PgStandby;
use crate::store::PgEventStore;

/// Applies feed events to one [`PgProjection`] exactly once, one transaction per batch.
///
/// Contract: each batch locks the projection's checkpoint row `FOR UPDATE`, reads the feed
/// after it, runs the handler for every matching event in the same transaction, moves the
/// checkpoint and commits. A crash anywhere rolls the whole batch back. A failing event
/// rolls its batch back; the events before it are committed first, then it alone is
/// retried with backoff until it succeeds or a park decision is recorded for it
/// ([`crate::park_event`]). At most one runner per projection name and schema is active
/// (`pg_try_advisory_lock` on a dedicated session); the others stay in
/// [`ProjectionState::Standby`](chronik_projections::ProjectionState::Standby) and take
/// over when that session ends.
#[derive(Debug)]
pub struct PgProjectionRunner<P> {
    store: PgEventStore,
    projection: Arc<P>,
    config: RunnerConfig,
    standby: Option<PgStandby>,
}

impl<P> RunnerBuilder for PgProjectionRunner<P> {
    fn config_mut(&mut self) -> &mut RunnerConfig {
        &mut self.config
    }
}

impl<P: PgProjection> PgProjectionRunner<P> {
    /// A runner with default options and no upcasting.
    pub fn new(store: PgEventStore, projection: Arc<P>) -> Self {
        Self {
            store,
            projection,
            config: RunnerConfig::default(),
            standby: None,
        }
    }

    /// Reads the feed from `standby`, a hot standby of the store's primary, instead of the
    /// primary; the read model, the checkpoint, the lock and the status stay on the primary
    /// (`docs/projections.md`, "Reading the feed from a hot standby"). Still gap-free and
    /// exactly-once: each batch locks the checkpoint on the primary, then reads the page
    /// after it on the standby in one recovery snapshot, which is a prefix of the primary's
    /// feed. A standby that lags or is paused makes the runner wait (empty pages; the lag,
    /// measured on the primary, shows it); a promoted standby is refused (the runner fails,
    /// retrying, until it is pointed elsewhere). `LISTEN` (`listen_channel`) stays on the
    /// primary, a hint after which the runner polls the standby from `poll_min` again. The
    /// standby's replication lag is recorded in the status row every `lag_every`
    /// ([`crate::standby_reports`], `doctor`).
    #[must_use]
    pub fn with_standby(mut self, standby: PgStandby) -> Self {
        self.standby = Some(standby);
        self
    }

    /// Spawns the runner on the current tokio runtime. Its handle's
    /// [`parking`](RunnerHandle::parking) is a [`PgParkingLot`] on the store: the decisions
    /// recorded there are the ones the runner honours (and the operator commands list).
    ///
    /// # Errors
    /// An invalid projection name or options; nothing is spawned then.
    pub fn spawn(self) -> Result<RunnerHandle, ProjectionError> {
        ProjectionName::new(self.projection.name())?;
        let RunnerConfig { options, upcasters } = self.config;
        validate(&options)?;
        let mut engine = Engine::new(&self.store, self.projection, upcasters);
        engine.check_layout = true;
        engine.standby = self.standby;
        let (stop, stopped) = watch::channel(false);
        let task = spawn_task(engine, options, None, stopped);
        let parking = Arc::new(PgParkingLot::new(self.store));
        Ok(RunnerHandle::new(stop, vec![task], parking))
    }
}
