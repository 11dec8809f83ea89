//! `chronik snapshots list | take | drop`: a stream's snapshots, one taken now, or every
//! snapshot of a category dropped (after a state schema change).

use std::io::{self, Write as _};
use std::sync::Arc;

use anyhow::Context as _;
use chronik_core::{Aggregate as _, SnapshotState as _, StreamId, Version};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore as _, Repository, SnapshotStore as _, Upcasting};
use orders::Order;

use crate::backend::Usage;
use crate::demo::{count, n};
use crate::table::{self, Align};

/// The state schema version this binary reads for a category, if it knows the category.
fn current_state_schema(category: &str) -> Option<u32> {
    (category == Order::TYPE).then_some(Order::STATE_SCHEMA_VERSION)
}

/// Validates a category name for `chronik snapshots drop`.
pub(crate) fn parse_category(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a category is empty".to_owned());
    }
    if text.contains('-') {
        return Err(format!(
            "{text:?} is not a category: a category is the part of a stream id before the first `-` (e.g. `order`)"
        ));
    }
    // Same characters as a stream id.
    StreamId::new(text).map_err(|e| e.to_string().replace("stream id", "category"))?;
    Ok(text.to_owned())
}

/// Prints the snapshots of `stream`.
pub(crate) async fn list(store: &PgEventStore, stream: &StreamId) -> anyhow::Result<()> {
    let version = store
        .stream_version(stream)
        .await
        .with_context(|| format!("cannot read the version of {stream}"))?;
    let snapshots = store
        .list_snapshots(stream)
        .await
        .with_context(|| format!("cannot list the snapshots of {stream}"))?;
    let current = current_state_schema(stream.category());
    let mut out = io::stdout().lock();
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
                None => "unknown category".to_owned(),
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

/// Loads order `stream` from all its events (upcast) and saves a snapshot at its version.
pub(crate) async fn take(store: &PgEventStore, stream: &StreamId) -> anyhow::Result<()> {
    if stream.category() != Order::TYPE {
        return Err(Usage(format!(
            "cannot snapshot {stream}: this binary knows how to fold streams of category `{}` only, not `{}`",
            Order::TYPE,
            stream.category()
        ))
        .into());
    }
    let registry = Arc::new(orders::upcasters().context("the orders upcasters are invalid")?);
    let repo = Repository::<Order, _>::new(Upcasting::new(store.clone(), registry));
    let loaded = repo
        .load(stream)
        .await
        .with_context(|| format!("cannot load {stream}"))?;
    anyhow::ensure!(
        loaded.version != Version::ZERO,
        "stream {stream} has no events: nothing to snapshot"
    );
    let state = loaded
        .state
        .to_state()
        .with_context(|| format!("the state of {stream} does not serialize"))?;
    store
        .save_snapshot(stream, loaded.version, Order::STATE_SCHEMA_VERSION, &state)
        .await
        .with_context(|| format!("cannot save the snapshot of {stream}"))?;
    writeln!(
        io::stdout(),
        "snapshot of {stream} taken at version {} (state schema v{}): it covers {}; loads now replay only what comes after",
        n(loaded.version.get()),
        Order::STATE_SCHEMA_VERSION,
        count(loaded.events_replayed, "event"),
    )?;
    Ok(())
}

/// Drops every snapshot of streams in `category`.
pub(crate) async fn drop_category(store: &PgEventStore, category: &str) -> anyhow::Result<()> {
    let dropped = store
        .delete_snapshots(category)
        .await
        .with_context(|| format!("cannot drop the snapshots of category {category}"))?;
    writeln!(
        io::stdout(),
        "dropped {} of category {category} in schema {}",
        count(dropped, "snapshot"),
        store.schema()
    )?;
    Ok(())
}
