//! The operator tool for a service built on chronik, as a builder: a service registers its
//! upcasters, projections and snapshotted aggregates, and gets every operator command for
//! them in a binary of its own.
//!
//! ```no_run
//! # use chronik_cli::Operator;
//! fn main() -> std::process::ExitCode {
//!     Operator::new("accounts-admin")
//!         // .upcasters(accounts::upcasters())
//!         // .projection(|schema| accounts::Balances::new(schema))
//!         // .snapshots::<accounts::Account>()
//!         .run()
//! }
//! ```
//!
//! Commands that need no domain knowledge work with no registration, on any store:
//! `migrate`, `tail` (upcast where upcasters are registered), `streams list`, `streams show`,
//! `projections status`, `doctor`, `append`, `snapshots list | drop`, `roles grant`. With
//! registrations: `projections rebuild NAME` and `projections run NAME [--standby-url URL]`
//! (registered projections), `snapshots take`
//! (registered aggregates), `roles grant` also grants the registered read-model tables, and
//! `migrate` also runs the registered setups (e.g. creating a read model's table).
//!
//! Every command that reads a store first checks that its schema is migrated and, if not,
//! says what to run. Logging goes to stderr (`RUST_LOG`, default `warn`, `error` for sqlx's
//! pool, whose reconnection warnings the commands word themselves); results go to
//! stdout; `--json` prints documents for scripts. Exit status ([`exit`]): 0 success, 1 a
//! failure (the store refused, or could not be reached), 2 bad input (nothing was written),
//! 3 something named does not exist (a stream), 4 the schema is not migrated, 130 stopped by
//! Ctrl-C before it finished (a rebuild, after cleaning up; `tail`, with the cursor to resume
//! after). The commands that run until Ctrl-C (`projections run`, `relay nats`, `console`)
//! exit 0 when it stops them, after saying where they stopped.

mod append;
mod backend;
mod console;
mod doctor;
pub mod fmt;
mod interrupt;
#[cfg(feature = "otel")]
mod otel;
mod parked;
mod projections;
mod relay;
mod roles;
mod runner;
mod snapshots;
mod streams;
mod table;
mod tail;
mod trace;
mod warnings;

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use chronik_core::{
    Aggregate, DomainEvent, EventId, FeedCursor, SnapshotState, StreamId, UpcasterRegistry,
};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    PgEventStore, PgProjection, ProjectionError, RebuildProgress, SchemaName, ShadowProjection,
};
use chronik_store::FeedFilter;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

pub use backend::{Interrupted, NotFound, NotMigrated, Usage};
pub use trace::write_trace;

/// Exit statuses of an operator binary.
pub mod exit {
    /// The command did what it was asked.
    pub const SUCCESS: u8 = 0;
    /// It failed: the store refused (e.g. a version conflict) or could not be reached, or
    /// `doctor` found problems.
    pub const FAILURE: u8 = 1;
    /// Bad input: a malformed argument, an unknown projection; nothing was written.
    pub const USAGE: u8 = 2;
    /// Something named does not exist, e.g. a stream with no events.
    pub const NOT_FOUND: u8 = 3;
    /// The store's schema is not migrated (run `migrate`).
    pub const NOT_MIGRATED: u8 = 4;
    /// Ctrl-C (SIGINT) stopped the command before it finished, and it cleaned up and said
    /// in what state it left things (`projections rebuild`; `tail`, with the cursor to
    /// resume after). The commands that run until Ctrl-C (`projections run`, `relay nats`,
    /// `console`) exit 0 when it stops them.
    pub const INTERRUPTED: u8 = 130;
}

/// An error a registered hook returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Progress<'a> = &'a mut (dyn FnMut(&RebuildProgress) -> std::ops::ControlFlow<()> + Send);
type RebuildFn = Box<
    dyn for<'a> Fn(
            &'a PgEventStore,
            Option<Arc<UpcasterRegistry>>,
            RebuildKind,
            usize,
            Progress<'a>,
        ) -> BoxFuture<'a, Result<RebuildProgress, ProjectionError>>
        + Send
        + Sync,
>;
type TakeFn = Box<
    dyn for<'a> Fn(
            &'a PgEventStore,
            Arc<UpcasterRegistry>,
            &'a StreamId,
        ) -> BoxFuture<'a, anyhow::Result<snapshots::Taken>>
        + Send
        + Sync,
>;
type RetryFn = Box<
    dyn for<'a> Fn(
            &'a PgEventStore,
            Option<Arc<UpcasterRegistry>>,
            chronik_core::EventId,
            &'a str,
        )
            -> BoxFuture<'a, Result<chronik_postgres::RetryOutcome, ProjectionError>>
        + Send
        + Sync,
>;
type SetupFn = Box<dyn Fn(PgEventStore) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type RunFn = Box<
    dyn Fn(
            &PgEventStore,
            Option<Arc<UpcasterRegistry>>,
            Option<chronik_postgres::PgStandby>,
        ) -> Result<chronik_postgres::RunnerHandle, ProjectionError>
        + Send
        + Sync,
>;

/// A registered projection: what `projections rebuild` and `roles grant` need.
pub(crate) struct RegisteredProjection {
    pub(crate) name: String,
    pub(crate) table: String,
    pub(crate) rebuild: RebuildFn,
    pub(crate) retry: RetryFn,
    /// Spawns its runner (`projections run`), reading from a standby when given one.
    pub(crate) run: RunFn,
}

/// How `projections rebuild` rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RebuildKind {
    /// Into a shadow table swapped in at the end.
    Shadow,
    /// From scratch in one transaction, with this many partitions from now on (`None`:
    /// as many as its checkpoints were written with).
    Scratch(Option<chronik_projections::Partitions>),
}

/// A registered aggregate: what `snapshots take | list` need.
pub(crate) struct RegisteredAggregate {
    pub(crate) category: &'static str,
    /// The types of its events: all its streams accept (`append` refuses others).
    pub(crate) event_types: &'static [chronik_core::EventTypeInfo],
    pub(crate) state_schema_version: u32,
    pub(crate) take: TakeFn,
}

/// A registered event enum: what `append` decodes a payload into.
pub(crate) struct RegisteredEvents {
    pub(crate) id: std::any::TypeId,
    pub(crate) types: &'static [chronik_core::EventTypeInfo],
    /// Decodes a payload (already upcast) of the named type; the error without values.
    pub(crate) decode: fn(&str, serde_json::Value) -> Result<(), String>,
}

fn decode_as<E: DomainEvent>(event_type: &str, payload: serde_json::Value) -> Result<(), String> {
    E::from_payload(event_type, payload)
        .map(|_| ())
        .map_err(|e| chronik_core::json_error_without_values(&e))
}

/// What a service registered (see [`Operator`]).
pub(crate) struct Registry {
    pub(crate) binary: String,
    pub(crate) upcasters: Option<Arc<UpcasterRegistry>>,
    pub(crate) events: Vec<RegisteredEvents>,
    pub(crate) projections: Vec<RegisteredProjection>,
    pub(crate) aggregates: Vec<RegisteredAggregate>,
    pub(crate) setups: Vec<SetupFn>,
}

impl Registry {
    /// The registered upcasters, or an empty registry (which passes every event through).
    pub(crate) fn upcasters_or_empty(&self) -> anyhow::Result<Arc<UpcasterRegistry>> {
        match &self.upcasters {
            Some(r) => Ok(Arc::clone(r)),
            None => Ok(Arc::new(
                UpcasterRegistry::builder()
                    .build()
                    .context("an empty upcaster registry is invalid")?,
            )),
        }
    }

    /// The read-model tables of the registered projections.
    pub(crate) fn tables(&self) -> Vec<&str> {
        self.projections.iter().map(|p| p.table.as_str()).collect()
    }
}

/// The operator tool of one service: register its domain, then [`Operator::run`] from
/// `main`.
///
/// Contract: registration never fails; problems (an invalid upcaster chain, a duplicate
/// projection name) are reported when the binary runs, as a failure, before any command.
pub struct Operator {
    registry: Registry,
    problems: Vec<String>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("binary", &self.registry.binary)
            .field(
                "projections",
                &self
                    .registry
                    .projections
                    .iter()
                    .map(|p| &p.name)
                    .collect::<Vec<_>>(),
            )
            .field(
                "aggregates",
                &self
                    .registry
                    .aggregates
                    .iter()
                    .map(|a| a.category)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Operator {
    /// An operator tool that knows no domain yet. `binary` is its name, used in usage
    /// and in the messages that say what to run (e.g. `chronik`, `accounts-admin`).
    #[must_use]
    pub fn new(binary: impl Into<String>) -> Self {
        Self {
            registry: Registry {
                binary: binary.into(),
                upcasters: None,
                events: Vec::new(),
                projections: Vec::new(),
                aggregates: Vec::new(),
                setups: Vec::new(),
            },
            problems: Vec::new(),
        }
    }

    /// The service's upcasters: `tail`, `projections rebuild` and `snapshots take` read
    /// old event versions through them. Takes the result of building the registry, so that
    /// an invalid chain is reported when the binary runs.
    #[must_use]
    pub fn upcasters<E: std::fmt::Display>(
        mut self,
        registry: Result<UpcasterRegistry, E>,
    ) -> Self {
        match registry {
            Ok(r) => self.registry.upcasters = Some(Arc::new(r)),
            Err(e) => self
                .problems
                .push(format!("the upcasters are invalid: {e}")),
        }
        self
    }

    /// A PostgreSQL projection `projections rebuild NAME` can rebuild (from scratch or,
    /// with `--shadow`, into a shadow table), built by `factory` for the store's schema.
    /// Its table is granted to the application role by `roles grant`.
    #[must_use]
    pub fn projection<P, F>(mut self, factory: F) -> Self
    where
        P: PgProjection + ShadowProjection,
        F: Fn(&SchemaName) -> P + Send + Sync + 'static,
    {
        let probe = factory(&SchemaName::default());
        let name = probe.name().to_owned();
        let table = probe.table().to_owned();
        if self.registry.projections.iter().any(|p| p.name == name) {
            self.problems
                .push(format!("projection {name:?} is registered twice"));
            return self;
        }
        let factory = Arc::new(factory);
        let rebuild = rebuild_fn({
            let factory = Arc::clone(&factory);
            move |store, upcasters, kind, batch, progress| {
                let projection = Arc::new(factory(store.schema()));
                Box::pin(async move {
                    match kind {
                        RebuildKind::Shadow => {
                            chronik_postgres::rebuild_shadow(
                                store, projection, upcasters, batch, progress,
                            )
                            .await
                        }
                        RebuildKind::Scratch(None) => {
                            chronik_postgres::rebuild(store, projection, upcasters, batch, progress)
                                .await
                        }
                        RebuildKind::Scratch(Some(partitions)) => {
                            chronik_postgres::rebuild_partitioned(
                                store, projection, partitions, upcasters, batch, progress,
                            )
                            .await
                        }
                    }
                })
            }
        });
        let retry: RetryFn = {
            let factory = Arc::clone(&factory);
            Box::new(move |store, upcasters, id, by| {
                let projection = Arc::new(factory(store.schema()));
                Box::pin(chronik_postgres::retry_parked(
                    store, projection, upcasters, id, by,
                ))
            })
        };
        let run: RunFn = {
            let factory = Arc::clone(&factory);
            Box::new(move |store, upcasters, standby| {
                let projection = Arc::new(factory(store.schema()));
                let mut runner =
                    chronik_postgres::PgProjectionRunner::new(store.clone(), projection);
                if let Some(registry) = upcasters {
                    runner = runner.with_upcasters(registry);
                }
                if let Some(standby) = standby {
                    runner = runner.with_standby(standby);
                }
                runner.spawn()
            })
        };
        self.registry.projections.push(RegisteredProjection {
            name,
            table,
            rebuild,
            retry,
            run,
        });
        self
    }

    /// The service's event enum `E`: `append` decodes a payload of one of its types (after
    /// upcasting) before writing it, refusing one that would not load, and writes it at
    /// the type's current schema version unless told otherwise. [`Operator::snapshots`]
    /// registers its aggregate's events too.
    #[must_use]
    pub fn events<E: DomainEvent>(mut self) -> Self {
        let id = std::any::TypeId::of::<E>();
        if !self.registry.events.iter().any(|e| e.id == id) {
            self.registry.events.push(RegisteredEvents {
                id,
                types: E::EVENT_TYPES,
                decode: decode_as::<E>,
            });
        }
        self
    }

    /// Aggregate `A` can be snapshotted (`snapshots take STREAM_ID` for streams of its
    /// category), and `snapshots list` says whether a snapshot of its streams is usable.
    /// Registers its events as [`Operator::events`] does.
    #[must_use]
    pub fn snapshots<A: Aggregate + SnapshotState>(mut self) -> Self {
        self = self.events::<A::Event>();
        if self
            .registry
            .aggregates
            .iter()
            .any(|a| a.category == A::TYPE)
        {
            self.problems
                .push(format!("category {:?} is registered twice", A::TYPE));
            return self;
        }
        self.registry.aggregates.push(RegisteredAggregate {
            category: A::TYPE,
            event_types: <A::Event as DomainEvent>::EVENT_TYPES,
            state_schema_version: A::STATE_SCHEMA_VERSION,
            take: take_fn(|store, upcasters, stream| {
                Box::pin(snapshots::take_as::<A>(store, upcasters, stream))
            }),
        });
        self
    }

    /// A setup step `migrate` runs after chronik's migrations, e.g. creating a read model's
    /// table unless it exists; `projections rebuild | run` and the console's rebuilds run
    /// the steps too when a registered read model's table is missing (so that the
    /// application role, which may not create tables, runs them once `migrate` has). Must be
    /// idempotent.
    #[must_use]
    pub fn setup<F, Fut, E>(mut self, step: F) -> Self
    where
        F: Fn(PgEventStore) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.registry.setups.push(Box::new(move |store| {
            let fut = step(store);
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Parses the command line, runs the command and returns the exit status ([`exit`]).
    pub fn run(self) -> ExitCode {
        self.run_with::<NoCommands, _, _>(|none| async move { match none {} })
    }

    /// [`Operator::run`], with the service's own subcommands `C` next to the operator
    /// commands (e.g. a demo), run by `handler` on the binary's runtime.
    pub fn run_with<C, H, Fut>(self, handler: H) -> ExitCode
    where
        C: Subcommand,
        H: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let command = C::augment_subcommands(Cli::command())
            .name(self.registry.binary.clone())
            .about(format!(
                "{}: operator commands for a chronik event store on PostgreSQL",
                self.registry.binary
            ));
        let command = if self.registry.projections.is_empty() {
            command
        } else {
            let names: Vec<String> = self
                .registry
                .projections
                .iter()
                .map(|p| p.name.clone())
                .collect();
            command.mut_subcommand("projections", |p| {
                ["rebuild", "run"].into_iter().fold(p, |p, sub| {
                    p.mut_subcommand(sub, |r| {
                        r.mut_arg("name", |a| {
                            a.value_parser(clap::builder::PossibleValuesParser::new(names.clone()))
                        })
                    })
                })
            })
        };
        // Parse first: clap prints its own `error: ...` with usage and exits with status 2.
        let matches = command.get_matches();
        let telemetry = init_logging(&self.registry.binary);
        let own = matches
            .subcommand_name()
            .is_some_and(|name| C::has_subcommand(name));
        let result = if self.problems.is_empty() {
            runtime().and_then(|rt| {
                rt.block_on(async {
                    if own {
                        let c = C::from_arg_matches(&matches).map_err(anyhow::Error::from)?;
                        handler(c).await.map_err(own_error)
                    } else {
                        let cli = Cli::from_arg_matches(&matches).map_err(anyhow::Error::from)?;
                        dispatch(&self.registry, cli.command).await
                    }
                })
            })
        } else {
            Err(anyhow::anyhow!(
                "{} is misconfigured: {}",
                self.registry.binary,
                self.problems.join("; ")
            ))
        };
        let code = finish(result);
        telemetry.shutdown();
        code
    }
}

/// A service's own command's error, whose exit-status types ([`Usage`], [`NotFound`],
/// [`NotMigrated`], [`Interrupted`]) choose the status as the operator commands' do:
/// `anyhow!` of the box would hide them from [`finish`].
fn own_error(e: BoxError) -> anyhow::Error {
    let e = match e.downcast::<Usage>() {
        Ok(e) => return anyhow::Error::new(*e),
        Err(e) => e,
    };
    let e = match e.downcast::<NotFound>() {
        Ok(e) => return anyhow::Error::new(*e),
        Err(e) => e,
    };
    let e = match e.downcast::<NotMigrated>() {
        Ok(e) => return anyhow::Error::new(*e),
        Err(e) => e,
    };
    match e.downcast::<Interrupted>() {
        Ok(e) => anyhow::Error::new(*e),
        Err(e) => anyhow::anyhow!(e),
    }
}

/// No extra subcommands.
#[derive(Debug, Subcommand)]
enum NoCommands {}

fn rebuild_fn<F>(f: F) -> RebuildFn
where
    F: for<'a> Fn(
            &'a PgEventStore,
            Option<Arc<UpcasterRegistry>>,
            RebuildKind,
            usize,
            Progress<'a>,
        ) -> BoxFuture<'a, Result<RebuildProgress, ProjectionError>>
        + Send
        + Sync
        + 'static,
{
    Box::new(f)
}

fn take_fn<F>(f: F) -> TakeFn
where
    F: for<'a> Fn(
            &'a PgEventStore,
            Arc<UpcasterRegistry>,
            &'a StreamId,
        ) -> BoxFuture<'a, anyhow::Result<snapshots::Taken>>
        + Send
        + Sync
        + 'static,
{
    Box::new(f)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The exit status of `result`, after printing its error.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    // The reader went away (`chronik tail | head`): nobody is left to tell.
    if is_broken_pipe(&e) {
        return ExitCode::SUCCESS;
    }
    let code = if e.chain().any(|c| c.downcast_ref::<Usage>().is_some()) {
        exit::USAGE
    } else if e.chain().any(|c| c.downcast_ref::<NotMigrated>().is_some()) {
        exit::NOT_MIGRATED
    } else if e.chain().any(|c| c.downcast_ref::<NotFound>().is_some()) {
        exit::NOT_FOUND
    } else if e.chain().any(|c| c.downcast_ref::<Interrupted>().is_some()) {
        exit::INTERRUPTED
    } else {
        exit::FAILURE
    };
    // Not `eprintln!`, which panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "error: {}", chain(&e));
    ExitCode::from(code)
}

/// The operator commands.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Applies chronik's embedded SQL migrations to a PostgreSQL schema, then the
    /// service's registered setup steps (e.g. its read models' tables).
    Migrate(MigrateArgs),
    /// Prints the global feed, upcast where upcasters are registered, one event per line
    /// (`<cursor> <stream> v<version> <type> v<schema> <payload>`), then follows it live.
    /// An event that cannot be upcast is printed as stored after a warning on stderr naming
    /// its cursor, and the tail goes on (the exit status stays 0).
    Tail(TailArgs),
    /// Lists and shows streams.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Prints a chain of commands and reactions as a causation tree across streams: every
    /// event recorded under one correlation id (or under the correlation of `--event`), in
    /// causal order, with stream, version, type, time and cursor.
    Trace(TraceArgs),
    /// Checks a PostgreSQL store: migrations applied vs embedded, transactions holding the
    /// feed horizon back, projection lag. Exit status 0 when healthy, 1 with the problems.
    Doctor(DoctorArgs),
    /// Lists, takes and drops snapshots.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Operates the PostgreSQL projections: status and lag, rebuilds.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Appends one event and prints its version and feed cursor. The payload is one JSON
    /// object, from `--data` or stdin. Exit status 2 for bad input (nothing is written), 1
    /// when the store refuses (e.g. a version conflict).
    Append(AppendArgs),
    /// Serves the web console and its JSON API (overview, streams, events, projections,
    /// live tail) on 127.0.0.1 until Ctrl-C. Rebuilds are off unless `--admin-token` is
    /// given and a request carries it.
    Console(ConsoleArgs),
    /// Relays the feed to a message broker for sibling services.
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// Least privilege: the application role's privileges on a store's schema.
    Roles {
        #[command(subcommand)]
        command: RolesCommand,
    },
}

/// `relay ...`.
#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Publishes every event of the feed (or of `--category`/`--type`) to a NATS JetStream
    /// stream, subject `<prefix>.<category>.<stream id>`, the event id as `Nats-Msg-Id`,
    /// until Ctrl-C. Creates the stream (subjects `<prefix>.>`) or checks it. A projection
    /// like any other: its checkpoint moves only after JetStream's acknowledgements, and
    /// `projections status` shows its lag. At least once; stored once within the stream's
    /// duplicate window; in per-stream order (docs/relay.md).
    Nats(NatsArgs),
}

/// Options of `relay nats`.
#[derive(Debug, Args)]
struct NatsArgs {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, env = "NATS_URL", value_name = "URL", hide_env_values = true)]
    url: String,
    /// The first subject tokens, e.g. `acme.chronik`.
    #[arg(long, value_name = "PREFIX", default_value = "chronik", value_parser = relay::parse_prefix)]
    subject_prefix: chronik_relay::SubjectPrefix,
    /// Only streams of this category (repeatable; default: all).
    #[arg(long = "category", value_name = "CATEGORY")]
    categories: Vec<String>,
    /// Only events of this stored type (repeatable; default: all).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    event_types: Vec<String>,
    /// The JetStream stream (default: the prefix in capitals, `.` as `_`: `CHRONIK`).
    #[arg(long, value_name = "NAME")]
    stream_name: Option<String>,
    /// The relay's projection name, its checkpoint's key (default `relay-nats-<stream>`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Publish payloads as stored instead of upcast through the registered upcasters.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    standby: Standby,
    /// Stop once everything in the primary's feed at the start is published and
    /// acknowledged (a one-off backfill; however far a standby lags) instead of following
    /// the feed until Ctrl-C.
    #[arg(long)]
    until_caught_up: bool,
    /// Wake on `NOTIFY` on this channel (what `append` sends after its commit, and what a
    /// service's writers send with `notify_feed` or `PgStoreConfig::notify_channel`);
    /// polling (at most every second) catches what is never notified.
    #[arg(long, value_name = "CHANNEL", default_value = chronik_postgres::FEED_CHANNEL)]
    listen: String,
    #[command(flatten)]
    database: Database,
}

/// `roles ...`.
#[derive(Debug, Subcommand)]
enum RolesCommand {
    /// Gives an existing role exactly what an application needs (append and read events,
    /// snapshots, checkpoints, projections and the registered read models) and nothing
    /// that changes history or the schema. Connect as the schema's owner; idempotent: run
    /// it again after every migration and shadow rebuild.
    Grant(GrantArgs),
}

/// Options of `roles grant`.
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

/// `--standby-url` of the commands that read the feed (`projections run`, `relay nats`).
#[derive(Debug, Args)]
struct Standby {
    /// Read the feed from this hot standby (a streaming replica of the database) instead
    /// of the primary; the read model, checkpoint and status stay on the primary. Still
    /// gap-free: it polls the standby (which cannot LISTEN), waits while it lags or is
    /// paused, and refuses it once promoted.
    #[arg(
        long,
        value_name = "URL",
        env = "CHRONIK_STANDBY_URL",
        hide_env_values = true
    )]
    standby_url: Option<String>,
}

/// Options of `console`.
#[derive(Debug, Args)]
struct ConsoleArgs {
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Allows rebuilds from the console to requests carrying this token
    /// (`Authorization: Bearer TOKEN`); without it every rebuild is refused.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CHRONIK_CONSOLE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    #[command(flatten)]
    database: Database,
}

/// Options of `append`.
#[derive(Debug, Args)]
struct AppendArgs {
    /// The stream, e.g. `account-42`.
    #[arg(value_parser = parse_stream_id)]
    stream_id: StreamId,
    /// The stored event type, e.g. `Deposited`.
    #[arg(long = "type", value_name = "EVENT_TYPE", value_parser = append::parse_event_type)]
    event_type: chronik_core::EventType,
    /// What the stream's version must be: a number (0: no events), `any`, `no-stream` or
    /// `exists`.
    #[arg(long, value_name = "VERSION", default_value = "any", allow_hyphen_values = true, value_parser = append::parse_expected)]
    expected_version: chronik_core::ExpectedVersion,
    /// The schema version the payload is written in; default: the current version of the
    /// type when the binary registers it, else 1 (with a warning).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    schema_version: Option<u32>,
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
    /// Write an event type the stream's aggregate does not accept (an escape hatch: the
    /// application cannot load the stream while it holds the event). Without it such an
    /// append is refused (status 2) and names the types the stream accepts.
    #[arg(long)]
    allow_unregistered: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// `projections ...`.
#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// A table of every projection (position, lag in events and seconds, state, last error)
    /// and the transaction holding the feed horizon back, if one does.
    Status(StatusArgs),
    /// Rebuilds a registered projection's read model by replaying the whole feed, with
    /// progress on stderr. Stop the projection's runners first (unless `--shadow`).
    /// Never leaves a half-built read model: if an event cannot be applied, or Ctrl-C
    /// stops it (exit status 130), the old read model stays as it was.
    Rebuild(RebuildArgs),
    /// Runs a registered projection's exactly-once runner until Ctrl-C (each batch commits
    /// its read-model changes with its checkpoint; one active runner per projection, others
    /// wait in standby). With `--standby-url` it reads the feed from a hot standby of the
    /// database and writes only to the primary (docs/projections.md).
    Run(RunArgs),
    /// The events parked for a projection (decisions to pass over an event it cannot
    /// apply), with their state, and the event it is failing on if that is not parked.
    Parked(ParkedArgs),
    /// Parks an event for a projection: its runner (when it fails on it) and its rebuilds
    /// pass over it. Recorded with a reason and who decided; never deleted.
    Park(ParkArgs),
    /// Retries parked events of a registered projection: one it skipped is applied now
    /// (late), one it has not reached yet is left for its runner to apply.
    Retry(ResolveArgs),
    /// Drops parked events for good: they stay passed over and leave the list.
    DropParked(ResolveArgs),
    /// Forgets a projection that no longer runs: deletes its checkpoint and its runners'
    /// status rows (e.g. a one-off reader's). Refuses while a runner or a rebuild holds it.
    /// Its tables are not touched, except for `NAME__shadow` (what a killed shadow rebuild
    /// left): its checkpoint and, for a registered projection, the table `TABLE__shadow`.
    Forget(ForgetArgs),
}

/// Options of `projections parked`.
#[derive(Debug, Args)]
struct ParkedArgs {
    /// The projection.
    name: String,
    /// Also the resolved decisions (retried, dropped).
    #[arg(long)]
    all: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// Options of `projections park`.
#[derive(Debug, Args)]
struct ParkArgs {
    /// The projection that is to pass over the event.
    name: String,
    /// The event's id (as `projections status`, `parked` and errors print it).
    #[arg(value_parser = append::parse_event_id)]
    event_id: chronik_core::EventId,
    /// Why (recorded with the decision).
    #[arg(long)]
    reason: String,
    /// Who decides (default: $USER).
    #[arg(long, value_name = "WHO")]
    by: Option<String>,
    #[command(flatten)]
    database: Database,
}

/// Options of `projections retry | drop-parked`.
#[derive(Debug, Args)]
struct ResolveArgs {
    /// The projection.
    name: String,
    /// The parked events' ids.
    #[arg(required = true, value_parser = append::parse_event_id)]
    event_ids: Vec<chronik_core::EventId>,
    /// Who decides (default: $USER).
    #[arg(long, value_name = "WHO")]
    by: Option<String>,
    #[command(flatten)]
    database: Database,
}

/// Options of `projections forget`.
#[derive(Debug, Args)]
struct ForgetArgs {
    /// The projection (as `projections status` lists it).
    name: String,
    #[command(flatten)]
    database: Database,
}

/// `streams ...`.
#[derive(Debug, Subcommand)]
enum StreamsCommand {
    /// The streams of the store (id, category, version), by id.
    List(ListArgs),
    /// One stream's events: version, type, schema version, cursor, correlation, causation,
    /// recorded at, payload (as stored).
    Show(ShowArgs),
}

/// Options of `streams list`.
#[derive(Debug, Args)]
struct ListArgs {
    /// Only streams of this category, e.g. `account`.
    #[arg(long, value_parser = snapshots::parse_category)]
    category: Option<String>,
    /// At most this many streams.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    limit: u32,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// Options of `trace`.
#[derive(Debug, Args)]
struct TraceArgs {
    /// The correlation id (a UUID, as `streams show` prints it).
    #[arg(
        value_name = "CORRELATION_ID",
        required_unless_present = "event",
        conflicts_with = "event"
    )]
    correlation: Option<uuid::Uuid>,
    /// Trace the chain this event belongs to (its correlation id), marking the event.
    #[arg(long, value_name = "EVENT_ID", value_parser = parse_event_id)]
    event: Option<EventId>,
    /// One JSON document: the correlation id and the events in tree order, each with its
    /// depth and parent.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

fn parse_event_id(text: &str) -> Result<EventId, String> {
    let id: uuid::Uuid = text.parse().map_err(|e: uuid::Error| e.to_string())?;
    EventId::new(id).map_err(|e| e.to_string())
}

/// Options of `streams show`.
#[derive(Debug, Args)]
struct ShowArgs {
    /// The stream, e.g. `account-42`.
    #[arg(value_parser = parse_stream_id)]
    stream_id: StreamId,
    /// The first version to show.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    from: u64,
    /// One JSON object per line (the whole recorded event), for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// `snapshots ...`.
#[derive(Debug, Subcommand)]
enum SnapshotsCommand {
    /// The snapshots of one stream: version, state schema, when, size, usable or not.
    List(StreamArgs),
    /// Loads a stream of a registered aggregate from all its events and saves a snapshot
    /// at its current version.
    Take(StreamArgs),
    /// Drops every snapshot of a category (after changing its state schema); prints how many.
    Drop(CategoryArgs),
}

/// A stream id and the database.
#[derive(Debug, Args)]
struct StreamArgs {
    /// The stream, e.g. `account-42`.
    #[arg(value_parser = parse_stream_id)]
    stream_id: StreamId,
    /// Print the result as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// A category and the database.
#[derive(Debug, Args)]
struct CategoryArgs {
    /// The category: the part of stream ids before the first `-`, e.g. `account`.
    #[arg(value_parser = snapshots::parse_category)]
    category: String,
    /// Print the result as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// Options of `doctor`.
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
    /// Print the report as one JSON object (`healthy`, `problems`, `warnings`,
    /// `migrations`, `role`, `horizon` with each holder's `how_to_end`, `projections`);
    /// the exit status is the same.
    #[arg(long)]
    json: bool,
}

/// Options of `projections rebuild`.
#[derive(Debug, Args)]
struct RebuildArgs {
    /// The projection to rebuild (one the binary registered).
    name: String,
    /// Build into a shadow table while the live one keeps serving (and its runner keeps
    /// running), then swap them atomically.
    #[arg(long, conflicts_with = "partitions")]
    shadow: bool,
    /// Run it as this many partitions from now on (1 to 1024; 1: a single runner): the way
    /// to change the number of partitions of a partitioned projection. Stop all its workers
    /// first, start them with the new number after. Default: as many as it has now.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: Option<u32>,
    /// Events per transaction.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    batch: u16,
    /// Print the result as one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: Database,
}

/// Options of `projections run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// The projection to run (one the binary registered).
    name: String,
    #[command(flatten)]
    standby: Standby,
    /// Stop once the checkpoint reaches the head of the primary's feed at the start
    /// (however far the standby lags) instead of running until Ctrl-C.
    #[arg(long)]
    until_caught_up: bool,
    #[command(flatten)]
    database: Database,
}

/// Where a command works: the one way every command connects.
#[derive(Debug, Args)]
struct Database {
    /// The database, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The schema holding the store's tables.
    #[arg(long, default_value = "public", value_parser = parse_schema)]
    schema: SchemaName,
}

/// Options of `projections status`.
#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    database: Database,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

/// Options of `migrate`.
#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: Database,
    /// Print the result as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Options of `tail`.
#[derive(Debug, Args)]
struct TailArgs {
    #[command(flatten)]
    database: Database,
    /// Start after this feed cursor (`<transaction>:<position>`, as every command prints
    /// cursors); default: the beginning of the feed.
    #[arg(long, value_parser = parse_cursor, conflicts_with_all = ["from_end", "last"])]
    after: Option<FeedCursor>,
    /// Start at the end of the feed: only events that become visible from now on.
    #[arg(long, conflicts_with = "last")]
    from_end: bool,
    /// Start with the last N matching events (then follow, unless `--no-follow`).
    #[arg(short = 'n', long = "last", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    last: Option<u64>,
    /// Only this stream's events, e.g. `order-42`.
    #[arg(long = "stream", value_name = "STREAM_ID", value_parser = parse_stream_id, conflicts_with = "categories")]
    stream: Option<StreamId>,
    /// Only events of this stored type (repeatable).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    event_types: Vec<String>,
    /// Only streams of this category, e.g. `account` (repeatable).
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
    /// While following, wake on `NOTIFY` on this channel (what `append` sends after its
    /// commit, and what a service's writers send with `notify_feed`); polling (at most
    /// every second) catches what is never notified.
    #[arg(long, value_name = "CHANNEL", default_value = chronik_postgres::FEED_CHANNEL)]
    listen: String,
    /// While following, retry a lost connection (a server restart) for this many seconds
    /// before giving up with the cursor to resume after.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    retry_for: u64,
}

fn parse_cursor(text: &str) -> Result<FeedCursor, String> {
    text.parse()
        .map_err(|e: chronik_core::InvalidInput| e.to_string())
}

fn parse_stream_id(text: &str) -> Result<StreamId, String> {
    StreamId::new(text).map_err(|e| e.to_string())
}

fn parse_schema(text: &str) -> Result<SchemaName, String> {
    SchemaName::new(text).map_err(|e| request_message(&e))
}

/// A store error's message for a person: an invalid request says only what is wrong with
/// it (`invalid schema name ...`), without the `invalid request:` its type adds.
pub(crate) fn request_message(e: &chronik_store::StoreError) -> String {
    match e {
        chronik_store::StoreError::InvalidRequest(message) => message.clone(),
        other => other.to_string(),
    }
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
pub(crate) fn chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause
            .downcast_ref::<chronik_store::StoreError>()
            .map_or_else(|| cause.to_string(), request_message);
        // sqlx words a server error as `error returned from database: <message> at line
        // <the server's source line>`, which the store's own message already holds: say
        // the message once.
        let core = text
            .strip_prefix("error returned from database: ")
            .unwrap_or(&text);
        let core = core
            .rsplit_once(" at line ")
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map_or(core, |(message, _)| message);
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

/// What exports traces while the command runs (feature `otel`, when an OTLP endpoint is
/// configured): flushed by [`Telemetry::shutdown`] before the process exits.
struct Telemetry(#[cfg(feature = "otel")] Option<otel::Exporter>);

impl Telemetry {
    fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.0 {
            exporter.shutdown();
        }
    }
}

/// Logging on stderr (`RUST_LOG`, default `warn`) and, with feature `otel` and an OTLP
/// endpoint in the environment, spans exported to it (docs/operations.md, "Traces").
fn init_logging(binary: &str) -> Telemetry {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env()
        // sqlx's pool warns about every connection a restarting server drops; the
        // commands say what happened themselves.
        .unwrap_or_else(|_| EnvFilter::new("warn,sqlx=error,sqlx_core=error"));
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter.and(filter_fn(|meta| !warnings::is_for_the_operator(meta))));
    // The library's messages for the operator, as the commands' own warnings, whatever
    // RUST_LOG says.
    let operator = warnings::OperatorWarnings.with_filter(filter_fn(warnings::is_for_the_operator));
    let registry = tracing_subscriber::registry().with(stderr).with(operator);
    #[cfg(feature = "otel")]
    match otel::layer(binary) {
        Ok(Some((layer, exporter))) => {
            // `try_init` fails only if a subscriber is already set; nothing to do then.
            let _ = registry.with(layer).try_init();
            return Telemetry(Some(exporter));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: traces are not exported: {}",
                chain(&e)
            );
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = binary;
    let _ = registry.try_init();
    Telemetry(
        #[cfg(feature = "otel")]
        None,
    )
}

/// The usage error for a projection `name` that `registry` does not register.
fn unknown_projection(registry: &Registry, name: &str) -> Usage {
    let known: Vec<&str> = registry
        .projections
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    Usage(if known.is_empty() {
        format!(
            "unknown projection {name:?}: {} registers no projection (a service registers its own with Operator::projection)",
            registry.binary
        )
    } else {
        format!(
            "unknown projection {name:?}; known projections: {}",
            known.join(", ")
        )
    })
}

async fn dispatch(registry: &Registry, command: Command) -> anyhow::Result<()> {
    let bin = registry.binary.as_str();
    match command {
        Command::Migrate(args) => {
            let (store, server) = backend::connect(args.database, bin, "migrate").await?;
            let work = backend::migrate(registry, &store, &server, args.json);
            backend::watched(&store, bin, "migrate", work).await
        }
        Command::Tail(args) => {
            let start = match (args.after, args.from_end, args.last) {
                (Some(cursor), _, _) => tail::Start::After(cursor),
                (None, true, _) => tail::Start::End,
                (None, false, Some(n)) => tail::Start::Last(n),
                (None, false, None) => tail::Start::After(FeedCursor::START),
            };
            // A stream's events are read through its category's filter.
            let categories = match &args.stream {
                Some(stream) => vec![stream.category().to_owned()],
                None => args.categories,
            };
            let options = tail::Options {
                start,
                filter: FeedFilter {
                    event_types: args.event_types,
                    categories,
                },
                stream: args.stream,
                limit: args.limit,
                no_follow: args.no_follow,
                json: args.json,
                listen: Some(args.listen),
                retry_for: std::time::Duration::from_secs(args.retry_for),
                binary: bin.to_owned(),
            };
            let store = backend::open(args.database, bin, "tail").await?;
            tail::run(store, registry.upcasters_or_empty()?, &options).await
        }
        Command::Streams { command } => match command {
            StreamsCommand::List(args) => {
                let store = backend::open(args.database, bin, "streams list").await?;
                let work = streams::list(&store, args.category.as_deref(), args.limit, args.json);
                backend::watched(&store, bin, "streams list", work).await
            }
            StreamsCommand::Show(args) => {
                let store = backend::open(args.database, bin, "streams show").await?;
                let work = streams::show(&store, bin, &args.stream_id, args.from, args.json);
                backend::watched(&store, bin, "streams show", work).await
            }
        },
        Command::Relay {
            command: RelayCommand::Nats(args),
        } => {
            let store = backend::open(args.database, bin, "relay nats").await?;
            let options = relay::Options {
                url: args.url,
                prefix: args.subject_prefix,
                categories: args.categories,
                event_types: args.event_types,
                stream_name: args.stream_name,
                name: args.name,
                raw: args.raw,
                standby_url: args.standby.standby_url,
                until_caught_up: args.until_caught_up,
                listen: args.listen,
            };
            relay::nats(registry, store, options).await
        }
        Command::Trace(args) => {
            let store = backend::open(args.database, bin, "trace").await?;
            let work = trace::run(
                &store,
                args.correlation.map(chronik_core::CorrelationId::new),
                args.event,
                args.json,
            );
            backend::watched(&store, bin, "trace", work).await
        }
        Command::Doctor(args) => {
            let (store, server) = backend::connect(args.database, bin, "doctor").await?;
            let limits = doctor::Limits {
                max_horizon_age: args.max_horizon_age,
                max_lag: args.max_lag,
            };
            let tables: Vec<(&str, &str)> = registry
                .projections
                .iter()
                .map(|p| (p.name.as_str(), p.table.as_str()))
                .collect();
            let work = doctor::run(&store, bin, &server, limits, &tables, args.json);
            backend::watched(&store, bin, "doctor", work).await
        }
        Command::Snapshots { command } => match command {
            SnapshotsCommand::List(args) => {
                let store = backend::open(args.database, bin, "snapshots list").await?;
                let work = snapshots::list(registry, &store, &args.stream_id, args.json);
                backend::watched(&store, bin, "snapshots list", work).await
            }
            SnapshotsCommand::Take(args) => {
                let store = backend::open(args.database, bin, "snapshots take").await?;
                let work = snapshots::take(registry, &store, &args.stream_id, args.json);
                backend::watched(&store, bin, "snapshots take", work).await
            }
            SnapshotsCommand::Drop(args) => {
                let store = backend::open(args.database, bin, "snapshots drop").await?;
                let work = snapshots::drop_category(&store, &args.category, args.json);
                backend::watched(&store, bin, "snapshots drop", work).await
            }
        },
        Command::Projections {
            command: ProjectionsCommand::Status(args),
        } => {
            let store = backend::open(args.database, bin, "projections status").await?;
            let work = projections::status(&store, args.json);
            backend::watched(&store, bin, "projections status", work).await
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild(args),
        } => {
            // Checked before connecting: an unknown name never reaches the store.
            let Some(projection) = registry.projections.iter().find(|p| p.name == args.name) else {
                return Err(unknown_projection(registry, &args.name).into());
            };
            let store = backend::open(args.database, bin, "projections rebuild").await?;
            let setups = backend::ensure_read_models(registry, &store);
            backend::watched(&store, bin, "projections rebuild", setups).await?;
            // The rebuild has a watchdog of its own, on its checkpoint row.
            let kind = if args.shadow {
                RebuildKind::Shadow
            } else {
                let partitions = args
                    .partitions
                    .map(chronik_projections::Partitions::new)
                    .transpose()?;
                RebuildKind::Scratch(partitions)
            };
            projections::rebuild(
                registry,
                &store,
                projection,
                kind,
                args.batch.into(),
                args.json,
            )
            .await
        }
        Command::Projections {
            command: ProjectionsCommand::Run(args),
        } => {
            let Some(projection) = registry.projections.iter().find(|p| p.name == args.name) else {
                return Err(unknown_projection(registry, &args.name).into());
            };
            let store = backend::open(args.database, bin, "projections run").await?;
            backend::ensure_read_models(registry, &store).await?;
            runner::run(
                registry,
                &store,
                projection,
                args.standby.standby_url,
                args.until_caught_up,
            )
            .await
        }
        Command::Projections {
            command: ProjectionsCommand::Parked(args),
        } => {
            let store = backend::open(args.database, bin, "projections parked").await?;
            let work = parked::list(registry, &store, &args.name, args.all, args.json);
            backend::watched(&store, bin, "projections parked", work).await
        }
        Command::Projections {
            command: ProjectionsCommand::Park(args),
        } => {
            let by = parked::who(args.by)?;
            let store = backend::open(args.database, bin, "projections park").await?;
            let work = parked::park(
                registry,
                &store,
                &args.name,
                args.event_id,
                &args.reason,
                &by,
            );
            backend::watched(&store, bin, "projections park", work).await
        }
        Command::Projections {
            command: ProjectionsCommand::Retry(args),
        } => {
            let Some(projection) = registry.projections.iter().find(|p| p.name == args.name) else {
                return Err(unknown_projection(registry, &args.name).into());
            };
            let by = parked::who(args.by)?;
            let store = backend::open(args.database, bin, "projections retry").await?;
            let work = parked::retry(registry, &store, projection, &args.event_ids, &by);
            backend::watched(&store, bin, "projections retry", work).await
        }
        Command::Projections {
            command: ProjectionsCommand::DropParked(args),
        } => {
            let by = parked::who(args.by)?;
            let store = backend::open(args.database, bin, "projections drop-parked").await?;
            let work = parked::drop(&store, &args.name, &args.event_ids, &by);
            backend::watched(&store, bin, "projections drop-parked", work).await
        }
        Command::Projections {
            command: ProjectionsCommand::Forget(args),
        } => {
            let store = backend::open(args.database, bin, "projections forget").await?;
            let work = projections::forget(registry, &store, &args.name);
            backend::watched(&store, bin, "projections forget", work).await
        }
        Command::Append(args) => {
            // All input is checked before connecting: bad input never reaches the store.
            let payload = append::read_payload(args.data)?;
            let request = append::request(
                registry,
                args.stream_id,
                args.expected_version,
                args.event_type,
                args.schema_version,
                &payload,
                args.headers,
                args.event_id,
            )?;
            let store = backend::open(args.database, bin, "append").await?;
            let work = async {
                let request =
                    append::check_stream(registry, &store, request, args.allow_unregistered)
                        .await?;
                append::run(&store, request, args.json).await
            };
            backend::watched(&store, bin, "append", work).await
        }
        Command::Console(args) => {
            let store = backend::open(args.database, bin, "console").await?;
            console::run(registry, store, &args.listen, args.admin_token).await
        }
        Command::Roles {
            command: RolesCommand::Grant(args),
        } => {
            let tables = registry.tables();
            if args.print {
                return roles::print(&args.database.schema, &args.role, &tables);
            }
            // A mistyped or unmigrated schema is said as every command says it (exit 4),
            // not as advice to migrate it.
            let store = backend::open(args.database, bin, "roles grant").await?;
            let work = roles::grant(&store, &args.role, &tables);
            backend::watched(&store, bin, "roles grant", work).await
        }
    }
}
