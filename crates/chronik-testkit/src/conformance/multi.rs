//! Conformance cases for multi-stream appends ([`chronik_store::EventStore::append_streams`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chronik_core::{EventId, ExpectedVersion, FeedCursor, InvalidInput, Version};
use chronik_store::{FeedFilter, StoreError, StreamAppend, StreamConflict};
use serde_json::json;

use super::{Store, event, events, read_all, read_whole_feed, stream, v};

/// Every part is written, in one transaction: results in the order given, each stream
/// numbered after its own version, all events visible together under one feed
/// transaction.
pub async fn multi_stream_append_writes_every_part_in_one_transaction<S: Store>(store: S) {
    let (a, b) = (stream("account"), stream("account"));
    store
        .append(&a, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("seed a");
    let parts = vec![
        StreamAppend::new(a.clone(), ExpectedVersion::Exact(v(2)), events(1)),
        StreamAppend::new(b.clone(), ExpectedVersion::NoStream, events(3)),
    ];
    let results = store.append_streams(&parts).await.expect("append");
    assert_eq!(results.len(), 2);
    assert_eq!(
        results
            .iter()
            .map(|r| (r.first_version, r.last_version, r.already_appended))
            .collect::<Vec<_>>(),
        [(v(3), v(3), false), (v(1), v(3), false)]
    );
    assert_eq!(
        results[0].cursor.transaction(),
        results[1].cursor.transaction(),
        "one transaction for every part"
    );
    for (id, part, from) in [(&a, &parts[0], 2), (&b, &parts[1], 0)] {
        let read = read_all(&store, id).await;
        let stored: Vec<(EventId, u64)> = read[from..]
            .iter()
            .map(|e| (e.event_id, e.version.get()))
            .collect();
        let sent: Vec<(EventId, u64)> = part
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event_id(), from as u64 + i as u64 + 1))
            .collect();
        assert_eq!(stored, sent, "stream {id}");
    }
    let feed = read_whole_feed(&store, &FeedFilter::all()).await;
    assert_eq!(feed.len(), 6);
    let tx = results[0].cursor.transaction();
    assert_eq!(
        feed.iter().filter(|e| e.cursor.transaction() == tx).count(),
        4,
        "the four new events share the append's transaction"
    );
    assert!(
        results
            .iter()
            .all(|r| feed.iter().any(|e| e.cursor == r.cursor)),
        "each part's cursor is its last event's"
    );
}

/// One conflicting part refuses the whole append: `Conflicts` names every conflicting
/// stream (in the order given) with its actual version, and nothing is written to any
/// stream, the ones that would have succeeded included.
pub async fn multi_stream_conflict_names_every_stream_and_writes_nothing<S: Store>(store: S) {
    let (a, b, c) = (stream("account"), stream("account"), stream("account"));
    store
        .append(&a, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("seed a");
    store
        .append(&c, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("seed c");
    let head = store.feed_head().await.expect("head");
    let parts = vec![
        StreamAppend::new(a.clone(), ExpectedVersion::Exact(v(1)), events(1)),
        StreamAppend::new(b.clone(), ExpectedVersion::NoStream, events(2)),
        StreamAppend::new(c.clone(), ExpectedVersion::NoStream, events(1)),
    ];
    match store.append_streams(&parts).await {
        Err(e @ StoreError::Conflicts { .. }) => {
            assert!(e.is_conflict() && e.is_retryable(), "{e}");
            let StoreError::Conflicts { conflicts } = e else {
                unreachable!()
            };
            assert_eq!(
                conflicts,
                [
                    StreamConflict {
                        stream: a.clone(),
                        expected: ExpectedVersion::Exact(v(1)),
                        actual: v(2),
                    },
                    StreamConflict {
                        stream: c.clone(),
                        expected: ExpectedVersion::NoStream,
                        actual: v(1),
                    },
                ]
            );
        }
        other => panic!("expected Conflicts, got {other:?}"),
    }
    assert_eq!(read_all(&store, &a).await.len(), 2);
    assert!(read_all(&store, &b).await.is_empty(), "b was not created");
    assert_eq!(
        store.stream_version(&b).await.expect("version"),
        Version::ZERO
    );
    assert_eq!(read_all(&store, &c).await.len(), 1);
    assert_eq!(store.feed_head().await.expect("head"), head);
    // The refused append's ids are still free: the corrected append goes through.
    let fixed = vec![
        StreamAppend::new(
            a.clone(),
            ExpectedVersion::Exact(v(2)),
            parts[0].events.clone(),
        ),
        parts[1].clone(),
        StreamAppend::new(
            c.clone(),
            ExpectedVersion::Exact(v(1)),
            parts[2].events.clone(),
        ),
    ];
    let results = store.append_streams(&fixed).await.expect("corrected");
    assert!(results.iter().all(|r| !r.already_appended));
}

/// Re-sending a multi-stream append that landed succeeds once: every part
/// `already_appended` with the first call's results. A part already stored by an earlier
/// single-stream append is `already_appended` while the others are written. The same ids
/// elsewhere, or at the same place with other content, refuse the whole append.
pub async fn multi_stream_retry_is_idempotent<S: Store>(store: S) {
    let (a, b) = (stream("account"), stream("account"));
    let parts = vec![
        StreamAppend::new(a.clone(), ExpectedVersion::NoStream, events(2)),
        StreamAppend::new(b.clone(), ExpectedVersion::NoStream, events(1)),
    ];
    let first = store.append_streams(&parts).await.expect("append");
    let again = store.append_streams(&parts).await.expect("retry");
    assert!(again.iter().all(|r| r.already_appended), "{again:?}");
    assert_eq!(
        again
            .iter()
            .map(|r| (r.first_version, r.last_version, r.cursor))
            .collect::<Vec<_>>(),
        first
            .iter()
            .map(|r| (r.first_version, r.last_version, r.cursor))
            .collect::<Vec<_>>()
    );
    assert_eq!(read_all(&store, &a).await.len(), 2);
    assert_eq!(read_all(&store, &b).await.len(), 1);

    // One part landed on its own before (by a single-stream append), the other did not.
    let (c, d) = (stream("account"), stream("account"));
    let c_events = events(1);
    store
        .append(&c, ExpectedVersion::NoStream, &c_events)
        .await
        .expect("single");
    let mixed = vec![
        StreamAppend::new(c.clone(), ExpectedVersion::NoStream, c_events),
        StreamAppend::new(d.clone(), ExpectedVersion::NoStream, events(1)),
    ];
    let results = store.append_streams(&mixed).await.expect("mixed");
    assert_eq!(
        results
            .iter()
            .map(|r| r.already_appended)
            .collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(read_all(&store, &c).await.len(), 1);
    assert_eq!(read_all(&store, &d).await.len(), 1);

    // The same ids in another stream: DuplicateEventId, and the other part is not written.
    let e = stream("account");
    let elsewhere = vec![
        StreamAppend::new(e.clone(), ExpectedVersion::NoStream, events(1)),
        StreamAppend::new(
            b.clone(),
            ExpectedVersion::Exact(v(1)),
            parts[0].events.clone(),
        ),
    ];
    assert!(
        matches!(
            store.append_streams(&elsewhere).await,
            Err(StoreError::DuplicateEventId { ref stream, .. }) if *stream == a
        ),
        "ids stored in a are refused for b"
    );
    assert!(read_all(&store, &e).await.is_empty());
    // The same ids at the same place with other content: EventIdReused.
    let reused = vec![
        StreamAppend::new(e.clone(), ExpectedVersion::NoStream, events(1)),
        StreamAppend::new(
            b.clone(),
            ExpectedVersion::NoStream,
            vec![
                chronik_core::NewEvent::new(
                    parts[1].events[0].event_id(),
                    chronik_core::EventType::new("Other").expect("type"),
                    1,
                    json!({ "other": true }),
                    chronik_core::Metadata::default(),
                )
                .expect("event"),
            ],
        ),
    ];
    assert!(
        matches!(
            store.append_streams(&reused).await,
            Err(StoreError::EventIdReused { ref stream, .. }) if *stream == b
        ),
        "an id reused for other content is refused"
    );
    assert!(read_all(&store, &e).await.is_empty());
    assert_eq!(read_all(&store, &b).await.len(), 1);
}

/// The shape of a multi-stream append is checked before any I/O.
pub async fn multi_stream_invalid_input_writes_nothing<S: Store>(store: S) {
    let (a, b) = (stream("account"), stream("account"));
    assert!(matches!(
        store.append_streams(&[]).await,
        Err(StoreError::InvalidRequest(_))
    ));
    let twice = vec![
        StreamAppend::new(a.clone(), ExpectedVersion::Any, events(1)),
        StreamAppend::new(a.clone(), ExpectedVersion::Any, events(1)),
    ];
    assert!(matches!(
        store.append_streams(&twice).await,
        Err(StoreError::InvalidRequest(m)) if m.contains("twice")
    ));
    let empty_part = vec![
        StreamAppend::new(a.clone(), ExpectedVersion::Any, events(1)),
        StreamAppend::new(b.clone(), ExpectedVersion::Any, Vec::new()),
    ];
    assert!(matches!(
        store.append_streams(&empty_part).await,
        Err(StoreError::Invalid(InvalidInput::NoEvents))
    ));
    let shared = event("Shared", json!({}));
    let same_id = vec![
        StreamAppend::new(a.clone(), ExpectedVersion::Any, vec![shared.clone()]),
        StreamAppend::new(b.clone(), ExpectedVersion::Any, vec![shared]),
    ];
    assert!(matches!(
        store.append_streams(&same_id).await,
        Err(StoreError::Invalid(InvalidInput::DuplicateEventInBatch(_)))
    ));
    let many: Vec<StreamAppend> = (0..=chronik_store::MAX_APPEND_STREAMS)
        .map(|_| StreamAppend::new(stream("many"), ExpectedVersion::Any, events(1)))
        .collect();
    assert!(matches!(
        store.append_streams(&many).await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert_eq!(store.feed_head().await.expect("head").visible_events, 0);
}

/// Many tasks append to overlapping sets of streams, naming them in opposite orders, at
/// the same moment: every append finishes (no deadlock), every event is stored once at a
/// dense version, and each append's events share one feed transaction.
pub async fn concurrent_multi_stream_appends_in_opposite_orders_all_finish<S: Store>(store: S) {
    const TASKS: usize = 16;
    const APPENDS: usize = 12;
    let streams: Arc<Vec<chronik_core::StreamId>> =
        Arc::new((0..4).map(|_| stream("transfer")).collect());
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, streams, barrier) = (store.clone(), streams.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut done = Vec::new();
                for i in 0..APPENDS {
                    // Two or three of the four streams, forwards for even tasks and
                    // backwards for odd ones.
                    let width = 2 + (t + i) % 2;
                    let mut picked: Vec<usize> =
                        (0..width).map(|k| (t + i + k) % streams.len()).collect();
                    if t % 2 == 1 {
                        picked.reverse();
                    }
                    let parts: Vec<StreamAppend> = picked
                        .iter()
                        .map(|&s| {
                            StreamAppend::new(
                                streams[s].clone(),
                                ExpectedVersion::Any,
                                vec![event("Moved", json!({ "t": t, "i": i, "s": s }))],
                            )
                        })
                        .collect();
                    match store.append_streams(&parts).await {
                        Ok(results) => done.push((parts, results)),
                        Err(e) => panic!("task {t} append {i}: {e}"),
                    }
                }
                done
            })
        })
        .collect();
    let mut sent: BTreeMap<EventId, (chronik_core::StreamId, FeedCursor)> = BTreeMap::new();
    for h in handles {
        for (parts, results) in h.await.expect("task") {
            let tx: HashSet<u64> = results.iter().map(|r| r.cursor.transaction()).collect();
            assert_eq!(tx.len(), 1, "one transaction per multi-stream append");
            for (part, r) in parts.iter().zip(&results) {
                sent.insert(part.events[0].event_id(), (part.stream.clone(), r.cursor));
            }
        }
    }
    assert_eq!(sent.len(), TASKS * APPENDS * 5 / 2);
    let mut stored = 0;
    for id in streams.iter() {
        for (i, e) in read_all(&store, id).await.iter().enumerate() {
            assert_eq!(e.version, v(i as u64 + 1), "dense versions in {id}");
            let (sid, cursor) = sent.get(&e.event_id).expect("only reported events");
            assert_eq!((sid, cursor), (&e.stream_id, &e.cursor));
            stored += 1;
        }
    }
    assert_eq!(stored, sent.len(), "every success is stored once");
}
