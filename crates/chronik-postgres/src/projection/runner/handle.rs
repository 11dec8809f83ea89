//! The handle of a spawned runner.

use std::sync::Arc;
use std::time::Duration;

use chronik_core::FeedCursor;
use chronik_projections::{ProjectionError, ProjectionStatus, wait_for_status};
use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Controls a spawned [`PgProjectionRunner`](crate::PgProjectionRunner).
#[derive(Debug)]
pub struct PgRunnerHandle {
    pub(super) stop: watch::Sender<bool>,
    pub(super) status: Arc<watch::Sender<ProjectionStatus>>,
    pub(super) task: JoinHandle<()>,
}

impl PgRunnerHandle {
    /// The runner's current status.
    #[must_use]
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// A live view of the status.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.subscribe()
    }

    /// Read-your-writes in this process: waits until the runner has committed `target`
    /// (typically an `AppendResult::cursor`) and returns its status then. Across processes,
    /// or for a partitioned projection, use [`crate::wait_for_projection`].
    ///
    /// # Errors
    /// [`ProjectionError::Timeout`] after `timeout` (with the checkpoint reached and the
    /// last error, often the reason); [`ProjectionError::Stopped`] when the runner stopped
    /// or crashed before reaching `target`.
    pub async fn wait_for(
        &self,
        target: FeedCursor,
        timeout: Duration,
    ) -> Result<ProjectionStatus, ProjectionError> {
        wait_for_status(self.subscribe(), target, timeout).await
    }

    /// Sends the stop signal without waiting.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Graceful shutdown: the current batch commits, the lock is released, and the final
    /// status is returned.
    ///
    /// A task that ended abnormally is reported, never hidden: the status is then
    /// [`ProjectionState::Crashed`](crate::ProjectionState::Crashed) with `last_error` saying why.
    pub async fn stop(self) -> ProjectionStatus {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            crashed(&self.status, &e);
        }
        self.status.borrow().clone()
    }

    /// Cancels the task now, without waiting (a partitioned worker's partitions die with it).
    pub(crate) fn cancel(&self) {
        self.task.abort();
    }

    /// Whether the task has ended (stopped, or crashed).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Kills the task at its next await point, as a crash would: an open batch transaction
    /// is rolled back and the lock session is dropped. Subscribers then see
    /// [`ProjectionState::Crashed`](crate::ProjectionState::Crashed); the status row is left as it was, and
    /// [`crate::projection_reports`] shows the instance dead once its session is gone.
    pub async fn abort(self) {
        self.task.abort();
        if let Err(e) = self.task.await {
            crashed(&self.status, &e);
        }
    }
}

/// Marks the in-process status of a task that ended abnormally.
fn crashed(status: &watch::Sender<ProjectionStatus>, e: &tokio::task::JoinError) {
    let why = if e.is_cancelled() {
        "runner task aborted".to_owned()
    } else {
        format!("runner task ended abnormally: {e}")
    };
    status.send_modify(|s| s.crash(why, Utc::now()));
}
