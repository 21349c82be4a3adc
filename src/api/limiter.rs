//! Client-side politeness: a token-bucket rate limit plus a cap on requests in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Takes one token, returning how long the caller must wait for it (zero when one was there).
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Limits request rate and concurrency. Cloning shares the limits.
#[derive(Clone, Debug)]
pub struct Limiter {
    bucket: Arc<Mutex<Bucket>>,
    in_flight: Arc<Semaphore>,
}

impl Limiter {
    pub fn new(rate_per_s: f64, burst: u32, max_in_flight: usize) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            bucket: Arc::new(Mutex::new(Bucket {
                rate: rate_per_s.max(0.001),
                burst,
                tokens: burst,
                updated: Instant::now(),
            })),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }

    /// Waits for a rate token and an in-flight slot; the slot is held until the permit drops.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        let wait = self.bucket.lock().await.take(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the limiter never closes its semaphore")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 10.0,
            burst: 3.0,
            tokens: 3.0,
            updated: t0,
        };
        let waits: Vec<_> = (0..5).map(|_| b.take(t0).as_millis()).collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200]);
        // After a second, the bucket is full again but no fuller than the burst.
        let mut b = Bucket {
            rate: 10.0,
            burst: 3.0,
            tokens: 0.0,
            updated: t0,
        };
        let later = t0 + Duration::from_secs(10);
        let waits: Vec<_> = (0..4).map(|_| b.take(later).as_millis()).collect();
        assert_eq!(waits, vec![0, 0, 0, 100]);
    }

    #[tokio::test]
    async fn caps_requests_in_flight() {
        let l = Limiter::new(1000.0, 100, 2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), l.acquire())
                .await
                .is_err()
        );
        drop(a);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), l.acquire())
                .await
                .is_ok()
        );
    }
}
