//! [`Interloper`]: a store that lets a competing writer in between a command's load and its
//! append, so that a test races a real concurrent write at the one moment that matters.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chronik_core::{ExpectedVersion, FeedCursor, NewEvent, StreamId, Version};
use chronik_store::{
    AppendResult, EventStore, EventStream, FeedFilter, FeedHead, FeedPage, PayloadStream,
    StoreError, StreamAppend,
};
use futures::future::BoxFuture;

type Write<S> = dyn Fn(S) -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync;

/// Forwards every call to the store it wraps, except that the first append through it
/// (single-stream [`EventStore::append`] or multi-stream [`EventStore::append_streams`])
/// first runs a competing write, given at construction, on the wrapped store, to its
/// commit. A command run through a [`chronik_store::Repository`] over it has loaded its
/// state by then, so its append meets a real conflict from the adapter (on PostgreSQL, a
/// committed transaction of another connection). Later appends are forwarded as they are.
///
/// It offers no session ([`EventStore::session`]), so a command's append always passes
/// through it.
pub struct Interloper<S> {
    inner: S,
    write: Arc<Write<S>>,
    fired: Arc<AtomicUsize>,
    appends: Arc<AtomicUsize>,
}

impl<S: Clone> Clone for Interloper<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            write: self.write.clone(),
            fired: self.fired.clone(),
            appends: self.appends.clone(),
        }
    }
}

impl<S> fmt::Debug for Interloper<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interloper")
            .field("fired", &self.fired.load(Ordering::SeqCst))
            .field("appends", &self.appends.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + Clone + 'static> Interloper<S> {
    /// Wraps `inner`; `write` is the competing write, run once on a clone of `inner` before
    /// the first append through the wrapper. Clones share whether it ran.
    pub fn new<F, Fut>(inner: S, write: F) -> Self
    where
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        Self {
            inner,
            write: Arc::new(move |s| Box::pin(write(s))),
            fired: Arc::default(),
            appends: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How many times the competing write ran (0 or 1).
    #[must_use]
    pub fn fired(&self) -> usize {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many appends (single- or multi-stream) came through the wrapper, not counting
    /// the competing write.
    #[must_use]
    pub fn appends(&self) -> usize {
        self.appends.load(Ordering::SeqCst)
    }

    /// Counts an append and, before the first, runs the competing write.
    async fn before_append(&self) -> Result<(), StoreError> {
        if self.appends.fetch_add(1, Ordering::SeqCst) == 0 {
            self.fired.fetch_add(1, Ordering::SeqCst);
            (self.write)(self.inner.clone()).await.map_err(|e| {
                StoreError::backend(format!("the interloper's own write failed: {e}"), false)
            })?;
        }
        Ok(())
    }
}

impl<S: EventStore + Clone + 'static> EventStore for Interloper<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.before_append().await?;
        self.inner.append(stream, expected, events).await
    }

    async fn append_streams(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, StoreError> {
        self.before_append().await?;
        self.inner.append_streams(appends).await
    }

    fn read_stream(&self, stream: &StreamId, from: Version) -> EventStream<'_> {
        self.inner.read_stream(stream, from)
    }

    fn read_payloads(&self, stream: &StreamId, from: Version) -> PayloadStream<'_> {
        self.inner.read_payloads(stream, from)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_feed(
        &self,
        after: FeedCursor,
        filter: &FeedFilter,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        self.inner.read_feed(after, filter, limit).await
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        self.inner.feed_head().await
    }

    async fn count_after(&self, after: FeedCursor) -> Result<u64, StoreError> {
        self.inner.count_after(after).await
    }
}
