//! Reading the feed from a hot standby: [`PgStandby`], what a
//! [`PgProjectionRunner`](crate::PgProjectionRunner) reads when built
//! [`with_standby`](crate::PgProjectionRunner::with_standby), and how far behind its primary
//! it is ([`StandbyLag`], [`standby_reports`]).
//!
//! Why it stays gap-free (`docs/ordering.md`, "On a hot standby"): on a standby in recovery
//! `pg_current_snapshot()` is built from the transactions the standby knows to be running
//! on the primary as of the WAL it has replayed (every transaction id it has seen in the WAL
//! without its commit or abort, and every id below the newest one seen that no running-xacts
//! record has shown finished). So its `xmin` never exceeds the oldest transaction still
//! running on the primary *as replayed*, every event below it has been replayed with its
//! commit, and the standby's feed below its horizon is exactly the primary's feed below the
//! same horizon: a prefix of it, never a sample. A standby that lags (or is paused) shows a
//! shorter prefix; a runner holding a checkpoint beyond that prefix reads an empty page and
//! waits, and never moves its checkpoint on what the standby does not have yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chronik_core::{ExpectedVersion, FeedCursor, NewEvent, StreamId, Version};
use chronik_store::{
    AppendResult, Checkpoint, CheckpointStore, EventStore, EventStream, FeedFilter, FeedHead,
    FeedPage, PayloadStream, SessionFuture, StoreError, StreamAppend,
};
use futures::TryStreamExt as _;
use sqlx::{Row, SqlStr};
use uuid::Uuid;

use crate::config::PgStoreConfig;
use crate::error::backend;
use crate::row::{self, to_u64};
use crate::store::{PgEventStore, check_limit, endpoint};

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A hot standby (a streaming replica in recovery) of a store's primary, for a projection
/// runner to read the feed from while it writes its read model and checkpoint to the
/// primary ([`PgProjectionRunner::with_standby`](crate::PgProjectionRunner::with_standby)).
///
/// Contract: every feed page comes from one read-only `REPEATABLE READ` transaction on the
/// standby whose snapshot was taken during recovery (checked in that transaction: a
/// standby that was promoted is refused, since its history may have left the primary's);
/// before its first page it checks that the standby replicates the primary (the same
/// `system_identifier`, when the role may read it, and the same database name). Cloning is
/// cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct PgStandby {
    store: PgEventStore,
    endpoint: Arc<str>,
    /// Whether it was checked against the primary (once per standby, not per page).
    checked: Arc<AtomicBool>,
}

/// How far a hot standby is behind its primary, from [`PgStandby::lag`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StandbyLag {
    /// WAL bytes the primary has written that the standby has not replayed
    /// (`pg_current_wal_lsn()` on the primary, read after the standby's
    /// `pg_last_wal_replay_lsn()`).
    pub bytes: u64,
    /// Seconds since the last transaction the standby replayed committed on the primary
    /// (`now() - pg_last_xact_replay_timestamp()` on the standby), `0` when it has replayed
    /// everything (`bytes == 0`), `None` when it has replayed no transaction since it
    /// started. Compares two servers' clocks.
    pub seconds: Option<f64>,
    /// Whether replay is paused (`pg_wal_replay_pause()`): the standby falls behind until
    /// `pg_wal_replay_resume()`.
    pub paused: bool,
    /// The standby's last replayed WAL position, e.g. `0/3000148`.
    pub replay_lsn: String,
    /// The primary's current WAL position.
    pub primary_lsn: String,
}

impl PgStandby {
    /// Connects to the standby at `url` with `config` (use the primary's schema) and checks
    /// that it is in recovery. The URL is never included in errors or logs.
    ///
    /// # Errors
    /// As [`PgEventStore::connect_with`]; [`StoreError::InvalidRequest`] when the server is
    /// not in recovery (a primary, or a promoted standby).
    pub async fn connect(url: &str, config: PgStoreConfig) -> Result<Self, StoreError> {
        Self::from_store(PgEventStore::connect_with(url, config).await?).await
    }

    /// A standby reached through `store` (its pool and schema), checked to be in recovery.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] when the server is not in recovery;
    /// [`StoreError::Backend`].
    pub async fn from_store(store: PgEventStore) -> Result<Self, StoreError> {
        let endpoint: Arc<str> = endpoint(&store.pool().connect_options()).into();
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(store.pool())
            .await
            .map_err(backend)?;
        if !in_recovery {
            return Err(StoreError::InvalidRequest(format!(
                "the server at {endpoint} is not a hot standby (pg_is_in_recovery() is false): \
                 give the URL of a streaming replica of the primary, or read from the primary \
                 itself"
            )));
        }
        Ok(Self {
            store,
            endpoint,
            checked: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Where it is, `host:port` (never the user or password), as status rows and messages
    /// name it.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The standby as a store, for reads of your own (it refuses every write).
    #[must_use]
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// Checks that this standby replicates `primary`: the same cluster
    /// (`pg_control_system().system_identifier`, skipped with a warning when the role may not
    /// call it: grant it `EXECUTE` on that function, or `pg_monitor`), the same database
    /// and the same schema name. Run once before the first page is read.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming what differs; [`StoreError::Backend`].
    pub async fn check_replicates(&self, primary: &PgEventStore) -> Result<(), StoreError> {
        if self.store.schema() != primary.schema() {
            return Err(StoreError::InvalidRequest(format!(
                "the standby at {} is configured for schema {}, the primary for schema {}: \
                 give both the same schema",
                self.endpoint,
                self.store.schema(),
                primary.schema()
            )));
        }
        let database = "SELECT current_database()::text";
        let ours: String = sqlx::query_scalar(database)
            .fetch_one(self.store.pool())
            .await
            .map_err(backend)?;
        let theirs: String = sqlx::query_scalar(database)
            .fetch_one(primary.pool())
            .await
            .map_err(backend)?;
        if ours != theirs {
            return Err(StoreError::InvalidRequest(format!(
                "the standby URL names database {ours}, the primary's database {theirs}: \
                 a standby-fed runner must read the primary's own database on its standby"
            )));
        }
        match (
            system_identifier(&self.store).await?,
            system_identifier(primary).await?,
        ) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                Err(StoreError::InvalidRequest(format!(
                    "the server at {} does not replicate the primary (system identifier {ours}, \
                     the primary's {theirs}): give the URL of a standby made from this primary \
                     (pg_basebackup)",
                    self.endpoint
                )))
            }
            (Some(_), Some(_)) => Ok(()),
            _ => {
                tracing::warn!(
                    standby = %self.endpoint,
                    "cannot check that the standby replicates the primary: pg_control_system() \
                     needs superuser, pg_monitor or EXECUTE on it; checked the database name only"
                );
                Ok(())
            }
        }
    }

    /// One feed page after `after` (and, with `want_head`, the last cursor of the standby's
    /// feed in the same snapshot), read in one read-only `REPEATABLE READ` transaction
    /// whose snapshot is checked to be a recovery snapshot.
    pub(crate) async fn read_page(
        &self,
        primary: &PgEventStore,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
        want_head: bool,
    ) -> Result<(Option<FeedCursor>, FeedPage), StoreError> {
        if !self.checked.load(Ordering::Acquire) {
            self.check_replicates(primary).await?;
            self.checked.store(true, Ordering::Release);
        }
        let limit = check_limit(limit)?;
        let sql = &self.store.sql;
        let mut tx = self.store.pool().begin().await.map_err(backend)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // The first statement takes the transaction's snapshot; `pg_is_in_recovery()` is
        // evaluated after it, so `true` means the snapshot was taken during recovery.
        let row = sqlx::query(sql.standby_horizon.clone())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let in_recovery: bool = row.try_get(0).map_err(backend)?;
        if !in_recovery {
            return Err(StoreError::backend(
                format!(
                    "the standby at {} was promoted (it is no longer in recovery): a runner never \
                     reads a promoted standby, whose history may have left the primary's; point \
                     the runner at a standby of the current primary, or drop the standby to \
                     read from the primary",
                    self.endpoint
                ),
                false,
            ));
        }
        let horizon = to_u64(row.try_get(1).map_err(backend)?, "standby horizon")?;
        if horizon <= after.transaction() {
            // Behind the checkpoint: the page would be empty; say why, and wait.
            tracing::debug!(standby = %self.endpoint, horizon, %after, "the standby has not replayed up to the checkpoint yet");
        }
        let head = if want_head {
            sqlx::query(sql.feed_last.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .map(|r| -> Result<FeedCursor, StoreError> {
                    Ok(FeedCursor::new(
                        to_u64(r.try_get(0).map_err(backend)?, "transaction id")?,
                        to_u64(r.try_get(1).map_err(backend)?, "position")?,
                    )?)
                })
                .transpose()?
        } else {
            None
        };
        let (txid, position) = PgEventStore::cursor_params(after);
        let query = if filter.event_types.is_empty() && filter.categories.is_empty() {
            sqlx::query(sql.read_feed.clone())
                .bind(txid)
                .bind(position)
                .bind(limit)
        } else {
            sqlx::query(sql.read_feed_filtered.clone())
                .bind(txid)
                .bind(position)
                .bind(limit)
                .bind(&filter.event_types)
                .bind(&filter.categories)
        };
        let events: Vec<_> = query
            .fetch(&mut *tx)
            .map_err(backend)
            .and_then(|row| futures::future::ready(row::recorded(&row)))
            .try_collect()
            .await?;
        tx.rollback().await.map_err(backend)?;
        let next = events.last().map_or(after, |e| e.cursor);
        Ok((head, FeedPage { events, next }))
    }

    /// How far this standby is behind `primary`: WAL bytes not replayed, seconds since the
    /// last replayed commit, whether replay is paused.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] when the standby is no longer in recovery;
    /// [`StoreError::Backend`] (e.g. `primary` is itself in recovery).
    pub async fn lag(&self, primary: &PgEventStore) -> Result<StandbyLag, StoreError> {
        // The standby first, then the primary: the difference is never negative.
        let row = sqlx::query(STANDBY_LAG)
            .fetch_one(self.store.pool())
            .await
            .map_err(backend)?;
        let in_recovery: bool = row.try_get(0).map_err(backend)?;
        if !in_recovery {
            return Err(StoreError::InvalidRequest(format!(
                "the standby at {} is no longer in recovery (promoted)",
                self.endpoint
            )));
        }
        let replay_lsn: Option<String> = row.try_get(1).map_err(backend)?;
        let since_commit: Option<f64> = row.try_get(2).map_err(backend)?;
        let paused: Option<bool> = row.try_get(3).map_err(backend)?;
        let primary_lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(primary.pool())
            .await
            .map_err(backend)?;
        let replay_lsn = replay_lsn.unwrap_or_else(|| "0/0".to_owned());
        let bytes = lsn(&primary_lsn)?.saturating_sub(lsn(&replay_lsn)?);
        Ok(StandbyLag {
            bytes,
            seconds: if bytes == 0 {
                Some(0.0)
            } else {
                since_commit.map(|s| s.max(0.0))
            },
            paused: paused.unwrap_or(false),
            replay_lsn,
            primary_lsn,
        })
    }
}

impl PgStandby {
    /// `primary`'s store with its feed read from this standby, for runners on the generic
    /// engine (`chronik_projections::ProjectionRunner`, and so the NATS relay): see
    /// [`PgStandbyFeed`].
    #[must_use]
    pub fn feed_of(&self, primary: PgEventStore) -> PgStandbyFeed {
        PgStandbyFeed {
            primary,
            standby: self.clone(),
        }
    }
}

/// A primary's store whose feed is read from a hot standby of it ([`PgStandby::feed_of`]):
/// what a runner of the generic engine (the NATS relay) is given to leave the feed reads to
/// the standby, as [`PgProjectionRunner::with_standby`](crate::PgProjectionRunner::with_standby)
/// does for the exactly-once runner.
///
/// Contract: [`EventStore::read_feed`] reads each page on the standby as
/// [`PgProjectionRunner::with_standby`](crate::PgProjectionRunner::with_standby) does (one
/// read-only recovery snapshot, a prefix of the primary's feed, so still gap-free; a
/// promoted standby, another cluster or another database is refused), and
/// [`EventStore::feed_head`] is the standby's head, never beyond what its pages can return
/// (a filtered runner may advance its checkpoint to it). Everything else goes to the
/// primary: appends, stream reads, [`EventStore::count_after`] (so a runner's lag counts
/// what the standby has not replayed yet) and every checkpoint. A standby that lags or is
/// paused makes the runner wait, never skip. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct PgStandbyFeed {
    primary: PgEventStore,
    standby: PgStandby,
}

impl PgStandbyFeed {
    /// The primary's store.
    #[must_use]
    pub fn primary(&self) -> &PgEventStore {
        &self.primary
    }

    /// The standby the feed is read from.
    #[must_use]
    pub fn standby(&self) -> &PgStandby {
        &self.standby
    }
}

impl EventStore for PgStandbyFeed {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        self.primary.append(stream, expected, events)
    }

    fn append_streams(
        &self,
        appends: &[StreamAppend],
    ) -> impl Future<Output = Result<Vec<AppendResult>, StoreError>> + Send {
        self.primary.append_streams(appends)
    }

    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
        self.primary.read_stream(stream, from)
    }

    fn read_payloads(&self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        self.primary.read_payloads(stream, from)
    }

    fn session(&self) -> SessionFuture<'_> {
        self.primary.session()
    }

    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send {
        self.primary.stream_version(stream)
    }

    async fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let (_, page) = self
            .standby
            .read_page(&self.primary, after, filter, limit, false)
            .await?;
        Ok(page)
    }

    fn feed_head(&self) -> impl Future<Output = Result<FeedHead, StoreError>> + Send {
        // The standby's: its feed is a prefix of the primary's, and a promoted standby
        // makes the next page fail before anything is applied.
        self.standby.store.feed_head()
    }

    fn feed_last(&self) -> impl Future<Output = Result<Option<FeedCursor>, StoreError>> + Send {
        // The standby's, as `feed_head`.
        EventStore::feed_last(&self.standby.store)
    }

    fn count_after(
        &self,
        after: FeedCursor,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.primary.count_after(after)
    }
}

impl CheckpointStore for PgStandbyFeed {
    fn load_checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send {
        self.primary.load_checkpoint(name)
    }

    fn save_checkpoint(
        &self,
        name: &str,
        cursor: FeedCursor,
        events_processed: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.primary.save_checkpoint(name, cursor, events_processed)
    }

    fn delete_checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.primary.delete_checkpoint(name)
    }

    fn list_checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send {
        self.primary.list_checkpoints()
    }
}

/// What the standby says about its replay, in one statement (the pause state only during
/// recovery, where the function may be called).
const STANDBY_LAG: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
     extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END";

/// `system_identifier` of the cluster behind `store`, `None` when the role may not read it.
async fn system_identifier(store: &PgEventStore) -> Result<Option<String>, StoreError> {
    match sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
        .fetch_one(store.pool())
        .await
    {
        Ok(id) => Ok(Some(id)),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
            Ok(None)
        }
        Err(e) => Err(backend(e)),
    }
}

/// A WAL position `X/Y` (two hexadecimal halves) as a byte offset.
fn lsn(text: &str) -> Result<u64, StoreError> {
    let bad = || StoreError::backend(format!("malformed WAL position {text:?}"), false);
    let (high, low) = text.split_once('/').ok_or_else(bad)?;
    let high = u64::from_str_radix(high, 16).map_err(|_| bad())?;
    let low = u64::from_str_radix(low, 16).map_err(|_| bad())?;
    if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok((high << 32) | low)
}

/// Measures a standby-fed runner's replication lag into its own status row every `every`
/// (the runner's `lag_every`), for `doctor` ([`standby_reports`]).
#[derive(Debug)]
pub(crate) struct StandbyMeter {
    standby: PgStandby,
    every: Duration,
    last: Option<Instant>,
    /// Shared with the store's other projection statements: cloned per measure, a
    /// reference count.
    record: SqlStr,
}

impl StandbyMeter {
    /// `record` is the projections' `record_standby_lag` statement.
    pub(crate) fn new(standby: PgStandby, every: Duration, record: SqlStr) -> Self {
        Self {
            standby,
            every,
            last: None,
            record,
        }
    }

    /// Measures (when due: first, then every `every`) and records it in instance
    /// `instance`'s row of projection `name`. A failure is logged, never fatal: the
    /// runner's own reads report an unreachable standby.
    pub(crate) async fn refresh(&mut self, primary: &PgEventStore, name: &str, instance: Uuid) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let lag = match self.standby.lag(primary).await {
            Ok(lag) => lag,
            Err(e) => {
                tracing::warn!(projection = name, standby = %self.standby.endpoint, error = %e, "cannot measure the standby's replication lag");
                return;
            }
        };
        let result = sqlx::query(self.record.clone())
            .bind(name)
            .bind(instance)
            .bind(self.standby.endpoint())
            .bind(i64::try_from(lag.bytes).unwrap_or(i64::MAX))
            .bind(lag.seconds)
            .bind(lag.paused)
            .execute(primary.pool())
            .await;
        if let Err(e) = result {
            tracing::warn!(projection = name, error = %e, "cannot record the standby's replication lag");
        }
    }
}

/// A standby-fed runner's last measure of its standby, from [`standby_reports`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StandbyReport {
    /// The projection.
    pub projection: String,
    /// The runner instance (its status row).
    pub instance: Uuid,
    /// The standby it reads the feed from, `host:port`.
    pub standby: String,
    /// WAL bytes the standby had not replayed ([`StandbyLag::bytes`]); `None` before the
    /// first measure.
    pub lag_bytes: Option<u64>,
    /// Seconds behind ([`StandbyLag::seconds`]).
    pub lag_seconds: Option<f64>,
    /// Whether its replay was paused.
    pub paused: bool,
    /// How long ago it was measured, in seconds (`None`: never).
    pub measured_seconds_ago: Option<f64>,
}

/// Every live runner of `store`'s schema that reads the feed from a hot standby, with its
/// last measure of that standby's replication lag (recorded by the runner every
/// `lag_every`), by projection name. A runner that stopped or whose session is gone is not
/// listed.
///
/// # Errors
/// [`StoreError::Backend`].
pub async fn standby_reports(store: &PgEventStore) -> Result<Vec<StandbyReport>, StoreError> {
    let sql = crate::projection::ProjectionSql::new(store.schema());
    let rows = sqlx::query(sql.standby_reports.clone())
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| {
            let bytes: Option<i64> = r.try_get(3).map_err(backend)?;
            Ok(StandbyReport {
                projection: r.try_get(0).map_err(backend)?,
                instance: r.try_get(1).map_err(backend)?,
                standby: r.try_get(2).map_err(backend)?,
                lag_bytes: bytes.map(|b| to_u64(b, "standby lag")).transpose()?,
                lag_seconds: r.try_get(4).map_err(backend)?,
                paused: r
                    .try_get::<Option<bool>, _>(5)
                    .map_err(backend)?
                    .unwrap_or(false),
                measured_seconds_ago: r.try_get(6).map_err(backend)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::lsn;

    #[test]
    fn wal_positions_parse_as_byte_offsets() {
        assert_eq!(lsn("0/0").ok(), Some(0));
        assert_eq!(lsn("0/3000148").ok(), Some(0x0300_0148));
        assert_eq!(lsn("16/B374D848").ok(), Some((0x16 << 32) | 0xB374_D848));
        for bad in ["", "0", "x/1", "1/", "100000000/0", "0/-1"] {
            assert!(lsn(bad).is_err(), "{bad:?}");
        }
    }
}
