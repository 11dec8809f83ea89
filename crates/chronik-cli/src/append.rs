//! `append STREAM_ID --type TYPE`: one event, its payload from `--data` or stdin.
//!
//! Everything the command line says is validated before the database is touched: a
//! malformed expected version, payload or header is a usage error (status 2) and writes
//! nothing. Store refusals (a version conflict, an event id stored elsewhere) are status 1.

use std::io::{self, Read as _, Write as _};

use anyhow::Context as _;
use chronik_core::{EventId, EventType, ExpectedVersion, Metadata, NewEvent, StreamId, Version};
use chronik_postgres::PgEventStore;
use chronik_store::EventStore as _;
use serde_json::Value;

use crate::Registry;
use crate::backend::Usage;

/// The most stdin may hold: the payload limit leaves room for indentation, no more.
pub(crate) const MAX_INPUT_BYTES: usize = 4 * chronik_core::MAX_PAYLOAD_BYTES;

/// What to append, validated.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) event: NewEvent,
    /// Said on stderr once the event is written: it was not checked.
    pub(crate) warning: Option<String>,
    /// The registered type its payload decodes as (after upcasting); `None` when the
    /// binary registers no such type.
    pub(crate) read_as: Option<String>,
}

/// Parses `--expected-version`: a version number, `any`, `no-stream` or `exists`.
pub(crate) fn parse_expected(text: &str) -> Result<ExpectedVersion, String> {
    match text {
        "any" => Ok(ExpectedVersion::Any),
        "no-stream" => Ok(ExpectedVersion::NoStream),
        "exists" => Ok(ExpectedVersion::StreamExists),
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("version {digits} is out of range"))?;
            Version::new(n)
                .map(ExpectedVersion::Exact)
                .map_err(|e| e.to_string())
        }
        negative
            if negative.len() > 1
                && negative.starts_with('-')
                && negative[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            Err(format!(
                "{:?} is not a version: versions are never negative; for a stream that must not exist yet, use `no-stream` (or 0)",
                negative.chars().take(64).collect::<String>()
            ))
        }
        other => Err(format!(
            "{:?} is not a version: expected a number, `any`, `no-stream` or `exists`",
            other.chars().take(64).collect::<String>()
        )),
    }
}

/// Parses `--type`.
pub(crate) fn parse_event_type(text: &str) -> Result<EventType, String> {
    EventType::new(text).map_err(|e| e.to_string())
}

/// Parses `--event-id`: a UUID, not nil.
pub(crate) fn parse_event_id(text: &str) -> Result<EventId, String> {
    let id = uuid::Uuid::parse_str(text).map_err(|e| format!("not a uuid: {e}"))?;
    EventId::new(id).map_err(|e| e.to_string())
}

/// Parses `--header KEY=VALUE`.
pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| "a header is KEY=VALUE".to_owned())?;
    if key.is_empty() {
        return Err("a header's key is empty".to_owned());
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Reads the payload: `data`, or all of stdin (at most [`MAX_INPUT_BYTES`]).
pub(crate) fn read_payload(data: Option<String>) -> anyhow::Result<Vec<u8>> {
    if let Some(data) = data {
        return Ok(data.into_bytes());
    }
    let mut input = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut input)
        .context("cannot read the payload from stdin")?;
    if input.len() > MAX_INPUT_BYTES {
        return Err(Usage(format!(
            "the payload on stdin is larger than {MAX_INPUT_BYTES} bytes"
        ))
        .into());
    }
    Ok(input)
}

/// Builds the event: the payload must be one JSON object within the store's limits.
///
/// # Errors
/// A [`Usage`] error saying what is wrong with the input.
#[allow(clippy::too_many_arguments)]
pub(crate) fn request(
    registry: &Registry,
    stream: StreamId,
    expected: ExpectedVersion,
    event_type: EventType,
    schema_version: Option<u32>,
    payload: &[u8],
    headers: Vec<(String, String)>,
    event_id: Option<EventId>,
) -> anyhow::Result<Request> {
    let usage = |m: String| anyhow::Error::from(Usage(m));
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(usage(
            "the payload is empty: pass one JSON object with --data or on stdin".to_owned(),
        ));
    }
    let payload: Value = serde_json::from_slice(payload)
        .map_err(|e| usage(format!("the payload is not valid JSON: {e}")))?;
    let (schema_version, warning, read_as) =
        check_registered(registry, &event_type, schema_version, &payload)?;
    let mut metadata = Metadata::default();
    for (key, value) in headers {
        metadata = metadata.with_header(key, value);
    }
    let event_id = match event_id {
        Some(id) => id,
        None => EventId::new(uuid::Uuid::now_v7()).context("a fresh event id")?,
    };
    let event = NewEvent::new(event_id, event_type, schema_version, payload, metadata)
        .map_err(|e| usage(format!("invalid event: {e}")))?;
    Ok(Request {
        stream,
        expected,
        event,
        warning,
        read_as,
    })
}

/// The event types `stream` accepts, and whose they are, when something the binary
/// registers claims the stream: the aggregate of its category, or else the registered
/// event enums its stored events belong to. `None`: nothing claims it (an event of any
/// type can be written, with a warning when the type is not registered).
async fn accepted_types(
    registry: &Registry,
    store: &PgEventStore,
    stream: &StreamId,
) -> anyhow::Result<Option<(String, Vec<&'static str>)>> {
    let names = |types: &'static [chronik_core::EventTypeInfo]| types.iter().map(|t| t.name);
    if let Some(aggregate) = registry
        .aggregates
        .iter()
        .find(|a| a.category == stream.category())
    {
        let whose = format!(
            "it belongs to the aggregate of category {}",
            aggregate.category
        );
        return Ok(Some((whose, names(aggregate.event_types).collect())));
    }
    if registry.events.is_empty() {
        return Ok(None);
    }
    let stored = store
        .stream_event_types(stream)
        .await
        .with_context(|| format!("cannot read the event types of {stream}"))?;
    let mut accepted: Vec<&'static str> = Vec::new();
    for events in &registry.events {
        if events
            .types
            .iter()
            .any(|t| stored.iter().any(|s| s == t.name))
        {
            accepted.extend(names(events.types));
        }
    }
    if accepted.is_empty() {
        return Ok(None);
    }
    accepted.sort_unstable();
    accepted.dedup();
    let whose = format!("its events are of registered types ({})", stored.join(", "));
    Ok(Some((whose, accepted)))
}

/// Refuses (a [`Usage`] error, nothing written) an event whose type the aggregate of its
/// stream does not accept: the application could not load the stream after it, and events
/// cannot be deleted. With `allow` (`--allow-unregistered`) it is written anyway, with a
/// warning saying so.
pub(crate) async fn check_stream(
    registry: &Registry,
    store: &PgEventStore,
    mut request: Request,
    allow: bool,
) -> anyhow::Result<Request> {
    let Some((whose, accepted)) = accepted_types(registry, store, &request.stream).await? else {
        return Ok(request);
    };
    if request
        .read_as
        .as_deref()
        .is_some_and(|t| accepted.contains(&t))
    {
        return Ok(request);
    }
    let stream = &request.stream;
    let name = request.event.event_type().as_str();
    let problem = format!(
        "event type {name} is not one that {stream} accepts ({whose}; its types: {}): \
         the application could not load {stream} after it, and events cannot be deleted",
        accepted.join(", ")
    );
    if !allow {
        return Err(Usage(format!(
            "{problem}; nothing was written (check --type; to write it anyway, as an escape hatch, \
             pass --allow-unregistered)"
        ))
        .into());
    }
    request.warning = Some(format!(
        "{problem}; written because of --allow-unregistered"
    ));
    Ok(request)
}

/// The schema version to write `payload` at, after checking it against what `registry`
/// knows of `event_type`: the version must not be newer than the current one, and the
/// payload must upcast from it and decode as the registered event type (the third value,
/// when the binary registers it). A type the binary does not register is written as given
/// (default 1), unchecked: then the warning to give.
///
/// # Errors
/// A [`Usage`] error saying why the payload would not load; nothing is written then.
pub(crate) fn check_registered(
    registry: &Registry,
    event_type: &EventType,
    given: Option<u32>,
    payload: &Value,
) -> anyhow::Result<(u32, Option<String>, Option<String>)> {
    let name = event_type.as_str();
    let upcasters = registry.upcasters.as_deref();
    let known = |t: &str| {
        registry.events.iter().find_map(|e| {
            e.types
                .iter()
                .find(|i| i.name == t)
                .map(|i| (e, i.schema_version))
        })
    };
    let current = upcasters
        .and_then(|r| r.current_version(name))
        .or_else(|| known(name).map(|(_, v)| v));
    let Some(current) = current else {
        let version = given.unwrap_or(1);
        let warning = format!(
            "event type {name} is not registered with {} (no upcaster or event type names it): \
             it was written at schema version {version} without checking that it can be read",
            registry.binary
        );
        return Ok((version, Some(warning), None));
    };
    let version = given.unwrap_or(current);
    if version > current {
        return Err(Usage(format!(
            "schema version {version} of {name} is newer than its current version {current}: nothing was written"
        ))
        .into());
    }
    let (read_as, read_version, read) = match upcasters {
        Some(r) => r.upcast(name, version, payload.clone()).map_err(|e| {
            Usage(format!(
                "the payload is not a {name} v{version} that can be read: {e}; nothing was written{}",
                if given.is_some() && version < current {
                    format!(" (the current version is v{current}: without --schema-version the payload is written as v{current})")
                } else {
                    String::new()
                }
            ))
        })?,
        None => (name.to_owned(), version, payload.clone()),
    };
    let Some((events, _)) = known(&read_as) else {
        // Known to the upcasters only: checked as far as they go.
        return Ok((version, None, Some(read_as)));
    };
    {
        (events.decode)(&read_as, read).map_err(|e| {
            let upcast = if read_version == version {
                String::new()
            } else {
                format!(" (upcast from v{version})")
            };
            Usage(format!(
                "the payload does not decode as {read_as} v{read_version}{upcast}: {e}; nothing was written"
            ))
        })?;
    }
    Ok((version, None, Some(read_as)))
}

/// Appends the event and prints its version and feed cursor.
pub(crate) async fn run(store: &PgEventStore, request: Request, json: bool) -> anyhow::Result<()> {
    let Request {
        stream,
        expected,
        event,
        warning,
        read_as: _,
    } = request;
    let id = event.event_id();
    let result = store
        .append(&stream, expected, std::slice::from_ref(&event))
        .await
        .with_context(|| format!("cannot append to {stream}"))?;
    if let Some(w) = warning {
        // Best effort, like every diagnostic: a closed stderr must not fail the command.
        let _ = writeln!(io::stderr(), "warning: {w}");
    }
    // After the commit (never inside it): wakes `tail`s following the feed at once. Best
    // effort: they poll anyway.
    if let Err(e) =
        chronik_postgres::notify_feed(store.pool(), chronik_postgres::FEED_CHANNEL).await
    {
        tracing::debug!(error = %e, "cannot notify the feed's listeners");
    }
    if json {
        let doc = serde_json::json!({
            "stream_id": stream.as_str(),
            "version": result.last_version.get(),
            "event_type": event.event_type().as_str(),
            "event_id": id.to_string(),
            "cursor": result.cursor.to_string(),
            "already_appended": result.already_appended,
        });
        writeln!(io::stdout(), "{doc}")?;
        return Ok(());
    }
    let what = if result.already_appended {
        "already appended (nothing written)"
    } else {
        "appended"
    };
    writeln!(
        io::stdout(),
        "{what}: {stream} v{} {} event {id} cursor {}",
        result.last_version,
        event.event_type(),
        result.cursor
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_parse_or_say_why() {
        assert_eq!(parse_expected("any"), Ok(ExpectedVersion::Any));
        assert_eq!(parse_expected("no-stream"), Ok(ExpectedVersion::NoStream));
        assert_eq!(parse_expected("exists"), Ok(ExpectedVersion::StreamExists));
        assert_eq!(
            parse_expected("7"),
            Ok(ExpectedVersion::Exact(Version::new(7).expect("small")))
        );
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "ANY",
            "9223372036854775808",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert!(parse_expected(bad).is_err(), "{bad:?}");
        }
        assert!(parse_expected("9223372036854775807").is_ok());
    }

    #[test]
    fn headers_are_key_equals_value() {
        assert_eq!(
            parse_header("user=ann=b"),
            Ok(("user".to_owned(), "ann=b".to_owned()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=x").is_err());
    }
}
