use std::sync::Arc;
use std::time::{Duration, Instant};

use chronik_core::{FeedCursor, UpcasterRegistry};
use chronik_store::{
    CheckpointStore, EventStore, FeedFilter, MAX_FEED_PAGE, upcast_recorded,
    validate_projection_name,
};

use crate::error::ProjectionError;
use crate::projection::{HandlerError, Projection};
use crate::status::EventRef;

/// Tuning of [`rebuild`].
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// Events read per batch (1 to 10 000; `0` means 1 000).
    pub batch_size: usize,
    /// Upcasts events before the handler sees them.
    pub upcasters: Option<Arc<UpcasterRegistry>>,
}

/// Progress of a rebuild, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildProgress {
    /// Feed events examined so far (matching or not).
    pub scanned: u64,
    /// Visible feed events when the rebuild started: the target of `scanned`. Events
    /// appended during the rebuild are replayed too, so `scanned` may end above it.
    pub total: u64,
    /// Events handed to the projection so far.
    pub handled: u64,
    /// Checkpoint reached.
    pub cursor: FeedCursor,
    /// Time since the rebuild started.
    pub elapsed: Duration,
}

impl RebuildProgress {
    /// The progress of a rebuild that starts with `total` visible feed events: nothing
    /// scanned or handled, at the start of the feed. Every engine's rebuild starts from it.
    #[must_use]
    pub fn start(total: u64) -> Self {
        Self {
            scanned: 0,
            total,
            handled: 0,
            cursor: FeedCursor::START,
            elapsed: Duration::ZERO,
        }
    }

    /// Events scanned per second so far.
    #[must_use]
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let scanned = self.scanned as f64;
        if secs > 0.0 { scanned / secs } else { 0.0 }
    }

    /// Estimated time left at the current rate, when it can be estimated.
    #[must_use]
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        #[allow(clippy::cast_precision_loss)]
        let left = self.total.saturating_sub(self.scanned) as f64;
        (rate > 0.0).then(|| Duration::from_secs_f64(left / rate))
    }
}

/// Rebuilds `projection` from scratch: deletes its checkpoint, clears its read model, then
/// replays the whole feed up to the head (saving the checkpoint after every batch),
/// calling `progress` after each batch. Returns the final progress.
///
/// Contract: the projection must not be running anywhere while this runs (stop its
/// runner; the PostgreSQL runner's advisory lock enforces it there). The checkpoint is
/// deleted *before* the read model is cleared, so a crash mid-rebuild restarts from the
/// beginning rather than resuming onto an empty read model. A handler error stops the
/// rebuild with [`ProjectionError::Handler`]; the checkpoint then marks how far it got and
/// a runner started afterwards resumes (and retries) from there.
///
/// # Errors
/// Store failures, [`ProjectionError::Clear`], [`ProjectionError::Handler`].
pub async fn rebuild<S: EventStore + CheckpointStore>(
    store: &S,
    projection: &dyn Projection,
    options: &RebuildOptions,
    progress: &mut (dyn FnMut(&RebuildProgress) + Send),
) -> Result<RebuildProgress, ProjectionError> {
    let name = projection.name();
    validate_projection_name(name)?;
    let batch = match options.batch_size {
        0 => 1_000,
        n => n.min(MAX_FEED_PAGE),
    };
    let started = Instant::now();
    store.delete_checkpoint(name).await?;
    projection
        .clear()
        .await
        .map_err(|source| ProjectionError::Clear {
            projection: name.to_owned(),
            source,
        })?;
    let filter = projection.filter();
    let head = store.feed_head().await?;
    let mut p = RebuildProgress::start(head.visible_events);
    progress(&p);
    loop {
        // Read everything and filter here: `scanned` is then exact for the progress bar.
        let page = store.read_feed(p.cursor, &FeedFilter::all(), batch).await?;
        if page.events.is_empty() {
            break;
        }
        for raw in page.events {
            p.scanned += 1;
            let at = raw.cursor;
            if filter.matches(&raw) {
                let event_ref = EventRef::from(&raw);
                let result = match &options.upcasters {
                    Some(r) => {
                        upcast_recorded(r, raw).map_err(|e| HandlerError::new(e.to_string()))
                    }
                    None => Ok(raw),
                };
                let result = match result {
                    Ok(event) => HandlerError::guard(projection, &event).await,
                    Err(e) => Err(e),
                };
                if let Err(source) = result {
                    if p.cursor != FeedCursor::START
                        && HandlerError::guard_flush(projection).await.is_ok()
                    {
                        store.save_checkpoint(name, p.cursor, p.handled).await?;
                    }
                    return Err(ProjectionError::Handler {
                        projection: name.to_owned(),
                        event: Box::new(event_ref),
                        source,
                    });
                }
                p.handled += 1;
            }
            p.cursor = at;
        }
        HandlerError::guard_flush(projection)
            .await
            .map_err(|source| ProjectionError::Flush {
                projection: name.to_owned(),
                source,
            })?;
        store.save_checkpoint(name, p.cursor, p.handled).await?;
        p.elapsed = started.elapsed();
        progress(&p);
    }
    p.elapsed = started.elapsed();
    Ok(p)
}
