//! Parked events as an operator handles them: listed with their state, retried once the
//! handler can apply them, dropped for good; and projections forgotten.

use std::sync::Arc;

use chronik_core::{EventId, FeedCursor, StreamId, UpcasterRegistry, Version};
use chronik_projections::{EventRef, HandlerError, ParkedEvent, ProjectionError, parse_partition};
use chronik_store::{StoreError, upcast_recorded, validate_projection_name};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Connection as _, Row as _};
use uuid::Uuid;

use super::handler::{PgProjection, handle_guarded};
use super::layout;
use super::runner::{busy, busy_on, cursor_of, event_id, locked_checkpoint, release};
use super::sql::{ProjectionSql, lock_key, workers_key};
use crate::error::backend;
use crate::store::PgEventStore;

/// Where a parked event stands for its projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParkState {
    /// Decided, and the projection's checkpoint has not passed the event yet: its runner
    /// skips it when it fails on it.
    Pending,
    /// The checkpoint passed it: the runner (or a rebuild) skipped it, and the read model
    /// lacks its effects.
    Skipped,
    /// Resolved by [`retry_parked`]: applied after all (or, not reached yet, left for the
    /// runner to apply); nothing passes over it any more.
    Retried,
    /// Resolved by [`drop_parked`]: given up for good; runners and rebuilds keep passing
    /// over it.
    Dropped,
}

impl ParkState {
    /// `pending`, `skipped`, `retried` or `dropped`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Skipped => "skipped",
            Self::Retried => "retried",
            Self::Dropped => "dropped",
        }
    }

    /// Whether an operator still has to decide about it (pending or skipped).
    #[must_use]
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Skipped)
    }
}

/// A park decision with where its event stands ([`park_records`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParkRecord {
    /// The decision as recorded.
    pub decision: ParkedEvent,
    /// The event's feed cursor (`None` if the event is not in this store).
    pub cursor: Option<FeedCursor>,
    /// Where it stands.
    pub state: ParkState,
    /// Who resolved it, when it is resolved.
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One park decision of `projection` from a row whose first six columns are event id,
/// stream id, version, reason, decider and time, as every query of `projection_parked`
/// returns them.
pub(crate) fn parked_row(projection: &str, r: &PgRow) -> Result<ParkedEvent, StoreError> {
    let id: Uuid = r.try_get(0).map_err(backend)?;
    let stream: String = r.try_get(1).map_err(backend)?;
    let version: i64 = r.try_get(2).map_err(backend)?;
    let stored = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::backend(format!("stored park decision: {what}: {e}"), false)
    };
    Ok(ParkedEvent {
        projection: projection.to_owned(),
        event_id: event_id(id)?,
        stream_id: StreamId::new(stream).map_err(|e| stored("stream id", &e))?,
        version: Version::from_i64(version).map_err(|e| stored("version", &e))?,
        reason: r.try_get(3).map_err(backend)?,
        decided_by: r.try_get(4).map_err(backend)?,
        decided_at: r.try_get(5).map_err(backend)?,
    })
}

/// Every park decision of `projection`, oldest first, with its event's cursor and state.
///
/// # Errors
/// [`StoreError::InvalidRequest`] for an invalid name; [`StoreError::Backend`].
pub async fn park_records(
    store: &PgEventStore,
    projection: &str,
) -> Result<Vec<ParkRecord>, StoreError> {
    validate_projection_name(projection)?;
    let sql = ProjectionSql::new(store.schema());
    let rows = sqlx::query(sql.park_records.clone())
        .bind(projection)
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| {
            let tx: Option<i64> = r.try_get(6).map_err(backend)?;
            let pos: Option<i64> = r.try_get(7).map_err(backend)?;
            let resolution: Option<String> = r.try_get(8).map_err(backend)?;
            let passed: bool = r.try_get(11).map_err(backend)?;
            let state = match resolution.as_deref() {
                Some("retried") => ParkState::Retried,
                Some(_) => ParkState::Dropped,
                None if passed => ParkState::Skipped,
                None => ParkState::Pending,
            };
            Ok(ParkRecord {
                decision: parked_row(projection, r)?,
                cursor: match (tx, pos) {
                    (Some(t), Some(p)) => Some(cursor_of(t, p)?),
                    _ => None,
                },
                state,
                resolved_by: r.try_get(9).map_err(backend)?,
                resolved_at: r.try_get(10).map_err(backend)?,
            })
        })
        .collect()
}

/// What [`retry_parked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// The event had been skipped: it was applied now, in one transaction with the
    /// decision's resolution (late: after events that followed it in the feed).
    Applied,
    /// The checkpoint had not passed it: the decision is withdrawn, and the runner
    /// applies (or retries) the event when it reaches it.
    Withdrawn,
}

fn not_open(projection: &str, id: EventId, what: &str) -> ProjectionError {
    ProjectionError::Store(StoreError::NotFound(format!(
        "event {id} is not parked for projection {projection}{what}"
    )))
}

/// Locks the open decision about `id` in `tx`, or says why there is none.
async fn lock_open_decision(
    tx: &mut sqlx::PgConnection,
    sql: &ProjectionSql,
    projection: &str,
    id: EventId,
) -> Result<(), ProjectionError> {
    let row: Option<Option<String>> = sqlx::query_scalar(sql.lock_decision.clone())
        .bind(projection)
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    match row {
        None => Err(not_open(projection, id, "")),
        Some(Some(resolution)) => Err(not_open(
            projection,
            id,
            &format!(" any more (its decision was resolved: {resolution})"),
        )),
        Some(None) => Ok(()),
    }
}

async fn resolve(
    tx: &mut sqlx::PgConnection,
    sql: &ProjectionSql,
    projection: &str,
    id: EventId,
    resolution: &str,
    by: &str,
) -> Result<(), ProjectionError> {
    sqlx::query(sql.resolve.clone())
        .bind(projection)
        .bind(id.as_uuid())
        .bind(resolution)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(())
}

fn check_by(by: &str) -> Result<(), StoreError> {
    if by.trim().is_empty() {
        return Err(StoreError::InvalidRequest(
            "resolving a park decision needs who resolves it".to_owned(),
        ));
    }
    Ok(())
}

/// Retries the parked event `id` of `projection`: if its checkpoint passed the event
/// (it was skipped), applies it now through the handler (upcast through `upcasters`), in
/// one transaction with the decision's resolution `retried`; otherwise withdraws the
/// decision, so that the runner applies it when it reaches it. Runs under the
/// projection's checkpoint row lock, so never in the middle of a runner's batch.
///
/// # Errors
/// [`StoreError::NotFound`] when no open decision is recorded for the event;
/// [`ProjectionError::Handler`] when it still fails (nothing changes then: the decision
/// stays open); store failures.
pub async fn retry_parked<P: PgProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    id: EventId,
    by: &str,
) -> Result<RetryOutcome, ProjectionError> {
    let name = projection.name().to_owned();
    validate_projection_name(&name)?;
    check_by(by)?;
    let sql = ProjectionSql::new(store.schema());
    let mut tx = store.pool().begin().await.map_err(backend)?;
    let checkpoint = locked_checkpoint(&mut tx, &sql, &name).await?;
    lock_open_decision(&mut tx, &sql, &name, id).await?;
    let event = store.event_by_id(id).await?.ok_or_else(|| {
        ProjectionError::Store(StoreError::NotFound(format!(
            "event {id} is not in this store"
        )))
    })?;
    let outcome = if checkpoint.is_some_and(|c| event.cursor <= c) {
        let failed =
            |event: &chronik_core::RecordedEvent, source: HandlerError| ProjectionError::Handler {
                projection: name.clone(),
                event: Box::new(EventRef::from(event)),
                source,
            };
        let event = match &upcasters {
            Some(r) => upcast_recorded(r, event.clone())
                .map_err(|e| failed(&event, super::runner::upcast_failure(&e)))?,
            None => event,
        };
        handle_guarded(&*projection, &mut tx, &event)
            .await
            .map_err(|e| failed(&event, e))?;
        RetryOutcome::Applied
    } else {
        RetryOutcome::Withdrawn
    };
    resolve(&mut tx, &sql, &name, id, "retried", by).await?;
    tx.commit().await.map_err(backend)?;
    Ok(outcome)
}

/// Drops the parked event `id` of `projection` for good: its decision is resolved as
/// `dropped`, so that it leaves the list of open decisions; runners and rebuilds keep
/// passing over the event.
///
/// # Errors
/// [`StoreError::NotFound`] when no open decision is recorded for the event; store
/// failures.
pub async fn drop_parked(
    store: &PgEventStore,
    projection: &str,
    id: EventId,
    by: &str,
) -> Result<(), ProjectionError> {
    validate_projection_name(projection)?;
    check_by(by)?;
    let sql = ProjectionSql::new(store.schema());
    let mut tx = store.pool().begin().await.map_err(backend)?;
    lock_open_decision(&mut tx, &sql, projection, id).await?;
    resolve(&mut tx, &sql, projection, id, "dropped", by).await?;
    tx.commit().await.map_err(backend)?;
    Ok(())
}

/// What [`forget_projection`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forgotten {
    /// The checkpoint it had under its own name, if any.
    pub checkpoint: Option<FeedCursor>,
    /// The checkpoints of its partitions (`<name>#<index>/<count>`, by name) when it ran as
    /// partitions ([`crate::PgPartitionedRunner`]), with where each was.
    pub partitions: Vec<(String, FeedCursor)>,
    /// Runner status rows removed (its partitions' included).
    pub runner_rows: u64,
}

/// Forgets projection `name`: deletes its checkpoint, its runners' status rows and the
/// record of its last rebuild, so that it no longer shows in `projection_reports` (a
/// one-off reader's checkpoint, a retired projection, a rebuild's leftover
/// `<name>__shadow`). A partitioned projection is forgotten whole: the checkpoints and
/// runner rows of its partitions (`<name>#<index>/<count>`, of any number of partitions)
/// go too. Its park decisions are kept as the record, and its read model's tables are not
/// touched. Takes, for the duration, the projection's advisory lock, its workers' key
/// (so that no partitioned worker is alive, even one that owns no partition) and every
/// partition's lock.
///
/// # Errors
/// [`ProjectionError::Busy`] while a runner, a partitioned worker or a rebuild holds one
/// of those locks; [`StoreError::NotFound`] when it has no checkpoint, partition, runner
/// row or rebuild record; store failures.
pub async fn forget_projection(
    store: &PgEventStore,
    name: &str,
) -> Result<Forgotten, ProjectionError> {
    validate_projection_name(name)?;
    let sql = ProjectionSql::new(store.schema());
    let options = store.pool().connect_options();
    let mut lock = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(backend)?;
    let result = forget_locked(store, &sql, &mut lock, name).await;
    release(lock).await;
    result
}

/// [`forget_projection`] on its lock session `lock`.
async fn forget_locked(
    store: &PgEventStore,
    sql: &ProjectionSql,
    lock: &mut sqlx::PgConnection,
    name: &str,
) -> Result<Forgotten, ProjectionError> {
    let try_lock = async |lock: &mut sqlx::PgConnection, key: &str| {
        sqlx::query_scalar::<_, bool>(sql.try_lock)
            .bind(key)
            .fetch_one(lock)
            .await
    };
    if !try_lock(lock, &lock_key(store.schema(), name))
        .await
        .map_err(backend)?
    {
        return Err(busy(store, name).await);
    }
    let workers = workers_key(store.schema(), name);
    if !try_lock(lock, &workers).await.map_err(backend)? {
        return Err(busy_on(store, name, &workers).await);
    }
    let mut partitions: Vec<String> = layout::family(lock, sql, name)
        .await?
        .into_iter()
        .filter(|n| n != name)
        .collect();
    partitions.sort_by_key(|n| parse_partition(n).map(|(_, index, count)| (count, index)));
    for partition in &partitions {
        if !try_lock(lock, &lock_key(store.schema(), partition))
            .await
            .map_err(backend)?
        {
            return Err(busy(store, partition).await);
        }
    }
    let mut tx = store.pool().begin().await.map_err(backend)?;
    let checkpoint = locked_checkpoint(&mut tx, sql, name).await?;
    let mut cursors = Vec::with_capacity(partitions.len());
    for partition in partitions {
        if let Some(cursor) = locked_checkpoint(&mut tx, sql, &partition).await? {
            cursors.push((partition, cursor));
        }
    }
    let mut names: Vec<String> = cursors.iter().map(|(n, _)| n.clone()).collect();
    names.push(name.to_owned());
    sqlx::query(sql.delete_checkpoints.clone())
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    // Runner rows of partitions whose checkpoints a rebuild to another number of
    // partitions deleted are the projection's too.
    let runners: Vec<String> = sqlx::query_scalar(sql.family_runners.clone())
        .bind(name)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
    names.extend(
        runners
            .into_iter()
            .filter(|n| parse_partition(n).is_some_and(|(p, _, _)| p == name)),
    );
    let runner_rows = sqlx::query(sql.forget_runners.clone())
        .bind(&names)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
    let rebuild_rows = sqlx::query(sql.forget_rebuild.clone())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
    if checkpoint.is_none() && cursors.is_empty() && runner_rows == 0 && rebuild_rows == 0 {
        return Err(ProjectionError::Store(StoreError::NotFound(format!(
            "projection {name} has no checkpoint and no runner in schema {}",
            store.schema()
        ))));
    }
    tx.commit().await.map_err(backend)?;
    Ok(Forgotten {
        checkpoint,
        partitions: cursors,
        runner_rows,
    })
}
