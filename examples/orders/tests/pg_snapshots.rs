//! The repository's caches on PostgreSQL: the law snapshot + tail == full replay for random
//! Orders histories and snapshot points, the law that cached repositories decide as on a
//! fresh load (the same checks the in-memory adapter runs), and the repository's snapshot
//! policy writing through the Postgres snapshot store.

use chronik::postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik::testkit::strategies::{
    cached_command_ops, check_cached_commands_decide_as_on_a_fresh_load,
    check_snapshot_plus_tail_equals_replay,
};
use chronik::{Aggregate as _, Metadata, SnapshotPolicy, SnapshotState, Version};
use chronik::{Repository, SnapshotStore};
use orders::{Order, OrderCommand};
mod common;

use common::{order_command, order_history};
use proptest::test_runner::{Config, TestRunner};
use sqlx::Executor;
use uuid::Uuid;

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must name the PostgreSQL to test against (e.g. postgres://postgres@127.0.0.1:5432/postgres)")
}

/// A store in a fresh schema; the schema is dropped by `drop_schema`.
async fn fresh_store() -> (PgEventStore, String) {
    let schema = format!("snap_{}", Uuid::new_v4().simple());
    let config =
        PgStoreConfig::with_schema(SchemaName::new(schema.clone()).expect("valid schema name"));
    let store = PgEventStore::connect_with(&database_url(), config)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (store, schema)
}

async fn drop_schema(store: &PgEventStore, schema: &str) {
    store
        .pool()
        .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await
        .expect("drop schema");
}

#[test]
fn snapshot_plus_tail_equals_full_replay_on_postgres() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (store, schema) = rt.block_on(fresh_store());
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let result = runner.run(&(order_history(60), 0..80usize), |(history, at)| {
        rt.block_on(check_snapshot_plus_tail_equals_replay::<Order, _>(
            store.clone(),
            history,
            at,
        ));
        Ok(())
    });
    rt.block_on(drop_schema(&store, &schema));
    result.expect("snapshot + tail == full replay");
}

#[test]
fn cached_commands_decide_as_on_a_fresh_load_on_postgres() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (store, schema) = rt.block_on(fresh_store());
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    let result = runner.run(&cached_command_ops(order_command(), 40), |ops| {
        rt.block_on(check_cached_commands_decide_as_on_a_fresh_load::<Order, _>(
            store.clone(),
            ops,
        ));
        Ok(())
    });
    rt.block_on(drop_schema(&store, &schema));
    result.expect("cached commands decide as on a fresh load");
}

#[test]
fn the_policy_writes_snapshots_that_later_loads_use() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (store, schema) = fresh_store().await;
        let repo = Repository::<Order, _>::new(store.clone())
            .with_snapshots(SnapshotPolicy::every(10).expect("valid"));
        let id = Order::stream_id(Uuid::new_v4()).expect("valid id");
        let meta = Metadata::default();
        repo.execute_with(
            &id,
            OrderCommand::Place {
                customer_id: "c".into(),
                total_amount: 5,
            },
            meta.clone(),
        )
        .await
        .expect("place");
        for _ in 0..24 {
            repo.execute_with(
                &id,
                OrderCommand::AddLine {
                    sku: "s".into(),
                    quantity: 1,
                    unit_price: 1,
                },
                meta.clone(),
            )
            .await
            .expect("line");
        }
        let snap = store
            .load_snapshot(&id, Order::STATE_SCHEMA_VERSION)
            .await
            .expect("load")
            .expect("snapshot");
        assert_eq!(snap.version, Version::new(20).expect("small"));
        let loaded = repo.load(&id).await.expect("load");
        assert_eq!(
            (
                loaded.snapshot_version.get(),
                loaded.events_replayed,
                loaded.state.total_amount
            ),
            (20, 5, 29)
        );
        // A state schema change: the old snapshot is ignored, never mis-decoded.
        assert!(
            store
                .load_snapshot(&id, Order::STATE_SCHEMA_VERSION + 1)
                .await
                .expect("load")
                .is_none()
        );
        assert_eq!(store.delete_snapshots("order").await.expect("delete"), 1);
        let full = repo.load(&id).await.expect("load");
        assert_eq!(
            (full.snapshot_version, full.state),
            (Version::ZERO, loaded.state)
        );
        drop_schema(&store, &schema).await;
    });
}
