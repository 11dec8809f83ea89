//! Phase 8 of the demo: a process across streams (issue 16's worked example).
//!
//! 1. a checkout places two orders and requests their two payments in one atomic append
//!    across the four streams (`Repository::execute_all` on [`Sale`], which is
//!    `OneOf<Order, Payment>`);
//! 2. a second checkout naming an order that is already placed is refused as a whole: its
//!    new order and payment are not created;
//! 3. one payment is received, under the checkout's correlation id;
//! 4. the `ShipPaidOrders` reactor, on the generic projection runner, ships that order (and
//!    only that one);
//! 5. a restart that lost the reactor's checkpoint delivers the payment again: the reaction
//!    is found already done, nothing is written;
//! 6. the chain, read back from the feed (waiting until the shipment is visible: on
//!    PostgreSQL a page can be empty while older transactions are still open), is printed
//!    as `chronik trace` prints it.
//!
//! The reactor's checkpoint is the demo's own name and is deleted at the end, whatever
//! happened.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_trait::async_trait;
use chronik::RunnerBuilder as _;
use chronik::projections::RunnerOptions;
use chronik::{
    Aggregate as _, CorrelationId, Either, EventId, EventStore, FeedCursor, FeedFilter,
    HandlerError, Metadata, OneOfError, Projection, ProjectionRunner, ReactOutcome, RecordedEvent,
    Repository, RepositoryError, StreamId, Upcasting, Version,
};
use futures::TryStreamExt as _;
use orders::{
    Order, OrderCommand, OrderError, OrderStatus, Payment, PaymentCommand, Sale, ShipPaidOrders,
};
use uuid::Uuid;

use crate::demo::{Store, detail, heading};

/// The reactor's name in the demo: its checkpoint (deleted again at the end). Its reactions'
/// ids are `ShipPaidOrders`' own.
pub(crate) const REACTOR: &str = "chronik-demo-ship-paid-orders";
/// How long the phase waits for the reactor or the feed before the demo fails.
const WAIT: Duration = Duration::from_secs(60);

/// What phase 8 did, for the summary.
#[derive(Debug)]
pub(crate) struct Process {
    /// Events it wrote (4 by the checkout, the payment, the shipment).
    pub(crate) events: u64,
}

/// `ShipPaidOrders` as the runner's projection under the demo's name, keeping what each
/// delivery did.
struct Recording<S: EventStore + 'static> {
    inner: ShipPaidOrders<S>,
    outcomes: Mutex<Vec<(EventId, ReactOutcome)>>,
}

impl<S: EventStore + 'static> std::fmt::Debug for Recording<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + 'static> Recording<S> {
    /// What the deliveries of `trigger` did, in order.
    fn outcomes_of(&self, trigger: EventId) -> Vec<ReactOutcome> {
        self.outcomes
            .lock()
            .map(|o| {
                o.iter()
                    .filter(|(id, _)| *id == trigger)
                    .map(|(_, outcome)| outcome.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl<S: EventStore + 'static> Projection for Recording<S> {
    fn name(&self) -> &str {
        REACTOR
    }

    fn filter(&self) -> FeedFilter {
        self.inner.filter()
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let outcome = self.inner.react(event).await?;
        if let Ok(mut outcomes) = self.outcomes.lock() {
            outcomes.push((event.event_id, outcome));
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn place(customer: &str, total_amount: i64) -> Either<OrderCommand, PaymentCommand> {
    Either::First(OrderCommand::Place {
        customer_id: customer.to_owned(),
        total_amount,
    })
}

fn request(order_id: &str, amount: i64) -> Either<OrderCommand, PaymentCommand> {
    Either::Second(PaymentCommand::Request {
        order_id: order_id.to_owned(),
        amount,
    })
}

async fn events_of<S: Store>(store: &S, id: &StreamId) -> anyhow::Result<Vec<RecordedEvent>> {
    store
        .read_stream(id, Version::ZERO)
        .try_collect()
        .await
        .with_context(|| format!("cannot read {id}"))
}

/// Runs phase 8 on `store`.
pub(crate) async fn run<S: Store>(store: &S) -> anyhow::Result<Process> {
    heading(
        8,
        "a process across streams: checkout, payment, a reactor, the trace",
    )?;
    let registry = Arc::new(orders::upcasters().context("the orders upcasters are invalid")?);
    let upcast = Upcasting::new(store.clone(), registry.clone());
    let start = store
        .feed_head()
        .await
        .context("cannot read the feed head")?
        .last
        .unwrap_or(FeedCursor::START);
    let key = Uuid::new_v4().simple().to_string();
    let order_key = |n: u32| format!("{key}-{n}");
    let (o1, o2, o3) = (
        Order::stream_id(order_key(1))?,
        Order::stream_id(order_key(2))?,
        Order::stream_id(order_key(3))?,
    );
    let (p1, p2, p3) = (
        Payment::stream_id(order_key(1))?,
        Payment::stream_id(order_key(2))?,
        Payment::stream_id(order_key(3))?,
    );
    let sales = Repository::<Sale, _>::new(upcast.clone()).with_sleep(tokio::time::sleep);
    let correlation = CorrelationId::new(Uuid::now_v7());

    // 1. One checkout, four streams, one append.
    let checkout = sales
        .execute_all(
            &[
                (o1.clone(), place("checkout-customer", 2_500)),
                (o2.clone(), place("checkout-customer", 1_200)),
                (p1.clone(), request(&order_key(1), 2_500)),
                (p2.clone(), request(&order_key(2), 1_200)),
            ],
            Metadata::default().with_correlation(correlation),
        )
        .await
        .context("the checkout failed")?;
    let transactions: Vec<u64> = checkout
        .appends
        .iter()
        .map(|a| a.cursor.transaction())
        .collect();
    ensure!(
        checkout.appends.len() == 4 && transactions.iter().all(|t| *t == transactions[0]),
        "the checkout was not one append across four streams: {checkout:?}"
    );
    detail(format_args!(
        "checkout: 2 orders placed and their 2 payments requested in one atomic append across \
         4 streams (execute_all on OneOf<Order, Payment>; feed transaction {})",
        transactions[0]
    ))?;

    // 2. Refused as a whole.
    match sales
        .execute_all(
            &[
                (o1.clone(), place("checkout-customer", 2_500)),
                (o3.clone(), place("checkout-customer", 700)),
                (p3.clone(), request(&order_key(3), 700)),
            ],
            Metadata::default(),
        )
        .await
    {
        Err(RepositoryError::Domain(OneOfError::First(OrderError::AlreadyPlaced))) => {}
        other => bail!("a checkout naming a placed order was not refused: {other:?}"),
    }
    for id in [&o3, &p3] {
        let v = store.stream_version(id).await?;
        ensure!(
            v == Version::ZERO,
            "the refused checkout wrote to {id}: version {v}"
        );
    }
    ensure!(
        store.stream_version(&o1).await? == Version::FIRST,
        "the refused checkout wrote to {o1}"
    );
    detail(format_args!(
        "a second checkout naming the first order again is refused as a whole ({}): its new \
         order and payment were not created, nothing was written on any of its 3 streams",
        OrderError::AlreadyPlaced
    ))?;

    // 3. The money for the first order comes in, as part of the same process.
    let payments = Repository::<Payment, _>::new(upcast.clone()).with_sleep(tokio::time::sleep);
    payments
        .execute_with(
            &p1,
            PaymentCommand::Receive { amount: 2_500 },
            Metadata::default().with_correlation(correlation),
        )
        .await
        .context("receiving the payment failed")?;
    let received = events_of(store, &p1)
        .await?
        .pop()
        .context("the payment stream is empty")?;
    ensure!(
        received.event_type.as_str() == "PaymentReceived",
        "the payment's last event is {}",
        received.event_type
    );
    detail(format_args!(
        "{p1} v{}: PaymentReceived (cursor {})",
        received.version, received.cursor
    ))?;

    // 4. and 5. The reactor ships it; after a restart the trigger comes again.
    let reactor = Arc::new(Recording {
        inner: ShipPaidOrders::new(
            Repository::<Order, _>::new(upcast.clone()).with_sleep(tokio::time::sleep),
            "dhl",
        ),
        outcomes: Mutex::default(),
    });
    let reacted = react_twice(store, &registry, &reactor, start, received.cursor).await;
    // Whatever happened: no run leaves a checkpoint that `projections status` and `doctor`
    // would report as a reactor falling behind.
    let deleted = store.delete_checkpoint(REACTOR).await;
    reacted?;
    deleted.context("cannot delete the reactor's checkpoint")?;
    let outcomes = reactor.outcomes_of(received.event_id);
    let shipment = match outcomes.as_slice() {
        [ReactOutcome::Executed(first), ReactOutcome::AlreadyDone] => {
            first.append.context("the reaction wrote nothing")?
        }
        other => bail!("expected one reaction and one redelivery found done, got {other:?}"),
    };
    let shipped = |events: &[RecordedEvent]| {
        events
            .iter()
            .filter(|e| e.event_type.as_str() == "OrderShipped")
            .count()
    };
    ensure!(
        shipped(&events_of(store, &o1).await?) == 1,
        "{o1} was not shipped exactly once"
    );
    let unpaid = Repository::<Order, _>::new(upcast.clone())
        .load(&o2)
        .await?;
    ensure!(
        unpaid.state.status == OrderStatus::Placed && shipped(&events_of(store, &o2).await?) == 0,
        "the unpaid order {o2} was shipped"
    );
    detail(format_args!(
        "reactor {REACTOR:?} (ShipPaidOrders on the projection runner) shipped {o1} (v{}); the \
         unpaid order stays placed",
        shipment.last_version
    ))?;
    detail(
        "restarted without its checkpoint, it got the payment again: the reaction was already \
         done (its event id comes from the payment's), nothing was written twice",
    )?;

    // 6. The chain, from the feed.
    let chain = read_chain(&upcast, start, correlation, shipment.cursor).await?;
    ensure!(
        chain.len() == 6,
        "the checkout's chain has {} events, expected 6",
        chain.len()
    );
    detail("the causation chain, as `chronik trace` prints it:")?;
    let mut text = Vec::new();
    chronik::cli::write_trace(&mut text, correlation, &chain, None)?;
    for line in String::from_utf8_lossy(&text).lines() {
        detail(format_args!("  {line}"))?;
    }
    Ok(Process { events: 6 })
}

/// Runs the reactor until it has handled `trigger`, then, as after a crash that lost its
/// checkpoint, from `start` again until it has handled `trigger` a second time.
async fn react_twice<S: Store>(
    store: &S,
    registry: &Arc<chronik::UpcasterRegistry>,
    reactor: &Arc<Recording<Upcasting<S>>>,
    start: FeedCursor,
    trigger: FeedCursor,
) -> anyhow::Result<()> {
    for _run in 0..2 {
        // The reactor starts after the feed as it was when the phase began.
        store
            .save_checkpoint(REACTOR, start, 0)
            .await
            .context("cannot save the reactor's checkpoint")?;
        let runner = ProjectionRunner::new(Arc::new(store.clone()))
            .with_projection(reactor.clone())
            .with_upcasters(registry.clone())
            .with_options(RunnerOptions {
                poll_min: Duration::from_millis(5),
                retry_base: Duration::from_millis(10),
                ..RunnerOptions::default()
            })
            .spawn()
            .context("cannot start the reactor")?;
        let reached = runner.wait_for(REACTOR, trigger, WAIT).await;
        runner
            .stop()
            .await
            .context("the reactor did not stop cleanly")?;
        reached.with_context(|| format!("the reactor did not reach the payment at {trigger}"))?;
    }
    Ok(())
}

/// The events of `correlation` after `start`, in feed order, up to and including `last`.
/// On PostgreSQL the feed shows a transaction only once every older one has ended, so a
/// page can be empty while `last` is committed: that is a reason to wait, not the end.
async fn read_chain<S: EventStore>(
    store: &S,
    start: FeedCursor,
    correlation: CorrelationId,
    last: FeedCursor,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let filter = FeedFilter {
        event_types: Vec::new(),
        categories: vec![Order::TYPE.to_owned(), Payment::TYPE.to_owned()],
    };
    let deadline = Instant::now() + WAIT;
    let (mut after, mut chain) = (start, Vec::new());
    while after < last {
        let page = store
            .read_feed(after, &filter, 1_000)
            .await
            .with_context(|| format!("reading the feed after {after}"))?;
        if page.events.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "the feed did not show {last} within {WAIT:?}: an older transaction is still \
                 open (`chronik doctor` names it)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        chain.extend(
            page.events
                .into_iter()
                .filter(|e| e.cursor <= last && e.metadata.correlation_id == Some(correlation)),
        );
        after = page.next;
    }
    Ok(chain)
}
