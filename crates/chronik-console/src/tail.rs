//! `GET /api/tail`: the feed as server-sent events, upcast where upcasters are registered.
//!
//! Each event is an SSE message of type `event` whose `id` is its feed cursor and whose data
//! is the event as the API shows it. The feed is polled every [`POLL`] once caught up; while
//! the database cannot be reached a `down` message says so (and the tail retries), and an
//! `up` message follows when it is back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as Extract};
use axum::response::sse::{Event, KeepAlive, Sse};
use chronik_core::{FeedCursor, RecordedEvent, StreamId};
use chronik_store::{EventStore as _, FeedFilter};
use futures::Stream;
use serde::Deserialize;

use crate::api;
use crate::error::ApiError;
use crate::state::State;
use crate::view::EventView;

/// How often a caught-up tail reads the feed again.
pub(crate) const POLL: Duration = Duration::from_millis(500);
/// Events a tail starts with when neither `after` nor `from_end` is given.
const START_WITH_LAST: u64 = 20;
/// Events read per feed page.
const PAGE: usize = 200;

/// Parameters of the tail (the page takes the same, to fill its form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailParams {
    /// Start after this cursor (`<transaction>:<position>`).
    pub(crate) after: Option<String>,
    /// `true`: only events that become visible from now on.
    pub(crate) from_end: Option<String>,
    /// Only streams of this category.
    pub(crate) category: Option<String>,
    /// Only events of this stored type.
    #[serde(rename = "type")]
    pub(crate) event_type: Option<String>,
    /// Only this stream.
    pub(crate) stream: Option<String>,
}

/// Where a tail starts. Found when the request comes, or, while the database is down, by the
/// stream itself once it is back: such a tail answers with a `down` message rather than an
/// error status, which would stop a page's `EventSource` for good.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// After this cursor.
    After(FeedCursor),
    /// After the feed head: only events that become visible from then on.
    End,
    /// With the last [`START_WITH_LAST`] events of the filter.
    Last,
}

struct Tail {
    state: State,
    cursor: FeedCursor,
    /// Where to start, until it is found (then `cursor` holds it).
    start: Option<Start>,
    filter: FeedFilter,
    stream: Option<StreamId>,
    buffer: VecDeque<RecordedEvent>,
    first: bool,
    down: bool,
}

pub(crate) async fn sse(
    Extract(state): Extract<State>,
    query: Result<Query<TailParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let p = api::params(query)?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let stream = nonempty(p.stream).map(|s| api::stream_id(&s)).transpose()?;
    let from_end = match nonempty(p.from_end).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "from_end must be true or false, got {other:?}"
            )));
        }
    };
    let after = nonempty(p.after)
        .map(|a| {
            a.parse::<FeedCursor>()
                .map_err(|e| ApiError::BadRequest(format!("bad cursor {a:?}: {e}")))
        })
        .transpose()?;
    let categories = match (&stream, nonempty(p.category)) {
        (Some(s), _) => vec![s.category().to_owned()],
        (None, Some(c)) => vec![c],
        (None, None) => Vec::new(),
    };
    let filter = FeedFilter {
        event_types: nonempty(p.event_type).into_iter().collect(),
        categories,
    };
    let start = match (after, from_end) {
        (Some(cursor), _) => Start::After(cursor),
        (None, true) => Start::End,
        (None, false) => Start::Last,
    };
    let mut tail = Tail {
        state,
        cursor: FeedCursor::START,
        start: Some(start),
        filter,
        stream,
        buffer: VecDeque::new(),
        first: true,
        down: false,
    };
    // Found now when the database answers, so that "from the end" means from this request;
    // otherwise the stream keeps trying (its first message says the database is down).
    if let Ok(cursor) = start_cursor(&tail, start).await {
        tail.cursor = cursor;
        tail.start = None;
    }
    // Ends when the server shuts down: a graceful shutdown waits for every response.
    let stopped = tail.state.stopped();
    let events = futures::StreamExt::take_until(futures::stream::unfold(tail, next), stopped);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

async fn next(mut tail: Tail) -> Option<(Result<Event, Infallible>, Tail)> {
    loop {
        if let Some(e) = tail.buffer.pop_front() {
            if tail.stream.as_ref().is_some_and(|s| *s != e.stream_id) {
                continue;
            }
            let id = e.cursor.to_string();
            let view = EventView::new(&tail.state, e);
            let data = serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned());
            return Some((Ok(Event::default().event("event").id(id).data(data)), tail));
        }
        if !tail.first {
            tokio::time::sleep(POLL).await;
        }
        tail.first = false;
        if let Some(start) = tail.start {
            match start_cursor(&tail, start).await {
                Ok(cursor) => {
                    tail.cursor = cursor;
                    tail.start = None;
                }
                Err(e) => return Some((down(&mut tail, &e), tail)),
            }
        }
        match tail
            .state
            .store
            .read_feed(tail.cursor, &tail.filter, PAGE)
            .await
        {
            Ok(page) => {
                tail.cursor = page.next;
                tail.buffer.extend(page.events);
                if tail.down {
                    tail.down = false;
                    return Some((Ok(Event::default().event("up").data("ok")), tail));
                }
            }
            Err(e) => return Some((down(&mut tail, &format!("cannot read the feed: {e}")), tail)),
        }
    }
}

/// The cursor a tail starts after.
async fn start_cursor(tail: &Tail, start: Start) -> Result<FeedCursor, String> {
    match start {
        Start::After(cursor) => Ok(cursor),
        Start::End => tail
            .state
            .store
            .feed_head()
            .await
            .map(|head| head.last.unwrap_or(FeedCursor::START))
            .map_err(|e| format!("cannot read the feed head: {e}")),
        Start::Last => tail
            .state
            .store
            .feed_start_for_last(&tail.filter, tail.stream.as_ref(), START_WITH_LAST)
            .await
            .map_err(|e| format!("cannot find where the tail starts: {e}")),
    }
}

/// The `down` message saying `why`; the next `up` message says the database is back.
fn down(tail: &mut Tail, why: &str) -> Result<Event, Infallible> {
    tail.down = true;
    Ok(Event::default()
        .event("down")
        .data(why.replace(['\n', '\r'], " ")))
}
