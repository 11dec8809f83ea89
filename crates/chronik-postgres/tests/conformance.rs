//! The whole conformance suite on PostgreSQL, a fresh database per case.

mod support;

use chronik_postgres::PgEventStore;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use support::Settled;

/// Sessions set up as `PgEventStore::connect_with` sets up its own (`enable_seqscan =
/// off`): one-event appends take the one-statement fast path, to new and existing streams.
async fn store_sessions(pool: &PgPool) -> PgEventStore {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("enable_seqscan", "off")]);
    let sessions = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connect");
    PgEventStore::from_pool(sessions)
}

macro_rules! postgres_cases {
    ($($case:ident),* $(,)?) => {
        /// A pool of the caller's own, without chronik's session settings: appends to
        /// existing streams go through `append_events`.
        mod callers_pool {
            use super::*;
            $(
                #[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
                async fn $case(pool: PgPool) {
                    chronik_testkit::conformance::$case(Settled(PgEventStore::from_pool(pool)))
                        .await;
                }
            )*
        }

        /// The store's own sessions: every one-event append takes the fast path first.
        mod store_sessions {
            use super::*;
            $(
                #[sqlx::test(migrator = "chronik_postgres::MIGRATOR")]
                async fn $case(pool: PgPool) {
                    chronik_testkit::conformance::$case(Settled(store_sessions(&pool).await))
                        .await;
                }
            )*
        }
    };
}

chronik_testkit::conformance_cases!(postgres_cases);
