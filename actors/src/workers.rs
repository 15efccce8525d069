//! The node's worker host, as the dispatcher sees it: attempts of worker steps
//! (`Launch::Worker`) go to the actor registered as [`WORKERS_NAME`] instead of a TaskRunner,
//! and their reports come back as `DispatchMsg::WorkerDone`. The host itself (pools of
//! long-lived worker processes) lives in the node crate (`node/src/exec/worker/`).

use troupe_scheduler::{RunSpec, TaskRef};

/// Registered name of the worker host.
pub const WORKERS_NAME: &str = "troupe.workers";

pub enum WorkerHostMsg {
    /// Attempts to run; each is answered once with a report (or dropped when killed).
    Submit(Vec<RunSpec>),
    /// Stop these attempts: their results are dropped, nothing is reported.
    Kill(Vec<(TaskRef, u32)>),
    /// Self-fencing: stop every worker process and drop every attempt.
    StopAll,
    /// These workflows ended (applied on this server): stop their pools and worker processes
    /// now rather than after `idle`. Nodes that apply nothing (cluster workers) rely on `idle`.
    WorkflowsEnded(Vec<troupe_scheduler::WorkflowId>),
    /// These worker groups were released in the replicated state (their step or workflow
    /// ended, they sat idle, the node was reset): stop their workers.
    StopGroups(Vec<troupe_scheduler::state::GroupKey>),
    /// From one of the host's own pools (by its id): reports to pass on to the dispatcher.
    Done(u64, Vec<troupe_scheduler::Report>),
}

/// Tells this node's worker host to stop these groups' workers (no host: nothing runs).
pub fn stop_groups(groups: Vec<troupe_scheduler::state::GroupKey>) {
    if let Some(w) =
        ractor::registry::where_is(WORKERS_NAME).map(ractor::ActorRef::<WorkerHostMsg>::from)
    {
        let _ = w.cast(WorkerHostMsg::StopGroups(groups));
    }
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for WorkerHostMsg {}
