//! The errors of the PostgreSQL projection functions.

use chronik_core::{EventId, FeedCursor};
use chronik_store::StoreError;
use thiserror::Error;

use crate::error::backend;
use chronik_projections::HandlerError;

/// Errors of the PostgreSQL projection functions.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgProjectionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A handler failed on an event (rebuilds stop on it; the runner retries instead).
    /// Names the event's feed cursor, so that a reader can resume after it, and its id,
    /// which a park decision names.
    #[error(
        "projection {projection} failed on {stream} v{version} (event {event_id}, cursor {cursor}): {source}"
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The event's stream.
        stream: String,
        /// Its version.
        version: u64,
        /// Its id.
        event_id: EventId,
        /// Its position in the feed.
        cursor: FeedCursor,
        /// The handler's failure (boxed: it keeps the error small on the happy path).
        #[source]
        source: Box<HandlerError>,
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
    /// Another session holds the projection's lock (a runner, a rebuild, or a `forget`).
    /// `pid` is the backend pid of the session holding it, read from `pg_locks` right after
    /// the lock was refused (`None` when that session let it go in between); ending that
    /// session is [`PgProjectionError::how_to_end`].
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
    /// ([`crate::rebuild_partitioned`], `chronik projections rebuild <name> --partitions N`).
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
    /// The awaited position was not reached in time.
    #[error("projection {projection} reached {reached}, not {target}, in time")]
    Timeout {
        /// The projection.
        projection: String,
        /// The awaited position.
        target: FeedCursor,
        /// Its checkpoint when the wait gave up.
        reached: FeedCursor,
    },
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

impl PgProjectionError {
    /// For [`PgProjectionError::Busy`]: the backend pid of the session holding the lock,
    /// when it could be read.
    #[must_use]
    pub fn holder_pid(&self) -> Option<i32> {
        match self {
            Self::Busy { pid, .. } => *pid,
            _ => None,
        }
    }

    /// For [`PgProjectionError::Busy`] with a known pid: the statement that ends the
    /// session holding the lock (`SELECT pg_terminate_backend(<pid>)`), shown to an
    /// operator, never run here. Ending a runner's session does not stop the runner: it
    /// takes the lock again when it is free; stop its process instead.
    #[must_use]
    pub fn how_to_end(&self) -> Option<String> {
        self.holder_pid().map(crate::horizon::terminate)
    }
}

impl From<sqlx::Error> for PgProjectionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(backend(e))
    }
}
