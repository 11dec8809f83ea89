//! The projection's advisory lock: its dedicated session, taking it, and who holds it.

use chronik_store::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Row};

use chronik_projections::ProjectionError;

use super::engine::Engine;
use crate::error::backend;
use crate::projection::handler::PgProjection;
use crate::projection::sql::lock_key;
use crate::store::PgEventStore;

/// [`ProjectionError::Busy`] for the lock of `key_name`, with the pid of the session
/// holding it now.
pub(crate) async fn busy(store: &PgEventStore, key_name: &str) -> ProjectionError {
    busy_on(store, key_name, &lock_key(store.schema(), key_name)).await
}

/// [`ProjectionError::Busy`] for `projection`, whose advisory lock of key text `key`
/// another session holds, with that session's pid.
pub(crate) async fn busy_on(store: &PgEventStore, projection: &str, key: &str) -> ProjectionError {
    let pid = sqlx::query_scalar::<_, i32>(crate::projection::sql::LOCK_HOLDER)
        .bind(key)
        .fetch_optional(store.pool())
        .await;
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!(projection, error = %backend(e), "could not read who holds the projection's lock");
            None
        }
    };
    ProjectionError::Busy {
        projection: projection.to_owned(),
        pid,
    }
}

/// For [`ProjectionError::Busy`] with a known pid: the statement that ends the session
/// holding the lock (`SELECT pg_terminate_backend(<pid>)`), shown to an operator, never run
/// here. Ending a runner's session does not stop the runner: it takes the lock again when
/// it is free; stop its process instead.
#[must_use]
pub fn how_to_end(e: &ProjectionError) -> Option<String> {
    e.holder_pid().map(crate::horizon::terminate)
}

/// Ends a lock session (a rebuild's, a `forget`'s), its advisory locks released first: a
/// closed session's locks go only when its backend has exited, a moment after `close`
/// returns, and the next rebuild (or runner) would be refused as Busy meanwhile, with no
/// holder left to name. Best effort: a session that is gone has released them already.
pub(crate) async fn release(mut lock: PgConnection) {
    let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut lock)
        .await;
    let _ = lock.close().await;
}

/// A runner's lock session, as `pg_stat_activity` shows it.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub(crate) pid: i32,
    pub(super) backend_start: Option<DateTime<Utc>>,
    pub(super) application_name: Option<String>,
    pub(super) client_addr: Option<String>,
}

impl<P: PgProjection> Engine<P> {
    /// Opens a dedicated session for the advisory lock (outside the pool: the lock lives
    /// as long as the session).
    pub(crate) async fn lock_session(&self) -> Result<PgConnection, StoreError> {
        let options = self.store.pool().connect_options();
        PgConnection::connect_with(&options).await.map_err(backend)
    }

    /// Tries the projection's advisory lock on `conn`; returns the session's backend pid
    /// when taken.
    pub(crate) async fn try_lock_on(
        &self,
        conn: &mut PgConnection,
        key_name: &str,
    ) -> Result<Option<i32>, StoreError> {
        let got: bool = sqlx::query_scalar(self.sql.try_lock)
            .bind(lock_key(self.store.schema(), key_name))
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        if !got {
            return Ok(None);
        }
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(Some(pid))
    }

    /// Takes the projection's advisory lock on a new dedicated session, if free.
    pub(crate) async fn try_lock(
        &self,
        key_name: &str,
    ) -> Result<Option<(PgConnection, i32)>, StoreError> {
        let mut conn = self.lock_session().await?;
        match self.try_lock_on(&mut conn, key_name).await? {
            Some(pid) => Ok(Some((conn, pid))),
            None => {
                let _ = conn.close().await;
                Ok(None)
            }
        }
    }

    /// The lock session as the server sees it, recorded in the instance's status row.
    pub(crate) async fn session_info(
        &self,
        conn: &mut PgConnection,
    ) -> Result<SessionInfo, StoreError> {
        let row = sqlx::query(self.sql.session_info)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(SessionInfo {
            pid: row.try_get(0).map_err(backend)?,
            backend_start: row.try_get(1).map_err(backend)?,
            application_name: row.try_get(2).map_err(backend)?,
            client_addr: row.try_get(3).map_err(backend)?,
        })
    }
}
