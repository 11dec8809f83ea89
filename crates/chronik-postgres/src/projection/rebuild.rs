use std::sync::Arc;
use std::time::{Duration, Instant};

use chronik_core::{FeedCursor, UpcasterRegistry};
use chronik_store::{EventStore, MAX_FEED_PAGE, StoreError, validate_projection_name};
use sqlx::Connection;

use super::handler::{PgProjection, ShadowProjection};
use super::runner::{Batch, Engine, PgProjectionError};
use crate::config::SchemaName;
use crate::error::backend;
use crate::store::PgEventStore;

/// Progress of a PostgreSQL rebuild, reported after every committed batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgRebuildProgress {
    /// Feed events examined so far.
    pub scanned: u64,
    /// Visible feed events when the rebuild started (the target of `scanned`; events
    /// appended meanwhile are replayed too, so `scanned` may end above it).
    pub total: u64,
    /// Events handed to the projection.
    pub handled: u64,
    /// Checkpoint reached (of the shadow, during a shadow rebuild).
    pub cursor: FeedCursor,
    /// Time since the rebuild started.
    pub elapsed: Duration,
}

impl PgRebuildProgress {
    /// Events scanned per second so far.
    #[must_use]
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let scanned = self.scanned as f64;
        if secs > 0.0 { scanned / secs } else { 0.0 }
    }

    /// Estimated time left at the current rate.
    #[must_use]
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        #[allow(clippy::cast_precision_loss)]
        let left = self.total.saturating_sub(self.scanned) as f64;
        (rate > 0.0).then(|| Duration::from_secs_f64(left / rate))
    }
}

type Progress<'a> = &'a mut (dyn FnMut(&PgRebuildProgress) + Send);

fn batch_size(n: usize) -> usize {
    if n == 0 { 1_000 } else { n.min(MAX_FEED_PAGE) }
}

/// Replays batches (each its own transaction) until the engine is caught up.
async fn replay<P: PgProjection>(
    engine: &Engine<P>,
    limit: usize,
    p: &mut PgRebuildProgress,
    started: Instant,
    progress: Progress<'_>,
) -> Result<(), PgProjectionError> {
    loop {
        match engine.batch(limit, false).await? {
            Batch::Committed {
                cursor,
                processed,
                scanned,
                full,
                ..
            } => {
                p.scanned += scanned as u64;
                p.handled = processed;
                p.cursor = cursor;
                p.elapsed = started.elapsed();
                progress(p);
                if !full {
                    return Ok(());
                }
            }
            Batch::Idle { .. } => return Ok(()),
            Batch::Failed { event, failure, .. } => {
                return Err(PgProjectionError::Handler {
                    projection: engine.name().to_owned(),
                    stream: event.stream_id.to_string(),
                    version: event.version.get(),
                    event_id: event.event_id,
                    source: failure,
                });
            }
        }
    }
}

/// Rebuilds `projection` from scratch: in one transaction, clears the read model and resets
/// the checkpoint; then replays the whole feed in batches (each committed with its
/// checkpoint), calling `progress` after each. The read model is empty, then partial,
/// while this runs: use [`rebuild_shadow`] to keep serving the old one.
///
/// Takes the projection's advisory lock for the duration, so it fails with
/// [`PgProjectionError::Busy`] while a runner is active (stop it first; restart it after).
///
/// # Errors
/// [`PgProjectionError::Busy`], store failures, [`PgProjectionError::Handler`] (the
/// checkpoint then marks how far it got; a runner resumes from there).
pub async fn rebuild<P: PgProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    batch: usize,
    progress: Progress<'_>,
) -> Result<PgRebuildProgress, PgProjectionError> {
    validate_projection_name(projection.name())?;
    let mut engine = Engine::new(store, Arc::clone(&projection), upcasters);
    engine.scan_all = true;
    let Some((lock, _pid)) = engine.try_lock(projection.name()).await? else {
        return Err(PgProjectionError::Busy(projection.name().to_owned()));
    };
    let result = scratch(store, &engine, &projection, batch, progress).await;
    let _ = lock.close().await;
    result
}

async fn scratch<P: PgProjection>(
    store: &PgEventStore,
    engine: &Engine<P>,
    projection: &P,
    batch: usize,
    progress: Progress<'_>,
) -> Result<PgRebuildProgress, PgProjectionError> {
    let started = Instant::now();
    let total = store.feed_head().await?.visible_events;
    let mut tx = store.pool().begin().await?;
    engine.lock_checkpoint(&mut tx).await?;
    projection
        .clear(&mut tx)
        .await
        .map_err(|e| StoreError::backend(format!("clearing the read model: {e}"), false))?;
    engine
        .set_checkpoint(&mut tx, projection.name(), FeedCursor::START, 0)
        .await?;
    tx.commit().await?;
    let mut p = PgRebuildProgress {
        scanned: 0,
        total,
        handled: 0,
        cursor: FeedCursor::START,
        elapsed: Duration::ZERO,
    };
    progress(&p);
    replay(engine, batch_size(batch), &mut p, started, progress).await?;
    p.elapsed = started.elapsed();
    Ok(p)
}

fn ident(name: &str) -> Result<(), StoreError> {
    // Same rules as schema names: lowercase ASCII, digits and `_`, at most 63 bytes.
    SchemaName::new(name).map(|_| ())
}

/// Rebuilds `projection` into a shadow copy of its table while the live table keeps
/// serving (and its runner keeps updating it), then swaps them atomically.
///
/// Steps: `CREATE TABLE <table>__shadow (LIKE <table> INCLUDING ALL)`; replay the whole
/// feed into it under the checkpoint `<name>__shadow` (batches commit as they go); then,
/// in one transaction: lock the live checkpoint row (this pauses the live runner between
/// batches), apply to the shadow whatever arrived meanwhile, rename the live table away,
/// rename the shadow to the live name, drop the old table, set the live checkpoint to
/// the shadow's, and commit. Readers see the old table until that commit and the new one
/// after it; nobody sees a partial table.
///
/// # Errors
/// [`PgProjectionError::Busy`] when another shadow rebuild of this projection runs;
/// store failures; [`PgProjectionError::Handler`]. On any error the live table is
/// untouched (a leftover shadow table is dropped by the next attempt).
pub async fn rebuild_shadow<P: PgProjection + ShadowProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    batch: usize,
    progress: Progress<'_>,
) -> Result<PgRebuildProgress, PgProjectionError> {
    let name = projection.name().to_owned();
    validate_projection_name(&name)?;
    let live_table = projection.table().to_owned();
    ident(&live_table)?;
    let shadow_table = format!("{live_table}__shadow");
    let old_table = format!("{live_table}__old");
    ident(&shadow_table)?;
    ident(&old_table)?;
    let shadow_name = format!("{name}__shadow");
    validate_projection_name(&shadow_name)?;
    let s = store.schema().quoted();

    let mut shadow = Engine::new(
        store,
        Arc::new(projection.with_table(&shadow_table)),
        upcasters,
    );
    shadow.name.clone_from(&shadow_name);
    shadow.scan_all = true;
    let live = Engine::new(store, Arc::clone(&projection), None);

    let Some((lock, _pid)) = shadow.try_lock(&shadow_name).await? else {
        return Err(PgProjectionError::Busy(shadow_name));
    };
    let names = ShadowNames {
        name,
        shadow_name,
        live_table,
        shadow_table,
        old_table,
    };
    let result = shadow_inner(store, &shadow, &live, &names, batch, progress)
        .await
        .map_err(|e| needs_owner(e, store.schema()));
    let _ = lock.close().await;
    if result.is_err() {
        let drop_shadow = format!("DROP TABLE IF EXISTS {s}.\"{}\"", names.shadow_table);
        if let Err(e) = sqlx::query(&drop_shadow).execute(store.pool()).await {
            tracing::warn!(error = %backend(e), "could not drop the shadow table");
        }
    }
    result
}

/// A shadow rebuild creates, renames and drops tables: run by a role without those rights
/// (typically the application role), say who must run it instead.
fn needs_owner(e: PgProjectionError, schema: &SchemaName) -> PgProjectionError {
    match e {
        PgProjectionError::Store(StoreError::Backend {
            message,
            retryable,
            source,
        }) if is_insufficient_privilege(source.as_deref()) => {
            PgProjectionError::Store(StoreError::Backend {
                message: format!(
                    "a shadow rebuild creates, renames and drops tables in schema {schema}: \
                     run it as the schema owner, the role that migrated the store ({message})"
                ),
                retryable,
                source: None,
            })
        }
        other => other,
    }
}

/// Whether a backend error's source is the server's `42501 insufficient_privilege`.
fn is_insufficient_privilege(
    source: Option<&(dyn std::error::Error + Send + Sync + 'static)>,
) -> bool {
    source
        .and_then(|e| e.downcast_ref::<sqlx::Error>())
        .and_then(sqlx::Error::as_database_error)
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == "42501")
}

/// A `DO` block that makes `shadow`'s owner and grants those of `live` (both tables of
/// schema `s`, already validated identifiers): every entry of the live table's ACL,
/// `PUBLIC` included, `WITH GRANT OPTION` where it had it. Grantee names are quoted by the
/// server (`%I`), never interpolated here.
fn carry_privileges(s: &str, live_table: &str, shadow_table: &str) -> String {
    format!(
        "DO $chronik$ \
         DECLARE r record; live_owner name; \
         BEGIN \
           SELECT pg_get_userbyid(relowner) INTO live_owner FROM pg_class \
             WHERE oid = '{s}.\"{live_table}\"'::regclass; \
           IF live_owner IS DISTINCT FROM (SELECT pg_get_userbyid(relowner) FROM pg_class \
               WHERE oid = '{s}.\"{shadow_table}\"'::regclass) THEN \
             EXECUTE format('ALTER TABLE {s}.\"{shadow_table}\" OWNER TO %I', live_owner); \
           END IF; \
           FOR r IN SELECT a.privilege_type, a.grantee, a.is_grantable \
               FROM pg_class c, aclexplode(c.relacl) a \
               WHERE c.oid = '{s}.\"{live_table}\"'::regclass LOOP \
             EXECUTE format('GRANT %s ON TABLE {s}.\"{shadow_table}\" TO %s%s', r.privilege_type, \
               CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END, \
               CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END); \
           END LOOP; \
         END $chronik$"
    )
}

struct ShadowNames {
    name: String,
    shadow_name: String,
    live_table: String,
    shadow_table: String,
    old_table: String,
}

async fn shadow_inner<P: PgProjection + ShadowProjection>(
    store: &PgEventStore,
    shadow: &Engine<P>,
    live: &Engine<P>,
    names: &ShadowNames,
    batch: usize,
    progress: Progress<'_>,
) -> Result<PgRebuildProgress, PgProjectionError> {
    let ShadowNames {
        name,
        shadow_name,
        live_table,
        shadow_table,
        old_table,
    } = names;
    let s = store.schema().quoted();
    let started = Instant::now();
    let total = store.feed_head().await?.visible_events;
    // Separate statements, not `raw_sql`: its future is not provably `Send` in generic code.
    let drop = format!("DROP TABLE IF EXISTS {s}.\"{shadow_table}\"");
    sqlx::query(&drop).execute(store.pool()).await?;
    let create =
        format!("CREATE TABLE {s}.\"{shadow_table}\" (LIKE {s}.\"{live_table}\" INCLUDING ALL)");
    sqlx::query(&create).execute(store.pool()).await?;
    let mut tx = store.pool().begin().await?;
    shadow
        .set_checkpoint(&mut tx, shadow_name, FeedCursor::START, 0)
        .await?;
    tx.commit().await?;

    let mut p = PgRebuildProgress {
        scanned: 0,
        total,
        handled: 0,
        cursor: FeedCursor::START,
        elapsed: Duration::ZERO,
    };
    progress(&p);
    let limit = batch_size(batch);
    replay(shadow, limit, &mut p, started, progress).await?;

    // The swap: one transaction, the live checkpoint row locked first (as runners do).
    let mut tx = store.pool().begin().await?;
    let (live_cursor, _) = live.lock_checkpoint(&mut tx).await?;
    loop {
        match shadow.apply_page(&mut tx, limit, false).await? {
            Batch::Committed {
                cursor,
                processed,
                scanned,
                full,
                ..
            } => {
                p.scanned += scanned as u64;
                p.handled = processed;
                p.cursor = cursor;
                if !full {
                    break;
                }
            }
            Batch::Idle { .. } => break,
            Batch::Failed { event, failure, .. } => {
                return Err(PgProjectionError::Handler {
                    projection: shadow_name.clone(),
                    stream: event.stream_id.to_string(),
                    version: event.version.get(),
                    event_id: event.event_id,
                    source: failure,
                });
            }
        }
    }
    // Everything visible is in the shadow, and the live checkpoint cannot move while
    // its row is locked: the shadow's position covers it.
    let cursor = p.cursor.max(live_cursor);
    // `LIKE ... INCLUDING ALL` copies no privileges and the shadow belongs to whoever runs
    // the rebuild: give it the live table's owner and grants before it takes the live name,
    // in this transaction, so that no grant made meanwhile is lost and the application
    // role never loses its access.
    sqlx::query(&carry_privileges(&s, live_table, shadow_table))
        .execute(&mut *tx)
        .await?;
    for swap in [
        format!("ALTER TABLE {s}.\"{live_table}\" RENAME TO \"{old_table}\""),
        format!("ALTER TABLE {s}.\"{shadow_table}\" RENAME TO \"{live_table}\""),
        format!("DROP TABLE {s}.\"{old_table}\""),
    ] {
        sqlx::query(&swap).execute(&mut *tx).await?;
    }
    live.set_checkpoint(&mut tx, name, cursor, p.handled)
        .await?;
    sqlx::query(&live.sql.delete_checkpoint)
        .bind(shadow_name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    p.cursor = cursor;
    p.elapsed = started.elapsed();
    progress(&p);
    Ok(p)
}
