//! How a runner executes an attempt. The node provides the implementations (process, builtins).

use std::future::Future;
use std::pin::Pin;
use troupe_scheduler::{Outcome, RunSpec};

/// Fires (or is dropped) when the attempt must stop: cancel, workflow timeout, shutdown.
pub type KillSignal = tokio::sync::oneshot::Receiver<()>;

pub trait Executor: Send + Sync + 'static {
    /// Work that finishes at once (`noop`, `echo`, `fail`): its outcome, with no task spawned.
    fn run_inline(&self, spec: &RunSpec) -> Option<Outcome>;
    /// Everything else; resolves when the attempt ends or `kill` fires.
    fn run(&self, spec: RunSpec, kill: KillSignal)
    -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}
