//! The record of each projection's last rebuild (`projection_rebuilds`, migration 0011):
//! written by the rebuild itself, read into [`crate::ProjectionReport::last_rebuild`].

use std::collections::BTreeMap;

use chronik_store::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row as _};

use super::sql::ProjectionSql;
use crate::error::backend;
use crate::row::to_u64;
use crate::store::PgEventStore;

/// How a projection's last rebuild ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildOutcome {
    /// It is running now (its session is alive).
    Running,
    /// It committed (from scratch) or swapped its shadow in.
    Succeeded,
    /// It stopped without changing the read model: a handler or decode error, a lost
    /// connection, an interruption, or its process ended while it ran.
    Failed,
}

impl RebuildOutcome {
    /// `running`, `succeeded` or `failed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// A projection's last rebuild, as recorded by the rebuild
/// ([`crate::ProjectionReport::last_rebuild`]). A failed one stays until a later rebuild of
/// the projection starts (then it is `Running`) and succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebuildRecord {
    /// How it ended, or that it runs.
    pub outcome: RebuildOutcome,
    /// Into a shadow table ([`crate::rebuild_shadow`]), or from scratch ([`crate::rebuild`]).
    pub shadow: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (`None` while it runs, and when its session ended before it finished).
    pub finished_at: Option<DateTime<Utc>>,
    /// Backend pid of its lock session.
    pub pid: Option<i32>,
    /// Feed events it had examined when it ended.
    pub scanned: u64,
    /// Visible feed events when it started (`0` until it ends).
    pub total: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a rebuild recorded as running whose session is gone failed.
const SESSION_ENDED: &str =
    "its session ended before it finished (its process was killed, or the server restarted)";

/// [`SESSION_ENDED`] for a shadow rebuild, which may have left its table and checkpoint.
const SHADOW_SESSION_ENDED: &str = "its session ended before it finished (its process was \
     killed, or the server restarted); it may have left its shadow table and checkpoint \
     behind (`doctor` names them)";

/// Records that a rebuild of `name` starts, on its lock session `lock` (whose pid and
/// start time identify it). Best effort: a store that cannot record it (a role without the
/// right, a schema before migration 0011) still rebuilds, with a warning; returns whether
/// it was recorded.
pub(crate) async fn started(
    lock: &mut PgConnection,
    sql: &ProjectionSql,
    name: &str,
    shadow: bool,
) -> bool {
    let result = sqlx::query(sql.rebuild_started.clone())
        .bind(name)
        .bind(shadow)
        .execute(&mut *lock)
        .await;
    match result {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(projection = name, error = %backend(e), "cannot record the rebuild in projection_rebuilds; rebuilding anyway");
            false
        }
    }
}

/// Records that the rebuild of `name` by lock session `pid` ended: `error` `None` for a
/// success. Run inside the rebuild's committing transaction for a success (so that
/// "succeeded" is recorded exactly when it commits), on the pool after a failure.
pub(crate) async fn finished(
    conn: &mut PgConnection,
    sql: &ProjectionSql,
    name: &str,
    pid: i32,
    scanned: u64,
    total: u64,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(sql.rebuild_finished.clone())
        .bind(name)
        .bind(if error.is_some() {
            RebuildOutcome::Failed.as_str()
        } else {
            RebuildOutcome::Succeeded.as_str()
        })
        .bind(super::runner::as_i64(scanned))
        .bind(super::runner::as_i64(total))
        .bind(error)
        .bind(pid)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// [`finished`] for a failure, best effort (a warning when it cannot be recorded).
pub(crate) async fn failed(
    store: &PgEventStore,
    sql: &ProjectionSql,
    name: &str,
    pid: i32,
    scanned: u64,
    total: u64,
    error: &str,
) {
    let result = match store.pool().acquire().await {
        Ok(mut conn) => finished(&mut conn, sql, name, pid, scanned, total, Some(error)).await,
        Err(e) => Err(backend(e)),
    };
    if let Err(e) = result {
        tracing::warn!(projection = name, error = %e, "cannot record that the rebuild failed");
    }
}

/// Every projection's last rebuild, by name.
pub(crate) async fn records(
    store: &PgEventStore,
    sql: &ProjectionSql,
) -> Result<BTreeMap<String, RebuildRecord>, StoreError> {
    let rows = sqlx::query(sql.rebuilds.clone())
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let name: String = r.try_get(0).map_err(backend)?;
        let outcome: String = r.try_get(2).map_err(backend)?;
        let shadow: bool = r.try_get(1).map_err(backend)?;
        let alive: bool = r.try_get(9).map_err(backend)?;
        let mut error: Option<String> = r.try_get(8).map_err(backend)?;
        let outcome = match outcome.as_str() {
            "succeeded" => RebuildOutcome::Succeeded,
            "failed" => RebuildOutcome::Failed,
            "running" if alive => RebuildOutcome::Running,
            "running" => {
                let why = if shadow {
                    SHADOW_SESSION_ENDED
                } else {
                    SESSION_ENDED
                };
                error = Some(why.to_owned());
                RebuildOutcome::Failed
            }
            other => {
                return Err(StoreError::backend(
                    format!("stored rebuild outcome {other:?} is not one chronik writes"),
                    false,
                ));
            }
        };
        let scanned: i64 = r.try_get(6).map_err(backend)?;
        let total: i64 = r.try_get(7).map_err(backend)?;
        out.insert(
            name,
            RebuildRecord {
                outcome,
                shadow,
                started_at: r.try_get(3).map_err(backend)?,
                finished_at: r.try_get(4).map_err(backend)?,
                pid: r.try_get(5).map_err(backend)?,
                scanned: to_u64(scanned, "rebuild events scanned")?,
                total: to_u64(total, "rebuild events total")?,
                error,
            },
        );
    }
    Ok(out)
}
