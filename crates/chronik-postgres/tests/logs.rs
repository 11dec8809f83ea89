//! Secrets stay out of logs and errors: a connection string's password never appears in
//! any log line or error, and a payload's content never appears in a log line at `info`
//! or above (warnings and errors included), whatever the library does with it: appends,
//! reads, conflicts, a snapshot that does not decode, a projection handler that fails on
//! it. Everything the library and sqlx log is captured (tracing-subscriber writing to a
//! buffer) at `trace`, then checked level by level.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronik_core::{
    Aggregate, EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent, RecordedEvent,
    SnapshotState, StreamId, Version,
};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    HandlerError, PgEventStore, PgProjection, PgProjectionRunner, PgStoreConfig, PgTransaction,
    ProjectionState, RunnerOptions, SchemaName,
};
use chronik_store::{EventStore, FeedFilter, Repository, SnapshotStore};
use futures::TryStreamExt as _;
use tracing_subscriber::fmt::MakeWriter;
use uuid::Uuid;

mod support;
use support::tally::Tally;

const PASSWORD: &str = "s3cr3t-marker";
const PAYLOAD: &str = "payload-marker-7f3a";
const DEADLINE: Duration = Duration::from_secs(90);

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The test database's URL with `password` set (the local server trusts local logins and
/// ignores it) and, optionally, another host and port.
fn url_with_password(password: &str, host_port: Option<&str>) -> String {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test database");
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let user = user.split(':').next().unwrap();
    let host = match host_port {
        Some(h) => {
            let db = host.split_once('/').map_or("postgres", |(_, db)| db);
            format!("{h}/{db}")
        }
        None => host.to_owned(),
    };
    format!("{scheme}://{user}:{password}@{host}")
}

/// Runs `f` on a current-thread runtime (so every task logs here) with a subscriber at
/// `level`; returns what was logged.
fn capture<F: std::future::Future<Output = ()>>(
    level: tracing::Level,
    f: impl FnOnce() -> F,
) -> String {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || runtime.block_on(f()));
    drop(runtime);
    buffer.text()
}

/// A read model whose handler decodes the payload strictly (the marker is a string where
/// a number is expected), so it fails and the runner logs the failure.
#[derive(Debug)]
struct Strict;

impl PgProjection for Strict {
    fn name(&self) -> &str {
        "strict"
    }
    fn filter(&self) -> FeedFilter {
        FeedFilter {
            event_types: vec!["Secret".to_owned()],
            categories: Vec::new(),
        }
    }
    async fn handle(
        &self,
        _tx: &mut PgTransaction,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let _: u32 = serde_json::from_value(event.payload["note"].clone())?;
        Ok(())
    }
    async fn clear(&self, _tx: &mut PgTransaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Everything a service does with a secret-bearing URL and payload.
async fn work() {
    let schema = SchemaName::new(format!("logs_{}", Uuid::new_v4().simple())).unwrap();
    let store = PgEventStore::connect_with(
        &url_with_password(PASSWORD, None),
        PgStoreConfig::with_schema(schema.clone()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let stream = StreamId::new(format!("tally-{}", Uuid::new_v4().simple())).unwrap();
    let event = NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new("Secret").unwrap(),
        1,
        serde_json::json!({ "note": PAYLOAD, "nested": { "deeper": [PAYLOAD] } }),
        Metadata::default().with_header("authorization", PAYLOAD),
    )
    .unwrap();
    let appended = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&event),
        )
        .await
        .unwrap();
    // An idempotent retry, a conflict, reads of the stream and the feed.
    store
        .append(&stream, ExpectedVersion::NoStream, &[event])
        .await
        .unwrap();
    let conflict = NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new("Secret").unwrap(),
        1,
        serde_json::json!({ "note": PAYLOAD }),
        Metadata::default(),
    )
    .unwrap();
    let err = store
        .append(&stream, ExpectedVersion::NoStream, &[conflict])
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(PAYLOAD), "{err:?}");
    let events: Vec<_> = store
        .read_stream(&stream, Version::FIRST)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    store
        .wait_for_feed(appended.cursor, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    store
        .read_feed(FeedCursor::START, &FeedFilter::all(), 10)
        .await
        .unwrap();

    // A snapshot whose state does not decode (it holds the marker where a number goes):
    // the repository ignores it, says so in a warning, and replays.
    let tally = StreamId::for_category(Tally::TYPE, Uuid::new_v4()).unwrap();
    store
        .save_snapshot(
            &tally,
            Version::new(1).unwrap(),
            Tally::STATE_SCHEMA_VERSION,
            &serde_json::json!({ "total": PAYLOAD }),
        )
        .await
        .unwrap();
    let repo = Repository::<Tally, _>::new(store.clone())
        .with_snapshots(chronik_core::SnapshotPolicy::Never);
    let _ = repo.load(&tally).await;

    // A projection handler that fails on the event: retried, with a warning each time.
    let runner = PgProjectionRunner::new(store.clone(), Arc::new(Strict))
        .with_options(RunnerOptions {
            listen_channel: None,
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            ..RunnerOptions::default()
        })
        .spawn()
        .unwrap();
    let mut status = runner.subscribe("strict").unwrap();
    tokio::time::timeout(
        DEADLINE,
        status.wait_for(|s| s.state == ProjectionState::Failing && s.attempts >= 2),
    )
    .await
    .unwrap()
    .unwrap();
    let last_error = runner
        .status("strict")
        .unwrap()
        .last_error
        .unwrap_or_default();
    assert!(!last_error.contains(PAYLOAD), "status: {last_error}");
    runner.stop().await.unwrap();

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        schema.quoted()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    assert!(!format!("{store:?} {:?}", store.pool()).contains(PASSWORD));
}

#[test]
fn no_password_in_any_log_and_no_payload_at_info_or_above() {
    let info = capture(tracing::Level::INFO, work);
    for expected in [
        "projection failing; retrying",
        "ignoring snapshot that does not decode",
    ] {
        assert!(
            info.contains(expected),
            "the capture lacks {expected:?}: {info}"
        );
    }
    assert!(!info.contains(PASSWORD), "password logged:\n{info}");
    assert!(!info.contains(PAYLOAD), "payload logged at info+:\n{info}");
    let trace = capture(tracing::Level::TRACE, work);
    assert!(trace.contains("sqlx::query"), "the capture works");
    assert!(!trace.contains(PASSWORD), "password logged at trace");
}

#[test]
fn failed_connections_never_show_the_password() {
    let cases = [
        ("127.0.0.1:1", "refused port"),
        ("no-such-host.invalid:5432", "unknown host"),
    ];
    let logs = capture(tracing::Level::TRACE, || async {
        for (host, what) in cases {
            let config = PgStoreConfig {
                acquire_timeout: Duration::from_secs(5),
                ..PgStoreConfig::default()
            };
            let url = url_with_password(PASSWORD, Some(host));
            let err = PgEventStore::connect_with(&url, config)
                .await
                .expect_err(what);
            let shown = format!("{err} | {err:?} | {:?}", std::error::Error::source(&err));
            assert!(!shown.contains(PASSWORD), "{what}: {shown}");
        }
        // A database that does not exist, and malformed URLs holding a password.
        let missing =
            url_with_password(PASSWORD, None).replace("/postgres", "/chronik_no_such_database");
        for url in [
            missing.as_str(),
            "postgres://postgres:s3cr3t-marker@127.0.0.1:notaport/postgres",
            "postgres://postgres:s3cr3t-marker@[::1/postgres",
            "postgres://postgres:s3cr3t-marker@127.0.0.1:5432/postgres?sslmode=bogus",
        ] {
            let err = PgEventStore::connect(url).await.expect_err(url);
            let shown = format!("{err} | {err:?}");
            assert!(!shown.contains(PASSWORD), "{url}: {shown}");
        }
    });
    assert!(!logs.contains(PASSWORD), "password logged:\n{logs}");
}
