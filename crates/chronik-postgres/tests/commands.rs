//! `Repository::execute` on PostgreSQL reads and appends on one pooled connection
//! (`EventStore::session`): commands still work, concurrently and with snapshots, through a
//! pool of a single connection, which a command holding a second connection would wait on
//! forever (until the pool's acquire timeout fails it).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use chronik_core::{RetryPolicy, SnapshotPolicy, Version};
use chronik_postgres::PgEventStore;
use chronik_store::{EventStore, Repository};
use chronik_testkit::conformance::stream;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

mod support;
use support::tally::Tally;

#[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
async fn commands_run_through_a_pool_of_one_connection(pool: PgPool) {
    // A short acquire timeout: a command that held a second connection fails, not hangs.
    let one = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let store = PgEventStore::from_pool(one);
    let repo = Repository::<Tally, _>::new(store.clone())
        .with_snapshots(SnapshotPolicy::every(2).unwrap())
        .with_retry(
            RetryPolicy::new(50, Duration::from_millis(1), Duration::from_millis(5)).unwrap(),
        )
        .with_sleep(tokio::time::sleep);
    let (a, b) = (stream("tally"), stream("tally"));
    // Concurrent commands on two streams: they queue for the one connection and conflict
    // on each stream; every one of them lands.
    let commands = (1..=12).map(|n| {
        let (repo, id) = (&repo, if n % 2 == 0 { &a } else { &b });
        async move { repo.execute(id, n).await.unwrap() }
    });
    futures::future::join_all(commands).await;
    for (id, total) in [(&a, 2 + 4 + 6 + 8 + 10 + 12), (&b, 1 + 3 + 5 + 7 + 9 + 11)] {
        assert_eq!(
            store.stream_version(id).await.unwrap(),
            Version::new(6).unwrap()
        );
        let loaded = repo.load(id).await.unwrap();
        assert_eq!(loaded.state.total, total);
        assert!(loaded.snapshot_version > Version::ZERO, "{loaded:?}");
    }
}
