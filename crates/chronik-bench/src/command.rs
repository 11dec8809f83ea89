//! The `command` scenario: what a service does for every request, `Repository::execute`
//! (load the aggregate, decide, append one event expecting the loaded version), on a random
//! stream among [`STREAMS`], against what a user would otherwise write by hand:
//!
//! - `raw-insert`: one single-row INSERT into the plain table `seed_events` (the usual first
//!   design of a hand-written store: a unique `(aggregate_id, version)` key, no streams row;
//!   `pg::seed_table_ddl`), no read, no check;
//! - `raw-naive-command`: the command as a hand-written store does it, naively: SELECT the stream's events
//!   (decoded into the same typed payload), then one INSERT of version + 1 that relies on
//!   the unique `(aggregate_id, version)` key; two autocommit round trips, reloaded and
//!   retried when the key refuses the insert.
//!
//! - `chronik-cached`: the same command through a repository with a cache of aggregate
//!   states (`Repository::with_cache`), on streams of its own drawn the same way, so that the
//!   uncached variant's writes never make its entries stale.
//!
//! Every variant of one writer count shares one pool of exactly that many connections and
//! runs in alternating rounds (see `harness::interleaved`). The scenario runs three times: on
//! a fresh schema (recreated for every writer count, so that every connection first plans
//! its statements against empty tables, as a new deployment does), on schemas that already
//! hold [`Plan::command_prefill`] events in other streams (analyzed, as autovacuum would),
//! and, as `command-hot`, on a fresh schema with a hot set: [`HOT_SHARE`] of the commands go
//! to [`HOT_STREAMS`] streams, the rest to any of the [`STREAMS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use chronik_core::{
    Aggregate, DomainEvent, StreamId, decode_event, decode_event_json, encode_event,
};
use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik_store::{Repository, RepositoryError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Executor, PgPool};
use thiserror::Error;
use uuid::Uuid;

use crate::harness::{self, Op};
use crate::report::Report;
use crate::{Plan, pg};

/// chronik's schema for this scenario.
const STORE_SCHEMA: &str = "chronik_bench_cmd";
/// The plain table (`pg::seed_table_ddl`) for the raw baselines.
const RAW_SCHEMA: &str = "chronik_bench_cmd_raw";
/// How many streams the commands pick from, uniformly at random.
pub(crate) const STREAMS: usize = 100_000;
/// `command-hot`: how many of the streams are hot ...
const HOT_STREAMS: usize = 1_000;
/// ... and the share of commands they take.
const HOT_SHARE: f64 = 0.9;
/// States `chronik-cached` keeps: every stream it can pick, so that it misses only on a
/// stream's first command.
const CACHE_CAPACITY: usize = STREAMS;

/// One line of a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Line {
    sku: String,
    quantity: u32,
    unit_price: i64,
}

/// The payload every command records: the same ~200 bytes of JSON as the append
/// scenarios' (`memory::payload`), as a typed struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sale {
    customer_id: String,
    total_amount: i64,
    currency: String,
    lines: Vec<Line>,
    channel: String,
}

impl Sale {
    /// The append scenarios' payload (`memory::payload`), field for field.
    pub(crate) fn sample() -> Self {
        let line = |sku: &str, quantity, unit_price| Line {
            sku: sku.to_owned(),
            quantity,
            unit_price,
        };
        Self {
            customer_id: "customer-000042".to_owned(),
            total_amount: 129_900,
            currency: "EUR".to_owned(),
            lines: vec![line("book-0042", 2, 2_995), line("pen-7", 10, 199)],
            channel: "web".to_owned(),
        }
    }
}

/// The one event of the bench's aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum TillEvent {
    /// A sale was recorded.
    SaleRecorded(Sale),
}

impl DomainEvent for TillEvent {
    fn event_type(&self) -> &'static str {
        "SaleRecorded"
    }

    fn to_payload(&self) -> Result<Value, serde_json::Error> {
        encode_event(self)
    }

    fn from_payload(event_type: &str, payload: Value) -> Result<Self, serde_json::Error> {
        decode_event(event_type, payload)
    }

    fn from_json(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        decode_event_json(event_type, payload)
    }
}

/// A till: every command records one sale; the state is what a real aggregate keeps
/// (a count and a running total), folded from every event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Till {
    sales: u64,
    takings: i64,
}

/// Never raised: the bench's commands are always accepted.
#[derive(Debug, Error)]
#[error("till refused the sale")]
pub(crate) struct Refused;

impl Aggregate for Till {
    const TYPE: &'static str = "till";
    type Command = Sale;
    type Event = TillEvent;
    type Error = Refused;

    fn handle(&self, sale: &Sale) -> Result<Vec<TillEvent>, Refused> {
        Ok(vec![TillEvent::SaleRecorded(sale.clone())])
    }

    fn apply(&mut self, event: &TillEvent) {
        let TillEvent::SaleRecorded(sale) = event;
        self.sales += 1;
        self.takings += sale.total_amount;
    }
}

/// The streams commands pick from: chronik's id and the seed table's `aggregate_id`.
struct Streams {
    chronik: Vec<StreamId>,
    raw: Vec<Uuid>,
    /// The first `hot` streams take [`HOT_SHARE`] of the picks (0: uniform).
    hot: usize,
}

impl Streams {
    fn new(n: usize, hot: usize) -> anyhow::Result<Self> {
        let raw: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let chronik = raw
            .iter()
            .map(|u| StreamId::for_category(Till::TYPE, u))
            .collect::<Result<_, _>>()?;
        Ok(Self { chronik, raw, hot })
    }

    fn pick(&self) -> usize {
        if self.hot > 0 && rand::random::<f64>() < HOT_SHARE {
            rand::random::<usize>() % self.hot
        } else {
            rand::random::<usize>() % self.raw.len()
        }
    }
}

/// How many commands a variant ran, and how many of them decided on a cached state.
#[derive(Default)]
struct CacheHits {
    commands: AtomicU64,
    cached: AtomicU64,
}

/// Drops and recreates both schemas: chronik's (migrated) and the plain table's.
async fn reset(url: &str) -> anyhow::Result<()> {
    let admin = pg::pool(url, 1).await?;
    for schema in [STORE_SCHEMA, RAW_SCHEMA] {
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .await?;
    }
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {RAW_SCHEMA}")))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(pg::seed_table_ddl(RAW_SCHEMA)))
        .await?;
    admin.close().await;
    let store = pg::scratch_store(url, STORE_SCHEMA, 1).await?;
    store.migrate().await?;
    store.pool().close().await;
    Ok(())
}

/// Writes `events` events into both schemas, in streams of 100 that the commands never
/// pick, then analyzes the tables (as autovacuum would have by then).
async fn prefill(url: &str, events: usize, report: &mut Report) -> anyhow::Result<()> {
    let admin = pg::pool(url, 1).await?;
    let body = crate::memory::payload().to_string();
    let chunk = 10_000.min(events).max(1);
    let t = Instant::now();
    let events_sql = format!(
        "INSERT INTO {STORE_SCHEMA}.events (stream_id, stream_type, version, event_id, event_type, schema_version, payload) \
         SELECT 'fill-' || ($1::bigint + g) / 100, 'fill', ($1::bigint + g) % 100 + 1, gen_random_uuid(), 'SaleRecorded', 1, $2::jsonb \
           FROM generate_series(0, $3 - 1) AS g"
    );
    let streams_sql = format!(
        "INSERT INTO {STORE_SCHEMA}.streams (stream_id, stream_type, version, last_xid) \
         SELECT stream_id, 'fill', max(version), pg_current_xact_id() FROM {STORE_SCHEMA}.events GROUP BY stream_id"
    );
    // One uuid per 100 events, the same stream layout as chronik's.
    let raw_sql = format!(
        "INSERT INTO {RAW_SCHEMA}.seed_events (aggregate_id, aggregate_type, event_type, event_data, version) \
         SELECT (lpad(to_hex(($1::bigint + g) / 100), 32, '0'))::uuid, 'fill', 'SaleRecorded', $2::jsonb, ($1::bigint + g) % 100 + 1 \
           FROM generate_series(0, $3 - 1) AS g"
    );
    let mut done = 0usize;
    while done < events {
        for sql in [&events_sql, &raw_sql] {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(done as i64)
                .bind(&body)
                .bind(chunk as i64)
                .execute(&admin)
                .await?;
        }
        done += chunk;
    }
    admin
        .execute(sqlx::AssertSqlSafe(streams_sql.clone()))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "VACUUM ANALYZE {STORE_SCHEMA}.events, {STORE_SCHEMA}.streams, {RAW_SCHEMA}.seed_events"
        )))
        .await?;
    admin.close().await;
    report.notes.push(format!(
        "command-1m: {done} events written into each schema in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The command as a service runs it: `Repository::execute` on a random stream, through a
/// repository with a cache of `cache` states (0: none).
fn chronik_op(
    pool: &PgPool,
    streams: &Arc<Streams>,
    cache: usize,
    hits: &Arc<CacheHits>,
) -> anyhow::Result<Op> {
    let store = PgEventStore::from_pool_with(
        pool.clone(),
        &PgStoreConfig::with_schema(SchemaName::new(STORE_SCHEMA)?),
    );
    let repo = Arc::new(Repository::<Till, _>::new(store).with_cache(cache));
    let (streams, sale, hits) = (streams.clone(), Arc::new(Sale::sample()), hits.clone());
    Ok(Arc::new(move |_, _| {
        let (repo, streams, sale, hits) =
            (repo.clone(), streams.clone(), sale.clone(), hits.clone());
        Box::pin(async move {
            let id = &streams.chronik[streams.pick()];
            match repo.execute(id, Sale::clone(&sale)).await {
                Ok(out) => {
                    hits.commands.fetch_add(1, Ordering::Relaxed);
                    if out.cached {
                        hits.cached.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(out.events_written as u64)
                }
                Err(RepositoryError::Domain(e)) => Err(e.into()),
                Err(e) => Err(anyhow::Error::new(e).context("chronik command")),
            }
        })
    }))
}

/// How often the naive command reloads after the unique key refused its insert (the
/// default `RetryPolicy`'s attempts, so both give up alike).
const NAIVE_ATTEMPTS: u32 = 5;

/// The command done naively on the plain table: read the stream, fold it, insert version + 1.
fn naive_op(pool: &PgPool, streams: &Arc<Streams>) -> Op {
    let load = Arc::new(format!(
        "SELECT version, event_data FROM {RAW_SCHEMA}.seed_events WHERE aggregate_id = $1 ORDER BY version"
    ));
    let insert = Arc::new(format!(
        "INSERT INTO {RAW_SCHEMA}.seed_events (aggregate_id, aggregate_type, event_type, event_data, version) \
         VALUES ($1, 'till', 'SaleRecorded', $2, $3)"
    ));
    let (pool, streams, sale) = (pool.clone(), streams.clone(), Arc::new(Sale::sample()));
    Arc::new(move |_, _| {
        let (pool, streams, sale) = (pool.clone(), streams.clone(), sale.clone());
        let (load, insert) = (load.clone(), insert.clone());
        Box::pin(async move {
            let id = streams.raw[streams.pick()];
            for _ in 0..NAIVE_ATTEMPTS {
                let rows: Vec<(i32, sqlx::types::Json<Sale>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(load.as_str()))
                        .bind(id)
                        .fetch_all(&pool)
                        .await?;
                let mut state = Till::default();
                let mut version = 0;
                for (v, sqlx::types::Json(sale)) in rows {
                    state.apply(&TillEvent::SaleRecorded(sale));
                    version = v;
                }
                let events = state.handle(&sale)?;
                let Some(TillEvent::SaleRecorded(new)) = events.into_iter().next() else {
                    anyhow::bail!("the till decided nothing");
                };
                match sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                    .bind(id)
                    .bind(sqlx::types::Json(&new))
                    .bind(version + 1)
                    .execute(&pool)
                    .await
                {
                    Ok(_) => return Ok(1),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            anyhow::bail!("naive command: {NAIVE_ATTEMPTS} conflicts in a row")
        })
    })
}

/// One single-row INSERT into the plain table: no read, no check.
fn insert_op(pool: &PgPool) -> Op {
    let sql = Arc::new(format!(
        "INSERT INTO {RAW_SCHEMA}.seed_events (aggregate_id, aggregate_type, event_type, event_data, version) \
         VALUES ($1, 'till', 'SaleRecorded', $2, 1)"
    ));
    let (pool, sale) = (pool.clone(), Arc::new(Sale::sample()));
    Arc::new(move |_, _| {
        let (pool, sql, sale) = (pool.clone(), sql.clone(), sale.clone());
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(Uuid::new_v4())
                .bind(sqlx::types::Json(&*sale))
                .execute(&pool)
                .await?;
            Ok(1)
        })
    })
}

/// The streams of one scenario: the uncached variants' and the cached variant's own.
struct Picks {
    shared: Arc<Streams>,
    cached: Arc<Streams>,
}

impl Picks {
    fn new(hot: usize) -> anyhow::Result<Self> {
        Ok(Self {
            shared: Arc::new(Streams::new(STREAMS, hot)?),
            cached: Arc::new(Streams::new(STREAMS, hot)?),
        })
    }
}

/// One writer count: the four variants interleaved on one pool of `writers` connections,
/// set up as chronik's own sessions are ([`pg::session_pool`]).
async fn measure(
    url: &str,
    scenario: &str,
    writers: usize,
    picks: &Picks,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let pool = pg::session_pool(url, writers).await?;
    let hits = Arc::new(CacheHits::default());
    let variants = [
        (
            "chronik",
            chronik_op(&pool, &picks.shared, 0, &Arc::default())?,
        ),
        (
            "chronik-cached",
            chronik_op(&pool, &picks.cached, CACHE_CAPACITY, &hits)?,
        ),
        ("raw-naive-command", naive_op(&pool, &picks.shared)),
        ("raw-insert", insert_op(&pool)),
    ];
    let results = harness::interleaved(writers, plan.command_budget, plan.rounds, &variants)
        .await
        .with_context(|| format!("{scenario} at {writers} writers"))?;
    pool.close().await;
    for (name, stats) in results {
        report.push(scenario, &name, writers, stats);
    }
    report.ratio(scenario, "chronik", "raw-naive-command", writers, Some(0.9));
    // The stretch target (coalescing) applies from 16 writers.
    let stretch = (writers >= 16).then_some(1.0);
    report.ratio(scenario, "chronik", "raw-insert", writers, stretch);
    report.ratio(
        scenario,
        "chronik-cached",
        "raw-naive-command",
        writers,
        None,
    );
    report.ratio(scenario, "chronik-cached", "raw-insert", writers, None);
    report.ratio(scenario, "chronik-cached", "chronik", writers, None);
    report.ratio(scenario, "raw-naive-command", "raw-insert", writers, None);
    let commands = hits.commands.load(Ordering::Relaxed);
    report.notes.push(format!(
        "{scenario} at {writers} writers: chronik-cached decided {:.0}% of its {commands} commands (warm-up included) on a cached state",
        100.0 * hits.cached.load(Ordering::Relaxed) as f64 / commands.max(1) as f64
    ));
    Ok(())
}

pub(crate) async fn run(url: &str, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let uniform = Picks::new(0)?;
    if plan.wants("command-fresh") {
        for &writers in plan.concurrency {
            reset(url).await.context("preparing the command schemas")?;
            measure(url, "command-fresh", writers, &uniform, plan, report).await?;
        }
    }
    if plan.wants("command-1m") {
        reset(url).await.context("preparing the command schemas")?;
        prefill(url, plan.command_prefill, report).await?;
        for &writers in plan.concurrency {
            measure(url, "command-1m", writers, &uniform, plan, report).await?;
        }
    }
    if plan.wants("command-hot") {
        let hot = Picks::new(HOT_STREAMS)?;
        for &writers in plan.concurrency {
            reset(url).await.context("preparing the command schemas")?;
            measure(url, "command-hot", writers, &hot, plan, report).await?;
        }
    }
    let admin = pg::pool(url, 1).await?;
    for schema in [STORE_SCHEMA, RAW_SCHEMA] {
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .await?;
    }
    admin.close().await;
    Ok(())
}
