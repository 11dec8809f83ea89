//! Phase 7 of the demo on each store: a projection runner catches up with the feed.
//!
//! In memory, `chronik::projections::ProjectionRunner` drives a small counting projection
//! (at-least-once, woken by the store on every commit). On PostgreSQL,
//! `PgProjectionRunner` keeps the Orders read model (`order_summaries`) exactly once, and
//! `wait_for_projection` waits for the demo's last event like a service would after its
//! own append.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use chronik::FeedFilter;
use chronik::MemoryStore;
use chronik::RunnerBuilder as _;
use chronik::postgres::{PgEventStore, PgProjectionRunner, wait_for_projection};
use chronik::projections::{HandlerError, Projection, ProjectionRunner};
use chronik::{FeedCursor, RecordedEvent};
use orders::{OrderProjection, OrderStatus};

use chronik::cli::fmt::{count, ms, n};

use crate::demo::{Expected, ReadModel, detail};

/// How long phase 7 waits for the projection before the demo fails.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Counts order events by type: the in-memory demo's read model.
#[derive(Debug, Default)]
struct OrderCounter {
    placed: AtomicU64,
    lines: AtomicU64,
    shipped: AtomicU64,
    cancelled: AtomicU64,
}

impl OrderCounter {
    const NAME: &'static str = "demo-order-counter";
}

#[async_trait]
impl Projection for OrderCounter {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn filter(&self) -> FeedFilter {
        FeedFilter {
            event_types: Vec::new(),
            categories: vec!["order".to_owned()],
        }
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let counter = match event.event_type.as_str() {
            "OrderPlaced" => &self.placed,
            "LineAdded" => &self.lines,
            "OrderShipped" => &self.shipped,
            "OrderCancelled" => &self.cancelled,
            _ => return Ok(()),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn clear(&self) -> Result<(), HandlerError> {
        for c in [&self.placed, &self.lines, &self.shipped, &self.cancelled] {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The in-memory read model: [`OrderCounter`] on a `ProjectionRunner`.
#[derive(Debug)]
pub(crate) struct MemoryCounter;

impl ReadModel<MemoryStore> for MemoryCounter {
    async fn catch_up(
        &self,
        store: &MemoryStore,
        last: FeedCursor,
        expected: &Expected,
    ) -> anyhow::Result<String> {
        let counter = Arc::new(OrderCounter::default());
        let registry = Arc::new(orders::upcasters().context("the orders upcasters are invalid")?);
        let started = Instant::now();
        let handle = ProjectionRunner::new(Arc::new(store.clone()))
            .with_projection(counter.clone())
            .with_wake(store.subscribe())
            .with_upcasters(registry)
            .spawn()?;
        let waited = handle.wait_for(OrderCounter::NAME, last, CATCH_UP).await;
        let elapsed = started.elapsed();
        handle.stop().await?;
        let status = waited?;
        let placed = counter.placed.load(Ordering::Relaxed);
        ensure!(
            placed == expected.placed,
            "the counter saw {placed} orders placed, the demo placed {}",
            expected.placed
        );
        detail(format_args!(
            "ProjectionRunner (at-least-once, woken by the store on every commit) ran \
             {:?} from the start of the feed: caught up to {} in {}",
            OrderCounter::NAME,
            status.checkpoint,
            ms(elapsed),
        ))?;
        detail(format_args!(
            "it counted {} placed, {} added, {} shipped, {} cancelled",
            count(placed, "order"),
            count(counter.lines.load(Ordering::Relaxed), "line"),
            n(counter.shipped.load(Ordering::Relaxed)),
            n(counter.cancelled.load(Ordering::Relaxed)),
        ))?;
        Ok(format!(
            "{} counted by an in-memory projection, caught up in {}",
            count(placed, "order"),
            ms(elapsed)
        ))
    }
}

/// The PostgreSQL read model: `order_summaries`, kept by `PgProjectionRunner`.
#[derive(Debug)]
pub(crate) struct PgOrders;

impl ReadModel<PgEventStore> for PgOrders {
    async fn catch_up(
        &self,
        store: &PgEventStore,
        last: FeedCursor,
        expected: &Expected,
    ) -> anyhow::Result<String> {
        let registry = Arc::new(orders::upcasters().context("the orders upcasters are invalid")?);
        OrderProjection::create_table(store)
            .await
            .context("cannot create the read model's table")?;
        let projection = Arc::new(OrderProjection::new(store.schema()));
        let started = Instant::now();
        let handle = PgProjectionRunner::new(store.clone(), projection)
            .with_upcasters(registry)
            .spawn()?;
        let waited = wait_for_projection(store, OrderProjection::NAME, last, CATCH_UP).await;
        let elapsed = started.elapsed();
        let status = handle.stop().await?.remove(0);
        let reached = waited.with_context(|| {
            format!(
                "waiting for projection {} (runner state {}, last error {:?})",
                OrderProjection::NAME,
                status.state.as_str(),
                status.last_error
            )
        })?;
        detail(format_args!(
            "PgProjectionRunner {:?} (exactly-once: each batch commits with its checkpoint) \
             reached {reached} in {}; wait_for_projection returned once the demo's last event was in",
            OrderProjection::NAME,
            ms(elapsed),
        ))?;

        let read_model = OrderProjection::new(store.schema());
        let total = read_model
            .count(store.pool())
            .await
            .context("counting the read model's rows")?;
        let ids: Vec<String> = expected
            .orders
            .iter()
            .map(|(id, _)| id.as_str().to_owned())
            .collect();
        let rows = read_model
            .of_orders(store.pool(), &ids)
            .await
            .context("reading the read model")?;
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for r in &rows {
            *by_status.entry(r.status.clone()).or_default() += 1;
        }
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for (_, status) in &expected.orders {
            let label = match status {
                OrderStatus::Cancelled => "cancelled",
                OrderStatus::Shipped => "shipped",
                _ => "placed",
            };
            *want.entry(label.to_owned()).or_default() += 1;
        }
        ensure!(
            by_status == want,
            "the read model disagrees with the aggregates: {by_status:?}, expected {want:?}"
        );
        detail(format_args!(
            "{} holds {}; this run's {} are all there, with the status their aggregates have:",
            OrderProjection::TABLE,
            count(u64::try_from(total).unwrap_or(0), "row"),
            count(ids.len() as u64, "checked order"),
        ))?;
        // The first order placed and the one imported at schema v1 (upcast on the way in).
        let samples = [
            rows.first(),
            rows.iter().find(|r| r.customer_id == "legacy-customer"),
        ];
        for r in samples.into_iter().flatten() {
            detail(format_args!(
                "  {}  {}  {}  total {}  {}  {}  v{}",
                r.order_id,
                r.customer_id,
                r.status,
                n(r.total_amount),
                count(u64::try_from(r.lines).unwrap_or(0), "line"),
                r.carrier.as_deref().unwrap_or("-"),
                r.version,
            ))?;
        }
        Ok(format!(
            "{} in {}, caught up in {}",
            count(u64::try_from(total).unwrap_or(0), "row"),
            OrderProjection::TABLE,
            ms(elapsed)
        ))
    }
}
