//! Request limits of the Batch backend, kept free of I/O and clocks so that they can
//! be tested with made-up instants:
//!
//! - a **token bucket** spaces out SubmitJob calls to one region below a configured rate;
//! - **backoff** gives the wait before the next attempt after a throttled or failed
//!   call: exponential in the retry number, capped, with full jitter;
//! - a **circuit breaker** per region is *open* (the region is skipped) for a cool-down
//!   after the region throttled past the retry budget, failed, or had no capacity, and
//!   *closed* again once the cool-down has passed.

use std::time::{Duration, Instant};

/// A token bucket that contains at most one token, so calls never burst above `rate`.
/// A caller that finds no token reserves the next one and waits for it, so
/// concurrent callers queue up instead of all retrying at once.
#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Tokens available at `updated`; negative when callers have reserved tokens
    /// that are not refilled yet.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// Creates a full bucket. `rate` is in calls per second and must be positive.
    pub fn new(rate: f64, now: Instant) -> Self {
        assert!(rate > 0.0, "token bucket rate must be positive");
        Self {
            rate,
            tokens: 1.0,
            updated: now,
        }
    }

    /// Takes one token and returns how long the caller must wait before its call.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        self.updated = self.updated.max(now);

        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / self.rate)
    }
}

/// Exponential backoff with full jitter: the wait before retry `n` (from 0) is drawn
/// uniformly from zero to `min(max, initial * 2^n)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Returns the upper bound of the wait before retry `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Returns the wait before retry `retry`, for `random` drawn from `[0, 1)`.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        self.ceiling(retry).mul_f64(random.clamp(0.0, 1.0))
    }
}

/// The cause of a region's breaker opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    /// SubmitJob was throttled on every attempt of the retry budget.
    Throttled,
    /// Calls failed with server errors, time-outs or connection errors.
    Unavailable,
    /// The region rejected a valid request, such as for a missing job queue.
    Rejected,
    /// An array waited for its first element to start longer than allowed.
    NoCapacity,
}

impl TripReason {
    /// Returns the reason as a short label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            TripReason::Throttled => "throttled",
            TripReason::Unavailable => "unavailable",
            TripReason::Rejected => "rejected",
            TripReason::NoCapacity => "no_capacity",
        }
    }
}

/// A circuit breaker for one region.
#[derive(Debug)]
pub struct CircuitBreaker {
    cool_down: Duration,
    open: Option<(Instant, TripReason)>,
}

impl CircuitBreaker {
    /// Creates a closed breaker that stays open for `cool_down` after each trip.
    pub fn new(cool_down: Duration) -> Self {
        Self {
            cool_down,
            open: None,
        }
    }

    /// Opens the breaker until `now + cool_down`. A trip while open restarts the
    /// cool-down.
    pub fn trip(&mut self, now: Instant, reason: TripReason) {
        self.open = Some((now + self.cool_down, reason));
    }

    /// Returns why the breaker is open at `now`, or `None` when it is closed. A
    /// breaker whose cool-down has passed closes here.
    pub fn open_reason(&mut self, now: Instant) -> Option<TripReason> {
        match self.open {
            Some((until, reason)) if now < until => Some(reason),
            Some(_) => {
                self.open = None;
                None
            }
            None => None,
        }
    }

    /// Returns the time left until the breaker closes, zero when it is closed.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.open.map_or(Duration::ZERO, |(until, _)| {
            until.saturating_duration_since(now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn bucket_spaces_calls_at_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4.0, start);

        assert_eq!(bucket.reserve(start), Duration::ZERO);
        let second = bucket.reserve(start);
        let third = bucket.reserve(start);

        assert_eq!(second, Duration::from_millis(250));
        assert_eq!(third, Duration::from_millis(500));
    }

    #[test]
    fn bucket_refills_but_never_bursts() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, start);
        assert_eq!(bucket.reserve(start), Duration::ZERO);

        // Ten idle seconds refill one token only.
        let later = start + 10 * SECOND;
        assert_eq!(bucket.reserve(later), Duration::ZERO);
        assert_eq!(bucket.reserve(later), Duration::from_millis(500));
    }

    #[test]
    fn bucket_keeps_rate_over_many_calls() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, start);
        let mut now = start;
        for _ in 0..100 {
            now += bucket.reserve(now);
        }
        // 100 calls at 10 per second need 9.9 s after the first.
        let elapsed = now - start;
        assert!(elapsed >= Duration::from_millis(9_899), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(9_901), "{elapsed:?}");
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };

        let ceilings: Vec<u128> = (0..6).map(|n| backoff.ceiling(n).as_millis()).collect();

        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn backoff_jitter_stays_within_ceiling() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(20),
        };

        assert_eq!(backoff.delay(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(3, 0.5), Duration::from_millis(400));
        assert!(backoff.delay(3, 0.999) < Duration::from_millis(800));
        assert_eq!(backoff.delay(3, 7.0), Duration::from_millis(800));
    }

    #[test]
    fn breaker_opens_for_cool_down() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(30 * SECOND);
        assert_eq!(breaker.open_reason(start), None);

        breaker.trip(start, TripReason::Throttled);

        assert_eq!(
            breaker.open_reason(start + 29 * SECOND),
            Some(TripReason::Throttled)
        );
        assert_eq!(breaker.remaining(start + 10 * SECOND), 20 * SECOND);
        assert_eq!(breaker.open_reason(start + 30 * SECOND), None);
        assert_eq!(breaker.remaining(start + 30 * SECOND), Duration::ZERO);
    }

    #[test]
    fn breaker_trip_while_open_restarts_cool_down() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(10 * SECOND);

        breaker.trip(start, TripReason::Unavailable);
        breaker.trip(start + 8 * SECOND, TripReason::NoCapacity);

        assert_eq!(
            breaker.open_reason(start + 12 * SECOND),
            Some(TripReason::NoCapacity)
        );
        assert_eq!(breaker.open_reason(start + 18 * SECOND), None);
    }
}
