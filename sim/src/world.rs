//! The simulated cluster and its clock: replicas, workers, clients and the network, stepped
//! every `STEP_MS` of simulated time, with faults drawn from the seed up front.

use crate::check::{Checks, Trace};
use crate::client::Clients;
use crate::net::{Addr, Envelope, Faults, Net, Payload};
use crate::replica::{Cx, Replica};
use crate::rng::Rng;
use crate::worker::Worker;
use std::collections::{BTreeMap, BTreeSet};

/// Simulated time per step.
pub const STEP_MS: u64 = 10;
/// A raft tick (raft-log's default `tick_ms`).
pub const TICK_MS: u64 = 100;
/// How often the leader's hook plans and judges leases.
pub const HOOK_MS: u64 = 50;
/// A worker that sent no renewal for this long is declared lost.
pub const LEASE_MS: u64 = 2_000;
/// How often the leader has the replicas compare state hashes (`Command::Audit`).
pub const AUDIT_MS: u64 = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CrashReplica(u64),
    /// The server's next fsync fails: it stops (losing what it had not synced) until the end.
    DiskFault(u64),
    PauseReplica(u64),
    /// Whoever leads when it starts is cut off from everyone else.
    IsolateLeader,
    /// A random split of replicas and workers.
    Partition,
    PauseWorker(usize),
    CrashWorker(usize),
    /// The network drops, duplicates and delays more for a while.
    Chaos(Faults),
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Start(Fault, u64),
    End(Fault, u64),
}

pub struct World {
    pub now: u64,
    rng: Rng,
    pub net: Net,
    pub replicas: Vec<Replica>,
    /// Replicas stopped (SIGSTOP) until the fault ends.
    paused: BTreeMap<u64, u64>,
    pub workers: Vec<Worker>,
    pub clients: Clients,
    pub trace: Trace,
    pub checks: Checks,
    pub applied: u64,
    schedule: BTreeMap<(u64, u64), Ev>,
    base: Faults,
    /// The fault that set the current partition / network chaos (its end undoes only its own).
    partition_by: Option<u64>,
    chaos_by: Option<u64>,
    pub faults: Vec<Fault>,
}

impl World {
    pub fn new(seed: u64, keep_trace: bool, fault_ms: u64) -> Self {
        let mut rng = Rng::new(seed);
        let n = if rng.chance(300) { 5 } else { 3 };
        let ids: Vec<u64> = (1..=n).collect();
        let replicas = ids
            .iter()
            .map(|&id| Replica::new(id, &ids, &mut rng, LEASE_MS, AUDIT_MS))
            .collect();
        let workers = (0..rng.range(2, 4) as usize)
            .map(|i| Worker::new(i, &mut rng, ids.clone(), LEASE_MS))
            .collect::<Vec<_>>();
        let clients = Clients::new(&mut rng, ids.clone());
        let mut net = Net::new(rng.fork());
        let base = Faults {
            drop_per_mille: rng.range(0, 30),
            dup_per_mille: rng.range(0, 30),
            delay_ms_max: rng.range(2, 30),
        };
        net.faults = base;
        let mut w = World {
            now: 0,
            rng,
            net,
            replicas,
            paused: BTreeMap::new(),
            workers,
            clients,
            trace: Trace::new(keep_trace),
            checks: Checks::default(),
            applied: 0,
            schedule: BTreeMap::new(),
            base,
            partition_by: None,
            chaos_by: None,
            faults: Vec::new(),
        };
        w.draw_faults(fault_ms);
        w.trace.line(
            0,
            format_args!(
                "seed {seed}: {n} replicas, {} workers, network {base:?}, {} faults",
                w.workers.len(),
                w.schedule.len() / 2
            ),
        );
        w
    }

    fn draw_faults(&mut self, fault_ms: u64) {
        let n = self.rng.range(0, 7);
        let replicas = self.replicas.len() as u64;
        let workers = self.workers.len() as u64;
        for seq in 0..n {
            let fault = match self.rng.below(8) {
                7 => Fault::DiskFault(self.rng.range(1, replicas)),
                0 => Fault::CrashReplica(self.rng.range(1, replicas)),
                1 => Fault::PauseReplica(self.rng.range(1, replicas)),
                2 => Fault::IsolateLeader,
                3 => Fault::Partition,
                4 => Fault::PauseWorker(self.rng.below(workers) as usize),
                5 => Fault::CrashWorker(self.rng.below(workers) as usize),
                _ => Fault::Chaos(Faults {
                    drop_per_mille: self.rng.range(0, 300),
                    dup_per_mille: self.rng.range(0, 200),
                    delay_ms_max: self.rng.range(1, 300),
                }),
            };
            let start = self.rng.range(500, fault_ms.saturating_sub(1_000).max(600));
            // Around the lease: pauses and partitions shorter and longer than it.
            let end = start + self.rng.range(200, 3 * LEASE_MS);
            self.schedule
                .insert((start, seq * 2), Ev::Start(fault, seq));
            self.schedule
                .insert((end.min(fault_ms), seq * 2 + 1), Ev::End(fault, seq));
        }
    }

    fn leader(&self) -> Option<&Replica> {
        self.replicas
            .iter()
            .filter(|r| r.is_leader() && !self.paused.contains_key(&r.id))
            .max_by_key(|r| r.term())
    }

    fn faults_due(&mut self) {
        while let Some((&key, &ev)) = self.schedule.first_key_value() {
            if key.0 > self.now {
                break;
            }
            self.schedule.remove(&key);
            match ev {
                Ev::Start(f, seq) => self.start_fault(f, seq),
                Ev::End(f, seq) => self.end_fault(f, seq),
            }
        }
    }

    fn start_fault(&mut self, f: Fault, seq: u64) {
        let now = self.now;
        self.faults.push(f);
        self.trace.line(now, format_args!("fault {f:?} starts"));
        match f {
            Fault::CrashReplica(r) => {
                let lost = self.replicas[r as usize - 1].crash();
                self.trace.line(
                    now,
                    format_args!("r{r} crashes: {lost} unsynced writes lost"),
                );
            }
            Fault::DiskFault(r) => self.replicas[r as usize - 1].disk_fault = true,
            Fault::PauseReplica(r) => {
                self.paused.insert(r, u64::MAX);
            }
            Fault::IsolateLeader => {
                let side = match self.leader() {
                    Some(l) => l.id,
                    None => self.rng.range(1, self.replicas.len() as u64),
                };
                self.trace.line(now, format_args!("isolates r{side}"));
                self.net.partition = Some(BTreeSet::from([Addr::Replica(side)]));
                self.partition_by = Some(seq);
            }
            Fault::Partition => {
                let mut side = BTreeSet::new();
                for r in &self.replicas {
                    if self.rng.chance(500) {
                        side.insert(Addr::Replica(r.id));
                    }
                }
                for w in &self.workers {
                    if self.rng.chance(500) {
                        side.insert(Addr::Worker(w.idx));
                    }
                }
                self.trace
                    .line(now, format_args!("partition {side:?} | rest"));
                self.net.partition = Some(side);
                self.partition_by = Some(seq);
            }
            Fault::PauseWorker(w) => {
                if self.workers[w].alive {
                    self.workers[w].paused_until = Some(u64::MAX);
                }
            }
            Fault::CrashWorker(w) => {
                if self.workers[w].alive {
                    self.workers[w].crash(now, &mut self.trace);
                }
            }
            Fault::Chaos(c) => {
                self.net.faults = c;
                self.chaos_by = Some(seq);
            }
        }
    }

    fn end_fault(&mut self, f: Fault, seq: u64) {
        let now = self.now;
        self.trace.line(now, format_args!("fault {f:?} ends"));
        match f {
            Fault::CrashReplica(r) | Fault::DiskFault(r) => {
                let rep = &mut self.replicas[r as usize - 1];
                rep.disk_fault = false;
                if !rep.alive() {
                    rep.restart(&mut self.rng, now, &mut self.trace, &mut self.checks);
                }
            }
            Fault::PauseReplica(r) => {
                self.paused.remove(&r);
            }
            Fault::IsolateLeader | Fault::Partition => {
                if self.partition_by == Some(seq) {
                    self.net.partition = None;
                    self.partition_by = None;
                }
            }
            Fault::PauseWorker(w) => {
                if self.workers[w].paused_until.is_some() {
                    self.workers[w].paused_until = Some(now);
                }
            }
            Fault::CrashWorker(w) => {
                if !self.workers[w].alive {
                    self.workers[w].restart(now, &mut self.trace);
                }
            }
            Fault::Chaos(_) => {
                if self.chaos_by == Some(seq) {
                    self.net.faults = self.base;
                    self.chaos_by = None;
                }
            }
        }
    }

    /// Ends every fault: restarts what crashed, resumes what paused, heals the network.
    pub fn heal(&mut self) {
        while let Some((_, ev)) = self.schedule.pop_first() {
            if let Ev::End(f, seq) = ev {
                self.end_fault(f, seq);
            }
        }
        self.net.partition = None;
        self.net.faults = Faults {
            drop_per_mille: 0,
            dup_per_mille: 0,
            delay_ms_max: self.base.delay_ms_max,
        };
        self.paused.clear();
        let now = self.now;
        for r in &mut self.replicas {
            if !r.alive() {
                r.restart(&mut self.rng, now, &mut self.trace, &mut self.checks);
            }
        }
        for w in &mut self.workers {
            if !w.alive {
                w.restart(now, &mut self.trace);
            }
            if w.paused_until.is_some() {
                w.paused_until = Some(now);
            }
        }
        self.trace.line(now, format_args!("heal"));
    }

    pub fn step(&mut self, faulting: bool) {
        self.now += STEP_MS;
        let now = self.now;
        if faulting {
            self.faults_due();
        }
        while let Some(env) = self.net.pop_due(now) {
            self.deliver(env);
        }
        if now.is_multiple_of(TICK_MS) {
            for r in &mut self.replicas {
                if !self.paused.contains_key(&r.id) {
                    r.tick();
                }
            }
        }
        for w in &mut self.workers {
            w.step(now, &mut self.net, &mut self.trace);
        }
        self.clients
            .step(now, faulting, &mut self.net, &mut self.trace);
        let hook = now.is_multiple_of(HOOK_MS);
        let mut cx = Cx {
            now,
            net: &mut self.net,
            trace: &mut self.trace,
            checks: &mut self.checks,
            applied: &mut self.applied,
        };
        for r in &mut self.replicas {
            if self.paused.contains_key(&r.id) {
                continue;
            }
            if hook {
                r.hook(now);
            }
            r.drive(&mut cx);
        }
    }

    fn deliver(&mut self, env: Envelope) {
        let now = self.now;
        match env.to {
            Addr::Replica(id) => {
                if self.paused.contains_key(&id) {
                    // SIGSTOP: the socket takes it, the process reads it on resume.
                    self.net.hold(now + 50, env);
                    return;
                }
                let mut cx = Cx {
                    now,
                    net: &mut self.net,
                    trace: &mut self.trace,
                    checks: &mut self.checks,
                    applied: &mut self.applied,
                };
                self.replicas[id as usize - 1].on_message(env.from, env.payload, &mut cx);
            }
            Addr::Worker(i) => {
                let payload = env.payload.clone();
                if !self.workers[i].on_message(now, payload, &mut self.net, &mut self.trace) {
                    self.net.hold(now + 50, env);
                }
            }
            Addr::Client => {
                if let Payload::Reply { op, reply } = env.payload {
                    self.clients.on_reply(now, op, reply, &mut self.trace);
                }
            }
        }
    }

    /// Why the run has not settled yet (`None`: it has: one leader, every replica applied
    /// the leader's commit, every workflow finished everywhere, no client waits).
    pub fn unsettled(&self) -> Option<String> {
        let Some(leader) = self.leader() else {
            let roles: Vec<String> = self.replicas.iter().map(Replica::describe).collect();
            return Some(format!("no leader ({})", roles.join(", ")));
        };
        let commit = leader.commit();
        for r in &self.replicas {
            if r.applied != commit {
                return Some(format!(
                    "r{} applied {} of the leader's commit {commit}",
                    r.id, r.applied
                ));
            }
            if let Some(wf) = r.state.workflows.values().find(|w| !w.status.is_terminal()) {
                return Some(format!("r{}: {} is {}", r.id, wf.name(), wf.status.name()));
            }
        }
        let pending = self.clients.pending();
        (pending > 0).then(|| format!("{pending} client operations pending"))
    }
}
