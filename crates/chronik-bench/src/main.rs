//! `chronik-bench`: chronik against raw-SQL baselines measured in the same run.
//!
//! Run it with `cargo xtask bench` (release build, full durations) or
//! `cargo xtask bench --quick` (seconds per scenario; what CI's smoke step runs).
//! Results go to `target/bench/results.{json,md}`.

mod command;
mod harness;
mod memory;
mod multi;
mod pg;
mod projection;
mod relay;
// The throwaway primary-and-standby helper of chronik-testkit, compiled in here: the bench
// is a binary and may not link testkit (the layering step), and the helper needs nothing
// of testkit's test dependencies.
#[allow(dead_code, unreachable_pub)]
#[path = "../../chronik-testkit/src/replica.rs"]
mod replica;
mod report;
mod rss;
mod standby;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::harness::Budget;
use crate::report::Report;

/// Benchmarks chronik against raw-SQL baselines in one run.
#[derive(Debug, Parser)]
#[command(name = "chronik-bench", version)]
struct Args {
    /// Smoke mode: every scenario briefly, small data sets (proves they still work).
    #[arg(long)]
    quick: bool,
    /// PostgreSQL to measure against (a scratch schema is created and dropped).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where to write results.json and results.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Measured seconds per variant (default 5, 8 for `command`; quick 0.3).
    #[arg(long)]
    seconds: Option<f64>,
    /// Run only the scenarios whose names start with one of these (e.g. `--only load`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The NATS server (with JetStream) of the `relay` scenario; without one it is skipped.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats_url: String,
    /// Writer counts of the concurrent scenarios instead of the mode's (e.g. `--writers 16`).
    #[arg(long, value_delimiter = ',')]
    writers: Vec<usize>,
    /// Alternating rounds per variant instead of the mode's (5 full, 1 quick; `feed-catch-up`
    /// runs at least 2).
    #[arg(long)]
    rounds: Option<u32>,
    /// Events in the `feed-catch-up` feed instead of the mode's (1,000,000 full, 5,000 quick).
    #[arg(long)]
    feed_events: Option<usize>,
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) budget: Budget,
    pub(crate) concurrency: &'static [usize],
    pub(crate) batch_concurrency: &'static [usize],
    pub(crate) long_stream: usize,
    pub(crate) feed_events: usize,
    pub(crate) load_repeats: usize,
    /// Alternating rounds per variant (see `harness::interleaved`).
    pub(crate) rounds: u32,
    /// Events in the very long stream of the snapshot and memory scenario.
    pub(crate) huge_stream: usize,
    /// Writers of the live-latency scenario.
    pub(crate) live_concurrency: &'static [usize],
    /// Orders (five events each) of the read-model scenario.
    pub(crate) orders: usize,
    /// The command scenario's budget (1 s warm-up, 8 s measured in a full run).
    pub(crate) command_budget: Budget,
    /// Events already in the schemas of `command-1m`.
    pub(crate) command_prefill: usize,
    /// Events the `relay` scenario publishes per round.
    pub(crate) relay_events: usize,
    /// Events the `projection-standby` scenario's projections read per round.
    pub(crate) standby_events: usize,
    /// Scenario name prefixes to run (empty: all).
    pub(crate) only: &'static [String],
}

impl Plan {
    /// Whether scenario `name` is selected.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Whether `--only` names scenario `name` exactly.
    pub(crate) fn names(&self, name: &str) -> bool {
        self.only.iter().any(|p| p == name)
    }
}

fn plan(args: &Args) -> Plan {
    let mut plan = mode_plan(args);
    if !args.writers.is_empty() {
        let writers: &'static [usize] = Vec::leak(args.writers.clone());
        plan.concurrency = writers;
        plan.batch_concurrency = writers;
        plan.live_concurrency = writers;
    }
    if let Some(rounds) = args.rounds {
        plan.rounds = rounds.max(1);
    }
    if let Some(events) = args.feed_events {
        plan.feed_events = events.max(1);
    }
    plan
}

fn mode_plan(args: &Args) -> Plan {
    let measure = args.seconds.map(Duration::from_secs_f64);
    if args.quick {
        Plan {
            budget: Budget {
                warmup: Duration::from_millis(100),
                measure: measure.unwrap_or(Duration::from_millis(300)),
            },
            concurrency: &[1, 4],
            batch_concurrency: &[1],
            long_stream: 2_000,
            feed_events: 5_000,
            load_repeats: 3,
            rounds: 1,
            huge_stream: 5_000,
            live_concurrency: &[4],
            orders: 300,
            command_budget: Budget {
                warmup: Duration::from_millis(100),
                measure: measure.unwrap_or(Duration::from_millis(300)),
            },
            command_prefill: 20_000,
            relay_events: 2_000,
            standby_events: 5_000,
            only: Vec::leak(args.only.clone()),
        }
    } else {
        Plan {
            budget: Budget {
                warmup: Duration::from_secs(1),
                measure: measure.unwrap_or(Duration::from_secs(5)),
            },
            concurrency: &[1, 4, 16, 64],
            batch_concurrency: &[1, 4],
            long_stream: 10_000,
            feed_events: 1_000_000,
            load_repeats: 10,
            rounds: 5,
            huge_stream: 1_000_000,
            live_concurrency: &[16, 64],
            orders: 20_000,
            command_budget: Budget {
                warmup: Duration::from_secs(1),
                measure: measure.unwrap_or(Duration::from_secs(8)),
            },
            command_prefill: 1_000_000,
            relay_events: 100_000,
            standby_events: 200_000,
            only: Vec::leak(args.only.clone()),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = plan(&args);
    let mut report = Report {
        out: Some(args.out.clone()),
        ..Report::default()
    };
    report.environment.push((
        "mode".into(),
        if args.quick {
            "quick (smoke)".into()
        } else {
            "full".into()
        },
    ));
    report.environment.push((
        "cpus".into(),
        std::thread::available_parallelism()
            .map_or(0, usize::from)
            .to_string(),
    ));
    report.environment.push((
        "payload".into(),
        format!("{} bytes of JSON per event", memory::payload_size()),
    ));
    eprintln!(
        "chronik-bench: {} mode, results to {}",
        if args.quick { "quick" } else { "full" },
        args.out.display()
    );
    if plan.wants("append-1") || plan.wants(&format!("load-{}", plan.long_stream)) {
        memory::run(&plan, &mut report).await?;
    }
    if plan.wants("relay") {
        relay::run(&args.nats_url, &plan, &mut report).await?;
    }
    // On a throwaway primary and standby of its own: no DATABASE_URL needed.
    if plan.wants("projection-standby") {
        standby::run(&plan, &mut report).await?;
    }
    match &args.database_url {
        Some(url) => {
            pg::environment(url, &mut report).await?;
            if ["command-fresh", "command-1m", "command-hot"]
                .iter()
                .any(|s| plan.wants(s))
            {
                command::run(url, &plan, &mut report).await?;
            }
            pg::run(url, &plan, &mut report).await?;
        }
        None => report
            .notes
            .push("no DATABASE_URL: PostgreSQL scenarios skipped".into()),
    }
    report.write(&args.out)?;
    println!("{}", report.markdown());
    Ok(())
}
