use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// A source of jitter in `[0, 1)`, passed in so that this crate stays deterministic.
pub trait JitterSource {
    /// The next value in `[0, 1)`; values outside are clamped.
    fn next_unit(&mut self) -> f64;
}

impl<F: FnMut() -> f64> JitterSource for F {
    fn next_unit(&mut self) -> f64 {
        self()
    }
}

/// How often and how patiently to retry a command that lost an optimistic-concurrency race.
///
/// Exponential backoff with "equal jitter": before retry `k` (1-based) the delay is
/// `d/2 + jitter * d/2` where `d = min(max_delay, base_delay * 2^(k-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 5 ms base, 500 ms cap.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// Builds a policy.
    ///
    /// # Errors
    /// [`InvalidInput::Policy`] when `max_attempts == 0` or `base_delay > max_delay`.
    pub fn new(
        max_attempts: u32,
        base_delay: Duration,
        max_delay: Duration,
    ) -> Result<Self, InvalidInput> {
        if max_attempts == 0 {
            return Err(InvalidInput::Policy("max_attempts must be at least 1"));
        }
        if base_delay > max_delay {
            return Err(InvalidInput::Policy("base_delay must not exceed max_delay"));
        }
        Ok(Self {
            max_attempts,
            base_delay,
            max_delay,
        })
    }

    /// No retries: one attempt.
    #[must_use]
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// Total attempts, the first included.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before attempt number `attempt` (1-based; attempt 1 has none), or `None`
    /// when `attempt` exceeds `max_attempts`.
    #[must_use]
    pub fn delay_before(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        if attempt == 1 {
            return Some(Duration::ZERO);
        }
        let exp = 2u32.saturating_pow((attempt - 2).min(31));
        let d = self.base_delay.saturating_mul(exp).min(self.max_delay);
        let j = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = d / 2;
        Some(half + half.mul_f64(j))
    }

    /// The delays before each retry (attempts 2..=max), drawing jitter from `source`.
    pub fn delays<'a>(
        &'a self,
        source: &'a mut impl JitterSource,
    ) -> impl Iterator<Item = Duration> + 'a {
        (2..=self.max_attempts).filter_map(move |a| self.delay_before(a, source.next_unit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::new(6, Duration::from_millis(10), Duration::from_millis(50)).unwrap();
        let full: Vec<_> = (1..=7).map(|a| p.delay_before(a, 1.0)).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            full,
            vec![ms(0), ms(10), ms(20), ms(40), ms(50), ms(50), None]
        );
        assert_eq!(p.delay_before(3, 0.0), ms(10));
        assert_eq!(p.delay_before(3, f64::NAN), ms(10));
        assert_eq!(p.delay_before(0, 0.5), None);
        let mut zero = || 0.0;
        assert_eq!(p.delays(&mut zero).count(), 5);
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert!(RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).is_err());
        assert!(RetryPolicy::new(1, Duration::from_secs(2), Duration::from_secs(1)).is_err());
        assert_eq!(RetryPolicy::no_retry().delay_before(2, 0.0), None);
    }

    proptest! {
        #[test]
        fn delay_stays_within_half_and_full_backoff(attempt in 2..100u32, j in proptest::num::f64::ANY, base in 0..1_000u64, extra in 0..10_000u64) {
            let p = RetryPolicy::new(100, Duration::from_millis(base), Duration::from_millis(base + extra)).unwrap();
            let d = p.delay_before(attempt, j).unwrap();
            let cap = Duration::from_millis(base).saturating_mul(2u32.saturating_pow(attempt - 2)).min(Duration::from_millis(base + extra));
            prop_assert!(d <= cap && d >= cap / 2);
        }
    }
}
