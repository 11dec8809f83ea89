use async_trait::async_trait;
use chronik_core::RecordedEvent;
use chronik_store::{FeedFilter, catch_panic};
use thiserror::Error;

/// Why a projection handler could not apply an event.
///
/// The runner never skips an event because of it: it retries with backoff and shows the
/// error in the projection's status until the handler succeeds or an operator parks the
/// event (see [`crate::ParkingLot`]).
#[derive(Debug, Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HandlerError {
    /// An error with a message (lowercase, no trailing period).
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Runs `projection`'s handler on `event`, a panic included: a panic is the handler's
    /// failure like any other (retried, parked only by a recorded decision), never the end
    /// of the task that called it.
    pub(crate) async fn guard(
        projection: &dyn Projection,
        event: &RecordedEvent,
    ) -> Result<(), Self> {
        catch_panic(projection.handle(event))
            .await
            .unwrap_or_else(|panic| Err(Self::new(format!("handler panicked: {panic}"))))
    }

    /// Runs `projection`'s flush, a panic included (the same way as [`HandlerError::guard`]).
    pub(crate) async fn guard_flush(projection: &dyn Projection) -> Result<(), Self> {
        catch_panic(projection.flush())
            .await
            .unwrap_or_else(|panic| Err(Self::new(format!("flush panicked: {panic}"))))
    }

    /// Wraps another error, keeping it as the source.
    #[must_use]
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}

/// A read model or side effect fed from the global feed.
///
/// Contract:
/// - `name` is stable and unique among the projections of one store: it keys the checkpoint.
/// - `handle` is called once per matching event, in feed order (so in per-stream order), and
///   **at least once**: the runner saves the checkpoint after the effect, so a crash between
///   the effect and the checkpoint replays the event. Make the effect idempotent (upserts keyed
///   by stream and version, or the event id as a dedup key). For exactly-once PostgreSQL read
///   models use the transactional runner in `chronik-postgres` instead.
/// - `clear` removes everything the projection built; a rebuild calls it before replaying.
///
/// The runner holds projections as `dyn Projection`, which is why this trait uses
/// `async-trait`.
#[async_trait]
pub trait Projection: Send + Sync + std::fmt::Debug {
    /// The projection's stable name (1 to 255 bytes, no whitespace): the checkpoint key.
    fn name(&self) -> &str;

    /// Which events it wants (by stored type name and stream category). Default: all.
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Applies one event (already upcast when the runner has a registry).
    ///
    /// # Errors
    /// Any failure; the runner retries the same event with backoff.
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError>;

    /// Makes durable the effects of every event handled so far, before the runner saves a
    /// checkpoint past them. The default does nothing: a handler whose effect is complete
    /// when `handle` returns needs no flush. A projection that pipelines its effects (the
    /// NATS relay publishes a window of events, then awaits their acknowledgements here)
    /// finishes them here, so that the checkpoint never covers an effect still in flight.
    ///
    /// # Errors
    /// Any failure: the runner saves no checkpoint, records the error in the status and
    /// calls `flush` again after a backoff (the events stay handled; the projection keeps
    /// what it must retry).
    async fn flush(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Deletes the read model so that a rebuild starts from nothing.
    ///
    /// # Errors
    /// Any failure; the rebuild stops and reports it.
    async fn clear(&self) -> Result<(), HandlerError>;
}
