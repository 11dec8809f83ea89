//! Partitioned projections: which partition a stream's events belong to, and the
//! checkpoint name of each partition.
//!
//! A projection run as `N` partitions splits the feed by stream: every event of stream
//! `s` belongs to partition [`stream_hash`]`(s) % N`, so one partition sees all of a
//! stream's events, in feed order, and each partition keeps its own checkpoint. The hash
//! is part of the stored data's meaning (a checkpoint of partition 2 of 4 says which
//! events were applied): it is MD5 (RFC 1321), never a library's internal hash, so that it
//! is the same in every release, in Rust and in SQL.

use md5::{Digest, Md5};

use crate::error::ProjectionError;

/// The most partitions a projection may run as.
pub const MAX_PARTITIONS: u32 = 1024;

/// How many partitions a projection runs as: 1 (a single runner, checkpoint under the
/// projection's own name) to [`MAX_PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partitions(u32);

impl Partitions {
    /// One partition: the projection runs unpartitioned.
    pub const ONE: Self = Self(1);

    /// Validates `count`.
    ///
    /// # Errors
    /// [`ProjectionError::InvalidOptions`] outside 1 to [`MAX_PARTITIONS`].
    pub fn new(count: u32) -> Result<Self, ProjectionError> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(ProjectionError::InvalidOptions(
                "partitions must be 1 to 1024",
            ));
        }
        Ok(Self(count))
    }

    /// The number of partitions.
    #[must_use]
    pub fn get(self) -> u32 {
        self.0
    }

    /// The partition that the events of `stream_id` belong to: `stream_hash(stream_id) % N`.
    #[must_use]
    pub fn of(self, stream_id: &str) -> u32 {
        stream_hash(stream_id) % self.0
    }

    /// The checkpoint (and lock) name of partition `index` of projection `projection`:
    /// the projection's own name with one partition, `<projection>#<index>/<count>`
    /// otherwise (so that a checkpoint says which layout wrote it).
    #[must_use]
    pub fn checkpoint_name(self, projection: &str, index: u32) -> String {
        if self.0 == 1 {
            projection.to_owned()
        } else {
            format!("{projection}#{index}/{}", self.0)
        }
    }
}

/// The stable hash that assigns streams to partitions: the first four bytes of the MD5
/// digest of the stream id's UTF-8 bytes, read as a big-endian `u32`. In SQL (PostgreSQL):
/// `('x' || left(md5(convert_to(stream_id, 'UTF8')), 8))::bit(32)::bigint`.
#[must_use]
pub fn stream_hash(stream_id: &str) -> u32 {
    let digest = Md5::digest(stream_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A partition checkpoint name split into its projection, index and count: `None` for a
/// name that [`Partitions::checkpoint_name`] did not build with more than one partition.
#[must_use]
pub fn parse_partition(name: &str) -> Option<(&str, u32, Partitions)> {
    let (projection, rest) = name.rsplit_once('#')?;
    let (index, count) = rest.split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if projection.is_empty() || !digits(index) || !digits(count) {
        return None;
    }
    let index: u32 = index.parse().ok()?;
    let count = Partitions::new(count.parse().ok()?).ok()?;
    // The canonical spelling only (no leading zeros), so that one name means one partition.
    if count.get() < 2 || index >= count.get() || count.checkpoint_name(projection, index) != name {
        return None;
    }
    Some((projection, index, count))
}

#[cfg(test)]
mod tests {
    use super::{Partitions, parse_partition, stream_hash};

    #[test]
    fn the_hash_is_md5s_first_four_bytes() {
        // md5("order-1") = 6e7f85a9d0fe9b5dfb504c6f2991d744 (PostgreSQL agrees: the
        // partition test in chronik-postgres compares the two on many ids).
        assert_eq!(stream_hash("order-1"), 0x6e7f_85a9);
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(stream_hash(""), 0xd41d_8cd9);
        let four = Partitions::new(4).ok();
        assert_eq!(four.map(|p| p.of("order-1")), Some(0x6e7f_85a9 % 4));
    }

    #[test]
    fn partition_names_round_trip_and_nothing_else_parses() {
        let Ok(four) = Partitions::new(4) else {
            panic!("4 is a valid count");
        };
        assert_eq!(four.checkpoint_name("orders", 3), "orders#3/4");
        assert_eq!(parse_partition("orders#3/4"), Some(("orders", 3, four)));
        assert_eq!(Partitions::ONE.checkpoint_name("orders", 0), "orders");
        for other in [
            "orders",
            "orders#4/4",
            "orders#03/4",
            "orders#0/1",
            "#0/4",
            "orders#0/",
            "orders#a/4",
            "orders#0/2000",
        ] {
            assert_eq!(parse_partition(other), None, "{other}");
        }
        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(1025).is_err());
    }
}
