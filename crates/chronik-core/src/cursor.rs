use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{InvalidInput, truncate};

/// A position in the global feed: `(transaction, position)`, ordered lexicographically.
///
/// In PostgreSQL `transaction` is the writer's `xid8` and `position` the event's global
/// identity value; the feed is read in this order and only below the oldest running
/// transaction, so a reader that resumes *after* a cursor never skips a late commit.
/// [`FeedCursor::START`] is before every event. Text form: `<transaction>:<position>`;
/// JSON form: `{"transaction": T, "position": P}`.
///
/// Contract: both parts are at most [`FeedCursor::MAX_PART`] (`i64::MAX`, the stores'
/// signed 64-bit columns). Every way to make a cursor checks it ([`FeedCursor::new`],
/// [`FromStr`], `Deserialize`), so a cursor that exists is one every adapter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
pub struct FeedCursor {
    transaction: u64,
    position: u64,
}

/// The unchecked JSON shape of a cursor; `Deserialize` goes through [`FeedCursor::new`].
#[derive(Deserialize)]
struct CursorParts {
    transaction: u64,
    position: u64,
}

impl<'de> Deserialize<'de> for FeedCursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = CursorParts::deserialize(d)?;
        Self::new(parts.transaction, parts.position).map_err(serde::de::Error::custom)
    }
}

impl FeedCursor {
    /// Before the first event.
    pub const START: Self = Self {
        transaction: 0,
        position: 0,
    };

    /// The largest value either part may take: `i64::MAX`.
    pub const MAX_PART: u64 = i64::MAX as u64;

    /// The last cursor there can be: both parts at [`FeedCursor::MAX_PART`].
    pub const MAX: Self = Self {
        transaction: Self::MAX_PART,
        position: Self::MAX_PART,
    };

    /// Builds a cursor, checking that both parts fit the stores' signed 64-bit columns.
    ///
    /// # Errors
    /// [`InvalidInput::MalformedCursor`] when a part exceeds [`FeedCursor::MAX_PART`]; the
    /// error's text shows both parts as given.
    pub fn new(transaction: u64, position: u64) -> Result<Self, InvalidInput> {
        if transaction > Self::MAX_PART || position > Self::MAX_PART {
            return Err(InvalidInput::MalformedCursor {
                input: format!("{transaction}:{position}"),
            });
        }
        Ok(Self {
            transaction,
            position,
        })
    }

    /// Builds a cursor from a store's signed columns.
    ///
    /// # Errors
    /// [`InvalidInput::MalformedCursor`] when a part is negative.
    pub fn from_i64(transaction: i64, position: i64) -> Result<Self, InvalidInput> {
        match (u64::try_from(transaction), u64::try_from(position)) {
            (Ok(t), Ok(p)) => Ok(Self {
                transaction: t,
                position: p,
            }),
            _ => Err(InvalidInput::MalformedCursor {
                input: format!("{transaction}:{position}"),
            }),
        }
    }

    /// The committing transaction's id (`xid8` in PostgreSQL, a commit sequence number in
    /// memory).
    #[must_use]
    pub const fn transaction(self) -> u64 {
        self.transaction
    }

    /// The event's global position (unique, increasing within a transaction).
    #[must_use]
    pub const fn position(self) -> u64 {
        self.position
    }

    /// The transaction id as the store's signed type (always fits, by construction).
    #[must_use]
    pub fn transaction_i64(self) -> i64 {
        i64::try_from(self.transaction).unwrap_or(i64::MAX)
    }

    /// The position as the store's signed type (always fits, by construction).
    #[must_use]
    pub fn position_i64(self) -> i64 {
        i64::try_from(self.position).unwrap_or(i64::MAX)
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
        Self::new(parse(t)?, parse(p)?).map_err(|_| bad())
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
        assert_eq!("12:34".parse::<FeedCursor>(), FeedCursor::new(12, 34));
    }

    #[test]
    fn every_constructor_checks_the_range() {
        let big = FeedCursor::MAX_PART + 1;
        for (t, p) in [(big, 0), (0, big), (u64::MAX, u64::MAX)] {
            assert_eq!(
                FeedCursor::new(t, p),
                Err(InvalidInput::MalformedCursor {
                    input: format!("{t}:{p}")
                })
            );
            let json = format!(r#"{{"transaction":{t},"position":{p}}}"#);
            let err = serde_json::from_str::<FeedCursor>(&json).unwrap_err();
            assert!(err.to_string().contains(&format!("{t}:{p}")), "{err}");
        }
        assert!(FeedCursor::from_i64(-1, 0).is_err());
        assert!(FeedCursor::from_i64(0, -1).is_err());
        assert_eq!(
            FeedCursor::from_i64(i64::MAX, i64::MAX),
            Ok(FeedCursor::MAX)
        );
        assert_eq!(
            FeedCursor::new(FeedCursor::MAX_PART, FeedCursor::MAX_PART),
            Ok(FeedCursor::MAX)
        );
        let json = serde_json::to_string(&FeedCursor::MAX).unwrap();
        assert_eq!(
            serde_json::from_str::<FeedCursor>(&json).unwrap(),
            FeedCursor::MAX
        );
    }

    #[test]
    fn order_is_transaction_first() {
        let c = |t, p| FeedCursor::new(t, p).unwrap();
        assert!(c(1, 100) < c(2, 5));
        assert!(c(2, 5) < c(2, 6));
        assert!(FeedCursor::START < c(0, 1));
    }

    proptest! {
        #[test]
        fn text_round_trips(t in 0..=i64::MAX as u64, p in 0..=i64::MAX as u64) {
            let c = FeedCursor::new(t, p).unwrap();
            prop_assert_eq!(c.to_string().parse::<FeedCursor>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<FeedCursor>(&json).unwrap(), c);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = s.parse::<FeedCursor>();
        }
    }
}
