//! The DAG rules: when steps start, how map windows fill, what success and failure of a task
//! do to its step and workflow. Called only from apply, so every server derives the same result.

use super::model::*;
use crate::command::{Effect, Launch, RunSpec};
use crate::cond;
use crate::json::{Json, mix};
use crate::spec::{Action, MapSource, OnFailure, RetryPolicy, TemplateVars, render};
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
                let needs = wf.spec.steps[i].needs.clone();
                if !needs
                    .iter()
                    .all(|&n| wf.steps[n as usize].status.is_terminal())
                {
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
                match wf.spec.steps[i].when.clone() {
                    None => self.start_step(wf, i, at),
                    Some(expr) => {
                        let (steps, params) = (steps_value(wf), params_value(wf));
                        match cond::eval_bool(&expr, &[("steps", &steps), ("params", &params)]) {
                            Ok(true) => self.start_step(wf, i, at),
                            Ok(false) => self.end_step(wf, i, StepStatus::Skipped, at, None),
                            Err(e) => self.fail_step(wf, i, at, format!("when: {e}")),
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
        let (items, total) = match &spec.map {
            None => (Items::Single, 1u32),
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
        self.fill_window(wf, i);
        self.maybe_complete(wf, i, at);
    }

    /// Materializes tasks up to the step's `parallelism` (lazy map expansion).
    pub(crate) fn fill_window(&mut self, wf: &mut Workflow, i: usize) {
        let window = wf.spec.steps[i].parallelism as usize;
        let run = &mut wf.steps[i];
        while run.tasks.len() < window && run.next_item < run.total {
            let item = run.next_item;
            run.next_item += 1;
            if run.done.contains(item) {
                continue;
            }
            let task = Task {
                attempt: run.attempt_floor + 1,
                failures: 0,
                state: TaskState::Queued,
                last_error: None,
            };
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

    /// A step whose items are all finished succeeds.
    pub(crate) fn maybe_complete(&mut self, wf: &mut Workflow, i: usize, at: u64) {
        let run = &wf.steps[i];
        if run.status == StepStatus::Running && run.tasks.is_empty() && run.next_item >= run.total {
            self.end_step(wf, i, StepStatus::Succeeded, at, None);
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
        let id = wf.spec.steps[i].id.clone();
        let run = &mut wf.steps[i];
        run.status = status;
        run.finished_ms = Some(at);
        let mut line = format!("step {id} {}", status.name());
        if run.dead_lettered > 0 {
            line.push_str(&format!(" ({} dead-lettered)", run.dead_lettered));
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
    fn drop_tasks(&mut self, wf: &mut Workflow, i: usize) {
        let tasks = std::mem::take(&mut wf.steps[i].tasks);
        for (item, task) in tasks {
            let r = TaskRef {
                wf: wf.id,
                step: i as u16,
                item,
            };
            self.unlink(r, &task, &wf.spec.steps[i].resources);
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

    /// Takes a task out of the queue, the delay set or its node (credit, CPU, memory, GPUs),
    /// whichever holds it.
    pub(crate) fn unlink(&mut self, r: TaskRef, task: &Task, req: &crate::spec::Resources) {
        match &task.state {
            TaskState::Queued => {
                self.queue.remove(&r);
            }
            TaskState::Waiting { due_ms } => {
                self.delayed.remove(&(*due_ms, r));
            }
            TaskState::Assigned { node, gpus, .. } | TaskState::Running { node, gpus, .. } => {
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
        let degraded =
            wf.steps.iter().zip(&wf.spec.steps).any(|(r, s)| {
                r.dead_lettered > 0 || (r.status == StepStatus::Failed && s.optional)
            });
        wf.status = if degraded {
            WfStatus::Degraded
        } else {
            WfStatus::Succeeded
        };
        wf.reason = degraded
            .then(|| "an optional step failed or tasks went to the dead-letter queue".to_string());
        self.close(wf, at);
        wf.log(at, format!("workflow {}", wf.status.name()));
    }

    fn close(&mut self, wf: &mut Workflow, at: u64) {
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
        self.unlink(r, &task, &wf.spec.steps[i].resources);
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
                    let next = Task {
                        attempt: task.attempt + 1,
                        failures: 0,
                        state: TaskState::Queued,
                        last_error: None,
                    };
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
        self.effects.push(Effect::Changed(wf.id));
        self.fill_window(wf, i);
        self.maybe_complete(wf, i, at);
    }

    /// An attempt failed: retry with backoff, dead-letter, or fail the step.
    pub(crate) fn task_failed(&mut self, wf: &mut Workflow, r: TaskRef, error: String, at: u64) {
        let i = r.step as usize;
        let policy = wf.spec.steps[i].retry.clone();
        let on_failure = wf.spec.steps[i].on_failure;
        let Some(mut task) = wf.steps[i].tasks.remove(&r.item) else {
            return;
        };
        self.unlink(r, &task, &wf.spec.steps[i].resources);
        self.stats.tasks_failed += 1;
        task.failures += 1;
        task.last_error = Some(error.clone());
        let id = wf.spec.steps[i].id.clone();
        if task.failures < policy.attempts {
            let seed = [r.wf, r.step as u64, r.item as u64, task.attempt as u64];
            let due = at.saturating_add(backoff_ms(&policy, task.failures, &seed));
            wf.log(
                at,
                format!(
                    "step {id} item {} attempt {} failed: {error}; retry at +{}ms",
                    r.item,
                    task.attempt,
                    due.saturating_sub(at)
                ),
            );
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
                self.next_dlq += 1;
                let entry = DeadLetter {
                    id: self.next_dlq,
                    task: r,
                    step_id: id.clone(),
                    attempt: task.attempt,
                    attempts,
                    last_error: error.clone(),
                    log_stem: r.log_stem(&id, task.attempt),
                    at_ms: at,
                };
                self.dlq.insert(entry.id, entry);
                wf.steps[i].dead_lettered += 1;
                wf.log(
                    at,
                    format!(
                        "step {id} item {} dead-lettered after {attempts} attempt(s): {error}",
                        r.item
                    ),
                );
                self.effects.push(Effect::Changed(wf.id));
                self.fill_window(wf, i);
                self.maybe_complete(wf, i, at);
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

    /// Builds the runner's view of an assigned attempt (templates rendered now, deterministically).
    pub(crate) fn run_spec(
        wf: &Workflow,
        r: TaskRef,
        attempt: u32,
        node: &str,
        epoch: u64,
        gpus: &[String],
    ) -> Result<RunSpec, String> {
        let i = r.step as usize;
        let spec = &wf.spec.steps[i];
        let run = &wf.steps[i];
        let item = match &run.items {
            Items::Single => None,
            Items::Range { start } => Some(Json((start + r.item as i64).to_string())),
            Items::List(v) => v.get(r.item as usize).cloned(),
            Items::Inline => match &spec.map {
                Some(MapSource::Items(v)) => v.get(r.item as usize).cloned(),
                _ => None,
            },
        };
        let item_value = item.as_ref().map(Json::value);
        let workflow = wf.name();
        let names_steps = match &spec.action {
            Action::Run(argv) => argv
                .iter()
                .chain(spec.env.iter().map(|(_, v)| v))
                .any(|t| t.contains("steps.")),
            Action::Builtin { with, .. } => with.0.contains("steps."),
        };
        let steps = names_steps.then(|| steps_value(wf));
        let vars = TemplateVars {
            params: &wf.params,
            item: item_value.as_ref(),
            workflow_id: &workflow,
            workflow_name: &wf.spec.name,
            step_id: &spec.id,
            iteration: run.iteration,
            attempt,
            steps: steps.as_ref(),
        };
        let launch = match &spec.action {
            Action::Run(argv) => Launch::Process {
                argv: argv
                    .iter()
                    .map(|a| render(a, &vars))
                    .collect::<Result<_, _>>()?,
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| render(v, &vars).map(|v| (k.clone(), v)))
                    .collect::<Result<_, _>>()?,
            },
            Action::Builtin { handler, with } => Launch::Builtin {
                handler: *handler,
                with: Json::from_value(&render_json(&with.value(), &vars)?),
            },
        };
        Ok(RunSpec {
            task: r,
            attempt,
            epoch,
            node: node.to_string(),
            log_stem: r.log_stem(&spec.id, attempt),
            workflow,
            step_id: spec.id.clone(),
            item,
            iteration: run.iteration,
            launch,
            timeout_ms: spec.timeout_ms,
            gpus: gpus.to_vec(),
        })
    }
}

fn render_json(v: &Value, vars: &TemplateVars<'_>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, vars)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| render_json(x, vars).map(|x| (k.clone(), x)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
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
                "dead_lettered": run.dead_lettered,
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
