//! Scenario tests of the pure core: DAG rules, retries, dead letters, fencing, lifecycle.

mod common;
use common::*;
use troupe_scheduler::state::{StepStatus, TaskState, WfStatus};
use troupe_scheduler::*;

const DAG: &str = r#"
name = "three-stage"
[[step]]
id = "gen"
handler = "echo"
map = { range = [0, 50] }
parallelism = 8
[[step]]
id = "double"
needs = ["gen"]
handler = "echo"
with = { v = "{{ item }}" }
map = { over = "steps.gen.output" }
[[step]]
id = "reduce"
needs = ["double"]
handler = "noop"
"#;

#[test]
fn dag_runs_to_the_end_with_lazy_windows() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(DAG);
    // Only the window of the first step is materialized.
    assert_eq!(sim.wf(id).steps[0].tasks.len(), 8);
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    assert_eq!(wf.steps[0].succeeded, 50);
    assert_eq!(wf.steps[1].succeeded, 50);
    assert_eq!(
        wf.steps[1].outputs[&7].value(),
        serde_json::json!({"v": "7"})
    );
    assert_eq!(wf.steps[2].succeeded, 1);
    // every task ran exactly once
    assert_eq!(sim.ran.len(), 101);
}

#[test]
fn retries_wait_for_backoff_then_succeed() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(
        r#"
name = "r"
[[step]]
id = "flaky"
handler = "fail"
with = { attempts = 2 }
retries = { attempts = 3, initial = "1s", max = "10s", jitter = false }
"#,
    );
    sim.place();
    sim.finish_all(&builtin);
    let task = &sim.wf(id).steps[0].tasks[&0];
    assert_eq!(
        task.state,
        TaskState::Waiting {
            due_ms: sim.now + 1_000
        }
    );
    assert_eq!(task.attempt, 2);
    sim.place();
    assert!(
        sim.running.is_empty(),
        "must not place before the backoff passes"
    );
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded);
    assert_eq!(
        sim.ran.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn exhausted_retries_fail_the_workflow_and_cancel_the_rest() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "f"
[[step]]
id = "a"
handler = "fail"
retries = { attempts = 2, initial = "10ms" }
[[step]]
id = "slow"
handler = "sleep"
with = { duration = "1h" }
[[step]]
id = "after"
needs = ["a"]
handler = "noop"
"#,
    );
    sim.place();
    // fail "a" twice; "slow" keeps running
    let fail_a = |r: &RunSpec| {
        if r.step_id == "a" {
            Outcome::Failed {
                error: "boom".into(),
            }
        } else {
            unreachable!()
        }
    };
    for _ in 0..2 {
        let (a, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut sim.running)
            .into_iter()
            .partition(|r| r.step_id == "a");
        sim.running = a;
        sim.finish_all(&fail_a);
        sim.running.extend(rest);
        sim.now += 1_000;
        sim.place();
    }
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed);
    assert!(
        wf.reason.as_deref().unwrap().contains("step \"a\" failed"),
        "{:?}",
        wf.reason
    );
    assert_eq!(wf.steps[2].status, StepStatus::Cancelled);
    assert_eq!(sim.killed.len(), 1, "the running sleep is stopped");
    assert_eq!(sim.state.sched.nodes["n1"].assigned, 0);
}

#[test]
fn dead_letter_keeps_the_step_going_and_redrive_reruns() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "d"
[[step]]
id = "score"
handler = "echo"
map = { items = [1, 2, 3] }
on_failure = "dead-letter"
"#,
    );
    let fail_two = |r: &RunSpec| match r.item.as_ref().map(|i| i.0.as_str()) {
        Some("2") => Outcome::Failed {
            error: "bad item".into(),
        },
        _ => Outcome::Succeeded { output: None },
    };
    sim.run(&fail_two);
    assert_eq!(sim.wf(id).status, WfStatus::Degraded);
    assert_eq!(sim.wf(id).steps[0].dead_lettered(), 1);
    let (&dlq, entry) = sim.state.sched.dlq.iter().next().unwrap();
    assert_eq!(entry.task.item, 1);
    assert_eq!(entry.last_error, "bad item");
    assert!(entry.log_stem.ends_with("score/1-attempt-1"));
    assert_eq!(sim.apply(Command::Redrive(dlq)), Output::Done);
    assert_eq!(sim.wf(id).status, WfStatus::Running);
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    assert_eq!(wf.steps[0].succeeded, 3);
    assert!(sim.state.sched.dlq.is_empty());
    assert_eq!(sim.ran.last().unwrap().1, 2, "redrive runs attempt + 1");
}

#[test]
fn optional_failure_degrades_and_branches_follow_conditions() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "doc"
[[step]]
id = "classify"
handler = "echo"
with = { class = "invoice" }
[[step]]
id = "invoice"
needs = ["classify"]
when = "steps.classify.output.class == 'invoice'"
handler = "noop"
[[step]]
id = "receipt"
needs = ["classify"]
when = "steps.classify.output.class == 'receipt'"
handler = "noop"
[[step]]
id = "enrich"
needs = ["invoice"]
optional = true
handler = "fail"
[[step]]
id = "report"
needs = ["invoice", "receipt", "enrich"]
handler = "noop"
"#,
    );
    sim.run(&builtin);
    let wf = sim.wf(id);
    let st: Vec<_> = wf.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        st,
        vec![
            StepStatus::Succeeded,
            StepStatus::Succeeded,
            StepStatus::Skipped,
            StepStatus::Failed,
            StepStatus::Succeeded
        ]
    );
    assert_eq!(wf.status, WfStatus::Degraded);
}

#[test]
fn refinement_loop_repeats_until_the_condition_holds() {
    let mut sim = Sim::new(1);
    let id = sim.submit_toml(
        r#"
name = "loop"
[[step]]
id = "refine"
handler = "echo"
loop = { until = "output.quality >= 0.8", max_iterations = 5 }
"#,
    );
    let by_iteration = |r: &RunSpec| {
        let q = [0.0, 0.3, 0.6, 0.9, 1.0][r.iteration as usize];
        Outcome::Succeeded {
            output: Some(Json(format!("{{\"quality\": {q}}}"))),
        }
    };
    sim.run(&by_iteration);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded);
    assert_eq!(wf.steps[0].iteration, 3);
    assert_eq!(sim.ran.len(), 3);
}

#[test]
fn stale_reports_are_refused_and_restart_requeues_as_next_attempt() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml("name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n");
    sim.place();
    let old = sim.running.clone();
    assert_eq!(old.len(), 1);
    // the node restarts: its epoch moves on and the attempt is requeued as attempt 2
    sim.apply(Command::RegisterNode(node_info(
        "n1",
        2,
        64_000,
        256 << 30,
        vec![],
    )));
    assert_eq!(sim.wf(id).steps[0].tasks[&0].attempt, 2);
    // once attempt 2 is placed, the old attempt's late result is fenced off (before that it
    // would be kept: see tests/losses.rs)
    sim.running.clear();
    sim.place();
    let late = Report {
        at: AttemptRef {
            task: old[0].task,
            attempt: 1,
            epoch: 1,
        },
        outcome: Outcome::Succeeded { output: None },
    };
    assert_eq!(
        sim.apply(Command::Finished(vec![late])),
        Output::Counted {
            accepted: 0,
            refused: 1
        }
    );
    sim.run(&builtin);
    assert_eq!(sim.wf(id).status, WfStatus::Succeeded);
    assert_eq!(sim.ran.last().unwrap().1, 2);
}

#[test]
fn idempotency_key_returns_the_same_workflow_or_refuses_a_different_spec() {
    let mut sim = Sim::new(1);
    let a = "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n";
    let b = "name = \"x\"\n[[step]]\nid = \"b\"\nhandler = \"noop\"\n";
    let first = sim.submit_key(a, Some("k1")).unwrap();
    assert_eq!(sim.submit_key(a, Some("k1")).unwrap(), first);
    let err = sim.submit_key(b, Some("k1")).unwrap_err();
    assert!(err.contains("already used for wf-1"), "{err}");
    assert_eq!(sim.state.workflows.len(), 1, "nothing else was created");
}

#[test]
fn cancel_pause_resume_and_retry_from_failure() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(
        r#"
name = "m"
[[step]]
id = "work"
handler = "noop"
map = { range = [0, 6] }
parallelism = 2
[[step]]
id = "last"
needs = ["work"]
handler = "fail"
with = { attempts = 1 }
"#,
    );
    assert_eq!(sim.apply(Command::Pause(id)), Output::Done);
    sim.place();
    assert!(sim.running.is_empty(), "paused: nothing starts");
    assert_eq!(sim.apply(Command::Resume(id)), Output::Done);
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed);
    let ran_before = sim.ran.len();
    assert_eq!(sim.apply(Command::Retry(id)), Output::Done);
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    // only the failed step ran again, as attempt 2
    assert_eq!(sim.ran.len(), ran_before + 1);
    assert_eq!(sim.ran.last().unwrap().1, 2);
    // cancel
    let id2 = sim.submit_toml(
        "name = \"c\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\nwith = { duration = \"1h\" }\n",
    );
    sim.place();
    assert_eq!(sim.apply(Command::Cancel(id2)), Output::Done);
    assert_eq!(sim.wf(id2).status, WfStatus::Cancelled);
    assert_eq!(sim.killed.len(), 1);
    assert!(matches!(
        sim.apply(Command::Cancel(id2)),
        Output::Rejected(_)
    ));
}

#[test]
fn workflow_timeout_is_planned_when_due() {
    let mut sim = Sim::new(1);
    let id = sim.submit_toml("name = \"t\"\ntimeout = \"5s\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\nwith = { duration = \"1h\" }\n");
    sim.place();
    sim.now += 4_000;
    sim.place();
    assert_eq!(sim.wf(id).status, WfStatus::Running);
    sim.now += 2_000;
    sim.place();
    assert_eq!(sim.wf(id).status, WfStatus::TimedOut);
    assert_eq!(sim.killed.len(), 1);
}

#[test]
fn snapshot_roundtrip_is_identical() {
    let mut sim = Sim::new(3);
    sim.submit_toml(DAG);
    sim.place();
    let bytes = bincode::serde::encode_to_vec(&sim.state, bincode::config::standard()).unwrap();
    let (mut back, _): (State, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert!(
        back.sched.on_node.is_empty(),
        "derived indexes are not in snapshots"
    );
    back.rebuild_indexes();
    assert_eq!(back, sim.state);
}

#[test]
fn map_over_a_non_array_fails_the_step_clearly() {
    let mut sim = Sim::new(1);
    let id = sim.submit_toml(
        r#"
name = "o"
[[step]]
id = "list"
handler = "echo"
with = { not = "an array" }
[[step]]
id = "each"
needs = ["list"]
handler = "noop"
map = { over = "steps.list.output" }
"#,
    );
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed);
    assert!(
        wf.steps[1]
            .error
            .as_deref()
            .unwrap()
            .contains("is an object, not a JSON array")
    );
}

#[test]
fn oversized_output_fails_the_attempt() {
    let mut sim = Sim::new(1);
    let id = sim.submit_toml("name = \"o\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n");
    let big = |_: &RunSpec| Outcome::Succeeded {
        output: Some(Json(format!("\"{}\"", "x".repeat(70_000)))),
    };
    sim.run(&big);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed);
    assert!(
        wf.reason.as_deref().unwrap().contains("the limit is 65536"),
        "{:?}",
        wf.reason
    );
}

#[test]
fn a_lost_or_refused_placement_is_planned_again() {
    let mut sim = Sim::new(2);
    sim.submit_toml("name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n");
    let first = sim.planner.plan(&sim.state, sim.now);
    assert_eq!(first.len(), 1, "one Assign proposed");
    // The proposal is lost (a leader change, or apply refused it): nothing new at once...
    assert!(sim.planner.plan(&sim.state, sim.now + 100).is_empty());
    // ...but after the proposal's time to live it is planned again.
    let again = sim.planner.plan(
        &sim.state,
        sim.now + troupe_scheduler::plan::PENDING_TTL_MS + 1,
    );
    assert_eq!(again, first);
}

#[test]
fn retry_drops_the_dead_letters_of_the_steps_it_runs_again() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        "name = \"d\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\nmap = { items = [1, 2, 3] }\non_failure = \"dead-letter\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"fail\"\nwith = { attempts = 1 }\n",
    );
    let fail_two = |r: &RunSpec| match (r.step_id.as_str(), r.item.as_ref().map(|i| i.0.as_str())) {
        ("a", Some("2")) | ("b", _) => Outcome::Failed { error: "no".into() },
        _ => Outcome::Succeeded { output: None },
    };
    sim.run(&fail_two);
    assert_eq!(sim.wf(id).status, WfStatus::Failed);
    let dlq = *sim.state.sched.dlq.keys().next().unwrap();
    // b failed; a (done, with one dead letter) is not reset, so its dead letter stays.
    assert_eq!(sim.apply(Command::Retry(id)), Output::Done);
    assert!(sim.state.sched.dlq.contains_key(&dlq));
    sim.run(&builtin);
    assert_eq!(sim.wf(id).status, WfStatus::Degraded);
    // Redrive now runs item 1 of a once more; a second redrive of the same entry is refused.
    assert_eq!(sim.apply(Command::Redrive(dlq)), Output::Done);
    assert!(matches!(
        sim.apply(Command::Redrive(dlq)),
        Output::NotFound(_)
    ));
    sim.run(&builtin);
    assert_eq!(sim.wf(id).status, WfStatus::Succeeded);
    assert_eq!(sim.wf(id).steps[0].succeeded, 3);
}

#[test]
fn a_submit_with_broken_step_references_is_refused_in_apply() {
    let mut sim = Sim::new(2);
    let raw = spec::parse_toml(
        "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\n",
        None,
    )
    .unwrap();
    let good = spec::compile(&raw).unwrap();
    let mut cases = Vec::new();
    let mut out_of_range = good.clone();
    out_of_range.steps[1].needs = vec![7];
    cases.push(out_of_range);
    let mut cycle = good.clone();
    cycle.steps[0].needs = vec![1];
    cases.push(cycle);
    for bad in cases {
        let out = sim.apply(Command::Submit(Box::new(Submission {
            spec: bad,
            params: vec![],
            idempotency_key: None,
            digest: 0,
        })));
        assert!(
            matches!(&out, Output::Rejected(m) if m.starts_with("invalid spec")),
            "{out:?}"
        );
    }
    assert!(
        sim.state.workflows.is_empty(),
        "nothing was created, nothing panicked"
    );
}

#[test]
fn collect_forgets_old_finished_workflows_their_keys_and_dead_letters() {
    let mut sim = Sim::new(2);
    let old = sim
        .submit_key(
            "name = \"o\"\n[[step]]\nid = \"a\"\nhandler = \"fail\"\non_failure = \"dead-letter\"\n",
            Some("k"),
        )
        .unwrap();
    sim.run(&builtin);
    assert_eq!(sim.state.sched.dlq.len(), 1);
    sim.now += 10_000;
    let running = sim.submit_toml(
        "name = \"r\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\nwith = { duration = \"1h\" }\n",
    );
    sim.place();
    let out = sim.apply(Command::Collect { retain_ms: 5_000 });
    assert_eq!(
        out,
        Output::Counted {
            accepted: 1,
            refused: 0
        }
    );
    assert!(!sim.state.workflows.contains_key(&old));
    assert!(
        sim.state.workflows.contains_key(&running),
        "running work is kept"
    );
    assert!(sim.state.idempotency.is_empty());
    assert!(sim.state.sched.dlq.is_empty());
}

#[test]
fn replicas_compare_state_hashes_and_a_divergence_is_surfaced() {
    let mut a = Sim::new(2);
    a.submit_toml("name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n");
    a.run(&builtin);
    let mut b = state::State::default();
    // b is a replica: the same state (as a snapshot would give it), then the same commands.
    b.clone_from(&a.state);
    for s in [&mut a.state, &mut b] {
        s.apply(a.now, Command::Audit { seq: 1 });
    }
    let hash = a.state.audit.hashes[&1];
    b.apply(a.now, Command::AuditResult { seq: 1, hash });
    assert_eq!(b.audit.last_checked, Some((1, true)));
    assert!(b.audit.diverged.is_none());
    // Now b drifts (a bug, a bad disk): the next audit says so, with where.
    b.sched.stats.tasks_succeeded += 1;
    a.state.apply(a.now, Command::Audit { seq: 2 });
    b.apply(a.now, Command::Audit { seq: 2 });
    let hash = a.state.audit.hashes[&2];
    b.apply(a.now, Command::AuditResult { seq: 2, hash });
    assert_eq!(b.audit.last_checked, Some((2, false)));
    assert!(
        b.audit
            .diverged
            .as_ref()
            .is_some_and(|w| w.contains("replica diverged: at audit 2")),
        "{:?}",
        b.audit
    );
    assert!(
        b.take_effects()
            .iter()
            .any(|e| matches!(e, Effect::Diverged(_)))
    );
}

#[test]
fn a_condition_over_its_budget_fails_its_step_with_the_reason_and_nothing_else() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(
        r#"
name = "costly"
[[step]]
id = "a"
handler = "echo"
[[step]]
id = "b"
needs = ["a"]
when = "steps.a.output.all(x, x in steps.a.output)"
handler = "noop"
"#,
    );
    let other = sim.submit_toml("name = \"other\"\n[[step]]\nid = \"x\"\nhandler = \"noop\"\n");
    // 12,000 numbers, and `x in list` inside a comprehension over the same list: 144M comparisons
    // uncounted; counted, it is refused before it starts.
    let big = |r: &RunSpec| {
        if r.step_id == "a" {
            let xs: Vec<String> = (0..12_000).map(|i| (i % 10).to_string()).collect();
            Outcome::Succeeded {
                output: Some(Json(format!("[{}]", xs.join(",")))),
            }
        } else {
            builtin(r)
        }
    };
    sim.run(&big);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed);
    let err = wf.steps[1].error.clone().unwrap_or_default();
    assert!(
        err.contains("when:") && err.contains("over the budget of 100000 steps"),
        "{err}"
    );
    assert_eq!(
        sim.wf(other).status,
        WfStatus::Succeeded,
        "other workflows go on"
    );
}
