//! The seam where sqlx errors become [`StoreError`]s.

use chronik_store::StoreError;

/// Maps a sqlx error to the port's error. Never includes a connection string.
pub(crate) fn backend(err: sqlx::Error) -> StoreError {
    let retryable = is_retryable(&err);
    let message = match &err {
        // Configuration errors may quote the connection string: say only what kind it is.
        sqlx::Error::Configuration(_) => "invalid database configuration".to_owned(),
        sqlx::Error::Database(db) => format!(
            "database error {}: {}",
            db.code().as_deref().unwrap_or("(no sqlstate)"),
            db.message()
        ),
        other => other.to_string(),
    };
    let source: Option<Box<dyn std::error::Error + Send + Sync>> = match err {
        sqlx::Error::Configuration(_) => None,
        other => Some(Box::new(other)),
    };
    StoreError::Backend {
        message,
        retryable,
        source,
    }
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(std::borrow::Cow::into_owned),
        _ => None,
    }
}

/// The constraint a database error names, if any.
pub(crate) fn constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

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
