//! Which attempts each applied command ended, and how: the record the node's traces turn into
//! one span per attempt (`troupe-node`'s `otel`). Kept by [`crate::machine::Machine`] beside
//! the task metrics, only while an observer asks for it (`Observer::wants_attempts`); process
//! local, not replicated, nothing added to the scheduler state.
//!
//! Like the metrics it compares the state before and after `State::apply`, for the attempts the
//! command can end:
//! - `Finished` reports: the reported attempts that were live (a refused, fenced report ends
//!   nothing); the outcome is the report's (an output over the limit fails, as apply does);
//! - `NodeLost`, `Evict`, `RegisterNode`: the attempts placed on that node, which apply requeues
//!   as attempt + 1 (`lost`) or gives up on (`failed`);
//! - `Assign`: an attempt whose step could not be rendered fails as it is placed;
//! - any command: the `Kill` effects it pushed (cancel, timeout, a failed step or workflow
//!   stopping its other attempts: `stopped`), with the start time from the item trace.
//!
//! Each is cheap: lookups for the attempts named, nothing per workflow or per item.

use std::collections::BTreeSet;
use troupe_scheduler::state::TaskState;
use troupe_scheduler::{AttemptRef, Command, Effect, Outcome, State, TaskRef};

/// Most ended attempts held between two hook calls; past it they are counted, not kept.
pub const PENDING_MAX: usize = 100_000;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Succeeded,
    /// Its failure was accepted (retried, dead-lettered or failing the step).
    Failed,
    /// Its node was lost, evicted or restarted: requeued as attempt + 1.
    Lost,
    /// Stopped because it was no longer wanted (cancel, timeout, the step or workflow failed).
    Stopped,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Succeeded => "succeeded",
            End::Failed => "failed",
            End::Lost => "lost",
            End::Stopped => "stopped",
        }
    }
}

/// One attempt that ended, with its log times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub task: TaskRef,
    pub attempt: u32,
    pub node: String,
    /// When its node reported it started, or when it was placed if it ended before its
    /// `Started` report applied (log time, like `ended_ms`).
    pub start_ms: u64,
    pub ended_ms: u64,
    pub end: End,
    /// Why it failed, was lost or was stopped.
    pub error: Option<String>,
    /// A later attempt of the task is due (a retry or a requeue).
    pub retried: bool,
}

/// What [`AttemptLog::before`] saw of the attempts a command may end.
pub struct Watch {
    /// Live attempts before apply, with the report's outcome if the command reports on them.
    live: Vec<(Before, Option<Reported>)>,
    /// Assignments of the command (an attempt can fail as it is placed).
    assigned: Vec<(TaskRef, u32)>,
    /// Why the node's attempts end (`NodeLost`, `Evict`, `RegisterNode`).
    node_why: Option<String>,
    /// `state.sched.effects.len()` before apply: the `Kill`s after it are this command's.
    effects_from: usize,
}

struct Before {
    at: AttemptRef,
    node: String,
    start_ms: u64,
}

enum Reported {
    Succeeded,
    Failed(String),
}

/// The ended attempts not yet taken by the hook.
#[derive(Debug, Default)]
pub struct AttemptLog {
    /// Off (nothing watched) until an observer asks for attempts.
    pub enabled: bool,
    pending: Vec<Ended>,
    /// Ended attempts not kept because `PENDING_MAX` were waiting.
    pub dropped: u64,
}

fn live_before(state: &State, at: AttemptRef) -> Option<Before> {
    let task = state
        .workflows
        .get(&at.task.wf)?
        .steps
        .get(at.task.step as usize)?
        .tasks
        .get(&at.task.item)?;
    if task.attempt != at.attempt {
        return None;
    }
    match &task.state {
        TaskState::Assigned {
            node, epoch, at_ms, ..
        } if *epoch == at.epoch => Some(Before {
            at,
            node: node.clone(),
            start_ms: *at_ms,
        }),
        TaskState::Running {
            node,
            epoch,
            since_ms,
            ..
        } if *epoch == at.epoch => Some(Before {
            at,
            node: node.clone(),
            start_ms: *since_ms,
        }),
        _ => None,
    }
}

/// The current attempt number of a task (`None`: it left the task map, finished or dropped).
fn attempt_now(state: &State, t: TaskRef) -> Option<(u32, bool)> {
    let task = state
        .workflows
        .get(&t.wf)?
        .steps
        .get(t.step as usize)?
        .tasks
        .get(&t.item)?;
    let live = matches!(
        task.state,
        TaskState::Assigned { .. } | TaskState::Running { .. }
    );
    Some((task.attempt, live))
}

fn still_live(state: &State, at: &AttemptRef) -> bool {
    live_before(state, *at).is_some()
}

fn trace_error(state: &State, t: TaskRef) -> Option<String> {
    state
        .workflows
        .get(&t.wf)?
        .steps
        .get(t.step as usize)?
        .trace
        .get(&t.item)?
        .last_error
        .clone()
}

impl AttemptLog {
    /// Before `State::apply(cmd)`: the attempts `cmd` may end (`None`: it ends none directly;
    /// its `Kill` effects are still read).
    pub fn before(&self, state: &State, cmd: &Command) -> Option<Watch> {
        if !self.enabled {
            return None;
        }
        let mut w = Watch {
            live: Vec::new(),
            assigned: Vec::new(),
            node_why: None,
            effects_from: state.sched.effects.len(),
        };
        let on_node = |w: &mut Watch, node: &str, why: String| {
            for t in state.sched.on_node.get(node).into_iter().flatten() {
                let Some(task) = state
                    .workflows
                    .get(&t.wf)
                    .and_then(|wf| wf.steps.get(t.step as usize))
                    .and_then(|r| r.tasks.get(&t.item))
                else {
                    continue;
                };
                let epoch = match &task.state {
                    TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } => *epoch,
                    _ => continue,
                };
                let at = AttemptRef {
                    task: *t,
                    attempt: task.attempt,
                    epoch,
                };
                if let Some(b) = live_before(state, at) {
                    w.live.push((b, None));
                }
            }
            w.node_why = Some(why);
        };
        match cmd {
            Command::Finished(reports) => {
                for r in reports {
                    let Some(b) = live_before(state, r.at) else {
                        continue;
                    };
                    let rep = match &r.outcome {
                        Outcome::Succeeded { output: Some(o) }
                            if o.0.len() > troupe_scheduler::spec::OUTPUT_BYTES_MAX =>
                        {
                            Reported::Failed(format!(
                                "output is {} bytes; the limit is {}",
                                o.0.len(),
                                troupe_scheduler::spec::OUTPUT_BYTES_MAX
                            ))
                        }
                        Outcome::Succeeded { .. } => Reported::Succeeded,
                        Outcome::Failed { error }
                        | Outcome::FailedRetry { error, .. }
                        | Outcome::WorkerBroken { error } => Reported::Failed(error.clone()),
                    };
                    w.live.push((b, Some(rep)));
                }
            }
            Command::NodeLost { node, .. } => on_node(
                &mut w,
                node,
                format!("node {node} was lost (its lease expired)"),
            ),
            Command::Evict { node } => on_node(&mut w, node, format!("node {node} was evicted")),
            Command::RegisterNode(info) => on_node(
                &mut w,
                &info.node,
                format!("node {} registered again (it restarted)", info.node),
            ),
            Command::Assign(list) => {
                w.assigned = list.iter().map(|a| (a.task, a.attempt)).collect();
            }
            _ => {}
        }
        Some(w)
    }

    /// After `State::apply`: records the watched attempts that ended.
    pub fn after(&mut self, state: &State, at_ms: u64, w: Watch) {
        let at_ms = at_ms.max(state.sched.stats.last_at_ms);
        let mut seen: BTreeSet<(TaskRef, u32)> = BTreeSet::new();
        for (b, rep) in w.live {
            if still_live(state, &b.at) {
                continue;
            }
            let now = attempt_now(state, b.at.task);
            let retried = now.is_some_and(|(a, _)| a > b.at.attempt);
            let (end, error) = match rep {
                Some(Reported::Succeeded) => (End::Succeeded, None),
                Some(Reported::Failed(e)) => (End::Failed, Some(e)),
                // Requeued: lost. Given up on (lost too often): failed, with apply's message.
                None if retried => (End::Lost, w.node_why.clone()),
                None => (
                    End::Failed,
                    trace_error(state, b.at.task).or_else(|| w.node_why.clone()),
                ),
            };
            seen.insert((b.at.task, b.at.attempt));
            self.push(Ended {
                task: b.at.task,
                attempt: b.at.attempt,
                node: b.node,
                start_ms: b.start_ms,
                ended_ms: at_ms,
                end,
                error,
                retried,
            });
        }
        for (task, attempt) in w.assigned {
            let Some(t) = state
                .workflows
                .get(&task.wf)
                .and_then(|wf| wf.steps.get(task.step as usize))
                .and_then(|r| r.trace.get(&task.item))
            else {
                continue;
            };
            let failed_now = t.attempt == attempt
                && t.finished_ms == Some(at_ms)
                && t.last_error.is_some()
                && attempt_now(state, task).is_none_or(|(a, live)| a != attempt || !live);
            if failed_now && seen.insert((task, attempt)) {
                self.push(Ended {
                    task,
                    attempt,
                    node: t.node.clone().unwrap_or_default(),
                    start_ms: at_ms,
                    ended_ms: at_ms,
                    end: End::Failed,
                    error: t.last_error.clone(),
                    retried: attempt_now(state, task).is_some_and(|(a, _)| a > attempt),
                });
            }
        }
        let kills: Vec<(TaskRef, u32, String)> = state
            .sched
            .effects
            .get(w.effects_from..)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| match e {
                Effect::Kill {
                    task,
                    attempt,
                    node,
                } => Some((*task, *attempt, node.clone())),
                _ => None,
            })
            .collect();
        for (task, attempt, node) in kills {
            if !seen.insert((task, attempt)) {
                continue;
            }
            let wf = state.workflows.get(&task.wf);
            let trace = wf
                .and_then(|wf| wf.steps.get(task.step as usize))
                .and_then(|r| r.trace.get(&task.item))
                .filter(|t| t.attempt == attempt);
            let why = wf.and_then(|wf| {
                wf.reason.clone().or_else(|| {
                    wf.steps
                        .get(task.step as usize)
                        .and_then(|r| r.error.clone())
                })
            });
            self.push(Ended {
                task,
                attempt,
                node,
                // The item trace's start: the `Started` report's time once it applied.
                start_ms: trace.and_then(|t| t.started_ms).unwrap_or(at_ms),
                ended_ms: at_ms,
                end: End::Stopped,
                error: why,
                retried: false,
            });
        }
    }

    fn push(&mut self, e: Ended) {
        if self.pending.len() >= PENDING_MAX {
            self.dropped += 1;
        } else {
            self.pending.push(e);
        }
    }

    /// The attempts ended since the last call.
    pub fn take(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.pending)
    }
}
