//! The PostgreSQL side of the CLI: `--database-url` for the demo, `chronik migrate`, the
//! connection the operator commands work on, and the migration state they check.

use std::fmt;
use std::io::Write as _;

use anyhow::Context as _;
use chronik_postgres::{
    MigrationProblem, MigrationStatus, PgEventStore, PgStoreConfig, SchemaName,
};

use crate::demo;

/// A command line that cannot work as given (exit status 2, like clap's own errors).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Connects to `url`, for the store in `schema`, without changing anything.
///
/// Errors name the server as `host:port/database` only: a URL may hold a password.
pub(crate) async fn connect(url: &str, schema: SchemaName) -> anyhow::Result<PgEventStore> {
    PgEventStore::connect_with(url, PgStoreConfig::with_schema(schema))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", server(url)))
}

/// Connects to `url` and applies the embedded migrations in `schema` (idempotent).
async fn connect_and_migrate(url: &str, schema: SchemaName) -> anyhow::Result<PgEventStore> {
    let server = server(url);
    let store = connect(url, schema).await?;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot apply the migrations to {server}"))?;
    Ok(store)
}

/// Runs the demo on PostgreSQL at `url`, after applying the migrations.
pub(crate) async fn demo_on_postgres(url: &str, options: &demo::Options) -> anyhow::Result<()> {
    let store = connect_and_migrate(url, SchemaName::default()).await?;
    let label = format!("PostgreSQL ({})", server(url));
    demo::run(store, &label, options, &crate::read_model::PgOrders)
        .await
        .context("demo failed")
}

/// Applies the embedded migrations to the database at `url`, in `schema`, then creates
/// the tables of this binary's read models (the Orders example's) unless they exist.
pub(crate) async fn migrate(url: &str, schema: SchemaName) -> anyhow::Result<()> {
    let store = connect_and_migrate(url, schema).await?;
    orders::OrderProjection::create_table(&store)
        .await
        .with_context(|| format!("cannot create {}", orders::OrderProjection::TABLE))?;
    let migrations: Vec<String> = MigrationStatus::embedded()
        .iter()
        .map(|(version, description)| format!("{version:04} {description}"))
        .collect();
    writeln!(
        std::io::stdout(),
        "{} is migrated; migrations: {}; read models: {}",
        server(url),
        migrations.join(", "),
        orders::OrderProjection::TABLE
    )?;
    Ok(())
}

/// Everything wrong with `status`, one sentence each, saying what to do.
pub(crate) fn migration_problems(status: &MigrationStatus) -> Vec<String> {
    let schema = &status.schema;
    status
        .problems()
        .iter()
        .map(|p| match p {
            MigrationProblem::Pending { .. } => {
                format!("{p} in schema {schema}: run `chronik migrate --schema {schema}`")
            }
            _ => format!("{p} (schema {schema})"),
        })
        .collect()
}

/// Fails unless every embedded migration is applied in `store`'s schema.
pub(crate) async fn require_migrated(store: &PgEventStore) -> anyhow::Result<()> {
    let status = store
        .migration_status()
        .await
        .context("cannot read the schema's migrations")?;
    let embedded = MigrationStatus::embedded().len();
    let applied = status.applied_count();
    anyhow::ensure!(
        status.is_current(),
        "schema {schema} is not migrated ({applied} of {embedded} migrations applied): run `chronik migrate --schema {schema}`",
        schema = store.schema()
    );
    Ok(())
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
