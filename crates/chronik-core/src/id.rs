use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::InvalidInput;

/// Longest accepted stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 255;

/// Identifies one stream (usually one aggregate instance).
///
/// Contract: non-empty, at most [`MAX_STREAM_ID_LEN`] bytes, no whitespace or control
/// characters. The *category* is the part before the first `-` (`order` for
/// `order-7f9c...`), or the whole id when there is no `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// Validates and wraps a stream id.
    ///
    /// # Errors
    /// [`InvalidInput::EmptyStreamId`], [`InvalidInput::StreamIdTooLong`] or
    /// [`InvalidInput::StreamIdCharacter`].
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidInput> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidInput::EmptyStreamId);
        }
        if id.len() > MAX_STREAM_ID_LEN {
            return Err(InvalidInput::StreamIdTooLong {
                len: id.len(),
                max: MAX_STREAM_ID_LEN,
            });
        }
        if let Some((at, _)) = id
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
        {
            return Err(InvalidInput::StreamIdCharacter { at });
        }
        Ok(Self(id))
    }

    /// Builds `<category>-<id>`, the conventional id of an aggregate instance.
    ///
    /// # Errors
    /// As [`StreamId::new`].
    pub fn for_category(category: &str, id: impl fmt::Display) -> Result<Self, InvalidInput> {
        Self::new(format!("{category}-{id}"))
    }

    /// The stream id of instance `id` of aggregate `A`: `<A::TYPE>-<id>` (the same as
    /// [`Aggregate::stream_id`](crate::Aggregate::stream_id)).
    ///
    /// # Errors
    /// As [`StreamId::new`].
    pub fn of<A: crate::Aggregate>(id: impl fmt::Display) -> Result<Self, InvalidInput> {
        A::stream_id(id)
    }

    /// The stream id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the text before the first `-`, or the whole id.
    #[must_use]
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(c, _)| c)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// Globally unique id of one event; the key of idempotent appends.
///
/// Contract: never the nil UUID. chronik never generates ids itself in this crate:
/// callers pass them in, at the edge of the system. Time-ordered ids (`Uuid::now_v7()`,
/// what `Repository` generates) keep the PostgreSQL event-id index's inserts on its newest
/// pages; random ones (`Uuid::new_v4()`) work the same, with an insert on a random page each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// Wraps a UUID.
    ///
    /// # Errors
    /// [`InvalidInput::NilEventId`] for the nil UUID.
    pub fn new(id: Uuid) -> Result<Self, InvalidInput> {
        if id.is_nil() {
            Err(InvalidInput::NilEventId)
        } else {
            Ok(Self(id))
        }
    }

    /// The UUID.
    #[must_use]
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(Uuid::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID (any value, including nil, is accepted).
            #[must_use]
            pub fn new(id: Uuid) -> Self {
                Self(id)
            }

            /// The UUID.
            #[must_use]
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_newtype!(
    /// Ties together every event caused, directly or not, by one original request.
    CorrelationId
);
uuid_newtype!(
    /// The id of the message (command or event) that directly caused an event.
    CausationId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_validated() {
        assert_eq!(StreamId::new(""), Err(InvalidInput::EmptyStreamId));
        assert!(matches!(
            StreamId::new("a".repeat(256)),
            Err(InvalidInput::StreamIdTooLong { len: 256, .. })
        ));
        assert!(StreamId::new("a".repeat(255)).is_ok());
        assert_eq!(
            StreamId::new("order 1"),
            Err(InvalidInput::StreamIdCharacter { at: 5 })
        );
        assert_eq!(
            StreamId::new("order\n"),
            Err(InvalidInput::StreamIdCharacter { at: 5 })
        );
        assert_eq!(
            StreamId::new("x\u{0}"),
            Err(InvalidInput::StreamIdCharacter { at: 1 })
        );
    }

    #[test]
    fn category_is_the_prefix() {
        let id = StreamId::new("order-7f9c-11").unwrap();
        assert_eq!(id.category(), "order");
        assert_eq!(StreamId::new("plain").unwrap().category(), "plain");
        assert_eq!(
            StreamId::for_category("order", 7).unwrap().as_str(),
            "order-7"
        );
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<StreamId>("\"\"").is_err());
        assert!(
            serde_json::from_str::<EventId>("\"00000000-0000-0000-0000-000000000000\"").is_err()
        );
        assert!(serde_json::from_str::<StreamId>("\"order-1\"").is_ok());
    }

    #[test]
    fn nil_event_id_is_rejected() {
        assert_eq!(EventId::new(Uuid::nil()), Err(InvalidInput::NilEventId));
        assert!(EventId::new(Uuid::from_u128(1)).is_ok());
    }
}
