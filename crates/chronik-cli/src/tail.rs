//! `tail`: the global feed, upcast where upcasters are registered, one event per line.

use std::io::{self, Write as _};
use std::sync::Arc;

use anyhow::Context as _;
use chronik_core::{FeedCursor, RecordedEvent, UpcasterRegistry};
use chronik_projections::{FollowOptions, PollingOnly, follow};
use chronik_store::{EventStore, FeedFilter, MAX_FEED_PAGE, Upcasting};
use futures::StreamExt as _;

/// What to print.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Print events strictly after this cursor.
    pub(crate) after: FeedCursor,
    /// Only these stored event types / stream categories (empty: all).
    pub(crate) filter: FeedFilter,
    /// Stop after this many events.
    pub(crate) limit: Option<u64>,
    /// Stop once caught up instead of waiting for new events.
    pub(crate) no_follow: bool,
    /// Print each event as one JSON object per line.
    pub(crate) json: bool,
}

/// Prints the feed of `store` after `options.after`, upcast through `registry`.
///
/// Follows live (adaptive polling) unless `no_follow`; stops after `limit` events.
pub(crate) async fn run<S: EventStore>(
    store: S,
    registry: Arc<UpcasterRegistry>,
    options: &Options,
) -> anyhow::Result<()> {
    let feed = Upcasting::new(store, registry);
    let limit = options.limit.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    if options.no_follow {
        let mut cursor = options.after;
        while printed < limit {
            let want = usize::try_from(limit - printed).unwrap_or(MAX_FEED_PAGE);
            let page = feed
                .read_feed(cursor, &options.filter, want.clamp(1, MAX_FEED_PAGE))
                .await
                .with_context(|| format!("reading the feed after {cursor}"))?;
            if page.events.is_empty() {
                break;
            }
            for event in &page.events {
                print(event, options.json)?;
                printed += 1;
            }
            cursor = page.next;
        }
        return Ok(());
    }
    let mut events = follow(
        &feed,
        options.after,
        options.filter.clone(),
        &PollingOnly,
        FollowOptions::default(),
    );
    while printed < limit {
        let Some(event) = events.next().await else {
            break;
        };
        print(&event.context("reading the feed")?, options.json)?;
        printed += 1;
    }
    Ok(())
}

/// `<cursor> <stream> v<version> <type> v<schema> <payload>`, or the event as one JSON line.
fn print(event: &RecordedEvent, json: bool) -> io::Result<()> {
    if json {
        let line = serde_json::to_string(event).map_err(io::Error::other)?;
        return writeln!(io::stdout(), "{line}");
    }
    writeln!(
        io::stdout(),
        "{} {} v{} {} v{} {}",
        event.cursor,
        event.stream_id,
        event.version,
        event.event_type,
        event.schema_version,
        event.payload
    )
}
