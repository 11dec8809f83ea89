//! A caller transaction whose commit cannot report success for an aborted transaction.

use std::fmt;
use std::ops::{Deref, DerefMut};

use chronik_core::{ExpectedVersion, NewEvent, StreamId};
use chronik_store::{AppendResult, StoreError, StreamAppend};
use sqlx::{PgConnection, Postgres};

use crate::PgEventStore;
use crate::error::{aborted, backend, parts};

/// A transaction on the store's pool ([`PgEventStore::begin`]) that appends like
/// [`PgEventStore::append_in`] and whose [`commit`](Self::commit) refuses a transaction
/// that PostgreSQL has aborted.
///
/// Why: after any error inside a transaction, PostgreSQL aborts it and answers its
/// `COMMIT` with `ROLLBACK`, and sqlx's `Transaction::commit` returns `Ok(())` for that
/// (sqlx 0.8 keeps the server's transaction status, from `ReadyForQuery`, private; its
/// public `is_in_transaction` only counts `BEGIN`s). A caller that missed one error would
/// believe that everything committed. This type closes that gap:
/// - an append through [`append`](Self::append) that fails with
///   [`StoreError::TransactionAborted`] marks the transaction aborted; later appends and
///   `commit` are refused with the same error, and nothing commits. Refusals (conflict,
///   order guard, duplicate or reused id) leave it usable, as `append_in` documents;
/// - statements the caller runs itself go through `&mut *tx` (it dereferences to the
///   connection, like sqlx's transaction). Their errors are not seen here, so once the
///   connection has been used directly, `commit` first asks the server whether the
///   transaction is still good (one more round trip, `SELECT 1`, which fails in an aborted
///   transaction) and refuses an aborted one.
///
/// Dropping it without committing rolls back, as sqlx's transaction does.
pub struct PgStoreTransaction {
    store: PgEventStore,
    tx: sqlx::Transaction<'static, Postgres>,
    /// Why it is aborted, and whether retrying the unit of work may help.
    aborted: Option<(String, bool)>,
    /// Whether the caller used the connection directly (its errors are unseen here).
    used_directly: bool,
}

impl fmt::Debug for PgStoreTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStoreTransaction")
            .field("schema", self.store.schema())
            .field("aborted", &self.aborted)
            .field("used_directly", &self.used_directly)
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// Begins a [`PgStoreTransaction`] on this store's pool.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when no connection can be had or `BEGIN` fails (retryable
    /// when the pool timed out or the server is unreachable).
    pub async fn begin(&self) -> Result<PgStoreTransaction, StoreError> {
        Ok(PgStoreTransaction {
            tx: self.pool.begin().await.map_err(backend)?,
            store: self.clone(),
            aborted: None,
            used_directly: false,
        })
    }
}

impl PgStoreTransaction {
    /// Appends inside this transaction: [`PgEventStore::append_in`] on it, with the same
    /// contract ("append first"; refusals leave the transaction usable).
    ///
    /// # Errors
    /// As `append_in`. Once the transaction is aborted, every append is refused with
    /// [`StoreError::TransactionAborted`] without being sent.
    pub async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        if let Some((why, retryable)) = &self.aborted {
            return Err(still_aborted(why, *retryable));
        }
        let result = self
            .store
            .append_in(&mut self.tx, stream, expected, events)
            .await;
        if let Err(StoreError::TransactionAborted {
            message, retryable, ..
        }) = &result
        {
            self.aborted = Some((message.clone(), *retryable));
        }
        result
    }

    /// Appends to several streams atomically, as
    /// [`PgEventStore::append_streams_in`]: a refusal leaves the transaction usable; an
    /// error that aborted it marks it aborted (see [`append`](Self::append)).
    ///
    /// # Errors
    /// As [`PgEventStore::append_streams_in`]; [`StoreError::TransactionAborted`] once the
    /// transaction is aborted.
    pub async fn append_streams(
        &mut self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        if let Some((why, retryable)) = &self.aborted {
            return Err(still_aborted(why, *retryable));
        }
        let result = self.store.append_streams_in(&mut self.tx, appends).await;
        if let Err(StoreError::TransactionAborted {
            message, retryable, ..
        }) = &result
        {
            self.aborted = Some((message.clone(), *retryable));
        }
        result
    }

    /// Whether an append of this transaction reported it aborted (errors of statements
    /// run directly on the connection are only found by [`commit`](Self::commit)).
    #[must_use]
    pub fn is_aborted(&self) -> bool {
        self.aborted.is_some()
    }

    /// Commits, unless the transaction is aborted: then it is rolled back and the commit
    /// refused.
    ///
    /// # Errors
    /// - [`StoreError::TransactionAborted`]: nothing was committed, because an append
    ///   reported the transaction aborted, or a statement run directly on the connection
    ///   failed (found by asking the server first), or the server refused the `COMMIT`
    ///   itself (a serialization failure or a deferred constraint, say);
    /// - [`StoreError::Backend`] (retryable): the connection failed during the `COMMIT`, so
    ///   whether it committed is unknown; re-sending the same appends tells (they answer
    ///   "already appended" if it did).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.aborted.is_none()
            && self.used_directly
            && let Err(e) = sqlx::query("SELECT 1").execute(&mut *self.tx).await
        {
            let (message, retryable, _) = parts(e);
            self.aborted = Some((message, retryable));
        }
        if let Some((why, retryable)) = self.aborted.take() {
            // Best effort: dropping the transaction rolls back too.
            let _ = self.tx.rollback().await;
            return Err(StoreError::TransactionAborted {
                message: format!("not committed: {why}"),
                retryable,
                source: None,
            });
        }
        self.tx.commit().await.map_err(|e| match e {
            // The server answered: it did not commit.
            e @ sqlx::Error::Database(_) => aborted(e),
            e => {
                let mut e = backend(e);
                if let StoreError::Backend { message, .. } = &mut e {
                    *message = format!("the outcome of the commit is unknown: {message}");
                }
                e
            }
        })?;
        self.store.committed();
        Ok(())
    }

    /// Rolls back.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the connection failed (the server rolls back an
    /// unfinished transaction when its session ends, so nothing commits either way).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(backend)
    }
}

fn still_aborted(why: &str, retryable: bool) -> StoreError {
    StoreError::TransactionAborted {
        message: format!("refused, an earlier error aborted this transaction: {why}"),
        retryable,
        source: None,
    }
}

impl Deref for PgStoreTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for PgStoreTransaction {
    /// The connection, for the caller's own statements in this transaction. From then on
    /// [`commit`](PgStoreTransaction::commit) checks with the server before committing.
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.used_directly = true;
        &mut self.tx
    }
}
