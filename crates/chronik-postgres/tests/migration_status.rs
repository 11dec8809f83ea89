//! `PgEventStore::migration_status`: what the operator tools check before reading a store.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use chronik_postgres::{
    MigrationProblem, MigrationStatus, PgEventStore, PgStoreConfig, SchemaName,
};
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn an_unmigrated_schema_has_every_migration_pending_and_a_migrated_one_none(pool: PgPool) {
    let schema = SchemaName::new("status_check").unwrap();
    let store = PgEventStore::from_pool_with(pool.clone(), &PgStoreConfig::with_schema(schema));
    let before = store.migration_status().await.unwrap();
    let embedded = MigrationStatus::embedded();
    assert!(!embedded.is_empty());
    assert!(before.applied.is_empty() && !before.is_current());
    let problems = before.problems();
    assert_eq!(problems.len(), embedded.len());
    assert!(
        matches!(&problems[0], MigrationProblem::Pending { version: 1, .. }),
        "{problems:?}"
    );
    assert_eq!(
        problems[0].to_string(),
        format!("migration 0001 {} is not applied", embedded[0].1)
    );

    store.migrate().await.unwrap();
    let after = store.migration_status().await.unwrap();
    assert!(after.is_current(), "{after:?}");
    assert_eq!(after.applied_count(), embedded.len());
    assert!(after.problems().is_empty());

    // A migration this build does not know (a newer chronik wrote it) is reported.
    sqlx::query(
        "INSERT INTO status_check._sqlx_migrations \
           (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let newer = store.migration_status().await.unwrap();
    assert!(newer.is_current());
    assert!(
        matches!(
            newer.problems().as_slice(),
            [MigrationProblem::Unknown { version: 9999, .. }]
        ),
        "{:?}",
        newer.problems()
    );
}

/// Issue 14, item 8: a mistyped schema is not an unmigrated store. The status says that
/// the schema does not exist, and which schemas of the database hold a store.
#[sqlx::test(migrations = false)]
async fn a_missing_schema_is_told_apart_from_an_unmigrated_one(pool: PgPool) {
    let real = SchemaName::new("status_real").unwrap();
    PgEventStore::from_pool_with(pool.clone(), &PgStoreConfig::with_schema(real))
        .migrate()
        .await
        .unwrap();
    sqlx::query("CREATE SCHEMA status_empty")
        .execute(&pool)
        .await
        .unwrap();

    let typo = PgEventStore::from_pool_with(
        pool.clone(),
        &PgStoreConfig::with_schema(SchemaName::new("status_reel").unwrap()),
    )
    .migration_status()
    .await
    .unwrap();
    assert!(!typo.schema_exists && !typo.is_current());
    assert_eq!(typo.stores_elsewhere, vec!["status_real".to_owned()]);

    let empty = PgEventStore::from_pool_with(
        pool.clone(),
        &PgStoreConfig::with_schema(SchemaName::new("status_empty").unwrap()),
    )
    .migration_status()
    .await
    .unwrap();
    assert!(empty.schema_exists && !empty.is_current());
    assert_eq!(empty.stores_elsewhere, vec!["status_real".to_owned()]);
    let nothing_created: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'status_reel')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!nothing_created, "reading the status creates nothing");
}
