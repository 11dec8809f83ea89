//! The whole path a service takes, across every crate: commands through the repository
//! (retries, snapshots, upcasting), the global feed, and a projection whose read model must
//! agree with the aggregates it was built from. Once on the in-memory adapter, once on
//! PostgreSQL with the exactly-once runner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chronik_core::{Aggregate as _, DomainEvent, RecordedEvent};
use chronik_core::{
    EventId, EventType, ExpectedVersion, Metadata, NewEvent, RetryPolicy, SnapshotPolicy, StreamId,
};
use chronik_memory::MemoryStore;
use chronik_postgres::{
    PgEventStore, PgProjectionRunner, PgStoreConfig, SchemaName, wait_for_projection,
};
use chronik_projections::RunnerBuilder as _;
use chronik_projections::{HandlerError, Projection, ProjectionRunner};
use chronik_store::{CheckpointStore, EventStore, Repository, SnapshotStore, Upcasting};
use orders::{Order, OrderCommand, OrderEvent, OrderProjection};
use serde_json::json;
use sqlx::Executor;
use uuid::Uuid;

const ORDERS: usize = 12;

/// Drives a realistic workload: concurrent orders with lines, shipping, cancelling, a
/// refused command, and one legacy v1 event imported raw. Returns the order stream ids.
async fn workload<S>(store: Upcasting<S>) -> Vec<StreamId>
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
{
    let repo = Arc::new(
        Repository::<Order, _>::new(store.clone())
            .with_retry(
                RetryPolicy::new(20, Duration::from_millis(1), Duration::from_millis(20))
                    .expect("policy"),
            )
            .with_sleep(tokio::time::sleep)
            .with_snapshots(SnapshotPolicy::every(3).expect("policy")),
    );
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let id = Order::stream_id(Uuid::new_v4()).expect("id");
            let meta = Metadata::default().with_header("order", i.to_string());
            repo.execute_with(
                &id,
                OrderCommand::Place {
                    customer_id: format!("c-{i}"),
                    total_amount: 100,
                },
                meta.clone(),
            )
            .await
            .expect("place");
            for k in 0..(i % 5) {
                let line = OrderCommand::AddLine {
                    sku: format!("sku-{k}"),
                    quantity: 2,
                    unit_price: 10,
                };
                repo.execute_with(&id, line.clone(), meta.clone())
                    .await
                    .expect("line");
            }
            match i % 3 {
                0 => drop(
                    repo.execute_with(
                        &id,
                        OrderCommand::Ship {
                            carrier: "dhl".into(),
                        },
                        meta.clone(),
                    )
                    .await
                    .expect("ship"),
                ),
                1 => {
                    repo.execute_with(
                        &id,
                        OrderCommand::Cancel { reason: "r".into() },
                        meta.clone(),
                    )
                    .await
                    .expect("cancel");
                    let refused = repo
                        .execute_with(
                            &id,
                            OrderCommand::Ship {
                                carrier: "dhl".into(),
                            },
                            meta.clone(),
                        )
                        .await;
                    assert!(refused.is_err(), "a cancelled order cannot ship");
                }
                _ => {}
            }
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    // A legacy event written before `amount` became `total_amount`.
    let legacy = StreamId::for_category("order", Uuid::new_v4()).expect("id");
    let v1 = NewEvent::new(
        EventId::new(Uuid::new_v4()).expect("id"),
        EventType::new("OrderPlaced").expect("type"),
        1,
        json!({ "customer_id": "c-legacy", "amount": 4_200 }),
        Metadata::default(),
    )
    .expect("event");
    store
        .append(&legacy, ExpectedVersion::NoStream, &[v1])
        .await
        .expect("import v1");
    ids.push(legacy);
    ids
}

/// What the read model must say about each order: (status, total, lines, version).
async fn expected<S>(
    store: Upcasting<S>,
    ids: &[StreamId],
) -> BTreeMap<String, (String, i64, i64, i64)>
where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static,
{
    let repo = Repository::<Order, _>::new(store);
    let mut out = BTreeMap::new();
    for id in ids {
        let o = repo.load(id).await.expect("load");
        out.insert(
            id.to_string(),
            (
                o.state.status.as_str().to_owned(),
                o.state.total_amount,
                o.state.lines as i64,
                o.version.as_i64(),
            ),
        );
    }
    out
}

/// An in-process read model: the same facts as the Postgres `order_summaries` table.
#[derive(Debug, Default)]
struct Summaries(Mutex<BTreeMap<String, Order>>);

#[async_trait]
impl Projection for Summaries {
    fn name(&self) -> &str {
        "summaries"
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let e = OrderEvent::from_payload(event.event_type.as_str(), event.payload.clone())
            .map_err(HandlerError::from_error)?;
        let mut map = self.0.lock().map_err(|_| HandlerError::new("poisoned"))?;
        chronik_core::Aggregate::apply(map.entry(event.stream_id.to_string()).or_default(), &e);
        Ok(())
    }

    async fn clear(&self) -> Result<(), HandlerError> {
        self.0
            .lock()
            .map_err(|_| HandlerError::new("poisoned"))?
            .clear();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_service_end_to_end() {
    let registry = Arc::new(orders::upcasters().expect("registry"));
    let store = Upcasting::new(MemoryStore::new(), registry);
    let ids = workload(store.clone()).await;
    let want = expected(store.clone(), &ids).await;

    let summaries = Arc::new(Summaries::default());
    let runner = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(summaries.clone())
        .with_wake(store.inner().subscribe())
        .spawn()
        .expect("start");
    let head = store.feed_head().await.expect("head").last.expect("events");
    runner
        .wait_for("summaries", head, Duration::from_secs(30))
        .await
        .expect("caught up");
    let got: BTreeMap<_, _> = summaries
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|(k, o)| {
            (
                k.clone(),
                (o.status.as_str().to_owned(), o.total_amount, o.lines as i64),
            )
        })
        .collect();
    let want_no_version: BTreeMap<_, _> = want
        .iter()
        .map(|(k, (s, t, l, _))| (k.clone(), (s.clone(), *t, *l)))
        .collect();
    assert_eq!(got, want_no_version);
    assert_eq!(
        want[ids.last().expect("legacy").as_str()].1,
        4_200,
        "the v1 event was upcast on the feed"
    );
    runner.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_service_end_to_end() {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name the PostgreSQL to test against");
    let schema = format!("e2e_{}", Uuid::new_v4().simple());
    let config = PgStoreConfig::with_schema(SchemaName::new(schema.clone()).expect("schema"));
    let pg = PgEventStore::connect_with(&url, config)
        .await
        .expect("connect");
    pg.migrate().await.expect("migrate");
    OrderProjection::create_table(&pg)
        .await
        .expect("the read model's table");
    let registry = Arc::new(orders::upcasters().expect("registry"));
    let store = Upcasting::new(pg.clone(), registry.clone());

    let ids = workload(store.clone()).await;
    let want = expected(store.clone(), &ids).await;

    let projection = Arc::new(OrderProjection::new(pg.schema()));
    let runner = PgProjectionRunner::new(pg.clone(), projection.clone())
        .with_upcasters(registry)
        .spawn()
        .expect("spawn");
    let head = pg.feed_head().await.expect("head").last.expect("events");
    wait_for_projection(&pg, OrderProjection::NAME, head, Duration::from_secs(60))
        .await
        .expect("caught up");
    let rows = projection.all(pg.pool()).await.expect("read model");
    let got: BTreeMap<_, _> = rows
        .into_iter()
        .map(|r| (r.order_id, (r.status, r.total_amount, r.lines, r.version)))
        .collect();
    assert_eq!(got, want, "the read model agrees with every aggregate");
    runner.stop().await.expect("stop");
    pg.pool()
        .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .expect("drop schema");
}
