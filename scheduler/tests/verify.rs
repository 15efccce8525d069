//! `verify::Replay`: a committed log replayed through the state machine, with the rules
//! checked at every index. A clean log passes with its figures; broken ones are reported.

mod common;

use common::*;
use troupe_scheduler::verify::{AckedSubmit, LogEntry, Replay};
use troupe_scheduler::*;

const ONE: &str = "name = \"one\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\nwith = \"x\"\n";

/// Builds a log as the leader would: every command through a shadow state, one per entry.
struct Log {
    state: State,
    planner: Planner,
    entries: Vec<LogEntry>,
    term: u64,
    now: u64,
}

impl Log {
    fn new() -> Self {
        let mut l = Log {
            state: State::default(),
            planner: Planner::new(),
            entries: vec![],
            term: 1,
            now: 1_000,
        };
        l.push(vec![]); // the leader's no-op
        l.push(vec![Command::RegisterNode(node_info(
            "n1",
            2,
            4_000,
            8 << 30,
            vec![],
        ))]);
        l
    }

    fn push(&mut self, cmds: Vec<Command>) -> Vec<Output> {
        let outs = cmds
            .iter()
            .map(|c| self.state.apply(self.now, c.clone()))
            .collect();
        self.state.take_effects();
        self.entries.push(LogEntry {
            index: self.entries.len() as u64 + 1,
            term: self.term,
            at_ms: self.now,
            commands: cmds,
        });
        self.now += 10;
        outs
    }

    fn submit(&mut self, key: &str) -> u64 {
        let raw = spec::parse_toml(ONE, Some("t.toml")).unwrap();
        let sub = Submission {
            spec: spec::compile(&raw).unwrap(),
            params: vec![],
            idempotency_key: Some(key.into()),
            digest: spec::spec_digest(&raw, &Default::default()),
        };
        match self.push(vec![Command::Submit(Box::new(sub))])[0] {
            Output::Submitted { id, .. } => id,
            ref o => panic!("{o:?}"),
        }
    }

    fn place(&mut self) {
        let cmds = self.planner.plan(&self.state, self.now);
        if !cmds.is_empty() {
            self.push(cmds);
        }
    }

    fn report(&self, id: u64, attempt: u32, epoch: u64) -> Command {
        Command::Finished(vec![Report {
            at: AttemptRef {
                task: TaskRef {
                    wf: id,
                    step: 0,
                    item: 0,
                },
                attempt,
                epoch,
            },
            outcome: Outcome::Succeeded { output: None },
        }])
    }

    fn replay(&self, acked: &[AckedSubmit]) -> troupe_scheduler::verify::Report {
        let mut r = Replay::new();
        for e in &self.entries {
            r.entry(e.clone());
        }
        r.finish(acked)
    }
}

fn acked(key: &str, wf: &str) -> AckedSubmit {
    AckedSubmit {
        key: Some(key.into()),
        workflow: wf.into(),
    }
}

#[test]
fn a_clean_log_holds_every_invariant_with_its_figures() {
    let mut log = Log::new();
    let id = log.submit("k1");
    log.place();
    let epoch = log.state.sched.nodes["n1"].epoch;
    // A stale duplicate of the same report comes after the first: refused, not a violation.
    log.push(vec![log.report(id, 1, epoch), log.report(id, 1, epoch)]);
    let r = log.replay(&[acked("k1", &format!("wf-{id}"))]);
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!((r.from_index, r.to_index), (1, log.entries.len() as u64));
    assert_eq!((r.reports_accepted, r.reports_refused), (1, 1));
    assert_eq!(
        (r.workflows, r.workflows_terminal, r.acked_submits),
        (1, 1, 1)
    );
    assert!(r.capacity_checks >= 3, "{}", r.capacity_checks);
}

#[test]
fn an_acknowledged_workflow_missing_from_the_log_is_a_g1_violation() {
    let mut log = Log::new();
    let id = log.submit("k1");
    let r = log.replay(&[acked("k1", &format!("wf-{id}")), acked("k2", "wf-99")]);
    assert!(!r.ok());
    assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    assert_eq!(r.violations[0].rule, "G1");
    assert!(
        r.violations[0].detail.contains("wf-99"),
        "{}",
        r.violations[0].detail
    );
}

#[test]
fn one_key_answered_with_two_workflows_is_a_g2_violation() {
    let mut log = Log::new();
    let a = log.submit("k1");
    let r = log.replay(&[acked("k1", &format!("wf-{a}")), acked("k1", "wf-7")]);
    let rules: Vec<_> = r.violations.iter().map(|v| v.rule).collect();
    assert!(rules.contains(&"G2"), "{:?}", r.violations);
}

#[test]
fn a_node_over_its_capacity_at_an_index_is_a_g6_violation() {
    let mut log = Log::new();
    log.submit("k1");
    log.place();
    // Break the state the replay starts from: the node holds an attempt it has no slot for.
    let mut r = Replay::new();
    let n = log.entries.len();
    for e in &log.entries[..n - 1] {
        r.entry(e.clone());
    }
    let mut broken = Replay::from_state({
        let mut s = log.state.clone();
        let n1 = s.sched.nodes.get_mut("n1").unwrap();
        (n1.slots, n1.queue) = (0, 0);
        s
    });
    broken.entry(LogEntry {
        index: n as u64 + 1,
        term: 1,
        at_ms: log.now,
        commands: vec![Command::Collect { retain_ms: 1 << 40 }],
    });
    let rep = broken.finish(&[]);
    assert_eq!(rep.violation_count, 1, "{:?}", rep.violations);
    assert_eq!(rep.violations[0].rule, "G6");
    assert_eq!(rep.violations[0].index, n as u64 + 1);
    assert!(r.finish(&[]).ok());
}

#[test]
fn a_gap_in_the_log_is_reported() {
    let mut log = Log::new();
    log.submit("k1");
    log.entries.remove(1);
    let r = log.replay(&[]);
    assert_eq!(r.violations[0].rule, "log", "{:?}", r.violations);
}

#[test]
fn leader_changes_and_replacements_are_measured() {
    let mut log = Log::new();
    let id = log.submit("k1");
    log.place();
    let epoch = log.state.sched.nodes["n1"].epoch;
    // A new leader: its no-op, then 700 ms later its first command.
    log.term = 2;
    log.push(vec![]);
    log.now += 700;
    log.push(vec![Command::NodeLost {
        node: "n1".into(),
        epoch,
    }]);
    log.now += 1_500;
    log.push(vec![Command::RegisterNode(node_info(
        "n1",
        2,
        4_000,
        8 << 30,
        vec![],
    ))]);
    log.place();
    let r = log.replay(&[]);
    assert!(r.ok(), "{:?}", r.violations);
    assert_eq!(r.failovers.len(), 1);
    let f = &r.failovers[0];
    assert_eq!((f.from_term, f.to_term), (1, 2));
    assert_eq!(f.gap_ms, 720, "{f:?}");
    assert_eq!(r.replacements.len(), 1);
    let p = &r.replacements[0];
    assert_eq!((p.node.as_str(), p.attempts), ("n1", 1));
    assert_eq!(p.replaced_ms, vec![1_520], "{p:?}");
    let t = &log.state.workflows[&id].steps[0].tasks[&0];
    assert_eq!(t.attempt, 2);
}
