use std::fmt;

use async_trait::async_trait;
use tokio::sync::watch;

/// One subscriber's stream of "the feed may have moved" signals.
///
/// Contract: `notified` may resolve spuriously and may miss signals; the runner polls as a
/// fallback, so a lost wake-up only delays an event, it never loses one.
#[async_trait]
pub trait Wakeup: Send + Sync {
    /// Resolves when new events may have committed (or never, if the source has gone).
    async fn notified(&mut self);
}

/// A source of live wake-ups, subscribed once per projection task.
///
/// Implementations: a `tokio::sync::watch::Receiver` (such as `MemoryStore::subscribe()`),
/// [`PollingOnly`], or a PostgreSQL `LISTEN` on a channel that writers `NOTIFY` *after*
/// their commit (never inside the append transaction).
pub trait WakeSource: Send + Sync + fmt::Debug {
    /// A new, independent subscription.
    fn subscribe(&self) -> Box<dyn Wakeup>;
}

#[derive(Debug)]
struct WatchWakeup<T>(watch::Receiver<T>);

#[async_trait]
impl<T: Send + Sync> Wakeup for WatchWakeup<T> {
    async fn notified(&mut self) {
        if self.0.changed().await.is_err() {
            // The sender is gone: nothing will wake us again; polling takes over.
            std::future::pending::<()>().await;
        }
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> WakeSource for watch::Receiver<T> {
    fn subscribe(&self) -> Box<dyn Wakeup> {
        let mut rx = self.clone();
        rx.mark_unchanged();
        Box::new(WatchWakeup(rx))
    }
}

/// No live signal: the runner relies on adaptive polling alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct PollingOnly;

#[derive(Debug)]
struct Never;

#[async_trait]
impl Wakeup for Never {
    async fn notified(&mut self) {
        std::future::pending::<()>().await;
    }
}

impl WakeSource for PollingOnly {
    fn subscribe(&self) -> Box<dyn Wakeup> {
        Box::new(Never)
    }
}
