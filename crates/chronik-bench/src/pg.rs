//! Scenarios 1-4 on PostgreSQL: chronik and a raw-SQL baseline doing the same database
//! work with the thinnest client (one prepared statement per operation, same payloads,
//! same concurrency), measured one after the other in the same run.
//!
//! The raw SQL here is a measuring instrument, not part of chronik: it lives in this crate
//! so that `chronik-postgres` stays the only place that knows the store's SQL.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chronik_core::{ExpectedVersion, FeedCursor, SnapshotPolicy, SnapshotState, StreamId};
use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik_store::{EventStore, FeedFilter, Repository, SnapshotStore};
use orders::Order;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use uuid::Uuid;

use crate::harness::{self, Op};
use crate::memory::{new_event, payload, seed_stream};
use crate::report::Report;
use crate::{Plan, projection};

pub(crate) const STORE_SCHEMA: &str = "chronik_bench";
pub(crate) const RAW_SCHEMA: &str = "chronik_bench_raw";
/// Scenario 5's store: a feed of Orders events and nothing else.
pub(crate) const ORDERS_SCHEMA: &str = "chronik_bench_orders";
/// The partitioned-projection scenario's store.
pub(crate) const PARTS_SCHEMA: &str = "chronik_bench_parts";

/// A pool of `size` connections, as chronik's own: no ping before each acquire (that would
/// add a round trip to every operation), all connections opened up front.
pub(crate) async fn pool(url: &str, size: usize) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(size.max(1) as u32)
        .min_connections(size.max(1) as u32)
        .test_before_acquire(false)
        .connect(url)
        .await?)
}

/// [`pool`] with the session settings `PgEventStore::connect_with` gives its own sessions
/// (`enable_seqscan = off`), for scenarios that measure chronik as a service connects it
/// while its variants share one pool with the baselines. The baselines' statements are
/// lookups and inserts by key, which an index serves either way; the setting only spares
/// them a sequential scan planned while their table was small, which makes them no slower.
pub(crate) async fn session_pool(url: &str, size: usize) -> anyhow::Result<PgPool> {
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .options([("enable_seqscan", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(size.max(1) as u32)
        .min_connections(size.max(1) as u32)
        .test_before_acquire(false)
        .connect_with(options)
        .await?)
}

/// chronik on an existing pool: every variant of a scenario shares one pool, so they get
/// the same connections and the server's connection limit holds at 64 writers.
pub(crate) fn store_on(pool: &PgPool) -> anyhow::Result<PgEventStore> {
    Ok(PgEventStore::from_pool_with(
        pool.clone(),
        &PgStoreConfig::with_schema(SchemaName::new(STORE_SCHEMA)?),
    ))
}

async fn store(url: &str, size: usize) -> anyhow::Result<PgEventStore> {
    scratch_store(url, STORE_SCHEMA, size).await
}

/// A store of its own (own pool of `size`) on one of the scratch schemas.
pub(crate) async fn scratch_store(
    url: &str,
    schema: &str,
    size: usize,
) -> anyhow::Result<PgEventStore> {
    let mut config = PgStoreConfig::with_schema(SchemaName::new(schema)?);
    config.max_connections = size.max(1) as u32;
    Ok(PgEventStore::connect_with(url, config).await?)
}

/// The plain table in `schema`: the usual first design of a hand-written event store, with
/// its primary key and its unique `(aggregate_id, version)` key; no guard, no streams row.
/// (Secondary indexes such a design often adds are left out: they would only slow the
/// baselines down.)
pub(crate) fn seed_table_ddl(schema: &str) -> String {
    format!(
        "CREATE TABLE {schema}.seed_events (
            event_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregate_id uuid NOT NULL,
            aggregate_type varchar(255) NOT NULL,
            event_type varchar(255) NOT NULL,
            event_data jsonb NOT NULL,
            metadata jsonb DEFAULT '{{}}',
            version int NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT unique_aggregate_version UNIQUE (aggregate_id, version))"
    )
}

/// Drops and recreates the scratch schemas.
async fn reset(url: &str) -> anyhow::Result<()> {
    let admin = pool(url, 1).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {STORE_SCHEMA} CASCADE"
        )))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {RAW_SCHEMA} CASCADE"
        )))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {ORDERS_SCHEMA} CASCADE"
        )))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {PARTS_SCHEMA} CASCADE"
        )))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {RAW_SCHEMA}")))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(seed_table_ddl(RAW_SCHEMA)))
        .await?;
    admin.close().await;
    store(url, 1).await?.migrate().await?;
    scratch_store(url, ORDERS_SCHEMA, 1)
        .await?
        .migrate()
        .await?;
    scratch_store(url, PARTS_SCHEMA, 1).await?.migrate().await?;
    Ok(())
}

pub(crate) async fn environment(url: &str, report: &mut Report) -> anyhow::Result<()> {
    let p = pool(url, 1).await?;
    for setting in [
        "server_version",
        "synchronous_commit",
        "shared_buffers",
        "max_connections",
        "fsync",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&p)
            .await?;
        report.environment.push((format!("postgres {setting}"), v));
    }
    p.close().await;
    Ok(())
}

/// The raw guarded append: the same `append_events` call chronik makes, bound directly.
fn raw_guarded_sql() -> String {
    format!(
        "SELECT outcome FROM {STORE_SCHEMA}.append_events($1, 'order', $2, $3, $4, $5, $6::text[]::jsonb[], $7::text[]::jsonb[], $8, $9)"
    )
}

async fn raw_guarded_append(p: &PgPool, sql: &str, n: usize, body: &str) -> anyhow::Result<u64> {
    let stream = format!("order-{}", Uuid::new_v4());
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let outcome: i16 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&stream)
        .bind(-2_i64)
        .bind(&ids)
        .bind(vec!["OrderPlaced"; n])
        .bind(vec![1_i64; n])
        .bind(vec![body; n])
        .bind(vec!["{}"; n])
        .bind(vec![None::<Uuid>; n])
        .bind(vec![None::<Uuid>; n])
        .fetch_one(p)
        .await?;
    anyhow::ensure!(outcome == 0, "raw guarded append outcome {outcome}");
    Ok(n as u64)
}

/// Scenario 1's raw guarded append of one event, as a harness operation on `p`.
pub(crate) fn raw_guarded_op(p: &PgPool) -> Op {
    let (p, sql, b) = (
        p.clone(),
        Arc::new(raw_guarded_sql()),
        Arc::new(payload().to_string()),
    );
    Arc::new(move |_, _| {
        let (p, sql, b) = (p.clone(), sql.clone(), b.clone());
        Box::pin(async move { raw_guarded_append(&p, &sql, 1, &b).await })
    })
}

async fn raw_plain_insert(p: &PgPool, sql: &str, body: &serde_json::Value) -> anyhow::Result<u64> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::new_v4())
        .bind(body)
        .execute(p)
        .await?;
    Ok(1)
}

async fn raw_multi_insert(p: &PgPool, sql: &str, n: usize, body: &str) -> anyhow::Result<u64> {
    let versions: Vec<i32> = (1..=n as i32).collect();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::new_v4())
        .bind(vec![body; n])
        .bind(&versions)
        .execute(p)
        .await?;
    Ok(n as u64)
}

/// The rows an append of `n` events to a new stream leaves in chronik's schema (the
/// `streams` row and the events), written by one plain statement with no checks at all: no
/// row lock, no idempotency probe, no expected version, no order guard. Not a usable append;
/// the floor of what chronik's schema costs, so that the ratios separate the schema's cost
/// (`raw-rows` against the plain table) from `append_events`' (chronik against `raw-rows`).
fn raw_rows_op(p: &PgPool, n: usize) -> Op {
    let sql = Arc::new(format!(
        "WITH s AS (INSERT INTO {STORE_SCHEMA}.streams (stream_id, stream_type, version, last_xid) \
                    VALUES ($1, 'order', $4, pg_current_xact_id())) \
         INSERT INTO {STORE_SCHEMA}.events (stream_id, stream_type, version, event_id, event_type, schema_version, payload) \
         SELECT $1, 'order', u.ord, u.id, 'OrderPlaced', 1, u.p::jsonb \
           FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS u(id, p, ord)"
    ));
    let (p, body) = (p.clone(), Arc::new(payload().to_string()));
    Arc::new(move |_, _| {
        let (p, sql, body) = (p.clone(), sql.clone(), body.clone());
        Box::pin(async move {
            let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(format!("order-{}", Uuid::new_v4()))
                .bind(&ids)
                .bind(vec![body.as_str(); n])
                .bind(n as i64)
                .execute(&p)
                .await?;
            Ok(n as u64)
        })
    })
}

pub(crate) async fn run(url: &str, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    reset(url).await.context("preparing scratch schemas")?;
    let body = payload().to_string();
    let body_json = payload();

    // 1. Append, one event per transaction, random streams.
    let plain_sql = format!(
        "INSERT INTO {RAW_SCHEMA}.seed_events (aggregate_id, aggregate_type, event_type, event_data, version) VALUES ($1, 'order', 'OrderPlaced', $2, 1)"
    );
    for &c in plan.concurrency.iter().filter(|_| plan.wants("append-1")) {
        let p = pool(url, c).await?;
        let s = store_on(&p)?;
        let chronik: Op = Arc::new(move |_, _| {
            let s = s.clone();
            Box::pin(async move {
                let id = StreamId::for_category("order", Uuid::new_v4())?;
                s.append(&id, ExpectedVersion::NoStream, &[new_event()])
                    .await?;
                Ok(1)
            })
        });
        let guarded = raw_guarded_op(&p);
        let (pc, sql, b) = (
            p.clone(),
            Arc::new(plain_sql.clone()),
            Arc::new(body_json.clone()),
        );
        let plain: Op = Arc::new(move |_, _| {
            let (p, sql, b) = (pc.clone(), sql.clone(), b.clone());
            Box::pin(async move { raw_plain_insert(&p, &sql, &b).await })
        });
        let variants = [
            ("chronik", chronik),
            ("raw-guarded", guarded),
            ("raw-plain", plain),
            ("raw-rows", raw_rows_op(&p, 1)),
        ];
        for (name, stats) in harness::interleaved(c, plan.budget, plan.rounds, &variants).await? {
            report.push("append-1", &name, c, stats);
        }
        p.close().await;
        // `raw-guarded` calls `append_events`, which chronik's one-event append now skips
        // on its way that writes: a ratio above 1 is expected, and no target.
        report.ratio("append-1", "chronik", "raw-guarded", c, None);
        // Issue 12's target: 0.8 of the plain INSERT from 16 writers.
        report.ratio(
            "append-1",
            "chronik",
            "raw-plain",
            c,
            (c >= 16).then_some(0.8),
        );
        report.ratio("append-1", "chronik", "raw-rows", c, None);
        report.ratio("append-1", "raw-rows", "raw-plain", c, None);
    }

    // 2. Append, 100 events per transaction.
    let multi_sql = format!(
        "INSERT INTO {RAW_SCHEMA}.seed_events (aggregate_id, aggregate_type, event_type, event_data, version) \
         SELECT $1, 'order', 'OrderPlaced', d::jsonb, v FROM unnest($2::text[], $3::int[]) AS u(d, v)"
    );
    for &c in plan
        .batch_concurrency
        .iter()
        .filter(|_| plan.wants("append-100"))
    {
        let p = pool(url, c).await?;
        let s = store_on(&p)?;
        let chronik: Op = Arc::new(move |_, _| {
            let s = s.clone();
            Box::pin(async move {
                let id = StreamId::for_category("order", Uuid::new_v4())?;
                let batch: Vec<_> = (0..100).map(|_| new_event()).collect();
                s.append(&id, ExpectedVersion::NoStream, &batch).await?;
                Ok(100)
            })
        });
        let (pc, sql, b) = (
            p.clone(),
            Arc::new(multi_sql.clone()),
            Arc::new(body.clone()),
        );
        let multi: Op = Arc::new(move |_, _| {
            let (p, sql, b) = (pc.clone(), sql.clone(), b.clone());
            Box::pin(async move { raw_multi_insert(&p, &sql, 100, &b).await })
        });
        let variants = [
            ("chronik", chronik),
            ("raw-multi-insert", multi),
            ("raw-rows", raw_rows_op(&p, 100)),
        ];
        for (name, stats) in harness::interleaved(c, plan.budget, plan.rounds, &variants).await? {
            report.push("append-100", &name, c, stats);
        }
        p.close().await;
        report.ratio("append-100", "chronik", "raw-multi-insert", c, Some(0.8));
        report.ratio("append-100", "chronik", "raw-rows", c, None);
        report.ratio("append-100", "raw-rows", "raw-multi-insert", c, None);
    }

    // 2b. Multi-stream appends, 2 and 4 streams per append.
    if plan.wants("append-streams") {
        crate::multi::run(url, plan, report).await?;
    }

    // 3. Load one long aggregate, then a very long one (the snapshot scenario).
    let s = store(url, 2).await?;
    // (`--only load-10000` names the first exactly, so it does not run the second, whose
    // name it is a prefix of.)
    let long = format!("load-{}", plan.long_stream);
    if plan.wants(&long) {
        replay_against_raw(&s, plan, report).await?;
    }
    if plan.wants(&format!("load-{}", plan.huge_stream)) && !plan.names(&long) {
        replay_in_bounded_memory(&s, plan.huge_stream, report).await?;
    }
    // 6. Live latency under append load.
    for &c in plan.live_concurrency.iter().filter(|_| plan.wants("live")) {
        projection::live_latency(url, c, plan, report).await?;
    }
    // 5. The Orders read model.
    if plan.wants("projection") {
        projection::orders(url, plan, report).await?;
    }
    // 5b. A partitioned projection against the single runner.
    if plan.wants("projection-partitions") {
        projection::partitions(url, plan, report).await?;
    }
    if plan.wants("feed") {
        feed(url, &s, plan, report).await?;
    }
    s.pool().close().await;
    Ok(())
}

/// 4. Feed catch-up over many events (in transactions of 10k, like a busy system's batches).
async fn feed(url: &str, s: &PgEventStore, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let admin = pool(url, 1).await?;
    let body = payload().to_string();
    let chunk = 10_000.min(plan.feed_events);
    let fill = format!(
        "INSERT INTO {STORE_SCHEMA}.events (stream_id, stream_type, version, event_id, event_type, schema_version, payload) \
         SELECT 'feed-' || ($1::bigint + g) / 100, 'feed', ($1::bigint + g) % 100 + 1, gen_random_uuid(), 'OrderPlaced', 1, $2::jsonb \
           FROM generate_series(0, $3 - 1) AS g"
    );
    let t = Instant::now();
    let mut done = 0usize;
    while done < plan.feed_events {
        sqlx::query(sqlx::AssertSqlSafe(fill.as_str()))
            .bind(done as i64)
            .bind(&body)
            .bind(chunk as i64)
            .execute(&admin)
            .await?;
        done += chunk;
    }
    // Vacuumed, not only analyzed: autovacuum would otherwise start on the million new rows
    // during the first variant's scan and slow whichever runs first.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "VACUUM ANALYZE {STORE_SCHEMA}.events"
        )))
        .await?;
    report.notes.push(format!(
        "feed-catch-up: {} events loaded in {:.1}s",
        done,
        t.elapsed().as_secs_f64()
    ));
    let total = s.count_after(FeedCursor::START).await?;
    let scenario = "feed-catch-up";
    // The same rows through the same index with one prepared statement, without chronik's
    // horizon check, cursor handling, decoding or checkpoints: what a hand-written reader
    // of this table would do. (The cursor column needs its alias: an output column named
    // `transaction_id` would make `ORDER BY transaction_id` sort by the cast text, which no
    // index provides, and turn every page into a full scan.)
    let keyset = format!(
        "SELECT transaction_id::text::bigint AS tx, global_position, stream_id, version, event_id, event_type, \
                schema_version, payload, metadata, recorded_at \
           FROM {STORE_SCHEMA}.events WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
          ORDER BY transaction_id, global_position LIMIT 1000"
    );
    // Every variant reads the whole feed once per round; the rounds alternate the order
    // (forwards, then backwards), so that load drifting during the run, and whatever the
    // variant before leaves in the caches, hit every variant alike. Quick mode runs two
    // rounds, so that the smoke step goes through both orders and a second projection.
    let rounds = plan.rounds.max(2);
    let mut runs: Vec<(Vec<u64>, u64, std::time::Duration)> =
        vec![(Vec::new(), 0, std::time::Duration::ZERO); FEED_VARIANTS.len()];
    let mut per_round = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..FEED_VARIANTS.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut rates = [0.0; FEED_VARIANTS.len()];
        for i in order {
            let t = Instant::now();
            let n = feed_pass(FEED_VARIANTS[i], round, s, &keyset).await?;
            let elapsed = t.elapsed();
            anyhow::ensure!(n == total, "{}: read {n} of {total}", FEED_VARIANTS[i]);
            rates[i] = n as f64 / elapsed.as_secs_f64().max(1e-9);
            runs[i].0.push(elapsed.as_micros() as u64);
            runs[i].1 += n;
            runs[i].2 += elapsed;
        }
        per_round.push(rates[1] / rates[3].max(1e-9));
    }
    for (variant, (samples, items, elapsed)) in FEED_VARIANTS.iter().zip(runs) {
        report.push(
            scenario,
            variant,
            1,
            harness::stats(samples, items, elapsed),
        );
    }
    report.notes.push(format!(
        "{scenario}: {rounds} alternating rounds, each variant reads all {total} events once \
         per round; chronik no-op projection / raw keyset scan decoded per round: {}",
        per_round
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for variant in ["chronik no-op projection", "chronik read_feed"] {
        report.ratio(scenario, variant, "raw keyset scan decoded", 1, Some(0.7));
        report.ratio(scenario, variant, "raw keyset scan", 1, None);
        report.ratio(
            scenario,
            variant,
            "raw keyset scan decoded, page held",
            1,
            None,
        );
    }
    admin.close().await;
    Ok(())
}

/// The variants of `feed-catch-up`, in the order of its odd rounds. The ratio per round in
/// the notes is the second (the projection) against the fourth (the decoded scan).
const FEED_VARIANTS: [&str; 5] = [
    "chronik read_feed",
    "chronik no-op projection",
    "raw keyset scan",
    "raw keyset scan decoded",
    "raw keyset scan decoded, page held",
];

/// One pass of `variant` over the whole feed of `s` (round `round`); the events it read.
async fn feed_pass(
    variant: &str,
    round: u32,
    s: &PgEventStore,
    keyset: &str,
) -> anyhow::Result<u64> {
    let p = s.pool();
    match variant {
        "chronik read_feed" => {
            let mut after = FeedCursor::START;
            let mut n = 0u64;
            loop {
                let page = s.read_feed(after, &FeedFilter::all(), 1_000).await?;
                if page.events.is_empty() {
                    break;
                }
                n += page.events.len() as u64;
                after = page.next;
            }
            Ok(n)
        }
        // The runner users deploy, with a handler that does nothing: reads pages of 1,000
        // and commits a checkpoint per page; a projection of its own per round, so that
        // each starts from the beginning.
        "chronik no-op projection" => Ok(projection::feed_catch_up(s, round).await?.items),
        "raw keyset scan" => keyset_scan(p, keyset, |rows| Ok(rows.len() as u64)).await,
        // The same scan with the decoding every reader needs: payload and metadata into
        // `serde_json::Value`, as chronik's `RecordedEvent` holds them.
        "raw keyset scan decoded" => {
            keyset_scan(p, keyset, |rows| {
                let mut n = 0u64;
                for row in rows {
                    let payload: serde_json::Value = sqlx::Row::try_get(row, 7)?;
                    let metadata: serde_json::Value = sqlx::Row::try_get(row, 8)?;
                    n += u64::from(payload.is_object() && metadata.is_object());
                }
                Ok(n)
            })
            .await
        }
        // The same decoding, with each page's values held until the page is done, as a page
        // API (`read_feed`, `FeedPage`) must hold them: what holding ~20 allocations per
        // event for a page of 1,000 costs, next to decoding and dropping each row at once.
        "raw keyset scan decoded, page held" => {
            keyset_scan(p, keyset, |rows| {
                let mut n = 0u64;
                let mut page = Vec::with_capacity(rows.len());
                for row in rows {
                    let payload: serde_json::Value = sqlx::Row::try_get(row, 7)?;
                    let metadata: serde_json::Value = sqlx::Row::try_get(row, 8)?;
                    n += u64::from(payload.is_object() && metadata.is_object());
                    page.push((payload, metadata));
                }
                drop(page);
                Ok(n)
            })
            .await
        }
        other => anyhow::bail!("unknown feed-catch-up variant {other}"),
    }
}

/// Writes an Orders history of `n` events (placed, then lines: what `memory::order_history`
/// holds) into one stream with plain SQL, in chunks: a million events through `append`
/// would take minutes and measure nothing this scenario is about.
async fn seed_stream_sql(s: &PgEventStore, id: &StreamId, n: usize) -> anyhow::Result<()> {
    let schema = s.schema().quoted();
    let insert = format!(
        "INSERT INTO {schema}.events (stream_id, stream_type, version, event_id, event_type, schema_version, payload) \
         SELECT $1, 'order', v, gen_random_uuid(), \
                CASE WHEN v = 1 THEN 'OrderPlaced' ELSE 'LineAdded' END, \
                CASE WHEN v = 1 THEN 2 ELSE 1 END, \
                CASE WHEN v = 1 THEN '{{\"customer_id\": \"c-1\", \"total_amount\": 100}}'::jsonb \
                     ELSE jsonb_build_object('sku', 'sku-' || ((v - 1) % 97), 'quantity', 1, 'unit_price', 10) END \
           FROM generate_series($2::bigint, $3::bigint) AS v"
    );
    let mut from = 1usize;
    while from <= n {
        let to = (from + 49_999).min(n);
        sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
            .bind(id.as_str())
            .bind(from as i64)
            .bind(to as i64)
            .execute(s.pool())
            .await?;
        from = to + 1;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.streams (stream_id, stream_type, version, last_xid) \
         VALUES ($1, 'order', $2, pg_current_xact_id())"
    )))
    .bind(id.as_str())
    .bind(n as i64)
    .execute(s.pool())
    .await?;
    Ok(())
}

/// The variants of `load-N` timed against each other, in the order of their odd rounds.
const LOAD_VARIANTS: [&str; 3] = ["chronik full replay", "raw select", "raw select decoded"];

/// `load-N` (N = `plan.long_stream`): an `n`-event aggregate loaded by full replay, against
/// a raw `SELECT` of the same rows, fetched as they are and decoded into `serde_json::Value`
/// (the like-for-like baseline of a replay) or not decoded; then from a snapshot at its head.
///
/// Each variant runs twice untimed first (the store's pool has two connections: each
/// prepares the statement once; the first read also sets the new rows' hint bits), then
/// `plan.rounds` rounds of `plan.load_repeats` loads each, alternating the order of the
/// variants (forwards, then backwards), so that neither the first call nor load drifting
/// during the run falls on one variant only.
async fn replay_against_raw(
    s: &PgEventStore,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = plan.long_stream;
    let id = StreamId::for_category("order", Uuid::new_v4())?;
    seed_stream(s, &id, n).await?;
    let scenario = format!("load-{n}");
    let raw_load = raw_load_sql();
    let name = scenario.as_str();
    let one = |variant: &'static str| {
        let (id, sql) = (&id, raw_load.as_str());
        async move {
            match variant {
                "chronik full replay" => Ok(Repository::<Order, _>::new(s)
                    .load(id)
                    .await?
                    .events_replayed),
                "raw select" => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id.as_str())
                        .fetch_all(s.pool())
                        .await?;
                    Ok(rows.len() as u64)
                }
                "raw select decoded" => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id.as_str())
                        .fetch_all(s.pool())
                        .await?;
                    let mut n = 0u64;
                    for row in &rows {
                        let _type: &str = sqlx::Row::try_get(row, 0)?;
                        let payload: serde_json::Value = sqlx::Row::try_get(row, 1)?;
                        let _version: i64 = sqlx::Row::try_get(row, 2)?;
                        n += u64::from(payload.is_object());
                    }
                    anyhow::ensure!(n == rows.len() as u64, "a payload is not an object");
                    Ok(n)
                }
                other => anyhow::bail!("unknown {name} variant {other}"),
            }
        }
    };
    for variant in LOAD_VARIANTS {
        for _ in 0..2 {
            anyhow::ensure!(one(variant).await? == n as u64, "{variant}: a short read");
        }
    }
    // The peak memory of one full replay, on its own (the timed rounds mix the variants).
    let rss = crate::rss::peak_growth(one(LOAD_VARIANTS[0])).await.1;
    let mut runs: Vec<(Vec<u64>, u64, std::time::Duration)> =
        vec![(Vec::new(), 0, std::time::Duration::ZERO); LOAD_VARIANTS.len()];
    for round in 0..plan.rounds {
        let mut order: Vec<usize> = (0..LOAD_VARIANTS.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            for _ in 0..plan.load_repeats {
                let t = Instant::now();
                runs[i].1 += one(LOAD_VARIANTS[i]).await?;
                let elapsed = t.elapsed();
                runs[i].0.push(elapsed.as_micros() as u64);
                runs[i].2 += elapsed;
            }
        }
    }
    for (variant, (samples, items, elapsed)) in LOAD_VARIANTS.iter().zip(runs) {
        let stats = harness::stats(samples, items, elapsed);
        if *variant == LOAD_VARIANTS[0] {
            report.push_with_rss(&scenario, variant, 1, (stats, rss));
        } else {
            report.push(&scenario, variant, 1, stats);
        }
    }
    from_snapshot(s, &id, plan.load_repeats * 20, &scenario, report).await?;
    report.ratio(
        &scenario,
        "chronik full replay",
        "raw select decoded",
        1,
        Some(1.0),
    );
    report.ratio(&scenario, "chronik full replay", "raw select", 1, None);
    Ok(())
}

/// `SELECT event_type, payload, version` of one stream (`$1`), in order: the raw loads.
fn raw_load_sql() -> String {
    format!(
        "SELECT event_type, payload, version FROM {STORE_SCHEMA}.events WHERE stream_id = $1 ORDER BY version"
    )
}

/// Saves a snapshot of `id` at its head, then times `repeats` loads from it (`chronik with
/// snapshot`, against the full replay of the same scenario: target 10x).
async fn from_snapshot(
    s: &PgEventStore,
    id: &StreamId,
    repeats: usize,
    scenario: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let state = Repository::<Order, _>::new(s).load(id).await?;
    s.save_snapshot(
        id,
        state.version,
        Order::STATE_SCHEMA_VERSION,
        &state.state.to_state()?,
    )
    .await?;
    let stats = harness::repeat(repeats, |_| {
        let s = s.clone();
        async move {
            let loaded = Repository::<Order, _>::new(s)
                .with_snapshots(SnapshotPolicy::Never)
                .load(id)
                .await?;
            anyhow::ensure!(
                loaded.snapshot_version == loaded.version,
                "snapshot not used"
            );
            // Count the events the state covers, so items/s compares with full replay.
            Ok(loaded.version.get())
        }
    })
    .await?;
    report.push(scenario, "chronik with snapshot", 1, stats);
    report.ratio(
        scenario,
        "chronik with snapshot",
        "chronik full replay",
        1,
        Some(10.0),
    );
    Ok(())
}

/// `load-N` for a very long stream (N = `plan.huge_stream`, written by plain SQL): three full
/// replays with their peak memory, loads from a snapshot, and what collecting the rows
/// into one `Vec` would hold instead (the memory table only).
async fn replay_in_bounded_memory(
    s: &PgEventStore,
    n: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let id = StreamId::for_category("order", Uuid::new_v4())?;
    seed_stream_sql(s, &id, n).await?;
    let scenario = format!("load-{n}");
    let full_replay = crate::rss::peak_growth(harness::repeat(3, |_| {
        let id = &id;
        async move {
            Ok(Repository::<Order, _>::new(s)
                .load(id)
                .await?
                .events_replayed)
        }
    }))
    .await;
    let full_replay = (full_replay.0?, full_replay.1);
    report.push_with_rss(&scenario, "chronik full replay", 1, full_replay);
    from_snapshot(s, &id, 60, &scenario, report).await?;
    let collected = crate::rss::peak_growth(harness::repeat(1, |_| {
        let (p, sql, id) = (s.pool(), raw_load_sql(), id.as_str());
        async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_all(p)
                .await?;
            Ok(rows.len() as u64)
        }
    }))
    .await;
    let collected = (collected.0?, collected.1);
    report.push_with_rss(&scenario, "raw select (collected)", 1, collected);
    Ok(())
}

/// The raw baselines' keyset scan: pages of `sql` (`$1` the last transaction id as text,
/// `$2` the last position; columns 0 and 1 the same, as bigint) until one comes back
/// empty. `per_page` handles each page and returns how many events it counts.
async fn keyset_scan(
    pool: &PgPool,
    sql: &str,
    mut per_page: impl FnMut(&[sqlx::postgres::PgRow]) -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    let (mut tx, mut pos) = (0i64, 0i64);
    let mut n = 0u64;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tx.to_string())
            .bind(pos)
            .fetch_all(pool)
            .await?;
        let Some(last) = rows.last() else { break };
        tx = sqlx::Row::try_get(last, 0)?;
        pos = sqlx::Row::try_get(last, 1)?;
        n += per_page(&rows)?;
    }
    Ok(n)
}
