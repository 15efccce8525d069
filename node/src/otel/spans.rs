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

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_scheduler::{Command, Output, Submission, TaskRef, spec};

    fn state_with_a_workflow() -> State {
        let text = "name = \"t\"\n[[step]]\nid = \"score\"\nmap = { range = [0, 3] }\nhandler = \"echo\"\nwith = \"x\"\non_failure = \"dead-letter\"\n";
        let raw = spec::parse_toml(text, Some("t.toml")).unwrap();
        let mut st = State::default();
        let sub = Submission {
            spec: spec::compile(&raw).unwrap(),
            params: vec![],
            idempotency_key: None,
            digest: 1,
        };
        assert!(matches!(
            st.apply(1, Command::Submit(Box::new(sub))),
            Output::Submitted { id: 1, .. }
        ));
        st
    }

    fn ended(item: u32, attempt: u32, end: End, error: Option<&str>) -> Ended {
        Ended {
            task: TaskRef {
                wf: 1,
                step: 0,
                item,
            },
            attempt,
            node: "n1".into(),
            start_ms: 10,
            ended_ms: 20,
            end,
            error: error.map(Into::into),
            retried: false,
        }
    }

    fn attr<'a>(s: &'a Span, key: &str) -> &'a Value {
        &s.attributes.iter().find(|(k, _)| *k == key).unwrap().1
    }

    #[test]
    fn an_attempt_span_has_its_ids_times_status_and_error() {
        let mut st = state_with_a_workflow();
        let ok = attempt("c", &st, &ended(0, 1, End::Succeeded, None)).unwrap();
        assert_eq!(ok.name, "attempt score/0");
        assert_eq!(ok.trace_id, trace_id("c", "wf-1"));
        assert_eq!(ok.span_id, attempt_span("c", "wf-1", 0, 0, 1));
        assert_eq!(ok.parent, Some(step_span("c", "wf-1", 0)));
        assert_eq!((ok.start_ms, ok.end_ms, ok.error.clone()), (10, 20, None));
        assert_eq!(
            attr(&ok, "troupe.task_id"),
            &Value::Str("wf-1/score/0".into())
        );
        assert_eq!(attr(&ok, "troupe.attempt"), &Value::Int(1));

        let lost = attempt("c", &st, &ended(1, 2, End::Lost, Some("node n1 was lost"))).unwrap();
        assert_eq!(lost.error.as_deref(), Some("node n1 was lost"));
        assert_eq!(attr(&lost, "troupe.status"), &Value::Str("lost".into()));
        assert_ne!(lost.span_id, ok.span_id);

        let stopped = attempt("c", &st, &ended(2, 1, End::Stopped, Some("cancelled"))).unwrap();
        assert_eq!(stopped.error, None, "a stopped attempt did not fail");
        assert_eq!(
            attr(&stopped, "troupe.reason"),
            &Value::Str("cancelled".into())
        );

        let failed = attempt("c", &st, &ended(2, 1, End::Failed, Some("bad"))).unwrap();
        assert_eq!(attr(&failed, "troupe.status"), &Value::Str("failed".into()));
        // The item went to the DLQ: its last failure says so.
        if let Some(wf) = st.workflows.get_mut(&1) {
            wf.steps[0].dead.insert(2, 7);
        }
        let dead = attempt("c", &st, &ended(2, 1, End::Failed, Some("bad"))).unwrap();
        assert_eq!(
            attr(&dead, "troupe.status"),
            &Value::Str("dead_lettered".into())
        );
        assert_eq!(dead.error.as_deref(), Some("bad"));

        let gone = Ended {
            task: TaskRef {
                wf: 9,
                step: 0,
                item: 0,
            },
            ..ended(0, 1, End::Succeeded, None)
        };
        assert!(attempt("c", &st, &gone).is_none(), "its workflow is gone");
    }
}
