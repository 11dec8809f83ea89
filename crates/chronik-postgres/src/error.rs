//! The seam where sqlx errors become [`StoreError`]s.

use chronik_store::StoreError;

/// Maps a sqlx error to the port's error. Never includes a connection string.
pub(crate) fn backend(err: sqlx::Error) -> StoreError {
    let (message, retryable, source) = parts(err);
    StoreError::Backend {
        message,
        retryable,
        source,
    }
}

/// Maps a sqlx error from a statement run inside a caller's transaction: the server
/// aborted that transaction (or the connection is gone), so the error says so
/// ([`StoreError::TransactionAborted`]).
pub(crate) fn aborted(err: sqlx::Error) -> StoreError {
    let (message, retryable, source) = parts(err);
    StoreError::TransactionAborted {
        message,
        retryable,
        source,
    }
}

type Source = Option<Box<dyn std::error::Error + Send + Sync>>;

/// A sqlx error's message (without credentials), whether retrying may help, and the error.
pub(crate) fn parts(err: sqlx::Error) -> (String, bool, Source) {
    let retryable = is_retryable(&err);
    let message = parts_message(&err);
    let source: Source = match err {
        sqlx::Error::Configuration(_) => None,
        other => Some(Box::new(other)),
    };
    (message, retryable, source)
}

/// The message of [`parts`].
pub(crate) fn parts_message(err: &sqlx::Error) -> String {
    match err {
        // Configuration errors may quote the connection string: say only what kind it is.
        sqlx::Error::Configuration(_) => "invalid database configuration".to_owned(),
        // The statement did not fail by itself: an earlier one in the same transaction
        // did, and its error was ignored (by a caller, or a projection handler).
        sqlx::Error::Database(db) if db.code().as_deref() == Some(IN_FAILED_TRANSACTION) => {
            format!(
                "database error {IN_FAILED_TRANSACTION}: {}: an earlier statement of this \
                 transaction failed and its error was not acted on; the transaction can only \
                 be rolled back",
                db.message()
            )
        }
        sqlx::Error::Database(db) => format!(
            "database error {}: {}",
            db.code().as_deref().unwrap_or("(no sqlstate)"),
            db.message()
        ),
        other => other.to_string(),
    }
}

/// SQLSTATE `in_failed_sql_transaction`: a statement sent to an aborted transaction.
pub(crate) const IN_FAILED_TRANSACTION: &str = "25P02";

/// Whether repeating the same operation may succeed: lost connections, pool and statement
/// timeouts, serialization failures, deadlocks, a server that is starting or stopping.
pub(crate) fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources (too many connections)
                || matches!(
                    code.as_ref(),
                    "40001" // serialization_failure
                        | "40P01" // deadlock_detected
                        | "55P03" // lock_not_available (lock_timeout)
                        | "57014" // query_canceled (statement_timeout)
                        | "57P01" // admin_shutdown
                        | "57P02" // crash_shutdown
                        | "57P03" // cannot_connect_now
                )
        }),
        _ => false,
    }
}
