//! A runner's state and status, in process and in its `projection_runners` row.

use chronik_projections::ProjectionStatus;
use uuid::Uuid;

use super::engine::Engine;
use super::lock::SessionInfo;
use crate::projection::handler::PgProjection;

impl<P: PgProjection> Engine<P> {
    /// Writes instance `instance`'s own status row (never another instance's). The caller
    /// logs a failure: at debug level while it already said the database is lost.
    pub(crate) async fn save_status(
        &self,
        instance: Uuid,
        s: &ProjectionStatus,
        session: Option<&SessionInfo>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(self.sql.save_status.clone())
            .bind(self.name())
            .bind(instance)
            .bind(s.state.as_str())
            .bind(session.map(|x| x.pid))
            .bind(session.and_then(|x| x.backend_start))
            .bind(session.and_then(|x| x.application_name.as_deref()))
            .bind(session.and_then(|x| x.client_addr.as_deref()))
            .bind(s.lock_pid.is_some())
            .bind(s.last_error.as_deref())
            .bind(s.last_error_at)
            .bind(s.failing_event.as_ref().map(|e| e.event_id.as_uuid()))
            .bind(i32::try_from(s.attempts).unwrap_or(i32::MAX))
            .execute(self.store.pool())
            .await
            .map(|_| ())
    }

    /// Removes instance `instance`'s status row (a standby that stops leaves nothing).
    pub(crate) async fn delete_status(&self, instance: Uuid) {
        let result = sqlx::query(self.sql.delete_status.clone())
            .bind(self.name())
            .bind(instance)
            .execute(self.store.pool())
            .await;
        if let Err(e) = result {
            tracing::warn!(projection = self.name(), error = %e, "could not remove projection status");
        }
    }

    /// Removes the rows of stopped instances and of instances whose session is gone,
    /// except `instance`'s own; run by an instance that just took the lock.
    pub(crate) async fn prune_statuses(&self, instance: Uuid) {
        let result = sqlx::query(self.sql.prune_statuses.clone())
            .bind(self.name())
            .bind(instance)
            .execute(self.store.pool())
            .await;
        if let Err(e) = result {
            tracing::warn!(projection = self.name(), error = %e, "could not prune projection statuses");
        }
    }
}
