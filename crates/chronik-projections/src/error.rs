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
    /// Names the event's id, which a park decision names, and its feed cursor, so that a
    /// reader can resume after it (`--after`).
    #[error(
        "projection {projection} failed on {} v{} (event {}, cursor {}): {source}",
        event.stream_id, event.version, event.event_id, event.cursor
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The event (boxed: it keeps the error small on the happy path).
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
    /// A rebuild was stopped by its progress callback at a batch boundary, and cleaned up
    /// after itself: the read model is as it was before the rebuild started (an in-place
    /// rebuild's transaction is rolled back; a shadow rebuild's table and checkpoint are
    /// dropped). Running the rebuild again starts it over.
    #[error(
        "the rebuild of projection {projection} was stopped after {scanned} events; its read model is as it was before the rebuild"
    )]
    Interrupted {
        /// The projection.
        projection: String,
        /// Feed events examined before it stopped.
        scanned: u64,
    },
    /// Another session holds the projection's lock (a runner, a rebuild, or a `forget`;
    /// engines that take a lock: PostgreSQL). `pid` is the backend pid of the session
    /// holding it, read right after the lock was refused (`None` when that session let it
    /// go in between); [`ProjectionError::holder_pid`] returns it.
    #[error("projection {projection} is running in another session ({}); stop it or wait", holder(*.pid))]
    Busy {
        /// The projection (`<name>__shadow` for a shadow rebuild's lock).
        projection: String,
        /// Backend pid of the session holding its lock.
        pid: Option<i32>,
    },
    /// The projection's checkpoints were written with another number of partitions than
    /// it runs with now (`1`: a single runner). Running on would apply some events twice
    /// and skip others, so nothing runs: changing the number of partitions is a rebuild
    /// (`chronik projections rebuild <name> --partitions N`).
    #[error(
        "projection {projection} has checkpoints written by {}, but runs as {} now: changing the number of partitions is a rebuild; stop its runners, rebuild it with {wanted} (`chronik projections rebuild {projection} --partitions {wanted}`), then start them again",
        layout(*stored), layout(*wanted)
    )]
    PartitionsChanged {
        /// The projection.
        projection: String,
        /// The number of partitions its stored checkpoints were written with.
        stored: u32,
        /// The number it runs with now.
        wanted: u32,
    },
    /// No projection of this name is registered with the runner.
    #[error("no projection named {0:?} is registered")]
    UnknownProjection(String),
    /// Two projections were registered under one name.
    #[error("two projections are named {0:?}")]
    DuplicateName(String),
    /// A read-your-writes wait gave up: the projection had not reached the target in time.
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

fn layout(n: u32) -> String {
    if n == 1 {
        "a single runner".to_owned()
    } else {
        format!("{n} partitions")
    }
}

fn holder(pid: Option<i32>) -> String {
    pid.map_or_else(
        || "which let it go before its pid could be read; try again".to_owned(),
        |p| format!("pid {p}"),
    )
}

impl ProjectionError {
    /// For [`ProjectionError::Busy`]: the backend pid of the session holding the lock,
    /// when it could be read.
    #[must_use]
    pub fn holder_pid(&self) -> Option<i32> {
        match self {
            Self::Busy { pid, .. } => *pid,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chronik_core::{EventId, FeedCursor, StreamId, Version};

    use super::ProjectionError;
    use crate::{EventRef, HandlerError};

    #[test]
    fn a_handler_error_names_the_event_and_the_cursor_to_resume_after() {
        let id = EventId::new(uuid::Uuid::new_v4()).expect("not nil");
        let cursor = FeedCursor::new(7, 3).expect("a valid cursor");
        let e = ProjectionError::Handler {
            projection: "orders".to_owned(),
            event: Box::new(EventRef {
                stream_id: StreamId::new("order-1").expect("a valid stream id"),
                version: Version::new(2).expect("a valid version"),
                event_id: id,
                cursor,
            }),
            source: HandlerError::new("no such table"),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "projection orders failed on order-1 v2 (event {id}, cursor {cursor}): no such table"
            )
        );
    }
}
