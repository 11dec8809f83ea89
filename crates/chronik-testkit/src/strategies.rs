//! proptest strategies for chronik values and for any aggregate's histories, and the generic
//! law checks that every adapter runs with them.

use chronik_core::{
    Aggregate, EventId, EventType, Metadata, NewEvent, RecordedEvent, StreamId, Version,
};
use chronik_store::Repository;
use proptest::prelude::*;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::conformance::Store;

/// Valid stream ids: a category, a dash and an id of safe characters.
pub fn stream_id() -> impl Strategy<Value = StreamId> {
    ("[a-z]{1,8}", "[A-Za-z0-9_.-]{1,40}")
        .prop_map(|(c, id)| StreamId::new(format!("{c}-{id}")).expect("valid by construction"))
}

/// Arbitrary text that may or may not be a valid stream id (for bad-input tests).
pub fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,300}", "[ \t\n\u{0}-\u{1f}]{0,4}", "\\PC{250,260}"]
}

/// Valid event type names.
pub fn event_type() -> impl Strategy<Value = EventType> {
    "[A-Z][A-Za-z0-9]{0,30}".prop_map(|t| EventType::new(t).expect("valid by construction"))
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1.0e12..1.0e12f64).prop_map(Value::from),
        "[^\u{0}]{0,20}".prop_map(Value::String),
    ]
}

/// JSON values without NUL characters, nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Valid payloads: JSON objects.
pub fn payload() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Valid new events with fresh ids.
pub fn new_event() -> impl Strategy<Value = NewEvent> {
    (event_type(), 1..4u32, payload(), any::<u128>()).prop_map(|(t, v, p, id)| {
        let id = EventId::new(Uuid::from_u128(id | 1)).expect("never nil");
        NewEvent::new(id, t, v, p, Metadata::default()).expect("valid by construction")
    })
}

/// Histories an aggregate really produces: each generated command list is folded
/// through `A::handle` from the empty state, refused commands dropped. Give it a
/// strategy of command lists (valid or not: the aggregate decides), e.g. one that starts
/// with a creating command so that histories are rarely empty.
pub fn history<A>(
    commands: impl Strategy<Value = Vec<A::Command>>,
) -> impl Strategy<Value = Vec<A::Event>>
where
    A: Aggregate,
    A::Event: Clone + std::fmt::Debug,
{
    commands.prop_map(|commands| {
        let mut state = A::default();
        let mut history = Vec::new();
        for c in &commands {
            if let Ok(events) = state.handle(c) {
                for e in events {
                    state.apply(&e);
                    history.push(e);
                }
            }
        }
        history
    })
}

/// Law: loading with a snapshot taken at `snapshot_at` plus the tail equals a full
/// replay, and the snapshot load replays only the tail. Runs on any adapter.
///
/// # Panics
/// When the law is violated (a test assertion).
pub async fn check_snapshot_plus_tail_equals_replay<A, S>(
    store: S,
    history: Vec<A::Event>,
    snapshot_at: usize,
) where
    A: Aggregate + chronik_core::SnapshotState + PartialEq + std::fmt::Debug,
    S: Store,
{
    let id = StreamId::for_category(A::TYPE, Uuid::new_v4()).expect("valid");
    let plain = Repository::<A, _>::new(store.clone());
    let mut version = Version::ZERO;
    for chunk in history.chunks(7) {
        version = plain
            .save(&id, version, chunk, &Metadata::default())
            .await
            .expect("save")
            .last_version;
    }
    let k = snapshot_at.min(history.len());
    let at_k = A::replay(&history[..k]);
    let state = at_k.to_state().expect("state");
    let snap_version = Version::new(k as u64).expect("small");
    if k > 0 {
        store
            .save_snapshot(&id, snap_version, A::STATE_SCHEMA_VERSION, &state)
            .await
            .expect("snapshot");
    }
    let full = plain.load(&id).await.expect("full load");
    let with_snapshot =
        Repository::<A, _>::new(store).with_snapshots(chronik_core::SnapshotPolicy::Never);
    let fast = with_snapshot.load(&id).await.expect("snapshot load");
    assert_eq!(
        full.state,
        A::replay(&history),
        "full load is the fold of the history"
    );
    assert_eq!(fast.state, full.state, "snapshot + tail == full replay");
    assert_eq!(fast.version, full.version);
    assert_eq!(
        fast.snapshot_version,
        if k > 0 { snap_version } else { Version::ZERO }
    );
    assert_eq!(
        fast.events_replayed,
        (history.len() - if k > 0 { k } else { 0 }) as u64
    );
}

/// Commands for [`check_cached_commands_decide_as_on_a_fresh_load`]: which writer runs it
/// (0 to 2), on which of three streams, and the command (drawn from `command`).
pub fn cached_command_ops<C: std::fmt::Debug>(
    command: impl Strategy<Value = C>,
    max_commands: usize,
) -> impl Strategy<Value = Vec<(u8, u8, C)>> {
    prop::collection::vec((0..3u8, 0..3u8, command), 0..max_commands)
}

/// Law: a repository with a cache ([`Repository::with_cache`]) decides every command as a
/// repository without one would on a fresh load: the same refusal, or the same events at
/// the same version, leaving the same state. Three writers share the store as separate
/// processes would: one with a cache of two streams (so entries are evicted), one with a
/// larger cache and snapshots, one without a cache; each writer's writes make the others'
/// cached states stale. They retry nothing (`RetryPolicy::no_retry`), so the law also
/// checks that a stale cached state costs no attempt of the policy. Runs on any adapter,
/// with any aggregate whose commands are drawn by [`cached_command_ops`].
///
/// # Panics
/// When the law is violated (a test assertion).
pub async fn check_cached_commands_decide_as_on_a_fresh_load<A, S>(
    store: S,
    ops: Vec<(u8, u8, A::Command)>,
) where
    A: Aggregate + chronik_core::SnapshotState + PartialEq + std::fmt::Debug,
    A::Command: Clone + std::fmt::Debug,
    A::Error: PartialEq + std::fmt::Debug,
    A::Event: std::fmt::Debug,
    S: Store,
{
    use chronik_core::{RetryPolicy, SnapshotPolicy};
    use chronik_store::RepositoryError;

    let ids: Vec<StreamId> = (0..3)
        .map(|_| StreamId::for_category(A::TYPE, Uuid::new_v4()).expect("valid"))
        .collect();
    let once = |repo: Repository<A, S>| repo.with_retry(RetryPolicy::no_retry());
    let writers = [
        once(Repository::new(store.clone())).with_cache(2),
        once(Repository::new(store.clone()))
            .with_cache(64)
            .with_snapshots(SnapshotPolicy::every(3).expect("positive")),
        once(Repository::new(store.clone())),
    ];
    let fresh = Repository::<A, _>::new(store);
    for (step, (writer, stream, command)) in ops.into_iter().enumerate() {
        let id = &ids[usize::from(stream) % ids.len()];
        let before = fresh.load(id).await.expect("fresh load");
        let expected = before.state.handle(&command);
        let got = writers[usize::from(writer) % writers.len()]
            .execute(id, command.clone())
            .await;
        let after = fresh.load(id).await.expect("fresh load");
        match (expected, got) {
            (Err(want), Err(RepositoryError::Domain(refused))) => {
                assert_eq!(refused, want, "step {step}: {command:?} refused alike");
                assert_eq!(
                    after.version, before.version,
                    "step {step}: a refusal writes nothing"
                );
            }
            (Ok(events), Ok(out)) => {
                let written = events.len() as u64;
                assert_eq!(
                    (out.events_written as u64, out.version.get()),
                    (written, before.version.get() + written),
                    "step {step}: {command:?} wrote what a fresh decision writes"
                );
                let mut state = before.state;
                for e in &events {
                    state.apply(e);
                }
                assert_eq!(
                    after.state, state,
                    "step {step}: the state a fresh decision leaves"
                );
                assert_eq!(after.version, out.version);
            }
            (want, got) => panic!(
                "step {step}: {command:?} on a fresh load decides {want:?}, through writer {writer} {got:?}"
            ),
        }
    }
}

/// Text that breaks naive SQL, JSON, shell or terminal handling: quotes, backslashes,
/// `$1`, `%s`, escapes spelled out, right-to-left overrides, emoji, non-characters and
/// long multi-byte runs. May hold whitespace and control characters (never NUL).
pub fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "'; DROP TABLE events; --",
            "\" OR 1=1 --",
            "$1",
            "%s%n%x",
            "\\x00\\u0000",
            "a\u{202e}b\u{200b}c",
            "\u{feff}bom",
            "💥🦀",
            "\u{ffff}\u{10ffff}",
            "Robert'); DELETE FROM streams;--",
            "\\\\\"\\",
            "\u{1b}[31mred",
        ])
        .prop_map(str::to_owned),
        "[\\PC]{1,40}",
        "[\u{1}-\u{1f}\u{7f}-\u{9f}'\"\\\\]{1,20}",
        "\\PC{60,70}",
    ]
}

/// Valid stream ids made of [`hostile_text`] (whitespace and control characters dropped,
/// at most 255 bytes): stored and read back as plain data.
pub fn hostile_stream_id() -> impl Strategy<Value = StreamId> {
    hostile_text().prop_filter_map("not a valid stream id", |s| {
        let s: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && !c.is_control())
            .collect();
        StreamId::new(s).ok()
    })
}

/// Valid event types made of [`hostile_text`].
pub fn hostile_event_type() -> impl Strategy<Value = EventType> {
    hostile_text().prop_filter_map("not a valid event type", |s| {
        let s: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && !c.is_control())
            .collect();
        EventType::new(s).ok()
    })
}

fn hostile_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        hostile_text().prop_map(Value::String),
        prop::sample::select(vec![
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(i64::MAX),
            Value::from(f64::MAX),
            Value::from(f64::MIN),
            Value::from(f64::MIN_POSITIVE),
            Value::from(5e-324),
            Value::from(-0.0),
            Value::from(0.1),
            Value::String(String::new()),
        ]),
        any::<f64>()
            .prop_filter_map("not finite", serde_json::Number::from_f64)
            .prop_map(Value::Number),
    ]
}

/// Valid payloads full of hostile content: [`hostile_text`] keys and strings, extreme
/// numbers, and sometimes a chain nested exactly [`chronik_core::MAX_PAYLOAD_DEPTH`] deep.
pub fn hostile_payload() -> impl Strategy<Value = Value> {
    let object = prop::collection::btree_map(hostile_text(), hostile_leaf(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    (object, any::<bool>()).prop_map(|(mut payload, deepest)| {
        if deepest {
            let mut chain = Value::from("bottom");
            for _ in 1..chronik_core::MAX_PAYLOAD_DEPTH {
                chain = Value::Array(vec![chain]);
            }
            if let Value::Object(m) = &mut payload {
                m.insert("deepest".to_owned(), chain);
            }
        }
        payload
    })
}

/// Valid events with hostile types, payloads and headers.
pub fn hostile_event() -> impl Strategy<Value = NewEvent> {
    (
        hostile_event_type(),
        prop_oneof![
            Just(1u32),
            Just(u32::MAX),
            any::<u32>().prop_map(|v| v.max(1))
        ],
        hostile_payload(),
        prop::collection::btree_map(hostile_text(), hostile_text(), 0..4),
        any::<u128>(),
    )
        .prop_filter_map("headers hold NUL", |(t, v, p, headers, id)| {
            let id = EventId::new(Uuid::from_u128(id | 1)).expect("never nil");
            let mut metadata = Metadata::default();
            for (k, val) in headers {
                metadata = metadata.with_header(k, val);
            }
            NewEvent::new(id, t, v, p, metadata).ok()
        })
}

/// An append every store must refuse, and that must leave every stream and the feed
/// exactly as they were (see [`check_rejected_append_changes_nothing`]).
#[derive(Debug, Clone)]
pub enum BadAppend {
    /// No events.
    Empty,
    /// An exact expected version that is not the stream's (`offset` added to it, or
    /// `Version::MAX`), with `events` fresh events.
    WrongVersion {
        /// How far from the actual version (never 0); `None`: `Version::MAX`.
        offset: Option<u64>,
        /// How many fresh events.
        events: usize,
    },
    /// `NoStream` on a stream that has events.
    NoStreamOnExisting,
    /// `StreamExists` on a stream that has none.
    StreamExistsOnFresh,
    /// Fresh events, one of which (at `at`) carries the id of an event stored in another
    /// stream.
    IdStoredElsewhere {
        /// How many events.
        events: usize,
        /// Which one reuses the id.
        at: prop::sample::Index,
    },
    /// The same event id twice in one batch.
    DuplicateInBatch,
    /// A retry of the stream's first event with one fresh event after it (a retry must
    /// resend the identical batch).
    ExtendedRetry,
}

/// Appends every store must refuse.
pub fn bad_append() -> impl Strategy<Value = BadAppend> {
    prop_oneof![
        Just(BadAppend::Empty),
        (prop::option::weighted(0.8, 1..1_000u64), 1..5usize)
            .prop_map(|(offset, events)| BadAppend::WrongVersion { offset, events }),
        Just(BadAppend::NoStreamOnExisting),
        Just(BadAppend::StreamExistsOnFresh),
        (1..6usize, any::<prop::sample::Index>())
            .prop_map(|(events, at)| BadAppend::IdStoredElsewhere { events, at }),
        Just(BadAppend::DuplicateInBatch),
        Just(BadAppend::ExtendedRetry),
    ]
}

fn fresh_event(tag: &str) -> NewEvent {
    NewEvent::new(
        EventId::new(Uuid::new_v4()).expect("v4 is never nil"),
        EventType::new("Fresh").expect("valid"),
        1,
        serde_json::json!({ "tag": tag }),
        Metadata::default(),
    )
    .expect("valid")
}

/// Everything observable about one stream.
async fn stream_state<S: Store>(store: &S, id: &StreamId) -> (Version, Vec<RecordedEvent>) {
    use futures::TryStreamExt as _;
    let version = store.stream_version(id).await.expect("stream version");
    let events = store
        .read_stream(id, Version::FIRST)
        .try_collect()
        .await
        .expect("read stream");
    (version, events)
}

/// Law: `bad` is refused with a typed error and changes nothing: the target stream (with
/// `history` appended first), another stream, and the feed's head read the same before
/// and after. Malformed cursors and page sizes are refused too. Runs on any adapter.
///
/// # Panics
/// When the law is violated (a test assertion).
pub async fn check_rejected_append_changes_nothing<S: Store>(
    store: S,
    history: Vec<NewEvent>,
    bad: BadAppend,
) {
    use chronik_core::{ExpectedVersion, FeedCursor, InvalidInput};
    use chronik_store::{FeedFilter, MAX_FEED_PAGE, StoreError};

    let stream = StreamId::for_category("bad", Uuid::new_v4()).expect("valid");
    let other = StreamId::for_category("bad", Uuid::new_v4()).expect("valid");
    let fresh = StreamId::for_category("bad", Uuid::new_v4()).expect("valid");
    let elsewhere = fresh_event("elsewhere");
    store
        .append(
            &other,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&elsewhere),
        )
        .await
        .expect("append to the other stream");
    if !history.is_empty() {
        store
            .append(&stream, ExpectedVersion::NoStream, &history)
            .await
            .expect("append the history");
    }
    let current = Version::new(history.len() as u64).expect("small");
    let before = (
        stream_state(&store, &stream).await,
        stream_state(&store, &other).await,
        stream_state(&store, &fresh).await,
        store.feed_head().await.expect("feed head"),
    );

    let (target, expected, batch) = match &bad {
        BadAppend::Empty => (&stream, ExpectedVersion::Any, Vec::new()),
        BadAppend::WrongVersion { offset, events } => {
            let v = match offset {
                Some(o) => current.checked_add(*o).expect("small"),
                None => Version::MAX,
            };
            let batch = (0..*events).map(|_| fresh_event("wrong")).collect();
            (&stream, ExpectedVersion::Exact(v), batch)
        }
        BadAppend::NoStreamOnExisting => (
            if history.is_empty() { &other } else { &stream },
            ExpectedVersion::NoStream,
            vec![fresh_event("nostream")],
        ),
        BadAppend::StreamExistsOnFresh => (
            &fresh,
            ExpectedVersion::StreamExists,
            vec![fresh_event("exists")],
        ),
        BadAppend::IdStoredElsewhere { events, at } => {
            let mut batch: Vec<_> = (0..*events).map(|_| fresh_event("dup")).collect();
            let k = at.index(batch.len());
            batch[k] = elsewhere.clone();
            (&stream, ExpectedVersion::Any, batch)
        }
        BadAppend::DuplicateInBatch => {
            let e = fresh_event("twice");
            (
                &stream,
                ExpectedVersion::Any,
                vec![e.clone(), fresh_event("between"), e],
            )
        }
        BadAppend::ExtendedRetry => match history.first() {
            Some(first) => (
                &stream,
                ExpectedVersion::NoStream,
                vec![first.clone(), fresh_event("extended")],
            ),
            None => (
                &other,
                ExpectedVersion::NoStream,
                vec![elsewhere.clone(), fresh_event("extended")],
            ),
        },
    };
    let result = store.append(target, expected, &batch).await;
    let typed = match (&bad, &result) {
        (BadAppend::Empty, Err(StoreError::Invalid(InvalidInput::NoEvents))) => true,
        (
            BadAppend::DuplicateInBatch,
            Err(StoreError::Invalid(InvalidInput::DuplicateEventInBatch(_))),
        ) => true,
        (
            BadAppend::WrongVersion { .. }
            | BadAppend::NoStreamOnExisting
            | BadAppend::StreamExistsOnFresh,
            Err(StoreError::Conflict { actual, .. }),
        ) => *actual == store.stream_version(target).await.expect("version"),
        (
            BadAppend::IdStoredElsewhere { .. },
            Err(StoreError::DuplicateEventId { event_id, .. }),
        ) => *event_id == elsewhere.event_id(),
        // A store may see the retried prefix or the conflict first; either way, refused.
        (
            BadAppend::ExtendedRetry,
            Err(StoreError::DuplicateEventId { .. } | StoreError::Conflict { .. }),
        ) => true,
        _ => false,
    };
    assert!(typed, "{bad:?} on {} events: {result:?}", history.len());

    // Cursors out of range cannot be made; the last one there can be is read the same
    // way everywhere, and pages out of range are refused the same way everywhere.
    let page = store
        .read_feed(FeedCursor::MAX, &FeedFilter::all(), 10)
        .await
        .expect("the last cursor is valid everywhere");
    assert!(page.events.is_empty());
    for limit in [0, MAX_FEED_PAGE + 1, usize::MAX] {
        let page = store
            .read_feed(FeedCursor::START, &FeedFilter::all(), limit)
            .await;
        assert!(
            matches!(page, Err(StoreError::InvalidRequest(_))),
            "{limit}: {page:?}"
        );
    }

    let after = (
        stream_state(&store, &stream).await,
        stream_state(&store, &other).await,
        stream_state(&store, &fresh).await,
        store.feed_head().await.expect("feed head"),
    );
    assert_eq!(after, before, "{bad:?} changed something");
}

/// Law: valid but hostile events (see [`hostile_event`]) appended to a hostile stream id
/// read back exactly as written, from the stream and from the feed. Runs on any adapter.
///
/// # Panics
/// When the law is violated (a test assertion).
pub async fn check_hostile_events_round_trip<S: Store>(
    store: S,
    stream: StreamId,
    events: Vec<NewEvent>,
) {
    use chronik_core::ExpectedVersion;
    use chronik_store::FeedFilter;

    let result = store
        .append(&stream, ExpectedVersion::NoStream, &events)
        .await
        .expect("hostile but valid events are stored");
    let (version, read) = stream_state(&store, &stream).await;
    assert_eq!(version, result.last_version);
    assert_eq!(read.len(), events.len());
    let essence = |e: &RecordedEvent| {
        (
            e.event_id,
            e.event_type.clone(),
            e.schema_version,
            e.payload.clone(),
            e.metadata.clone(),
        )
    };
    for (i, (r, sent)) in read.iter().zip(&events).enumerate() {
        assert_eq!(&r.stream_id, &stream);
        assert_eq!(r.version.get(), i as u64 + 1);
        assert_eq!(
            essence(r),
            (
                sent.event_id(),
                sent.event_type().clone(),
                sent.schema_version(),
                sent.payload().clone(),
                sent.metadata().clone()
            ),
            "event {i} did not round-trip"
        );
    }
    // The feed shows the same events (found by id, wherever they are in it).
    let mut after = chronik_core::FeedCursor::START;
    let mut seen = 0;
    loop {
        let page = store
            .read_feed(after, &FeedFilter::all(), 500)
            .await
            .expect("read feed");
        if page.events.is_empty() {
            break;
        }
        after = page.next;
        for e in page.events.iter().filter(|e| e.stream_id == stream) {
            assert_eq!(essence(e), essence(&read[seen]), "feed event {seen}");
            seen += 1;
        }
    }
    assert_eq!(seen, events.len(), "every event is in the feed");
}
