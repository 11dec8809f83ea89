//! The PostgreSQL side of the CLI: `--database-url` for the demo, `chronik migrate`, and the
//! connection `chronik tail` reads from.

use std::io::Write as _;

use anyhow::Context as _;
use chronik_postgres::PgEventStore;

use crate::demo;

/// Connects to `url` without changing anything.
///
/// Errors name the server as `host:port/database` only: a URL may hold a password.
pub(crate) async fn connect(url: &str) -> anyhow::Result<PgEventStore> {
    PgEventStore::connect(url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", server(url)))
}

/// Connects to `url` and applies the embedded migrations (idempotent).
async fn connect_and_migrate(url: &str) -> anyhow::Result<PgEventStore> {
    let server = server(url);
    let store = connect(url).await?;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot apply the migrations to {server}"))?;
    Ok(store)
}

/// Runs the demo on PostgreSQL at `url`, after applying the migrations.
pub(crate) async fn demo_on_postgres(url: &str, options: &demo::Options) -> anyhow::Result<()> {
    let store = connect_and_migrate(url).await?;
    let label = format!("PostgreSQL ({})", server(url));
    demo::run(store, &label, options)
        .await
        .context("demo failed")
}

/// Applies the embedded migrations to the database at `url`.
pub(crate) async fn migrate(url: &str) -> anyhow::Result<()> {
    connect_and_migrate(url).await?;
    let migrations: Vec<String> = chronik_postgres::MIGRATOR
        .iter()
        .map(|m| format!("{:04} {}", m.version, m.description))
        .collect();
    writeln!(
        std::io::stdout(),
        "{} is migrated; migrations: {}",
        server(url),
        migrations.join(", ")
    )?;
    Ok(())
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
