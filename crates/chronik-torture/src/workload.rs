//! The writers: owned appends and appends inside caller transactions, to hot and cold
//! streams, with every expected-version mode, and the resolution of ambiguous outcomes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chronik_core::{EventId, EventType, ExpectedVersion, Metadata, NewEvent, StreamId, Version};
use chronik_postgres::{PgEventStore, PgStoreTransaction};
use chronik_store::{AppendResult, EventStore as _, StoreError, StreamAppend};
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::model::{AppendRecord, Outcome};
use crate::world::{C, World, between};

/// How many times an ambiguous outcome is re-sent before it is reported unresolved.
const RESOLVE_ATTEMPTS: u32 = 400;

/// How many writer operations share one generation of contested event ids: writers that
/// run at about the same time draw the same few ids, so that their transactions race for
/// them while both are uncommitted.
const CONTEST_GENERATION_OPS: u64 = 24;

/// Contested events per generation.
const CONTEST_SLOTS: u64 = 3;

/// One stream's part of an append: what is sent, and where.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
}

impl Part {
    /// A record of this part with `outcome`.
    pub(crate) fn record(&self, via: &'static str, outcome: Outcome) -> AppendRecord {
        AppendRecord {
            stream: self.stream.as_str().to_owned(),
            ids: self.events.iter().map(|e| e.event_id().as_uuid()).collect(),
            via,
            tx: None,
            outcome,
        }
    }

    /// A record of this part of caller transaction `tx` with `outcome`.
    pub(crate) fn record_in(&self, via: &'static str, tx: u64, outcome: Outcome) -> AppendRecord {
        AppendRecord {
            tx: Some(tx),
            ..self.record(via, outcome)
        }
    }
}

/// Picks a stream: a few hot ones (real conflicts) or many cold ones.
pub(crate) fn pick_stream(world: &World, rng: &mut ChaCha8Rng, hot_share: f64) -> StreamId {
    let name = if rng.gen_bool(hot_share) {
        format!("hot-{}", rng.gen_range(0..world.plan.hot_streams))
    } else {
        format!("cold-{}", rng.gen_range(0..world.plan.cold_streams))
    };
    // Names built here are always valid stream ids; fall back to a fixed one regardless.
    StreamId::new(name).unwrap_or_else(|_| fallback_stream())
}

fn fallback_stream() -> StreamId {
    #[allow(clippy::expect_used)]
    StreamId::new("cold-0").expect("a constant valid stream id")
}

/// `n` fresh events whose ids come from `rng` (so a seed replays the same ids).
pub(crate) fn new_events(rng: &mut ChaCha8Rng, n: usize, writer: &str) -> Vec<NewEvent> {
    (0..n)
        .filter_map(|i| {
            let id = uuid::Builder::from_random_bytes(rng.r#gen()).into_uuid();
            NewEvent::new(
                EventId::new(id).ok()?,
                EventType::new("TortureTested").ok()?,
                1,
                json!({ "writer": writer, "index": i, "pad": rng.gen_range(0..1_000_000u32) }),
                Metadata::default(),
            )
            .ok()
        })
        .collect()
}

/// Contested event `slot` of `generation`: the same id and content for every writer that
/// draws it (derived from the seed), so that the only difference between two appends of it
/// is the stream they send it to.
pub(crate) fn contested_event(world: &World, generation: u64, slot: u64) -> Option<NewEvent> {
    let index = usize::try_from(generation.saturating_mul(CONTEST_SLOTS) + slot).ok()?;
    let mut rng = world.rng("contest", index);
    let id = uuid::Builder::from_random_bytes(rng.r#gen()).into_uuid();
    NewEvent::new(
        EventId::new(id).ok()?,
        EventType::new("TortureContested").ok()?,
        1,
        json!({ "generation": generation, "slot": slot }),
        Metadata::default(),
    )
    .ok()
}

/// Picks an expected-version mode; `Exact` uses what this task last knew of the stream.
pub(crate) fn pick_expected(rng: &mut ChaCha8Rng, known: Option<u64>) -> ExpectedVersion {
    match rng.gen_range(0..100) {
        0..55 => ExpectedVersion::Exact(Version::new(known.unwrap_or(0)).unwrap_or(Version::ZERO)),
        55..65 => ExpectedVersion::NoStream,
        65..80 => ExpectedVersion::StreamExists,
        _ => ExpectedVersion::Any,
    }
}

/// Whether `e` is a pool acquire timeout (nothing was sent to the server).
pub(crate) fn is_pool_timeout(e: &StoreError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<sqlx::Error>())
        .is_some_and(|s| matches!(s, sqlx::Error::PoolTimedOut))
}

/// A failure that certainly wrote nothing: counts it and returns its outcome.
pub(crate) fn definite_failure(world: &World, e: &StoreError) -> Outcome {
    let why = match e {
        StoreError::Conflict { .. } => {
            world.counts.inc(C::conflicts);
            "conflict"
        }
        StoreError::TransactionOrder { .. } => {
            world.counts.inc(C::order_errors);
            "transaction order"
        }
        e if is_pool_timeout(e) => {
            world.counts.inc(C::pool_timeouts);
            "pool timeout"
        }
        StoreError::Backend { .. } | StoreError::TransactionAborted { .. } => {
            world.counts.inc(C::failed_other);
            "backend error before commit"
        }
        other => {
            world.counts.inc(C::anomalies);
            return Outcome::Anomaly {
                why: format!("unexpected error: {other}"),
            };
        }
    };
    Outcome::Failed {
        why: why.to_owned(),
    }
}

/// An owned append (its own transaction) answered [`StoreError::TransactionOrder`]. It
/// wrote nothing, but it must not happen: an owned append takes its streams' locks before
/// its transaction has an id, so no writer of its streams can commit a newer id before it
/// (single-stream appends through their row lock; multi-stream appends through advisory
/// locks, migration 0010), and the rare remaining case, a single-stream writer slipping in
/// between a multi-stream append's parts, is retried in a new transaction. Only an append
/// inside a caller's transaction that already has an id may meet the guard.
fn owned_order_anomaly(world: &World, e: &StoreError) -> Outcome {
    world.counts.inc(C::order_errors);
    world.counts.inc(C::anomalies);
    Outcome::Anomaly {
        why: format!("an owned append answered the order guard: {e}"),
    }
}

/// Resolves an ambiguous outcome by re-sending the same ids with the same expected version
/// until the store gives a definite answer.
pub(crate) async fn resolve(world: &World, part: &Part) -> Outcome {
    world.counts.inc(C::ambiguous);
    let mut last = String::new();
    for attempt in 0..RESOLVE_ATTEMPTS {
        match world
            .store
            .append(&part.stream, part.expected, &part.events)
            .await
        {
            Ok(r) => {
                world.counts.inc(if r.already_appended {
                    C::ambiguous_already_appended
                } else {
                    C::ambiguous_appended_on_resend
                });
                return Outcome::Resolved {
                    first: Some(r.first_version.get()),
                };
            }
            Err(StoreError::Conflict { .. }) => {
                world.counts.inc(C::ambiguous_not_stored);
                return Outcome::Resolved { first: None };
            }
            // One of its ids (a contested one) is stored in another stream: the original
            // never committed (it would hold the id here), so nothing of it is stored. The
            // model holds the id to the place its winner was told.
            Err(StoreError::DuplicateEventId { stream, .. }) if stream != part.stream => {
                world.counts.inc(C::ambiguous_not_stored);
                return Outcome::Resolved { first: None };
            }
            Err(e) if e.is_retryable() => {
                last = e.to_string();
                let ms = 10u64.saturating_mul(1 << attempt.min(6)).min(500);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Err(e) => {
                world.counts.inc(C::anomalies);
                return Outcome::Anomaly {
                    why: format!("re-sending an ambiguous append failed: {e}"),
                };
            }
        }
    }
    world.counts.inc(C::unresolved);
    Outcome::Unresolved { why: last }
}

/// Records a success (counts it) and, now and then, re-sends it to check idempotency.
async fn succeeded(
    world: &World,
    rng: &mut ChaCha8Rng,
    part: &Part,
    (via, tx): (&'static str, Option<u64>),
    first: u64,
    last: u64,
) {
    world.counts.inc(C::appends_ok);
    world.counts.add(C::events_ok, part.events.len() as u64);
    let stored = Outcome::Stored { first };
    world.record(match tx {
        Some(tx) => part.record_in(via, tx, stored),
        None => part.record(via, stored),
    });
    if rng.gen_bool(0.05) {
        world.counts.inc(C::idempotent_resends);
        let again = world
            .store
            .append(&part.stream, part.expected, &part.events)
            .await;
        match again {
            Ok(r)
                if r.already_appended
                    && r.first_version.get() == first
                    && r.last_version.get() == last => {}
            // A fault may hit the re-send itself: that proves nothing either way.
            Err(e) if e.is_retryable() && !e.is_conflict() => {}
            other => world.resend_violation(format!(
                "{}: re-sending an append acknowledged at v{first}..v{last} answered {other:?}",
                part.stream
            )),
        }
    }
    // A caller bug now and then: the same ids again, the last event with other content.
    // It must be refused, naming that event where it is stored, and change nothing.
    if rng.gen_bool(0.03)
        && let Some(e) = part.events.last()
        && let Ok(altered) = NewEvent::new(
            e.event_id(),
            e.event_type().clone(),
            e.schema_version(),
            json!({ "altered": true }),
            e.metadata().clone(),
        )
    {
        world.counts.inc(C::reuse_resends);
        let mut events = part.events.clone();
        if let Some(slot) = events.last_mut() {
            *slot = altered;
        }
        match world
            .store
            .append(&part.stream, part.expected, &events)
            .await
        {
            Err(StoreError::EventIdReused {
                event_id,
                stream,
                version,
            }) if event_id == e.event_id() && stream == part.stream && version.get() == last => {}
            Err(e) if e.is_retryable() && !e.is_conflict() => {}
            other => world.resend_violation(format!(
                "{}: re-sending an append acknowledged at v{first}..v{last} with its last event \
                 altered answered {other:?}",
                part.stream
            )),
        }
    }
}

/// One writer: operations until the run ends.
pub(crate) async fn writer(world: Arc<World>, index: usize) {
    let mut rng = world.rng("writer", index);
    let name = format!("w{index}");
    let mut known: HashMap<StreamId, u64> = HashMap::new();
    while world.take_op() {
        let kind = rng.gen_range(0..100);
        if (25..40).contains(&kind) {
            racing_caller_tx(&world, &mut rng, &name, &mut known).await;
            continue;
        }
        // 40..48: one multi-stream append of two or three streams.
        let streams = if kind < 8 {
            2
        } else if (40..48).contains(&kind) {
            rng.gen_range(2..=3)
        } else {
            1
        };
        let mut parts = Vec::with_capacity(streams);
        for _ in 0..streams {
            let stream = pick_stream(&world, &mut rng, 0.5);
            if parts.iter().any(|p: &Part| p.stream == stream) {
                continue;
            }
            let n = if rng.gen_bool(0.6) {
                1
            } else {
                rng.gen_range(2..=5)
            };
            let mut cached = known.get(&stream).copied();
            if rng.gen_bool(0.4)
                && let Ok(v) = world.store.stream_version(&stream).await
            {
                cached = Some(v.get());
            }
            parts.push(Part {
                expected: pick_expected(&mut rng, cached),
                events: new_events(&mut rng, n, &name),
                stream,
            });
        }
        if kind < 25 {
            in_caller_tx(&world, &mut rng, &parts, &mut known).await;
        } else if (40..48).contains(&kind) {
            multi_stream(&world, &mut rng, &parts, &mut known).await;
        } else if kind < 48 {
            owned(&world, &world.tiny, &mut rng, &parts[0], &mut known).await;
        } else {
            owned(&world, &world.store, &mut rng, &parts[0], &mut known).await;
        }
    }
}

/// `EventStore::append` in its own transaction.
async fn owned(
    world: &World,
    store: &PgEventStore,
    rng: &mut ChaCha8Rng,
    part: &Part,
    known: &mut HashMap<StreamId, u64>,
) {
    let append = store.append(&part.stream, part.expected, &part.events);
    // A client-side timeout: the caller gives up while the server may still commit, the
    // one way to lose a commit's acknowledgement on purpose. Not with `StreamExists`: a
    // re-send's conflict is then not final (the stream may appear while the abandoned
    // original is still in flight), so "not stored" could not be concluded from it.
    let result = if part.expected != ExpectedVersion::StreamExists && rng.gen_bool(0.08) {
        let limit = between(rng, Duration::from_micros(200), Duration::from_millis(4));
        match tokio::time::timeout(limit, append).await {
            Ok(r) => r,
            Err(_) => {
                world.counts.inc(C::client_timeouts);
                let outcome = resolve(world, part).await;
                world.record(part.record("append", outcome));
                return;
            }
        }
    } else {
        append.await
    };
    match result {
        Ok(r) if r.already_appended => {
            world.counts.inc(C::anomalies);
            world.record(part.record(
                "append",
                Outcome::Anomaly {
                    why: "fresh ids answered already-appended".to_owned(),
                },
            ));
        }
        Ok(r) => {
            known.insert(part.stream.clone(), r.last_version.get());
            let (first, last) = (r.first_version.get(), r.last_version.get());
            succeeded(world, rng, part, ("append", None), first, last).await;
        }
        Err(e) => {
            if let StoreError::Conflict { actual, .. } = &e {
                known.insert(part.stream.clone(), actual.get());
            }
            let outcome = match &e {
                StoreError::Backend { .. } if !is_pool_timeout(&e) => resolve(world, part).await,
                StoreError::TransactionOrder { .. } => owned_order_anomaly(world, &e),
                _ => definite_failure(world, &e),
            };
            world.record(part.record("append", outcome));
        }
    }
}

/// `EventStore::append_streams`: several streams in one owned transaction, all or nothing.
/// Every part is recorded under one transaction number with the append's one outcome, so
/// the model's caller-transaction and one-transaction checks hold it to atomicity.
async fn multi_stream(
    world: &World,
    rng: &mut ChaCha8Rng,
    parts: &[Part],
    known: &mut HashMap<StreamId, u64>,
) {
    const VIA: &str = "append_streams";
    let tx_no = world.next_tx();
    let appends: Vec<StreamAppend> = parts
        .iter()
        .map(|p| StreamAppend::new(p.stream.clone(), p.expected, p.events.clone()))
        .collect();
    match world.store.append_streams(&appends).await {
        Ok(results) if results.iter().any(|r| r.already_appended) => {
            world.counts.inc(C::anomalies);
            for p in parts {
                world.record(p.record_in(
                    VIA,
                    tx_no,
                    Outcome::Anomaly {
                        why: "fresh ids answered already-appended".to_owned(),
                    },
                ));
            }
        }
        Ok(results) => {
            world.counts.inc(C::multi_stream_appends_ok);
            for (part, r) in parts.iter().zip(&results) {
                known.insert(part.stream.clone(), r.last_version.get());
                let (first, last) = (r.first_version.get(), r.last_version.get());
                succeeded(world, rng, part, (VIA, Some(tx_no)), first, last).await;
            }
        }
        Err(e) => {
            let outcome = match &e {
                StoreError::Conflicts { conflicts } => {
                    for c in conflicts {
                        known.insert(c.stream.clone(), c.actual.get());
                    }
                    world.counts.inc(C::multi_stream_refused);
                    world.counts.inc(C::conflicts);
                    None
                }
                StoreError::Backend { .. } if !is_pool_timeout(&e) => {
                    Some(resolve_multi(world, &appends).await)
                }
                StoreError::TransactionOrder { .. } => {
                    Some(vec![owned_order_anomaly(world, &e); parts.len()])
                }
                _ => Some(vec![definite_failure(world, &e); parts.len()]),
            };
            let outcomes = outcome.unwrap_or_else(|| {
                vec![
                    Outcome::Failed {
                        why: "conflict".to_owned(),
                    };
                    parts.len()
                ]
            });
            for (p, o) in parts.iter().zip(outcomes) {
                world.record(p.record_in(VIA, tx_no, o));
            }
        }
    }
}

/// [`resolve`] for a multi-stream append: re-sends the whole append. Stored means stored
/// for every part (already appended, or appended on the re-send); a conflict means the
/// original never committed (it would be already appended: idempotency is checked before
/// versions), so nothing of it is stored.
async fn resolve_multi(world: &World, appends: &[StreamAppend]) -> Vec<Outcome> {
    world.counts.inc(C::ambiguous);
    let mut last = String::new();
    for attempt in 0..RESOLVE_ATTEMPTS {
        match world.store.append_streams(appends).await {
            Ok(results) => {
                world
                    .counts
                    .inc(if results.iter().all(|r| r.already_appended) {
                        C::ambiguous_already_appended
                    } else {
                        C::ambiguous_appended_on_resend
                    });
                return results
                    .iter()
                    .map(|r| Outcome::Resolved {
                        first: Some(r.first_version.get()),
                    })
                    .collect();
            }
            Err(StoreError::Conflicts { .. }) => {
                world.counts.inc(C::ambiguous_not_stored);
                return vec![Outcome::Resolved { first: None }; appends.len()];
            }
            Err(e) if e.is_retryable() => {
                last = e.to_string();
                let ms = 10u64.saturating_mul(1 << attempt.min(6)).min(500);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Err(e) => {
                world.counts.inc(C::anomalies);
                return vec![
                    Outcome::Anomaly {
                        why: format!("re-sending an ambiguous multi-stream append failed: {e}"),
                    };
                    appends.len()
                ];
            }
        }
    }
    world.counts.inc(C::unresolved);
    vec![Outcome::Unresolved { why: last }; appends.len()]
}

/// `PgEventStore::append_in` inside a caller transaction (one or two streams), then commit.
async fn in_caller_tx(
    world: &World,
    rng: &mut ChaCha8Rng,
    parts: &[Part],
    known: &mut HashMap<StreamId, u64>,
) {
    let Ok(mut tx) = world.store.pool().begin().await else {
        // Nothing was sent with these ids: not an append at all.
        world.counts.inc(C::failed_other);
        return;
    };
    let tx_no = world.next_tx();
    let mut results = Vec::with_capacity(parts.len());
    for part in parts {
        match world
            .store
            .append_in(&mut tx, &part.stream, part.expected, &part.events)
            .await
        {
            Ok(r) if !r.already_appended => results.push(r),
            Ok(_) => {
                drop(tx);
                world.counts.inc(C::anomalies);
                for p in parts {
                    world.record(p.record_in(
                        "append_in",
                        tx_no,
                        Outcome::Anomaly {
                            why: "fresh ids answered already-appended".to_owned(),
                        },
                    ));
                }
                return;
            }
            Err(e) => {
                // Not committed: whatever the error, the transaction leaves nothing.
                drop(tx);
                if let StoreError::Conflict { actual, .. } = &e {
                    known.insert(part.stream.clone(), actual.get());
                }
                let outcome = definite_failure(world, &e);
                for p in parts {
                    world.record(p.record_in("append_in", tx_no, outcome.clone()));
                }
                return;
            }
        }
    }
    match tx.commit().await {
        Ok(()) => {
            for (part, r) in parts.iter().zip(&results) {
                known.insert(part.stream.clone(), r.last_version.get());
                world.counts.inc(C::appends_ok_in_caller_tx);
                let (first, last) = (r.first_version.get(), r.last_version.get());
                succeeded(world, rng, part, ("append_in", Some(tx_no)), first, last).await;
            }
        }
        Err(_) => {
            // The commit's acknowledgement may have been lost: ambiguous.
            for part in parts {
                let outcome = resolve(world, part).await;
                world.record(part.record_in("append_in", tx_no, outcome));
            }
        }
    }
}

/// The parts of a racing caller transaction: two to four appends, some of which send a
/// contested event (see [`contested_event`]) to a stream of this transaction's own, alone
/// or before or after a fresh event, so that writers race for the same ids across
/// streams; the others go to the usual hot and cold streams.
fn racing_parts(
    world: &World,
    rng: &mut ChaCha8Rng,
    name: &str,
    tx_no: u64,
    known: &HashMap<StreamId, u64>,
) -> Vec<(Part, bool)> {
    let generation = world.ops() / CONTEST_GENERATION_OPS;
    let count = rng.gen_range(2..=4);
    // Half the time the last append is a contested one, right before the commit.
    let contested_last = rng.gen_bool(0.5);
    let mut parts: Vec<(Part, bool)> = Vec::with_capacity(count);
    for j in 0..count {
        if (j + 1 == count && contested_last) || rng.gen_bool(0.35) {
            let Some(e) = contested_event(world, generation, rng.gen_range(0..CONTEST_SLOTS))
            else {
                continue;
            };
            let Ok(stream) = StreamId::new(format!("race-{name}-{tx_no}-{j}")) else {
                continue;
            };
            let events = match rng.gen_range(0..3) {
                0 => vec![e],
                1 => [vec![e], new_events(rng, 1, name)].concat(),
                _ => [new_events(rng, 1, name), vec![e]].concat(),
            };
            let expected = if rng.gen_bool(0.5) {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Any
            };
            parts.push((
                Part {
                    stream,
                    expected,
                    events,
                },
                true,
            ));
        } else {
            let stream = pick_stream(world, rng, 0.2);
            if parts.iter().any(|(p, _)| p.stream == stream) {
                continue;
            }
            let n = rng.gen_range(1..=3);
            parts.push((
                Part {
                    expected: pick_expected(rng, known.get(&stream).copied()),
                    events: new_events(rng, n, name),
                    stream,
                },
                false,
            ));
        }
    }
    parts
}

/// A caller transaction of several appends that race other writers for the same event
/// ids. The documented contract is that a refusal (a conflict, the order guard, a
/// duplicate id, however it was found) writes nothing and leaves the transaction usable,
/// so the writer goes on with its other appends and commits; the model then checks that
/// the commit kept every append that was acknowledged in it.
async fn racing_caller_tx(
    world: &World,
    rng: &mut ChaCha8Rng,
    name: &str,
    known: &mut HashMap<StreamId, u64>,
) {
    let tx_no = world.next_tx();
    let parts = racing_parts(world, rng, name, tx_no, known);
    let begun = if rng.gen_bool(0.5) {
        world.store.begin().await.map(CallerTx::Chronik)
    } else {
        world
            .store
            .pool()
            .begin()
            .await
            .map(CallerTx::Sqlx)
            .map_err(|_| StoreError::backend("begin failed", true))
    };
    let Ok(mut tx) = begun else {
        world.counts.inc(C::failed_other);
        return;
    };
    world.counts.inc(C::racing_transactions);
    let mut acknowledged = Vec::with_capacity(parts.len());
    for (part, contested) in &parts {
        let result = tx.append(world, part).await;
        let refusal = match &result {
            Ok(r) if !r.already_appended => {
                if *contested {
                    world.counts.inc(C::contested_won);
                }
                acknowledged.push((part, r.first_version.get(), r.last_version.get()));
                continue;
            }
            Ok(_) => {
                world.counts.inc(C::anomalies);
                Err(Outcome::Anomaly {
                    why: "fresh ids answered already-appended".to_owned(),
                })
            }
            Err(StoreError::DuplicateEventId { .. }) if *contested => {
                world.counts.inc(C::contested_duplicates);
                Ok(Outcome::Failed {
                    why: "duplicate id (raced for)".to_owned(),
                })
            }
            Err(e @ (StoreError::Conflict { .. } | StoreError::TransactionOrder { .. })) => {
                if let StoreError::Conflict { actual, .. } = e {
                    known.insert(part.stream.clone(), actual.get());
                }
                Ok(definite_failure(world, e))
            }
            Err(e) => Err(definite_failure(world, e)),
        };
        match refusal {
            // Refused, nothing written, the transaction goes on.
            Ok(outcome) => {
                world.counts.inc(C::refused_in_caller_tx);
                world.record(part.record_in("append_in", tx_no, outcome));
            }
            // Anything else ends the transaction: nothing of it commits.
            Err(outcome) => {
                drop(tx);
                for (p, _, _) in &acknowledged {
                    world.record(p.record_in(
                        "append_in",
                        tx_no,
                        Outcome::Failed {
                            why: "the transaction failed before its commit".to_owned(),
                        },
                    ));
                }
                world.record(part.record_in("append_in", tx_no, outcome));
                return;
            }
        }
    }
    // A slow caller now and then: its ids stay held a little longer, for others to race.
    if rng.gen_bool(0.5) {
        tokio::time::sleep(between(rng, Duration::ZERO, Duration::from_millis(3))).await;
    }
    // A careless caller now and then: a statement of its own fails and it goes on to
    // commit. Only chronik's transaction can refuse that commit (sqlx's answers success
    // for the ROLLBACK PostgreSQL does instead): its appends must then all be absent.
    if let CallerTx::Chronik(t) = &mut tx
        && rng.gen_bool(0.1)
    {
        let _ = sqlx::query("SELECT 1 / 0").execute(&mut **t).await;
        let refused = match tx.commit().await {
            Err(e) if e.is_transaction_aborted() => "commit refused (transaction aborted)",
            // Answered success: recorded as stored, and the model finds them missing.
            Ok(()) => "",
            Err(_) => "commit failed",
        };
        world.counts.inc(C::commits_refused);
        for (part, first, _) in acknowledged {
            let outcome = if refused.is_empty() {
                Outcome::Stored { first }
            } else {
                Outcome::Failed {
                    why: refused.to_owned(),
                }
            };
            world.record(part.record_in("append_in", tx_no, outcome));
        }
        return;
    }
    match tx.commit().await {
        Ok(()) => {
            for (part, first, last) in acknowledged {
                known.insert(part.stream.clone(), last);
                world.counts.inc(C::appends_ok_in_caller_tx);
                succeeded(world, rng, part, ("append_in", Some(tx_no)), first, last).await;
            }
        }
        Err(_) => {
            for (part, _, _) in acknowledged {
                let outcome = resolve(world, part).await;
                world.record(part.record_in("append_in", tx_no, outcome));
            }
        }
    }
}

/// A caller transaction: chronik's (which refuses to commit once aborted) or sqlx's.
enum CallerTx {
    Chronik(PgStoreTransaction),
    Sqlx(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl CallerTx {
    async fn append(&mut self, world: &World, part: &Part) -> Result<AppendResult, StoreError> {
        match self {
            Self::Chronik(tx) => tx.append(&part.stream, part.expected, &part.events).await,
            Self::Sqlx(tx) => {
                world
                    .store
                    .append_in(tx, &part.stream, part.expected, &part.events)
                    .await
            }
        }
    }

    async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Chronik(tx) => tx.commit().await,
            Self::Sqlx(tx) => tx
                .commit()
                .await
                .map_err(|e| StoreError::backend(e.to_string(), true)),
        }
    }
}
