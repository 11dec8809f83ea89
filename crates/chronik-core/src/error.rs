use thiserror::Error;

/// A value was rejected by a validating constructor. Nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A stream id was empty.
    #[error("stream id is empty")]
    EmptyStreamId,
    /// A stream id was longer than [`crate::MAX_STREAM_ID_LEN`] bytes.
    #[error("stream id is {len} bytes long, the limit is {max}")]
    StreamIdTooLong {
        /// Length in bytes of the rejected id.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A stream id contained whitespace or a control character.
    #[error("stream id contains whitespace or a control character at byte {at}")]
    StreamIdCharacter {
        /// Byte offset of the offending character.
        at: usize,
    },
    /// An event id was the nil UUID.
    #[error("event id is the nil uuid")]
    NilEventId,
    /// A version does not fit the store's signed 64-bit range. Holds the value exactly as
    /// the caller gave it (negative ones included), so the message shows that value.
    #[error("version {0} is out of range (0 to {max})", max = i64::MAX)]
    VersionOutOfRange(i128),
    /// Advancing a version would overflow.
    #[error("version overflow: {current} + {add}")]
    VersionOverflow {
        /// Starting version.
        current: u64,
        /// Amount added.
        add: u64,
    },
    /// An event type name was empty, too long or had a bad character.
    #[error("invalid event type {name:?}: {reason}")]
    EventType {
        /// The rejected name (truncated to 64 chars).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An event payload was not a JSON object.
    #[error("event payload must be a JSON object, got {found}")]
    PayloadNotObject {
        /// The JSON kind found instead.
        found: &'static str,
    },
    /// An event payload was larger than [`crate::MAX_PAYLOAD_BYTES`].
    #[error("event payload is {size} bytes, the limit is {max}")]
    PayloadTooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Metadata headers were larger than [`crate::MAX_HEADER_BYTES`].
    #[error("event headers are {size} bytes, the limit is {max}")]
    HeadersTooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A payload or header held a NUL character, which the PostgreSQL store cannot keep.
    #[error("event payload holds a NUL character (\\u0000), which cannot be stored")]
    PayloadNul,
    /// A payload was nested deeper than [`crate::MAX_PAYLOAD_DEPTH`].
    #[error("event payload is nested deeper than {max} levels")]
    PayloadTooDeep {
        /// The limit.
        max: usize,
    },
    /// A schema version was zero.
    #[error("schema version must be at least 1")]
    ZeroSchemaVersion,
    /// A feed cursor string could not be parsed.
    #[error(
        "malformed feed cursor {input:?}: expected `<transaction>:<position>` with non-negative integers"
    )]
    MalformedCursor {
        /// The rejected text (truncated to 64 chars).
        input: String,
    },
    /// An append carried no events.
    #[error("an append needs at least one event")]
    NoEvents,
    /// An append carried more events than the limit.
    #[error("an append carries {count} events, the limit is {max}")]
    TooManyEvents {
        /// Number of events offered.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The same event id appeared twice in one append.
    #[error("event id {0} appears twice in one append")]
    DuplicateEventInBatch(uuid::Uuid),
    /// A retry policy or snapshot policy parameter was out of range.
    #[error("invalid policy: {0}")]
    Policy(&'static str),
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Upcasting failed: the registry is inconsistent or a stored payload could not be lifted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// Two steps were registered for the same `(event_type, from_version)`.
    #[error("duplicate upcaster for {event_type} v{from}")]
    DuplicateStep {
        /// Event type.
        event_type: String,
        /// Schema version the step lifts from.
        from: u32,
    },
    /// A step lifts from a version at or beyond the declared current version.
    #[error("upcaster for {event_type} v{from} goes past the current version v{current}")]
    StepPastCurrent {
        /// Event type.
        event_type: String,
        /// Schema version the step lifts from.
        from: u32,
        /// Declared current version.
        current: u32,
    },
    /// A step is missing between version 1 and the current version.
    #[error(
        "upcast chain for {event_type} has a gap: no step from v{missing} (current is v{current})"
    )]
    Gap {
        /// Event type.
        event_type: String,
        /// The version with no step.
        missing: u32,
        /// Declared current version.
        current: u32,
    },
    /// Steps were registered for an event type whose current version was never declared.
    #[error("upcasters registered for {event_type}, but no current version was declared for it")]
    UndeclaredType {
        /// Event type.
        event_type: String,
    },
    /// A type was declared twice, or a rename target/source clashes.
    #[error("event type {event_type} declared twice or renamed ambiguously")]
    DuplicateDeclaration {
        /// Event type.
        event_type: String,
    },
    /// A rename chain loops.
    #[error("event type rename chain starting at {event_type} loops")]
    RenameCycle {
        /// Where the loop was detected.
        event_type: String,
    },
    /// A stored event claims a schema version newer than this code knows.
    #[error(
        "{event_type} v{found} is newer than this code knows (current is v{current}); deploy the newer code"
    )]
    FutureVersion {
        /// Event type.
        event_type: String,
        /// Stored schema version.
        found: u32,
        /// Current version known to the registry.
        current: u32,
    },
    /// A step rejected the payload it was given.
    #[error("upcasting {event_type} v{from} failed: {reason}")]
    StepFailed {
        /// Event type.
        event_type: String,
        /// Version being lifted.
        from: u32,
        /// Why.
        reason: String,
    },
}

/// `serde_json`'s message for `e` without the input values it quotes, for logs and for
/// errors that are shown to operators: a payload's content must not leak through them.
///
/// serde quotes strings (`invalid type: string "..."`), numbers, booleans and characters
/// (`integer `5``), unknown variant and field names; each such value becomes `…`. What
/// the decoder expected (type, field and variant names of the schema) and the position
/// are kept, so the message still says what is wrong: `invalid type: string "…",
/// expected u32 at line 1 column 9`.
#[must_use]
pub fn json_error_without_values(e: &serde_json::Error) -> String {
    redact_quoted_values(&e.to_string())
}

/// See [`json_error_without_values`].
fn redact_quoted_values(message: &str) -> String {
    // serde writes these words right before a value it quotes in backticks.
    const BEFORE_VALUE: [&str; 6] = [
        "boolean ",
        "integer ",
        "floating point ",
        "character ",
        "unknown variant ",
        "unknown field ",
    ];
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push_str("\"…\"");
                let mut escaped = false;
                for d in chars.by_ref() {
                    match (escaped, d) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => {}
                    }
                }
            }
            '`' if BEFORE_VALUE.iter().any(|w| out.ends_with(w)) => {
                out.push_str("`…`");
                for d in chars.by_ref() {
                    if d == '`' {
                        break;
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_quoted_values;

    #[test]
    fn quoted_values_are_removed_and_the_schema_is_kept() {
        for (message, expected) in [
            (
                r#"invalid type: string "s3cr3t \"x\" y", expected u32 at line 1 column 9"#,
                r#"invalid type: string "…", expected u32 at line 1 column 9"#,
            ),
            (
                "invalid type: integer `42`, expected a string",
                "invalid type: integer `…`, expected a string",
            ),
            (
                "invalid value: floating point `1.5`, expected u8",
                "invalid value: floating point `…`, expected u8",
            ),
            (
                "unknown variant `Secret`, expected one of `A`, `B`",
                "unknown variant `…`, expected one of `A`, `B`",
            ),
            ("missing field `customer_id`", "missing field `customer_id`"),
            ("invalid type: boolean `true`", "invalid type: boolean `…`"),
            (r#"unterminated "abc"#, r#"unterminated "…""#),
        ] {
            assert_eq!(redact_quoted_values(message), expected);
        }
    }
}
