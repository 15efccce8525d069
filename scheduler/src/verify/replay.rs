//! [`Replay`]: runs a committed log, entry by entry, through the real [`State`] and checks the
//! rules of [`super::rules`] at every applied index (`troupe chaos verify`). It also measures
//! what the faults did: leader changes (term changes in the log, and the gap in entry
//! timestamps between the last entry of the old term and the first of the new), and
//! re-placements (a node declared lost, then each attempt it held assigned again).
//! Time comes in as each entry's `at_ms`; nothing here reads a clock.

use super::rules::{Accepted, capacity, may_accept};
use crate::state::wf_name;
use crate::{Command, Output, State, TaskRef};
use serde::Serialize;
use std::collections::BTreeMap;

/// One committed entry as the log holds it: raft index and term, the leader's timestamp, and
/// the commands packed into it (empty for raft's own no-op and configuration entries).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub at_ms: u64,
    pub commands: Vec<Command>,
}

/// A rule broken at an index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// `G3`, `G4`, `G6`, `G1` or `G2`.
    pub rule: &'static str,
    /// The raft index it was seen at (0: found after the replay, against the history).
    pub index: u64,
    pub detail: String,
}

/// A leader change seen in the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failover {
    pub from_term: u64,
    pub to_term: u64,
    /// First index of the new term.
    pub index: u64,
    /// `at_ms` of the first entry of the new term minus that of the last entry of the old one:
    /// an upper bound of the time without a leader (the cluster may also have been idle).
    pub gap_ms: u64,
}

/// A node declared lost and what became of the attempts it held.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replacement {
    pub node: String,
    /// Index of the `NodeLost` entry.
    pub index: u64,
    /// Attempts the node held when it was declared lost.
    pub attempts: usize,
    /// Milliseconds from the loss to each of those tasks being assigned again (or finishing
    /// another way), sorted; tasks not placed again by the end are not in it.
    pub replaced_ms: Vec<u64>,
}

/// What a replay found. `ok()` is true when no rule was broken.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// First and last index replayed.
    pub from_index: u64,
    pub to_index: u64,
    pub entries: u64,
    pub commands: u64,
    /// Reports accepted and refused (stale, fenced).
    pub reports_accepted: u64,
    pub reports_refused: u64,
    /// Capacity checks made (one per node per applied index).
    pub capacity_checks: u64,
    pub workflows: u64,
    pub workflows_terminal: u64,
    pub failovers: Vec<Failover>,
    pub replacements: Vec<Replacement>,
    /// Acknowledged submits of the client history checked (0 without a history).
    pub acked_submits: u64,
    /// Most violations are kept (the count is exact).
    pub violations: Vec<Violation>,
    pub violation_count: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violation_count == 0
    }

    fn violate(&mut self, rule: &'static str, index: u64, detail: String) {
        self.violation_count += 1;
        if self.violations.len() < 50 {
            self.violations.push(Violation {
                rule,
                index,
                detail,
            });
        }
    }
}

/// A submit acknowledged to a client (from a recorded history): the key it was sent with and
/// the workflow it was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct AckedSubmit {
    pub key: Option<String>,
    pub workflow: String,
}

/// Replays entries in index order (feed them with [`Replay::entry`], then [`Replay::finish`]).
pub struct Replay {
    state: State,
    accepted: Accepted,
    report: Report,
    /// (term, at_ms) of the last entry that carried commands.
    last: Option<(u64, u64)>,
    term: u64,
    /// A term change whose first entry with commands is not seen yet: (old, new, index).
    pending_failover: Option<(u64, u64, u64)>,
    /// Per lost node (by the replacement's position): tasks still waiting to be placed again.
    waiting: Vec<(usize, u64, BTreeMap<TaskRef, u32>)>,
    /// Workflows created per idempotency key.
    created_per_key: BTreeMap<String, Vec<String>>,
}

impl Default for Replay {
    fn default() -> Self {
        Replay::new()
    }
}

impl Replay {
    /// From an empty state (the log must start at index 1).
    pub fn new() -> Self {
        Replay::from_state(State::default())
    }

    /// From a restored snapshot's state (the log then starts after the snapshot index).
    pub fn from_state(state: State) -> Self {
        Replay {
            state,
            accepted: Accepted::default(),
            report: Report::default(),
            last: None,
            term: 0,
            pending_failover: None,
            waiting: Vec::new(),
            created_per_key: BTreeMap::new(),
        }
    }

    /// Applies one committed entry and checks the rules at its index. Entries must come in
    /// index order without gaps; a gap is reported as a violation of nothing but stops nothing.
    pub fn entry(&mut self, e: LogEntry) {
        let r = &mut self.report;
        if r.entries == 0 {
            r.from_index = e.index;
        } else if e.index != r.to_index + 1 {
            r.violate(
                "log",
                e.index,
                format!("gap in the log: {} follows {}", e.index, r.to_index),
            );
        }
        r.to_index = e.index;
        r.entries += 1;
        if e.term > self.term {
            if self.term != 0 {
                self.pending_failover = Some((self.term, e.term, e.index));
            }
            self.term = e.term;
        }
        if e.commands.is_empty() {
            return;
        }
        if let Some((from_term, to_term, index)) = self.pending_failover.take() {
            let gap_ms = self
                .last
                .map(|(_, at)| e.at_ms.saturating_sub(at))
                .unwrap_or(0);
            self.report.failovers.push(Failover {
                from_term,
                to_term,
                index,
                gap_ms,
            });
        }
        self.last = Some((e.term, e.at_ms));
        for cmd in e.commands {
            self.command(e.index, e.at_ms, cmd);
        }
        match capacity(&self.state) {
            Ok(n) => self.report.capacity_checks += n,
            Err(why) => self.report.violate("G6", e.index, why),
        }
        self.track_replacements(e.at_ms);
    }

    fn command(&mut self, index: u64, at_ms: u64, cmd: Command) {
        self.report.commands += 1;
        match cmd {
            // One report at a time: apply handles a batch in order, so this is the same state,
            // and each report's fate is known.
            Command::Finished(list) => {
                for rep in list {
                    let legal = may_accept(&self.state, &rep);
                    let out = self
                        .state
                        .apply(at_ms, Command::Finished(vec![rep.clone()]));
                    let accepted = matches!(out, Output::Counted { accepted: 1, .. });
                    let r = &mut self.report;
                    if !accepted {
                        r.reports_refused += 1;
                        continue;
                    }
                    r.reports_accepted += 1;
                    if !legal {
                        r.violate(
                            "G4",
                            index,
                            format!(
                                "accepted a report fencing refuses: {}/{}/{} attempt {} epoch {}",
                                wf_name(rep.at.task.wf),
                                rep.at.task.step,
                                rep.at.task.item,
                                rep.at.attempt,
                                rep.at.epoch
                            ),
                        );
                    }
                    if let Err(why) = self.accepted.record(&rep) {
                        r.violate("G3", index, why);
                    }
                }
            }
            Command::NodeLost { node, epoch } => {
                let held: BTreeMap<TaskRef, u32> = self.placed_on(&node);
                let out = self.state.apply(
                    at_ms,
                    Command::NodeLost {
                        node: node.clone(),
                        epoch,
                    },
                );
                if out == Output::Done {
                    self.report.replacements.push(Replacement {
                        node,
                        index,
                        attempts: held.len(),
                        replaced_ms: Vec::new(),
                    });
                    let at = self.report.replacements.len() - 1;
                    self.waiting.push((at, at_ms, held));
                }
            }
            Command::Submit(sub) => {
                let key = sub.idempotency_key.clone();
                let out = self.state.apply(at_ms, Command::Submit(sub));
                if let (Some(key), Output::Submitted { id, created: true }) = (key, out) {
                    let list = self.created_per_key.entry(key.clone()).or_default();
                    list.push(wf_name(id));
                    if list.len() > 1 {
                        let detail = format!("idempotency key {key:?} created {}", list.join(", "));
                        self.report.violate("G2", index, detail);
                    }
                }
            }
            other => {
                self.state.apply(at_ms, other);
            }
        }
    }

    /// Tasks placed on `node` now, with their attempt.
    fn placed_on(&self, node: &str) -> BTreeMap<TaskRef, u32> {
        let mut out = BTreeMap::new();
        for (id, wf) in self.state.workflows.iter() {
            for (step, run) in wf.steps.iter().enumerate() {
                for (item, t) in run.tasks.iter() {
                    if t.state.placement().is_some_and(|(n, _)| n == node) {
                        let r = TaskRef {
                            wf: *id,
                            step: step as u16,
                            item: *item,
                        };
                        out.insert(r, t.attempt);
                    }
                }
            }
        }
        out
    }

    /// A task of a lost node counts as re-placed once it is placed again with a later attempt,
    /// or is no longer waiting (finished, cancelled, or its workflow gone).
    fn track_replacements(&mut self, at_ms: u64) {
        let state = &self.state;
        for (at, lost_ms, tasks) in &mut self.waiting {
            tasks.retain(|task, attempt| {
                let done = match state.task(*task) {
                    Some(t) => t.attempt > *attempt && t.state.placement().is_some(),
                    None => true,
                };
                if done {
                    self.report.replacements[*at]
                        .replaced_ms
                        .push(at_ms.saturating_sub(*lost_ms));
                }
                !done
            });
        }
        self.waiting.retain(|(_, _, t)| !t.is_empty());
    }

    /// Ends the replay: checks the acknowledged submits of a client history (G1: present;
    /// G2: one workflow per key) and counts the workflows.
    pub fn finish(mut self, acked: &[AckedSubmit]) -> Report {
        let state = &self.state;
        let r = &mut self.report;
        r.workflows = state.workflows.len() as u64;
        r.workflows_terminal = state
            .workflows
            .values()
            .filter(|w| w.status.is_terminal())
            .count() as u64;
        let mut per_key: BTreeMap<&str, &str> = BTreeMap::new();
        for a in acked {
            r.acked_submits += 1;
            let present = crate::state::parse_wf(&a.workflow)
                .is_some_and(|id| state.workflows.contains_key(&id));
            if !present {
                r.violate(
                    "G1",
                    0,
                    format!(
                        "acknowledged workflow {} (key {:?}) is not in the log",
                        a.workflow, a.key
                    ),
                );
            }
            if let Some(k) = &a.key {
                match per_key.insert(k, &a.workflow) {
                    Some(prev) if prev != a.workflow => r.violate(
                        "G2",
                        0,
                        format!("key {k:?} was answered {prev} and {}", a.workflow),
                    ),
                    _ => {}
                }
                if let Some((id, _)) = state.idempotency.get(k.as_str())
                    && wf_name(*id) != a.workflow
                {
                    r.violate(
                        "G2",
                        0,
                        format!(
                            "key {k:?} was answered {} but maps to {}",
                            a.workflow,
                            wf_name(*id)
                        ),
                    );
                }
            }
        }
        for rep in &mut r.replacements {
            rep.replaced_ms.sort_unstable();
        }
        self.report
    }
}
