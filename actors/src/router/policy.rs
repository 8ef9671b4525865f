//! Delivery policy pieces of a router: retry backoff with jitter, the circuit breaker, and
//! the per-destination throttle (GCRA, via `governor`).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;

/// Longest `Retry-After` honoured; a larger one is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First backoff.
    pub base: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: i32,
    /// Time since the first failure before dead-lettering.
    pub max_duration: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 10,
            max_duration: Duration::from_secs(3 * 3600),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`: `min(max_backoff, base·2^attempts)` with jitter
    /// (between half and all of it), or the destination's `Retry-After` when it sent one
    /// (honoured as given, up to [`MAX_RETRY_AFTER`]).
    pub fn delay(&self, attempts: i32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(MAX_RETRY_AFTER);
        }
        let exp = self
            .base
            .saturating_mul(1u32 << attempts.clamp(0, 20) as u32);
        let full = exp.min(self.max_backoff);
        let half = full / 2;
        half + full
            .saturating_sub(half)
            .mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }
}

/// Circuit breaker: opens after `threshold` consecutive failed attempts; while open only
/// one probe is let through every `probe_interval`; a success closes it.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    probe_interval: Duration,
    failures: u32,
    open: bool,
    probing: bool,
    next_probe: Instant,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, probe_interval: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            probe_interval,
            failures: 0,
            open: false,
            probing: false,
            next_probe: Instant::now(),
        }
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether a delivery may start now (claims the probe slot when open).
    pub fn allow(&mut self, now: Instant) -> bool {
        if !self.open {
            return true;
        }
        if !self.probing && now >= self.next_probe {
            self.probing = true;
            return true;
        }
        false
    }

    /// When the next probe may go, while open.
    pub fn next_probe(&self) -> Option<Instant> {
        (self.open && !self.probing).then_some(self.next_probe)
    }

    /// Records a success; returns true if this closed the breaker.
    pub fn success(&mut self) -> bool {
        self.failures = 0;
        self.probing = false;
        std::mem::replace(&mut self.open, false)
    }

    /// Records a failure; returns true if this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.open {
            self.probing = false;
            self.next_probe = now + self.probe_interval;
            return false;
        }
        if self.failures >= self.threshold {
            self.open = true;
            self.probing = false;
            self.next_probe = now + self.probe_interval;
            return true;
        }
        false
    }
}

/// GCRA throttle: `limit` deliveries per `window`, small bursts (a tenth of the limit).
pub struct Throttle {
    limiter: DefaultDirectRateLimiter,
}

impl Throttle {
    /// `None` when `limit` is 0.
    pub fn new(limit: u32, window: Duration) -> Option<Self> {
        let limit = NonZeroU32::new(limit)?;
        let period = window
            .checked_div(limit.get())?
            .max(Duration::from_nanos(1));
        let burst = NonZeroU32::new((limit.get() / 10).max(1))?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::direct(quota),
        })
    }

    /// `Ok` to send now, or how long to wait.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for attempts in 0..8 {
            let full = (100u64 << attempts).min(1000);
            let d = p.delay(attempts, None).as_millis() as u64;
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempts}: {d} not in [{}, {full}]",
                full / 2
            );
        }
        assert_eq!(
            p.delay(0, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let now = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1));
        assert!(!b.failure(now) && !b.failure(now));
        assert!(b.failure(now), "third failure opens");
        assert!(!b.allow(now), "no probe before the interval");
        let later = now + Duration::from_secs(1);
        assert!(b.allow(later), "one probe");
        assert!(!b.allow(later), "only one at a time");
        b.failure(later);
        assert!(!b.allow(later + Duration::from_millis(500)));
        assert!(b.allow(later + Duration::from_secs(1)));
        assert!(b.success(), "success closes");
        assert!(b.allow(later) && b.allow(later));
    }

    #[test]
    fn throttle_limits_rate() {
        let t = Throttle::new(10, Duration::from_secs(1)).expect("throttle");
        assert!(t.check().is_ok(), "burst of one");
        let wait = t.check().expect_err("second is throttled");
        assert!(wait <= Duration::from_millis(100));
    }
}
