//! What shadow rebuilds left behind: a `<name>__shadow` checkpoint or `<table>__shadow`
//! table that no running shadow rebuild holds (its process was killed before it could
//! clean up), for `doctor` to report and `projections forget <name>__shadow` to remove.

use chronik_core::FeedCursor;
use chronik_projections::ProjectionError;
use chronik_store::{StoreError, validate_projection_name};
use sqlx::{Connection as _, Row as _};

use super::runner::{busy, cursor_of, locked_checkpoint};
use super::sql::{LOCK_HOLDER, ProjectionSql, lock_key};
use crate::config::SchemaName;
use crate::error::backend;
use crate::store::PgEventStore;

/// The suffix of a shadow rebuild's checkpoint, lock and table names.
const SHADOW: &str = "__shadow";

/// A shadow rebuild's checkpoint and table for one projection, as found in the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShadowLeftover {
    /// The projection (its live name, without `__shadow`).
    pub projection: String,
    /// The checkpoint `<projection>__shadow`, when it exists.
    pub checkpoint: Option<FeedCursor>,
    /// The shadow table `<table>__shadow`, when it exists (looked for only for the tables
    /// given to [`shadow_leftovers`]).
    pub table: Option<String>,
    /// Backend pid of the session holding `<projection>__shadow`'s lock: a shadow rebuild
    /// is running and these are its own, not leftovers.
    pub rebuilding: Option<i32>,
}

/// Every shadow checkpoint (`<name>__shadow`) in the store's schema, and the shadow table
/// of each `(projection, table)` of `tables` that has one, by projection, each with the pid
/// of the shadow rebuild using them if one runs. Empty when nothing is left over.
///
/// # Errors
/// [`StoreError::InvalidRequest`] for an invalid table name; store failures.
pub async fn shadow_leftovers(
    store: &PgEventStore,
    tables: &[(&str, &str)],
) -> Result<Vec<ShadowLeftover>, StoreError> {
    let sql = ProjectionSql::new(store.schema());
    let mut found: Vec<ShadowLeftover> = Vec::new();
    for r in sqlx::query(sql.shadow_checkpoints.clone())
        .fetch_all(store.pool())
        .await
        .map_err(backend)?
    {
        let name: String = r.try_get(0).map_err(backend)?;
        let cursor = cursor_of(
            r.try_get(1).map_err(backend)?,
            r.try_get(2).map_err(backend)?,
        )?;
        found.push(ShadowLeftover {
            projection: name.trim_end_matches(SHADOW).to_owned(),
            checkpoint: Some(cursor),
            table: None,
            rebuilding: None,
        });
    }
    for (projection, table) in tables {
        let shadow_table = format!("{table}{SHADOW}");
        SchemaName::new(shadow_table.clone())?;
        let exists: bool = sqlx::query_scalar(sql.table_exists)
            .bind(store.schema().as_str())
            .bind(&shadow_table)
            .fetch_one(store.pool())
            .await
            .map_err(backend)?;
        if !exists {
            continue;
        }
        match found.iter_mut().find(|f| f.projection == *projection) {
            Some(f) => f.table = Some(shadow_table),
            None => found.push(ShadowLeftover {
                projection: (*projection).to_owned(),
                checkpoint: None,
                table: Some(shadow_table),
                rebuilding: None,
            }),
        }
    }
    for f in &mut found {
        f.rebuilding = sqlx::query_scalar(LOCK_HOLDER)
            .bind(lock_key(
                store.schema(),
                &format!("{}{SHADOW}", f.projection),
            ))
            .fetch_optional(store.pool())
            .await
            .map_err(backend)?;
    }
    found.sort_by(|a, b| a.projection.cmp(&b.projection));
    Ok(found)
}

/// Removes what a shadow rebuild of `projection` left behind: the checkpoint
/// `<projection>__shadow` (with any runner rows under that name) and, given the live
/// `table`, the table `<table>__shadow`. Takes the shadow rebuild's lock for the duration,
/// so it never touches a running rebuild's. Returns what it removed (`rebuilding` `None`).
///
/// # Errors
/// [`ProjectionError::Busy`] (naming `<projection>__shadow`) while a shadow rebuild
/// runs; [`StoreError::NotFound`] when there is nothing to remove; invalid names; store
/// failures.
pub async fn discard_shadow(
    store: &PgEventStore,
    projection: &str,
    table: Option<&str>,
) -> Result<ShadowLeftover, ProjectionError> {
    let shadow_name = format!("{projection}{SHADOW}");
    validate_projection_name(&shadow_name)?;
    let shadow_table = table.map(|t| format!("{t}{SHADOW}"));
    if let Some(t) = &shadow_table {
        SchemaName::new(t.clone())?;
    }
    let sql = ProjectionSql::new(store.schema());
    let s = store.schema().quoted();
    let options = store.pool().connect_options();
    let mut lock = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(backend)?;
    let got: bool = sqlx::query_scalar(sql.try_lock)
        .bind(lock_key(store.schema(), &shadow_name))
        .fetch_one(&mut lock)
        .await
        .map_err(backend)?;
    if !got {
        let _ = lock.close().await;
        return Err(busy(store, &shadow_name).await);
    }
    let result = async {
        let mut tx = store.pool().begin().await.map_err(backend)?;
        let checkpoint = locked_checkpoint(&mut tx, &sql, &shadow_name).await?;
        sqlx::query(sql.delete_checkpoint.clone())
            .bind(&shadow_name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(sql.forget_runners.clone())
            .bind([shadow_name.as_str()].as_slice())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut dropped = None;
        if let Some(shadow_table) = &shadow_table {
            let exists: bool = sqlx::query_scalar(sql.table_exists)
                .bind(store.schema().as_str())
                .bind(shadow_table)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
            if exists {
                let drop = format!("DROP TABLE {s}.\"{shadow_table}\"");
                sqlx::query(sqlx::AssertSqlSafe(drop.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                dropped = Some(shadow_table.clone());
            }
        }
        if checkpoint.is_none() && dropped.is_none() {
            return Err(ProjectionError::Store(StoreError::NotFound(format!(
                "no shadow rebuild of {projection} left anything in schema {} \
                 (no checkpoint {shadow_name}{})",
                store.schema(),
                shadow_table
                    .as_deref()
                    .map_or_else(String::new, |t| format!(", no table {t}"))
            ))));
        }
        tx.commit().await.map_err(backend)?;
        Ok(ShadowLeftover {
            projection: projection.to_owned(),
            checkpoint,
            table: dropped,
            rebuilding: None,
        })
    }
    .await;
    let _ = lock.close().await;
    result
}
