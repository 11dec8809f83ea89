//! `chronik projections status | rebuild`: the PostgreSQL projections as an operator sees
//! them, and their rebuilds.

use std::io::{self, IsTerminal as _, Write as _};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chronik_postgres::{
    HolderKind, HorizonHolder, PgEventStore, PgRunnerInstance, ProjectionError, ProjectionReport,
    RebuildOutcome, RebuildProgress, RebuildRecord, StandbyReport, how_to_end,
};
use chronik_store::EventStore as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::backend::{Interrupted, NotFound, Usage};
use crate::fmt::{count, ms, n};
use crate::interrupt::Interrupts;
use crate::table::{self, Align};
use crate::{RebuildKind, RegisteredProjection, Registry};

/// The transaction whose id is the feed horizon (the blocker), when committed events of
/// this store are invisible because of it (the rule of `projection_reports`).
pub(crate) async fn horizon_blocker(store: &PgEventStore) -> anyhow::Result<Option<HorizonHolder>> {
    let head = store
        .feed_head()
        .await
        .context("cannot read the feed head")?;
    let newest = store
        .newest_committed()
        .await
        .context("cannot read the newest committed event")?;
    if newest.is_some() && newest > head.last {
        let holders = store
            .horizon_holders()
            .await
            .context("cannot list the transactions holding the horizon")?;
        return Ok(holders.into_iter().find(|h| h.blocker));
    }
    Ok(None)
}

/// Reads every projection's report.
pub(crate) async fn reports(store: &PgEventStore) -> anyhow::Result<Vec<ProjectionReport>> {
    chronik_postgres::projection_reports(store)
        .await
        .context("cannot read the projections' status")
}

/// Every live runner that reads the feed from a hot standby, with its last measure of it.
pub(crate) async fn standby_reports(store: &PgEventStore) -> anyhow::Result<Vec<StandbyReport>> {
    chronik_postgres::standby_reports(store)
        .await
        .context("cannot read which runners read from a hot standby")
}

/// What a standby-fed runner last measured of its hot standby (`projections status`,
/// `doctor`): `orders reads 127.0.0.1:5433: 1,024 bytes of WAL behind (0.3 s), measured
/// 0.5 s ago`.
pub(crate) fn standby_line(r: &StandbyReport) -> String {
    let lag = match (r.lag_bytes, r.lag_seconds) {
        (Some(b), Some(s)) => format!("{} of WAL behind ({s:.1} s)", count(b, "byte")),
        (Some(b), None) => format!("{} of WAL behind", count(b, "byte")),
        _ => "not measured yet".to_owned(),
    };
    let paused = if r.paused { ", replay paused" } else { "" };
    let age = r
        .measured_seconds_ago
        .map_or_else(String::new, |a| format!(", measured {a:.1} s ago"));
    format!("{} reads {}: {lag}{paused}{age}", r.projection, r.standby)
}

/// A standby-fed runner's last measure of its hot standby as JSON.
pub(crate) fn standby_json(r: &StandbyReport) -> Value {
    json!({
        "projection": r.projection,
        "instance": r.instance.to_string(),
        "standby": r.standby,
        "lag_bytes": r.lag_bytes,
        "lag_seconds": r.lag_seconds,
        "paused": r.paused,
        "measured_seconds_ago": r.measured_seconds_ago,
    })
}

/// Prints the status table (or JSON) of every projection in `store`'s schema, then the
/// replication lag of the hot standbys that runners read the feed from.
pub(crate) async fn status(store: &PgEventStore, json: bool) -> anyhow::Result<()> {
    let reports = reports(store).await?;
    let blocker = horizon_blocker(store).await?;
    let standbys = standby_reports(store).await?;
    let mut out = io::stdout().lock();
    if json {
        let doc = json!({
            "schema": store.schema().as_str(),
            "projections": reports.iter().map(report_json).collect::<Vec<_>>(),
            // As in `doctor --json`: the runners reading a hot standby, with its lag.
            "standbys": standbys.iter().map(standby_json).collect::<Vec<_>>(),
            "held_back_by": blocker.as_ref().map(holder_json),
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    if reports.is_empty() {
        writeln!(
            out,
            "no projections in schema {} (none has a checkpoint or a status yet)",
            store.schema()
        )?;
    } else {
        let rows: Vec<Vec<String>> = reports.iter().map(row).collect();
        out.write_all(
            table::render(
                &[
                    ("NAME", Align::Left),
                    ("POSITION", Align::Left),
                    ("PROCESSED", Align::Right),
                    ("LAG EVENTS", Align::Right),
                    ("LAG SECONDS", Align::Right),
                    ("STATE", Align::Left),
                    ("LAST ERROR", Align::Left),
                ],
                &rows,
            )
            .as_bytes(),
        )?;
    }
    for r in &reports {
        if let Some(line) = r
            .last_rebuild
            .as_ref()
            .and_then(|b| rebuild_line(&r.name, b))
        {
            writeln!(out, "{line}")?;
        }
    }
    for r in &standbys {
        writeln!(out, "hot standby: {}", standby_line(r))?;
    }
    if let Some(h) = &blocker {
        writeln!(
            out,
            "feed horizon held back by {}: committed events stay invisible to every projection until it ends",
            table::holder(h)
        )?;
    }
    Ok(())
}

/// The line `projections status` (and `doctor`) prints about a projection's last rebuild
/// when it is worth a look: one that runs, or one that failed (until a later one succeeds).
pub(crate) fn rebuild_line(name: &str, b: &RebuildRecord) -> Option<String> {
    let how = if b.shadow { "shadow" } else { "from scratch" };
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let pid = b.pid.map_or_else(String::new, |p| format!(", pid {p}"));
    match b.outcome {
        RebuildOutcome::Running => Some(format!(
            "rebuild of {name} running since {} ({how}{pid})",
            at(b.started_at)
        )),
        RebuildOutcome::Failed => {
            let when = b.finished_at.map_or_else(
                || format!("after starting at {}", at(b.started_at)),
                |f| {
                    let took = (f - b.started_at).to_std().unwrap_or_default();
                    format!("at {} after {}", at(f), ms(took))
                },
            );
            let progress = if b.total > 0 || b.scanned > 0 {
                format!(", {} of {} events scanned", n(b.scanned), n(b.total))
            } else {
                String::new()
            };
            let why = b
                .error
                .as_deref()
                .map_or_else(|| "no reason recorded".to_owned(), table::one_line);
            Some(format!(
                "last rebuild of {name} failed {when} ({how}{pid}{progress}): {why}; \
                 its read model is the one from before that rebuild; rebuild again once the cause is fixed"
            ))
        }
        _ => None,
    }
}

/// A projection's last rebuild as JSON.
fn rebuild_json(b: &RebuildRecord) -> Value {
    json!({
        "outcome": b.outcome.as_str(),
        "shadow": b.shadow,
        "started_at": b.started_at.to_rfc3339(),
        "finished_at": b.finished_at.map(|t| t.to_rfc3339()),
        "pid": b.pid,
        "scanned": b.scanned,
        "total": b.total,
        "error": b.error,
    })
}

/// The STATE cell: the projection's state, its owner, then standbys, dead instances and a
/// lock held by something else.
pub(crate) fn state_cell(r: &ProjectionReport) -> String {
    let Some(state) = &r.state else {
        return "-".to_owned();
    };
    let mut cell = if state == "failing" {
        format!("failing (attempt {})", r.attempts)
    } else {
        state.clone()
    };
    if let Some(o) = &r.owner {
        cell.push_str(&format!(", owner {}", instance(o)));
    }
    if !r.standbys.is_empty() {
        let list: Vec<String> = r.standbys.iter().map(instance).collect();
        cell.push_str(&format!(
            ", {}: {}",
            count(r.standbys.len() as u64, "standby"),
            list.join("; ")
        ));
    }
    for d in &r.dead {
        let what = if d.owner_since.is_some() {
            "dead owner"
        } else {
            "dead standby"
        };
        cell.push_str(&format!(
            ", {what} {} (last seen {})",
            instance(d),
            d.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if let Some(pid) = r.locked_by {
        cell.push_str(&format!(
            ", lock held by pid {pid} (not a runner: a rebuild?)"
        ));
    }
    cell
}

/// `pid 123 orders-api@10.0.0.7 since 2025-01-02 10:11:12 UTC`.
fn instance(i: &PgRunnerInstance) -> String {
    let pid = i.pid.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let app = i.application_name.as_deref().filter(|a| !a.is_empty());
    let at = match (app, i.client_addr.as_deref()) {
        (Some(a), Some(h)) => format!(" {a}@{h}"),
        (Some(a), None) => format!(" {a}"),
        (None, Some(h)) => format!(" @{h}"),
        (None, None) => String::new(),
    };
    let since = i.owner_since.unwrap_or(i.started_at);
    format!(
        "pid {pid}{at} since {}",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

fn instance_json(i: &PgRunnerInstance) -> Value {
    json!({
        "instance_id": i.instance_id.to_string(),
        "state": i.state,
        "pid": i.pid,
        "application_name": i.application_name,
        "client_addr": i.client_addr,
        "started_at": i.started_at.to_rfc3339(),
        "owner_since": i.owner_since.map(|t| t.to_rfc3339()),
        "updated_at": i.updated_at.to_rfc3339(),
    })
}

fn row(r: &ProjectionReport) -> Vec<String> {
    let state = state_cell(r);
    let error = match (&r.last_error, r.last_error_at) {
        (None, _) => "-".to_owned(),
        (Some(e), Some(at)) => format!(
            "{} ({})",
            table::one_line(e),
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        (Some(e), None) => table::one_line(e),
    };
    vec![
        r.name.clone(),
        r.checkpoint
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        n(r.events_processed),
        n(r.lag_events),
        format!("{:.1}", r.lag_seconds),
        state,
        error,
    ]
}

/// One projection's report as JSON (`projections status --json`, `doctor --json`).
pub(crate) fn report_json(r: &ProjectionReport) -> Value {
    json!({
        "name": r.name,
        "position": r.checkpoint.map(|c| c.to_string()),
        "events_processed": r.events_processed,
        "lag_events": r.lag_events,
        "lag_seconds": r.lag_seconds,
        "state": r.state,
        "owner": r.owner.as_ref().map(instance_json),
        "standbys": r.standbys.iter().map(instance_json).collect::<Vec<_>>(),
        "dead": r.dead.iter().map(instance_json).collect::<Vec<_>>(),
        "locked_by": r.locked_by,
        "last_error": r.last_error,
        "last_error_at": r.last_error_at.map(|t| t.to_rfc3339()),
        "failing_event": r.failing_event.map(|e| e.to_string()),
        "attempts": r.attempts,
        "last_rebuild": r.last_rebuild.as_ref().map(rebuild_json),
        // A partition of a partitioned projection (`<name>#<index>/<count>`), else null.
        "partition": chronik_projections::parse_partition(&r.name).map(|(of, index, count)| json!({
            "projection": of,
            "index": index,
            "count": count.get(),
        })),
    })
}

/// A transaction holding the horizon as JSON, with the statement that ends it.
pub(crate) fn holder_json(h: &HorizonHolder) -> Value {
    json!({
        "kind": if h.kind == HolderKind::Prepared { "prepared" } else { "session" },
        "pid": h.pid,
        "database": h.database,
        "xid": h.xid,
        "blocker": h.blocker,
        "age_seconds": h.age_seconds,
        "detail": h.detail,
        "user": h.user,
        "application_name": h.application_name,
        "client_addr": h.client_addr,
        "gid": h.gid,
        "how_to_end": h.how_to_end(),
    })
}

/// Rebuilds the registered `projection` from scratch or, with `shadow`, into a shadow
/// table swapped in at the end; progress on stderr, a summary on stdout.
pub(crate) async fn rebuild(
    registry: &Registry,
    store: &PgEventStore,
    projection: &RegisteredProjection,
    kind: RebuildKind,
    batch: usize,
    json: bool,
) -> anyhow::Result<()> {
    let shadow = kind == RebuildKind::Shadow;
    let name = projection.name.as_str();
    let table = projection.table.as_str();
    let bin = registry.binary.as_str();
    let how = if shadow {
        format!(
            "into {table}__shadow, swapped in at the end (the live table {table} keeps serving meanwhile)"
        )
    } else {
        format!("from scratch, in one transaction (readers see the old {table} until it commits)")
    };
    let mut bar = Progress::new(
        name,
        format!(
            "rebuilding projection {name} in schema {} {how}",
            store.schema()
        ),
    );
    // Ctrl-C asks the rebuild to stop at its next batch boundary, where it cleans up; a
    // second one quits at once.
    let stop = Arc::new(AtomicBool::new(false));
    // Listening from here on (not from the task's first poll): a Ctrl-C after the first
    // progress line is always seen.
    let mut interrupts = Interrupts::listen().context("cannot listen for Ctrl-C")?;
    let signals = tokio::spawn({
        let stop = Arc::clone(&stop);
        let name = name.to_owned();
        async move {
            if !interrupts.next().await {
                return;
            }
            stop.store(true, Ordering::SeqCst);
            let _ = writeln!(
                io::stderr(),
                "interrupted: stopping the rebuild of {name} at the next batch boundary and cleaning up (Ctrl-C again quits at once)"
            );
            if interrupts.next().await {
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        }
    });
    let last = std::sync::Mutex::new(None::<RebuildProgress>);
    let mut report = |p: &RebuildProgress| {
        bar.update(p);
        if let Ok(mut l) = last.lock() {
            *l = Some(*p);
        }
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let result =
        (projection.rebuild)(store, registry.upcasters.clone(), kind, batch, &mut report).await;
    signals.abort();
    let done = match result {
        Ok(done) => done,
        Err(ProjectionError::Interrupted { scanned, .. }) => {
            bar.abandon("was stopped");
            let total = last
                .lock()
                .ok()
                .and_then(|l| l.map(|p| p.total.max(p.scanned)))
                .unwrap_or(scanned);
            let state = if shadow {
                format!(
                    "the live table {table} kept serving and is unchanged; the shadow table \
                     {table}__shadow and the checkpoint {name}__shadow were dropped; run \
                     `{bin} projections rebuild {name} --shadow` again to start over"
                )
            } else {
                format!(
                    "its transaction was rolled back, so {table} and the checkpoint of {name} \
                     are as they were before the rebuild; restart its runners, or run \
                     `{bin} projections rebuild {name}` again to start over"
                )
            };
            return Err(Interrupted(format!(
                "the rebuild of projection {name} was interrupted after {} of {} events: {state}",
                n(scanned),
                n(total)
            ))
            .into());
        }
        Err(e) => {
            bar.abandon("failed");
            // Refused before it began (another rebuild, a runner): it made no shadow.
            let state = if shadow && !matches!(e, ProjectionError::Busy { .. }) {
                shadow_left(store, bin, name, table).await
            } else {
                format!("nothing was changed: {table} is as it was")
            };
            let hint = match &e {
                // Not the event's fault: parking it would leave it out of the read model.
                ProjectionError::Handler { source, .. }
                    if chronik_postgres::lost_connection(source) =>
                {
                    "; the connection to the server was lost (it stopped or restarted, or the \
                     session was ended): nothing is wrong with the event; run the rebuild again \
                     once the server is back"
                        .to_owned()
                }
                ProjectionError::Handler { event, .. } => format!(
                    "; if the event can never be applied, park it (the runner and rebuilds then pass over it): \
                     `{bin} projections park {name} {} --reason TEXT`",
                    event.event_id
                ),
                ProjectionError::Busy { .. } => format!(
                    "; {}",
                    holder_hint(store, name, e.holder_pid(), how_to_end(&e)).await
                ),
                _ => String::new(),
            };
            return Err(anyhow::Error::new(e).context(format!(
                "rebuilding projection {name} failed ({state}{hint})"
            )));
        }
    };
    bar.finish(&done);
    let rows = store
        .count_rows(table)
        .await
        .with_context(|| format!("cannot count the rows of {table}"))?;
    if json {
        let doc = json!({
            "projection": name,
            "schema": store.schema().as_str(),
            "table": table,
            "shadow": shadow,
            "scanned": done.scanned,
            "handled": done.handled,
            "elapsed_seconds": done.elapsed.as_secs_f64(),
            "checkpoint": done.cursor.to_string(),
            "rows": rows,
        });
        writeln!(io::stdout(), "{doc}")?;
        return Ok(());
    }
    let how = if shadow {
        format!("into {table}__shadow, swapped in atomically")
    } else {
        "from scratch".to_owned()
    };
    writeln!(
        io::stdout(),
        "rebuilt projection {name} in schema {} {how}: {} events scanned, {} handled, in {} ({} events/s); \
         checkpoint {}; {table} now holds {}",
        store.schema(),
        n(done.scanned),
        n(done.handled),
        ms(done.elapsed),
        n(rate(&done)),
        done.cursor,
        count(rows, "row"),
    )?;
    Ok(())
}

/// What a failed shadow rebuild of `name` left, as the schema shows it now: the library
/// drops the shadow table and checkpoint on every error, but that can fail too (the server
/// went away, the session was ended), and then they stay until removed.
async fn shadow_left(store: &PgEventStore, bin: &str, name: &str, table: &str) -> String {
    let shadow_table = format!("{table}__shadow");
    let shadow_name = format!("{name}__shadow");
    let remove = format!("`{bin} projections forget {shadow_name}` removes them");
    match chronik_postgres::shadow_leftovers(store, &[(name, table)]).await {
        Ok(found) => {
            let mine = found.iter().find(|l| l.projection == name);
            let mut left = Vec::new();
            if mine.is_some_and(|l| l.table.is_some()) {
                left.push(format!("the shadow table {shadow_table}"));
            }
            if mine.is_some_and(|l| l.checkpoint.is_some()) {
                left.push(format!("the checkpoint {shadow_name}"));
            }
            if left.is_empty() {
                format!(
                    "the live table {table} is unchanged and nothing of the rebuild is left: no \
                     shadow table {shadow_table}, no checkpoint {shadow_name}"
                )
            } else {
                format!(
                    "the live table {table} is unchanged; {} could not be dropped and {} left \
                     over: {remove} (the next shadow rebuild drops them too)",
                    left.join(" and "),
                    if left.len() == 1 { "is" } else { "are" }
                )
            }
        }
        Err(why) => format!(
            "the live table {table} is unchanged, unless the swap committed just before the \
             connection was lost (`{bin} projections status` shows its checkpoint); whether the \
             shadow table {shadow_table} and the checkpoint {shadow_name} were dropped is not \
             known, the server cannot be asked ({}): once it is back, `{bin} doctor` lists what is \
             left and {remove}",
            crate::chain(&anyhow::Error::new(why))
        ),
    }
}

/// Forgets projection `name` (checkpoint and runner rows; a partitioned projection's
/// partitions too), refusing while it runs; for `NAME__shadow`, what a shadow rebuild
/// left behind, its table included.
pub(crate) async fn forget(
    registry: &Registry,
    store: &PgEventStore,
    name: &str,
) -> anyhow::Result<()> {
    let bin = registry.binary.as_str();
    chronik_store::validate_projection_name(name).map_err(|e| Usage(crate::request_message(&e)))?;
    if let Some(base) = name.strip_suffix("__shadow") {
        return forget_shadow(registry, store, base).await;
    }
    let reports = reports(store).await?;
    // Its own report, and one per partition when it runs as partitions.
    let family: Vec<&ProjectionReport> = reports
        .iter()
        .filter(|r| {
            r.name == name
                || chronik_projections::parse_partition(&r.name).is_some_and(|(p, _, _)| p == name)
        })
        .collect();
    if family.is_empty() {
        let known = crate::parked::known_projections(registry, store).await?;
        if known.iter().any(|k| k == name) {
            return Err(NotFound(format!(
                "projection {name} has nothing to forget in schema {}: it is registered \
                 but has no checkpoint and no runner there",
                store.schema()
            ))
            .into());
        }
        return Err(crate::parked::unknown_projection(
            store,
            name,
            &known,
            "nothing was forgotten",
        )
        .into());
    }
    let running = |who: String| {
        anyhow::anyhow!(
            "projection {name} is running ({who}): stop its runners first; `{bin} projections status` shows them"
        )
    };
    for report in &family {
        let of = if report.name == name {
            String::new()
        } else {
            format!(" of partition {}", report.name)
        };
        if let Some(owner) = &report.owner {
            return Err(running(format!("owner{of} {}", instance(owner))));
        }
        if let Some(pid) = report.locked_by {
            return Err(running(format!(
                "the lock{of} is held by pid {pid}, a rebuild or a runner starting"
            )));
        }
    }
    match chronik_postgres::forget_projection(store, name).await {
        Ok(gone) => {
            let mut what = Vec::new();
            if let Some(c) = gone.checkpoint {
                what.push(format!("its checkpoint at {c}"));
            }
            if !gone.partitions.is_empty() {
                let each: Vec<String> = gone
                    .partitions
                    .iter()
                    .map(|(p, c)| format!("{p} at {c}"))
                    .collect();
                what.push(format!(
                    "the checkpoints of its {} partitions ({})",
                    gone.partitions.len(),
                    each.join(", ")
                ));
            }
            if what.is_empty() {
                what.push("no checkpoint".to_owned());
            }
            writeln!(
                io::stdout(),
                "forgot projection {name} in schema {}: {} and {} deleted; its read model's tables and park decisions are kept",
                store.schema(),
                what.join(", "),
                count(gone.runner_rows, "runner row"),
            )?;
            Ok(())
        }
        Err(e @ ProjectionError::Busy { .. }) => {
            let hint = holder_hint(store, name, e.holder_pid(), how_to_end(&e)).await;
            Err(running(format!(
                "its lock was taken meanwhile: {e}; {hint}"
            )))
        }
        Err(ProjectionError::Store(chronik_store::StoreError::NotFound(m))) => {
            Err(NotFound(m).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot forget projection {name}"))),
    }
}

/// `projections forget NAME__shadow`: the checkpoint and (for a registered projection) the
/// shadow table a killed shadow rebuild of `base` left, refused while one runs.
async fn forget_shadow(
    registry: &Registry,
    store: &PgEventStore,
    base: &str,
) -> anyhow::Result<()> {
    let bin = registry.binary.as_str();
    let table = registry
        .projections
        .iter()
        .find(|p| p.name == base)
        .map(|p| p.table.as_str());
    match chronik_postgres::discard_shadow(store, base, table).await {
        Ok(gone) => {
            let mut what = Vec::new();
            if let Some(c) = gone.checkpoint {
                what.push(format!("the checkpoint {base}__shadow at {c} deleted"));
            }
            if let Some(t) = &gone.table {
                what.push(format!("the table {t} dropped"));
            }
            writeln!(
                io::stdout(),
                "forgot what a shadow rebuild of {base} left in schema {}: {}; the live read model is untouched",
                store.schema(),
                what.join(", ")
            )?;
            Ok(())
        }
        Err(e @ ProjectionError::Busy { .. }) => Err(anyhow::anyhow!(
            "a shadow rebuild of {base} is running ({e}): these are its own; wait for it, or stop it \
             where it runs (Ctrl-C cleans up); `{bin} projections status` shows it"
        )),
        Err(ProjectionError::Store(chronik_store::StoreError::NotFound(m))) => {
            Err(NotFound(m).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot forget what a shadow rebuild of {base} left"
        ))),
    }
}

/// Who holds projection `name`'s lock (session `pid`) and how to end it: its runner (stop
/// that process: a runner whose session is ended takes the lock again once it is free), or
/// another session, a rebuild or a `forget` (wait for it, or stop it where it runs).
async fn holder_hint(
    store: &PgEventStore,
    name: &str,
    pid: Option<i32>,
    how_to_end: Option<String>,
) -> String {
    let Some(pid) = pid else {
        return "the session that held it has let it go: run the command again".to_owned();
    };
    let report = chronik_postgres::projection_reports(store)
        .await
        .ok()
        .and_then(|reports| reports.into_iter().find(|r| r.name == name));
    let end = how_to_end.unwrap_or_default();
    // A rebuild records itself with its lock session's pid: name it for what it is.
    if let Some(rebuild) = report
        .as_ref()
        .and_then(|r| r.last_rebuild.as_ref())
        .filter(|r| r.outcome == chronik_postgres::RebuildOutcome::Running && r.pid == Some(pid))
    {
        let kind = if rebuild.shadow {
            "a shadow rebuild"
        } else {
            "a rebuild from scratch"
        };
        return format!(
            "{kind} of {name} is running (pid {pid}, since {}): two rebuilds of one projection \
             never run at once; wait for it to finish, or stop it where it runs (Ctrl-C stops \
             a rebuild cleanly); if that process is gone and its session stays, `{end}` ends the session",
            rebuild.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    let owner = report.and_then(|r| r.owner).filter(|o| o.pid == Some(pid));
    match owner {
        Some(o) => format!(
            "the lock is held by its runner, {}: stop that process, or wait for it to stop \
             (`{end}` ends its session, but a runner takes the lock again as soon as it is free)",
            instance(&o)
        ),
        None => format!(
            "the lock is held by pid {pid}, not one of its runners (a rebuild, or a runner that is starting): \
             wait for it, or stop it where it runs (Ctrl-C stops a rebuild cleanly); \
             if that process is gone and its session stays, `{end}` ends the session"
        ),
    }
}

/// Whole events per second, for display.
fn rate(p: &RebuildProgress) -> u64 {
    // Rounded for display; a rate is never negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let r = p.rate().round() as u64;
    r
}

/// `rate, ETA` of a progress report: the ETA is the events left at the rate so far.
fn speed(p: &RebuildProgress) -> String {
    match p.eta() {
        Some(d) => format!(
            "{} events/s, ETA {}",
            n(rate(p)),
            table::age(d.as_secs_f64())
        ),
        None => "ETA once the first batch is in".to_owned(),
    }
}

/// Rebuild progress on stderr: a first line saying what starts (how, where, how many
/// events), then a bar on a terminal, otherwise a line at most every second, and a last
/// line saying how it ended and how long it took; logs stay readable.
struct Progress {
    name: String,
    /// The first line, without the count of events (known at the first report).
    first: String,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    /// The last report, for the last line of a rebuild that fails.
    last: Option<RebuildProgress>,
    started: Instant,
}

impl Progress {
    fn new(name: &str, first: String) -> Self {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:32}] {human_pos}/{human_len} events, {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "));
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar.set_prefix(format!("rebuilding {name}"));
            bar
        });
        Self {
            name: name.to_owned(),
            first,
            bar,
            last_line: None,
            last: None,
            started: Instant::now(),
        }
    }

    /// A whole line on stderr, above the bar when there is one. Best effort: a closed
    /// stderr must not stop the rebuild.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => {
                let _ = writeln!(io::stderr(), "{line}");
            }
        }
    }

    fn update(&mut self, p: &RebuildProgress) {
        let first = self.last.is_none();
        self.last = Some(*p);
        if first {
            self.say(&format!(
                "{}: {} to scan; Ctrl-C stops it cleanly",
                self.first,
                count(p.total, "event")
            ));
            self.last_line = Some(Instant::now());
        }
        if let Some(bar) = &self.bar {
            bar.set_length(p.total.max(p.scanned));
            bar.set_position(p.scanned);
            bar.set_message(speed(p));
        } else if self
            .last_line
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.line(p);
            self.last_line = Some(Instant::now());
        }
    }

    /// The last line of a rebuild that finished: what it did and how long it took.
    fn finish(&mut self, p: &RebuildProgress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.total.max(p.scanned));
            bar.set_position(p.scanned);
            bar.finish_and_clear();
        }
        // The bar is done: a plain line (a finished bar prints nothing above itself).
        let _ = writeln!(
            io::stderr(),
            "rebuilt {}: {} scanned, {} handled, in {} ({} events/s)",
            self.name,
            count(p.scanned, "event"),
            n(p.handled),
            ms(p.elapsed),
            n(rate(p)),
        );
    }

    /// Leaves the bar where it stopped and, when it had started, says so with how long it
    /// ran (`how`: `failed`, `was stopped`); the error follows.
    fn abandon(&mut self, how: &str) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
        // Refused before it started (its lock is taken): the error says it all.
        let Some(p) = self.last else {
            return;
        };
        let at = format!(
            " at {} of {} events",
            n(p.scanned),
            n(p.total.max(p.scanned))
        );
        let _ = writeln!(
            io::stderr(),
            "the rebuild of {} {how} after {}{at}",
            self.name,
            ms(self.started.elapsed())
        );
    }

    fn line(&self, p: &RebuildProgress) {
        let total = p.total.max(p.scanned);
        // Whole percent for display.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let percent = if total == 0 {
            100
        } else {
            (p.scanned as f64 * 100.0 / total as f64) as u64
        };
        // Progress is best effort: a closed stderr must not stop the rebuild.
        let _ = writeln!(
            io::stderr(),
            "rebuilding {}: {}/{} events ({percent}%), {}",
            self.name,
            n(p.scanned),
            n(total),
            speed(p)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_core::FeedCursor;

    #[test]
    fn the_eta_is_the_events_left_at_the_rate_so_far() {
        let p = RebuildProgress {
            scanned: 500,
            total: 2_000,
            handled: 400,
            cursor: FeedCursor::START,
            elapsed: Duration::from_secs(5),
        };
        assert_eq!(speed(&p), "100 events/s, ETA 15.0 s");
        let later = RebuildProgress {
            scanned: 1_900,
            elapsed: Duration::from_secs(95),
            ..p
        };
        assert_eq!(speed(&later), "20 events/s, ETA 5.0 s");
        let start = RebuildProgress {
            scanned: 0,
            elapsed: Duration::ZERO,
            ..p
        };
        assert_eq!(speed(&start), "ETA once the first batch is in");
    }
}
