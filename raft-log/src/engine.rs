//! The public face of the log: [`Engine`] (owns the thread) and [`EngineHandle`] (proposes).
//!
//! Callers talk to the engine thread through one bounded `sync_channel`; `try_send` failing
//! with `Full` is the backpressure signal ([`ProposeError::Busy`]). Status is published by the
//! thread into atomics, so [`EngineHandle::status`] never waits for the thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::EngineConfig;
use crate::driver;
use crate::error::{ProposeError, RaftLogError};
use crate::{Hook, StateMachine};

/// Where a waiting proposal's outputs go.
pub(crate) type Reply<O> = oneshot::Sender<Result<Vec<O>, ProposeError>>;

/// What a caller awaits after [`EngineHandle::propose`].
pub type ProposeReceiver<O> = oneshot::Receiver<Result<Vec<O>, ProposeError>>;

/// One message to the engine thread.
pub(crate) enum Input<M: StateMachine> {
    /// Commands to replicate; `reply` is `None` for fire-and-forget proposals.
    Propose {
        cmds: Vec<M::Command>,
        reply: Option<Reply<M::Output>>,
    },
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
    pub running: AtomicBool,
    /// Set by `Engine::shutdown`; checked by the thread every cycle.
    pub stop: AtomicBool,
}

/// A point-in-time view of the log, read from atomics (no round trip to the engine thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// `applied - snapshot_index`.
    pub entries_since_snapshot: u64,
    /// Commands applied since this engine was opened (replay included).
    pub commands_applied: u64,
    /// False once the engine thread has stopped.
    pub running: bool,
}

/// Proposes commands and reads the status. Cheap to clone; `Send + Sync`.
pub struct EngineHandle<M: StateMachine> {
    tx: SyncSender<Input<M>>,
    shared: Arc<Shared>,
    state: Arc<RwLock<M>>,
}

impl<M: StateMachine> Clone for EngineHandle<M> {
    fn clone(&self) -> Self {
        EngineHandle {
            tx: self.tx.clone(),
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
    /// queue is full. Once queued they are applied unless the engine stops or raft rejects the
    /// entry (too large, or no longer leader); such losses are logged at warn/error level.
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
        if !self.shared.is_leader.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader);
        }
        match self.tx.try_send(Input::Propose { cmds, reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::Stopped),
        }
    }

    /// The current status (from atomics).
    pub fn status(&self) -> EngineStatus {
        status_of(&self.shared)
    }

    /// The replicated state. Readers take the read lock; apply takes the write lock per batch.
    pub fn state(&self) -> Arc<RwLock<M>> {
        Arc::clone(&self.state)
    }
}

fn status_of(s: &Shared) -> EngineStatus {
    let applied = s.applied.load(Ordering::Acquire);
    let snapshot_index = s.snapshot_index.load(Ordering::Acquire);
    EngineStatus {
        applied,
        commit: s.commit.load(Ordering::Acquire),
        first_index: s.first_index.load(Ordering::Acquire),
        last_index: s.last_index.load(Ordering::Acquire),
        term: s.term.load(Ordering::Acquire),
        snapshot_index,
        is_leader: s.is_leader.load(Ordering::Acquire),
        entries_since_snapshot: applied.saturating_sub(snapshot_index),
        commands_applied: s.commands_applied.load(Ordering::Acquire),
        running: s.running.load(Ordering::Acquire),
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
    /// `machine`, replays the committed entries after it, elects itself (single voter, id 1) and
    /// starts the thread. Returns once this node is leader and the replay is applied.
    pub fn open(cfg: EngineConfig, machine: M, hook: Hook<M>) -> Result<Self, RaftLogError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| RaftLogError::Io {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let state = Arc::new(RwLock::new(machine));
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let state = Arc::clone(&state);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("troupe-raft".into())
                .spawn(move || driver::run(cfg, hook, rx, shared, state, ready_tx))
                .map_err(|source| RaftLogError::Io {
                    path: "troupe-raft thread".into(),
                    source,
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine {
                handle: EngineHandle { tx, shared, state },
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

    /// A handle for proposing and reading the status.
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
