//! The upload rate limit: a token bucket shared by every upload of this peer.
//!
//! [`TokenBucket`] is pure: it takes `now` and answers how long a sender must wait,
//! so it is tested with an injected clock. [`RateLimiter`] is the thin async shell the
//! server uses (lock, reserve, sleep). Bytes are reserved before they are sent and the
//! bucket may go into debt, so concurrent uploads queue fairly without a waiter list.
//!
//! Non-goals: no per-peer or per-task limits, no download limit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket in bytes: refills at `rate` bytes/s up to `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Bytes that may be sent now; negative when senders have reserved ahead.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` bytes/s, holding at most `burst` bytes.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Reserves `bytes` at `now`; returns how long the caller must wait before sending
    /// them (zero when the bucket holds enough). A `now` earlier than a previous call is
    /// treated as that call's time.
    pub fn reserve(&mut self, now: Instant, bytes: u64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The shared upload rate limit of one server.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<TokenBucket>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes/s with a burst of a quarter second (at least `min_burst`).
    pub fn new(rate: u64, min_burst: u64) -> Self {
        let burst = (rate / 4).max(min_burst);
        RateLimiter {
            bucket: Mutex::new(TokenBucket::new(
                rate,
                burst,
                tokio::time::Instant::now().into_std(),
            )),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let now = tokio::time::Instant::now().into_std();
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(now, bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(10)
    }

    #[test]
    fn burst_is_free_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.reserve(t0, 500), Duration::ZERO);
        assert!(close(b.reserve(t0, 100), 100 * MS));
        // Debt accumulates: the next 1000 bytes wait behind the first 100.
        assert!(close(b.reserve(t0, 1000), 1100 * MS));
        // After the debt is repaid the bucket refills, but never beyond the burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(later, 500), Duration::ZERO);
        assert!(close(b.reserve(later, 1), MS));
    }

    #[test]
    fn long_run_rate_matches_the_limit() {
        let t0 = Instant::now();
        let rate = 10_000_000; // 10 MB/s
        let mut b = TokenBucket::new(rate, 64 * 1024, t0);
        let mut now = t0;
        let chunk = 64 * 1024;
        let mut sent = 0u64;
        while sent < 100_000_000 {
            now += b.reserve(now, chunk);
            sent += chunk;
        }
        let secs = now.duration_since(t0).as_secs_f64();
        let observed = sent as f64 / secs;
        assert!(
            (observed - rate as f64).abs() / (rate as f64) < 0.01,
            "{observed}"
        );
    }

    #[test]
    fn clock_going_backwards_does_not_refill() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = TokenBucket::new(1000, 1000, t0);
        assert_eq!(b.reserve(t0, 1000), Duration::ZERO);
        let earlier = t0 - Duration::from_secs(1);
        assert!(close(b.reserve(earlier, 1000), 1000 * MS));
    }
}
