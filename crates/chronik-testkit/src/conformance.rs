//! The conformance suite: every adapter must pass every case.
//!
//! Each case is a plain `async fn case<S: Store>(store: S)` that panics on a violation.
//! [`conformance_cases!`](crate::conformance_cases) lists them once; an adapter's tests
//! instantiate them with a macro of their own that knows how to build a fresh store:
//!
//! ```text
//! macro_rules! memory_cases {
//!     ($($case:ident),* $(,)?) => {$(
//!         #[tokio::test]
//!         async fn $case() { chronik_testkit::conformance::$case(MemoryStore::new()).await }
//!     )*};
//! }
//! chronik_testkit::conformance_cases!(memory_cases);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, InvalidInput, Metadata, NewEvent,
    RecordedEvent, StreamId, Version,
};
use chronik_store::{CheckpointStore, EventStore, FeedFilter, SnapshotStore, StoreError};
use futures::TryStreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

mod multi;
mod retry;
pub use multi::*;
pub use retry::*;

/// Everything a conformance case needs from an adapter.
pub trait Store:
    EventStore + SnapshotStore + CheckpointStore + Clone + Send + Sync + 'static
{
}
impl<T: EventStore + SnapshotStore + CheckpointStore + Clone + Send + Sync + 'static> Store for T {}

/// Lists every conformance case, once, by calling `$m! { case, case, ... }`.
#[macro_export]
macro_rules! conformance_cases {
    ($m:ident) => {
        $m! {
            append_then_read_back,
            read_stream_from_a_version,
            read_payloads_agree_with_read_stream,
            missing_stream_is_empty,
            expected_version_modes,
            conflict_reports_expected_and_actual,
            conflicting_append_writes_nothing,
            idempotent_retry_returns_already_appended,
            same_ids_elsewhere_are_rejected,
            reused_ids_with_other_content_are_rejected,
            invalid_batches_are_rejected_and_write_nothing,
            concurrent_appends_have_one_winner_per_version,
            concurrent_appends_to_many_streams_are_all_durable,
            feed_is_in_commit_order_and_resumable,
            feed_filters_by_type_and_category,
            feed_limit_is_validated,
            feed_cursor_range,
            feed_head_and_count_after,
            metadata_round_trips,
            snapshots_replace_and_filter_by_schema,
            snapshots_delete_by_category,
            checkpoints_round_trip,
            checkpoint_names_are_validated,
            multi_stream_append_writes_every_part_in_one_transaction,
            multi_stream_conflict_names_every_stream_and_writes_nothing,
            multi_stream_retry_is_idempotent,
            multi_stream_invalid_input_writes_nothing,
            concurrent_multi_stream_appends_in_opposite_orders_all_finish,
            a_lost_race_is_decided_again_unless_the_command_is_not_retry_safe,
            a_command_that_is_not_retry_safe_is_never_decided_on_a_cached_state,
            a_command_across_streams_is_decided_again_unless_one_is_not_retry_safe,
            a_reaction_is_decided_again_unless_its_command_is_not_retry_safe,
        }
    };
}

/// A valid event with a fresh id, at schema version 1.
///
/// # Panics
/// Never for the fixed inputs used here.
#[must_use]
pub fn event(event_type: &str, payload: Value) -> NewEvent {
    event_at(event_type, 1, payload)
}

/// A valid event with a fresh id, as written at `schema_version` (to append old versions
/// for upcasters, or payloads that do not decode).
///
/// # Panics
/// When `event_type` is not a valid event type or `schema_version` is 0.
#[must_use]
pub fn event_at(event_type: &str, schema_version: u32, payload: Value) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).expect("v4 is never nil"),
        EventType::new(event_type).expect("valid type"),
        schema_version,
        payload,
        Metadata::default(),
    )
    .expect("valid event")
}

/// `n` valid events numbered in their payload.
#[must_use]
pub fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event("Numbered", json!({ "n": i })))
        .collect()
}

/// A fresh stream id in `category`.
///
/// # Panics
/// Never: the id is always valid.
#[must_use]
pub fn stream(category: &str) -> StreamId {
    StreamId::for_category(category, Uuid::new_v4()).expect("valid stream id")
}

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

async fn read_all<S: Store>(store: &S, id: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(id, Version::ZERO)
        .try_collect()
        .await
        .expect("read stream")
}

async fn read_whole_feed<S: Store>(store: &S, filter: &FeedFilter) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut after = FeedCursor::START;
    loop {
        let page = store.read_feed(after, filter, 7).await.expect("read feed");
        if page.events.is_empty() {
            return out;
        }
        assert!(page.next > after, "feed cursor must advance");
        after = page.next;
        out.extend(page.events);
    }
}

/// Appended events read back unchanged, numbered from 1.
pub async fn append_then_read_back<S: Store>(store: S) {
    let id = stream("order");
    let batch = events(3);
    let r = store
        .append(&id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    assert_eq!(
        (r.first_version, r.last_version, r.already_appended),
        (v(1), v(3), false)
    );
    let read = read_all(&store, &id).await;
    assert_eq!(read.len(), 3);
    for (i, (got, sent)) in read.iter().zip(&batch).enumerate() {
        assert_eq!(got.version, v(i as u64 + 1));
        assert_eq!(got.event_id, sent.event_id());
        assert_eq!(&got.event_type, sent.event_type());
        assert_eq!(&got.payload, sent.payload());
        assert_eq!(got.schema_version, 1);
        assert_eq!(got.stream_id, id);
    }
    assert_eq!(
        read[2].cursor, r.cursor,
        "append reports the last event's feed position"
    );
    assert_eq!(store.stream_version(&id).await.expect("version"), v(3));
}

/// Reading from version `n` starts at `n`.
pub async fn read_stream_from_a_version<S: Store>(store: S) {
    let id = stream("order");
    store
        .append(&id, ExpectedVersion::NoStream, &events(10))
        .await
        .expect("append");
    let tail: Vec<_> = store
        .read_stream(&id, v(8))
        .try_collect()
        .await
        .expect("read");
    assert_eq!(
        tail.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    let past: Vec<_> = store
        .read_stream(&id, v(11))
        .try_collect()
        .await
        .expect("read");
    assert!(past.is_empty());
    assert_eq!(read_all(&store, &id).await.len(), 10);
}

/// `read_payloads` (what a repository folds) gives the events `read_stream` gives, from
/// the same version: same versions, ids, types, schema versions and payloads, whatever
/// form the payload comes in.
pub async fn read_payloads_agree_with_read_stream<S: Store>(store: S) {
    let id = stream("order");
    let mut batch = events(3);
    batch.push(NewEvent::new(
        EventId::new(Uuid::new_v4()).expect("v4 is never nil"),
        EventType::new("Nested").expect("valid type"),
        7,
        serde_json::json!({ "text": "é\"\\\n☃", "list": [1, 2.5, null, true], "deep": { "a": { "b": [] } }, "empty": {} }),
        Metadata::default(),
    )
    .expect("valid event"));
    store
        .append(&id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    for from in [v(0), v(1), v(3), v(5)] {
        let recorded: Vec<_> = store
            .read_stream(&id, from)
            .try_collect()
            .await
            .expect("read");
        let folded: Vec<_> = store
            .read_payloads(&id, from)
            .try_collect()
            .await
            .expect("read payloads");
        assert_eq!(folded.len(), recorded.len(), "from {from}");
        for (f, r) in folded.iter().zip(&recorded) {
            assert_eq!(
                (f.version, f.event_id, &f.event_type, f.schema_version),
                (r.version, r.event_id, &r.event_type, r.schema_version)
            );
            let payload = match &f.payload {
                chronik_store::Payload::Json(text) => {
                    serde_json::from_str::<Value>(text).expect("payload text is json")
                }
                chronik_store::Payload::Value(value) => value.clone(),
            };
            assert_eq!(payload, r.payload, "version {}", r.version);
        }
    }
}

/// A stream that was never written reads as empty, at version zero.
pub async fn missing_stream_is_empty<S: Store>(store: S) {
    let id = stream("nothing");
    assert!(read_all(&store, &id).await.is_empty());
    assert_eq!(
        store.stream_version(&id).await.expect("version"),
        Version::ZERO
    );
}

/// The four expected-version modes.
pub async fn expected_version_modes<S: Store>(store: S) {
    let id = stream("order");
    let conflict = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Conflict { .. }));
    assert!(conflict(
        store
            .append(&id, ExpectedVersion::StreamExists, &events(1))
            .await
    ));
    assert!(conflict(
        store
            .append(&id, ExpectedVersion::Exact(v(1)), &events(1))
            .await
    ));
    store
        .append(&id, ExpectedVersion::Exact(Version::ZERO), &events(1))
        .await
        .expect("exact 0 on a new stream");
    assert!(conflict(
        store
            .append(&id, ExpectedVersion::NoStream, &events(1))
            .await
    ));
    store
        .append(&id, ExpectedVersion::StreamExists, &events(1))
        .await
        .expect("stream exists");
    store
        .append(&id, ExpectedVersion::Exact(v(2)), &events(2))
        .await
        .expect("exact");
    let r = store
        .append(&id, ExpectedVersion::Any, &events(1))
        .await
        .expect("any");
    assert_eq!(r.last_version, v(5));
    let fresh = stream("order");
    let r = store
        .append(&fresh, ExpectedVersion::Any, &events(1))
        .await
        .expect("any on a new stream");
    assert_eq!(r.first_version, v(1));
}

/// A conflict names what was expected and what was found.
pub async fn conflict_reports_expected_and_actual<S: Store>(store: S) {
    let id = stream("order");
    store
        .append(&id, ExpectedVersion::NoStream, &events(4))
        .await
        .expect("append");
    match store
        .append(&id, ExpectedVersion::Exact(v(2)), &events(1))
        .await
    {
        Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(
                (stream, expected, actual),
                (id, ExpectedVersion::Exact(v(2)), v(4))
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A refused append leaves nothing behind, and its ids stay free.
pub async fn conflicting_append_writes_nothing<S: Store>(store: S) {
    let id = stream("order");
    store
        .append(&id, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("append");
    let loser = events(2);
    assert!(
        store
            .append(&id, ExpectedVersion::NoStream, &loser)
            .await
            .is_err()
    );
    assert_eq!(read_all(&store, &id).await.len(), 1);
    // the loser's ids were not consumed: they can be appended at the right place
    let r = store
        .append(&id, ExpectedVersion::Exact(v(1)), &loser)
        .await
        .expect("retry at the right version");
    assert!(!r.already_appended);
    assert_eq!(r.last_version, v(3));
}

/// Re-sending an append that already landed (lost acknowledgement) succeeds without duplicates.
pub async fn idempotent_retry_returns_already_appended<S: Store>(store: S) {
    let id = stream("order");
    store
        .append(&id, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("first");
    let batch = events(3);
    let first = store
        .append(&id, ExpectedVersion::Exact(v(1)), &batch)
        .await
        .expect("append");
    for expected in [
        ExpectedVersion::Exact(v(1)),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let again = store
            .append(&id, expected, &batch)
            .await
            .expect("idempotent retry");
        assert!(again.already_appended, "{expected:?}");
        assert_eq!(
            (again.first_version, again.last_version, again.cursor),
            (first.first_version, first.last_version, first.cursor)
        );
    }
    assert_eq!(read_all(&store, &id).await.len(), 4);
}

/// The same event ids anywhere else are an error, and nothing is written.
pub async fn same_ids_elsewhere_are_rejected<S: Store>(store: S) {
    let a = stream("order");
    let b = stream("order");
    let batch = events(2);
    store
        .append(&a, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    let dup = |r: Result<_, StoreError>| matches!(r, Err(StoreError::DuplicateEventId { .. }));
    assert!(
        dup(store.append(&b, ExpectedVersion::NoStream, &batch).await),
        "other stream"
    );
    assert!(
        dup(store.append(&b, ExpectedVersion::Any, &batch).await),
        "other stream, any"
    );
    // one fresh event followed by an already-stored one
    let mut mixed = events(1);
    mixed.push(batch[1].clone());
    assert!(
        dup(store.append(&b, ExpectedVersion::NoStream, &mixed).await),
        "mixed batch"
    );
    // same stream but shifted place
    assert!(
        dup(store
            .append(&a, ExpectedVersion::Exact(v(2)), &batch[1..])
            .await),
        "same stream, other version"
    );
    assert!(read_all(&store, &b).await.is_empty());
    assert_eq!(read_all(&store, &a).await.len(), 2);
    // A refused first append leaves no stream behind: `b` still does not exist.
    assert_eq!(
        store.stream_version(&b).await.expect("version"),
        Version::ZERO
    );
    store
        .append(&b, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("b is still a new stream");
    // An existing stream: a fresh event, then one stored elsewhere: nothing is written,
    // and the stream is still at its version for the next append.
    let mut mixed = events(1);
    mixed.push(batch[0].clone());
    assert!(
        dup(store.append(&b, ExpectedVersion::Exact(v(1)), &mixed).await),
        "mixed batch, existing stream"
    );
    assert_eq!(read_all(&store, &b).await.len(), 1);
    let next = store
        .append(&b, ExpectedVersion::Exact(v(1)), &events(2))
        .await
        .expect("b is still at version 1");
    assert_eq!((next.first_version, next.last_version), (v(2), v(3)));
}

/// The same ids at the same place with other content (event type, schema version or
/// payload) are a caller bug: `EventIdReused` naming the first event that differs, and
/// nothing is written. Other metadata alone is still a retry.
pub async fn reused_ids_with_other_content_are_rejected<S: Store>(store: S) {
    let id = stream("order");
    let batch = events(3);
    let first = store
        .append(&id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    // `batch` with event `i` rebuilt from the same id with other parts.
    let altered = |i: usize, change: &str| -> Vec<NewEvent> {
        let mut out = batch.clone();
        let e = &batch[i];
        let (event_type, schema_version, payload) = match change {
            "type" => ("Renumbered", e.schema_version(), e.payload().clone()),
            "schema version" => (e.event_type().as_str(), 2, e.payload().clone()),
            "payload" => (e.event_type().as_str(), 1, json!({ "n": 99 })),
            // {"n": 2} was sent: 2.0 is another JSON value (it reads back as a float)
            _ => (e.event_type().as_str(), 1, json!({ "n": 2.0 })),
        };
        out[i] = NewEvent::new(
            e.event_id(),
            EventType::new(event_type).expect("valid type"),
            schema_version,
            payload,
            e.metadata().clone(),
        )
        .expect("valid event");
        out
    };
    for (i, change) in [
        (0, "type"),
        (1, "schema version"),
        (2, "payload"),
        (2, "integer becomes float"),
    ] {
        let sent = altered(i, change);
        for (expected, events) in [
            (ExpectedVersion::NoStream, &sent[..]),
            (ExpectedVersion::Exact(Version::ZERO), &sent[..]),
            (ExpectedVersion::Any, &sent[..]),
            (ExpectedVersion::StreamExists, &sent[..]),
            // a prefix reaching the altered event is refused too
            (ExpectedVersion::NoStream, &sent[..=i]),
        ] {
            match store.append(&id, expected, events).await {
                Err(StoreError::EventIdReused {
                    event_id,
                    stream,
                    version,
                }) => assert_eq!(
                    (event_id, &stream, version),
                    (batch[i].event_id(), &id, v(i as u64 + 1)),
                    "{change} of event {i}, {expected:?}"
                ),
                other => panic!("{change} of event {i}, {expected:?}: {other:?}"),
            }
        }
    }
    // A prefix that stops before the altered event is the same place and content.
    let prefix = store
        .append(&id, ExpectedVersion::NoStream, &altered(2, "payload")[..2])
        .await
        .expect("unaltered prefix");
    assert!(prefix.already_appended);
    // Metadata is not part of the comparison: other headers are still a retry.
    let retagged: Vec<NewEvent> = batch
        .iter()
        .map(|e| {
            let mut metadata = e.metadata().clone();
            metadata
                .headers
                .insert("retry".to_owned(), "yes".to_owned());
            NewEvent::new(
                e.event_id(),
                e.event_type().clone(),
                e.schema_version(),
                e.payload().clone(),
                metadata,
            )
            .expect("valid event")
        })
        .collect();
    let again = store
        .append(&id, ExpectedVersion::NoStream, &retagged)
        .await
        .expect("other metadata is a retry");
    assert!(again.already_appended);
    assert_eq!(again.cursor, first.cursor);
    // Nothing of the refused appends was written: the originals are still there, alone.
    let stored = read_all(&store, &id).await;
    assert_eq!(stored.len(), 3);
    for (r, e) in stored.iter().zip(&batch) {
        assert_eq!(
            (r.event_id, &r.event_type, r.schema_version, &r.payload),
            (
                e.event_id(),
                e.event_type(),
                e.schema_version(),
                e.payload()
            )
        );
    }
}

/// Batch-level bad input is rejected before anything is written.
pub async fn invalid_batches_are_rejected_and_write_nothing<S: Store>(store: S) {
    let id = stream("order");
    assert!(matches!(
        store.append(&id, ExpectedVersion::Any, &[]).await,
        Err(StoreError::Invalid(InvalidInput::NoEvents))
    ));
    let e = event("A", json!({}));
    assert!(matches!(
        store
            .append(&id, ExpectedVersion::Any, &[e.clone(), e])
            .await,
        Err(StoreError::Invalid(InvalidInput::DuplicateEventInBatch(_)))
    ));
    assert_eq!(
        store.stream_version(&id).await.expect("version"),
        Version::ZERO
    );
    assert_eq!(store.feed_head().await.expect("head").visible_events, 0);
}

/// 32 tasks race on one stream with the same expected version, round after round:
/// exactly one winner per version, every loser gets `Conflict`, no gaps, no duplicates.
pub async fn concurrent_appends_have_one_winner_per_version<S: Store>(store: S) {
    const TASKS: usize = 32;
    const ROUNDS: u64 = 5;
    let id = Arc::new(stream("race"));
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|t| {
                let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
                tokio::spawn(async move {
                    let batch = vec![event("Raced", json!({ "round": round, "task": t }))];
                    barrier.wait().await;
                    store
                        .append(&id, ExpectedVersion::Exact(v(round)), &batch)
                        .await
                })
            })
            .collect();
        let mut winners = 0;
        for h in handles {
            match h.await.expect("task") {
                Ok(r) => {
                    winners += 1;
                    assert_eq!(r.last_version, v(round + 1));
                }
                Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, v(round + 1)),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
    let read = read_all(&store, &id).await;
    assert_eq!(
        read.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>()
    );
}

/// Many writers on many streams: every reported success is stored, with its content.
pub async fn concurrent_appends_to_many_streams_are_all_durable<S: Store>(store: S) {
    const TASKS: usize = 16;
    const APPENDS: usize = 20;
    let streams: Arc<Vec<StreamId>> = Arc::new((0..8).map(|_| stream("load")).collect());
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, streams) = (store.clone(), streams.clone());
            tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in 0..APPENDS {
                    let id = &streams[(t * 7 + i) % streams.len()];
                    let batch: Vec<_> = (0..(i % 3 + 1))
                        .map(|k| event("Loaded", json!({ "t": t, "i": i, "k": k })))
                        .collect();
                    match store.append(id, ExpectedVersion::Any, &batch).await {
                        Ok(_) => ok.extend(batch.into_iter().map(|e| (id.clone(), e))),
                        Err(e) => panic!("append with Any must not fail: {e}"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut expected: BTreeMap<EventId, (StreamId, Value)> = BTreeMap::new();
    for h in handles {
        for (id, e) in h.await.expect("task") {
            expected.insert(e.event_id(), (id, e.payload().clone()));
        }
    }
    let mut seen = HashSet::new();
    for id in streams.iter() {
        let read = read_all(&store, id).await;
        for (i, e) in read.iter().enumerate() {
            assert_eq!(e.version, v(i as u64 + 1), "dense versions");
            let (sid, payload) = expected
                .get(&e.event_id)
                .expect("only reported events are stored");
            assert_eq!((sid, payload), (&e.stream_id, &e.payload));
            assert!(seen.insert(e.event_id), "no duplicates");
        }
    }
    assert_eq!(seen.len(), expected.len(), "every success is durable");
    assert_eq!(
        read_whole_feed(&store, &FeedFilter::all()).await.len(),
        expected.len()
    );
}

/// The feed holds every event once, in commit order, stream order preserved, resumable.
pub async fn feed_is_in_commit_order_and_resumable<S: Store>(store: S) {
    let a = stream("order");
    let b = stream("invoice");
    let mut sent = Vec::new();
    for i in 0..5 {
        for id in [&a, &b] {
            let batch = events(i % 2 + 1);
            store
                .append(id, ExpectedVersion::Any, &batch)
                .await
                .expect("append");
            sent.extend(batch.iter().map(NewEvent::event_id));
        }
    }
    let feed = read_whole_feed(&store, &FeedFilter::all()).await;
    assert_eq!(feed.iter().map(|e| e.event_id).collect::<Vec<_>>(), sent);
    assert!(
        feed.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "strictly increasing cursors"
    );
    // resuming after any cursor yields exactly the rest
    let mid = feed[6].cursor;
    let rest = store
        .read_feed(mid, &FeedFilter::all(), 100)
        .await
        .expect("feed");
    assert_eq!(rest.events, feed[7..].to_vec());
    assert_eq!(rest.next, feed.last().expect("events").cursor);
    let empty = store
        .read_feed(rest.next, &FeedFilter::all(), 100)
        .await
        .expect("feed");
    assert!(empty.events.is_empty());
    assert_eq!(empty.next, rest.next, "an empty page keeps the cursor");
}

/// Filters by event type and by stream category.
pub async fn feed_filters_by_type_and_category<S: Store>(store: S) {
    let o = stream("order");
    let i = stream("invoice");
    store
        .append(
            &o,
            ExpectedVersion::Any,
            &[
                event("OrderPlaced", json!({})),
                event("OrderShipped", json!({})),
            ],
        )
        .await
        .expect("append");
    store
        .append(
            &i,
            ExpectedVersion::Any,
            &[
                event("InvoiceSent", json!({})),
                event("OrderShipped", json!({})),
            ],
        )
        .await
        .expect("append");
    let by_type = FeedFilter {
        event_types: vec!["OrderShipped".into()],
        categories: vec![],
    };
    let got = read_whole_feed(&store, &by_type).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.event_type.as_str() == "OrderShipped"));
    let by_cat = FeedFilter {
        event_types: vec![],
        categories: vec!["invoice".into()],
    };
    let got = read_whole_feed(&store, &by_cat).await;
    assert_eq!(
        got.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        vec!["InvoiceSent", "OrderShipped"]
    );
    let both = FeedFilter {
        event_types: vec!["OrderShipped".into()],
        categories: vec!["order".into()],
    };
    let got = read_whole_feed(&store, &both).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream_id, o);
}

/// A page limit of 0 or above the maximum is a typed error.
pub async fn feed_limit_is_validated<S: Store>(store: S) {
    for limit in [0, chronik_store::MAX_FEED_PAGE + 1] {
        assert!(matches!(
            store
                .read_feed(FeedCursor::START, &FeedFilter::all(), limit)
                .await,
            Err(StoreError::InvalidRequest(_))
        ));
    }
}

/// Cursors beyond the stores' signed 64-bit range cannot be made at all (the constructor,
/// the text form and `Deserialize` refuse them), and the last cursor there can be,
/// [`FeedCursor::MAX`], is accepted by every adapter: nothing is after it.
pub async fn feed_cursor_range<S: Store>(store: S) {
    let big = FeedCursor::MAX_PART + 1;
    for (t, p) in [(big, 0), (0, big), (u64::MAX, u64::MAX)] {
        assert!(
            matches!(
                FeedCursor::new(t, p),
                Err(InvalidInput::MalformedCursor { .. })
            ),
            "{t}:{p}"
        );
        assert!(format!("{t}:{p}").parse::<FeedCursor>().is_err());
    }
    let edge = FeedCursor::MAX;
    assert!(
        store
            .read_feed(edge, &FeedFilter::all(), 10)
            .await
            .expect("edge cursor")
            .events
            .is_empty()
    );
    assert_eq!(store.count_after(edge).await.expect("edge count"), 0);
}

/// The head and the count behind a cursor agree with the feed.
pub async fn feed_head_and_count_after<S: Store>(store: S) {
    let head = store.feed_head().await.expect("head");
    assert_eq!((head.last, head.visible_events), (None, 0));
    let id = stream("order");
    store
        .append(&id, ExpectedVersion::Any, &events(3))
        .await
        .expect("append");
    let r = store
        .append(&id, ExpectedVersion::Any, &events(2))
        .await
        .expect("append");
    let head = store.feed_head().await.expect("head");
    assert_eq!((head.last, head.visible_events), (Some(r.cursor), 5));
    assert_eq!(
        store.count_after(FeedCursor::START).await.expect("count"),
        5
    );
    let feed = read_whole_feed(&store, &FeedFilter::all()).await;
    assert_eq!(store.count_after(feed[1].cursor).await.expect("count"), 3);
    assert_eq!(store.count_after(r.cursor).await.expect("count"), 0);
}

/// Correlation, causation and headers survive the round trip.
pub async fn metadata_round_trips<S: Store>(store: S) {
    let id = stream("order");
    let meta = Metadata::default()
        .with_correlation(chronik_core::CorrelationId::new(Uuid::new_v4()))
        .with_causation(chronik_core::CausationId::new(Uuid::new_v4()))
        .with_header("user", "alice")
        .with_header("tenant", "t-1");
    let e = event(
        "A",
        json!({ "nested": { "list": [1, 2.5, "x", null, true] } }),
    )
    .with_metadata(meta.clone())
    .expect("valid");
    store
        .append(&id, ExpectedVersion::NoStream, std::slice::from_ref(&e))
        .await
        .expect("append");
    let read = read_all(&store, &id).await;
    assert_eq!(read[0].metadata, meta);
    assert_eq!(&read[0].payload, e.payload());
}

/// One snapshot per stream: newer versions and other schemas replace it; loads filter by schema.
pub async fn snapshots_replace_and_filter_by_schema<S: Store>(store: S) {
    let id = stream("order");
    assert!(store.load_snapshot(&id, 1).await.expect("load").is_none());
    store
        .save_snapshot(&id, v(10), 1, &json!({ "n": 10 }))
        .await
        .expect("save");
    store
        .save_snapshot(&id, v(5), 1, &json!({ "n": 5 }))
        .await
        .expect("save older");
    let s = store
        .load_snapshot(&id, 1)
        .await
        .expect("load")
        .expect("present");
    assert_eq!(
        (s.version, s.state),
        (v(10), json!({ "n": 10 })),
        "an older snapshot does not replace a newer one"
    );
    assert!(
        store.load_snapshot(&id, 2).await.expect("load").is_none(),
        "other schema is ignored"
    );
    store
        .save_snapshot(&id, v(3), 2, &json!({ "m": 3 }))
        .await
        .expect("save new schema");
    assert!(
        store.load_snapshot(&id, 1).await.expect("load").is_none(),
        "replaced by the new schema"
    );
    let s = store
        .load_snapshot(&id, 2)
        .await
        .expect("load")
        .expect("present");
    assert_eq!((s.version, s.state_schema_version), (v(3), 2));
    assert_eq!(store.list_snapshots(&id).await.expect("list").len(), 1);
}

/// Dropping snapshots by category leaves other categories alone.
pub async fn snapshots_delete_by_category<S: Store>(store: S) {
    let ids: Vec<_> = (0..3)
        .map(|_| stream("order"))
        .chain([stream("invoice")])
        .collect();
    for id in &ids {
        store
            .save_snapshot(id, v(1), 1, &json!({}))
            .await
            .expect("save");
    }
    assert_eq!(store.delete_snapshots("order").await.expect("delete"), 3);
    assert_eq!(store.delete_snapshots("order").await.expect("delete"), 0);
    assert!(
        store
            .load_snapshot(&ids[3], 1)
            .await
            .expect("load")
            .is_some()
    );
}

/// Checkpoints are stored, replaced, listed and deleted by name.
pub async fn checkpoints_round_trip<S: Store>(store: S) {
    assert!(
        store
            .load_checkpoint("orders")
            .await
            .expect("load")
            .is_none()
    );
    store
        .save_checkpoint("orders", cursor(5, 9), 3)
        .await
        .expect("save");
    store
        .save_checkpoint("orders", cursor(7, 12), 4)
        .await
        .expect("save");
    store
        .save_checkpoint("audit", cursor(1, 1), 1)
        .await
        .expect("save");
    let c = store
        .load_checkpoint("orders")
        .await
        .expect("load")
        .expect("present");
    assert_eq!((c.cursor, c.events_processed), (cursor(7, 12), 4));
    let names: Vec<_> = store
        .list_checkpoints()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["audit".to_owned(), "orders".to_owned()]);
    assert!(store.delete_checkpoint("orders").await.expect("delete"));
    assert!(!store.delete_checkpoint("orders").await.expect("delete"));
    assert!(
        store
            .load_checkpoint("orders")
            .await
            .expect("load")
            .is_none()
    );
}

/// Bad projection names are typed errors.
pub async fn checkpoint_names_are_validated<S: Store>(store: S) {
    for bad in ["", "has space", &"x".repeat(256)] {
        assert!(matches!(
            store.save_checkpoint(bad, FeedCursor::START, 0).await,
            Err(StoreError::InvalidRequest(_))
        ));
        assert!(matches!(
            store.load_checkpoint(bad).await,
            Err(StoreError::InvalidRequest(_))
        ));
    }
}

/// A cursor from parts known to be in range.
fn cursor(transaction: u64, position: u64) -> FeedCursor {
    FeedCursor::new(transaction, position).expect("a cursor in range")
}
