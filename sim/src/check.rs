//! The properties checked while a run goes (after every apply on every replica) and the
//! records they need. The end-of-run checks are in `crate::verdict`.

use std::collections::{BTreeMap, BTreeSet};
use troupe_scheduler::state::{NodeStatus, TaskState, worker_of};
use troupe_scheduler::{Outcome, Report, State, TaskRef};

/// Violations found and how many property checks ran.
#[derive(Debug, Default)]
pub struct Checks {
    pub violations: Vec<String>,
    pub checked: u64,
    /// What the faults made happen (node losses, refused reports, ...), to show coverage.
    pub events: BTreeMap<&'static str, u64>,
    /// G7: the first state hash seen at each applied index, and which replica had it.
    hash_at: BTreeMap<u64, (u64, u64)>,
    /// G3: the results accepted, by the log index that accepted them (shared by the replicas:
    /// they apply one log, so a replica that restored a snapshot is judged with the rest).
    pub accepted: Accepted,
    /// G4: the leader of each term (raft's election safety).
    leaders: BTreeMap<u64, u64>,
}

impl Checks {
    pub fn fail(&mut self, now: u64, what: String) {
        // The first few are enough to replay and read.
        if self.violations.len() < 20 {
            self.violations.push(format!("t={now} {what}"));
        }
    }

    pub fn count(&mut self, what: &'static str) {
        *self.events.entry(what).or_default() += 1;
    }

    /// G4: at most one leader per term.
    pub fn leader(&mut self, now: u64, term: u64, id: u64) {
        self.checked += 1;
        match self.leaders.insert(term, id) {
            Some(other) if other != id => {
                self.fail(now, format!("G4: r{id} and r{other} both lead term {term}"))
            }
            _ => {}
        }
    }

    /// G7: every replica that applied `index` holds the same state there. True the first time
    /// an index is seen (it is then traced).
    pub fn hash_at(&mut self, now: u64, replica: u64, index: u64, hash: u64) -> bool {
        self.checked += 1;
        match self.hash_at.get(&index) {
            None => {
                self.hash_at.insert(index, (replica, hash));
                true
            }
            Some(&(r, h)) if h != hash => {
                self.fail(
                    now,
                    format!("G7: r{replica} and r{r} hold different states at index {index} ({hash:x} != {h:x})"),
                );
                false
            }
            Some(_) => false,
        }
    }
}

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

/// G3 records: each accepted result with the index of the entry that accepted it. Every
/// replica applies the same log, so the same acceptance is seen once per replica at one index;
/// an acceptance of the same (task, attempt) at another index is a second result.
#[derive(Debug, Default)]
pub struct Accepted {
    /// (task, attempt) with an accepted result -> the index.
    results: BTreeMap<(TaskRef, u32), u64>,
    /// Tasks with an accepted success (the workload never retries or redrives, so one) -> the
    /// index.
    successes: BTreeMap<TaskRef, u64>,
}

impl Accepted {
    /// Records a report accepted at `index`; the error says which rule it breaks.
    pub fn record(&mut self, index: u64, rep: &Report) -> Result<(), String> {
        let first = *self
            .results
            .entry((rep.at.task, rep.at.attempt))
            .or_insert(index);
        if first != index {
            return Err(format!(
                "G3: a second result accepted for {:?} attempt {} (first at index {first})",
                rep.at.task, rep.at.attempt
            ));
        }
        if matches!(rep.outcome, Outcome::Succeeded { .. }) {
            let first = *self.successes.entry(rep.at.task).or_insert(index);
            if first != index {
                return Err(format!(
                    "G3: a second success accepted for {:?} (attempt {}; first at index {first})",
                    rep.at.task, rep.at.attempt
                ));
            }
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

/// One line per event; hashed as it goes, kept only when printing.
#[derive(Debug, Default)]
pub struct Trace {
    pub keep: bool,
    pub lines: Vec<String>,
    pub hash: u64,
    pub count: u64,
}

impl Trace {
    pub fn new(keep: bool) -> Self {
        Trace {
            keep,
            lines: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            count: 0,
        }
    }

    pub fn line(&mut self, now: u64, text: std::fmt::Arguments<'_>) {
        let s = format!("{now:>7} {text}");
        for b in s.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= b as u64;
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.count += 1;
        if self.keep {
            self.lines.push(s);
        }
    }
}
