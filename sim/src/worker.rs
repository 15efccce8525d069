//! A simulated worker node: a fake executor. It registers (and registers again after a crash
//! or after the leader declared it lost), renews its lease, runs the attempts the leader sends
//! for its live epoch for a seeded time with a seeded outcome, and reports each one to every
//! server (only the leader proposes). A paused worker (SIGSTOP) runs no timers and reads no
//! messages until it resumes, then reports what finished meanwhile: those reports may be stale,
//! and fencing must refuse them.

use crate::check::Trace;
use crate::net::{Addr, Net, Payload, RenewReply, Renewal};
use crate::rng::Rng;
use std::collections::BTreeMap;
use troupe_scheduler::placement::Capacity;
use troupe_scheduler::{AttemptRef, Command, NodeInfo, Outcome, Report, RunSpec, TaskRef};

/// How often a worker renews its lease.
pub const RENEW_MS: u64 = 500;
/// How long a worker keeps a report to send again with its renewals.
pub const RECENT_MS: u64 = 10_000;

struct Attempt {
    epoch: u64,
    done_ms: u64,
    outcome: Outcome,
}

pub struct Worker {
    pub idx: usize,
    pub name: String,
    pub alive: bool,
    pub paused_until: Option<u64>,
    /// This process start's registration (0 while crashed).
    pub registration: u64,
    /// The live epoch the leader confirmed for `registration` (0: none yet).
    pub epoch: u64,
    renewed_ms: u64,
    next_renew_ms: u64,
    running: BTreeMap<(TaskRef, u32), Attempt>,
    recent: BTreeMap<(TaskRef, u32), (u64, Report)>,
    slots: u32,
    cpu_milli: u64,
    lease_ms: u64,
    /// Per mille of attempts that fail.
    fail_per_mille: u64,
    rng: Rng,
    pub replicas: Vec<u64>,
}

impl Worker {
    pub fn new(idx: usize, rng: &mut Rng, replicas: Vec<u64>, lease_ms: u64) -> Self {
        let mut rng = rng.fork();
        let mut w = Worker {
            idx,
            name: format!("w{idx}"),
            alive: true,
            paused_until: None,
            registration: 0,
            epoch: 0,
            renewed_ms: 0,
            next_renew_ms: rng.below(RENEW_MS),
            running: BTreeMap::new(),
            recent: BTreeMap::new(),
            slots: rng.range(1, 3) as u32,
            cpu_milli: rng.range(2, 4) * 500,
            lease_ms,
            fail_per_mille: rng.range(0, 400),
            rng,
            replicas,
        };
        w.registration = w.rng.next_u64() | 1;
        w
    }

    fn me(&self) -> Addr {
        Addr::Worker(self.idx)
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            node: self.name.clone(),
            api: String::new(),
            raft_id: 0,
            incarnation: self.registration,
            registration: self.registration,
            slots: self.slots,
            queue: self.slots,
            capacity: Capacity {
                cpu_milli: self.cpu_milli,
                memory_bytes: 1 << 30,
                gpus: Vec::new(),
            },
            reserved: Default::default(),
            labels: Default::default(),
        }
    }

    fn broadcast(&mut self, now: u64, net: &mut Net, cmds: Vec<Command>) {
        for r in &self.replicas {
            let p = Payload::Propose {
                op: None,
                cmds: cmds.clone(),
            };
            net.send(now, self.me(), Addr::Replica(*r), p);
        }
    }

    pub fn crash(&mut self, now: u64, trace: &mut Trace) {
        self.alive = false;
        self.paused_until = None;
        self.running.clear();
        self.recent.clear();
        self.registration = 0;
        self.epoch = 0;
        trace.line(now, format_args!("{} crashes", self.name));
    }

    pub fn restart(&mut self, now: u64, trace: &mut Trace) {
        self.alive = true;
        self.registration = self.rng.next_u64() | 1;
        self.epoch = 0;
        self.next_renew_ms = now;
        trace.line(now, format_args!("{} restarts", self.name));
    }

    /// Stops every attempt (fenced: the leader no longer knows this epoch, or no leader
    /// renewed the lease in time).
    fn fence(&mut self, now: u64, why: &str, trace: &mut Trace) {
        trace.line(
            now,
            format_args!(
                "{} fenced ({why}): stops {} attempts",
                self.name,
                self.running.len()
            ),
        );
        self.running.clear();
    }

    pub fn step(&mut self, now: u64, net: &mut Net, trace: &mut Trace) {
        if !self.alive {
            return;
        }
        match self.paused_until {
            Some(t) if t > now => return,
            Some(_) => {
                self.paused_until = None;
                trace.line(now, format_args!("{} resumes", self.name));
            }
            None => {}
        }
        let done: Vec<(TaskRef, u32)> = self
            .running
            .iter()
            .filter(|(_, a)| a.done_ms <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            let Some(a) = self.running.remove(&key) else {
                continue;
            };
            let rep = Report {
                at: AttemptRef {
                    task: key.0,
                    attempt: key.1,
                    epoch: a.epoch,
                },
                outcome: a.outcome,
            };
            trace.line(
                now,
                format_args!(
                    "{} finished {:?}#{} e{}: {}",
                    self.name,
                    key.0,
                    key.1,
                    a.epoch,
                    if matches!(rep.outcome, Outcome::Succeeded { .. }) {
                        "ok"
                    } else {
                        "failed"
                    }
                ),
            );
            self.recent.insert(key, (now, rep.clone()));
            self.broadcast(now, net, vec![Command::Finished(vec![rep])]);
        }
        self.recent
            .retain(|_, (at, _)| now.saturating_sub(*at) < RECENT_MS);
        if self.epoch != 0
            && now.saturating_sub(self.renewed_ms) > self.lease_ms.saturating_sub(RENEW_MS)
            && !self.running.is_empty()
        {
            self.fence(now, "no renewal", trace);
        }
        if now >= self.next_renew_ms {
            self.next_renew_ms = now + RENEW_MS;
            if self.epoch == 0 {
                self.broadcast(now, net, vec![Command::RegisterNode(self.info())]);
            }
            let renewal = Renewal {
                node: self.name.clone(),
                registration: self.registration,
                epoch: self.epoch,
                holds: self.running.keys().copied().collect(),
                recent: self.recent.values().map(|(_, r)| r.clone()).collect(),
            };
            for r in &self.replicas {
                let p = Payload::Renew(Box::new(renewal.clone()));
                net.send(now, self.me(), Addr::Replica(*r), p);
            }
        }
    }

    /// A message; false when the worker is paused (the world delivers it again later).
    pub fn on_message(&mut self, now: u64, p: Payload, net: &mut Net, trace: &mut Trace) -> bool {
        if !self.alive {
            return true;
        }
        if self.paused_until.is_some_and(|t| t > now) {
            return false;
        }
        match p {
            Payload::Run(spec) => self.on_run(now, *spec, net, trace),
            Payload::Kill { task, attempt } if self.running.remove(&(task, attempt)).is_some() => {
                trace.line(now, format_args!("{} kills {task:?}#{attempt}", self.name));
            }
            Payload::RenewReply(r) => self.on_renew_reply(now, r, trace),
            _ => {}
        }
        true
    }

    fn on_run(&mut self, now: u64, spec: RunSpec, net: &mut Net, trace: &mut Trace) {
        let key = (spec.task, spec.attempt);
        if self.epoch == 0
            || spec.epoch != self.epoch
            || self.running.contains_key(&key)
            || self.recent.contains_key(&key)
        {
            return;
        }
        let outcome = if self.rng.chance(self.fail_per_mille) {
            Outcome::Failed {
                error: "simulated failure".into(),
            }
        } else {
            Outcome::Succeeded { output: None }
        };
        let done_ms = now + self.rng.range(20, 1_500);
        trace.line(
            now,
            format_args!(
                "{} runs {:?}#{} e{} until {done_ms}",
                self.name, key.0, key.1, spec.epoch
            ),
        );
        self.running.insert(
            key,
            Attempt {
                epoch: spec.epoch,
                done_ms,
                outcome,
            },
        );
        let at = AttemptRef {
            task: spec.task,
            attempt: spec.attempt,
            epoch: spec.epoch,
        };
        self.broadcast(now, net, vec![Command::Started(vec![at])]);
    }

    fn on_renew_reply(&mut self, now: u64, r: RenewReply, trace: &mut Trace) {
        if r.registration != self.registration {
            return;
        }
        if r.up {
            if self.epoch != r.epoch {
                if self.epoch != 0 {
                    self.fence(now, "new epoch", trace);
                }
                trace.line(
                    now,
                    format_args!("{} is up at epoch {}", self.name, r.epoch),
                );
                self.epoch = r.epoch;
            }
            self.renewed_ms = now;
        } else {
            // Declared lost: stop everything and register again as a new process would.
            self.fence(now, "declared lost", trace);
            self.registration = self.rng.next_u64() | 1;
            self.epoch = 0;
        }
    }
}
