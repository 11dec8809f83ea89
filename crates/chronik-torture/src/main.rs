//! `chronik-torture`: many concurrent writers against PostgreSQL while faults are injected,
//! then a check of everything stored, in the feed and in a projection against a model of
//! what every append was told.
//!
//! Run it with `cargo xtask torture` (release build): `--smoke` for a short run (what CI
//! runs), `--duration 30m` for a long one, `--seed N` to replay a run. A seed fixes every
//! task's sequence of operations and faults (streams, expected versions, event ids, hold
//! times, which fault when); the exact interleaving of the tasks is the scheduler's and
//! the server's, so a replay reproduces the schedule, not the same race to the
//! microsecond. See `docs/reliability.md`.

mod faults;
mod model;
// A throwaway nats-server for the relay's faults, shared with the tests (std only; by
// path, since a binary must not depend on the testkit).
#[allow(dead_code, unreachable_pub)]
#[path = "../../chronik-testkit/src/nats_server.rs"]
mod nats_server;
mod partitions;
mod projection;
mod reactor;
mod relay;
mod workload;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chronik_core::FeedCursor;
use chronik_postgres::{PgEventStore, PgStoreConfig};
use chronik_store::{CheckpointStore as _, EventStore as _, FeedFilter, MAX_FEED_PAGE};
use clap::Parser;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row as _};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::faults::app;
use crate::model::{Observed, ProjectedEvent, StoredEvent};
use crate::projection::TortureProjection;
use crate::world::{C, Plan, World};

/// Randomized, seeded torture of chronik on PostgreSQL, checked against a model.
#[derive(Debug, Parser)]
#[command(name = "chronik-torture", version)]
struct Args {
    /// Seed of every random decision (default: a fresh one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Short run for CI: 15 s of load, fewer writers.
    #[arg(long)]
    smoke: bool,
    /// How long the load runs, e.g. `90s`, `30m`, `1h` (default 15s smoke, 2m otherwise).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many writer operations, even before the duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Concurrent writers (default 8 smoke, 16 otherwise).
    #[arg(long)]
    writers: Option<usize>,
    /// Admin connection: the scratch database is created through it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_url: String,
    /// The scratch database, dropped and re-created at start.
    #[arg(long, default_value = "chronik_torture")]
    database: String,
    /// Restart the server with this shell command now and then, e.g.
    /// `pg_ctlcluster --skip-systemctl-redirect 15 main restart`. Never by default.
    #[arg(long, env = "CHRONIK_TORTURE_RESTART_CMD")]
    restart_cmd: Option<String>,
    /// Leave the relay to NATS JetStream out (it needs `nats-server` on the PATH, which
    /// the harness starts on a free port of its own and restarts).
    #[arg(long)]
    no_relay: bool,
    /// Where the JSON summary goes.
    #[arg(long, default_value = "target/torture")]
    out: PathBuf,
}

/// Parses `90`, `90s`, `30m`, `1h`, `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
        )),
    }
}

fn plan(args: &Args, seed: u64) -> Plan {
    let smoke = args.smoke;
    Plan {
        seed,
        duration: args
            .duration
            .unwrap_or(Duration::from_secs(if smoke { 15 } else { 120 })),
        max_ops: args.ops,
        writers: args.writers.unwrap_or(if smoke { 8 } else { 16 }).max(1),
        hot_streams: 4,
        cold_streams: if smoke { 500 } else { 5_000 },
        hold_max: Duration::from_millis(if smoke { 300 } else { 1_000 }),
        kill_every: Duration::from_millis(if smoke { 250 } else { 400 }),
        massacre_every: Duration::from_secs(if smoke { 8 } else { 30 }),
        restart_every: if smoke {
            // Once, around the middle of the run.
            args.duration.unwrap_or(Duration::from_secs(15))
        } else {
            Duration::from_secs(300)
        },
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Options for the scratch database with an application name (the killer's filter).
fn scratch(admin: &PgConnectOptions, database: &str, app: &str) -> PgConnectOptions {
    admin
        .clone()
        .database(database)
        .application_name(app)
        .options([("statement_timeout", "15000")])
}

async fn pool(options: PgConnectOptions, max: u32, acquire: Duration) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        // As `PgEventStore::connect_with` does: no ping on acquire.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("cannot connect to the scratch database")
}

/// Drops and re-creates the scratch database (rolling back any prepared transaction a
/// previous run left in it, which would block the drop).
async fn recreate(admin: &PgConnectOptions, database: &str) -> anyhow::Result<()> {
    if database == admin.get_database().unwrap_or("postgres")
        || !database
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("the scratch database name must be lowercase [a-z0-9_] and not the admin database");
    }
    let admin_pool = pool(admin.clone(), 1, Duration::from_secs(10))
        .await
        .context("cannot connect to DATABASE_URL")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&admin_pool)
            .await?;
    if exists {
        let old = pool(
            scratch(admin, database, app::CONTROL),
            1,
            Duration::from_secs(10),
        )
        .await?;
        let n = faults::roll_back_leftovers(&old).await?;
        if n > 0 {
            println!("rolled back {n} prepared transaction(s) left by an earlier run");
        }
        old.close().await;
    }
    // The name was validated above: plain quoting is safe.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&admin_pool)
    .await
    .context("cannot drop the scratch database")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{database}\""
    )))
    .execute(&admin_pool)
    .await
    .context("cannot create the scratch database")?;
    admin_pool.close().await;
    Ok(())
}

#[allow(clippy::too_many_lines)]
async fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let plan = plan(&args, seed);
    let mode = if args.smoke { "smoke" } else { "full" };
    println!(
        "chronik torture: seed {seed}, mode {mode}, duration {:?}, {} writers, {} hot + {} cold streams",
        plan.duration, plan.writers, plan.hot_streams, plan.cold_streams
    );
    let admin = PgConnectOptions::from_str(&args.database_url)
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is malformed (not shown)"))?;
    recreate(&admin, &args.database).await?;

    let control = pool(
        scratch(&admin, &args.database, app::CONTROL),
        3,
        Duration::from_secs(10),
    )
    .await?;
    let max_prepared: i64 = sqlx::query_scalar::<_, String>("SHOW max_prepared_transactions")
        .fetch_one(&control)
        .await?
        .parse()
        .unwrap_or(0);
    let config = PgStoreConfig::default();
    let big = Duration::from_secs(10);
    // The writers' sessions are set up as `PgEventStore::connect_with` sets up its own
    // (`enable_seqscan = off`), so their one-event appends take the store's one-statement
    // fast path; the holder's and the reactor's pools are a caller's own, whose appends to
    // existing streams go through `append_events`: both paths race on the same streams.
    let store = PgEventStore::from_pool_with(
        pool(
            scratch(&admin, &args.database, app::WRITER).options([("enable_seqscan", "off")]),
            u32::try_from(plan.writers).unwrap_or(64) + 2,
            big,
        )
        .await?,
        &config,
    );
    store
        .migrate()
        .await
        .context("migrating the scratch database")?;
    sqlx::raw_sql(projection::TABLE_DDL)
        .execute(&control)
        .await?;
    sqlx::raw_sql(partitions::TABLE_DDL)
        .execute(&control)
        .await?;
    let tiny = PgEventStore::from_pool_with(
        pool(
            scratch(&admin, &args.database, app::TINY),
            2,
            Duration::from_millis(25),
        )
        .await?,
        &config,
    );
    let holder = PgEventStore::from_pool_with(
        pool(scratch(&admin, &args.database, app::HOLDER), 6, big).await?,
        &config,
    );
    let projection_store = PgEventStore::from_pool_with(
        pool(scratch(&admin, &args.database, app::PROJECTION), 4, big).await?,
        &config,
    );
    let sampler_pool = pool(scratch(&admin, &args.database, app::SAMPLER), 1, big).await?;
    let reactor_store = PgEventStore::from_pool_with(
        pool(scratch(&admin, &args.database, app::REACTOR), 4, big).await?,
        &config,
    );

    let prepared_note = if max_prepared > 0 {
        format!("prepared transactions: on (max_prepared_transactions = {max_prepared})")
    } else {
        "prepared transactions: SKIPPED: the server has max_prepared_transactions = 0, so \
         PREPARE TRANSACTION is refused; set it above 0 and restart PostgreSQL \
         (.ci/run does) to include this fault"
            .to_owned()
    };
    println!("{prepared_note}");
    let restart_note = match &args.restart_cmd {
        Some(cmd) => format!("database restarts: on ({cmd})"),
        None => {
            "database restarts: off (give --restart-cmd or CHRONIK_TORTURE_RESTART_CMD)".to_owned()
        }
    };
    println!("{restart_note}");
    let nats = if args.no_relay {
        println!("relay to NATS JetStream: SKIPPED (--no-relay)");
        None
    } else {
        let server = relay::start_server().await.context(
            "cannot start the relay's NATS server (install nats-server, or pass --no-relay)",
        )?;
        println!(
            "relay to NATS JetStream: on (a nats-server -js of its own at {}, restarted now and then)",
            server.lock().map_or_else(|_| String::new(), |s| s.url())
        );
        Some(server)
    };

    let world = Arc::new(World::new(plan.clone(), store.clone(), tiny, holder));
    let torture = Arc::new(TortureProjection::new(Arc::clone(&world), 97));
    let partitioned = Arc::new(partitions::PartitionedProjection::new(
        Arc::clone(&world),
        89,
    ));
    let reactor = Arc::new(reactor::TortureReactor::new(
        Arc::clone(&world),
        reactor_store.clone(),
        11,
    ));
    let started = Instant::now();

    let mut writers = JoinSet::new();
    for i in 0..plan.writers {
        writers.spawn(workload::writer(Arc::clone(&world), i));
    }
    let mut faults = JoinSet::new();
    for i in 0..2 {
        faults.spawn(faults::held_open(Arc::clone(&world), i));
    }
    if max_prepared > 0 {
        faults.spawn(faults::prepared(Arc::clone(&world), control.clone()));
    }
    faults.spawn(faults::killer(Arc::clone(&world), control.clone()));
    faults.spawn(faults::massacre(Arc::clone(&world), control.clone()));
    faults.spawn(faults::pool_hog(Arc::clone(&world)));
    if let Some(cmd) = args.restart_cmd.clone() {
        faults.spawn(faults::restarter(Arc::clone(&world), cmd, control.clone()));
    }
    faults.spawn(projection::runner_chaos(
        Arc::clone(&world),
        projection_store.clone(),
        Arc::clone(&torture),
    ));
    faults.spawn(partitions::worker_chaos(
        Arc::clone(&world),
        projection_store.clone(),
        Arc::clone(&partitioned),
    ));
    faults.spawn(reactor::reactor_chaos(
        Arc::clone(&world),
        reactor_store.clone(),
        reactor,
    ));
    if let Some(server) = &nats {
        faults.spawn(relay::relay_chaos(
            Arc::clone(&world),
            projection_store.clone(),
            Arc::clone(server),
        ));
    }
    let (final_sample, final_sample_rx) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(projection::sampler(
        Arc::clone(&world),
        sampler_pool,
        final_sample_rx,
    ));

    // The load: until the duration or the operation budget is used up.
    while writers.join_next().await.is_some() {}
    world.request_stop();
    let load_time = started.elapsed();
    while faults.join_next().await.is_some() {}
    println!(
        "load done after {:.1} s ({} operations); faults stopped; settling",
        load_time.as_secs_f64(),
        world.ops()
    );

    // Every fault has stopped, but any idle pooled session may be one that a fault killed
    // (pools do not ping on acquire): settle and check on fresh connections only.
    control.close().await;
    let control = pool(scratch(&admin, &args.database, app::CONTROL), 3, big).await?;
    let store = PgEventStore::from_pool_with(
        pool(scratch(&admin, &args.database, app::WRITER), 2, big).await?,
        &config,
    );
    let projection_store = PgEventStore::from_pool_with(
        pool(scratch(&admin, &args.database, app::PROJECTION), 4, big).await?,
        &config,
    );

    // Settle: no prepared transaction of ours may be left, then the projection catches up.
    let mut settle_problems = Vec::new();
    match faults::roll_back_leftovers(&control).await {
        Ok(0) => {}
        Ok(n) => settle_problems.push(format!(
            "{n} prepared transaction(s) were still open after the faults stopped"
        )),
        Err(e) => settle_problems.push(format!("cannot list prepared transactions: {e}")),
    }
    // The reactor reacts to every selected trigger (on fresh connections, no crashes), so
    // that the projection's catch-up below sees the reactions too.
    let reactor_store = PgEventStore::from_pool_with(
        pool(scratch(&admin, &args.database, app::REACTOR), 4, big).await?,
        &config,
    );
    let last_trigger = read_stored(&control)
        .await?
        .iter()
        .filter(|e| reactor::selected(&e.stream, e.event_id))
        .map(|e| e.cursor)
        .max();
    if let Some((t, p)) = last_trigger {
        let reacted = match FeedCursor::new(t, p) {
            Ok(last) => {
                let final_reactor = Arc::new(reactor::TortureReactor::new(
                    Arc::clone(&world),
                    reactor_store.clone(),
                    0,
                ));
                reactor::catch_up(
                    &world,
                    &reactor_store,
                    &final_reactor,
                    last,
                    Duration::from_secs(120),
                )
                .await
            }
            Err(e) => Err(format!("the newest trigger's cursor is out of range: {e}")),
        };
        if let Err(why) = reacted {
            settle_problems.push(why);
        }
    }
    let checkpoint =
        match projection::catch_up(&world, &projection_store, &torture, Duration::from_secs(60))
            .await
        {
            Ok(c) => c,
            Err(why) => {
                settle_problems.push(why);
                None
            }
        };
    if let Err(why) = partitions::catch_up(
        &world,
        &projection_store,
        &partitioned,
        Duration::from_secs(120),
    )
    .await
    {
        settle_problems.push(why);
    }
    let mut relayed = None;
    if let Some(server) = &nats {
        match relay::catch_up(&world, &projection_store, server, Duration::from_secs(60)).await {
            Ok(()) => match relay::read_back(server).await {
                Ok(messages) => relayed = Some(messages),
                Err(e) => {
                    settle_problems.push(format!("cannot read the relay's stream back: {e:#}"));
                }
            },
            Err(why) => settle_problems.push(why),
        }
    }
    let _ = final_sample.send(());
    let _ = sampler.await;

    let stored = read_stored(&control).await?;
    let reactions = stored
        .iter()
        .filter(|e| reactor::selected(&e.stream, e.event_id))
        .filter_map(|e| {
            reactor::reaction_id(e.event_id).map(|r| (r, (e.event_id, reactor::target(e.event_id))))
        })
        .collect();
    let observed = Observed {
        records: world.take_records(),
        stored,
        feed: read_feed(&store).await?,
        projection: read_projection(&control, "torture_projection").await?,
        partitioned: Some(read_projection(&control, "torture_partitioned").await?),
        checkpoint: match checkpoint {
            Some(c) => Some((c.transaction(), c.position())),
            None => projection_store
                .load_checkpoint(projection::NAME)
                .await?
                .map(|c| (c.cursor.transaction(), c.cursor.position())),
        },
        samples: world.counts.get(C::checkpoint_samples),
        sample_violations: world.sample_violations(),
        resends: world.counts.get(C::idempotent_resends),
        resend_violations: world.resend_violations(),
        runner_stops: world.counts.get(C::runner_stops),
        runner_crashes: world.runner_crashes(),
        reactions,
        relayed,
    };
    let checks = model::check(&observed);
    let passed = settle_problems.is_empty() && checks.iter().all(model::CheckResult::passed);

    // The report.
    let c = &world.counts;
    println!(
        "\nseed {seed}, mode {mode}, load {:.1} s",
        load_time.as_secs_f64()
    );
    println!(
        "appends: {} ok ({} in caller transactions, {} events), {} conflicts, {} order errors, \
         {} pool timeouts, {} other definite failures",
        c.get(C::appends_ok),
        c.get(C::appends_ok_in_caller_tx),
        c.get(C::events_ok),
        c.get(C::conflicts),
        c.get(C::order_errors),
        c.get(C::pool_timeouts),
        c.get(C::failed_other),
    );
    println!(
        "multi-stream appends: {} stored whole, {} refused for conflicts",
        c.get(C::multi_stream_appends_ok),
        c.get(C::multi_stream_refused),
    );
    println!(
        "racing caller transactions: {} ({} refusals the transaction went on after; contested \
         ids: {} won, {} answered duplicate; {} commits after an ignored error of the caller's own)",
        c.get(C::racing_transactions),
        c.get(C::refused_in_caller_tx),
        c.get(C::contested_won),
        c.get(C::contested_duplicates),
        c.get(C::commits_refused),
    );
    println!(
        "ambiguous: {} resolved by re-sending the same ids ({} already appended, {} appended on \
         re-send, {} not stored), {} unresolved; {} idempotent re-sends of successes, {} with \
         altered content; {} anomalies",
        c.get(C::ambiguous_already_appended)
            + c.get(C::ambiguous_appended_on_resend)
            + c.get(C::ambiguous_not_stored),
        c.get(C::ambiguous_already_appended),
        c.get(C::ambiguous_appended_on_resend),
        c.get(C::ambiguous_not_stored),
        c.get(C::unresolved),
        c.get(C::idempotent_resends),
        c.get(C::reuse_resends),
        c.get(C::anomalies),
    );
    println!(
        "faults: held open {} committed / {} rolled back; prepared {} committed / {} rolled back{}; \
         killed {} mid-append, {} mid-projection-batch, {} holding a transaction; {} client timeouts mid-append; pool \
         exhausted {}x; runners {} aborted, {} stopped, {} started; {} handler failures ({} of them panics); all connections \
         dropped {}x ({} sessions); {} database restarts",
        c.get(C::held_open_committed),
        c.get(C::held_open_rolled_back),
        c.get(C::prepared_committed),
        c.get(C::prepared_rolled_back),
        if max_prepared > 0 { "" } else { " (skipped)" },
        c.get(C::killed_mid_append),
        c.get(C::killed_mid_projection_batch),
        c.get(C::killed_held_transaction),
        c.get(C::client_timeouts),
        c.get(C::pool_exhausted),
        c.get(C::runner_aborts),
        c.get(C::runner_stops),
        c.get(C::runner_starts),
        c.get(C::handler_failures),
        c.get(C::handler_panics),
        c.get(C::all_connections_dropped),
        c.get(C::connections_dropped),
        c.get(C::database_restarts),
    );
    println!(
        "reactor: two runners racing on {:?}: {} reactions carried out, {} deliveries found \
         already done, {} crashes right after a reaction's append, {} runners aborted of {} started",
        reactor::NAME,
        c.get(C::reactions_executed),
        c.get(C::reactions_already_done),
        c.get(C::reactor_crashes),
        c.get(C::reactor_runner_aborts),
        c.get(C::reactor_runner_starts),
    );
    println!(
        "partitioned projection {:?}: {} partitions on up to 3 workers, {} workers killed and {} \
         stopped of {} started",
        partitions::NAME,
        partitions::PARTITIONS,
        c.get(C::partition_workers_killed),
        c.get(C::partition_workers_stopped),
        c.get(C::partition_workers_started),
    );
    if nats.is_some() {
        println!(
            "relay {:?}: {} killed ({} with events in JetStream beyond its checkpoint, {} while \
             NATS was down) and {} stopped of {} started; NATS server restarted {}x; {} \
             publishes sent again, {} discarded by JetStream as duplicates",
            relay::STREAM,
            c.get(C::relay_kills),
            c.get(C::relay_kills_mid_batch),
            c.get(C::relay_kills_during_outage),
            c.get(C::relay_stops),
            c.get(C::relay_starts),
            c.get(C::nats_restarts),
            c.get(C::relay_resends),
            c.get(C::relay_duplicates),
        );
    }
    println!(
        "events verified: {} stored, {} in the feed, {} projected, {} projected by partitions, \
         {} in JetStream; {} checkpoint samples",
        observed.stored.len(),
        observed.feed.len(),
        observed.projection.len(),
        observed.partitioned.as_ref().map_or(0, Vec::len),
        observed.relayed.as_ref().map_or(0, Vec::len),
        observed.samples
    );
    println!("checks:");
    for check in &checks {
        let mark = if check.passed() { "PASS" } else { "FAIL" };
        println!("  [{mark}] {} ({})", check.name, check.checked);
        for e in &check.examples {
            println!("         - {e}");
        }
        if check.violations > check.examples.len() {
            println!(
                "         - ... {} more",
                check.violations - check.examples.len()
            );
        }
    }
    for p in &settle_problems {
        println!("  [FAIL] settling: {p}");
    }
    let replay = replay_command(&args, seed);
    let mut reasons: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{}: {} violation(s)", c.name, c.violations))
        .collect();
    reasons.extend(settle_problems.iter().cloned());
    if passed {
        println!("verdict: PASS");
    } else {
        println!("verdict: FAIL");
        for r in &reasons {
            println!("  - {r}");
        }
    }
    println!("replay with: {replay}");

    let summary = json!({
        "seed": seed,
        "mode": mode,
        "duration_requested_s": plan.duration.as_secs_f64(),
        "load_s": load_time.as_secs_f64(),
        "writers": plan.writers,
        "operations": world.ops(),
        "prepared_transactions": max_prepared > 0,
        "restart_cmd": args.restart_cmd.is_some(),
        "relay": nats.is_some(),
        "counts": c
            .all()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "events": {
            "stored": observed.stored.len(),
            "feed": observed.feed.len(),
            "projected": observed.projection.len(),
            "relayed": observed.relayed.as_ref().map(Vec::len),
        },
        "checks": checks,
        "settle_problems": settle_problems,
        "verdict": if passed { "PASS" } else { "FAIL" },
        "reasons": reasons,
        "replay": replay,
    });
    write_summary(&args.out, seed, &summary)?;
    Ok(passed)
}

/// The command that replays this run.
fn replay_command(args: &Args, seed: u64) -> String {
    let mut cmd = format!("cargo xtask torture --seed {seed}");
    if args.smoke {
        cmd.push_str(" --smoke");
    }
    if let Some(d) = args.duration {
        cmd.push_str(&format!(" --duration {}s", d.as_secs()));
    }
    if let Some(n) = args.ops {
        cmd.push_str(&format!(" --ops {n}"));
    }
    if let Some(n) = args.writers {
        cmd.push_str(&format!(" --writers {n}"));
    }
    if let Some(r) = &args.restart_cmd {
        cmd.push_str(&format!(" --restart-cmd {r:?}"));
    }
    if args.no_relay {
        cmd.push_str(" --no-relay");
    }
    cmd
}

fn write_summary(out: &PathBuf, seed: u64, summary: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let text = serde_json::to_string_pretty(summary)?;
    for name in [format!("seed-{seed}.json"), "latest.json".to_owned()] {
        let path = out.join(name);
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "summary: {}",
        out.join(format!("seed-{seed}.json")).display()
    );
    Ok(())
}

fn to_u64(v: i64) -> anyhow::Result<u64> {
    u64::try_from(v).context("a negative number where none can be")
}

/// Every row of `events`.
async fn read_stored(pool: &PgPool) -> anyhow::Result<Vec<StoredEvent>> {
    let rows = sqlx::query(
        "SELECT stream_id, version, event_id, transaction_id::text::bigint, global_position \
         FROM events",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredEvent {
                stream: r.try_get(0)?,
                version: to_u64(r.try_get(1)?)?,
                event_id: r.try_get(2)?,
                cursor: (to_u64(r.try_get(3)?)?, to_u64(r.try_get(4)?)?),
            })
        })
        .collect()
}

/// The whole feed from the start, through the public API.
async fn read_feed(store: &PgEventStore) -> anyhow::Result<Vec<StoredEvent>> {
    let mut feed = Vec::new();
    let mut after = FeedCursor::START;
    loop {
        let page = store
            .read_feed(after, &FeedFilter::all(), MAX_FEED_PAGE)
            .await?;
        if page.events.is_empty() {
            return Ok(feed);
        }
        after = page.next;
        feed.extend(page.events.into_iter().map(|e| StoredEvent {
            stream: e.stream_id.as_str().to_owned(),
            version: e.version.get(),
            event_id: e.event_id.as_uuid(),
            cursor: (e.cursor.transaction(), e.cursor.position()),
        }));
    }
}

/// A projection's table (`torture_projection` or `torture_partitioned`).
async fn read_projection(pool: &PgPool, table: &str) -> anyhow::Result<Vec<ProjectedEvent>> {
    let sql = match table {
        "torture_partitioned" => {
            "SELECT seq, stream_id, version, event_id FROM torture_partitioned"
        }
        _ => "SELECT seq, stream_id, version, event_id FROM torture_projection",
    };
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(ProjectedEvent {
                seq: to_u64(r.try_get(0)?)?,
                stream: r.try_get(1)?,
                version: to_u64(r.try_get(2)?)?,
                event_id: r.try_get(3)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
