//! Read-only views of the state for the API and the CLI (JSON).

use crate::json::Json;
use crate::state::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowSummary {
    pub id: String,
    pub name: String,
    pub status: String,
    pub paused: bool,
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    pub steps: usize,
    pub steps_finished: usize,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Where every item of a step is: each item is in exactly one bucket, and the buckets add up
/// to the step's items.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funnel {
    pub succeeded: u32,
    pub running: u32,
    /// Ready to place (queued, or waiting for room in the step's `parallelism` window).
    pub queued: u32,
    pub waiting_retry: u32,
    /// Lane items not yet through the steps before this one.
    pub waiting_upstream: u32,
    /// Waiting behind an upstream dead letter.
    pub blocked: u32,
    pub dead_lettered: u32,
    pub discarded: u32,
    pub skipped: u32,
    /// Failed for good (`on_failure = "fail"`).
    pub failed: u32,
    /// Never ran: the step was cancelled, failed or timed out first.
    pub cancelled: u32,
}

impl Funnel {
    pub fn total(&self) -> u32 {
        self.succeeded
            + self.running
            + self.queued
            + self.waiting_retry
            + self.waiting_upstream
            + self.blocked
            + self.dead_lettered
            + self.discarded
            + self.skipped
            + self.failed
            + self.cancelled
    }
}

/// The funnel of step `i`.
pub fn funnel(wf: &Workflow, i: usize) -> Funnel {
    let run = &wf.steps[i];
    let count =
        |f: fn(&TaskState) -> bool| run.tasks.values().filter(|t| f(&t.state)).count() as u32;
    let mut f = Funnel {
        succeeded: run.done.count(),
        running: count(|s| matches!(s, TaskState::Assigned { .. } | TaskState::Running { .. })),
        queued: count(|s| matches!(s, TaskState::Queued)) + run.ready.len() as u32,
        waiting_retry: count(|s| matches!(s, TaskState::Waiting { .. })),
        blocked: run.blocked.len() as u32,
        dead_lettered: run.dead.len() as u32,
        discarded: run.discarded.count(),
        skipped: run.skipped.count(),
        failed: run.failed,
        ..Funnel::default()
    };
    let rest = run.total.saturating_sub(f.total());
    match run.status {
        StepStatus::Running if wf.spec.is_lane(i) => f.waiting_upstream = rest,
        // Items a map has not materialized yet.
        StepStatus::Running => f.queued += rest,
        StepStatus::Skipped => f.skipped += rest,
        _ => f.cancelled += rest,
    }
    f
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepView {
    pub id: String,
    /// The steps this one runs after (its `needs`, which include any `map.from`), by id: the
    /// edges of the DAG.
    #[serde(default)]
    pub needs: Vec<String>,
    pub status: String,
    pub items: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub dead_lettered: u32,
    pub running: u32,
    pub queued: u32,
    pub waiting_retry: u32,
    /// Every item in exactly one bucket.
    pub funnel: Funnel,
    pub iteration: u32,
    pub error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The output of a step without `map` (map steps: see the API's output endpoint).
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowDetail {
    #[serde(flatten)]
    pub summary: WorkflowSummary,
    pub description: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub deadline_ms: Option<u64>,
    pub step_runs: Vec<StepView>,
    pub checkpoint: Option<Checkpoint>,
    /// The server whose instance actor owns the workflow.
    pub owner: Option<String>,
    pub history: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub id: u64,
    pub workflow: String,
    pub step: String,
    pub item: u32,
    /// The item's value (the document id, ...).
    pub item_value: Option<serde_json::Value>,
    /// The node that ran the last attempt.
    pub node: Option<String>,
    pub attempt: u32,
    pub attempts: u32,
    pub last_error: String,
    pub log: String,
    pub at_ms: u64,
}

pub fn summary(wf: &Workflow) -> WorkflowSummary {
    WorkflowSummary {
        id: wf.name(),
        name: wf.spec.name.clone(),
        status: wf.status.name().into(),
        paused: wf.paused,
        submitted_ms: wf.submitted_ms,
        finished_ms: wf.finished_ms,
        steps: wf.steps.len(),
        steps_finished: wf.steps.iter().filter(|s| s.status.is_terminal()).count(),
        reason: wf.reason.clone(),
        idempotency_key: wf.idempotency_key.clone(),
    }
}

pub fn detail(wf: &Workflow) -> WorkflowDetail {
    let step_runs = wf
        .steps
        .iter()
        .zip(&wf.spec.steps)
        .map(|(run, spec)| {
            let i = wf.spec.step_index(&spec.id).unwrap_or(0);
            let f = funnel(wf, i);
            StepView {
                id: spec.id.clone(),
                needs: spec
                    .needs
                    .iter()
                    .filter_map(|&n| wf.spec.steps.get(n as usize).map(|s| s.id.clone()))
                    .collect(),
                status: run.status.name().into(),
                items: run.total,
                succeeded: run.succeeded,
                failed: run.failed,
                dead_lettered: run.dead_lettered(),
                running: f.running,
                queued: f.queued,
                waiting_retry: f.waiting_retry,
                funnel: f,
                iteration: run.iteration,
                error: run.error.clone(),
                started_ms: run.started_ms,
                finished_ms: run.finished_ms,
                output: if spec.map.is_none() {
                    run.outputs.get(&0).map(Json::value)
                } else {
                    None
                },
            }
        })
        .collect();
    WorkflowDetail {
        summary: summary(wf),
        description: wf.spec.description.clone(),
        params: wf
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.value()))
            .collect(),
        deadline_ms: wf.deadline_ms,
        step_runs,
        checkpoint: wf.checkpoint.clone(),
        owner: wf.owner.clone(),
        history: wf.history.clone(),
    }
}

pub fn dead_letter(d: &DeadLetter) -> DeadLetterView {
    DeadLetterView {
        id: d.id,
        workflow: wf_name(d.task.wf),
        step: d.step_id.clone(),
        item: d.task.item,
        item_value: d.item_value.as_ref().map(Json::value),
        node: d.node.clone(),
        attempt: d.attempt,
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        log: d.log_stem.clone(),
        at_ms: d.at_ms,
    }
}

/// One item at one step, for the item trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemStepView {
    pub step: String,
    /// `succeeded`, `running`, `queued`, `waiting_retry`, `waiting_upstream`, `blocked`,
    /// `dead_lettered`, `discarded`, `skipped`, `failed`, `cancelled`, or `pending` (its step has
    /// not started).
    pub status: String,
    /// The dead letter that holds it (its own, or the upstream one it is blocked behind).
    pub dead_letter: Option<u64>,
    pub attempt: u32,
    /// Attempts placed in all.
    pub placed: u32,
    pub node: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub discarded: Option<String>,
    /// The last attempt's log files, relative to the data dir of `node` (`.out`, `.err`).
    pub log: Option<String>,
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemView {
    pub workflow: String,
    pub item: u32,
    pub value: Option<serde_json::Value>,
    /// Each map step whose items include this index, in spec order.
    pub steps: Vec<ItemStepView>,
}

/// Where item `item` is in every map step of the workflow (`troupe item wf-1 176`).
pub fn item(wf: &Workflow, item: u32) -> Option<ItemView> {
    let mut steps = Vec::new();
    let mut value = None;
    for (i, (run, spec)) in wf.steps.iter().zip(&wf.spec.steps).enumerate() {
        if spec.map.is_none() || (run.status != StepStatus::Pending && item >= run.total) {
            continue;
        }
        if value.is_none() && run.status != StepStatus::Pending {
            value = crate::state::item_value(wf, i, item).map(|j| j.value());
        }
        let (status, dead_letter) = item_status(wf, i, item);
        let t = run.trace.get(&item).cloned().unwrap_or_default();
        steps.push(ItemStepView {
            step: spec.id.clone(),
            status: status.into(),
            dead_letter,
            attempt: t.attempt,
            placed: t.placed,
            node: t.node.clone(),
            started_ms: t.started_ms,
            finished_ms: t.finished_ms,
            duration_ms: t
                .finished_ms
                .zip(t.started_ms)
                .map(|(f, s)| f.saturating_sub(s)),
            error: run
                .tasks
                .get(&item)
                .and_then(|k| k.last_error.clone())
                .or(t.last_error.clone()),
            discarded: t.discarded.clone(),
            log: (t.attempt > 0).then(|| {
                TaskRef {
                    wf: wf.id,
                    step: i as u16,
                    item,
                }
                .log_stem(&spec.id, t.attempt)
            }),
            output: run.outputs.get(&item).map(Json::value),
        });
    }
    (!steps.is_empty()).then(|| ItemView {
        workflow: wf.name(),
        item,
        value,
        steps,
    })
}

/// The funnel bucket of one item at one step.
pub fn item_status(wf: &Workflow, i: usize, item: u32) -> (&'static str, Option<u64>) {
    let run = &wf.steps[i];
    if let Some(t) = run.tasks.get(&item) {
        return match t.state {
            TaskState::Queued => ("queued", None),
            TaskState::Waiting { .. } => ("waiting_retry", None),
            _ => ("running", None),
        };
    }
    if run.done.contains(item) {
        ("succeeded", None)
    } else if let Some(id) = run.dead.get(&item) {
        ("dead_lettered", Some(*id))
    } else if let Some(id) = run.blocked.get(&item) {
        ("blocked", Some(*id))
    } else if run.discarded.contains(item) {
        ("discarded", None)
    } else if run.skipped.contains(item) {
        ("skipped", None)
    } else if run.ready.contains(&item) {
        ("queued", None)
    } else {
        match run.status {
            StepStatus::Pending => ("pending", None),
            StepStatus::Running if wf.spec.is_lane(i) => ("waiting_upstream", None),
            StepStatus::Running => ("queued", None),
            StepStatus::Skipped => ("skipped", None),
            _ => ("cancelled", None),
        }
    }
}
