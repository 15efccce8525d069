//! Warm workers in the replicated state: worker groups hold credits and resources for their
//! life, items prefer warm workers, groups are released when their step ends or they sit idle,
//! and a step whose worker is broken on a node goes to other nodes.

mod common;
use common::*;
use troupe_scheduler::state::{GroupKey, NodeStatus, StepStatus, WfStatus};
use troupe_scheduler::*;

fn spec(items: u32, extra: &str) -> String {
    format!(
        r#"
name = "warm"
[[step]]
id = "score"
map = {{ range = [0, {items}] }}
worker = {{ run = ["python3", "score.py"], batch = 2{extra} }}
resources = {{ cpu = 1, memory = "1GiB" }}
retries = {{ attempts = 3, initial = "10s", jitter = false }}
on_failure = "dead-letter"
"#
    )
}

fn groups(sim: &Sim) -> Vec<(GroupKey, u32, u32)> {
    sim.state
        .sched
        .workers
        .groups
        .iter()
        .map(|(k, g)| (k.clone(), g.workers, g.tasks))
        .collect()
}

/// Nodes n1 and n2: 2 slots (+ 2 queue), 64 CPUs each.
fn two_nodes() -> Sim {
    let mut sim = Sim::new(2);
    sim.apply(Command::RegisterNode(node_info(
        "n2",
        2,
        64_000,
        256 << 30,
        vec![],
    )));
    sim
}

fn ok(_: &RunSpec) -> Outcome {
    Outcome::Succeeded { output: None }
}

/// Reports every running attempt with its own node's epoch.
fn finish(sim: &mut Sim, f: &dyn Fn(&RunSpec) -> Outcome) {
    finish_some(sim, usize::MAX, f);
}

/// Reports the first `n` running attempts (oldest first), each with its node's epoch.
fn finish_some(sim: &mut Sim, n: usize, f: &dyn Fn(&RunSpec) -> Outcome) {
    let n = n.min(sim.running.len());
    let done: Vec<RunSpec> = sim.running.drain(..n).collect();
    let reports = done
        .iter()
        .map(|r| Report {
            at: AttemptRef {
                task: r.task,
                attempt: r.attempt,
                epoch: sim.state.sched.nodes[&r.node].epoch,
            },
            outcome: f(r),
        })
        .collect();
    sim.apply(Command::Finished(reports));
}

fn depth(sim: &Sim) -> Vec<u32> {
    sim.state
        .sched
        .workers
        .groups
        .values()
        .map(|g| g.depth)
        .collect()
}

fn workers_launch(r: &RunSpec) -> u32 {
    match &r.launch {
        Launch::Worker { workers, .. } => *workers,
        other => panic!("not a worker launch: {other:?}"),
    }
}

#[test]
fn workers_hold_the_credits_and_resources_and_items_only_fill_them() {
    let mut sim = Sim::new(2); // 2 slots + 2 queue, 64 CPUs
    let wf = sim.submit_toml(&spec(100, ""));
    sim.place();
    // Two workers (max_workers defaults to the node's slots), each holding 4 batches of 2.
    let g = groups(&sim);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!((g[0].1, g[0].2), (2, 16));
    let n = &sim.state.sched.nodes["n1"];
    assert_eq!(n.assigned, 2, "one credit per worker, none per item");
    assert_eq!(n.used.cpu_milli, 2_000, "the step's cpu per worker");
    assert_eq!(n.used.memory_bytes, 2 << 30);
    assert_eq!(sim.running.len(), 16);
    assert!(sim.running.iter().all(|r| workers_launch(r) >= 1));
    assert_eq!(workers_launch(sim.running.last().unwrap()), 2);
    // Finishing items a batch per worker at a time (workers slower than a commit) refills
    // the warm workers: never a third worker, never more than 16 there.
    for _ in 0..60 {
        finish_some(&mut sim, 4, &ok);
        sim.place();
        let g = groups(&sim);
        if g.is_empty() {
            break;
        }
        assert!(g[0].1 <= 2 && g[0].2 <= 16, "{g:?}");
    }
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);
    // The step ended: its workers are released and the node is whole again.
    assert!(groups(&sim).is_empty());
    let n = &sim.state.sched.nodes["n1"];
    assert_eq!(
        (n.assigned, n.used.cpu_milli, n.used.memory_bytes),
        (0, 0, 0)
    );
}

#[test]
fn items_prefer_a_node_that_already_has_a_warm_worker() {
    let mut sim = two_nodes();
    // One worker per node, 8 items each (4 batches of 2).
    let wf = sim.submit_toml(&spec(5, ", max_workers = 1"));
    sim.place();
    let nodes: std::collections::BTreeSet<&str> =
        sim.running.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes.len(), 1, "5 items fit one warm worker: {nodes:?}");
    assert_eq!(groups(&sim).len(), 1);
    finish(&mut sim, &ok);
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);

    // 20 items: the first worker fills (8), a second starts on the other node (8), 4 wait.
    let wf = sim.submit_toml(&spec(20, ", max_workers = 1"));
    sim.place();
    let g = groups(&sim);
    assert_eq!(g.len(), 2, "{g:?}");
    assert!(g.iter().all(|(_, w, t)| *w == 1 && *t == 8), "{g:?}");
    assert_eq!(sim.running.len(), 16);
    assert_eq!(sim.state.sched.queue.len(), 4);
    // As items finish, the waiting ones go to those warm workers, not to new ones.
    for _ in 0..10 {
        finish(&mut sim, &ok);
        sim.place();
        assert!(groups(&sim).iter().all(|(_, w, _)| *w == 1));
        assert!(groups(&sim).len() <= 2);
    }
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);
}

#[test]
fn a_steps_workers_are_released_when_the_step_ends_not_the_workflow() {
    let mut sim = Sim::new(2);
    let text = format!(
        "{}\n[[step]]\nid = \"after\"\nneeds = [\"score\"]\nhandler = \"sleep\"\nwith = {{ duration = \"10ms\" }}\n",
        spec(4, "")
    );
    let wf = sim.submit_toml(&text);
    sim.place();
    assert_eq!(groups(&sim).len(), 1);
    finish(&mut sim, &ok);
    sim.place();
    assert_eq!(sim.wf(wf).steps[0].status, StepStatus::Succeeded);
    assert_eq!(sim.wf(wf).status, WfStatus::Running, "the next step runs");
    assert!(
        groups(&sim).is_empty(),
        "the finished step keeps no workers"
    );
    let n = &sim.state.sched.nodes["n1"];
    assert_eq!(n.assigned, 1, "only the next step's attempt");
    assert_eq!(n.used.cpu_milli, 0);
}

#[test]
fn a_group_idle_for_its_steps_idle_is_released_and_started_again_when_items_return() {
    let mut sim = Sim::new(2);
    let wf = sim.submit_toml(&spec(2, ", idle = \"1s\""));
    sim.place();
    assert_eq!(groups(&sim).len(), 1);
    // Both fail: retried in 10 s. The group holds nothing now.
    finish(&mut sim, &|_| Outcome::Failed {
        error: "transient".into(),
    });
    let g = groups(&sim);
    assert_eq!((g[0].1, g[0].2), (1, 0), "{g:?}");
    sim.now += 999;
    sim.place();
    assert_eq!(groups(&sim).len(), 1, "not idle for 1 s yet");
    sim.now += 1;
    sim.place();
    assert!(groups(&sim).is_empty(), "idle for its 1 s: released");
    assert_eq!(sim.state.sched.nodes["n1"].assigned, 0);
    assert_eq!(sim.state.sched.nodes["n1"].used.cpu_milli, 0);
    // The retries come due: a new worker starts for them.
    sim.now += 10_000;
    sim.place();
    assert_eq!(groups(&sim).len(), 1);
    finish(&mut sim, &ok);
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);
}

#[test]
fn a_broken_worker_sends_the_steps_items_to_other_nodes_and_shows_on_its_node() {
    let mut sim = two_nodes();
    let wf = sim.submit_toml(&spec(4, ", max_workers = 1"));
    sim.place();
    let first = sim.running[0].node.clone();
    assert!(sim.running.iter().all(|r| r.node == first));
    let other = if first == "n1" { "n2" } else { "n1" };
    finish(&mut sim, &|_| Outcome::WorkerBroken {
        error: "5 starts in a row failed; last: exited with code 1".into(),
    });
    assert!(sim.state.sched.workers.is_broken(&first, wf, 0));
    assert!(
        sim.wf(wf).history.iter().any(|e| e
            .what
            .contains(&format!("its worker is broken on node {first}"))),
        "the history says so"
    );
    let (_, broken) = sim.state.node_workers(&first);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].contains("wf-1/score") && broken[0].contains("5 starts"));
    // The retries (in 10 s) go to the other node only.
    sim.now += 10_000;
    sim.place();
    assert_eq!(sim.running.len(), 4);
    assert!(
        sim.running.iter().all(|r| r.node == other),
        "{:?}",
        sim.running
    );
    assert!(sim.running.iter().all(|r| r.attempt == 2));
    finish(&mut sim, &ok);
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);
    assert!(
        sim.state.sched.workers.broken.is_empty(),
        "the mark goes with the step"
    );
}

#[test]
fn a_step_broken_on_its_only_node_still_ends_with_dead_letters_not_a_stall() {
    let mut sim = Sim::new(2);
    let wf = sim.submit_toml(&spec(3, ""));
    sim.run(&|_| Outcome::WorkerBroken {
        error: "broken".into(),
    });
    let w = sim.wf(wf);
    assert_eq!(w.status, WfStatus::Degraded, "{:?}", w.reason);
    assert_eq!(sim.state.sched.dlq.len(), 3);
    assert!(groups(&sim).is_empty());
}

#[test]
fn a_gpu_worker_is_pinned_to_its_gpu_and_holds_it_while_it_lives() {
    let mut sim = Sim::new(4);
    sim.apply(Command::RegisterNode(node_info(
        "g1",
        4,
        64_000,
        256 << 30,
        vec![("GPU-a", "H100", 80 << 30), ("GPU-b", "H100", 80 << 30)],
    )));
    let text = spec(40, "").replace(
        "resources = { cpu = 1, memory = \"1GiB\" }",
        "resources = { gpu = 1 }",
    );
    let wf = sim.submit_toml(&text);
    sim.place();
    let g = groups(&sim);
    assert_eq!(g.len(), 2, "one group per GPU: {g:?}");
    assert!(
        g.iter()
            .all(|(k, w, t)| k.node == "g1" && k.gpus.len() == 1 && *w == 1 && *t == 8)
    );
    assert_eq!(sim.state.sched.nodes["g1"].used.gpus.len(), 2);
    for r in &sim.running {
        assert_eq!(r.gpus.len(), 1);
    }
    for _ in 0..10 {
        finish(&mut sim, &ok);
        sim.place();
    }
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);
    assert!(sim.state.sched.nodes["g1"].used.gpus.is_empty());
}

#[test]
fn a_lost_node_takes_its_workers_with_it() {
    let mut sim = two_nodes();
    let wf = sim.submit_toml(&spec(4, ", max_workers = 1"));
    sim.place();
    let first = sim.running[0].node.clone();
    let epoch = sim.state.sched.nodes[&first].epoch;
    sim.apply(Command::NodeLost {
        node: first.clone(),
        epoch,
    });
    assert_eq!(sim.state.sched.nodes[&first].status, NodeStatus::Down);
    assert!(groups(&sim).iter().all(|(k, ..)| k.node != first));
    sim.running.clear();
    sim.place();
    assert!(sim.running.iter().all(|r| r.node != first));
    finish(&mut sim, &ok);
    assert_eq!(sim.wf(wf).status, WfStatus::Succeeded);
}

#[test]
fn a_full_worker_step_does_not_block_the_queue_behind_it() {
    let mut sim = Sim::new(2);
    // 20,000 items wait behind two full workers (16 items on the node).
    let big = sim.submit_toml(&spec(20_000, "").replace(
        "on_failure = \"dead-letter\"",
        "on_failure = \"dead-letter\"\nparallelism = 20000",
    ));
    sim.place();
    assert_eq!(sim.running.len(), 16);
    // A later workflow's plain task is placed in the next plan, not after the 20,000.
    let small = sim.submit_toml(
        "name = \"small\"\n[[step]]\nid = \"one\"\nhandler = \"sleep\"\nwith = { duration = \"1ms\" }\n",
    );
    sim.place();
    assert!(
        sim.running.iter().any(|r| r.task.wf == small),
        "the small workflow's task was placed"
    );
    assert_eq!(
        sim.running.iter().filter(|r| r.task.wf == big).count(),
        16,
        "the full worker step took no more"
    );
}

/// Workers that answer everything they hold before a report commits (a no-op worker) run
/// dry between refills: apply doubles their group's depth each time, up to 64 batches, so
/// they are kept busy; workers slower than a commit keep the first depth (tested above).
#[test]
fn a_group_that_runs_dry_between_refills_gets_deeper_up_to_a_bound() {
    let mut sim = Sim::new(2);
    let wf = sim.submit_toml(&spec(10_000, ", max_workers = 1"));
    sim.place();
    assert_eq!(depth(&sim), vec![8], "4 batches of 2 to start");
    let mut seen = vec![8];
    for _ in 0..40 {
        finish(&mut sim, &ok); // all it holds, in one commit
        sim.place();
        let Some(&d) = depth(&sim).first() else {
            break;
        };
        let held = groups(&sim)[0].2;
        assert!(
            held <= d,
            "the group holds {held} items, over its depth {d}"
        );
        seen.push(d);
    }
    assert_eq!(
        &seen[..6],
        &[8, 16, 32, 64, 128, 128],
        "doubles each time it runs dry, up to 64 batches of 2"
    );
    assert!(seen.iter().all(|&d| d <= 128));
    assert_eq!(sim.wf(wf).status, WfStatus::Running);
}

#[test]
fn the_items_of_one_assignment_share_one_rendered_worker_launch() {
    let mut sim = Sim::new(2);
    let wf = sim.submit_toml(&spec(100, ""));
    sim.place();
    let launches: Vec<_> = sim
        .running
        .iter()
        .map(|r| match &r.launch {
            Launch::Worker { launch, .. } => launch.clone(),
            other => panic!("not a worker launch: {other:?}"),
        })
        .collect();
    assert_eq!(launches.len(), 16);
    // One render per command: every item points at the first item's copy.
    assert!(
        launches
            .iter()
            .all(|l| std::sync::Arc::ptr_eq(l, &launches[0])),
        "each item rendered its own launch"
    );
    assert_eq!(launches[0].argv, vec!["python3", "score.py"]);
    // A worker item has no log files of its own (its worker's log is the step's).
    assert!(sim.running.iter().all(|r| r.log_stem.is_empty()));
    assert!(sim.running.iter().all(|r| r.workflow == format!("wf-{wf}")));
}
