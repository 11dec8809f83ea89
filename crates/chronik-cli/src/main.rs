//! `chronik`: the demo on the embedded in-memory store, and operator commands.
//!
//! Logging goes to stderr and is controlled by `RUST_LOG` (default `warn`); results go to
//! stdout. Every failure is printed as one `error: ...: ...` chain with a non-zero exit.

mod append;
mod backend;
mod demo;
mod doctor;
mod projections;
mod read_model;
mod roles;
mod round_trip;
mod snapshots;
mod table;
mod tail;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use chronik_core::{FeedCursor, StreamId};
use chronik_postgres::SchemaName;
use chronik_store::FeedFilter;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// chronik: event sourcing on PostgreSQL (with an in-memory reference store).
#[derive(Debug, Parser)]
#[command(name = "chronik", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the whole story: concurrent orders, retried conflicts, snapshots, upcasting,
    /// business-rule refusals, the global feed, a projection catching up, and a summary.
    Demo(DemoArgs),
    /// Applies the embedded SQL migrations to a PostgreSQL database.
    Migrate(MigrateArgs),
    /// Prints the global feed of a PostgreSQL store, upcast, one event per line
    /// (`<cursor> <stream> v<version> <type> v<schema> <payload>`), then follows it live.
    Tail(TailArgs),
    /// Checks a PostgreSQL store: migrations applied vs embedded, transactions holding the
    /// feed horizon back, projection lag. Exit status 0 when healthy, 1 with the problems.
    Doctor(DoctorArgs),
    /// Lists, takes and drops snapshots in a PostgreSQL store.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Operates the PostgreSQL projections: status and lag, rebuilds.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Appends one event to a PostgreSQL store and prints its version and feed cursor.
    /// The payload is one JSON object, from `--data` or stdin. Exit status 2 for bad input
    /// (nothing is written), 1 when the store refuses (e.g. a version conflict).
    Append(AppendArgs),
    /// Least privilege: the application role's privileges on a store's schema.
    Roles {
        #[command(subcommand)]
        command: RolesCommand,
    },
}

/// `chronik roles ...`.
#[derive(Debug, Subcommand)]
enum RolesCommand {
    /// Gives an existing role exactly what an application needs (append and read events,
    /// snapshots, checkpoints, projections) and nothing that changes history or the schema.
    /// Connect as the schema's owner; idempotent: run it again after every migration.
    Grant(GrantArgs),
}

/// Options of `chronik roles grant`.
#[derive(Debug, Args)]
struct GrantArgs {
    /// The application role (it must exist and must not own the schema).
    #[arg(value_parser = roles::parse_role)]
    role: chronik_postgres::RoleName,
    /// Print the SQL for a DBA to review instead of running it (no database needed).
    #[arg(long)]
    print: bool,
    #[command(flatten)]
    database: Database,
}

/// Options of `chronik append`.
#[derive(Debug, Args)]
struct AppendArgs {
    /// The stream, e.g. `order-42`.
    #[arg(value_parser = parse_stream_id)]
    stream_id: StreamId,
    /// The stored event type, e.g. `OrderPlaced`.
    #[arg(long = "type", value_name = "EVENT_TYPE", value_parser = append::parse_event_type)]
    event_type: chronik_core::EventType,
    /// What the stream's version must be: a number (0: no events), `any`, `no-stream` or
    /// `exists`.
    #[arg(long, value_name = "VERSION", default_value = "any", value_parser = append::parse_expected)]
    expected_version: chronik_core::ExpectedVersion,
    /// The schema version the payload is written in.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    schema_version: u32,
    /// The payload, one JSON object; read from stdin when absent.
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
    /// A metadata header (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = append::parse_header)]
    headers: Vec<(String, String)>,
    /// The event's id (a UUID); default: a new one. Running the command again with the
    /// same id and expected version is an idempotent retry: nothing is written twice.
    #[arg(long, value_name = "UUID", value_parser = append::parse_event_id)]
    event_id: Option<chronik_core::EventId>,
    #[command(flatten)]
    database: Database,
}

/// `chronik projections ...`.
#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// A table of every projection (position, lag in events and seconds, state, last error)
    /// and the transaction holding the feed horizon back, if one does.
    Status(StatusArgs),
    /// Rebuilds a projection's read model by replaying the whole feed, with progress on
    /// stderr. Stop the projection's runners first (unless `--shadow`).
    Rebuild(RebuildArgs),
}

/// `chronik snapshots ...`.
#[derive(Debug, Subcommand)]
enum SnapshotsCommand {
    /// The snapshots of one stream: version, state schema, when, size, usable or not.
    List(StreamArgs),
    /// Loads an order from all its events and saves a snapshot at its current version.
    Take(StreamArgs),
    /// Drops every snapshot of a category (after changing its state schema); prints how many.
    Drop(CategoryArgs),
}

/// A stream id and the database.
#[derive(Debug, Args)]
struct StreamArgs {
    /// The stream, e.g. `order-42`.
    #[arg(value_parser = parse_stream_id)]
    stream_id: StreamId,
    #[command(flatten)]
    database: Database,
}

/// A category and the database.
#[derive(Debug, Args)]
struct CategoryArgs {
    /// The category: the part of stream ids before the first `-`, e.g. `order`.
    #[arg(value_parser = snapshots::parse_category)]
    category: String,
    #[command(flatten)]
    database: Database,
}

/// Options of `chronik doctor`.
#[derive(Debug, Args)]
struct DoctorArgs {
    #[command(flatten)]
    database: Database,
    /// A write or prepared transaction open longer than this many seconds is a problem.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    max_horizon_age: u64,
    /// A projection whose oldest unprocessed event is older than this many seconds is a problem.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    max_lag: u64,
}

/// Options of `chronik projections rebuild`.
#[derive(Debug, Args)]
struct RebuildArgs {
    /// The projection to rebuild.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(projections::KNOWN))]
    name: String,
    /// Build into a shadow table while the live one keeps serving (and its runner keeps
    /// running), then swap them atomically.
    #[arg(long)]
    shadow: bool,
    /// Events per transaction.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    batch: u16,
    #[command(flatten)]
    database: Database,
}

/// Where a PostgreSQL operator command works.
#[derive(Debug, Args)]
struct Database {
    /// The database, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The schema holding the store's tables.
    #[arg(long, default_value = "public", value_parser = parse_schema)]
    schema: SchemaName,
}

/// Options of `chronik projections status`.
#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    database: Database,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
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

/// Options of `chronik migrate`.
#[derive(Debug, Args)]
struct MigrateArgs {
    /// The database to migrate, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The schema to create or migrate the store's tables in.
    #[arg(long, default_value = "public", value_parser = parse_schema)]
    schema: SchemaName,
}

/// Options of `chronik tail`.
#[derive(Debug, Args)]
struct TailArgs {
    /// The database to read, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The schema holding the store's tables.
    #[arg(long, default_value = "public", value_parser = parse_schema)]
    schema: SchemaName,
    /// Start after this feed cursor (`<transaction>:<position>`, as printed); default: the beginning.
    #[arg(long, value_parser = parse_cursor)]
    after: Option<FeedCursor>,
    /// Only events of this stored type (repeatable).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    event_types: Vec<String>,
    /// Only streams of this category, e.g. `order` (repeatable).
    #[arg(long = "category", value_name = "CATEGORY")]
    categories: Vec<String>,
    /// Stop after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Stop once caught up instead of waiting for new events.
    #[arg(long)]
    no_follow: bool,
    /// One JSON object per line (the whole recorded event), for scripts.
    #[arg(long)]
    json: bool,
}

fn parse_cursor(text: &str) -> Result<FeedCursor, String> {
    text.parse()
        .map_err(|e: chronik_core::InvalidInput| e.to_string())
}

fn parse_stream_id(text: &str) -> Result<StreamId, String> {
    StreamId::new(text).map_err(|e| e.to_string())
}

fn parse_schema(text: &str) -> Result<SchemaName, String> {
    SchemaName::new(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Parse first: clap prints its own `error: ...` with usage and exits with status 2.
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`chronik demo | head`): nobody is left to tell.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // Like clap's own usage errors: status 2.
        Err(e) if e.downcast_ref::<backend::Usage>().is_some() => {
            let _ = writeln!(std::io::stderr(), "error: {}", chain(&e));
            ExitCode::from(2)
        }
        Err(e) => {
            // Not `eprintln!`, which panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Connects to the database of a PostgreSQL operator command; also returns the server's
/// name for messages (never the URL, which may hold a password).
async fn connect_database(
    database: Database,
    command: &str,
) -> anyhow::Result<(chronik_postgres::PgEventStore, String)> {
    let Some(url) = database.database_url.filter(|u| !u.trim().is_empty()) else {
        return Err(backend::Usage(format!(
            "`chronik {command}` works on PostgreSQL only: pass --database-url URL or set DATABASE_URL"
        ))
        .into());
    };
    let store = backend::connect(&url, database.schema).await?;
    Ok((store, backend::server(&url)))
}

/// Connects to the database of a PostgreSQL operator command, whose tables must exist.
async fn open(database: Database, command: &str) -> anyhow::Result<chronik_postgres::PgEventStore> {
    let (store, _) = connect_database(database, command).await?;
    backend::require_migrated(&store).await?;
    Ok(store)
}

/// Whether `e` comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, `outer: inner: root`, skipping a cause whose text
/// the line already holds (some errors repeat their source's message in their own).
fn chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // sqlx words a server error as `error returned from database: <message>`, which
        // the store's own message already holds: say the message once.
        let core = text
            .strip_prefix("error returned from database: ")
            .unwrap_or(&text);
        if line.contains(core) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // `try_init` fails only if a subscriber is already set; nothing to do then.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => {
                let options = demo::Options {
                    orders: args.orders,
                    concurrency: args.concurrency,
                    long_stream: args.long_stream,
                };
                match args.database_url {
                    None => demo::run(
                        chronik_memory::MemoryStore::new(),
                        "in-memory",
                        &options,
                        &read_model::MemoryCounter,
                    )
                    .await
                    .context("demo failed"),
                    Some(url) => backend::demo_on_postgres(&url, &options).await,
                }
            }
            Command::Migrate(args) => backend::migrate(&args.database_url, args.schema).await,
            Command::Tail(args) => {
                let options = tail::Options {
                    after: args.after.unwrap_or(FeedCursor::START),
                    filter: FeedFilter {
                        event_types: args.event_types,
                        categories: args.categories,
                    },
                    limit: args.limit,
                    no_follow: args.no_follow,
                    json: args.json,
                };
                let store = backend::connect(&args.database_url, args.schema).await?;
                tail::run(store, &options).await
            }
            Command::Doctor(args) => {
                let (store, server) = connect_database(args.database, "doctor").await?;
                let limits = doctor::Limits {
                    max_horizon_age: args.max_horizon_age,
                    max_lag: args.max_lag,
                };
                doctor::run(&store, &server, limits).await
            }
            Command::Snapshots { command } => match command {
                SnapshotsCommand::List(args) => {
                    let store = open(args.database, "snapshots list").await?;
                    snapshots::list(&store, &args.stream_id).await
                }
                SnapshotsCommand::Take(args) => {
                    let store = open(args.database, "snapshots take").await?;
                    snapshots::take(&store, &args.stream_id).await
                }
                SnapshotsCommand::Drop(args) => {
                    let store = open(args.database, "snapshots drop").await?;
                    snapshots::drop_category(&store, &args.category).await
                }
            },
            Command::Projections {
                command: ProjectionsCommand::Status(args),
            } => {
                let store = open(args.database, "projections status").await?;
                projections::status(&store, args.json).await
            }
            Command::Projections {
                command: ProjectionsCommand::Rebuild(args),
            } => {
                let store = open(args.database, "projections rebuild").await?;
                projections::rebuild(&store, &args.name, args.shadow, args.batch.into()).await
            }
            Command::Append(args) => {
                // All input is checked before connecting: bad input never reaches the store.
                let payload = append::read_payload(args.data)?;
                let request = append::request(
                    args.stream_id,
                    args.expected_version,
                    args.event_type,
                    args.schema_version,
                    &payload,
                    args.headers,
                    args.event_id,
                )?;
                let store = open(args.database, "append").await?;
                append::run(&store, request).await
            }
            Command::Roles {
                command: RolesCommand::Grant(args),
            } => {
                if args.print {
                    return roles::print(&args.database.schema, &args.role);
                }
                let (store, _) = connect_database(args.database, "roles grant").await?;
                roles::grant(&store, &args.role).await
            }
        }
    })
}
