//! `chronik`: the stock operator binary, which is [`chronik::cli::Operator`] with the
//! Orders example registered (its upcasters, its read model and its aggregate), plus the
//! demo on the embedded in-memory store or on PostgreSQL.
//!
//! Logging goes to stderr and is controlled by `RUST_LOG` (default `warn`); results go to
//! stdout. Every failure is printed as one `error: ...: ...` chain with a non-zero exit.

mod demo;
mod process;
mod read_model;
mod round_trip;

use std::process::ExitCode;

use anyhow::Context as _;
use chronik::cli::{Interrupted, Operator};
use chronik::{PgEventStore, SchemaName};
use clap::{Args, Subcommand};
use orders::{Order, OrderProjection};

// The stock binary's own commands, next to the operator commands.
#[derive(Debug, Subcommand)]
enum Own {
    /// Runs the whole story: concurrent orders, retried conflicts, snapshots, upcasting,
    /// business-rule refusals, the global feed, a projection catching up, and a summary.
    Demo(DemoArgs),
}

/// Options of `chronik demo`.
#[derive(Debug, Args)]
struct DemoArgs {
    /// How many orders to place (each is placed, gets two lines, then is shipped or cancelled).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    orders: u32,
    /// How many tasks run commands at the same time (also the number of tasks that race on
    /// one order to show conflicts being retried).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// How many events the long, snapshotted stream gets.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    long_stream: u32,
    /// Run on PostgreSQL at this URL instead of the in-memory store (migrations are applied first).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

fn main() -> ExitCode {
    Operator::new("chronik")
        .upcasters(orders::upcasters())
        .projection(OrderProjection::new)
        .setup(|store| async move { OrderProjection::create_table(&store).await })
        .snapshots::<Order>()
        .run_with(|Own::Demo(args)| async move {
            // Interrupted as itself, not inside anyhow's box: its exit status is 130.
            demo(args)
                .await
                .map_err(|e| match e.downcast::<Interrupted>() {
                    Ok(interrupted) => interrupted.into(),
                    Err(e) => e.into(),
                })
        })
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let options = demo::Options {
        orders: args.orders,
        concurrency: args.concurrency,
        long_stream: args.long_stream,
    };
    match args.database_url.filter(|u| !u.trim().is_empty()) {
        None => {
            demo::run_interruptible(
                chronik::MemoryStore::new(),
                "in-memory",
                &options,
                &read_model::MemoryCounter,
                None,
            )
            .await
        }
        Some(url) => {
            let server = server(&url);
            let store = PgEventStore::connect_with(
                &url,
                chronik::PgStoreConfig::with_schema(SchemaName::default()),
            )
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {server}"))?;
            store
                .migrate()
                .await
                .with_context(|| format!("cannot apply the migrations to {server}"))?;
            let label = format!("PostgreSQL ({server})");
            let kept = format!("schema public of {server}");
            demo::run_interruptible(store, &label, &options, &read_model::PgOrders, Some(&kept))
                .await
        }
    }
}

/// `host:port/database` from a URL, without scheme, user or password.
fn server(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split_once('?').map_or(rest, |(host, _)| host);
    if rest.is_empty() {
        "the configured server".to_owned()
    } else {
        rest.to_owned()
    }
}
