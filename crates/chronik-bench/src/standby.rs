//! Scenario `projection-standby`: the exactly-once runner catching up a no-op projection
//! with the feed read from a hot standby (`PgProjectionRunner::with_standby`) against the
//! same runner reading the primary, in the same run, on the same throwaway primary and its
//! `pg_basebackup` standby (made here like the tests make theirs: both on this machine, so
//! the standby competes with the primary for the same CPUs and disk). Rounds alternate which
//! variant goes first; each round uses fresh projection names, so each reads the whole feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chronik_core::{ExpectedVersion, FeedCursor, StreamId};
use chronik_postgres::{
    PgEventStore, PgProjectionRunner, PgStandby, PgStoreConfig, ProjectionState, RunnerOptions,
};
use chronik_projections::RunnerBuilder as _;
use chronik_store::EventStore;
use futures::StreamExt as _;
use uuid::Uuid;

use crate::Plan;
use crate::harness;
use crate::memory::new_event;
use crate::projection::NoOp;
use crate::replica::Replica;
use crate::report::Report;

const SCENARIO: &str = "projection-standby";
const FROM_STANDBY: &str = "chronik runner, feed from a hot standby";
const FROM_PRIMARY: &str = "chronik runner, feed from the primary";

pub(crate) async fn run(plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let replica = match tokio::task::spawn_blocking(Replica::start).await? {
        Ok(r) => r,
        Err(e) => {
            report
                .notes
                .push(format!("{SCENARIO} skipped: no throwaway replica ({e})"));
            return Ok(());
        }
    };
    let config = PgStoreConfig::default().with_max_connections(8);
    let primary = PgEventStore::connect_with(&replica.primary_url(), config.clone()).await?;
    primary.migrate().await?;
    let standby = PgStandby::connect(&replica.standby_url(), config).await?;

    // Streams of 10 events, appended 10 at a time by 8 writers.
    let n = plan.standby_events;
    let t = Instant::now();
    futures::stream::iter(0..n.div_ceil(10))
        .map(|_| {
            let store = primary.clone();
            async move {
                let events: Vec<_> = (0..10).map(|_| new_event()).collect();
                store
                    .append(
                        &StreamId::for_category("order", Uuid::new_v4())?,
                        ExpectedVersion::NoStream,
                        &events,
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let head = primary.feed_head().await?;
    let target = head.last.unwrap_or(FeedCursor::START);
    let total = head.visible_events;
    // Both variants start with the whole feed replayed on the standby.
    let deadline = Instant::now() + Duration::from_secs(300);
    while standby.store().feed_head().await?.last < head.last {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the standby did not replay the seeded events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.notes.push(format!(
        "{SCENARIO}: {total} events written and replayed on the standby in {:.1}s",
        t.elapsed().as_secs_f64()
    ));

    let mut runs = [
        (FROM_PRIMARY, Vec::new(), Duration::ZERO),
        (FROM_STANDBY, Vec::new(), Duration::ZERO),
    ];
    for round in 0..plan.rounds.max(1) {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let name = format!("bench-standby-{i}-{round}");
            let mut runner = PgProjectionRunner::new(primary.clone(), Arc::new(NoOp(name.clone())))
                .with_options(RunnerOptions {
                    batch_size: 1_000,
                    ..RunnerOptions::default()
                });
            if runs[i].0 == FROM_STANDBY {
                runner = runner.with_standby(standby.clone());
            }
            let start = Instant::now();
            let handle = runner.spawn()?;
            let mut status = handle.subscribe(&name).context("the runner runs it")?;
            let reached = status
                .wait_for(|s| s.checkpoint >= target || s.state == ProjectionState::Failing)
                .await
                .map(|s| (s.checkpoint >= target, s.last_error.clone()));
            let elapsed = start.elapsed();
            handle.stop().await?;
            let (done, error) = reached.context("the runner stopped before it caught up")?;
            anyhow::ensure!(done, "the runner failed: {}", error.unwrap_or_default());
            runs[i].1.push(elapsed.as_micros() as u64);
            runs[i].2 += elapsed;
        }
    }
    for (variant, samples, elapsed) in runs {
        let items = total * samples.len() as u64;
        report.push(
            SCENARIO,
            variant,
            1,
            harness::stats(samples, items, elapsed),
        );
    }
    report.ratio(SCENARIO, FROM_STANDBY, FROM_PRIMARY, 1, None);
    standby.store().pool().close().await;
    primary.pool().close().await;
    drop(replica);
    Ok(())
}
