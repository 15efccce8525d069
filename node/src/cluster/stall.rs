//! Noticing that this process did not run for a while (SIGSTOP, a VM pause, a starved runtime):
//! a ticker records each 50 ms tick; a gap of more than [`GAP`] between ticks is a stall. A
//! leader that stalled may act on a state a new leader has moved past (it has not heard of the
//! new term yet), so it treats itself as unsettled for a while after one (see `peer.rs`).
//!
//! Gaps are measured on the node's clock: a skew moved forward by more than [`GAP`] reads as a
//! stall too (the leader then settles again before it kills or fails anything, which is safe).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use troupe_clock::SharedClock;

const TICK: Duration = Duration::from_millis(50);
/// A gap between ticks longer than this is a stall.
pub const GAP: Duration = Duration::from_millis(300);

pub struct Stalls {
    clock: SharedClock,
    base: Instant,
    last_tick_ms: AtomicU64,
    /// When the last stall was noticed (ms since `base`), or `u64::MAX` for never.
    last_stall_ms: AtomicU64,
}

impl Stalls {
    /// Starts the ticker on the current tokio runtime; gaps are read on `clock`.
    pub fn start(clock: SharedClock) -> Arc<Stalls> {
        let s = Arc::new(Stalls {
            base: clock.now(),
            clock: clock.clone(),
            last_tick_ms: AtomicU64::new(0),
            last_stall_ms: AtomicU64::new(u64::MAX),
        });
        let weak = Arc::downgrade(&s);
        tokio::spawn(async move {
            let mut prev = clock.now();
            loop {
                tokio::time::sleep(TICK).await;
                let Some(s) = weak.upgrade() else { return };
                let now = clock.now();
                if now.saturating_duration_since(prev) > GAP {
                    s.last_stall_ms.store(s.ms(now), Ordering::Release);
                }
                s.last_tick_ms.store(s.ms(now), Ordering::Release);
                prev = now;
            }
        });
        s
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// True when the process has run without a stall for at least `d`, and the ticker has run
    /// since the last gap (right after a pause, before the ticker catches up, this is false).
    pub fn quiet_for(&self, d: Duration) -> bool {
        let now = self.ms(self.clock.now());
        let tick = self.last_tick_ms.load(Ordering::Acquire);
        let stall = self.last_stall_ms.load(Ordering::Acquire);
        let ticking = now.saturating_sub(tick) <= GAP.as_millis() as u64;
        let quiet = stall == u64::MAX || now.saturating_sub(stall) >= d.as_millis() as u64;
        ticking && quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_clock_that_jumps_ahead_reads_as_a_stall() {
        let clock = troupe_clock::SkewedClock::new(troupe_clock::system());
        let s = Stalls::start(clock.clone());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(s.quiet_for(Duration::from_secs(3600)));
        clock.set_offset_ms(5_000);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!s.quiet_for(Duration::from_secs(3)), "the jump is a gap");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_is_a_stall_until_it_has_been_quiet_long_enough() {
        let s = Stalls::start(troupe_clock::system());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(s.quiet_for(Duration::from_secs(3600)), "no stall yet");
        // Block the only runtime thread: the ticker cannot run (as under SIGSTOP).
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !s.quiet_for(Duration::ZERO),
            "right after the pause, before the ticker runs"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(s.quiet_for(Duration::ZERO), "ticking again");
        assert!(
            !s.quiet_for(Duration::from_secs(3)),
            "but not quiet for 3 s after the stall"
        );
    }
}
