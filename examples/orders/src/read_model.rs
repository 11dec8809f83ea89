//! The Orders read model on PostgreSQL: one `order_summaries` row per order, kept
//! exactly once by [`OrderProjection`] on a `PgProjectionRunner`.
//!
//! The table belongs to this example, not to chronik's schema: [`OrderProjection::create_table`]
//! creates it (idempotently) next to the store's tables. chronik's migration 0006 removed
//! it from the library's migrations; on a database where it already holds rows, that
//! migration leaves it as it is, and this definition matches it.

use chronik::postgres::sqlx::{self, PgExecutor, Row as _};
use chronik::postgres::{HandlerError, PgProjection, PgTransaction, ShadowProjection};
use chronik::{FeedFilter, PgEventStore, RecordedEvent, SchemaName};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// One row of the Orders read model (`order_summaries`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSummary {
    /// The order's stream id (`order-...`).
    pub order_id: String,
    /// Who placed it.
    pub customer_id: String,
    /// `placed`, `shipped` or `cancelled`.
    pub status: String,
    /// Placed amount plus every line, in cents.
    pub total_amount: i64,
    /// Lines added.
    pub lines: i64,
    /// Carrier once shipped.
    pub carrier: Option<String>,
    /// When it was placed (the event's recording time).
    pub placed_at: DateTime<Utc>,
    /// Last applied stream version.
    pub version: i64,
}

/// The seed's `OrderProjection`, exactly once: `order_summaries` rows kept by idempotent,
/// version-guarded upserts inside the runner's batch transaction.
///
/// Reads `OrderPlaced` (v2: `customer_id`, `total_amount`; run the runner with the Orders
/// upcasters so v1 events arrive lifted), `LineAdded`, `OrderShipped`, `OrderCancelled` of
/// streams in category `order`. Every write is guarded by `version < $event_version`, so
/// a replayed event changes nothing.
#[derive(Debug, Clone)]
pub struct OrderProjection {
    schema: SchemaName,
    table: String,
    placed: String,
    line: String,
    status: String,
    clear: String,
    select: String,
}

fn str_field<'a>(p: &'a Value, key: &str) -> Result<&'a str, HandlerError> {
    p.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| HandlerError::new(format!("payload has no string `{key}`")))
}

fn int_field(p: &Value, key: &str) -> Result<i64, HandlerError> {
    p.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| HandlerError::new(format!("payload has no integer `{key}`")))
}

impl OrderProjection {
    /// The projection's name (its checkpoint key).
    pub const NAME: &'static str = "orders";
    /// The live table.
    pub const TABLE: &'static str = "order_summaries";

    /// The projection over `schema`'s `order_summaries`.
    #[must_use]
    pub fn new(schema: &SchemaName) -> Self {
        Self::for_table(schema, Self::TABLE)
    }

    /// Creates `order_summaries` in `store`'s schema unless it exists (run it after
    /// `store.migrate()`, before starting the runner). Idempotent.
    ///
    /// # Errors
    /// Database errors (e.g. the role may not create tables in the schema).
    pub async fn create_table(store: &PgEventStore) -> Result<(), sqlx::Error> {
        let s = store.schema().quoted();
        let t = Self::TABLE;
        // `IF NOT EXISTS`: running it again changes nothing. Two processes creating it at
        // the same moment can still collide in the catalog; the loser gets an error and
        // succeeds when it runs again.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {s}.\"{t}\" (\
                order_id     text        NOT NULL,\
                customer_id  text        NOT NULL,\
                status       text        NOT NULL CHECK (status IN ('placed', 'shipped', 'cancelled')),\
                total_amount bigint      NOT NULL,\
                lines        bigint      NOT NULL DEFAULT 0 CHECK (lines >= 0),\
                carrier      text,\
                placed_at    timestamptz NOT NULL,\
                updated_at   timestamptz NOT NULL,\
                version      bigint      NOT NULL CHECK (version >= 1),\
                CONSTRAINT {t}_pkey PRIMARY KEY (order_id))"
        )))
        .execute(store.pool())
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE INDEX IF NOT EXISTS {t}_customer_idx ON {s}.\"{t}\" (customer_id)"
        )))
        .execute(store.pool())
        .await?;
        Ok(())
    }

    /// How many rows the table holds.
    ///
    /// # Errors
    /// Database errors (e.g. the table does not exist).
    pub async fn count<'e>(&self, executor: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.\"{}\"",
            self.schema.quoted(),
            self.table
        )))
        .fetch_one(executor)
        .await
    }

    fn for_table(schema: &SchemaName, table: &str) -> Self {
        // `table` comes from `TABLE` or a shadow name derived from it: plain identifiers.
        let t = format!("{}.\"{table}\"", schema.quoted());
        Self {
            schema: schema.clone(),
            table: table.to_owned(),
            placed: format!(
                "INSERT INTO {t} (order_id, customer_id, status, total_amount, lines, \
                                  placed_at, updated_at, version) \
                 VALUES ($1, $2, 'placed', $3, 0, $4, $4, $5) \
                 ON CONFLICT (order_id) DO NOTHING"
            ),
            line: format!(
                "UPDATE {t} SET total_amount = total_amount + $2, lines = lines + 1, \
                                updated_at = $3, version = $4 \
                  WHERE order_id = $1 AND version < $4"
            ),
            status: format!(
                "UPDATE {t} SET status = $2, carrier = coalesce($3, carrier), \
                                updated_at = $4, version = $5 \
                  WHERE order_id = $1 AND version < $5"
            ),
            clear: format!("DELETE FROM {t}"),
            select: format!(
                "SELECT order_id, customer_id, status, total_amount, lines, carrier, \
                        placed_at, version FROM {t}"
            ),
        }
    }

    /// The rows of the orders `ids` (stream ids), oldest placed first (ties by order id);
    /// an id without a row is left out.
    ///
    /// # Errors
    /// Database errors.
    pub async fn of_orders<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        ids: &[String],
    ) -> Result<Vec<OrderSummary>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} WHERE order_id = ANY($1) ORDER BY placed_at, order_id COLLATE \"C\"",
            self.select
        )))
        .bind(ids)
        .fetch_all(executor)
        .await?;
        rows.iter().map(summary).collect()
    }

    /// Every row, ordered by order id (for tests, demos and comparisons).
    ///
    /// # Errors
    /// Database errors.
    pub async fn all<'e>(
        &self,
        executor: impl PgExecutor<'e>,
    ) -> Result<Vec<OrderSummary>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} ORDER BY order_id COLLATE \"C\"",
            self.select
        )))
        .fetch_all(executor)
        .await?;
        rows.iter().map(summary).collect()
    }
}

/// A row of `select`.
fn summary(r: &sqlx::postgres::PgRow) -> Result<OrderSummary, sqlx::Error> {
    Ok(OrderSummary {
        order_id: r.try_get(0)?,
        customer_id: r.try_get(1)?,
        status: r.try_get(2)?,
        total_amount: r.try_get(3)?,
        lines: r.try_get(4)?,
        carrier: r.try_get(5)?,
        placed_at: r.try_get(6)?,
        version: r.try_get(7)?,
    })
}

impl PgProjection for OrderProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter {
            event_types: ["OrderPlaced", "LineAdded", "OrderShipped", "OrderCancelled"]
                .map(String::from)
                .to_vec(),
            categories: vec!["order".to_owned()],
        }
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let id = event.stream_id.as_str();
        let version = event.version.as_i64();
        let at = event.recorded_at;
        let p = &event.payload;
        match event.event_type.as_str() {
            "OrderPlaced" => {
                sqlx::query(sqlx::AssertSqlSafe(self.placed.as_str()))
                    .bind(id)
                    .bind(str_field(p, "customer_id")?)
                    .bind(int_field(p, "total_amount")?)
                    .bind(at)
                    .bind(version)
                    .execute(&mut **tx)
                    .await?;
            }
            "LineAdded" => {
                let amount = int_field(p, "quantity")?
                    .checked_mul(int_field(p, "unit_price")?)
                    .ok_or_else(|| HandlerError::new("line amount overflows"))?;
                sqlx::query(sqlx::AssertSqlSafe(self.line.as_str()))
                    .bind(id)
                    .bind(amount)
                    .bind(at)
                    .bind(version)
                    .execute(&mut **tx)
                    .await?;
            }
            "OrderShipped" | "OrderCancelled" => {
                let (status, carrier) = if event.event_type.as_str() == "OrderShipped" {
                    ("shipped", Some(str_field(p, "carrier")?))
                } else {
                    ("cancelled", None)
                };
                sqlx::query(sqlx::AssertSqlSafe(self.status.as_str()))
                    .bind(id)
                    .bind(status)
                    .bind(carrier)
                    .bind(at)
                    .bind(version)
                    .execute(&mut **tx)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(sqlx::AssertSqlSafe(self.clear.as_str()))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl ShadowProjection for OrderProjection {
    fn table(&self) -> &str {
        &self.table
    }

    fn with_table(&self, table: &str) -> Self {
        Self::for_table(&self.schema, table)
    }
}
