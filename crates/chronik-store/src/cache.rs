//! The optional in-process cache of aggregate states that [`crate::Repository::with_cache`]
//! turns on: the state each command leaves behind, so that the next command on the same
//! stream decides without reading it again.
//!
//! It is only ever a guess: a command that decides on a cached state appends with the cached
//! version as the exact expected version, so a stale entry meets a conflict and is replaced
//! by a fresh load. Nothing in it is trusted to refuse a command or to say nothing changes.

use std::sync::{Mutex, MutexGuard};

use chronik_core::{StreamId, Version};
use hashlink::LruCache;

use crate::repository::Loaded;

/// What a command left behind on one stream.
struct Entry<A> {
    state: A,
    version: Version,
    snapshot_version: Version,
}

/// Least-recently-used aggregate states, by stream.
pub(crate) struct StateCache<A> {
    entries: Mutex<LruCache<StreamId, Entry<A>>>,
}

impl<A> StateCache<A> {
    /// A cache keeping at most `capacity` streams (`capacity` > 0).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.lock().capacity()
    }

    /// The lock. A panic while it was held (only an aggregate's `Drop` can raise one here)
    /// leaves entries that may be half-updated: they are dropped, and the cache goes on
    /// empty, which costs reads, never correctness.
    fn lock(&self) -> MutexGuard<'_, LruCache<StreamId, Entry<A>>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                guard.clear();
                self.entries.clear_poison();
                guard
            }
        }
    }

    /// Removes and returns the stream's cached state. A command holds it while it decides and
    /// appends, and a concurrent command on the same stream reads the stream instead.
    pub(crate) fn take(&self, id: &StreamId) -> Option<Loaded<A>> {
        let entry = self.lock().remove(id)?;
        Some(Loaded {
            state: entry.state,
            version: entry.version,
            snapshot_version: entry.snapshot_version,
            events_replayed: 0,
        })
    }

    /// Keeps `loaded` as the stream's state unless the cache already holds a state at the
    /// same or a later version (put there by a concurrent command that finished first).
    pub(crate) fn put(&self, id: &StreamId, loaded: Loaded<A>) {
        let mut entries = self.lock();
        if entries
            .peek(id)
            .is_some_and(|held| held.version >= loaded.version)
        {
            return;
        }
        entries.insert(
            id.clone(),
            Entry {
                state: loaded.state,
                version: loaded.version,
                snapshot_version: loaded.snapshot_version,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(state: u32, version: u64) -> Loaded<u32> {
        Loaded {
            state,
            version: Version::new(version).unwrap(),
            snapshot_version: Version::ZERO,
            events_replayed: 7,
        }
    }

    fn id(n: u32) -> StreamId {
        StreamId::new(format!("s-{n}")).unwrap()
    }

    #[test]
    fn take_removes_and_put_keeps_the_newer_state() {
        let cache = StateCache::new(4);
        assert!(cache.take(&id(1)).is_none());
        cache.put(&id(1), loaded(10, 3));
        cache.put(&id(1), loaded(9, 2));
        let got = cache.take(&id(1)).unwrap();
        assert_eq!(
            (got.state, got.version.get(), got.events_replayed),
            (10, 3, 0)
        );
        assert!(cache.take(&id(1)).is_none(), "a taken state is gone");
        cache.put(&id(1), loaded(11, 4));
        cache.put(&id(1), loaded(12, 5));
        assert_eq!(cache.take(&id(1)).unwrap().state, 12);
    }

    #[test]
    fn the_least_recently_used_stream_goes_first() {
        let cache = StateCache::new(2);
        cache.put(&id(1), loaded(1, 1));
        cache.put(&id(2), loaded(2, 1));
        cache.put(&id(3), loaded(3, 1));
        assert_eq!(cache.len(), 2);
        assert!(cache.take(&id(1)).is_none(), "evicted");
        assert_eq!(cache.take(&id(3)).unwrap().state, 3);
        assert_eq!(cache.capacity(), 2);
    }
}
