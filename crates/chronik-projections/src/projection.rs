use async_trait::async_trait;
use chronik_core::RecordedEvent;
use chronik_store::{FeedFilter, catch_panic};
use std::error::Error as StdError;
use std::fmt;
use std::ops::Deref;

/// Why a projection handler could not apply an event: the one handler error of every
/// projection backend (the exactly-once PostgreSQL runner's handlers return it too).
///
/// The runner never skips an event because of it: it retries with backoff and shows the
/// error in the projection's status until the handler succeeds or an operator parks the
/// event (see [`crate::ParkingLot`]).
///
/// Like `anyhow::Error`, any error converts into it with `?` (it keeps the error as its
/// cause: [`HandlerError::cause`], or through `Deref` to `dyn Error`, which is also how it
/// serves as a `#[source]`). That is why it does not implement `std::error::Error` itself.
/// What status and logs show is its message: the error's text, except for a
/// `serde_json::Error`, whose message names where the payload went wrong but never the
/// payload's values (the cause keeps them for a caller that asks).
pub struct HandlerError {
    message: String,
    cause: Box<dyn StdError + Send + Sync + 'static>,
}

/// The cause of a [`HandlerError`] made from a message alone.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

impl HandlerError {
    /// An error with a message (lowercase, no trailing period).
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            cause: Box::new(Message(message.clone())),
            message,
        }
    }

    /// Wraps another error, keeping it as the cause (the same as `HandlerError::from`).
    #[must_use]
    pub fn from_error(error: impl StdError + Send + Sync + 'static) -> Self {
        Self::from(error)
    }

    /// The same error, shown with `message` instead (the cause is kept): for a backend
    /// that knows more about a failure than the error's own text says.
    #[must_use]
    pub fn with_message(self, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cause: self.cause,
        }
    }

    /// What the error was made from: the converted error, or the message for
    /// [`HandlerError::new`]. `downcast_ref` on it finds the original type.
    #[must_use]
    pub fn cause(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.cause
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
}

impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let cause: Box<dyn StdError + Send + Sync + 'static> = Box::new(error);
        let message = match cause.downcast_ref::<serde_json::Error>() {
            Some(json) => format!(
                "payload does not decode: {}",
                chronik_core::json_error_without_values(json)
            ),
            None => cause.to_string(),
        };
        Self { message, cause }
    }
}

impl Deref for HandlerError {
    type Target = dyn StdError + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.cause
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message only: a cause's Debug can hold a payload's values.
        f.debug_tuple("HandlerError").field(&self.message).finish()
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

#[cfg(test)]
mod tests {
    use super::HandlerError;
    use crate::ProjectionError;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Placed {
        total: u64,
    }

    fn decode(payload: &str) -> Result<Placed, HandlerError> {
        Ok(serde_json::from_str(payload)?)
    }

    #[test]
    fn a_payload_error_names_the_place_but_never_the_values() {
        let e = decode(r#"{"total": "4111-1111-1111-1111"}"#).expect_err("a string is no total");
        let shown = e.to_string();
        assert!(shown.starts_with("payload does not decode: "), "{shown}");
        assert!(
            !shown.contains("4111"),
            "no payload value in the message: {shown}"
        );
        assert!(
            !format!("{e:?}").contains("4111"),
            "nor in its Debug: {e:?}"
        );
        let cause = e
            .cause()
            .downcast_ref::<serde_json::Error>()
            .expect("the cause is the serde error");
        assert!(cause.is_data());
    }

    #[test]
    fn any_error_converts_with_its_text_and_stays_the_cause() {
        fn open() -> Result<(), HandlerError> {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such table",
            ))?;
            Ok(())
        }
        let e = open().expect_err("fails");
        assert_eq!(e.to_string(), "no such table");
        assert_eq!(
            e.cause()
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        let explained = e.with_message("the read model's table is missing: run the migrations");
        assert_eq!(
            explained.to_string(),
            "the read model's table is missing: run the migrations"
        );
        assert!(
            explained.cause().downcast_ref::<std::io::Error>().is_some(),
            "cause kept"
        );
    }

    #[test]
    fn it_serves_as_the_source_of_a_projection_error() {
        let e = ProjectionError::Flush {
            projection: "orders".to_owned(),
            source: HandlerError::new("broker unreachable"),
        };
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "broker unreachable");
        assert!(
            std::error::Error::source(source).is_none(),
            "a message has no further cause"
        );
    }
}
