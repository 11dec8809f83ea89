//! A partitioned projection under chaos: up to three workers, each on a pool of its own
//! (its own sessions, as another process would have), share four partitions while workers
//! are killed (task aborted and every session of its pool closed, as a dead process's
//! are), stopped and started, and the faults kill their sessions too. The checker then
//! finds every committed event in the projection's table exactly once, each stream in
//! version order.

use std::sync::Arc;
use std::time::Duration;

use chronik_core::{FeedCursor, RecordedEvent};
use chronik_postgres::{
    HandlerError, PgEventStore, PgPartitionedRunner, PgProjection, PgStoreConfig, PgTransaction,
    PgWorkerHandle, RunnerOptions, wait_for_projection,
};
use chronik_projections::Partitions;
use chronik_projections::RunnerBuilder as _;
use chronik_store::EventStore as _;
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use sqlx::postgres::PgPoolOptions;

use crate::projection::{Injected, InjectedFaults};
use crate::world::{C, World, between};

/// The projection's name (its partitions' checkpoints are `torture_parts#<i>/4`).
pub(crate) const NAME: &str = "torture_parts";

/// How many partitions it runs as.
pub(crate) const PARTITIONS: u32 = 4;

/// Its table: `seq` is the order of application (a sequence: partitions apply in
/// parallel), `event_id` not unique so that a double application is visible.
pub(crate) const TABLE_DDL: &str = "
CREATE TABLE torture_partitioned (
    seq       bigserial PRIMARY KEY,
    stream_id text   NOT NULL,
    version   bigint NOT NULL,
    event_id  uuid   NOT NULL
);
";

/// Records `(seq, stream, version, event id)` for every event, in the batch's transaction;
/// fails one call in `fail_one_in` (a panic every other time), after its write.
#[derive(Debug)]
pub(crate) struct PartitionedProjection {
    faults: InjectedFaults,
    world: Arc<World>,
}

impl PartitionedProjection {
    pub(crate) fn new(world: Arc<World>, fail_one_in: u64) -> Self {
        Self {
            faults: InjectedFaults::new(fail_one_in),
            world,
        }
    }

    /// Stops injecting handler failures (for the final catch-up).
    pub(crate) fn disable_failures(&self) {
        self.faults.disable();
    }
}

impl PgProjection for PartitionedProjection {
    fn name(&self) -> &str {
        NAME
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO torture_partitioned (stream_id, version, event_id) VALUES ($1, $2, $3)",
        )
        .bind(event.stream_id.as_str())
        .bind(event.version.as_i64())
        .bind(event.event_id.as_uuid())
        .execute(&mut **tx)
        .await?;
        match self.faults.next(&self.world) {
            Some(Injected::Panic) => panic!("injected handler panic"),
            Some(Injected::Failure) => Err(HandlerError::new("injected handler failure")),
            None => Ok(()),
        }
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM torture_partitioned")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn options(rng: &mut ChaCha8Rng) -> RunnerOptions {
    RunnerOptions {
        batch_size: [1, 7, 50, 200][rng.gen_range(0..4)],
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(100),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(200),
        standby_poll: Duration::from_millis(50),
        listen_channel: None,
        ..RunnerOptions::default()
    }
}

/// A worker and the store (pool) it alone uses.
struct Worker {
    handle: PgWorkerHandle,
    store: PgEventStore,
}

/// A store on a pool of `max` sessions of its own (as another process would have), made
/// from `like`'s connection options; `None` (with a warning naming `whose`) when it cannot
/// connect for now (a fault).
pub(crate) async fn own_pool(like: &PgEventStore, max: u32, whose: &str) -> Option<PgEventStore> {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_with(like.pool().connect_options().as_ref().clone())
        .await;
    match pool {
        Ok(pool) => Some(PgEventStore::from_pool_with(
            pool,
            &PgStoreConfig::default(),
        )),
        Err(e) => {
            eprintln!("warning: cannot open {whose}'s pool: {e}");
            None
        }
    }
}

/// Starts a worker on a pool of its own, made from `like`'s connection options.
async fn start(
    like: &PgEventStore,
    projection: &Arc<PartitionedProjection>,
    options: RunnerOptions,
    world: &World,
) -> Option<Worker> {
    let store = own_pool(like, 6, "a partitioned worker").await?;
    let partitions = Partitions::new(PARTITIONS).ok()?;
    let spawned = PgPartitionedRunner::new(store.clone(), Arc::clone(projection), partitions)
        .with_options(options)
        .spawn()
        .await;
    match spawned {
        Ok(handle) => {
            world.counts.inc(C::partition_workers_started);
            Some(Worker { handle, store })
        }
        Err(e) => {
            // A fault may have killed the session it checked the layout on: not a finding.
            eprintln!("warning: cannot spawn a partitioned worker: {e}");
            store.pool().close().await;
            None
        }
    }
}

/// Kills `w` as a process death would: its task is aborted, then every session of its pool
/// ends (its open batches roll back, its locks are released).
async fn kill(w: Worker) {
    w.handle.abort().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), w.store.pool().close()).await;
}

/// Runs one to three workers until the run ends: kills, stops and starts them.
pub(crate) async fn worker_chaos(
    world: Arc<World>,
    like: PgEventStore,
    projection: Arc<PartitionedProjection>,
) {
    let mut rng = world.rng("partition-workers", 0);
    let mut workers: Vec<Worker> = Vec::new();
    for _ in 0..2 {
        workers.extend(start(&like, &projection, options(&mut rng), &world).await);
    }
    let every = world.plan.kill_every * 4;
    while world.pause(between(&mut rng, every / 4, every)).await {
        match rng.gen_range(0..100) {
            0..40 if !workers.is_empty() => {
                let w = workers.swap_remove(rng.gen_range(0..workers.len()));
                kill(w).await;
                world.counts.inc(C::partition_workers_killed);
            }
            40..60 if !workers.is_empty() => {
                let w = workers.swap_remove(rng.gen_range(0..workers.len()));
                let _ = tokio::time::timeout(Duration::from_secs(10), w.handle.stop()).await;
                w.store.pool().close().await;
                world.counts.inc(C::partition_workers_stopped);
            }
            60..90 if workers.len() < 3 => {
                workers.extend(start(&like, &projection, options(&mut rng), &world).await);
            }
            _ => {}
        }
        if workers.is_empty() {
            workers.extend(start(&like, &projection, options(&mut rng), &world).await);
        }
    }
    for w in workers {
        kill(w).await;
    }
}

/// Runs one worker (failures off) until every partition has reached the feed's end, then
/// stops it; returns why not, if it did not get there within `timeout`.
pub(crate) async fn catch_up(
    world: &World,
    store: &PgEventStore,
    projection: &Arc<PartitionedProjection>,
    timeout: Duration,
) -> Result<(), String> {
    projection.disable_failures();
    let settle = RunnerOptions {
        batch_size: 500,
        ..options(&mut world.rng("final-worker", 0))
    };
    let worker = start(store, projection, settle, world)
        .await
        .ok_or_else(|| "cannot start the final partitioned worker".to_owned())?;
    let head = store
        .feed_head()
        .await
        .map_err(|e| format!("cannot read the feed's head: {e}"))?
        .last
        .unwrap_or(FeedCursor::START);
    let reached = wait_for_projection(store, NAME, head, timeout).await;
    let status = worker.handle.status();
    let partitions = worker.handle.partitions();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker.handle.stop()).await;
    worker.store.pool().close().await;
    reached.map(|_| ()).map_err(|e| {
        format!(
            "the partitioned projection did not reach the feed's end {head}: {e}; worker \
             {status:?}, partitions {partitions:?}"
        )
    })
}
