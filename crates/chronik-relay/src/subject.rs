use std::fmt::{self, Write as _};

use chronik_core::StreamId;

use crate::error::RelayError;

/// The first tokens of every subject the relay publishes to (`chronik` by default), so
/// that one JetStream stream can take them all (`<prefix>.>`).
///
/// Valid: one or more non-empty tokens separated by `.`, each of ASCII letters, digits,
/// `-` and `_` (no wildcards, no whitespace), at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPrefix(String);

impl SubjectPrefix {
    /// The default prefix, `chronik`.
    pub const DEFAULT: &'static str = "chronik";

    /// Validates `prefix`.
    ///
    /// # Errors
    /// [`RelayError::InvalidConfig`] naming the prefix and what is wrong with it.
    pub fn new(prefix: impl Into<String>) -> Result<Self, RelayError> {
        let prefix = prefix.into();
        let bad =
            |why: &str| RelayError::InvalidConfig(format!("subject prefix {prefix:?}: {why}"));
        if prefix.is_empty() || prefix.len() > 128 {
            return Err(bad("must be 1 to 128 bytes"));
        }
        for token in prefix.split('.') {
            if token.is_empty() {
                return Err(bad("has an empty token (leading, trailing or double `.`)"));
            }
            if !token.bytes().all(plain) {
                return Err(bad(
                    "tokens may hold only ASCII letters, digits, `-` and `_` (no wildcards or whitespace)",
                ));
            }
        }
        Ok(Self(prefix))
    }

    /// The prefix as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject filter that takes every subject of this prefix: `<prefix>.>`.
    #[must_use]
    pub fn wildcard(&self) -> String {
        format!("{}.>", self.0)
    }

    /// The subject filter of one category: `<prefix>.<category>.>` (category encoded as in
    /// [`SubjectPrefix::subject`]), for consumers that want one category only.
    #[must_use]
    pub fn category_wildcard(&self, category: &str) -> String {
        format!("{}.{}.>", self.0, encode_token(category))
    }

    /// The subject of `stream`'s events: `<prefix>.<category>.<stream id>`, category and
    /// stream id percent-encoded ([`encode_token`]) so that no id can add a token or a
    /// wildcard.
    #[must_use]
    pub fn subject(&self, stream: &StreamId) -> String {
        format!(
            "{}.{}.{}",
            self.0,
            encode_token(stream.category()),
            encode_token(stream.as_str())
        )
    }

    /// Whether a JetStream subject filter (`pattern`, as in a stream's `subjects`) takes
    /// every subject under this prefix, i.e. covers `<prefix>.>`.
    #[must_use]
    pub fn is_covered_by(&self, pattern: &str) -> bool {
        let mine: Vec<&str> = self.0.split('.').collect();
        for (i, token) in pattern.split('.').enumerate() {
            if token == ">" {
                return true;
            }
            match mine.get(i) {
                Some(m) if token == "*" || token == *m => {}
                _ => return false,
            }
        }
        false
    }
}

impl Default for SubjectPrefix {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for SubjectPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// One subject token for arbitrary text: ASCII letters, digits, `-` and `_` stay as they
/// are, every other byte of the UTF-8 text (`.`, `*`, `>`, `%`, whitespace, non-ASCII) is
/// written `%XX` (uppercase hex). The empty text (the category of an id starting with
/// `-`) is the token `%`, since a subject has no empty tokens. [`decode_token`] reverses it.
#[must_use]
pub fn encode_token(text: &str) -> String {
    if text.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The text a token made by [`encode_token`] stands for; `None` when it is not such a
/// token (a stray `%`, bad hex, or bytes that are not UTF-8).
#[must_use]
pub fn decode_token(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_hold_subject_syntax() {
        for id in [
            "order-42",
            "a.b",
            "x*y",
            "tail>",
            "with space\ttab",
            "100%",
            "é-ü",
            "-",
        ] {
            let token = encode_token(id);
            assert!(token.bytes().all(|b| plain(b) || b == b'%'), "{token}");
            assert_eq!(decode_token(&token).as_deref(), Some(id));
        }
        assert_eq!(encode_token("a.b*c>d e"), "a%2Eb%2Ac%3Ed%20e");
        assert_eq!(encode_token(""), "%");
        assert_eq!(decode_token("%").as_deref(), Some(""));
        assert_eq!(decode_token("%2"), None);
        assert_eq!(decode_token("%ZZ"), None);
    }

    #[test]
    fn subjects_have_three_parts_per_stream() {
        let prefix = SubjectPrefix::new("acme.chronik").unwrap();
        let stream = StreamId::new("order-4.2*>").unwrap();
        assert_eq!(
            prefix.subject(&stream),
            "acme.chronik.order.order-4%2E2%2A%3E"
        );
        assert_eq!(prefix.wildcard(), "acme.chronik.>");
        assert_eq!(prefix.category_wildcard("order"), "acme.chronik.order.>");
    }

    #[test]
    fn prefixes_are_validated() {
        for bad in ["", ".a", "a.", "a..b", "a.*", "a.>", "a b", "a%b"] {
            assert!(SubjectPrefix::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SubjectPrefix::default().as_str(), "chronik");
    }

    #[test]
    fn coverage_of_the_prefix_by_stream_subjects() {
        let prefix = SubjectPrefix::new("acme.chronik").unwrap();
        for yes in [">", "acme.>", "acme.chronik.>", "*.chronik.>", "acme.*.>"] {
            assert!(prefix.is_covered_by(yes), "{yes}");
        }
        for no in [
            "acme.chronik",
            "acme.chronik.*",
            "acme.chronik.order.>",
            "other.>",
            "acme.*",
        ] {
            assert!(!prefix.is_covered_by(no), "{no}");
        }
    }
}
