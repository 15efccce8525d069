//! The leader's planner: turns ready tasks into placements and due deadlines into timeouts.
//!
//! Pure: it reads the applied state and `now_ms` and returns commands to propose. Apply
//! re-checks every placement, so a plan made on a stale view can only be refused, never
//! over-commit a node. The planner remembers what it proposed until that is applied, so it does
//! not propose the same placement twice.

use crate::command::{Assignment, Command};
use crate::placement::{Placer, Strategy};
use crate::spec::{StepSpec, WorkerSpec};
use crate::state::{
    GroupKey, Node, NodeStatus, State, TaskRef, TaskState, WorkflowId, max_workers, worker_of,
};
use std::collections::{BTreeMap, BTreeSet};

/// A proposal not seen applied after this long is planned again.
pub const PENDING_TTL_MS: u64 = 3_000;

/// Most placements in one plan (one Raft entry stays small).
pub const ASSIGN_BATCH_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct Planner {
    /// Proposed placements not yet seen applied: task → (attempt, node, gpus).
    pending: BTreeMap<TaskRef, (u32, String, Vec<String>, u64)>,
    /// Proposed timeouts and evictions, with when they were proposed.
    pending_timeouts: BTreeMap<WorkflowId, u64>,
    pending_evictions: BTreeMap<String, u64>,
    /// Proposed releases of idle worker groups.
    pending_releases: BTreeMap<GroupKey, u64>,
    strategy: Strategy,
    /// Retention: finished workflows are forgotten this long after they end (None: kept).
    retain_ms: Option<u64>,
    /// When the last `Collect` was proposed, and whether old workflows were left then.
    last_collect_ms: u64,
    collect_backlog: bool,
    /// Replica audits: when the last was proposed, and the one whose result is still to send.
    last_audit_ms: u64,
    audit_pending: Option<u64>,
    /// How often to audit (default [`AUDIT_EVERY_MS`]).
    audit_every_ms: Option<u64>,
}

/// How often the leader has the servers compare their state.
pub const AUDIT_EVERY_MS: u64 = 60_000;

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_strategy(strategy: Strategy) -> Self {
        Planner {
            strategy,
            ..Self::default()
        }
    }

    /// Forget finished workflows `retain_ms` after they end.
    pub fn with_retention(mut self, retain_ms: Option<u64>) -> Self {
        self.retain_ms = retain_ms;
        self
    }

    /// Audit the replicas this often (ms).
    pub fn with_audit_every(mut self, ms: u64) -> Self {
        self.audit_every_ms = Some(ms.max(100));
        self
    }

    /// Placements proposed and not yet applied.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Forgets everything proposed (after a leader change, proposals may have been lost).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.pending_timeouts.clear();
        self.pending_evictions.clear();
        self.pending_releases.clear();
        self.audit_pending = None;
    }

    pub fn plan(&mut self, state: &State, now_ms: u64) -> Vec<Command> {
        // The state's time never goes back (apply keeps it monotonic); plan on the same clock.
        let now_ms = now_ms.max(state.sched.stats.last_at_ms);
        self.prune(state, now_ms);
        let mut out = Vec::new();
        let assignments = self.place(state, now_ms);
        if !assignments.is_empty() {
            out.push(Command::Assign(assignments));
        }
        for n in state.sched.nodes.values() {
            let due = n.drain_deadline_ms.is_some_and(|d| d <= now_ms);
            if due && n.assigned > 0 && !self.pending_evictions.contains_key(&n.id) {
                self.pending_evictions.insert(n.id.clone(), now_ms);
                out.push(Command::Evict { node: n.id.clone() });
            }
        }
        let idle: Vec<GroupKey> = state
            .sched
            .workers
            .idle_groups(now_ms)
            .into_iter()
            .filter(|k| !self.pending_releases.contains_key(k))
            .collect();
        if !idle.is_empty() {
            for k in &idle {
                self.pending_releases.insert(k.clone(), now_ms);
            }
            out.push(Command::ReleaseWorkers(idle));
        }
        // Replica audit: hash at one log position on every server, then send the leader's hash.
        if let Some(seq) = self.audit_pending
            && let Some(&hash) = state.audit.hashes.get(&seq)
        {
            out.push(Command::AuditResult { seq, hash });
            self.audit_pending = None;
        }
        if self.last_audit_ms == 0 {
            self.last_audit_ms = now_ms;
        }
        if now_ms.saturating_sub(self.last_audit_ms)
            >= self.audit_every_ms.unwrap_or(AUDIT_EVERY_MS)
        {
            self.last_audit_ms = now_ms;
            self.audit_pending = Some(now_ms);
            out.push(Command::Audit { seq: now_ms });
        }
        if let Some(retain) = self.retain_ms {
            // Every quarter of the retention (1 s to 1 min): old finished workflows go. While
            // they come faster than one `Collect` (10,000) takes, every second.
            let every = if self.collect_backlog {
                1_000
            } else {
                (retain / 4).clamp(1_000, 60_000)
            };
            if now_ms.saturating_sub(self.last_collect_ms) >= every {
                self.last_collect_ms = now_ms;
                let cutoff = now_ms.saturating_sub(retain);
                let old = state
                    .workflows
                    .values()
                    .filter(|w| w.status.is_terminal() && w.finished_ms.is_some_and(|f| f < cutoff))
                    .take(crate::state::COLLECT_MAX + 1)
                    .count();
                self.collect_backlog = old > crate::state::COLLECT_MAX;
                if old > 0 {
                    out.push(Command::Collect { retain_ms: retain });
                }
            }
        }
        for &(deadline, wf) in state.sched.deadlines.iter() {
            if deadline > now_ms {
                break;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = self.pending_timeouts.entry(wf) {
                e.insert(now_ms);
                out.push(Command::TimeoutWorkflow(wf));
            }
        }
        out
    }

    /// Forgets proposals that were applied, and proposals older than [`PENDING_TTL_MS`]: apply
    /// may have refused them (a stale view) or a leader change may have lost them; either way
    /// the work must be planned again, not wait forever.
    fn prune(&mut self, state: &State, now_ms: u64) {
        let fresh = |at: &u64| now_ms.saturating_sub(*at) < PENDING_TTL_MS;
        self.pending.retain(|r, (attempt, _, _, at)| {
            fresh(at)
                && state
                    .workflows
                    .get(&r.wf)
                    .and_then(|wf| wf.steps.get(r.step as usize))
                    .and_then(|run| run.tasks.get(&r.item))
                    .is_some_and(|t| {
                        t.attempt == *attempt
                            && matches!(t.state, TaskState::Queued | TaskState::Waiting { .. })
                    })
        });
        self.pending_timeouts.retain(|wf, at| {
            fresh(at)
                && state
                    .workflows
                    .get(wf)
                    .is_some_and(|w| !w.status.is_terminal())
        });
        self.pending_releases
            .retain(|k, at| fresh(at) && state.sched.workers.groups.contains_key(k));
        self.pending_evictions.retain(|n, at| {
            fresh(at)
                && state
                    .sched
                    .nodes
                    .get(n)
                    .is_some_and(|n| n.drain_deadline_ms.is_some())
        });
    }

    fn place(&mut self, state: &State, now_ms: u64) -> Vec<Assignment> {
        let mut placer = Placer::new(state.sched.nodes.values(), self.strategy);
        let mut warm = WarmView::new(state);
        for (r, (_, node, gpus, _)) in &self.pending {
            let Some(step) = step_of(state, r) else {
                continue;
            };
            if worker_of(step).is_some() {
                warm.hold(r, node, gpus);
            } else {
                placer.hold(node, &step.resources, gpus);
            }
        }
        warm.hold_new_workers(state, &mut placer);
        let mut out = Vec::new();
        let due: Vec<TaskRef> = state
            .sched
            .delayed
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .map(|(_, r)| *r)
            .collect();
        for r in &due {
            if self.exhausted(&out, &placer, &warm) {
                return out;
            }
            self.try_place(state, now_ms, r, &mut placer, &mut warm, &mut out);
        }
        // The queue, in order. Items of a worker step whose workers are full (and that can
        // start no more) are skipped a workflow at a time when it is the workflow's only
        // running step, and the walk stops after ASSIGN_BATCH_MAX misses in a row: a plan
        // never walks a whole queue of 100,000 waiting items after every commit.
        let mut from = std::ops::Bound::Unbounded;
        let mut misses = 0;
        while let Some(r) = state
            .sched
            .queue
            .range((from, std::ops::Bound::Unbounded))
            .next()
            .copied()
        {
            if self.exhausted(&out, &placer, &warm) || misses >= ASSIGN_BATCH_MAX {
                break;
            }
            from = std::ops::Bound::Excluded(r);
            match self.try_place(state, now_ms, &r, &mut placer, &mut warm, &mut out) {
                Placed::Yes => misses = 0,
                Placed::No => misses += 1,
                Placed::StepFull => {
                    misses += 1;
                    let only_step = state.workflows.get(&r.wf).is_some_and(|w| {
                        w.steps
                            .iter()
                            .filter(|s| s.status == crate::state::StepStatus::Running)
                            .count()
                            <= 1
                    });
                    if only_step {
                        from = std::ops::Bound::Excluded(TaskRef {
                            wf: r.wf,
                            item: u32::MAX,
                            step: u16::MAX,
                        });
                    }
                }
            }
        }
        out
    }

    /// Every attempt needs a credit or room in a warm worker: with neither left anywhere, the
    /// rest of the queue waits.
    fn exhausted(&self, out: &[Assignment], placer: &Placer, warm: &WarmView) -> bool {
        out.len() >= ASSIGN_BATCH_MAX || (!placer.has_credit() && warm.room_total <= 0)
    }

    fn try_place(
        &mut self,
        state: &State,
        now_ms: u64,
        r: &TaskRef,
        placer: &mut Placer,
        warm: &mut WarmView,
        out: &mut Vec<Assignment>,
    ) -> Placed {
        if self.pending.contains_key(r) {
            return Placed::No;
        }
        let Some(task) = state
            .workflows
            .get(&r.wf)
            .and_then(|w| w.steps[r.step as usize].tasks.get(&r.item))
        else {
            return Placed::No;
        };
        let Some(step) = step_of(state, r) else {
            return Placed::No;
        };
        // A task that fits nowhere now waits in the queue (it fits somewhere once work finishes:
        // submit refused requests no node could ever run).
        let chosen = match worker_of(step) {
            Some(w) => {
                let c = warm.choose(state, placer, r, step, w);
                if c.is_none() && warm.full.contains(&(r.wf, r.step)) {
                    return Placed::StepFull;
                }
                c
            }
            None => placer.choose(&step.resources),
        };
        let Some((node, epoch, gpus)) = chosen else {
            return Placed::No;
        };
        self.pending
            .insert(*r, (task.attempt, node.clone(), gpus.clone(), now_ms));
        out.push(Assignment {
            task: *r,
            attempt: task.attempt,
            node,
            epoch,
            gpus,
        });
        Placed::Yes
    }
}

enum Placed {
    Yes,
    No,
    /// A worker step that can take no more items in this plan.
    StepFull,
}

/// The planner's view of the warm worker groups for one plan: room left in each (applied
/// groups, less what this planner placed into them and has not seen applied), and the workers
/// it started that apply has not seen yet.
struct WarmView {
    room: BTreeMap<GroupKey, i64>,
    /// Workers of (node, wf, step) started by pending placements.
    started: BTreeMap<(String, WorkflowId, u16), u32>,
    /// Steps that can take no more items in this plan.
    full: BTreeSet<(WorkflowId, u16)>,
    room_total: i64,
}

impl WarmView {
    fn new(state: &State) -> Self {
        let room: BTreeMap<GroupKey, i64> = state
            .sched
            .workers
            .groups
            .iter()
            .filter(|(k, _)| {
                state
                    .sched
                    .nodes
                    .get(&k.node)
                    .is_some_and(|n| n.status == NodeStatus::Up)
                    && !state.sched.workers.is_broken(&k.node, k.wf, k.step)
            })
            .map(|(k, g)| (k.clone(), g.room() as i64))
            .collect();
        let room_total = room.values().sum();
        WarmView {
            room,
            started: BTreeMap::new(),
            full: BTreeSet::new(),
            room_total,
        }
    }

    /// A placement proposed earlier and not yet applied.
    fn hold(&mut self, r: &TaskRef, node: &str, gpus: &[String]) {
        let key = GroupKey {
            node: node.to_string(),
            wf: r.wf,
            step: r.step,
            gpus: gpus.to_vec(),
        };
        *self.room.entry(key).or_insert(0) -= 1;
        self.room_total -= 1;
    }

    /// Pending placements beyond a group's room started new workers: they hold credits and
    /// resources in this plan's view of the nodes.
    fn hold_new_workers(&mut self, state: &State, placer: &mut Placer) {
        for (k, room) in self.room.iter_mut().filter(|(_, r)| **r < 0) {
            let Some(step) = state
                .workflows
                .get(&k.wf)
                .and_then(|w| w.spec.steps.get(k.step as usize))
            else {
                continue;
            };
            let Some(w) = worker_of(step) else {
                continue;
            };
            let depth = crate::state::worker_depth(w) as i64;
            let n = (-*room + depth - 1) / depth;
            for _ in 0..n {
                placer.hold(&k.node, &step.resources, &k.gpus);
            }
            *room += n * depth;
            self.room_total += n * depth;
            *self
                .started
                .entry((k.node.clone(), k.wf, k.step))
                .or_default() += n as u32;
        }
    }

    /// Where a worker step's item goes: the warm group with the most room (an item never waits
    /// for a worker that is not started), else a new worker on the node the placer picks among
    /// those under `max_workers` (nodes where the step's worker is broken only if no other
    /// can take it).
    fn choose(
        &mut self,
        state: &State,
        placer: &mut Placer,
        r: &TaskRef,
        step: &StepSpec,
        w: &WorkerSpec,
    ) -> Option<(String, u64, Vec<String>)> {
        if self.full.contains(&(r.wf, r.step)) {
            return None;
        }
        let best = self
            .room
            .iter_mut()
            .filter(|(k, room)| k.wf == r.wf && k.step == r.step && **room > 0)
            .max_by_key(|(_, room)| **room);
        if let Some((k, room)) = best {
            *room -= 1;
            self.room_total -= 1;
            let epoch = state.sched.nodes.get(&k.node)?.epoch;
            return Some((k.node.clone(), epoch, k.gpus.clone()));
        }
        let workers = &state.sched.workers;
        let under_max = |n: &Node| {
            let started = self
                .started
                .get(&(n.id.clone(), r.wf, r.step))
                .copied()
                .unwrap_or(0);
            workers.count(&n.id, r.wf, r.step) + started < max_workers(w, n)
        };
        // Where the step's worker is broken, one worker at a time (apply lets no item into a
        // broken group), and only when no other node can take the item.
        let room = &self.room;
        let draining = |n: &Node| {
            room.keys()
                .chain(workers.groups.keys())
                .any(|k| k.node == n.id && k.wf == r.wf && k.step == r.step)
        };
        let chosen = placer
            .choose_where(&step.resources, |n| {
                under_max(n) && !workers.is_broken(&n.id, r.wf, r.step)
            })
            .or_else(|| placer.choose_where(&step.resources, |n| under_max(n) && !draining(n)));
        let Some((node, epoch, gpus)) = chosen else {
            self.full.insert((r.wf, r.step));
            return None;
        };
        // A worker started where the step's worker is broken takes this one item (apply lets
        // no other into a broken group).
        let room = if workers.is_broken(&node, r.wf, r.step) {
            0
        } else {
            crate::state::worker_depth(w) as i64 - 1
        };
        let key = GroupKey {
            node: node.clone(),
            wf: r.wf,
            step: r.step,
            gpus: gpus.clone(),
        };
        *self.room.entry(key).or_insert(0) += room;
        self.room_total += room;
        *self
            .started
            .entry((node.clone(), r.wf, r.step))
            .or_default() += 1;
        Some((node, epoch, gpus))
    }
}

fn step_of<'a>(state: &'a State, r: &TaskRef) -> Option<&'a StepSpec> {
    state
        .workflows
        .get(&r.wf)
        .and_then(|w| w.spec.steps.get(r.step as usize))
}
