//! Typed projections: the handler receives the service's decoded, upcast event and its
//! envelope; the feed filter comes from the event enum.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{ExpectedVersion, RecordedEvent, StreamId};
use chronik_memory::MemoryStore;
use chronik_projections::{
    HandlerError, Projection, ProjectionRunner, RunnerBuilder as _, Typed, TypedProjection,
    decode_recorded,
};
use chronik_store::EventStore;
use chronik_testkit::conformance::event_at as raw;
use chronik_testkit::typed::{Stock, stock_upcasters};
use serde_json::json;

#[derive(Debug, Default)]
struct Seen(Mutex<Vec<(Stock, String)>>);

#[async_trait]
impl TypedProjection for Seen {
    type Event = Stock;
    fn name(&self) -> &str {
        "seen"
    }
    fn categories(&self) -> Vec<String> {
        vec!["item".to_owned()]
    }
    async fn handle(&self, event: Stock, envelope: &RecordedEvent) -> Result<(), HandlerError> {
        self.0
            .lock()
            .unwrap()
            .push((event, envelope.stream_id.to_string()));
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        self.0.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test]
async fn typed_handlers_receive_decoded_upcast_events_of_their_types_and_categories() {
    let store = MemoryStore::new();
    let item = StreamId::new("item-1").unwrap();
    // v1 of `Received` called the quantity `qty`.
    store
        .append(
            &item,
            ExpectedVersion::NoStream,
            &[
                raw("Received", 1, json!({ "sku": "a", "qty": 3 })),
                raw("Shipped", 1, json!({ "sku": "a", "quantity": 1 })),
            ],
        )
        .await
        .unwrap();
    // Another category and an event type the enum does not know: filtered out.
    store
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::NoStream,
            &[raw("Received", 2, json!({ "sku": "x", "quantity": 1 }))],
        )
        .await
        .unwrap();
    let last = store
        .append(&item, ExpectedVersion::Any, &[raw("Audited", 1, json!({}))])
        .await
        .unwrap();
    let registry = stock_upcasters();
    let seen = Arc::new(Typed(Seen::default()));
    let filter = seen.filter();
    assert_eq!(filter.event_types, vec!["Received", "Shipped"]);
    assert_eq!(filter.categories, vec!["item"]);
    let handle = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(seen.clone())
        .with_upcasters(Arc::new(registry))
        .spawn()
        .unwrap();
    handle
        .wait_for("seen", last.cursor, Duration::from_secs(20))
        .await
        .unwrap();
    handle.stop().await.unwrap();
    assert_eq!(
        *seen.0.0.lock().unwrap(),
        vec![
            (
                Stock::Received {
                    sku: "a".into(),
                    quantity: 3
                },
                "item-1".to_owned()
            ),
            (
                Stock::Shipped {
                    sku: "a".into(),
                    quantity: 1
                },
                "item-1".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn an_event_that_does_not_decode_is_a_handler_error_naming_it_without_its_values() {
    let store = MemoryStore::new();
    let r = store
        .append(
            &StreamId::new("item-2").unwrap(),
            ExpectedVersion::NoStream,
            &[raw(
                "Received",
                2,
                json!({ "sku": "secret-sku", "quantity": "many" }),
            )],
        )
        .await
        .unwrap();
    let recorded = store
        .read_feed(chronik_core::FeedCursor::START, &Default::default(), 10)
        .await
        .unwrap()
        .events
        .remove(0);
    assert_eq!(recorded.cursor, r.cursor);
    let e = decode_recorded::<Stock>(&recorded).unwrap_err().to_string();
    assert!(e.contains("Received v2 of item-2"), "{e}");
    assert!(e.contains(&r.cursor.to_string()), "{e}");
    assert!(!e.contains("many") && !e.contains("secret-sku"), "{e}");
}
