use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chronik_core::{
    EventId, ExpectedVersion, FeedCursor, InvalidInput, NewEvent, RecordedEvent, StreamId, Version,
    validate_batch,
};
use chronik_store::{
    AppendResult, Checkpoint, CheckpointStore, EventStore, EventStream, FeedFilter, FeedHead,
    FeedPage, MAX_FEED_PAGE, Snapshot, SnapshotStore, StoreError, StreamAppend, StreamConflict,
    validate_appends, validate_projection_name,
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

/// How many events a stream read copies out per lock acquisition.
const READ_CHUNK: usize = 256;

#[derive(Debug, Default)]
struct Inner {
    /// Every event in commit order; index + 1 is the global position.
    log: Vec<RecordedEvent>,
    /// Per stream: indices into `log`, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Where each event id is stored.
    ids: HashMap<EventId, usize>,
    /// Last commit number handed out.
    last_tx: u64,
    snapshots: HashMap<StreamId, Snapshot>,
    checkpoints: BTreeMap<String, Checkpoint>,
}

/// A complete, concurrency-safe in-memory store. Cloning shares the same data.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    head: Arc<watch::Sender<Option<FeedCursor>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            head: Arc::new(watch::Sender::new(None)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append: every
        // mutation below is computed first and applied with infallible pushes.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notified with the feed head after every commit (for live subscribers).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Option<FeedCursor>> {
        self.head.subscribe()
    }

    /// Total number of stored events.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().log.len()
    }

    /// Whether no event is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn version_of(inner: &Inner, stream: &StreamId) -> Version {
    inner
        .streams
        .get(stream)
        .and_then(|idx| idx.last())
        .map_or(Version::ZERO, |&i| inner.log[i].version)
}

fn check_limit(limit: usize) -> Result<(), StoreError> {
    if limit == 0 || limit > MAX_FEED_PAGE {
        return Err(StoreError::InvalidRequest(format!(
            "feed page limit must be 1 to {MAX_FEED_PAGE}, got {limit}"
        )));
    }
    Ok(())
}

/// What one append to one stream would do, decided under the lock before anything changes.
struct Decision {
    result: AppendResult,
    /// The events to store (none for an idempotent retry).
    records: Vec<RecordedEvent>,
}

/// Decides one append as the contract orders its checks: idempotency (the same ids at the
/// same place), then the expected version. `tx` is the commit the events would belong to
/// and `base` the log length before them. Changes nothing.
fn decide(
    inner: &Inner,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    tx: u64,
    base: usize,
) -> Result<Decision, StoreError> {
    // Idempotency first: the same ids at the same place are a successful retry.
    if let Some(&at) = inner.ids.get(&events[0].event_id()) {
        let first = &inner.log[at];
        // The place an expected version implies: Exact(v) puts the first event at v + 1,
        // NoStream at 1; Any and StreamExists accept wherever the batch landed.
        let place_ok = match expected {
            ExpectedVersion::Exact(v) => first.version.get() == v.get() + 1,
            ExpectedVersion::NoStream => first.version == Version::FIRST,
            ExpectedVersion::StreamExists | ExpectedVersion::Any => true,
        };
        let same_place = place_ok
            && first.stream_id == *stream
            && events.iter().enumerate().all(|(i, e)| {
                inner.ids.get(&e.event_id()).is_some_and(|&j| {
                    let r = &inner.log[j];
                    r.stream_id == *stream && r.version.get() == first.version.get() + i as u64
                })
            });
        if same_place {
            // The same place, but is it the same events? An id reused for other
            // content is refused, naming the first event that differs.
            if let Some(r) = events.iter().find_map(|e| {
                let r = &inner.log[inner.ids[&e.event_id()]];
                let same = r.event_type == *e.event_type()
                    && r.schema_version == e.schema_version()
                    && r.payload == *e.payload();
                (!same).then_some(r)
            }) {
                return Err(StoreError::EventIdReused {
                    event_id: r.event_id,
                    stream: r.stream_id.clone(),
                    version: r.version,
                });
            }
            let last = &inner.log[inner.ids[&events[events.len() - 1].event_id()]];
            return Ok(Decision {
                result: AppendResult {
                    first_version: first.version,
                    last_version: last.version,
                    cursor: last.cursor,
                    already_appended: true,
                },
                records: Vec::new(),
            });
        }
        return Err(StoreError::DuplicateEventId {
            event_id: events[0].event_id(),
            stream: first.stream_id.clone(),
            version: first.version,
        });
    }
    if let Some((e, &j)) = events
        .iter()
        .find_map(|e| inner.ids.get(&e.event_id()).map(|j| (e, j)))
    {
        let r = &inner.log[j];
        return Err(StoreError::DuplicateEventId {
            event_id: e.event_id(),
            stream: r.stream_id.clone(),
            version: r.version,
        });
    }
    let current = version_of(inner, stream);
    if !expected.matches(current) {
        return Err(StoreError::Conflict {
            stream: stream.clone(),
            expected,
            actual: current,
        });
    }
    let first_version = current.next()?;
    let last_version = current.checked_add(events.len() as u64)?;
    let now = Utc::now();
    let records = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(RecordedEvent {
                stream_id: stream.clone(),
                version: Version::new(first_version.get() + i as u64).unwrap_or(Version::MAX),
                cursor: FeedCursor::new(tx, (base + i + 1) as u64)?,
                event_id: e.event_id(),
                event_type: e.event_type().clone(),
                schema_version: e.schema_version(),
                payload: e.payload().clone(),
                metadata: e.metadata().clone(),
                recorded_at: now,
            })
        })
        .collect::<Result<Vec<RecordedEvent>, InvalidInput>>()?;
    let cursor = records.last().map_or(FeedCursor::START, |r| r.cursor);
    Ok(Decision {
        result: AppendResult {
            first_version,
            last_version,
            cursor,
            already_appended: false,
        },
        records,
    })
}

/// Stores decided events (infallible: everything that can fail was decided first).
fn apply(inner: &mut Inner, records: Vec<RecordedEvent>) {
    for r in records {
        let at = inner.log.len();
        inner.ids.insert(r.event_id, at);
        inner
            .streams
            .entry(r.stream_id.clone())
            .or_default()
            .push(at);
        inner.log.push(r);
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        validate_batch(events)?;
        let mut inner = self.lock();
        let tx = inner.last_tx + 1;
        let base = inner.log.len();
        let Decision { result, records } = decide(&inner, stream, expected, events, tx, base)?;
        if records.is_empty() {
            return Ok(result);
        }
        // Everything fallible is done; apply.
        inner.last_tx = tx;
        apply(&mut inner, records);
        drop(inner);
        self.head.send_replace(Some(result.cursor));
        Ok(result)
    }

    async fn append_streams(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        validate_appends(appends)?;
        // The parts are written in stream-id order (bytewise), as PostgreSQL takes them, so
        // the feed shows one multi-stream append's events in the same order on both;
        // errors are chosen in the order given.
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by(|&a, &b| {
            appends[a]
                .stream
                .as_str()
                .as_bytes()
                .cmp(appends[b].stream.as_str().as_bytes())
        });
        let mut inner = self.lock();
        // One commit for every part; each part's events follow the previous part's.
        let tx = inner.last_tx + 1;
        let mut base = inner.log.len();
        let mut decided: Vec<Option<Decision>> = (0..appends.len()).map(|_| None).collect();
        let mut refused: Vec<Option<StoreError>> = (0..appends.len()).map(|_| None).collect();
        for &i in &order {
            let part = &appends[i];
            match decide(&inner, &part.stream, part.expected, &part.events, tx, base) {
                Ok(d) => {
                    base += d.records.len();
                    decided[i] = Some(d);
                }
                Err(e) => refused[i] = Some(e),
            }
        }
        let mut conflicts = Vec::new();
        for e in refused.into_iter().flatten() {
            match e {
                StoreError::Conflict {
                    stream,
                    expected,
                    actual,
                } => conflicts.push(StreamConflict {
                    stream,
                    expected,
                    actual,
                }),
                // A refusal that is not about versions decides the error.
                other => return Err(other),
            }
        }
        if !conflicts.is_empty() {
            return Err(StoreError::Conflicts { conflicts });
        }
        let mut head = None;
        for &i in &order {
            if let Some(d) = decided[i].as_mut()
                && !d.records.is_empty()
            {
                head = Some(d.result.cursor);
                apply(&mut inner, std::mem::take(&mut d.records));
            }
        }
        if let Some(cursor) = head {
            inner.last_tx = tx;
            drop(inner);
            self.head.send_replace(Some(cursor));
        }
        Ok(decided.into_iter().flatten().map(|d| d.result).collect())
    }

    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
        let stream = stream.clone();
        // Versions are dense from 1, so version v sits at index v - 1 of the stream's list.
        let start = usize::try_from(from.get().saturating_sub(1)).unwrap_or(usize::MAX);
        futures::stream::unfold(start, move |next| {
            let chunk: Vec<RecordedEvent> = {
                let inner = self.lock();
                inner
                    .streams
                    .get(&stream)
                    .map(|idx| {
                        idx.iter()
                            .skip(next)
                            .take(READ_CHUNK)
                            .map(|&i| inner.log[i].clone())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            async move {
                if chunk.is_empty() {
                    None
                } else {
                    let n = chunk.len();
                    Some((futures::stream::iter(chunk.into_iter().map(Ok)), next + n))
                }
            }
        })
        .flatten()
        .boxed()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        Ok(version_of(&self.lock(), stream))
    }

    async fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        check_limit(limit)?;
        let inner = self.lock();
        // Positions are log index + 1 and grow with commit order.
        let start = inner.log.partition_point(|e| e.cursor <= after);
        let events: Vec<RecordedEvent> = inner.log[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect();
        let next = events.last().map_or(after, |e| e.cursor);
        Ok(FeedPage { events, next })
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        let inner = self.lock();
        Ok(FeedHead {
            last: inner.log.last().map(|e| e.cursor),
            visible_events: inner.log.len() as u64,
        })
    }

    async fn count_after(&self, after: FeedCursor) -> Result<u64, StoreError> {
        let inner = self.lock();
        Ok((inner.log.len() - inner.log.partition_point(|e| e.cursor <= after)) as u64)
    }
}

impl SnapshotStore for MemoryStore {
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        state_schema_version: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .lock()
            .snapshots
            .get(stream)
            .filter(|s| s.state_schema_version == state_schema_version)
            .cloned())
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        version: Version,
        state_schema_version: u32,
        state: &Value,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let replace = inner.snapshots.get(stream).is_none_or(|old| {
            version > old.version || state_schema_version != old.state_schema_version
        });
        if replace {
            inner.snapshots.insert(
                stream.clone(),
                Snapshot {
                    stream_id: stream.clone(),
                    version,
                    state_schema_version,
                    state: state.clone(),
                    taken_at: Utc::now(),
                },
            );
        }
        Ok(())
    }

    async fn list_snapshots(&self, stream: &StreamId) -> Result<Vec<Snapshot>, StoreError> {
        Ok(self
            .lock()
            .snapshots
            .get(stream)
            .cloned()
            .into_iter()
            .collect())
    }

    async fn delete_snapshots(&self, category: &str) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let before = inner.snapshots.len();
        inner.snapshots.retain(|id, _| id.category() != category);
        Ok((before - inner.snapshots.len()) as u64)
    }
}

impl CheckpointStore for MemoryStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        validate_projection_name(name)?;
        Ok(self.lock().checkpoints.get(name).cloned())
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        cursor: FeedCursor,
        events_processed: u64,
    ) -> Result<(), StoreError> {
        validate_projection_name(name)?;
        self.lock().checkpoints.insert(
            name.to_owned(),
            Checkpoint {
                name: name.to_owned(),
                cursor,
                events_processed,
                updated_at: Utc::now(),
            },
        );
        Ok(())
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<bool, StoreError> {
        validate_projection_name(name)?;
        Ok(self.lock().checkpoints.remove(name).is_some())
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(self.lock().checkpoints.values().cloned().collect())
    }
}
