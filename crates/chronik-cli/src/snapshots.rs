//! `chronik snapshots list | take | drop`: a stream's snapshots, one taken now, or every
//! snapshot of a category dropped (after a state schema change).

use std::io::{self, Write as _};
use std::sync::Arc;

use anyhow::Context as _;
use chronik_core::{Aggregate, SnapshotState, StreamId, UpcasterRegistry, Version};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore as _, Repository, SnapshotStore as _, StoreError, Upcasting};
use serde_json::json;

use crate::Registry;
use crate::backend::{NotFound, Usage};
use crate::fmt::{count, n};
use crate::table::{self, Align};

/// A snapshot just taken.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) version: Version,
    pub(crate) state_schema_version: u32,
    pub(crate) events_replayed: u64,
}

/// Validates a category name for `chronik snapshots drop`.
pub(crate) fn parse_category(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a category is empty".to_owned());
    }
    if text.contains('-') {
        return Err(format!(
            "{text:?} is not a category: a category is the part of a stream id before the first `-` (e.g. `account`)"
        ));
    }
    // Same characters as a stream id.
    StreamId::new(text).map_err(|e| e.to_string().replace("stream id", "category"))?;
    Ok(text.to_owned())
}

/// Prints the snapshots of `stream` (a table, or one JSON document).
pub(crate) async fn list(
    registry: &Registry,
    store: &PgEventStore,
    stream: &StreamId,
    json: bool,
) -> anyhow::Result<()> {
    let version = store
        .stream_version(stream)
        .await
        .with_context(|| format!("cannot read the version of {stream}"))?;
    let snapshots = store
        .list_snapshots(stream)
        .await
        .with_context(|| format!("cannot list the snapshots of {stream}"))?;
    let current = registry
        .aggregates
        .iter()
        .find(|a| a.category == stream.category())
        .map(|a| a.state_schema_version);
    let mut out = io::stdout().lock();
    if json {
        let doc = json!({
            "stream_id": stream.as_str(),
            "schema": store.schema().as_str(),
            "version": version.get(),
            "current_state_schema_version": current,
            "snapshots": snapshots.iter().map(|s| json!({
                "version": s.version.get(),
                "state_schema_version": s.state_schema_version,
                "taken_at": s.taken_at.to_rfc3339(),
                "bytes": s.state.to_string().len(),
                "events_after": version.get().saturating_sub(s.version.get()),
                // `null`: the category is not registered, so usability is unknown.
                "usable": current.map(|v| v == s.state_schema_version),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(
        out,
        "stream {stream} is at version {}; {}",
        n(version.get()),
        if snapshots.is_empty() {
            "no snapshots".to_owned()
        } else {
            count(snapshots.len() as u64, "snapshot")
        }
    )?;
    if snapshots.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            let usable = match current {
                Some(v) if v == s.state_schema_version => "yes".to_owned(),
                Some(v) => format!("no (current state schema is v{v})"),
                None => "unknown category (not registered)".to_owned(),
            };
            vec![
                n(s.version.get()),
                format!("v{}", s.state_schema_version),
                s.taken_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                n(s.state.to_string().len() as u64),
                n(version.get().saturating_sub(s.version.get())),
                usable,
            ]
        })
        .collect();
    out.write_all(
        table::render(
            &[
                ("VERSION", Align::Right),
                ("STATE SCHEMA", Align::Left),
                ("TAKEN AT", Align::Left),
                ("BYTES", Align::Right),
                ("EVENTS AFTER", Align::Right),
                ("USABLE", Align::Left),
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// Loads `stream` (of a registered aggregate) from all its events, upcast, and saves a
/// snapshot at its version; says so (in JSON with `json`).
pub(crate) async fn take(
    registry: &Registry,
    store: &PgEventStore,
    stream: &StreamId,
    json: bool,
) -> anyhow::Result<()> {
    let Some(aggregate) = registry
        .aggregates
        .iter()
        .find(|a| a.category == stream.category())
    else {
        let known: Vec<String> = registry
            .aggregates
            .iter()
            .map(|a| format!("`{}`", a.category))
            .collect();
        let knows = if known.is_empty() {
            "no aggregate (a service registers its own with Operator::snapshots)".to_owned()
        } else {
            format!("streams of category {} only", known.join(", "))
        };
        return Err(Usage(format!(
            "cannot snapshot {stream}: {} knows how to fold {knows}, not `{}`",
            registry.binary,
            stream.category()
        ))
        .into());
    };
    let taken = match (aggregate.take)(store, registry.upcasters_or_empty()?, stream).await {
        Ok(taken) => taken,
        Err(e) => return Err(with_cursor(store, &registry.binary, e).await),
    };
    if json {
        let doc = json!({
            "stream_id": stream.as_str(),
            "schema": store.schema().as_str(),
            "version": taken.version.get(),
            "state_schema_version": taken.state_schema_version,
            "events_replayed": taken.events_replayed,
        });
        writeln!(io::stdout(), "{doc}")?;
        return Ok(());
    }
    writeln!(
        io::stdout(),
        "snapshot of {stream} taken at version {} (state schema v{}): it covers {}; loads now replay only what comes after",
        n(taken.version.get()),
        taken.state_schema_version,
        count(taken.events_replayed, "event"),
    )?;
    Ok(())
}

/// `e`, with the feed cursor of the event it names when it is a decode error: the stream
/// read that failed knows only its stream, version and id.
async fn with_cursor(store: &PgEventStore, bin: &str, e: anyhow::Error) -> anyhow::Error {
    let Some(id) = e
        .chain()
        .find_map(|c| match c.downcast_ref::<StoreError>() {
            Some(StoreError::Decode { event_id, .. }) => Some(*event_id),
            _ => None,
        })
    else {
        return e;
    };
    match store.event_by_id(id).await {
        Ok(Some(event)) => e.context(format!(
            "event {id} ({} v{}, cursor {}) cannot be read as the registered aggregate's event \
             (see it as stored: `{bin} streams show {} --from {}`)",
            event.stream_id, event.version, event.cursor, event.stream_id, event.version
        )),
        _ => e,
    }
}

/// [`take`] for aggregate `A`.
pub(crate) async fn take_as<A: Aggregate + SnapshotState>(
    store: &PgEventStore,
    upcasters: Arc<UpcasterRegistry>,
    stream: &StreamId,
) -> anyhow::Result<Taken> {
    let repo = Repository::<A, _>::new(Upcasting::new(store.clone(), upcasters));
    let loaded = repo
        .load(stream)
        .await
        .with_context(|| format!("cannot load {stream}"))?;
    if loaded.version == Version::ZERO {
        return Err(NotFound(format!(
            "stream {stream} has no events: nothing to snapshot"
        ))
        .into());
    }
    let state = loaded
        .state
        .to_state()
        .with_context(|| format!("the state of {stream} does not serialize"))?;
    store
        .save_snapshot(stream, loaded.version, A::STATE_SCHEMA_VERSION, &state)
        .await
        .with_context(|| format!("cannot save the snapshot of {stream}"))?;
    Ok(Taken {
        version: loaded.version,
        state_schema_version: A::STATE_SCHEMA_VERSION,
        events_replayed: loaded.events_replayed,
    })
}

/// Drops every snapshot of streams in `category`; says how many (in JSON with `json`).
pub(crate) async fn drop_category(
    store: &PgEventStore,
    category: &str,
    json: bool,
) -> anyhow::Result<()> {
    let dropped = store
        .delete_snapshots(category)
        .await
        .with_context(|| format!("cannot drop the snapshots of category {category}"))?;
    if json {
        let doc = json!({
            "category": category,
            "schema": store.schema().as_str(),
            "dropped": dropped,
        });
        writeln!(io::stdout(), "{doc}")?;
        return Ok(());
    }
    writeln!(
        io::stdout(),
        "dropped {} of category {category} in schema {}",
        count(dropped, "snapshot"),
        store.schema()
    )?;
    Ok(())
}
