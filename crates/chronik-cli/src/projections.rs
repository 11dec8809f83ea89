//! `chronik projections status`: the PostgreSQL projections as an operator sees them.

use std::io::{self, Write as _};

use anyhow::Context as _;
use chronik_postgres::{HolderKind, HorizonHolder, PgEventStore, ProjectionReport};
use chronik_store::EventStore as _;
use serde_json::{Value, json};

use crate::demo::n;
use crate::table::{self, Align};

/// The oldest transaction holding the feed horizon back, when committed events of this
/// store are invisible because of it (the rule of `projection_reports`).
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
        return Ok(holders.into_iter().next());
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

fn row(r: &ProjectionReport) -> Vec<String> {
    let state = match (&r.state, r.owner_pid) {
        (None, _) => "-".to_owned(),
        (Some(s), _) if s == "failing" => format!("failing (attempt {})", r.attempts),
        (Some(s), Some(pid)) => format!("{s} (pid {pid})"),
        (Some(s), None) => s.clone(),
    };
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

fn report_json(r: &ProjectionReport) -> Value {
    json!({
        "name": r.name,
        "position": r.checkpoint.map(|c| c.to_string()),
        "events_processed": r.events_processed,
        "lag_events": r.lag_events,
        "lag_seconds": r.lag_seconds,
        "state": r.state,
        "owner_pid": r.owner_pid,
        "last_error": r.last_error,
        "last_error_at": r.last_error_at.map(|t| t.to_rfc3339()),
        "failing_event": r.failing_event.map(|e| e.to_string()),
        "attempts": r.attempts,
    })
}

pub(crate) fn holder_json(h: &HorizonHolder) -> Value {
    json!({
        "kind": if h.kind == HolderKind::Prepared { "prepared" } else { "session" },
        "pid": h.pid,
        "database": h.database,
        "xid": h.xid,
        "age_seconds": h.age_seconds,
        "detail": h.detail,
    })
}
