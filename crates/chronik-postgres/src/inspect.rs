//! What an operator reads from a store, for any domain: its streams, a table's size.

use chronik_core::{StreamId, Version};
use chronik_store::StoreError;
use sqlx::Row as _;

use crate::PgEventStore;
use crate::config::check_identifier;
use crate::error::backend;

/// One stream of a store, as `PgEventStore::list_streams` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream.
    pub stream_id: StreamId,
    /// Its version: the number of its events.
    pub version: Version,
}

impl PgEventStore {
    /// The streams of this store (only those of `category` when given), by id in byte
    /// order, at most `limit` of them.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a `limit` of 0; [`StoreError::Backend`];
    /// [`StoreError::Invalid`] when a stored stream id or version is invalid.
    pub async fn list_streams(
        &self,
        category: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StreamSummary>, StoreError> {
        if limit == 0 {
            return Err(StoreError::InvalidRequest(
                "a stream listing needs a limit of at least 1".to_owned(),
            ));
        }
        let rows = sqlx::query(&format!(
            "SELECT stream_id, version FROM {}.streams \
              WHERE $1::text IS NULL OR stream_type = $1 \
              ORDER BY stream_id COLLATE \"C\" LIMIT $2",
            self.schema.quoted()
        ))
        .bind(category)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(backend)?;
                let version: i64 = r.try_get(1).map_err(backend)?;
                Ok(StreamSummary {
                    stream_id: StreamId::new(id)?,
                    version: Version::new(u64::try_from(version).unwrap_or(0))?,
                })
            })
            .collect()
    }
}

impl PgEventStore {
    /// How many rows table `table` (an unqualified name in this store's schema, e.g. a
    /// read model's) holds.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] when `table` is not a plain identifier (lowercase
    /// ascii letters, digits, `_`); [`StoreError::Backend`], e.g. when it does not exist.
    pub async fn count_rows(&self, table: &str) -> Result<u64, StoreError> {
        check_identifier("table", table, &[])?;
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.\"{table}\"",
            self.schema.quoted()
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }
}
