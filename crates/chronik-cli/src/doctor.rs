//! `chronik doctor`: is this PostgreSQL store healthy? Migrations, the connected role,
//! horizon blockers, projection lag. Exit status 0 when healthy (warnings included), 1
//! with the list of problems otherwise; `--json` prints the same report as one object.

use std::io::{self, Write as _};

use anyhow::Context as _;
use chronik_postgres::{HolderKind, HorizonHolder, MigrationStatus, PgEventStore};
use serde_json::{Value, json};

use crate::backend;
use crate::fmt::{count, n};
use crate::projections;
use crate::table;

/// Thresholds beyond which something is a problem rather than normal activity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A transaction (session or prepared) holding the horizon longer than this, in seconds.
    pub(crate) max_horizon_age: u64,
    /// A projection whose oldest unprocessed event is older than this, in seconds.
    pub(crate) max_lag: u64,
}

/// Prints the report (as text, or as one JSON object); fails with the list of problems
/// when there are any.
pub(crate) async fn run(
    store: &PgEventStore,
    binary: &str,
    server: &str,
    limits: Limits,
    tables: &[(&str, &str)],
    json: bool,
) -> anyhow::Result<()> {
    // The text report, printed at the end unless `json`.
    let mut out: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let schema = store.schema();
    out.push(format!("{binary} doctor: {server}, schema {schema}"));

    // Migrations: applied in the schema vs embedded in this binary.
    let migrations = store
        .migration_status()
        .await
        .context("cannot read the schema's migrations")?;
    let embedded = MigrationStatus::embedded();
    let applied = migrations.applied_count();
    let names: Vec<String> = embedded
        .iter()
        .map(|(v, d)| format!("{v:04} {d}"))
        .collect();
    out.push(format!(
        "  migrations   {applied} of {} applied ({})",
        embedded.len(),
        names.join(", ")
    ));
    let migration_problems = backend::migration_problems(&migrations, binary);
    problems.extend(migration_problems.iter().cloned());
    let migrated = applied == embedded.len();

    // The role: an application connected as a superuser or as the owner can rewrite history.
    let role = store
        .connected_role()
        .await
        .context("cannot read the connected role")?;
    let (what, risk) = if role.superuser {
        (
            "a superuser",
            "it can bypass the immutability triggers (SET session_replication_role = replica) \
             and rewrite or delete events",
        )
    } else if role.owner {
        (
            "the owner of the schema",
            "it can disable the immutability trigger (ALTER TABLE events DISABLE TRIGGER) \
             and rewrite or delete events",
        )
    } else {
        ("neither a superuser nor the owner of the schema", "")
    };
    out.push(format!("  role         connected as {}, {what}", role.name));
    if !risk.is_empty() {
        warnings.push(format!(
            "connected as {}, {what}: if the application connects like this, {risk}; \
             connect it as a role with only the application privileges: create one and run \
             `{binary} roles grant APP_ROLE --schema {schema}` as the schema owner",
            role.name
        ));
    }

    // Horizon: every open write or prepared transaction in the cluster, by transaction id;
    // the first is the blocker.
    let holders = store
        .horizon_holders()
        .await
        .context("cannot list the transactions holding the horizon")?;
    // A holder whose age this role cannot see counts as old: it may be hours.
    let is_old = |h: &HorizonHolder| {
        h.age_seconds
            .is_none_or(|a| a >= limit(limits.max_horizon_age))
    };
    let old = holders.iter().filter(|h| is_old(h)).count();
    out.push(format!(
        "  horizon      {} open in the cluster, {} older than {} s{}",
        count(holders.len() as u64, "write transaction"),
        n(old as u64),
        n(limits.max_horizon_age),
        if holders.is_empty() {
            ": nothing holds the feed back"
        } else {
            ""
        }
    ));
    for h in &holders {
        let role = if h.blocker { "blocker" } else { "behind it" };
        out.push(format!("               {role}: {}", table::holder(h)));
    }
    for h in holders.iter().filter(|h| is_old(h)) {
        problems.push(holder_problem(h, &role.name));
    }

    // Projections: only once the tables exist.
    let mut reports = Vec::new();
    let mut held_back_by = None;
    let mut shadows = Vec::new();
    let mut standbys = Vec::new();
    if migrated {
        held_back_by = projections::horizon_blocker(store).await?;
        if let Some(h) = &held_back_by {
            out.push(format!(
                "               committed events of schema {schema} are invisible until {} ends",
                table::holder_short(h)
            ));
            // An old one is a problem above; a young one still pauses every projection
            // now, which "healthy" alone would hide.
            if !is_old(h) {
                warnings.push(young_blocker_warning(h, &schema.to_string(), &limits));
            }
        }
        reports = projections::reports(store).await?;
        // A shadow rebuild's checkpoint is not a projection: it is reported below.
        reports.retain(|r| !r.name.ends_with("__shadow"));
        shadows = chronik_postgres::shadow_leftovers(store, tables)
            .await
            .context("cannot look for what shadow rebuilds left behind")?;
        let behind = reports.iter().filter(|r| r.lag_events > 0).count();
        out.push(format!(
            "  projections  {}, {} caught up, {} behind",
            count(reports.len() as u64, "projection"),
            n((reports.len() - behind) as u64),
            n(behind as u64),
        ));
        for r in &reports {
            let state = r.state.as_deref().unwrap_or("no runner yet");
            out.push(format!(
                "               {}: {state}, {} behind ({:.1} s)",
                r.name,
                count(r.lag_events, "event"),
                r.lag_seconds
            ));
            if let Some(b) = &r.last_rebuild
                && b.outcome == chronik_postgres::RebuildOutcome::Failed
                && let Some(line) = projections::rebuild_line(&r.name, b)
            {
                warnings.push(line);
            }
            if r.state.as_deref() == Some("dead") {
                problems.push(format!(
                    "projection {} has no live runner: {}; start one",
                    r.name,
                    projections::state_cell(r)
                ));
            }
            if r.state.as_deref() == Some("failing") {
                let event = r
                    .failing_event
                    .map_or_else(String::new, |e| format!(" on event {e}"));
                problems.push(format!(
                    "projection {} is failing{event} (attempt {}): {}",
                    r.name,
                    r.attempts,
                    r.last_error
                        .as_deref()
                        .map_or_else(|| "no error recorded".to_owned(), table::one_line)
                ));
            }
            if r.lag_events > 0 && r.lag_seconds >= limit(limits.max_lag) {
                problems.push(format!(
                    "projection {} is {} behind, the oldest {} old (state: {state})",
                    r.name,
                    count(r.lag_events, "event"),
                    table::age(r.lag_seconds)
                ));
            }
        }
        for sh in &shadows {
            let what = shadow_parts(sh);
            match sh.rebuilding {
                Some(pid) => out.push(format!(
                    "               shadow rebuild of {} running (pid {pid}): {what}",
                    sh.projection
                )),
                None => problems.push(format!(
                    "a shadow rebuild of {p} did not finish and left {what} behind: re-run \
                     `{binary} projections rebuild {p} --shadow` (it starts by dropping them) or remove \
                     them with `{binary} projections forget {p}__shadow`",
                    p = sh.projection
                )),
            }
        }
        standbys = projections::standby_reports(store).await?;
        standby_lines(&standbys, limits, &mut out, &mut problems, &mut warnings);
    } else {
        out.push("  projections  not checked: the schema is not migrated".to_owned());
    }

    let mut stdout = io::stdout().lock();
    if json {
        let doc = json!({
            "healthy": problems.is_empty(),
            "server": server,
            "schema": schema.as_str(),
            "problems": problems,
            "warnings": warnings,
            "migrations": {
                "applied": applied,
                "embedded": names,
                "current": migrated,
                "problems": migration_problems,
            },
            "role": {
                "name": role.name,
                "superuser": role.superuser,
                "owner": role.owner,
            },
            "horizon": {
                "max_age_seconds": limits.max_horizon_age,
                "holders": holders.iter().map(|h| {
                    let mut v = projections::holder_json(h);
                    v["old"] = Value::Bool(is_old(h));
                    v
                }).collect::<Vec<_>>(),
                "holds_back_this_schema": held_back_by.as_ref().map(projections::holder_json),
            },
            "projections": if migrated {
                Value::Array(reports.iter().map(projections::report_json).collect())
            } else {
                Value::Null
            },
            "standbys": standbys.iter().map(projections::standby_json).collect::<Vec<_>>(),
            "shadows": shadows.iter().map(|sh| json!({
                "projection": sh.projection,
                "checkpoint": sh.checkpoint.map(|c| c.to_string()),
                "table": sh.table,
                "rebuilding_pid": sh.rebuilding,
            })).collect::<Vec<_>>(),
        });
        writeln!(stdout, "{doc}")?;
    } else {
        for line in &out {
            writeln!(stdout, "{line}")?;
        }
        if !warnings.is_empty() {
            writeln!(stdout, "{}:", count(warnings.len() as u64, "warning"))?;
            for w in &warnings {
                writeln!(stdout, "  - {w}")?;
            }
        }
        if problems.is_empty() {
            writeln!(stdout, "healthy")?;
        } else {
            writeln!(stdout, "{}:", count(problems.len() as u64, "problem"))?;
            for p in &problems {
                writeln!(stdout, "  - {p}")?;
            }
        }
    }
    stdout.flush()?;
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} found: {}",
        count(problems.len() as u64, "problem"),
        problems.join("; ")
    )
}

/// The warning a horizon blocker younger than `--max-horizon-age` is while committed
/// events of `schema` wait behind it: not yet a problem (a short write transaction holds
/// the feed back for a moment), but it pauses every projection while it lasts.
fn young_blocker_warning(h: &HorizonHolder, schema: &str, limits: &Limits) -> String {
    let age = h.age_seconds.map_or_else(|| "?".to_owned(), table::age);
    format!(
        "committed events of schema {schema} are held back by {}, open {age}: every projection \
         waits for it; it counts as a problem once it is older than {} s (--max-horizon-age); \
         if it does not end soon, `{}` ends it",
        table::holder_short(h),
        n(limits.max_horizon_age),
        h.how_to_end()
    )
}

/// The problem a horizon holder older than the limit (or of unknown age) is: what it is,
/// what it does to the feed, what reveals its age when it is hidden from `connected` (the
/// role doctor runs as), and how to end it.
fn holder_problem(h: &HorizonHolder, connected: &str) -> String {
    let what = if h.kind == HolderKind::Prepared {
        "a prepared transaction"
    } else {
        "a transaction"
    };
    let effect = if h.blocker {
        "every projection waits for it"
    } else {
        "it holds the feed back next, once the older ones end"
    };
    let age = if h.age_seconds.is_none() {
        // PostgreSQL shows a session's start times only to members of its role and of
        // pg_read_all_stats.
        let own = h.user.as_deref().unwrap_or("?");
        // Shown to an operator, never executed (so not built with `format!`, which the
        // SQL tidy check reserves for statements).
        let mut hint = String::from(" (its age is hidden from role ");
        hint.push_str(connected);
        hint.push_str(
            ", so it counts as old: PostgreSQL shows it only to members of pg_read_all_stats \
             and of the holder's role ",
        );
        hint.push_str(own);
        hint.push_str("; to see it, run doctor as one or `GRANT pg_read_all_stats TO ");
        hint.push_str(connected);
        hint.push_str("`)");
        hint
    } else {
        String::new()
    };
    let idle = if h.kind == HolderKind::Session && h.detail.starts_with("idle in transaction") {
        "; a session left idle in a transaction: idle_in_transaction_session_timeout \
         ends such sessions automatically"
    } else {
        ""
    };
    format!(
        "{what} holds the feed horizon back: {}{age}; {effect}; end it with `{}`{idle}",
        table::holder_short(h),
        h.how_to_end()
    )
}

/// Measures older than this are stale: the runner measures every `lag_every` (1 s).
const STALE_MEASURE: f64 = 60.0;

/// The runners that read the feed from a hot standby: the standby's replication lag as
/// each last measured it. A paused standby or one further behind than `max_lag` is a
/// problem (its runners wait for it); a stale measure is a warning.
fn standby_lines(
    reports: &[chronik_postgres::StandbyReport],
    limits: Limits,
    out: &mut Vec<String>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    if reports.is_empty() {
        return;
    }
    out.push(format!(
        "  standbys     {} reading the feed from a hot standby",
        count(reports.len() as u64, "runner")
    ));
    for r in reports {
        out.push(format!("               {}", projections::standby_line(r)));
        if r.paused {
            problems.push(format!(
                "the hot standby {} that projection {} reads is paused \
                 (pg_wal_replay_pause()): the projection waits until \
                 pg_wal_replay_resume() runs on the standby",
                r.standby, r.projection
            ));
        } else if r.lag_seconds.is_some_and(|s| s >= limit(limits.max_lag)) {
            problems.push(format!(
                "the hot standby {} that projection {} reads is {} behind its primary: \
                 the projection trails by as much; check the standby's replication \
                 (pg_stat_wal_receiver there, pg_stat_replication on the primary)",
                r.standby,
                r.projection,
                table::age(r.lag_seconds.unwrap_or_default())
            ));
        }
        if r.measured_seconds_ago.is_some_and(|a| a >= STALE_MEASURE) {
            warnings.push(format!(
                "projection {} last measured its standby {} {} ago: the runner cannot \
                 reach it, or is stuck (see its state above)",
                r.projection,
                r.standby,
                table::age(r.measured_seconds_ago.unwrap_or_default())
            ));
        }
    }
}

/// `the checkpoint orders__shadow (at 812:4) and the table order_summaries__shadow`.
fn shadow_parts(sh: &chronik_postgres::ShadowLeftover) -> String {
    let mut parts = Vec::new();
    if let Some(c) = sh.checkpoint {
        parts.push(format!("the checkpoint {}__shadow (at {c})", sh.projection));
    }
    if let Some(t) = &sh.table {
        parts.push(format!("the table {t}"));
    }
    parts.join(" and ")
}

/// A whole number of seconds as a comparable age.
fn limit(seconds: u64) -> f64 {
    // Thresholds are small; any precision loss is far below a second.
    #[allow(clippy::cast_precision_loss)]
    let s = seconds as f64;
    s
}
