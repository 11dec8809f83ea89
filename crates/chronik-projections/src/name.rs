use std::fmt;

use chronik_store::{StoreError, validate_projection_name};
use serde::{Deserialize, Serialize};

/// A projection's stable name: the key of its checkpoint, its park decisions, its status
/// and (on PostgreSQL) its advisory lock. 1 to 255 bytes, no whitespace or control
/// characters; validated here once, so that an invalid name cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectionName(String);

impl ProjectionName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] naming the value given.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        validate_projection_name(&name)?;
        Ok(Self(name))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ProjectionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProjectionName {
    type Error = StoreError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ProjectionName> for String {
    fn from(value: ProjectionName) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::ProjectionName;

    #[test]
    fn only_valid_names_exist() {
        assert_eq!(
            ProjectionName::new("orders").map(|n| n.to_string()).ok(),
            Some("orders".to_owned())
        );
        for bad in ["", "a b", "tab\t", &"x".repeat(256)] {
            assert!(ProjectionName::new(bad).is_err(), "{bad:?}");
        }
        let parsed: Result<ProjectionName, _> = serde_json::from_str("\"a b\"");
        assert!(parsed.is_err());
    }
}
