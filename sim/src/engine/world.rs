//! The engine world's cluster and its clock: servers (real raft-log engines), workers, clients
//! and the network, stepped every `STEP_MS` of simulated time, with faults drawn from the seed
//! up front (the same kinds as the RawNode world, `crate::world`).

use super::checked::Probe;
use super::members::Plan;
use super::server::{Server, Setup};
use crate::client::Clients;
use crate::net::{Addr, Envelope, Faults, Net, Payload};
use crate::rng::Rng;
use crate::worker::Worker;
use crate::world::{AUDIT_MS, Fault, HOOK_MS, LEASE_MS, STEP_MS, TICK_MS};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
enum Ev {
    Start(Fault, u64),
    End(Fault, u64),
}

pub struct EngineWorld {
    pub now: u64,
    rng: Rng,
    pub net: Net,
    pub servers: Vec<Server>,
    /// Servers stopped (SIGSTOP) until the fault ends.
    paused: BTreeSet<u64>,
    pub workers: Vec<Worker>,
    pub clients: Clients,
    pub probe: Probe,
    schedule: BTreeMap<(u64, u64), Ev>,
    base: Faults,
    partition_by: Option<u64>,
    chaos_by: Option<u64>,
    pub faults: Vec<Fault>,
    /// This seed's membership changes (`None`: the voters stay the initial ones).
    pub plan: Option<Plan>,
    /// The last `last_index` seen of each server (kept while it is down).
    last_index: Vec<u64>,
    /// The quorum check's leader and the commit it had when first seen so.
    quorum: Option<(LeaderKey, u64)>,
}

impl EngineWorld {
    pub fn new(seed: u64, keep_trace: bool, fault_ms: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0xE9_61E5);
        let n = if rng.chance(300) { 5 } else { 3 };
        let ids: Vec<u64> = (1..=n).collect();
        let probe = Probe::new(keep_trace);
        let mut servers: Vec<Server> = ids
            .iter()
            .map(|&id| {
                let setup = Setup {
                    voters: ids.clone(),
                    join_existing: false,
                    tick_ms: TICK_MS,
                    snapshot_every: rng.range(10, 60),
                    audit_ms: AUDIT_MS,
                    lease_ms: LEASE_MS,
                };
                Server::new(id, rng.next_u64(), rng.below(100), setup, probe.clone())
            })
            .collect();
        // The joiner draws from the plan's own stream: seeds without one are unchanged.
        let mut plan = Plan::draw(seed, n + 1);
        if let Some(p) = &mut plan {
            let setup = Setup {
                voters: ids.clone(),
                join_existing: true,
                tick_ms: TICK_MS,
                snapshot_every: p.rng.range(10, 60),
                audit_ms: AUDIT_MS,
                lease_ms: LEASE_MS,
            };
            let (s, skew) = (p.rng.next_u64(), p.rng.below(100));
            servers.push(Server::new(p.joiner, s, skew, setup, probe.clone()));
            let mut q = probe.lock();
            q.checks.count("membership_add_planned");
            if p.removes() {
                q.checks.count("membership_remove_planned");
            }
        }
        // Workers and clients know every server, the joiner too (it may come to lead).
        let all: Vec<u64> = servers.iter().map(|s| s.id).collect();
        let workers = (0..rng.range(2, 4) as usize)
            .map(|i| Worker::new(i, &mut rng, all.clone(), LEASE_MS))
            .collect::<Vec<_>>();
        let clients = Clients::new(&mut rng, all);
        let mut net = Net::new(rng.fork());
        let base = Faults {
            drop_per_mille: rng.range(0, 30),
            dup_per_mille: rng.range(0, 30),
            delay_ms_max: rng.range(2, 30),
        };
        net.faults = base;
        let mut w = EngineWorld {
            now: 0,
            rng,
            net,
            servers,
            paused: BTreeSet::new(),
            workers,
            clients,
            probe,
            schedule: BTreeMap::new(),
            base,
            partition_by: None,
            chaos_by: None,
            faults: Vec::new(),
            last_index: vec![0; servers_len(&plan, n)],
            plan,
            quorum: None,
        };
        w.draw_faults(fault_ms);
        if let Some(p) = &w.plan {
            let what = p.describe();
            w.line(format_args!(
                "membership: r{} starts empty, not a member; {what}",
                p.joiner
            ));
        }
        let (workers, faults) = (w.workers.len(), w.schedule.len() / 2);
        w.probe.lock().trace.line(
            0,
            format_args!(
                "seed {seed} (engine world): {n} raft-log servers, {workers} workers, network {base:?}, {faults} faults"
            ),
        );
        w
    }

    fn draw_faults(&mut self, fault_ms: u64) {
        let n = self.rng.range(0, 6);
        let servers = self.servers.len() as u64;
        let workers = self.workers.len() as u64;
        for seq in 0..n {
            let fault = match self.rng.below(8) {
                7 => Fault::DiskFault(self.rng.range(1, servers)),
                0 => Fault::CrashReplica(self.rng.range(1, servers)),
                1 => Fault::PauseReplica(self.rng.range(1, servers)),
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
            let end = start + self.rng.range(200, 3 * LEASE_MS);
            self.schedule
                .insert((start, seq * 2), Ev::Start(fault, seq));
            self.schedule
                .insert((end.min(fault_ms), seq * 2 + 1), Ev::End(fault, seq));
        }
    }

    fn line(&self, text: std::fmt::Arguments<'_>) {
        self.probe.lock().trace.line(self.now, text);
    }

    fn count(&self, what: &'static str) {
        self.probe.lock().checks.count(what);
    }

    pub fn leader(&self) -> Option<&Server> {
        leader_of(&self.servers, &self.paused)
    }

    /// The voters of the leader's applied configuration (every server's id when none leads).
    pub fn voters(&self) -> Vec<u64> {
        match self.leader().and_then(|l| l.status()) {
            Some(st) => st.voters,
            None => self.servers.iter().map(|s| s.id).collect(),
        }
    }

    /// A removed server never counts in a quorum again, and neither does anything outside the
    /// leader's applied configuration: whenever the leader's commit advances (same leader,
    /// term and voters), a majority of those voters holds the new commit index.
    fn check_quorum(&mut self) {
        for (i, s) in self.servers.iter().enumerate() {
            if let Some(st) = s.status() {
                self.last_index[i] = st.last_index;
            }
        }
        let Some((id, st)) = self.leader().and_then(|l| Some((l.id, l.status()?))) else {
            return;
        };
        let key = (id, st.term, st.voters.clone());
        match &mut self.quorum {
            Some((k, base)) if *k == key => {
                if st.commit <= *base {
                    return;
                }
                *base = st.commit;
            }
            _ => {
                self.quorum = Some((key, st.commit));
                return;
            }
        }
        let holders: Vec<u64> = st
            .voters
            .iter()
            .copied()
            .filter(|v| self.last_index.get(*v as usize - 1).copied().unwrap_or(0) >= st.commit)
            .collect();
        let mut p = self.probe.lock();
        p.checks.checked += 1;
        if holders.len() * 2 <= st.voters.len() {
            let now = self.now;
            p.checks.fail(
                now,
                format!(
                    "G4: r{id} committed index {} in term {}, held by only {holders:?} of the voters {:?}",
                    st.commit, st.term, st.voters
                ),
            );
        }
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
        self.faults.push(f);
        self.line(format_args!("fault {f:?} starts"));
        match f {
            Fault::CrashReplica(r) => {
                let s = &mut self.servers[r as usize - 1];
                if s.alive() {
                    let lost = s.crash();
                    self.line(format_args!("r{r} crashes: {lost} unsynced writes lost"));
                }
            }
            Fault::DiskFault(r) => self.servers[r as usize - 1].disk.fail_next_syncs(1),
            Fault::PauseReplica(r) => {
                self.paused.insert(r);
            }
            Fault::IsolateLeader => {
                let side = match self.leader() {
                    Some(l) => l.id,
                    None => self.rng.range(1, self.servers.len() as u64),
                };
                self.line(format_args!("isolates r{side}"));
                self.net.partition = Some(BTreeSet::from([Addr::Replica(side)]));
                self.partition_by = Some(seq);
            }
            Fault::Partition => {
                let mut side = BTreeSet::new();
                for s in &self.servers {
                    if self.rng.chance(500) {
                        side.insert(Addr::Replica(s.id));
                    }
                }
                for w in &self.workers {
                    if self.rng.chance(500) {
                        side.insert(Addr::Worker(w.idx));
                    }
                }
                self.line(format_args!("partition {side:?} | rest"));
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
                    let mut p = self.probe.lock();
                    self.workers[w].crash(self.now, &mut p.trace);
                }
            }
            Fault::Chaos(c) => {
                self.net.faults = c;
                self.chaos_by = Some(seq);
            }
        }
    }

    fn end_fault(&mut self, f: Fault, seq: u64) {
        self.line(format_args!("fault {f:?} ends"));
        match f {
            Fault::CrashReplica(r) | Fault::DiskFault(r) => {
                self.servers[r as usize - 1].disk.fail_next_syncs(0);
                self.restart(r);
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
                    self.workers[w].paused_until = Some(self.now);
                }
            }
            Fault::CrashWorker(w) => {
                if !self.workers[w].alive {
                    let mut p = self.probe.lock();
                    self.workers[w].restart(self.now, &mut p.trace);
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

    /// Opens a stopped server's engine again on what its disk kept.
    fn restart(&mut self, r: u64) {
        let s = &mut self.servers[r as usize - 1];
        if s.alive() {
            return;
        }
        let opened = s.open();
        let now = self.now;
        let mut p = self.probe.lock();
        match opened {
            Ok(()) => {
                p.checks.count("restarts");
                p.trace
                    .line(now, format_args!("r{r} restarts from its disk"));
            }
            Err(why) => p.checks.fail(now, format!("r{r}: restart: {why}")),
        }
    }

    /// Ends every fault: restarts what stopped, resumes what paused, heals the network.
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
        for r in 1..=self.servers.len() as u64 {
            self.servers[r as usize - 1].disk.fail_next_syncs(0);
            self.restart(r);
        }
        let now = self.now;
        let mut p = self.probe.lock();
        for w in &mut self.workers {
            if !w.alive {
                w.restart(now, &mut p.trace);
            }
            if w.paused_until.is_some() {
                w.paused_until = Some(now);
            }
        }
        p.trace.line(now, format_args!("heal"));
    }

    pub fn step(&mut self, faulting: bool) {
        self.now += STEP_MS;
        let now = self.now;
        for s in &self.servers {
            s.clock.advance(Duration::from_millis(STEP_MS));
        }
        self.probe.lock().now = now;
        if faulting {
            self.faults_due();
        }
        while let Some(env) = self.net.pop_due(now) {
            self.deliver(env);
        }
        {
            let mut p = self.probe.lock();
            for w in &mut self.workers {
                w.step(now, &mut self.net, &mut p.trace);
            }
            self.clients
                .step(now, faulting, &mut self.net, &mut p.trace);
        }
        let hook_due = now.is_multiple_of(HOOK_MS);
        for i in 0..self.servers.len() {
            let s = &mut self.servers[i];
            if self.paused.contains(&s.id) {
                continue;
            }
            let failed_syncs = s.disk.stats().failed_syncs;
            if let Err(why) = s.step(now, hook_due, &mut self.net) {
                let injected = s.disk.stats().failed_syncs > failed_syncs;
                let lost = s.crash();
                let id = s.id;
                self.line(format_args!(
                    "r{id} stops (fail-stop: {why}), {lost} unsynced writes lost"
                ));
                if injected {
                    self.count("sync failed");
                } else {
                    // Only an injected fsync failure may stop an engine: anything else is
                    // raft-log (or raft) finding its own log or a peer's messages broken.
                    let mut p = self.probe.lock();
                    p.checks.fail(
                        now,
                        format!("r{id}: the engine stopped with no disk fault injected: {why}"),
                    );
                }
            }
        }
        if let Some(plan) = &mut self.plan {
            plan.step(now, leader_of(&self.servers, &self.paused), &self.probe);
        }
        self.check_quorum();
    }

    fn deliver(&mut self, env: Envelope) {
        let now = self.now;
        match env.to {
            Addr::Replica(id) => {
                if self.paused.contains(&id) {
                    // SIGSTOP: the socket takes it, the process reads it on resume.
                    self.net.hold(now + 50, env);
                    return;
                }
                let s = &mut self.servers[id as usize - 1];
                match env.payload {
                    Payload::RaftBytes(bytes) => s.on_raft(bytes),
                    other => s.on_message(now, env.from, other, &mut self.net),
                }
            }
            Addr::Worker(i) => {
                let payload = env.payload.clone();
                let mut p = self.probe.lock();
                if !self.workers[i].on_message(now, payload, &mut self.net, &mut p.trace) {
                    self.net.hold(now + 50, env);
                }
            }
            Addr::Client => {
                if let Payload::Reply { op, reply } = env.payload {
                    let mut p = self.probe.lock();
                    self.clients.on_reply(now, op, reply, &mut p.trace);
                }
            }
        }
    }

    /// Why the run has not settled yet (`None`: one leader, every server applied the leader's
    /// commit, every workflow finished everywhere, no client waits).
    pub fn unsettled(&self) -> Option<String> {
        let Some(leader) = self.leader() else {
            let roles: Vec<String> = self.servers.iter().map(describe).collect();
            return Some(format!("no leader ({})", roles.join(", ")));
        };
        let (commit, voters) = leader
            .status()
            .map_or((0, Vec::new()), |s| (s.commit, s.voters));
        // A removed server, and a joiner not added, are no members: nothing is sent to them.
        for s in self.servers.iter().filter(|s| voters.contains(&s.id)) {
            if s.applied() != commit {
                return Some(format!(
                    "r{} applied {} of the leader's commit {commit} ({})",
                    s.id,
                    s.applied(),
                    describe(s)
                ));
            }
            let open = s.with_state(|st| {
                st.workflows
                    .values()
                    .find(|w| !w.status.is_terminal())
                    .map(|w| format!("{} is {}", w.name(), w.status.name()))
            });
            if let Some(Some(why)) = open {
                return Some(format!("r{}: {why}", s.id));
            }
        }
        let pending = self.clients.pending();
        (pending > 0).then(|| format!("{pending} client operations pending"))
    }
}

/// A leader as the quorum check tracks it: (id, term, its applied voters).
type LeaderKey = (u64, u64, Vec<u64>);

fn servers_len(plan: &Option<Plan>, n: u64) -> usize {
    n as usize + usize::from(plan.is_some())
}

/// The leader of the highest term among the servers not paused.
fn leader_of<'a>(servers: &'a [Server], paused: &BTreeSet<u64>) -> Option<&'a Server> {
    servers
        .iter()
        .filter(|s| s.is_leader() && !paused.contains(&s.id))
        .max_by_key(|s| s.term())
}

/// Role, term and log of a server, for a diagnosis.
fn describe(s: &Server) -> String {
    match s.status() {
        None => format!("r{} down", s.id),
        Some(st) => format!(
            "r{} leader {} term {} commit {} applied {} last {} snapshot {}",
            s.id, st.is_leader, st.term, st.commit, st.applied, st.last_index, st.snapshot_index
        ),
    }
}
