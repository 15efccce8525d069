//! Dead letters: bulk redrive and discard, in one command each (so one log entry: wholly
//! applied or not at all), and the rule that a redriven item goes through every step after it.
//!
//! A redrive of item i at step s re-opens the lane children that blocked item i behind it (they
//! run it once it is through s), and resets every *barrier* step downstream that already started
//! (it saw the item missing): such a step runs again from the start once its needs finish again.
//! So a workflow is never `succeeded` while a redriven item has not been through the steps after it.

use super::model::*;
use crate::command::{DlqFilter, Effect, Output};
use std::collections::{BTreeMap, BTreeSet};

/// Notes kept in a bulk answer (the counts are exact; the notes are examples).
const NOTES_MAX: usize = 20;

impl State {
    pub(super) fn redrive_many(&mut self, filter: &DlqFilter, at: u64) -> Output {
        if filter.is_empty() {
            return Output::Rejected(
                "name dead letters to redrive: ids, a filter (workflow, step, grep, since) or all"
                    .into(),
            );
        }
        let mut out = Bulk::default();
        for (wf_id, entries) in self.matching(filter, at, &mut out) {
            let Some(wf) = self.workflows.get_mut(&wf_id) else {
                for e in &entries {
                    self.sched.dlq.remove(&e.id);
                }
                out.refuse(
                    entries.len(),
                    format!("{} no longer exists", wf_name(wf_id)),
                );
                continue;
            };
            if matches!(
                wf.status,
                WfStatus::Failed | WfStatus::Cancelled | WfStatus::TimedOut
            ) {
                out.refuse(
                    entries.len(),
                    format!(
                        "{} is {}; retry the workflow instead (troupe retry {})",
                        wf.name(),
                        wf.status.name(),
                        wf.name()
                    ),
                );
                continue;
            }
            self.sched.redrive_workflow(wf, entries, at, &mut out);
        }
        out.into_output()
    }

    pub(super) fn discard(&mut self, filter: &DlqFilter, reason: &str, at: u64) -> Output {
        if filter.is_empty() {
            return Output::Rejected(
                "name dead letters to discard: ids, a filter (workflow, step, grep, since) or all"
                    .into(),
            );
        }
        if reason.trim().is_empty() {
            return Output::Rejected(
                "give a reason for discarding (it is kept in the history)".into(),
            );
        }
        let mut out = Bulk::default();
        for (wf_id, entries) in self.matching(filter, at, &mut out) {
            let Some(wf) = self.workflows.get_mut(&wf_id) else {
                for e in &entries {
                    self.sched.dlq.remove(&e.id);
                }
                out.applied += entries.len() as u32;
                continue;
            };
            self.sched
                .discard_workflow(wf, entries, reason, at, &mut out);
        }
        out.into_output()
    }

    /// The matching entries, by workflow. Ids asked for but not in the queue are refused.
    fn matching(
        &self,
        filter: &DlqFilter,
        at: u64,
        out: &mut Bulk,
    ) -> BTreeMap<WorkflowId, Vec<DeadLetter>> {
        for id in &filter.ids {
            if !self.sched.dlq.contains_key(id) {
                out.refuse(1, format!("no dead letter {id}"));
            }
        }
        let mut by_wf: BTreeMap<WorkflowId, Vec<DeadLetter>> = BTreeMap::new();
        for d in self.sched.dlq.values().filter(|d| filter.matches(d, at)) {
            by_wf.entry(d.task.wf).or_default().push(d.clone());
        }
        by_wf
    }
}

impl Sched {
    fn redrive_workflow(
        &mut self,
        wf: &mut Workflow,
        entries: Vec<DeadLetter>,
        at: u64,
        out: &mut Bulk,
    ) {
        let mut resets = BTreeSet::new();
        let mut by_step: BTreeMap<String, u32> = BTreeMap::new();
        let mut again = Vec::new();
        for e in entries {
            let (s, i) = (e.task.step as usize, e.task.item);
            if wf.steps.get(s).and_then(|r| r.dead.get(&i)) != Some(&e.id) {
                // A retry of the workflow (or a reset) ran it again already.
                self.dlq.remove(&e.id);
                out.refuse(
                    1,
                    format!(
                        "dead letter {} is stale: item {i} of step {} already ran again; it was removed",
                        e.id, e.step_id
                    ),
                );
                continue;
            }
            self.dlq.remove(&e.id);
            let run = &mut wf.steps[s];
            run.dead.remove(&i);
            if run.status.is_terminal() {
                run.status = StepStatus::Running;
                run.finished_ms = None;
            }
            if e.attempts == 0 {
                // Its per-item `when` failed: evaluate it again rather than run an attempt.
                again.push((s, i));
            } else {
                run.tasks.insert(i, Task::queued(e.attempt + 1));
                if !wf.paused {
                    self.queue.insert(e.task);
                }
            }
            reopen_downstream(wf, s, i, &mut resets);
            *by_step.entry(e.step_id.clone()).or_default() += 1;
            out.applied += 1;
        }
        if by_step.is_empty() {
            return;
        }
        let reset_names: Vec<String> = resets
            .iter()
            .map(|&r| wf.spec.steps[r].id.clone())
            .collect();
        for r in resets {
            self.reset_step(wf, r);
        }
        self.reopen_workflow(wf);
        let n: u32 = by_step.values().sum();
        let mut line = format!(
            "{n} dead letter(s) redriven ({}): they run again as attempt + 1, then through every step after them",
            per_step(&by_step)
        );
        if !reset_names.is_empty() {
            line.push_str(&format!(
                "; steps that saw them missing run again: {}",
                reset_names.join(", ")
            ));
        }
        wf.log(at, line);
        for (s, i) in again {
            self.consider(wf, s, i, at);
        }
        self.effects.push(Effect::Changed(wf.id));
        self.advance(wf, at);
    }

    fn discard_workflow(
        &mut self,
        wf: &mut Workflow,
        entries: Vec<DeadLetter>,
        reason: &str,
        at: u64,
        out: &mut Bulk,
    ) {
        let mut by_step: BTreeMap<String, u32> = BTreeMap::new();
        let mut touched = BTreeSet::new();
        for e in entries {
            let (s, i) = (e.task.step as usize, e.task.item);
            self.dlq.remove(&e.id);
            out.applied += 1;
            let Some(run) = wf.steps.get_mut(s) else {
                continue;
            };
            if run.dead.remove(&i).is_none() {
                continue;
            }
            run.discarded.insert(i);
            run.trace.entry(i).or_default().discarded = Some(reason.to_string());
            *by_step.entry(e.step_id.clone()).or_default() += 1;
            discard_downstream(wf, s, i, &mut touched);
            touched.insert(s);
        }
        if by_step.is_empty() {
            return;
        }
        let n: u32 = by_step.values().sum();
        wf.log(
            at,
            format!(
                "{n} dead letter(s) discarded ({}): {reason}",
                per_step(&by_step)
            ),
        );
        if wf.status.is_terminal() {
            wf.reason = super::dag::degraded_reason(wf);
        } else {
            for s in touched {
                self.maybe_complete(wf, s, at);
                if wf.status.is_terminal() {
                    break;
                }
            }
        }
        self.effects.push(Effect::Changed(wf.id));
    }

    /// A step that already ran on incomplete input goes back to `pending` (and so does every
    /// step after it that started): it runs again from the start when its needs finish again.
    /// Its running attempts are stopped; its dead letters go (its items run again anyway).
    pub(crate) fn reset_step(&mut self, wf: &mut Workflow, r: usize) {
        if wf.steps[r].status == StepStatus::Pending {
            return;
        }
        self.drop_tasks(wf, r);
        let step = r as u16;
        super::model::retain(&mut self.dlq, |_, d| {
            !(d.task.wf == wf.id && d.task.step == step)
        });
        let run = &mut wf.steps[r];
        let trace = std::mem::take(&mut run.trace);
        let (floor, max) = (run.max_attempt, run.max_attempt);
        *run = StepRun::new();
        run.trace = trace;
        run.attempt_floor = floor;
        run.max_attempt = max;
        for c in wf.spec.children(r) {
            self.reset_step(wf, c);
        }
    }

    /// A finished workflow that has work again runs again; its instance starts again too.
    pub(crate) fn reopen_workflow(&mut self, wf: &mut Workflow) {
        if !wf.status.is_terminal() {
            return;
        }
        wf.status = WfStatus::Running;
        self.running.insert(wf.id);
        wf.finished_ms = None;
        wf.reason = None;
        if let Some(owner) = wf.owner.clone() {
            self.effects.push(Effect::Owned { wf: wf.id, owner });
        }
    }
}

/// Item i runs again at step `s`: lane children that blocked it wait for it again; barrier
/// steps after any of them that already started saw it missing and are collected in `resets`.
fn reopen_downstream(wf: &mut Workflow, s: usize, i: u32, resets: &mut BTreeSet<usize>) {
    let lane = wf.spec.lane_children(s);
    for c in wf.spec.children(s) {
        if lane.contains(&c) {
            let run = &mut wf.steps[c];
            let was = run.blocked.remove(&i).is_some() || run.discarded.remove(i);
            if was {
                if run.status.is_terminal() {
                    run.status = StepStatus::Running;
                    run.finished_ms = None;
                }
                reopen_downstream(wf, c, i, resets);
            }
        } else if wf.steps[c].status != StepStatus::Pending {
            resets.insert(c);
        }
    }
}

/// Items blocked behind a discarded dead letter are discarded too.
fn discard_downstream(wf: &mut Workflow, s: usize, i: u32, touched: &mut BTreeSet<usize>) {
    for c in wf.spec.lane_children(s) {
        let run = &mut wf.steps[c];
        if run.blocked.remove(&i).is_some() {
            run.discarded.insert(i);
            touched.insert(c);
            discard_downstream(wf, c, i, touched);
        }
    }
}

fn per_step(by_step: &BTreeMap<String, u32>) -> String {
    by_step
        .iter()
        .map(|(s, n)| format!("step {s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Default)]
struct Bulk {
    applied: u32,
    refused: u32,
    notes: Vec<String>,
}

impl Bulk {
    fn refuse(&mut self, n: usize, note: String) {
        self.refused += n as u32;
        if self.notes.len() < NOTES_MAX {
            self.notes.push(note);
        }
    }
    fn into_output(self) -> Output {
        Output::Bulk {
            applied: self.applied,
            refused: self.refused,
            notes: self.notes,
        }
    }
}
