//! Where a node's dispatcher sends what it learns: its registration and attempt reports.
//!
//! On a server the upstream is the local Raft engine (a follower forwards to the leader inside
//! raft); on a worker it is the servers, over the cluster transport.

use crate::machine::Machine;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
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

/// The local Raft engine.
pub struct LocalUpstream(pub EngineHandle<Machine>);

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
        let me = LocalUpstream(engine.clone());
        Box::pin(async move {
            // Works on a follower too: the proposal is forwarded to the leader, and we watch our
            // own applied state until the registration shows up.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut sent_at = None;
            loop {
                let now = tokio::time::Instant::now();
                // Sent again until it commits (a proposal forwarded as a leader changes can be
                // lost); apply takes the same registration once.
                if sent_at.is_none_or(|t: tokio::time::Instant| now - t >= REGISTER_RESEND) {
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
                    return Err(
                        "registering the node did not commit within 30s (no raft leader?)".into(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn report(&self, cmds: Vec<Command>) -> Result<(), String> {
        self.0.propose_nowait(cmds).map_err(|e| e.to_string())
    }
}
