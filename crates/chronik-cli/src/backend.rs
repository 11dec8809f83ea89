//! Choosing the store: the PostgreSQL adapter behind `--database-url`.

use crate::demo;

/// Why the PostgreSQL commands cannot run in this build.
const NOT_BUILT: &str = "postgres support is not built yet: the chronik-postgres adapter \
    (PgEventStore) does not exist in this version; run the demo without --database-url \
    and with DATABASE_URL unset to use the in-memory store";

/// Runs the demo on PostgreSQL at `url`, after applying the migrations.
pub(crate) async fn demo_on_postgres(url: &str, options: &demo::Options) -> anyhow::Result<()> {
    let _ = (url, options);
    anyhow::bail!(NOT_BUILT)
}

/// Applies the embedded migrations to the database at `url`.
pub(crate) async fn migrate(url: &str) -> anyhow::Result<()> {
    let _ = url;
    anyhow::bail!(NOT_BUILT)
}
