use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use chronik_core::{EventId, FeedCursor, UpcasterRegistry};
use chronik_projections::{EventRef, Partitions, ProjectionError, RebuildProgress};
use chronik_store::{EventStore, MAX_FEED_PAGE, StoreError, validate_projection_name};
use uuid::Uuid;

use super::handler::{PgProjection, ShadowProjection};
use super::layout;
use super::record;
use super::runner::{Batch, Engine, release};
use crate::config::SchemaName;
use crate::error::backend;
use crate::store::PgEventStore;

/// Called after every batch with the progress so far; returning
/// [`ControlFlow::Break`] stops the rebuild at that batch boundary (it then cleans up and
/// fails with [`ProjectionError::Interrupted`]).
type Progress<'a> = &'a mut (dyn FnMut(&RebuildProgress) -> ControlFlow<()> + Send);

fn batch_size(n: usize) -> usize {
    if n == 0 { 1_000 } else { n.min(MAX_FEED_PAGE) }
}

/// The error for a handler failure on `event` during a rebuild of `projection`.
fn handler_failed(
    projection: &str,
    event: &chronik_core::RecordedEvent,
    failure: chronik_projections::HandlerError,
) -> ProjectionError {
    ProjectionError::Handler {
        projection: projection.to_owned(),
        event: Box::new(EventRef::from(event)),
        source: failure,
    }
}

/// The events a rebuild of `name` passes over: those with a recorded park decision,
/// which the runner skips too, so that a rebuild gives the read model the runner keeps.
async fn skipped(store: &PgEventStore, name: &str) -> Result<HashSet<EventId>, StoreError> {
    let sql = super::sql::ProjectionSql::new(store.schema());
    let ids: Vec<Uuid> = sqlx::query_scalar(sql.skipped_ids.clone())
        .bind(name)
        .fetch_all(store.pool())
        .await
        .map_err(backend)?;
    ids.into_iter().map(super::runner::event_id).collect()
}

/// Applies pages until `engine` is caught up, reporting after each batch; stops with
/// [`ProjectionError::Interrupted`] when `progress` says so. With `tx`, every page is
/// applied inside it and nothing is committed; without, each batch commits in its own
/// transaction. Returns the events handled by partition, with [`Engine::tally`].
async fn replay<P: PgProjection>(
    engine: &Engine<P>,
    mut tx: Option<&mut super::handler::PgTransaction>,
    limit: usize,
    p: &mut RebuildProgress,
    started: Instant,
    progress: Progress<'_>,
) -> Result<Vec<u64>, ProjectionError> {
    let mut handled = vec![0; engine.tally.map_or(0, |n| n.get() as usize)];
    loop {
        let batch = match tx.as_deref_mut() {
            Some(tx) => engine.apply_page(tx, limit, false).await?,
            None => engine.batch(limit, false).await?,
        };
        match batch {
            Batch::Committed {
                cursor,
                processed,
                scanned,
                full,
                by_partition,
                ..
            } => {
                for (total, n) in handled.iter_mut().zip(by_partition) {
                    *total += n;
                }
                p.scanned += scanned as u64;
                p.handled = processed;
                p.cursor = cursor;
                p.elapsed = started.elapsed();
                if progress(p).is_break() {
                    return Err(interrupted(engine.name(), p));
                }
                if !full {
                    return Ok(handled);
                }
            }
            Batch::Idle { .. } => return Ok(handled),
            Batch::Failed { event, failure, .. } => {
                return Err(handler_failed(engine.name(), &event, failure));
            }
        }
    }
}

/// Locks `engine`'s checkpoint row in `conn`'s transaction, like `Engine::lock_checkpoint`;
/// when that waits longer than [`crate::LOCK_PATIENCE`], warns (on stderr for the CLI)
/// which sessions hold it (a runner's batch, a transaction left open) and how to end them,
/// then waits on (the crate's one lock watchdog, [`crate::lock_wait`]).
async fn lock_checkpoint_patiently<P: PgProjection>(
    store: &PgEventStore,
    engine: &Engine<P>,
    conn: &mut sqlx::PgConnection,
) -> Result<(FeedCursor, u64), StoreError> {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    let name = engine.name().trim_end_matches("__shadow");
    crate::lock_wait::patiently(
        store,
        crate::lock_wait::Waiter::Session(pid),
        |holders, waited| {
            tracing::warn!(
                target: crate::OPERATOR_TARGET,
                "the rebuild of {name} has waited {} s for the lock on its checkpoint row, held by {}: \
                 a runner's batch ends soon, a transaction left open does not; it goes on once the lock is free",
                waited.as_secs(),
                crate::lock_wait::describe(holders)
            );
        },
        engine.lock_checkpoint(conn),
    )
    .await
}

/// Starts the progress of a rebuild of `name` (its clock, the visible feed events to scan)
/// and reports it once, before anything is written: a `Break` then stops the rebuild.
async fn begin(
    store: &PgEventStore,
    name: &str,
    progress: Progress<'_>,
) -> Result<(Instant, RebuildProgress), ProjectionError> {
    let started = Instant::now();
    let p = RebuildProgress::start(store.feed_head().await?.visible_events);
    if progress(&p).is_break() {
        return Err(interrupted(name, &p));
    }
    Ok((started, p))
}

fn interrupted(name: &str, p: &RebuildProgress) -> ProjectionError {
    ProjectionError::Interrupted {
        projection: name.trim_end_matches("__shadow").to_owned(),
        scanned: p.scanned,
    }
}

/// Rebuilds `projection` from scratch, atomically: in **one transaction**, clears the read
/// model, resets the checkpoint, replays the whole visible feed (in pages of `batch`
/// events, calling `progress` after each) and moves the checkpoint to its end, then
/// commits. Until that commit readers see the old read model; if anything fails (an event
/// that does not decode, a handler error, a lost connection) or `progress` stops it, the
/// transaction rolls back and the old read model and checkpoint stay as they were.
///
/// Events with a recorded park decision ([`crate::park_event`]) are passed over, as the
/// runner passes over them.
///
/// The transaction holds the feed's horizon while it runs: events committed after it
/// started stay invisible to **every** projection of the cluster until it commits (its
/// runner then catches up from the checkpoint). On a large feed, prefer
/// [`rebuild_shadow`], which commits as it goes and keeps the live table serving.
///
/// Takes the projection's advisory lock for the duration, so it fails with
/// [`ProjectionError::Busy`] while a runner is active (stop it first; restart it after),
/// and the lock of its shadow rebuilds (`<name>__shadow`), so that it fails with
/// [`ProjectionError::Busy`] for `<name>__shadow` while a shadow rebuild runs, and a
/// shadow rebuild started while it runs fails the same way.
///
/// A projection that runs as partitions ([`crate::PgPartitionedRunner`]) is rebuilt with
/// the number of partitions its checkpoints were written with (their locks are taken
/// too, so no worker may run); [`rebuild_partitioned`] changes that number.
///
/// # Errors
/// [`ProjectionError::Busy`], store failures, [`ProjectionError::Handler`] (naming the
/// event, its stream, version and cursor), [`ProjectionError::Interrupted`]; in every
/// case nothing was changed.
pub async fn rebuild<P: PgProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    batch: usize,
    progress: Progress<'_>,
) -> Result<RebuildProgress, ProjectionError> {
    let stored = {
        let sql = super::sql::ProjectionSql::new(store.schema());
        let mut conn = store.pool().acquire().await.map_err(backend)?;
        stored_partitions(&mut conn, &sql, projection.name()).await?
    };
    let layout = stored.unwrap_or(Partitions::ONE);
    rebuild_partitioned(store, projection, layout, upcasters, batch, progress).await
}

/// The number of partitions of `name`'s stored partition checkpoints, if it has any.
async fn stored_partitions(
    conn: &mut sqlx::PgConnection,
    sql: &super::sql::ProjectionSql,
    name: &str,
) -> Result<Option<Partitions>, ProjectionError> {
    Ok(layout::family(conn, sql, name)
        .await?
        .iter()
        .find_map(|n| chronik_projections::parse_partition(n).map(|(_, _, count)| count)))
}

/// [`rebuild`] for a projection that runs as `partitions` from now on: the one way to
/// change its number of partitions (whatever layout its checkpoints were written with).
/// After the replay every partition's checkpoint is where the rebuild ended, counting
/// the events the rebuild handled for that partition's streams as its events processed,
/// and the checkpoints of any other layout are deleted, in the same transaction.
///
/// Takes the lock of the projection and of every partition, stored or new, so it fails
/// with [`ProjectionError::Busy`] while any worker owns one (stop them all first; start
/// them with `partitions` after).
///
/// # Errors
/// As [`rebuild`]; nothing was changed.
pub async fn rebuild_partitioned<P: PgProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    partitions: Partitions,
    upcasters: Option<Arc<UpcasterRegistry>>,
    batch: usize,
    progress: Progress<'_>,
) -> Result<RebuildProgress, ProjectionError> {
    validate_projection_name(projection.name())?;
    for name in layout::names(projection.name(), partitions) {
        validate_projection_name(&name)?;
    }
    let mut engine = Engine::new(store, Arc::clone(&projection), upcasters);
    engine.scan_all = true;
    engine.tally = (partitions.get() > 1).then_some(partitions);
    let Some((mut lock, pid)) = engine.try_lock(projection.name()).await? else {
        return Err(super::runner::busy(store, projection.name()).await);
    };
    // A shadow rebuild holds `<name>__shadow` only (the live runner keeps `<name>`): this
    // session takes that lock too, so that the two never run at once (they would write one
    // `projection_rebuilds` row over the other, and the swap would replace what this one
    // commits). Whichever comes second is refused, naming the holder.
    let shadow_name = format!("{}__shadow", projection.name());
    if engine.try_lock_on(&mut lock, &shadow_name).await?.is_none() {
        let busy = super::runner::busy(store, &shadow_name).await;
        release(lock).await;
        return Err(busy);
    }
    if let Err(e) = lock_partitions(&engine, &mut lock, partitions).await {
        release(lock).await;
        return Err(e);
    }
    let recorded = record::started(&mut lock, &engine.sql, projection.name(), false).await;
    let mut last = None;
    let mut track = |p: &RebuildProgress| {
        last = Some(*p);
        progress(p)
    };
    let result = async {
        engine.skip = skipped(store, projection.name()).await?;
        scratch(
            store,
            &engine,
            &projection,
            (batch, partitions),
            recorded.then_some(pid),
            &mut track,
        )
        .await
    }
    .await;
    if recorded && let Err(e) = &result {
        let (scanned, total) = last.map_or((0, 0), |p| (p.scanned, p.total));
        let why = e.to_string();
        record::failed(
            store,
            &engine.sql,
            projection.name(),
            pid,
            scanned,
            total,
            &why,
        )
        .await;
    }
    release(lock).await;
    result
}

/// `recorded`: the pid of the lock session whose start was recorded, to record the success
/// in the committing transaction.
async fn scratch<P: PgProjection>(
    store: &PgEventStore,
    engine: &Engine<P>,
    projection: &P,
    (batch, partitions): (usize, Partitions),
    recorded: Option<i32>,
    progress: Progress<'_>,
) -> Result<RebuildProgress, ProjectionError> {
    let (started, mut p) = begin(store, engine.name(), &mut *progress).await?;
    let mut tx = store.pool().begin().await.map_err(backend)?;
    lock_checkpoint_patiently(store, engine, &mut tx).await?;
    projection
        .clear(&mut tx)
        .await
        .map_err(|e| StoreError::backend(format!("clearing the read model: {e}"), false))?;
    engine
        .set_checkpoint(&mut tx, projection.name(), FeedCursor::START, 0)
        .await?;
    let replayed = replay(
        engine,
        Some(&mut tx),
        batch_size(batch),
        &mut p,
        started,
        progress,
    )
    .await;
    let replayed = match replayed {
        Ok(handled) => {
            let name = projection.name();
            let layout = (partitions, p.cursor, handled.as_slice());
            layout::replace(&mut tx, &engine.sql, store.schema(), name, layout).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = replayed {
        // Said explicitly while the connection is usable; dropping `tx` rolls back too.
        let _ = tx.rollback().await;
        return Err(e);
    }
    if let Some(pid) = recorded {
        let name = projection.name();
        record::finished(&mut tx, &engine.sql, name, pid, p.scanned, p.total, None).await?;
    }
    tx.commit().await.map_err(backend)?;
    p.elapsed = started.elapsed();
    Ok(p)
}

/// Takes, on the rebuild's lock session `lock`, the lock of every partition of the
/// projection: those of its stored checkpoints and those of `partitions`.
async fn lock_partitions<P: PgProjection>(
    engine: &Engine<P>,
    lock: &mut sqlx::PgConnection,
    partitions: Partitions,
) -> Result<(), ProjectionError> {
    let name = engine.projection.name();
    let mut names = layout::family(lock, &engine.sql, name).await?;
    names.extend(layout::names(name, partitions));
    names.sort();
    names.dedup();
    for other in names.iter().filter(|n| *n != name) {
        if engine.try_lock_on(lock, other).await?.is_none() {
            return Err(super::runner::busy(&engine.store, other).await);
        }
    }
    Ok(())
}

/// A shadow rebuild swaps one live checkpoint in: it refuses a projection whose stored
/// checkpoints are partitions.
async fn refuse_partitioned(store: &PgEventStore, name: &str) -> Result<(), ProjectionError> {
    let sql = super::sql::ProjectionSql::new(store.schema());
    let mut conn = store.pool().acquire().await.map_err(backend)?;
    match stored_partitions(&mut conn, &sql, name).await? {
        Some(count) => Err(ProjectionError::Store(StoreError::InvalidRequest(format!(
            "projection {name} runs as {} partitions, and a shadow rebuild keeps one checkpoint: \
             rebuild it in place (`chronik projections rebuild {name} --partitions {}`)",
            count.get(),
            count.get()
        )))),
        None => Ok(()),
    }
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
/// Events with a recorded park decision for the projection ([`crate::park_event`]) are
/// passed over, as its runner passes over them. `progress` is called after every batch;
/// returning [`ControlFlow::Break`] stops the rebuild at that boundary.
///
/// # Errors
/// [`ProjectionError::Busy`] (for `<name>__shadow`) when another rebuild of this
/// projection runs, shadow or from scratch ([`rebuild`] holds that lock too);
/// store failures; [`ProjectionError::Handler`] (naming the event, its stream, version
/// and cursor); [`ProjectionError::Interrupted`]. On every error the live table and
/// checkpoint are untouched and the shadow table and its checkpoint `<name>__shadow` are
/// dropped before returning, when the server can still be reached: a drop that fails (the
/// server went away) is logged as a warning and they stay, for [`crate::shadow_leftovers`] to
/// find, `chronik projections forget <name>__shadow` to remove, and the next attempt to
/// drop too.
pub async fn rebuild_shadow<P: PgProjection + ShadowProjection>(
    store: &PgEventStore,
    projection: Arc<P>,
    upcasters: Option<Arc<UpcasterRegistry>>,
    batch: usize,
    progress: Progress<'_>,
) -> Result<RebuildProgress, ProjectionError> {
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
    refuse_partitioned(store, &name).await?;

    let mut shadow = Engine::new(
        store,
        Arc::new(projection.with_table(&shadow_table)),
        upcasters,
    );
    shadow.name.clone_from(&shadow_name);
    shadow.scan_all = true;
    let live = Engine::new(store, Arc::clone(&projection), None);

    let Some((mut lock, pid)) = shadow.try_lock(&shadow_name).await? else {
        return Err(super::runner::busy(store, &shadow_name).await);
    };
    let recorded = record::started(&mut lock, &live.sql, &name, true).await;
    let mut last = None;
    let mut track = |p: &RebuildProgress| {
        last = Some(*p);
        progress(p)
    };
    let names = ShadowNames {
        name,
        shadow_name,
        live_table,
        shadow_table,
        old_table,
    };
    let result = async {
        shadow.skip = skipped(store, &names.name).await?;
        let recorded = recorded.then_some(pid);
        shadow_inner(store, &shadow, &live, &names, batch, recorded, &mut track).await
    }
    .await
    .map_err(|e| needs_owner(e, store.schema()));
    if let Err(e) = &result
        && recorded
    {
        let (scanned, total) = last.map_or((0, 0), |p| (p.scanned, p.total));
        let why = e.to_string();
        record::failed(store, &live.sql, &names.name, pid, scanned, total, &why).await;
    }
    if result.is_err() {
        // Cleaned up while the lock is still held, so that no other rebuild is using them.
        let drop_shadow = format!("DROP TABLE IF EXISTS {s}.\"{}\"", names.shadow_table);
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop_shadow.as_str()))
            .execute(store.pool())
            .await
        {
            tracing::warn!(error = %backend(e), "could not drop the shadow table");
        }
        if let Err(e) = sqlx::query(live.sql.delete_checkpoint.clone())
            .bind(&names.shadow_name)
            .execute(store.pool())
            .await
        {
            tracing::warn!(error = %backend(e), "could not delete the shadow checkpoint");
        }
    }
    release(lock).await;
    result
}

/// A shadow rebuild creates, renames and drops tables: run by a role without those rights
/// (typically the application role), say who must run it instead.
fn needs_owner(e: ProjectionError, schema: &SchemaName) -> ProjectionError {
    match e {
        ProjectionError::Store(StoreError::Backend {
            message,
            retryable,
            source,
        }) if is_insufficient_privilege(source.as_deref()) => {
            ProjectionError::Store(StoreError::Backend {
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

/// `recorded`: as for `scratch`.
async fn shadow_inner<P: PgProjection + ShadowProjection>(
    store: &PgEventStore,
    shadow: &Engine<P>,
    live: &Engine<P>,
    names: &ShadowNames,
    batch: usize,
    recorded: Option<i32>,
    progress: Progress<'_>,
) -> Result<RebuildProgress, ProjectionError> {
    let ShadowNames {
        name,
        shadow_name,
        live_table,
        shadow_table,
        old_table,
    } = names;
    let s = store.schema().quoted();
    let (started, mut p) = begin(store, shadow_name, &mut *progress).await?;
    // Separate statements, not `raw_sql`: its future is not provably `Send` in generic code.
    let drop = format!("DROP TABLE IF EXISTS {s}.\"{shadow_table}\"");
    sqlx::query(sqlx::AssertSqlSafe(drop.as_str()))
        .execute(store.pool())
        .await
        .map_err(backend)?;
    let create =
        format!("CREATE TABLE {s}.\"{shadow_table}\" (LIKE {s}.\"{live_table}\" INCLUDING ALL)");
    sqlx::query(sqlx::AssertSqlSafe(create.as_str()))
        .execute(store.pool())
        .await
        .map_err(backend)?;
    let mut tx = store.pool().begin().await.map_err(backend)?;
    shadow
        .set_checkpoint(&mut tx, shadow_name, FeedCursor::START, 0)
        .await?;
    tx.commit().await.map_err(backend)?;

    let limit = batch_size(batch);
    replay(shadow, None, limit, &mut p, started, progress).await?;

    // The swap: one transaction, the live checkpoint row locked first (as runners do).
    let mut tx = store.pool().begin().await.map_err(backend)?;
    let (live_cursor, _) = lock_checkpoint_patiently(store, live, &mut tx).await?;
    // What arrived meanwhile, while the live runner waits on its row: reported to
    // `progress` once, after the swap commits.
    replay(shadow, Some(&mut tx), limit, &mut p, started, &mut |_| {
        ControlFlow::Continue(())
    })
    .await?;
    // Everything visible is in the shadow, and the live checkpoint cannot move while
    // its row is locked: the shadow's position covers it.
    let cursor = p.cursor.max(live_cursor);
    // `LIKE ... INCLUDING ALL` copies no privileges and the shadow belongs to whoever runs
    // the rebuild: give it the live table's owner and grants before it takes the live name,
    // in this transaction, so that no grant made meanwhile is lost and the application
    // role never loses its access.
    sqlx::query(sqlx::AssertSqlSafe(carry_privileges(
        &s,
        live_table,
        shadow_table,
    )))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    for swap in [
        format!("ALTER TABLE {s}.\"{live_table}\" RENAME TO \"{old_table}\""),
        format!("ALTER TABLE {s}.\"{shadow_table}\" RENAME TO \"{live_table}\""),
        format!("DROP TABLE {s}.\"{old_table}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(swap.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    live.set_checkpoint(&mut tx, name, cursor, p.handled)
        .await?;
    sqlx::query(live.sql.delete_checkpoint.clone())
        .bind(shadow_name)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    if let Some(pid) = recorded {
        record::finished(&mut tx, &live.sql, name, pid, p.scanned, p.total, None).await?;
    }
    tx.commit().await.map_err(backend)?;
    p.cursor = cursor;
    p.elapsed = started.elapsed();
    // Swapped and committed: too late to stop, so the answer does not matter.
    let _ = progress(&p);
    Ok(p)
}
