//! Reconciliation against a node's renewal, as a pure function.

mod common;

use common::*;
use std::collections::BTreeSet;
use troupe_scheduler::reconcile::{Held, RESEND_AFTER_MS, VANISHED_AFTER_MS, reconcile};
use troupe_scheduler::*;

#[test]
fn lost_runs_are_sent_again_and_vanished_attempts_failed_only_when_settled() {
    let mut sim = Sim::new(4);
    sim.submit_toml(
        "name = \"r\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [0, 3] }\n",
    );
    sim.place();
    let epoch = sim.state.sched.nodes["n1"].epoch;
    let placed: Vec<(TaskRef, u32)> = sim.running.iter().map(|r| (r.task, r.attempt)).collect();
    assert_eq!(placed.len(), 3);
    // Item 0 started (and the node reports it held); item 1 started and vanished; item 2 was
    // assigned and never reached the node.
    let at = |i: usize| AttemptRef {
        task: placed[i].0,
        attempt: placed[i].1,
        epoch,
    };
    sim.apply(Command::Started(vec![at(0), at(1)]));
    let holds: BTreeSet<_> = [placed[0]].into_iter().collect();
    let reported = BTreeSet::new();
    let held = Held {
        node: "n1",
        epoch,
        holds: &holds,
        reported: &reported,
    };
    let soon = sim.now + 10;
    assert_eq!(reconcile(&sim.state, &held, soon, true), Default::default());
    let later = sim.now + RESEND_AFTER_MS + 1;
    let r = reconcile(&sim.state, &held, later, true);
    assert_eq!(r.resend, vec![placed[2]]);
    assert!(r.vanished.is_empty(), "not gone long enough");
    let much_later = sim.now + VANISHED_AFTER_MS + 1;
    let r = reconcile(&sim.state, &held, much_later, true);
    assert_eq!(r.vanished, vec![at(1)]);
    // A new leader that has not settled fails nothing.
    assert!(
        reconcile(&sim.state, &held, much_later, false)
            .vanished
            .is_empty()
    );
    // Another node's renewal sees none of these.
    let other = Held {
        node: "n2",
        epoch,
        holds: &holds,
        reported: &reported,
    };
    assert_eq!(
        reconcile(&sim.state, &other, much_later, true),
        Default::default()
    );
}
