//! Valid values for the decoding targets (included with `#[path]`, like `support.rs`): the
//! commands a real run proposes, the attempts it launches, and the state it ends in, made by
//! driving the core through the example specs (planner + apply, no runtime).
#![allow(dead_code)]

use std::path::Path;
use troupe_scheduler::state::GroupKey;
use troupe_scheduler::*;

pub struct Samples {
    /// Every command applied, in order (registrations, submits, assignments, reports, ...).
    pub commands: Vec<Command>,
    /// The attempts the state launched (`Effect::Run`).
    pub runs: Vec<RunSpec>,
    /// The worker groups the state released.
    pub groups: Vec<GroupKey>,
    /// The state after all of it.
    pub state: State,
}

fn node(name: &str, slots: u32) -> NodeInfo {
    NodeInfo {
        node: name.into(),
        api: format!("127.0.0.1:{}", 7000 + slots),
        raft_id: 1,
        incarnation: 42,
        registration: slots as u64,
        slots,
        queue: slots,
        capacity: placement::Capacity {
            cpu_milli: 64_000,
            memory_bytes: 256 << 30,
            gpus: vec![placement::Gpu {
                index: 0,
                uuid: "GPU-0".into(),
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_bytes: 80 << 30,
            }],
        },
        reserved: Default::default(),
        labels: [("zone".to_string(), "a".to_string())].into(),
    }
}

/// Drives the examples (and `extra` specs) to completion, failing some attempts on the way.
pub fn samples(manifest_dir: &str, extra: &[&str]) -> Samples {
    let mut s = Samples {
        commands: Vec::new(),
        runs: Vec::new(),
        groups: Vec::new(),
        state: State::default(),
    };
    let mut now = 1_000u64;
    let apply = |s: &mut Samples, now: u64, cmd: Command| {
        s.commands.push(cmd.clone());
        s.state.apply(now, cmd);
        for e in s.state.take_effects() {
            match e {
                Effect::Run(r) => s.runs.push(*r),
                Effect::StopWorkers(g) => s.groups.extend(g),
                _ => {}
            }
        }
    };
    apply(&mut s, now, Command::RegisterNode(node("n1", 8)));
    apply(&mut s, now, Command::RegisterNode(node("n2", 4)));
    let examples = Path::new(manifest_dir).join("../examples");
    let mut texts: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| (std::fs::read_to_string(&p).unwrap(), examples.clone()))
        .collect();
    texts.sort();
    texts.extend(extra.iter().map(|t| (t.to_string(), examples.clone())));
    for (i, (text, base)) in texts.iter().enumerate() {
        let Ok((raw, spec)) = spec::load_str(text, None, base) else {
            continue;
        };
        let digest = spec::spec_digest(&raw, &Default::default());
        let sub = Submission {
            spec,
            params: vec![],
            idempotency_key: Some(format!("key-{i}")),
            digest,
        };
        apply(&mut s, now, Command::Submit(Box::new(sub)));
    }
    let mut planner = Planner::new();
    let mut started = 0usize;
    for round in 0..40u64 {
        for c in planner.plan(&s.state, now) {
            apply(&mut s, now, c);
        }
        let fresh: Vec<RunSpec> = s.runs[started..].to_vec();
        started = s.runs.len();
        if fresh.is_empty() && s.state.sched.delayed.is_empty() {
            break;
        }
        let refs: Vec<AttemptRef> = fresh
            .iter()
            .map(|r| AttemptRef {
                task: r.task,
                attempt: r.attempt,
                epoch: r.epoch,
            })
            .collect();
        if !refs.is_empty() {
            apply(&mut s, now, Command::Started(refs.clone()));
        }
        let reports: Vec<Report> = refs
            .iter()
            .enumerate()
            .map(|(k, at)| Report {
                at: *at,
                outcome: match (k as u64 + round) % 7 {
                    0 => Outcome::Failed {
                        error: format!("exit status 1 (round {round})"),
                    },
                    1 => Outcome::FailedRetry {
                        error: "http 503".into(),
                        retry: RetryHint::Never,
                    },
                    2 => Outcome::WorkerBroken {
                        error: "worker exited".into(),
                    },
                    3 => Outcome::Succeeded { output: None },
                    _ => Outcome::Succeeded {
                        output: Some(Json(format!("{{\"item\":{k},\"score\":{}}}", k % 100))),
                    },
                },
            })
            .collect();
        for chunk in reports.chunks(64) {
            apply(&mut s, now, Command::Finished(chunk.to_vec()));
        }
        now += 60_000;
    }
    let wf = s.state.workflows.keys().next().copied().unwrap_or(1);
    for c in [
        Command::Pause(wf),
        Command::Resume(wf),
        Command::Retry(wf),
        Command::Redrive(1),
        Command::RedriveMany(DlqFilter {
            step: Some("score".into()),
            ..Default::default()
        }),
        Command::Discard {
            filter: DlqFilter {
                all: true,
                ..Default::default()
            },
            reason: "fuzz".into(),
        },
        Command::SetDraining {
            node: "n2".into(),
            draining: true,
            deadline_ms: Some(now + 1),
        },
        Command::Evict { node: "n2".into() },
        Command::NodeLost {
            node: "n2".into(),
            epoch: 1,
        },
        Command::Checkpoint {
            wf,
            seq: 3,
            owner: "n1".into(),
        },
        Command::Audit { seq: 1 },
        Command::AuditResult { seq: 1, hash: 7 },
        Command::Cancel(wf + 1),
        Command::TimeoutWorkflow(wf + 2),
        Command::Collect { retain_ms: 1 },
    ] {
        apply(&mut s, now, c);
    }
    s
}
