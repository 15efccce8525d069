//! The machine's record of ended attempts (`troupe_actors::attempts`), which the node's traces
//! turn into one span per attempt: every attempt, not only an item's last, with its own times
//! and outcome: failed and retried, succeeded, lost with its node, stopped by a cancel; a
//! refused (fenced) report ends nothing, and nothing is recorded while it is off.

use troupe_actors::attempts::{End, Ended};
use troupe_actors::machine::Machine;
use troupe_raft_log::StateMachine;
use troupe_scheduler::placement::{Capacity, Reserve};
use troupe_scheduler::spec;
use troupe_scheduler::*;

const SPEC: &str = "name = \"t\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\nwith = \"x\"\nretries = { attempts = 3, backoff = \"fixed\", initial = \"1s\", jitter = false }\n";

struct Driver {
    m: Machine,
    now: u64,
    planner: Planner,
    registration: u64,
}

impl Driver {
    fn new() -> Driver {
        let mut d = Driver {
            m: Machine::default(),
            now: 1_000,
            planner: Planner::new(),
            registration: 0,
        };
        d.m.attempts.enabled = true;
        d.register();
        d
    }

    fn apply(&mut self, cmd: Command) -> Output {
        let out = self.m.apply(self.now, cmd);
        self.m.state.take_effects();
        out
    }

    fn register(&mut self) {
        self.registration += 1;
        self.apply(Command::RegisterNode(NodeInfo {
            node: "n1".into(),
            api: String::new(),
            raft_id: 0,
            incarnation: 0,
            registration: self.registration,
            slots: 4,
            queue: 4,
            capacity: Capacity {
                cpu_milli: 8_000,
                memory_bytes: 8 << 30,
                gpus: vec![],
            },
            reserved: Reserve::default(),
            labels: Default::default(),
        }));
    }

    fn submit(&mut self) -> u64 {
        let raw = spec::parse_toml(SPEC, Some("t.toml")).unwrap();
        let sub = Submission {
            spec: spec::compile(&raw).unwrap(),
            params: vec![],
            idempotency_key: None,
            digest: 1,
        };
        match self.apply(Command::Submit(Box::new(sub))) {
            Output::Submitted { id, .. } => id,
            other => panic!("{other:?}"),
        }
    }

    /// Plans and applies the placements; the attempt placed.
    fn place(&mut self) -> AttemptRef {
        let cmds = self.planner.plan(&self.m.state, self.now);
        let mut placed = None;
        for c in cmds {
            if let Command::Assign(list) = &c {
                let a = &list[0];
                placed = Some(AttemptRef {
                    task: a.task,
                    attempt: a.attempt,
                    epoch: a.epoch,
                });
            }
            self.apply(c);
        }
        placed.expect("an attempt was placed")
    }

    fn report(&mut self, at: AttemptRef, outcome: Outcome) -> Output {
        self.apply(Command::Finished(vec![Report { at, outcome }]))
    }

    fn ended(&mut self) -> Vec<Ended> {
        self.m.attempts.take()
    }
}

fn failed(e: &str) -> Outcome {
    Outcome::Failed { error: e.into() }
}

#[test]
fn each_attempt_ends_once_with_its_own_times_and_outcome() {
    let mut d = Driver::new();
    d.submit();
    let a1 = d.place();
    d.now = 2_000;
    d.apply(Command::Started(vec![a1]));
    assert!(d.ended().is_empty(), "starting ends nothing");
    d.now = 2_500;
    d.report(a1, failed("boom"));
    let e = d.ended();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].task, e[0].attempt), (a1.task, 1));
    assert_eq!(e[0].end, End::Failed);
    assert_eq!(e[0].error.as_deref(), Some("boom"));
    assert!(e[0].retried, "a retry is due");
    assert_eq!((e[0].start_ms, e[0].ended_ms), (2_000, 2_500));
    assert_eq!(e[0].node, "n1");

    // The same report again (re-proposed) is refused: nothing ends twice.
    d.report(a1, failed("boom"));
    assert!(d.ended().is_empty());

    d.now = 10_000;
    let a2 = d.place();
    assert_eq!(a2.attempt, 2);
    d.now = 10_400;
    // Its report commits before its `Started`: the span starts at the placement.
    d.report(
        a2,
        Outcome::Succeeded {
            output: Some(Json("1".into())),
        },
    );
    let e = d.ended();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].attempt, e[0].end, e[0].retried),
        (2, End::Succeeded, false)
    );
    assert_eq!((e[0].start_ms, e[0].ended_ms), (10_000, 10_400));
    assert_eq!(e[0].error, None);
}

#[test]
fn attempts_lost_with_their_node_and_stopped_by_a_cancel_end_too() {
    let mut d = Driver::new();
    let wf = d.submit();
    let a1 = d.place();
    d.apply(Command::Started(vec![a1]));
    d.now = 3_000;
    let epoch = d.m.state.sched.nodes["n1"].epoch;
    d.apply(Command::NodeLost {
        node: "n1".into(),
        epoch,
    });
    let e = d.ended();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].attempt, e[0].end, e[0].retried), (1, End::Lost, true));
    assert!(e[0].error.as_deref().unwrap().contains("lost"), "{e:?}");
    assert_eq!(e[0].ended_ms, 3_000);
    // The lost node's late failure report is refused: the attempt ended once.
    d.report(a1, failed("late"));
    assert!(d.ended().is_empty());

    d.register();
    d.now = 4_000;
    let a2 = d.place();
    assert_eq!(a2.attempt, 2);
    d.now = 4_100;
    d.apply(Command::Cancel(wf));
    let e = d.ended();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].attempt, e[0].end), (2, End::Stopped));
    assert_eq!((e[0].start_ms, e[0].ended_ms), (4_000, 4_100));
    assert!(e[0].error.as_deref().unwrap().contains("cancel"), "{e:?}");
}

#[test]
fn a_restarted_node_s_attempts_end_as_lost_and_nothing_is_kept_while_off() {
    let mut d = Driver::new();
    d.submit();
    let a1 = d.place();
    d.register();
    let e = d.ended();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].task, e[0].end), (a1.task, End::Lost));
    assert!(e[0].error.as_deref().unwrap().contains("registered again"));

    d.m.attempts.enabled = false;
    let a2 = d.place();
    d.report(a2, failed("x"));
    assert!(d.ended().is_empty());
}
