//! The whole conformance suite on PostgreSQL, a fresh database per case.

mod support;

use chronik_postgres::PgEventStore;
use sqlx::PgPool;
use support::Settled;

macro_rules! postgres_cases {
    ($($case:ident),* $(,)?) => {$(
        #[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
        async fn $case(pool: PgPool) {
            chronik_testkit::conformance::$case(Settled(PgEventStore::from_pool(pool))).await;
        }
    )*};
}

chronik_testkit::conformance_cases!(postgres_cases);
