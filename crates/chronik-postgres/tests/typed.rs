//! Typed PostgreSQL read models: the handler gets the decoded, upcast event, its envelope
//! and the batch's transaction; runs, rebuilds and shadow rebuilds go through `Typed`.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chronik_core::{ExpectedVersion, RecordedEvent, StreamId};
use chronik_postgres::{
    HandlerError, PgEventStore, PgProjectionRunner, PgTransaction, PgTypedProjection,
    RunnerBuilder as _, ShadowProjection, Typed, rebuild_shadow, wait_for_projection,
};
use chronik_store::EventStore;
use chronik_testkit::conformance::event_at as raw;
use chronik_testkit::typed::{Stock, stock_upcasters};
use serde_json::json;
use sqlx::PgPool;

/// `stock_levels (stream_id, on_hand, version)`, version-guarded upserts.
#[derive(Debug, Clone)]
struct StockLevels {
    table: String,
}

impl PgTypedProjection for StockLevels {
    type Event = Stock;

    fn name(&self) -> &str {
        "stock_levels"
    }

    fn categories(&self) -> Vec<String> {
        vec!["item".to_owned()]
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Stock,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let delta = match event {
            Stock::Received { quantity, .. } => quantity,
            Stock::Shipped { quantity, .. } => -quantity,
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{}\" (stream_id, on_hand, version) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_id) DO UPDATE SET on_hand = \"{0}\".on_hand + EXCLUDED.on_hand, \
             version = EXCLUDED.version WHERE \"{0}\".version < EXCLUDED.version",
            self.table
        )))
        .bind(envelope.stream_id.as_str())
        .bind(delta)
        .bind(envelope.version.as_i64())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM \"{}\"",
            self.table
        )))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl ShadowProjection for StockLevels {
    fn table(&self) -> &str {
        &self.table
    }
    fn with_table(&self, table: &str) -> Self {
        Self {
            table: table.to_owned(),
        }
    }
}

async fn levels(pool: &PgPool) -> Vec<(String, i64, i64)> {
    sqlx::query_as("SELECT stream_id, on_hand, version FROM stock_levels ORDER BY stream_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn typed_read_models_run_and_rebuild_on_decoded_upcast_events(pool: PgPool) {
    sqlx::query(
        "CREATE TABLE stock_levels (stream_id text PRIMARY KEY, on_hand bigint NOT NULL, \
         version bigint NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = PgEventStore::from_pool(pool.clone());
    let item = StreamId::new("item-1").unwrap();
    store
        .append(
            &item,
            ExpectedVersion::NoStream,
            &[
                raw("Received", 1, json!({ "sku": "a", "qty": 5 })),
                raw("Shipped", 1, json!({ "sku": "a", "quantity": 2 })),
            ],
        )
        .await
        .unwrap();
    let last = store
        .append(
            &StreamId::new("other-1").unwrap(),
            ExpectedVersion::NoStream,
            &[raw("Received", 2, json!({ "sku": "b", "quantity": 100 }))],
        )
        .await
        .unwrap();
    let registry = Arc::new(stock_upcasters());
    let projection = Arc::new(Typed(StockLevels {
        table: "stock_levels".into(),
    }));
    let runner = PgProjectionRunner::new(store.clone(), Arc::clone(&projection))
        .with_upcasters(Arc::clone(&registry))
        .spawn()
        .unwrap();
    wait_for_projection(&store, "stock_levels", last.cursor, Duration::from_secs(90))
        .await
        .unwrap();
    runner.stop().await.unwrap();
    assert_eq!(levels(&pool).await, vec![("item-1".to_owned(), 3, 2)]);

    let done = rebuild_shadow(&store, projection, Some(registry), 2, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(done.handled, 2, "only the item category's two events");
    assert_eq!(levels(&pool).await, vec![("item-1".to_owned(), 3, 2)]);
}
