use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidInput, truncate};

/// A position in the global feed: `(transaction, position)`, ordered lexicographically.
///
/// In PostgreSQL `transaction` is the writer's `xid8` and `position` the event's global
/// identity value; the feed is read in this order and only below the oldest running
/// transaction, so a reader that resumes *after* a cursor never skips a late commit.
/// [`FeedCursor::START`] is before every event. Text form: `<transaction>:<position>`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct FeedCursor {
    /// The committing transaction's id (a commit sequence number in memory).
    pub transaction: u64,
    /// The event's global position (unique, increasing within a transaction).
    pub position: u64,
}

impl FeedCursor {
    /// Before the first event.
    pub const START: Self = Self {
        transaction: 0,
        position: 0,
    };

    /// Builds a cursor.
    #[must_use]
    pub fn new(transaction: u64, position: u64) -> Self {
        Self {
            transaction,
            position,
        }
    }

    /// Checks that both parts fit the stores' signed 64-bit columns; adapters call this
    /// before using a caller's cursor, so every adapter rejects the same cursors.
    ///
    /// # Errors
    /// [`InvalidInput::MalformedCursor`] when a part exceeds `i64::MAX`.
    pub fn check(self) -> Result<Self, InvalidInput> {
        if i64::try_from(self.transaction).is_err() || i64::try_from(self.position).is_err() {
            return Err(InvalidInput::MalformedCursor {
                input: self.to_string(),
            });
        }
        Ok(self)
    }
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transaction, self.position)
    }
}

impl FromStr for FeedCursor {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidInput::MalformedCursor { input: truncate(s) };
        let (t, p) = s.split_once(':').ok_or_else(bad)?;
        let parse = |x: &str| {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse::<u64>()
                .ok()
                .filter(|v| i64::try_from(*v).is_ok())
                .ok_or_else(bad)
        };
        Ok(Self {
            transaction: parse(t)?,
            position: parse(p)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn malformed_cursors_are_typed_errors() {
        for bad in [
            "",
            ":",
            "1",
            "1:",
            ":1",
            "a:1",
            "1:b",
            "-1:2",
            "1:2:3",
            "+1:2",
            "99999999999999999999:1",
            "9223372036854775808:0",
        ] {
            assert!(
                matches!(
                    bad.parse::<FeedCursor>(),
                    Err(InvalidInput::MalformedCursor { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!("12:34".parse::<FeedCursor>(), Ok(FeedCursor::new(12, 34)));
    }

    #[test]
    fn order_is_transaction_first() {
        assert!(FeedCursor::new(1, 100) < FeedCursor::new(2, 5));
        assert!(FeedCursor::new(2, 5) < FeedCursor::new(2, 6));
        assert!(FeedCursor::START < FeedCursor::new(0, 1));
    }

    proptest! {
        #[test]
        fn text_round_trips(t in 0..=i64::MAX as u64, p in 0..=i64::MAX as u64) {
            let c = FeedCursor::new(t, p);
            prop_assert_eq!(c.to_string().parse::<FeedCursor>(), Ok(c));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = s.parse::<FeedCursor>();
        }
    }
}
