use std::sync::Arc;
use std::time::Duration;

use chronik_core::{RetryPolicy, UpcasterRegistry};
use chronik_store::MAX_FEED_PAGE;

use crate::error::ProjectionError;

/// Tuning of a projection runner, shared by every engine (the PostgreSQL one reads
/// `standby_poll` and `listen_channel` too). `Default` suits most services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerOptions {
    /// Events read per batch; the checkpoint is saved once per batch (1 to 10 000; 500).
    pub batch_size: usize,
    /// Shortest idle poll interval, used right after events were seen (5 ms: under steady
    /// write load a read model trails the appends by a few milliseconds, at the cost of at
    /// most 200 small batches a second).
    pub poll_min: Duration,
    /// Longest idle poll interval: the worst-case delay when every wake-up is lost (1 s).
    pub poll_max: Duration,
    /// First retry delay after a failure; doubles per attempt (100 ms).
    pub retry_base: Duration,
    /// Retry delay cap (30 s).
    pub retry_max: Duration,
    /// How often the lag is re-measured while catching up (1 s); it is always measured
    /// when the runner catches up or fails. `Duration::ZERO` measures after every batch.
    pub lag_every: Duration,
    /// How often a standby runner tries to take the projection's lock (1 s; engines
    /// with a lock: PostgreSQL).
    pub standby_poll: Duration,
    /// PostgreSQL: `LISTEN` on this channel for prompt wake-ups; writers call
    /// `notify_feed` *after* their commit. `None` (default): adaptive polling only.
    pub listen_channel: Option<String>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_secs(1),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            lag_every: Duration::from_secs(1),
            standby_poll: Duration::from_secs(1),
            listen_channel: None,
        }
    }
}

impl RunnerOptions {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`ProjectionError::InvalidOptions`].
    pub fn validate(&self) -> Result<(), ProjectionError> {
        if self.batch_size == 0 || self.batch_size > MAX_FEED_PAGE {
            return Err(ProjectionError::InvalidOptions(
                "batch_size must be 1 to 10000",
            ));
        }
        if self.poll_min.is_zero() || self.poll_min > self.poll_max {
            return Err(ProjectionError::InvalidOptions(
                "poll_min must be positive and at most poll_max",
            ));
        }
        if self.retry_base.is_zero() || self.retry_base > self.retry_max {
            return Err(ProjectionError::InvalidOptions(
                "retry_base must be positive and at most retry_max",
            ));
        }
        if self.standby_poll.is_zero() {
            return Err(ProjectionError::InvalidOptions(
                "standby_poll must be positive",
            ));
        }
        Ok(())
    }

    /// The retry schedule: core's [`RetryPolicy`] with `retry_base` and `retry_max`, and no
    /// limit on attempts (a runner never gives up on an event; it is parked by decision).
    #[must_use]
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(u32::MAX, self.retry_base, self.retry_max)
            .unwrap_or_else(|_| RetryPolicy::no_retry())
    }

    /// The delay before retry number `attempt` (1-based): `retry_base * 2^(attempt-1)`,
    /// capped at `retry_max` ([`RunnerOptions::retry_policy`] without jitter: one runner
    /// per projection is active, so there is no herd to spread).
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.retry_policy()
            .delay_before(attempt.saturating_add(1), 1.0)
            .unwrap_or(self.retry_max)
    }
}

/// What every projection runner is configured with, whatever its engine: its options and
/// the upcasting of the events its handlers see. Each runner's builder holds one and
/// changes it through [`RunnerBuilder`].
#[derive(Debug, Clone, Default)]
pub struct RunnerConfig {
    /// Tuning, validated when the runner spawns.
    pub options: RunnerOptions,
    /// Upcasts every event before a handler sees it; `None`: events as stored.
    pub upcasters: Option<Arc<UpcasterRegistry>>,
}

/// The builder methods every projection runner shares: the generic
/// [`ProjectionRunner`](crate::ProjectionRunner) and the PostgreSQL engine's runners. One
/// implementation, so that a setting means the same on every engine; bring the trait into
/// scope to call them (`chronik_postgres` re-exports it).
pub trait RunnerBuilder: Sized {
    /// The configuration the runner will spawn with, which the methods below change.
    fn config_mut(&mut self) -> &mut RunnerConfig;

    /// Replaces the options (checked when the runner spawns).
    #[must_use]
    fn with_options(mut self, options: RunnerOptions) -> Self {
        self.config_mut().options = options;
        self
    }

    /// Upcasts every event through `registry` before the handlers see it.
    #[must_use]
    fn with_upcasters(mut self, registry: Arc<UpcasterRegistry>) -> Self {
        self.config_mut().upcasters = Some(registry);
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RunnerOptions;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let o = RunnerOptions {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(350),
            ..RunnerOptions::default()
        };
        let ms: Vec<u128> = (1..=5).map(|a| o.backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 350, 350, 350]);
        assert_eq!(o.backoff(u32::MAX), Duration::from_millis(350));
    }
}
