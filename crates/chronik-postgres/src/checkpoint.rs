use chronik_core::FeedCursor;
use chronik_store::{Checkpoint, CheckpointStore, StoreError, validate_projection_name};
use futures::TryStreamExt;

use crate::error::backend;
use crate::row;
use crate::store::PgEventStore;

impl CheckpointStore for PgEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        validate_projection_name(name)?;
        sqlx::query(self.sql.load_checkpoint.clone())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| row::checkpoint(&r))
            .transpose()
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        cursor: FeedCursor,
        events_processed: u64,
    ) -> Result<(), StoreError> {
        validate_projection_name(name)?;
        let (transaction, position) = (cursor.transaction_i64(), cursor.position_i64());
        let processed = i64::try_from(events_processed).map_err(|_| {
            StoreError::InvalidRequest(format!(
                "events processed {events_processed} is out of range (at most {})",
                i64::MAX
            ))
        })?;
        sqlx::query(self.sql.save_checkpoint.clone())
            .bind(name)
            .bind(transaction)
            .bind(position)
            .bind(processed)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<bool, StoreError> {
        validate_projection_name(name)?;
        Ok(sqlx::query(self.sql.delete_checkpoint.clone())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected()
            > 0)
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        sqlx::query(self.sql.list_checkpoints.clone())
            .fetch(&self.pool)
            .map_err(backend)
            .and_then(|r| futures::future::ready(row::checkpoint(&r)))
            .try_collect()
            .await
    }
}
