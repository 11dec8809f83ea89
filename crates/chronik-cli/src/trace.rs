//! `trace`: the causation tree of one correlation id, across streams.
//!
//! An event's parent is the event whose id is its causation id; an event whose causation is
//! not an event of the chain (a command's id, or nothing) starts a branch under that
//! command. Siblings are in feed order, which is causal order: a reaction is appended after
//! the event it reacts to was committed.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use anyhow::Context as _;
use chronik_core::{CorrelationId, EventId, RecordedEvent};
use chronik_postgres::PgEventStore;
use serde_json::json;
use uuid::Uuid;

use crate::backend::NotFound;
use crate::fmt::count;

/// Most events one trace reads.
pub(crate) const MAX_EVENTS: u32 = 10_000;

/// One line of a trace: an event (or, at depth 0, the command that started a branch).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line<'a> {
    /// A command outside the chain's events (its id, if the events name one).
    Command(Option<Uuid>),
    /// An event at `depth` (1 = recorded by a command directly).
    Event {
        /// Nesting below the command.
        depth: usize,
        /// The event.
        event: &'a RecordedEvent,
        /// Its parent event's id, if its cause is an event of the chain.
        parent: Option<EventId>,
    },
}

/// The tree of `events` (in feed order) in depth-first order: each command, then the events
/// it recorded, each followed by the events that react to it, and so on.
pub(crate) fn tree(events: &[RecordedEvent]) -> Vec<Line<'_>> {
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id.as_uuid()).collect();
    let mut children: HashMap<Uuid, Vec<&RecordedEvent>> = HashMap::new();
    let mut commands: Vec<Option<Uuid>> = Vec::new();
    let mut by_command: HashMap<Option<Uuid>, Vec<&RecordedEvent>> = HashMap::new();
    for e in events {
        let cause = e.metadata.causation_id.map(|c| c.as_uuid());
        match cause {
            Some(c) if ids.contains(&c) && c != e.event_id.as_uuid() => {
                children.entry(c).or_default().push(e);
            }
            _ => {
                if !by_command.contains_key(&cause) {
                    commands.push(cause);
                }
                by_command.entry(cause).or_default().push(e);
            }
        }
    }
    let mut out = Vec::with_capacity(events.len() + commands.len());
    let mut seen = HashSet::new();
    for command in commands {
        out.push(Line::Command(command));
        let mut stack: Vec<(usize, &RecordedEvent, Option<EventId>)> = by_command
            .get(&command)
            .into_iter()
            .flatten()
            .rev()
            .map(|e| (1, *e, None))
            .collect();
        while let Some((depth, event, parent)) = stack.pop() {
            // A causation cycle cannot be appended in feed order, but stored data is not
            // trusted: each event is printed once.
            if !seen.insert(event.event_id) {
                continue;
            }
            out.push(Line::Event {
                depth,
                event,
                parent,
            });
            if let Some(kids) = children.get(&event.event_id.as_uuid()) {
                stack.extend(
                    kids.iter()
                        .rev()
                        .map(|k| (depth + 1, *k, Some(event.event_id))),
                );
            }
        }
    }
    out
}

/// Prints the trace of `correlation`, or of the correlation of event `event`.
pub(crate) async fn run(
    store: &PgEventStore,
    correlation: Option<CorrelationId>,
    event: Option<EventId>,
    json: bool,
) -> anyhow::Result<()> {
    let (correlation, marked) = match (correlation, event) {
        (Some(c), None) => (c, None),
        (None, Some(id)) => {
            let found = store
                .event_by_id(id)
                .await
                .with_context(|| format!("cannot look up event {id}"))?
                .ok_or_else(|| {
                    NotFound(format!(
                        "no committed event has id {id} in schema {}",
                        store.schema()
                    ))
                })?;
            let correlation = found.metadata.correlation_id.ok_or_else(|| {
                NotFound(format!(
                    "event {id} ({} v{}) has no correlation id: it is not part of a traced chain",
                    found.stream_id, found.version
                ))
            })?;
            (correlation, Some(id))
        }
        _ => anyhow::bail!(crate::backend::Usage(
            "give a correlation id or --event EVENT_ID, not both".to_owned()
        )),
    };
    let events = store
        .correlated(correlation, MAX_EVENTS)
        .await
        .with_context(|| format!("cannot read the events of correlation {correlation}"))?;
    if events.is_empty() {
        return Err(NotFound(format!(
            "no committed event has correlation id {correlation} in schema {}",
            store.schema()
        ))
        .into());
    }
    let mut out = io::stdout().lock();
    if json {
        let nodes: Vec<serde_json::Value> = tree(&events)
            .iter()
            .filter_map(|l| match l {
                Line::Command(_) => None,
                Line::Event {
                    depth,
                    event,
                    parent,
                } => Some(json!({
                    "depth": depth,
                    "parent": parent,
                    "event_id": event.event_id,
                    "stream_id": event.stream_id,
                    "version": event.version,
                    "event_type": event.event_type,
                    "schema_version": event.schema_version,
                    "cursor": event.cursor.to_string(),
                    "recorded_at": event.recorded_at,
                    "causation_id": event.metadata.causation_id,
                })),
            })
            .collect();
        let doc = json!({
            "correlation_id": correlation,
            "truncated": events.len() == MAX_EVENTS as usize,
            "events": nodes,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string(&doc).map_err(io::Error::other)?
        )?;
        return Ok(());
    }
    write_trace(&mut out, correlation, &events, marked)?;
    Ok(())
}

/// Writes the causation tree of `events` (the events of `correlation`, in feed order) as
/// `chronik trace` prints it: a line saying how many events in how many streams, then each
/// command that started a branch (`command <id>`) and under it, indented two spaces per
/// level, the events it recorded, each followed by the events that react to it; an event
/// line has stream, version, type, time and cursor, and `<- this event` after `marked`.
/// An event's parent is the event whose id is its causation id; siblings keep feed order.
///
/// For a program that has a chain's events from elsewhere (the demo reads them from the
/// feed of any store) and wants the operator's picture of it.
///
/// # Errors
/// When writing to `out` fails.
pub fn write_trace(
    out: &mut impl Write,
    correlation: CorrelationId,
    events: &[RecordedEvent],
    marked: Option<EventId>,
) -> io::Result<()> {
    let lines = tree(events);
    let streams: HashSet<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
    writeln!(
        out,
        "correlation {correlation}: {} in {}{}",
        count(events.len() as u64, "event"),
        count(streams.len() as u64, "stream"),
        if events.len() == MAX_EVENTS as usize {
            " (the first ones only)"
        } else {
            ""
        }
    )?;
    for line in &lines {
        match line {
            Line::Command(Some(id)) => writeln!(out, "command {id}")?,
            Line::Command(None) => writeln!(out, "(no causation recorded)")?,
            Line::Event { depth, event, .. } => writeln!(
                out,
                "{}{} v{} {}  {}  cursor {}{}",
                "  ".repeat(*depth),
                event.stream_id,
                event.version,
                event.event_type,
                event.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                event.cursor,
                if marked == Some(event.event_id) {
                    "  <- this event"
                } else {
                    ""
                }
            )?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chronik_core::{CausationId, EventType, FeedCursor, Metadata, StreamId, Version};
    use serde_json::json;

    use super::*;

    fn event(n: u128, stream: &str, causation: Option<u128>) -> RecordedEvent {
        RecordedEvent {
            stream_id: StreamId::new(stream).unwrap_or_else(|_| unreachable!()),
            version: Version::FIRST,
            cursor: FeedCursor::new(1, n as u64).unwrap_or(FeedCursor::START),
            event_id: EventId::new(Uuid::from_u128(n)).unwrap_or_else(|_| unreachable!()),
            event_type: EventType::new("T").unwrap_or_else(|_| unreachable!()),
            schema_version: 1,
            payload: json!({}),
            metadata: Metadata {
                causation_id: causation.map(|c| CausationId::new(Uuid::from_u128(c))),
                ..Metadata::default()
            },
            recorded_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn shape(lines: &[Line<'_>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| match l {
                Line::Command(c) => format!("cmd {}", c.map_or(0, |c| c.as_u128())),
                Line::Event { depth, event, .. } => {
                    format!(
                        "{}{}",
                        "-".repeat(*depth),
                        event.event_id.as_uuid().as_u128()
                    )
                }
            })
            .collect()
    }

    #[test]
    fn reactions_nest_under_their_cause_in_feed_order() {
        // Command 100 records 1 (order) and 2 (payment); 3 reacts to 2, 4 reacts to 3,
        // 5 reacts to 1; command 200 (outside the chain) records 6.
        let events = vec![
            event(1, "order-1", Some(100)),
            event(2, "payment-1", Some(100)),
            event(3, "shipment-1", Some(2)),
            event(4, "order-1", Some(3)),
            event(5, "mail-1", Some(1)),
            event(6, "order-1", Some(200)),
        ];
        assert_eq!(
            shape(&tree(&events)),
            ["cmd 100", "-1", "--5", "-2", "--3", "---4", "cmd 200", "-6"]
        );
    }

    #[test]
    fn events_without_causation_and_cycles_are_printed_once() {
        let events = vec![event(1, "a-1", None), event(2, "a-1", Some(2))];
        assert_eq!(shape(&tree(&events)), ["cmd 0", "-1", "cmd 2", "-2"]);
    }
}
