//! The model a run is checked against: what every append was told, and what ended up
//! stored, in the feed and in the projection. Pure functions over recorded data, no I/O,
//! so that each check can be fed violating data in a unit test.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use uuid::Uuid;

/// A feed position `(transaction, position)`, compared lexicographically.
pub(crate) type Cursor = (u64, u64);

/// How many violations of one check are kept as examples.
const MAX_EXAMPLES: usize = 20;

/// What the harness was told about one append (or one stream's part of a caller
/// transaction), after any resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) enum Outcome {
    /// Reported successful: `ids[i]` is at version `first + i`.
    Stored {
        /// Version of the first event.
        first: u64,
    },
    /// Reported failed without ambiguity (conflict, order guard, rolled back, pool
    /// timeout before anything was sent): nothing may be stored.
    Failed {
        /// Why, for messages.
        why: String,
    },
    /// The outcome was ambiguous (connection killed, timeout, commit acknowledgement lost)
    /// and re-sending the same ids resolved it: `Some(first)` when the store answered
    /// already-appended or appended them (at `first`), `None` when the re-send conflicted
    /// (so the original never committed and nothing may be stored).
    Resolved {
        /// Where the events are, if stored.
        first: Option<u64>,
    },
    /// Ambiguous and still unresolved when the run ended.
    Unresolved {
        /// The last error.
        why: String,
    },
    /// An answer no correct store gives (fresh ids reported as already appended, a
    /// duplicate id, a non-retryable backend error, a stray prepared transaction).
    Anomaly {
        /// What happened.
        why: String,
    },
}

/// One append as the harness recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AppendRecord {
    /// The stream.
    pub(crate) stream: String,
    /// The event ids, in order.
    pub(crate) ids: Vec<Uuid>,
    /// How it was sent (`append`, `append_in`, `held-open`, `prepared`, ...).
    pub(crate) via: &'static str,
    /// The caller transaction it was part of, when a writer ran several appends in one
    /// (numbered per run).
    pub(crate) tx: Option<u64>,
    /// What it was told.
    pub(crate) outcome: Outcome,
}

impl AppendRecord {
    /// Where its events must be: `Some(first version)` if they must be stored.
    fn stored_at(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Stored { first } | Outcome::Resolved { first: Some(first) } => Some(first),
            _ => None,
        }
    }

    /// Whether nothing of it may be stored.
    fn must_be_absent(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Failed { .. } | Outcome::Resolved { first: None }
        )
    }
}

/// One row of the `events` table (or of the feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    /// Its stream.
    pub(crate) stream: String,
    /// Its version.
    pub(crate) version: u64,
    /// Its id.
    pub(crate) event_id: Uuid,
    /// Its feed position.
    pub(crate) cursor: Cursor,
}

/// One row the test projection wrote, with the projection's own sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProjectedEvent {
    /// Order in which the projection applied it (from 1).
    pub(crate) seq: u64,
    /// The event's stream.
    pub(crate) stream: String,
    /// Its version.
    pub(crate) version: u64,
    /// Its id.
    pub(crate) event_id: Uuid,
}

/// Everything observed by the end of a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    /// Every append the harness made, with its outcome.
    pub(crate) records: Vec<AppendRecord>,
    /// Every row of `events`.
    pub(crate) stored: Vec<StoredEvent>,
    /// The feed read from the start through the public API, in the order returned.
    pub(crate) feed: Vec<StoredEvent>,
    /// The projection's rows.
    pub(crate) projection: Vec<ProjectedEvent>,
    /// The partitioned projection's rows (`None`: it did not run).
    pub(crate) partitioned: Option<Vec<ProjectedEvent>>,
    /// The projection's final checkpoint.
    pub(crate) checkpoint: Option<Cursor>,
    /// How many checkpoint samples were taken during the run.
    pub(crate) samples: u64,
    /// Violations seen by those samples (a checkpoint past an unapplied event, a
    /// checkpoint that moved backwards).
    pub(crate) sample_violations: Vec<String>,
    /// How many successful appends were deliberately re-sent with the same ids.
    pub(crate) resends: u64,
    /// Re-sends that were not answered "already appended" at the same versions.
    pub(crate) resend_violations: Vec<String>,
    /// Runners stopped during the run: how many.
    pub(crate) runner_stops: u64,
    /// Those whose task had died instead of retrying (a handler's panic, say).
    pub(crate) runner_crashes: Vec<String>,
    /// The reaction every stored trigger the reactor selects must have: its id, with the
    /// trigger's id and the stream the reaction belongs in.
    pub(crate) reactions: HashMap<Uuid, (Uuid, String)>,
    /// Every message of the relay's JetStream stream, in the stream's order (`None`: the
    /// relay was not run).
    pub(crate) relayed: Option<Vec<RelayedMessage>>,
}

/// A message of the relay's JetStream stream, from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayedMessage {
    /// Its sequence number in the JetStream stream (the order JetStream stored it in).
    pub(crate) seq: u64,
    /// `Chronik-Stream-Id`.
    pub(crate) stream: String,
    /// `Chronik-Stream-Version`.
    pub(crate) version: u64,
    /// `Nats-Msg-Id`: the event id.
    pub(crate) event_id: Uuid,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CheckResult {
    /// What is checked.
    pub(crate) name: &'static str,
    /// How much was checked, for the report.
    pub(crate) checked: String,
    /// How many violations were found.
    pub(crate) violations: usize,
    /// The first few of them.
    pub(crate) examples: Vec<String>,
}

impl CheckResult {
    fn new(name: &'static str, checked: String, all: Vec<String>) -> Self {
        Self {
            name,
            checked,
            violations: all.len(),
            examples: all.into_iter().take(MAX_EXAMPLES).collect(),
        }
    }

    /// Whether the check passed.
    pub(crate) fn passed(&self) -> bool {
        self.violations == 0
    }
}

/// Runs every check.
pub(crate) fn check(o: &Observed) -> Vec<CheckResult> {
    vec![
        acknowledged_stored_once(o),
        failed_left_nothing(o),
        caller_transactions_keep_what_they_acknowledged(o),
        ambiguous_resolved(o),
        nothing_unexplained(o),
        dense_versions(o),
        feed_exactly_once(o),
        projection_exactly_once(o),
        partitioned_exactly_once(o),
        checkpoint_at_feed_end(o),
        checkpoint_never_ahead(o),
        resends_idempotent(o),
        multi_stream_appends_are_one_transaction(o),
        runners_survive_their_handlers(o),
        reactions_exactly_once(o),
        relayed_exactly_once(o),
    ]
}

fn by_id(rows: &[StoredEvent]) -> HashMap<Uuid, Vec<&StoredEvent>> {
    let mut map: HashMap<Uuid, Vec<&StoredEvent>> = HashMap::new();
    for r in rows {
        map.entry(r.event_id).or_default().push(r);
    }
    map
}

/// Every append reported successful (or resolved as stored) is stored exactly once, with
/// its ids, in its stream, at the reported versions.
pub(crate) fn acknowledged_stored_once(o: &Observed) -> CheckResult {
    let stored = by_id(&o.stored);
    let (mut appends, mut events, mut bad) = (0, 0, Vec::new());
    for r in &o.records {
        let Some(first) = r.stored_at() else { continue };
        appends += 1;
        for (i, id) in r.ids.iter().enumerate() {
            events += 1;
            let want = first + i as u64;
            match stored.get(id).map(Vec::as_slice) {
                None | Some([]) => bad.push(format!(
                    "{} v{want} ({id}, {}, {:?}) was acknowledged but is not stored",
                    r.stream, r.via, r.outcome
                )),
                Some([row]) if row.stream == r.stream && row.version == want => {}
                Some([row]) => bad.push(format!(
                    "{id} was acknowledged at {} v{want} ({}) but is stored at {} v{}",
                    r.stream, r.via, row.stream, row.version
                )),
                Some(rows) => bad.push(format!(
                    "{id} ({} v{want}) is stored {} times",
                    r.stream,
                    rows.len()
                )),
            }
        }
    }
    CheckResult::new(
        "every acknowledged append is stored exactly once at its reported versions",
        format!("{appends} appends, {events} events"),
        bad,
    )
}

/// Where the records that must be stored put each id: `(id, stream, version)`.
fn claimed(o: &Observed) -> HashSet<(Uuid, &str, u64)> {
    o.records
        .iter()
        .filter_map(|r| r.stored_at().map(|first| (r, first)))
        .flat_map(|(r, first)| {
            r.ids
                .iter()
                .enumerate()
                .map(move |(i, id)| (*id, r.stream.as_str(), first + i as u64))
        })
        .collect()
}

/// No append reported as failed (or resolved as not stored) left anything behind. An id
/// that several appends raced for (the same event sent to different streams) may be
/// stored where the append that won it says it is, and nowhere else.
pub(crate) fn failed_left_nothing(o: &Observed) -> CheckResult {
    let stored = by_id(&o.stored);
    let claimed = claimed(o);
    let (mut appends, mut bad) = (0, Vec::new());
    for r in o.records.iter().filter(|r| r.must_be_absent()) {
        appends += 1;
        for id in &r.ids {
            if let Some(rows) = stored.get(id) {
                for row in rows {
                    if claimed.contains(&(*id, row.stream.as_str(), row.version)) {
                        continue;
                    }
                    bad.push(format!(
                        "{id} of a failed append to {} ({}, {:?}) is stored at {} v{}",
                        r.stream, r.via, r.outcome, row.stream, row.version
                    ));
                }
            }
        }
    }
    CheckResult::new(
        "every append reported as failed left nothing",
        format!("{appends} failed appends"),
        bad,
    )
}

/// The caller-transaction view of the two checks above, transaction by transaction: every
/// append acknowledged inside a transaction whose commit reported success is stored at its
/// versions, and nothing of an append that was refused inside it, or of a transaction
/// that failed before or at its commit, is stored (an id raced for may be stored where
/// its winner says). This is what a transaction that was silently aborted breaks: its
/// commit answers success while the appends it acknowledged are gone.
pub(crate) fn caller_transactions_keep_what_they_acknowledged(o: &Observed) -> CheckResult {
    let stored = by_id(&o.stored);
    let claimed = claimed(o);
    let mut txs: BTreeMap<u64, Vec<&AppendRecord>> = BTreeMap::new();
    for r in &o.records {
        if let Some(tx) = r.tx {
            txs.entry(tx).or_default().push(r);
        }
    }
    let mut bad = Vec::new();
    let mut parts = 0;
    for (tx, records) in &txs {
        for (n, r) in records.iter().enumerate() {
            parts += 1;
            for (i, id) in r.ids.iter().enumerate() {
                let rows = stored.get(id).map_or(&[][..], Vec::as_slice);
                if let Some(first) = r.stored_at() {
                    let want = first + i as u64;
                    if !rows
                        .iter()
                        .any(|row| row.stream == r.stream && row.version == want)
                    {
                        bad.push(format!(
                            "transaction {tx}: append {} of {} ({} v{want}, {id}) was acknowledged \
                             and the transaction committed ({:?}), but it is not stored there",
                            n + 1,
                            records.len(),
                            r.stream,
                            r.outcome
                        ));
                    }
                } else if r.must_be_absent() {
                    for row in rows {
                        if !claimed.contains(&(*id, row.stream.as_str(), row.version)) {
                            bad.push(format!(
                                "transaction {tx}: append {} of {} to {} ({:?}) left {id} at {} v{}",
                                n + 1,
                                records.len(),
                                r.stream,
                                r.outcome,
                                row.stream,
                                row.version
                            ));
                        }
                    }
                }
            }
        }
    }
    CheckResult::new(
        "caller transactions: what a committed transaction acknowledged is stored, nothing of a refused append or a failed transaction",
        format!("{} transactions, {parts} appends", txs.len()),
        bad,
    )
}

/// Every ambiguous outcome was resolved, and no store answer was anomalous.
pub(crate) fn ambiguous_resolved(o: &Observed) -> CheckResult {
    let mut resolved = 0;
    let mut bad = Vec::new();
    for r in &o.records {
        match &r.outcome {
            Outcome::Resolved { .. } => resolved += 1,
            Outcome::Unresolved { why } => bad.push(format!(
                "append to {} ({}) is still ambiguous: {why}",
                r.stream, r.via
            )),
            Outcome::Anomaly { why } => {
                bad.push(format!("append to {} ({}): {why}", r.stream, r.via));
            }
            Outcome::Stored { .. } | Outcome::Failed { .. } => {}
        }
    }
    CheckResult::new(
        "every ambiguous outcome was resolved by re-sending the same ids; no anomalous answer",
        format!("{resolved} resolved"),
        bad,
    )
}

/// Every stored event was written by an append the harness knows as stored, or is the
/// reaction to a stored trigger (its id is the reaction id of that trigger).
pub(crate) fn nothing_unexplained(o: &Observed) -> CheckResult {
    let expected: HashSet<Uuid> = o
        .records
        .iter()
        .filter(|r| r.stored_at().is_some())
        .flat_map(|r| r.ids.iter().copied())
        .collect();
    let explained_elsewhere: HashSet<Uuid> = o
        .records
        .iter()
        .filter(|r| r.stored_at().is_none())
        .flat_map(|r| r.ids.iter().copied())
        .collect();
    let bad = o
        .stored
        .iter()
        .filter(|e| {
            !expected.contains(&e.event_id)
                && !explained_elsewhere.contains(&e.event_id)
                && !o.reactions.contains_key(&e.event_id)
        })
        .map(|e| {
            format!(
                "{} v{} ({}) is stored but no append wrote it",
                e.stream, e.version, e.event_id
            )
        })
        .collect();
    CheckResult::new(
        "no stored event is unaccounted for",
        format!("{} stored events", o.stored.len()),
        bad,
    )
}

/// Per-stream versions are dense `1..=n`, and event ids are unique.
pub(crate) fn dense_versions(o: &Observed) -> CheckResult {
    let mut streams: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &o.stored {
        streams.entry(&e.stream).or_default().push(e.version);
    }
    let mut bad = Vec::new();
    for (stream, versions) in &mut streams {
        versions.sort_unstable();
        for (i, v) in versions.iter().enumerate() {
            let want = i as u64 + 1;
            if *v != want {
                bad.push(format!(
                    "{stream}: versions are not dense 1..{} (position {} holds v{v})",
                    versions.len(),
                    want
                ));
                break;
            }
        }
    }
    for (id, rows) in by_id(&o.stored) {
        if rows.len() > 1 {
            bad.push(format!("event id {id} is stored {} times", rows.len()));
        }
    }
    CheckResult::new(
        "per-stream versions are dense 1..n; event ids are unique",
        format!("{} streams", streams.len()),
        bad,
    )
}

/// Checks that `seen` holds each stored event exactly once and nothing else.
fn exactly_once<'a>(
    what: &str,
    stored: &[StoredEvent],
    seen: impl Iterator<Item = &'a Uuid>,
    bad: &mut Vec<String>,
) {
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for id in seen {
        *counts.entry(*id).or_default() += 1;
    }
    for e in stored {
        match counts.remove(&e.event_id) {
            Some(1) => {}
            None => bad.push(format!(
                "{} v{} ({}) is missing from the {what}",
                e.stream, e.version, e.event_id
            )),
            Some(n) => bad.push(format!(
                "{} v{} ({}) appears {n} times in the {what}",
                e.stream, e.version, e.event_id
            )),
        }
    }
    for (id, n) in counts {
        bad.push(format!("the {what} holds {id} ({n}x), which is not stored"));
    }
}

/// Checks that each stream's versions appear as 1, 2, 3, ... in `order`.
fn per_stream_order<'a>(
    what: &str,
    order: impl Iterator<Item = (&'a str, u64)>,
    bad: &mut Vec<String>,
) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (stream, version) in order {
        let prev = last.insert(stream, version).unwrap_or(0);
        if version != prev + 1 {
            bad.push(format!(
                "{stream}: the {what} has v{version} right after v{prev}"
            ));
        }
    }
}

/// Checks that `seen`, `(stream, version, event id)` in the order applied or stored, holds
/// each stored event exactly once and nothing else, each stream's versions in order.
fn exactly_once_in_order<'a>(
    what: &str,
    stored: &[StoredEvent],
    seen: impl Iterator<Item = (&'a str, u64, &'a Uuid)> + Clone,
    bad: &mut Vec<String>,
) {
    exactly_once(what, stored, seen.clone().map(|(_, _, id)| id), bad);
    per_stream_order(what, seen.map(|(s, v, _)| (s, v)), bad);
}

/// The feed from the start holds every stored event exactly once, in increasing cursor
/// order, with each stream's versions in order.
pub(crate) fn feed_exactly_once(o: &Observed) -> CheckResult {
    let mut bad = Vec::new();
    exactly_once(
        "feed",
        &o.stored,
        o.feed.iter().map(|e| &e.event_id),
        &mut bad,
    );
    for w in o.feed.windows(2) {
        if w[0].cursor >= w[1].cursor {
            bad.push(format!(
                "feed cursors do not increase: {:?} then {:?}",
                w[0].cursor, w[1].cursor
            ));
        }
    }
    per_stream_order(
        "feed",
        o.feed.iter().map(|e| (e.stream.as_str(), e.version)),
        &mut bad,
    );
    CheckResult::new(
        "the feed holds every committed event exactly once, each stream in version order",
        format!("{} feed events", o.feed.len()),
        bad,
    )
}

/// The projection applied every stored event exactly once, each stream in version order.
pub(crate) fn projection_exactly_once(o: &Observed) -> CheckResult {
    let mut bad = Vec::new();
    let mut rows: Vec<&ProjectedEvent> = o.projection.iter().collect();
    rows.sort_by_key(|r| r.seq);
    exactly_once_in_order(
        "projection",
        &o.stored,
        rows.iter()
            .map(|r| (r.stream.as_str(), r.version, &r.event_id)),
        &mut bad,
    );
    CheckResult::new(
        "the projection applied every committed event exactly once, in per-stream order",
        format!("{} projected rows", o.projection.len()),
        bad,
    )
}

/// The partitioned projection (four partitions on workers that were killed and restarted)
/// applied every stored event exactly once, each stream in version order.
pub(crate) fn partitioned_exactly_once(o: &Observed) -> CheckResult {
    let mut bad = Vec::new();
    let rows = o.partitioned.as_deref().unwrap_or_default();
    if o.partitioned.is_some() {
        let mut rows: Vec<&ProjectedEvent> = rows.iter().collect();
        rows.sort_by_key(|r| r.seq);
        exactly_once_in_order(
            "partitioned projection",
            &o.stored,
            rows.iter()
                .map(|r| (r.stream.as_str(), r.version, &r.event_id)),
            &mut bad,
        );
    }
    CheckResult::new(
        "the partitioned projection applied every committed event exactly once, in per-stream order",
        if o.partitioned.is_some() {
            format!("{} rows applied by partitions", rows.len())
        } else {
            "not run".to_owned()
        },
        bad,
    )
}

/// The final checkpoint is the feed's last event.
pub(crate) fn checkpoint_at_feed_end(o: &Observed) -> CheckResult {
    let end = o.feed.last().map(|e| e.cursor);
    let bad = if o.checkpoint == end || (end.is_none() && o.checkpoint.is_none()) {
        Vec::new()
    } else {
        vec![format!(
            "the checkpoint is {:?} but the feed ends at {end:?}",
            o.checkpoint
        )]
    };
    CheckResult::new(
        "the projection's checkpoint equals the feed's end",
        format!("checkpoint {:?}", o.checkpoint),
        bad,
    )
}

/// No checkpoint observed during the run was past an event the projection had not
/// applied, and checkpoints never moved backwards.
pub(crate) fn checkpoint_never_ahead(o: &Observed) -> CheckResult {
    CheckResult::new(
        "no checkpoint observed during the run passed an event it had not applied",
        format!("{} samples", o.samples),
        o.sample_violations.clone(),
    )
}

/// Re-sending a successful append's ids was answered "already appended" at the same
/// versions.
pub(crate) fn resends_idempotent(o: &Observed) -> CheckResult {
    CheckResult::new(
        "re-sending an acknowledged append answers already-appended at the same versions",
        format!("{} re-sends", o.resends),
        o.resend_violations.clone(),
    )
}

/// Every runner the harness stopped was still running: injected handler failures and
/// panics were retried, never the end of its task.
pub(crate) fn runners_survive_their_handlers(o: &Observed) -> CheckResult {
    CheckResult::new(
        "a failing or panicking handler never kills its runner",
        format!("{} runners stopped", o.runner_stops),
        o.runner_crashes.clone(),
    )
}

/// The events of a stored multi-stream append (records `via == "append_streams"` sharing a
/// transaction number) belong to one database transaction: the feed shows them together.
/// That they are all stored or none is the caller-transaction check's.
pub(crate) fn multi_stream_appends_are_one_transaction(o: &Observed) -> CheckResult {
    let stored = by_id(&o.stored);
    let mut appends: BTreeMap<u64, Vec<&AppendRecord>> = BTreeMap::new();
    for r in &o.records {
        if let (Some(tx), "append_streams") = (r.tx, r.via) {
            appends.entry(tx).or_default().push(r);
        }
    }
    let mut bad = Vec::new();
    for (tx, records) in &appends {
        let transactions: HashSet<u64> = records
            .iter()
            .filter(|r| r.stored_at().is_some())
            .flat_map(|r| r.ids.iter())
            .filter_map(|id| stored.get(id))
            .flat_map(|rows| rows.iter().map(|row| row.cursor.0))
            .collect();
        if transactions.len() > 1 {
            bad.push(format!(
                "multi-stream append {tx} ({} streams) was stored by {} transactions: {transactions:?}",
                records.len(),
                transactions.len()
            ));
        }
    }
    CheckResult::new(
        "a multi-stream append's events are stored by one transaction",
        format!("{} multi-stream appends", appends.len()),
        bad,
    )
}

/// Every stored trigger the reactor selects has exactly one reaction, stored in the stream
/// its id names, and the reaction streams hold nothing else.
pub(crate) fn reactions_exactly_once(o: &Observed) -> CheckResult {
    let stored = by_id(&o.stored);
    let mut bad = Vec::new();
    for (reaction, (trigger, target)) in &o.reactions {
        match stored.get(reaction).map(Vec::as_slice) {
            None | Some([]) => bad.push(format!(
                "trigger {trigger} has no reaction ({reaction} is not stored in {target})"
            )),
            Some([row]) if row.stream == *target => {}
            Some([row]) => bad.push(format!(
                "the reaction to {trigger} is stored in {} v{}, not in {target}",
                row.stream, row.version
            )),
            Some(rows) => bad.push(format!(
                "the reaction to {trigger} is stored {} times",
                rows.len()
            )),
        }
    }
    let targets: HashSet<&str> = o.reactions.values().map(|(_, t)| t.as_str()).collect();
    let in_targets = o
        .stored
        .iter()
        .filter(|e| targets.contains(e.stream.as_str()))
        .count();
    if in_targets > o.reactions.len() {
        bad.push(format!(
            "the reaction streams hold {in_targets} events for {} triggers",
            o.reactions.len()
        ));
    }
    CheckResult::new(
        "every selected trigger has exactly one reaction (two racing reactor runners, crashes injected)",
        format!("{} triggers", o.reactions.len()),
        bad,
    )
}

/// The relay (killed mid-batch, its NATS server restarted under it) stored every committed
/// event exactly once in JetStream, with the stream and version it has in the store, each
/// stream in version order.
pub(crate) fn relayed_exactly_once(o: &Observed) -> CheckResult {
    let mut bad = Vec::new();
    let messages = o.relayed.as_deref().unwrap_or_default();
    if o.relayed.is_some() {
        let mut messages: Vec<&RelayedMessage> = messages.iter().collect();
        messages.sort_by_key(|m| m.seq);
        exactly_once_in_order(
            "JetStream stream",
            &o.stored,
            messages
                .iter()
                .map(|m| (m.stream.as_str(), m.version, &m.event_id)),
            &mut bad,
        );
        let stored = by_id(&o.stored);
        for m in &messages {
            if let Some([e]) = stored.get(&m.event_id).map(Vec::as_slice)
                && (e.stream != m.stream || e.version != m.version)
            {
                bad.push(format!(
                    "JetStream message {} says {} v{} for {}, stored as {} v{}",
                    m.seq, m.stream, m.version, m.event_id, e.stream, e.version
                ));
            }
        }
    }
    CheckResult::new(
        "the relay stored every committed event in JetStream exactly once, in per-stream order",
        if o.relayed.is_some() {
            format!("{} JetStream messages", messages.len())
        } else {
            "not run".to_owned()
        },
        bad,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn row(stream: &str, version: u64, n: u128, cursor: Cursor) -> StoredEvent {
        StoredEvent {
            stream: stream.to_owned(),
            version,
            event_id: id(n),
            cursor,
        }
    }

    fn rec(stream: &str, ids: &[u128], outcome: Outcome) -> AppendRecord {
        AppendRecord {
            stream: stream.to_owned(),
            ids: ids.iter().map(|n| id(*n)).collect(),
            via: "append",
            tx: None,
            outcome,
        }
    }

    /// A consistent world: a-1 v1..2 (one append), b-1 v1 (resolved), one failed append.
    fn healthy() -> Observed {
        let stored = vec![
            row("a-1", 1, 1, (10, 1)),
            row("a-1", 2, 2, (10, 2)),
            row("b-1", 1, 3, (11, 3)),
        ];
        let projection = stored
            .iter()
            .enumerate()
            .map(|(i, e)| ProjectedEvent {
                seq: i as u64 + 1,
                stream: e.stream.clone(),
                version: e.version,
                event_id: e.event_id,
            })
            .collect();
        Observed {
            records: vec![
                rec("a-1", &[1, 2], Outcome::Stored { first: 1 }),
                rec("b-1", &[3], Outcome::Resolved { first: Some(1) }),
                rec(
                    "a-1",
                    &[4],
                    Outcome::Failed {
                        why: "conflict".into(),
                    },
                ),
                rec("b-1", &[5], Outcome::Resolved { first: None }),
            ],
            feed: stored.clone(),
            stored,
            projection,
            checkpoint: Some((11, 3)),
            samples: 3,
            ..Observed::default()
        }
    }

    fn failing(o: &Observed) -> Vec<&'static str> {
        check(o)
            .into_iter()
            .filter(|c| !c.passed())
            .map(|c| c.name)
            .collect()
    }

    /// A multi-stream append of a-9 (id 20) and b-9 (id 21), with `outcome` for both parts,
    /// and the rows `stored` of it.
    fn multi(o: &mut Observed, outcome: &Outcome, stored: &[StoredEvent]) {
        for (stream, n) in [("a-9", 20), ("b-9", 21)] {
            o.records.push(AppendRecord {
                via: "append_streams",
                tx: Some(900),
                ..rec(stream, &[n], outcome.clone())
            });
        }
        o.stored.extend_from_slice(stored);
        o.feed.extend_from_slice(stored);
        for e in stored {
            o.projection.push(ProjectedEvent {
                seq: o.projection.len() as u64 + 1,
                stream: e.stream.clone(),
                version: e.version,
                event_id: e.event_id,
            });
        }
        o.checkpoint = o.feed.last().map(|e| e.cursor);
    }

    #[test]
    fn a_multi_stream_append_split_or_half_written_is_reported() {
        let both = [row("a-9", 1, 20, (20, 10)), row("b-9", 1, 21, (20, 11))];
        let mut o = healthy();
        multi(&mut o, &Outcome::Stored { first: 1 }, &both);
        assert_eq!(
            failing(&o),
            Vec::<&str>::new(),
            "one transaction, both parts"
        );

        let mut o = healthy();
        let split = [row("a-9", 1, 20, (20, 10)), row("b-9", 1, 21, (21, 11))];
        multi(&mut o, &Outcome::Stored { first: 1 }, &split);
        assert_eq!(
            failing(&o),
            ["a multi-stream append's events are stored by one transaction"]
        );

        let mut o = healthy();
        let failed = Outcome::Failed {
            why: "conflict".into(),
        };
        multi(&mut o, &failed, &both[..1]);
        assert!(
            failing(&o).contains(
                &"caller transactions: what a committed transaction acknowledged is stored, nothing of a refused append or a failed transaction"
            ),
            "{:?}",
            failing(&o)
        );
    }

    fn relayed(stored: &[StoredEvent]) -> Vec<RelayedMessage> {
        stored
            .iter()
            .enumerate()
            .map(|(i, e)| RelayedMessage {
                seq: i as u64 + 1,
                stream: e.stream.clone(),
                version: e.version,
                event_id: e.event_id,
            })
            .collect()
    }

    #[test]
    fn a_relayed_event_lost_stored_twice_or_out_of_order_is_reported() {
        let name = relayed_exactly_once(&healthy()).name;
        let mut o = healthy();
        o.relayed = Some(relayed(&o.stored));
        assert_eq!(failing(&o), Vec::<&str>::new());

        let mut lost = o.clone();
        lost.relayed.as_mut().unwrap().remove(1);
        assert_eq!(failing(&lost), [name]);
        assert!(relayed_exactly_once(&lost).examples[0].contains("missing"));

        let mut twice = o.clone();
        let mut again = twice.relayed.as_ref().unwrap()[0].clone();
        again.seq = 9;
        twice.relayed.as_mut().unwrap().push(again);
        assert_eq!(failing(&twice), [name]);
        assert!(relayed_exactly_once(&twice).examples[0].contains("2 times"));

        let mut swapped = o.clone();
        let m = swapped.relayed.as_mut().unwrap();
        (m[0].seq, m[1].seq) = (m[1].seq, m[0].seq);
        assert_eq!(failing(&swapped), [name]);
        assert!(relayed_exactly_once(&swapped).examples[0].contains("right after"));

        let mut mislabelled = o.clone();
        mislabelled.relayed.as_mut().unwrap()[2].version = 7;
        assert_eq!(failing(&mislabelled), [name]);
    }

    #[test]
    fn a_runner_that_died_is_reported() {
        let mut o = healthy();
        o.runner_stops = 2;
        o.runner_crashes = vec!["runner task panicked: boom".into()];
        assert_eq!(
            failing(&o),
            ["a failing or panicking handler never kills its runner"]
        );
    }

    #[test]
    fn a_consistent_run_passes_every_check() {
        assert_eq!(failing(&healthy()), Vec::<&str>::new());
    }

    #[test]
    fn a_lost_acknowledged_event_is_reported() {
        let mut o = healthy();
        o.records[0].outcome = Outcome::Stored { first: 1 };
        o.records
            .push(rec("c-1", &[9], Outcome::Stored { first: 1 }));
        let r = acknowledged_stored_once(&o);
        assert_eq!(r.violations, 1);
        assert!(r.examples[0].contains("not stored"), "{:?}", r.examples);
    }

    #[test]
    fn an_event_at_another_version_than_reported_is_reported() {
        let mut o = healthy();
        o.records[0].outcome = Outcome::Stored { first: 2 };
        assert_eq!(acknowledged_stored_once(&o).violations, 2);
    }

    #[test]
    fn a_duplicated_event_is_reported_by_every_check_that_sees_it() {
        let mut o = healthy();
        o.stored.push(row("a-1", 3, 1, (12, 4)));
        o.feed = o.stored.clone();
        let names = failing(&o);
        assert!(names.contains(&acknowledged_stored_once(&o).name));
        assert!(names.contains(&dense_versions(&o).name));
        assert!(names.contains(&feed_exactly_once(&o).name));
        assert!(names.contains(&projection_exactly_once(&o).name));
    }

    #[test]
    fn a_failed_append_that_left_events_is_reported() {
        let mut o = healthy();
        o.stored.push(row("a-1", 3, 4, (12, 4)));
        let r = failed_left_nothing(&o);
        assert_eq!(r.violations, 1);
        assert!(r.examples[0].contains("failed append"));
        // A re-send that conflicted means "never stored" too.
        let mut o = healthy();
        o.stored.push(row("b-1", 2, 5, (12, 4)));
        assert_eq!(failed_left_nothing(&o).violations, 1);
    }

    #[test]
    fn unresolved_and_anomalous_outcomes_are_reported() {
        let mut o = healthy();
        o.records.push(rec(
            "c-1",
            &[7],
            Outcome::Unresolved {
                why: "connection refused".into(),
            },
        ));
        o.records.push(rec(
            "c-1",
            &[8],
            Outcome::Anomaly {
                why: "fresh ids answered already-appended".into(),
            },
        ));
        assert_eq!(ambiguous_resolved(&o).violations, 2);
    }

    /// `healthy()` with a trigger (id 1) whose reaction (id 50) belongs in r-1.
    fn with_reaction(stored: &[StoredEvent]) -> Observed {
        let mut o = healthy();
        o.reactions.insert(id(50), (id(1), "r-1".to_owned()));
        for e in stored {
            o.stored.push(e.clone());
            o.feed.push(e.clone());
            o.projection.push(ProjectedEvent {
                seq: o.projection.len() as u64 + 1,
                stream: e.stream.clone(),
                version: e.version,
                event_id: e.event_id,
            });
        }
        o.checkpoint = o.feed.last().map(|e| e.cursor);
        o
    }

    #[test]
    fn a_missing_misplaced_or_extra_reaction_is_reported() {
        let once = with_reaction(&[row("r-1", 1, 50, (12, 4))]);
        assert_eq!(
            failing(&once),
            Vec::<&str>::new(),
            "a reaction no append recorded is explained by its trigger"
        );
        let reactions = |o: &Observed| reactions_exactly_once(o).violations;
        assert_eq!(reactions(&with_reaction(&[])), 1, "missing");
        assert_eq!(
            reactions(&with_reaction(&[row("r-2", 1, 50, (12, 4))])),
            1,
            "misplaced"
        );
        let twice = with_reaction(&[row("r-1", 1, 50, (12, 4)), row("r-1", 2, 51, (13, 5))]);
        assert_eq!(reactions(&twice), 1, "a second reaction with another id");
        assert_eq!(
            nothing_unexplained(&twice).violations,
            1,
            "which nothing explains"
        );
    }

    #[test]
    fn a_stored_event_nobody_wrote_is_reported() {
        let mut o = healthy();
        o.stored.push(row("z-1", 1, 99, (12, 4)));
        assert_eq!(nothing_unexplained(&o).violations, 1);
    }

    #[test]
    fn a_version_gap_is_reported() {
        let mut o = healthy();
        o.stored[1].version = 3;
        let r = dense_versions(&o);
        assert_eq!(r.violations, 1);
        assert!(r.examples[0].contains("a-1"));
    }

    #[test]
    fn a_feed_that_skips_repeats_or_reorders_is_reported() {
        let mut skipped = healthy();
        skipped.feed.remove(1);
        assert!(
            feed_exactly_once(&skipped).examples[0].contains("missing"),
            "{:?}",
            feed_exactly_once(&skipped).examples
        );

        let mut repeated = healthy();
        let again = repeated.feed[0].clone();
        repeated.feed.push(again);
        assert!(!feed_exactly_once(&repeated).passed());

        let mut reordered = healthy();
        reordered.feed.swap(0, 1);
        let r = feed_exactly_once(&reordered);
        assert!(r.examples.iter().any(|e| e.contains("v2 right after v0")));
        assert!(r.examples.iter().any(|e| e.contains("do not increase")));
    }

    #[test]
    fn a_partitioned_projection_that_misses_repeats_or_reorders_is_reported() {
        let mut o = healthy();
        o.partitioned = Some(o.projection.clone());
        assert!(partitioned_exactly_once(&o).passed());
        let mut missed = o.clone();
        missed.partitioned.as_mut().map(Vec::pop);
        assert_eq!(partitioned_exactly_once(&missed).violations, 1);
        let mut repeated = o.clone();
        if let Some(rows) = repeated.partitioned.as_mut() {
            let mut again = rows[2].clone();
            again.seq = 4;
            rows.push(again);
        }
        assert!(!partitioned_exactly_once(&repeated).passed());
        let mut reordered = o;
        if let Some(rows) = reordered.partitioned.as_mut() {
            rows[0].seq = 2;
            rows[1].seq = 1;
        }
        assert!(!partitioned_exactly_once(&reordered).passed());
    }

    #[test]
    fn a_projection_that_misses_repeats_or_reorders_is_reported() {
        let mut missed = healthy();
        missed.projection.pop();
        assert_eq!(projection_exactly_once(&missed).violations, 1);

        let mut repeated = healthy();
        let mut again = repeated.projection[2].clone();
        again.seq = 4;
        repeated.projection.push(again);
        let r = projection_exactly_once(&repeated);
        assert!(r.examples.iter().any(|e| e.contains("2 times")));

        let mut reordered = healthy();
        reordered.projection[0].seq = 2;
        reordered.projection[1].seq = 1;
        assert!(!projection_exactly_once(&reordered).passed());
    }

    #[test]
    fn a_checkpoint_short_of_or_past_the_feed_end_is_reported() {
        let mut short = healthy();
        short.checkpoint = Some((11, 2));
        assert!(!checkpoint_at_feed_end(&short).passed());
        let mut none = healthy();
        none.checkpoint = None;
        assert!(!checkpoint_at_feed_end(&none).passed());
        let empty = Observed::default();
        assert!(checkpoint_at_feed_end(&empty).passed());
    }

    fn in_tx(mut r: AppendRecord, tx: u64) -> AppendRecord {
        r.via = "append_in";
        r.tx = Some(tx);
        r
    }

    #[test]
    fn a_committed_transaction_that_lost_an_acknowledged_append_is_reported() {
        // Transaction 7: f acknowledged, then e refused (a raced duplicate), then commit
        // answered success; f is not stored (the transaction had been aborted).
        let mut o = healthy();
        o.records
            .push(in_tx(rec("c-1", &[6], Outcome::Stored { first: 1 }), 7));
        o.records.push(in_tx(
            rec(
                "d-1",
                &[1],
                Outcome::Failed {
                    why: "duplicate".into(),
                },
            ),
            7,
        ));
        let r = caller_transactions_keep_what_they_acknowledged(&o);
        assert_eq!(r.violations, 1, "{:?}", r.examples);
        assert!(r.examples[0].contains("transaction 7: append 1 of 2"));
        assert!(failing(&o).contains(&acknowledged_stored_once(&o).name));
        // Once f is stored, the refused append's id (stored where its winner says) is fine.
        o.stored.push(row("c-1", 1, 6, (12, 4)));
        o.feed = o.stored.clone();
        assert!(caller_transactions_keep_what_they_acknowledged(&o).passed());
        assert!(failed_left_nothing(&o).passed());
    }

    #[test]
    fn a_raced_id_stored_where_no_winner_claims_it_is_reported() {
        let mut o = healthy();
        // Event 1 is claimed by a-1 v1; a failed append to d-1 also sent it.
        o.records.push(in_tx(
            rec(
                "d-1",
                &[1],
                Outcome::Failed {
                    why: "duplicate".into(),
                },
            ),
            3,
        ));
        assert!(failed_left_nothing(&o).passed());
        // Stored in d-1 as well (a second copy, at a place nobody was told about).
        o.stored.push(row("d-1", 1, 1, (12, 4)));
        assert_eq!(failed_left_nothing(&o).violations, 1);
        assert_eq!(
            caller_transactions_keep_what_they_acknowledged(&o).violations,
            1
        );
    }

    #[test]
    fn sampled_and_resend_violations_fail_their_checks() {
        let mut o = healthy();
        o.sample_violations
            .push("checkpoint (11, 3) passed a-1 v2".into());
        o.resend_violations
            .push("a-1: re-send answered conflict".into());
        let names = failing(&o);
        assert_eq!(
            names,
            vec![checkpoint_never_ahead(&o).name, resends_idempotent(&o).name]
        );
    }
}
