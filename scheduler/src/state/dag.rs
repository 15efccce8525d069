//! The DAG rules: when steps start, how map windows fill, what success and failure of a task
//! do to its step and workflow. Called only from apply, so every server derives the same result.

use super::model::*;
use super::workers::{GroupKey, worker_of};
use crate::command::{Effect, RetryHint};
use crate::cond;
use crate::json::{Json, mix};
use crate::spec::{MapSource, OnFailure, RetryPolicy};
use serde_json::{Value, json};

impl Sched {
    /// Starts every pending step whose needs are finished, repeatedly (skips cascade), then
    /// finishes the workflow if nothing is left.
    pub(crate) fn advance(&mut self, wf: &mut Workflow, at: u64) {
        if wf.status.is_terminal() {
            return;
        }
        loop {
            let mut changed = false;
            for i in 0..wf.steps.len() {
                if wf.steps[i].status != StepStatus::Pending {
                    continue;
                }
                let is_from = matches!(wf.spec.steps[i].map, Some(MapSource::From(_)));
                let lane = wf.spec.lane_parents(i);
                let needs = wf.spec.steps[i].needs.clone();
                // A `from` step starts with its lane parents (streaming); every other need
                // must have finished.
                let looked_at = needs.iter().all(|&n| {
                    let st = wf.steps[n as usize].status;
                    if is_from && lane.contains(&n) {
                        st != StepStatus::Pending
                    } else {
                        st.is_terminal()
                    }
                });
                if !looked_at {
                    continue;
                }
                changed = true;
                let blocked = needs.iter().any(|&n| {
                    let s = &wf.steps[n as usize];
                    s.status == StepStatus::Cancelled
                        || (s.status == StepStatus::Failed && !wf.spec.steps[n as usize].optional)
                });
                if blocked {
                    self.end_step(
                        wf,
                        i,
                        StepStatus::Cancelled,
                        at,
                        Some("an upstream step failed".into()),
                    );
                    continue;
                }
                let lane_skipped = !lane.is_empty()
                    && lane
                        .iter()
                        .all(|&p| wf.steps[p as usize].status == StepStatus::Skipped);
                if lane_skipped {
                    self.end_step(wf, i, StepStatus::Skipped, at, None);
                } else if is_from {
                    // `when` of a `from` step is evaluated per item (see `consider`).
                    self.start_step(wf, i, at);
                } else {
                    match wf.spec.steps[i].when.clone() {
                        None => self.start_step(wf, i, at),
                        Some(expr) => {
                            let (steps, params) = (steps_value(wf), params_value(wf));
                            match cond::eval_bool(&expr, &[("steps", &steps), ("params", &params)])
                            {
                                Ok(true) => self.start_step(wf, i, at),
                                Ok(false) => self.end_step(wf, i, StepStatus::Skipped, at, None),
                                Err(e) => self.fail_step(wf, i, at, format!("when: {e}")),
                            }
                        }
                    }
                }
                if wf.status.is_terminal() {
                    return;
                }
            }
            if !changed {
                break;
            }
        }
        self.finalize(wf, at);
    }

    fn start_step(&mut self, wf: &mut Workflow, i: usize, at: u64) {
        let spec = &wf.spec.steps[i];
        let lane = wf.spec.lane_parents(i);
        let (items, total) = match &spec.map {
            _ if !lane.is_empty() => {
                // The lane's items: every lane parent has the same count; a parent skipped as
                // a whole step has none, so take one that started.
                let total = lane
                    .iter()
                    .map(|&p| &wf.steps[p as usize])
                    .find(|r| r.status != StepStatus::Skipped)
                    .map(|r| r.total)
                    .unwrap_or(0);
                (Items::Lane, total)
            }
            None => (Items::Single, 1u32),
            Some(MapSource::From(_)) => (Items::Lane, 0),
            Some(MapSource::Items(v)) => (Items::Inline, v.len() as u32),
            Some(MapSource::Range { start, end }) => {
                (Items::Range { start: *start }, (end - start) as u32)
            }
            Some(MapSource::Upstream { step, path }) => {
                let source = step_output(wf, *step as usize);
                let mut v = &source;
                for k in path {
                    v = v.get(k.as_str()).unwrap_or(&Value::Null);
                }
                match v {
                    Value::Array(a) => (
                        Items::List(a.iter().map(Json::from_value).collect()),
                        a.len() as u32,
                    ),
                    other => {
                        let up = &wf.spec.steps[*step as usize].id;
                        let kind = match other {
                            Value::Null => "null",
                            Value::Object(_) => "an object",
                            Value::String(_) => "a string",
                            _ => "not an array",
                        };
                        self.fail_step(
                            wf,
                            i,
                            at,
                            format!(
                                "map.over: the output of step \"{up}\" is {kind}, not a JSON array"
                            ),
                        );
                        return;
                    }
                }
            }
        };
        let run = &mut wf.steps[i];
        run.items = items;
        run.total = total;
        run.status = StepStatus::Running;
        run.started_ms = Some(at);
        run.iteration = 1;
        wf.log(
            at,
            format!(
                "step {} started ({} item{})",
                spec.id,
                total,
                if total == 1 { "" } else { "s" }
            ),
        );
        if lane.is_empty() {
            self.fill_window(wf, i);
        } else {
            for item in 0..total {
                self.consider(wf, i, item, at);
                if wf.status.is_terminal() || wf.steps[i].status != StepStatus::Running {
                    return;
                }
            }
        }
        self.maybe_complete(wf, i, at);
    }

    /// Materializes tasks up to the step's `parallelism`: the next items of a map (lazy
    /// expansion), or the lane items that are ready.
    pub(crate) fn fill_window(&mut self, wf: &mut Workflow, i: usize) {
        let window = wf.spec.steps[i].parallelism as usize;
        let lane = wf.spec.is_lane(i);
        let run = &mut wf.steps[i];
        while run.tasks.len() < window {
            let item = if lane {
                match run.ready.pop_first() {
                    Some(item) => item,
                    None => break,
                }
            } else if run.next_item < run.total {
                run.next_item += 1;
                run.next_item - 1
            } else {
                break;
            };
            if run.done.contains(item) || run.discarded.contains(item) {
                continue;
            }
            let task = Task::queued(run.attempt_floor + 1);
            run.tasks.insert(item, task);
            if !wf.paused {
                self.queue.insert(TaskRef {
                    wf: wf.id,
                    step: i as u16,
                    item,
                });
            }
        }
    }

    /// A step whose items have all reached an end finishes: `succeeded`, or `degraded` when
    /// some items are dead-lettered, blocked behind a dead letter, or discarded.
    pub(crate) fn maybe_complete(&mut self, wf: &mut Workflow, i: usize, at: u64) {
        let run = &wf.steps[i];
        if run.status != StepStatus::Running || !run.tasks.is_empty() || !run.ready.is_empty() {
            return;
        }
        let complete = if wf.spec.is_lane(i) {
            run.resolved() >= run.total
        } else {
            run.next_item >= run.total
        };
        if complete {
            let status = if run.unfinished_items() > 0 {
                StepStatus::Degraded
            } else {
                StepStatus::Succeeded
            };
            self.end_step(wf, i, status, at, None);
            self.advance(wf, at);
        }
    }

    pub(crate) fn end_step(
        &mut self,
        wf: &mut Workflow,
        i: usize,
        status: StepStatus,
        at: u64,
        why: Option<String>,
    ) {
        self.drop_tasks(wf, i);
        self.release_step_workers(wf, i);
        let id = wf.spec.steps[i].id.clone();
        let run = &mut wf.steps[i];
        run.status = status;
        run.finished_ms = Some(at);
        let mut line = format!("step {id} {}", status.name());
        if let Some(counts) = item_counts(run) {
            line.push_str(&format!(" ({counts})"));
        }
        if let Some(w) = &why {
            line.push_str(&format!(": {w}"));
            run.error = Some(w.clone());
        }
        wf.log(at, line);
        self.effects.push(Effect::Changed(wf.id));
    }

    /// A step fails: optional steps let the workflow go on (degraded), others fail it.
    pub(crate) fn fail_step(&mut self, wf: &mut Workflow, i: usize, at: u64, error: String) {
        self.end_step(wf, i, StepStatus::Failed, at, Some(error.clone()));
        if wf.spec.steps[i].optional {
            // Its lane children go on without the items it did not finish.
            self.lane_step_ended(wf, i, at);
            self.advance(wf, at);
        } else {
            let id = wf.spec.steps[i].id.clone();
            self.teardown(
                wf,
                at,
                WfStatus::Failed,
                format!("step \"{id}\" failed: {error}"),
            );
        }
    }

    /// Ends a workflow early: stops its live attempts and cancels unfinished steps.
    pub(crate) fn teardown(
        &mut self,
        wf: &mut Workflow,
        at: u64,
        status: WfStatus,
        reason: String,
    ) {
        for i in 0..wf.steps.len() {
            if !wf.steps[i].status.is_terminal() {
                self.end_step(wf, i, StepStatus::Cancelled, at, None);
            }
        }
        wf.status = status;
        wf.reason = Some(reason.clone());
        self.close(wf, at);
        wf.log(at, format!("workflow {}: {reason}", status.name()));
    }

    /// Removes a step's unfinished tasks, stopping the ones that run.
    pub(crate) fn drop_tasks(&mut self, wf: &mut Workflow, i: usize) {
        wf.steps[i].ready.clear();
        let tasks = std::mem::take(&mut wf.steps[i].tasks);
        for (item, task) in tasks {
            let r = TaskRef {
                wf: wf.id,
                step: i as u16,
                item,
            };
            self.unlink(r, &task, &wf.spec.steps[i]);
            if let Some((node, _)) = task.state.placement() {
                let node = node.to_string();
                self.effects.push(Effect::Kill {
                    task: r,
                    attempt: task.attempt,
                    node,
                });
            }
        }
    }

    /// Takes a task out of the queue, the delay set or its node (credit, CPU, memory, GPUs, or
    /// its place in a worker group), whichever holds it.
    pub(crate) fn unlink(&mut self, r: TaskRef, task: &Task, step: &crate::spec::StepSpec) {
        match &task.state {
            TaskState::Queued => {
                self.queue.remove(&r);
            }
            TaskState::Waiting { due_ms } => {
                self.delayed.remove(&(*due_ms, r));
            }
            TaskState::Assigned { node, gpus, .. } | TaskState::Running { node, gpus, .. } => {
                if let Some(tasks) = self.on_node.get_mut(node) {
                    tasks.remove(&r);
                }
                if let Some(w) = worker_of(step) {
                    // Its worker holds the credit and the resources, not the item.
                    let key = GroupKey {
                        node: node.clone(),
                        wf: r.wf,
                        step: r.step,
                        gpus: gpus.clone(),
                    };
                    self.workers.task_left(&key, self.stats.last_at_ms, w.batch);
                    let drained = self.workers.groups.get(&key).is_some_and(|g| g.tasks == 0);
                    if drained && self.workers.is_broken(node, r.wf, r.step) {
                        let req = step.resources.clone();
                        self.release_workers(&|_, _| Some(req.clone()), |k, _| *k == key);
                    }
                    return;
                }
                let req = &step.resources;
                if let Some(n) = self.nodes.get_mut(node) {
                    n.assigned = n.assigned.saturating_sub(1);
                    n.used.cpu_milli = n.used.cpu_milli.saturating_sub(req.cpu_milli as u64);
                    n.used.memory_bytes = n.used.memory_bytes.saturating_sub(req.memory_bytes);
                    for g in gpus {
                        n.used.gpus.remove(g);
                    }
                }
            }
        }
    }

    fn finalize(&mut self, wf: &mut Workflow, at: u64) {
        if wf.status.is_terminal() || !wf.steps.iter().all(|s| s.status.is_terminal()) {
            return;
        }
        let reason = degraded_reason(wf);
        wf.status = if reason.is_some() {
            WfStatus::Degraded
        } else {
            WfStatus::Succeeded
        };
        wf.reason = reason;
        self.close(wf, at);
        wf.log(at, format!("workflow {}", wf.status.name()));
    }

    fn close(&mut self, wf: &mut Workflow, at: u64) {
        self.running.remove(&wf.id);
        wf.finished_ms = Some(at);
        if let Some(d) = wf.deadline_ms {
            self.deadlines.remove(&(d, wf.id));
        }
        self.effects.push(Effect::Finished(wf.id));
    }

    /// An attempt succeeded.
    pub(crate) fn task_succeeded(
        &mut self,
        wf: &mut Workflow,
        r: TaskRef,
        output: Option<Json>,
        at: u64,
    ) {
        let i = r.step as usize;
        let Some(task) = wf.steps[i].tasks.remove(&r.item) else {
            return;
        };
        self.unlink(r, &task, &wf.spec.steps[i]);
        self.stats.tasks_succeeded += 1;
        match output.filter(|o| !o.is_null()) {
            Some(out) => {
                wf.steps[i].outputs.insert(r.item, out);
            }
            // A loop iteration without output must not leave the previous iteration's behind.
            None => {
                wf.steps[i].outputs.remove(&r.item);
            }
        }
        if let Some(l) = wf.spec.steps[i].repeat.clone() {
            let out = wf.steps[i]
                .outputs
                .get(&r.item)
                .map(Json::value)
                .unwrap_or(Value::Null);
            let iteration = wf.steps[i].iteration;
            let (it, steps, params) = (json!(iteration), steps_value(wf), params_value(wf));
            let vars = [
                ("output", &out),
                ("iteration", &it),
                ("steps", &steps),
                ("params", &params),
            ];
            match cond::eval_bool(&l.until, &vars) {
                Err(e) => return self.fail_step(wf, i, at, format!("loop.until: {e}")),
                Ok(false) if iteration < l.max_iterations => {
                    let run = &mut wf.steps[i];
                    run.iteration += 1;
                    let next = Task::queued(task.attempt + 1);
                    run.tasks.insert(r.item, next);
                    if !wf.paused {
                        self.queue.insert(r);
                    }
                    let id = &wf.spec.steps[i].id;
                    wf.log(at, format!("step {id}: iteration {iteration} did not meet loop.until; iteration {} starts", iteration + 1));
                    return;
                }
                Ok(false) => {
                    let id = &wf.spec.steps[i].id;
                    wf.log(at, format!("step {id}: loop stopped at max_iterations = {} without loop.until holding", l.max_iterations));
                }
                Ok(true) => {}
            }
        }
        let run = &mut wf.steps[i];
        if run.done.insert(r.item) {
            run.succeeded += 1;
        }
        if let Some(t) = run.trace.get_mut(&r.item) {
            t.finished_ms = Some(at);
        }
        self.effects.push(Effect::Changed(wf.id));
        self.fill_window(wf, i);
        self.maybe_complete(wf, i, at);
        self.lane_resolved(wf, i, r.item, at);
    }

    /// A task is given up on whatever retries it has left (lost with its node too often).
    pub(crate) fn task_failed_for_good(
        &mut self,
        wf: &mut Workflow,
        r: TaskRef,
        error: String,
        at: u64,
    ) {
        let attempts = wf.spec.steps[r.step as usize].retry.attempts;
        if let Some(t) = wf.steps[r.step as usize].tasks.get_mut(&r.item) {
            // The next failure is the last one allowed.
            t.failures = t.failures.max(attempts.saturating_sub(1));
        }
        self.task_failed(wf, r, error, at);
    }

    /// An attempt failed: retry with backoff, dead-letter, or fail the step.
    pub(crate) fn task_failed(&mut self, wf: &mut Workflow, r: TaskRef, error: String, at: u64) {
        self.task_failed_with(wf, r, error, at, None);
    }

    /// [`Self::task_failed`], with what the attempt said about its retry: not before a delay
    /// (the later of it and the backoff), or none at all.
    pub(crate) fn task_failed_with(
        &mut self,
        wf: &mut Workflow,
        r: TaskRef,
        error: String,
        at: u64,
        hint: Option<RetryHint>,
    ) {
        let i = r.step as usize;
        let policy = wf.spec.steps[i].retry.clone();
        let on_failure = wf.spec.steps[i].on_failure;
        let Some(mut task) = wf.steps[i].tasks.remove(&r.item) else {
            return;
        };
        self.unlink(r, &task, &wf.spec.steps[i]);
        self.stats.tasks_failed += 1;
        task.failures += 1;
        task.last_error = Some(error.clone());
        let node = task.state.placement().map(|(n, _)| n.to_string());
        if let Some(t) = wf.steps[i].trace.get_mut(&r.item) {
            t.finished_ms = Some(at);
            t.last_error = Some(error.clone());
        }
        let id = wf.spec.steps[i].id.clone();
        // Per-item events of map steps belong to the item trace, not the workflow history.
        let per_item = wf.spec.steps[i].map.is_some();
        if task.failures < policy.attempts && hint != Some(RetryHint::Never) {
            let seed = [r.wf, r.step as u64, r.item as u64, task.attempt as u64];
            let mut delay = backoff_ms(&policy, task.failures, &seed);
            if let Some(RetryHint::After { ms }) = hint {
                delay = delay.max(ms.min(crate::spec::http::RETRY_AFTER_MAX_MS));
            }
            let due = at.saturating_add(delay);
            if !per_item {
                wf.log(
                    at,
                    format!(
                        "step {id} attempt {} failed: {error}; retry at +{}ms",
                        task.attempt,
                        due.saturating_sub(at)
                    ),
                );
            }
            task.attempt += 1;
            task.state = TaskState::Waiting { due_ms: due };
            if !wf.paused {
                self.delayed.insert((due, r));
            }
            wf.steps[i].tasks.insert(r.item, task);
            return;
        }
        let attempts = task.failures;
        match on_failure {
            OnFailure::DeadLetter => {
                self.dead_letter(wf, r, task.attempt, attempts, error, node, at);
            }
            OnFailure::Fail => {
                wf.steps[i].failed += 1;
                let what = if wf.spec.steps[i].map.is_some() {
                    format!("item {} ", r.item)
                } else {
                    String::new()
                };
                self.fail_step(
                    wf,
                    i,
                    at,
                    format!("{what}failed after {attempts} attempt(s): {error}"),
                );
            }
        }
    }
}

/// Delay before the next attempt: exponential (or fixed) from `initial`, capped at `max`, with
/// "equal jitter" derived from the task's identity (deterministic, so every server agrees).
pub fn backoff_ms(p: &RetryPolicy, failures: u32, seed: &[u64]) -> u64 {
    let base = if p.exponential {
        p.initial_ms
            .saturating_mul(1u64 << (failures.saturating_sub(1)).min(30))
    } else {
        p.initial_ms
    }
    .min(p.max_ms);
    if !p.jitter || base < 2 {
        return base;
    }
    let half = base / 2;
    half + mix(seed) % (base - half + 1)
}

/// A step's output: the JSON its task wrote, or for map steps the array of item outputs.
pub fn step_output(wf: &Workflow, i: usize) -> Value {
    let run = &wf.steps[i];
    if wf.spec.steps[i].map.is_none() {
        return run.outputs.get(&0).map(Json::value).unwrap_or(Value::Null);
    }
    Value::Array(
        (0..run.total)
            .map(|k| run.outputs.get(&k).map(Json::value).unwrap_or(Value::Null))
            .collect(),
    )
}

/// The `steps` variable of conditions.
pub fn steps_value(wf: &Workflow) -> Value {
    let mut m = serde_json::Map::new();
    for (i, (run, spec)) in wf.steps.iter().zip(&wf.spec.steps).enumerate() {
        m.insert(
            spec.id.clone(),
            json!({
                "status": run.status.name(),
                "output": if run.status.is_terminal() || spec.repeat.is_some() { step_output(wf, i) } else { Value::Null },
                "succeeded": run.succeeded,
                "failed": run.failed,
                "dead_lettered": run.dead_lettered(),
                "blocked": run.blocked.len(),
                "skipped": run.skipped.count(),
                "items": run.total,
                "iteration": run.iteration,
            }),
        );
    }
    Value::Object(m)
}

pub fn params_value(wf: &Workflow) -> Value {
    Value::Object(
        wf.params
            .iter()
            .map(|(k, v)| (k.clone(), v.value()))
            .collect(),
    )
}

/// `3 dead-lettered, 5 blocked` — the items of a step that did not get through, if any.
pub(crate) fn item_counts(run: &StepRun) -> Option<String> {
    let parts: Vec<String> = [
        (run.dead.len() as u32, "dead-lettered"),
        (run.blocked.len() as u32, "blocked behind a dead letter"),
        (run.discarded.count(), "discarded"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Why a finished workflow is `degraded` (None: it succeeded): item counts and failed
/// optional steps, so the status never hides work that did not get through.
pub(crate) fn degraded_reason(wf: &Workflow) -> Option<String> {
    let (mut dead, mut blocked, mut discarded) = (0u64, 0u64, 0u64);
    let mut failed = Vec::new();
    for (r, s) in wf.steps.iter().zip(&wf.spec.steps) {
        dead += r.dead.len() as u64;
        blocked += r.blocked.len() as u64;
        discarded += r.discarded.count() as u64;
        if r.status == StepStatus::Failed && s.optional {
            failed.push(s.id.clone());
        }
    }
    let mut parts = Vec::new();
    if dead > 0 {
        parts.push(format!("{dead} item(s) dead-lettered"));
    }
    if blocked > 0 {
        parts.push(format!(
            "{blocked} item(s) blocked behind dead letters (redrive or discard them: troupe dlq --workflow {})",
            wf.name()
        ));
    }
    if discarded > 0 {
        parts.push(format!("{discarded} item(s) discarded"));
    }
    if !failed.is_empty() {
        parts.push(format!("optional step(s) failed: {}", failed.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}
