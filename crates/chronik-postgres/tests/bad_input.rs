//! Bad input on PostgreSQL: the same checks as the in-memory model's
//! (`crates/chronik-memory/tests/bad_input.rs`). Every refused append (wrong expected
//! version, `Version::MAX`, an event id stored in another stream at any position of the
//! batch, a duplicate in the batch, an extended retry, an empty batch) leaves the streams
//! and the feed exactly as they were: no partial write. Hostile but valid stream ids,
//! event types, payloads (extreme numbers, quotes, control characters, nesting at the
//! limit) and headers round-trip through `jsonb` and `text` unchanged: they are bound as
//! parameters, never spliced into SQL.
//!
//! Case counts: 128 refused appends, 96 hostile round trips, in one fresh schema each.

mod support;

use chronik_core::{
    EventId, EventType, ExpectedVersion, MAX_APPEND_EVENTS, Metadata, NewEvent, StreamId,
};
use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik_store::{EventStore, StoreError};
use chronik_testkit::strategies::{
    bad_append, check_hostile_events_round_trip, check_rejected_append_changes_nothing,
    hostile_event, hostile_stream_id, new_event,
};
use futures::StreamExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::Settled;
use uuid::Uuid;

/// A store in a fresh schema of `DATABASE_URL`, and a runtime to drive it.
struct Fresh {
    rt: tokio::runtime::Runtime,
    store: PgEventStore,
}

impl Fresh {
    fn new() -> Self {
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name the PostgreSQL to test against");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let schema = SchemaName::new(format!("bad_{}", Uuid::new_v4().simple())).expect("valid");
        let store = rt
            .block_on(PgEventStore::connect_with(
                &url,
                PgStoreConfig::with_schema(schema),
            ))
            .expect("connect");
        rt.block_on(store.migrate()).expect("migrate");
        Self { rt, store }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA {} CASCADE", self.store.schema().quoted());
        let _ = self
            .rt
            .block_on(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(self.store.pool()));
    }
}

#[test]
fn refused_appends_change_nothing_on_postgres() {
    let fresh = Fresh::new();
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(prop::collection::vec(new_event(), 0..6), bad_append()),
            |(history, bad)| {
                fresh.rt.block_on(check_rejected_append_changes_nothing(
                    Settled(fresh.store.clone()),
                    history,
                    bad,
                ));
                Ok(())
            },
        )
        .expect("refused appends change nothing");
}

#[test]
fn hostile_events_round_trip_on_postgres() {
    let fresh = Fresh::new();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(
                hostile_stream_id(),
                prop::collection::vec(hostile_event(), 1..5),
            ),
            |(stream, events)| {
                // One schema for every case: a unique prefix keeps the streams apart.
                let mut unique = format!("{}", Uuid::new_v4().simple());
                for c in stream.as_str().chars() {
                    if unique.len() + c.len_utf8() > chronik_core::MAX_STREAM_ID_LEN {
                        break;
                    }
                    unique.push(c);
                }
                let stream = StreamId::new(unique).expect("still valid");
                // Fresh ids too: shrinking replays a failing case's ids.
                let events = events
                    .iter()
                    .map(|e| {
                        NewEvent::new(
                            EventId::new(Uuid::new_v4()).expect("not nil"),
                            e.event_type().clone(),
                            e.schema_version(),
                            e.payload().clone(),
                            e.metadata().clone(),
                        )
                        .expect("still valid")
                    })
                    .collect();
                fresh.rt.block_on(check_hostile_events_round_trip(
                    Settled(fresh.store.clone()),
                    stream,
                    events,
                ));
                Ok(())
            },
        )
        .expect("hostile events round-trip");
}

/// The batch limit: one event over it is refused before any I/O; the largest batch and
/// the largest payloads are stored whole.
#[test]
fn batch_and_payload_limits_are_all_or_nothing() {
    let fresh = Fresh::new();
    let event = |payload: serde_json::Value| {
        NewEvent::new(
            EventId::new(Uuid::new_v4()).expect("not nil"),
            EventType::new("Big").expect("valid"),
            1,
            payload,
            Metadata::default(),
        )
        .expect("valid")
    };
    fresh.rt.block_on(async {
        let store = &fresh.store;
        let stream = StreamId::new("big-1").expect("valid");
        let over: Vec<_> = (0..=MAX_APPEND_EVENTS)
            .map(|i| event(serde_json::json!({ "i": i })))
            .collect();
        let r = store.append(&stream, ExpectedVersion::Any, &over).await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
        assert_eq!(
            store.stream_version(&stream).await.expect("version").get(),
            0
        );
        let r = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                &over[..MAX_APPEND_EVENTS],
            )
            .await
            .expect("the largest batch is stored");
        assert_eq!(r.last_version.get(), MAX_APPEND_EVENTS as u64);
        // Payloads just under the limit, escaped characters included (6 bytes each).
        let big = event(serde_json::json!({ "s": "\u{1}".repeat(170_000) }));
        let r = store
            .append(
                &stream,
                ExpectedVersion::Exact(r.last_version),
                std::slice::from_ref(&big),
            )
            .await
            .expect("a payload at the limit is stored");
        let read = store
            .read_stream(&stream, r.last_version)
            .next()
            .await
            .expect("one event")
            .expect("read");
        assert_eq!(&read.payload, big.payload());
    });
}
