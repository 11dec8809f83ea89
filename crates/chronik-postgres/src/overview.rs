//! What the operator console shows at a glance, for any domain: how big the store is, how
//! fast it grows, its categories, and streams found by id prefix, a page at a time.

use chronik_core::{StreamId, Version};
use chronik_store::StoreError;
use sqlx::Row as _;

use crate::PgEventStore;
use crate::error::backend;
use crate::inspect::StreamSummary;
use crate::row::to_u64;

/// How many of the newest events [`PgEventStore::store_stats`] looks at to measure the rate.
pub const RATE_SAMPLE: u32 = 10_000;

/// One category of streams (`order` for `order-42`) and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CategoryStats {
    /// The category.
    pub category: String,
    /// How many streams it has.
    pub streams: u64,
    /// How many events its streams hold.
    pub events: u64,
}

/// The size of a store and how fast it grows ([`PgEventStore::store_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Events stored (committed), from the streams' versions: no scan of the events.
    pub events: u64,
    /// Streams stored.
    pub streams: u64,
    /// Events recorded in the last 60 seconds, counted among the newest
    /// [`RATE_SAMPLE`] of the feed (so at most that many).
    pub events_last_minute: u64,
    /// Every category, by name.
    pub categories: Vec<CategoryStats>,
}

/// Which streams [`PgEventStore::search_streams`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamQuery {
    /// Only streams whose id starts with this (matched literally, no wildcards).
    pub prefix: Option<String>,
    /// Only streams of this category.
    pub category: Option<String>,
    /// Only streams after this id (byte order): the previous page's last id.
    pub after: Option<String>,
}

impl PgEventStore {
    /// The store's size by category, its stream and event counts, and how many events were
    /// recorded in the last minute. Reads the `streams` table once and the newest
    /// [`RATE_SAMPLE`] entries of the feed index.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::Invalid`] when a stored count is negative.
    pub async fn store_stats(&self) -> Result<StoreStats, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT stream_type, count(*), coalesce(sum(version), 0)::bigint \
               FROM {}.streams GROUP BY stream_type ORDER BY stream_type COLLATE \"C\"",
            self.schema.quoted()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut categories = Vec::with_capacity(rows.len());
        for r in &rows {
            categories.push(CategoryStats {
                category: r.try_get(0).map_err(backend)?,
                streams: to_u64(r.try_get(1).map_err(backend)?, "stream count")?,
                events: to_u64(r.try_get(2).map_err(backend)?, "event count")?,
            });
        }
        let recent: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT recorded_at FROM {}.events \
               ORDER BY transaction_id DESC, global_position DESC LIMIT $1) AS newest \
              WHERE recorded_at > now() - interval '60 seconds'",
            self.schema.quoted()
        )))
        .bind(i64::from(RATE_SAMPLE))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(StoreStats {
            events: categories.iter().map(|c| c.events).sum(),
            streams: categories.iter().map(|c| c.streams).sum(),
            events_last_minute: to_u64(recent, "recent event count")?,
            categories,
        })
    }

    /// A page of streams matching `query`, by id in byte order, at most `limit` of them;
    /// pass the last id of a page as [`StreamQuery::after`] for the next one.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a `limit` of 0; [`StoreError::Backend`];
    /// [`StoreError::Invalid`] when a stored stream id or version is invalid.
    pub async fn search_streams(
        &self,
        query: &StreamQuery,
        limit: u32,
    ) -> Result<Vec<StreamSummary>, StoreError> {
        if limit == 0 {
            return Err(StoreError::InvalidRequest(
                "a stream search needs a limit of at least 1".to_owned(),
            ));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT stream_id, version FROM {}.streams \
              WHERE ($1::text IS NULL OR starts_with(stream_id, $1)) \
                AND ($2::text IS NULL OR stream_type = $2) \
                AND ($3::text IS NULL OR stream_id COLLATE \"C\" > $3) \
              ORDER BY stream_id COLLATE \"C\" LIMIT $4",
            self.schema.quoted()
        )))
        .bind(query.prefix.as_deref())
        .bind(query.category.as_deref())
        .bind(query.after.as_deref())
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
                    version: Version::new(to_u64(version, "version")?)?,
                })
            })
            .collect()
    }
}
