use std::future::Future;

use chronik_core::{DomainEvent, RecordedEvent};
use chronik_projections::{HandlerError, Typed, decode_recorded, typed_filter};
use chronik_store::FeedFilter;

use super::handler::{PgProjection, PgTransaction, ShadowProjection};

/// An exactly-once PostgreSQL read model over a service's own events: `handle` receives the
/// decoded (and, when the runner has upcasters, upcast) domain event with its envelope, and
/// the batch's transaction to write through.
///
/// Run it wrapped in [`Typed`] (the same wrapper that runs a
/// [`chronik_projections::TypedProjection`] on any store) wherever a [`PgProjection`] goes
/// (the runner, rebuilds; shadow rebuilds too when it also implements [`ShadowProjection`]).
/// Its feed filter is every type of `Self::Event::EVENT_TYPES` within
/// [`PgTypedProjection::categories`]; an event that does not decode fails the batch like any
/// handler error, named by type, stream, version and cursor, never by its values. The
/// contract of [`PgProjection`] holds: write only through `tx`; feed order.
pub trait PgTypedProjection: Send + Sync + 'static {
    /// The service's event enum.
    type Event: DomainEvent;

    /// The projection's stable name (1 to 255 bytes, no whitespace).
    fn name(&self) -> &str;

    /// Stream categories it reads, e.g. `["account"]` (default: every category).
    fn categories(&self) -> Vec<String> {
        Vec::new()
    }

    /// Applies one decoded event inside the batch's transaction.
    ///
    /// # Errors
    /// Any failure: the batch is rolled back and retried with backoff.
    fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Self::Event,
        envelope: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Deletes the read model, inside `tx`.
    ///
    /// # Errors
    /// Any failure: the rebuild stops and changes nothing.
    fn clear(
        &self,
        tx: &mut PgTransaction,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

// `Typed` is chronik-projections' wrapper: the same value runs a `TypedProjection` on any
// store and a `PgTypedProjection` exactly-once here, with one feed filter and one decoder.
impl<P: PgTypedProjection> PgProjection for Typed<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn filter(&self) -> FeedFilter {
        typed_filter::<P::Event>(self.0.categories())
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let decoded = decode_recorded::<P::Event>(event)?;
        self.0.handle(tx, decoded, event).await
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        self.0.clear(tx).await
    }
}

impl<P: ShadowProjection> ShadowProjection for Typed<P> {
    fn table(&self) -> &str {
        self.0.table()
    }

    fn with_table(&self, table: &str) -> Self {
        Self(self.0.with_table(table))
    }
}
