//! A token bucket, used for the per-connection client-event and subscribe limits.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `per_second` on average with bursts up to `per_second`.
    pub fn new(per_second: u32, now: Instant) -> Self {
        Self::with_burst(per_second, per_second, now)
    }

    /// A full bucket of `burst` tokens refilled at `per_second`.
    pub fn with_burst(per_second: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second: f64::from(per_second.max(1)),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert_eq!((0..20).filter(|_| b.try_take(t0)).count(), 10);
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert_eq!(
            (0..20)
                .filter(|_| b.try_take(t0 + Duration::from_secs(5)))
                .count(),
            10
        );
    }
}
