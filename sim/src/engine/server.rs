//! One simulated server of the engine world: a real raft-log engine ([`Stepper`]) over its
//! simulated disk ([`MemDisk`]), on its own manual clock, applying the real state machine
//! ([`Checked`] around `Machine`) with the real engine hook (`troupe_actors::machine::hook`:
//! the `Planner`, audits, effect routing; leader only). Around it, what the node's actors do
//! with the engine handle: client proposals and reads (`propose`, `read_index` on any member),
//! worker reports (`propose_nowait` on the leader), lease renewals answered by the leader with
//! the real `reconcile`, and the lease judge (`crate::lease`), which proposes lost nodes.

use super::checked::{Checked, Probe};
use crate::lease::Judge;
use crate::net::{Addr, Net, Payload, RenewReply, Renewal, Reply};
use crate::replica::worker_addr;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use troupe_actors::machine::{self, EffectSink, HookArgs, Observer};
use troupe_clock::ManualClock;
use troupe_raft_log::{
    EngineConfig, EngineHandle, MemDisk, MembershipChange, MembershipReceiver, ProposeError,
    ProposeReceiver, ReadReceiver, Stepper, Transport,
};
use troupe_scheduler::reconcile::{self, Held};
use troupe_scheduler::state::{GroupKey, NodeStatus, TaskState};
use troupe_scheduler::{
    Command, Effect, Outcome, Output, Report, RunSpec, State, TaskRef, WorkflowId,
};

/// Raft messages the engine sent, (to, bytes), until the world puts them on the network.
type Outbox = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

struct Queue(Outbox);

impl Transport for Queue {
    fn send(&self, to: u64, msg: Vec<u8>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((to, msg));
    }
}

/// Runs and kills the hook delivered (leader only), until the world sends them.
#[derive(Default)]
struct Deliveries {
    runs: Vec<RunSpec>,
    kills: Vec<(String, TaskRef, u32)>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Deliveries>>);

impl EffectSink for Sink {
    fn run(&mut self, specs: Vec<RunSpec>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .runs
            .extend(specs);
    }
    fn kill(&mut self, kills: Vec<(String, TaskRef, u32)>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kills
            .extend(kills);
    }
    fn workflows(&mut self, _: Vec<WorkflowId>, _: Vec<WorkflowId>, _: Vec<WorkflowId>) {}
    fn stop_workers(&mut self, _: Vec<GroupKey>) {}
}

/// G7: a divergence an audit found (`Effect::Diverged`) fails the run.
struct Audits {
    id: u64,
    probe: Probe,
}

impl Observer for Audits {
    fn observe(&mut self, _: &State, effects: &[Effect], _: u64, _: bool) {
        for e in effects {
            if let Effect::Diverged(why) = e {
                let mut p = self.probe.lock();
                let now = p.now;
                p.checks.fail(now, format!("G7: r{} audit: {why}", self.id));
            }
        }
    }
}

/// What a server needs from the world to (re)start.
pub struct Setup {
    pub voters: Vec<u64>,
    /// Opens a fresh log empty, as a non-member waiting to be added (`--join-existing`).
    pub join_existing: bool,
    pub tick_ms: u64,
    pub snapshot_every: u64,
    pub audit_ms: u64,
    pub lease_ms: u64,
}

pub struct Server {
    pub id: u64,
    pub disk: MemDisk,
    pub clock: Arc<ManualClock>,
    engine: Option<Stepper<Checked>>,
    handle: Option<EngineHandle<Checked>>,
    outbox: Outbox,
    sink: Sink,
    probe: Probe,
    setup: Setup,
    /// Client proposals waiting for their outputs: (client, op, receiver).
    waiting: Vec<(Addr, u64, ProposeReceiver<Output>)>,
    /// Client reads waiting for their barrier: (client, op, workflow, receiver).
    reads: Vec<(Addr, u64, WorkflowId, ReadReceiver)>,
    judge: Judge,
    /// Since when (this server's wall ms) it leads; `None`: it does not.
    leader_since: Option<u64>,
    /// Opens so far (each gets its own seed).
    opens: u64,
    seed: u64,
}

impl Server {
    pub fn new(id: u64, seed: u64, skew_ms: u64, setup: Setup, probe: Probe) -> Self {
        let lease_ms = setup.lease_ms;
        let mut s = Server {
            id,
            disk: MemDisk::new(),
            clock: ManualClock::new(1_000_000 + skew_ms),
            engine: None,
            handle: None,
            outbox: Outbox::default(),
            sink: Sink::default(),
            probe,
            setup,
            waiting: Vec::new(),
            reads: Vec::new(),
            judge: Judge::new(lease_ms),
            leader_since: None,
            opens: 0,
            seed,
        };
        if let Err(why) = s.open() {
            panic!("r{id}: an empty disk does not open: {why}");
        }
        s
    }

    /// Opens the engine on the disk (replaying what it kept).
    pub fn open(&mut self) -> Result<(), String> {
        self.opens += 1;
        let id = self.id;
        let mut cfg = EngineConfig::new(format!("sim/r{id}")).with_clock(self.clock.clone());
        cfg.id = id;
        cfg.voters = self.setup.voters.clone();
        cfg.join_existing = self.setup.join_existing;
        cfg.tick_ms = self.setup.tick_ms;
        cfg.snapshot_every_entries = self.setup.snapshot_every;
        cfg.seed = Some(self.seed.wrapping_mul(1_000_003).wrapping_add(self.opens));
        cfg.disk = Some(self.disk.clone());
        cfg.transport = Some(Arc::new(Queue(self.outbox.clone())));
        let args = HookArgs {
            node: format!("s{id}"),
            incarnation: self.opens,
            strategy: Default::default(),
            retain: None,
            audit_every: Duration::from_millis(self.setup.audit_ms),
            lease: None,
            observers: vec![Box::new(Audits {
                id,
                probe: self.probe.clone(),
            })],
        };
        let mut hook = machine::hook(args, Box::new(self.sink.clone()));
        let hook: troupe_raft_log::Hook<Checked> =
            Box::new(move |c: &mut Checked, now_ms, leader| hook(&mut c.machine, now_ms, leader));
        let engine = Stepper::open(cfg, Checked::new(id, self.probe.clone()), hook)
            .map_err(|e| e.to_string())?;
        self.handle = Some(engine.handle());
        self.engine = Some(engine);
        self.leader_since = None;
        self.judge.follow();
        Ok(())
    }

    pub fn alive(&self) -> bool {
        self.engine.is_some()
    }

    /// The machine dies: unsynced writes are lost, and so is everything in memory.
    pub fn crash(&mut self) -> u64 {
        let lost = self.disk.crash();
        self.engine = None;
        self.handle = None;
        self.waiting.clear();
        self.reads.clear();
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        *self.sink.0.lock().unwrap_or_else(PoisonError::into_inner) = Deliveries::default();
        self.leader_since = None;
        lost
    }

    pub fn status(&self) -> Option<troupe_raft_log::EngineStatus> {
        self.handle.as_ref().map(|h| h.status())
    }

    pub fn is_leader(&self) -> bool {
        self.status().is_some_and(|s| s.is_leader)
    }

    pub fn term(&self) -> u64 {
        self.status().map_or(0, |s| s.term)
    }

    pub fn applied(&self) -> u64 {
        self.status().map_or(0, |s| s.applied)
    }

    /// Asks this server's engine (the leader's, or it refuses) for one membership change.
    pub fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipReceiver, ProposeError> {
        match &self.handle {
            Some(h) => h.change_membership(change),
            None => Err(ProposeError::Stopped),
        }
    }

    /// The state machine (`None` while down).
    pub fn state_arc(&self) -> Option<Arc<std::sync::RwLock<Checked>>> {
        self.handle.as_ref().map(|h| h.state())
    }

    /// Runs `f` on the state (under its read lock).
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> Option<T> {
        let h = self.handle.as_ref()?;
        let state = h.state();
        let guard = state.read().unwrap_or_else(PoisonError::into_inner);
        Some(f(guard.state()))
    }

    fn local(&self) -> u64 {
        use troupe_clock::Clock;
        self.clock.wall_ms()
    }

    /// A raft message from a peer.
    pub fn on_raft(&self, bytes: Vec<u8>) {
        if let Some(h) = &self.handle {
            h.step(bytes);
        }
    }

    /// A client's or a worker's message.
    pub fn on_message(&mut self, now: u64, from: Addr, payload: Payload, net: &mut Net) {
        let Some(h) = self.handle.clone() else {
            return;
        };
        let me = Addr::Replica(self.id);
        let leader = h.status().leader_id;
        let not_leader = |net: &mut Net, op| {
            let reply = Reply::NotLeader { leader };
            net.send(now, me, from, Payload::Reply { op, reply });
        };
        match payload {
            Payload::Propose { op: Some(op), cmds } => match h.propose(cmds) {
                Ok(rx) => self.waiting.push((from, op, rx)),
                Err(ProposeError::Stopped) => {}
                // Not proposed: safe to send elsewhere.
                Err(_) => not_leader(net, op),
            },
            // Workers send their reports to every server; the leader proposes them.
            Payload::Propose { op: None, cmds } if h.status().is_leader => {
                let _ = h.propose_nowait(cmds);
            }
            // A linearizable read on whichever member the client reached (raft ReadIndex).
            Payload::Read { op, wf } => match h.read_index() {
                Ok(rx) => self.reads.push((from, op, wf, rx)),
                Err(ProposeError::Stopped) => {}
                Err(_) => not_leader(net, op),
            },
            Payload::Renew(r) => self.on_renew(now, from, *r, net),
            _ => {}
        }
    }

    /// One cycle of the engine, then what it produced goes out. `Err`: the engine stopped on
    /// a storage error (fail-stop).
    pub fn step(&mut self, now: u64, hook_due: bool, net: &mut Net) -> Result<(), String> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        let stepped = engine.step();
        self.send_raft(now, net);
        if let Err(f) = stepped {
            return Err(f.message);
        }
        self.deliver(now, net);
        self.answer(now, net);
        self.lead(now, hook_due);
        Ok(())
    }

    fn send_raft(&self, now: u64, net: &mut Net) {
        let me = Addr::Replica(self.id);
        let sent = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(PoisonError::into_inner));
        for (to, bytes) in sent {
            net.send(now, me, Addr::Replica(to), Payload::RaftBytes(bytes));
        }
    }

    /// Runs and kills the hook routed (only the leader's hook routes them).
    fn deliver(&self, now: u64, net: &mut Net) {
        let me = Addr::Replica(self.id);
        let d = std::mem::take(&mut *self.sink.0.lock().unwrap_or_else(PoisonError::into_inner));
        for (node, task, attempt) in d.kills {
            if let Some(w) = worker_addr(&node) {
                net.send(now, me, w, Payload::Kill { task, attempt });
            }
        }
        for spec in d.runs {
            if let Some(w) = worker_addr(&spec.node) {
                net.send(now, me, w, Payload::Run(Box::new(spec)));
            }
        }
    }

    /// Answers the proposals and reads the engine resolved.
    fn answer(&mut self, now: u64, net: &mut Net) {
        let me = Addr::Replica(self.id);
        let leader = self.status().map_or(0, |s| s.leader_id);
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain_mut(|(to, op, rx)| {
            let reply = match rx.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return true,
                Err(_) => return false,
                Ok(Ok(outs)) => Reply::Applied(outs),
                // Never proposed (a follower, or raft refused it at once): safe to retry.
                Ok(Err(ProposeError::NotLeader | ProposeError::Busy)) => {
                    Reply::NotLeader { leader }
                }
                Ok(Err(_)) => Reply::Indeterminate,
            };
            net.send(now, me, *to, Payload::Reply { op: *op, reply });
            false
        });
        self.waiting = waiting;
        let mut reads = std::mem::take(&mut self.reads);
        reads.retain_mut(|(to, op, wf, rx)| {
            let reply = match rx.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return true,
                Err(_) => return false,
                Ok(Ok(_index)) => {
                    self.probe.lock().checks.count("read answered");
                    let status = self.with_state(|s| s.workflows.get(wf).map(|w| w.status));
                    Reply::Status(status.flatten())
                }
                Ok(Err(_)) => Reply::Indeterminate,
            };
            net.send(now, me, *to, Payload::Reply { op: *op, reply });
            false
        });
        self.reads = reads;
    }

    /// The leader's lease judge; a follower judges nothing.
    fn lead(&mut self, now: u64, hook_due: bool) {
        let leading = self.is_leader();
        let local = self.local();
        match (leading, self.leader_since.is_some()) {
            (true, false) => {
                self.leader_since = Some(local);
                let term = self.term();
                let mut p = self.probe.lock();
                p.checks.count("leader elected");
                p.trace
                    .line(now, format_args!("r{} leads term {term}", self.id));
            }
            (false, true) => {
                self.leader_since = None;
                self.judge.follow();
                let term = self.term();
                self.probe
                    .lock()
                    .trace
                    .line(now, format_args!("r{} steps down (term {term})", self.id));
            }
            _ => {}
        }
        if leading {
            let term = self.term();
            self.probe.lock().checks.leader(now, term, self.id);
        }
        if !(leading && hook_due) {
            return;
        }
        let Some(h) = self.handle.clone() else {
            return;
        };
        let state = h.state();
        let cmds = {
            let guard = state.read().unwrap_or_else(PoisonError::into_inner);
            self.judge.judge(guard.state(), local)
        };
        if !cmds.is_empty() {
            let _ = h.propose_nowait(cmds);
        }
    }

    /// A worker's renewal: the leader answers, and reconciles what the worker holds with the
    /// log (runs sent again, vanished attempts failed, stale ones killed), as the node does.
    fn on_renew(&mut self, now: u64, from: Addr, r: Renewal, net: &mut Net) {
        if !self.is_leader() {
            return;
        }
        let me = Addr::Replica(self.id);
        let local = self.local();
        let settled = self
            .leader_since
            .is_some_and(|t| local.saturating_sub(t) > self.setup.lease_ms);
        let Some((reply, resend, cmds, kills)) =
            self.with_state(|s| reconcile_renewal(s, &r, local, settled))
        else {
            return;
        };
        net.send(now, me, from, Payload::RenewReply(reply.clone()));
        if !(reply.up && reply.registration == r.registration && reply.epoch == r.epoch) {
            return;
        }
        self.judge.renew(&r.node, local);
        for spec in resend {
            net.send(now, me, from, Payload::Run(Box::new(spec)));
        }
        for (task, attempt) in kills {
            net.send(now, me, from, Payload::Kill { task, attempt });
        }
        if !cmds.is_empty()
            && let Some(h) = &self.handle
        {
            let _ = h.propose_nowait(cmds);
        }
    }
}

type Renewed = (RenewReply, Vec<RunSpec>, Vec<Command>, Vec<(TaskRef, u32)>);

/// What the leader answers to a renewal, sends again, proposes and kills (`reconcile`).
fn reconcile_renewal(s: &State, r: &Renewal, local: u64, settled: bool) -> Renewed {
    let node = s.sched.nodes.get(&r.node);
    let reply = RenewReply {
        registration: node.map_or(0, |n| n.registration),
        epoch: node.map_or(0, |n| n.epoch),
        up: node.is_some_and(|n| n.status != NodeStatus::Down),
    };
    if !(reply.up && reply.registration == r.registration && reply.epoch == r.epoch) {
        return (reply, Vec::new(), Vec::new(), Vec::new());
    }
    let reported: BTreeSet<_> = r.recent.iter().map(|x| (x.at.task, x.at.attempt)).collect();
    let held = Held {
        node: &r.node,
        epoch: r.epoch,
        holds: &r.holds,
        reported: &reported,
    };
    let repair = reconcile::reconcile(s, &held, local, settled);
    let resend = repair
        .resend
        .into_iter()
        .filter_map(|(t, a)| s.run_spec_of(t, a))
        .collect();
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
            .iter()
            .filter(|rep| s.would_accept(rep))
            .map(|rep| Command::Finished(vec![rep.clone()])),
    );
    let mut kills = Vec::new();
    if settled {
        for &(task, attempt) in &r.holds {
            let live = s.task(task).is_some_and(|t| {
                t.attempt == attempt
                    && matches!(&t.state, TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } if *epoch == r.epoch)
            });
            if !live {
                kills.push((task, attempt));
            }
        }
    }
    (reply, resend, cmds, kills)
}
