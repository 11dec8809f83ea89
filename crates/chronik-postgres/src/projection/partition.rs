//! Partitioned projections: one projection applied as `N` partitions by any number of
//! worker processes, each partition owned by exactly one worker at a time.
//!
//! - **Assignment.** An event belongs to partition
//!   [`stream_hash`](chronik_projections::stream_hash)`(stream id) % N`, computed in the
//!   database when a partition reads the feed; each partition has its own checkpoint
//!   (`<name>#<index>/<N>`), so per-stream order holds within it.
//! - **Ownership.** A worker holds one dedicated session. On it, it holds the workers' key
//!   in shared mode (the holders are the live workers) and, for each partition it owns,
//!   that partition's advisory lock. A worker whose process dies, or whose session is cut,
//!   loses every lock with the session.
//! - **Balance.** Every `standby_poll`, each worker counts the live workers `W`, finds its
//!   rank `r` among their pids, and aims at `N / W` partitions, one more when
//!   `r < N % W` (the shares add up to `N`). Above its share it releases its
//!   highest-numbered partitions (after their current batch); below it, it takes free
//!   ones. A dead worker's partitions are free as soon as its session ends, and are taken
//!   within one `standby_poll`.
//! - **Exactly once** holds as for a single runner: every batch locks its partition's
//!   checkpoint row, reads after it and commits the read model and the checkpoint together,
//!   so even a worker that lost its lock a moment ago cannot apply an event twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chronik_core::UpcasterRegistry;
use chronik_projections::{
    Partitions, ProjectionError, ProjectionName, ProjectionStatus, RunnerBuilder, RunnerConfig,
    RunnerHandle, RunnerOptions,
};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use super::handler::PgProjection;
use super::layout;
use super::runner::{Engine, SessionInfo, spawn_task, validate};
use super::sql::{ProjectionSql, lock_key, workers_key};
use crate::error::backend;
use crate::parking::PgParkingLot;
use crate::store::PgEventStore;

/// Runs one [`PgProjection`] as a worker of its `N` partitions: spawn one in every
/// process that should share the work (see the module documentation of
/// `chronik_postgres::projection` and docs/projections.md).
///
/// Contract: every worker of a projection must use the same [`Partitions`]; a worker
/// started with another count than the stored checkpoints were written with refuses
/// ([`ProjectionError::PartitionsChanged`]). Options are those of a single runner;
/// `standby_poll` is also how often a worker rebalances, so it bounds the takeover of a
/// dead worker's partitions.
#[derive(Debug)]
pub struct PgPartitionedRunner<P> {
    store: PgEventStore,
    projection: Arc<P>,
    partitions: Partitions,
    config: RunnerConfig,
}

/// Its options are for every partition this worker runs.
impl<P> RunnerBuilder for PgPartitionedRunner<P> {
    fn config_mut(&mut self) -> &mut RunnerConfig {
        &mut self.config
    }
}

impl<P: PgProjection> PgPartitionedRunner<P> {
    /// A worker of `projection` split into `partitions`, with default options and no
    /// upcasting.
    pub fn new(store: PgEventStore, projection: Arc<P>, partitions: Partitions) -> Self {
        Self {
            store,
            projection,
            partitions,
            config: RunnerConfig::default(),
        }
    }

    /// Checks the stored layout, creates the partitions' checkpoints when they are missing,
    /// and spawns the worker on the current tokio runtime.
    ///
    /// # Errors
    /// [`ProjectionError::PartitionsChanged`] when the projection's checkpoints were
    /// written with another number of partitions (rebuild it first); an invalid name or
    /// options; store failures. Nothing is spawned then.
    pub async fn spawn(self) -> Result<PgWorkerHandle, ProjectionError> {
        let name = self.projection.name().to_owned();
        ProjectionName::new(name.as_str())?;
        for partition in layout::names(&name, self.partitions) {
            ProjectionName::new(partition)?;
        }
        let RunnerConfig { options, upcasters } = self.config;
        validate(&options)?;
        let sql = Arc::new(ProjectionSql::new(self.store.schema()));
        layout::ensure(&self.store, &sql, &name, self.partitions).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            status: watch::Sender::new(PgWorkerStatus {
                projection: name.clone(),
                partitions: self.partitions,
                pid: None,
                application_name: None,
                workers: 0,
                share: 0,
                owned: Vec::new(),
                last_error: None,
                stopped: false,
            }),
            partitions: Mutex::new(BTreeMap::new()),
        });
        let worker = Worker {
            projection: self.projection,
            upcasters,
            options,
            parking: Arc::new(PgParkingLot::new(self.store.clone())),
            store: self.store,
            layout: self.partitions,
            name,
            sql,
            session: None,
            owned: BTreeMap::new(),
            shared: Arc::clone(&shared),
            stop: stop_rx,
        };
        Ok(PgWorkerHandle {
            stop: stop_tx,
            shared,
            task: tokio::spawn(worker.run()),
        })
    }
}

/// What a partitioned worker is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgWorkerStatus {
    /// The projection.
    pub projection: String,
    /// Its number of partitions.
    pub partitions: Partitions,
    /// Backend pid of the worker's lock session (`None` while it has none).
    pub pid: Option<i32>,
    /// `application_name` of that session.
    pub application_name: Option<String>,
    /// Live workers of the projection when it last counted, itself included.
    pub workers: usize,
    /// How many partitions it aims to own.
    pub share: u32,
    /// The partitions it owns, ascending.
    pub owned: Vec<u32>,
    /// Its last error (cleared by the next round that succeeds).
    pub last_error: Option<String>,
    /// It has stopped (gracefully, or its task was aborted).
    pub stopped: bool,
}

#[derive(Debug)]
struct Shared {
    status: watch::Sender<PgWorkerStatus>,
    /// The live status of each owned partition's task.
    partitions: Mutex<BTreeMap<u32, watch::Receiver<ProjectionStatus>>>,
}

/// Controls a spawned [`PgPartitionedRunner`].
#[derive(Debug)]
pub struct PgWorkerHandle {
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl PgWorkerHandle {
    /// The worker's current status.
    #[must_use]
    pub fn status(&self) -> PgWorkerStatus {
        self.shared.status.borrow().clone()
    }

    /// A live view of the worker's status.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<PgWorkerStatus> {
        self.shared.status.subscribe()
    }

    /// The status of each partition this worker owns now (checkpoint, state, lag, errors),
    /// by index.
    #[must_use]
    pub fn partitions(&self) -> BTreeMap<u32, ProjectionStatus> {
        self.shared
            .partitions
            .lock()
            .map(|m| m.iter().map(|(i, r)| (*i, r.borrow().clone())).collect())
            .unwrap_or_default()
    }

    /// Sends the stop signal without waiting.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Graceful shutdown: each owned partition's current batch commits, then the session
    /// (and every lock on it) is closed; returns the final status.
    pub async fn stop(self) -> PgWorkerStatus {
        self.stop.send_replace(true);
        if let Err(e) = self.task.await {
            self.shared.status.send_modify(|s| {
                s.stopped = true;
                s.last_error = Some(format!("worker task ended abnormally: {e}"));
            });
        }
        self.shared.status.borrow().clone()
    }

    /// Kills the worker as a crash would: its partitions' tasks are cancelled (their open
    /// batches roll back) and its session closes, releasing its partitions to the other
    /// workers.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
        self.shared.status.send_modify(|s| {
            s.stopped = true;
            s.owned.clear();
        });
    }
}

/// An owned partition's task: cancelled when dropped (a worker that dies takes its
/// partitions' tasks with it), stopped gracefully by [`Worker::release`].
struct Owned {
    handle: Option<RunnerHandle>,
    task: AbortHandle,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The worker's dedicated session and who it is.
struct Session {
    conn: PgConnection,
    info: SessionInfo,
    application_name: Option<String>,
}

struct Worker<P> {
    store: PgEventStore,
    projection: Arc<P>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    options: RunnerOptions,
    /// Where park decisions are recorded through a partition's handle.
    parking: Arc<dyn chronik_projections::ParkingLot>,
    layout: Partitions,
    name: String,
    sql: Arc<ProjectionSql>,
    session: Option<Session>,
    owned: BTreeMap<u32, Owned>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl<P: PgProjection> Worker<P> {
    async fn run(mut self) {
        while !*self.stop.borrow() {
            match self.round().await {
                Ok(()) => self.shared.status.send_modify(|s| s.last_error = None),
                Err(e) => {
                    tracing::warn!(projection = %self.name, error = %e, "partitioned worker");
                    if matches!(e, ProjectionError::PartitionsChanged { .. }) {
                        // Someone rebuilt it with another layout: own nothing of this one.
                        self.release_all().await;
                    }
                    self.shared
                        .status
                        .send_modify(|s| s.last_error = Some(e.to_string()));
                }
            }
            self.publish();
            let pause = self.options.standby_poll;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = self.stop.wait_for(|s| *s) => break,
            }
        }
        self.release_all().await;
        if let Some(s) = self.session.take() {
            let _ = s.conn.close().await;
        }
        self.shared.status.send_modify(|s| {
            s.pid = None;
            s.owned.clear();
            s.stopped = true;
        });
    }

    /// Publishes what it owns and who it is.
    fn publish(&self) {
        let owned: Vec<u32> = self.owned.keys().copied().collect();
        let pid = self.session.as_ref().map(|s| s.info.pid);
        let app = self
            .session
            .as_ref()
            .and_then(|s| s.application_name.clone());
        self.shared.status.send_modify(|s| {
            s.owned = owned;
            s.pid = pid;
            s.application_name = app;
        });
    }

    /// One round: keep the session, count the workers, release or take partitions.
    async fn round(&mut self) -> Result<(), ProjectionError> {
        self.reap().await;
        if let Some(s) = self.session.as_mut()
            && s.conn.ping().await.is_err()
        {
            // Its locks went with it: another worker may own those partitions now.
            tracing::warn!(projection = %self.name, "the worker's session was lost; its partitions are released");
            self.session = None;
            self.release_all().await;
        }
        if self.session.is_none() {
            self.session = Some(self.connect().await?);
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let me = session.info.pid;
        let pids: Vec<i32> = sqlx::query_scalar(self.sql.shared_holders)
            .bind(workers_key(self.store.schema(), &self.name))
            .fetch_all(&mut session.conn)
            .await
            .map_err(backend)?;
        let (workers, rank) = match pids.iter().position(|p| *p == me) {
            Some(rank) => (pids.len(), rank),
            None => (pids.len() + 1, pids.len()),
        };
        let share = share(self.layout.get(), workers, rank);
        self.shared.status.send_modify(|s| {
            s.workers = workers;
            s.share = share;
        });
        while self.owned.len() > share as usize {
            let Some(&last) = self.owned.keys().next_back() else {
                break;
            };
            self.release(last).await;
        }
        if self.owned.len() < share as usize {
            // Someone may have rebuilt the projection with another layout meanwhile.
            layout::ensure(&self.store, &self.sql, &self.name, self.layout).await?;
            self.claim(share, rank, workers).await?;
        }
        Ok(())
    }

    /// Opens the worker's session and joins the projection's workers on it.
    async fn connect(&self) -> Result<Session, ProjectionError> {
        let engine = self.engine(0);
        let mut conn = engine.lock_session().await?;
        let info = engine.session_info(&mut conn).await?;
        sqlx::query(self.sql.shared_lock)
            .bind(workers_key(self.store.schema(), &self.name))
            .execute(&mut conn)
            .await
            .map_err(backend)?;
        let application_name: Option<String> =
            sqlx::query_scalar("SELECT current_setting('application_name')")
                .fetch_one(&mut conn)
                .await
                .map_err(backend)?;
        Ok(Session {
            conn,
            info,
            application_name: application_name.filter(|a| !a.is_empty()),
        })
    }

    /// Takes free partitions until it owns `share`, starting where its rank's share would
    /// begin (so that workers starting together try different partitions first).
    async fn claim(
        &mut self,
        share: u32,
        rank: usize,
        workers: usize,
    ) -> Result<(), ProjectionError> {
        let n = self.layout.get();
        let first = u32::try_from(rank).unwrap_or(0) * n / u32::try_from(workers).unwrap_or(1);
        for k in 0..n {
            if self.owned.len() >= share as usize {
                break;
            }
            let index = (first + k) % n;
            if self.owned.contains_key(&index) {
                continue;
            }
            let Some(session) = self.session.as_mut() else {
                return Ok(());
            };
            let key = lock_key(
                self.store.schema(),
                &self.layout.checkpoint_name(&self.name, index),
            );
            let got: bool = sqlx::query_scalar(self.sql.try_lock)
                .bind(key)
                .fetch_one(&mut session.conn)
                .await
                .map_err(backend)?;
            if got {
                let owner = session.info.clone();
                let (stop, stopped) = watch::channel(false);
                let engine = self.engine(index);
                let task = spawn_task(engine, self.options.clone(), Some(owner), stopped);
                if let Ok(mut m) = self.shared.partitions.lock() {
                    m.insert(index, task.status.subscribe());
                }
                let owned = Owned {
                    task: task.join.abort_handle(),
                    handle: Some(RunnerHandle::new(
                        stop,
                        vec![task],
                        Arc::clone(&self.parking),
                    )),
                };
                self.owned.insert(index, owned);
                tracing::info!(projection = %self.name, partition = index, "took partition");
            }
        }
        Ok(())
    }

    /// The engine of partition `index`.
    fn engine(&self, index: u32) -> Engine<P> {
        let mut engine = Engine::new(
            &self.store,
            Arc::clone(&self.projection),
            self.upcasters.clone(),
        );
        engine.name = self.layout.checkpoint_name(&self.name, index);
        if self.layout.get() > 1 {
            engine.partition = Some((index, self.layout));
        }
        engine.check_layout = true;
        engine
    }

    /// Stops partition `index`'s task (its current batch commits), then lets its lock go.
    async fn release(&mut self, index: u32) {
        if let Some(mut owned) = self.owned.remove(&index)
            && let Some(handle) = owned.handle.take()
        {
            // A task that ended abnormally is shown crashed in its status; the partition is
            // released all the same.
            let _ = handle.stop().await;
        }
        if let Ok(mut m) = self.shared.partitions.lock() {
            m.remove(&index);
        }
        if let Some(session) = self.session.as_mut() {
            let key = lock_key(
                self.store.schema(),
                &self.layout.checkpoint_name(&self.name, index),
            );
            if let Err(e) = sqlx::query(self.sql.unlock)
                .bind(key)
                .execute(&mut session.conn)
                .await
            {
                tracing::warn!(projection = %self.name, partition = index, error = %e, "could not release the partition's lock; it goes with the session");
            }
        }
        tracing::info!(projection = %self.name, partition = index, "released partition");
    }

    async fn release_all(&mut self) {
        let owned: Vec<u32> = self.owned.keys().copied().collect();
        for index in owned {
            self.release(index).await;
        }
    }

    /// Releases the partitions whose task ended by itself, so that they are taken again.
    async fn reap(&mut self) {
        let ended: Vec<u32> = self
            .owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(i, _)| *i)
            .collect();
        for index in ended {
            tracing::warn!(projection = %self.name, partition = index, "the partition's task ended; releasing it");
            self.release(index).await;
        }
    }
}

/// The fair share of worker `rank` (0-based, by pid) of `workers` over `partitions`: the
/// shares of all ranks add up to `partitions` and differ by at most one.
fn share(partitions: u32, workers: usize, rank: usize) -> u32 {
    let w = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    partitions / w + u32::from(rank < partitions % w)
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for n in 1..=9 {
            for w in 1..=6 {
                let shares: Vec<u32> = (0..w).map(|r| share(n, w, r)).collect();
                assert_eq!(shares.iter().sum::<u32>(), n, "{n} over {w}: {shares:?}");
                let (lo, hi) = (shares.iter().min(), shares.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{shares:?}");
            }
        }
        assert_eq!([share(4, 3, 0), share(4, 3, 1), share(4, 3, 2)], [2, 1, 1]);
    }
}
