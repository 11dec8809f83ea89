//! The ship-paid-orders reactor: delivery at least once, reactions exactly once, on the
//! in-memory store and on PostgreSQL.
//!
//! - a crash after the reaction's append and before the checkpoint (injected: the handler
//!   fails once, right after its reaction was appended) makes the runner redeliver the
//!   payment; the order is shipped once;
//! - deliveries racing each other ship once;
//! - the chain command -> PaymentReceived -> reaction -> OrderShipped records the right
//!   correlation and causation at every step.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chronik::RunnerBuilder as _;
use chronik::projections::RunnerOptions;
use chronik::{
    Aggregate as _, CheckpointStore, EventStore, FeedFilter, HandlerError, MemoryStore,
    PgEventStore, PgStoreConfig, Projection, ProjectionRunner, ReactOutcome, RecordedEvent,
    Repository, SchemaName, StreamId, Uuid, Version,
};
use futures::TryStreamExt as _;
use orders::{Order, OrderCommand, Payment, PaymentCommand, ShipPaidOrders};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn events<S: EventStore>(store: &S, id: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(id, Version::ZERO)
        .try_collect()
        .await
        .unwrap()
}

/// Places an order and has its payment received; returns the order's stream, the
/// payment's stream and the `PaymentReceived` event.
async fn paid_order<S: EventStore + Clone>(store: &S) -> (StreamId, StreamId, RecordedEvent) {
    let key = Uuid::new_v4().simple().to_string();
    let (order, payment) = (
        Order::stream_id(&key).unwrap(),
        Payment::stream_id(&key).unwrap(),
    );
    let orders = Repository::<Order, _>::new(store.clone());
    let payments = Repository::<Payment, _>::new(store.clone());
    orders
        .execute(
            &order,
            OrderCommand::Place {
                customer_id: "c-1".into(),
                total_amount: 1_250,
            },
        )
        .await
        .unwrap();
    payments
        .execute(
            &payment,
            PaymentCommand::Request {
                order_id: key.clone(),
                amount: 1_250,
            },
        )
        .await
        .unwrap();
    payments
        .execute(&payment, PaymentCommand::Receive { amount: 1_250 })
        .await
        .unwrap();
    let received = events(store, &payment).await.pop().unwrap();
    assert_eq!(received.event_type.as_str(), "PaymentReceived");
    (order, payment, received)
}

fn shipped(events: &[RecordedEvent]) -> Vec<&RecordedEvent> {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == "OrderShipped")
        .collect()
}

/// Reacts, then fails the first time: the reaction is appended, the checkpoint is not.
struct CrashOnce<S: EventStore + 'static> {
    inner: ShipPaidOrders<S>,
    crashed: AtomicBool,
}

impl<S: EventStore + 'static> std::fmt::Debug for CrashOnce<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashOnce")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl<S: EventStore + 'static> Projection for CrashOnce<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn filter(&self) -> FeedFilter {
        self.inner.filter()
    }
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let outcome = self.inner.react(event).await?;
        if !self.crashed.swap(true, Ordering::SeqCst) {
            assert!(matches!(outcome, ReactOutcome::Executed(_)), "{outcome:?}");
            return Err(HandlerError::new(
                "injected crash after the reaction's append",
            ));
        }
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn a_redelivered_payment_ships_once<S>(store: S)
where
    S: EventStore + CheckpointStore + Clone + 'static,
{
    let (order, payment, received) = paid_order(&store).await;
    let reactor = Arc::new(CrashOnce {
        inner: ShipPaidOrders::new(Repository::<Order, _>::new(store.clone()), "DHL"),
        crashed: AtomicBool::new(false),
    });
    let runner = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(reactor.clone())
        .with_options(RunnerOptions {
            poll_min: Duration::from_millis(5),
            retry_base: Duration::from_millis(5),
            ..RunnerOptions::default()
        })
        .spawn()
        .unwrap();
    runner
        .wait_for(
            orders::payments::SHIP_PAID_ORDERS,
            received.cursor,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    runner.stop().await.unwrap();
    assert!(
        reactor.crashed.load(Ordering::SeqCst),
        "the crash was injected"
    );

    let order_events = events(&store, &order).await;
    let ships = shipped(&order_events);
    assert_eq!(ships.len(), 1, "shipped exactly once: {order_events:#?}");
    // command -> PaymentReceived -> reaction -> OrderShipped: the ids at every step.
    let ship = ships[0];
    assert_eq!(
        ship.metadata.correlation_id,
        received.metadata.correlation_id
    );
    assert_eq!(
        ship.metadata.causation_id.map(|c| c.as_uuid()),
        Some(received.event_id.as_uuid())
    );
    assert_eq!(
        received.metadata.causation_id.map(|c| c.as_uuid()),
        received.metadata.correlation_id.map(|c| c.as_uuid()),
        "the payment command started its chain"
    );
    assert_ne!(
        events(&store, &payment).await[0].metadata.correlation_id,
        received.metadata.correlation_id,
        "each command without a given correlation starts its own chain"
    );
    assert_eq!(
        ship.event_id,
        chronik::reaction_event_id(
            orders::payments::SHIP_PAID_ORDERS,
            received.event_id,
            &order,
            0
        )
        .unwrap(),
        "the reaction's id comes from the trigger"
    );
    // One more delivery, by hand: already done, nothing written.
    let again = ShipPaidOrders::new(Repository::<Order, _>::new(store.clone()), "DHL");
    assert_eq!(
        again.react(&received).await.unwrap(),
        ReactOutcome::AlreadyDone
    );
    assert_eq!(shipped(&events(&store, &order).await).len(), 1);
}

async fn racing_deliveries_ship_once<S: EventStore + Clone + 'static>(store: S) {
    let (order, _, received) = paid_order(&store).await;
    let received = Arc::new(received);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (store, received) = (store.clone(), received.clone());
            tokio::spawn(async move {
                ShipPaidOrders::new(Repository::<Order, _>::new(store), "UPS")
                    .react(&received)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut executed = 0;
    for t in tasks {
        match t.await.unwrap() {
            ReactOutcome::Executed(_) => executed += 1,
            ReactOutcome::AlreadyDone => {}
            ReactOutcome::Nothing => panic!("a paid, placed order is shipped"),
        }
    }
    assert_eq!(executed, 1);
    assert_eq!(shipped(&events(&store, &order).await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_payment_ships_once_in_memory() {
    a_redelivered_payment_ships_once(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deliveries_ship_once_in_memory() {
    racing_deliveries_ship_once(MemoryStore::new()).await;
}

async fn postgres() -> (PgEventStore, String) {
    let schema = format!("orders_react_{}", Uuid::new_v4().simple());
    let store = PgEventStore::connect_with(
        &database_url(),
        PgStoreConfig::with_schema(SchemaName::new(schema.clone()).unwrap()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, schema)
}

async fn drop_schema(store: &PgEventStore, schema: &str) {
    chronik::postgres::sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_payment_ships_once_on_postgres() {
    let (store, schema) = postgres().await;
    a_redelivered_payment_ships_once(store.clone()).await;
    drop_schema(&store, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deliveries_ship_once_on_postgres() {
    let (store, schema) = postgres().await;
    racing_deliveries_ship_once(store.clone()).await;
    drop_schema(&store, &schema).await;
}
