//! The relay against the real NATS server at `NATS_URL` (default `nats://127.0.0.1:4222`,
//! started with `-js`; `.ci/run` starts one). These tests fail, never skip, when it is not
//! there. Each test uses its own subject prefix and JetStream stream, and deletes the
//! stream at its end.
// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use chronik_core::{
    CausationId, CorrelationId, EventId, EventType, ExpectedVersion, FeedCursor, Metadata,
    NewEvent, RecordedEvent, StreamId,
};
use chronik_memory::MemoryStore;
use chronik_projections::{RunnerHandle, RunnerOptions};
use chronik_relay::async_nats::jetstream::{self, stream::Config as StreamConfig};
use chronik_relay::{
    NatsRelay, RelayConfig, RelayError, RelayStats, SubjectPrefix, decode_token, headers,
};
use chronik_store::{CheckpointStore, EventStore, FeedFilter};
use chronik_testkit::conformance::{event, stream};
use chronik_testkit::nats_server::NatsServer;
use serde_json::json;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A prefix and stream name no other test run uses.
fn unique() -> (SubjectPrefix, String) {
    let tag = Uuid::new_v4().simple().to_string();
    let tag = &tag[..12];
    (
        SubjectPrefix::new(format!("test.t{tag}")).unwrap(),
        format!("TEST_{tag}"),
    )
}

fn fast() -> RunnerOptions {
    RunnerOptions {
        batch_size: 7,
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(50),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(200),
        lag_every: Duration::ZERO,
        ..RunnerOptions::default()
    }
}

/// A test's JetStream stream name; the stream is deleted when this drops, whether the test
/// passed or not.
struct Stream(String);

impl std::ops::Deref for Stream {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Stream {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Its own thread and runtime: drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = chronik_relay::async_nats::connect(nats_url()).await {
                    // Already gone is fine.
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

fn fresh() -> (RelayConfig, Stream) {
    let (prefix, stream) = unique();
    let config = RelayConfig::new(nats_url())
        .subject_prefix(prefix)
        .stream_name(stream.clone())
        .runner_options(fast())
        .max_in_flight(4);
    (config, Stream(stream))
}

async fn feed(store: &impl EventStore) -> Vec<RecordedEvent> {
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10_000)
        .await
        .unwrap()
        .events
}

/// Runs `relay` over `store` until it has checkpointed the feed's head, then stops it.
async fn relay_all<S: EventStore + CheckpointStore + 'static>(
    relay: NatsRelay,
    store: Arc<S>,
) -> RelayStats {
    let relay = Arc::new(relay);
    let name = relay.projection_name().to_owned();
    let head = store.feed_head().await.unwrap().last.unwrap();
    let handle: RunnerHandle = Arc::clone(&relay).runner(store, None).spawn().unwrap();
    handle.wait_for(&name, head, DEADLINE).await.unwrap();
    handle.stop().await.unwrap();
    relay.stats()
}

/// Every message of `stream`, in JetStream's order.
async fn stored(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<chronik_relay::async_nats::jetstream::message::StreamMessage> {
    let mut s = js.get_stream(stream).await.unwrap();
    let n = s.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=n {
        out.push(s.get_raw_message(seq).await.unwrap());
    }
    out
}

fn header<'a>(
    m: &'a chronik_relay::async_nats::jetstream::message::StreamMessage,
    name: &str,
) -> Option<&'a str> {
    m.headers
        .get(name)
        .map(chronik_relay::async_nats::HeaderValue::as_str)
}

fn msg_ids(
    messages: &[chronik_relay::async_nats::jetstream::message::StreamMessage],
) -> Vec<String> {
    messages
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap().to_owned())
        .collect()
}

fn event_ids(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

async fn js() -> jetstream::Context {
    jetstream::new(
        chronik_relay::async_nats::connect(nats_url())
            .await
            .unwrap_or_else(|e| panic!("NATS must run at {} with -js: {e}", nats_url())),
    )
}

async fn append_round_robin(store: &MemoryStore, streams: &[StreamId], per_stream: usize) {
    for i in 0..per_stream {
        for s in streams {
            let expected = if i == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(chronik_core::Version::new(i as u64).unwrap())
            };
            store
                .append(s, expected, &[event("LineAdded", json!({ "i": i }))])
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn publishes_every_event_in_feed_order_with_its_headers() {
    let store = Arc::new(MemoryStore::new());
    let streams = [stream("order"), stream("order"), stream("payment")];
    let correlation = CorrelationId::new(Uuid::new_v4());
    let causation = CausationId::new(Uuid::new_v4());
    let first = NewEvent::new(
        EventId::new(Uuid::now_v7()).unwrap(),
        EventType::new("OrderPlaced").unwrap(),
        2,
        json!({ "customer": "ada" }),
        Metadata::default()
            .with_correlation(correlation)
            .with_causation(causation),
    )
    .unwrap();
    store
        .append(&stream("order"), ExpectedVersion::NoStream, &[first])
        .await
        .unwrap();
    append_round_robin(&store, &streams, 5).await;
    let events = feed(&*store).await;
    assert_eq!(events.len(), 16);

    let (config, name) = fresh();
    let prefix = config.prefix().clone();
    let relay = NatsRelay::connect(config).await.unwrap();
    let stats = relay_all(relay, Arc::clone(&store)).await;
    assert_eq!(stats.acknowledged, 16);
    assert_eq!(stats.duplicates, 0);

    let js = js().await;
    let messages = stored(&js, &name).await;
    assert_eq!(
        msg_ids(&messages),
        event_ids(&events),
        "feed order, each once"
    );
    for (m, e) in messages.iter().zip(&events) {
        assert_eq!(m.subject.as_str(), prefix.subject(&e.stream_id));
        assert_eq!(header(m, headers::EVENT_TYPE), Some(e.event_type.as_str()));
        let schema = e.schema_version.to_string();
        assert_eq!(header(m, headers::SCHEMA_VERSION), Some(schema.as_str()));
        assert_eq!(header(m, headers::STREAM_ID), Some(e.stream_id.as_str()));
        let version = e.version.to_string();
        assert_eq!(header(m, headers::STREAM_VERSION), Some(version.as_str()));
        let cursor = e.cursor.to_string();
        assert_eq!(header(m, headers::CURSOR), Some(cursor.as_str()));
        let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(payload, e.payload);
    }
    let first = &messages[0];
    assert_eq!(header(first, headers::SCHEMA_VERSION), Some("2"));
    let c = correlation.to_string();
    assert_eq!(header(first, headers::CORRELATION_ID), Some(c.as_str()));
    let c = causation.to_string();
    assert_eq!(header(first, headers::CAUSATION_ID), Some(c.as_str()));
    assert_eq!(header(&messages[1], headers::CORRELATION_ID), None);
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint_and_resends_are_discarded() {
    let store = Arc::new(MemoryStore::new());
    let streams = [stream("order"), stream("order")];
    append_round_robin(&store, &streams, 5).await;
    let (config, name) = fresh();
    let relay_name = config.resolved_name();

    let stats = relay_all(
        NatsRelay::connect(config.clone()).await.unwrap(),
        Arc::clone(&store),
    )
    .await;
    assert_eq!((stats.acknowledged, stats.duplicates), (10, 0));

    // A plain restart publishes only what came after the checkpoint.
    append_round_robin(&store, &[stream("order")], 3).await;
    let stats = relay_all(
        NatsRelay::connect(config.clone()).await.unwrap(),
        Arc::clone(&store),
    )
    .await;
    assert_eq!((stats.acknowledged, stats.duplicates), (3, 0));

    // A relay that died before its checkpoint (here: the checkpoint rewound) sends
    // everything again; JetStream discards every re-send by its Nats-Msg-Id.
    store
        .save_checkpoint(&relay_name, FeedCursor::START, 0)
        .await
        .unwrap();
    append_round_robin(&store, &[stream("payment")], 2).await;
    let stats = relay_all(
        NatsRelay::connect(config).await.unwrap(),
        Arc::clone(&store),
    )
    .await;
    assert_eq!((stats.acknowledged, stats.duplicates), (15, 13));

    let js = js().await;
    let messages = stored(&js, &name).await;
    assert_eq!(msg_ids(&messages), event_ids(&feed(&*store).await));
}

#[tokio::test]
async fn filters_by_category_and_by_type() {
    let store = Arc::new(MemoryStore::new());
    append_round_robin(&store, &[stream("order"), stream("payment")], 3).await;
    store
        .append(
            &stream("order"),
            ExpectedVersion::NoStream,
            &[event("OrderShipped", json!({}))],
        )
        .await
        .unwrap();
    let events = feed(&*store).await;
    let js = js().await;

    let (config, name) = fresh();
    let relay = NatsRelay::connect(config.categories(vec!["payment".to_owned()]))
        .await
        .unwrap();
    relay_all(relay, Arc::clone(&store)).await;
    let want: Vec<_> = events
        .iter()
        .filter(|e| e.stream_id.category() == "payment")
        .cloned()
        .collect();
    assert_eq!(msg_ids(&stored(&js, &name).await), event_ids(&want));
    js.delete_stream(&name).await.unwrap();

    let (config, name) = fresh();
    let relay = NatsRelay::connect(config.event_types(vec!["OrderShipped".to_owned()]))
        .await
        .unwrap();
    relay_all(relay, Arc::clone(&store)).await;
    let want: Vec<_> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "OrderShipped")
        .cloned()
        .collect();
    assert_eq!(want.len(), 1);
    assert_eq!(msg_ids(&stored(&js, &name).await), event_ids(&want));
}

#[tokio::test]
async fn ids_with_subject_syntax_make_valid_subjects() {
    let store = Arc::new(MemoryStore::new());
    let odd = StreamId::new("order-a.b*c>d%e/ü").unwrap();
    let plain = stream("order");
    for s in [&odd, &plain] {
        store
            .append(
                s,
                ExpectedVersion::NoStream,
                &[event("OrderPlaced", json!({}))],
            )
            .await
            .unwrap();
    }
    let (config, name) = fresh();
    let prefix = config.prefix().clone();
    relay_all(
        NatsRelay::connect(config).await.unwrap(),
        Arc::clone(&store),
    )
    .await;

    let js = js().await;
    let messages = stored(&js, &name).await;
    assert_eq!(messages.len(), 2);
    let subject = messages[0].subject.as_str();
    let tokens: Vec<&str> = subject.split('.').collect();
    // prefix (2 tokens) + category + stream id: the id added no token and no wildcard.
    assert_eq!(tokens.len(), 4, "{subject}");
    assert!(
        !subject.contains('*') && !subject.contains('>'),
        "{subject}"
    );
    assert_eq!(tokens[2], "order");
    assert_eq!(decode_token(tokens[3]).as_deref(), Some(odd.as_str()));
    // A consumer of one category's wildcard takes both streams' events.
    let filter = prefix.category_wildcard("order");
    let mut s = js.get_stream(&name).await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.state.subjects_count, 2);
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: filter,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumer = consumer;
    assert_eq!(consumer.info().await.unwrap().num_pending, 2);
}

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn relays_from_postgres_too(pool: sqlx::PgPool) {
    let store = Arc::new(chronik_postgres::PgEventStore::from_pool(pool));
    for s in [stream("order"), stream("payment")] {
        store
            .append(
                &s,
                ExpectedVersion::NoStream,
                &[event("A", json!({})), event("B", json!({ "n": 2 }))],
            )
            .await
            .unwrap();
    }
    let (config, name) = fresh();
    let stats = relay_all(
        NatsRelay::connect(config).await.unwrap(),
        Arc::clone(&store),
    )
    .await;
    assert_eq!(stats.acknowledged, 4);
    let js = js().await;
    assert_eq!(
        msg_ids(&stored(&js, &name).await),
        event_ids(&feed(&*store).await)
    );
}

#[tokio::test]
async fn a_server_without_jetstream_is_named_as_such() {
    let server = NatsServer::start_without_jetstream().unwrap();
    let err = NatsRelay::connect(RelayConfig::new(server.url()))
        .await
        .unwrap_err();
    assert!(matches!(err, RelayError::NoJetStream { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&server.url()) && message.contains("-js"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_naming_the_url() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let err = NatsRelay::connect(RelayConfig::new("nats://user:secret@127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RelayError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("nats://***@127.0.0.1:1"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test]
async fn an_existing_stream_with_a_short_duplicate_window_is_refused() {
    let (config, name) = fresh();
    let js = js().await;
    js.create_stream(StreamConfig {
        name: name.to_string(),
        subjects: vec![config.prefix().wildcard()],
        duplicate_window: Duration::from_secs(1),
        ..StreamConfig::default()
    })
    .await
    .unwrap();
    let err = NatsRelay::connect(config.clone()).await.unwrap_err();
    assert!(matches!(err, RelayError::StreamMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("duplicate window"), "{err}");
    js.delete_stream(&name).await.unwrap();

    js.create_stream(StreamConfig {
        name: name.to_string(),
        subjects: vec!["elsewhere.>".to_owned()],
        ..StreamConfig::default()
    })
    .await
    .unwrap();
    let err = NatsRelay::connect(config).await.unwrap_err();
    assert!(err.to_string().contains("do not cover"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_publish_loses_nothing_and_stores_nothing_twice() {
    let mut server = NatsServer::start().unwrap();
    let store = Arc::new(MemoryStore::new());
    let (prefix, name) = unique();
    let config = RelayConfig::new(server.url())
        .subject_prefix(prefix)
        .stream_name(name.clone())
        .runner_options(fast())
        .ack_timeout(Duration::from_millis(500))
        .max_in_flight(4);
    let relay = Arc::new(NatsRelay::connect(config).await.unwrap());
    let projection = relay.projection_name().to_owned();
    let handle = Arc::clone(&relay)
        .runner(Arc::clone(&store), None)
        .spawn()
        .unwrap();

    // A writer appends all along: before the restart, while the server is down, after.
    let streams: Vec<StreamId> = (0..10).map(|_| stream("order")).collect();
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..600_usize {
                let s = &streams[i % streams.len()];
                store
                    .append(
                        s,
                        ExpectedVersion::Any,
                        &[event("LineAdded", json!({ "i": i }))],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while relay.stats().acknowledged < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The connection drops with publishes in flight; the server comes back on its store.
    tokio::task::block_in_place(|| server.stop()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| server.run()).unwrap();
    writer.await.unwrap();

    let head = store.feed_head().await.unwrap().last.unwrap();
    handle
        .wait_for(&projection, head, Duration::from_secs(120))
        .await
        .unwrap();
    handle.stop().await.unwrap();
    let js = jetstream::new(
        chronik_relay::async_nats::connect(server.url())
            .await
            .unwrap(),
    );
    // Every event once, in feed order: re-sends after the drop were discarded by their
    // Nats-Msg-Id, and the order guard kept a lost publish from being overtaken.
    assert_eq!(
        msg_ids(&stored(&js, &name).await),
        event_ids(&feed(&*store).await)
    );
}

/// The relay fed from a hot standby (`PgStandby::feed_of`) of a throwaway primary, relaying
/// one category: while the standby's replay is paused it publishes what the standby has and
/// waits there (its checkpoint stays within the standby's feed, which a filtered runner
/// advances to: never to the primary's head); resumed, it publishes the rest. Every
/// selected event is in JetStream once, in feed order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_from_a_hot_standby_and_waits_while_it_is_paused() {
    use chronik_postgres::{PgEventStore, PgStandby, PgStoreConfig};
    let replica = tokio::task::spawn_blocking(chronik_testkit::replica::Replica::start)
        .await
        .unwrap()
        .expect("a primary and a standby");
    let primary = PgEventStore::connect(&replica.primary_url()).await.unwrap();
    primary.migrate().await.unwrap();
    let append = |n: usize| {
        let primary = primary.clone();
        async move {
            for i in 0..n {
                for category in ["order", "payment"] {
                    primary
                        .append(
                            &stream(category),
                            ExpectedVersion::NoStream,
                            &[event("A", json!({ "i": i })), event("B", json!({}))],
                        )
                        .await
                        .unwrap();
                }
            }
            primary.feed_head().await.unwrap().last.unwrap()
        }
    };
    let first_head = append(5).await;
    let standby = PgStandby::connect(&replica.standby_url(), PgStoreConfig::default())
        .await
        .unwrap();
    let feed_store = Arc::new(standby.feed_of(primary.clone()));
    let (config, name) = fresh();
    let relay = Arc::new(
        NatsRelay::connect(config.categories(vec!["order".to_owned()]))
            .await
            .unwrap(),
    );
    let projection = relay.projection_name().to_owned();
    let handle = Arc::clone(&relay)
        .runner(Arc::clone(&feed_store), None)
        .spawn()
        .unwrap();
    handle
        .wait_for(&projection, first_head, Duration::from_secs(60))
        .await
        .unwrap();

    // Paused: the standby's feed stops where replay stopped; the primary goes on.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(standby.store().pool())
        .await
        .unwrap();
    let head = append(5).await;
    let paused_at = standby.store().feed_head().await.unwrap().last.unwrap();
    assert!(
        paused_at < head,
        "the paused standby must trail the primary"
    );
    let status = handle
        .wait_for(&projection, paused_at, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        status.checkpoint < head,
        "the checkpoint passed what the paused standby has: {status:?}"
    );
    let js = js().await;
    let selected = |events: Vec<RecordedEvent>, upto: FeedCursor| {
        events
            .into_iter()
            .filter(|e| e.stream_id.category() == "order" && e.cursor <= upto)
            .collect::<Vec<_>>()
    };
    let all = feed(&primary).await;
    assert_eq!(
        msg_ids(&stored(&js, &name).await),
        event_ids(&selected(all.clone(), paused_at)),
        "only what the standby had is published"
    );

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(standby.store().pool())
        .await
        .unwrap();
    handle
        .wait_for(&projection, head, Duration::from_secs(60))
        .await
        .unwrap();
    handle.stop().await.unwrap();
    assert_eq!(
        msg_ids(&stored(&js, &name).await),
        event_ids(&selected(all, head)),
        "every selected event once, in feed order"
    );
}
