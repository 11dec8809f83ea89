//! What `chronik trace` reads: the events of one correlation, and one event by id, from the
//! indexed `correlation_id` and `event_id` columns.

use chronik_core::{CorrelationId, EventId, RecordedEvent};
use chronik_store::StoreError;

use crate::PgEventStore;
use crate::error::backend;
use crate::row;

impl PgEventStore {
    /// The committed events recorded under `correlation`, in feed order, at most `limit`
    /// of them: one index lookup (`events_correlation_id_idx`), never a scan of the table.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a `limit` of 0; [`StoreError::Backend`];
    /// [`StoreError::Invalid`] for a stored row that is not a valid event.
    pub async fn correlated(
        &self,
        correlation: CorrelationId,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Err(StoreError::InvalidRequest(
                "a trace needs a limit of at least 1".to_owned(),
            ));
        }
        let rows = sqlx::query(self.sql.correlated.clone())
            .bind(correlation.as_uuid())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(row::recorded).collect()
    }

    /// The event with id `id`, if it is stored (and committed).
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::Invalid`] for a stored row that is not a valid
    /// event.
    pub async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        let row = sqlx::query(self.sql.event_by_id.clone())
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(row::recorded).transpose()
    }
}
