use std::future::Future;

use chronik_core::RecordedEvent;
use chronik_projections::HandlerError;
use chronik_store::{FeedFilter, catch_panic};
use sqlx::Postgres;

/// The open transaction of one batch: read-model writes and the checkpoint commit together.
pub type PgTransaction = sqlx::Transaction<'static, Postgres>;

/// A read model kept in PostgreSQL, exactly once.
///
/// Contract:
/// - `name` is stable and unique in the store's schema: it keys the checkpoint and the
///   advisory lock.
/// - `handle` writes **only through `tx`**, the batch's transaction: its effects commit
///   with the checkpoint or not at all. It is called in feed order (so per-stream order).
///   Do not commit, roll back or run transaction-control statements on `tx`.
/// - Return every error of a statement on `tx`: PostgreSQL has aborted the transaction,
///   and nothing of the batch can commit. A handler that ignores one does not lose
///   events (the runner's checkpoint write then fails, and the batch is retried), but the
///   failure is then reported on a later statement. [`PgEventStore::append_in`] on `tx`
///   (a projection that emits events) reports refusals without aborting it.
///
/// [`PgEventStore::append_in`]: crate::PgEventStore::append_in
/// - `clear` deletes everything the projection wrote (through `tx`); rebuilds call it.
///
/// Native async (the runner is generic over `P`): implement with `async fn`.
pub trait PgProjection: Send + Sync + 'static {
    /// The projection's stable name (1 to 255 bytes, no whitespace).
    fn name(&self) -> &str;

    /// Which events it wants (stored type names and stream categories). Default: all.
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Applies one (upcast) event inside the batch's transaction.
    ///
    /// # Errors
    /// Any failure: the batch is rolled back and retried with backoff.
    fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Deletes the read model, inside `tx` (the rebuild resets the checkpoint in it too).
    ///
    /// # Errors
    /// Any failure: the rebuild stops and changes nothing.
    fn clear(
        &self,
        tx: &mut PgTransaction,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A projection whose read model is one table, so that it can be rebuilt into a shadow
/// copy while the live table keeps serving ([`crate::rebuild_shadow`]). Implemented by a
/// [`PgProjection`], or by a [`PgTypedProjection`](crate::PgTypedProjection) (then
/// [`Typed`](crate::Typed) forwards it).
pub trait ShadowProjection: Sized {
    /// The live table's unqualified name (in the store's schema), e.g. `account_balances`.
    fn table(&self) -> &str;

    /// The same projection, writing into `table` (same schema) instead.
    fn with_table(&self, table: &str) -> Self;
}

/// Runs `projection`'s handler on `event`, a panic included: a panic is the handler's
/// failure like any other (the batch rolls back, the event is retried and parked only by
/// a recorded decision), never the end of the runner's task.
pub(crate) async fn handle_guarded<P: PgProjection>(
    projection: &P,
    tx: &mut PgTransaction,
    event: &RecordedEvent,
) -> Result<(), HandlerError> {
    catch_panic(projection.handle(tx, event))
        .await
        .unwrap_or_else(|panic| Err(HandlerError::new(format!("handler panicked: {panic}"))))
        .map_err(reword_database_error)
}

/// A handler's database error in the store's words (`database error 57P01: terminating
/// connection ...`, not sqlx's `error returned from database: ... at line 3211`); for a
/// statement that PostgreSQL refused because an earlier one of the batch's transaction had
/// failed, that statement is not the cause, so the message says where to look. Any other
/// error is returned as it is.
fn reword_database_error(e: HandlerError) -> HandlerError {
    let Some(db) = e.cause().downcast_ref::<sqlx::Error>() else {
        return e;
    };
    let aborted = matches!(db, sqlx::Error::Database(d)
        if d.code().as_deref() == Some(crate::error::IN_FAILED_TRANSACTION));
    let message = if aborted {
        format!(
            "{}: an earlier statement of the batch's transaction failed and the handler went \
             on; return that error from `handle` instead of ignoring it",
            crate::error::parts_message(db)
        )
    } else {
        crate::error::parts_message(db)
    };
    e.with_message(message)
}

/// Whether a handler failed because its session lost the server (the server stopped or
/// restarted, an administrator ended the session, the network dropped it): nothing is
/// wrong with the event then, and the same work may succeed once the server is back.
#[must_use]
pub fn lost_connection(e: &HandlerError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.cause());
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exception; 57P01-57P03: the server is shutting
                // down or restarting, or the session was terminated.
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            };
        }
        cause = e.source();
    }
    false
}
