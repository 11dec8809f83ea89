use std::collections::VecDeque;
use std::time::Duration;

use chronik_core::{FeedCursor, RecordedEvent};
use chronik_store::{EventStore, FeedFilter, StoreError};
use futures::stream::{BoxStream, StreamExt};

use crate::wake::{WakeSource, Wakeup};

/// Options of [`follow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowOptions {
    /// Events read per page (1 to 10 000; 500).
    pub page_size: usize,
    /// Shortest idle poll interval (50 ms), doubling while idle up to `poll_max`.
    pub poll_min: Duration,
    /// Longest idle poll interval (1 s).
    pub poll_max: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            page_size: 500,
            poll_min: Duration::from_millis(50),
            poll_max: Duration::from_secs(1),
        }
    }
}

struct State<'a, S> {
    store: &'a S,
    cursor: FeedCursor,
    filter: FeedFilter,
    options: FollowOptions,
    buffer: VecDeque<RecordedEvent>,
    wake: Box<dyn Wakeup>,
    idle: Duration,
    failed: bool,
}

/// Follows the feed live (`chronik tail`): every event matching `filter` strictly after
/// `after`, in feed order, then each new one as it becomes visible, forever. Woken by
/// `wake` (use [`crate::PollingOnly`] for none) with adaptive polling as the fallback, so
/// nothing is missed when a wake-up is lost. Events are as stored (not upcast).
///
/// The stream ends after yielding the first store error; resume with a new `follow`
/// after the last cursor received.
pub fn follow<'a, S: EventStore>(
    store: &'a S,
    after: FeedCursor,
    filter: FeedFilter,
    wake: &dyn WakeSource,
    options: FollowOptions,
) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
    let state = State {
        store,
        cursor: after,
        filter,
        idle: options.poll_min,
        options,
        buffer: VecDeque::new(),
        wake: wake.subscribe(),
        failed: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if let Some(e) = st.buffer.pop_front() {
                return Some((Ok(e), st));
            }
            let limit = st.options.page_size.clamp(1, chronik_store::MAX_FEED_PAGE);
            match st.store.read_feed(st.cursor, &st.filter, limit).await {
                Ok(page) if page.events.is_empty() => {
                    tokio::select! {
                        () = tokio::time::sleep(st.idle) => {}
                        () = st.wake.notified() => {}
                    }
                    st.idle = (st.idle * 2).min(st.options.poll_max);
                }
                Ok(page) => {
                    st.idle = st.options.poll_min;
                    st.cursor = page.next;
                    st.buffer.extend(page.events);
                }
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
        }
    })
    .boxed()
}
