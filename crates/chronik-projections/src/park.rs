use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chronik_core::{EventId, StreamId, Version};
use chronik_store::StoreError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An operator's recorded decision to skip one event for one projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// The projection that will skip it.
    pub projection: String,
    /// The event to skip.
    pub event_id: EventId,
    /// Its stream, for the record.
    pub stream_id: StreamId,
    /// Its version, for the record.
    pub version: Version,
    /// Why it is parked (free text, required).
    pub reason: String,
    /// Who decided.
    pub decided_by: String,
    /// When.
    pub decided_at: DateTime<Utc>,
}

impl ParkedEvent {
    /// What every parking lot checks before it records a decision, so that no lot keeps
    /// one the others would refuse: a valid projection name, a reason, and who decided
    /// (neither blank).
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming what is missing; nothing is recorded then.
    pub fn check(&self) -> Result<(), StoreError> {
        chronik_store::validate_projection_name(&self.projection)?;
        if self.reason.trim().is_empty() {
            return Err(StoreError::InvalidRequest(
                "a park decision needs a reason: say why the event is skipped".to_owned(),
            ));
        }
        if self.decided_by.trim().is_empty() {
            return Err(StoreError::InvalidRequest(
                "a park decision needs to say who decided it".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Where park decisions are recorded.
///
/// Contract: the runner skips a failing event **only** when `is_parked` says a decision was
/// recorded for exactly that projection and event id; without one it retries forever.
/// Decisions are never removed by the runner.
#[async_trait]
pub trait ParkingLot: Send + Sync + std::fmt::Debug {
    /// Records a decision (idempotent per projection and event id: the first one is kept).
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] when [`ParkedEvent::check`] refuses it; any error when
    /// it cannot be stored. Either way nothing is parked.
    async fn park(&self, decision: ParkedEvent) -> Result<(), StoreError>;

    /// Whether `event_id` is parked for `projection`.
    ///
    /// # Errors
    /// When the store cannot answer; the runner then keeps retrying the event.
    async fn is_parked(&self, projection: &str, event_id: EventId) -> Result<bool, StoreError>;

    /// Every decision for `projection`, oldest first.
    ///
    /// # Errors
    /// When the store cannot answer.
    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, StoreError>;
}

/// Park decisions kept in memory (tests, single-process services).
#[derive(Debug, Default)]
pub struct MemoryParkingLot {
    decisions: Mutex<Vec<ParkedEvent>>,
}

impl MemoryParkingLot {
    /// An empty lot.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ParkingLot for MemoryParkingLot {
    async fn park(&self, decision: ParkedEvent) -> Result<(), StoreError> {
        decision.check()?;
        let mut d = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !d
            .iter()
            .any(|p| p.projection == decision.projection && p.event_id == decision.event_id)
        {
            d.push(decision);
        }
        Ok(())
    }

    async fn is_parked(&self, projection: &str, event_id: EventId) -> Result<bool, StoreError> {
        let d = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(d.iter()
            .any(|p| p.projection == projection && p.event_id == event_id))
    }

    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        let d = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(d.iter()
            .filter(|p| p.projection == projection)
            .cloned()
            .collect())
    }
}
