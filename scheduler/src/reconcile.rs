//! Reconciliation: what a node says it holds (from its lease renewal) against what the log says
//! it holds. Pure: the leader's peer actor calls it with the applied state and the time, and
//! acts on the answer (sends runs again, proposes failures).

use crate::command::AttemptRef;
use crate::state::{State, TaskRef, TaskState};
use std::collections::BTreeSet;

/// A placement the node neither holds nor reported after this long was lost on the way.
pub const RESEND_AFTER_MS: u64 = 1_000;
/// A started attempt the node neither holds nor reported (reports are kept 10 s) after this long
/// vanished without a report.
pub const VANISHED_AFTER_MS: u64 = 15_000;

/// What one renewal tells the leader about a node.
pub struct Held<'a> {
    pub node: &'a str,
    pub epoch: u64,
    /// (task, attempt) it runs or has queued.
    pub holds: &'a BTreeSet<(TaskRef, u32)>,
    /// (task, attempt) it reported recently.
    pub reported: &'a BTreeSet<(TaskRef, u32)>,
}

/// What to repair.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Attempts placed on the node that never reached it: send their runs again.
    pub resend: Vec<(TaskRef, u32)>,
    /// Attempts that started there and are gone without a report: fail them (retries apply).
    pub vanished: Vec<AttemptRef>,
}

/// Compares a node's renewal with the log. `settled`: this leader has led long enough that
/// what it has not applied yet cannot be mistaken for a loss (only then are attempts failed).
/// Looks only at the node's own live tasks (`Sched::on_node`).
pub fn reconcile(state: &State, held: &Held<'_>, now_ms: u64, settled: bool) -> Repair {
    let mut out = Repair::default();
    for r in state.sched.on_node.get(held.node).into_iter().flatten() {
        let Some(task) = state.task(*r) else {
            continue;
        };
        let (node, epoch, since, assigned) = match &task.state {
            TaskState::Assigned {
                node, epoch, at_ms, ..
            } => (node, *epoch, *at_ms, true),
            TaskState::Running {
                node,
                epoch,
                since_ms,
                ..
            } => (node, *epoch, *since_ms, false),
            _ => continue,
        };
        let key = (*r, task.attempt);
        if node != held.node
            || epoch != held.epoch
            || held.holds.contains(&key)
            || held.reported.contains(&key)
        {
            continue;
        }
        let age = now_ms.saturating_sub(since);
        if assigned && age > RESEND_AFTER_MS {
            out.resend.push(key);
        } else if settled && !assigned && age > VANISHED_AFTER_MS {
            out.vanished.push(AttemptRef {
                task: *r,
                attempt: task.attempt,
                epoch,
            });
        }
    }
    out
}
