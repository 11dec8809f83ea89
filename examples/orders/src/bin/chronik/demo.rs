//! `chronik demo`: the whole story, on any store that implements the three ports.
//!
//! 1. many orders placed, filled, shipped or cancelled from concurrent tasks;
//! 2. many tasks adding lines to one order at once: real conflicts, retried;
//! 3. a long stream that gets snapshotted, loaded with and without the snapshot;
//! 4. a v1 `OrderPlaced` stored raw and read back through the upcaster;
//! 5. business-rule refusals, which write nothing;
//! 6. the global feed read back (upcast) and a checkpoint saved;
//! 7. a projection runner catching up with the feed, and the read model it built;
//! 8. a process across streams (`process.rs`): a checkout appended atomically to two orders
//!    and two payments, one refused as a whole, a payment received, the `ShipPaidOrders`
//!    reactor shipping its order exactly once across a restart, and the chain as a tree;
//!
//! then a summary, written with `writeln!` so that a closed stdout (`chronik demo | head`)
//! is an error to return, not a panic. Every phase checks what it shows (no lost update, snapshot + tail equals
//! a full replay, refused commands wrote nothing) and fails the demo if it does not hold.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use chronik::{
    Aggregate as _, CausationId, CorrelationId, EventId, EventType, ExpectedVersion, FeedCursor,
    Metadata, NewEvent, RecordedEvent, RetryPolicy, SnapshotPolicy, StreamId, Version,
};
use chronik::{
    CheckpointStore, EventStore, FeedFilter, Loaded, Repository, RepositoryError, SnapshotStore,
    StoreError, Upcasting,
};
use futures::TryStreamExt as _;
use orders::{Order, OrderCommand, OrderError, OrderStatus};
use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

use chronik::cli::fmt::{count, ms, n};

use crate::round_trip::RoundTrip;

/// Everything the demo needs from a store: the three ports, shared by cloning.
pub(crate) trait Store:
    EventStore + SnapshotStore + CheckpointStore + Clone + 'static
{
}
impl<S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static> Store for S {}

/// Phase 7: a projection runner of the store's kind, started over the whole feed.
pub(crate) trait ReadModel<S> {
    /// Runs a projection until it has applied `last`, prints what it built (checking it
    /// against `expected`), stops it, and returns the summary line's value.
    async fn catch_up(
        &self,
        store: &S,
        last: FeedCursor,
        expected: &Expected,
    ) -> anyhow::Result<String>;
}

/// What the demo wrote, for phase 7 to check its read model against.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    /// Every order the demo placed.
    pub(crate) placed: u64,
    /// Orders of phase 1 and the upcast one, with the status each ended in.
    pub(crate) orders: Vec<(StreamId, OrderStatus)>,
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Orders placed concurrently in phase 1.
    pub(crate) orders: u32,
    /// Concurrent tasks, and racing tasks in phase 2 (at least two race).
    pub(crate) concurrency: u32,
    /// Events on the long stream of phase 3.
    pub(crate) long_stream: u32,
}

/// Lines each racing task adds to the contended order.
const LINES_PER_RACER: u32 = 5;
/// Orders `i` with `i % CANCEL_EVERY == CANCEL_EVERY - 1` are cancelled, the rest shipped.
const CANCEL_EVERY: u32 = 5;
/// Name of the checkpoint the feed reader saves.
const CHECKPOINT: &str = "chronik-demo";
/// Feed page size.
const FEED_PAGE: usize = 1_000;
/// How long phase 6 waits for the feed to show the demo's newest append.
const FEED_WAIT: Duration = Duration::from_secs(60);

/// The demo's repository: every read is upcast, every append goes through a round trip.
type Repo<S> = Repository<Order, Upcasting<RoundTrip<S>>>;

/// One stream and the commands to run on it, in order, under one correlation id.
#[derive(Debug)]
struct Job {
    id: StreamId,
    commands: Vec<OrderCommand>,
}

/// What a batch of commands did.
#[derive(Debug, Default, Clone)]
struct Tally {
    succeeded: u64,
    events: u64,
    conflicts_retried: u64,
    snapshots: u64,
    gave_up: u64,
    refused: BTreeMap<String, u64>,
    /// The cursor of the newest append, if any: phase 6 reads the feed up to it.
    last: Option<FeedCursor>,
}

impl Tally {
    fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn commands(&self) -> u64 {
        self.succeeded + self.gave_up + self.refused_total()
    }

    /// Notes an append at `cursor`.
    fn appended(&mut self, cursor: FeedCursor) {
        self.last = self.last.max(Some(cursor));
    }

    fn merge(&mut self, other: &Tally) {
        self.last = self.last.max(other.last);
        self.succeeded += other.succeeded;
        self.events += other.events;
        self.conflicts_retried += other.conflicts_retried;
        self.snapshots += other.snapshots;
        self.gave_up += other.gave_up;
        for (reason, n) in &other.refused {
            *self.refused.entry(reason.clone()).or_default() += n;
        }
    }
}

/// Runs one command and records its outcome. Only a store failure is an error.
async fn execute<S: Store>(
    repo: &Repo<S>,
    id: &StreamId,
    command: &OrderCommand,
    correlation: CorrelationId,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let metadata = Metadata::default()
        .with_correlation(correlation)
        .with_causation(CausationId::new(Uuid::new_v4()));
    match repo.execute_with(id, command.clone(), metadata).await {
        Ok(outcome) => {
            tally.succeeded += 1;
            tally.events += outcome.events_written as u64;
            if let Some(append) = &outcome.append {
                tally.appended(append.cursor);
            }
            tally.conflicts_retried += u64::from(outcome.conflicts);
            tally.snapshots += u64::from(outcome.snapshot_taken);
        }
        Err(RepositoryError::Domain(refusal)) => {
            *tally.refused.entry(refusal.to_string()).or_default() += 1;
        }
        Err(RepositoryError::RetriesExhausted {
            attempts,
            conflicts,
            last,
            ..
        }) => {
            tracing::info!(stream = %id, attempts, error = %last, "command gave up");
            tally.gave_up += 1;
            tally.conflicts_retried += u64::from(conflicts.min(attempts.saturating_sub(1)));
        }
        // Every demo command is retry-safe, so `Conflict` (not retried) would be a bug.
        Err(e @ (RepositoryError::Store(_) | RepositoryError::Conflict(_))) => {
            return Err(e).with_context(|| format!("{command:?} on {id}"));
        }
    }
    Ok(())
}

/// Runs `jobs` on `concurrency` tasks that start together; each job's commands run in order.
async fn run_jobs<S: Store>(
    repo: &Arc<Repo<S>>,
    jobs: Vec<Job>,
    concurrency: u32,
) -> anyhow::Result<Tally> {
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let workers = usize::try_from(concurrency)
        .unwrap_or(usize::MAX)
        .clamp(1, jobs.len().max(1));
    let start = Arc::new(Barrier::new(workers));
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (repo, jobs, next, start) = (repo.clone(), jobs.clone(), next.clone(), start.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            start.wait().await;
            while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                let correlation = CorrelationId::new(Uuid::new_v4());
                for command in &job.commands {
                    execute(&repo, &job.id, command, correlation, &mut tally).await?;
                }
            }
            anyhow::Ok(tally)
        });
    }
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        total.merge(&done.context("a demo task panicked")??);
    }
    Ok(total)
}

fn new_order_id() -> anyhow::Result<StreamId> {
    Ok(StreamId::for_category(Order::TYPE, Uuid::new_v4())?)
}

fn place(customer: &str, total_amount: i64) -> OrderCommand {
    OrderCommand::Place {
        customer_id: customer.to_owned(),
        total_amount,
    }
}

fn line(sku: &str, quantity: u32, unit_price: i64) -> OrderCommand {
    OrderCommand::AddLine {
        sku: sku.to_owned(),
        quantity,
        unit_price,
    }
}

fn ship(carrier: &str) -> OrderCommand {
    OrderCommand::Ship {
        carrier: carrier.to_owned(),
    }
}

fn cancel() -> OrderCommand {
    OrderCommand::Cancel {
        reason: "customer changed their mind".to_owned(),
    }
}

/// [`run`], stopped at once by Ctrl-C: then it removes the one-off checkpoints the demo
/// may have saved (the feed reader's and the reactor's, which `doctor` would report as
/// lagging projections) and fails with [`chronik::cli::Interrupted`] (exit status 130),
/// saying what stays: `kept` names where its events are (`None`: the in-memory store, gone
/// with the process).
pub(crate) async fn run_interruptible<S: Store>(
    store: S,
    label: &str,
    options: &Options,
    read_model: &impl ReadModel<S>,
    kept: Option<&str>,
) -> anyhow::Result<()> {
    let demo = run(store.clone(), label, options, read_model);
    tokio::pin!(demo);
    let interrupted = tokio::select! {
        // Listening before the demo's first line.
        biased;
        r = tokio::signal::ctrl_c() => r.is_ok(),
        result = &mut demo => return result.context("demo failed"),
    };
    if !interrupted {
        return demo.await.context("demo failed");
    }
    let _ = writeln!(io::stdout());
    let mut removed = Vec::new();
    for name in [CHECKPOINT, crate::process::REACTOR] {
        if store.delete_checkpoint(name).await.with_context(|| {
            format!("the demo was stopped by Ctrl-C, and removing its checkpoint {name} failed")
        })? {
            removed.push(name);
        }
    }
    let checkpoints = if removed.is_empty() {
        "it had no one-off checkpoint to remove".to_owned()
    } else {
        format!(
            "its one-off checkpoint {} was removed",
            removed.join(" and ")
        )
    };
    Err(chronik::cli::Interrupted(match kept {
        None => "the demo was stopped by Ctrl-C: its in-memory store is gone with it".to_owned(),
        Some(place) => format!(
            "the demo was stopped by Ctrl-C: the events it wrote stay in {place} (events are never \
             deleted) and {checkpoints}; `chronik projections run orders --until-caught-up` brings \
             the orders read model up to date"
        ),
    })
    .into())
}

/// Runs the demo on `store` and prints its story and summary to stdout.
pub(crate) async fn run<S: Store>(
    store: S,
    label: &str,
    options: &Options,
    read_model: &impl ReadModel<S>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    writeln!(
        io::stdout(),
        "chronik demo on the {label} store: {}, {}, a {}-event stream\n",
        count(options.orders.into(), "order"),
        count(options.concurrency.into(), "concurrent task"),
        n(options.long_stream),
    )?;
    let registry = Arc::new(orders::upcasters().context("the orders upcasters are invalid")?);
    let repo = Arc::new(
        Repository::<Order, _>::new(Upcasting::new(RoundTrip(store.clone()), registry))
            .with_sleep(tokio::time::sleep)
            .with_snapshots(SnapshotPolicy::BySize),
    );
    let feed_start = store
        .feed_head()
        .await
        .context("cannot read the feed head")?
        .last
        .unwrap_or(FeedCursor::START);
    let mut total = Tally::default();

    let placed = place_orders(&repo, options).await?;
    total.merge(&placed.tally);
    let race = contend(&repo, options).await?;
    total.merge(&race);
    let long = long_stream(&repo, options).await?;
    total.merge(&long);
    let (legacy, legacy_id) = upcast_v1(&store, &repo).await?;
    total.merge(&legacy);
    let refused = refusals(&store, &repo, &placed, options).await?;
    total.merge(&refused);
    let feed = read_feed(&repo, feed_start, total.last).await?;
    let orders_total = u64::from(options.orders) + 3;
    heading(7, "a projection catches up with the feed")?;
    let mut expected = Expected {
        placed: orders_total,
        orders: placed.orders.clone(),
    };
    expected.orders.push((legacy_id, OrderStatus::Shipped));
    let projected = read_model
        .catch_up(&store, feed.last, &expected)
        .await
        .context("the projection did not catch up")?;
    let process = crate::process::run(&store)
        .await
        .context("the process across streams failed")?;
    total.events += process.events;

    writeln!(io::stdout(), "\nsummary")?;
    row("store", label)?;
    row(
        "orders",
        format_args!(
            "{} ({} placed concurrently, 1 contended, 1 long, 1 imported at schema v1)",
            n(orders_total),
            n(options.orders),
        ),
    )?;
    row(
        "commands",
        format_args!(
            "{} succeeded, {} refused by business rules, {} gave up after retries",
            n(total.succeeded),
            n(total.refused_total()),
            n(total.gave_up),
        ),
    )?;
    row(
        "events written",
        format_args!("{} (+1 imported v1 event)", n(total.events)),
    )?;
    row("conflicts retried", n(total.conflicts_retried))?;
    row(
        "snapshots",
        format_args!(
            "{} written, the latest of each stream kept",
            n(total.snapshots)
        ),
    )?;
    row(
        "feed events read",
        format_args!(
            "{} in {}, upcast",
            n(feed.events),
            count(feed.pages, "page")
        ),
    )?;
    row("read model", projected)?;
    row(
        "process",
        "1 checkout across 4 streams in one append, 1 refused as a whole, 1 order shipped by \
         the reactor, once (its redelivery was already done)",
    )?;
    row(
        "throughput",
        format_args!(
            "{} commands/s while placing orders{}",
            n(per_second(placed.tally.commands(), placed.elapsed)),
            if cfg!(debug_assertions) {
                " (a debug build: `cargo run --release -- demo` for real numbers)"
            } else {
                ""
            }
        ),
    )?;
    row("total time", ms(started.elapsed()))?;
    Ok(())
}

/// What phase 1 produced: the orders and their final states.
struct Placed {
    tally: Tally,
    elapsed: Duration,
    /// Every order of phase 1, with the status it ended in.
    orders: Vec<(StreamId, OrderStatus)>,
}

async fn place_orders<S: Store>(repo: &Arc<Repo<S>>, options: &Options) -> anyhow::Result<Placed> {
    heading(1, "placing orders from concurrent tasks")?;
    const CARRIERS: [&str; 3] = ["dhl", "ups", "postnord"];
    let mut jobs = Vec::with_capacity(options.orders as usize);
    let mut orders = Vec::with_capacity(options.orders as usize);
    for i in 0..options.orders {
        let id = new_order_id()?;
        let cancelled = i % CANCEL_EVERY == CANCEL_EVERY - 1;
        let last = if cancelled {
            cancel()
        } else {
            ship(CARRIERS[i as usize % CARRIERS.len()])
        };
        let status = if cancelled {
            OrderStatus::Cancelled
        } else {
            OrderStatus::Shipped
        };
        jobs.push(Job {
            id: id.clone(),
            commands: vec![
                place(
                    &format!("customer-{}", i % 97),
                    1_000 + i64::from(i % 50) * 100,
                ),
                line("sku-espresso-beans", 1 + i % 3, 1_450),
                line("sku-burr-grinder", 1, 12_900),
                last,
            ],
        });
        orders.push((id, status));
    }
    let t = Instant::now();
    let tally = run_jobs(repo, jobs, options.concurrency).await?;
    let elapsed = t.elapsed();
    ensure!(
        tally.refused.is_empty() && tally.gave_up == 0,
        "placing orders should never be refused or give up: {tally:?}"
    );
    let cancelled = orders
        .iter()
        .filter(|(_, s)| *s == OrderStatus::Cancelled)
        .count();
    detail(format_args!(
        "{} from {}: {} commands, {} events in {} ({} commands/s)",
        count(options.orders.into(), "order"),
        count(options.concurrency.into(), "task"),
        n(tally.commands()),
        n(tally.events),
        ms(elapsed),
        n(per_second(tally.commands(), elapsed)),
    ))?;
    detail(format_args!(
        "each placed, given 2 lines, then shipped or cancelled: {} shipped, {} cancelled",
        n((orders.len() - cancelled) as u64),
        n(cancelled as u64),
    ))?;
    Ok(Placed {
        tally,
        elapsed,
        orders,
    })
}

async fn contend<S: Store>(repo: &Arc<Repo<S>>, options: &Options) -> anyhow::Result<Tally> {
    heading(2, "conflicting commands, retried")?;
    let id = new_order_id()?;
    let mut tally = Tally::default();
    execute(
        repo,
        &id,
        &place("customer-hot", 5_000),
        CorrelationId::new(Uuid::new_v4()),
        &mut tally,
    )
    .await?;
    // At least two, so that there is a race even with `--concurrency 1`.
    let racers = options.concurrency.max(2);
    let jobs = (0..racers)
        .map(|r| Job {
            id: id.clone(),
            commands: (0..LINES_PER_RACER)
                .map(|k| line(&format!("sku-racer-{r}-{k}"), 1, 100))
                .collect(),
        })
        .collect();
    let t = Instant::now();
    let race = run_jobs(repo, jobs, racers).await?;
    let elapsed = t.elapsed();
    tally.merge(&race);
    let loaded = repo.load(&id).await?;
    ensure!(
        loaded.state.lines == race.succeeded,
        "lost update: {} lines recorded, {} commands succeeded",
        loaded.state.lines,
        race.succeeded
    );
    let policy = RetryPolicy::default();
    // Said, so that `--concurrency 1` racing two tasks is no surprise.
    let why = if racers > options.concurrency {
        " (a race needs two, whatever --concurrency says)"
    } else {
        ""
    };
    detail(format_args!(
        "{racers} tasks{why} add {LINES_PER_RACER} lines each to {id} at the same time: {} succeeded, {} gave up, in {}",
        n(race.succeeded),
        n(race.gave_up),
        ms(elapsed),
    ))?;
    detail(format_args!(
        "{} retried (the store refused a stale expected version; retry policy: {} attempts, backoff with jitter)",
        count(race.conflicts_retried, "conflict"),
        policy.max_attempts(),
    ))?;
    if race.gave_up > 0 {
        detail(format_args!(
            "{} lost {} races in a row: the caller gets RetriesExhausted, and nothing was half-written",
            count(race.gave_up, "command"),
            policy.max_attempts(),
        ))?;
    }
    detail(format_args!(
        "the order has {} lines at version {}: no update was lost",
        n(loaded.state.lines),
        loaded.version,
    ))?;
    Ok(tally)
}

async fn long_stream<S: Store>(repo: &Arc<Repo<S>>, options: &Options) -> anyhow::Result<Tally> {
    heading(3, "a long stream, snapshotted")?;
    let id = new_order_id()?;
    let job = Job {
        id: id.clone(),
        commands: std::iter::once(place("customer-long", 1_000))
            .chain((1..options.long_stream).map(|k| line(&format!("sku-{k}"), 1, 10)))
            .collect(),
    };
    let t = Instant::now();
    let tally = run_jobs(repo, vec![job], 1).await?;
    let written = t.elapsed();

    let t = Instant::now();
    let with: Loaded<Order> = repo.load(&id).await?;
    let with_time = t.elapsed();
    let plain = Repository::<Order, _>::new(repo.store().clone());
    let t = Instant::now();
    let without = plain.load(&id).await?;
    let without_time = t.elapsed();
    ensure!(
        with.state == without.state && with.version == without.version,
        "snapshot + tail differs from a full replay at {id}"
    );
    detail(format_args!(
        "{id}: {} events in {}, {} written (policy: by stream size; the store keeps the latest)",
        n(with.version.get()),
        ms(written),
        count(tally.snapshots, "snapshot"),
    ))?;
    if with.snapshot_version == Version::ZERO {
        detail("no snapshot yet: the stream is shorter than the policy's threshold")?;
    } else {
        detail(format_args!(
            "latest snapshot at version {}",
            n(with.snapshot_version.get())
        ))?;
    }
    detail(format_args!(
        "load with the snapshot replays {} events ({}); without it {} events ({}); same state",
        n(with.events_replayed),
        ms(with_time),
        n(without.events_replayed),
        ms(without_time),
    ))?;
    Ok(tally)
}

async fn upcast_v1<S: Store>(store: &S, repo: &Arc<Repo<S>>) -> anyhow::Result<(Tally, StreamId)> {
    heading(4, "a v1 event read through the upcaster")?;
    let id = new_order_id()?;
    let v1 = NewEvent::new(
        EventId::new(Uuid::now_v7())?,
        EventType::new("OrderPlaced")?,
        1,
        json!({ "customer_id": "legacy-customer", "amount": 4_200 }),
        Metadata::default().with_header("imported-from", "orders-v1"),
    )?;
    let imported = store
        .append(&id, ExpectedVersion::NoStream, &[v1])
        .await
        .context("cannot append the v1 event")?;

    let stored = first_event(store.read_stream(&id, Version::FIRST)).await?;
    let read = first_event(repo.store().read_stream(&id, Version::FIRST)).await?;
    detail(format_args!(
        "stored:  {} v{} {}",
        stored.event_type, stored.schema_version, stored.payload
    ))?;
    detail(format_args!(
        "read as: {} v{} {}",
        read.event_type, read.schema_version, read.payload
    ))?;

    let without = Repository::<Order, _>::new(store.clone());
    match without.load(&id).await {
        Err(e @ StoreError::Decode { .. }) => {
            detail(format_args!("without the upcaster a load fails: {e}"))?;
        }
        Err(e) => return Err(e).context("loading the v1 order without the upcaster"),
        Ok(_) => bail!("a v1 OrderPlaced decoded without its upcaster: the schemas should differ"),
    }

    let mut tally = Tally::default();
    tally.appended(imported.cursor);
    let correlation = CorrelationId::new(Uuid::new_v4());
    for command in [line("sku-descaler", 2, 495), ship("dhl")] {
        execute(repo, &id, &command, correlation, &mut tally).await?;
    }
    ensure!(
        tally.succeeded == 2,
        "commands on the upcast order failed: {tally:?}"
    );
    let order = repo.load(&id).await?.state;
    ensure!(
        order.total_amount == 4_200 + 2 * 495 && order.status == OrderStatus::Shipped,
        "unexpected state of the upcast order: {order:?}"
    );
    detail(format_args!(
        "through the upcaster (as every read in this demo): {} placed it for 4,200, a line of 2 x 495 was added, it was {}: total {}",
        order.customer_id,
        order.status.as_str(),
        n(order.total_amount),
    ))?;
    Ok((tally, id))
}

async fn first_event(mut events: chronik::EventStream<'_>) -> anyhow::Result<RecordedEvent> {
    events
        .try_next()
        .await?
        .context("the stream just written is empty")
}

async fn refusals<S: Store>(
    store: &S,
    repo: &Arc<Repo<S>>,
    placed: &Placed,
    options: &Options,
) -> anyhow::Result<Tally> {
    heading(5, "business rules")?;
    let jobs: Vec<Job> = placed
        .orders
        .iter()
        .map(|(id, status)| Job {
            id: id.clone(),
            commands: match status {
                OrderStatus::Cancelled => vec![ship("dhl")],
                _ => vec![cancel(), line("sku-late", 1, 100)],
            },
        })
        .collect();
    let commands: usize = jobs.iter().map(|j| j.commands.len()).sum();
    let tally = run_jobs(repo, jobs, options.concurrency).await?;
    ensure!(
        tally.refused_total() == commands as u64,
        "expected all {commands} commands to be refused: {tally:?}"
    );
    ensure!(
        tally
            .refused
            .contains_key(&OrderError::ShipCancelled.to_string())
            || placed.orders.len() < CANCEL_EVERY as usize,
        "shipping a cancelled order was not refused"
    );
    // Every order of phase 1 is still at version 4 (placed, 2 lines, shipped/cancelled).
    let four = Version::new(4)?;
    for (id, _) in &placed.orders {
        let v = store.stream_version(id).await?;
        ensure!(v == four, "refused commands wrote to {id}: version {v}");
    }
    detail(format_args!(
        "{} commands on shipped and cancelled orders, every one refused:",
        n(commands as u64)
    ))?;
    for (reason, count) in &tally.refused {
        detail(format_args!("  {:>6} x {reason}", n(*count)))?;
    }
    detail(format_args!(
        "nothing was written: {}",
        match placed.orders.len() {
            1 => "the order is still at version 4".to_owned(),
            all => format!("all {} orders are still at version 4", n(all as u64)),
        }
    ))?;
    Ok(tally)
}

/// What phase 6 read.
struct Feed {
    events: u64,
    pages: u64,
    /// The cursor of the last event read.
    last: FeedCursor,
}

/// Reads the feed after `start` up to `until` (the demo's newest append). On PostgreSQL the
/// feed shows a transaction only once every older one has ended, so an empty page before
/// `until` means wait (another session's transaction is still open), not the end.
async fn read_feed<S: Store>(
    repo: &Arc<Repo<S>>,
    start: FeedCursor,
    until: Option<FeedCursor>,
) -> anyhow::Result<Feed> {
    heading(6, "the global feed, upcast")?;
    let deadline = Instant::now() + FEED_WAIT;
    let feed = repo.store();
    let registry = feed.registry();
    let t = Instant::now();
    let (mut cursor, mut events, mut pages) = (start, 0u64, 0u64);
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut stale = 0u64;
    loop {
        let page = feed
            .read_feed(cursor, &FeedFilter::all(), FEED_PAGE)
            .await
            .with_context(|| format!("reading the feed after {cursor}"))?;
        if page.events.is_empty() {
            match until {
                Some(until) if cursor < until => {
                    ensure!(
                        Instant::now() < deadline,
                        "the feed did not show {until} within {FEED_WAIT:?}: an older \
                         transaction is still open (`chronik doctor` names it)"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                _ => break,
            }
        }
        pages += 1;
        for e in &page.events {
            events += 1;
            *by_type.entry(e.event_type.to_string()).or_default() += 1;
            if registry
                .current_version(e.event_type.as_str())
                .is_some_and(|v| v != e.schema_version)
            {
                stale += 1;
            }
        }
        cursor = page.next;
    }
    let elapsed = t.elapsed();
    ensure!(stale == 0, "{stale} feed events were not upcast");
    detail(format_args!(
        "{} events written since the demo started, in {} of up to {} ({}); all at their current schema",
        n(events),
        count(pages, "page"),
        n(FEED_PAGE as u64),
        ms(elapsed),
    ))?;
    let kinds: Vec<String> = by_type
        .iter()
        .map(|(t, c)| format!("{t} {}", n(*c)))
        .collect();
    detail(format_args!("by type: {}", kinds.join(", ")))?;
    feed.save_checkpoint(CHECKPOINT, cursor, events).await?;
    let saved = feed.load_checkpoint(CHECKPOINT).await;
    // A one-off: deleted before anything is checked, so that no run leaves a checkpoint
    // that `projections status` and `doctor` would report as a projection falling behind.
    let deleted = feed.delete_checkpoint(CHECKPOINT).await;
    let saved = saved?.context("the checkpoint just saved is missing")?;
    ensure!(deleted?, "the checkpoint just saved could not be deleted");
    ensure!(saved.cursor == cursor, "checkpoint did not round-trip");
    detail(format_args!(
        "checkpoint {CHECKPOINT:?} saved at {}: a projection would resume from there (a feed \
         cursor, <transaction>:<position>: the feed is in that order, and a reader asks for \
         what comes after a cursor; deleted again: the demo runs no projection by that name)",
        saved.cursor
    ))?;
    Ok(Feed {
        events,
        pages,
        last: cursor,
    })
}

pub(crate) fn heading(step: u32, title: &str) -> io::Result<()> {
    writeln!(io::stdout(), "[{step}/8] {title}")
}

pub(crate) fn detail(text: impl fmt::Display) -> io::Result<()> {
    writeln!(io::stdout(), "      {text}")
}

fn row(name: &str, value: impl fmt::Display) -> io::Result<()> {
    writeln!(io::stdout(), "  {name:<18} {value}")
}

fn per_second(count: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        // Rounded to whole commands per second for display.
        (count as f64 / secs).round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_per_second_round_and_survive_zero() {
        assert_eq!(per_second(10, Duration::ZERO), 0);
        assert_eq!(per_second(10, Duration::from_millis(500)), 20);
    }
}
