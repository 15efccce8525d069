//! The engine thread: owns the `RawNode`, the redb store and the Ready loop.
//!
//! One cycle: block on the input queue until the next tick is due, drain what is queued
//! (group commit), pack it into entries, propose, tick when due, handle every Ready (persist
//! -> apply under one write lock -> advance), call the hook and propose what it returns, take
//! a snapshot when due, publish the status. Storage errors are fatal: the thread fails every
//! outstanding proposal and stops (fail-stop, as raft requires), it never panics on them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft::eraftpb::Message;
use raft::{RawNode, StateRole};

use crate::config::{EngineConfig, NODE_ID};
use crate::engine::{Input, Reply, Shared};
use crate::envelope::{self, ENVELOPE_VERSION, Envelope, Group};
use crate::error::{ProposeError, RaftLogError};
use crate::logger::raft_logger;
use crate::storage::RedbStorage;
use crate::{Hook, StateMachine};

mod apply;

type ReadyTx = mpsc::Sender<Result<(), RaftLogError>>;
/// A waiter and the outputs to send it once the apply batch is done.
type Answer<O> = (Reply<O>, Vec<O>);

/// Thread entry point. Reports the startup result on `ready_tx` exactly once.
pub(crate) fn run<M: StateMachine>(
    cfg: EngineConfig,
    hook: Hook<M>,
    rx: Receiver<Input<M>>,
    shared: Arc<Shared>,
    state: Arc<RwLock<M>>,
    ready_tx: ReadyTx,
) {
    // Marks the engine stopped however the thread ends (a panic in apply or the hook included).
    let _guard = StoppedOnDrop(Arc::clone(&shared));
    let mut driver = match Driver::start(cfg, hook, rx, shared, state) {
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
    shared: Arc<Shared>,
    state: Arc<RwLock<M>>,
    /// Random per-open nonce stamped into our envelopes; group ids are only ours if it matches.
    incarnation: u64,
    next_id: u64,
    /// Waiters of proposed groups, by group id.
    pending: HashMap<u64, Reply<M::Output>>,
    /// Fire-and-forget proposals raft dropped (uncommitted-size limit); re-proposed next cycle.
    retry: Vec<Proposal<M>>,
    applied: u64,
    was_leader: bool,
    ready_tx: Option<ReadyTx>,
}

fn raft_err(e: raft::Error) -> RaftLogError {
    RaftLogError::Raft(e.to_string())
}

fn incarnation_nonce() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish() | 1
}

fn read_lock<M>(state: &RwLock<M>) -> std::sync::RwLockReadGuard<'_, M> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<M>(state: &RwLock<M>) -> std::sync::RwLockWriteGuard<'_, M> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// Outbound raft messages. A single voter has no peers, so there are none; a multi-voter
/// setup will hand them to a transport here.
fn send_messages(msgs: Vec<Message>) {
    if !msgs.is_empty() {
        tracing::trace!(
            count = msgs.len(),
            "no raft transport configured; dropping messages"
        );
    }
}

impl<M: StateMachine> Driver<M> {
    fn start(
        cfg: EngineConfig,
        hook: Hook<M>,
        rx: Receiver<Input<M>>,
        shared: Arc<Shared>,
        state: Arc<RwLock<M>>,
    ) -> Result<Self, RaftLogError> {
        let path = cfg.db_path();
        let mut store = RedbStorage::open(&path, cfg.fsync)?;
        if !store.is_initialized() {
            let image = read_lock(&state).snapshot();
            store.bootstrap(&[NODE_ID], &image)?;
            tracing::info!(path = %path.display(), "created a new raft log");
        }
        let snap_index = store.snapshot_metadata().index;
        let image = store.snapshot_data()?;
        if !image.is_empty() {
            write_lock(&state)
                .restore(&image)
                .map_err(|detail| RaftLogError::Restore {
                    index: snap_index,
                    detail,
                })?;
        }
        let raft_cfg = cfg.raft_config(snap_index);
        raft_cfg.validate().map_err(raft_err)?;
        let mut node = RawNode::new(&raft_cfg, store, &raft_logger(NODE_ID)).map_err(raft_err)?;
        node.campaign().map_err(raft_err)?;
        Ok(Driver {
            cfg,
            node,
            hook,
            rx,
            shared,
            state,
            incarnation: incarnation_nonce(),
            next_id: 0,
            pending: HashMap::new(),
            retry: Vec::new(),
            applied: snap_index,
            was_leader: false,
            ready_tx: None,
        })
    }

    fn run_loop(&mut self) -> Result<(), RaftLogError> {
        let tick = Duration::from_millis(self.cfg.tick_ms);
        let mut next_tick = Instant::now() + tick;
        self.drive()?;
        self.publish();
        self.signal_ready();
        let mut hook_again = false;
        loop {
            let mut stop = self.shared.stop.load(Ordering::Acquire);
            let retrying = !self.retry.is_empty();
            let mut batch = std::mem::take(&mut self.retry);
            if !stop && !retrying {
                let wait = if hook_again {
                    Duration::ZERO
                } else {
                    next_tick.saturating_duration_since(Instant::now())
                };
                match self.rx.recv_timeout(wait) {
                    Ok(input) => stop |= push(&mut batch, input),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => stop = true,
                }
                // Group commit: take what is queued now, at most one queue's worth per cycle.
                for _ in 0..self.cfg.queue_capacity {
                    if stop {
                        break;
                    }
                    match self.rx.try_recv() {
                        Ok(input) => stop |= push(&mut batch, input),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => stop = true,
                    }
                }
            }
            if !batch.is_empty() {
                self.propose_batch(batch);
            }
            let now = Instant::now();
            let ticked = now >= next_tick;
            if ticked {
                self.node.tick();
                next_tick += tick;
                if next_tick <= now {
                    next_tick = now + tick;
                }
            }
            let applied = self.drive()?;
            hook_again = if applied || ticked || hook_again {
                self.run_hook()?
            } else {
                false
            };
            self.maybe_snapshot()?;
            self.publish();
            self.signal_ready();
            if stop {
                return Ok(());
            }
            if retrying && !self.retry.is_empty() {
                // Raft still refuses; let the log drain instead of spinning.
                std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// Packs proposals into entries of at most `max_entry_commands` commands and proposes them.
    fn propose_batch(&mut self, batch: Vec<Proposal<M>>) {
        if self.node.raft.state != StateRole::Leader {
            let lost = fail_all(batch, ProposeError::NotLeader);
            if lost > 0 {
                tracing::warn!(
                    commands = lost,
                    "not the raft leader; dropped fire-and-forget commands"
                );
            }
            return;
        }
        let at_ms = (self.cfg.clock)();
        let mut refused = false;
        for chunk in envelope::pack(batch, self.cfg.max_entry_commands, |p| p.cmds.len()) {
            let mut waiters = Vec::new();
            let mut groups = Vec::with_capacity(chunk.len());
            for p in chunk {
                let id = match p.reply {
                    Some(reply) => {
                        self.next_id += 1;
                        waiters.push((self.next_id, reply));
                        self.next_id
                    }
                    None => 0,
                };
                groups.push(Group { id, cmds: p.cmds });
            }
            let env = Envelope {
                v: ENVELOPE_VERSION,
                at_ms,
                origin: self.incarnation,
                groups,
            };
            // Once raft refused an entry, refuse the rest of the batch too, so retried
            // fire-and-forget commands keep their order.
            let result = if refused {
                Err(ProposeError::Busy)
            } else {
                envelope::encode(&env)
                    .map_err(ProposeError::Dropped)
                    .and_then(|data| {
                        self.node.propose(Vec::new(), data).map_err(|e| match e {
                            raft::Error::ProposalDropped => ProposeError::Busy,
                            other => {
                                ProposeError::Dropped(format!("raft refused the entry: {other}"))
                            }
                        })
                    })
            };
            refused |= result == Err(ProposeError::Busy);
            match result {
                Ok(()) => self.pending.extend(waiters),
                Err(err) => {
                    for (_, reply) in waiters {
                        let _ = reply.send(Err(err.clone()));
                    }
                    let orphans = env.groups.into_iter().filter(|g| g.id == 0);
                    if err == ProposeError::Busy {
                        self.retry.extend(orphans.map(|g| Proposal {
                            cmds: g.cmds,
                            reply: None,
                        }));
                    } else {
                        let lost: usize = orphans.map(|g| g.cmds.len()).sum();
                        if lost > 0 {
                            tracing::error!(commands = lost, error = %err, "dropped fire-and-forget commands");
                        }
                    }
                }
            }
        }
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
        send_messages(rd.take_messages());
        let snap = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        // Entries + hard state (+ snapshot) in one transaction, fsynced when raft needs it.
        self.node
            .mut_store()
            .persist(rd.entries(), rd.hs(), snap.as_ref(), rd.must_sync())?;
        if let Some(s) = &snap {
            self.install_snapshot(s)?;
        }
        // Their commit index came with this Ready's hard state, persisted just above.
        let mut applied = self.apply(rd.take_committed_entries())?;
        send_messages(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        send_messages(light.take_messages());
        applied |= self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(applied)
    }

    fn on_role(&mut self, role: StateRole) {
        let leader = role == StateRole::Leader;
        if self.was_leader && !leader {
            tracing::warn!(?role, "lost raft leadership");
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ProposeError::Dropped(
                    "leadership was lost before the command was applied; it may still be applied, check before retrying".into(),
                )));
            }
        } else if leader && !self.was_leader {
            tracing::debug!(term = self.node.raft.term, "became raft leader");
        }
        self.was_leader = leader;
    }

    /// Calls the hook (leader only) and proposes what it returns. Returns whether those
    /// commands were applied in this call (then the hook is due again).
    fn run_hook(&mut self) -> Result<bool, RaftLogError> {
        if self.node.raft.state != StateRole::Leader {
            return Ok(false);
        }
        let now_ms = (self.cfg.clock)();
        let cmds = {
            let mut machine = write_lock(&self.state);
            (self.hook)(&mut machine, now_ms)
        };
        if cmds.is_empty() {
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
        s.running.store(true, Ordering::Release);
    }

    /// Tells `Engine::open` we are ready: leader, and everything committed is applied,
    /// including this term's no-op (so the whole recovered log is in the state machine).
    fn signal_ready(&mut self) {
        let raft = &self.node.raft;
        let ready = raft.state == StateRole::Leader
            && self.applied >= raft.raft_log.committed
            && raft.raft_log.term(self.applied).ok() == Some(raft.term);
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

    /// Answers everything still outstanding, flushes the store and closes it.
    fn finish(mut self, result: Result<(), RaftLogError>) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.is_leader.store(false, Ordering::Release);
        let mut lost = 0usize;
        while let Ok(input) = self.rx.try_recv() {
            if let Input::Propose { cmds, reply } = input {
                lost += fail_all::<M>(vec![Proposal { cmds, reply }], ProposeError::Stopped);
            }
        }
        lost += self.retry.drain(..).map(|p| p.cmds.len()).sum::<usize>();
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Dropped(
                "the engine stopped before the command was applied; it may be applied after a restart".into(),
            )));
        }
        if lost > 0 {
            tracing::warn!(
                commands = lost,
                "raft engine stopped; dropped queued fire-and-forget commands"
            );
        }
        match result {
            Ok(()) => {
                if let Err(e) = self.node.mut_store().flush() {
                    tracing::error!(error = %e, "flushing the raft log at shutdown failed");
                }
            }
            Err(e) => match self.ready_tx.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                }
                None => {
                    tracing::error!(error = %e, "raft engine stopped on a fatal error; restart the node")
                }
            },
        }
        self.publish();
        self.shared.is_leader.store(false, Ordering::Release);
        self.shared.running.store(false, Ordering::Release);
        tracing::debug!(applied = self.applied, "raft engine stopped");
    }
}

/// Sends `err` to every waiter; returns how many fire-and-forget commands were lost.
fn fail_all<M: StateMachine>(batch: Vec<Proposal<M>>, err: ProposeError) -> usize {
    let mut lost = 0;
    for p in batch {
        match p.reply {
            Some(reply) => {
                let _ = reply.send(Err(err.clone()));
            }
            None => lost += p.cmds.len(),
        }
    }
    lost
}

fn push<M: StateMachine>(batch: &mut Vec<Proposal<M>>, input: Input<M>) -> bool {
    match input {
        Input::Propose { cmds, reply } => {
            batch.push(Proposal { cmds, reply });
            false
        }
        Input::Stop => true,
    }
}

#[cfg(test)]
mod tests;
