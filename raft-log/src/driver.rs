//! The engine thread: owns the `RawNode`, the redb store and the Ready loop.
//!
//! One cycle: wait on the input queue until the next tick is due, drain what is queued
//! (group commit), step the inbound raft messages, pack proposals into entries and propose,
//! propose membership changes,
//! start read barriers, tick when due, handle every Ready (send -> persist -> apply under one
//! write lock -> send persisted messages -> advance), call the hook (every member) and propose
//! what it returns (leader only), answer read barriers, take a snapshot when due, publish the
//! status. Storage errors are fatal: the thread fails every
//! outstanding proposal and stops (fail-stop, as raft requires), it never panics on them.
//!
//! The waiting is the only part that belongs to the thread: [`Driver::receive`] (with a wait)
//! and then [`Driver::cycle`] (no blocking, no sleeping, time from `EngineConfig::time`). The
//! thread loop is `receive(wait until the next tick)` + `cycle` over and over; `driver/step.rs`
//! ([`crate::Stepper`]) calls `receive(no wait)` + `cycle` once per call, on the caller's
//! thread, which is how the simulator drives several engines on one simulated clock.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use raft::{RawNode, StateRole};
use troupe_clock::Rng;

use crate::config::EngineConfig;
use crate::engine::{ConfReply, Inbound, Input, MembershipChange, Reply, Shared};
use crate::error::{ProposeError, RaftLogError};
use crate::logger::raft_logger;
use crate::storage::RedbStorage;
use crate::{Hook, StateMachine};

mod apply;
mod membership;
mod net;
mod propose;
mod step;
mod stop;
mod timeout;

pub use step::Stepper;

type ReadyTx = mpsc::Sender<Result<(), RaftLogError>>;
/// A waiter and the outputs to send it once the apply batch is done.
type Answer<O> = (Reply<O>, Vec<O>);

/// Thread entry point. Reports the startup result on `ready_tx` exactly once.
pub(crate) fn run<M: StateMachine>(
    cfg: EngineConfig,
    hook: Hook<M>,
    (rx, net_rx): (Receiver<Input<M>>, Receiver<Inbound>),
    shared: Arc<Shared>,
    state: Arc<RwLock<M>>,
    ready_tx: ReadyTx,
) {
    // Marks the engine stopped however the thread ends (a panic in apply or the hook included).
    let _guard = StoppedOnDrop(Arc::clone(&shared));
    let mut driver = match Driver::start(cfg, hook, (rx, net_rx), shared, state, true) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            return;
        }
    };
    driver.ready_tx = Some(ready_tx);
    let result = driver.run_loop();
    driver.finish(result);
}

struct StoppedOnDrop(Arc<Shared>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
        self.0.is_leader.store(false, Ordering::Release);
        self.0.leader_id.store(0, Ordering::Release);
        self.0.running.store(false, Ordering::Release);
    }
}

struct Proposal<M: StateMachine> {
    cmds: Vec<M::Command>,
    reply: Option<Reply<M::Output>>,
}

struct Driver<M: StateMachine> {
    cfg: EngineConfig,
    node: RawNode<RedbStorage>,
    hook: Hook<M>,
    rx: Receiver<Input<M>>,
    /// Inbound raft messages and read barriers (see `EngineHandle::step`).
    net_rx: Receiver<Inbound>,
    shared: Arc<Shared>,
    state: Arc<RwLock<M>>,
    /// Random per-open nonce stamped into our envelopes; group ids are only ours if it matches.
    incarnation: u64,
    next_id: u64,
    /// Waiters of proposed groups, by group id (ordered: they are failed in order).
    pending: BTreeMap<u64, Reply<M::Output>>,
    /// Fire-and-forget proposals raft dropped (uncommitted-size limit); re-proposed next cycle.
    retry: Vec<Proposal<M>>,
    /// Outstanding read barriers.
    reads: net::Reads,
    /// Waiters of proposed membership changes.
    confs: membership::ConfWaiters,
    applied: u64,
    was_leader: bool,
    /// The group had this node as its only voter at open: it elects itself and `open` waits
    /// for leadership. Otherwise `open` waits for `open_commit` to be applied.
    single_voter: bool,
    /// The commit index persisted before this open.
    open_commit: u64,
    ready_tx: Option<ReadyTx>,
    /// When the last snapshot was taken and what it cost (snapshots are paced by their cost).
    last_snapshot: Option<(Instant, Duration)>,
    /// The snapshot being built on the snapshot thread, if any (one at a time).
    building: Option<apply::Building>,
    /// Entries this leader proposed and has not applied yet: (index, when), oldest first, at
    /// most [`INFLIGHT_MAX`] (for the commit latency histogram).
    inflight: std::collections::VecDeque<(u64, Instant)>,
    /// The engine's random stream: incarnation nonces, election timeouts (`driver/timeout.rs`).
    rng: Rng,
    /// When the next raft tick is due.
    next_tick: Instant,
    /// The hook's commands were applied in the last cycle: the next one runs it again (and the
    /// thread does not wait for it).
    hook_again: bool,
    /// Snapshots are serialized on a `troupe-snapshot` thread (`Engine`), or inline, in the
    /// cycle that takes them (`Stepper`: no threads).
    snapshot_thread: bool,
}

/// Most proposed entries whose commit latency is being timed at once (older ones are dropped
/// untimed).
const INFLIGHT_MAX: usize = 4096;

fn raft_err(e: raft::Error) -> RaftLogError {
    RaftLogError::Raft(e.to_string())
}

fn read_lock<M>(state: &RwLock<M>) -> std::sync::RwLockReadGuard<'_, M> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<M>(state: &RwLock<M>) -> std::sync::RwLockWriteGuard<'_, M> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// What one cycle took from the input queue.
struct Inbox<M: StateMachine> {
    batch: Vec<Proposal<M>>,
    confs: Vec<(MembershipChange, ConfReply)>,
    stop: bool,
}

impl<M: StateMachine> Driver<M> {
    fn start(
        cfg: EngineConfig,
        hook: Hook<M>,
        (rx, net_rx): (Receiver<Input<M>>, Receiver<Inbound>),
        shared: Arc<Shared>,
        state: Arc<RwLock<M>>,
        snapshot_thread: bool,
    ) -> Result<Self, RaftLogError> {
        let path = cfg.db_path();
        let mut store = RedbStorage::open(&path, cfg.fsync, cfg.disk.as_ref())?;
        store.set_chaos(cfg.disk_faults.clone(), cfg.keep_compacted);
        if let Ok(mut db) = shared.db.lock() {
            *db = (store.database(), path.clone());
        }
        let joining = !store.is_initialized() && cfg.join_existing;
        if joining {
            tracing::info!(path = %path.display(), id = cfg.id, "created an empty raft log; waiting to be added to the group and sent a snapshot");
        } else if !store.is_initialized() {
            let image = read_lock(&state).snapshot();
            let mut voters = cfg.voters.clone();
            voters.sort_unstable();
            voters.dedup();
            store.bootstrap(&voters, &image)?;
            tracing::info!(path = %path.display(), id = cfg.id, ?voters, "created a new raft log");
        }
        let cs = store.conf_state();
        let single_voter = cs.voters == [cfg.id] && cs.learners.is_empty();
        if !joining && !cs.voters.contains(&cfg.id) && !cs.learners.contains(&cfg.id) {
            tracing::warn!(id = cfg.id, voters = ?cs.voters, learners = ?cs.learners, "this node is not a member of its raft group");
        }
        if !single_voter && cfg.transport.is_none() && !joining {
            tracing::warn!(
                voters = ?cs.voters,
                "multi-voter raft group without a transport; it cannot elect a leader"
            );
        }
        let open_commit = store.hard_state().commit;
        let snap_index = store.snapshot_metadata().index;
        let image = store.snapshot_data()?;
        shared
            .stats
            .snapshot_bytes
            .store(image.len() as u64, Ordering::Relaxed);
        if !image.is_empty() {
            let mut machine = write_lock(&state);
            machine
                .restore(&image)
                .map_err(|detail| RaftLogError::Restore {
                    index: snap_index,
                    detail,
                })?;
            machine.at_index(snap_index);
        }
        let raft_cfg = cfg.raft_config(snap_index);
        raft_cfg.validate().map_err(raft_err)?;
        let node = RawNode::new(&raft_cfg, store, &raft_logger(cfg.id)).map_err(raft_err)?;
        let mut rng = cfg.rng();
        let incarnation = rng.next_u64() | 1;
        let next_tick = cfg.time.now();
        let mut driver = Driver {
            cfg,
            node,
            hook,
            rx,
            net_rx,
            shared,
            state,
            incarnation,
            next_id: 0,
            pending: BTreeMap::new(),
            retry: Vec::new(),
            reads: net::Reads::default(),
            confs: membership::ConfWaiters::default(),
            applied: snap_index,
            was_leader: false,
            single_voter,
            open_commit,
            ready_tx: None,
            last_snapshot: None,
            building: None,
            inflight: std::collections::VecDeque::new(),
            rng,
            next_tick,
            hook_again: false,
            snapshot_thread,
        };
        driver.fix_timeout();
        if single_voter {
            driver.node.campaign().map_err(raft_err)?;
            driver.fix_timeout();
        }
        Ok(driver)
    }

    /// The engine's monotonic time (`EngineConfig::time`).
    fn now(&self) -> Instant {
        self.cfg.time.now()
    }

    fn run_loop(&mut self) -> Result<(), RaftLogError> {
        self.begin()?;
        loop {
            let wait = self.wait();
            let inbox = self.receive(Some(wait))?;
            if self.cycle(inbox)? {
                return Ok(());
            }
        }
    }

    /// Right after open: handles what raft has ready (a single voter's campaign), publishes the
    /// status, and schedules the first tick.
    fn begin(&mut self) -> Result<(), RaftLogError> {
        self.next_tick = self.now() + Duration::from_millis(self.cfg.tick_ms);
        self.drive()?;
        self.publish();
        self.signal_ready();
        Ok(())
    }

    /// How long the thread may wait for input: until the next tick, or not at all when the
    /// hook is due again.
    fn wait(&self) -> Duration {
        if self.hook_again {
            Duration::ZERO
        } else {
            self.next_tick.saturating_duration_since(self.now())
        }
    }

    /// One cycle of the loop over what [`Self::receive`] took: steps the inbound messages,
    /// proposes, ticks when due, handles every Ready, runs the hook, answers reads, snapshots,
    /// publishes. Never blocks or sleeps. Returns whether a stop was asked.
    fn cycle(&mut self, inbox: Inbox<M>) -> Result<bool, RaftLogError> {
        self.take_inbound()?;
        if !inbox.batch.is_empty() {
            self.propose_batch(inbox.batch);
        }
        for (change, reply) in inbox.confs {
            self.propose_membership(change, reply);
        }
        let now = self.now();
        let ticked = now >= self.next_tick;
        if ticked {
            self.node.tick();
            self.fix_timeout();
            self.hand_over_if_removed();
            let tick = Duration::from_millis(self.cfg.tick_ms);
            self.next_tick += tick;
            if self.next_tick <= now {
                self.next_tick = now + tick;
            }
        }
        let applied = self.drive()?;
        self.hook_again = if applied || ticked || self.hook_again {
            self.run_hook()?
        } else {
            false
        };
        self.resolve_reads();
        self.maybe_snapshot()?;
        self.publish();
        self.signal_ready();
        Ok(inbox.stop)
    }

    /// Takes what is queued (group commit), at most one queue's worth, after waiting up to
    /// `wait` for the first input (`None`: no waiting at all). While raft refuses retried
    /// fire-and-forget commands, new proposals stay queued behind them (order) and only the
    /// inbound queue is awaited, so the log can drain.
    fn receive(&mut self, wait: Option<Duration>) -> Result<Inbox<M>, RaftLogError> {
        let mut inbox = Inbox {
            batch: std::mem::take(&mut self.retry),
            confs: Vec::new(),
            stop: self.shared.stop.load(Ordering::Acquire),
        };
        if inbox.stop {
            return Ok(inbox);
        }
        if !inbox.batch.is_empty() {
            if let Some(wait) = wait
                && let Ok(item) = self.net_rx.recv_timeout(wait)
            {
                self.on_inbound(item)?;
            }
            return Ok(inbox);
        }
        let first = match wait {
            Some(wait) => self.rx.recv_timeout(wait),
            None => self.rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
        };
        match first {
            Ok(input) => inbox.push(input, &self.shared),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => inbox.stop = true,
        }
        for _ in 0..self.cfg.queue_capacity {
            if inbox.stop {
                break;
            }
            match self.rx.try_recv() {
                Ok(input) => inbox.push(input, &self.shared),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => inbox.stop = true,
            }
        }
        Ok(inbox)
    }

    /// Handles Readies until raft has nothing left. Returns whether anything was applied.
    fn drive(&mut self) -> Result<bool, RaftLogError> {
        let mut applied = false;
        while self.node.has_ready() {
            applied |= self.handle_ready()?;
        }
        Ok(applied)
    }

    fn handle_ready(&mut self) -> Result<bool, RaftLogError> {
        let mut rd = self.node.ready();
        if let Some(role) = rd.ss().map(|ss| ss.raft_state) {
            self.on_role(role);
        }
        self.send_messages(rd.take_messages());
        let snap = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        // Entries + hard state (+ snapshot) in one transaction, fsynced when raft needs it.
        let timed = rd.must_sync()
            && self.cfg.fsync
            && (!rd.entries().is_empty() || rd.hs().is_some() || snap.is_some());
        let writing = self.now();
        self.node
            .mut_store()
            .persist(rd.entries(), rd.hs(), snap.as_ref(), rd.must_sync())?;
        if timed {
            let took = self.now().saturating_duration_since(writing);
            self.shared.stats.fsync_latency.observe(took);
        }
        if let Some(s) = &snap {
            self.install_snapshot(s)?;
        }
        // Their commit index came with this Ready's hard state, persisted just above.
        let mut applied = self.apply(rd.take_committed_entries())?;
        self.on_read_states(rd.take_read_states());
        self.send_messages(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        applied |= self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(applied)
    }

    fn on_role(&mut self, role: StateRole) {
        let leader = role == StateRole::Leader;
        if !leader {
            self.inflight.clear();
        }
        if self.was_leader && !leader {
            tracing::warn!(?role, "lost raft leadership");
            for (_, reply) in std::mem::take(&mut self.pending) {
                let _ = reply.send(Err(ProposeError::Dropped(
                    "leadership was lost before the command was applied; it may still be applied, check before retrying".into(),
                )));
            }
            self.confs.fail_all(
                "leadership was lost before the membership change was applied; it may still be applied, check status().voters before retrying",
            );
        } else if leader && !self.was_leader {
            tracing::debug!(term = self.node.raft.term, "became raft leader");
        }
        self.was_leader = leader;
    }

    /// Calls the hook (every member) and proposes what it returns (leader only). Returns
    /// whether those commands were applied in this call (then the hook is due again).
    fn run_hook(&mut self) -> Result<bool, RaftLogError> {
        let is_leader = self.node.raft.state == StateRole::Leader;
        let now_ms = (self.cfg.clock)();
        let cmds = {
            let mut machine = write_lock(&self.state);
            (self.hook)(&mut machine, now_ms, is_leader)
        };
        if cmds.is_empty() {
            return Ok(false);
        }
        if !is_leader {
            tracing::debug!(
                commands = cmds.len(),
                "not the raft leader; discarding the hook's commands"
            );
            return Ok(false);
        }
        self.propose_batch(vec![Proposal { cmds, reply: None }]);
        self.drive()
    }

    fn publish(&self) {
        let raft = &self.node.raft;
        let store = self.node.store();
        let s = &self.shared;
        s.applied.store(self.applied, Ordering::Release);
        s.commit.store(raft.raft_log.committed, Ordering::Release);
        s.first_index.store(store.first(), Ordering::Release);
        s.last_index
            .store(raft.raft_log.last_index(), Ordering::Release);
        s.term.store(raft.term, Ordering::Release);
        s.snapshot_index
            .store(store.snapshot_metadata().index, Ordering::Release);
        s.is_leader
            .store(raft.state == StateRole::Leader, Ordering::Release);
        s.leader_id.store(raft.leader_id, Ordering::Release);
        s.running.store(true, Ordering::Release);
        s.stats
            .retried_proposals
            .store(self.retry.len() as u64, Ordering::Relaxed);
        membership::publish_members(s, store.conf_state());
    }

    /// Tells `Engine::open` we are ready. Single voter: leader, and everything committed is
    /// applied, including this term's no-op (so the whole recovered log is in the state
    /// machine). Multi-voter: the commit index persisted before this open is applied.
    fn signal_ready(&mut self) {
        if self.ready_tx.is_none() {
            return;
        }
        let raft = &self.node.raft;
        let ready = if self.single_voter {
            raft.state == StateRole::Leader
                && self.applied >= raft.raft_log.committed
                && raft.raft_log.term(self.applied).ok() == Some(raft.term)
        } else {
            self.applied >= self.open_commit
        };
        if !ready {
            return;
        }
        if let Some(tx) = self.ready_tx.take() {
            let store = self.node.store();
            tracing::info!(
                applied = self.applied,
                term = raft.term,
                snapshot_index = store.snapshot_metadata().index,
                commit = store.hard_state().commit,
                "raft log ready"
            );
            let _ = tx.send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests;
