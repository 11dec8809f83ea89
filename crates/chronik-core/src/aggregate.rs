use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A typed domain event that travels as `(type name, schema version, JSON payload)`.
///
/// Type names must be meaningful (`OrderShipped`, never `OrderEvent3`): they are what
/// stored history is keyed by. The usual implementation is a serde enum tagged
/// `#[serde(tag = "type", content = "data")]` with [`encode_event`] / [`decode_event`].
pub trait DomainEvent: Sized + Send + Sync + 'static {
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
            E::deserialize(&tagged).map_err(|_| first)
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
}
