//! Retry maths: exponential backoff with deterministic jitter.
//!
//! Jitter is derived from a hash of (run, step, attempt), not from a random number generator, so
//! replaying a journal reproduces exactly the same `not_before` times.

use crate::chaos::unit_hash;
use crate::event::Failure;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = no retries).
    pub max_attempts: u32,
    pub initial_delay_ms: u64,
    pub multiplier: f64,
    pub max_delay_ms: u64,
    /// Fraction (0..=1) by which a delay is spread symmetrically: 0.2 means ±20 %.
    pub jitter: f64,
}

/// Allowed ranges, checked by validation and documented in `cairn validate` errors.
pub const MAX_ATTEMPTS_RANGE: (u32, u32) = (1, 100);
pub const MULTIPLIER_RANGE: (f64, f64) = (1.0, 10.0);
pub const MAX_DELAY_LIMIT_MS: u64 = 24 * 3_600_000;

impl RetryPolicy {
    /// The delay before attempt `failed_attempt + 1`, or `None` if the policy is exhausted or the
    /// failure is not retryable.
    pub fn next_delay(&self, failed_attempt: u32, failure: &Failure, jitter_key: &[&str]) -> Option<u64> {
        if !failure.class.is_retryable() || failed_attempt >= self.max_attempts {
            return None;
        }
        let exp = failed_attempt.saturating_sub(1).min(64) as i32;
        let base = (self.initial_delay_ms as f64) * self.multiplier.powi(exp);
        let base = base.min(self.max_delay_ms as f64);
        let attempt = failed_attempt.to_string();
        let mut key: Vec<&str> = jitter_key.to_vec();
        key.push(&attempt);
        let u = unit_hash(0x6a09_e667, &key); // 0..1
        let spread = base * self.jitter * (2.0 * u - 1.0);
        let mut delay = (base + spread).clamp(0.0, self.max_delay_ms as f64) as u64;
        if let Some(hint) = failure.retry_after_ms {
            delay = delay.max(hint.min(MAX_DELAY_LIMIT_MS));
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ErrorClass;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 5, initial_delay_ms: 1000, multiplier: 2.0, max_delay_ms: 5000, jitter: 0.0 }
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let f = Failure::new(ErrorClass::Transient, "x");
        let p = policy();
        let delays: Vec<_> = (1..=5).map(|a| p.next_delay(a, &f, &["r", "s"])).collect();
        assert_eq!(delays, vec![Some(1000), Some(2000), Some(4000), Some(5000), None]);
    }

    #[test]
    fn permanent_never_retries_and_rate_limit_hint_is_honoured() {
        let p = policy();
        assert_eq!(p.next_delay(1, &Failure::new(ErrorClass::Permanent, "x"), &[]), None);
        let mut f = Failure::new(ErrorClass::RateLimited, "slow down");
        f.retry_after_ms = Some(3000);
        assert_eq!(p.next_delay(1, &f, &[]), Some(3000));
    }

    #[test]
    fn jitter_is_bounded_and_deterministic() {
        let p = RetryPolicy { jitter: 0.5, ..policy() };
        let f = Failure::new(ErrorClass::Timeout, "x");
        for attempt in 1..4 {
            let a = p.next_delay(attempt, &f, &["run", "step"]);
            assert_eq!(a, p.next_delay(attempt, &f, &["run", "step"]));
            let base = (1000.0 * 2f64.powi(attempt as i32 - 1)).min(5000.0);
            let d = a.unwrap_or(0) as f64;
            assert!(d >= base * 0.5 - 1.0 && d <= (base * 1.5).min(5000.0) + 1.0, "{d} vs {base}");
        }
    }
}
