use chronik_core::FeedCursor;
use chronik_store::StoreError;
use thiserror::Error;

use crate::projection::HandlerError;
use crate::status::EventRef;

/// Errors of the runner, rebuilds and read-your-writes waits.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A handler failed on an event (rebuilds stop on it; the runner retries instead).
    #[error("projection {projection} failed on {} v{} ({}): {source}", event.stream_id, event.version, event.event_id)]
    Handler {
        /// The projection.
        projection: String,
        /// The event.
        event: Box<EventRef>,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
    /// The projection could not make its handled effects durable before a checkpoint
    /// ([`crate::Projection::flush`]); a rebuild stops on it, saving nothing past them.
    #[error("projection {projection} could not flush before its checkpoint: {source}")]
    Flush {
        /// The projection.
        projection: String,
        /// The projection's error.
        #[source]
        source: HandlerError,
    },
    /// Clearing the read model failed at the start of a rebuild.
    #[error("projection {projection} could not clear its read model: {source}")]
    Clear {
        /// The projection.
        projection: String,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
    /// No projection of this name is registered with the runner.
    #[error("no projection named {0:?} is registered")]
    UnknownProjection(String),
    /// Two projections were registered under one name.
    #[error("two projections are named {0:?}")]
    DuplicateName(String),
    /// `wait_for` gave up: the projection had not reached the target in time.
    #[error("projection {projection} reached {reached}, not {target}, in time{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        /// The projection.
        projection: String,
        /// The awaited position.
        target: FeedCursor,
        /// Where it was when the wait gave up.
        reached: FeedCursor,
        /// Its last error, if any (often the reason).
        last_error: Option<String>,
    },
    /// The projection's task has stopped, so the awaited position will never be reached.
    #[error("projection {0} is stopped")]
    Stopped(String),
    /// A runner task panicked or was cancelled.
    #[error("projection {projection} task ended abnormally: {message}")]
    TaskFailed {
        /// The projection.
        projection: String,
        /// What the runtime reported.
        message: String,
    },
    /// Options out of range.
    #[error("invalid runner options: {0}")]
    InvalidOptions(&'static str),
}
