//! Repository behaviour on the in-memory reference adapter with the Orders domain.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chronik_core::{
    Aggregate as _, CausationId, CorrelationId, EventId, EventType, ExpectedVersion, FeedCursor,
    Metadata, NewEvent, RetryPolicy, SnapshotPolicy, SnapshotState, StreamId, Version,
};
use chronik_memory::MemoryStore;
use chronik_store::{
    AppendResult, EventStore, EventStream, FeedFilter, FeedHead, FeedPage, PayloadStream,
    Repository, RepositoryError, Snapshot, SnapshotStore, StoreError, Upcasting,
};
use chronik_testkit::Interloper;
use futures::TryStreamExt;
use orders::{Order, OrderCommand, OrderError, OrderStatus};
use serde_json::{Value, json};
use uuid::Uuid;

fn order_id() -> StreamId {
    Order::stream_id(Uuid::new_v4()).unwrap()
}

fn place() -> OrderCommand {
    OrderCommand::Place {
        customer_id: "c-1".into(),
        total_amount: 1_000,
    }
}

fn line() -> OrderCommand {
    OrderCommand::AddLine {
        sku: "sku".into(),
        quantity: 1,
        unit_price: 10,
    }
}

fn retrying<S: EventStore>(store: S) -> Repository<Order, S> {
    Repository::new(store)
        .with_retry(
            RetryPolicy::new(
                50,
                std::time::Duration::from_micros(100),
                std::time::Duration::from_millis(5),
            )
            .unwrap(),
        )
        .with_sleep(tokio::time::sleep)
}

#[tokio::test]
async fn execute_writes_events_with_correlation_and_causation() {
    let store = MemoryStore::new();
    let repo = retrying(store.clone());
    let id = order_id();
    let meta = Metadata::default()
        .with_correlation(CorrelationId::new(Uuid::new_v4()))
        .with_causation(CausationId::new(Uuid::new_v4()))
        .with_header("user", "alice");
    let out = repo.execute_with(&id, place(), meta.clone()).await.unwrap();
    assert_eq!(
        (out.version, out.events_written, out.attempts),
        (Version::FIRST, 1, 1)
    );
    repo.execute_with(&id, line(), meta.clone()).await.unwrap();
    let stored: Vec<_> = store
        .read_stream(&id, Version::ZERO)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().all(|e| e.metadata == meta),
        "metadata propagated to every event"
    );
    assert_eq!(stored[0].event_type.as_str(), "OrderPlaced");
    assert_eq!(stored[0].schema_version, 2);
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.state.status,
            loaded.state.total_amount,
            loaded.version
        ),
        (OrderStatus::Placed, 1_010, Version::new(2).unwrap())
    );
}

#[tokio::test]
async fn business_rules_refuse_and_write_nothing() {
    let store = MemoryStore::new();
    let repo = retrying(store.clone());
    let id = order_id();
    repo.execute(&id, place()).await.unwrap();
    repo.execute(&id, OrderCommand::Cancel { reason: "r".into() })
        .await
        .unwrap();
    let err = repo
        .execute(
            &id,
            OrderCommand::Ship {
                carrier: "dhl".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepositoryError::Domain(OrderError::ShipCancelled)),
        "{err}"
    );
    assert_eq!(
        store.stream_version(&id).await.unwrap(),
        Version::new(2).unwrap()
    );
}

#[tokio::test]
async fn a_lost_race_is_reloaded_redecided_and_retried() {
    let store = MemoryStore::new();
    let id = order_id();
    Repository::<Order, _>::new(store.clone())
        .execute(&id, place())
        .await
        .unwrap();
    // A competing writer adds a line between this command's load and its append.
    let competing = id.clone();
    let repo = retrying(Interloper::new(store.clone(), move |s: MemoryStore| {
        let id = competing.clone();
        async move {
            Repository::<Order, _>::new(s)
                .execute(&id, line())
                .await
                .map(|_| ())
                .map_err(|e| StoreError::backend(e.to_string(), false))
        }
    }));
    let out = repo.execute(&id, line()).await.unwrap();
    assert_eq!(
        (out.attempts, out.conflicts, out.version),
        (2, 1, Version::new(3).unwrap())
    );
    assert_eq!(
        repo.load(&id).await.unwrap().state.lines,
        2,
        "both lines kept: the loser re-decided on fresh state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_all_land() {
    const TASKS: usize = 24;
    let store = MemoryStore::new();
    let id = Arc::new(order_id());
    retrying(store.clone()).execute(&id, place()).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                retrying(store).execute(&id, line()).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let order = retrying(store).load(&id).await.unwrap();
    assert_eq!(order.state.lines, TASKS as u64);
    assert_eq!(order.version.get(), TASKS as u64 + 1);
}

#[tokio::test]
async fn snapshots_follow_the_policy_and_shorten_loads() {
    let store = MemoryStore::new();
    let repo = retrying(store.clone()).with_snapshots(SnapshotPolicy::every(10).unwrap());
    let id = order_id();
    repo.execute(&id, place()).await.unwrap();
    let mut taken = vec![];
    for _ in 0..24 {
        let out = repo.execute(&id, line()).await.unwrap();
        if out.snapshot_taken {
            taken.push(out.version.get());
        }
    }
    assert_eq!(taken, vec![10, 20]);
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.snapshot_version.get(),
            loaded.events_replayed,
            loaded.version.get()
        ),
        (20, 5, 25)
    );
    let full = retrying(store).load(&id).await.unwrap();
    assert_eq!(full.state, loaded.state);
    assert_eq!(full.events_replayed, 25);
}

#[tokio::test]
async fn snapshots_under_another_schema_or_undecodable_are_ignored() {
    let store = MemoryStore::new();
    let repo = retrying(store.clone()).with_snapshots(SnapshotPolicy::Never);
    let id = order_id();
    repo.execute(&id, place()).await.unwrap();
    repo.execute(&id, line()).await.unwrap();
    // A snapshot from an older state schema: a lie about the state that must not be used.
    store
        .save_snapshot(
            &id,
            Version::new(2).unwrap(),
            Order::STATE_SCHEMA_VERSION + 1,
            &json!({ "bogus": true }),
        )
        .await
        .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.snapshot_version,
            loaded.events_replayed,
            loaded.state.total_amount
        ),
        (Version::ZERO, 2, 1_010)
    );
    // Right schema number, but a state that does not decode: ignored too.
    store
        .save_snapshot(
            &id,
            Version::new(2).unwrap(),
            Order::STATE_SCHEMA_VERSION,
            &json!({ "status": 42 }),
        )
        .await
        .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version, loaded.state.total_amount),
        (Version::ZERO, 1_010)
    );
}

/// Events delegate to memory; snapshot writes always fail.
#[derive(Clone)]
struct BrokenSnapshots(MemoryStore);

impl EventStore for BrokenSnapshots {
    async fn append(
        &self,
        s: &StreamId,
        e: ExpectedVersion,
        ev: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.0.append(s, e, ev).await
    }
    async fn append_streams(
        &self,
        appends: &[chronik_store::StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.0.append_streams(appends).await
    }

    fn read_stream(&self, s: &StreamId, from: Version) -> EventStream<'_> {
        self.0.read_stream(s, from)
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Version, StoreError> {
        self.0.stream_version(s).await
    }
    async fn read_feed(
        &self,
        a: FeedCursor,
        f: &FeedFilter,
        l: usize,
    ) -> Result<FeedPage, StoreError> {
        self.0.read_feed(a, f, l).await
    }
    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        self.0.feed_head().await
    }
    async fn count_after(&self, a: FeedCursor) -> Result<u64, StoreError> {
        self.0.count_after(a).await
    }
}

impl SnapshotStore for BrokenSnapshots {
    async fn load_snapshot(&self, _: &StreamId, _: u32) -> Result<Option<Snapshot>, StoreError> {
        Err(StoreError::backend("snapshot table unavailable", true))
    }
    async fn save_snapshot(
        &self,
        _: &StreamId,
        _: Version,
        _: u32,
        _: &Value,
    ) -> Result<(), StoreError> {
        Err(StoreError::backend("snapshot table unavailable", true))
    }
    async fn list_snapshots(&self, _: &StreamId) -> Result<Vec<Snapshot>, StoreError> {
        Ok(vec![])
    }
    async fn delete_snapshots(&self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[tokio::test]
async fn a_failed_snapshot_never_fails_the_command() {
    let store = MemoryStore::new();
    let repo =
        retrying(BrokenSnapshots(store.clone())).with_snapshots(SnapshotPolicy::every(1).unwrap());
    let id = order_id();
    let out = repo.execute(&id, place()).await.unwrap();
    assert!(!out.snapshot_taken);
    assert_eq!(
        repo.load(&id).await.unwrap().state.status,
        OrderStatus::Placed
    );
}

fn raw(event_type: &str, schema_version: u32, payload: Value) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new(event_type).unwrap(),
        schema_version,
        payload,
        Metadata::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn undecodable_events_are_errors_naming_stream_version_and_id() {
    let store = MemoryStore::new();
    let id = order_id();
    let bad = raw("OrderTeleported", 1, json!({}));
    store
        .append(
            &id,
            ExpectedVersion::NoStream,
            &[
                raw(
                    "OrderPlaced",
                    2,
                    json!({ "customer_id": "c", "total_amount": 1 }),
                ),
                bad.clone(),
            ],
        )
        .await
        .unwrap();
    let Err(e) = retrying(store.clone()).load(&id).await else {
        panic!("expected a decode error");
    };
    match &e {
        StoreError::Decode {
            stream,
            version,
            event_id,
            cursor: None,
            ..
        } => assert_eq!((stream, version.get(), *event_id), (&id, 2, bad.event_id())),
        other => panic!("expected a decode error without a cursor, got {other:?}"),
    }
    // A fold has no feed cursor: the message says what to do instead.
    assert!(
        e.to_string().starts_with(&format!(
            "cannot decode event {} (stream {id}, version 2): ",
            bad.event_id()
        )) && e.to_string().ends_with(
            "; events are never changed: if it is stored in an old schema, register an upcaster \
             that lifts it to what the code reads (or fix the one that failed); \
             the stream cannot be loaded until then"
        ),
        "{e}"
    );
}

/// Issue 14, item 4: an event read from the feed that does not upcast names its cursor,
/// and resuming after that cursor passes over it.
#[tokio::test]
async fn an_event_that_does_not_upcast_in_the_feed_names_its_cursor() {
    let store = MemoryStore::new();
    let id = order_id();
    // A v1 OrderPlaced without the `amount` the upcaster needs.
    let bad = raw("OrderPlaced", 1, json!({ "customer_id": "c" }));
    let good = raw(
        "LineAdded",
        1,
        json!({ "sku": "s", "quantity": 1, "unit_price": 2 }),
    );
    store
        .append(&id, ExpectedVersion::NoStream, &[bad.clone(), good.clone()])
        .await
        .unwrap();
    let upcasting = Upcasting::new(store.clone(), Arc::new(orders::upcasters().unwrap()));
    let feed = store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10)
        .await
        .unwrap()
        .events;
    let at = feed[0].cursor;
    let err = upcasting
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Decode { cursor: Some(c), event_id, version, .. }
            if *c == at && *event_id == bad.event_id() && version.get() == 1),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "cannot decode event {} (stream {id}, version 1, cursor {at}): ",
            bad.event_id()
        )) && err.to_string().ends_with(&format!(
            "a feed reader can pass over it by resuming after cursor {at}"
        )),
        "{err}"
    );
    let after = upcasting
        .read_feed(at, &FeedFilter::all(), 10)
        .await
        .unwrap()
        .events;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event_id, good.event_id());
}

#[tokio::test]
async fn v1_events_load_through_the_upcaster() {
    let store = MemoryStore::new();
    let id = order_id();
    store
        .append(
            &id,
            ExpectedVersion::NoStream,
            &[raw(
                "OrderPlaced",
                1,
                json!({ "customer_id": "c-old", "amount": 4_200 }),
            )],
        )
        .await
        .unwrap();
    // Without the upcaster the v1 payload does not decode: an error, not a silent default.
    assert!(matches!(
        retrying(store.clone()).load(&id).await,
        Err(StoreError::Decode { .. })
    ));
    let upcasting = Upcasting::new(store, Arc::new(orders::upcasters().unwrap()));
    let loaded = retrying(upcasting).load(&id).await.unwrap();
    assert_eq!(
        (loaded.state.customer_id.as_str(), loaded.state.total_amount),
        ("c-old", 4_200)
    );
}

#[tokio::test]
async fn stream_ids_are_category_prefixed() {
    let id = Order::stream_id("42").unwrap();
    assert_eq!((id.as_str(), id.category()), ("order-42", "order"));
    assert!(Order::stream_id("has space").is_err());
}

#[tokio::test]
async fn background_snapshots_are_written_off_the_command_path() {
    let store = MemoryStore::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The "runtime" here is a queue we drain by hand: proof that execute did not wait.
    let repo = retrying(store.clone()).with_background_snapshots(
        SnapshotPolicy::every(2).unwrap(),
        move |f| {
            tx.send(f).expect("queue");
        },
    );
    let id = order_id();
    repo.execute(&id, place()).await.unwrap();
    let out = repo.execute(&id, line()).await.unwrap();
    assert!(out.snapshot_taken);
    assert!(
        store
            .load_snapshot(&id, Order::STATE_SCHEMA_VERSION)
            .await
            .unwrap()
            .is_none(),
        "not written yet"
    );
    rx.recv().await.expect("a snapshot write was spawned").await;
    let snap = store
        .load_snapshot(&id, Order::STATE_SCHEMA_VERSION)
        .await
        .unwrap()
        .expect("written");
    assert_eq!(snap.version, Version::new(2).unwrap());
    assert_eq!(
        repo.load(&id).await.unwrap().snapshot_version,
        Version::new(2).unwrap()
    );
}

#[tokio::test]
async fn an_upcasting_store_is_still_a_snapshot_and_checkpoint_store() {
    use chronik_store::CheckpointStore;
    let store = MemoryStore::new();
    let upcasting = Upcasting::new(store.clone(), Arc::new(orders::upcasters().unwrap()));
    let repo = retrying(upcasting.clone()).with_snapshots(SnapshotPolicy::every(1).unwrap());
    let id = order_id();
    let out = repo.execute(&id, place()).await.unwrap();
    assert!(out.snapshot_taken);
    assert!(
        store
            .load_snapshot(&id, Order::STATE_SCHEMA_VERSION)
            .await
            .unwrap()
            .is_some(),
        "written through to the inner store"
    );
    upcasting
        .save_checkpoint("orders", out.append.unwrap().cursor, 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .load_checkpoint("orders")
            .await
            .unwrap()
            .unwrap()
            .events_processed,
        1
    );
}

/// Forwards to memory and counts the reads and appends it serves.
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryStore,
    reads: Arc<AtomicUsize>,
    appends: Arc<AtomicUsize>,
}

impl Counting {
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
    fn appends(&self) -> usize {
        self.appends.load(Ordering::SeqCst)
    }
}

impl EventStore for Counting {
    async fn append(
        &self,
        s: &StreamId,
        e: ExpectedVersion,
        ev: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(s, e, ev).await
    }
    async fn append_streams(
        &self,
        appends: &[chronik_store::StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.inner.append_streams(appends).await
    }

    fn read_stream(&self, s: &StreamId, from: Version) -> EventStream<'_> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_stream(s, from)
    }
    fn read_payloads(&self, s: &StreamId, from: Version) -> PayloadStream<'_> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_payloads(s, from)
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Version, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.stream_version(s).await
    }
    async fn read_feed(
        &self,
        a: FeedCursor,
        f: &FeedFilter,
        l: usize,
    ) -> Result<FeedPage, StoreError> {
        self.inner.read_feed(a, f, l).await
    }
    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        self.inner.feed_head().await
    }
    async fn count_after(&self, a: FeedCursor) -> Result<u64, StoreError> {
        self.inner.count_after(a).await
    }
}

#[tokio::test]
async fn a_cached_stream_is_decided_without_reading_it() {
    let store = Counting::default();
    let repo = retrying(store.clone()).with_cache(16);
    let id = order_id();
    let out = repo.execute(&id, place()).await.unwrap();
    assert!(!out.cached, "the first command reads the stream");
    assert_eq!(store.reads(), 1);
    for n in 2..=4 {
        let out = repo.execute(&id, line()).await.unwrap();
        assert_eq!(
            (out.cached, out.attempts, out.version.get()),
            (true, 1, n),
            "decided on the cached state"
        );
    }
    assert_eq!(
        (store.reads(), store.appends()),
        (1, 4),
        "no read after the first"
    );
    let loaded = retrying(store.inner.clone()).load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.state.lines,
            loaded.state.total_amount,
            loaded.version.get()
        ),
        (3, 1_030, 4)
    );
    // Without a cache, every command reads.
    let plain = retrying(store.clone());
    plain.execute(&id, line()).await.unwrap();
    assert_eq!(store.reads(), 2);
}

#[tokio::test]
async fn a_write_from_another_repository_makes_the_cached_state_conflict_and_reload() {
    let store = Counting::default();
    let slept: Arc<std::sync::Mutex<Vec<std::time::Duration>>> = Arc::default();
    let log = slept.clone();
    // No retries: the stale cached state must not use up the policy.
    let cached = Repository::<Order, _>::new(store.clone())
        .with_retry(RetryPolicy::no_retry())
        .with_sleep(move |d| {
            log.lock().unwrap().push(d);
            async {}
        })
        .with_cache(16);
    let other = retrying(store.inner.clone());
    let id = order_id();
    cached.execute(&id, place()).await.unwrap();
    other.execute(&id, line()).await.unwrap();
    let reads = store.reads();
    let out = cached.execute(&id, line()).await.unwrap();
    assert_eq!(
        (out.attempts, out.conflicts, out.cached, out.version.get()),
        (2, 1, false, 3),
        "the cached decision conflicted, the reloaded one landed"
    );
    assert_eq!(store.reads(), reads + 1, "one reload");
    assert_eq!(out.backoff, std::time::Duration::ZERO);
    assert!(
        slept.lock().unwrap().is_empty(),
        "a stale cache is not contention"
    );
    let loaded = other.load(&id).await.unwrap();
    assert_eq!(
        (
            loaded.state.lines,
            loaded.state.total_amount,
            loaded.version.get()
        ),
        (2, 1_020, 3),
        "both lines kept"
    );
    // The reloaded state is cached again.
    let out = cached.execute(&id, line()).await.unwrap();
    assert_eq!((out.cached, out.attempts, out.version.get()), (true, 1, 4));
}

#[tokio::test]
async fn a_refusal_is_never_made_on_a_cached_state() {
    let store = Counting::default();
    let cached = retrying(store.clone()).with_cache(16);
    let other = retrying(store.inner.clone());
    let id = order_id();
    // Refused on a fresh load: the empty order is cached.
    assert!(matches!(
        cached.execute(&id, line()).await,
        Err(RepositoryError::Domain(OrderError::NotPlaced))
    ));
    other.execute(&id, place()).await.unwrap();
    // The cached state would refuse again; the order exists now, so the line is added.
    let out = cached.execute(&id, line()).await.unwrap();
    assert_eq!((out.cached, out.version.get()), (false, 2));
    // A refusal that holds on the fresh load is returned, and nothing is written.
    other
        .execute(&id, OrderCommand::Cancel { reason: "r".into() })
        .await
        .unwrap();
    assert!(matches!(
        cached.execute(&id, line()).await,
        Err(RepositoryError::Domain(OrderError::Closed(_)))
    ));
    assert_eq!(
        store.inner.stream_version(&id).await.unwrap(),
        Version::new(3).unwrap()
    );
}

#[tokio::test]
async fn snapshots_and_the_cache_work_together() {
    let store = MemoryStore::new();
    let repo = retrying(store.clone())
        .with_cache(16)
        .with_snapshots(SnapshotPolicy::every(3).unwrap());
    let id = order_id();
    repo.execute(&id, place()).await.unwrap();
    let mut taken = vec![];
    for _ in 0..8 {
        let out = repo.execute(&id, line()).await.unwrap();
        assert!(out.cached);
        if out.snapshot_taken {
            taken.push(out.version.get());
        }
    }
    assert_eq!(
        taken,
        vec![3, 6, 9],
        "the policy counts from the cached snapshot version"
    );
    let from_snapshot = repo.load(&id).await.unwrap();
    assert_eq!(from_snapshot.snapshot_version.get(), 9);
    assert_eq!(
        from_snapshot.state,
        retrying(store).load(&id).await.unwrap().state
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_repositories_racing_on_one_stream_lose_nothing() {
    const TASKS: usize = 8;
    const COMMANDS: usize = 10;
    let store = MemoryStore::new();
    let id = Arc::new(order_id());
    retrying(store.clone()).execute(&id, place()).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
            tokio::spawn(async move {
                // One repository per task, as one per process.
                let repo = retrying(store).with_cache(4);
                barrier.wait().await;
                for _ in 0..COMMANDS {
                    repo.execute(&id, line()).await?;
                }
                Ok::<_, RepositoryError<OrderError>>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let order = retrying(store).load(&id).await.unwrap();
    assert_eq!(order.state.lines, (TASKS * COMMANDS) as u64);
    assert_eq!(order.version.get(), (TASKS * COMMANDS) as u64 + 1);
}

/// Forwards to memory and logs, in order, what a command does through the store, its
/// snapshots and its sessions.
#[derive(Clone, Default)]
struct Sessioned {
    inner: MemoryStore,
    log: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl Sessioned {
    fn note(&self, what: &'static str) {
        self.log.lock().unwrap().push(what);
    }
    fn take_log(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A session of [`Sessioned`]: logs its operations and when it is dropped.
struct LogSession(Sessioned);

impl chronik_store::StoreSession for LogSession {
    fn read_payloads(&mut self, s: &StreamId, from: Version) -> PayloadStream<'_> {
        self.0.note("session read");
        self.0.inner.read_payloads(s, from)
    }
    fn append<'s>(
        &'s mut self,
        s: &'s StreamId,
        e: ExpectedVersion,
        ev: &'s [NewEvent],
    ) -> futures::future::BoxFuture<'s, Result<AppendResult, StoreError>> {
        self.0.note("session append");
        Box::pin(self.0.inner.append(s, e, ev))
    }
}

impl Drop for LogSession {
    fn drop(&mut self) {
        self.0.note("session closed");
    }
}

impl EventStore for Sessioned {
    async fn append(
        &self,
        s: &StreamId,
        e: ExpectedVersion,
        ev: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.note("store append");
        self.inner.append(s, e, ev).await
    }
    async fn append_streams(
        &self,
        appends: &[chronik_store::StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.note("store append");
        self.inner.append_streams(appends).await
    }
    fn read_stream(&self, s: &StreamId, from: Version) -> EventStream<'_> {
        self.note("store read");
        self.inner.read_stream(s, from)
    }
    fn read_payloads(&self, s: &StreamId, from: Version) -> PayloadStream<'_> {
        self.note("store read");
        self.inner.read_payloads(s, from)
    }
    fn session(&self) -> chronik_store::SessionFuture<'_> {
        self.note("session opened");
        Box::pin(async move {
            Ok(Some(
                Box::new(LogSession(self.clone())) as chronik_store::BoxSession
            ))
        })
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(s).await
    }
    async fn read_feed(
        &self,
        a: FeedCursor,
        f: &FeedFilter,
        l: usize,
    ) -> Result<FeedPage, StoreError> {
        self.inner.read_feed(a, f, l).await
    }
    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        self.inner.feed_head().await
    }
    async fn count_after(&self, a: FeedCursor) -> Result<u64, StoreError> {
        self.inner.count_after(a).await
    }
}

impl SnapshotStore for Sessioned {
    async fn load_snapshot(
        &self,
        s: &StreamId,
        schema: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.note("snapshot load");
        self.inner.load_snapshot(s, schema).await
    }
    async fn save_snapshot(
        &self,
        s: &StreamId,
        v: Version,
        schema: u32,
        state: &Value,
    ) -> Result<(), StoreError> {
        self.note("snapshot save");
        self.inner.save_snapshot(s, v, schema, state).await
    }
    async fn list_snapshots(&self, s: &StreamId) -> Result<Vec<Snapshot>, StoreError> {
        self.inner.list_snapshots(s).await
    }
    async fn delete_snapshots(&self, category: &str) -> Result<u64, StoreError> {
        self.inner.delete_snapshots(category).await
    }
}

#[tokio::test]
async fn a_command_reads_and_appends_on_one_session_and_holds_nothing_else() {
    let store = Sessioned::default();
    let repo = retrying(store.clone()).with_snapshots(SnapshotPolicy::every(1).unwrap());
    let id = order_id();
    repo.execute(&id, place()).await.unwrap();
    // The snapshot is read before the session is taken and written after it is dropped,
    // so that a pool of one connection serves the whole command.
    assert_eq!(
        store.take_log(),
        [
            "snapshot load",
            "session opened",
            "session read",
            "session append",
            "session closed",
            "snapshot save",
        ]
    );
    // Refused and decided-nothing commands hold no session after they return.
    let err = repo.execute(&id, place()).await;
    assert!(matches!(err, Err(RepositoryError::Domain(_))), "{err:?}");
    let log = store.take_log();
    assert_eq!(
        log.iter().filter(|w| **w == "session opened").count(),
        log.iter().filter(|w| **w == "session closed").count(),
        "{log:?}"
    );
    assert!(
        !log.contains(&"store read") && !log.contains(&"store append"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_command_on_an_upcasting_store_upcasts_what_its_session_reads() {
    let store = Sessioned::default();
    let id = order_id();
    store
        .inner
        .append(
            &id,
            ExpectedVersion::NoStream,
            &[raw(
                "OrderPlaced",
                1,
                json!({ "customer_id": "c-old", "amount": 4_200 }),
            )],
        )
        .await
        .unwrap();
    let upcasting = Upcasting::new(store.clone(), Arc::new(orders::upcasters().unwrap()));
    // The v1 event decodes only upcast: the command would fail with a decode error if the
    // session's read bypassed the upcaster.
    let out = retrying(upcasting).execute(&id, line()).await.unwrap();
    assert_eq!(out.version, Version::new(2).unwrap());
    assert_eq!(
        store.take_log(),
        [
            "session opened",
            "session read",
            "session append",
            "session closed"
        ]
    );
}
