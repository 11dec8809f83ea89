//! The batch loop: one page of the feed applied under the checkpoint row lock, in one
//! transaction.

use std::collections::HashSet;
use std::sync::Arc;

use chronik_core::{EventId, FeedCursor, RecordedEvent, UpcasterRegistry};
use chronik_projections::{EventRef, Partitions, ProjectionError};
use chronik_store::{EventStore, FeedFilter, StoreError, upcast_recorded};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::backend;
use crate::projection::handler::{PgProjection, PgTransaction, handle_guarded};
use crate::projection::layout;
use crate::projection::sql::ProjectionSql;
use crate::row::to_u64;
use crate::standby::PgStandby;
use crate::store::PgEventStore;
use chronik_projections::HandlerError;

/// What one batch did.
#[derive(Debug)]
pub(crate) enum Batch {
    /// Committed: the checkpoint moved.
    Committed {
        cursor: FeedCursor,
        processed: u64,
        /// Events matching the filter (handled or parked).
        events: usize,
        /// Feed events read.
        scanned: usize,
        full: bool,
        parked: u64,
        /// With [`Engine::tally`]: the events handled, by the partition of that layout
        /// their stream belongs to (empty otherwise).
        by_partition: Vec<u64>,
    },
    /// Nothing to do; nothing written.
    Idle { cursor: FeedCursor, processed: u64 },
    /// The handler failed on the event at `index` of the page; everything rolled back.
    Failed {
        index: usize,
        event: Box<RecordedEvent>,
        failure: HandlerError,
    },
}

/// Records how one batch ended on its span (`chronik.projection.batch`): the checkpoint it
/// moved to and the events it applied, or the event it failed on (stream, version, cursor;
/// never the payload or the handler's message, which may quote it).
fn record_batch(span: &tracing::Span, batch: Result<&Batch, &StoreError>) {
    match batch {
        Ok(Batch::Committed {
            cursor,
            processed,
            events,
            ..
        }) => {
            span.record("outcome", "committed");
            span.record("to", tracing::field::display(cursor));
            span.record("events", *events);
            span.record("processed", *processed);
        }
        Ok(Batch::Idle { cursor, processed }) => {
            span.record("outcome", "idle");
            span.record("to", tracing::field::display(cursor));
            span.record("events", 0);
            span.record("processed", *processed);
        }
        Ok(Batch::Failed { event, .. }) => {
            span.record("outcome", "handler_failed");
            span.record("failed_stream", tracing::field::display(&event.stream_id));
            span.record("failed_version", event.version.get());
            span.record("failed_cursor", tracing::field::display(event.cursor));
        }
        Err(e) => {
            span.record("outcome", "failed");
            span.record("error_kind", crate::spans::kind(e));
        }
    }
}

/// Applies batches of one projection under its checkpoint row lock.
#[derive(Debug)]
pub(crate) struct Engine<P> {
    /// Checkpoint and lock name (the projection's, or its shadow's during a rebuild).
    pub(crate) name: String,
    /// Read every event and filter here (exact progress for rebuilds).
    pub(crate) scan_all: bool,
    pub(crate) store: PgEventStore,
    pub(crate) sql: Arc<ProjectionSql>,
    pub(crate) projection: Arc<P>,
    filter: FeedFilter,
    upcasters: Option<Arc<UpcasterRegistry>>,
    /// Events to pass over without handling (a rebuild honours the park decisions the
    /// runner does; see [`crate::park_event`]).
    pub(crate) skip: HashSet<EventId>,
    /// The partition applied (index, count): only its streams' events are read. `None`:
    /// the whole feed, under the projection's own checkpoint.
    pub(crate) partition: Option<(u32, Partitions)>,
    /// Whether a missing checkpoint is created only after checking the stored layout
    /// (runners do; a rebuild writes the layout itself).
    pub(crate) check_layout: bool,
    /// Where the feed is read: a hot standby, or the primary (`None`).
    pub(crate) standby: Option<PgStandby>,
    /// Counts the handled events of each batch by their partition of this layout
    /// ([`Batch::Committed`]'s `by_partition`): a rebuild into partitions sets it, so that
    /// each partition's checkpoint starts with its own count.
    pub(crate) tally: Option<Partitions>,
}

/// Locks `name`'s checkpoint row in `tx` (`FOR UPDATE`) and returns its cursor, `None`
/// when the projection has no checkpoint.
pub(crate) async fn locked_checkpoint(
    tx: &mut sqlx::PgConnection,
    sql: &ProjectionSql,
    name: &str,
) -> Result<Option<FeedCursor>, ProjectionError> {
    let row = sqlx::query(sql.lock_checkpoint.clone())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(row
        .map(|r| -> Result<FeedCursor, StoreError> {
            cursor_of(
                r.try_get(0).map_err(backend)?,
                r.try_get(1).map_err(backend)?,
            )
        })
        .transpose()?)
}

pub(crate) fn cursor_of(tx: i64, pos: i64) -> Result<FeedCursor, StoreError> {
    Ok(FeedCursor::new(
        to_u64(tx, "checkpoint transaction")?,
        to_u64(pos, "checkpoint position")?,
    )?)
}

pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<P: PgProjection> Engine<P> {
    pub(crate) fn new(
        store: &PgEventStore,
        projection: Arc<P>,
        upcasters: Option<Arc<UpcasterRegistry>>,
    ) -> Self {
        Self {
            name: projection.name().to_owned(),
            scan_all: false,
            sql: Arc::new(ProjectionSql::new(store.schema())),
            store: store.clone(),
            filter: projection.filter(),
            projection,
            upcasters,
            skip: HashSet::new(),
            partition: None,
            check_layout: false,
            standby: None,
            tally: None,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Locks the checkpoint row in `tx` (creating it at the start if missing).
    pub(crate) async fn lock_checkpoint(
        &self,
        conn: &mut PgConnection,
    ) -> Result<(FeedCursor, u64), StoreError> {
        for _ in 0..2 {
            let row = sqlx::query(self.sql.lock_checkpoint.clone())
                .bind(self.name())
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
            if let Some(row) = row {
                let cursor = cursor_of(
                    row.try_get(0).map_err(backend)?,
                    row.try_get(1).map_err(backend)?,
                )?;
                let processed = to_u64(row.try_get(2).map_err(backend)?, "events processed")?;
                return Ok((cursor, processed));
            }
            if self.check_layout {
                let wanted = self.partition.map_or(Partitions::ONE, |(_, n)| n);
                let base = self.projection.name();
                layout::check(conn, &self.sql, self.store.schema(), base, wanted)
                    .await
                    .map_err(|e| match e {
                        ProjectionError::Store(e) => e,
                        other => StoreError::InvalidRequest(other.to_string()),
                    })?;
            }
            sqlx::query(self.sql.create_checkpoint.clone())
                .bind(self.name())
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        Err(StoreError::backend(
            "projection checkpoint row vanished while being created",
            true,
        ))
    }

    /// One batch of at most `limit` events in one transaction. With `retrying`, the first
    /// event is skipped when a park decision is recorded for it.
    pub(crate) async fn batch(&self, limit: usize, retrying: bool) -> Result<Batch, StoreError> {
        let mut tx = self.store.pool().begin().await.map_err(backend)?;
        let outcome = self.apply_page(&mut tx, limit, retrying).await?;
        match &outcome {
            Batch::Committed { .. } => tx.commit().await.map_err(backend)?,
            // Dropping `tx` would roll back too; say it explicitly when it is still usable.
            Batch::Idle { .. } => tx.rollback().await.map_err(backend)?,
            Batch::Failed { .. } => drop(tx),
        }
        Ok(outcome)
    }

    /// Applies one page inside `tx` and moves the checkpoint in it, without committing.
    /// `Batch::Committed` then means "ready to commit".
    pub(crate) async fn apply_page(
        &self,
        tx: &mut PgTransaction,
        limit: usize,
        retrying: bool,
    ) -> Result<Batch, StoreError> {
        let span = tracing::info_span!(
            "chronik.projection.batch",
            projection = %self.name,
            engine = "postgres",
            limit,
            from = tracing::field::Empty,
            to = tracing::field::Empty,
            events = tracing::field::Empty,
            processed = tracing::field::Empty,
            outcome = tracing::field::Empty,
            failed_stream = tracing::field::Empty,
            failed_version = tracing::field::Empty,
            failed_cursor = tracing::field::Empty,
            error_kind = tracing::field::Empty,
        );
        let batch = tracing::Instrument::instrument(
            self.apply_page_inner(tx, limit, retrying),
            span.clone(),
        )
        .await;
        record_batch(&span, batch.as_ref());
        batch
    }

    /// [`Engine::apply_page`] without its span.
    async fn apply_page_inner(
        &self,
        tx: &mut PgTransaction,
        limit: usize,
        retrying: bool,
    ) -> Result<Batch, StoreError> {
        let (start, processed_before) = self.lock_checkpoint(tx).await?;
        tracing::Span::current().record("from", tracing::field::display(start));
        let filtered = self.filter != FeedFilter::all() || self.partition.is_some();
        let read_filter = if self.scan_all {
            FeedFilter::all()
        } else {
            self.filter.clone()
        };
        // With a filter (or a partition), a short page may move the checkpoint to the head
        // read *before* it (or in the same snapshot, on a standby): every later commit lands
        // after that head.
        let want_head = filtered && !self.scan_all;
        let (head, page) = match self.partition {
            Some((index, count)) if !self.scan_all => {
                // Only the cursor: `feed_head` also counts every visible event, on every
                // batch of a filtered runner or a partition.
                let head = if want_head {
                    self.store.feed_last().await?
                } else {
                    None
                };
                let page = self
                    .store
                    .read_feed_partition(start, &read_filter, (index, count.get()), limit)
                    .await?;
                (head, page)
            }
            _ => {
                self.read_page(start, &read_filter, limit, want_head)
                    .await?
            }
        };
        let full = page.events.len() == limit;
        let scanned = page.events.len();
        let mut events = 0;
        let mut cursor = start;
        let mut processed = processed_before;
        let mut parked = 0;
        let mut by_partition = vec![0; self.tally.map_or(0, |n| n.get() as usize)];
        for (index, raw) in page.events.into_iter().enumerate() {
            if self.scan_all && !self.filter.matches(&raw) {
                cursor = raw.cursor;
                continue;
            }
            events += 1;
            if self.skip.contains(&raw.event_id) {
                EventRef::from(&raw).warn_passed_over(self.projection.name());
                parked += 1;
                cursor = raw.cursor;
                continue;
            }
            if retrying && index == 0 {
                // A partition honours decisions recorded for itself or for its projection
                // (which outlive a change of the number of partitions).
                let names = [self.name.clone(), self.projection.name().to_owned()];
                let is_parked: bool = sqlx::query_scalar(self.sql.is_parked_any.clone())
                    .bind(&names[..])
                    .bind(raw.event_id.as_uuid())
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(backend)?;
                if is_parked {
                    EventRef::from(&raw).warn_passed_over(self.projection.name());
                    parked += 1;
                    cursor = raw.cursor;
                    continue;
                }
            }
            let event = match &self.upcasters {
                Some(r) => match upcast_recorded(r, raw.clone()) {
                    Ok(e) => e,
                    Err(e) => {
                        return Ok(Batch::Failed {
                            index,
                            event: Box::new(raw),
                            failure: upcast_failure(&e),
                        });
                    }
                },
                None => raw,
            };
            if let Err(failure) = handle_guarded(&*self.projection, tx, &event).await {
                return Ok(Batch::Failed {
                    index,
                    event: Box::new(event),
                    failure,
                });
            }
            processed += 1;
            if let Some(n) = self.tally {
                by_partition[n.of(event.stream_id.as_str()) as usize] += 1;
            }
            cursor = event.cursor;
        }
        if !full
            && let Some(h) = head
            && h > cursor
        {
            cursor = h;
        }
        if cursor == start {
            return Ok(Batch::Idle {
                cursor,
                processed: processed_before,
            });
        }
        self.set_checkpoint(tx, &self.name, cursor, processed)
            .await?;
        Ok(Batch::Committed {
            cursor,
            processed,
            events,
            scanned,
            full,
            parked,
            by_partition,
        })
    }

    /// The page after `start` and, with `want_head`, the feed's head read before it (or in
    /// the same snapshot, on a standby).
    async fn read_page(
        &self,
        start: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
        want_head: bool,
    ) -> Result<(Option<FeedCursor>, chronik_store::FeedPage), StoreError> {
        if let Some(standby) = &self.standby {
            return standby
                .read_page(&self.store, start, filter, limit, want_head)
                .await;
        }
        let head = if want_head {
            self.store.feed_last().await?
        } else {
            None
        };
        Ok((head, self.store.read_feed(start, filter, limit).await?))
    }

    /// Writes a checkpoint row inside `conn`'s transaction.
    pub(crate) async fn set_checkpoint(
        &self,
        conn: &mut PgConnection,
        name: &str,
        cursor: FeedCursor,
        processed: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql.set_checkpoint.clone())
            .bind(name)
            .bind(cursor.transaction_i64())
            .bind(cursor.position_i64())
            .bind(as_i64(processed))
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// The failure of an event that does not upcast, for an error that already names the
/// event and its cursor ([`ProjectionError::Handler`], the runner's last error): the
/// reason only, not the event a second time.
pub(crate) fn upcast_failure(e: &StoreError) -> HandlerError {
    match e {
        StoreError::Decode { reason, .. } => {
            HandlerError::new(format!("it does not upcast: {reason}"))
        }
        other => HandlerError::new(other.to_string()),
    }
}

/// Parses a uuid column into an event id.
pub(crate) fn event_id(u: Uuid) -> Result<EventId, StoreError> {
    EventId::new(u).map_err(|e| StoreError::backend(format!("stored event id: {e}"), false))
}
