//! Noticing that this process did not run for a while (SIGSTOP, a VM pause, a starved runtime):
//! a ticker records each 50 ms tick; a gap of more than [`GAP`] between ticks is a stall. A
//! leader that stalled may act on a state a new leader has moved past (it has not heard of the
//! new term yet), so it treats itself as unsettled for a while after one (see `peer.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(50);
/// A gap between ticks longer than this is a stall.
pub const GAP: Duration = Duration::from_millis(300);

pub struct Stalls {
    base: Instant,
    last_tick_ms: AtomicU64,
    /// When the last stall was noticed (ms since `base`), or `u64::MAX` for never.
    last_stall_ms: AtomicU64,
}

impl Stalls {
    /// Starts the ticker on the current tokio runtime.
    pub fn start() -> Arc<Stalls> {
        let s = Arc::new(Stalls {
            base: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            last_stall_ms: AtomicU64::new(u64::MAX),
        });
        let weak = Arc::downgrade(&s);
        tokio::spawn(async move {
            let mut prev = Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let Some(s) = weak.upgrade() else { return };
                let now = Instant::now();
                if now.duration_since(prev) > GAP {
                    s.last_stall_ms.store(s.ms(now), Ordering::Release);
                }
                s.last_tick_ms.store(s.ms(now), Ordering::Release);
                prev = now;
            }
        });
        s
    }

    fn ms(&self, t: Instant) -> u64 {
        t.duration_since(self.base).as_millis() as u64
    }

    /// True when the process has run without a stall for at least `d`, and the ticker has run
    /// since the last gap (right after a pause, before the ticker catches up, this is false).
    pub fn quiet_for(&self, d: Duration) -> bool {
        let now = self.ms(Instant::now());
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
    async fn a_blocked_runtime_is_a_stall_until_it_has_been_quiet_long_enough() {
        let s = Stalls::start();
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
