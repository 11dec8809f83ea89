use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::cursor::FeedCursor;
use crate::error::{InvalidInput, truncate};
use crate::id::{CausationId, CorrelationId, EventId, StreamId};
use crate::version::Version;

/// Longest accepted event type name, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;
/// Largest accepted payload, serialized as compact JSON: 1 MiB.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Deepest accepted payload nesting (objects and arrays).
pub const MAX_PAYLOAD_DEPTH: usize = 64;
/// Largest accepted metadata headers, serialized as compact JSON: 16 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most events accepted in one append.
pub const MAX_APPEND_EVENTS: usize = 10_000;

/// A meaningful event type name such as `OrderShipped`.
///
/// Contract: 1 to [`MAX_EVENT_TYPE_LEN`] bytes, no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    /// Validates an event type name.
    ///
    /// # Errors
    /// [`InvalidInput::EventType`].
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInput> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_EVENT_TYPE_LEN {
            Some("longer than 255 bytes")
        } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("contains whitespace or a control character")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidInput::EventType {
                name: truncate(&name),
                reason,
            }),
            None => Ok(Self(name)),
        }
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Metadata carried by every event: correlation and causation first-class, headers free-form.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The original request this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationId>,
    /// The message that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<CausationId>,
    /// Free-form string headers (user, tenant, trace id, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Metadata {
    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation(mut self, id: CorrelationId) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation(mut self, id: CausationId) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// The metadata of a command whose own id is `command`: the causation id is `command`
    /// unless one was given (a reaction names the event it reacts to), and the correlation
    /// id is kept when given, else it is `command` too (the command starts a new chain).
    /// Every event the command records carries both, so the chain can be traced.
    #[must_use]
    pub fn for_command(mut self, command: Uuid) -> Self {
        self.correlation_id
            .get_or_insert_with(|| CorrelationId::new(command));
        self.causation_id
            .get_or_insert_with(|| CausationId::new(command));
        self
    }

    /// The metadata of a reaction to `event`: the same correlation id (the event's own id
    /// when it has none) and `event` as the causation. Headers are not carried over.
    #[must_use]
    pub fn caused_by(event: &RecordedEvent) -> Self {
        Self {
            correlation_id: Some(
                event
                    .metadata
                    .correlation_id
                    .unwrap_or_else(|| CorrelationId::new(event.event_id.as_uuid())),
            ),
            causation_id: Some(CausationId::new(event.event_id.as_uuid())),
            headers: BTreeMap::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    fn validate(&self) -> Result<(), InvalidInput> {
        let mut size = 2;
        for (k, v) in &self.headers {
            if k.contains('\0') || v.contains('\0') {
                return Err(InvalidInput::PayloadNul);
            }
            size += k.len() + v.len() + 6;
        }
        if size > MAX_HEADER_BYTES {
            return Err(InvalidInput::HeadersTooLarge {
                size,
                max: MAX_HEADER_BYTES,
            });
        }
        Ok(())
    }
}

/// An event about to be appended. Validated on construction.
///
/// Contract: `payload` is a JSON object of at most [`MAX_PAYLOAD_BYTES`] (compact JSON),
/// nested at most [`MAX_PAYLOAD_DEPTH`] deep, with no NUL characters anywhere;
/// `schema_version >= 1`; headers within [`MAX_HEADER_BYTES`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    event_id: EventId,
    event_type: EventType,
    schema_version: u32,
    payload: Value,
    metadata: Metadata,
}

impl NewEvent {
    /// Validates and builds an event.
    ///
    /// # Errors
    /// Any [`InvalidInput`] describing the first violated rule.
    pub fn new(
        event_id: EventId,
        event_type: EventType,
        schema_version: u32,
        payload: Value,
        metadata: Metadata,
    ) -> Result<Self, InvalidInput> {
        if schema_version == 0 {
            return Err(InvalidInput::ZeroSchemaVersion);
        }
        validate_payload(&payload)?;
        metadata.validate()?;
        Ok(Self {
            event_id,
            event_type,
            schema_version,
            payload,
            metadata,
        })
    }

    /// The event id.
    #[must_use]
    pub fn event_id(&self) -> EventId {
        self.event_id
    }
    /// The event type name.
    #[must_use]
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }
    /// The schema version the payload is written in.
    #[must_use]
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }
    /// The JSON payload (always an object).
    #[must_use]
    pub fn payload(&self) -> &Value {
        &self.payload
    }
    /// The metadata.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// Replaces the metadata (validated again).
    ///
    /// # Errors
    /// [`InvalidInput::HeadersTooLarge`] or [`InvalidInput::PayloadNul`].
    pub fn with_metadata(mut self, metadata: Metadata) -> Result<Self, InvalidInput> {
        metadata.validate()?;
        self.metadata = metadata;
        Ok(self)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate_payload(payload: &Value) -> Result<(), InvalidInput> {
    if !payload.is_object() {
        return Err(InvalidInput::PayloadNotObject {
            found: kind(payload),
        });
    }
    // Iterative walk: depth and NUL checks must not recurse on hostile input.
    let mut stack = vec![(payload, 1usize)];
    let mut size = 0usize;
    while let Some((v, depth)) = stack.pop() {
        if depth > MAX_PAYLOAD_DEPTH {
            return Err(InvalidInput::PayloadTooDeep {
                max: MAX_PAYLOAD_DEPTH,
            });
        }
        match v {
            Value::String(s) => {
                if s.contains('\0') {
                    return Err(InvalidInput::PayloadNul);
                }
                size += s.len() + 2;
            }
            Value::Array(items) => {
                size += 2 + items.len();
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                size += 2 + map.len();
                for (k, i) in map {
                    if k.contains('\0') {
                        return Err(InvalidInput::PayloadNul);
                    }
                    size += k.len() + 3;
                    stack.push((i, depth + 1));
                }
            }
            Value::Number(n) => size += json_len(n),
            Value::Bool(_) | Value::Null => size += 5,
        }
        if size > MAX_PAYLOAD_BYTES * 2 {
            break; // clearly too large; the exact size below is then cheap to reject
        }
    }
    // `size` undercounts the compact JSON only through escaping, which at most multiplies a
    // string or key by 6 (`\u00XX`); every other part is counted at or above its length.
    // So a payload whose estimate is under a sixth of the limit is within it, and the usual
    // small payload is never serialized here just to be measured.
    if size.saturating_mul(6) <= MAX_PAYLOAD_BYTES {
        return Ok(());
    }
    let exact = serde_json::to_vec(payload).map_or(usize::MAX, |b| b.len());
    if exact > MAX_PAYLOAD_BYTES {
        return Err(InvalidInput::PayloadTooLarge {
            size: exact,
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

/// The length of `n` as compact JSON, counted as it is written: no `String` per number
/// (`to_string` cost an allocation per number of every payload appended).
fn json_len(n: &serde_json::Number) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail; were it to, the exact check below would run.
    match serde_json::to_writer(&mut count, n) {
        Ok(()) => count.0,
        Err(_) => MAX_PAYLOAD_BYTES,
    }
}

/// Checks the batch-level rules of one append: at least one event, at most
/// [`MAX_APPEND_EVENTS`], no event id twice. Adapters call this before any I/O.
///
/// # Errors
/// [`InvalidInput::NoEvents`], [`InvalidInput::TooManyEvents`] or
/// [`InvalidInput::DuplicateEventInBatch`].
pub fn validate_batch(events: &[NewEvent]) -> Result<(), InvalidInput> {
    if events.is_empty() {
        return Err(InvalidInput::NoEvents);
    }
    if events.len() > MAX_APPEND_EVENTS {
        return Err(InvalidInput::TooManyEvents {
            count: events.len(),
            max: MAX_APPEND_EVENTS,
        });
    }
    let mut seen = HashSet::with_capacity(events.len());
    for e in events {
        if !seen.insert(e.event_id) {
            return Err(InvalidInput::DuplicateEventInBatch(e.event_id.as_uuid()));
        }
    }
    Ok(())
}

/// An event as stored: the envelope plus where and when it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream (from 1).
    pub version: Version,
    /// Its position in the global feed.
    pub cursor: FeedCursor,
    /// Its unique id.
    pub event_id: EventId,
    /// Its type name (after any upcast rename).
    pub event_type: EventType,
    /// Its payload schema version (after upcasting: the current one).
    pub schema_version: u32,
    /// Its payload.
    pub payload: Value,
    /// Its metadata.
    pub metadata: Metadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn ev(payload: Value) -> Result<NewEvent, InvalidInput> {
        NewEvent::new(
            EventId::new(Uuid::from_u128(7)).unwrap(),
            EventType::new("OrderPlaced").unwrap(),
            1,
            payload,
            Metadata::default(),
        )
    }

    #[test]
    fn payload_must_be_an_object() {
        assert_eq!(
            ev(json!([1])),
            Err(InvalidInput::PayloadNotObject { found: "an array" })
        );
        assert_eq!(
            ev(json!(null)),
            Err(InvalidInput::PayloadNotObject { found: "null" })
        );
        assert_eq!(
            ev(json!("x")),
            Err(InvalidInput::PayloadNotObject { found: "a string" })
        );
        assert!(ev(json!({})).is_ok());
    }

    #[test]
    fn oversize_deep_and_nul_payloads_are_rejected() {
        let big = json!({ "s": "x".repeat(MAX_PAYLOAD_BYTES) });
        assert!(matches!(ev(big), Err(InvalidInput::PayloadTooLarge { .. })));
        let mut deep = json!({});
        for _ in 0..MAX_PAYLOAD_DEPTH {
            deep = json!({ "a": deep });
        }
        assert_eq!(
            ev(deep),
            Err(InvalidInput::PayloadTooDeep {
                max: MAX_PAYLOAD_DEPTH
            })
        );
        assert_eq!(ev(json!({ "a": "x\u{0}y" })), Err(InvalidInput::PayloadNul));
        assert_eq!(ev(json!({ "a\u{0}": 1 })), Err(InvalidInput::PayloadNul));
    }

    proptest::proptest! {
        /// The size estimate counts a number as exactly its compact JSON text, for every
        /// integer and every finite float (an undercount would let the estimate admit a
        /// payload over the limit).
        #[test]
        fn numbers_are_counted_as_long_as_their_json_text(
            i in proptest::num::i64::ANY,
            u in proptest::num::u64::ANY,
            f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
        ) {
            for n in [serde_json::Number::from(i), serde_json::Number::from(u)]
                .into_iter()
                .chain(serde_json::Number::from_f64(f))
            {
                proptest::prop_assert_eq!(json_len(&n), n.to_string().len(), "{}", n);
            }
        }
    }

    #[test]
    fn escape_heavy_payloads_are_measured_exactly() {
        // Each \u{1} serializes as `\u0001` (6 bytes): the estimate alone would admit these.
        let fits = |n: usize| ev(json!({ "s": "\u{1}".repeat(n) }));
        let overhead = r#"{"s":""}"#.len();
        let max_chars = (MAX_PAYLOAD_BYTES - overhead) / 6;
        assert!(fits(max_chars).is_ok());
        assert!(matches!(
            fits(max_chars + 1),
            Err(InvalidInput::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn batches_are_checked() {
        assert_eq!(validate_batch(&[]), Err(InvalidInput::NoEvents));
        let e = ev(json!({})).unwrap();
        assert!(matches!(
            validate_batch(&[e.clone(), e]),
            Err(InvalidInput::DuplicateEventInBatch(_))
        ));
    }

    #[test]
    fn event_types_are_validated() {
        assert!(EventType::new("").is_err());
        assert!(EventType::new("Order Placed").is_err());
        assert!(EventType::new("x".repeat(256)).is_err());
        assert!(EventType::new("OrderShipped").is_ok());
    }

    #[test]
    fn zero_schema_version_is_rejected() {
        let r = NewEvent::new(
            EventId::new(Uuid::from_u128(7)).unwrap(),
            EventType::new("A").unwrap(),
            0,
            json!({}),
            Metadata::default(),
        );
        assert_eq!(r, Err(InvalidInput::ZeroSchemaVersion));
    }
}
