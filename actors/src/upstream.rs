//! Where a node's dispatcher sends what it learns: its registration and attempt reports.
//!
//! On a server the upstream is the local Raft engine (a follower forwards to the leader inside
//! raft); on a worker it is the servers, over the cluster transport.

use crate::machine::Machine;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use troupe_clock::SharedClock;
use troupe_raft_log::EngineHandle;
use troupe_scheduler::{Command, NodeInfo};

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub trait Upstream: Send + Sync + 'static {
    /// Registers (or re-registers) the node; resolves to its new epoch once committed.
    fn register(&self, info: NodeInfo) -> BoxFut<Result<u64, String>>;
    /// Proposes reports without waiting; `Err` means "not now, keep them and retry".
    fn report(&self, cmds: Vec<Command>) -> Result<(), String>;
}

/// A new registration number (per process; with the incarnation it names one registration).
pub fn registration_nonce() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How often a registration that has not committed is sent again.
pub const REGISTER_RESEND: Duration = Duration::from_millis(500);
/// How long a server's registration may take to commit before the dispatcher gives up.
pub const REGISTER_WITHIN: Duration = Duration::from_secs(30);

/// Whether a registration last sent at `sent_at` (never: `None`) is due again at `now`.
pub fn resend_due(sent_at: Option<Instant>, now: Instant) -> bool {
    sent_at.is_none_or(|t| now.saturating_duration_since(t) >= REGISTER_RESEND)
}

/// The local Raft engine, and the node's clock (when to send again, when to give up).
pub struct LocalUpstream(pub EngineHandle<Machine>, pub SharedClock);

impl LocalUpstream {
    fn epoch_of(&self, node: &str) -> u64 {
        let state = self.0.state();
        let m = state.read().unwrap_or_else(|e| e.into_inner());
        m.state.sched.nodes.get(node).map(|n| n.epoch).unwrap_or(0)
    }
}

impl Upstream for LocalUpstream {
    fn register(&self, mut info: NodeInfo) -> BoxFut<Result<u64, String>> {
        info.registration = registration_nonce();
        let engine = self.0.clone();
        let node = info.node.clone();
        let before = self.epoch_of(&node);
        let clock = self.1.clone();
        let me = LocalUpstream(engine.clone(), clock.clone());
        Box::pin(async move {
            // Works on a follower too: the proposal is forwarded to the leader, and we watch our
            // own applied state until the registration shows up.
            let deadline = clock.now() + REGISTER_WITHIN;
            let mut sent_at = None;
            loop {
                let now = clock.now();
                // Sent again until it commits (a proposal forwarded as a leader changes can be
                // lost); apply takes the same registration once.
                if resend_due(sent_at, now) {
                    match engine.propose_nowait(vec![Command::RegisterNode(info.clone())]) {
                        Ok(()) => sent_at = Some(now),
                        Err(e) => tracing::debug!(%e, "registration not proposed yet"),
                    }
                }
                let epoch = me.epoch_of(&node);
                if epoch > before {
                    return Ok(epoch);
                }
                if now > deadline {
                    return Err(format!(
                        "registering the node did not commit within {}s (no raft leader?)",
                        REGISTER_WITHIN.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn report(&self, cmds: Vec<Command>) -> Result<(), String> {
        self.0.propose_nowait(cmds).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::{Clock, ManualClock};

    #[test]
    fn a_registration_is_sent_again_every_half_second_of_the_clock() {
        let clock = ManualClock::new(0);
        let t0 = clock.now();
        assert!(resend_due(None, t0), "the first send is due at once");
        clock.advance(REGISTER_RESEND - Duration::from_millis(1));
        assert!(!resend_due(Some(t0), clock.now()));
        clock.advance(Duration::from_millis(1));
        assert!(resend_due(Some(t0), clock.now()));
        // A clock that went back (a skew removed) never makes it due early.
        assert!(!resend_due(Some(clock.now()), t0));
    }
}
