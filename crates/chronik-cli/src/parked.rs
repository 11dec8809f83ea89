//! `projections parked | park | retry | drop-parked`: the events a projection passes over,
//! as an operator decides about them.

use std::io::{self, Write as _};

use anyhow::Context as _;
use chronik_core::EventId;
use chronik_postgres::{ParkRecord, ParkedEvent, PgEventStore, ProjectionError, RetryOutcome};
use serde_json::{Value, json};

use crate::backend::{NotFound, Usage};
use crate::table::{self, Align};
use crate::{RegisteredProjection, Registry};

/// Who decides: `--by`, or else `$USER`.
pub(crate) fn who(by: Option<String>) -> anyhow::Result<String> {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|w| !w.trim().is_empty())
        .ok_or_else(|| Usage("say who decides with --by WHO ($USER is not set)".to_owned()).into())
}

fn record_json(r: &ParkRecord) -> Value {
    let d = &r.decision;
    json!({
        "event_id": d.event_id.to_string(),
        "stream_id": d.stream_id.as_str(),
        "version": d.version.get(),
        "cursor": r.cursor.map(|c| c.to_string()),
        "state": r.state.as_str(),
        "reason": d.reason,
        "decided_by": d.decided_by,
        "decided_at": d.decided_at.to_rfc3339(),
        "resolved_by": r.resolved_by,
        "resolved_at": r.resolved_at.map(|t| t.to_rfc3339()),
    })
}

/// Prints the park decisions of `name` (open ones, or `all`), and the event its runner
/// is failing on when that one is not parked.
pub(crate) async fn list(
    registry: &Registry,
    store: &PgEventStore,
    name: &str,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let bin = registry.binary.as_str();
    let every = chronik_postgres::park_records(store, name)
        .await
        .with_context(|| format!("cannot read the parked events of projection {name}"))?;
    // Decisions of a projection forgotten since are still listed.
    if every.is_empty() {
        let known = known_projections(registry, store).await?;
        if !known.iter().any(|k| k == name) {
            return Err(unknown_projection(store, name, &known, "it has no parked events").into());
        }
    }
    let records: Vec<ParkRecord> = every
        .into_iter()
        .filter(|r| all || r.state.is_open())
        .collect();
    let reports = crate::projections::reports(store).await?;
    let failing = reports
        .iter()
        .find(|r| r.name == name)
        .and_then(|r| r.failing_event.map(|e| (e, r.last_error.clone())))
        .filter(|(e, _)| !records.iter().any(|r| r.decision.event_id == *e));
    let mut out = io::stdout().lock();
    if json {
        let doc = json!({
            "projection": name,
            "schema": store.schema().as_str(),
            "parked": records.iter().map(record_json).collect::<Vec<_>>(),
            "failing_event": failing.as_ref().map(|(e, _)| e.to_string()),
            "last_error": failing.as_ref().and_then(|(_, m)| m.clone()),
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    if records.is_empty() {
        writeln!(
            out,
            "no {}parked events for projection {name} in schema {}",
            if all { "" } else { "open " },
            store.schema()
        )?;
    } else {
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| {
                let d = &r.decision;
                let decided = format!(
                    "{} {}",
                    d.decided_by,
                    d.decided_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
                vec![
                    d.event_id.to_string(),
                    format!("{} v{}", d.stream_id, d.version),
                    r.cursor.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                    r.state.as_str().to_owned(),
                    decided,
                    table::one_line(&d.reason),
                ]
            })
            .collect();
        out.write_all(
            table::render(
                &[
                    ("EVENT", Align::Left),
                    ("STREAM", Align::Left),
                    ("CURSOR", Align::Left),
                    ("STATE", Align::Left),
                    ("DECIDED", Align::Left),
                    ("REASON", Align::Left),
                ],
                &rows,
            )
            .as_bytes(),
        )?;
    }
    if let Some((event, error)) = failing {
        writeln!(
            out,
            "projection {name} is failing on event {event}, which is not parked{}: \
             to pass over it, `{bin} projections park {name} {event} --reason TEXT`",
            error.map_or_else(String::new, |e| format!(" ({})", table::one_line(&e)))
        )?;
    }
    Ok(())
}

/// The projections `store` knows: those with a checkpoint or status there (a partitioned
/// one under its own name too) and those `registry` registers, sorted.
pub(crate) async fn known_projections(
    registry: &Registry,
    store: &PgEventStore,
) -> anyhow::Result<Vec<String>> {
    let mut known: Vec<String> = registry
        .projections
        .iter()
        .map(|p| p.name.clone())
        .collect();
    for r in crate::projections::reports(store).await? {
        if let Some((base, _, _)) = chronik_projections::parse_partition(&r.name) {
            known.push(base.to_owned());
        }
        if !r.name.ends_with("__shadow") {
            known.push(r.name);
        }
    }
    known.sort();
    known.dedup();
    Ok(known)
}

/// A projection name that neither has a checkpoint in the schema nor is registered: most
/// likely mistyped. The one message every command gives for it, ending with `then` (what
/// the command did not do).
pub(crate) fn unknown_projection(
    store: &PgEventStore,
    name: &str,
    known: &[String],
    then: &str,
) -> NotFound {
    NotFound(format!(
        "no projection {name} in schema {} ({}): check the name; {then}",
        store.schema(),
        if known.is_empty() {
            "it has none".to_owned()
        } else {
            format!("its projections: {}", known.join(", "))
        }
    ))
}

/// Records the decision to pass over event `id` for projection `name`, which must exist (a
/// checkpoint in the schema, or registered): a mistyped name would record a decision that
/// no runner reads, while the real projection stays stuck.
pub(crate) async fn park(
    registry: &Registry,
    store: &PgEventStore,
    name: &str,
    id: EventId,
    reason: &str,
    by: &str,
) -> anyhow::Result<()> {
    chronik_store::validate_projection_name(name).map_err(|e| Usage(crate::request_message(&e)))?;
    if reason.trim().is_empty() {
        return Err(Usage("--reason is empty: say why the event is parked".to_owned()).into());
    }
    let known = known_projections(registry, store).await?;
    if !known.iter().any(|k| k == name) {
        return Err(unknown_projection(
            store,
            name,
            &known,
            "nothing was parked (a decision for a projection that does not exist is read by no runner)",
        )
        .into());
    }
    let event = store
        .event_by_id(id)
        .await
        .with_context(|| format!("cannot look up event {id}"))?
        .ok_or_else(|| NotFound(format!("no event {id} in schema {}", store.schema())))?;
    chronik_postgres::park_event(
        store,
        &ParkedEvent {
            projection: name.to_owned(),
            event_id: id,
            stream_id: event.stream_id.clone(),
            version: event.version,
            reason: reason.to_owned(),
            decided_by: by.to_owned(),
            decided_at: chrono::Utc::now(),
        },
    )
    .await
    .with_context(|| format!("cannot park event {id}"))?;
    writeln!(
        io::stdout(),
        "parked event {id} ({} v{}, cursor {}) for projection {name}: its runner passes over it \
         when it fails on it, and its rebuilds pass over it",
        event.stream_id,
        event.version,
        event.cursor
    )?;
    Ok(())
}

/// Retries each of `ids` for the registered `projection`.
pub(crate) async fn retry(
    registry: &Registry,
    store: &PgEventStore,
    projection: &RegisteredProjection,
    ids: &[EventId],
    by: &str,
) -> anyhow::Result<()> {
    let name = &projection.name;
    let mut out = io::stdout().lock();
    for &id in ids {
        match (projection.retry)(store, registry.upcasters.clone(), id, by).await {
            Ok(RetryOutcome::Applied) => writeln!(
                out,
                "retried event {id}: applied to {} now (it had been skipped, so after the events that followed it)",
                projection.table
            )?,
            Ok(_) => writeln!(
                out,
                "retried event {id}: its park decision is withdrawn; the runner of {name} applies it when it reaches it"
            )?,
            Err(ProjectionError::Store(chronik_store::StoreError::NotFound(m))) => {
                return Err(NotFound(m).into());
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "event {id} still fails for projection {name}: it stays parked"
                )));
            }
        }
    }
    Ok(())
}

/// Drops each of `ids` for good.
pub(crate) async fn drop(
    store: &PgEventStore,
    name: &str,
    ids: &[EventId],
    by: &str,
) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    for &id in ids {
        match chronik_postgres::drop_parked(store, name, id, by).await {
            Ok(()) => writeln!(
                out,
                "dropped event {id} for projection {name} for good: it stays passed over and leaves the list"
            )?,
            Err(ProjectionError::Store(chronik_store::StoreError::NotFound(m))) => {
                return Err(NotFound(m).into());
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot drop event {id}")));
            }
        }
    }
    Ok(())
}
