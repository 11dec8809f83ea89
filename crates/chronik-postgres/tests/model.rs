//! Random operation sequences give the same results on PostgreSQL as on the in-memory
//! reference model (`chronik_memory::MemoryStore`).
//!
//! Each case runs in a fresh schema of the database named by `DATABASE_URL`, so feed
//! heads and counts are comparable too; the schema is dropped afterwards.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use chronik_core::{
    EventId, EventType, ExpectedVersion, FeedCursor, Metadata, NewEvent, RecordedEvent, StreamId,
    Version,
};
use chronik_memory::MemoryStore;
use chronik_postgres::{PgEventStore, PgStoreConfig, SchemaName};
use chronik_store::{AppendResult, EventStore, FeedFilter, StoreError, StreamAppend};
use futures::TryStreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use sqlx::PgPool;
use support::Settled;
use uuid::Uuid;

const STREAMS: usize = 3;
const TYPES: [&str; 3] = ["Placed", "Shipped", "Cancelled"];

#[derive(Debug, Clone)]
enum Batch {
    /// New events: (type index, payload).
    Fresh(Vec<(usize, Value)>),
    /// A slice of an earlier batch (whatever became of it): retries and duplicates.
    Resend {
        batch: usize,
        skip: usize,
        take: usize,
    },
    /// One new event, then the first event of an earlier batch.
    Mixed { batch: usize, payload: Value },
    /// An earlier batch again, one of its events with the same id but other content.
    Altered {
        batch: usize,
        event: usize,
        change: Change,
    },
}

#[derive(Debug, Clone)]
enum Change {
    Type(usize),
    SchemaVersion(u32),
    Payload(Value),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        expected: ExpectedVersion,
        batch: Batch,
    },
    /// One multi-stream append: (stream, expected, batch) per part.
    AppendStreams {
        parts: Vec<(usize, ExpectedVersion, Batch)>,
    },
    ReadStream {
        stream: usize,
        from: u64,
    },
    StreamVersion {
        stream: usize,
    },
    ReadFeed {
        after: usize,
        limit: usize,
        types: Vec<usize>,
        categories: Vec<usize>,
    },
    CountAfter {
        after: usize,
    },
    Head,
}

fn expected() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        (0..6u64).prop_map(|v| ExpectedVersion::Exact(Version::new(v).expect("small"))),
        Just(ExpectedVersion::NoStream),
        Just(ExpectedVersion::StreamExists),
        Just(ExpectedVersion::Any),
    ]
}

fn batch() -> impl Strategy<Value = Batch> {
    let payload = chronik_testkit::strategies::payload;
    prop_oneof![
        4 => prop::collection::vec((0..TYPES.len(), payload()), 1..4).prop_map(Batch::Fresh),
        2 => (0..8usize, 0..2usize, 1..4usize)
            .prop_map(|(batch, skip, take)| Batch::Resend { batch, skip, take }),
        1 => (0..8usize, payload()).prop_map(|(batch, payload)| Batch::Mixed { batch, payload }),
        1 => (
            0..8usize,
            0..4usize,
            prop_oneof![
                (0..TYPES.len()).prop_map(Change::Type),
                (1..3u32).prop_map(Change::SchemaVersion),
                payload().prop_map(Change::Payload),
            ],
        )
            .prop_map(|(batch, event, change)| Batch::Altered { batch, event, change }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..STREAMS, expected(), batch())
            .prop_map(|(stream, expected, batch)| Op::Append { stream, expected, batch }),
        2 => prop::collection::vec((0..STREAMS, expected(), batch()), 1..=3)
            .prop_map(|parts| Op::AppendStreams { parts }),
        1 => (0..STREAMS, 0..8u64).prop_map(|(stream, from)| Op::ReadStream { stream, from }),
        1 => (0..STREAMS).prop_map(|stream| Op::StreamVersion { stream }),
        2 => (
            0..20usize,
            1..6usize,
            prop::sample::subsequence(vec![0, 1, 2], 0..=2),
            prop::sample::subsequence(vec![0, 1], 0..=2),
        )
            .prop_map(|(after, limit, types, categories)| Op::ReadFeed {
                after,
                limit,
                types,
                categories,
            }),
        1 => (0..20usize).prop_map(|after| Op::CountAfter { after }),
        1 => Just(Op::Head),
    ]
}

/// What is compared of a recorded event: everything but where and when (cursors and
/// clocks differ between stores by design).
fn essence(e: &RecordedEvent) -> (String, u64, EventId, String, u32, Value, Metadata) {
    (
        e.stream_id.to_string(),
        e.version.get(),
        e.event_id,
        e.event_type.to_string(),
        e.schema_version,
        e.payload.clone(),
        e.metadata.clone(),
    )
}

/// What is compared of an append's outcome.
fn outcome(r: &Result<AppendResult, StoreError>) -> String {
    match r {
        Ok(r) => format!(
            "ok {}..{} already={}",
            r.first_version, r.last_version, r.already_appended
        ),
        Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }) => format!("conflict {stream} {expected:?} {actual}"),
        Err(StoreError::DuplicateEventId {
            event_id,
            stream,
            version,
        }) => format!("duplicate {event_id} {stream} {version}"),
        Err(StoreError::EventIdReused {
            event_id,
            stream,
            version,
        }) => format!("reused {event_id} {stream} {version}"),
        Err(StoreError::Invalid(e)) => format!("invalid {e}"),
        Err(other) => format!("other {other}"),
    }
}

/// What is compared of a multi-stream append's outcome.
fn multi_outcome(r: &Result<Vec<AppendResult>, StoreError>) -> String {
    match r {
        Ok(results) => results
            .iter()
            .map(|r| outcome(&Ok(*r)))
            .collect::<Vec<_>>()
            .join("; "),
        Err(StoreError::Conflicts { conflicts }) => conflicts
            .iter()
            .map(|c| format!("conflict {} {:?} {}", c.stream, c.expected, c.actual))
            .collect::<Vec<_>>()
            .join("; "),
        Err(StoreError::InvalidRequest(m)) => format!("invalid request {m}"),
        Err(e) => outcome(&Err(clone_refusal(e))),
    }
}

/// The refusals `outcome` distinguishes, rebuilt (StoreError is not Clone).
fn clone_refusal(e: &StoreError) -> StoreError {
    match e {
        StoreError::DuplicateEventId {
            event_id,
            stream,
            version,
        } => StoreError::DuplicateEventId {
            event_id: *event_id,
            stream: stream.clone(),
            version: *version,
        },
        StoreError::EventIdReused {
            event_id,
            stream,
            version,
        } => StoreError::EventIdReused {
            event_id: *event_id,
            stream: stream.clone(),
            version: *version,
        },
        StoreError::Invalid(i) => StoreError::Invalid(i.clone()),
        other => StoreError::backend(other.to_string(), false),
    }
}

struct Pair<'a> {
    memory: &'a MemoryStore,
    postgres: &'a Settled,
}

async fn whole_feed<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut after = FeedCursor::START;
    loop {
        let page = store
            .read_feed(after, &FeedFilter::all(), 100)
            .await
            .expect("feed");
        if page.events.is_empty() {
            return out;
        }
        after = page.next;
        out.extend(page.events);
    }
}

/// The cursor `k` events into `feed` (`START` for 0), and the index of a cursor.
fn nth_cursor(feed: &[RecordedEvent], k: usize) -> FeedCursor {
    match k % (feed.len() + 1) {
        0 => FeedCursor::START,
        i => feed[i - 1].cursor,
    }
}

fn index_of(feed: &[RecordedEvent], cursor: FeedCursor) -> Option<usize> {
    if cursor == FeedCursor::START {
        return Some(0);
    }
    feed.iter().position(|e| e.cursor == cursor).map(|i| i + 1)
}

impl Pair<'_> {
    async fn feeds(&self) -> (Vec<RecordedEvent>, Vec<RecordedEvent>) {
        (
            whole_feed(self.memory).await,
            whole_feed(self.postgres).await,
        )
    }

    async fn run(&self, ops: &[Op], streams: &[StreamId; STREAMS]) -> Result<(), TestCaseError> {
        let mut sent: Vec<Vec<NewEvent>> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Append {
                    stream,
                    expected,
                    batch,
                } => {
                    let events = events_for(batch, &sent);
                    let id = &streams[*stream];
                    let m = self.memory.append(id, *expected, &events).await;
                    let p = self.postgres.append(id, *expected, &events).await;
                    prop_assert_eq!(outcome(&m), outcome(&p), "step {}: {:?}", step, op);
                    sent.push(events);
                }
                Op::AppendStreams { parts } => {
                    let appends: Vec<StreamAppend> = parts
                        .iter()
                        .map(|(stream, expected, batch)| {
                            StreamAppend::new(
                                streams[*stream].clone(),
                                *expected,
                                events_for(batch, &sent),
                            )
                        })
                        .collect();
                    let m = self.memory.append_streams(&appends).await;
                    let p = self.postgres.append_streams(&appends).await;
                    prop_assert_eq!(
                        multi_outcome(&m),
                        multi_outcome(&p),
                        "step {}: {:?}",
                        step,
                        op
                    );
                    sent.extend(appends.into_iter().map(|a| a.events));
                }
                Op::ReadStream { stream, from } => {
                    let from = Version::new(*from).expect("small");
                    let m: Vec<_> = self
                        .memory
                        .read_stream(&streams[*stream], from)
                        .try_collect()
                        .await
                        .expect("memory read");
                    let p: Vec<_> = self
                        .postgres
                        .read_stream(&streams[*stream], from)
                        .try_collect()
                        .await
                        .expect("postgres read");
                    prop_assert_eq!(
                        m.iter().map(essence).collect::<Vec<_>>(),
                        p.iter().map(essence).collect::<Vec<_>>(),
                        "step {}: {:?}",
                        step,
                        op
                    );
                }
                Op::StreamVersion { stream } => {
                    let m = self
                        .memory
                        .stream_version(&streams[*stream])
                        .await
                        .expect("m");
                    let p = self
                        .postgres
                        .stream_version(&streams[*stream])
                        .await
                        .expect("p");
                    prop_assert_eq!(m, p, "step {}", step);
                }
                Op::ReadFeed {
                    after,
                    limit,
                    types,
                    categories,
                } => {
                    let (mf, pf) = self.feeds().await;
                    prop_assert_eq!(
                        mf.iter().map(essence).collect::<Vec<_>>(),
                        pf.iter().map(essence).collect::<Vec<_>>(),
                        "step {}: whole feed",
                        step
                    );
                    let filter = FeedFilter {
                        event_types: types.iter().map(|t| TYPES[*t].to_owned()).collect(),
                        categories: categories
                            .iter()
                            .map(|c| streams[*c * 2].category().to_owned())
                            .collect(),
                    };
                    let m = self
                        .memory
                        .read_feed(nth_cursor(&mf, *after), &filter, *limit)
                        .await
                        .expect("memory feed");
                    let p = self
                        .postgres
                        .read_feed(nth_cursor(&pf, *after), &filter, *limit)
                        .await
                        .expect("postgres feed");
                    prop_assert_eq!(
                        m.events.iter().map(essence).collect::<Vec<_>>(),
                        p.events.iter().map(essence).collect::<Vec<_>>(),
                        "step {}: {:?}",
                        step,
                        op
                    );
                    prop_assert_eq!(index_of(&mf, m.next), index_of(&pf, p.next));
                }
                Op::CountAfter { after } => {
                    let (mf, pf) = self.feeds().await;
                    let m = self
                        .memory
                        .count_after(nth_cursor(&mf, *after))
                        .await
                        .expect("m");
                    let p = self
                        .postgres
                        .count_after(nth_cursor(&pf, *after))
                        .await
                        .expect("p");
                    prop_assert_eq!(m, p, "step {}: {:?}", step, op);
                }
                Op::Head => {
                    let (mf, pf) = self.feeds().await;
                    let m = self.memory.feed_head().await.expect("m");
                    let p = self.postgres.feed_head().await.expect("p");
                    prop_assert_eq!(m.visible_events, p.visible_events, "step {}", step);
                    prop_assert_eq!(
                        m.last.and_then(|c| index_of(&mf, c)),
                        p.last.and_then(|c| index_of(&pf, c)),
                        "step {}",
                        step
                    );
                }
            }
        }
        // Finally the whole state: every stream and the feed.
        for id in streams {
            let m: Vec<_> = self
                .memory
                .read_stream(id, Version::ZERO)
                .try_collect()
                .await
                .expect("m");
            let p: Vec<_> = self
                .postgres
                .read_stream(id, Version::ZERO)
                .try_collect()
                .await
                .expect("p");
            prop_assert_eq!(
                m.iter().map(essence).collect::<Vec<_>>(),
                p.iter().map(essence).collect::<Vec<_>>()
            );
        }
        let (mf, pf) = self.feeds().await;
        prop_assert_eq!(
            mf.iter().map(essence).collect::<Vec<_>>(),
            pf.iter().map(essence).collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// The events of `batch`, given what was sent before.
fn events_for(batch: &Batch, sent: &[Vec<NewEvent>]) -> Vec<NewEvent> {
    match batch {
        Batch::Fresh(items) => items
            .iter()
            .map(|(t, p)| new_event(TYPES[*t], p.clone()))
            .collect(),
        Batch::Resend { batch, skip, take } if !sent.is_empty() => {
            let b = &sent[batch % sent.len()];
            let skip = (*skip).min(b.len() - 1);
            b[skip..b.len().min(skip + take)].to_vec()
        }
        Batch::Mixed { batch, payload } if !sent.is_empty() => vec![
            new_event(TYPES[0], payload.clone()),
            sent[batch % sent.len()][0].clone(),
        ],
        Batch::Altered {
            batch,
            event,
            change,
        } if !sent.is_empty() => {
            let mut b = sent[batch % sent.len()].clone();
            let i = event % b.len();
            let e = &b[i];
            let (t, sv, p) = match change {
                Change::Type(t) => (TYPES[*t], e.schema_version(), e.payload()),
                Change::SchemaVersion(sv) => (e.event_type().as_str(), *sv, e.payload()),
                Change::Payload(p) => (e.event_type().as_str(), e.schema_version(), p),
            };
            b[i] = NewEvent::new(
                e.event_id(),
                EventType::new(t).expect("type"),
                sv,
                p.clone(),
                e.metadata().clone(),
            )
            .expect("event");
            b
        }
        Batch::Resend { .. } | Batch::Mixed { .. } | Batch::Altered { .. } => {
            vec![new_event(TYPES[1], Value::Object(serde_json::Map::new()))]
        }
    }
}

fn new_event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).expect("v4 is never nil"),
        EventType::new(event_type).expect("valid"),
        1,
        payload,
        Metadata::default().with_header("case", "model"),
    )
    .expect("valid")
}

async fn case(pool: &PgPool, schema: SchemaName, ops: &[Op]) -> Result<(), TestCaseError> {
    let postgres = Settled(PgEventStore::from_pool_with(
        pool.clone(),
        &PgStoreConfig::with_schema(schema.clone()),
    ));
    postgres.0.migrate().await.expect("migrate");
    let memory = MemoryStore::new();
    let streams = [
        StreamId::new("order-1").expect("id"),
        StreamId::new("order-2").expect("id"),
        StreamId::new("invoice-1").expect("id"),
    ];
    let result = Pair {
        memory: &memory,
        postgres: &postgres,
    }
    .run(ops, &streams)
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        schema.quoted()
    )))
    .execute(pool)
    .await
    .expect("drop schema");
    result
}

#[test]
fn postgres_behaves_like_the_memory_model() {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL must name a PostgreSQL database for the chronik-postgres tests, \
         e.g. postgres://postgres@127.0.0.1:5432/postgres",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt
        .block_on(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url),
        )
        .expect("connect");
    let run = format!("{:08x}", Uuid::new_v4().as_u128() as u32);
    let n = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        let schema = SchemaName::new(format!(
            "chronik_model_{run}_{}",
            n.fetch_add(1, Ordering::Relaxed)
        ))
        .expect("valid schema name");
        rt.block_on(case(&pool, schema, &ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
