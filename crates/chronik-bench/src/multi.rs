//! Scenario `append-streams`: one multi-stream append (`EventStore::append_streams`) of 2
//! and of 4 new streams, one event each, against the raw SQL of the same rows in the same
//! run: the naive baselines' plain table `seed_events` written by one plain multi-row INSERT
//! (what a naive library does, without any check), and chronik's own rows (the `streams` rows and the events)
//! written by one statement with no checks at all (`raw-rows`: the floor of the schema).

use std::sync::Arc;

use chronik_core::{ExpectedVersion, StreamId};
use chronik_store::{EventStore, StreamAppend};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Plan;
use crate::harness::{self, Op};
use crate::memory::{new_event, payload};
use crate::pg::{RAW_SCHEMA, STORE_SCHEMA, pool, store_on};
use crate::report::Report;

/// Streams per append measured.
const WIDTHS: [usize; 2] = [2, 4];

pub(crate) async fn run(url: &str, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    for &c in plan.batch_concurrency {
        let p = pool(url, c).await?;
        for width in WIDTHS {
            let scenario = format!("append-streams-{width}");
            let s = store_on(&p)?;
            let chronik: Op = Arc::new(move |_, _| {
                let s = s.clone();
                Box::pin(async move {
                    let parts = (0..width)
                        .map(|_| {
                            Ok(StreamAppend::new(
                                StreamId::for_category("account", Uuid::new_v4())?,
                                ExpectedVersion::NoStream,
                                vec![new_event()],
                            ))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    s.append_streams(&parts).await?;
                    Ok(width as u64)
                })
            });
            let variants = [
                ("chronik", chronik),
                ("raw-insert-rows", seed_rows_op(&p, width)),
                ("raw-rows", raw_rows_op(&p, width)),
            ];
            for (name, stats) in
                harness::interleaved(c, plan.budget, plan.rounds, &variants).await?
            {
                report.push(&scenario, &name, c, stats);
            }
            report.ratio(&scenario, "chronik", "raw-insert-rows", c, None);
            report.ratio(&scenario, "chronik", "raw-rows", c, None);
        }
        p.close().await;
    }
    Ok(())
}

/// `width` rows of the naive baselines' plain table `seed_events`, one per new aggregate, in
/// one plain INSERT.
fn seed_rows_op(p: &PgPool, width: usize) -> Op {
    let sql = Arc::new(format!(
        "INSERT INTO {RAW_SCHEMA}.seed_events (aggregate_id, aggregate_type, event_type, event_data, version) \
         SELECT a, 'account', 'OrderPlaced', $2::jsonb, 1 FROM unnest($1::uuid[]) AS a"
    ));
    let (p, body) = (p.clone(), Arc::new(payload()));
    Arc::new(move |_, _| {
        let (p, sql, body) = (p.clone(), sql.clone(), body.clone());
        Box::pin(async move {
            let ids: Vec<Uuid> = (0..width).map(|_| Uuid::new_v4()).collect();
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&ids)
                .bind(&*body)
                .execute(&p)
                .await?;
            Ok(width as u64)
        })
    })
}

/// chronik's rows for `width` new streams of one event each, with no checks: the streams
/// rows and the events, one statement.
fn raw_rows_op(p: &PgPool, width: usize) -> Op {
    let sql = Arc::new(format!(
        "WITH s AS (INSERT INTO {STORE_SCHEMA}.streams (stream_id, stream_type, version, last_xid) \
                    SELECT sid, 'account', 1, pg_current_xact_id() FROM unnest($1::text[]) AS sid) \
         INSERT INTO {STORE_SCHEMA}.events (stream_id, stream_type, version, event_id, event_type, schema_version, payload) \
         SELECT u.sid, 'account', 1, u.id, 'OrderPlaced', 1, $3::jsonb \
           FROM unnest($1::text[], $2::uuid[]) AS u(sid, id)"
    ));
    let (p, body) = (p.clone(), Arc::new(payload()));
    Arc::new(move |_, _| {
        let (p, sql, body) = (p.clone(), sql.clone(), body.clone());
        Box::pin(async move {
            let streams: Vec<String> = (0..width)
                .map(|_| format!("account-{}", Uuid::new_v4()))
                .collect();
            let ids: Vec<Uuid> = (0..width).map(|_| Uuid::now_v7()).collect();
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&streams)
                .bind(&ids)
                .bind(&*body)
                .execute(&p)
                .await?;
            Ok(width as u64)
        })
    })
}
