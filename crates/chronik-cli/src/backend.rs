//! The PostgreSQL side of the CLI: `--database-url` for the demo, `chronik migrate`, the
//! connection the operator commands work on, and the migration state they check.

use std::fmt;
use std::io::Write as _;

use anyhow::Context as _;
use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};
use sqlx::Row as _;

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
    let migrations: Vec<String> = chronik_postgres::MIGRATOR
        .iter()
        .map(|m| format!("{:04} {}", m.version, m.description))
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

/// One migration the database records in `<schema>._sqlx_migrations`.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) version: i64,
    pub(crate) description: String,
    pub(crate) success: bool,
    pub(crate) checksum: Vec<u8>,
}

/// The store schema's migrations: what the database applied, compared with what this
/// binary embeds ([`chronik_postgres::MIGRATOR`]).
#[derive(Debug, Clone)]
pub(crate) struct MigrationState {
    /// The schema.
    pub(crate) schema: SchemaName,
    /// Recorded migrations, by version (empty when the table does not exist).
    pub(crate) applied: Vec<Applied>,
}

impl MigrationState {
    /// Reads the migrations table of `store`'s schema (a missing table: nothing applied).
    pub(crate) async fn read(store: &PgEventStore) -> anyhow::Result<Self> {
        let schema = store.schema().clone();
        let table = format!("{}._sqlx_migrations", schema.quoted());
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table)
            .fetch_one(store.pool())
            .await
            .context("cannot look for the migrations table")?;
        let mut applied = Vec::new();
        if exists {
            let rows = sqlx::query(&format!(
                "SELECT version, description, success, checksum FROM {table} ORDER BY version"
            ))
            .fetch_all(store.pool())
            .await
            .with_context(|| format!("cannot read {table}"))?;
            for r in &rows {
                applied.push(Applied {
                    version: r.try_get(0)?,
                    description: r.try_get(1)?,
                    success: r.try_get(2)?,
                    checksum: r.try_get(3)?,
                });
            }
        }
        Ok(Self { schema, applied })
    }

    /// Embedded (up) migrations: `(version, description)`.
    pub(crate) fn embedded() -> Vec<(i64, String)> {
        chronik_postgres::MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }

    /// How many of the embedded migrations are applied successfully.
    pub(crate) fn applied_count(&self) -> usize {
        Self::embedded()
            .iter()
            .filter(|(v, _)| self.applied.iter().any(|a| a.version == *v && a.success))
            .count()
    }

    /// Everything wrong, one sentence each: pending, failed, edited or unknown migrations.
    pub(crate) fn problems(&self) -> Vec<String> {
        let schema = &self.schema;
        let mut problems = Vec::new();
        for m in chronik_postgres::MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
        {
            match self.applied.iter().find(|a| a.version == m.version) {
                None => problems.push(format!(
                    "migration {:04} {} is not applied in schema {schema}: run `chronik migrate --schema {schema}`",
                    m.version, m.description
                )),
                Some(a) if !a.success => problems.push(format!(
                    "migration {:04} {} failed in schema {schema} and is recorded as unsuccessful: repair it by hand",
                    a.version, a.description
                )),
                Some(a) if a.checksum != *m.checksum => problems.push(format!(
                    "migration {:04} {} in schema {schema} differs from this binary's (edited after it was applied)",
                    a.version, a.description
                )),
                Some(_) => {}
            }
        }
        for a in &self.applied {
            if !Self::embedded().iter().any(|(v, _)| *v == a.version) {
                problems.push(format!(
                    "migration {:04} {} in schema {schema} is unknown to this binary (written by a newer chronik?)",
                    a.version, a.description
                ));
            }
        }
        problems
    }
}

/// Fails unless every embedded migration is applied in `store`'s schema.
pub(crate) async fn require_migrated(store: &PgEventStore) -> anyhow::Result<()> {
    let state = MigrationState::read(store).await?;
    let embedded = MigrationState::embedded().len();
    let applied = state.applied_count();
    anyhow::ensure!(
        applied == embedded,
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
