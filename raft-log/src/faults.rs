//! Injected disk faults ([`DiskFaults`], chaos mode only): every durable write (an fsync'ed
//! redb commit) first waits `fsync_delay_ms`, and fails with an I/O error while failures are
//! armed, before anything is written (a failpoint before the fsync). Atomics: set from any
//! thread, read by the engine thread at each durable write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest injectable delay per fsync (a slow disk, not a hung one).
pub const FSYNC_DELAY_MAX_MS: u64 = 10_000;

#[derive(Debug, Default)]
pub struct DiskFaults {
    fsync_delay_ms: AtomicU64,
    fail_fsyncs: AtomicU64,
    injected_failures: AtomicU64,
}

impl DiskFaults {
    /// Every durable write waits this much longer (clamped to [`FSYNC_DELAY_MAX_MS`]); 0 heals.
    pub fn set_fsync_delay_ms(&self, ms: u64) {
        self.fsync_delay_ms
            .store(ms.min(FSYNC_DELAY_MAX_MS), Ordering::Release);
    }

    pub fn fsync_delay_ms(&self) -> u64 {
        self.fsync_delay_ms.load(Ordering::Acquire)
    }

    /// The next `n` durable writes fail with an I/O error (0 disarms).
    pub fn fail_next_fsyncs(&self, n: u64) {
        self.fail_fsyncs.store(n, Ordering::Release);
    }

    /// Failures injected so far.
    pub fn injected_failures(&self) -> u64 {
        self.injected_failures.load(Ordering::Acquire)
    }

    /// Called before a durable write: sleeps the delay, then fails if a failure is armed.
    pub(crate) fn before_fsync(&self) -> std::io::Result<()> {
        let delay = self.fsync_delay_ms();
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let armed = self
            .fail_fsyncs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            self.injected_failures.fetch_add(1, Ordering::AcqRel);
            return Err(std::io::Error::other(
                "injected fsync failure (troupe chaos fsync-error)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_failures_are_spent_one_per_write_and_the_delay_is_clamped() {
        let f = DiskFaults::default();
        assert!(f.before_fsync().is_ok());
        f.fail_next_fsyncs(2);
        assert!(f.before_fsync().is_err());
        assert!(f.before_fsync().is_err());
        assert!(f.before_fsync().is_ok());
        assert_eq!(f.injected_failures(), 2);
        f.set_fsync_delay_ms(u64::MAX);
        assert_eq!(f.fsync_delay_ms(), FSYNC_DELAY_MAX_MS);
        f.set_fsync_delay_ms(5);
        let t = std::time::Instant::now();
        f.before_fsync().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(5));
    }
}
