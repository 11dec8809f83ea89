use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// Position of an event inside its stream, and the version of a stream.
///
/// Events are numbered from 1; a stream's version is the number of its last event,
/// so an empty (non-existent) stream has version [`Version::ZERO`].
/// Contract: at most `i64::MAX`, so every version fits the store's `bigint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// The version of a stream with no events.
    pub const ZERO: Self = Self(0);
    /// The version of a stream's first event.
    pub const FIRST: Self = Self(1);
    /// The largest representable version.
    pub const MAX: Self = Self(i64::MAX as u64);

    /// Validates a version.
    ///
    /// # Errors
    /// [`InvalidInput::VersionOutOfRange`] above `i64::MAX`.
    pub fn new(v: u64) -> Result<Self, InvalidInput> {
        if v > Self::MAX.0 {
            Err(InvalidInput::VersionOutOfRange(i128::from(v)))
        } else {
            Ok(Self(v))
        }
    }

    /// Converts from a signed database value.
    ///
    /// # Errors
    /// [`InvalidInput::VersionOutOfRange`] for negative values.
    pub fn from_i64(v: i64) -> Result<Self, InvalidInput> {
        u64::try_from(v)
            .map(Self)
            .map_err(|_| InvalidInput::VersionOutOfRange(i128::from(v)))
    }

    /// The number.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }

    /// The number as the store's signed type (always fits).
    #[must_use]
    pub fn as_i64(self) -> i64 {
        // Fits by construction: the constructor rejects values above i64::MAX.
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// `self + n`.
    ///
    /// # Errors
    /// [`InvalidInput::VersionOverflow`] past [`Version::MAX`].
    pub fn checked_add(self, n: u64) -> Result<Self, InvalidInput> {
        self.0
            .checked_add(n)
            .filter(|v| *v <= Self::MAX.0)
            .map(Self)
            .ok_or(InvalidInput::VersionOverflow {
                current: self.0,
                add: n,
            })
    }

    /// The next version.
    ///
    /// # Errors
    /// [`InvalidInput::VersionOverflow`] at [`Version::MAX`].
    pub fn next(self) -> Result<Self, InvalidInput> {
        self.checked_add(1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What the writer believes about the stream it appends to (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// The stream's current version must be exactly this. `Exact(Version::ZERO)`
    /// means the same as [`ExpectedVersion::NoStream`].
    Exact(Version),
    /// The stream must not exist yet (have no events).
    NoStream,
    /// The stream must already have at least one event.
    StreamExists,
    /// No check: append at the end, whatever the version.
    Any,
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (`Version::ZERO` = no stream) satisfies this.
    #[must_use]
    pub fn matches(self, actual: Version) -> bool {
        match self {
            Self::Exact(v) => v == actual,
            Self::NoStream => actual == Version::ZERO,
            Self::StreamExists => actual > Version::ZERO,
            Self::Any => true,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => write!(f, "version {v}"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Any => f.write_str("any version"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_checked() {
        assert!(Version::new(i64::MAX as u64).is_ok());
        assert_eq!(
            Version::new(u64::MAX),
            Err(InvalidInput::VersionOutOfRange(i128::from(u64::MAX)))
        );
        // The error shows the value the caller gave, not its u64 reinterpretation.
        let err = Version::from_i64(-1).unwrap_err();
        assert_eq!(err, InvalidInput::VersionOutOfRange(-1));
        assert_eq!(
            err.to_string(),
            "version -1 is out of range (0 to 9223372036854775807)"
        );
        assert_eq!(
            Version::new(u64::MAX).unwrap_err().to_string(),
            "version 18446744073709551615 is out of range (0 to 9223372036854775807)"
        );
        assert!(Version::MAX.next().is_err());
        assert_eq!(Version::ZERO.next(), Ok(Version::FIRST));
        assert!(serde_json::from_str::<Version>("18446744073709551615").is_err());
    }

    #[test]
    fn expected_version_modes() {
        let v3 = Version::new(3).unwrap();
        assert!(ExpectedVersion::Exact(v3).matches(v3));
        assert!(!ExpectedVersion::Exact(v3).matches(Version::ZERO));
        assert!(ExpectedVersion::Exact(Version::ZERO).matches(Version::ZERO));
        assert!(ExpectedVersion::NoStream.matches(Version::ZERO));
        assert!(!ExpectedVersion::NoStream.matches(v3));
        assert!(ExpectedVersion::StreamExists.matches(v3));
        assert!(!ExpectedVersion::StreamExists.matches(Version::ZERO));
        assert!(ExpectedVersion::Any.matches(v3) && ExpectedVersion::Any.matches(Version::ZERO));
    }
}
