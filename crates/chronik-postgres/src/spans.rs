//! The `tracing` spans of the store's writes (`chronik.append`, `chronik.append_streams`):
//! stream ids, expected and resulting versions, feed cursors and outcomes as fields, never
//! payloads, metadata or connection strings. The projection engine's batches have their
//! own (`chronik.projection.batch`, in `projection/runner.rs`). See docs/operations.md,
//! "Traces".

use chronik_core::{ExpectedVersion, StreamId};
use chronik_store::{AppendResult, StoreError, StreamAppend};
use tracing::Span;
use tracing::field::Empty;

/// How many stream ids a multi-stream append's span names (the count is always there).
const NAMED_STREAMS: usize = 16;

/// The span of one owned append to `stream`.
pub(crate) fn append(stream: &StreamId, expected: ExpectedVersion, events: usize) -> Span {
    tracing::info_span!(
        "chronik.append",
        stream = %stream,
        category = stream.category(),
        expected = %expected,
        events,
        outcome = Empty,
        first_version = Empty,
        last_version = Empty,
        cursor = Empty,
        actual_version = Empty,
    )
}

/// The outcome of an append, as the span's `outcome` names it (the metrics' words).
pub(crate) fn outcome(result: Result<&AppendResult, &StoreError>) -> &'static str {
    match result {
        Ok(r) if r.already_appended => "already_appended",
        Ok(_) => "written",
        Err(e) if e.is_conflict() => "conflict",
        Err(StoreError::Backend { .. } | StoreError::TransactionAborted { .. }) => "failed",
        Err(_) => "refused",
    }
}

/// Records what an append did on its span; a conflict also as an event, with the version
/// the stream was at.
pub(crate) fn record_append(span: &Span, result: Result<&AppendResult, &StoreError>) {
    span.record("outcome", outcome(result));
    match result {
        Ok(r) => {
            span.record("first_version", r.first_version.get());
            span.record("last_version", r.last_version.get());
            span.record("cursor", tracing::field::display(r.cursor));
        }
        Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => {
            span.record("actual_version", actual.get());
            tracing::debug!(parent: span, stream = %stream, expected = %expected, actual = actual.get(), "append conflict");
        }
        Err(e) => {
            // The error's kind, not its text: a store error may quote a server message.
            tracing::debug!(parent: span, error_kind = kind(e), "append refused or failed");
        }
    }
}

/// A store error's kind, for a span.
pub(crate) fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict { .. } | StoreError::Conflicts { .. } => "conflict",
        StoreError::NotFound(_) => "not_found",
        StoreError::TransactionOrder { .. } => "transaction_order",
        StoreError::DuplicateEventId { .. } => "duplicate_event_id",
        StoreError::EventIdReused { .. } => "event_id_reused",
        StoreError::Decode { .. } | StoreError::Upcast(_) => "decode",
        StoreError::FeedTimeout { .. } => "feed_timeout",
        StoreError::TransactionAborted { .. } => "transaction_aborted",
        StoreError::Backend { .. } => "backend",
        StoreError::Invalid(_) | StoreError::InvalidRequest(_) => "invalid",
        _ => "other",
    }
}

/// The span of one multi-stream append: how many streams and events, the first ids.
pub(crate) fn append_streams(appends: &[StreamAppend]) -> Span {
    let ids: Vec<&str> = appends
        .iter()
        .take(NAMED_STREAMS)
        .map(|a| a.stream.as_str())
        .collect();
    let more = if appends.len() > NAMED_STREAMS {
        ",..."
    } else {
        ""
    };
    tracing::info_span!(
        "chronik.append_streams",
        streams = appends.len(),
        stream_ids = %format_args!("{}{more}", ids.join(",")),
        events = appends.iter().map(|a| a.events.len()).sum::<usize>(),
        outcome = Empty,
        cursor = Empty,
        conflicts = Empty,
    )
}

/// Records what a multi-stream append did on its span.
pub(crate) fn record_append_streams(span: &Span, result: Result<&[AppendResult], &StoreError>) {
    match result {
        Ok(parts) => {
            let written = parts.iter().any(|p| !p.already_appended);
            span.record(
                "outcome",
                if written {
                    "written"
                } else {
                    "already_appended"
                },
            );
            if let Some(last) = parts.iter().map(|p| p.cursor).max() {
                span.record("cursor", tracing::field::display(last));
            }
        }
        Err(e) => {
            span.record("outcome", outcome(Err(e)));
            if let StoreError::Conflicts { conflicts } = e {
                span.record("conflicts", conflicts.len());
                for c in conflicts {
                    tracing::debug!(parent: span, stream = %c.stream, actual = c.actual.get(), "append conflict");
                }
            }
        }
    }
}
