//! The leader's planner: turns ready tasks into placements and due deadlines into timeouts.
//!
//! Pure: it reads the applied state and `now_ms` and returns commands to propose. Apply
//! re-checks every placement, so a plan made on a stale view can only be refused, never
//! over-commit a node. The planner remembers what it proposed until that is applied, so it does
//! not propose the same placement twice.

use crate::command::{Assignment, Command};
use crate::state::{NodeStatus, State, TaskRef, TaskState, WorkflowId};
use std::collections::{BTreeMap, BTreeSet};

/// Most placements in one plan (one Raft entry stays small).
pub const ASSIGN_BATCH_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct Planner {
    /// Proposed placements not yet seen applied: task → (attempt, node).
    pending: BTreeMap<TaskRef, (u32, String)>,
    pending_timeouts: BTreeSet<WorkflowId>,
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Placements proposed and not yet applied.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Forgets everything proposed (after a leader change, proposals may have been lost).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.pending_timeouts.clear();
    }

    pub fn plan(&mut self, state: &State, now_ms: u64) -> Vec<Command> {
        self.prune(state);
        let mut out = Vec::new();
        let assignments = self.place(state, now_ms);
        if !assignments.is_empty() {
            out.push(Command::Assign(assignments));
        }
        for &(deadline, wf) in state.sched.deadlines.iter() {
            if deadline > now_ms {
                break;
            }
            if self.pending_timeouts.insert(wf) {
                out.push(Command::TimeoutWorkflow(wf));
            }
        }
        out
    }

    fn prune(&mut self, state: &State) {
        self.pending.retain(|r, (attempt, _)| {
            state
                .workflows
                .get(&r.wf)
                .and_then(|wf| wf.steps.get(r.step as usize))
                .and_then(|run| run.tasks.get(&r.item))
                .is_some_and(|t| {
                    t.attempt == *attempt
                        && matches!(t.state, TaskState::Queued | TaskState::Waiting { .. })
                })
        });
        self.pending_timeouts.retain(|wf| {
            state
                .workflows
                .get(wf)
                .is_some_and(|w| !w.status.is_terminal())
        });
    }

    fn place(&mut self, state: &State, now_ms: u64) -> Vec<Assignment> {
        // Free credits per node: slots + queue minus live attempts minus our own proposals.
        let mut credits: Vec<(String, u64, i64)> = state
            .sched
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Up)
            .map(|n| {
                (
                    n.id.clone(),
                    n.epoch,
                    (n.slots + n.queue) as i64 - n.assigned as i64,
                )
            })
            .collect();
        for (_, node) in self.pending.values() {
            if let Some(c) = credits.iter_mut().find(|c| &c.0 == node) {
                c.2 -= 1;
            }
        }
        let mut free: i64 = credits.iter().map(|c| c.2.max(0)).sum();
        let mut out = Vec::new();
        if free <= 0 {
            return out;
        }
        let due = state
            .sched
            .delayed
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .map(|(_, r)| r);
        for r in due.chain(state.sched.queue.iter()) {
            if free <= 0 || out.len() >= ASSIGN_BATCH_MAX {
                break;
            }
            if self.pending.contains_key(r) {
                continue;
            }
            let Some(task) = state
                .workflows
                .get(&r.wf)
                .and_then(|w| w.steps[r.step as usize].tasks.get(&r.item))
            else {
                continue;
            };
            // Spread: the node with the most free credits (bin-packing by resources comes with placement).
            let Some(best) = credits.iter_mut().filter(|c| c.2 > 0).max_by_key(|c| c.2) else {
                break;
            };
            best.2 -= 1;
            free -= 1;
            self.pending.insert(*r, (task.attempt, best.0.clone()));
            out.push(Assignment {
                task: *r,
                attempt: task.attempt,
                node: best.0.clone(),
                epoch: best.1,
            });
        }
        out
    }
}
