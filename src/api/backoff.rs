//! Pure backoff arithmetic: jittered exponential delays that honour a server's `Retry-After`.

use std::time::Duration;

/// Exponential backoff with "equal jitter": half the step is fixed, half random, so retries spread out but
/// never collapse to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `attempt` (0-based). `unit` in [0, 1) is the random part, passed in so
    /// the function stays pure and testable; a server's `Retry-After` is a floor.
    pub fn delay(&self, attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let step = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let half = step / 2;
        let jittered = half + half.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(server) => jittered.max(server.min(Duration::from_secs(3600))),
            None => jittered,
        }
    }
}

/// Parses a `Retry-After` header in its seconds form. (The HTTP-date form is rare for APIs and ignored.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_retry_after() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let table = [
            (0, 0.0, None, 50),
            (0, 0.999, None, 99),
            (1, 0.0, None, 100),
            (3, 0.0, None, 400),
            (10, 0.0, None, 1000),
            (10, 1.0, None, 2000),
            (0, 0.0, Some(Duration::from_secs(3)), 3000),
            (5, 1.0, Some(Duration::from_millis(10)), 2000),
        ];
        for (attempt, unit, ra, want_ms) in table {
            assert_eq!(
                b.delay(attempt, unit, ra).as_millis(),
                want_ms,
                "attempt {attempt} unit {unit}"
            );
        }
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
