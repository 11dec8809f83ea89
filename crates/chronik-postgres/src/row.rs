//! Decoding rows into the port's types. A row that does not decode is an error, never
//! silently dropped.

use std::collections::BTreeMap;

use chronik_core::{
    CausationId, CorrelationId, EventId, EventType, FeedCursor, Metadata, RecordedEvent, StreamId,
    Version,
};
use chronik_store::{Checkpoint, Payload, Snapshot, StoreError, StreamEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::backend;

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::backend(format!("stored {what} does not decode: {detail}"), false)
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(what, format!("negative value {v}")))
}

/// A `RecordedEvent` from the columns of `sql::EVENT_COLUMNS`.
pub(crate) fn recorded(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let stream: String = row.try_get(0).map_err(backend)?;
    let version: i64 = row.try_get(1).map_err(backend)?;
    let tx: i64 = row.try_get(2).map_err(backend)?;
    let position: i64 = row.try_get(3).map_err(backend)?;
    let event_id: Uuid = row.try_get(4).map_err(backend)?;
    let stream_id = StreamId::new(stream).map_err(|e| corrupt("stream id", e))?;
    let version = Version::from_i64(version).map_err(|e| corrupt("version", e))?;
    let event_id = EventId::new(event_id).map_err(|e| corrupt("event id", e))?;
    let cursor = FeedCursor::new(to_u64(tx, "transaction id")?, to_u64(position, "position")?)?;
    let decode = |reason: String| StoreError::Decode {
        stream: stream_id.clone(),
        version,
        event_id,
        cursor: Some(cursor),
        reason,
    };
    let event_type: String = row.try_get(5).map_err(backend)?;
    let schema_version: i64 = row.try_get(6).map_err(backend)?;
    let payload: Value = row.try_get(7).map_err(backend)?;
    let headers: Value = row.try_get(8).map_err(backend)?;
    let correlation: Option<Uuid> = row.try_get(9).map_err(backend)?;
    let causation: Option<Uuid> = row.try_get(10).map_err(backend)?;
    let recorded_at: DateTime<Utc> = row.try_get(11).map_err(backend)?;
    let headers: BTreeMap<String, String> =
        serde_json::from_value(headers).map_err(|e| decode(format!("metadata: {e}")))?;
    Ok(RecordedEvent {
        cursor,
        event_type: EventType::new(event_type).map_err(|e| decode(e.to_string()))?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| decode(format!("schema version {schema_version} out of range")))?,
        payload,
        metadata: Metadata {
            correlation_id: correlation.map(CorrelationId::new),
            causation_id: causation.map(CausationId::new),
            headers,
        },
        recorded_at,
        stream_id,
        version,
        event_id,
    })
}

/// A `StreamEvent` from the columns of `Sql::read_payloads`.
pub(crate) fn stream_event(row: &PgRow) -> Result<StreamEvent, StoreError> {
    let version: i64 = row.try_get(0).map_err(backend)?;
    let event_id: Uuid = row.try_get(1).map_err(backend)?;
    let event_type: String = row.try_get(2).map_err(backend)?;
    let schema_version: i64 = row.try_get(3).map_err(backend)?;
    let payload: String = row.try_get(4).map_err(backend)?;
    Ok(StreamEvent {
        version: Version::from_i64(version).map_err(|e| corrupt("version", e))?,
        event_id: EventId::new(event_id).map_err(|e| corrupt("event id", e))?,
        event_type: EventType::new(event_type).map_err(|e| corrupt("event type", e))?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt("schema version", schema_version))?,
        payload: Payload::Json(payload),
    })
}

/// A `Snapshot` from `stream_id, version, state_schema_version, state, taken_at`.
pub(crate) fn snapshot(row: &PgRow) -> Result<Snapshot, StoreError> {
    let stream: String = row.try_get(0).map_err(backend)?;
    let version: i64 = row.try_get(1).map_err(backend)?;
    let schema: i64 = row.try_get(2).map_err(backend)?;
    Ok(Snapshot {
        stream_id: StreamId::new(stream).map_err(|e| corrupt("snapshot stream id", e))?,
        version: Version::from_i64(version).map_err(|e| corrupt("snapshot version", e))?,
        state_schema_version: u32::try_from(schema)
            .map_err(|_| corrupt("snapshot schema version", schema))?,
        state: row.try_get(3).map_err(backend)?,
        taken_at: row.try_get(4).map_err(backend)?,
    })
}

/// A `Checkpoint` from `name, transaction_id, global_position, events_processed, updated_at`.
pub(crate) fn checkpoint(row: &PgRow) -> Result<Checkpoint, StoreError> {
    let tx: i64 = row.try_get(1).map_err(backend)?;
    let position: i64 = row.try_get(2).map_err(backend)?;
    let processed: i64 = row.try_get(3).map_err(backend)?;
    Ok(Checkpoint {
        name: row.try_get(0).map_err(backend)?,
        cursor: FeedCursor::new(
            to_u64(tx, "checkpoint transaction")?,
            to_u64(position, "checkpoint position")?,
        )?,
        events_processed: to_u64(processed, "events processed")?,
        updated_at: row.try_get(4).map_err(backend)?,
    })
}
