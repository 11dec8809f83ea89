//! A runner's outage of its store, told to the operator once when it starts and once when
//! it ends, instead of one warning per retry.

use std::time::{Duration, Instant};

use chronik_core::FeedCursor;

/// Whether a runner has lost its store, and since when.
///
/// A runner calls [`Outage::lost`] on every failed attempt it attributes to the store being
/// unreachable and [`Outage::back`] on every success: the operator reads one warning
/// (`projection P cannot reach its store (cause); retrying until it is back`) and one
/// `reconnected after N s` line (both on [`crate::OPERATOR_TARGET`]), while the attempts
/// in between log at debug level ([`Outage::is_on`]).
#[derive(Debug, Default, Clone)]
pub struct Outage {
    since: Option<Instant>,
}

impl Outage {
    /// No outage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the store is lost now.
    pub fn is_on(&self) -> bool {
        self.since.is_some()
    }

    /// How long the store has been lost (`None` while it is not).
    pub fn elapsed(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }

    /// Records an attempt of `projection` that failed because its store (`what`: "the
    /// database", "the store") cannot be reached, for `cause`; the first one of an outage
    /// says so.
    pub fn lost(&mut self, projection: &str, what: &str, cause: &str) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(
                target: crate::OPERATOR_TARGET,
                "projection {projection} cannot reach {what} ({cause}); retrying until it is back"
            );
        }
    }

    /// Records a successful attempt: ends the outage, if there was one, saying after how
    /// long and where `projection` resumes.
    pub fn back(&mut self, projection: &str, cursor: FeedCursor) {
        if let Some(since) = self.since.take() {
            tracing::warn!(
                target: crate::OPERATOR_TARGET,
                "projection {projection} reconnected after {:.1} s; resuming after {cursor}",
                since.elapsed().as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_starts_once_and_ends_once() {
        let mut outage = Outage::new();
        assert!(!outage.is_on());
        outage.back("p", FeedCursor::START);
        assert!(!outage.is_on(), "a success without an outage ends nothing");
        outage.lost("p", "the store", "refused");
        let started = outage.elapsed().expect("on");
        outage.lost("p", "the store", "refused again");
        assert!(
            outage.elapsed().expect("still on") >= started,
            "the first loss counts"
        );
        outage.back("p", FeedCursor::START);
        assert!(!outage.is_on());
    }
}
