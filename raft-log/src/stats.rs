//! Counters and latency histograms of the engine, for a metrics exporter to read ([`EngineStats`],
//! from [`crate::EngineHandle::stats`]). Plain atomics written by the engine thread (and the
//! proposers, for the queue depth): reading them never waits for the thread, and this crate does
//! not depend on any metrics library.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 100 µs to 10 s.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations with fixed bucket bounds (by default [`LATENCY_BUCKETS_S`]; then
/// +Inf). Observing is three relaxed atomic adds.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new(&LATENCY_BUCKETS_S)
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket)`, not cumulative, ending with +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        LatencyHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// What the engine measures about itself.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Proposals (with or without a waiter) queued for the engine thread and not yet taken.
    pub(crate) queued_proposals: AtomicI64,
    /// Fire-and-forget proposals raft refused (uncommitted-size limit), held for the next cycle.
    pub(crate) retried_proposals: AtomicU64,
    /// Proposals refused because the queue was full (`ProposeError::Busy`).
    pub(crate) busy_total: AtomicU64,
    /// From proposing an entry on the leader to applying it there (commit plus apply).
    pub commit_latency: LatencyHistogram,
    /// Durable writes of the log (one redb `Durability::Immediate` commit per Ready that
    /// needs it: the fsync and the write it covers).
    pub fsync_latency: LatencyHistogram,
    /// Size of the latest snapshot this engine stored (bytes; 0 until one is taken or installed).
    pub(crate) snapshot_bytes: AtomicU64,
}

impl EngineStats {
    /// Proposals waiting in the engine's queue (including those held for a retry).
    pub fn proposal_queue_depth(&self) -> u64 {
        let queued = self.queued_proposals.load(Ordering::Relaxed).max(0) as u64;
        queued + self.retried_proposals.load(Ordering::Relaxed)
    }

    /// Proposals refused with `Busy` since the engine was opened.
    pub fn busy_total(&self) -> u64 {
        self.busy_total.load(Ordering::Relaxed)
    }

    /// Size of the latest stored snapshot, in bytes.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS_S.len() + 1);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[5], (0.005, 1));
        assert_eq!(s.buckets.last().copied(), Some((f64::INFINITY, 1)));
        assert!((s.sum_seconds - 60.00305).abs() < 1e-9);
    }
}
