use std::fmt;

use async_trait::async_trait;
use chronik_core::{DomainEvent, RecordedEvent};
use chronik_store::FeedFilter;

use crate::projection::{HandlerError, Projection};

/// A projection over a service's own events: `handle` receives the decoded (and, when the
/// runner has upcasters, upcast) domain event together with its envelope, never raw JSON.
///
/// Run it as a [`Projection`] by wrapping it in [`Typed`]. Its feed filter is every type
/// in `Self::Event::EVENT_TYPES` (all of them for a derived `DomainEvent`) within
/// [`TypedProjection::categories`]. The contract of [`Projection`] holds: at least once,
/// in feed order.
#[async_trait]
pub trait TypedProjection: Send + Sync + fmt::Debug + 'static {
    /// The service's event enum.
    type Event: DomainEvent;

    /// The projection's stable name (1 to 255 bytes, no whitespace): the checkpoint key.
    fn name(&self) -> &str;

    /// Stream categories it reads, e.g. `["order"]` (default: every category).
    fn categories(&self) -> Vec<String> {
        Vec::new()
    }

    /// Applies one decoded event; `envelope` is the recorded event it came from (stream,
    /// version, cursor, metadata, time).
    ///
    /// # Errors
    /// Any failure; the runner retries the same event with backoff.
    async fn handle(
        &self,
        event: Self::Event,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError>;

    /// Deletes the read model so that a rebuild starts from nothing.
    ///
    /// # Errors
    /// Any failure; the rebuild stops and reports it.
    async fn clear(&self) -> Result<(), HandlerError>;
}

/// The feed filter of a projection over events `E` in `categories`.
#[must_use]
pub fn typed_filter<E: DomainEvent>(categories: Vec<String>) -> FeedFilter {
    FeedFilter {
        event_types: E::EVENT_TYPES.iter().map(|t| t.name.to_owned()).collect(),
        categories,
    }
}

/// Decodes a recorded (already upcast) event as `E`; the error names the event but never
/// its payload values.
///
/// # Errors
/// A [`HandlerError`] when the payload does not decode as `E`'s variant of that type.
pub fn decode_recorded<E: DomainEvent>(event: &RecordedEvent) -> Result<E, HandlerError> {
    E::from_payload(event.event_type.as_str(), event.payload.clone()).map_err(|e| {
        HandlerError::new(format!(
            "event {} v{} of {} (id {}, cursor {}) does not decode as {}: {}",
            event.event_type,
            event.schema_version,
            event.stream_id,
            event.event_id,
            event.cursor,
            std::any::type_name::<E>(),
            chronik_core::json_error_without_values(&e)
        ))
    })
}

/// A [`TypedProjection`] run as an untyped [`Projection`]: decodes each event before its
/// handler sees it.
#[derive(Debug, Clone)]
pub struct Typed<P>(pub P);

#[async_trait]
impl<P: TypedProjection> Projection for Typed<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn filter(&self) -> FeedFilter {
        typed_filter::<P::Event>(self.0.categories())
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let decoded = decode_recorded::<P::Event>(event)?;
        self.0.handle(decoded, event).await
    }

    async fn clear(&self) -> Result<(), HandlerError> {
        self.0.clear().await
    }
}
