//! A first connection that cannot work fails at once with its real cause, said once and
//! with what to do next (issue 14, item 3): never "pool timed out" after the pool's
//! acquire timeout.

use std::str::FromStr as _;
use std::time::Duration;

use chronik_postgres::{PgEventStore, PgStoreConfig};
use chronik_store::StoreError;
use sqlx::postgres::PgConnectOptions;

/// An acquire timeout no test could sit out: a connect that waited for it instead of
/// failing on the cause would hang, and the guard below reports that.
const NEVER: Duration = Duration::from_secs(3600);

/// The guard against that hang: far above any real connect, far below `NEVER`.
const GUARD: Duration = Duration::from_secs(120);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `postgres://user@host:port/database` from the test database's URL, with `user` and
/// `database` replaced.
fn url_with(user: Option<&str>, database: Option<&str>) -> String {
    let options = PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
    format!(
        "postgres://{}@{}:{}/{}",
        user.unwrap_or(options.get_username()),
        options.get_host(),
        options.get_port(),
        database.unwrap_or(options.get_database().unwrap_or("postgres")),
    )
}

async fn connect_error(url: &str) -> StoreError {
    let config = PgStoreConfig {
        acquire_timeout: NEVER,
        ..PgStoreConfig::default()
    };
    tokio::time::timeout(GUARD, PgEventStore::connect_with(url, config))
        .await
        .expect("the connect waited for the pool's acquire timeout instead of failing at once")
        .expect_err("the connection must fail")
}

/// The message holds `part` exactly once, and nothing repeats it as a source.
fn said_once(err: &StoreError, part: &str) {
    let shown = err.to_string();
    assert_eq!(shown.matches(part).count(), 1, "{shown}");
    assert!(std::error::Error::source(err).is_none(), "{err:?}");
}

#[tokio::test]
async fn a_refused_port_says_connection_refused_at_once() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = connect_error(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
    said_once(
        &err,
        &format!("connection refused: is PostgreSQL running on 127.0.0.1:{port}?"),
    );
    assert!(
        err.is_retryable(),
        "a server that is down may come up: {err:?}"
    );
}

#[tokio::test]
async fn an_unknown_role_is_named_with_what_to_check() {
    let err = connect_error(&url_with(Some("chronik_no_such_role"), None)).await;
    said_once(&err, r#"role "chronik_no_such_role" does not exist"#);
    let shown = err.to_string();
    assert!(shown.contains("SQLSTATE 28000"), "{shown}");
    assert!(shown.contains("check the user and password"), "{shown}");
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_missing_database_is_named_with_what_to_do() {
    let err = connect_error(&url_with(None, Some("chronik_no_such_database"))).await;
    said_once(
        &err,
        r#"database "chronik_no_such_database" does not exist"#,
    );
    let shown = err.to_string();
    assert!(shown.contains("SQLSTATE 3D000"), "{shown}");
    assert!(shown.contains("createdb"), "{shown}");
}

#[tokio::test]
async fn a_reachable_server_still_connects() {
    let store = PgEventStore::connect(&database_url())
        .await
        .expect("connect");
    assert!(store.feed_horizon().await.expect("a query on the pool") > 0);
}

/// The URL's `application_name` names the sessions (as the docs tell services to do, so
/// that projection status tells them apart); `chronik` only when the URL names none.
#[tokio::test]
async fn the_urls_application_name_is_kept() {
    for (url, expected) in [
        (
            format!("{}?application_name=billing-api", url_with(None, None)),
            "billing-api",
        ),
        (url_with(None, None), "chronik"),
    ] {
        let store = PgEventStore::connect_with(&url, PgStoreConfig::default())
            .await
            .expect("connects");
        let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
            .fetch_one(store.pool())
            .await
            .expect("reads the setting");
        assert_eq!(name, expected);
    }
}
