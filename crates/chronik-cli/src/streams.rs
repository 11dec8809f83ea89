//! `streams list | show`: what a store holds, stream by stream, for any domain.

use std::io::{self, Write as _};

use anyhow::Context as _;
use chronik_core::{RecordedEvent, StreamId, Version};
use chronik_postgres::{PgEventStore, StreamSummary};
use chronik_store::EventStore as _;
use futures::TryStreamExt as _;
use serde_json::json;

use crate::backend::NotFound;
use crate::fmt::{count, n};
use crate::table::{self, Align};

/// Prints the streams (of `category`), by id, at most `limit`.
pub(crate) async fn list(
    store: &PgEventStore,
    category: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let streams = store
        .list_streams(category, limit)
        .await
        .context("cannot list the streams")?;
    let mut out = io::stdout().lock();
    if json {
        let doc = json!({
            "schema": store.schema().as_str(),
            "category": category,
            "streams": streams.iter().map(summary_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    if streams.is_empty() {
        let which = category.map_or_else(String::new, |c| format!(" of category {c}"));
        writeln!(out, "no streams{which} in schema {}", store.schema())?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = streams
        .iter()
        .map(|s| {
            vec![
                s.stream_id.to_string(),
                s.stream_id.category().to_owned(),
                n(s.version.get()),
            ]
        })
        .collect();
    out.write_all(
        table::render(
            &[
                ("STREAM", Align::Left),
                ("CATEGORY", Align::Left),
                ("VERSION", Align::Right),
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    if streams.len() == limit as usize {
        writeln!(
            out,
            "(the first {}; --limit shows more)",
            count(u64::from(limit), "stream")
        )?;
    }
    Ok(())
}

fn summary_json(s: &StreamSummary) -> serde_json::Value {
    json!({
        "stream_id": s.stream_id.as_str(),
        "category": s.stream_id.category(),
        "version": s.version.get(),
    })
}

/// Prints the events of `stream` from version `from`, as stored.
pub(crate) async fn show(
    store: &PgEventStore,
    binary: &str,
    stream: &StreamId,
    from: u64,
    json: bool,
) -> anyhow::Result<()> {
    let version = store
        .stream_version(stream)
        .await
        .with_context(|| format!("cannot read the version of {stream}"))?;
    if version == Version::ZERO {
        return Err(NotFound(format!(
            "stream {stream} has no events in schema {schema}: `{binary} streams list --schema {schema}` lists the streams there",
            schema = store.schema()
        ))
        .into());
    }
    let from = Version::new(from).context("--from is out of range")?;
    let events: Vec<RecordedEvent> = store
        .read_stream(stream, from)
        .try_collect()
        .await
        .with_context(|| format!("cannot read {stream}"))?;
    let mut out = io::stdout().lock();
    if json {
        for event in &events {
            writeln!(out, "{}", crate::table::event_json(event)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "stream {stream} is at version {}; {} from v{from}:",
        n(version.get()),
        count(events.len() as u64, "event")
    )?;
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                n(e.version.get()),
                e.event_type.to_string(),
                format!("v{}", e.schema_version),
                e.cursor.to_string(),
                e.metadata
                    .correlation_id
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                e.metadata
                    .causation_id
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                e.recorded_at
                    .format("%Y-%m-%d %H:%M:%S%.3f UTC")
                    .to_string(),
                table::one_line(&e.payload.to_string()),
            ]
        })
        .collect();
    out.write_all(
        table::render(
            &[
                ("VERSION", Align::Right),
                ("TYPE", Align::Left),
                ("SCHEMA", Align::Left),
                ("CURSOR", Align::Left),
                ("CORRELATION", Align::Left),
                ("CAUSATION", Align::Left),
                ("RECORDED AT", Align::Left),
                ("PAYLOAD", Align::Left),
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}
