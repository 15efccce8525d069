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
///
/// Ordered by (workflow, item, step): the ready queue places the oldest workflow's lowest item
/// first, whichever step it is at, so a document already deep in a pipeline goes on before new
/// documents enter it (streaming keeps the time to the first finished item short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    pub wf: WorkflowId,
    pub step: u16,
    pub item: u32,
}

impl Ord for TaskRef {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.wf, self.item, self.step).cmp(&(o.wf, o.item, o.step))
    }
}

impl PartialOrd for TaskRef {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
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
    /// Finished, but some items are dead-lettered, blocked behind a dead letter, or discarded.
    Degraded,
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
            StepStatus::Degraded => "degraded",
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
    /// Times its node was lost (or restarted, or evicted) while it held this task; bounded by
    /// [`LOST_MAX`], apart from the failure count.
    pub lost: u32,
    /// The `(epoch, attempt)` that was requeued the last time its node was lost: a success
    /// reported late for it is still accepted while the task waits to be placed again.
    pub requeued_from: Option<(u64, u32)>,
}

/// Most workflows one `Collect` forgets (bounds the time of one apply).
pub const COLLECT_MAX: usize = 10_000;

/// Node losses a task may go through; the next one dead-letters it (or fails its step): an
/// attempt that keeps taking its node down must not be run without limit.
pub const LOST_MAX: u32 = 3;

impl Task {
    /// A new try, queued.
    pub fn queued(attempt: u32) -> Task {
        Task {
            attempt,
            failures: 0,
            state: TaskState::Queued,
            last_error: None,
            lost: 0,
            requeued_from: None,
        }
    }
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
    /// A lane step (`map.from`, or `map.over` of a whole map step): the items of its lane,
    /// read from upstream when an attempt is rendered.
    Lane,
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
    pub fn remove(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        match self.0.get_mut(w) {
            Some(x) if *x & (1 << b) != 0 => {
                *x &= !(1 << b);
                true
            }
            _ => false,
        }
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What happened to one item at one step: the item trace (`troupe item wf-1 176`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemTrace {
    /// The last attempt placed.
    pub attempt: u32,
    /// Attempts placed in all (retries, requeues, redrives).
    pub placed: u32,
    pub node: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The last failure (kept after a later success, for the record).
    pub last_error: Option<String>,
    /// Why an operator discarded the item's dead letter.
    pub discarded: Option<String>,
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
    /// Items skipped by a per-item `when`, or routed away upstream (every lane parent skipped them).
    pub skipped: BitSet,
    /// Dead-lettered items: item → dead letter id.
    pub dead: BTreeMap<u32, u64>,
    /// Items waiting behind an upstream dead letter: item → that dead letter's id.
    pub blocked: BTreeMap<u32, u64>,
    /// Items whose dead letter (here or upstream) an operator discarded.
    pub discarded: BitSet,
    /// Lane items that may run, waiting for room in the step's `parallelism` window.
    pub ready: BTreeSet<u32>,
    /// Per-item record of attempts (kept for items that were placed at least once).
    pub trace: BTreeMap<u32, ItemTrace>,
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
            skipped: BitSet::default(),
            dead: BTreeMap::new(),
            blocked: BTreeMap::new(),
            discarded: BitSet::default(),
            ready: BTreeSet::new(),
            trace: BTreeMap::new(),
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

impl StepRun {
    pub fn dead_lettered(&self) -> u32 {
        self.dead.len() as u32
    }
    /// Items that reached an end at this step (succeeded, skipped, dead-lettered, blocked or
    /// discarded).
    pub fn resolved(&self) -> u32 {
        self.done.count()
            + self.skipped.count()
            + self.dead.len() as u32
            + self.blocked.len() as u32
            + self.discarded.count()
    }
    /// Items that did not get through (dead-lettered, blocked or discarded).
    pub fn unfinished_items(&self) -> u32 {
        self.dead.len() as u32 + self.blocked.len() as u32 + self.discarded.count()
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

/// Most audit events kept per workflow. Per-item events go to the item trace, not here.
pub const HISTORY_MAX: usize = 500;
/// The first events (submit, first placements) are never dropped: events are dropped from
/// just after them.
pub const HISTORY_HEAD: usize = 20;

impl Workflow {
    pub fn log(&mut self, at_ms: u64, what: impl Into<String>) {
        if self.history.len() >= HISTORY_MAX {
            self.history.remove(HISTORY_HEAD);
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
    /// The item's value (for lane steps, the original item), so an operator sees the document id.
    pub item_value: Option<Json>,
    /// The node that ran the last attempt.
    pub node: Option<String>,
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
    /// Which registration of that process (see `NodeInfo::registration`).
    pub registration: u64,
    /// When a drain with a deadline ends (attempts still running then are evicted).
    pub drain_deadline_ms: Option<u64>,
}

/// Deserializes an `imbl::OrdMap` through a `BTreeMap` (the same encoding): imbl's own impl
/// reserves the decoded length up front (`Vec::with_capacity`), so a forged length in a
/// snapshot asked for hundreds of gigabytes and aborted the process (found by
/// `actors/tests/fuzz.rs`). A `BTreeMap` grows with the entries actually read.
fn cautious_map<'de, D, K, V>(d: D) -> Result<imbl::OrdMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    Ok(BTreeMap::<K, V>::deserialize(d)?.into_iter().collect())
}

/// The whole replicated state machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Persistent maps (`imbl::OrdMap`: ordered like a `BTreeMap`, and serialized the same way):
    /// a clone shares them, so a snapshot copies the state in O(running work) and serializes it
    /// off the Raft thread.
    #[serde(deserialize_with = "cautious_map")]
    pub workflows: imbl::OrdMap<WorkflowId, Workflow>,
    pub next_workflow: WorkflowId,
    /// Idempotency key → (workflow, digest of spec + params).
    #[serde(deserialize_with = "cautious_map")]
    pub idempotency: imbl::OrdMap<String, (WorkflowId, u64)>,
    pub sched: Sched,
    /// This server's replica audits (not replicated, not in snapshots).
    #[serde(skip)]
    pub audit: Audit,
}

impl State {
    /// One task, if it exists.
    pub fn task(&self, r: TaskRef) -> Option<&Task> {
        self.workflows
            .get(&r.wf)?
            .steps
            .get(r.step as usize)?
            .tasks
            .get(&r.item)
    }

    /// Rebuilds the derived indexes (not in snapshots) from the workflows: call after decoding
    /// a state.
    pub fn rebuild_indexes(&mut self) {
        let mut on_node: BTreeMap<String, BTreeSet<TaskRef>> = BTreeMap::new();
        for id in &self.sched.running {
            let Some(wf) = self.workflows.get(id) else {
                continue;
            };
            for (i, run) in wf.steps.iter().enumerate() {
                for (item, task) in &run.tasks {
                    if let Some((node, _)) = task.state.placement() {
                        on_node
                            .entry(node.to_string())
                            .or_default()
                            .insert(TaskRef {
                                wf: wf.id,
                                step: i as u16,
                                item: *item,
                            });
                    }
                }
            }
        }
        self.sched.on_node = on_node;
    }
}

/// Keeps the entries of `map` for which `keep` holds (`imbl::OrdMap` has no `retain`).
pub fn retain<K: Ord + Clone, V: Clone>(
    map: &mut imbl::OrdMap<K, V>,
    mut keep: impl FnMut(&K, &V) -> bool,
) {
    let gone: Vec<K> = map
        .iter()
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in gone {
        map.remove(&k);
    }
}

/// Hashes of this server's applied state at audit points, and what comparing them found.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Audit seq → hash of the state when `Command::Audit` was applied (the newest few).
    pub hashes: BTreeMap<u64, u64>,
    /// The last audit compared with the leader's hash, and whether it matched.
    pub last_checked: Option<(u64, bool)>,
    /// Set once a comparison failed: where this replica diverged.
    pub diverged: Option<String>,
}

/// Audit hashes kept (older ones are dropped).
pub const AUDITS_KEPT: usize = 16;

// The audit describes this server, not the replicated state: two replicas are equal whatever
// their audits say.
impl PartialEq for Audit {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The parts of the state the DAG rules change beside one workflow (kept apart so a workflow
/// and these can be borrowed at the same time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sched {
    #[serde(deserialize_with = "cautious_map")]
    pub dlq: imbl::OrdMap<u64, DeadLetter>,
    pub next_dlq: u64,
    pub nodes: BTreeMap<String, Node>,
    /// Tasks ready to place, in order.
    pub queue: BTreeSet<TaskRef>,
    /// Tasks waiting for a retry backoff: (due, task).
    pub delayed: BTreeSet<(u64, TaskRef)>,
    /// Workflow deadlines: (deadline, workflow).
    pub deadlines: BTreeSet<(u64, WorkflowId)>,
    /// Workflows that are not finished (so work per submit or per node event is in running
    /// workflows, not in every workflow the state retains).
    pub running: BTreeSet<WorkflowId>,
    /// Live (assigned or running) tasks by node: reconciliation, node loss and eviction look at
    /// a node's tasks, not at every task of every running workflow. Derived from the workflows
    /// (not in snapshots; rebuilt by [`State::rebuild_indexes`] after a restore) and kept by
    /// the one place that links a task to a node (assign) and the one that unlinks it.
    #[serde(skip)]
    pub on_node: BTreeMap<String, BTreeSet<TaskRef>>,
    /// Warm workers: each node's worker groups and where a step's worker is broken. Replicated,
    /// but kept apart in snapshots (a second section after the state, so snapshots from before
    /// it restore with none): see [`super::workers`].
    #[serde(skip)]
    pub workers: super::workers::Workers,
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
