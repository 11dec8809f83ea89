//! Saying who a waiting session waits for: a statement queued behind a lock (a row another
//! transaction holds, a table an `ALTER` or `LOCK` holds, the migrator's advisory lock)
//! waits as long as the holder keeps it, without a word. [`wait_saying_who_blocks`] (every
//! operator command) and the rebuild's checkpoint lock run their work through one watchdog
//! that, after [`LOCK_PATIENCE`], names the sessions holding what it waits for
//! (`pg_blocking_pids`: pid, application, state, how long their transaction is open) and
//! the statement that ends each, then waits on.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chronik_store::StoreError;
use chrono::{DateTime, Utc};

use crate::error::backend;
use crate::store::PgEventStore;

/// How long a statement waits for a lock before the watchdog says who holds it.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(2);

pub use chronik_projections::OPERATOR_TARGET;

/// The sessions blocking backend `$1`, with what the role may see of them (pid always).
const HOLDERS_OF_PID: &str = "SELECT b.pid, a.application_name, a.state, \
     extract(epoch FROM now() - a.xact_start)::float8 \
     FROM unnest(pg_blocking_pids($1)) AS b(pid) \
     LEFT JOIN pg_stat_activity a ON a.pid = b.pid ORDER BY b.pid";

/// The sessions blocking any of the sessions `($1[i], $2[i])` (pid, backend start: a pid
/// the server gave to a later session is not ours).
const HOLDERS_OF_SESSIONS: &str = "SELECT DISTINCT b.pid, a.application_name, a.state, \
     extract(epoch FROM now() - a.xact_start)::float8 \
     FROM unnest($1::int4[], $2::timestamptz[]) AS s(pid, started) \
     JOIN pg_stat_activity w ON w.pid = s.pid AND w.backend_start = s.started \
     CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS b(pid) \
     LEFT JOIN pg_stat_activity a ON a.pid = b.pid ORDER BY b.pid";

/// A session holding a lock that a session of this store waits for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LockHolder {
    /// Its backend pid.
    pub pid: i32,
    /// Its `application_name` (`None` when empty or not visible to this role).
    pub application_name: Option<String>,
    /// Its state (`active`, `idle in transaction`, ...; `None` when not visible).
    pub state: Option<String>,
    /// How long its transaction has been open, in seconds (`None` when not visible).
    pub transaction_seconds: Option<f64>,
}

impl LockHolder {
    /// The statement that ends its session (`SELECT pg_terminate_backend(<pid>)`), shown to
    /// an operator, never run here. Ending it rolls its transaction back.
    #[must_use]
    pub fn how_to_end(&self) -> String {
        crate::horizon::terminate(self.pid)
    }
}

impl fmt::Display for LockHolder {
    /// `pid 4242 (billing-api, idle in transaction, transaction open 312 s; `SELECT
    /// pg_terminate_backend(4242)` ends it)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let app = self.application_name.as_deref().unwrap_or("?");
        let state = self.state.as_deref().unwrap_or("?");
        write!(f, "pid {} ({app}, {state}", self.pid)?;
        if let Some(s) = self.transaction_seconds {
            write!(f, ", transaction open {s:.0} s")?;
        }
        write!(f, "; `{}` ends it)", self.how_to_end())
    }
}

/// The holders, one phrase: `pid 1 (...), pid 2 (...)`.
pub(crate) fn describe(holders: &[LockHolder]) -> String {
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sessions a store's pool opened (pid, backend start), recorded as each connects:
/// whose waits [`PgEventStore::lock_holders`] looks up.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<Vec<(i32, DateTime<Utc>)>>);

impl Sessions {
    /// Records the session on `conn` (best effort: a session that cannot say who it is
    /// is only left out of the lookups).
    pub(crate) async fn record(self: &Arc<Self>, conn: &mut sqlx::PgConnection) {
        let me: Result<(i32, DateTime<Utc>), _> = sqlx::query_as(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(conn)
        .await;
        if let Ok(me) = me {
            let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            // A pool replaces its connections over a long life: keep the list bounded.
            if all.len() >= 1_024 {
                all.remove(0);
            }
            all.push(me);
        }
    }

    fn snapshot(&self) -> (Vec<i32>, Vec<DateTime<Utc>>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .unzip()
    }
}

/// Whose waits to look up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Waiter {
    /// One session, by pid (a rebuild's transaction).
    Session(i32),
    /// Every session of the store's pool.
    Store,
}

type HolderRow = (i32, Option<String>, Option<String>, Option<f64>);

/// The sessions blocking `waiter`, by pid.
pub(crate) async fn holders(
    store: &PgEventStore,
    waiter: Waiter,
) -> Result<Vec<LockHolder>, StoreError> {
    let rows: Vec<HolderRow> = match waiter {
        Waiter::Session(pid) => {
            sqlx::query_as(HOLDERS_OF_PID)
                .bind(pid)
                .fetch_all(store.pool())
                .await
        }
        Waiter::Store => {
            let (pids, started) = store.sessions.snapshot();
            if pids.is_empty() {
                return Ok(Vec::new());
            }
            sqlx::query_as(HOLDERS_OF_SESSIONS)
                .bind(pids)
                .bind(started)
                .fetch_all(store.pool())
                .await
        }
    }
    .map_err(backend)?;
    Ok(rows
        .into_iter()
        .map(|(pid, app, state, open)| LockHolder {
            pid,
            application_name: app.filter(|a| !a.is_empty()),
            state,
            transaction_seconds: open,
        })
        .collect())
}

/// Runs `work`; each [`LOCK_PATIENCE`] it has not finished, looks up who blocks `waiter`
/// and, when that is someone new, calls `say` with them and how long `work` has run. The
/// one watchdog of the crate: a lookup that fails is logged at debug and tried again.
pub(crate) async fn patiently<F: Future>(
    store: &PgEventStore,
    waiter: Waiter,
    mut say: impl FnMut(&[LockHolder], Duration),
    work: F,
) -> F::Output {
    let started = Instant::now();
    tokio::pin!(work);
    let mut said: Vec<i32> = Vec::new();
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep(LOCK_PATIENCE) => {}
        }
        let lookup = holders(store, waiter);
        tokio::pin!(lookup);
        let found = tokio::select! {
            out = &mut work => return out,
            found = &mut lookup => found,
        };
        match found {
            Ok(found) => {
                let pids: Vec<i32> = found.iter().map(|h| h.pid).collect();
                if !found.is_empty() && pids != said {
                    say(&found, started.elapsed());
                    said = pids;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read who holds the lock a session waits for");
            }
        }
    }
}

/// Runs `work` (anything on `store`'s sessions, e.g. an operator command) and, whenever one
/// of those sessions has waited [`LOCK_PATIENCE`] for a lock held by someone new, warns
/// (`tracing`, target [`OPERATOR_TARGET`]: on stderr for the CLI) that `what` waits, which sessions hold the lock
/// ([`LockHolder`]: pid, application, state, how long their transaction is open) and the
/// statement that ends each, then waits on: `work` is never cancelled.
///
/// Only sessions the pool of [`PgEventStore::connect_with`] opened are watched (a store
/// made with [`PgEventStore::from_pool`] watches none). The lookup is one query on the
/// pool, every [`LOCK_PATIENCE`] while `work` runs: wrap one-off work, not a service.
pub async fn wait_saying_who_blocks<F: Future>(
    store: &PgEventStore,
    what: &str,
    work: F,
) -> F::Output {
    patiently(
        store,
        Waiter::Store,
        |holders, waited| {
            tracing::warn!(
                target: OPERATOR_TARGET,
                "{what} has waited {} s for a lock held by {}: it goes on once the lock is free",
                waited.as_secs(),
                describe(holders)
            );
        },
        work,
    )
    .await
}

impl PgEventStore {
    /// The sessions holding locks that sessions of this store's pool wait for now (see
    /// [`wait_saying_who_blocks`]), by pid; empty when none waits.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn lock_holders(&self) -> Result<Vec<LockHolder>, StoreError> {
        holders(self, Waiter::Store).await
    }
}
