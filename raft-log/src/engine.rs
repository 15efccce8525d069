//! The public face of the log: [`Engine`] (owns the thread) and [`EngineHandle`] (proposes,
//! reads, takes inbound raft messages).
//!
//! Callers talk to the engine thread through one bounded `sync_channel`; `try_send` failing
//! with `Full` is the backpressure signal ([`ProposeError::Busy`]). Inbound raft messages and
//! read barriers have a bounded queue of their own ([`Inbound`]), so a proposal flood (or
//! proposals held back while raft refuses them) cannot starve replication or reads; they wake
//! the thread with at most one [`Input::Wake`] in the main queue. Status is published by the
//! thread into atomics, so [`EngineHandle::status`] never waits for the thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio::sync::oneshot;

use crate::config::EngineConfig;
use crate::driver;
use crate::error::{ProposeError, RaftLogError};
use crate::wire_check::{self, Schema};
use crate::{Hook, StateMachine};

/// Where a waiting proposal's outputs go.
pub(crate) type Reply<O> = oneshot::Sender<Result<Vec<O>, ProposeError>>;

/// What a caller awaits after [`EngineHandle::propose`].
pub type ProposeReceiver<O> = oneshot::Receiver<Result<Vec<O>, ProposeError>>;

/// Where a read barrier's index goes.
pub(crate) type ReadReply = oneshot::Sender<Result<u64, ProposeError>>;

/// What a caller awaits after [`EngineHandle::read_index`].
pub type ReadReceiver = oneshot::Receiver<Result<u64, ProposeError>>;

/// Where a membership change's resulting voter list goes.
pub(crate) type ConfReply = oneshot::Sender<Result<Vec<u64>, ProposeError>>;

/// What a caller awaits after [`EngineHandle::change_membership`]: the sorted voters once the
/// change is applied.
pub type MembershipReceiver = oneshot::Receiver<Result<Vec<u64>, ProposeError>>;

/// One runtime membership change (a raft `ConfChangeV2` with a single change, left
/// automatically). Add a node as a learner first when it has a lot to catch up, then promote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds raft node `id` as a voter (or promotes a learner).
    AddVoter(u64),
    /// Adds raft node `id` as a learner (receives the log, does not vote).
    AddLearner(u64),
    /// Removes raft node `id` (voter or learner).
    Remove(u64),
}

impl MembershipChange {
    /// The raft id the change is about.
    pub fn node_id(self) -> u64 {
        match self {
            MembershipChange::AddVoter(id)
            | MembershipChange::AddLearner(id)
            | MembershipChange::Remove(id) => id,
        }
    }
}

/// Capacity of the inbound queue; beyond it raft messages are dropped and reads are `Busy`.
const NET_QUEUE_CAPACITY: usize = 1024;

/// What the inbound queue carries.
pub(crate) enum Inbound {
    /// A raft message from a peer, already decoded.
    Msg(Message),
    /// A linearizable read barrier (raft ReadIndex).
    Read(ReadReply),
}

/// One message to the engine thread.
pub(crate) enum Input<M: StateMachine> {
    /// Commands to replicate; `reply` is `None` for fire-and-forget proposals.
    Propose {
        cmds: Vec<M::Command>,
        reply: Option<Reply<M::Output>>,
    },
    /// A membership change (leader only).
    ConfChange {
        change: MembershipChange,
        reply: ConfReply,
    },
    /// Something waits in the inbound queue.
    Wake,
    /// Finish the current cycle, flush and exit.
    Stop,
}

/// Status counters, written by the engine thread only.
#[derive(Default)]
pub(crate) struct Shared {
    pub applied: AtomicU64,
    pub commit: AtomicU64,
    pub first_index: AtomicU64,
    pub last_index: AtomicU64,
    pub term: AtomicU64,
    pub snapshot_index: AtomicU64,
    pub commands_applied: AtomicU64,
    pub is_leader: AtomicBool,
    pub leader_id: AtomicU64,
    /// This node's raft id (set before the thread starts).
    pub id: AtomicU64,
    pub running: AtomicBool,
    /// Set by `Engine::shutdown`; checked by the thread every cycle.
    pub stop: AtomicBool,
    /// An [`Input::Wake`] is queued (or about to be); cleared by the thread when it takes the
    /// wake-up, before it drains the inbound queue (which it also does every cycle).
    pub wake_pending: AtomicBool,
    /// Sorted (voters, learners) of the applied conf state.
    pub members: Mutex<(Vec<u64>, Vec<u64>)>,
    /// Queue depth, latencies and sizes for metrics.
    pub stats: crate::stats::EngineStats,
    /// The open database (the engine thread holds the only strong reference) and its path,
    /// for readers of the committed history.
    pub db: Mutex<(std::sync::Weak<redb::Database>, std::path::PathBuf)>,
    /// Why the engine thread stopped, once it stopped on an error.
    pub failure: Mutex<Option<EngineFailure>>,
}

/// Why a running engine stopped (see [`EngineHandle::failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFailure {
    /// The disk failed (an I/O or storage error writing the log, a full disk, a failed fsync):
    /// the node should stop rather than reopen the log in a loop (fail-stop).
    pub disk: bool,
    /// The error, as [`RaftLogError`] prints it.
    pub message: String,
}

/// A point-in-time view of the log, read from atomics (no round trip to the engine thread).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineStatus {
    /// Index of the last applied entry.
    pub applied: u64,
    /// Commit index.
    pub commit: u64,
    /// First index still in the log (snapshot index + 1 after a compaction).
    pub first_index: u64,
    /// Index of the last entry in the log.
    pub last_index: u64,
    /// Current raft term.
    pub term: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Whether this node is the raft leader.
    pub is_leader: bool,
    /// Raft id of the current leader as this node knows it (0 = unknown).
    pub leader_id: u64,
    /// This node's raft id.
    pub id: u64,
    /// `applied - snapshot_index`.
    pub entries_since_snapshot: u64,
    /// Commands applied since this engine was opened (replay included).
    pub commands_applied: u64,
    /// False once the engine thread has stopped.
    pub running: bool,
    /// Voters of the applied configuration, sorted (empty on a joiner not yet caught up).
    pub voters: Vec<u64>,
    /// Learners of the applied configuration, sorted.
    pub learners: Vec<u64>,
}

/// Proposes commands and reads the status. Cheap to clone; `Send + Sync`.
pub struct EngineHandle<M: StateMachine> {
    tx: SyncSender<Input<M>>,
    net_tx: SyncSender<Inbound>,
    shared: Arc<Shared>,
    state: Arc<RwLock<M>>,
}

impl<M: StateMachine> Clone for EngineHandle<M> {
    fn clone(&self) -> Self {
        EngineHandle {
            tx: self.tx.clone(),
            net_tx: self.net_tx.clone(),
            shared: Arc::clone(&self.shared),
            state: Arc::clone(&self.state),
        }
    }
}

impl<M: StateMachine> EngineHandle<M> {
    /// Enqueues `cmds` as one proposal. The receiver resolves with one output per command, in
    /// order, once they are committed (fsynced) and applied. `Err(Busy)` at once when the queue
    /// is full. If the engine stops first, the receiver yields `Err(Stopped)` or is closed.
    pub fn propose(
        &self,
        cmds: Vec<M::Command>,
    ) -> Result<ProposeReceiver<M::Output>, ProposeError> {
        let (tx, rx) = oneshot::channel();
        if cmds.is_empty() {
            let _ = tx.send(Ok(Vec::new()));
            return Ok(rx);
        }
        self.send(cmds, Some(tx))?;
        Ok(rx)
    }

    /// Enqueues `cmds` without waiting for their outputs (hot path). Still `Err(Busy)` when the
    /// queue is full. Works on a follower too: raft forwards the entry to the leader (stamped
    /// with this node's clock); while no leader is known the commands are retried every tick.
    /// Once queued they are applied unless the engine stops, raft rejects the entry (too
    /// large), or a forwarded entry is lost on the way or by a leader change (at most once:
    /// callers that must know check the state and retry). Local losses are logged.
    pub fn propose_nowait(&self, cmds: Vec<M::Command>) -> Result<(), ProposeError> {
        if cmds.is_empty() {
            return Ok(());
        }
        self.send(cmds, None)
    }

    fn send(
        &self,
        cmds: Vec<M::Command>,
        reply: Option<Reply<M::Output>>,
    ) -> Result<(), ProposeError> {
        if self.shared.stop.load(Ordering::Acquire) || !self.shared.running.load(Ordering::Acquire)
        {
            return Err(ProposeError::Stopped);
        }
        // A follower cannot route outputs back to a waiter; fire-and-forget is forwarded.
        if reply.is_some() && !self.shared.is_leader.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader);
        }
        let stats = &self.shared.stats;
        // Counted before the send, so the engine thread's decrement never comes first.
        stats.queued_proposals.fetch_add(1, Ordering::Relaxed);
        let sent = self.enqueue(Input::Propose { cmds, reply });
        if let Err(e) = &sent {
            stats.queued_proposals.fetch_sub(1, Ordering::Relaxed);
            if *e == ProposeError::Busy {
                stats.busy_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        sent
    }

    /// Queue depth, latencies and snapshot size of the engine (atomics; never waits).
    pub fn stats(&self) -> &crate::stats::EngineStats {
        &self.shared.stats
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire) || !self.shared.running.load(Ordering::Acquire)
    }

    fn enqueue(&self, input: Input<M>) -> Result<(), ProposeError> {
        if self.stopped() {
            return Err(ProposeError::Stopped);
        }
        match self.tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::Stopped),
        }
    }

    /// An inbound raft message from a peer (the protobuf bytes its [`crate::Transport`] sent).
    /// Never blocks: dropped when the inbound queue is full (raft tolerates loss). Undecodable
    /// bytes, bytes the wire pre-check refuses (group tags, over [`crate::MESSAGE_BYTES_MAX`])
    /// and messages addressed to another id are logged and dropped.
    pub fn step(&self, msg: Vec<u8>) {
        if self.stopped() {
            return;
        }
        // Checked before protobuf 2.28 sees it (RUSTSEC-2024-0437, see `wire_check`).
        if let Err(error) = wire_check::check(Schema::Message, &msg) {
            tracing::warn!(bytes = msg.len(), %error, "dropping a refused raft message");
            return;
        }
        let m = match Message::parse_from_bytes(&msg) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(bytes = msg.len(), %error, "dropping an undecodable raft message");
                return;
            }
        };
        let id = self.shared.id.load(Ordering::Acquire);
        if m.to != id {
            tracing::warn!(
                to = m.to,
                id,
                from = m.from,
                "dropping a raft message addressed to another node"
            );
            return;
        }
        let from = m.from;
        if self.inbound(Inbound::Msg(m)).is_err() {
            tracing::debug!(from, "raft inbound queue full; dropping a message");
        }
    }

    fn inbound(&self, item: Inbound) -> Result<(), ProposeError> {
        match self.net_tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ProposeError::Stopped),
        }
        // Wake the thread unless a wake-up is already on its way. A full main queue means the
        // thread is busy anyway: it drains the inbound queue every cycle.
        if !self.shared.wake_pending.swap(true, Ordering::AcqRel)
            && self.tx.try_send(Input::Wake).is_err()
        {
            self.shared.wake_pending.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// A linearizable read barrier (raft ReadIndex): the receiver yields the leader's commit
    /// index at the time of the call once this node has applied at least that far, so reading
    /// [`Self::state`] afterwards sees every write committed before the call. Works on any
    /// member. `Err` at once when the engine is stopped, the inbound queue is full (`Busy`) or no
    /// leader is known (`Dropped`); the receiver yields `Err(Dropped)` when the leader changes
    /// before confirming, or after two election timeouts without an answer.
    pub fn read_index(&self) -> Result<ReadReceiver, ProposeError> {
        if self.shared.leader_id.load(Ordering::Acquire) == 0 && !self.stopped() {
            return Err(ProposeError::Dropped(
                "no raft leader is known (election in progress?); retry later".into(),
            ));
        }
        if self.stopped() {
            return Err(ProposeError::Stopped);
        }
        let (tx, rx) = oneshot::channel();
        self.inbound(Inbound::Read(tx))?;
        Ok(rx)
    }

    /// Proposes one membership change. Leader only (`NotLeader` elsewhere, `Stopped` when
    /// stopped, `Busy` when the queue is full). The receiver yields the sorted voters once the
    /// conf change entry is applied, or `Err(Dropped)` when raft ignored it (another change was
    /// still pending), rejected it at apply (removing the last voter, for example), or
    /// leadership was lost first (it may still be applied: check `status().voters`); the
    /// caller may retry. A new node must be running with [`crate::EngineConfig::join_existing`]
    /// and reachable through the transport; it catches up by snapshot.
    pub fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipReceiver, ProposeError> {
        if self.stopped() {
            return Err(ProposeError::Stopped);
        }
        if change.node_id() == 0 {
            return Err(ProposeError::Dropped(
                "raft id 0 is not a valid node id".into(),
            ));
        }
        if !self.shared.is_leader.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader);
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(Input::ConfChange { change, reply: tx })?;
        Ok(rx)
    }

    /// The current status (from atomics).
    pub fn status(&self) -> EngineStatus {
        status_of(&self.shared)
    }

    /// Why the engine thread stopped, if it stopped on an error.
    pub fn failure(&self) -> Option<EngineFailure> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Up to `max` committed entries from index `from` (archived ones included, see
    /// [`crate::EngineConfig::keep_compacted`]), decoded. Reads in a redb read transaction on
    /// the caller's thread: call it from a blocking context.
    pub fn read_log(
        &self,
        from: u64,
        max: usize,
    ) -> Result<crate::LogPage<M::Command>, RaftLogError> {
        let (db, path) = self.database()?;
        crate::history::read(&db, &path, from, max)
    }

    /// The stored snapshot: its index and the state machine's image (empty if none).
    pub fn stored_snapshot(&self) -> Result<(u64, Vec<u8>), RaftLogError> {
        let (db, path) = self.database()?;
        crate::history::snapshot(&db, &path)
    }

    fn database(&self) -> Result<(Arc<redb::Database>, std::path::PathBuf), RaftLogError> {
        let guard = self.shared.db.lock().map_err(|_| RaftLogError::Closed)?;
        let db = guard.0.upgrade().ok_or(RaftLogError::Closed)?;
        Ok((db, guard.1.clone()))
    }

    /// The replicated state. Readers take the read lock; apply takes the write lock per batch.
    pub fn state(&self) -> Arc<RwLock<M>> {
        Arc::clone(&self.state)
    }
}

fn status_of(s: &Shared) -> EngineStatus {
    let applied = s.applied.load(Ordering::Acquire);
    let snapshot_index = s.snapshot_index.load(Ordering::Acquire);
    let (voters, learners) = s
        .members
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    EngineStatus {
        applied,
        commit: s.commit.load(Ordering::Acquire),
        first_index: s.first_index.load(Ordering::Acquire),
        last_index: s.last_index.load(Ordering::Acquire),
        term: s.term.load(Ordering::Acquire),
        snapshot_index,
        is_leader: s.is_leader.load(Ordering::Acquire),
        leader_id: s.leader_id.load(Ordering::Acquire),
        id: s.id.load(Ordering::Acquire),
        entries_since_snapshot: applied.saturating_sub(snapshot_index),
        commands_applied: s.commands_applied.load(Ordering::Acquire),
        running: s.running.load(Ordering::Acquire),
        voters,
        learners,
    }
}

/// A running raft log: a dedicated OS thread owning the `RawNode`, the redb store and the
/// Ready loop. Dropping it (or [`Engine::shutdown`]) stops the thread and closes the database.
pub struct Engine<M: StateMachine> {
    handle: EngineHandle<M>,
    thread: Option<JoinHandle<()>>,
}

impl<M: StateMachine> Engine<M> {
    /// Opens (or creates) the log in `cfg.data_dir`, restores the latest snapshot into
    /// `machine`, replays the committed entries after it and starts the thread.
    /// A single voter elects itself and returns once it is leader and the replay (including
    /// this term's no-op) is applied. A member of a multi-voter group returns once the commit
    /// index persisted before the restart is applied; elections then run on ticks. A fresh
    /// [`EngineConfig::join_existing`] member returns at once (nothing to replay).
    pub fn open(cfg: EngineConfig, machine: M, hook: Hook<M>) -> Result<Self, RaftLogError> {
        let (handle, queues) = prepare(&cfg, machine)?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let state = Arc::clone(&handle.state);
            let shared = Arc::clone(&handle.shared);
            std::thread::Builder::new()
                .name("troupe-raft".into())
                .spawn(move || driver::run(cfg, hook, queues, shared, state, ready_tx))
                .map_err(|source| RaftLogError::Io {
                    path: "troupe-raft thread".into(),
                    source,
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine {
                handle,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(RaftLogError::Startup(match thread.join() {
                Ok(()) => "the thread exited without a result".into(),
                Err(panic) => panic_text(&panic),
            })),
        }
    }

    /// A handle for proposing, reading and stepping raft messages.
    pub fn handle(&self) -> EngineHandle<M> {
        self.handle.clone()
    }

    /// The replicated state (same as [`EngineHandle::state`]).
    pub fn state(&self) -> Arc<RwLock<M>> {
        self.handle.state()
    }

    /// The current status (same as [`EngineHandle::status`]).
    pub fn status(&self) -> EngineStatus {
        self.handle.status()
    }

    /// Stops the thread after its current cycle, fails queued proposals with `Stopped`,
    /// flushes the log (one fsync) and closes the database. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.handle.shared.stop.store(true, Ordering::Release);
        // If the queue is full the thread is awake anyway and sees the flag.
        let _ = self.handle.tx.try_send(Input::Stop);
        if let Err(panic) = thread.join() {
            tracing::error!(
                panic = %panic_text(&panic),
                "raft engine thread panicked; the state machine may be incomplete"
            );
        }
    }
}

/// The engine's queues, from the handle's side and from the driver's.
pub(crate) type Queues<M> = (mpsc::Receiver<Input<M>>, mpsc::Receiver<Inbound>);

/// Checks `cfg`, creates the data directory (when the log is a file) and builds the handle and
/// the queues behind it, for an engine about to start (on its thread or in a `Stepper`).
pub(crate) fn prepare<M: StateMachine>(
    cfg: &EngineConfig,
    machine: M,
) -> Result<(EngineHandle<M>, Queues<M>), RaftLogError> {
    cfg.validate()?;
    if cfg.disk.is_none() {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| RaftLogError::Io {
            path: cfg.data_dir.clone(),
            source,
        })?;
    }
    let state = Arc::new(RwLock::new(machine));
    let shared = Arc::new(Shared::default());
    shared.id.store(cfg.id, Ordering::Release);
    let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
    let (net_tx, net_rx) = mpsc::sync_channel(NET_QUEUE_CAPACITY);
    let handle = EngineHandle {
        tx,
        net_tx,
        shared,
        state,
    };
    Ok((handle, (rx, net_rx)))
}

impl<M: StateMachine> EngineHandle<M> {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl<M: StateMachine> Drop for Engine<M> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic with a non-string payload".into()
    }
}
