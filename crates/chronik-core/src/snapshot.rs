use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::version::Version;

/// When to take a snapshot of an aggregate: a pure decision.
///
/// [`SnapshotPolicy::BySize`] is a size table: streams under 50 events are never
/// snapshotted; from 50 to under 200 events every 100; from 200 to 1000 every 200; past
/// 1000 every 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SnapshotPolicy {
    /// Never snapshot.
    #[default]
    Never,
    /// Snapshot every `n` events (`n >= 1`; build with [`SnapshotPolicy::every`]).
    Every(u64),
    /// The size-based table above.
    BySize,
}

impl SnapshotPolicy {
    /// A fixed interval.
    ///
    /// # Errors
    /// [`InvalidInput::Policy`] for `n == 0`.
    pub fn every(n: u64) -> Result<Self, InvalidInput> {
        if n == 0 {
            Err(InvalidInput::Policy("snapshot interval must be at least 1"))
        } else {
            Ok(Self::Every(n))
        }
    }

    /// The snapshot interval for a stream at `version`, or `None` for no snapshots.
    #[must_use]
    pub fn interval(self, version: Version) -> Option<u64> {
        match self {
            Self::Never | Self::Every(0) => None,
            Self::Every(n) => Some(n),
            Self::BySize => match version.get() {
                0..50 => None,
                50..200 => Some(100),
                200..=1000 => Some(200),
                _ => Some(500),
            },
        }
    }

    /// Whether to snapshot a stream now at `current` whose newest snapshot is at
    /// `last_snapshot` (`Version::ZERO` when it has none).
    #[must_use]
    pub fn should_snapshot(self, last_snapshot: Version, current: Version) -> bool {
        self.interval(current)
            .is_some_and(|i| current.get().saturating_sub(last_snapshot.get()) >= i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(n: u64) -> Version {
        Version::new(n).unwrap()
    }

    #[test]
    fn seed_table() {
        let p = SnapshotPolicy::BySize;
        assert_eq!(p.interval(v(49)), None);
        assert_eq!(p.interval(v(50)), Some(100));
        assert_eq!(p.interval(v(199)), Some(100));
        assert_eq!(p.interval(v(200)), Some(200));
        assert_eq!(p.interval(v(1000)), Some(200));
        assert_eq!(p.interval(v(1001)), Some(500));
        assert!(!p.should_snapshot(Version::ZERO, v(49)));
        assert!(!p.should_snapshot(Version::ZERO, v(99)));
        assert!(p.should_snapshot(Version::ZERO, v(100)));
        assert!(!p.should_snapshot(v(1000), v(1499)));
        assert!(p.should_snapshot(v(1000), v(1500)));
        assert!(SnapshotPolicy::every(0).is_err());
        assert!(!SnapshotPolicy::Never.should_snapshot(Version::ZERO, Version::MAX));
    }

    fn seed_interval(n: u64) -> Option<u64> {
        if n < 50 {
            None
        } else if n < 200 {
            Some(100)
        } else if n <= 1000 {
            Some(200)
        } else {
            Some(500)
        }
    }

    proptest! {
        #[test]
        fn by_size_matches_the_seed_table(n in 0..100_000u64, last in 0..100_000u64) {
            prop_assert_eq!(SnapshotPolicy::BySize.interval(v(n)), seed_interval(n));
            let last = last.min(n);
            let expect = seed_interval(n).is_some_and(|i| n - last >= i);
            prop_assert_eq!(SnapshotPolicy::BySize.should_snapshot(v(last), v(n)), expect);
        }

        #[test]
        fn every_n_snapshots_exactly_at_multiples_when_taken(n in 1..500u64, len in 0..5_000u64) {
            // Taking a snapshot whenever the policy says so yields one every n events.
            let p = SnapshotPolicy::every(n).unwrap();
            let mut last = 0;
            let mut taken = vec![];
            for cur in 1..=len {
                if p.should_snapshot(v(last), v(cur)) {
                    last = cur;
                    taken.push(cur);
                }
            }
            prop_assert_eq!(taken, (1..=len / n).map(|k| k * n).collect::<Vec<_>>());
        }
    }
}
