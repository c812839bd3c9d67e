//! Subscription options and the retry policy.

use std::time::Duration;

use edubus_core::StartFrom;

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[0, min(cap, base * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last one the event is dead-lettered.
    pub max_attempts: u32,
    /// Backoff base.
    pub base: Duration,
    /// Backoff cap.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The default policy with `n` attempts (seed 001 uses 3).
    pub fn attempts(n: u32) -> Self {
        Self {
            max_attempts: n.max(1),
            ..Self::default()
        }
    }

    /// Sets base and cap of the backoff.
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap.max(base);
        self
    }

    /// The upper bound of the wait after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }

    /// A random wait in `[0, ceiling(attempt)]` (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// How one subscription is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Per-key ordering (default) or none.
    pub ordered: bool,
    /// Handlers running at once per subscription in this process.
    pub concurrency: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// A delivery in flight longer than this may be claimed by another consumer.
    pub claim_after: Duration,
    /// Deliveries fetched per partition read.
    pub batch_size: usize,
    /// Where a newly registered subscription starts.
    pub start: StartFrom,
    /// Validate each delivered event against the catalog (schema-invalid ones are dead-lettered).
    pub validate: bool,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            ordered: true,
            concurrency: 64,
            retry: RetryPolicy::default(),
            claim_after: Duration::from_secs(600),
            batch_size: 256,
            start: StartFrom::Beginning,
            validate: true,
        }
    }
}

impl SubscriptionOptions {
    /// Gives up per-key ordering for throughput.
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// Sets the number of concurrent handlers.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets `claim_after`.
    pub fn with_claim_after(mut self, d: Duration) -> Self {
        self.claim_after = d;
        self
    }

    /// Sets the batch size.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets where a new subscription starts.
    pub fn with_start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(20), Duration::from_secs(30));
        assert!((0..1000).all(|_| p.delay(2) <= Duration::from_millis(200)));
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(4)).collect();
        assert!(spread.len() > 10, "delays are randomized");
    }

    #[test]
    fn seed_001_policy_is_one_setting_away() {
        let p = RetryPolicy::attempts(3);
        assert_eq!(
            (p.max_attempts, p.base, p.cap),
            (3, Duration::from_millis(100), Duration::from_secs(30))
        );
    }
}
