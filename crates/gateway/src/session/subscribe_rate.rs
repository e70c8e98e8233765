//! The per-connection subscribe rate limit (`max_subscribes_per_second`).
//!
//! Why it exists: every accepted subscribe to a new channel costs a
//! channel-state write and a change of this node's bus interest, so one
//! socket sending thousands a second would put that work ahead of every
//! other client's subscribe. Why this shape: pusher-js subscribes to all of
//! a page's channels at once, and again to all of them on every reconnect,
//! so a connection may send as many subscribes as it may hold channels
//! (`max_subscriptions_per_connection`) in one burst; after that the budget
//! refills at `max_subscribes_per_second`.

use super::refused::Refused;
use herald_config::AppConfig;
use herald_protocol::rate::TokenBucket;
use std::time::Instant;

/// A connection's subscribe budget: `burst` tokens, refilled at `per_second`.
pub(super) struct SubscribeRate {
    bucket: TokenBucket,
    per_second: u32,
}

impl SubscribeRate {
    pub fn new(app: &AppConfig, now: Instant) -> Self {
        let burst = u32::try_from(app.max_subscriptions_per_connection).unwrap_or(u32::MAX);
        Self::with_burst(burst, app.max_subscribes_per_second, now)
    }

    /// The burst is never below the rate (a rate above it raises it).
    fn with_burst(burst: u32, per_second: u32, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::with_burst(per_second, burst.max(per_second), now),
            per_second,
        }
    }

    /// Uses one token for a `pusher:subscribe`, or refuses it with 429.
    pub fn take(&mut self, now: Instant) -> Result<(), Refused> {
        if self.bucket.try_take(now) {
            return Ok(());
        }
        let why = format!(
            "over {} subscribes per second on this connection",
            self.per_second
        );
        Err(Refused::over_limit("subscribe_rate", why, 429))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn taken(rate: &mut SubscribeRate, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| rate.take(now).is_ok()).count()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut rate = SubscribeRate::with_burst(300, 30, t0);
        assert_eq!(taken(&mut rate, t0, 1000), 300);
        let refused = rate.take(t0).unwrap_err();
        assert_eq!((refused.kind, refused.status), ("LimitReached", 429));
        assert_eq!(
            refused.error,
            "over 30 subscribes per second on this connection"
        );
        // 30 a second: one token every 33 ms.
        assert_eq!(taken(&mut rate, t0 + Duration::from_millis(20), 10), 0);
        assert_eq!(taken(&mut rate, t0 + Duration::from_millis(40), 10), 1);
        assert_eq!(taken(&mut rate, t0 + Duration::from_millis(1040), 100), 30);
        // Refilled to the burst, no further.
        assert_eq!(taken(&mut rate, t0 + Duration::from_secs(100), 1000), 300);
    }

    #[test]
    fn the_burst_is_the_most_subscriptions_a_connection_may_hold() {
        let t0 = Instant::now();
        let mut app = AppConfig::new("1", "k", "s");
        app.max_subscriptions_per_connection = 40;
        app.max_subscribes_per_second = 1;
        assert_eq!(taken(&mut SubscribeRate::new(&app, t0), t0, 100), 40);
    }

    #[test]
    fn a_rate_above_the_burst_raises_the_burst() {
        let t0 = Instant::now();
        let mut rate = SubscribeRate::with_burst(10, 100, t0);
        assert_eq!(taken(&mut rate, t0, 1000), 100);
        assert_eq!(taken(&mut rate, t0 + Duration::from_millis(100), 1000), 10);
        let mut unlimited = SubscribeRate::with_burst(10, u32::MAX, t0);
        let year = t0 + Duration::from_secs(365 * 24 * 3600);
        assert_eq!(taken(&mut unlimited, year, 1000), 1000);
    }
}
