//! The one way every command connects, the migration check every store-reading command
//! runs first, `migrate`, and the errors that choose the exit status.

use std::fmt;
use std::io::Write as _;

use anyhow::Context as _;
use chronik_postgres::{MigrationProblem, MigrationStatus, PgEventStore, PgStoreConfig};
use serde_json::json;

use crate::fmt::{count, n};
use crate::{Database, Registry};

macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}

message_error!(
    /// A command line that cannot work as given: exit status 2 ([`crate::exit::USAGE`]),
    /// like clap's own errors; nothing was written.
    Usage
);
message_error!(
    /// Something the command names does not exist (a stream): exit status 3
    /// ([`crate::exit::NOT_FOUND`]).
    NotFound
);
message_error!(
    /// The command was stopped by Ctrl-C (SIGINT) and cleaned up: exit status 130
    /// ([`crate::exit::INTERRUPTED`]), as a shell reports a process killed by SIGINT.
    Interrupted
);
message_error!(
    /// The store's schema is not migrated: exit status 4 ([`crate::exit::NOT_MIGRATED`]).
    NotMigrated
);

/// Connects to the database of `command`, without checking or changing anything; also
/// returns the server's name for messages (never the URL, which may hold a password).
pub(crate) async fn connect(
    database: Database,
    binary: &str,
    command: &str,
) -> anyhow::Result<(PgEventStore, String)> {
    let Some(url) = database.database_url.filter(|u| !u.trim().is_empty()) else {
        return Err(Usage(format!(
            "`{binary} {command}` works on PostgreSQL only: pass --database-url URL or set DATABASE_URL"
        ))
        .into());
    };
    let server = server(&url);
    let store = PgEventStore::connect_with(&url, PgStoreConfig::with_schema(database.schema))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {server}"))?;
    Ok((store, server))
}

/// Connects for `command`, whose schema must be migrated.
pub(crate) async fn open(
    database: Database,
    binary: &str,
    command: &str,
) -> anyhow::Result<PgEventStore> {
    let (store, _) = connect(database, binary, command).await?;
    watched(&store, binary, command, require_migrated(&store, binary)).await?;
    Ok(store)
}

/// Runs `work` of `binary command` on `store`, saying after 2 s which sessions hold a lock
/// it waits for (and how to end them), then waiting on: no command waits in silence
/// ([`chronik_postgres::wait_saying_who_blocks`], the watchdog rebuilds use too).
pub(crate) async fn watched<F: std::future::Future>(
    store: &PgEventStore,
    binary: &str,
    command: &str,
    work: F,
) -> F::Output {
    let what = format!("`{binary} {command}`");
    chronik_postgres::wait_saying_who_blocks(store, &what, work).await
}

/// Applies the embedded migrations, then the registered setup steps, and says so.
pub(crate) async fn migrate(
    registry: &Registry,
    store: &PgEventStore,
    server: &str,
    json: bool,
) -> anyhow::Result<()> {
    let before = store
        .migration_status()
        .await
        .context("cannot read the schema's migrations")?
        .applied_count();
    store
        .migrate()
        .await
        .with_context(|| format!("cannot apply the migrations to {server}"))?;
    run_setups(registry, store).await?;
    let migrations: Vec<String> = MigrationStatus::embedded()
        .iter()
        .map(|(version, description)| format!("{version:04} {description}"))
        .collect();
    let tables = registry.tables();
    let schema = store.schema();
    let now = migrations.len().saturating_sub(before);
    let mut out = std::io::stdout().lock();
    if json {
        let doc = json!({
            "schema": schema.as_str(),
            "migrations": migrations,
            "applied_now": now,
            "already_applied": before,
            "setup_steps": registry.setups.len(),
            "read_models": tables,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    let read_models = if tables.is_empty() {
        String::new()
    } else {
        format!("; read models: {}", tables.join(", "))
    };
    let what = if now == 0 {
        format!(
            "all {} were already applied",
            count(migrations.len() as u64, "migration")
        )
    } else {
        format!(
            "{} applied now, {} already were",
            count(now as u64, "migration"),
            n(before as u64)
        )
    };
    writeln!(
        out,
        "schema {schema} of {server} is migrated: {what} ({}){read_models}",
        migrations.join(", "),
    )?;
    Ok(())
}

/// Runs the registered setup steps, in order.
pub(crate) async fn run_setups(registry: &Registry, store: &PgEventStore) -> anyhow::Result<()> {
    for (i, step) in registry.setups.iter().enumerate() {
        step(store.clone())
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("setup step {} of {} failed", i + 1, registry.binary))?;
    }
    Ok(())
}

/// Runs the registered setup steps before a command that needs the read models' tables
/// (`projections rebuild | run`, the console's rebuilds), but only when one of those tables
/// is missing: the steps create tables, which the application role may not (it has no
/// `CREATE` on the schema), and `migrate` ran them already. Steps that fail then are said
/// to be the schema owner's to run.
pub(crate) async fn ensure_read_models(
    registry: &Registry,
    store: &PgEventStore,
) -> anyhow::Result<()> {
    let missing = store
        .missing_tables(&registry.tables())
        .await
        .context("cannot look up the read models' tables")?;
    if missing.is_empty() {
        return Ok(());
    }
    let schema = store.schema();
    run_setups(registry, store).await.with_context(|| {
        format!(
            "{} not in schema {schema} and could not be created: run `{} migrate --schema \
             {schema}` as the schema owner (it runs the setup steps that create the read models), \
             then run this again",
            if missing.len() == 1 {
                format!("the read-model table {} is", missing[0])
            } else {
                format!("the read-model tables {} are", missing.join(", "))
            },
            registry.binary
        )
    })
}

/// Everything wrong with `status`, one sentence each, saying what to do: a schema that
/// does not exist is that (not a list of migrations to apply, which would create an empty
/// store there), and pending migrations are one sentence.
pub(crate) fn migration_problems(status: &MigrationStatus, binary: &str) -> Vec<String> {
    let schema = &status.schema;
    if !status.schema_exists {
        return vec![missing_schema(status, binary)];
    }
    let problems = status.problems();
    let pending: Vec<&MigrationProblem> = problems
        .iter()
        .filter(|p| matches!(p, MigrationProblem::Pending { .. }))
        .collect();
    let mut out = Vec::new();
    match pending.as_slice() {
        [] => {}
        [one] => out.push(format!(
            "{one} in schema {schema}: run `{binary} migrate --schema {schema}`"
        )),
        many => {
            let names: Vec<String> = many
                .iter()
                .filter_map(|p| match p {
                    MigrationProblem::Pending {
                        version,
                        description,
                    } => Some(format!("{version:04} {description}")),
                    _ => None,
                })
                .collect();
            out.push(format!(
                "{} of {} migrations are not applied in schema {schema} ({}): run `{binary} migrate --schema {schema}`",
                many.len(),
                MigrationStatus::embedded().len(),
                names.join(", ")
            ));
        }
    }
    out.extend(
        problems
            .iter()
            .filter(|p| !matches!(p, MigrationProblem::Pending { .. }))
            .map(|p| format!("{p} (schema {schema})")),
    );
    out
}

/// The schema of `status` does not exist: say so, and where chronik stores are.
fn missing_schema(status: &MigrationStatus, binary: &str) -> String {
    let schema = &status.schema;
    let known = if status.stores_elsewhere.is_empty() {
        "no schema of this database holds a chronik store".to_owned()
    } else {
        format!(
            "chronik stores in this database: {}",
            status.stores_elsewhere.join(", ")
        )
    };
    format!(
        "schema {schema} does not exist in this database ({known}): check --schema; \
         to create a new, empty store there, run `{binary} migrate --schema {schema}`"
    )
}

/// Fails with [`NotMigrated`] unless every embedded migration is applied in `store`'s
/// schema.
pub(crate) async fn require_migrated(store: &PgEventStore, binary: &str) -> anyhow::Result<()> {
    let status = store
        .migration_status()
        .await
        .context("cannot read the schema's migrations")?;
    if status.is_current() {
        return Ok(());
    }
    let schema = store.schema();
    if !status.schema_exists {
        // A typo is not an unmigrated store: migrating it would create an empty one.
        return Err(NotMigrated(missing_schema(&status, binary)).into());
    }
    Err(NotMigrated(format!(
        "schema {schema} is not migrated ({applied} of {embedded} migrations applied): run `{binary} migrate --schema {schema}`",
        applied = status.applied_count(),
        embedded = MigrationStatus::embedded().len(),
    ))
    .into())
}

/// `host:port/database` from a URL, without scheme, user or password.
pub(crate) fn server(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split_once('?').map_or(rest, |(host, _)| host);
    if rest.is_empty() {
        "the configured server".to_owned()
    } else {
        rest.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::server;

    #[test]
    fn server_names_never_show_credentials() {
        assert_eq!(
            server("postgres://u:secret@db.example:5432/app?sslmode=require"),
            "db.example:5432/app"
        );
        assert_eq!(
            server("postgres://postgres@127.0.0.1:5432/postgres"),
            "127.0.0.1:5432/postgres"
        );
        assert_eq!(server("postgres://"), "the configured server");
    }
}
