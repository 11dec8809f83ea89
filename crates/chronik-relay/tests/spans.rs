//! The relay's spans (docs/operations.md, "Traces") against the real NATS server at
//! `NATS_URL` (as `nats.rs`; never skipped): one `chronik.relay.publish` per event naming
//! its stream, version, id and cursor, inside the runner's `chronik.projection.batch`, and
//! a `chronik.relay.flush` before each checkpoint; never the payload or a header.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use chronik_core::{EventId, EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
use chronik_memory::MemoryStore;
use chronik_projections::RunnerOptions;
use chronik_relay::async_nats::jetstream;
use chronik_relay::{NatsRelay, RelayConfig, SubjectPrefix};
use chronik_store::EventStore;
use chronik_testkit::SpanCapture;
use uuid::Uuid;

const PAYLOAD: &str = "payload-relay-span-marker-0d4e";

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[test]
fn publishes_are_spans_naming_the_event_never_its_payload() {
    let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let stream_name = format!("TEST_SPANS_{tag}");
    let capture = SpanCapture::default();
    let order = StreamId::new(format!("order-{tag}")).unwrap();
    capture.run(async {
        let store = Arc::new(MemoryStore::new());
        for n in 0..3 {
            let event = NewEvent::new(
                EventId::new(Uuid::now_v7()).unwrap(),
                EventType::new("Noted").unwrap(),
                1,
                serde_json::json!({ "secret": PAYLOAD, "n": n }),
                Metadata::default().with_header("authorization", PAYLOAD),
            )
            .unwrap();
            store
                .append(&order, ExpectedVersion::Any, &[event])
                .await
                .unwrap();
        }
        let config = RelayConfig::new(nats_url())
            .subject_prefix(SubjectPrefix::new(format!("test.s{tag}")).unwrap())
            .stream_name(stream_name.clone())
            .runner_options(RunnerOptions {
                poll_min: Duration::from_millis(5),
                poll_max: Duration::from_millis(50),
                ..RunnerOptions::default()
            });
        let relay = Arc::new(NatsRelay::connect(config).await.unwrap());
        let name = relay.projection_name().to_owned();
        let head = store.feed_head().await.unwrap().last.unwrap();
        let handle = Arc::clone(&relay).runner(store, None).spawn().unwrap();
        let waited = handle.wait_for(&name, head, Duration::from_secs(30)).await;
        handle.stop().await.unwrap();
        let js = jetstream::new(
            chronik_relay::async_nats::connect(nats_url())
                .await
                .unwrap(),
        );
        let _ = js.delete_stream(&stream_name).await;
        waited.unwrap();
    });

    let publishes = capture.named("chronik.relay.publish");
    assert_eq!(publishes.len(), 3, "{publishes:#?}");
    for (i, p) in publishes.iter().enumerate() {
        assert_eq!(p["stream"], order.as_str(), "{p:?}");
        assert_eq!(p["version"], (i + 1).to_string(), "{p:?}");
        assert_eq!(p["outcome"], "sent", "{p:?}");
        for key in ["event_id", "cursor", "jetstream", "relay", "in_flight"] {
            assert!(p.contains_key(key), "no {key}: {p:?}");
        }
    }
    let flushes = capture.named("chronik.relay.flush");
    assert!(
        flushes
            .iter()
            .any(|f| f["outcome"] == "acknowledged" && f["acknowledged"] != "0"),
        "{flushes:#?}"
    );
    let batches = capture.named("chronik.projection.batch");
    assert!(
        batches
            .iter()
            .any(|b| b["engine"] == "generic" && b.get("events").is_some_and(|e| e == "3")),
        "{batches:#?}"
    );
    assert!(
        !capture.mentions(PAYLOAD),
        "a payload or header in a span or event"
    );
}
