//! A projection's checkpoint layout: one checkpoint under its own name (a single runner),
//! or one per partition (`<name>#<index>/<count>`). A checkpoint says which events were
//! applied only together with the layout that wrote it, so every runner checks the stored
//! layout against its own before it writes one, and refuses
//! ([`ProjectionError::PartitionsChanged`]) when they differ; changing the layout is a
//! rebuild ([`crate::rebuild_partitioned`]).

use chronik_core::FeedCursor;
use chronik_projections::{Partitions, ProjectionError, parse_partition};
use sqlx::PgConnection;

use super::runner::as_i64;
use super::sql::{ProjectionSql, layout_key};
use crate::config::SchemaName;
use crate::error::backend;
use crate::store::PgEventStore;

/// The checkpoint names of `layout` for projection `name`, by partition index.
pub(crate) fn names(name: &str, layout: Partitions) -> Vec<String> {
    (0..layout.get())
        .map(|i| layout.checkpoint_name(name, i))
        .collect()
}

/// The stored checkpoint rows of projection `name`, every layout (partition names that
/// [`parse_partition`] does not read as `name`'s are not its).
pub(crate) async fn family(
    conn: &mut PgConnection,
    sql: &ProjectionSql,
    name: &str,
) -> Result<Vec<String>, ProjectionError> {
    let rows: Vec<String> = sqlx::query_scalar(sql.family.clone())
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(rows
        .into_iter()
        .filter(|n| n == name || parse_partition(n).is_some_and(|(p, _, _)| p == name))
        .collect())
}

/// The layout that a stored checkpoint name was written with.
fn layout_of(name: &str) -> u32 {
    parse_partition(name).map_or(1, |(_, _, n)| n.get())
}

/// Inside `tx`: serializes with every other layout check of `name` (until `tx` ends) and
/// fails with [`ProjectionError::PartitionsChanged`] when a checkpoint of `name` was
/// written with another layout than `wanted`.
pub(crate) async fn check(
    tx: &mut PgConnection,
    sql: &ProjectionSql,
    schema: &SchemaName,
    name: &str,
    wanted: Partitions,
) -> Result<(), ProjectionError> {
    sqlx::query(sql.xact_lock)
        .bind(layout_key(schema, name))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let stored = family(tx, sql, name).await?;
    if let Some(other) = stored
        .iter()
        .map(|n| layout_of(n))
        .find(|n| *n != wanted.get())
    {
        return Err(ProjectionError::PartitionsChanged {
            projection: name.to_owned(),
            stored: other,
            wanted: wanted.get(),
        });
    }
    Ok(())
}

/// Checks `name`'s stored layout against `wanted` and creates the checkpoints of
/// `wanted` that are missing (at the start of the feed), in one transaction.
pub(crate) async fn ensure(
    store: &PgEventStore,
    sql: &ProjectionSql,
    name: &str,
    wanted: Partitions,
) -> Result<(), ProjectionError> {
    let mut tx = store.pool().begin().await.map_err(backend)?;
    check(&mut tx, sql, store.schema(), name, wanted).await?;
    sqlx::query(sql.create_partitions.clone())
        .bind(name)
        .bind(names(name, wanted))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(())
}

/// Inside a rebuild's transaction `tx`, after the replay left `name`'s own checkpoint at
/// `cursor`: makes `layout` the stored one, every partition at `cursor` (each has applied
/// everything up to it: the rebuild did) with the events the rebuild handled for it
/// (`handled`, by index), and deletes the checkpoints of any other layout.
pub(crate) async fn replace(
    tx: &mut PgConnection,
    sql: &ProjectionSql,
    schema: &SchemaName,
    name: &str,
    (layout, cursor, handled): (Partitions, FeedCursor, &[u64]),
) -> Result<(), ProjectionError> {
    sqlx::query(sql.xact_lock)
        .bind(layout_key(schema, name))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let keep = names(name, layout);
    let other: Vec<String> = family(tx, sql, name)
        .await?
        .into_iter()
        .filter(|n| !keep.contains(n))
        .collect();
    sqlx::query(sql.delete_checkpoints.clone())
        .bind(&other)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    if layout.get() > 1 {
        for (index, partition) in keep.iter().enumerate() {
            let processed = handled.get(index).copied().unwrap_or(0);
            sqlx::query(sql.set_checkpoint.clone())
                .bind(partition)
                .bind(cursor.transaction_i64())
                .bind(cursor.position_i64())
                .bind(as_i64(processed))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
    }
    Ok(())
}
