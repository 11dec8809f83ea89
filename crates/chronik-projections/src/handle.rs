//! The handle of spawned projection tasks, whichever engine spawned them.

use std::sync::Arc;
use std::time::Duration;

use chronik_core::FeedCursor;
use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ProjectionError;
use crate::park::ParkingLot;
use crate::status::{ProjectionStatus, wait_for_status};

/// One spawned projection task, as its engine hands it to [`RunnerHandle::new`].
#[derive(Debug)]
pub struct RunnerTask {
    /// The name its status carries, and that [`RunnerHandle::status`] and
    /// [`RunnerHandle::wait_for`] take: the projection's (or a partition's checkpoint name).
    pub name: String,
    /// Its live status, which the task keeps current.
    pub status: Arc<watch::Sender<ProjectionStatus>>,
    /// The task.
    pub join: JoinHandle<()>,
}

/// Controls running projections, whichever engine spawned them (the generic
/// [`ProjectionRunner`](crate::ProjectionRunner), the PostgreSQL exactly-once runner):
/// status, read-your-writes waits, parking, shutdown.
///
/// Dropping the handle without [`RunnerHandle::stop`] leaves the tasks running until the
/// runtime shuts down.
#[derive(Debug)]
pub struct RunnerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<RunnerTask>,
    parking: Arc<dyn ParkingLot>,
}

impl RunnerHandle {
    /// The handle of `tasks`, which an engine spawned to watch `stop`, and which consult
    /// `parking` for park decisions.
    ///
    /// Contract for the engine: each task ends soon after `stop` turns `true`, once its
    /// current batch is checkpointed (committed, for an exactly-once engine); it keeps its
    /// status current and leaves it [`Stopped`](crate::ProjectionState::Stopped) (or
    /// [`Crashed`](crate::ProjectionState::Crashed), saying why) when it ends by itself,
    /// a panic in it included. The handle marks a task `Crashed` itself when it is aborted
    /// or its join fails. Names are unique (they key [`RunnerHandle::status`]).
    #[must_use]
    pub fn new(
        stop: watch::Sender<bool>,
        tasks: Vec<RunnerTask>,
        parking: Arc<dyn ParkingLot>,
    ) -> Self {
        Self {
            stop,
            tasks,
            parking,
        }
    }

    fn task(&self, name: &str) -> Option<&RunnerTask> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// The current status of `name`.
    #[must_use]
    pub fn status(&self, name: &str) -> Option<ProjectionStatus> {
        self.task(name).map(|t| t.status.borrow().clone())
    }

    /// The status of every projection, by registration order.
    #[must_use]
    pub fn statuses(&self) -> Vec<ProjectionStatus> {
        self.tasks
            .iter()
            .map(|t| t.status.borrow().clone())
            .collect()
    }

    /// A live view of `name`'s status (changes on every checkpoint, error and state change).
    #[must_use]
    pub fn subscribe(&self, name: &str) -> Option<watch::Receiver<ProjectionStatus>> {
        self.task(name).map(|t| t.status.subscribe())
    }

    /// The parking lot the runner consults; record park decisions here (on PostgreSQL, a
    /// durable [`ParkingLot`] over the table the operator commands use).
    #[must_use]
    pub fn parking(&self) -> &Arc<dyn ParkingLot> {
        &self.parking
    }

    /// Whether every task has ended (stopped, crashed or aborted).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.join.is_finished())
    }

    /// Read-your-writes in this process: waits until `name` has checkpointed `target`
    /// (typically the `cursor` of an `AppendResult`), so its read model reflects that
    /// append. Across processes on PostgreSQL, or for a partitioned projection, use
    /// `chronik_postgres::wait_for_projection`.
    ///
    /// # Errors
    /// [`ProjectionError::UnknownProjection`]; [`ProjectionError::Timeout`] (with the
    /// checkpoint reached and the last error, often the reason) after `timeout`;
    /// [`ProjectionError::Stopped`] when the projection stopped or crashed before reaching
    /// `target`.
    pub async fn wait_for(
        &self,
        name: &str,
        target: FeedCursor,
        timeout: Duration,
    ) -> Result<ProjectionStatus, ProjectionError> {
        let rx = self
            .subscribe(name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))?;
        wait_for_status(rx, target, timeout).await
    }

    /// Sends the stop signal without waiting (for signal handlers); follow with
    /// [`RunnerHandle::stop`] to wait for the final checkpoints.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Graceful shutdown: each task finishes and checkpoints its current batch (a task that
    /// is backing off after a failure checkpoints what it applied and stops; on PostgreSQL
    /// the batch commits and the projection's lock is released), then the final statuses
    /// are returned in registration order.
    ///
    /// # Errors
    /// [`ProjectionError::TaskFailed`] when a task's join failed (it panicked outside
    /// every guard, or was cancelled); its status is then
    /// [`Crashed`](crate::ProjectionState::Crashed), never its last state.
    pub async fn stop(self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        self.stop.send_replace(true);
        let mut first_err = None;
        let mut statuses = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Err(e) = task.join.await {
                crashed(&task.status, &e);
                first_err.get_or_insert(ProjectionError::TaskFailed {
                    projection: task.name.clone(),
                    message: e.to_string(),
                });
            }
            statuses.push(task.status.borrow().clone());
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(statuses),
        }
    }

    /// Kills every task at its next await point without a final checkpoint, as a crash
    /// would (for tests and emergencies): on PostgreSQL an open batch transaction rolls
    /// back and the lock session is dropped.
    ///
    /// Subscribers then see [`Crashed`](crate::ProjectionState::Crashed); what the engine
    /// stored about the runner stays as it was (PostgreSQL's status report shows the
    /// instance dead once its session is gone).
    pub async fn abort(self) {
        for task in self.tasks {
            task.join.abort();
            if let Err(e) = task.join.await {
                crashed(&task.status, &e);
            }
        }
    }
}

/// Marks the status of a task that ended abnormally: never left showing its last state.
fn crashed(status: &watch::Sender<ProjectionStatus>, e: &tokio::task::JoinError) {
    let why = if e.is_cancelled() {
        "runner task aborted".to_owned()
    } else {
        format!("runner task ended abnormally: {e}")
    };
    status.send_modify(|s| s.crash(why, Utc::now()));
}
