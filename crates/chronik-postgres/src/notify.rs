//! Wake-ups for live readers of the feed: `LISTEN` on a channel that writers `NOTIFY`
//! after their commit (never inside the append transaction: `pg_notify` there takes a
//! global lock at commit).

use chronik_store::StoreError;
use sqlx::postgres::PgListener;

use crate::PgEventStore;
use crate::error::backend;

/// The channel chronik's own tools notify after an append (`chronik append`) and listen
/// on (`chronik tail`); pass it to `notify_feed` after your commits to wake them.
pub const FEED_CHANNEL: &str = "chronik_feed";

/// A `LISTEN` on one channel, on a dedicated connection of the store's pool settings
/// ([`PgEventStore::listen`]).
///
/// Contract: a notification only says that the feed may have moved; it can be spurious
/// or missed (a writer that does not notify, a dropped connection), so a reader that
/// waits on it also polls. A lost connection is reconnected on the next
/// [`PgFeedListener::notified`].
pub struct PgFeedListener {
    listener: PgListener,
    channel: String,
}

impl std::fmt::Debug for PgFeedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFeedListener")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl PgFeedListener {
    /// The channel listened on.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Waits for the next notification on the channel.
    ///
    /// # Errors
    /// [`StoreError::Backend`] (retryable when the connection was lost: the next call
    /// reconnects and listens again).
    pub async fn notified(&mut self) -> Result<(), StoreError> {
        self.listener.recv().await.map_err(backend)?;
        Ok(())
    }
}

impl PgEventStore {
    /// Listens on `channel` (e.g. [`FEED_CHANNEL`]) on a connection of its own.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the connection or the `LISTEN` fails.
    pub async fn listen(&self, channel: &str) -> Result<PgFeedListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(backend)?;
        listener.listen(channel).await.map_err(backend)?;
        Ok(PgFeedListener {
            listener,
            channel: channel.to_owned(),
        })
    }
}
