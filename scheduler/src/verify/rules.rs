//! The rules a committed history must keep, stated independently of apply: G4 fencing
//! ([`may_accept`]), G3 one accepted result per attempt ([`Accepted`]) and G6 resource safety
//! ([`capacity`]). Shared by the simulator (`sim/`) and `troupe chaos verify` ([`super::replay`]).

use crate::state::{NodeStatus, TaskState, worker_of};
use crate::{Outcome, Report, State, TaskRef};
use std::collections::{BTreeMap, BTreeSet};

/// G4 fencing, stated independently of apply: a report may be accepted only for the task's
/// current `(attempt, epoch)` while it is placed, or (a success only) for exactly the attempt
/// that was requeued when its node was lost while the task waits to be placed again
/// (`Task::requeued_from`, docs/ARCHITECTURE.md "Leases, lost nodes and fencing").
pub fn may_accept(state: &State, rep: &Report) -> bool {
    let Some(wf) = state.workflows.get(&rep.at.task.wf) else {
        return false;
    };
    let Some(task) = state.task(rep.at.task) else {
        return false;
    };
    match &task.state {
        TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } => {
            task.attempt == rep.at.attempt && *epoch == rep.at.epoch
        }
        TaskState::Queued => {
            !wf.status.is_terminal()
                && matches!(rep.outcome, Outcome::Succeeded { .. })
                && task.requeued_from == Some((rep.at.epoch, rep.at.attempt))
                && task.attempt == rep.at.attempt + 1
        }
        TaskState::Waiting { .. } => false,
    }
}

/// G3 records of one replica (rebuilt when it replays its log after a restart).
#[derive(Debug, Default)]
pub struct Accepted {
    /// (task, attempt) with an accepted result.
    results: BTreeSet<(TaskRef, u32)>,
    /// Tasks with an accepted success (at most one each: a succeeded item never runs again).
    successes: BTreeSet<TaskRef>,
}

impl Accepted {
    /// Records an accepted report; the error says which rule it breaks.
    pub fn record(&mut self, rep: &Report) -> Result<(), String> {
        if !self.results.insert((rep.at.task, rep.at.attempt)) {
            return Err(format!(
                "G3: a second result accepted for {:?} attempt {}",
                rep.at.task, rep.at.attempt
            ));
        }
        if matches!(rep.outcome, Outcome::Succeeded { .. }) && !self.successes.insert(rep.at.task) {
            return Err(format!(
                "G3: a second success accepted for {:?} (attempt {})",
                rep.at.task, rep.at.attempt
            ));
        }
        Ok(())
    }
}

/// G6: per node, what the live attempts hold (recounted from the tasks, not read from the
/// node's counters) fits its capacity, and the counters agree with the recount. Returns the
/// number of checks made.
pub fn capacity(state: &State) -> Result<u64, String> {
    let mut live: BTreeMap<&str, (u32, u64, u64, Vec<&String>)> = BTreeMap::new();
    for wf in state.workflows.values() {
        for (i, run) in wf.steps.iter().enumerate() {
            for t in run.tasks.values() {
                let Some((node, gpus)) = t.state.placement() else {
                    continue;
                };
                let spec = &wf.spec.steps[i];
                let e = live.entry(node).or_default();
                e.0 += 1;
                if worker_of(spec).is_none() {
                    e.1 += spec.resources.cpu_milli as u64;
                    e.2 += spec.resources.memory_bytes;
                    e.3.extend(gpus.iter());
                }
            }
        }
    }
    let mut checks = 0;
    for n in state.sched.nodes.values() {
        checks += 1;
        let (count, cpu, mem, gpus) = live.remove(n.id.as_str()).unwrap_or_default();
        if n.status == NodeStatus::Down && count > 0 {
            return Err(format!(
                "G6: node {} is down and holds {count} attempts",
                n.id
            ));
        }
        if count > n.slots + n.queue || n.assigned > n.slots + n.queue {
            return Err(format!(
                "G6: node {} holds {count} attempts (counter {}), over slots + queue = {}",
                n.id,
                n.assigned,
                n.slots + n.queue
            ));
        }
        if cpu > n.allocatable_cpu() || n.used.cpu_milli > n.allocatable_cpu() {
            return Err(format!(
                "G6: node {} cpu over-committed: {cpu} m (counter {}) > {} m",
                n.id,
                n.used.cpu_milli,
                n.allocatable_cpu()
            ));
        }
        if mem > n.allocatable_memory() || n.used.memory_bytes > n.allocatable_memory() {
            return Err(format!(
                "G6: node {} memory over-committed: {mem} B > {} B",
                n.id,
                n.allocatable_memory()
            ));
        }
        let unique: BTreeSet<&&String> = gpus.iter().collect();
        if unique.len() != gpus.len() {
            return Err(format!("G6: a GPU of {} is given twice: {gpus:?}", n.id));
        }
        if n.status != NodeStatus::Down && (cpu != n.used.cpu_milli || count != n.assigned) {
            return Err(format!(
                "G6: node {} counters drifted: {count} attempts / {cpu} m live, counters say {} / {} m",
                n.id, n.assigned, n.used.cpu_milli
            ));
        }
    }
    if let Some((node, (count, ..))) = live.into_iter().next() {
        return Err(format!(
            "G6: {count} attempts placed on unknown node {node}"
        ));
    }
    Ok(checks)
}
