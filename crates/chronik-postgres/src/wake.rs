//! Live wake-ups for projection runners on PostgreSQL (issue 15): a `LISTEN`-based
//! [`WakeSource`] for `chronik-projections`' runner, and the store's notification after
//! commit that feeds it.
//!
//! The notification is sent **after** the append's commit, on a connection of its own, never
//! inside the append's transaction: `pg_notify` in a transaction takes a global lock at
//! commit, which would serialize every writer's commits (see docs/ARCHITECTURE.md's
//! performance traps). The writer only marks that something committed (no round trip); one
//! task per store sends one `NOTIFY` for every burst of appends.
//!
//! Notifications are a hint, never the source of truth: they can be lost (a listener that is
//! reconnecting, a writer in another process that does not notify), so the runner keeps
//! polling as a fallback, and every (re)connection of the listener wakes its subscribers
//! once, so that whatever committed while it was not listening is read at once.

use std::sync::Arc;
use std::time::Duration;

use chronik_projections::{WakeSource, Wakeup};
use chronik_store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool};
use sqlx::{Connection as _, PgConnection};
use tokio::sync::{mpsc, watch};

use crate::PgEventStore;
use crate::error::backend;

/// How long a listener or notifier waits before reconnecting after its connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// A [`WakeSource`] that `LISTEN`s on one channel ([`PgEventStore::wake_source`]): give it
/// to [`ProjectionRunner::with_wake`](chronik_projections::ProjectionRunner::with_wake).
///
/// One background task holds the `LISTEN` connection for every subscription of this source
/// and its clones; it ends when the last of them is dropped. Each notification wakes every
/// subscriber; so does every (re)connection (notifications sent while it was not listening
/// are lost, so a subscriber must read after it). A connection that fails is re-opened
/// after a short pause, for as long as the source is used.
#[derive(Debug, Clone)]
pub struct PgWakeSource {
    wakes: watch::Receiver<u64>,
    channel: Arc<str>,
}

impl PgWakeSource {
    /// The channel listened on.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl WakeSource for PgWakeSource {
    fn subscribe(&self) -> Box<dyn Wakeup> {
        self.wakes.subscribe()
    }
}

impl PgEventStore {
    /// A `LISTEN`-based [`WakeSource`] on `channel` (e.g. [`FEED_CHANNEL`](crate::FEED_CHANNEL)),
    /// on a connection of its own with this store's pool settings. Writers must notify the
    /// channel after their commits: a store whose [`PgStoreConfig::notify_channel`] names it
    /// does so after every owned append and every committed [`PgStoreTransaction`]; other
    /// writers call [`notify_feed`](crate::notify_feed) after they commit.
    ///
    /// It connects once before returning, so that a wrong channel setup or an unreachable
    /// server fails here, with its cause.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for an empty channel; [`StoreError::Backend`] when the
    /// first connection or its `LISTEN` fails.
    ///
    /// [`PgStoreConfig::notify_channel`]: crate::PgStoreConfig::notify_channel
    /// [`PgStoreTransaction`]: crate::PgStoreTransaction
    pub async fn wake_source(&self, channel: &str) -> Result<PgWakeSource, StoreError> {
        if channel.is_empty() {
            return Err(StoreError::InvalidRequest(
                "a wake source needs a channel name".to_owned(),
            ));
        }
        let listener = listen(&self.pool, channel).await?;
        let (tx, wakes) = watch::channel(0u64);
        tokio::spawn(listen_loop(
            self.pool.clone(),
            channel.to_owned(),
            listener,
            tx,
        ));
        Ok(PgWakeSource {
            wakes,
            channel: channel.into(),
        })
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await.map_err(backend)?;
    listener.listen(channel).await.map_err(backend)?;
    Ok(listener)
}

/// Forwards notifications (and reconnections) to the subscribers until there are none.
async fn listen_loop(pool: PgPool, channel: String, first: PgListener, tx: watch::Sender<u64>) {
    let wake = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    let mut listener = Some(first);
    loop {
        let current = match listener.as_mut() {
            Some(l) => l,
            None => {
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    () = tx.closed() => return,
                }
                match listen(&pool, &channel).await {
                    Ok(l) => {
                        // Whatever was notified while nobody listened is lost: read now.
                        wake(&tx);
                        listener.insert(l)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, channel, "LISTEN connection failed; retrying");
                        continue;
                    }
                }
            }
        };
        tokio::select! {
            received = current.try_recv() => match received {
                Ok(Some(_)) => wake(&tx),
                // The connection was lost; the next `try_recv` reconnects and listens
                // again. What was notified meanwhile is lost: read now.
                Ok(None) => wake(&tx),
                Err(e) => {
                    tracing::debug!(error = %e, channel, "LISTEN connection failed; reconnecting");
                    listener = None;
                    wake(&tx);
                }
            },
            () = tx.closed() => return,
        }
    }
}

/// Sends one `NOTIFY` on the store's channel after every burst of commits, on a connection of
/// its own ([`PgStoreConfig::notify_channel`](crate::PgStoreConfig::notify_channel)).
#[derive(Debug)]
pub(crate) struct Notifier {
    pending: mpsc::Sender<()>,
}

impl Notifier {
    /// Starts the notifying task (call inside a Tokio runtime). It ends when the notifier is
    /// dropped with the last store clone holding it.
    pub(crate) fn start(options: PgConnectOptions, channel: String) -> Self {
        // One slot: commits while a NOTIFY is pending or in flight share the next one.
        let (pending, rx) = mpsc::channel(1);
        tokio::spawn(notify_loop(options, channel, rx));
        Self { pending }
    }

    /// Marks that something committed. Never waits and never fails: a lost notification
    /// only delays listeners until they poll.
    pub(crate) fn poke(&self) {
        let _ = self.pending.try_send(());
    }
}

async fn notify_loop(options: PgConnectOptions, channel: String, mut rx: mpsc::Receiver<()>) {
    let mut conn: Option<PgConnection> = None;
    while rx.recv().await.is_some() {
        if conn.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, channel, "cannot connect to notify; listeners will poll");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(&channel)
                .execute(&mut *c)
                .await
        {
            tracing::debug!(error = %e, channel, "NOTIFY failed; reconnecting");
            conn = None;
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}
