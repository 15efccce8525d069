//! A slow node is not a dead one: a success it reports after it was declared lost is kept when
//! nothing else ran the task yet; and a task whose node is lost again and again is given up on.

mod common;

use common::*;
use troupe_scheduler::state::{LOST_MAX, TaskState, WfStatus};
use troupe_scheduler::*;

const ONE: &str = "name = \"one\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\nwith = \"x\"\non_failure = \"dead-letter\"\nretries = { attempts = 5 }\n";

fn lose(sim: &mut Sim) -> u64 {
    let epoch = sim.state.sched.nodes["n1"].epoch;
    assert_eq!(
        sim.apply(Command::NodeLost {
            node: "n1".into(),
            epoch
        }),
        Output::Done
    );
    sim.running.clear();
    epoch
}

fn report(attempt: u32, epoch: u64, id: u64) -> Command {
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
        outcome: Outcome::Succeeded {
            output: Some(Json("\"late\"".into())),
        },
    }])
}

#[test]
fn a_late_success_from_a_lost_node_is_kept_while_the_task_waits() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(ONE);
    sim.place();
    let epoch = lose(&mut sim);
    let task = &sim.wf(id).steps[0].tasks[&0];
    assert_eq!((task.attempt, &task.state), (2, &TaskState::Queued));
    // The node was only slow: its report of attempt 1 arrives now. Nothing ran attempt 2.
    let out = sim.apply(report(1, epoch, id));
    assert_eq!(
        out,
        Output::Counted {
            accepted: 1,
            refused: 0
        }
    );
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Succeeded, "{:?}", wf.history);
    assert_eq!(state::step_output(wf, 0), serde_json::json!("late"));
}

#[test]
fn a_late_success_is_refused_once_the_task_was_placed_again() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(ONE);
    sim.place();
    let epoch = lose(&mut sim);
    sim.apply(Command::RegisterNode(node_info(
        "n1",
        2,
        64_000,
        256 << 30,
        vec![],
    )));
    sim.place();
    assert!(matches!(
        sim.wf(id).steps[0].tasks[&0].state,
        TaskState::Assigned { .. }
    ));
    let out = sim.apply(report(1, epoch, id));
    assert_eq!(
        out,
        Output::Counted {
            accepted: 0,
            refused: 1
        }
    );
    sim.run(&builtin);
    assert_eq!(sim.wf(id).status, WfStatus::Succeeded);
}

#[test]
fn a_task_lost_with_its_node_too_often_is_dead_lettered() {
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(ONE);
    for _ in 0..LOST_MAX {
        if sim.state.sched.nodes["n1"].status != state::NodeStatus::Up {
            sim.apply(Command::RegisterNode(node_info(
                "n1",
                2,
                64_000,
                256 << 30,
                vec![],
            )));
        }
        sim.place();
        lose(&mut sim);
    }
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Degraded, "{:?}", wf.history);
    let d = sim.state.sched.dlq.values().next().expect("dead-lettered");
    assert!(d.last_error.contains("lost 3 times"), "{}", d.last_error);
    assert!(
        d.attempt <= LOST_MAX,
        "attempt numbers stay bounded: {}",
        d.attempt
    );
}
