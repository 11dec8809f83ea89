//! A runner's options and the wake-up it listens for.

use chronik_projections::RunnerOptions;
use chronik_store::StoreError;
use sqlx::PgPool;

use crate::error::backend;

pub(crate) fn validate(options: &RunnerOptions) -> Result<(), StoreError> {
    options
        .validate()
        .map_err(|e| StoreError::InvalidRequest(e.to_string()))
}

/// Sends a wake-up on `channel` for runners that `LISTEN` on it. Call it **after** the
/// append's transaction has committed, never inside it: `pg_notify` in the append
/// transaction serializes every commit on a global lock.
///
/// # Errors
/// [`StoreError::Backend`].
pub async fn notify_feed(pool: &PgPool, channel: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(())
}
