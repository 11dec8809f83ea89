use std::fmt;

use serde::Serialize;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;
use thiserror::Error;

use crate::error::{InvalidInput, json_error_without_values};
use crate::id::StreamId;

/// One event type an event enum can produce: its stored name and the payload schema
/// version this code writes for it. Listed in [`DomainEvent::EVENT_TYPES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventTypeInfo {
    /// The stored type name (the serde tag of the variant).
    pub name: &'static str,
    /// The current payload schema version.
    pub schema_version: u32,
}

/// An event ready to be written: type name, schema version and payload, checked to agree.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    /// The stored type name.
    pub event_type: &'static str,
    /// The payload schema version.
    pub schema_version: u32,
    /// The payload (a JSON object).
    pub payload: Value,
}

/// Why a domain event could not be encoded for writing. Nothing is written then.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event did not serialize.
    #[error("event {event_type} does not serialize: {reason}")]
    Serialize {
        /// The event's declared type.
        event_type: &'static str,
        /// serde's reason (without payload values).
        reason: String,
    },
    /// The type the event declares is not the one it serializes or reads back as: written,
    /// it could never be loaded again. Derive `DomainEvent` to make this impossible.
    #[error(
        "event type mismatch: `event_type()` says {declared:?} but the event {found}; derive DomainEvent so that the stored type is always the serde variant"
    )]
    TypeMismatch {
        /// What `event_type()` returned.
        declared: &'static str,
        /// What was found instead (`serializes as "X"`, `does not read back under that type: ...`).
        found: String,
    },
}

/// A typed domain event that travels as `(type name, schema version, JSON payload)`.
///
/// Type names must be meaningful (`OrderShipped`, never `OrderEvent3`): they are what
/// stored history is keyed by. Derive it (`#[derive(Serialize, Deserialize, DomainEvent)]`
/// on an enum tagged `#[serde(tag = "type", content = "data")]`): the derive takes every
/// variant's stored type from serde's own tag, so the two can never drift, and
/// `#[event(schema_version = N)]` sets a variant's current schema version.
///
/// Hand-written implementations are possible; [`DomainEvent::encode`], which every write
/// path calls, then checks that what `to_payload` produced reads back through
/// `from_payload` under `event_type()`, so an event that could not be loaded again is
/// refused when it is written, never discovered at load.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every event type this enum produces, with its current schema version (the derive
    /// lists them all; empty for a hand-written implementation that does not say).
    const EVENT_TYPES: &'static [EventTypeInfo] = &[];

    /// The stored type name of this event.
    fn event_type(&self) -> &'static str;

    /// The payload schema version this code writes for this event (default 1).
    fn schema_version(&self) -> u32 {
        1
    }

    /// Serializes the payload (a JSON object).
    ///
    /// # Errors
    /// When serialization fails.
    fn to_payload(&self) -> Result<Value, serde_json::Error>;

    /// Deserializes an event from its (already upcast) type name and payload.
    ///
    /// # Errors
    /// When the type is unknown or the payload does not match it.
    fn from_payload(event_type: &str, payload: Value) -> Result<Self, serde_json::Error>;

    /// The event as it will be written, checked: the payload must read back under the
    /// declared type. The derive overrides this with a cheaper check of the same rule
    /// (serde's tag equals `event_type()`).
    ///
    /// # Errors
    /// [`EncodeError::Serialize`], or [`EncodeError::TypeMismatch`] when the payload does
    /// not decode under `event_type()`.
    fn encode(&self) -> Result<EncodedEvent, EncodeError> {
        let event_type = self.event_type();
        let payload = self.to_payload().map_err(|e| EncodeError::Serialize {
            event_type,
            reason: json_error_without_values(&e),
        })?;
        Self::from_payload(event_type, payload.clone()).map_err(|e| EncodeError::TypeMismatch {
            declared: event_type,
            found: format!(
                "does not read back under that type: {}",
                json_error_without_values(&e)
            ),
        })?;
        Ok(EncodedEvent {
            event_type,
            schema_version: self.schema_version(),
            payload,
        })
    }

    /// Deserializes an event from its (already upcast) type name and its payload as JSON
    /// text, which is how stores read it. Must give what [`DomainEvent::from_payload`] gives
    /// for the parsed text.
    ///
    /// The default parses the text into a [`Value`] and calls `from_payload`. Implement it
    /// with [`decode_event_json`] (the counterpart of [`decode_event`]) to decode straight
    /// from the text: a replay then builds no intermediate `Value` per event.
    ///
    /// # Errors
    /// When the text is not JSON, the type is unknown or the payload does not match it.
    fn from_json(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        Self::from_payload(event_type, serde_json::from_str(payload)?)
    }
}

/// Encodes an adjacently tagged enum declared as `declared`: serializes it once, checks
/// that serde's tag is `declared`, and returns its `data` as the payload. What the
/// `DomainEvent` derive's `encode` calls.
///
/// # Errors
/// [`EncodeError::Serialize`], or [`EncodeError::TypeMismatch`] when the tag differs.
pub fn encode_tagged<E: Serialize>(
    event: &E,
    declared: &'static str,
    schema_version: u32,
) -> Result<EncodedEvent, EncodeError> {
    let serialize = |reason: String| EncodeError::Serialize {
        event_type: declared,
        reason,
    };
    let value =
        serde_json::to_value(event).map_err(|e| serialize(json_error_without_values(&e)))?;
    let Value::Object(mut map) = value else {
        return Err(serialize(
            "it does not serialize as {\"type\", \"data\"}".to_owned(),
        ));
    };
    match map.get("type") {
        Some(Value::String(tag)) if tag == declared => {}
        Some(Value::String(tag)) => {
            return Err(EncodeError::TypeMismatch {
                declared,
                found: format!("serializes as {tag:?}"),
            });
        }
        _ => {
            return Err(serialize(
                "it has no string `type` tag: tag the enum #[serde(tag = \"type\", content = \"data\")]"
                    .to_owned(),
            ));
        }
    }
    let payload = match map.remove("data") {
        Some(Value::Null) | None => Value::Object(serde_json::Map::new()),
        Some(data) => data,
    };
    Ok(EncodedEvent {
        event_type: declared,
        schema_version,
        payload,
    })
}

/// Serializes an adjacently tagged enum (`#[serde(tag = "type", content = "data")]`) and
/// returns its `data`, the payload. Unit variants yield `{}`.
///
/// # Errors
/// When the value does not serialize to `{"type": ..., "data": ...}`.
pub fn encode_event<E: Serialize>(event: &E) -> Result<Value, serde_json::Error> {
    match serde_json::to_value(event)? {
        Value::Object(mut map) => Ok(match map.remove("data") {
            Some(Value::Null) | None => Value::Object(serde_json::Map::new()),
            Some(data) => data,
        }),
        _ => Err(serde::de::Error::custom(
            "event does not serialize as {\"type\", \"data\"}",
        )),
    }
}

/// Deserializes an adjacently tagged enum from a type name and a payload.
///
/// # Errors
/// When the type is unknown to `E` or the payload does not match.
pub fn decode_event<E: DeserializeOwned>(
    event_type: &str,
    payload: Value,
) -> Result<E, serde_json::Error> {
    let mut map = serde_json::Map::with_capacity(2);
    map.insert("type".to_owned(), Value::String(event_type.to_owned()));
    if !matches!(&payload, Value::Object(m) if m.is_empty()) {
        map.insert("data".to_owned(), payload);
    }
    // Deserialized from a borrow: the payload is never copied just to keep it for the retry.
    let mut tagged = Value::Object(map);
    match E::deserialize(&tagged) {
        Ok(e) => Ok(e),
        // Unit variants reject a `data` key; newtype variants with all-default fields need one.
        Err(first) => {
            let Value::Object(map) = &mut tagged else {
                return Err(first);
            };
            if map.contains_key("data") {
                return Err(first);
            }
            map.insert("data".to_owned(), Value::Object(serde_json::Map::new()));
            // Both failed: the second error is the one that names what the variant needs
            // (`missing field customer_id`), not the tagging's `missing field data`.
            E::deserialize(&tagged)
        }
    }
}

/// Deserializes an adjacently tagged enum (`#[serde(tag = "type", content = "data")]`) from
/// a type name and its payload as JSON text, straight from the text: the same event
/// [`decode_event`] gives for the parsed payload, without building a [`Value`] first.
///
/// # Errors
/// When the text is not one JSON value, the type is unknown to `E` or the payload does not
/// match it.
pub fn decode_event_json<E: DeserializeOwned>(
    event_type: &str,
    payload: &str,
) -> Result<E, serde_json::Error> {
    // As `decode_event`: an empty payload is first tried without `data` (unit variants
    // reject one), then with `{}` (newtype variants whose fields all have defaults).
    let empty = is_empty_object(payload);
    let tagged = |payload| Tagged {
        event_type,
        payload,
    };
    match E::deserialize(tagged((!empty).then_some(payload))) {
        Ok(e) => Ok(e),
        // Both failed: the second error names what the variant needs (see `decode_event`).
        Err(_) if empty => E::deserialize(tagged(Some("{}"))),
        Err(first) => Err(first),
    }
}

/// Whether `text` is `{}`, whitespace aside.
fn is_empty_object(text: &str) -> bool {
    let mut chars = text.chars().filter(|c| !c.is_ascii_whitespace());
    chars.next() == Some('{') && chars.next() == Some('}') && chars.next().is_none()
}

/// `{"type": <event_type>, "data": <payload>}` as a deserializer, without building it: the
/// payload text is deserialized in place when the enum asks for `data`.
struct Tagged<'a> {
    event_type: &'a str,
    /// `None`: no `data` key.
    payload: Option<&'a str>,
}

impl<'de> serde::Deserializer<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedFields {
            tagged: self,
            given: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The two entries of [`Tagged`], in order.
struct TaggedFields<'a> {
    tagged: Tagged<'a>,
    /// Values handed out so far: 0 (`type` next), 1 (`data` next, if any), 2.
    given: u8,
}

impl<'de> MapAccess<'de> for TaggedFields<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match (self.given, self.tagged.payload) {
            (0, _) => "type",
            (1, Some(_)) => "data",
            _ => return Ok(None),
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.given += 1;
        match (self.given, self.tagged.payload) {
            (1, _) => seed.deserialize(BorrowedStrDeserializer::new(self.tagged.event_type)),
            (2, Some(payload)) => {
                let mut de = serde_json::Deserializer::from_str(payload);
                let value = seed.deserialize(&mut de)?;
                de.end()?;
                Ok(value)
            }
            _ => Err(serde::de::Error::custom("a tagged event has two entries")),
        }
    }
}

/// An aggregate: decides with [`Aggregate::handle`], evolves with [`Aggregate::apply`].
///
/// Contract: `handle` is pure (no I/O, no clock: pass time in the command) and never
/// mutates; `apply` is total, because events are facts that already happened. State is
/// therefore a left fold of `apply` over the stream, starting from `Default`.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The stream category, e.g. `order`: streams are named `order-<id>`.
    const TYPE: &'static str;
    /// What can be asked of it.
    type Command: Send + Sync;
    /// What it records.
    type Event: DomainEvent;
    /// Business-rule violations.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events a command produces, or why it is refused.
    ///
    /// # Errors
    /// A business rule forbids the command in the current state.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event.
    fn apply(&mut self, event: &Self::Event);

    /// Whether `command` may be decided again after it lost an optimistic-concurrency race
    /// (default: every command may).
    ///
    /// A command is retry-safe when deciding it again on the state another writer left is
    /// what its caller wants, which is the usual case: "add a line" adds the line to the
    /// newer order. Return `false` for a command whose decision goes with an effect outside
    /// the store that has already happened or will happen once, on the state the caller saw:
    /// a payment captured after the card was charged for the amount shown, a reservation
    /// confirmed to a customer. Deciding it again on a state that changed meanwhile would
    /// record that effect against a state it was not made for. The repository then decides
    /// it once, on a fresh load (never on a cached state), and when its append meets a
    /// conflict it writes nothing and returns the conflict
    /// (`RepositoryError::Conflict` in `chronik-store`) for the caller to settle (re-check,
    /// refund, ask again). Failures that leave the decision valid (a lost acknowledgement,
    /// a transaction-order retry) still re-send the very same events, which the idempotent
    /// append writes at most once.
    ///
    /// It is a property of the command, known before any state is loaded; it must not
    /// depend on the state.
    fn retry_safe(_command: &Self::Command) -> bool {
        true
    }

    /// The stream id of instance `id` of this aggregate: `<TYPE>-<id>`, e.g.
    /// `Order::stream_id(42)` is `order-42`.
    ///
    /// # Errors
    /// When the result is not a valid [`StreamId`] (empty id, whitespace, too long).
    fn stream_id(id: impl fmt::Display) -> Result<StreamId, InvalidInput> {
        StreamId::for_category(Self::TYPE, id)
    }

    /// The state after replaying `events` from `Default`: a fold.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        events.into_iter().fold(Self::default(), |mut state, e| {
            state.apply(e);
            state
        })
    }
}

/// Opt-in snapshot support: an aggregate whose state serializes with its own schema version.
///
/// Contract: `from_state(to_state(a)) == a` for every reachable state. Bump
/// `STATE_SCHEMA_VERSION` whenever the state's shape changes; snapshots written under
/// another version are then ignored and rebuilt, never mis-decoded.
pub trait SnapshotState: Aggregate {
    /// Version of the serialized state's shape.
    const STATE_SCHEMA_VERSION: u32;

    /// Serializes the state.
    ///
    /// # Errors
    /// When serialization fails.
    fn to_state(&self) -> Result<Value, serde_json::Error>;

    /// Restores the state.
    ///
    /// # Errors
    /// When the value does not match the state's shape.
    fn from_state(state: Value) -> Result<Self, serde_json::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Ev {
        Added { n: i64 },
        Cleared,
    }

    #[test]
    fn adjacent_encoding_round_trips() {
        let p = encode_event(&Ev::Added { n: 3 }).unwrap();
        assert_eq!(p, json!({ "n": 3 }));
        assert_eq!(decode_event::<Ev>("Added", p).unwrap(), Ev::Added { n: 3 });
        let p = encode_event(&Ev::Cleared).unwrap();
        assert_eq!(p, json!({}));
        assert_eq!(decode_event::<Ev>("Cleared", p).unwrap(), Ev::Cleared);
        assert!(decode_event::<Ev>("Nope", json!({})).is_err());
        assert!(decode_event::<Ev>("Added", json!({ "n": "x" })).is_err());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Wide {
        Unit,
        Defaults(#[serde(default)] Defaults),
        Nested { inner: Vec<Ev>, text: String },
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Defaults {
        #[serde(default)]
        n: i64,
    }

    /// `decode_event_json` agrees with `decode_event` on the parsed text, for successes
    /// and failures alike.
    #[test]
    fn decoding_from_text_agrees_with_decoding_the_parsed_value() {
        let cases: &[(&str, &str)] = &[
            ("Added", r#"{"n": 3}"#),
            ("Added", r#"{"n": "x"}"#),
            ("Added", "{}"),
            ("Cleared", "{}"),
            ("Cleared", " { } "),
            ("Cleared", r#"{"extra": 1}"#),
            ("Nope", "{}"),
            ("Unit", "{}"),
            ("Defaults", "{}"),
            ("Defaults", r#"{"n": 7}"#),
            (
                "Nested",
                r#"{"inner": [{"type": "Added", "data": {"n": 1}}], "text": "a\"b"}"#,
            ),
            ("Nested", r#"{"inner": [], "text": 5}"#),
        ];
        for (t, text) in cases {
            let value: Value = serde_json::from_str(text).expect("valid json");
            let from_value = decode_event::<Ev>(t, value.clone()).ok();
            assert_eq!(
                decode_event_json::<Ev>(t, text).ok(),
                from_value,
                "{t} {text}"
            );
            let from_value = decode_event::<Wide>(t, value).ok();
            assert_eq!(
                decode_event_json::<Wide>(t, text).ok(),
                from_value,
                "{t} {text}"
            );
        }
        assert_eq!(
            decode_event_json::<Wide>("Defaults", "{}").unwrap(),
            Wide::Defaults(Defaults { n: 0 })
        );
    }

    #[test]
    fn text_that_is_not_one_json_value_is_refused() {
        for bad in [
            "",
            "{",
            r#"{"n": 1} {"n": 2}"#,
            r#"{"n": 1}, "type": "Cleared""#,
        ] {
            assert!(decode_event_json::<Ev>("Added", bad).is_err(), "{bad:?}");
        }
    }
}
