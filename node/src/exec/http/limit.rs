//! Per-node, per-step limits of `http` steps: `concurrency` (a semaphore) and `rate` (a token
//! bucket). They live in this node's process only: a fleet of N nodes may send N times as much.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use troupe_clock::Clock;
use troupe_scheduler::spec::http::Rate;

/// (workflow, step index): the attempts that share one step's limits on this node.
pub type Key = (u64, u16);

/// Limits of a step nobody used for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

pub struct Limits {
    sem: Option<Arc<Semaphore>>,
    bucket: Option<Mutex<Bucket>>,
    used: Mutex<Instant>,
}

/// What an attempt holds while its request is in flight.
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Limits {
    fn new(concurrency: Option<u32>, rate: Option<Rate>, now: Instant) -> Limits {
        Limits {
            sem: concurrency.map(|n| Arc::new(Semaphore::new(n as usize))),
            bucket: rate.map(|r| Mutex::new(Bucket::new(r, now))),
            used: Mutex::new(now),
        }
    }

    /// Waits for a free place (`concurrency`), then for a token (`rate`, on the node's clock).
    pub async fn acquire(&self, clock: &dyn Clock) -> Held {
        let permit = match &self.sem {
            // The semaphore is never closed.
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let now = clock.now();
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = now;
        if let Some(b) = &self.bucket {
            let wait = b.lock().unwrap_or_else(|p| p.into_inner()).take(now);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        Held { _permit: permit }
    }
}

/// The limits of a step on this node, made by its first attempt here.
pub fn of(
    key: Key,
    concurrency: Option<u32>,
    rate: Option<Rate>,
    clock: &dyn Clock,
) -> Arc<Limits> {
    struct Registry {
        steps: HashMap<Key, Arc<Limits>>,
        swept: Instant,
    }
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    let now = clock.now();
    let mut r = R
        .get_or_init(|| {
            Mutex::new(Registry {
                steps: HashMap::new(),
                swept: now,
            })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if now.duration_since(r.swept) > Duration::from_secs(60) {
        r.swept = now;
        r.steps.retain(|_, l| {
            Arc::strong_count(l) > 1
                || now.duration_since(*l.used.lock().unwrap_or_else(|p| p.into_inner()))
                    < FORGET_AFTER
        });
    }
    r.steps
        .entry(key)
        .or_insert_with(|| Arc::new(Limits::new(concurrency, rate, now)))
        .clone()
}

/// `count` tokens per `per_ms`, holding at most `count` (at least 1). A taker always gets a
/// token, and is told how long to wait for it: tokens go negative, so takers are served in
/// order, each `1 / rate` after the one before.
pub struct Bucket {
    per_ms: f64,
    cap: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Bucket {
        let cap = rate.count.ceil().max(1.0);
        Bucket {
            per_ms: rate.count / rate.per_ms as f64,
            cap,
            tokens: cap,
            at: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed_ms = now.saturating_duration_since(self.at).as_secs_f64() * 1_000.0;
        self.tokens = (self.tokens + elapsed_ms * self.per_ms).min(self.cap);
        self.at = self.at.max(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_ms / 1_000.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::SystemClock;

    #[test]
    fn the_bucket_lets_a_burst_through_then_spaces_takers() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Rate {
                count: 10.0,
                per_ms: 1_000,
            },
            t0,
        );
        for _ in 0..10 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        // The 11th waits 100 ms, the 12th 200 ms.
        let w = b.take(t0);
        assert!((w.as_millis() as i64 - 100).abs() <= 1, "{w:?}");
        let w = b.take(t0);
        assert!((w.as_millis() as i64 - 200).abs() <= 1, "{w:?}");
        // A second later the debt is paid and 8 tokens are back.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..8 {
            assert_eq!(b.take(t1), Duration::ZERO);
        }
        assert!(b.take(t1) > Duration::ZERO);
    }

    #[test]
    fn a_slow_rate_holds_one_token() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Rate {
                count: 0.5,
                per_ms: 1_000,
            },
            t0,
        );
        assert_eq!(b.take(t0), Duration::ZERO);
        let w = b.take(t0);
        assert!((w.as_millis() as i64 - 2_000).abs() <= 1, "{w:?}");
    }

    #[tokio::test]
    async fn concurrency_is_shared_by_the_attempts_of_one_step() {
        let l = of((991, 0), Some(2), None, &SystemClock);
        let a = l.acquire(&SystemClock).await;
        let _b = of((991, 0), Some(2), None, &SystemClock)
            .acquire(&SystemClock)
            .await;
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), l.acquire(&SystemClock)).await;
        assert!(waiting.is_err(), "a third got in");
        drop(a);
        let got = tokio::time::timeout(Duration::from_millis(500), l.acquire(&SystemClock)).await;
        assert!(got.is_ok());
        // Another step has its own.
        let other = tokio::time::timeout(
            Duration::from_millis(50),
            of((991, 1), Some(2), None, &SystemClock).acquire(&SystemClock),
        )
        .await;
        assert!(other.is_ok());
    }
}
