use std::collections::BTreeMap;
use std::time::Duration;

use chronik_core::{EventId, FeedCursor};
use chronik_projections::{
    ParkedEvent, ProjectionError, ProjectionState, measure_lag, parse_partition,
};
use chronik_store::{EventStore, StoreError, validate_projection_name};
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::park::parked_row;
use super::record::{RebuildRecord, records};
use super::runner::{cursor_of, event_id};
use super::sql::ProjectionSql;
use crate::error::backend;
use crate::horizon::HorizonHolder;
use crate::row::to_u64;
use crate::store::PgEventStore;

/// Records a park decision in `projection_parked`. The projection's runner skips that
/// event the next time it fails on it (and only then); the decision is never deleted.
/// Idempotent: a second decision for the same event keeps the first while it is open or
/// resolved as dropped (the event is passed over either way); a decision resolved as
/// retried ([`crate::retry_parked`]: the event is no longer passed over) is reopened, its
/// reason recording the earlier decision and its retry. The decision's `decided_at` is not
/// stored: the row records the database's time of the decision.
///
/// This is [`PgParkingLot`](crate::PgParkingLot)'s `park` as well: the exactly-once runner,
/// the generic runner on PostgreSQL and the operator commands share one table and one rule.
///
/// # Errors
/// [`StoreError::InvalidRequest`] when [`ParkedEvent::check`] refuses it (an invalid name,
/// a blank reason or decider); [`StoreError::Backend`].
pub async fn park_event(store: &PgEventStore, decision: &ParkedEvent) -> Result<(), StoreError> {
    decision.check()?;
    let sql = ProjectionSql::new(store.schema());
    sqlx::query(sql.park.clone())
        .bind(&decision.projection)
        .bind(decision.event_id.as_uuid())
        .bind(decision.stream_id.as_str())
        .bind(decision.version.as_i64())
        .bind(&decision.reason)
        .bind(&decision.decided_by)
        .execute(store.pool())
        .await
        .map_err(backend)?;
    Ok(())
}

/// Every park decision recorded for `projection`, oldest first, resolved ones included
/// ([`park_records`](crate::park_records) adds where each stands).
///
/// # Errors
/// [`StoreError::InvalidRequest`] for an invalid name; [`StoreError::Backend`], or a stored
/// row that does not decode.
pub async fn parked_events(
    store: &PgEventStore,
    projection: &str,
) -> Result<Vec<ParkedEvent>, StoreError> {
    validate_projection_name(projection)?;
    let sql = ProjectionSql::new(store.schema());
    let rows = sqlx::query(sql.parked.clone())
        .bind(projection)
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    rows.iter().map(|r| parked_row(projection, r)).collect()
}

/// Where projection `name` has applied everything up to: its checkpoint, or, when it runs
/// as partitions, the least of its partitions' checkpoints.
async fn read_checkpoint(
    store: &PgEventStore,
    sql: &ProjectionSql,
    name: &str,
) -> Result<Option<FeedCursor>, StoreError> {
    let rows = sqlx::query(sql.read_checkpoint.clone())
        .bind(name)
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    let mut own = None;
    let mut least: Option<FeedCursor> = None;
    for r in &rows {
        let row_name: String = r.try_get(0).map_err(backend)?;
        let cursor = cursor_of(
            r.try_get(1).map_err(backend)?,
            r.try_get(2).map_err(backend)?,
        )?;
        if row_name == name {
            own = Some(cursor);
        } else if parse_partition(&row_name).is_some_and(|(p, _, _)| p == name) {
            least = Some(least.map_or(cursor, |l| l.min(cursor)));
        }
    }
    Ok(own.or(least))
}

/// Read-your-writes across processes: waits until projection `name` has committed
/// `target` (typically an `AppendResult::cursor`), polling its checkpoint row with a
/// 2 to 100 ms backoff. Returns the checkpoint reached. A partitioned projection has
/// reached `target` when every partition has.
///
/// # Errors
/// [`ProjectionError::Timeout`] after `timeout` (see [`projection_reports`] for the
/// reason: a failing handler, no runner, or a transaction holding the feed back);
/// store failures.
pub async fn wait_for_projection(
    store: &PgEventStore,
    name: &str,
    target: FeedCursor,
    timeout: Duration,
) -> Result<FeedCursor, ProjectionError> {
    validate_projection_name(name)?;
    let sql = ProjectionSql::new(store.schema());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let reached = read_checkpoint(store, &sql, name)
            .await?
            .unwrap_or(FeedCursor::START);
        if reached >= target {
            return Ok(reached);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProjectionError::Timeout {
                projection: name.to_owned(),
                target,
                reached,
                last_error: None,
            });
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// One runner instance of a projection, from its own status row (see
/// [`ProjectionReport`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgRunnerInstance {
    /// Random id of the spawned runner.
    pub instance_id: Uuid,
    /// The state it last recorded (`live`, `standby`, `failing`, ...).
    pub state: String,
    /// Backend pid of its lock session (`None`: it had none when it last wrote).
    pub pid: Option<i32>,
    /// `application_name` of its lock session (set it in the connection URL,
    /// `?application_name=billing-api`, to tell services apart).
    pub application_name: Option<String>,
    /// Client address of its lock session as the server sees it (`None` over a Unix
    /// socket, or without the right to see other roles' sessions).
    pub client_addr: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it took the projection's lock, while it holds it (or held it when it died).
    pub owner_since: Option<DateTime<Utc>>,
    /// When it last wrote its row.
    pub updated_at: DateTime<Utc>,
}

/// One projection as an operator sees it (`chronik projections status`).
///
/// Every runner instance writes only its own status row; the report tells them apart:
/// the **owner** is the instance whose session holds the projection's advisory lock now
/// (read from `pg_locks`, not from what any row claims), the **standbys** are live
/// instances waiting for it, and the **dead** are instances recorded as running whose
/// session no longer exists (crashed, killed, cut off), a dead owner among them
/// (`owner_since` set). A standby that stops removes its row, so it never hides the owner.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProjectionReport {
    /// The projection.
    pub name: String,
    /// Its committed checkpoint (`None`: it has status but never committed). A
    /// partitioned projection's own name, which has no checkpoint row, reports the least
    /// of its partitions' checkpoints (the lag is measured from there).
    pub checkpoint: Option<FeedCursor>,
    /// Events applied in total (for a partitioned projection's own name: by all its
    /// partitions).
    pub events_processed: u64,
    /// Visible feed events after the checkpoint.
    pub lag_events: u64,
    /// Age in seconds of the oldest of them (`0.0` when none).
    pub lag_seconds: f64,
    /// The projection's state: the owner's (`catching_up`, `live`, `failing`); without a
    /// live owner `standby` (instances wait: the lock is free for a moment, or held by a
    /// rebuild, see `locked_by`), `dead` (the last owner's session is gone and no
    /// instance is left to take over), or `stopped`. `None`: no runner ever ran.
    pub state: Option<String>,
    /// The instance holding the projection's lock now.
    pub owner: Option<PgRunnerInstance>,
    /// Live instances waiting to take over, oldest first.
    pub standbys: Vec<PgRunnerInstance>,
    /// Instances recorded as running whose session is gone, oldest first (kept until
    /// another instance takes the lock).
    pub dead: Vec<PgRunnerInstance>,
    /// Backend pid of the session holding the projection's lock when that is not a
    /// runner (a rebuild, or a runner that has not recorded itself yet).
    pub locked_by: Option<i32>,
    /// Most recent error recorded (by the owner, or else by the instance that wrote last).
    pub last_error: Option<String>,
    /// When.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The event being retried while failing.
    pub failing_event: Option<EventId>,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// Set when committed events are not yet visible in the feed: the transaction whose
    /// id is the horizon ([`HorizonHolder::blocker`]: kind, pid, database, 64-bit xid,
    /// age), which pauses every projection until it ends.
    pub held_back_by: Option<HorizonHolder>,
    /// Its last rebuild, as the rebuild recorded it: a failed one (why, when) stays until a
    /// later rebuild succeeds; `None` when it was never rebuilt (since migration 0011).
    pub last_rebuild: Option<RebuildRecord>,
}

/// A runner row as read by [`projection_reports`].
struct RunnerRow {
    instance: PgRunnerInstance,
    alive: bool,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    failing_event: Option<EventId>,
    attempts: u32,
}

fn runner_row(r: &sqlx::postgres::PgRow) -> Result<(String, RunnerRow), StoreError> {
    let failing: Option<Uuid> = r.try_get(11).map_err(backend)?;
    let attempts: i32 = r.try_get(12).map_err(backend)?;
    Ok((
        r.try_get(0).map_err(backend)?,
        RunnerRow {
            instance: PgRunnerInstance {
                instance_id: r.try_get(1).map_err(backend)?,
                state: r.try_get(2).map_err(backend)?,
                pid: r.try_get(3).map_err(backend)?,
                application_name: r.try_get(4).map_err(backend)?,
                client_addr: r.try_get(5).map_err(backend)?,
                started_at: r.try_get(6).map_err(backend)?,
                owner_since: r.try_get(7).map_err(backend)?,
                updated_at: r.try_get(8).map_err(backend)?,
            },
            last_error: r.try_get(9).map_err(backend)?,
            last_error_at: r.try_get(10).map_err(backend)?,
            failing_event: failing.map(event_id).transpose()?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            alive: r.try_get(13).map_err(backend)?,
        },
    ))
}

/// Who runs one projection, from its runner rows and the pid holding its lock.
struct Runners {
    state: Option<String>,
    owner: Option<PgRunnerInstance>,
    standbys: Vec<PgRunnerInstance>,
    dead: Vec<PgRunnerInstance>,
    locked_by: Option<i32>,
    /// The owner's row, or else the one written last: where errors are read from.
    errors: Option<RunnerRow>,
}

fn classify(rows: Vec<RunnerRow>, lock_pid: Option<i32>) -> Runners {
    let mut out = Runners {
        state: None,
        owner: None,
        standbys: Vec::new(),
        dead: Vec::new(),
        locked_by: lock_pid,
        errors: None,
    };
    let any = !rows.is_empty();
    let mut owner_row = None;
    let mut latest: Option<RunnerRow> = None;
    let mut dead_owner = false;
    for row in rows {
        let holds = row.alive && lock_pid.is_some() && row.instance.pid == lock_pid;
        if holds {
            out.owner = Some(row.instance.clone());
            out.locked_by = None;
        } else if row.instance.state == ProjectionState::Stopped.as_str() {
            // history: only its errors and the fact that it stopped
        } else if row.alive && row.instance.state != ProjectionState::Crashed.as_str() {
            out.standbys.push(row.instance.clone());
        } else {
            // A crashed instance is dead whether or not it owned the lock.
            dead_owner |= row.instance.owner_since.is_some()
                || row.instance.state == ProjectionState::Crashed.as_str();
            out.dead.push(row.instance.clone());
        }
        if holds {
            owner_row = Some(row);
        } else if latest
            .as_ref()
            .is_none_or(|l| row.instance.updated_at >= l.instance.updated_at)
        {
            latest = Some(row);
        }
    }
    out.state = if let Some(o) = &out.owner {
        Some(o.state.clone())
    } else if !out.standbys.is_empty() {
        Some(ProjectionState::Standby.as_str().to_owned())
    } else if dead_owner {
        Some("dead".to_owned())
    } else if any {
        Some(ProjectionState::Stopped.as_str().to_owned())
    } else {
        None
    };
    out.errors = owner_row.or(latest);
    out
}

/// One row of the `statuses` query, decoded.
struct StatusRow {
    name: String,
    checkpoint: Option<FeedCursor>,
    processed: u64,
    lock_pid: Option<i32>,
}

/// For each projection that runs as partitions, by its own name: the least of its
/// partitions' checkpoints (what [`read_checkpoint`] reads for it) and the sum of their
/// events processed.
fn partition_families(rows: &[StatusRow]) -> BTreeMap<String, (FeedCursor, u64)> {
    let mut families: BTreeMap<String, (FeedCursor, u64)> = BTreeMap::new();
    for row in rows {
        let (Some(cursor), Some((projection, _, _))) = (row.checkpoint, parse_partition(&row.name))
        else {
            continue;
        };
        families
            .entry(projection.to_owned())
            .and_modify(|(least, sum)| {
                *least = (*least).min(cursor);
                *sum = sum.saturating_add(row.processed);
            })
            .or_insert((cursor, row.processed));
    }
    families
}

/// Status of every projection with a checkpoint, a runner or a rebuild record in the
/// store's schema, by name: checkpoint, lag in events and seconds, state, owner, standbys
/// and dead instances, last error, last rebuild, and what holds the feed back if anything
/// does.
///
/// # Errors
/// Store failures.
pub async fn projection_reports(store: &PgEventStore) -> Result<Vec<ProjectionReport>, StoreError> {
    let sql = ProjectionSql::new(store.schema());
    let rows = sqlx::query(sql.statuses.clone())
        .bind(store.schema().as_str())
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    let mut runners: BTreeMap<String, Vec<RunnerRow>> = BTreeMap::new();
    for r in sqlx::query(sql.runners.clone())
        .fetch_all(store.pool())
        .await
        .map_err(backend)?
        .iter()
    {
        let (name, row) = runner_row(r)?;
        runners.entry(name).or_default().push(row);
    }
    let mut rebuilds = records(store, &sql).await?;
    let head = store.feed_head().await?;
    let held_back_by = match store.newest_committed().await? {
        Some(newest) if Some(newest) > head.last => store
            .horizon_holders()
            .await?
            .into_iter()
            .find(|h| h.blocker),
        _ => None,
    };
    let now = Utc::now();
    let mut statuses = Vec::with_capacity(rows.len());
    for r in &rows {
        let tx: Option<i64> = r.try_get(1).map_err(backend)?;
        let pos: Option<i64> = r.try_get(2).map_err(backend)?;
        let checkpoint = match (tx, pos) {
            (Some(t), Some(p)) => Some(cursor_of(t, p)?),
            _ => None,
        };
        let processed: Option<i64> = r.try_get(3).map_err(backend)?;
        statuses.push(StatusRow {
            name: r.try_get(0).map_err(backend)?,
            checkpoint,
            processed: to_u64(processed.unwrap_or(0), "events processed")?,
            lock_pid: r.try_get(4).map_err(backend)?,
        });
    }
    let families = partition_families(&statuses);
    let mut reports = Vec::with_capacity(statuses.len());
    for row in statuses {
        let StatusRow {
            name,
            mut checkpoint,
            mut processed,
            lock_pid,
        } = row;
        // A partitioned projection's own name (its rebuild record, ...) stands for its
        // partitions: it has applied what the least of them has, and their events.
        if checkpoint.is_none()
            && let Some(&(least, sum)) = families.get(&name)
        {
            checkpoint = Some(least);
            processed = sum;
        }
        let from = checkpoint.unwrap_or(FeedCursor::START);
        let lag = measure_lag(store, from, now).await?;
        let who = classify(runners.remove(&name).unwrap_or_default(), lock_pid);
        let errors = who.errors;
        let last_rebuild = rebuilds.remove(&name);
        reports.push(ProjectionReport {
            name,
            checkpoint,
            events_processed: processed,
            lag_events: lag.events,
            lag_seconds: lag.seconds,
            state: who.state,
            owner: who.owner,
            standbys: who.standbys,
            dead: who.dead,
            locked_by: who.locked_by,
            last_error: errors.as_ref().and_then(|e| e.last_error.clone()),
            last_error_at: errors.as_ref().and_then(|e| e.last_error_at),
            failing_event: errors.as_ref().and_then(|e| e.failing_event),
            attempts: errors.as_ref().map_or(0, |e| e.attempts),
            held_back_by: held_back_by.clone(),
            last_rebuild,
        });
    }
    Ok(reports)
}
