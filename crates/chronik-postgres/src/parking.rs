//! chronik-projections' [`ParkingLot`] on PostgreSQL (issue 15): park decisions in
//! `projection_parked`, the table the exactly-once runner and the operator commands use, so
//! they survive restarts and `chronik projections parked | retry | drop-parked` see them.

use async_trait::async_trait;
use chronik_core::EventId;
use chronik_projections::{ParkedEvent, ParkingLot};
use chronik_store::StoreError;

use crate::PgEventStore;
use crate::error::backend;
use crate::projection::ProjectionSql;

/// Durable park decisions for [`ProjectionRunner`](chronik_projections::ProjectionRunner)
/// (`with_parking(Arc::new(PgParkingLot::new(store)))`).
///
/// Contract, beyond the port's: a decision is a row of `projection_parked` keyed by
/// projection name and event id (the first decision is kept); a decision an operator
/// resolved as `retried` no longer skips its event, one resolved as `dropped` still does
/// (as for the exactly-once runner); rows are never deleted. [`ParkingLot::parked`] lists
/// every decision, resolved ones included, oldest first.
#[derive(Debug, Clone)]
pub struct PgParkingLot {
    store: PgEventStore,
    sql: std::sync::Arc<ProjectionSql>,
}

impl PgParkingLot {
    /// Decisions in `store`'s schema.
    #[must_use]
    pub fn new(store: PgEventStore) -> Self {
        Self {
            sql: std::sync::Arc::new(ProjectionSql::new(store.schema())),
            store,
        }
    }
}

#[async_trait]
impl ParkingLot for PgParkingLot {
    async fn park(&self, decision: ParkedEvent) -> Result<(), StoreError> {
        crate::park_event(&self.store, &decision).await
    }

    async fn is_parked(&self, projection: &str, event_id: EventId) -> Result<bool, StoreError> {
        sqlx::query_scalar(self.sql.is_parked.clone())
            .bind(projection)
            .bind(event_id.as_uuid())
            .fetch_one(self.store.pool())
            .await
            .map_err(backend)
    }

    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        crate::parked_events(&self.store, projection).await
    }
}
