//! `tail`: the global feed, upcast where upcasters are registered, one event per line;
//! following it live (woken by `LISTEN`, polling as the fallback) through server restarts.

use std::io::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chronik_core::{FeedCursor, RecordedEvent, StreamId, UpcasterRegistry};
use chronik_postgres::{PgEventStore, PgFeedListener};
use chronik_store::{EventStore as _, FeedFilter, MAX_FEED_PAGE, StoreError, upcast_recorded};

use crate::backend::Interrupted;
use crate::interrupt::Interrupts;
use crate::table;

/// Where the tail begins.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Strictly after this cursor (`--after`; the start of the feed by default).
    After(FeedCursor),
    /// After the last visible event: only new events (`--from-end`).
    End,
    /// The last this many matching events, then new ones (`-n N`).
    Last(u64),
}

/// What to print.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Where to begin.
    pub(crate) start: Start,
    /// Only these stored event types / stream categories (empty: all).
    pub(crate) filter: FeedFilter,
    /// Only this stream's events.
    pub(crate) stream: Option<StreamId>,
    /// Stop after this many events.
    pub(crate) limit: Option<u64>,
    /// Stop once caught up instead of waiting for new events.
    pub(crate) no_follow: bool,
    /// Print each event as one JSON object per line.
    pub(crate) json: bool,
    /// `LISTEN` on this channel while following (`None`: poll only).
    pub(crate) listen: Option<String>,
    /// While following, how long to keep retrying a lost connection before giving up.
    pub(crate) retry_for: Duration,
    /// The binary's name, for the command that resumes.
    pub(crate) binary: String,
}

/// Shortest and longest pause between two reads of a quiet feed.
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);
/// First and longest pause between two attempts to reach a lost server.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Prints the feed of `store` from `options.start`, upcast through `registry`.
///
/// Follows live unless `no_follow`: woken by a notification on `options.listen` (writers
/// send one after their commit) or, without one, by polling every 50 ms to 1 s. A
/// retryable failure (the server restarted, the connection dropped) is retried with
/// backoff for up to `retry_for`; giving up names the cursor to resume after. Stops after
/// `limit` events.
///
/// Ctrl-C stops it at once (exit status 130), saying how many events it printed and the
/// cursor to resume after: it writes nothing, so there is nothing to clean up.
pub(crate) async fn run(
    store: PgEventStore,
    registry: Arc<UpcasterRegistry>,
    options: &Options,
) -> anyhow::Result<()> {
    let mut interrupts = Interrupts::listen().context("cannot listen for Ctrl-C")?;
    let mut at = At::default();
    let done = {
        let read = read(store, registry, options, &mut at);
        tokio::pin!(read);
        tokio::select! {
            result = &mut read => Some(result),
            true = interrupts.next() => None,
        }
    };
    if let Some(result) = done {
        return result;
    }
    let printed = crate::fmt::count(at.printed, "event");
    Err(Interrupted(match at.cursor {
        Some(cursor) => format!(
            "tail was stopped by Ctrl-C after {printed}: the last cursor is {cursor}; resume \
             with `{} tail --after {cursor}`",
            options.binary
        ),
        None => {
            format!("tail was stopped by Ctrl-C before it had found where to start ({printed})")
        }
    })
    .into())
}

/// How far a tail got: what Ctrl-C reports.
#[derive(Debug, Default)]
struct At {
    /// The cursor every event up to which was printed (or passed over); `None` until the
    /// start is found.
    cursor: Option<FeedCursor>,
    /// Events printed.
    printed: u64,
}

/// [`run`]'s work, recording in `at` how far it got.
async fn read(
    store: PgEventStore,
    registry: Arc<UpcasterRegistry>,
    options: &Options,
    at: &mut At,
) -> anyhow::Result<()> {
    let stream = options.stream.as_ref();
    let mut cursor = match options.start {
        Start::After(cursor) => cursor,
        Start::End => store
            .feed_head()
            .await
            .context("cannot read the end of the feed")?
            .last
            .unwrap_or(FeedCursor::START),
        Start::Last(n) => store
            .feed_start_for_last(&options.filter, stream, n)
            .await
            .with_context(|| format!("cannot find the last {n} events of the feed"))?,
    };
    at.cursor = Some(cursor);
    let follow = !options.no_follow;
    let mut listener = if follow {
        listen(&store, options.listen.as_deref()).await
    } else {
        None
    };
    // Read as stored and upcast one event at a time: one that cannot be upcast is printed as
    // stored, with a warning, instead of stopping the tail.
    let feed = store.clone();
    let limit = options.limit.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut idle = POLL_MIN;
    // Whether the "following ..." line was printed since the feed was last busy or lost.
    let mut announced = false;
    // The horizon holder last said to hold the feed back (said again only when another).
    let mut held_said: Option<String> = None;
    // Since when, and how, the store has been failing.
    let mut lost: Option<(Instant, Duration)> = None;
    // When a lost listener was last replaced (the pool may reconnect without a failed read).
    let mut listened_at = Instant::now();
    // The cursor of a stored row that does not decode at all (not even as stored), met in
    // the page being read: the events before it are then read one at a time, printed, and
    // it is left out with a warning naming it.
    let mut unreadable: Option<FeedCursor> = None;
    while printed < limit {
        let want = usize::try_from(limit - printed).unwrap_or(MAX_FEED_PAGE);
        let size = if unreadable.is_some() {
            1
        } else {
            want.clamp(1, MAX_FEED_PAGE)
        };
        let page = match feed.read_feed(cursor, &options.filter, size).await {
            Ok(page) => {
                if unreadable.is_some_and(|bad| page.next >= bad) {
                    unreadable = None;
                }
                page
            }
            Err(StoreError::Decode {
                stream: bad_stream,
                version,
                event_id,
                cursor: Some(bad),
                reason,
            }) => {
                if unreadable.is_none() && size > 1 {
                    // Print what comes before it first.
                    unreadable = Some(bad);
                    continue;
                }
                if stream.is_none_or(|s| *s == bad_stream) {
                    warn(&format!(
                        "warning: the event at cursor {bad} ({bad_stream} v{version}, event {event_id}) \
                         cannot be read even as stored, so it is left out: {reason}"
                    ));
                }
                unreadable = None;
                cursor = bad;
                at.cursor = Some(cursor);
                continue;
            }
            Err(e) if follow && e.is_retryable() => {
                // Said once per outage, not once per retry.
                let first = lost.is_none();
                let (since, pause) = *lost.get_or_insert((Instant::now(), RETRY_FIRST));
                if since.elapsed() >= options.retry_for {
                    return Err(e).context(format!(
                        "gave up after retrying for {}: the last cursor is {cursor}; resume \
                         with `{} tail --after {cursor}`",
                        table::age(since.elapsed().as_secs_f64()),
                        options.binary
                    ));
                }
                if first {
                    warn(&format!(
                        "cannot read the feed after {cursor} ({}); retrying in {}, then with \
                         backoff up to {} until it is back",
                        crate::chain(&anyhow::Error::new(e)),
                        table::age(pause.as_secs_f64()),
                        table::age(RETRY_MAX.as_secs_f64())
                    ));
                }
                tokio::time::sleep(pause).await;
                lost = Some((since, (pause * 2).min(RETRY_MAX)));
                listener = None;
                announced = false;
                continue;
            }
            Err(e) => {
                return Err(e).context(format!(
                    "cannot read the feed after {cursor}; resume with `{} tail --after {cursor}`",
                    options.binary
                ));
            }
        };
        if let Some((since, _)) = lost.take() {
            warn(&format!(
                "reconnected after {}; resuming after {cursor}",
                table::age(since.elapsed().as_secs_f64())
            ));
            listener = listen(&store, options.listen.as_deref()).await;
            listened_at = Instant::now();
        }
        if page.events.is_empty() {
            // Caught up with what is visible, but committed events may be held back by an
            // open transaction: say so rather than stop or wait as if there were none.
            if let Some(why) = held_back(&store).await
                && held_said.as_ref() != Some(&why)
            {
                warn(&format!(
                    "warning: {why}; {}",
                    if follow {
                        "they appear here once it ends"
                    } else {
                        "`--no-follow` stops without them"
                    }
                ));
                held_said = Some(why);
            }
            if !follow {
                break;
            }
            if listener.is_none() && listened_at.elapsed() >= RETRY_MAX {
                listener = listen(&store, options.listen.as_deref()).await;
                listened_at = Instant::now();
            }
            if !announced {
                let how = listener.as_ref().map_or_else(
                    || "polling".to_owned(),
                    |l| format!("woken by NOTIFY {}, polling", l.channel()),
                );
                warn(&format!(
                    "following the feed after {cursor} ({how} at most every {}): waiting for new events",
                    table::age(POLL_MAX.as_secs_f64())
                ));
                announced = true;
            }
            wait(&mut listener, idle).await;
            idle = (idle * 2).min(POLL_MAX);
            continue;
        }
        idle = POLL_MIN;
        announced = false;
        for event in &page.events {
            if stream.is_some_and(|s| *s != event.stream_id) {
                continue;
            }
            show(&registry, event, options.json)?;
            printed += 1;
            at.printed = printed;
            at.cursor = Some(event.cursor);
            if printed >= limit {
                break;
            }
        }
        cursor = page.next;
        at.cursor = Some(cursor);
    }
    Ok(())
}

/// When events are committed but not visible in the feed yet: which transaction holds them
/// back (the horizon's blocker) and how to end it. `None` when nothing is held back or it
/// cannot be read (the tail goes on either way).
async fn held_back(store: &PgEventStore) -> Option<String> {
    let head = store.feed_head().await.ok()?.last;
    let newest = store.newest_committed().await.ok()??;
    if Some(newest) <= head {
        return None;
    }
    let holders = store.horizon_holders().await.ok()?;
    let who = holders.iter().find(|h| h.blocker).map_or_else(
        || "a transaction that has just ended".to_owned(),
        chronik_postgres::HorizonHolder::describe,
    );
    Some(format!(
        "events committed up to {newest} are not visible to any feed reader yet: the feed is held back by {who}"
    ))
}

/// A listener on `channel`, or `None` (polling only) when there is none or it fails.
async fn listen(store: &PgEventStore, channel: Option<&str>) -> Option<PgFeedListener> {
    let channel = channel?;
    match store.listen(channel).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, channel, "cannot LISTEN; polling only");
            None
        }
    }
}

/// Waits `pause`, or less when a notification arrives; a failed listener is dropped
/// (polling carries on; the next reconnection listens again).
async fn wait(listener: &mut Option<PgFeedListener>, pause: Duration) {
    let Some(l) = listener.as_mut() else {
        tokio::time::sleep(pause).await;
        return;
    };
    let woken: Option<Result<(), StoreError>> = tokio::select! {
        () = tokio::time::sleep(pause) => None,
        r = l.notified() => Some(r),
    };
    if let Some(Err(e)) = woken {
        tracing::debug!(error = %e, "lost the LISTEN connection; polling only");
        *listener = None;
    }
}

/// A line on stderr, best effort (a closed stderr must not stop the tail).
fn warn(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// Prints `event` upcast through `registry`; one that cannot be upcast is printed as
/// stored, after a warning on stderr that names its cursor (to resume after it) and why.
fn show(registry: &UpcasterRegistry, event: &RecordedEvent, json: bool) -> io::Result<()> {
    if !registry.needs_upcast(event.event_type.as_str(), event.schema_version) {
        return print(event, json);
    }
    match upcast_recorded(registry, event.clone()) {
        Ok(upcast) => print(&upcast, json),
        Err(e) => {
            // The line names the event already: the reason once, not the whole error.
            let why = match &e {
                StoreError::Decode { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            warn(&format!(
                "warning: the event at cursor {} ({} v{}, {} v{}, event {}) cannot be upcast, so it is printed as stored: {why}",
                event.cursor,
                event.stream_id,
                event.version,
                event.event_type,
                event.schema_version,
                event.event_id
            ));
            print(event, json)
        }
    }
}

/// `<cursor> <stream> v<version> <type> v<schema> <payload>`, or the event as one JSON line.
fn print(event: &RecordedEvent, json: bool) -> io::Result<()> {
    if json {
        return writeln!(io::stdout(), "{}", table::event_json(event)?);
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
