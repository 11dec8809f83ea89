//! Projections fed from a hot standby: each test makes a throwaway primary and a
//! `pg_basebackup -R` standby of it (`chronik_testkit::replica`, removed when the test ends,
//! also on failure), runs `PgProjectionRunner::with_standby` (feed from the standby, read
//! model and checkpoint on the primary), and checks exactly-once, gap-free application under
//! concurrent writes with transactions held open on the primary; that a paused standby makes
//! the runner wait, never skip; and that a promoted standby is refused.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use chronik_core::{EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent, StreamId};
use chronik_postgres::RunnerBuilder as _;
use chronik_postgres::{
    HandlerError, PgEventStore, PgProjection, PgProjectionRunner, PgStandby, PgStoreConfig,
    PgTransaction, ProjectionState, RunnerHandle, RunnerOptions, standby_reports,
    wait_for_projection,
};
use chronik_store::{EventStore, FeedFilter, StoreError};
use chronik_testkit::replica::Replica;
use sqlx::Row;

/// Generous: a wait on a condition, never a timed assertion.
const WAIT: Duration = Duration::from_secs(120);

/// Records every application in `applied` (`n` counts repeats: exactly once is `n = 1`),
/// with a sequence number that gives the order of application.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    filter: FeedFilter,
}

impl PgProjection for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn filter(&self) -> FeedFilter {
        self.filter.clone()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: &chronik_core::RecordedEvent,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO applied (projection, event_id, stream_id, version) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (projection, event_id) DO UPDATE SET n = applied.n + 1",
        )
        .bind(self.name)
        .bind(event.event_id.as_uuid())
        .bind(event.stream_id.as_str())
        .bind(event.version.as_i64())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM applied WHERE projection = $1")
            .bind(self.name)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The replica, the primary store (migrated, with the `applied` table) and the standby.
async fn setup() -> (Replica, PgEventStore, PgStandby) {
    let replica = tokio::task::spawn_blocking(Replica::start)
        .await
        .unwrap()
        .unwrap();
    let primary = PgEventStore::connect(&replica.primary_url()).await.unwrap();
    primary.migrate().await.unwrap();
    sqlx::query(
        "CREATE TABLE applied (projection text, event_id uuid, stream_id text, \
         version bigint, n int NOT NULL DEFAULT 1, seq bigserial, \
         PRIMARY KEY (projection, event_id))",
    )
    .execute(primary.pool())
    .await
    .unwrap();
    let standby = PgStandby::connect(&replica.standby_url(), PgStoreConfig::default())
        .await
        .unwrap();
    (replica, primary, standby)
}

fn event(kind: &str, i: u64) -> NewEvent {
    NewEvent::new(
        EventId::new(uuid::Uuid::new_v4()).unwrap(),
        EventType::new(kind).unwrap(),
        1,
        serde_json::json!({ "i": i }),
        Metadata::default(),
    )
    .unwrap()
}

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 37,
        poll_max: Duration::from_millis(50),
        lag_every: Duration::ZERO,
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        ..RunnerOptions::default()
    }
}

fn spawn(primary: &PgEventStore, standby: &PgStandby, p: Recorder) -> RunnerHandle {
    PgProjectionRunner::new(primary.clone(), Arc::new(p))
        .with_standby(standby.clone())
        .with_options(options())
        .spawn()
        .unwrap()
}

/// `(event id, stream, version, n)` of every application by `projection`, in application
/// order.
async fn applied(primary: &PgEventStore, projection: &str) -> Vec<(uuid::Uuid, String, i64, i32)> {
    sqlx::query(
        "SELECT event_id, stream_id, version, n FROM applied WHERE projection = $1 ORDER BY seq",
    )
    .bind(projection)
    .fetch_all(primary.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Every event of the feed (read on the primary) that `filter` selects, in feed order.
async fn feed(primary: &PgEventStore, filter: &FeedFilter) -> Vec<uuid::Uuid> {
    let mut out = Vec::new();
    let mut after = FeedCursor::START;
    loop {
        let page = primary.read_feed(after, filter, 1000).await.unwrap();
        if page.events.is_empty() {
            return out;
        }
        out.extend(page.events.iter().map(|e| e.event_id.as_uuid()));
        after = page.next;
    }
}

/// The newest committed event's cursor, once the primary's feed shows it.
async fn settled_head(primary: &PgEventStore) -> FeedCursor {
    let newest = primary.newest_committed().await.unwrap().unwrap();
    primary.wait_for_feed(newest, WAIT).await.unwrap();
    newest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_fed_runner_applies_every_event_once_under_concurrent_writes_and_held_transactions()
 {
    let (_replica, primary, standby) = setup().await;
    // A primary is not a standby.
    let refused = PgStandby::from_store(primary.clone()).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::InvalidRequest(m) if m.contains("not a hot standby")),
        "{refused}"
    );

    let all = spawn(
        &primary,
        &standby,
        Recorder {
            name: "all",
            filter: FeedFilter::all(),
        },
    );
    // A filter moves the checkpoint to the standby's head on short pages.
    let only_b = FeedFilter {
        categories: vec!["b".to_owned()],
        ..FeedFilter::all()
    };
    let some = spawn(
        &primary,
        &standby,
        Recorder {
            name: "only-b",
            filter: only_b.clone(),
        },
    );

    // Writers on streams of two categories, while other transactions append and stay open
    // (their older transaction ids commit after newer ones: a reader that skipped them
    // would lose their events for good).
    let mut writers = Vec::new();
    for w in 0..4_u64 {
        let store = primary.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60_u64 {
                let category = if (w + i) % 3 == 0 { "b" } else { "a" };
                let stream = StreamId::new(format!("{category}-{w}-{}", i % 5)).unwrap();
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        &[event("Written", i), event("Written", i)],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for h in 0..6_u64 {
        let store = primary.clone();
        writers.push(tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let stream = StreamId::new(format!("b-held-{h}")).unwrap();
            tx.append(&stream, ExpectedVersion::NoStream, &[event("Held", h)])
                .await
                .unwrap();
            // Held open while the writers commit newer transactions past it.
            tokio::time::sleep(Duration::from_millis(150 * (h + 1))).await;
            tx.commit().await.unwrap();
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    let head = settled_head(&primary).await;
    for name in ["all", "only-b"] {
        wait_for_projection(&primary, name, head, WAIT)
            .await
            .unwrap();
    }
    for (name, filter) in [("all", FeedFilter::all()), ("only-b", only_b)] {
        let want = feed(&primary, &filter).await;
        if name == "all" {
            assert_eq!(want.len(), 4 * 60 * 2 + 6);
        }
        let got = applied(&primary, name).await;
        assert!(
            got.iter().all(|a| a.3 == 1),
            "{name}: an event applied twice"
        );
        let ids: Vec<uuid::Uuid> = got.iter().map(|a| a.0).collect();
        assert_eq!(ids, want, "{name}: applied in feed order, every event once");
        // Per-stream order: each stream's versions come 1, 2, 3, ... in application order.
        let mut next = std::collections::HashMap::<String, i64>::new();
        for (_, stream, version, _) in &got {
            let expected = next.entry(stream.clone()).or_insert(1);
            assert_eq!(*version, *expected, "{name}: {stream} out of order");
            *expected += 1;
        }
    }

    // Both read from the standby and recorded its lag where doctor reads it.
    let reports = standby_reports(&primary).await.unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.projection.as_str()).collect();
    assert_eq!(names, ["all", "only-b"]);
    assert!(reports.iter().all(|r| r.standby == standby.endpoint()));
    for h in [all, some] {
        let s = h.stop().await.unwrap().remove(0);
        assert_eq!(s.state, ProjectionState::Stopped, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_standby_makes_the_runner_wait_not_skip_and_a_promoted_one_is_refused() {
    let (_replica, primary, standby) = setup().await;
    let runner = spawn(
        &primary,
        &standby,
        Recorder {
            name: "paused",
            filter: FeedFilter::all(),
        },
    );
    let stream = StreamId::new("p-1").unwrap();
    for i in 0..20 {
        primary
            .append(&stream, ExpectedVersion::Any, &[event("Before", i)])
            .await
            .unwrap();
    }
    let before = settled_head(&primary).await;
    wait_for_projection(&primary, "paused", before, WAIT)
        .await
        .unwrap();

    // Replay paused: the standby stops at what it has.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(standby.store().pool())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay did not pause"
        );
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(standby.store().pool())
            .await
            .unwrap();
        if state == "paused" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..30 {
        primary
            .append(&stream, ExpectedVersion::Any, &[event("During", i)])
            .await
            .unwrap();
    }
    let target = settled_head(&primary).await;
    // The runner keeps polling the paused standby (reading a page, then measuring the
    // standby's lag into its status row, then idling). Two measures after the appends
    // have a read of the standby between them: it has looked, and found nothing new.
    let mut status = runner.subscribe("paused").unwrap();
    let polls_before = status.borrow().batches;
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(primary.pool())
        .await
        .unwrap();
    let first = measured_after(&primary, "paused", now).await;
    measured_after(&primary, "paused", first).await;
    let reports = standby_reports(&primary).await.unwrap();
    assert!(reports[0].paused, "{reports:?}");
    assert!(reports[0].lag_bytes.is_some_and(|b| b > 0), "{reports:?}");
    let lag = standby.lag(&primary).await.unwrap();
    assert!(lag.paused && lag.bytes > 0, "{lag:?}");
    // It waited: nothing of the new events applied, the checkpoint where the standby ends.
    assert_eq!(applied(&primary, "paused").await.len(), 20);
    assert_eq!(status.borrow().checkpoint, before);
    assert_eq!(
        status.borrow().batches,
        polls_before,
        "no batch committed while paused"
    );
    assert!(status.borrow().checkpoint < target);

    // Resumed: it catches up, every event once.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(standby.store().pool())
        .await
        .unwrap();
    wait_for_projection(&primary, "paused", target, WAIT)
        .await
        .unwrap();
    let got = applied(&primary, "paused").await;
    assert_eq!(got.len(), 50);
    assert!(got.iter().all(|a| a.3 == 1));
    assert_eq!(
        got.iter().map(|a| a.0).collect::<Vec<_>>(),
        feed(&primary, &FeedFilter::all()).await
    );

    // Promoted: its history may leave the primary's, so the runner refuses to read it and
    // says so, and applies nothing more.
    sqlx::query("SELECT pg_promote()")
        .execute(standby.store().pool())
        .await
        .unwrap();
    primary
        .append(&stream, ExpectedVersion::Any, &[event("After", 0)])
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        status.wait_for(|s| {
            s.state == ProjectionState::Failing
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("was promoted"))
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(applied(&primary, "paused").await.len(), 50);
    assert_eq!(status.borrow().checkpoint, target);
    runner.stop().await.unwrap();
}

/// Waits until the runner of `projection` has measured its standby after `after`; returns
/// when it did.
async fn measured_after(
    primary: &PgEventStore,
    projection: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner of {projection} measured its standby no more"
        );
        let at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT max(standby_measured_at) FROM projection_runners WHERE name = $1",
        )
        .bind(projection)
        .fetch_one(primary.pool())
        .await
        .unwrap();
        if let Some(at) = at.filter(|at| *at > after) {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
