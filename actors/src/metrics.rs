//! What a node counts about the work it applies and its leases, for the Prometheus exporter in
//! `troupe-node` (`node/src/metrics/`). No metrics library here: plain integers updated where
//! the events happen, read at scrape time.
//!
//! - [`TaskMetrics`] lives in [`crate::machine::Machine`] and is updated by apply itself, under
//!   the state's write lock it already holds (no other lock, no allocation in the common case):
//!   it compares each reported task before and after `State::apply`. It is process-local, not
//!   replicated: every server counts what it applies (the same numbers on each), from the
//!   process start, entries replayed at start included.
//! - [`LEASES`]: atomics for renewals, expiries and fences, bumped where they happen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use troupe_raft_log::LatencyHistogram;
use troupe_scheduler::state::{TaskState, Workflow};
use troupe_scheduler::{AttemptRef, Command, Outcome, Report, State, TaskRef};

/// Most `(workflow name, step id)` label pairs kept; later ones are counted under
/// `("other", "other")` so a flood of distinct workflow names cannot grow the scrape without
/// limit.
pub const STEP_SERIES_MAX: usize = 1000;

/// The label value of the overflow bucket.
pub const OTHER: &str = "other";

/// Upper bounds (seconds) of the task duration and queue-wait buckets: 10 ms to 2 h (the
/// times come from the log's millisecond timestamps).
pub const TASK_BUCKETS_S: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 7200.0,
];

/// Counts of one step (of every workflow with that name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounters {
    /// Attempts whose `Started` report was applied.
    pub started: u64,
    /// Items the step finished successfully.
    pub succeeded: u64,
    /// Failed attempts whose report was accepted (each retry's failure counts).
    pub failed: u64,
    /// Failed attempts that were given another try.
    pub retried: u64,
    /// Items sent to the dead-letter queue.
    pub dead_lettered: u64,
}

/// Task counters by `(workflow name, step id)` and two histograms, updated in apply.
#[derive(Debug)]
pub struct TaskMetrics {
    steps: BTreeMap<String, BTreeMap<String, StepCounters>>,
    series: usize,
    /// From the `Started` report to the accepted `Finished` report (log time).
    pub duration: LatencyHistogram,
    /// From the assignment to the `Started` report (log time): time spent in the node's queue
    /// and starting the process.
    pub queue_wait: LatencyHistogram,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        TaskMetrics {
            steps: BTreeMap::new(),
            series: 0,
            duration: LatencyHistogram::new(&TASK_BUCKETS_S),
            queue_wait: LatencyHistogram::new(&TASK_BUCKETS_S),
        }
    }
}

/// What [`TaskMetrics::before`] saw, for [`TaskMetrics::after`].
pub struct Watch {
    started: Vec<(TaskRef, u32, u64)>,
    finished: Vec<Seen>,
    /// `(task's workflow and step, succeeded, dead letters)` before apply.
    steps: Vec<(TaskRef, u32, usize)>,
}

struct Seen {
    task: TaskRef,
    attempt: u32,
    failed: bool,
    since_ms: Option<u64>,
    /// Still `Assigned`: its `Started` had not been applied (a fast attempt's report can commit
    /// first); counted as started when the report is accepted, with its assignment time.
    unstarted_ms: Option<u64>,
}

fn step_key(t: TaskRef) -> TaskRef {
    TaskRef { item: 0, ..t }
}

fn live(state: &State, at: &AttemptRef) -> Option<TaskState> {
    let wf = state.workflows.get(&at.task.wf)?;
    let task = wf
        .steps
        .get(at.task.step as usize)?
        .tasks
        .get(&at.task.item)?;
    let epoch = match &task.state {
        TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } => *epoch,
        _ => return None,
    };
    (task.attempt == at.attempt && epoch == at.epoch).then(|| task.state.clone())
}

impl TaskMetrics {
    /// Before `State::apply(cmd)`: notes the tasks `cmd` reports on (only `Started` and
    /// `Finished` are watched).
    pub fn before(state: &State, cmd: &Command) -> Option<Watch> {
        match cmd {
            Command::Started(refs) => Some(Watch {
                started: refs
                    .iter()
                    .filter_map(|at| match live(state, at)? {
                        TaskState::Assigned { at_ms, .. } => Some((at.task, at.attempt, at_ms)),
                        _ => None,
                    })
                    .collect(),
                finished: Vec::new(),
                steps: Vec::new(),
            }),
            Command::Finished(reports) => Some(Self::before_finished(state, reports)),
            _ => None,
        }
    }

    fn before_finished(state: &State, reports: &[Report]) -> Watch {
        let mut finished = Vec::with_capacity(reports.len());
        let mut steps: Vec<(TaskRef, u32, usize)> = Vec::new();
        for r in reports {
            let Some(st) = live(state, &r.at) else {
                continue;
            };
            let key = step_key(r.at.task);
            if !steps.iter().any(|(k, _, _)| *k == key)
                && let Some(run) = state
                    .workflows
                    .get(&key.wf)
                    .and_then(|w| w.steps.get(key.step as usize))
            {
                steps.push((key, run.succeeded, run.dead.len()));
            }
            finished.push(Seen {
                task: r.at.task,
                attempt: r.at.attempt,
                failed: !matches!(r.outcome, Outcome::Succeeded { .. }),
                since_ms: match &st {
                    TaskState::Running { since_ms, .. } => Some(*since_ms),
                    _ => None,
                },
                unstarted_ms: match &st {
                    TaskState::Assigned { at_ms, .. } => Some(*at_ms),
                    _ => None,
                },
            });
        }
        Watch {
            started: Vec::new(),
            finished,
            steps,
        }
    }

    /// After `State::apply`: counts what changed for the watched tasks.
    pub fn after(&mut self, state: &State, at_ms: u64, w: Watch) {
        for (task, attempt, assigned_ms) in w.started {
            let Some(wf) = state.workflows.get(&task.wf) else {
                continue;
            };
            let now_running = wf
                .steps
                .get(task.step as usize)
                .and_then(|s| s.tasks.get(&task.item))
                .is_some_and(|t| {
                    t.attempt == attempt && matches!(t.state, TaskState::Running { .. })
                });
            if now_running {
                self.step(wf, task.step).started += 1;
                self.queue_wait
                    .observe(Duration::from_millis(at_ms.saturating_sub(assigned_ms)));
            }
        }
        for s in w.finished {
            let Some(wf) = state.workflows.get(&s.task.wf) else {
                continue;
            };
            let after = wf
                .steps
                .get(s.task.step as usize)
                .and_then(|r| r.tasks.get(&s.task.item))
                .map(|t| t.attempt);
            // Refused (fenced) reports leave the task as it was.
            if after == Some(s.attempt) {
                continue;
            }
            if let Some(since) = s.since_ms {
                self.duration
                    .observe(Duration::from_millis(at_ms.saturating_sub(since)));
            }
            if let Some(assigned) = s.unstarted_ms {
                self.step(wf, s.task.step).started += 1;
                self.queue_wait
                    .observe(Duration::from_millis(at_ms.saturating_sub(assigned)));
            }
            if s.failed {
                let c = self.step(wf, s.task.step);
                c.failed += 1;
                if after.is_some_and(|a| a > s.attempt) {
                    c.retried += 1;
                }
            }
        }
        for (key, succeeded, dead) in w.steps {
            let Some(wf) = state.workflows.get(&key.wf) else {
                continue;
            };
            let Some(run) = wf.steps.get(key.step as usize) else {
                continue;
            };
            let (ok, dl) = (
                run.succeeded.saturating_sub(succeeded),
                run.dead.len().saturating_sub(dead),
            );
            if ok > 0 || dl > 0 {
                let c = self.step(wf, key.step);
                c.succeeded += u64::from(ok);
                c.dead_lettered += dl as u64;
            }
        }
    }

    /// The counters of a workflow's step, by name (or the overflow bucket past the cap).
    fn step(&mut self, wf: &Workflow, step: u16) -> &mut StepCounters {
        let name = wf.spec.name.as_str();
        let id = wf
            .spec
            .steps
            .get(step as usize)
            .map(|s| s.id.as_str())
            .unwrap_or(OTHER);
        let known = self.steps.get(name).is_some_and(|m| m.contains_key(id));
        let (name, id) = if known || self.series < STEP_SERIES_MAX {
            (name, id)
        } else {
            (OTHER, OTHER)
        };
        let steps = self.steps.entry(name.to_string()).or_default();
        if !steps.contains_key(id) {
            self.series += 1;
        }
        steps.entry(id.to_string()).or_default()
    }

    /// Every `(workflow name, step id, counters)`, in name order.
    pub fn rows(&self) -> Vec<(String, String, StepCounters)> {
        self.steps
            .iter()
            .flat_map(|(w, m)| m.iter().map(|(s, c)| (w.clone(), s.clone(), *c)))
            .collect()
    }
}

/// Lease events of this process (atomics: bumped on the hot path, read at scrape time).
#[derive(Debug, Default)]
pub struct LeaseCounters {
    /// Renewals this node (as the leader) accepted.
    pub renewed: AtomicU64,
    /// Nodes this node (as the leader) declared lost because their lease expired.
    pub expired: AtomicU64,
    /// Times this node fenced itself (its lease lapsed, or the leader said it is down or at a
    /// newer epoch).
    pub fenced: AtomicU64,
}

impl LeaseCounters {
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.renewed.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
            self.fenced.load(Ordering::Relaxed),
        )
    }
}

/// The process's lease counters.
pub static LEASES: LeaseCounters = LeaseCounters {
    renewed: AtomicU64::new(0),
    expired: AtomicU64::new(0),
    fenced: AtomicU64::new(0),
};

/// Bumps one of [`LEASES`]' counters.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
