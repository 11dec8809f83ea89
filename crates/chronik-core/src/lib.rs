//! Pure event-sourcing domain for chronik.
//!
//! This crate knows identifiers, versions, the event envelope, the [`Aggregate`] contract,
//! upcasting, and the snapshot and retry policies. It performs no I/O: no clock, no random
//! numbers, no threads, no database. Time and ids are always passed in by the caller.
//!
//! **Invariant:** every value type here validates in its constructor, so an invalid
//! `StreamId`, `Version` or `NewEvent` cannot exist.

// So that `::chronik_core::...`, which `#[derive(DomainEvent)]` emits, resolves here too.
extern crate self as chronik_core;

mod aggregate;
mod cursor;
mod error;
mod event;
mod id;
mod one_of;
mod retry;
mod snapshot;
mod upcast;
mod version;

pub use aggregate::{
    Aggregate, DomainEvent, EncodeError, EncodedEvent, EventTypeInfo, SnapshotState, decode_event,
    decode_event_json, encode_event, encode_tagged,
};
/// `#[derive(DomainEvent)]` for a serde enum tagged `#[serde(tag = "type", content = "data")]`
/// (see the trait [`DomainEvent`]).
pub use chronik_macros::DomainEvent;
pub use cursor::FeedCursor;
pub use error::{InvalidInput, UpcastError, json_error_without_values};
pub use event::{
    EventType, MAX_APPEND_EVENTS, MAX_EVENT_TYPE_LEN, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH, Metadata, NewEvent, RecordedEvent, validate_batch,
};
pub use id::{CausationId, CorrelationId, EventId, MAX_STREAM_ID_LEN, StreamId};
pub use one_of::{Either, OneOf, OneOfError};
pub use retry::{JitterSource, RetryPolicy};
pub use snapshot::SnapshotPolicy;
pub use upcast::{Upcaster, UpcasterRegistry, UpcasterRegistryBuilder};
pub use version::{ExpectedVersion, Version};

/// What `#[derive(DomainEvent)]` expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}
