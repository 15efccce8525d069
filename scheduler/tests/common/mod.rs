//! A deterministic driver for the core: planner + apply + a fake executor, no runtime.
#![allow(dead_code)]

use troupe_scheduler::spec::{self, Builtin};
use troupe_scheduler::state::{GroupKey, worker_of};
use troupe_scheduler::*;

pub struct Sim {
    pub state: State,
    pub planner: Planner,
    pub now: u64,
    pub running: Vec<RunSpec>,
    pub killed: Vec<(TaskRef, u32)>,
    pub ran: Vec<(TaskRef, u32)>,
}

impl Sim {
    pub fn new(slots: u32) -> Self {
        let mut s = Sim {
            state: State::default(),
            planner: Planner::new(),
            now: 1_000,
            running: vec![],
            killed: vec![],
            ran: vec![],
        };
        s.apply(Command::RegisterNode(node_info(
            "n1",
            slots,
            64_000,
            256 << 30,
            vec![],
        )));
        s
    }

    pub fn apply(&mut self, cmd: Command) -> Output {
        let out = self.state.apply(self.now, cmd);
        for e in self.state.take_effects() {
            match e {
                Effect::Run(r) => {
                    self.ran.push((r.task, r.attempt));
                    self.running.push(*r)
                }
                Effect::Kill { task, attempt, .. } => {
                    self.killed.push((task, attempt));
                    self.running
                        .retain(|r| !(r.task == task && r.attempt == attempt));
                }
                _ => {}
            }
        }
        self.check_invariants();
        out
    }

    pub fn submit_toml(&mut self, text: &str) -> u64 {
        self.submit_key(text, None).expect("submitted")
    }

    pub fn submit_key(&mut self, text: &str, key: Option<&str>) -> Result<u64, String> {
        let raw = spec::parse_toml(text, Some("test.toml")).map_err(|e| e.to_string())?;
        let compiled = spec::compile(&raw).map_err(|e| e.to_string())?;
        let digest = spec::spec_digest(&raw, &Default::default());
        let sub = Submission {
            spec: compiled,
            params: vec![],
            idempotency_key: key.map(Into::into),
            digest,
        };
        match self.apply(Command::Submit(Box::new(sub))) {
            Output::Submitted { id, .. } => Ok(id),
            other => Err(format!("{other:?}")),
        }
    }

    /// Plans and applies until nothing new is placed.
    pub fn place(&mut self) {
        for _ in 0..100 {
            let cmds = self.planner.plan(&self.state, self.now);
            if cmds.is_empty() {
                return;
            }
            for c in cmds {
                self.apply(c);
            }
        }
    }

    /// Finishes every running attempt with what `f` says.
    pub fn finish_all(&mut self, f: &dyn Fn(&RunSpec) -> Outcome) {
        let running = std::mem::take(&mut self.running);
        let epoch = self.state.sched.nodes["n1"].epoch;
        let reports = running
            .iter()
            .map(|r| Report {
                at: AttemptRef {
                    task: r.task,
                    attempt: r.attempt,
                    epoch,
                },
                outcome: f(r),
            })
            .collect();
        self.apply(Command::Finished(reports));
    }

    /// Runs the workflow to the end with `f` as the executor, advancing time for retries.
    pub fn run(&mut self, f: &dyn Fn(&RunSpec) -> Outcome) {
        for _ in 0..10_000 {
            self.place();
            if self.running.is_empty() {
                if self.state.sched.delayed.is_empty() {
                    return;
                }
                self.now = self.state.sched.delayed.iter().next().unwrap().0;
                continue;
            }
            self.finish_all(f);
        }
        panic!("did not settle");
    }

    pub fn wf(&self, id: u64) -> &state::Workflow {
        &self.state.workflows[&id]
    }

    pub fn check_invariants(&self) {
        let running: std::collections::BTreeSet<u64> = self
            .state
            .workflows
            .values()
            .filter(|w| !w.status.is_terminal())
            .map(|w| w.id)
            .collect();
        assert_eq!(
            running, self.state.sched.running,
            "the running index drifted"
        );
        let mut rebuilt = self.state.clone();
        rebuilt.rebuild_indexes();
        assert_eq!(
            rebuilt
                .sched
                .on_node
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .collect::<Vec<_>>(),
            self.state
                .sched
                .on_node
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .collect::<Vec<_>>(),
            "the tasks-by-node index drifted"
        );
        for wf in self.state.workflows.values() {
            for i in 0..wf.steps.len() {
                let f = troupe_scheduler::views::funnel(wf, i);
                assert_eq!(
                    f.total(),
                    wf.steps[i].total,
                    "{} step {}: the funnel {f:?} does not add up to the items",
                    wf.name(),
                    wf.spec.steps[i].id
                );
            }
        }
        for n in self.state.sched.nodes.values() {
            assert!(
                n.assigned <= n.slots + n.queue,
                "node {} over capacity: {} > {}",
                n.id,
                n.assigned,
                n.slots + n.queue
            );
            // Live attempts on the node: a worker step's are held by its workers' groups.
            let mut live = 0u32;
            let (mut cpu, mut mem) = (0u64, 0u64);
            let mut gpus: Vec<String> = Vec::new();
            let mut in_groups: std::collections::BTreeMap<GroupKey, u32> = Default::default();
            for w in self.state.workflows.values() {
                for (i, run) in w.steps.iter().enumerate() {
                    for t in run.tasks.values() {
                        let Some((node, g)) = t.state.placement() else {
                            continue;
                        };
                        if node != n.id {
                            continue;
                        }
                        live += 1;
                        if worker_of(&w.spec.steps[i]).is_some() {
                            *in_groups
                                .entry(GroupKey {
                                    node: node.to_string(),
                                    wf: w.id,
                                    step: i as u16,
                                    gpus: g.to_vec(),
                                })
                                .or_default() += 1;
                        } else {
                            cpu += w.spec.steps[i].resources.cpu_milli as u64;
                            mem += w.spec.steps[i].resources.memory_bytes;
                            gpus.extend(g.iter().cloned());
                        }
                    }
                }
            }
            let listed = self.state.sched.on_node.get(&n.id).map_or(0, |t| t.len());
            assert_eq!(listed as u32, live, "node {} task index drifted", n.id);
            let mut held = live - in_groups.values().sum::<u32>();
            for (k, g) in self
                .state
                .sched
                .workers
                .groups
                .iter()
                .filter(|(k, _)| k.node == n.id)
            {
                assert_eq!(
                    in_groups.remove(k).unwrap_or(0),
                    g.tasks,
                    "worker group {k:?} task count drifted"
                );
                assert!(g.workers >= 1, "an empty worker group {k:?}");
                let req = &self.state.workflows[&k.wf].spec.steps[k.step as usize].resources;
                held += g.workers;
                cpu += req.cpu_milli as u64 * g.workers as u64;
                mem += req.memory_bytes * g.workers as u64;
                gpus.extend(k.gpus.iter().cloned());
            }
            assert!(
                in_groups.is_empty(),
                "worker-step attempts outside any group: {in_groups:?}"
            );
            if n.status != troupe_scheduler::state::NodeStatus::Down {
                assert_eq!(held, n.assigned, "node {} count drifted", n.id);
                assert_eq!(cpu, n.used.cpu_milli, "node {} cpu use drifted", n.id);
                assert_eq!(mem, n.used.memory_bytes, "node {} memory use drifted", n.id);
            }
            assert!(
                n.used.cpu_milli <= n.allocatable_cpu(),
                "node {} cpu over-committed",
                n.id
            );
            assert!(
                n.used.memory_bytes <= n.allocatable_memory(),
                "node {} memory over-committed",
                n.id
            );
            let unique: std::collections::BTreeSet<&String> = gpus.iter().collect();
            assert_eq!(
                unique.len(),
                gpus.len(),
                "a GPU of {} is given twice: {gpus:?}",
                n.id
            );
            assert!(
                gpus.iter()
                    .all(|g| n.capacity.gpus.iter().any(|x| &x.uuid == g)),
                "unknown gpu on {}",
                n.id
            );
        }
    }
}

/// A node with `cpu_milli` CPU, `memory` bytes and these GPUs (uuid, model, memory).
pub fn node_info(
    name: &str,
    slots: u32,
    cpu_milli: u64,
    memory: u64,
    gpus: Vec<(&str, &str, u64)>,
) -> NodeInfo {
    let gpus = gpus
        .into_iter()
        .enumerate()
        .map(|(i, (uuid, model, mem))| placement::Gpu {
            index: i as u32,
            uuid: uuid.into(),
            model: model.into(),
            memory_bytes: mem,
        })
        .collect();
    NodeInfo {
        node: name.into(),
        api: String::new(),
        raft_id: 0,
        incarnation: 0,
        // Each call is a new registration (a restart), as a real node's would be.
        registration: {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        },
        slots,
        queue: slots,
        capacity: placement::Capacity {
            cpu_milli,
            memory_bytes: memory,
            gpus,
        },
        reserved: Default::default(),
        labels: Default::default(),
    }
}

/// The builtin semantics, for tests: noop/echo succeed, fail fails its first `attempts` attempts.
pub fn builtin(r: &RunSpec) -> Outcome {
    match &r.launch {
        Launch::Builtin {
            handler: Builtin::Fail,
            with,
        } => {
            let n = with
                .value()
                .get("attempts")
                .and_then(|v| v.as_u64())
                .unwrap_or(u64::MAX);
            if (r.attempt as u64) <= n {
                Outcome::Failed {
                    error: "fail handler".into(),
                }
            } else {
                Outcome::Succeeded { output: None }
            }
        }
        Launch::Builtin {
            handler: Builtin::Echo,
            with,
        } if !with.is_null() => Outcome::Succeeded {
            output: Some(with.clone()),
        },
        Launch::Builtin {
            handler: Builtin::Echo,
            ..
        } => Outcome::Succeeded {
            output: r.item.clone(),
        },
        _ => Outcome::Succeeded { output: None },
    }
}
