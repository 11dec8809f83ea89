//! Issue 14, item 4: a stored row that does not decode is an error naming the event by id,
//! stream, version and feed cursor, on the feed and on stream reads, and resuming the feed
//! after that cursor passes over it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent, StreamId, Version,
};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore, FeedFilter, StoreError};
use futures::TryStreamExt as _;
use sqlx::PgPool;
use uuid::Uuid;

fn event() -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new("Noted").unwrap(),
        1,
        serde_json::json!({ "n": 1 }),
        Metadata::default(),
    )
    .unwrap()
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_row_that_does_not_decode_names_its_cursor_and_can_be_passed_over(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let stream = StreamId::new("note-1").unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, &[event()])
        .await
        .unwrap();
    // Written behind the store's back, as only a hand-made INSERT can: a header that is not
    // a string does not decode as metadata.
    let bad = Uuid::new_v4();
    let (tx, position): (i64, i64) = sqlx::query_as(
        "INSERT INTO events (stream_id, stream_type, version, event_id, event_type, \
                             schema_version, payload, metadata) \
         VALUES ('note-1', 'note', 2, $1, 'Noted', 1, '{}', '{\"k\": 1}') \
         RETURNING transaction_id::text::bigint, global_position",
    )
    .bind(bad)
    .fetch_one(&pool)
    .await
    .unwrap();
    let at = FeedCursor::new(u64::try_from(tx).unwrap(), u64::try_from(position).unwrap()).unwrap();
    let last = store
        .append(
            &StreamId::new("note-2").unwrap(),
            ExpectedVersion::NoStream,
            &[event()],
        )
        .await
        .unwrap()
        .cursor;
    store
        .wait_for_feed(last, Duration::from_secs(60))
        .await
        .unwrap();

    let check = |e: &StoreError| {
        assert!(
            matches!(e, StoreError::Decode { stream, version, event_id, cursor: Some(c), reason }
                if stream.as_str() == "note-1" && version.get() == 2 && event_id.as_uuid() == bad
                    && *c == at && reason.starts_with("metadata: ")),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot decode event {bad} (stream note-1, version 2, cursor {at}): metadata: "
            )) && text.ends_with(&format!(
                "a feed reader can pass over it by resuming after cursor {at}"
            )),
            "{text}"
        );
    };
    let err = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10)
        .await
        .unwrap_err();
    check(&err);
    let err = store
        .read_stream(&stream, Version::FIRST)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    check(&err);
    // Resuming after it passes over it.
    let page = store.read_feed(at, &FeedFilter::all(), 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].cursor, last);
}
