//! Lanes: items that flow through steps one by one (`map.from`, and `map.over` of a whole map
//! step). Item i of a lane step is looked at as soon as item i has reached an end at every
//! lane parent; a dead letter upstream blocks the item here instead of feeding it on as `null`.
//! Called only from apply, so every server derives the same result.

use super::model::*;
use crate::command::Effect;
use crate::cond;
use crate::json::Json;
use crate::spec::{MapSource, OnFailure};
use serde_json::{Value, json};

/// Where item i stands at a lane parent, as its lane children see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Not there yet.
    Open,
    /// Ran and succeeded: the child runs it.
    Done,
    /// Routed away (per-item `when`), or its step did not run it (skipped, failed optional).
    Skipped,
    /// Dead-lettered there or blocked behind a dead letter further up (its id).
    Blocked(u64),
    /// An operator discarded its dead letter.
    Discarded,
}

pub(crate) fn lane_of(wf: &Workflow, p: usize, i: u32) -> Lane {
    let r = &wf.steps[p];
    if r.done.contains(i) {
        Lane::Done
    } else if r.skipped.contains(i) {
        Lane::Skipped
    } else if let Some(id) = r.dead.get(&i).or(r.blocked.get(&i)) {
        Lane::Blocked(*id)
    } else if r.discarded.contains(i) {
        Lane::Discarded
    } else if matches!(r.status, StepStatus::Skipped | StepStatus::Failed) {
        Lane::Skipped
    } else {
        Lane::Open
    }
}

/// True when the step already holds item i in some state.
fn holds(run: &StepRun, i: u32) -> bool {
    run.done.contains(i)
        || run.skipped.contains(i)
        || run.dead.contains_key(&i)
        || run.blocked.contains_key(&i)
        || run.discarded.contains(i)
        || run.ready.contains(&i)
        || run.tasks.contains_key(&i)
}

impl Sched {
    /// Item i reached an end at step `s`: its lane children look at it.
    pub(crate) fn lane_resolved(&mut self, wf: &mut Workflow, s: usize, i: u32, at: u64) {
        for c in wf.spec.lane_children(s) {
            if wf.status.is_terminal() {
                return;
            }
            if wf.steps[c].status == StepStatus::Running {
                self.consider(wf, c, i, at);
            }
        }
    }

    /// Step `s` ended without finishing some items (an optional step failed): its lane children
    /// look at every item again.
    pub(crate) fn lane_step_ended(&mut self, wf: &mut Workflow, s: usize, at: u64) {
        for c in wf.spec.lane_children(s) {
            for i in 0..wf.steps[c].total {
                if wf.status.is_terminal() || wf.steps[c].status != StepStatus::Running {
                    break;
                }
                self.consider(wf, c, i, at);
            }
        }
    }

    /// Looks at item i of lane step `c`: blocked, discarded, skipped, or ready to run.
    pub(crate) fn consider(&mut self, wf: &mut Workflow, c: usize, i: u32, at: u64) {
        let run = &wf.steps[c];
        if run.status != StepStatus::Running || i >= run.total || holds(run, i) {
            return;
        }
        let (mut ran, mut blocked, mut discarded) = (false, None, false);
        for p in wf.spec.lane_parents(c) {
            match lane_of(wf, p as usize, i) {
                Lane::Open => return,
                Lane::Done => ran = true,
                Lane::Skipped => {}
                Lane::Blocked(id) => blocked = blocked.or(Some(id)),
                Lane::Discarded => discarded = true,
            }
        }
        let runs = blocked.is_none() && !discarded && ran;
        let verdict = match (&wf.spec.steps[c].when, runs) {
            (Some(expr), true) if matches!(wf.spec.steps[c].map, Some(MapSource::From(_))) => {
                match item_condition(wf, c, i, expr) {
                    Ok(v) => v,
                    Err(e) => return self.item_error(wf, c, i, format!("when: {e}"), at),
                }
            }
            _ => runs,
        };
        let run = &mut wf.steps[c];
        if verdict {
            run.ready.insert(i);
            self.fill_window(wf, c);
            return;
        }
        if let Some(id) = blocked {
            run.blocked.insert(i, id);
        } else if discarded {
            run.discarded.insert(i);
        } else {
            run.skipped.insert(i);
        }
        self.effects.push(Effect::Changed(wf.id));
        self.maybe_complete(wf, c, at);
        self.lane_resolved(wf, c, i, at);
    }

    /// An item failed before any attempt ran (its per-item `when` could not be evaluated).
    fn item_error(&mut self, wf: &mut Workflow, c: usize, i: u32, error: String, at: u64) {
        match wf.spec.steps[c].on_failure {
            OnFailure::DeadLetter => {
                let r = TaskRef {
                    wf: wf.id,
                    step: c as u16,
                    item: i,
                };
                self.dead_letter(wf, r, 0, 0, error, None, at);
            }
            OnFailure::Fail => {
                wf.steps[c].failed += 1;
                self.fail_step(wf, c, at, format!("item {i}: {error}"));
            }
        }
    }

    /// Puts a task that failed for good into the dead-letter queue; its item stops here and
    /// its lane children block it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dead_letter(
        &mut self,
        wf: &mut Workflow,
        r: TaskRef,
        attempt: u32,
        attempts: u32,
        error: String,
        node: Option<String>,
        at: u64,
    ) {
        let i = r.step as usize;
        let id = wf.spec.steps[i].id.clone();
        self.next_dlq += 1;
        let entry = DeadLetter {
            id: self.next_dlq,
            task: r,
            step_id: id.clone(),
            attempt,
            attempts,
            last_error: error.clone(),
            log_stem: r.log_stem(&id, attempt),
            at_ms: at,
            item_value: item_value(wf, i, r.item),
            node,
        };
        wf.steps[i].dead.insert(r.item, entry.id);
        self.dlq.insert(entry.id, entry);
        if wf.spec.steps[i].map.is_none() {
            wf.log(
                at,
                format!("step {id} dead-lettered after {attempts} attempt(s): {error}"),
            );
        }
        self.effects.push(Effect::Changed(wf.id));
        self.fill_window(wf, i);
        self.maybe_complete(wf, i, at);
        self.lane_resolved(wf, i, r.item, at);
    }
}

/// A `from` step's per-item `when`, with `item`, `input`, `params` (and `steps` if it names it:
/// building it reads every finished step's output).
fn item_condition(wf: &Workflow, c: usize, i: u32, expr: &str) -> Result<bool, String> {
    let item = item_value(wf, c, i)
        .map(|j| j.value())
        .unwrap_or(Value::Null);
    let input = input_value(wf, c, i)
        .map(|j| j.value())
        .unwrap_or(Value::Null);
    let params = super::dag::params_value(wf);
    let steps = if expr.contains("steps") {
        super::dag::steps_value(wf)
    } else {
        json!({})
    };
    cond::eval_bool(
        expr,
        &[
            ("item", &item),
            ("input", &input),
            ("params", &params),
            ("steps", &steps),
        ],
    )
}

/// The value of item i of step `s`: `{{ item }}` and `$TROUPE_ITEM`. For `from` steps, the
/// original item of the lane; for `map.over` of a whole map step, that step's output of item i.
pub fn item_value(wf: &Workflow, s: usize, i: u32) -> Option<Json> {
    let spec = &wf.spec.steps[s];
    match &spec.map {
        None => None,
        Some(MapSource::Items(v)) => v.get(i as usize).cloned(),
        Some(MapSource::Range { start, .. }) => Some(Json((start + i as i64).to_string())),
        Some(MapSource::From(parents)) => item_value(wf, parents[0] as usize, i),
        Some(MapSource::Upstream { step, .. }) => match &wf.steps[s].items {
            Items::List(v) => v.get(i as usize).cloned(),
            Items::Lane => Some(
                wf.steps[*step as usize]
                    .outputs
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(Json::null),
            ),
            _ => None,
        },
    }
}

/// `{{ input }}` / `$TROUPE_INPUT` of a `from` step: the output of item i at the first lane
/// parent (in `from` order) that ran it.
pub fn input_value(wf: &Workflow, s: usize, i: u32) -> Option<Json> {
    let Some(MapSource::From(parents)) = &wf.spec.steps[s].map else {
        return None;
    };
    parents
        .iter()
        .map(|&p| &wf.steps[p as usize])
        .find(|r| r.done.contains(i))
        .map(|r| r.outputs.get(&i).cloned().unwrap_or_else(Json::null))
}
