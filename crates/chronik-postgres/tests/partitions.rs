//! Partitioned projections on a real server: the partition function agrees between Rust
//! and SQL; four partitions shared by three workers (separate pools, so separate sessions
//! as separate processes would have) balance, and a worker killed in the middle of a batch
//! loses its partitions to the others with every event applied exactly once and in stream
//! order; a changed number of partitions is refused until the projection is rebuilt; a
//! rebuild into partitions gives each its own count of events processed, and the report under
//! the projection's own name stands for its partitions (no false lag); forgetting a
//! partitioned projection forgets every partition.
// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent, RecordedEvent, StreamId,
};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    HandlerError, PgEventStore, PgPartitionedRunner, PgProjection, PgProjectionRunner,
    PgTransaction, PgWorkerHandle, ProjectionError, ProjectionState, RunnerOptions,
    forget_projection, projection_reports, rebuild_partitioned, wait_for_projection,
};
use chronik_projections::{Partitions, stream_hash};
use chronik_store::EventStore;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use uuid::Uuid;

/// Generous: the feed horizon is cluster-wide. Conditions are polled, never slept on.
const DEADLINE: Duration = Duration::from_secs(120);

const NAME: &str = "applied";

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 5,
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(50),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        standby_poll: Duration::from_millis(30),
        ..RunnerOptions::default()
    }
}

/// Records every applied event as a row of `applied` (no key: a second application would
/// show as a second row), with the worker that applied it.
#[derive(Debug)]
struct Recorder {
    worker: i32,
    /// Once armed, the handler hangs after its next event, mid-batch (and signals `hung`).
    armed: AtomicBool,
    hung: Notify,
}

impl Recorder {
    fn new(worker: i32) -> Arc<Self> {
        Arc::new(Self {
            worker,
            armed: AtomicBool::new(false),
            hung: Notify::new(),
        })
    }
}

impl PgProjection for Recorder {
    fn name(&self) -> &str {
        NAME
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied (stream_id, version, worker) VALUES ($1, $2, $3)")
            .bind(event.stream_id.as_str())
            .bind(event.version.as_i64())
            .bind(self.worker)
            .execute(&mut **tx)
            .await?;
        if self.armed.load(Ordering::SeqCst) {
            // The batch's transaction is open and has written: the worker dies here.
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM applied")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn create_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE applied (seq bigserial PRIMARY KEY, stream_id text NOT NULL, \
         version bigint NOT NULL, worker integer NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// A store on a pool of its own: a worker's sessions are its own, as in another process.
async fn own_store(pool: &PgPool) -> PgEventStore {
    let options = pool.connect_options().as_ref().clone();
    let own = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .unwrap();
    PgEventStore::from_pool(own)
}

fn event() -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new("Happened").unwrap(),
        1,
        json!({ "n": 1 }),
        Metadata::default(),
    )
    .unwrap()
}

/// Appends `rounds` events to each of `streams` streams (one event per append,
/// interleaving the streams); returns the last cursor.
async fn append(store: &PgEventStore, streams: usize, rounds: usize) -> FeedCursor {
    let mut last = FeedCursor::START;
    for _ in 0..rounds {
        for s in 0..streams {
            let id = StreamId::new(format!("thing-{s}")).unwrap();
            last = store
                .append(&id, ExpectedVersion::Any, &[event()])
                .await
                .unwrap()
                .cursor;
        }
    }
    last
}

/// Polls `cond` until it holds (panics with `what` after [`DEADLINE`]).
async fn until<F: AsyncFnMut() -> bool>(what: &str, cond: F) {
    chronik_testkit::projections::eventually(what, DEADLINE, cond).await;
}

/// A worker of all `partitions`, once it has applied everything up to `last`.
async fn caught_up_worker(
    store: &PgEventStore,
    partitions: Partitions,
    last: FeedCursor,
) -> PgWorkerHandle {
    let worker = PgPartitionedRunner::new(store.clone(), Recorder::new(1), partitions)
        .with_options(options())
        .spawn()
        .await
        .unwrap();
    wait_for_projection(store, NAME, last, DEADLINE)
        .await
        .unwrap();
    worker
}

/// Every checkpoint's events processed, by name.
async fn processed(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as("SELECT name, events_processed FROM projection_checkpoints ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// What each partition of `layout` has processed once it applied `rounds` events of each
/// of [`append`]'s `streams` streams: the events of the streams that `Partitions::of`
/// assigns it.
fn expected_processed(layout: Partitions, streams: usize, rounds: i64) -> BTreeMap<String, i64> {
    let mut expected: BTreeMap<String, i64> = (0..layout.get())
        .map(|i| (layout.checkpoint_name(NAME, i), 0))
        .collect();
    for s in 0..streams {
        let name = layout.checkpoint_name(NAME, layout.of(&format!("thing-{s}")));
        *expected.get_mut(&name).unwrap() += rounds;
    }
    expected
}

fn owned(workers: &[&PgWorkerHandle]) -> Vec<Vec<u32>> {
    workers.iter().map(|w| w.status().owned).collect()
}

/// Every event applied exactly once and, per stream, in version order.
async fn assert_exactly_once_in_order(pool: &PgPool) {
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM applied GROUP BY stream_id, version \
         HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0, "an event was applied twice");
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e WHERE NOT EXISTS \
         (SELECT 1 FROM applied a WHERE a.stream_id = e.stream_id AND a.version = e.version)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(missing, 0, "an event was never applied");
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT version, lag(version) OVER \
         (PARTITION BY stream_id ORDER BY seq) AS before FROM applied) o \
         WHERE o.before IS NOT NULL AND o.version <> o.before + 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        out_of_order, 0,
        "a stream's events were applied out of order"
    );
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn rust_and_sql_assign_streams_to_the_same_partition(pool: PgPool) {
    let mut ids: Vec<String> = (0..300).map(|i| format!("order-{i}")).collect();
    ids.extend(["", "ä-ünïcödé-1", "客户-42", "x".repeat(300).as_str()].map(str::to_owned));
    // The expression docs/projections.md states, and the feed filter runs.
    let sql: Vec<i64> = sqlx::query_scalar(
        "SELECT ('x' || left(md5(convert_to(id, 'UTF8')), 8))::bit(32)::bigint \
           FROM unnest($1::text[]) WITH ORDINALITY AS t(id, i) ORDER BY i",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    let rust: Vec<i64> = ids.iter().map(|id| i64::from(stream_hash(id))).collect();
    assert_eq!(sql, rust);
    // Every partition gets some of 300 streams (the hash spreads them).
    let four = Partitions::new(4).unwrap();
    let used: BTreeSet<u32> = ids.iter().map(|id| four.of(id)).collect();
    assert_eq!(used, BTreeSet::from([0, 1, 2, 3]));
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn four_partitions_on_three_workers_survive_a_worker_killed_mid_batch(pool: PgPool) {
    create_table(&pool).await;
    let writer = PgEventStore::from_pool(pool.clone());
    let four = Partitions::new(4).unwrap();
    // Events before any worker runs, so that the first worker has a backlog to apply.
    append(&writer, 24, 3).await;

    let victim_projection = Recorder::new(2);
    let mut stores = Vec::new();
    let mut workers = Vec::new();
    for (k, projection) in [
        Recorder::new(1),
        Arc::clone(&victim_projection),
        Recorder::new(3),
    ]
    .into_iter()
    .enumerate()
    {
        let store = own_store(&pool).await;
        stores.push(store.clone());
        let worker = PgPartitionedRunner::new(store, projection, four)
            .with_options(options())
            .spawn()
            .await
            .unwrap();
        workers.push(worker);
        if k == 0 {
            // The first worker alone takes every partition.
            let w = &workers[0];
            until("the first worker owns all four partitions", async || {
                w.status().owned.len() == 4
            })
            .await;
        }
    }
    // Balance: shares of 2, 1 and 1, each partition owned by one worker.
    {
        let all: Vec<&PgWorkerHandle> = workers.iter().collect();
        until("three workers share four partitions 2/1/1", async || {
            let mut counts: Vec<usize> = owned(&all).iter().map(Vec::len).collect();
            counts.sort_unstable();
            counts == [1, 1, 2]
        })
        .await;
        let held: Vec<u32> = owned(&all).concat();
        assert_eq!(held.iter().copied().collect::<BTreeSet<_>>().len(), 4);
    }
    // The victim (worker 2) owns a partition; every partition has streams among the 24
    // (8, 8, 5 and 3 of them), so the next appends reach it and it hangs mid-batch.
    assert!(!workers[1].status().owned.is_empty());
    let hang = victim_projection.hung.notified();
    tokio::pin!(hang);
    victim_projection.armed.store(true, Ordering::SeqCst);
    let more = tokio::spawn({
        let writer = writer.clone();
        async move { append(&writer, 24, 4).await }
    });
    tokio::time::timeout(DEADLINE, hang.as_mut())
        .await
        .expect("the victim worker never applied an event of its partitions");
    let victim = workers.remove(1);
    let victim_pid = victim.status().pid;
    victim.abort().await;
    // Its process is gone: every session of its pool ends, the open batch rolls back.
    stores[1].pool().close().await;
    more.await.unwrap();
    let last = append(&writer, 24, 2).await;

    let survivors: Vec<&PgWorkerHandle> = workers.iter().collect();
    until("the survivors own every partition", async || {
        let held: Vec<u32> = owned(&survivors).concat();
        held.len() == 4 && held.iter().copied().collect::<BTreeSet<_>>().len() == 4
    })
    .await;
    let reached = wait_for_projection(&writer, NAME, last, DEADLINE)
        .await
        .unwrap();
    assert!(reached >= last);
    assert_exactly_once_in_order(&pool).await;

    // The victim's partitions are applied by the survivors now, and the status says who
    // owns each partition.
    let mut counts: Vec<usize> = owned(&survivors).iter().map(Vec::len).collect();
    counts.sort_unstable();
    assert_eq!(counts, [2, 2]);
    let pids: BTreeMap<i32, Vec<u32>> = survivors
        .iter()
        .map(|w| (w.status().pid.unwrap(), w.status().owned))
        .collect();
    assert!(!pids.contains_key(&victim_pid.unwrap()));
    let reports = projection_reports(&writer).await.unwrap();
    for index in 0..4 {
        let name = four.checkpoint_name(NAME, index);
        let report = reports.iter().find(|r| r.name == name).unwrap();
        let owner = report.owner.as_ref().unwrap().pid.unwrap();
        assert!(pids[&owner].contains(&index), "{name} owned by {owner}");
        assert_eq!(report.lag_events, 0, "{name}");
    }
    for w in workers {
        let status = w.stop().await;
        assert!(status.stopped && status.owned.is_empty());
    }
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_changed_number_of_partitions_is_refused_until_rebuilt(pool: PgPool) {
    create_table(&pool).await;
    let store = PgEventStore::from_pool(pool.clone());
    let last = append(&store, 10, 3).await;
    let four = Partitions::new(4).unwrap();
    let two = Partitions::new(2).unwrap();
    caught_up_worker(&store, four, last).await.stop().await;
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM applied")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(applied().await, 30);
    // Each partition applied exactly the streams that `Partitions::of` assigns it: the
    // feed query's filter and the Rust function agree.
    assert_eq!(processed(&pool).await, expected_processed(four, 10, 3));

    // Two partitions over checkpoints written by four: refused, nothing spawned.
    let refused = PgPartitionedRunner::new(store.clone(), Recorder::new(1), two)
        .with_options(options())
        .spawn()
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ProjectionError::PartitionsChanged {
                stored: 4,
                wanted: 2,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("rebuild"), "{refused}");
    // A single runner refuses too: it fails (and says why) instead of applying anything.
    let single = PgProjectionRunner::new(store.clone(), Recorder::new(9))
        .with_options(options())
        .spawn()
        .unwrap();
    let mut status = single.subscribe(NAME).unwrap();
    let failing = tokio::time::timeout(
        DEADLINE,
        status.wait_for(|s| s.state == ProjectionState::Failing),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let why = failing.last_error.unwrap_or_default();
    assert!(
        why.contains("4 partitions") && why.contains("rebuild"),
        "{why}"
    );
    single.stop().await.unwrap();
    assert_eq!(applied().await, 30);

    // The documented way: a rebuild with the new count, then workers with it.
    let mut ignore = |_: &chronik_postgres::RebuildProgress| ControlFlow::Continue(());
    rebuild_partitioned(&store, Recorder::new(1), two, None, 7, &mut ignore)
        .await
        .unwrap();
    assert_eq!(applied().await, 30);
    let names: BTreeSet<String> = projection_reports(&store)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.checkpoint.is_some())
        .map(|r| r.name)
        .collect();
    // The bare name (its rebuild record) reports the two partitions' least checkpoint.
    assert_eq!(
        names,
        BTreeSet::from([
            "applied".to_owned(),
            "applied#0/2".to_owned(),
            "applied#1/2".to_owned()
        ])
    );
    let worker = PgPartitionedRunner::new(store.clone(), Recorder::new(1), two)
        .with_options(options())
        .spawn()
        .await
        .unwrap();
    let last = append(&store, 10, 2).await;
    wait_for_projection(&store, NAME, last, DEADLINE)
        .await
        .unwrap();
    worker.stop().await;
    assert_eq!(applied().await, 50);
    assert_exactly_once_in_order(&pool).await;
}

/// Each partition's checkpoint after a rebuild counts the events that the rebuild applied
/// for that partition's streams (they add up to every event), as a worker's would.
/// The report under the projection's own name stands for its partitions.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_partitioned_rebuild_counts_each_partitions_events(pool: PgPool) {
    create_table(&pool).await;
    let store = PgEventStore::from_pool(pool.clone());
    let last = append(&store, 10, 3).await;
    store.wait_for_feed(last, DEADLINE).await.unwrap();
    let four = Partitions::new(4).unwrap();
    let mut ignore = |_: &chronik_postgres::RebuildProgress| ControlFlow::Continue(());
    let done = rebuild_partitioned(&store, Recorder::new(1), four, None, 7, &mut ignore)
        .await
        .unwrap();
    assert_eq!(done.handled, 30);
    assert_eq!(processed(&pool).await, expected_processed(four, 10, 3));
    // The projection's own name has a status row (its rebuild record) but no checkpoint of
    // its own: its report stands for the partitions, with the least of their checkpoints,
    // no lag once they have applied the whole feed (not the lag from the feed's start) and
    // the sum of their events processed.
    let reports = projection_reports(&store).await.unwrap();
    let least = reports
        .iter()
        .filter(|r| r.name.starts_with("applied#"))
        .map(|r| r.checkpoint.unwrap())
        .min()
        .unwrap();
    let own = reports.iter().find(|r| r.name == NAME).unwrap();
    assert!(own.last_rebuild.is_some(), "{own:?}");
    assert_eq!(own.checkpoint, Some(least), "{own:?}");
    assert_eq!(own.lag_events, 0, "{own:?}");
    assert!(own.lag_seconds.abs() < f64::EPSILON, "{own:?}");
    assert_eq!(own.events_processed, 30, "{own:?}");

    // The workers carry on counting from there.
    let last = append(&store, 10, 1).await;
    caught_up_worker(&store, four, last).await.stop().await;
    assert_eq!(processed(&pool).await, expected_processed(four, 10, 4));
}

/// `forget_projection(NAME)` forgets a partitioned projection whole: every partition's
/// checkpoint and runner rows, not only rows named NAME; it refuses while a worker runs.
#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn forgetting_a_partitioned_projection_removes_every_partition(pool: PgPool) {
    create_table(&pool).await;
    let store = PgEventStore::from_pool(pool.clone());
    let last = append(&store, 10, 2).await;
    let four = Partitions::new(4).unwrap();
    let worker = caught_up_worker(&store, four, last).await;
    let err = forget_projection(&store, NAME).await.unwrap_err();
    assert!(
        matches!(&err, ProjectionError::Busy { pid: Some(_), .. }),
        "{err:?}"
    );
    let rows = || async {
        let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints")
            .fetch_one(&pool)
            .await
            .unwrap();
        let runners: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_runners")
            .fetch_one(&pool)
            .await
            .unwrap();
        (checkpoints, runners)
    };
    assert_eq!(rows().await.0, 4, "nothing forgotten while it runs");
    worker.stop().await;

    let gone = forget_projection(&store, NAME).await.unwrap();
    assert_eq!(gone.checkpoint, None, "it had no checkpoint of its own");
    let names: Vec<&str> = gone.partitions.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["applied#0/4", "applied#1/4", "applied#2/4", "applied#3/4"]
    );
    assert!(gone.partitions.iter().all(|(_, c)| *c <= last));
    assert_eq!(gone.runner_rows, 4);
    assert_eq!(rows().await, (0, 0));
    assert!(projection_reports(&store).await.unwrap().is_empty());
    let again = forget_projection(&store, NAME).await.unwrap_err();
    assert!(
        matches!(
            again,
            ProjectionError::Store(chronik_store::StoreError::NotFound(_))
        ),
        "{again:?}"
    );
}
