//! `chronik projections status | rebuild`: the PostgreSQL projections as an operator sees
//! them, and their rebuilds.

use std::io::{self, IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chronik_postgres::{
    HolderKind, HorizonHolder, PgEventStore, PgRebuildProgress, PgRunnerInstance, ProjectionReport,
};
use chronik_store::EventStore as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::fmt::{count, ms, n};
use crate::table::{self, Align};
use crate::{RegisteredProjection, Registry};

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

/// Prints the status table (or JSON) of every projection in `store`'s schema.
pub(crate) async fn status(store: &PgEventStore, json: bool) -> anyhow::Result<()> {
    let reports = reports(store).await?;
    let blocker = horizon_blocker(store).await?;
    let mut out = io::stdout().lock();
    if json {
        let doc = json!({
            "schema": store.schema().as_str(),
            "projections": reports.iter().map(report_json).collect::<Vec<_>>(),
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
    if let Some(h) = &blocker {
        writeln!(
            out,
            "feed horizon held back by {}: committed events stay invisible to every projection until it ends",
            table::holder(h)
        )?;
    }
    Ok(())
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
    shadow: bool,
    batch: usize,
    json: bool,
) -> anyhow::Result<()> {
    let name = projection.name.as_str();
    let table = projection.table.as_str();
    let mut bar = Progress::new(name);
    let mut report = |p: &PgRebuildProgress| bar.update(p);
    let done = (projection.rebuild)(
        store,
        registry.upcasters.clone(),
        shadow,
        batch,
        &mut report,
    )
    .await
    .with_context(|| format!("rebuilding projection {name} failed"))?;
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

/// Whole events per second, for display.
fn rate(p: &PgRebuildProgress) -> u64 {
    // Rounded for display; a rate is never negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let r = p.rate().round() as u64;
    r
}

/// `rate, ETA` of a progress report.
fn speed(p: &PgRebuildProgress) -> String {
    let eta = p
        .eta()
        .map_or_else(|| "?".to_owned(), |d| table::age(d.as_secs_f64()));
    format!("{} events/s, ETA {eta}", n(rate(p)))
}

/// Rebuild progress on stderr: a bar on a terminal, otherwise a line at most every second
/// (and the last one), so that logs stay readable.
struct Progress {
    name: String,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Progress {
    fn new(name: &str) -> Self {
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
            bar,
            last_line: None,
        }
    }

    fn update(&mut self, p: &PgRebuildProgress) {
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

    fn finish(&mut self, p: &PgRebuildProgress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.total.max(p.scanned));
            bar.set_position(p.scanned);
            bar.set_message(speed(p));
            bar.finish();
        } else {
            self.line(p);
        }
    }

    fn line(&self, p: &PgRebuildProgress) {
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
