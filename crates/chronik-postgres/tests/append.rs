//! Appends on a real server: races between connections, durability at scale,
//! idempotency, immutability, bad input, schemas, caller transactions.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, InvalidInput, MAX_APPEND_EVENTS,
    MAX_PAYLOAD_BYTES, Metadata, NewEvent, StreamId, Version,
};
use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik_store::{CheckpointStore, EventStore, FeedFilter, SnapshotStore, StoreError};
use chronik_testkit::conformance::{event, events, stream};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

fn v(n: u64) -> Version {
    Version::new(n).expect("small version")
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn thirty_two_connections_race_one_winner_per_version(pool: PgPool) {
    const TASKS: usize = 32;
    const ROUNDS: u64 = 8;
    let store = PgEventStore::from_pool(pool.clone());
    let options = pool.connect_options();
    let id = Arc::new(stream("race"));
    // Separate sessions, opened up front: each append is its own autocommit statement.
    let mut conns = Vec::new();
    for _ in 0..TASKS {
        conns.push(PgConnection::connect_with(&options).await.expect("connect"));
    }
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let handles: Vec<_> = conns
            .drain(..)
            .enumerate()
            .map(|(t, mut conn)| {
                let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
                tokio::spawn(async move {
                    let batch = vec![event("Raced", json!({ "round": round, "task": t }))];
                    barrier.wait().await;
                    let r = store
                        .append_in(&mut conn, &id, ExpectedVersion::Exact(v(round)), &batch)
                        .await;
                    (conn, r, batch[0].event_id())
                })
            })
            .collect();
        let mut winners = Vec::new();
        for h in handles {
            let (conn, r, event_id) = h.await.expect("task");
            conns.push(conn);
            match r {
                Ok(r) => {
                    assert_eq!((r.last_version, r.already_appended), (v(round + 1), false));
                    winners.push(event_id);
                }
                Err(StoreError::Conflict {
                    actual, expected, ..
                }) => {
                    assert_eq!(actual, v(round + 1));
                    assert_eq!(expected, ExpectedVersion::Exact(v(round)));
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        let stored: Vec<_> = store
            .read_stream(&id, v(round + 1))
            .try_collect()
            .await
            .expect("read");
        assert_eq!(
            stored[0].event_id, winners[0],
            "the winner's event is stored"
        );
    }
    let read: Vec<_> = store
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(
        read.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    assert_eq!(
        count(&pool, "events").await,
        i64::try_from(ROUNDS).expect("fits")
    );
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn random_streams_at_scale_every_success_is_durable(pool: PgPool) {
    const TASKS: usize = 32;
    const APPENDS: usize = 30;
    const STREAMS: usize = 24;
    let big = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("pool");
    let store = PgEventStore::from_pool(big);
    let streams: Arc<Vec<StreamId>> = Arc::new((0..STREAMS).map(|_| stream("load")).collect());
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, streams) = (store.clone(), streams.clone());
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut conflicts = 0;
                for i in 0..APPENDS {
                    // a cheap deterministic scatter over the streams and modes
                    let k = (t * 31 + i * 17) % STREAMS;
                    let id = &streams[k];
                    let batch: Vec<_> = (0..(t + i) % 4 + 1)
                        .map(|n| event("Loaded", json!({ "t": t, "i": i, "n": n })))
                        .collect();
                    let expected = match (t + i) % 3 {
                        0 => ExpectedVersion::Any,
                        1 => ExpectedVersion::Exact(store.stream_version(id).await.expect("v")),
                        _ => ExpectedVersion::StreamExists,
                    };
                    match store.append(id, expected, &batch).await {
                        Ok(r) => {
                            assert_eq!(
                                r.last_version.get() - r.first_version.get() + 1,
                                batch.len() as u64
                            );
                            ok.extend(batch.into_iter().map(|e| (id.clone(), e)));
                        }
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (ok, conflicts)
            })
        })
        .collect();
    let mut expected: HashMap<EventId, (StreamId, Value)> = HashMap::new();
    for h in handles {
        let (ok, _conflicts) = h.await.expect("task");
        for (id, e) in ok {
            expected.insert(e.event_id(), (id, e.payload().clone()));
        }
    }
    let mut seen = HashSet::new();
    for id in streams.iter() {
        let read: Vec<_> = store
            .read_stream(id, Version::ZERO)
            .try_collect()
            .await
            .expect("read");
        for (i, e) in read.iter().enumerate() {
            assert_eq!(e.version, v(i as u64 + 1), "dense versions");
            let (sid, payload) = expected
                .get(&e.event_id)
                .expect("only successes are stored");
            assert_eq!((sid, payload), (&e.stream_id, &e.payload));
            assert!(seen.insert(e.event_id), "no duplicates");
        }
    }
    assert_eq!(seen.len(), expected.len(), "every success is durable");
    assert_eq!(count(&pool, "events").await, expected.len() as i64);
    // The feed holds each once, and within each stream in version order.
    let feed = support::whole_feed(&store, &FeedFilter::all()).await;
    assert_eq!(feed.len(), expected.len());
    let mut last: BTreeMap<&StreamId, Version> = BTreeMap::new();
    for e in &feed {
        let prev = last
            .insert(&e.stream_id, e.version)
            .unwrap_or(Version::ZERO);
        assert_eq!(
            e.version.get(),
            prev.get() + 1,
            "feed order agrees with stream order"
        );
    }
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_retried_append_after_commit_is_already_appended(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("order");
    let batch = events(3);
    let first = store
        .append(&id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(Version::ZERO),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let again = store.append(&id, expected, &batch).await.expect("retry");
        assert!(again.already_appended, "{expected:?}");
        assert_eq!(
            (again.first_version, again.last_version, again.cursor),
            (first.first_version, first.last_version, first.cursor)
        );
    }
    // inside a caller's transaction too
    let mut t = pool.begin().await.expect("begin");
    let again = store
        .append_in(&mut t, &id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("retry in tx");
    assert!(again.already_appended);
    t.commit().await.expect("commit");
    // a prefix of the batch at its place is also the same place
    let prefix = store
        .append(&id, ExpectedVersion::NoStream, &batch[..2])
        .await
        .expect("prefix");
    assert_eq!((prefix.already_appended, prefix.last_version), (true, v(2)));
    // but the same ids at another place are not a retry
    assert!(matches!(
        store.append(&id, ExpectedVersion::Exact(v(1)), &batch).await,
        Err(StoreError::DuplicateEventId { event_id, ref stream, version })
            if event_id == batch[0].event_id() && *stream == id && version == v(1)
    ));
    assert_eq!(count(&pool, "events").await, 3);
    assert_eq!(store.stream_version(&id).await.expect("version"), v(3));
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn concurrent_identical_retries_store_the_batch_once(pool: PgPool) {
    const TASKS: usize = 12;
    let store = PgEventStore::from_pool(pool.clone());
    for expected in [ExpectedVersion::Any, ExpectedVersion::NoStream] {
        let id = Arc::new(stream("retry"));
        let batch = Arc::new(events(2));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, id, batch, barrier) =
                    (store.clone(), id.clone(), batch.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.append(&id, expected, &batch).await
                })
            })
            .collect();
        let mut fresh = 0;
        for h in handles {
            let r = h.await.expect("task").expect("every retry succeeds");
            assert_eq!((r.first_version, r.last_version), (v(1), v(2)));
            if !r.already_appended {
                fresh += 1;
            }
        }
        assert_eq!(
            fresh, 1,
            "{expected:?}: written once, the rest already appended"
        );
        assert_eq!(store.stream_version(&id).await.expect("version"), v(2));
    }
    assert_eq!(count(&pool, "events").await, 4);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn the_database_refuses_to_change_events(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("order");
    let batch = vec![event("A", json!({ "n": 1 }))];
    store
        .append(&id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    for sql in [
        "UPDATE events SET payload = '{\"n\": 2}'",
        "UPDATE events SET event_type = 'B' WHERE false",
        "DELETE FROM events",
        "DELETE FROM events WHERE event_type = 'nothing'",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("CKI01"), "{sql}");
        assert!(
            db.message().contains("immutable"),
            "{sql}: {}",
            db.message()
        );
    }
    let read: Vec<_> = store
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, json!({ "n": 1 }));
    assert_eq!(read[0].event_type.as_str(), "A");
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn bad_input_is_a_typed_error_and_writes_nothing(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("order");
    let good = || event("A", json!({}));

    // What cannot even be built (validated in chronik-core's constructors).
    assert_eq!(StreamId::new(""), Err(InvalidInput::EmptyStreamId));
    assert_eq!(EventId::new(Uuid::nil()), Err(InvalidInput::NilEventId));
    assert!(matches!(
        Version::new(u64::MAX),
        Err(InvalidInput::VersionOutOfRange(_))
    ));
    assert!(matches!(
        EventType::new(""),
        Err(InvalidInput::EventType { .. })
    ));
    let new = |payload: Value| {
        NewEvent::new(
            EventId::new(Uuid::new_v4()).expect("v4"),
            EventType::new("A").expect("type"),
            1,
            payload,
            Metadata::default(),
        )
    };
    assert!(matches!(
        new(json!([1, 2])),
        Err(InvalidInput::PayloadNotObject { .. })
    ));
    // The documented payload limit: 1 MiB of compact JSON (chronik_core::MAX_PAYLOAD_BYTES).
    assert!(matches!(
        new(json!({ "s": "x".repeat(MAX_PAYLOAD_BYTES) })),
        Err(InvalidInput::PayloadTooLarge { .. })
    ));
    assert!(new(json!({ "s": "x".repeat(MAX_PAYLOAD_BYTES - 16) })).is_ok());
    assert!(matches!(
        new(json!({ "s": "nul\u{0}" })),
        Err(InvalidInput::PayloadNul)
    ));
    assert!(matches!(
        "12:-1".parse::<FeedCursor>(),
        Err(InvalidInput::MalformedCursor { .. })
    ));

    // What the store refuses before any I/O.
    assert!(matches!(
        store.append(&id, ExpectedVersion::Any, &[]).await,
        Err(StoreError::Invalid(InvalidInput::NoEvents))
    ));
    let too_many: Vec<_> = (0..=MAX_APPEND_EVENTS).map(|_| good()).collect();
    assert!(matches!(
        store.append(&id, ExpectedVersion::Any, &too_many).await,
        Err(StoreError::Invalid(InvalidInput::TooManyEvents { .. }))
    ));
    let e = good();
    assert!(matches!(
        store
            .append(&id, ExpectedVersion::Any, &[e.clone(), good(), e])
            .await,
        Err(StoreError::Invalid(InvalidInput::DuplicateEventInBatch(_)))
    ));
    // Out-of-range cursors cannot reach the store (FeedCursor refuses them); the last
    // cursor there can be is read and counted like any other.
    for (t, p) in [(u64::MAX, 1), (1, 1 << 63)] {
        assert!(matches!(
            FeedCursor::new(t, p),
            Err(InvalidInput::MalformedCursor { .. })
        ));
    }
    let edge = FeedCursor::MAX;
    assert!(
        store
            .read_feed(edge, &FeedFilter::all(), 10)
            .await
            .expect("edge")
            .events
            .is_empty()
    );
    assert_eq!(store.count_after(edge).await.expect("edge count"), 0);
    assert!(matches!(
        store
            .save_checkpoint("p", FeedCursor::START, u64::MAX)
            .await,
        Err(StoreError::InvalidRequest(_))
    ));
    for limit in [0, chronik_store::MAX_FEED_PAGE + 1] {
        assert!(matches!(
            store
                .read_feed(FeedCursor::START, &FeedFilter::all(), limit)
                .await,
            Err(StoreError::InvalidRequest(_))
        ));
    }
    assert!(matches!(
        store
            .save_snapshot(&id, v(1), 1, &json!({ "s": ["a\u{0}"] }))
            .await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(matches!(
        SchemaName::new("x; DROP TABLE events"),
        Err(StoreError::InvalidRequest(_))
    ));

    for table in ["events", "streams", "snapshots", "projection_checkpoints"] {
        assert_eq!(count(&pool, table).await, 0, "{table} is untouched");
    }
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn a_maximal_batch_is_one_append(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("bulk");
    let batch = events(MAX_APPEND_EVENTS);
    let r = store
        .append(&id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    assert_eq!(r.last_version, v(MAX_APPEND_EVENTS as u64));
    // streamed back lazily, from a version, in order
    let mut stream_read = store.read_stream(&id, v(9_001));
    let mut expect = 9_001;
    while let Some(e) = stream_read.next().await {
        let e = e.expect("row");
        assert_eq!(e.version.get(), expect);
        assert_eq!(e.event_id, batch[(expect - 1) as usize].event_id());
        expect += 1;
    }
    assert_eq!(expect, MAX_APPEND_EVENTS as u64 + 1);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn an_append_in_a_caller_transaction_commits_or_rolls_back_with_it(pool: PgPool) {
    let store = PgEventStore::from_pool(pool.clone());
    let id = stream("order");
    let mut t = pool.begin().await.expect("begin");
    store
        .append_in(&mut t, &id, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("append");
    // a conflict inside the transaction leaves it usable
    assert!(matches!(
        store
            .append_in(&mut t, &id, ExpectedVersion::NoStream, &events(1))
            .await,
        Err(StoreError::Conflict { actual, .. }) if actual == v(2)
    ));
    t.rollback().await.expect("rollback");
    assert_eq!(
        store.stream_version(&id).await.expect("version"),
        Version::ZERO
    );
    assert_eq!(count(&pool, "events").await, 0);
    assert_eq!(count(&pool, "streams").await, 0);

    let mut t = pool.begin().await.expect("begin");
    let batch = events(2);
    store
        .append_in(&mut t, &id, ExpectedVersion::NoStream, &batch)
        .await
        .expect("append");
    t.commit().await.expect("commit");
    let read: Vec<_> = store
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(read.len(), 2);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn stores_in_separate_schemas_share_a_database(pool: PgPool) {
    let config = |name: &str| PgStoreConfig::with_schema(SchemaName::new(name).expect("name"));
    let a = PgEventStore::from_pool_with(pool.clone(), &config("tenant_a"));
    let b = PgEventStore::from_pool_with(pool.clone(), &config("tenant_b"));
    for store in [&a, &b] {
        store.migrate().await.expect("migrate");
        store.migrate().await.expect("migrating again is a no-op");
    }
    let id = stream("order");
    let ra = a
        .append(&id, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("a");
    let rb = b
        .append(&id, ExpectedVersion::NoStream, &events(1))
        .await
        .expect("b");
    assert_eq!((ra.last_version, rb.last_version), (v(2), v(1)));
    assert_eq!(a.stream_version(&id).await.expect("v"), v(2));
    assert_eq!(b.stream_version(&id).await.expect("v"), v(1));
    assert_eq!(support::whole_feed(&a, &FeedFilter::all()).await.len(), 2);
    assert_eq!(support::whole_feed(&b, &FeedFilter::all()).await.len(), 1);
    a.save_checkpoint("p", ra.cursor, 2)
        .await
        .expect("checkpoint");
    assert!(b.load_checkpoint("p").await.expect("load").is_none());
    b.save_snapshot(&id, v(1), 1, &json!({}))
        .await
        .expect("snapshot");
    assert!(a.load_snapshot(&id, 1).await.expect("load").is_none());
    // the default schema of this database is untouched, and pooled sessions keep their path
    assert_eq!(count(&pool, "public.events").await, 0);
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .expect("path");
    assert!(!path.contains("tenant"), "{path}");
    // Each schema's append function names its own tables: a session whose search_path puts
    // another store's schema first still appends where it asked to.
    let mut t = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL search_path = tenant_b, public")
        .execute(&mut *t)
        .await
        .expect("set path");
    let other = stream("order");
    a.append_in(&mut t, &other, ExpectedVersion::NoStream, &events(3))
        .await
        .expect("append under a foreign search_path");
    t.commit().await.expect("commit");
    assert_eq!(a.stream_version(&other).await.expect("v"), v(3));
    assert_eq!(b.stream_version(&other).await.expect("v"), Version::ZERO);
    for (schema, foreign) in [("tenant_a", "tenant_b"), ("tenant_b", "tenant_a")] {
        let body: String = sqlx::query_scalar(
            "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
              WHERE p.proname = 'append_events' AND n.nspname = $1",
        )
        .bind(schema)
        .fetch_one(&pool)
        .await
        .expect("body");
        assert!(body.contains(&format!("{schema}.streams")), "{body}");
        assert!(!body.contains(foreign), "{body}");
    }
}

#[tokio::test]
async fn connection_errors_never_show_the_url() {
    let secret = "s3cr3t-pa55";
    // nothing listens on port 1
    let err = PgEventStore::connect(&format!("postgres://chronik:{secret}@127.0.0.1:1/db"))
        .await
        .expect_err("no server");
    assert!(err.is_retryable(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(secret));
    let err = PgEventStore::connect(&format!(
        "postgres://chronik:{secret}@127.0.0.1:5432/db?sslmode=bogus"
    ))
    .await
    .expect_err("bad url");
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(secret));
}

#[tokio::test]
async fn connect_with_applies_the_session_settings() {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL must name a PostgreSQL database for the chronik-postgres tests, \
         e.g. postgres://postgres@127.0.0.1:5432/postgres",
    );
    let config = PgStoreConfig {
        statement_timeout: Some(std::time::Duration::from_millis(1500)),
        max_connections: 2,
        ..PgStoreConfig::with_schema(SchemaName::new("chronik_unused").expect("name"))
    };
    let store = PgEventStore::connect_with(&url, config)
        .await
        .expect("connect");
    let (timeout, name): (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('application_name')",
    )
    .fetch_one(store.pool())
    .await
    .expect("settings");
    assert_eq!((timeout.as_str(), name.as_str()), ("1500ms", "chronik"));
    assert_eq!(store.schema().as_str(), "chronik_unused");
    assert!(!format!("{store:?}").contains("postgres://"));
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn stream_and_feed_reads_are_upcast_through_the_decorator(pool: PgPool) {
    use chronik_core::UpcasterRegistry;
    use chronik_store::Upcasting;

    let registry = UpcasterRegistry::builder()
        .current("OrderPlaced", 2)
        .rename("OrderCreated", "OrderPlaced")
        .step("OrderPlaced", 1, |mut p: Value| {
            let obj = p.as_object_mut().ok_or("not an object")?;
            let amount = obj.remove("amount").ok_or("no amount")?;
            obj.insert("total_amount".into(), amount);
            Ok(p)
        })
        .build()
        .expect("registry");
    let raw = PgEventStore::from_pool(pool);
    let store = Upcasting::new(raw.clone(), Arc::new(registry));
    let id = stream("order");
    // history written by older code: v1 payloads, under the old name
    let old = NewEvent::new(
        EventId::new(Uuid::new_v4()).expect("v4"),
        EventType::new("OrderCreated").expect("type"),
        1,
        json!({ "amount": 10 }),
        Metadata::default(),
    )
    .expect("event");
    let r = store
        .append(&id, ExpectedVersion::NoStream, &[old])
        .await
        .expect("append");
    let read: Vec<_> = store
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(
        (
            read[0].event_type.as_str(),
            read[0].schema_version,
            &read[0].payload
        ),
        ("OrderPlaced", 2, &json!({ "total_amount": 10 }))
    );
    // the fold's read is upcast too: from the stored text to the current value
    let folded: Vec<_> = store
        .read_payloads(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read payloads");
    assert_eq!(
        (
            folded[0].event_type.as_str(),
            folded[0].schema_version,
            &folded[0].payload
        ),
        (
            "OrderPlaced",
            2,
            &chronik_store::Payload::Value(json!({ "total_amount": 10 }))
        )
    );
    raw.wait_for_feed(r.cursor, std::time::Duration::from_secs(60))
        .await
        .expect("visible");
    let page = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10)
        .await
        .expect("feed");
    assert_eq!(page.events, read);
    // stored history itself is untouched
    let stored: Vec<_> = raw
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(
        (stored[0].event_type.as_str(), stored[0].schema_version),
        ("OrderCreated", 1)
    );
}
