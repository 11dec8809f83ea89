//! Scenario 7: the in-memory adapter on appends and loads (what users unit-test with).

use chronik_core::{EventId, EventType, Metadata, NewEvent, StreamId, Version};
use chronik_memory::MemoryStore;
use chronik_store::{EventStore, Repository};
use orders::{LineAdded, Order, OrderEvent, OrderPlaced};
use serde_json::json;
use uuid::Uuid;

use crate::Plan;
use crate::harness;
use crate::report::Report;

/// The payload every append scenario writes (about 200 bytes).
pub(crate) fn payload() -> serde_json::Value {
    json!({
        "customer_id": "customer-000042",
        "total_amount": 129_900,
        "currency": "EUR",
        "lines": [{ "sku": "book-0042", "quantity": 2, "unit_price": 2_995 }, { "sku": "pen-7", "quantity": 10, "unit_price": 199 }],
        "channel": "web"
    })
}

pub(crate) fn payload_size() -> usize {
    payload().to_string().len()
}

/// One event of the append scenarios, with a time-ordered id as `Repository` generates.
pub(crate) fn new_event() -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::now_v7()).expect("v7 is never nil"),
        EventType::new("OrderPlaced").expect("valid type"),
        1,
        payload(),
        Metadata::default(),
    )
    .expect("valid event")
}

/// A long Orders history: placed, then lines.
pub(crate) fn order_history(n: usize) -> Vec<OrderEvent> {
    std::iter::once(OrderEvent::OrderPlaced(OrderPlaced {
        customer_id: "c-1".into(),
        total_amount: 100,
    }))
    .chain((1..n).map(|i| {
        OrderEvent::LineAdded(LineAdded {
            sku: format!("sku-{}", i % 97),
            quantity: 1,
            unit_price: 10,
        })
    }))
    .collect()
}

pub(crate) async fn seed_stream<S: EventStore>(
    store: &S,
    id: &StreamId,
    n: usize,
) -> anyhow::Result<()> {
    let repo = Repository::<Order, _>::new(store);
    let mut v = Version::ZERO;
    for chunk in order_history(n).chunks(1_000) {
        v = repo
            .save(id, v, chunk, &Metadata::default())
            .await?
            .last_version;
    }
    Ok(())
}

pub(crate) async fn run(plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    for &c in plan.concurrency.iter().take(2) {
        let store = MemoryStore::new();
        let stats = harness::run(c, plan.budget, move |_, _| {
            let store = store.clone();
            async move {
                let id = StreamId::for_category("order", Uuid::new_v4())?;
                store
                    .append(&id, chronik_core::ExpectedVersion::NoStream, &[new_event()])
                    .await?;
                Ok(1)
            }
        })
        .await?;
        report.push("append-1", "memory", c, stats);
    }
    let store = MemoryStore::new();
    let id = StreamId::for_category("order", Uuid::new_v4())?;
    seed_stream(&store, &id, plan.long_stream).await?;
    let stats = harness::repeat(plan.load_repeats, |_| {
        let (store, id) = (&store, &id);
        async move {
            let loaded = Repository::<Order, _>::new(store).load(id).await?;
            Ok(loaded.events_replayed)
        }
    })
    .await?;
    report.push(
        &format!("load-{}", plan.long_stream),
        "memory full replay",
        1,
        stats,
    );
    Ok(())
}
