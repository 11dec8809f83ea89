//! Conformance cases for retry safety ([`Aggregate::retry_safe`]): a command that loses a
//! real race between its load and its append (an [`Interloper`] writes in between) is
//! decided again when it is retry-safe, and otherwise returns the conflict with nothing
//! written; through `execute`, a cached repository, `execute_all` and `react`.

use std::time::Duration;

use chronik_core::{
    Aggregate, DomainEvent, ExpectedVersion, Metadata, RecordedEvent, RetryPolicy, StreamId,
};
use chronik_store::{
    EventStore, ReactOutcome, Repository, RepositoryError, StoreError, StreamConflict,
    reaction_event_id,
};
use serde::{Deserialize, Serialize};

use super::{Store, events, read_all, stream, v};
use crate::Interloper;

/// A running total: `Add` may be decided again, `Charge` (the card was charged for it)
/// may not.
#[derive(Debug, Default)]
struct Tab {
    total: i64,
}

#[derive(Debug, Clone, Copy)]
enum TabCommand {
    Add(i64),
    Charge(i64),
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
enum TabEvent {
    Added { n: i64 },
    Charged { n: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never refused")]
struct Never;

impl Aggregate for Tab {
    const TYPE: &'static str = "tab";
    type Command = TabCommand;
    type Event = TabEvent;
    type Error = Never;

    fn handle(&self, command: &TabCommand) -> Result<Vec<TabEvent>, Never> {
        Ok(vec![match *command {
            TabCommand::Add(n) => TabEvent::Added { n },
            TabCommand::Charge(n) => TabEvent::Charged { n },
        }])
    }

    fn apply(&mut self, (TabEvent::Added { n } | TabEvent::Charged { n }): &TabEvent) {
        self.total += n;
    }

    fn retry_safe(command: &TabCommand) -> bool {
        !matches!(command, TabCommand::Charge(_))
    }
}

/// A repository that retries at once, up to 5 attempts.
fn tabs<S: EventStore>(store: S) -> Repository<Tab, S> {
    Repository::new(store)
        .with_retry(RetryPolicy::new(5, Duration::ZERO, Duration::ZERO).expect("valid policy"))
}

/// `store` with a competing writer that adds `n` to `id`, through its own repository,
/// between the next command's load and its append.
fn racing<S: Store>(store: &S, id: &StreamId, n: i64) -> Interloper<S> {
    let id = id.clone();
    Interloper::new(store.clone(), move |s: S| {
        let id = id.clone();
        async move {
            tabs(s)
                .execute(&id, TabCommand::Add(n))
                .await
                .map(|_| ())
                .map_err(|e| StoreError::backend(e.to_string(), false))
        }
    })
}

async fn total<S: Store>(store: &S, id: &StreamId) -> i64 {
    tabs(store.clone())
        .load(id)
        .await
        .expect("load")
        .state
        .total
}

async fn charged<S: Store>(store: &S, id: &StreamId) -> usize {
    read_all(store, id)
        .await
        .iter()
        .filter(|e| e.event_type.as_str() == "Charged")
        .count()
}

/// `execute`: a retry-safe command that lost the race is reloaded, decided again on the
/// interloper's state and lands; one that is not retry-safe gets the typed conflict back,
/// appended once and written nothing.
pub async fn a_lost_race_is_decided_again_unless_the_command_is_not_retry_safe<S: Store>(store: S) {
    let id = stream("tab");
    tabs(store.clone())
        .execute(&id, TabCommand::Add(1))
        .await
        .expect("seed");

    let race = racing(&store, &id, 10);
    let out = tabs(race.clone())
        .execute(&id, TabCommand::Add(5))
        .await
        .expect("a retry-safe command is decided again");
    assert_eq!(
        race.fired(),
        1,
        "the interloper wrote between load and append"
    );
    assert_eq!((out.attempts, out.conflicts, out.version), (2, 1, v(3)));
    assert_eq!(
        total(&store, &id).await,
        16,
        "decided on the interloper's state"
    );

    let race = racing(&store, &id, 100);
    match tabs(race.clone()).execute(&id, TabCommand::Charge(5)).await {
        Err(RepositoryError::Conflict(StoreError::Conflict {
            stream,
            expected,
            actual,
        })) => {
            assert_eq!(
                (stream, expected, actual),
                (id.clone(), ExpectedVersion::Exact(v(3)), v(4))
            );
        }
        other => panic!("expected the conflict back, got {other:?}"),
    }
    assert_eq!(race.appends(), 1, "decided and appended once");
    assert_eq!(
        store.stream_version(&id).await.expect("version"),
        v(4),
        "only the interloper's event was written"
    );
    assert_eq!(charged(&store, &id).await, 0);
    assert_eq!(total(&store, &id).await, 116);
}

/// With the cache: a command that is not retry-safe is decided on a fresh load even when
/// the stream is cached (a stale entry would cost it its one decision), while a retry-safe
/// one decides on the cached state and pays a reload when it is stale.
pub async fn a_command_that_is_not_retry_safe_is_never_decided_on_a_cached_state<S: Store>(
    store: S,
) {
    let id = stream("tab");
    let cached = tabs(store.clone()).with_cache(8);
    let other = tabs(store.clone());
    cached
        .execute(&id, TabCommand::Add(1))
        .await
        .expect("cached");
    other
        .execute(&id, TabCommand::Add(10))
        .await
        .expect("another writer");
    let out = cached
        .execute(&id, TabCommand::Charge(5))
        .await
        .expect("decided on a fresh load");
    assert_eq!(
        (out.cached, out.attempts, out.conflicts, out.version),
        (false, 1, 0, v(3))
    );
    other
        .execute(&id, TabCommand::Add(10))
        .await
        .expect("another writer");
    let out = cached
        .execute(&id, TabCommand::Add(1))
        .await
        .expect("retry-safe");
    assert_eq!(
        (out.cached, out.attempts, out.conflicts, out.version),
        (false, 2, 1, v(5)),
        "the stale cached decision conflicted, the reloaded one landed"
    );
    assert_eq!(total(&store, &id).await, 27);
}

/// `execute_all`: a lost race on one stream of a command across streams decides them all
/// again; when one of the commands is not retry-safe, the `Conflicts` naming that stream
/// comes back and nothing is written on any stream.
pub async fn a_command_across_streams_is_decided_again_unless_one_is_not_retry_safe<S: Store>(
    store: S,
) {
    let (a, b) = (stream("tab"), stream("tab"));
    for id in [&a, &b] {
        tabs(store.clone())
            .execute(id, TabCommand::Add(1))
            .await
            .expect("seed");
    }
    let race = racing(&store, &b, 10);
    let out = tabs(race.clone())
        .execute_all(
            &[
                (a.clone(), TabCommand::Add(2)),
                (b.clone(), TabCommand::Add(3)),
            ],
            Metadata::default(),
        )
        .await
        .expect("retry-safe commands are decided again");
    assert_eq!(race.fired(), 1);
    assert_eq!(
        (out.attempts, out.conflicts, out.versions),
        (2, 1, vec![v(2), v(3)])
    );
    assert_eq!((total(&store, &a).await, total(&store, &b).await), (3, 14));

    let race = racing(&store, &b, 100);
    match tabs(race.clone())
        .execute_all(
            &[
                (a.clone(), TabCommand::Add(2)),
                (b.clone(), TabCommand::Charge(3)),
            ],
            Metadata::default(),
        )
        .await
    {
        Err(RepositoryError::Conflict(StoreError::Conflicts { conflicts })) => {
            assert_eq!(
                conflicts,
                [StreamConflict {
                    stream: b.clone(),
                    expected: ExpectedVersion::Exact(v(3)),
                    actual: v(4),
                }]
            );
        }
        other => panic!("expected the conflicts back, got {other:?}"),
    }
    assert_eq!(race.appends(), 1, "decided and appended once");
    assert_eq!(
        store.stream_version(&a).await.expect("a"),
        v(2),
        "a unchanged"
    );
    assert_eq!(
        store.stream_version(&b).await.expect("b"),
        v(4),
        "only the interloper wrote on b"
    );
    assert_eq!(charged(&store, &b).await, 0);
}

/// `react`: a reaction that lost the race to another writer is decided again when its
/// command is retry-safe; otherwise the conflict comes back, nothing is written, and a
/// redelivery of the trigger decides it on the state then.
pub async fn a_reaction_is_decided_again_unless_its_command_is_not_retry_safe<S: Store>(store: S) {
    const REACTOR: &str = "tab-reactor";
    let source = stream("trigger");
    store
        .append(&source, ExpectedVersion::NoStream, &events(2))
        .await
        .expect("triggers");
    let triggers: Vec<RecordedEvent> = read_all(&store, &source).await;
    let target = stream("tab");
    tabs(store.clone())
        .execute(&target, TabCommand::Add(1))
        .await
        .expect("seed");

    let race = racing(&store, &target, 10);
    match tabs(race.clone())
        .react(&target, TabCommand::Add(5), &triggers[0], REACTOR)
        .await
    {
        Ok(ReactOutcome::Executed(out)) => {
            assert_eq!((out.attempts, out.conflicts, out.version), (2, 1, v(3)));
        }
        other => panic!("expected the reaction carried out, got {other:?}"),
    }

    let race = racing(&store, &target, 100);
    let err = tabs(race.clone())
        .react(&target, TabCommand::Charge(5), &triggers[1], REACTOR)
        .await
        .expect_err("a reaction that is not retry-safe is not decided again");
    assert!(
        matches!(err, RepositoryError::Conflict(StoreError::Conflict { .. })),
        "{err:?}"
    );
    assert_eq!(race.appends(), 1);
    let reaction = reaction_event_id(REACTOR, triggers[1].event_id, &target, 0).expect("id");
    assert!(
        !read_all(&store, &target)
            .await
            .iter()
            .any(|e| e.event_id == reaction),
        "nothing of the reaction was written"
    );
    // The trigger delivered again: decided on the state now, once.
    let again = tabs(store.clone())
        .react(&target, TabCommand::Charge(5), &triggers[1], REACTOR)
        .await
        .expect("redelivery");
    assert!(matches!(again, ReactOutcome::Executed(_)), "{again:?}");
    assert_eq!(charged(&store, &target).await, 1);
    assert_eq!(
        tabs(store.clone())
            .react(&target, TabCommand::Charge(5), &triggers[1], REACTOR)
            .await
            .expect("redelivery"),
        ReactOutcome::AlreadyDone
    );
    assert_eq!(total(&store, &target).await, 121);
}
