//! Warm workers in the replicated state: which worker processes of which worker step each node
//! holds, what they hold, and where a step's worker is broken.
//!
//! A worker step's items do not each take a credit and the step's resources: the **worker**
//! does, from the moment apply gives a node a new worker until the group is released. The
//! worker processes of one step on one node (with one GPU set) form a **worker group**; the
//! step's items are placed into groups, at most [`DEPTH_BATCHES`] batches per worker, so a
//! node never holds more of a step's items than its workers can take (backpressure). Items go
//! to a group that has room first (a warm worker), and a new worker is started only where the
//! node has a free credit, the resources and is under the step's `max_workers`.
//!
//! A group is released (its credits and resources come back) when its step ends, when its
//! workflow ends, when its node is lost or restarts, or when it held no items for the step's
//! `idle` (the leader proposes [`crate::Command::ReleaseWorkers`]). A step whose worker broke
//! on a node (its restart budget spent there, [`crate::Outcome::WorkerBroken`]) is not placed
//! on that node again until the node restarts.
//!
//! This table is kept apart from the rest of the state in snapshots (see
//! `actors/src/machine.rs`): a snapshot written before it existed restores with no groups.

use super::model::*;
use crate::Effect;
use crate::spec::{Action, StepSpec, WorkerSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Items of a step one new worker holds on its node: this many batches (one in flight, one
/// queued on its stdin, the rest waiting at the node while reports commit).
pub const DEPTH_BATCHES: u32 = 4;

/// The most batches one worker's depth grows to. A group whose workers answer faster than a
/// report commits runs dry between refills; apply then doubles its depth (see
/// [`Workers::task_left`]). Slow items never run a group dry, so they keep the small depth
/// that shares a step's tail evenly among nodes; fast ones (a no-op worker answers 64 items
/// in microseconds) get up to this many batches in flight per worker.
pub const DEPTH_BATCHES_MAX: u32 = 64;

/// A group: the workers of one worker step on one node, pinned to one GPU set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    pub node: String,
    pub wf: WorkflowId,
    pub step: u16,
    /// The GPUs (by UUID) every worker of the group is pinned to (empty: none).
    pub gpus: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerGroup {
    /// Worker processes held: each holds one of the node's credits and the step's resources.
    pub workers: u32,
    /// Live attempts (assigned or running) placed in the group.
    pub tasks: u32,
    /// Items one worker holds at most: [`DEPTH_BATCHES`] × the step's batch at first, doubled
    /// each time the group runs dry, up to [`DEPTH_BATCHES_MAX`] batches.
    pub depth: u32,
    /// When the group last had no attempts (`None` while it has some).
    pub idle_since_ms: Option<u64>,
    /// The step's `idle` (the group is released after holding nothing for this long).
    pub idle_ms: u64,
}

impl WorkerGroup {
    pub fn room(&self) -> u32 {
        (self.workers * self.depth).saturating_sub(self.tasks)
    }

    /// It held no attempt for its step's `idle` at `now_ms`.
    pub fn idle_at(&self, now_ms: u64) -> bool {
        self.tasks == 0
            && self
                .idle_since_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.idle_ms)
    }
}

/// Every node's warm workers, and where a step's worker is broken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workers {
    pub groups: BTreeMap<GroupKey, WorkerGroup>,
    /// (workflow, step) → node → why its worker is broken there.
    pub broken: BTreeMap<(WorkflowId, u16), BTreeMap<String, String>>,
}

/// The step's worker spec, if it is a worker step.
pub fn worker_of(step: &StepSpec) -> Option<&WorkerSpec> {
    match &step.action {
        Action::Worker(w) => Some(w),
        _ => None,
    }
}

/// Most workers of a step on `node` (`max_workers`, default the node's slots).
pub fn max_workers(w: &WorkerSpec, node: &Node) -> u32 {
    if w.max_workers == 0 {
        node.slots.max(1)
    } else {
        w.max_workers
    }
}

pub fn worker_depth(w: &WorkerSpec) -> u32 {
    w.batch.max(1).saturating_mul(DEPTH_BATCHES)
}

/// What apply does with a worker step's item placed on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Into the group's warm workers (they have room): the item takes nothing more.
    Join,
    /// With a new worker, which takes a credit and the step's resources (the caller checks
    /// that they fit).
    NewWorker,
    /// Refused: the node is not up, or it is at `max_workers` or out of credits with its
    /// workers full.
    No,
}

impl Workers {
    /// Whether a worker step's item may be placed into `key`'s group on `node`, and how.
    pub fn admit(&self, node: &Node, key: &GroupKey, w: &WorkerSpec) -> Admit {
        // A node where the step's worker is broken is not refused here: the planner places
        // there only when no other node can take the item (so a step broken everywhere still
        // ends, through its retries and the DLQ, instead of waiting forever).
        if node.status != NodeStatus::Up {
            return Admit::No;
        }
        let group = self.groups.get(key);
        // A broken group only drains (it is released once its last attempt reports).
        if group.is_some() && self.is_broken(&key.node, key.wf, key.step) {
            return Admit::No;
        }
        if group.is_some_and(|g| g.room() > 0) {
            return Admit::Join;
        }
        // A GPU group is one worker, pinned to its GPUs: another worker needs other GPUs.
        let pinned = !key.gpus.is_empty() && group.is_some();
        if pinned
            || node.credits() == 0
            || self.count(&key.node, key.wf, key.step) >= max_workers(w, node)
        {
            return Admit::No;
        }
        Admit::NewWorker
    }

    /// Workers of (wf, step) on `node`, over all its GPU sets.
    pub fn count(&self, node: &str, wf: WorkflowId, step: u16) -> u32 {
        self.groups
            .iter()
            .filter(|(k, _)| k.node == node && k.wf == wf && k.step == step)
            .map(|(_, g)| g.workers)
            .sum()
    }

    pub fn is_broken(&self, node: &str, wf: WorkflowId, step: u16) -> bool {
        self.broken
            .get(&(wf, step))
            .is_some_and(|m| m.contains_key(node))
    }

    /// The workers of a group (0 when there is none).
    pub fn workers_in(&self, key: &GroupKey) -> u32 {
        self.groups.get(key).map(|g| g.workers).unwrap_or(0)
    }

    /// An attempt of the group's step left its node (finished, failed, killed, requeued).
    /// When that leaves the group less than one batch per worker, its workers are about to
    /// wait for a refill, so the group's depth doubles (up to [`DEPTH_BATCHES_MAX`] batches):
    /// it only happens where a worker answers all it holds before a report commits. Decided
    /// in apply from the log alone, so every replica grows the same groups at the same entry.
    pub fn task_left(&mut self, key: &GroupKey, at: u64, batch: u32) {
        if let Some(g) = self.groups.get_mut(key) {
            let batch = batch.max(1);
            let dry = g.tasks >= g.workers.saturating_mul(batch)
                && g.tasks.saturating_sub(1) < g.workers.saturating_mul(batch);
            g.tasks = g.tasks.saturating_sub(1);
            if dry {
                g.depth = g
                    .depth
                    .saturating_mul(2)
                    .min(batch.saturating_mul(DEPTH_BATCHES_MAX));
            }
            if g.tasks == 0 {
                g.idle_since_ms = Some(at);
            }
        }
    }

    /// Forgets the groups matching `pick` and gives their credits and resources back to their
    /// nodes (a node that was reset, lost or re-registered, has nothing to give back: the
    /// subtraction saturates). Returns the released keys (the nodes stop those workers).
    pub fn release(
        &mut self,
        nodes: &mut BTreeMap<String, Node>,
        spec: impl Fn(WorkflowId, u16) -> Option<crate::spec::Resources>,
        mut pick: impl FnMut(&GroupKey, &WorkerGroup) -> bool,
    ) -> Vec<GroupKey> {
        let gone: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(k, g)| pick(k, g))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            let Some(g) = self.groups.remove(k) else {
                continue;
            };
            let (Some(n), Some(req)) = (nodes.get_mut(&k.node), spec(k.wf, k.step)) else {
                continue;
            };
            n.assigned = n.assigned.saturating_sub(g.workers);
            let w = g.workers as u64;
            n.used.cpu_milli = n.used.cpu_milli.saturating_sub(req.cpu_milli as u64 * w);
            n.used.memory_bytes = n.used.memory_bytes.saturating_sub(req.memory_bytes * w);
            for gpu in &k.gpus {
                n.used.gpus.remove(gpu);
            }
        }
        gone
    }

    /// Groups idle for their step's `idle` at `now_ms` (the leader proposes their release).
    pub fn idle_groups(&self, now_ms: u64) -> Vec<GroupKey> {
        self.groups
            .iter()
            .filter(|(_, g)| g.idle_at(now_ms))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The resources one worker of (workflow, step) holds, looked up in `workflows`.
fn resources_in(
    workflows: &imbl::OrdMap<WorkflowId, Workflow>,
) -> impl Fn(WorkflowId, u16) -> Option<crate::spec::Resources> + '_ {
    |wf, step| {
        workflows
            .get(&wf)
            .and_then(|w| w.spec.steps.get(step as usize))
            .map(|s| s.resources.clone())
    }
}

impl State {
    /// `Command::ReleaseWorkers`: the groups named that are still idle are released.
    pub(super) fn release_idle_workers(&mut self, keys: Vec<GroupKey>, at: u64) {
        let keys: std::collections::BTreeSet<GroupKey> = keys.into_iter().collect();
        let specs = resources_in(&self.workflows);
        self.sched
            .release_workers(&specs, |k, g| keys.contains(k) && g.idle_at(at));
    }

    /// A node was reset (lost, restarted, evicted): its groups are gone with its attempts.
    pub(super) fn release_node_workers(&mut self, node: &str) {
        let specs = resources_in(&self.workflows);
        self.sched.release_workers(&specs, |k, _| k.node == node);
    }
}

impl Sched {
    /// Releases the worker groups that `pick` chooses (their credits and resources go back to
    /// their nodes) and tells the nodes to stop those workers.
    pub(crate) fn release_workers(
        &mut self,
        specs: &dyn Fn(WorkflowId, u16) -> Option<crate::spec::Resources>,
        pick: impl FnMut(&GroupKey, &super::workers::WorkerGroup) -> bool,
    ) {
        let gone = self.workers.release(&mut self.nodes, specs, pick);
        if !gone.is_empty() {
            self.effects.push(Effect::StopWorkers(gone));
        }
    }

    /// A step ended (or its workflow did): its workers everywhere have nothing left to do.
    pub(crate) fn release_step_workers(&mut self, wf: &Workflow, i: usize) {
        if worker_of(&wf.spec.steps[i]).is_none() {
            return;
        }
        let req = wf.spec.steps[i].resources.clone();
        let (id, step) = (wf.id, i as u16);
        self.release_workers(&|_, _| Some(req.clone()), |k, _| {
            k.wf == id && k.step == step
        });
        self.workers.broken.remove(&(id, step));
    }

    /// The step's worker is broken on the node that ran this attempt: the attempt fails (its
    /// retries apply), the node's group of the step takes no more items and is released once
    /// its last attempt reports, and the planner places the step's items on other nodes while
    /// any other node can run them.
    pub(crate) fn worker_broken(
        &mut self,
        wf: &mut Workflow,
        at_ref: &crate::command::AttemptRef,
        error: String,
        at: u64,
    ) {
        let r = at_ref.task;
        let i = r.step as usize;
        let node = wf.steps[i]
            .tasks
            .get(&r.item)
            .and_then(|t| t.state.placement())
            .map(|(n, _)| n.to_string());
        if let Some(node) = &node {
            let first = self
                .workers
                .broken
                .entry((wf.id, r.step))
                .or_default()
                .insert(node.clone(), error.clone())
                .is_none();
            if first {
                let id = &wf.spec.steps[i].id;
                wf.log(
                    at,
                    format!("step {id}: its worker is broken on node {node}: {error}; its items go to other nodes"),
                );
            }
        }
        // Its group drains: released when its last attempt leaves (`unlink`).
        self.task_failed(wf, r, error, at);
    }
}

/// What one node shows of its warm workers (`GET /v1/nodes`, `troupe nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWorkers {
    /// `wf-N/<step>`.
    pub step: String,
    pub workers: u32,
    pub tasks: u32,
    pub gpus: Vec<String>,
}

impl State {
    /// The warm worker groups on `node`, and the steps whose worker is broken there.
    pub fn node_workers(&self, node: &str) -> (Vec<NodeWorkers>, Vec<String>) {
        let step_name = |wf: WorkflowId, step: u16| {
            let id = self
                .workflows
                .get(&wf)
                .and_then(|w| w.spec.steps.get(step as usize))
                .map(|s| s.id.clone())
                .unwrap_or_else(|| format!("step {step}"));
            format!("{}/{id}", wf_name(wf))
        };
        let groups = self
            .sched
            .workers
            .groups
            .iter()
            .filter(|(k, _)| k.node == node)
            .map(|(k, g)| NodeWorkers {
                step: step_name(k.wf, k.step),
                workers: g.workers,
                tasks: g.tasks,
                gpus: k.gpus.clone(),
            })
            .collect();
        let broken = self
            .sched
            .workers
            .broken
            .iter()
            .filter_map(|((wf, step), m)| {
                m.get(node)
                    .map(|why| format!("{}: {why}", step_name(*wf, *step)))
            })
            .collect();
        (groups, broken)
    }
}
