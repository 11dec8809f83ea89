//! The test projection (exactly-once, records the order it applied events in), the task
//! that aborts and restarts its runners, and the sampler that checks every checkpoint it
//! sees against the projection's table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chronik_core::{FeedCursor, RecordedEvent};
use chronik_postgres::{
    HandlerError, PgEventStore, PgProjection, PgProjectionRunner, PgTransaction, ProjectionState,
    RunnerOptions,
};
use chronik_projections::{RunnerBuilder as _, RunnerHandle};
use chronik_store::{CheckpointStore as _, EventStore as _};
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use sqlx::{PgPool, Row as _};
use tokio::time::Instant;

use crate::world::{C, World, between};

/// The projection's name (checkpoint and lock key).
pub(crate) const NAME: &str = "torture";

/// The projection's table; `seq` is the order of application, `event_id` is deliberately
/// not unique so that a double application is visible to the checker.
pub(crate) const TABLE_DDL: &str = "
CREATE TABLE torture_projection (
    seq       bigint PRIMARY KEY,
    stream_id text   NOT NULL,
    version   bigint NOT NULL,
    event_id  uuid   NOT NULL
);
CREATE INDEX torture_projection_event_id_idx ON torture_projection (event_id);
";

/// Records `(seq, stream, version, event id)` for every event, in the batch's transaction.
#[derive(Debug)]
pub(crate) struct TortureProjection {
    faults: InjectedFaults,
    world: Arc<World>,
}

impl TortureProjection {
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

/// What a torture handler injects into one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    /// The handler returns an error.
    Failure,
    /// The handler panics.
    Panic,
}

/// The handlers' injected faults: one call in `fail_one_in` fails (0: never), every other
/// one of those by a panic, each counted in the world's counters; off for the final
/// catch-up.
#[derive(Debug)]
pub(crate) struct InjectedFaults {
    calls: AtomicU64,
    fail_one_in: u64,
    enabled: AtomicBool,
}

impl InjectedFaults {
    pub(crate) fn new(fail_one_in: u64) -> Self {
        Self {
            calls: AtomicU64::new(0),
            fail_one_in,
            enabled: AtomicBool::new(fail_one_in > 0),
        }
    }

    pub(crate) fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// The fault for this call, if any (counted in `world`).
    pub(crate) fn next(&self, world: &World) -> Option<Injected> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.enabled.load(Ordering::Relaxed)
            || self.fail_one_in == 0
            || n % self.fail_one_in != self.fail_one_in - 1
        {
            return None;
        }
        world.counts.inc(C::handler_failures);
        if (n / self.fail_one_in) % 2 == 1 {
            world.counts.inc(C::handler_panics);
            Some(Injected::Panic)
        } else {
            Some(Injected::Failure)
        }
    }
}

impl TortureProjection {
    async fn insert(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO torture_projection (seq, stream_id, version, event_id) \
             SELECT coalesce(max(seq), 0) + 1, $1, $2, $3 FROM torture_projection",
        )
        .bind(event.stream_id.as_str())
        .bind(event.version.as_i64())
        .bind(event.event_id.as_uuid())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl PgProjection for TortureProjection {
    fn name(&self) -> &str {
        NAME
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        match self.faults.next(&self.world) {
            // A panic is thrown after the event's write, so that a runner which kept any
            // part of the batch would show a duplicate.
            Some(Injected::Panic) => {
                self.insert(tx, event).await?;
                panic!("injected handler panic");
            }
            Some(Injected::Failure) => Err(HandlerError::new("injected handler failure")),
            None => self.insert(tx, event).await,
        }
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM torture_projection")
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

fn spawn(
    store: &PgEventStore,
    projection: &Arc<TortureProjection>,
    options: RunnerOptions,
    world: &World,
) -> Option<RunnerHandle> {
    let runner = PgProjectionRunner::new(store.clone(), Arc::clone(projection))
        .with_options(options)
        .spawn();
    match runner {
        Ok(h) => {
            world.counts.inc(C::runner_starts);
            Some(h)
        }
        Err(e) => {
            eprintln!("warning: cannot spawn the projection runner: {e}");
            None
        }
    }
}

/// Runs projection runners, aborting (as a crash would), stopping and restarting them, and
/// sometimes running two at once (one in standby), until the run ends.
pub(crate) async fn runner_chaos(
    world: Arc<World>,
    store: PgEventStore,
    projection: Arc<TortureProjection>,
) {
    let mut rng = world.rng("runners", 0);
    let mut handles: Vec<RunnerHandle> = spawn(&store, &projection, options(&mut rng), &world)
        .into_iter()
        .collect();
    let every = world.plan.kill_every * 6;
    while world.pause(between(&mut rng, every / 4, every)).await {
        match rng.gen_range(0..100) {
            0..45 if !handles.is_empty() => {
                let h = handles.swap_remove(rng.gen_range(0..handles.len()));
                h.abort().await;
                world.counts.inc(C::runner_aborts);
            }
            45..70 if !handles.is_empty() => {
                let h = handles.swap_remove(rng.gen_range(0..handles.len()));
                if let Ok(stopped) = tokio::time::timeout(Duration::from_secs(10), h.stop()).await {
                    let crashed = match stopped {
                        Ok(s) => s
                            .into_iter()
                            .find(|s| s.state == ProjectionState::Crashed)
                            .map(|s| format!("{:?}", s.last_error)),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(why) = crashed {
                        world.runner_crash(why);
                    }
                }
                world.counts.inc(C::runner_stops);
            }
            70..85 if handles.len() < 2 => {
                handles.extend(spawn(&store, &projection, options(&mut rng), &world));
            }
            _ => {}
        }
        if handles.is_empty() {
            handles.extend(spawn(&store, &projection, options(&mut rng), &world));
        }
    }
    for h in handles {
        if let Some(s) = h.status(NAME)
            && s.state == ProjectionState::Crashed
        {
            world.runner_crash(format!("{:?}", s.last_error));
        }
        h.abort().await;
    }
}

/// Runs one runner until the checkpoint reaches the feed's end (every event applied), then
/// stops it. Returns the checkpoint, or why it did not get there: its checkpoint did not
/// move for `stall` (a long run can leave a backlog of hundreds of thousands of events: slow
/// is fine, stuck is not).
pub(crate) async fn catch_up(
    world: &World,
    store: &PgEventStore,
    projection: &Arc<TortureProjection>,
    stall: Duration,
) -> Result<Option<FeedCursor>, String> {
    projection.disable_failures();
    // Full batches: the backlog is drained, not tortured.
    let settle = RunnerOptions {
        batch_size: 500,
        ..options(&mut world.rng("final-runner", 0))
    };
    let handle = spawn(store, projection, settle, world)
        .ok_or_else(|| "cannot spawn the final runner".to_owned())?;
    let timeout = stall;
    let mut deadline = Instant::now() + stall;
    let mut last_progress = None;
    let result = loop {
        let head = store.feed_head().await.map(|h| h.last);
        let cp = store
            .load_checkpoint(NAME)
            .await
            .map(|c| c.map(|c| c.cursor));
        if let (Ok(head), Ok(cp)) = (&head, &cp)
            && head == cp
            && handle
                .status(NAME)
                .is_some_and(|s| s.state != ProjectionState::Starting)
        {
            break Ok(*cp);
        }
        if let Ok(cp) = &cp
            && *cp != last_progress
        {
            last_progress = *cp;
            deadline = Instant::now() + stall;
        }
        if Instant::now() >= deadline {
            let holders = store.horizon_holders().await.map_or_else(
                |e| format!("(horizon holders unknown: {e})"),
                |h| format!("{h:?}"),
            );
            break Err(format!(
                "the projection stopped short of the feed's end (no progress for {timeout:?}): head {head:?}, \
                 checkpoint {cp:?}, runner {:?}, horizon holders {holders}",
                handle.status(NAME)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), handle.stop()).await;
    result
}

/// The sampler's one statement: the checkpoint, and the events at or before it (and after
/// the previous sample's checkpoint) that the projection's table does not hold, in one
/// snapshot.
const SAMPLE: &str = "
WITH c AS (
    SELECT transaction_id AS t, global_position AS p
      FROM projection_checkpoints WHERE name = $1
), missing AS (
    SELECT e.stream_id, e.version
      FROM events e, c
     WHERE (e.transaction_id, e.global_position) > ($2::text::xid8, $3)
       AND (e.transaction_id, e.global_position) <= (c.t::text::xid8, c.p)
       AND NOT EXISTS (SELECT 1 FROM torture_projection tp WHERE tp.event_id = e.event_id)
)
SELECT c.t, c.p,
       (SELECT count(*) FROM missing),
       (SELECT string_agg(stream_id || ' v' || version, ', ')
          FROM (SELECT * FROM missing LIMIT 5) m)
  FROM c";

/// Takes one sample; `prev` is the checkpoint verified so far.
async fn sample(world: &World, pool: &PgPool, prev: &mut (i64, i64)) -> Result<(), sqlx::Error> {
    let Some(row) = sqlx::query(SAMPLE)
        .bind(NAME)
        .bind(prev.0.to_string())
        .bind(prev.1)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(());
    };
    world.counts.inc(C::checkpoint_samples);
    let cur: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    let missing: i64 = row.try_get(2)?;
    if cur < *prev {
        world.sample_violation(format!(
            "the checkpoint moved backwards from {}:{} to {}:{}",
            prev.0, prev.1, cur.0, cur.1
        ));
    }
    if missing > 0 {
        let examples: Option<String> = row.try_get(3)?;
        world.sample_violation(format!(
            "checkpoint {}:{} was committed past {missing} event(s) not in the projection: {}",
            cur.0,
            cur.1,
            examples.unwrap_or_default()
        ));
    }
    *prev = cur.max(*prev);
    Ok(())
}

/// Samples the checkpoint from its own connection until the run ends, then once more
/// after `final_sample` resolves.
pub(crate) async fn sampler(
    world: Arc<World>,
    pool: PgPool,
    final_sample: tokio::sync::oneshot::Receiver<()>,
) {
    let mut rng = world.rng("sampler", 0);
    let mut prev = (0i64, 0i64);
    while world
        .pause(between(
            &mut rng,
            Duration::from_millis(10),
            Duration::from_millis(120),
        ))
        .await
    {
        // A dropped connection (a fault) only loses this sample.
        let _ = sample(&world, &pool, &mut prev).await;
    }
    if final_sample.await.is_err() {
        return;
    }
    // The pool may still hold a session a fault killed: a failed attempt discards it.
    let mut last = None;
    for _ in 0..5 {
        match sample(&world, &pool, &mut prev).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        world.sample_violation(format!("the final checkpoint sample failed: {e}"));
    }
}
