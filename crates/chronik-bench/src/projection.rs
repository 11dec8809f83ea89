//! Scenarios 4 (a no-op projection catching up), 5 (the Orders read model), 5b (a
//! partitioned projection against the single runner) and 6 (live latency from an append's
//! commit to the projection's checkpoint, under append load), all through the exactly-once
//! runners users deploy (`chronik_postgres::PgProjectionRunner`, `PgPartitionedRunner`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chronik_core::{ExpectedVersion, FeedCursor, Metadata, RecordedEvent, StreamId, Version};
use chronik_postgres::{
    HandlerError, PgEventStore, PgPartitionedRunner, PgProjection, PgProjectionRunner,
    PgTransaction, ProjectionState, RunnerHandle, RunnerOptions, wait_for_projection,
};
use chronik_projections::Partitions;
use chronik_projections::RunnerBuilder as _;
use chronik_store::{EventStore, Repository};
use futures::StreamExt as _;
use orders::{LineAdded, Order, OrderEvent, OrderPlaced, OrderProjection, OrderShipped};
use uuid::Uuid;

use crate::harness::{self, Op, Stats};
use crate::memory::new_event;
use crate::report::Report;
use crate::{Plan, pg};

/// A projection that does nothing but move its checkpoint: what the runner itself costs.
#[derive(Debug)]
pub(crate) struct NoOp(pub(crate) String);

impl PgProjection for NoOp {
    fn name(&self) -> &str {
        &self.0
    }

    async fn handle(
        &self,
        _tx: &mut PgTransaction,
        _event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn clear(&self, _tx: &mut PgTransaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Runs `projection` from its current checkpoint until it has committed `target`, and
/// measures that: one sample, `items` events per second. `upcast`: read through the
/// Orders upcasters (only the Orders feed needs them; the append scenarios' payloads are
/// not Orders v1 events).
async fn catch_up<P: PgProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    options: RunnerOptions,
    (target, items): (FeedCursor, u64),
    upcast: bool,
) -> anyhow::Result<Stats> {
    let start = Instant::now();
    let name = projection.name().to_owned();
    let mut runner = PgProjectionRunner::new(store.clone(), projection).with_options(options);
    if upcast {
        runner = runner.with_upcasters(Arc::new(orders::upcasters()?));
    }
    let runner = runner.spawn()?;
    let reached = wait_until(&runner, &name, |s| s.checkpoint >= target).await;
    let elapsed = start.elapsed();
    runner.stop().await?;
    reached?;
    Ok(harness::stats(
        vec![elapsed.as_micros() as u64],
        items,
        elapsed,
    ))
}

/// Waits for the status of `runner`'s projection `name` to satisfy `done`; fails on a
/// handler error.
async fn wait_until(
    runner: &RunnerHandle,
    name: &str,
    done: impl Fn(&chronik_postgres::ProjectionStatus) -> bool,
) -> anyhow::Result<()> {
    let mut rx = runner
        .subscribe(name)
        .with_context(|| format!("the runner does not run {name}"))?;
    loop {
        {
            let s = rx.borrow_and_update();
            if done(&s) {
                return Ok(());
            }
            if s.state == ProjectionState::Failing {
                bail!(
                    "projection {} is failing: {}",
                    s.name,
                    s.last_error.as_deref().unwrap_or("?")
                );
            }
        }
        rx.changed()
            .await
            .context("the projection runner stopped before it caught up")?;
    }
}

/// The head of `store`'s feed now (its last visible event and how many there are).
async fn head(store: &PgEventStore) -> anyhow::Result<(FeedCursor, u64)> {
    let h = store.feed_head().await?;
    Ok((h.last.unwrap_or(FeedCursor::START), h.visible_events))
}

/// Scenario 4's projection variant: a no-op projection over the whole feed, named for
/// `round` (a fresh checkpoint each round).
pub(crate) async fn feed_catch_up(store: &PgEventStore, round: u32) -> anyhow::Result<Stats> {
    catch_up(
        store,
        Arc::new(NoOp(format!("bench-noop-{round}"))),
        RunnerOptions {
            batch_size: 1_000,
            ..RunnerOptions::default()
        },
        head(store).await?,
        false,
    )
    .await
}

/// Scenario 5: the Orders read model (`order_summaries`) built from `orders` orders of five
/// events each (placed, three lines, shipped) in a schema of its own, so that the feed holds
/// nothing else. The no-op projection over the same feed is the reference: the ratio is what
/// the read model's upserts cost on top of the runner.
pub(crate) async fn orders(url: &str, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let scenario = "projection-orders";
    let store = pg::scratch_store(url, pg::ORDERS_SCHEMA, 8).await?;
    let t = Instant::now();
    let orders = plan.orders;
    futures::stream::iter(0..orders)
        .map(|i| {
            let store = store.clone();
            async move { seed_order(&store, i).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let (target, total) = head(&store).await?;
    report.notes.push(format!(
        "{scenario}: {orders} orders, {total} events written in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    let options = RunnerOptions {
        batch_size: 1_000,
        ..RunnerOptions::default()
    };
    OrderProjection::create_table(&store).await?;
    let projection = Arc::new(OrderProjection::new(store.schema()));
    let stats = catch_up(&store, projection, options.clone(), (target, total), true).await?;
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.order_summaries",
        store.schema().quoted()
    )))
    .fetch_one(store.pool())
    .await?;
    anyhow::ensure!(
        rows == orders as i64,
        "the read model has {rows} orders, expected {orders}"
    );
    report.push(scenario, "chronik OrderProjection", 1, stats);
    let stats = catch_up(
        &store,
        Arc::new(NoOp("bench-orders-noop".into())),
        options,
        (target, total),
        true,
    )
    .await?;
    report.push(scenario, "chronik no-op projection", 1, stats);
    report.ratio(
        scenario,
        "chronik OrderProjection",
        "chronik no-op projection",
        1,
        None,
    );
    store.pool().close().await;
    Ok(())
}

/// Scenario 5b's read model: one counter row per stream, an upsert per event (the shape of
/// most read models: a keyed write per event), in `stream_counts`.
#[derive(Debug)]
struct StreamCounts {
    name: String,
    table: String,
}

impl PgProjection for StreamCounts {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(sqlx::AssertSqlSafe(self.table.as_str()))
            .bind(event.stream_id.as_str())
            .bind(event.version.as_i64())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn clear(&self, _tx: &mut PgTransaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Scenario 5b: the same feed (`plan.orders` streams of five events, many small
/// transactions) applied by the single runner and by one worker running it as 1, 2 and 4
/// partitions (each partition its own task, batches and checkpoint), each from the start
/// into an emptied table; events/s until every partition has committed the feed's end.
pub(crate) async fn partitions(url: &str, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let scenario = "projection-partitions";
    let store = pg::scratch_store(url, pg::PARTS_SCHEMA, 12).await?;
    let s = store.schema().quoted();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {s}.stream_counts \
         (stream_id text PRIMARY KEY, events bigint NOT NULL, version bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await?;
    let streams = plan.orders;
    futures::stream::iter(0..streams)
        .map(|i| {
            let store = store.clone();
            async move {
                let id = StreamId::new(format!("item-{i}"))?;
                for v in 0..5u64 {
                    let expected = if v == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(Version::new(v)?)
                    };
                    store.append(&id, expected, &[new_event()]).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let (target, total) = head(&store).await?;
    let upsert = format!(
        "INSERT INTO {s}.stream_counts AS c (stream_id, events, version) VALUES ($1, 1, $2) \
         ON CONFLICT (stream_id) DO UPDATE SET events = c.events + 1, version = EXCLUDED.version \
         WHERE c.version < EXCLUDED.version"
    );
    let options = RunnerOptions {
        batch_size: 500,
        ..RunnerOptions::default()
    };
    let variants: [(&str, Option<u32>); 4] = [
        ("single runner", None),
        ("1 partition", Some(1)),
        ("2 partitions", Some(2)),
        ("4 partitions", Some(4)),
    ];
    for (variant, count) in variants {
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {s}.stream_counts")))
            .execute(store.pool())
            .await?;
        let projection = Arc::new(StreamCounts {
            name: format!("bench-parts-{}", count.map_or(0, |n| n)),
            table: upsert.clone(),
        });
        let start = Instant::now();
        match count {
            None => {
                let name = projection.name.clone();
                let runner = PgProjectionRunner::new(store.clone(), projection)
                    .with_options(options.clone())
                    .spawn()?;
                let reached = wait_until(&runner, &name, |st| st.checkpoint >= target).await;
                runner.stop().await?;
                reached?;
            }
            Some(n) => {
                let worker = PgPartitionedRunner::new(
                    store.clone(),
                    Arc::clone(&projection),
                    Partitions::new(n)?,
                )
                .with_options(options.clone())
                .spawn()
                .await?;
                let reached =
                    wait_for_projection(&store, &projection.name, target, Duration::from_secs(600))
                        .await;
                worker.stop().await;
                reached?;
            }
        }
        let elapsed = start.elapsed();
        let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(sum(events), 0)::bigint FROM {s}.stream_counts"
        )))
        .fetch_one(store.pool())
        .await?;
        anyhow::ensure!(
            u64::try_from(applied).ok() == Some(total),
            "{variant}: the read model counts {applied} events, expected {total}"
        );
        report.push(
            scenario,
            variant,
            1,
            harness::stats(vec![elapsed.as_micros() as u64], total, elapsed),
        );
    }
    report.notes.push(format!(
        "{scenario}: {total} events in {streams} streams, an upsert per event; one worker \
         process runs every partition (each on its own task and connections)"
    ));
    report.ratio(scenario, "4 partitions", "single runner", 1, None);
    report.ratio(scenario, "2 partitions", "single runner", 1, None);
    store.pool().close().await;
    Ok(())
}

async fn seed_order(store: &PgEventStore, i: usize) -> anyhow::Result<()> {
    let id = StreamId::for_category("order", Uuid::new_v4())?;
    let mut events = vec![OrderEvent::OrderPlaced(OrderPlaced {
        customer_id: format!("customer-{}", i % 1_000),
        total_amount: 1_000,
    })];
    events.extend((0..3).map(|l| {
        OrderEvent::LineAdded(LineAdded {
            sku: format!("sku-{l}"),
            quantity: 2,
            unit_price: 250,
        })
    }));
    events.push(OrderEvent::OrderShipped(OrderShipped {
        carrier: "bench-post".into(),
    }));
    Repository::<Order, _>::new(store)
        .save(&id, Version::ZERO, &events, &Metadata::default())
        .await?;
    Ok(())
}

/// Matches chronik appends with the live projection's checkpoints, under one lock so that
/// no append is missed: an append that returns after the checkpoint already covers it was
/// seen before its acknowledgement arrived (latency 0).
#[derive(Debug, Default)]
struct Tracker {
    /// Appends not yet covered: feed cursor -> when `append` returned.
    pending: BTreeMap<FeedCursor, Instant>,
    /// The newest checkpoint the runner published.
    checkpoint: FeedCursor,
    /// Commit -> checkpoint latencies, µs.
    latencies: Vec<u64>,
}

impl Tracker {
    fn appended(&mut self, cursor: FeedCursor, at: Instant) {
        if cursor <= self.checkpoint {
            self.latencies.push(0);
        } else {
            self.pending.insert(cursor, at);
        }
    }

    fn checkpoint(&mut self, checkpoint: FeedCursor, at: Instant) {
        self.checkpoint = self.checkpoint.max(checkpoint);
        // Everything at or before the checkpoint is covered; the rest stays pending.
        let mut rest = self.pending.split_off(&self.checkpoint);
        if let Some(at) = rest.remove(&self.checkpoint) {
            self.pending.insert(self.checkpoint, at);
        }
        let covered = std::mem::replace(&mut self.pending, rest);
        self.latencies.extend(
            covered
                .values()
                .map(|t| at.saturating_duration_since(*t).as_micros() as u64),
        );
    }
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Scenario 6: while `writers` tasks append (chronik and the raw guarded SQL, interleaved as
/// in scenario 1), a live no-op projection runs with the default runner options. For every
/// chronik append: the time from `append` returning (the commit acknowledged) to the runner
/// publishing a checkpoint at or past that event (the batch that applied it committed).
/// The append ratio is measured under that load, to compare with scenario 1's.
pub(crate) async fn live_latency(
    url: &str,
    writers: usize,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let scenario = "live-latency";
    let p = pg::pool(url, writers).await?;
    let s = pg::store_on(&p)?;
    // The runner has connections of its own, like a projection process would.
    let runner_store = pg::scratch_store(url, pg::STORE_SCHEMA, 2).await?;
    // Start at the head: this scenario measures live delivery, not catch-up.
    let (now, _) = head(&s).await?;
    chronik_store::CheckpointStore::save_checkpoint(&s, "bench-live", now, 0).await?;
    let runner = PgProjectionRunner::new(runner_store.clone(), Arc::new(NoOp("bench-live".into())))
        .spawn()?;
    wait_until(&runner, "bench-live", |st| {
        st.state == ProjectionState::Live
    })
    .await?;

    let tracker = Arc::new(Mutex::new(Tracker {
        checkpoint: now,
        ..Tracker::default()
    }));
    let watcher = {
        let tracker = tracker.clone();
        let mut rx = runner
            .subscribe("bench-live")
            .context("the runner runs bench-live")?;
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let checkpoint = rx.borrow_and_update().checkpoint;
                lock(&tracker).checkpoint(checkpoint, Instant::now());
            }
        })
    };

    let chronik: Op = {
        let (s, tracker) = (s.clone(), tracker.clone());
        Arc::new(move |_, _| {
            let (s, tracker) = (s.clone(), tracker.clone());
            Box::pin(async move {
                let id = StreamId::for_category("order", Uuid::new_v4())?;
                let r = s
                    .append(&id, ExpectedVersion::NoStream, &[new_event()])
                    .await?;
                lock(&tracker).appended(r.cursor, Instant::now());
                Ok(1)
            })
        })
    };
    let guarded = pg::raw_guarded_op(&p);
    let variants = [("chronik", chronik), ("raw-guarded", guarded)];
    let started = Instant::now();
    for (name, stats) in harness::interleaved(writers, plan.budget, plan.rounds, &variants).await? {
        report.push(scenario, &name, writers, stats);
    }
    let elapsed = started.elapsed();
    report.ratio(scenario, "chronik", "raw-guarded", writers, Some(0.9));

    // Let the projection see the last appends, then stop watching.
    let (last, _) = head(&s).await?;
    let caught_up = tokio::time::timeout(
        Duration::from_secs(30),
        wait_until(&runner, "bench-live", |st| st.checkpoint >= last),
    )
    .await;
    let status = runner.stop().await?.remove(0);
    watcher.abort();
    caught_up
        .context("the live projection did not catch up within 30 s")?
        .with_context(|| format!("live projection: {status:?}"))?;
    let lat = {
        let mut t = lock(&tracker);
        t.checkpoint(status.checkpoint, Instant::now());
        anyhow::ensure!(
            t.pending.is_empty(),
            "{} appends never reached the projection",
            t.pending.len()
        );
        std::mem::take(&mut t.latencies)
    };
    let n = lat.len() as u64;
    let stats = harness::stats(lat, n, elapsed);
    report.notes.push(format!(
        "{scenario}: append commit -> projection checkpoint at {writers} writers: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {n} appends (target p99 < 20 ms: {})",
        stats.p50_ms,
        stats.p90_ms,
        stats.p99_ms,
        stats.max_ms,
        if stats.p99_ms < 20.0 { "ok" } else { "MISSED" }
    ));
    report.push(scenario, "commit -> checkpoint latency", writers, stats);
    p.close().await;
    runner_store.pool().close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(transaction: u64, position: u64) -> FeedCursor {
        FeedCursor::new(transaction, position).expect("in range")
    }

    #[test]
    fn tracker_measures_every_append_once() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        t.appended(c(5, 1), t0);
        t.appended(c(7, 2), t0);
        t.checkpoint(c(5, 1), t0 + Duration::from_millis(3));
        assert_eq!(t.latencies, vec![3_000]);
        // Seen before its acknowledgement: 0, and never pending.
        t.appended(c(4, 9), t0);
        assert_eq!(t.latencies, vec![3_000, 0]);
        t.checkpoint(c(9, 0), t0 + Duration::from_millis(10));
        assert_eq!(t.latencies, vec![3_000, 0, 10_000]);
        assert!(t.pending.is_empty());
        // A stale checkpoint never moves it back.
        t.checkpoint(c(1, 1), t0);
        t.appended(c(8, 8), t0);
        assert_eq!(t.latencies.len(), 4);
    }
}
