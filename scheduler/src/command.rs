//! Commands (what the Raft log carries), their outputs, and the effects apply asks the node for.

use crate::json::Json;
use crate::placement::{Capacity, Reserve};
use crate::spec::{Builtin, Spec};
use crate::state::{TaskRef, WorkflowId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One replicated state change. The leader stamps the time (`at_ms`) into the entry; apply
/// never reads a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A node (re)starts: its epoch is bumped and attempts it held are requeued as attempt + 1.
    RegisterNode(NodeInfo),
    /// A node's advertised capacity changed (a GPU appeared or vanished, memory limits moved).
    UpdateCapacity {
        node: String,
        capacity: Capacity,
    },
    /// An operator drains a node (no new work) or returns it to service. With a deadline, the
    /// attempts still running on it then are stopped and requeued elsewhere as attempt + 1.
    SetDraining {
        node: String,
        draining: bool,
        deadline_ms: Option<u64>,
    },
    /// The drain deadline passed: stop the node's attempts and requeue them as attempt + 1.
    Evict {
        node: String,
    },
    /// The leader saw no lease renewal from the node for the lease period: its attempts are
    /// requeued as attempt + 1 and its late reports are refused (their epoch is stale).
    NodeLost {
        node: String,
        epoch: u64,
    },
    Submit(Box<Submission>),
    /// Placements chosen by the leader; apply re-checks each one.
    Assign(Vec<Assignment>),
    /// Attempts a node has started.
    Started(Vec<AttemptRef>),
    /// Attempts a node has finished.
    Finished(Vec<Report>),
    Cancel(WorkflowId),
    Pause(WorkflowId),
    Resume(WorkflowId),
    /// Retry a failed, cancelled or timed-out workflow from where it failed.
    Retry(WorkflowId),
    TimeoutWorkflow(WorkflowId),
    /// Re-run a dead-lettered task.
    Redrive(u64),
    /// Re-run every dead letter the filter matches, in one entry (all or nothing): each runs
    /// again as attempt + 1 and then through every step after it.
    RedriveMany(DlqFilter),
    /// Give up on the dead letters the filter matches: they leave the queue, their items (and
    /// the items blocked behind them) are `discarded`, and the reason stays in the history.
    Discard {
        filter: DlqFilter,
        reason: String,
    },
    /// Retention: forget workflows that finished more than `retain_ms` before this entry's time
    /// (at most [`crate::state::COLLECT_MAX`] per command), with their idempotency keys and
    /// dead letters.
    Collect {
        retain_ms: u64,
    },
    /// Replica audit: every server hashes its applied state at this point of the log (the same
    /// state on every server) and keeps the hash, under `seq`.
    Audit {
        seq: u64,
    },
    /// The leader's hash for audit `seq`: a server whose own hash differs has diverged.
    AuditResult {
        seq: u64,
        hash: u64,
    },
    /// The owner's instance actor records what it has seen (`seq` only grows).
    Checkpoint {
        wf: WorkflowId,
        seq: u64,
        owner: String,
    },
    /// The leader saw these worker groups hold nothing for their step's `idle`: release them
    /// (apply re-checks that they are still idle). Appended last, so older entries decode.
    ReleaseWorkers(Vec<crate::state::GroupKey>),
}

/// Which dead letters a bulk operation takes. Fields combine with AND; an empty filter
/// matches nothing unless `all` is set (so a missing flag never redrives the whole queue).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqFilter {
    /// These ids only (empty: any id).
    pub ids: Vec<u64>,
    pub workflow: Option<WorkflowId>,
    /// A step id.
    pub step: Option<String>,
    /// Text the last error contains (case-sensitive).
    pub grep: Option<String>,
    /// Only entries at most this many ms old (against the time of the command).
    pub since_ms: Option<u64>,
    pub all: bool,
}

impl DlqFilter {
    /// True when it names no criterion at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.workflow.is_none()
            && self.step.is_none()
            && self.grep.is_none()
            && self.since_ms.is_none()
            && !self.all
    }

    pub fn matches(&self, d: &crate::state::DeadLetter, now_ms: u64) -> bool {
        (self.ids.is_empty() || self.ids.contains(&d.id))
            && self.workflow.is_none_or(|w| d.task.wf == w)
            && self.step.as_ref().is_none_or(|s| &d.step_id == s)
            && self
                .grep
                .as_ref()
                .is_none_or(|g| d.last_error.contains(g.as_str()))
            && self
                .since_ms
                .is_none_or(|s| d.at_ms >= now_ms.saturating_sub(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    /// Its HTTP API address (followers forward API calls to the leader's).
    pub api: String,
    /// Its Raft id if it is a server (0 for a worker).
    pub raft_id: u64,
    /// Random per process start: the engine hook of that process knows its own registration.
    pub incarnation: u64,
    /// Distinct for each registration a process makes: the same registration sent again (it
    /// is re-sent until it commits) is applied once.
    pub registration: u64,
    pub slots: u32,
    pub queue: u32,
    pub capacity: Capacity,
    pub reserved: Reserve,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub spec: Spec,
    /// Param overrides (names must be declared in the spec).
    pub params: Vec<(String, Json)>,
    pub idempotency_key: Option<String>,
    /// Digest of the spec and params, compared when an idempotency key is reused.
    pub digest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskRef,
    pub attempt: u32,
    pub node: String,
    pub epoch: u64,
    /// GPUs (by UUID) given to the attempt.
    pub gpus: Vec<String>,
}

/// The fencing token of an attempt: `(task, attempt, epoch)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub task: TaskRef,
    pub attempt: u32,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub at: AttemptRef,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded {
        output: Option<Json>,
    },
    Failed {
        error: String,
    },
    /// A failure that also says when a retry may start, or that none should (an `http`
    /// attempt answered 429 or 5xx with `Retry-After`, or another 4xx). Appended last: the
    /// variants before it keep their bincode index, so older log entries decode unchanged.
    FailedRetry {
        error: String,
        retry: RetryHint,
    },
    /// The step's worker is broken on the reporting node (its restart budget is spent there):
    /// the attempt fails, and the step is not placed on that node again until it restarts.
    /// Appended last, like `FailedRetry`.
    WorkerBroken {
        error: String,
    },
}

/// What a failed attempt says about its retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryHint {
    /// Not sooner than this long after the report is applied (the later of this and the
    /// step's backoff).
    After { ms: u64 },
    /// Do not retry: the task fails (or is dead-lettered) now, whatever attempts are left.
    Never,
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Done,
    Submitted {
        id: WorkflowId,
        created: bool,
    },
    /// The command was refused; the text says why and what to do.
    Rejected(String),
    /// What it names does not exist (a workflow, a node, a dead letter): HTTP 404.
    NotFound(String),
    /// It conflicts with what exists (an idempotency key used for another spec): HTTP 409.
    Conflict(String),
    /// For batches: how many items were accepted and how many refused (stale or invalid).
    Counted {
        accepted: u32,
        refused: u32,
    },
    /// A bulk DLQ operation: entries applied, entries refused, and why (the first few).
    Bulk {
        applied: u32,
        refused: u32,
        notes: Vec<String>,
    },
}

/// What the node has to do after an apply. Not replicated.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start an attempt (only the node named in it acts).
    Run(Box<RunSpec>),
    /// Stop an attempt that is no longer wanted (cancel, timeout, workflow failed).
    Kill {
        task: TaskRef,
        attempt: u32,
        node: String,
    },
    /// The workflow's instance actor runs on this node (submitted, moved after a node loss, or
    /// revived by retry / redrive).
    Owned {
        wf: WorkflowId,
        owner: String,
    },
    Changed(WorkflowId),
    Finished(WorkflowId),
    /// This server's state differs from the leader's at an audit (the text says where).
    Diverged(String),
    /// These worker groups were released (their step or workflow ended, they sat idle, their
    /// node was reset): their nodes stop those workers.
    StopWorkers(Vec<crate::state::GroupKey>),
}

/// Everything a runner needs to execute one attempt, templates already rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub task: TaskRef,
    pub attempt: u32,
    pub epoch: u64,
    pub node: String,
    pub workflow: String,
    pub step_id: String,
    pub item: Option<Json>,
    /// `from` steps: the upstream item's output (`$TROUPE_INPUT`).
    pub input: Option<Json>,
    pub iteration: u32,
    pub launch: Launch,
    pub timeout_ms: Option<u64>,
    /// GPUs (by UUID) the attempt may use: the runner sets `CUDA_VISIBLE_DEVICES`.
    pub gpus: Vec<String>,
    /// Log files, relative to the node's data dir (`.out`, `.err` and `.json` are appended).
    pub log_stem: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Launch {
    Process {
        argv: Vec<String>,
        env: Vec<(String, String)>,
    },
    Builtin {
        handler: Builtin,
        with: Json,
    },
    /// A task of a worker step: the node's worker pool for (workflow, step, argv, env) runs it.
    Worker {
        /// What starts the step's workers: the same for every item of the step, so one copy is
        /// shared by the items one `Assign` entry gives (`Arc`; the wire carries the value).
        launch: std::sync::Arc<WorkerLaunch>,
        /// Worker processes the node's group for this step (and GPU set) holds now: the node
        /// runs at most this many (`scheduler/src/state/workers.rs`).
        workers: u32,
    },
}

/// How a worker step's worker processes are started (templates rendered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLaunch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub worker: crate::spec::WorkerSpec,
}

impl RunSpec {
    /// Sets the worker count of a worker step's launch (no-op for other launches).
    pub fn set_workers(&mut self, n: u32) {
        if let Launch::Worker { workers, .. } = &mut self.launch {
            *workers = n;
        }
    }
}
