//! One simulated server: a raft-rs `RawNode` over its simulated disk (`crate::disk`) and the
//! scheduler state its committed entries build. `crate::ready` handles Readies the way
//! raft-log's driver does (send, persist, apply, send persisted messages), with persistence
//! asynchronous: a write is synced a seeded latency later, and only then are the messages that
//! depend on it sent. A crash loses what was not synced, raft's unstable log, proposals not yet
//! in a Ready, the applied state and the waiters; a restart restores the disk's snapshot with the
//! real state machine (`troupe_actors::machine::Machine::restore`) and replays the log after it.

use crate::check::{self, Checks, Trace};
use crate::disk::Disk;
use crate::entry::{self, ENTRY_VERSION, Group};
use crate::lease::Judge;
use crate::net::{Addr, Net, Payload, RenewReply, Renewal, Reply};
use crate::rng::Rng;
use raft::eraftpb::{Entry, EntryType};
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use troupe_scheduler::reconcile::{self, Held};
use troupe_scheduler::state::TaskState;
use troupe_scheduler::{Command, Effect, Outcome, Output, Planner, Report, State};

/// Raft election timeout in ticks (raft-log's default).
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;

/// What the world hands a replica for one call.
pub struct Cx<'a> {
    pub now: u64,
    pub net: &'a mut Net,
    pub trace: &'a mut Trace,
    pub checks: &'a mut Checks,
    /// Commands applied (all replicas).
    pub applied: &'a mut u64,
}

pub struct Replica {
    pub id: u64,
    /// What survives a crash is what it synced.
    pub(crate) disk: Disk,
    /// `None` while crashed.
    pub(crate) node: Option<RawNode<Disk>>,
    pub state: State,
    pub applied: u64,
    pub incarnation: u64,
    /// Waiters of proposals this incarnation made: group id -> (who, op).
    pub(crate) pending: BTreeMap<u64, (Addr, u64)>,
    /// Status reads waiting for their ReadIndex (keyed by op, the request context), and those
    /// confirmed, waiting for apply to reach their index.
    pub(crate) reads: crate::read::Reads,
    /// Readies written but not yet synced, oldest first.
    pub(crate) inflight: VecDeque<crate::ready::Inflight>,
    /// How long this server's fsync takes (seeded).
    pub(crate) sync_ms: u64,
    /// A snapshot (and compaction) every this many applied entries (seeded).
    pub(crate) snap_every: u64,
    /// The next sync fails: the server stops (fail-stop, as raft-log does on a storage error).
    pub disk_fault: bool,
    next_group: u64,
    pub(crate) planner: Planner,
    pub(crate) judge: Judge,
    pub(crate) leader_since: Option<u64>,
    /// raft-rs draws each election timeout in `[10, 20)` ticks from its own thread RNG. The
    /// simulator replaces every draw with one from this seeded stream (`fix_timeout`): when the
    /// term or role changes (raft has just drawn again), and at start.
    elect_rng: Rng,
    /// (term, role) when the timeout was last drawn.
    elect_seen: (u64, StateRole),
    /// This server's clock runs this far ahead of simulated time (it stamps `at_ms` with it).
    pub skew_ms: u64,
    pub lease_ms: u64,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Replica {
    pub fn new(id: u64, voters: &[u64], rng: &mut Rng, lease_ms: u64, audit_ms: u64) -> Self {
        let mut r = Replica {
            id,
            disk: Disk::new(voters),
            node: None,
            state: State::default(),
            applied: 0,
            incarnation: 0,
            pending: BTreeMap::new(),
            inflight: VecDeque::new(),
            reads: Default::default(),
            sync_ms: rng.below(4) * 5,
            snap_every: rng.range(10, 60),
            disk_fault: false,
            next_group: 0,
            planner: Planner::new().with_audit_every(audit_ms),
            judge: Judge::new(lease_ms),
            leader_since: None,
            elect_rng: rng.fork(),
            elect_seen: (0, StateRole::Follower),
            skew_ms: rng.below(100),
            lease_ms,
        };
        r.start(rng).expect("an empty disk starts");
        r
    }

    pub fn alive(&self) -> bool {
        self.node.is_some()
    }

    pub fn is_leader(&self) -> bool {
        self.node
            .as_ref()
            .is_some_and(|n| n.raft.state == StateRole::Leader)
    }

    pub fn term(&self) -> u64 {
        self.node.as_ref().map_or(0, |n| n.raft.term)
    }

    /// Role, term, log and disk, for a diagnosis.
    pub fn describe(&self) -> String {
        match &self.node {
            None => format!("r{} down", self.id),
            Some(n) => format!(
                "r{} {:?} term {} commit {} persisted {} last {} applied {} unsynced readies {}",
                self.id,
                n.raft.state,
                n.raft.term,
                n.raft.raft_log.committed,
                n.raft.raft_log.persisted,
                n.raft.raft_log.last_index(),
                self.applied,
                self.inflight.len()
            ),
        }
    }

    pub fn commit(&self) -> u64 {
        self.node.as_ref().map_or(0, |n| n.raft.raft_log.committed)
    }

    /// Starts raft over the disk, with the state of the disk's snapshot (if any).
    fn start(&mut self, rng: &mut Rng) -> Result<(), String> {
        let snap = self.disk.snapshot_meta().index;
        self.state = match snap {
            0 => State::default(),
            _ => crate::ready::restore(&self.disk.snapshot_data())?,
        };
        self.applied = snap;
        let cfg = raft::Config {
            id: self.id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            min_election_tick: ELECTION_TICKS,
            max_election_tick: 2 * ELECTION_TICKS,
            applied: snap,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate().expect("a valid raft config");
        let node = RawNode::new(&cfg, self.disk.clone(), &logger()).expect("raft starts");
        self.node = Some(node);
        self.elect_seen = (u64::MAX, StateRole::Follower);
        self.fix_timeout();
        self.incarnation = rng.next_u64() | 1;
        self.pending.clear();
        self.planner.reset();
        self.judge.follow();
        self.leader_since = None;
        self.inflight.clear();
        Ok(())
    }

    /// Loses everything that is not on the disk; returns how many unsynced writes were lost.
    pub fn crash(&mut self) -> usize {
        self.node = None;
        self.pending.clear();
        self.inflight.clear();
        self.reads = Default::default();
        self.state = State::default();
        self.applied = 0;
        self.disk.crash()
    }

    /// Starts again from what the disk kept; the restored snapshot must hold the state every
    /// other server had at its index (G7).
    pub fn restart(&mut self, rng: &mut Rng, now: u64, trace: &mut Trace, checks: &mut Checks) {
        self.disk_fault = false;
        if let Err(why) = self.start(rng) {
            checks.fail(now, format!("r{}: restart: {why}", self.id));
            return;
        }
        trace.line(
            now,
            format_args!("r{} restarts from snapshot {}", self.id, self.applied),
        );
        if self.applied > 0 {
            checks.count("restored from snapshot");
            checks.hash_at(now, self.id, self.applied, self.state.hash());
        }
    }

    fn local(&self, now: u64) -> u64 {
        now + self.skew_ms
    }

    pub fn tick(&mut self) {
        if let Some(n) = self.node.as_mut() {
            n.tick();
        }
        self.fix_timeout();
    }

    /// Replaces raft's own random election timeout with a seeded one whenever raft drew a new
    /// one (every change of term or role resets it), so a seed replays exactly while timeouts
    /// still differ between servers and between elections (equal ones can split every vote).
    pub(crate) fn fix_timeout(&mut self) {
        let Some(n) = self.node.as_mut() else {
            return;
        };
        let now = (n.raft.term, n.raft.state);
        if now != self.elect_seen {
            self.elect_seen = now;
            let t = self
                .elect_rng
                .range(ELECTION_TICKS as u64, 2 * ELECTION_TICKS as u64 - 1);
            n.raft.set_randomized_election_timeout(t as usize);
        }
    }

    pub fn on_message(&mut self, from: Addr, payload: Payload, cx: &mut Cx) {
        if self.node.is_none() {
            return;
        }
        match payload {
            Payload::Raft(m) => {
                if let Some(n) = self.node.as_mut() {
                    let _ = n.step(*m);
                }
                self.fix_timeout();
            }
            Payload::Propose { op, cmds } => {
                let waiter = op.map(|op| (from, op));
                if !self.propose(cx.now, waiter, cmds)
                    && let Some(op) = op
                {
                    let leader = self.node.as_ref().map_or(0, |n| n.raft.leader_id);
                    let reply = Payload::Reply {
                        op,
                        reply: Reply::NotLeader { leader },
                    };
                    cx.net.send(cx.now, Addr::Replica(self.id), from, reply);
                }
            }
            Payload::Renew(r) => self.on_renew(from, *r, cx),
            Payload::Read { op, wf } => self.on_read(from, op, wf, cx),
            _ => {}
        }
    }

    /// Proposes one entry (a leader only). False when it was not proposed.
    fn propose(&mut self, now: u64, waiter: Option<(Addr, u64)>, cmds: Vec<Command>) -> bool {
        let at_ms = self.local(now);
        let Some(node) = self.node.as_mut() else {
            return false;
        };
        if node.raft.state != StateRole::Leader {
            return false;
        }
        let id = if waiter.is_some() {
            self.next_group += 1;
            self.next_group
        } else {
            0
        };
        let data = entry::encode(&entry::Entry {
            v: ENTRY_VERSION,
            at_ms,
            origin: self.incarnation,
            groups: vec![Group { id, cmds }],
        });
        if node.propose(Vec::new(), data).is_err() {
            return false;
        }
        if let Some(w) = waiter {
            self.pending.insert(id, w);
        }
        true
    }

    /// The leader's hook (every `HOOK_MS`): plan placements, timeouts, audits; judge leases.
    pub fn hook(&mut self, now: u64) {
        if !self.is_leader() {
            return;
        }
        let local = self.local(now);
        let mut cmds = self.planner.plan(&self.state, local);
        cmds.extend(self.judge.judge(&self.state, local));
        if !cmds.is_empty() {
            self.propose(now, None, cmds);
        }
    }

    /// A worker's renewal (the leader answers; what it holds is reconciled with the log).
    fn on_renew(&mut self, from: Addr, r: Renewal, cx: &mut Cx) {
        if !self.is_leader() {
            return;
        }
        let me = Addr::Replica(self.id);
        let local = self.local(cx.now);
        let node = self.state.sched.nodes.get(&r.node);
        let reply = RenewReply {
            registration: node.map_or(0, |n| n.registration),
            epoch: node.map_or(0, |n| n.epoch),
            up: node.is_some_and(|n| n.status != troupe_scheduler::state::NodeStatus::Down),
        };
        cx.net
            .send(cx.now, me, from, Payload::RenewReply(reply.clone()));
        if !(reply.up && reply.registration == r.registration && reply.epoch == r.epoch) {
            return;
        }
        self.judge.renew(&r.node, local);
        let settled = self
            .leader_since
            .is_some_and(|t| local.saturating_sub(t) > self.lease_ms);
        let reported: BTreeSet<_> = r.recent.iter().map(|x| (x.at.task, x.at.attempt)).collect();
        let held = Held {
            node: &r.node,
            epoch: r.epoch,
            holds: &r.holds,
            reported: &reported,
        };
        let repair = reconcile::reconcile(&self.state, &held, local, settled);
        for (t, a) in repair.resend {
            if let Some(spec) = self.state.run_spec_of(t, a) {
                cx.net.send(cx.now, me, from, Payload::Run(Box::new(spec)));
            }
        }
        // One report per `Finished`: the G3/G4 checks judge each accepted report alone.
        let mut cmds: Vec<Command> = repair
            .vanished
            .into_iter()
            .map(|at| {
                Command::Finished(vec![Report {
                    at,
                    outcome: Outcome::Failed {
                        error: format!("the attempt vanished from node {}", r.node),
                    },
                }])
            })
            .collect();
        cmds.extend(
            r.recent
                .into_iter()
                .filter(|rep| self.state.would_accept(rep))
                .map(|rep| Command::Finished(vec![rep])),
        );
        if settled {
            for &(task, attempt) in &r.holds {
                let live = self.state.task(task).is_some_and(|t| {
                    t.attempt == attempt
                        && matches!(&t.state, TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } if *epoch == r.epoch)
                });
                if !live {
                    cx.net
                        .send(cx.now, me, from, Payload::Kill { task, attempt });
                }
            }
        }
        if !cmds.is_empty() {
            self.propose(cx.now, None, cmds);
        }
    }

    pub(crate) fn apply(&mut self, entries: Vec<Entry>, leader: bool, cx: &mut Cx) {
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.get_data().is_empty() {
                self.apply_entry(&e, leader, cx);
            }
            self.applied = e.index;
            let first = cx
                .checks
                .hash_at(cx.now, self.id, e.index, self.state.hash());
            if first {
                cx.trace.line(
                    cx.now,
                    format_args!("r{} applied {} (term {})", self.id, e.index, e.term),
                );
            }
        }
    }

    fn apply_entry(&mut self, e: &Entry, leader: bool, cx: &mut Cx) {
        let env = match entry::decode(e.get_data()) {
            Ok(env) => env,
            Err(why) => {
                cx.checks
                    .fail(cx.now, format!("r{} entry {}: {why}", self.id, e.index));
                return;
            }
        };
        let mine = env.origin == self.incarnation;
        for g in env.groups {
            let waiter = (mine && g.id != 0)
                .then(|| self.pending.remove(&g.id))
                .flatten();
            let outs: Vec<Output> = g
                .cmds
                .into_iter()
                .map(|c| self.apply_command(e.index, env.at_ms, c, cx))
                .collect();
            if let Some((to, op)) = waiter {
                let reply = Reply::Applied(outs);
                cx.net.send(
                    cx.now,
                    Addr::Replica(self.id),
                    to,
                    Payload::Reply { op, reply },
                );
            }
        }
        self.route(leader, cx);
    }

    /// Applies one command and checks G3, G4 (for reports) and G6 (always) on the result.
    fn apply_command(&mut self, index: u64, at_ms: u64, cmd: Command, cx: &mut Cx) -> Output {
        *cx.applied += 1;
        let report = match &cmd {
            Command::Finished(reps) => {
                assert_eq!(
                    reps.len(),
                    1,
                    "the simulator proposes one report per Finished"
                );
                let legal = check::may_accept(&self.state, &reps[0]);
                let late = self
                    .state
                    .task(reps[0].at.task)
                    .is_some_and(|t| t.state == TaskState::Queued);
                Some((reps[0].clone(), legal, late))
            }
            _ => None,
        };
        let lost = matches!(cmd, Command::NodeLost { .. });
        let out = self.state.apply(at_ms, cmd);
        if lost && out == Output::Done {
            cx.checks.count("node lost");
        }
        if let Some((rep, legal, late)) = report {
            cx.checks.checked += 1;
            let accepted = matches!(out, Output::Counted { accepted: 1, .. });
            cx.checks.count(match (accepted, late) {
                (true, true) => "late success accepted",
                (true, false) => "report accepted",
                (false, _) => "report refused",
            });
            if accepted && !legal {
                cx.checks.fail(cx.now, format!(
                    "G4: r{} accepted a report fencing refuses: {:?} attempt {} epoch {} ({:?})",
                    self.id, rep.at.task, rep.at.attempt, rep.at.epoch, rep.outcome
                ));
            }
            if !accepted && legal {
                cx.checks.fail(
                    cx.now,
                    format!(
                        "G4: r{} refused a current report: {:?} attempt {} epoch {}",
                        self.id, rep.at.task, rep.at.attempt, rep.at.epoch
                    ),
                );
            }
            if accepted && let Err(why) = cx.checks.accepted.record(index, &rep) {
                cx.checks
                    .fail(cx.now, format!("r{} at index {index}: {why}", self.id));
            }
        }
        match check::capacity(&self.state) {
            Ok(n) => cx.checks.checked += n,
            Err(why) => cx.checks.fail(
                cx.now,
                format!("r{} at index {}: {why}", self.id, self.applied + 1),
            ),
        }
        out
    }

    /// Effects: only the leader delivers runs and kills (each once); a divergence found by an
    /// audit is a G7 violation on any replica.
    fn route(&mut self, leader: bool, cx: &mut Cx) {
        let me = Addr::Replica(self.id);
        for e in self.state.take_effects() {
            match e {
                Effect::Run(spec) if leader => {
                    if let Some(w) = worker_addr(&spec.node) {
                        cx.net.send(cx.now, me, w, Payload::Run(spec));
                    }
                }
                Effect::Kill {
                    task,
                    attempt,
                    node,
                } if leader => {
                    if let Some(w) = worker_addr(&node) {
                        cx.net.send(cx.now, me, w, Payload::Kill { task, attempt });
                    }
                }
                Effect::Diverged(why) => cx
                    .checks
                    .fail(cx.now, format!("G7: r{} audit: {why}", self.id)),
                _ => {}
            }
        }
    }
}

/// Worker nodes are named `w0`, `w1`, ...
pub fn worker_addr(node: &str) -> Option<Addr> {
    node.strip_prefix('w')?.parse().ok().map(Addr::Worker)
}
