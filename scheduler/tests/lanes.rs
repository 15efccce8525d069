//! Items flowing through steps: `map.from` streaming, per-item `when` and joins, dead letters
//! that block their item, and redrive / discard that finish (or give up on) the item.

mod common;

use common::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use troupe_scheduler::state::{StepStatus, WfStatus};
use troupe_scheduler::*;

/// Counts successful (step, item) results, so a test can check each ran exactly once.
#[derive(Default)]
struct Effects(RefCell<BTreeMap<(String, u32), u32>>);

impl Effects {
    fn record(&self, r: &RunSpec) {
        *self
            .0
            .borrow_mut()
            .entry((r.step_id.clone(), r.task.item))
            .or_default() += 1;
    }
    fn all_once(&self, steps: &[&str], items: u32) {
        let m = self.0.borrow();
        for s in steps {
            for i in 0..items {
                assert_eq!(
                    m.get(&(s.to_string(), i)),
                    Some(&1),
                    "step {s} item {i} should have succeeded exactly once"
                );
            }
        }
    }
}

fn seven_steps(source: &str) -> String {
    let mut t = format!(
        "name = \"claims\"\n[[step]]\nid = \"s1\"\nhandler = \"echo\"\nmap = {source}\nretries = {{ attempts = 2, initial = \"10ms\", jitter = false }}\non_failure = \"dead-letter\"\n"
    );
    for k in 2..=7 {
        t.push_str(&format!(
            "[[step]]\nid = \"s{k}\"\nneeds = [\"s{}\"]\nhandler = \"echo\"\nwith = {{ doc = \"{{{{ item }}}}\", at = \"s{k}\" }}\nmap = {{ from = \"s{}\" }}\nretries = {{ attempts = 2, initial = \"10ms\", jitter = false }}\non_failure = \"dead-letter\"\n",
            k - 1,
            k - 1
        ));
    }
    t
}

#[test]
fn items_stream_through_from_steps() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(
        r#"
name = "stream"
[[step]]
id = "a"
handler = "echo"
map = { range = [0, 6] }
parallelism = 1
[[step]]
id = "b"
needs = ["a"]
handler = "echo"
map = { from = "a" }
[[step]]
id = "c"
needs = ["b"]
handler = "echo"
with = { item = "{{ item }}", input = "{{ input }}" }
map = { from = "b" }
"#,
    );
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    let pos = |step: u16, item: u32| {
        sim.ran
            .iter()
            .position(|(t, _)| t.step == step && t.item == item)
            .unwrap()
    };
    // Item 0 is through the last step before item 3 has started the first.
    assert!(pos(2, 0) < pos(0, 3), "ran: {:?}", sim.ran);
    let out = state::step_output(wf, 2);
    assert_eq!(out[4], serde_json::json!({"item": "4", "input": "4"}));
}

#[test]
fn per_item_branches_and_a_join() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "docs"
[[step]]
id = "classify"
handler = "echo"
map = { items = [{ doc = "d0", class = "invoice" }, { doc = "d1", class = "receipt" }, { doc = "d2", class = "invoice" }, { doc = "d3", class = "letter" }] }
[[step]]
id = "invoice"
needs = ["classify"]
map = { from = "classify" }
when = "input.class == 'invoice'"
handler = "echo"
with = { fields = "invoice {{ item.doc }}" }
[[step]]
id = "receipt"
needs = ["classify"]
map = { from = "classify" }
when = "input.class == 'receipt' && item.doc != ''"
handler = "echo"
with = { fields = "receipt {{ item.doc }}" }
[[step]]
id = "report"
needs = ["invoice", "receipt"]
map = { from = ["invoice", "receipt"] }
handler = "echo"
with = "{{ input.fields }}"
"#,
    );
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    let report = state::step_output(wf, 3);
    assert_eq!(
        report,
        serde_json::json!(["invoice d0", "receipt d1", "invoice d2", null])
    );
    assert_eq!(wf.steps[1].done.count(), 2);
    assert_eq!(wf.steps[1].skipped.count(), 2);
    assert_eq!(wf.steps[2].done.count(), 1);
    // d3 took neither branch, so the join skips it.
    assert!(wf.steps[3].skipped.contains(3));
    let runs_of_report = sim.ran.iter().filter(|(t, _)| t.step == 3).count();
    assert_eq!(runs_of_report, 3, "the join runs each routed document once");
}

fn fails_item(
    step: &'static str,
    item: u32,
    fixed: &RefCell<bool>,
    effects: &Effects,
    r: &RunSpec,
) -> Outcome {
    if r.step_id == step && r.task.item == item && !*fixed.borrow() {
        return Outcome::Failed {
            error: "unsupported encoding".into(),
        };
    }
    let out = builtin(r);
    if matches!(out, Outcome::Succeeded { .. }) {
        effects.record(r);
    }
    out
}

#[test]
fn a_dead_letter_blocks_its_item_and_a_bulk_redrive_finishes_it() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(&seven_steps("{ range = [0, 20] }"));
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("s3", 7, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded, "{:?}", wf.history);
    let reason = wf.reason.clone().unwrap();
    assert!(reason.contains("1 item(s) dead-lettered"), "{reason}");
    assert!(reason.contains("4 item(s) blocked"), "{reason}");
    assert_eq!(wf.steps[2].dead.len(), 1);
    assert_eq!(wf.steps[2].status, StepStatus::Degraded);
    for k in 3..7 {
        assert!(
            wf.steps[k].blocked.contains_key(&7),
            "s{} blocks item 7",
            k + 1
        );
        assert_eq!(wf.steps[k].done.count(), 19, "every other item went on");
    }
    let f = views::funnel(wf, 6);
    assert_eq!((f.succeeded, f.blocked, f.total()), (19, 1, 20));
    let dl = sim.state.sched.dlq.values().next().unwrap().clone();
    assert_eq!(dl.item_value, Some(Json("7".into())));
    assert_eq!(dl.node.as_deref(), Some("n1"));

    *fixed.borrow_mut() = true;
    let filter = DlqFilter {
        step: Some("s3".into()),
        grep: Some("encoding".into()),
        ..Default::default()
    };
    let out = sim.apply(Command::RedriveMany(filter));
    assert_eq!(
        out,
        Output::Bulk {
            applied: 1,
            refused: 0,
            notes: vec![]
        }
    );
    assert_eq!(sim.wf(id).status, WfStatus::Running);
    sim.run(&|r| fails_item("s3", 7, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    let last = state::step_output(wf, 6);
    assert!(last.as_array().unwrap().iter().all(|v| !v.is_null()));
    effects.all_once(&["s1", "s2", "s3", "s4", "s5", "s6", "s7"], 20);
    let closes = wf
        .history
        .iter()
        .filter(|e| e.what.starts_with("workflow "))
        .count();
    assert_eq!(closes, 2, "degraded once, succeeded once: {:?}", wf.history);
}

#[test]
fn a_map_over_chain_blocks_and_redrives_item_by_item() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "over"
[[step]]
id = "a"
handler = "echo"
map = { range = [0, 10] }
on_failure = "dead-letter"
[[step]]
id = "b"
needs = ["a"]
handler = "echo"
map = { over = "steps.a.output" }
on_failure = "dead-letter"
[[step]]
id = "c"
needs = ["b"]
handler = "echo"
map = { over = "steps.b.output" }
"#,
    );
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("a", 3, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded);
    assert!(wf.steps[1].blocked.contains_key(&3), "no null is fed on");
    assert!(wf.steps[2].blocked.contains_key(&3));
    *fixed.borrow_mut() = true;
    let out = sim.apply(Command::RedriveMany(DlqFilter {
        all: true,
        ..Default::default()
    }));
    assert!(matches!(out, Output::Bulk { applied: 1, .. }), "{out:?}");
    sim.run(&|r| fails_item("a", 3, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    assert_eq!(state::step_output(wf, 2)[3], serde_json::json!(3));
    effects.all_once(&["a", "b", "c"], 10);
}

#[test]
fn a_barrier_step_that_saw_the_item_missing_runs_again() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "agg"
[[step]]
id = "score"
handler = "echo"
map = { range = [0, 5] }
on_failure = "dead-letter"
[[step]]
id = "total"
needs = ["score"]
handler = "echo"
with = "{{ steps.score.output }}"
"#,
    );
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("score", 2, &fixed, &effects, r));
    assert_eq!(sim.wf(id).status, WfStatus::Degraded);
    let first = state::step_output(sim.wf(id), 1);
    assert_eq!(first, serde_json::json!("[0,1,null,3,4]"));
    *fixed.borrow_mut() = true;
    let dl = *sim.state.sched.dlq.keys().next().unwrap();
    assert_eq!(sim.apply(Command::Redrive(dl)), Output::Done);
    assert_eq!(sim.wf(id).steps[1].status, StepStatus::Pending, "reset");
    sim.run(&|r| fails_item("score", 2, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded);
    assert_eq!(state::step_output(wf, 1), serde_json::json!("[0,1,2,3,4]"));
    assert!(
        wf.history.iter().any(|e| e
            .what
            .contains("steps that saw them missing run again: total")),
        "{:?}",
        wf.history
    );
}

#[test]
fn discard_gives_up_on_an_item_and_says_so() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(&seven_steps("{ range = [0, 5] }"));
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("s2", 1, &fixed, &effects, r));
    assert_eq!(
        sim.apply(Command::Discard {
            filter: DlqFilter::default(),
            reason: "x".into()
        }),
        Output::Rejected(
            "name dead letters to discard: ids, a filter (workflow, step, grep, since) or all"
                .into()
        )
    );
    let out = sim.apply(Command::Discard {
        filter: DlqFilter {
            workflow: Some(id),
            ..Default::default()
        },
        reason: "corrupt scan, customer asked to resend".into(),
    });
    assert!(matches!(out, Output::Bulk { applied: 1, .. }), "{out:?}");
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded);
    assert!(sim.state.sched.dlq.is_empty());
    for k in 1..7 {
        assert!(wf.steps[k].discarded.contains(1), "s{}", k + 1);
        assert!(wf.steps[k].blocked.is_empty());
    }
    let reason = wf.reason.clone().unwrap();
    assert!(reason.contains("6 item(s) discarded"), "{reason}");
    assert!(
        wf.history
            .iter()
            .any(|e| e.what.contains("corrupt scan, customer asked to resend"))
    );
}

#[test]
fn a_bulk_redrive_takes_only_what_the_filter_matches() {
    let mut sim = Sim::new(8);
    let id = sim.submit_toml(&seven_steps("{ range = [0, 30] }"));
    let fail = |r: &RunSpec| {
        if (r.step_id == "s2" && r.task.item.is_multiple_of(10))
            || (r.step_id == "s5" && r.task.item == 5)
        {
            Outcome::Failed {
                error: format!("bad at {}", r.step_id),
            }
        } else {
            builtin(r)
        }
    };
    sim.run(&fail);
    assert_eq!(sim.state.sched.dlq.len(), 4);
    let out = sim.apply(Command::RedriveMany(DlqFilter {
        step: Some("s5".into()),
        ..Default::default()
    }));
    assert!(matches!(out, Output::Bulk { applied: 1, .. }), "{out:?}");
    assert_eq!(sim.state.sched.dlq.len(), 3);
    assert!(sim.state.sched.dlq.values().all(|d| d.step_id == "s2"));
    sim.run(&builtin);
    let out = sim.apply(Command::RedriveMany(DlqFilter {
        grep: Some("bad at s2".into()),
        since_ms: Some(60_000),
        ..Default::default()
    }));
    assert!(matches!(out, Output::Bulk { applied: 3, .. }), "{out:?}");
    sim.run(&builtin);
    assert_eq!(sim.wf(id).status, WfStatus::Succeeded);
    let item = views::item(sim.wf(id), 10).unwrap();
    assert_eq!(item.steps.len(), 7);
    assert!(item.steps.iter().all(|s| s.status == "succeeded"));
    assert_eq!(
        item.steps[1].attempt, 3,
        "two failed tries, then the redrive"
    );
    assert_eq!(item.steps[1].error.as_deref(), Some("bad at s2"));
}

#[test]
fn ten_thousand_dead_letters_redrive_in_one_command() {
    let mut sim = Sim::new(64);
    let id = sim.submit_toml(
        r#"
name = "many"
[[step]]
id = "a"
handler = "echo"
map = { range = [0, 10000] }
on_failure = "dead-letter"
[[step]]
id = "b"
needs = ["a"]
handler = "echo"
map = { from = "a" }
"#,
    );
    let fixed = RefCell::new(false);
    let f = |r: &RunSpec| {
        if r.step_id == "a" && !*fixed.borrow() {
            Outcome::Failed {
                error: "down".into(),
            }
        } else {
            builtin(r)
        }
    };
    sim.run(&f);
    assert_eq!(sim.state.sched.dlq.len(), 10_000);
    *fixed.borrow_mut() = true;
    let out = sim.state.apply(
        sim.now,
        Command::RedriveMany(DlqFilter {
            all: true,
            ..Default::default()
        }),
    );
    let _ = sim.state.take_effects();
    assert!(
        matches!(
            out,
            Output::Bulk {
                applied: 10_000,
                ..
            }
        ),
        "{out:?}"
    );
    sim.run(&f);
    assert_eq!(sim.wf(id).status, WfStatus::Succeeded);
}

#[test]
fn from_is_checked_at_submit() {
    let bad = [
        (
            "[[step]]\nid = \"a\"\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\nmap = { from = \"a\" }\n",
            "not a map step",
        ),
        (
            "[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [0, 2] }\n[[step]]\nid = \"b\"\nhandler = \"noop\"\nmap = { from = \"a\" }\n",
            "must also be listed in `needs`",
        ),
        (
            "[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [0, 2] }\n[[step]]\nid = \"x\"\nhandler = \"noop\"\nmap = { range = [0, 2] }\n[[step]]\nid = \"b\"\nneeds = [\"a\", \"x\"]\nhandler = \"noop\"\nmap = { from = [\"a\", \"x\"] }\n",
            "whose items come from different steps",
        ),
        (
            "[[step]]\nid = \"a\"\nhandler = \"echo\"\nwith = \"{{ input }}\"\nmap = { range = [0, 2] }\n",
            "only defined in steps with `map = { from",
        ),
        (
            "[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [0, 2] }\nwhen = \"input.x\"\n",
            "`input` is not defined",
        ),
    ];
    for (body, want) in bad {
        let text = format!("name = \"x\"\n{body}");
        let raw = spec::parse_toml(&text, Some("t.toml")).unwrap();
        let err = spec::compile(&raw).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should say {want}");
    }
}

#[test]
fn retry_from_failure_finishes_the_items_of_a_lane() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "retry"
[[step]]
id = "a"
handler = "echo"
map = { range = [0, 6] }
[[step]]
id = "b"
needs = ["a"]
handler = "echo"
map = { from = "a" }
[[step]]
id = "c"
needs = ["b"]
handler = "echo"
map = { from = "b" }
"#,
    );
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("b", 2, &fixed, &effects, r));
    assert_eq!(sim.wf(id).status, WfStatus::Failed);
    *fixed.borrow_mut() = true;
    assert_eq!(sim.apply(Command::Retry(id)), Output::Done);
    sim.run(&|r| fails_item("b", 2, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    assert!(
        state::step_output(wf, 2)
            .as_array()
            .unwrap()
            .iter()
            .all(|v| !v.is_null())
    );
    let m = effects.0.borrow();
    for i in 0..6 {
        assert_eq!(m.get(&("c".to_string(), i)), Some(&1), "c {i} ran once");
    }
}

#[test]
fn a_join_blocks_an_item_dead_lettered_in_one_branch_until_it_is_redriven() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "join"
[[step]]
id = "split"
handler = "echo"
map = { range = [0, 4] }
[[step]]
id = "left"
needs = ["split"]
handler = "echo"
map = { from = "split" }
on_failure = "dead-letter"
[[step]]
id = "right"
needs = ["split"]
handler = "echo"
map = { from = "split" }
[[step]]
id = "join"
needs = ["left", "right"]
handler = "echo"
map = { from = ["left", "right"] }
"#,
    );
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("left", 1, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded);
    assert!(
        wf.steps[3].blocked.contains_key(&1),
        "a join needs every branch"
    );
    assert_eq!(views::item_status(wf, 3, 1).0, "blocked");
    *fixed.borrow_mut() = true;
    let dl = *sim.state.sched.dlq.keys().next().unwrap();
    assert_eq!(sim.apply(Command::Redrive(dl)), Output::Done);
    sim.run(&|r| fails_item("left", 1, &fixed, &effects, r));
    assert_eq!(sim.wf(id).status, WfStatus::Succeeded);
    effects.all_once(&["split", "left", "right", "join"], 4);
}

#[test]
fn an_optional_lane_step_that_fails_lets_its_items_go_on_without_it() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "optional"
[[step]]
id = "a"
handler = "echo"
map = { range = [0, 3] }
[[step]]
id = "enrich"
needs = ["a"]
handler = "echo"
map = { from = "a" }
optional = true
[[step]]
id = "plain"
needs = ["a"]
handler = "echo"
map = { from = "a" }
[[step]]
id = "out"
needs = ["enrich", "plain"]
handler = "echo"
map = { from = ["enrich", "plain"] }
"#,
    );
    let (fixed, effects) = (RefCell::new(false), Effects::default());
    sim.run(&|r| fails_item("enrich", 0, &fixed, &effects, r));
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded, "{:?}", wf.history);
    assert!(
        wf.reason
            .as_ref()
            .unwrap()
            .contains("optional step(s) failed: enrich")
    );
    assert_eq!(wf.steps[3].status, StepStatus::Succeeded);
    assert_eq!(wf.steps[3].done.count(), 3, "every item reached the end");
}

#[test]
fn a_per_item_condition_that_fails_dead_letters_the_item() {
    let mut sim = Sim::new(4);
    let id = sim.submit_toml(
        r#"
name = "cond"
[[step]]
id = "a"
handler = "echo"
map = { items = [{ class = "x" }, { other = 1 }] }
[[step]]
id = "b"
needs = ["a"]
handler = "echo"
map = { from = "a" }
when = "input.class == 'x'"
on_failure = "dead-letter"
"#,
    );
    sim.run(&builtin);
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded);
    let d = sim.state.sched.dlq.values().next().unwrap();
    assert_eq!(d.task.item, 1);
    assert!(d.last_error.contains("when:"), "{}", d.last_error);
    assert_eq!(d.attempts, 0);
}
