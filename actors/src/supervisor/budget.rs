//! A child's restart budget and backoff, as pure functions of the time they are given (the
//! supervisor reads its clock, [`SupervisorConfig::clock`], and passes `now` in).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::SupervisorConfig;

/// The restart-triggering exits of one child within the sliding period.
#[derive(Debug, Default)]
pub(super) struct Exits(VecDeque<Instant>);

/// What one more exit leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The `n`-th exit within the period: restart after `delay`.
    Restart { n: u32, delay: Duration },
    /// More than `max_restarts` exits within the period: escalate.
    Spent { n: u32 },
}

impl Exits {
    /// Records an exit at `now` and judges it against the budget of `config`. Exits older than
    /// the period (at `now`) are forgotten first, so the budget refills as they age out.
    pub(super) fn charge(&mut self, now: Instant, config: &SupervisorConfig) -> Verdict {
        let period = config.period;
        self.0
            .retain(|t| now.saturating_duration_since(*t) < period);
        self.0.push_back(now);
        let n = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        if n > config.max_restarts {
            Verdict::Spent { n }
        } else {
            Verdict::Restart {
                n,
                delay: backoff(config, n),
            }
        }
    }
}

/// `initial * 2^(n-1)`, capped at `max` (n >= 1). No jitter: the same exits give the same
/// delays.
pub(super) fn backoff(config: &SupervisorConfig, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(31);
    config
        .backoff_initial
        .saturating_mul(factor)
        .min(config.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::{Clock, ManualClock};

    /// The root supervisor's budget: 5 restarts in 30 s, 10 ms doubling up to 1 s.
    fn root() -> SupervisorConfig {
        SupervisorConfig {
            max_restarts: 5,
            period: Duration::from_secs(30),
            ..SupervisorConfig::default()
        }
    }

    #[test]
    fn five_restarts_in_30s_trip_on_the_sixth_and_refill_after_the_window() {
        let (clock, cfg) = (ManualClock::new(0), root());
        let mut exits = Exits::default();
        let mut delays = Vec::new();
        for _ in 0..5 {
            match exits.charge(clock.now(), &cfg) {
                Verdict::Restart { delay, .. } => delays.push(delay.as_millis()),
                v => panic!("within the budget, got {v:?}"),
            }
            clock.advance(Duration::from_secs(5));
        }
        assert_eq!(delays, [10, 20, 40, 80, 160]);
        // The 6th exit, 25 s after the first: over the budget.
        assert_eq!(exits.charge(clock.now(), &cfg), Verdict::Spent { n: 6 });

        // A fresh child that failed 5 times: once 30 s passed since the first, it is forgiven.
        let mut exits = Exits::default();
        for _ in 0..5 {
            exits.charge(clock.now(), &cfg);
            clock.advance(Duration::from_secs(1));
        }
        clock.advance(Duration::from_secs(25)); // 30 s after the first exit
        assert_eq!(
            exits.charge(clock.now(), &cfg),
            Verdict::Restart {
                n: 5,
                delay: Duration::from_millis(160)
            },
            "the first exit aged out of the window"
        );
        clock.advance(Duration::from_secs(31));
        assert_eq!(
            exits.charge(clock.now(), &cfg),
            Verdict::Restart {
                n: 1,
                delay: Duration::from_millis(10)
            },
            "a whole window later the budget is full again"
        );
    }

    #[test]
    fn exits_spaced_wider_than_the_period_never_spend_it() {
        let (clock, cfg) = (ManualClock::new(0), root());
        let mut exits = Exits::default();
        for _ in 0..100 {
            assert!(matches!(
                exits.charge(clock.now(), &cfg),
                Verdict::Restart { n: 1, .. }
            ));
            clock.advance(Duration::from_secs(30));
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let config = SupervisorConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..SupervisorConfig::default()
        };
        let delays: Vec<_> = (1..=5).map(|n| backoff(&config, n).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
        assert_eq!(backoff(&config, 100), Duration::from_millis(50));
    }
}
