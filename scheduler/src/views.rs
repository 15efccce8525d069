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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepView {
    pub id: String,
    pub status: String,
    pub items: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub dead_lettered: u32,
    pub running: u32,
    pub queued: u32,
    pub waiting_retry: u32,
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
    pub idempotency_key: Option<String>,
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
    }
}

pub fn detail(wf: &Workflow) -> WorkflowDetail {
    let step_runs = wf
        .steps
        .iter()
        .zip(&wf.spec.steps)
        .map(|(run, spec)| {
            let count = |f: fn(&TaskState) -> bool| {
                run.tasks.values().filter(|t| f(&t.state)).count() as u32
            };
            StepView {
                id: spec.id.clone(),
                status: run.status.name().into(),
                items: run.total,
                succeeded: run.succeeded,
                failed: run.failed,
                dead_lettered: run.dead_lettered,
                running: count(|s| {
                    matches!(s, TaskState::Assigned { .. } | TaskState::Running { .. })
                }),
                queued: count(|s| matches!(s, TaskState::Queued))
                    + run.total.saturating_sub(run.next_item),
                waiting_retry: count(|s| matches!(s, TaskState::Waiting { .. })),
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
        idempotency_key: wf.idempotency_key.clone(),
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
        attempt: d.attempt,
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        log: d.log_stem.clone(),
        at_ms: d.at_ms,
    }
}
