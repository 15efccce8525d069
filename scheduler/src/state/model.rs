//! The replicated state: what every server holds after applying the same commands.
//!
//! Only `BTreeMap`/`BTreeSet` (deterministic order); no clocks; times come from commands.

use crate::json::Json;
use crate::placement::{Capacity, Reserve, Usage};
use crate::spec::Spec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub type WorkflowId = u64;

/// Formats a workflow id the way users see it (`wf-12`).
pub fn wf_name(id: WorkflowId) -> String {
    format!("wf-{id}")
}

/// Parses `wf-12` (or `12`).
pub fn parse_wf(text: &str) -> Option<WorkflowId> {
    text.strip_prefix("wf-").unwrap_or(text).parse().ok()
}

/// One task: an item of a step (item 0 for steps without `map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    pub wf: WorkflowId,
    pub step: u16,
    pub item: u32,
}

impl TaskRef {
    /// Log files of an attempt, relative to the node's data dir: one directory per step, no
    /// dot in the stem (the extension is set with `Path::with_extension`).
    pub fn log_stem(&self, step_id: &str, attempt: u32) -> String {
        format!(
            "logs/{}/{}/{}-attempt-{}",
            wf_name(self.wf),
            step_id,
            self.item,
            attempt
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WfStatus {
    Running,
    Succeeded,
    /// Finished, but an optional step failed or tasks went to the dead-letter queue.
    Degraded,
    Failed,
    Cancelled,
    TimedOut,
}

impl WfStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, WfStatus::Running)
    }
    pub fn name(self) -> &'static str {
        match self {
            WfStatus::Running => "running",
            WfStatus::Succeeded => "succeeded",
            WfStatus::Degraded => "degraded",
            WfStatus::Failed => "failed",
            WfStatus::Cancelled => "cancelled",
            WfStatus::TimedOut => "timed_out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
    pub fn name(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Ready to place.
    Queued,
    /// Waiting for its retry backoff to pass.
    Waiting { due_ms: u64 },
    /// Placed on a node; the node may not have started it yet.
    Assigned {
        node: String,
        epoch: u64,
        at_ms: u64,
        gpus: Vec<String>,
    },
    /// The node reported that it started.
    Running {
        node: String,
        epoch: u64,
        since_ms: u64,
        gpus: Vec<String>,
    },
}

impl TaskState {
    /// The node (and GPUs) holding this attempt, if it is placed.
    pub fn placement(&self) -> Option<(&str, &[String])> {
        match self {
            TaskState::Assigned { node, gpus, .. } | TaskState::Running { node, gpus, .. } => {
                Some((node, gpus))
            }
            _ => None,
        }
    }
}

/// A task that is not finished. Finished tasks leave the map (their results stay in the step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Monotonic per task: every new try (retry, requeue, loop iteration, redrive) is attempt + 1.
    pub attempt: u32,
    /// Failed attempts in the current iteration (checked against `retries.attempts`).
    pub failures: u32,
    pub state: TaskState,
    pub last_error: Option<String>,
}

/// The items a map step runs over, fixed when the step starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Items {
    Single,
    Range {
        start: i64,
    },
    /// The spec's inline `items` (not copied).
    Inline,
    /// An upstream step's output array, fixed when the step started.
    List(Vec<Json>),
}

/// A compact set of item numbers (finished items of a map step).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitSet(Vec<u64>);

impl BitSet {
    pub fn insert(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let had = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !had
    }
    pub fn contains(&self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.0.get(w).is_some_and(|x| x & (1 << b) != 0)
    }
    pub fn count(&self) -> u32 {
        self.0.iter().map(|x| x.count_ones()).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRun {
    pub status: StepStatus,
    pub items: Items,
    pub total: u32,
    /// Next item to materialize as a task (lazy map expansion).
    pub next_item: u32,
    pub done: BitSet,
    pub succeeded: u32,
    pub failed: u32,
    pub dead_lettered: u32,
    pub tasks: BTreeMap<u32, Task>,
    /// Outputs by item (only non-null ones).
    pub outputs: BTreeMap<u32, Json>,
    pub iteration: u32,
    /// New tasks start above this attempt number (raised by retry-from-failure).
    pub attempt_floor: u32,
    /// Highest attempt number placed so far.
    pub max_attempt: u32,
    pub error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

impl StepRun {
    pub fn new() -> Self {
        StepRun {
            status: StepStatus::Pending,
            items: Items::Single,
            total: 0,
            next_item: 0,
            done: BitSet::default(),
            succeeded: 0,
            failed: 0,
            dead_lettered: 0,
            tasks: BTreeMap::new(),
            outputs: BTreeMap::new(),
            iteration: 0,
            attempt_floor: 0,
            max_attempt: 0,
            error: None,
            started_ms: None,
            finished_ms: None,
        }
    }
}

impl Default for StepRun {
    fn default() -> Self {
        Self::new()
    }
}

/// One entry of a workflow's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// What the owner's instance actor last recorded (see `Command::Checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub at_ms: u64,
    pub owner: String,
    /// Steps finished when the checkpoint was taken, with their status.
    pub steps: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: WorkflowId,
    pub spec: Spec,
    /// Effective params (declared defaults overridden at submit).
    pub params: Vec<(String, Json)>,
    pub idempotency_key: Option<String>,
    pub status: WfStatus,
    pub paused: bool,
    pub reason: Option<String>,
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub steps: Vec<StepRun>,
    pub checkpoint: Option<Checkpoint>,
    /// The server whose WorkflowInstance actor owns this workflow (records its checkpoints);
    /// moved to another server when that node is lost.
    pub owner: Option<String>,
    pub history: Vec<Event>,
    /// Events dropped from the front of `history` (it is bounded).
    pub history_dropped: u64,
}

/// Most audit events kept per workflow.
pub const HISTORY_MAX: usize = 500;

impl Workflow {
    pub fn log(&mut self, at_ms: u64, what: impl Into<String>) {
        if self.history.len() >= HISTORY_MAX {
            self.history.remove(0);
            self.history_dropped += 1;
        }
        self.history.push(Event {
            at_ms,
            what: what.into(),
        });
    }
    pub fn name(&self) -> String {
        wf_name(self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub task: TaskRef,
    pub step_id: String,
    pub attempt: u32,
    pub attempts: u32,
    pub last_error: String,
    pub log_stem: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Up,
    /// Takes no new work (operator drain).
    Draining,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// Bumped every time the node (re)registers; assignments carry it (fencing).
    pub epoch: u64,
    pub status: NodeStatus,
    /// Attempts the node runs at once.
    pub slots: u32,
    /// Attempts it may hold queued beyond `slots` (so a slot never waits for a commit).
    pub queue: u32,
    /// Live attempts (assigned or running) on this node.
    pub assigned: u32,
    /// What the node advertises (CPU, memory, GPUs).
    pub capacity: Capacity,
    /// What the operator keeps back from scheduling.
    pub reserved: Reserve,
    pub labels: BTreeMap<String, String>,
    /// What its live attempts hold.
    pub used: Usage,
    /// Its HTTP API address.
    pub api: String,
    /// Its Raft id if it is a server (0 for a worker).
    pub raft_id: u64,
    /// The process start that registered this epoch.
    pub incarnation: u64,
    /// When a drain with a deadline ends (attempts still running then are evicted).
    pub drain_deadline_ms: Option<u64>,
}

/// The whole replicated state machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub workflows: BTreeMap<WorkflowId, Workflow>,
    pub next_workflow: WorkflowId,
    /// Idempotency key → (workflow, digest of spec + params).
    pub idempotency: BTreeMap<String, (WorkflowId, u64)>,
    pub sched: Sched,
}

/// The parts of the state the DAG rules change beside one workflow (kept apart so a workflow
/// and these can be borrowed at the same time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sched {
    pub dlq: BTreeMap<u64, DeadLetter>,
    pub next_dlq: u64,
    pub nodes: BTreeMap<String, Node>,
    /// Tasks ready to place, in order.
    pub queue: BTreeSet<TaskRef>,
    /// Tasks waiting for a retry backoff: (due, task).
    pub delayed: BTreeSet<(u64, TaskRef)>,
    /// Workflow deadlines: (deadline, workflow).
    pub deadlines: BTreeSet<(u64, WorkflowId)>,
    /// Counters for the operator (and tests).
    pub stats: Stats,
    /// What the node must do after this apply (not replicated: drained by the shell).
    #[serde(skip)]
    pub effects: Vec<crate::Effect>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub commands: u64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub stale_reports: u64,
    pub rejected_assignments: u64,
    pub last_at_ms: u64,
}
