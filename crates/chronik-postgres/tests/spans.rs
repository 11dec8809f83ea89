//! The `tracing` spans chronik opens (docs/operations.md, "Traces") name what an operator
//! follows a request by (stream ids, versions, feed cursors, outcomes, attempts and
//! conflicts) and never what a service keeps private: a payload, a header, a connection
//! string. [`SpanCapture`] records every span (its fields as opened and as recorded later)
//! and every event: appends (one stream and several, a conflict), a command through
//! the repository that meets a real conflict and retries, a load, and batches of both
//! projection runners over PostgreSQL.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chronik_core::{
    Aggregate, EventId, EventType, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    HandlerError, PgEventStore, PgProjection, PgProjectionRunner, PgStoreConfig, PgTransaction,
    SchemaName,
};
use chronik_projections::{Projection, ProjectionRunner, RunnerOptions};
use chronik_store::{EventStore, Repository, StreamAppend};
use chronik_testkit::{Interloper, SpanCapture};
use uuid::Uuid;

mod support;
use support::tally::Tally;

const PASSWORD: &str = "s3cr3t-span-marker";
const PAYLOAD: &str = "payload-span-marker-51c2";
const DEADLINE: Duration = Duration::from_secs(90);

/// A read model that accepts the secret events and writes nothing.
#[derive(Debug)]
struct Quiet;

impl PgProjection for Quiet {
    fn name(&self) -> &str {
        "quiet_pg"
    }
    async fn handle(
        &self,
        _tx: &mut PgTransaction,
        _event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn clear(&self, _tx: &mut PgTransaction) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The same for the generic runner.
#[derive(Debug)]
struct QuietGeneric;

#[async_trait::async_trait]
impl Projection for QuietGeneric {
    fn name(&self) -> &str {
        "quiet_generic"
    }
    async fn handle(&self, _event: &RecordedEvent) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The test database's URL with a password in it (the local server trusts local logins).
fn url_with_password() -> String {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test database");
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let user = user.split(':').next().unwrap();
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

fn secret(n: u32) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).unwrap(),
        EventType::new("Secret").unwrap(),
        1,
        serde_json::json!({ "note": PAYLOAD, "n": n }),
        Metadata::default().with_header("authorization", PAYLOAD),
    )
    .unwrap()
}

async fn work(schema: SchemaName) {
    let store = PgEventStore::connect_with(
        &url_with_password(),
        PgStoreConfig::with_schema(schema.clone()),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();

    // Appends: written, a conflict, several streams at once.
    let notes = StreamId::new(format!("note-{}", Uuid::new_v4().simple())).unwrap();
    store
        .append(&notes, ExpectedVersion::NoStream, &[secret(1)])
        .await
        .unwrap();
    let conflict = store
        .append(&notes, ExpectedVersion::NoStream, &[secret(2)])
        .await;
    assert!(conflict.is_err_and(|e| e.is_conflict()));
    let other = StreamId::new(format!("note-{}", Uuid::new_v4().simple())).unwrap();
    store
        .append_streams(&[
            StreamAppend::new(notes.clone(), ExpectedVersion::Any, vec![secret(3)]),
            StreamAppend::new(other, ExpectedVersion::NoStream, vec![secret(4)]),
        ])
        .await
        .unwrap();

    // A command that meets a real conflict (a competing write between its load and its
    // append), retried, with a private header; then a load.
    let tally = StreamId::for_category(Tally::TYPE, Uuid::new_v4()).unwrap();
    let competing = tally.clone();
    let racy = Interloper::new(store.clone(), move |s: PgEventStore| {
        let stream = competing.clone();
        async move {
            let event = NewEvent::new(
                EventId::new(Uuid::new_v4()).unwrap(),
                EventType::new("Added").unwrap(),
                1,
                serde_json::json!({ "n": 5 }),
                Metadata::default(),
            )?;
            s.append(&stream, ExpectedVersion::Any, &[event]).await?;
            Ok(())
        }
    });
    let repo = Repository::<Tally, _>::new(racy);
    let outcome = repo
        .execute_with(
            &tally,
            2,
            Metadata::default().with_header("authorization", PAYLOAD),
        )
        .await
        .unwrap();
    assert_eq!((outcome.attempts, outcome.conflicts), (2, 1));
    let loaded = Repository::<Tally, _>::new(store.clone())
        .load(&tally)
        .await
        .unwrap();
    assert_eq!(loaded.state.total, 7);
    let last = outcome.append.unwrap().cursor;
    store.wait_for_feed(last, DEADLINE).await.unwrap();

    // Both runners, to the end of the feed.
    let pg = PgProjectionRunner::new(store.clone(), Arc::new(Quiet))
        .with_options(RunnerOptions {
            listen_channel: None,
            ..RunnerOptions::default()
        })
        .spawn()
        .unwrap();
    chronik_postgres::wait_for_projection(&store, "quiet_pg", last, DEADLINE)
        .await
        .unwrap();
    pg.stop().await.unwrap();
    let generic = ProjectionRunner::new(Arc::new(store.clone()))
        .with_projection(Arc::new(QuietGeneric))
        .with_options(RunnerOptions::default())
        .spawn()
        .unwrap();
    generic
        .wait_for("quiet_generic", last, DEADLINE)
        .await
        .unwrap();
    generic.stop().await.unwrap();

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        schema.quoted()
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

/// The fields of the first span in `spans` whose `key` is `value`.
fn with<'a>(
    spans: &'a [BTreeMap<String, String>],
    key: &str,
    value: &str,
) -> &'a BTreeMap<String, String> {
    spans
        .iter()
        .find(|f| f.get(key).is_some_and(|v| v == value))
        .unwrap_or_else(|| panic!("no span with {key} = {value}: {spans:#?}"))
}

fn has(fields: &BTreeMap<String, String>, keys: &[&str]) {
    for key in keys {
        assert!(fields.contains_key(*key), "no {key}: {fields:#?}");
    }
}

#[test]
fn spans_name_streams_versions_and_cursors_and_never_a_payload() {
    let capture = SpanCapture::default();
    let schema = SchemaName::new(format!("spans_{}", Uuid::new_v4().simple())).unwrap();
    capture.run(work(schema));

    let appends = capture.named("chronik.append");
    let written = with(&appends, "outcome", "written");
    has(
        written,
        &[
            "stream",
            "category",
            "expected",
            "events",
            "first_version",
            "last_version",
            "cursor",
        ],
    );
    assert_eq!(written["category"], "note", "{written:?}");
    let conflict = with(&appends, "outcome", "conflict");
    assert_eq!(conflict["actual_version"], "1", "{conflict:?}");
    assert_eq!(conflict["expected"], "no stream", "{conflict:?}");
    let multi = capture.named("chronik.append_streams");
    let multi = with(&multi, "outcome", "written");
    assert_eq!(multi["streams"], "2", "{multi:?}");
    has(multi, &["stream_ids", "events", "cursor"]);

    let executes = capture.named("chronik.execute");
    let execute = with(&executes, "aggregate", "tally");
    assert_eq!(execute["outcome"], "written", "{execute:?}");
    assert_eq!(execute["attempts"], "2", "{execute:?}");
    assert_eq!(execute["conflicts"], "1", "{execute:?}");
    assert_eq!(execute["version"], "2", "{execute:?}");
    has(execute, &["stream", "events_written", "cursor"]);
    let loads = capture.named("chronik.load");
    let load = with(&loads, "version", "2");
    has(load, &["stream", "snapshot_version", "events_replayed"]);
    // Each attempt's load is a span of its own: two for the command, one for the load.
    assert!(loads.len() >= 3, "{loads:#?}");

    let batches = capture.named("chronik.projection.batch");
    for engine in ["postgres", "generic"] {
        let batch = batches
            .iter()
            .find(|b| b["engine"] == engine && b.get("outcome").is_some_and(|o| o == "committed"))
            .unwrap_or_else(|| panic!("no committed {engine} batch: {batches:#?}"));
        has(
            batch,
            &["projection", "from", "to", "events", "processed", "limit"],
        );
    }

    // Nothing private anywhere: not in a span's fields, not in an event's.
    assert!(
        !capture.mentions(PAYLOAD),
        "a payload or header in a span or event"
    );
    assert!(
        !capture.mentions(PASSWORD),
        "the password in a span or event"
    );
    assert!(capture.mentions("note-"), "the capture sees stream ids");
}
