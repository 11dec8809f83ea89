//! What an operator reads from a store, for any domain: its streams, a table's size, where
//! the last events of the feed begin.

use chronik_core::{FeedCursor, StreamId, Version};
use chronik_store::{FeedFilter, StoreError};
use sqlx::Row as _;

use crate::PgEventStore;
use crate::config::check_identifier;
use crate::error::backend;
use crate::row::to_u64;

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
        // The category-only case of the console's search (one query for both).
        let query = crate::overview::StreamQuery {
            category: category.map(str::to_owned),
            ..crate::overview::StreamQuery::default()
        };
        self.search_streams(&query, limit).await
    }
}

impl PgEventStore {
    /// The distinct stored event types of `stream` (empty when it has no events), sorted:
    /// what an operator tool checks a new event's type against (the types of its aggregate).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn stream_event_types(&self, stream: &StreamId) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT event_type FROM {}.events WHERE stream_id = $1 ORDER BY 1",
            self.schema.quoted()
        )))
        .bind(stream.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)
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
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.\"{table}\"",
            self.schema.quoted()
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    /// Which of `tables` (unqualified names in this store's schema, e.g. the read models'
    /// a service registers) do not exist, in the order given.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn missing_tables(&self, tables: &[&str]) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT t FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) \
              WHERE to_regclass(quote_ident($2) || '.' || quote_ident(t)) IS NULL ORDER BY i",
        )
        .bind(tables)
        .bind(self.schema.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)
    }

    /// Where the last `n` visible feed events matching `filter` (and of `stream` only, when
    /// given) begin: the cursor after which exactly those events lie, in feed order, or
    /// [`FeedCursor::START`] when there are at most `n` (what `tail -n N` starts after).
    /// With `n = 0` it is the cursor of the last matching event.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::Invalid`] when a stored position is invalid.
    pub async fn feed_start_for_last(
        &self,
        filter: &FeedFilter,
        stream: Option<&StreamId>,
        n: u64,
    ) -> Result<FeedCursor, StoreError> {
        // Walks the feed index backwards from the horizon: the newest matching events first.
        // ORDER BY names the table's columns (the output column is also `transaction_id`,
        // a bigint no index has), and the filter is a CASE, which the planner does not
        // estimate as a few rows (then it sorted the whole feed), as the feed reads do.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT transaction_id::text::bigint, global_position FROM {}.events \
              WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
                AND CASE WHEN (cardinality($1::text[]) = 0 OR event_type = ANY($1)) \
                           AND (cardinality($2::text[]) = 0 OR stream_type = ANY($2)) \
                           AND ($3::text IS NULL OR stream_id = $3) \
                         THEN true ELSE false END \
              ORDER BY events.transaction_id DESC, events.global_position DESC OFFSET $4 LIMIT 1",
            self.schema.quoted()
        )))
        .bind(&filter.event_types)
        .bind(&filter.categories)
        .bind(stream.map(StreamId::as_str))
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Ok(FeedCursor::START);
        };
        let tx: i64 = row.try_get(0).map_err(backend)?;
        let pos: i64 = row.try_get(1).map_err(backend)?;
        Ok(FeedCursor::new(
            to_u64(tx, "transaction id")?,
            to_u64(pos, "position")?,
        )?)
    }
}
