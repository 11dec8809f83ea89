use std::time::Duration;

use chronik_core::FeedCursor;
use chronik_store::StoreError;
use sqlx::Row;

use crate::error::backend;
use crate::row::to_u64;
use crate::store::PgEventStore;

/// First and largest pause between two horizon probes of [`PgEventStore::wait_for_feed`].
const PROBE_FIRST: Duration = Duration::from_millis(1);
const PROBE_MAX: Duration = Duration::from_millis(50);

/// What kind of transaction holds the feed's horizon back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HolderKind {
    /// A session with an open transaction that has written something (it has an xid).
    Session,
    /// A prepared (two-phase) transaction, waiting for `COMMIT PREPARED` / `ROLLBACK PREPARED`.
    Prepared,
}

/// A transaction that holds the feed's horizon back, from [`PgEventStore::horizon_holders`].
#[derive(Debug, Clone, PartialEq)]
pub struct HorizonHolder {
    /// Session or prepared transaction.
    pub kind: HolderKind,
    /// Backend process id (`None` for a prepared transaction).
    pub pid: Option<i32>,
    /// Database it runs in (any database of the cluster holds the horizon).
    pub database: Option<String>,
    /// Its transaction id (32-bit, as PostgreSQL's views show it).
    pub xid: i64,
    /// How long it has been open (or prepared), in seconds.
    pub age_seconds: Option<f64>,
    /// Session state and the start of its current query, or the prepared transaction's gid.
    pub detail: String,
}

impl PgEventStore {
    /// The feed's horizon: the oldest transaction id still running in the cluster. Every
    /// event of a transaction below it is final and visible in the feed; none above is.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn feed_horizon(&self) -> Result<u64, StoreError> {
        let h: i64 = sqlx::query_scalar(&self.sql.horizon)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        to_u64(h, "horizon")
    }

    /// The cursor of the newest committed event, visible in the feed or not yet
    /// (a running older transaction can hold it back). `None` for an empty store.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn newest_committed(&self) -> Result<Option<FeedCursor>, StoreError> {
        let row = sqlx::query(&self.sql.newest_committed)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| {
            let tx: i64 = r.try_get(0).map_err(backend)?;
            let pos: i64 = r.try_get(1).map_err(backend)?;
            Ok(FeedCursor::new(
                to_u64(tx, "transaction id")?,
                to_u64(pos, "position")?,
            ))
        })
        .transpose()
    }

    /// Waits until the event at `cursor` (typically an [`AppendResult::cursor`]) and
    /// everything before it is visible in the feed, that is until every transaction older
    /// than `cursor.transaction` has finished. Probes the horizon with a backoff of 1 to
    /// 50 ms; it waits as long as an older transaction stays open (wrap it in
    /// `tokio::time::timeout` to bound it, and see [`PgEventStore::horizon_holders`]).
    ///
    /// [`AppendResult::cursor`]: chronik_store::AppendResult::cursor
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn wait_for_feed(&self, cursor: FeedCursor) -> Result<(), StoreError> {
        let mut pause = PROBE_FIRST;
        while self.feed_horizon().await? <= cursor.transaction {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PROBE_MAX);
        }
        Ok(())
    }

    /// Every transaction in the cluster that holds the feed's horizon back, oldest first:
    /// open write transactions in any database, and prepared transactions. The first one
    /// is why projections are paused. Seeing other roles' queries needs `pg_read_all_stats`
    /// (or superuser); without it `detail` says `<insufficient privilege>`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn horizon_holders(&self) -> Result<Vec<HorizonHolder>, StoreError> {
        let rows = sqlx::query(&self.sql.horizon_holders)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(0).map_err(backend)?;
                Ok(HorizonHolder {
                    kind: if kind == "prepared" {
                        HolderKind::Prepared
                    } else {
                        HolderKind::Session
                    },
                    pid: r.try_get(1).map_err(backend)?,
                    database: r.try_get(2).map_err(backend)?,
                    xid: r.try_get(3).map_err(backend)?,
                    age_seconds: r.try_get(4).map_err(backend)?,
                    detail: r
                        .try_get::<Option<String>, _>(5)
                        .map_err(backend)?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }
}
