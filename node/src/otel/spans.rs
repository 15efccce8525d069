//! The spans, built from applied log times: a workflow's and its steps' when the workflow ends
//! ([`workflow`]), each attempt's when the command that ended it applies ([`attempt`]).

use super::proto::{Span, Value};
use super::{attempt_span, step_span, trace_id, workflow_span};
use troupe_actors::attempts::{End, Ended};
use troupe_scheduler::State;
use troupe_scheduler::state::{StepStatus, WfStatus, Workflow, wf_name};

/// The spans of a finished workflow: its own and one per step that started (the attempts' spans
/// were sent as they ended).
pub fn workflow(cluster: &str, wf: &Workflow) -> Vec<Span> {
    let name = wf.name();
    let trace = trace_id(cluster, &name);
    let root = workflow_span(cluster, &name);
    let end = wf.finished_ms.unwrap_or(wf.submitted_ms);
    let bad = |s: WfStatus| matches!(s, WfStatus::Failed | WfStatus::TimedOut);
    let mut out = vec![Span {
        trace_id: trace,
        span_id: root,
        parent: None,
        name: format!("workflow {}", wf.spec.name),
        start_ms: wf.submitted_ms,
        end_ms: end,
        attributes: vec![
            ("troupe.workflow_id", Value::Str(name.clone())),
            ("troupe.workflow_name", Value::Str(wf.spec.name.clone())),
            ("troupe.status", Value::Str(wf.status.name().into())),
        ],
        error: bad(wf.status).then(|| wf.reason.clone().unwrap_or_default()),
    }];
    for (i, (run, spec)) in wf.steps.iter().zip(&wf.spec.steps).enumerate() {
        let Some(started) = run.started_ms else {
            continue;
        };
        out.push(Span {
            trace_id: trace,
            span_id: step_span(cluster, &name, i as u16),
            parent: Some(root),
            name: format!("step {}", spec.id),
            start_ms: started,
            end_ms: run.finished_ms.unwrap_or(end),
            attributes: vec![
                ("troupe.workflow_id", Value::Str(name.clone())),
                ("troupe.step", Value::Str(spec.id.clone())),
                ("troupe.status", Value::Str(run.status.name().into())),
            ],
            error: (run.status == StepStatus::Failed)
                .then(|| run.error.clone().unwrap_or_default()),
        });
    }
    out
}

/// The span of one ended attempt, a child of its step's span (`None`: its workflow is gone).
///
/// `troupe.status` is `succeeded`, `failed`, `dead_lettered` (its failure sent the item to the
/// DLQ), `lost` (its node was lost, evicted or restarted) or `stopped` (cancel, timeout, or its
/// step or workflow failed); failed, dead-lettered and lost attempts have status ERROR with
/// the error, a stopped one the reason in `troupe.reason`.
pub fn attempt(cluster: &str, state: &State, e: &Ended) -> Option<Span> {
    let wf = state.workflows.get(&e.task.wf)?;
    let step = wf.spec.steps.get(e.task.step as usize)?;
    let name = wf_name(e.task.wf);
    let dead = e.end == End::Failed
        && wf
            .steps
            .get(e.task.step as usize)
            .is_some_and(|r| r.dead.contains_key(&e.task.item));
    let status = if dead { "dead_lettered" } else { e.end.name() };
    let mut attributes = vec![
        ("troupe.workflow_id", Value::Str(name.clone())),
        (
            "troupe.task_id",
            Value::Str(format!("{name}/{}/{}", step.id, e.task.item)),
        ),
        ("troupe.step", Value::Str(step.id.clone())),
        ("troupe.item", Value::Int(i64::from(e.task.item))),
        ("troupe.node", Value::Str(e.node.clone())),
        ("troupe.attempt", Value::Int(i64::from(e.attempt))),
        ("troupe.status", Value::Str(status.into())),
        ("troupe.retried", Value::Bool(e.retried)),
    ];
    let error = match e.end {
        End::Failed | End::Lost => Some(e.error.clone().unwrap_or_default()),
        End::Succeeded => None,
        End::Stopped => {
            if let Some(why) = &e.error {
                attributes.push(("troupe.reason", Value::Str(why.clone())));
            }
            None
        }
    };
    Some(Span {
        trace_id: trace_id(cluster, &name),
        span_id: attempt_span(cluster, &name, e.task.step, e.task.item, e.attempt),
        parent: Some(step_span(cluster, &name, e.task.step)),
        name: format!("attempt {}/{}", step.id, e.task.item),
        start_ms: e.start_ms,
        end_ms: e.ended_ms,
        attributes,
        error,
    })
}
