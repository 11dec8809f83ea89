//! The projection runner on the in-memory store (no database): the projection contract suite
//! (`chronik_testkit::projections`), and what only this engine's tests show (upcasting
//! through the example domain's registry).
// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{EventId, ExpectedVersion, RecordedEvent, StreamId};
use chronik_memory::MemoryStore;
use chronik_projections::RunnerBuilder as _;
use chronik_projections::{HandlerError, Projection, ProjectionRunner, RunnerOptions};
use chronik_store::{EventStore, FeedFilter};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

/// Records what it is handed.
#[derive(Debug, Default)]
struct Seen(Mutex<Vec<RecordedEvent>>);

#[async_trait]
impl Projection for Seen {
    fn name(&self) -> &str {
        "upcast"
    }
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        self.0.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test]
async fn handlers_see_upcast_events() {
    let store = MemoryStore::new();
    let old = chronik_core::NewEvent::new(
        EventId::new(uuid::Uuid::new_v4()).unwrap(),
        chronik_core::EventType::new("OrderPlaced").unwrap(),
        1,
        json!({ "customer_id": "c-1", "amount": 500 }),
        chronik_core::Metadata::default(),
    )
    .unwrap();
    let at = store
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::NoStream,
            &[old],
        )
        .await
        .unwrap()
        .cursor;
    let p = Arc::new(Seen::default());
    let h = ProjectionRunner::new(Arc::new(store.clone()))
        .with_options(RunnerOptions {
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_millis(20),
            ..RunnerOptions::default()
        })
        .with_upcasters(Arc::new(orders::upcasters().unwrap()))
        .with_projection(Arc::clone(&p) as Arc<dyn Projection>)
        .spawn()
        .unwrap();
    h.wait_for("upcast", at, DEADLINE).await.unwrap();
    let seen = p.0.lock().unwrap()[0].clone();
    assert_eq!(seen.schema_version, 2);
    assert_eq!(
        seen.payload,
        json!({ "customer_id": "c-1", "total_amount": 500 })
    );
    h.stop().await.unwrap();
}

/// The projection contract suite on the in-memory store.
mod contract {
    use std::sync::Arc;

    use chronik_memory::MemoryStore;
    use chronik_projections::MemoryParkingLot;
    use chronik_testkit::projections::{Generic, Ports};

    macro_rules! memory_cases {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $case() {
                let store = MemoryStore::new();
                let ports = Ports::new(store.subscribe(), Arc::new(MemoryParkingLot::new()));
                chronik_testkit::projections::$case(Generic::new(store, ports)).await;
            }
        )*};
    }

    chronik_testkit::projection_contract_cases!(memory_cases);
    chronik_testkit::generic_runner_cases!(memory_cases);
}
