use chronik_core::{
    EventId, ExpectedVersion, FeedCursor, InvalidInput, StreamId, UpcastError, Version,
};
use thiserror::Error;

/// The one error type of every store port. Adapters map their failures at the seam.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Optimistic concurrency: the stream was not at the expected version. Nothing was written.
    #[error("conflict on stream {stream}: expected {expected}, stream is at version {actual}")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version (`0` = no stream).
        actual: Version,
    },
    /// Optimistic concurrency in a multi-stream append ([`crate::EventStore::append_streams`]):
    /// these streams were not at their expected versions. Nothing was written to any stream
    /// of the append.
    #[error("conflict on {} of the append's streams: {}", .conflicts.len(), describe_conflicts(.conflicts))]
    Conflicts {
        /// Every conflicting stream, in the order the append gave them.
        conflicts: Vec<StreamConflict>,
    },
    /// The append would put this stream's new events before its previous ones in the
    /// global feed (the writing transaction is older than the stream's last writer).
    /// Nothing was written; retry the unit of work in a fresh transaction.
    #[error("stream {stream} was last written by a newer transaction; retry in a new transaction")]
    TransactionOrder {
        /// The stream.
        stream: StreamId,
    },
    /// An event id is already stored somewhere other than this append's place.
    #[error("event {event_id} is already stored elsewhere (stream {stream}, version {version})")]
    DuplicateEventId {
        /// The duplicated id.
        event_id: EventId,
        /// The stream it is stored in.
        stream: StreamId,
        /// Its version there.
        version: Version,
    },
    /// An event id is already stored at this append's place (the same stream, the same
    /// version), but with other content: another event type, schema version or payload.
    /// A retry must re-send the very events it sent; a new event needs a new id. This is a
    /// bug in the caller, never retryable. Nothing was written. (Metadata is not compared:
    /// a retry may carry other headers.)
    #[error(
        "event {event_id} is already stored at stream {stream} version {version} with other content \
         (type, schema version or payload); re-send the same event to retry, give a new event a new id"
    )]
    EventIdReused {
        /// The reused id.
        event_id: EventId,
        /// The stream it is stored in (this append's stream).
        stream: StreamId,
        /// Its version there.
        version: Version,
    },
    /// A wait for the feed to show a cursor gave up: a transaction older than the
    /// cursor's stayed open for the whole wait. Nothing is lost: the events are committed
    /// and appear once that transaction ends. `held_back_by` names it when the store can
    /// tell (PostgreSQL: the pid or prepared gid of the horizon's blocker).
    #[error(
        "the feed did not show {target} in time: its horizon is still at transaction {horizon}{}",
        held_back_suffix(.held_back_by.as_deref())
    )]
    FeedTimeout {
        /// The awaited cursor.
        target: FeedCursor,
        /// The feed's horizon when the wait gave up: every event of a transaction below it
        /// is visible.
        horizon: u64,
        /// The transaction holding the horizon, described for an operator.
        held_back_by: Option<String>,
    },
    /// Input was rejected before any I/O. Nothing was written.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// A request parameter was out of range. Nothing was written.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Something that must exist does not.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored event could not be decoded or upcast. It is never silently dropped.
    ///
    /// Names the event by id, stream and version, and by its feed cursor whenever the read
    /// that failed had it (every feed read, and stream reads of whole events; not the
    /// payload-only read a [`crate::Repository`] folds): a reader of the feed can pass over
    /// the event by resuming after that cursor. The message says what to do next.
    #[error(
        "cannot decode event {event_id} (stream {stream}, version {version}{}): {reason}; {}",
        cursor_part(.cursor.as_ref()),
        decode_next_step(.cursor.as_ref())
    )]
    Decode {
        /// The event's stream.
        stream: StreamId,
        /// Its version.
        version: Version,
        /// Its id.
        event_id: EventId,
        /// Its position in the feed, when the read had it.
        cursor: Option<FeedCursor>,
        /// Why.
        reason: String,
    },
    /// An upcast chain is invalid (raised when a registry is built or applied).
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// The caller's transaction failed on the server and is aborted, or its connection
    /// was lost: nothing written in it can commit any more. Roll it back (drop it), then
    /// retry the whole unit of work in a new transaction if [`is_retryable`].
    ///
    /// Returned instead of [`StoreError::Backend`] by the operations that run inside a
    /// caller's transaction (`PgEventStore::append_in`), so that it cannot be mistaken for
    /// a refusal that leaves the transaction usable ([`StoreError::Conflict`],
    /// [`StoreError::TransactionOrder`], [`StoreError::DuplicateEventId`],
    /// [`StoreError::EventIdReused`]): PostgreSQL answers the COMMIT of an aborted
    /// transaction with a ROLLBACK that drivers report as success, so committing after this
    /// error stores nothing while appearing to work.
    ///
    /// [`is_retryable`]: StoreError::is_retryable
    #[error("{message}: the transaction is aborted and nothing in it will commit; roll it back{}", if *retryable { " and retry the unit of work" } else { "" })]
    TransactionAborted {
        /// What failed, without credentials.
        message: String,
        /// Whether retrying the unit of work in a new transaction may succeed.
        retryable: bool,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The backend failed (I/O, pool, timeout, server error).
    #[error("backend error: {message}")]
    Backend {
        /// A description without credentials.
        message: String,
        /// Whether retrying the same operation may succeed.
        retryable: bool,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// One stream's conflict in [`StoreError::Conflicts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConflict {
    /// The stream.
    pub stream: StreamId,
    /// What the writer expected.
    pub expected: ExpectedVersion,
    /// The stream's actual version (`0` = no stream).
    pub actual: Version,
}

fn describe_conflicts(conflicts: &[StreamConflict]) -> String {
    conflicts
        .iter()
        .map(|c| {
            format!(
                "{} (expected {}, at version {})",
                c.stream, c.expected, c.actual
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreError {
    /// Whether retrying the whole unit of work (reload, decide, append) may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict { .. } | Self::Conflicts { .. } | Self::TransactionOrder { .. } => true,
            Self::Backend { retryable, .. } | Self::TransactionAborted { retryable, .. } => {
                *retryable
            }
            _ => false,
        }
    }

    /// Whether the caller's transaction is aborted by this error
    /// ([`StoreError::TransactionAborted`]): it must be rolled back, never committed.
    #[must_use]
    pub fn is_transaction_aborted(&self) -> bool {
        matches!(self, Self::TransactionAborted { .. })
    }

    /// Whether this is an optimistic-concurrency conflict, on one stream
    /// ([`StoreError::Conflict`]) or on several ([`StoreError::Conflicts`]).
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Conflicts { .. })
    }

    /// A backend error from a message.
    #[must_use]
    pub fn backend(message: impl Into<String>, retryable: bool) -> Self {
        Self::Backend {
            message: message.into(),
            retryable,
            source: None,
        }
    }
}

/// The end of [`StoreError::FeedTimeout`]'s message: who to end, when known.
fn held_back_suffix(held_back_by: Option<&str>) -> String {
    held_back_by.map_or_else(
        || "; see which transaction holds it with `chronik doctor`".to_owned(),
        |b| format!(", held back by {b}; end that transaction to unpause the feed"),
    )
}

/// `, cursor <c>` in [`StoreError::Decode`]'s message, when known.
fn cursor_part(cursor: Option<&FeedCursor>) -> String {
    cursor.map_or_else(String::new, |c| format!(", cursor {c}"))
}

/// What to do about an event that does not decode ([`StoreError::Decode`]).
fn decode_next_step(cursor: Option<&FeedCursor>) -> String {
    let fix = "events are never changed: if it is stored in an old schema, register an \
               upcaster that lifts it to what the code reads (or fix the one that failed)";
    match cursor {
        Some(c) => format!("{fix}; a feed reader can pass over it by resuming after cursor {c}"),
        None => format!("{fix}; the stream cannot be loaded until then"),
    }
}
