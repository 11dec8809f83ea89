//! chronik-projections' [`ParkingLot`] on PostgreSQL (issue 15): park decisions in
//! `projection_parked`, the table the exactly-once runner and the operator commands use, so
//! they survive restarts and `chronik projections parked | retry | drop-parked` see them.

use async_trait::async_trait;
use chronik_core::EventId;
use chronik_projections::{ParkedEvent, ParkingLot};
use chronik_store::{StoreError, validate_projection_name};
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use uuid::Uuid;

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
        validate_projection_name(&decision.projection)?;
        if decision.reason.trim().is_empty() {
            return Err(StoreError::InvalidRequest(
                "a park decision needs a reason".to_owned(),
            ));
        }
        if decision.decided_by.trim().is_empty() {
            return Err(StoreError::InvalidRequest(
                "a park decision needs to say who decided".to_owned(),
            ));
        }
        sqlx::query(self.sql.park.clone())
            .bind(&decision.projection)
            .bind(decision.event_id.as_uuid())
            .bind(decision.stream_id.as_str())
            .bind(decision.version.as_i64())
            .bind(&decision.reason)
            .bind(&decision.decided_by)
            .execute(self.store.pool())
            .await
            .map_err(backend)?;
        Ok(())
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
        validate_projection_name(projection)?;
        let rows = sqlx::query(self.sql.parked.clone())
            .bind(projection)
            .fetch_all(self.store.pool())
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let id: Uuid = r.try_get(0).map_err(backend)?;
                let stream: String = r.try_get(1).map_err(backend)?;
                let version: i64 = r.try_get(2).map_err(backend)?;
                let decided_at: DateTime<Utc> = r.try_get(5).map_err(backend)?;
                let stored = |what: &str, e: &dyn std::fmt::Display| {
                    StoreError::backend(format!("stored park decision: {what}: {e}"), false)
                };
                Ok(ParkedEvent {
                    projection: projection.to_owned(),
                    event_id: EventId::new(id).map_err(|e| stored("event id", &e))?,
                    stream_id: chronik_core::StreamId::new(stream)
                        .map_err(|e| stored("stream id", &e))?,
                    version: chronik_core::Version::from_i64(version)
                        .map_err(|e| stored("version", &e))?,
                    reason: r.try_get(3).map_err(backend)?,
                    decided_by: r.try_get(4).map_err(backend)?,
                    decided_at,
                })
            })
            .collect()
    }
}
