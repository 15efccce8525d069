//! # troupe-raft-log: the durable, replicated command log behind the scheduler
//!
//! A raft log (tikv `raft` 0.7, `RawNode`) persisted in one redb file that drives a generic
//! [`StateMachine`]. Today the group has a single voter (raft id 1), which is elected at open;
//! the storage, the bootstrap snapshot, snapshot installation and conf-change application are
//! written for several voters, only the transport is missing (see `driver::send_messages`).
//!
//! ## What it owns
//! - `data_dir/raft.redb` (exclusively: a second open fails with [`RaftLogError::InUse`]).
//! - One OS thread (`troupe-raft`) running the `RawNode` and the Ready loop; all fsyncs happen there.
//! - The state machine, shared as `Arc<RwLock<M>>`: readers take the read lock, the engine takes
//!   the write lock once per batch of committed entries (and for the hook).
//!
//! ## Invariants
//! - A proposal's outputs are delivered only after its entry was persisted (one redb
//!   `Durability::Immediate` transaction per Ready when `fsync` is on) and applied.
//! - Entries, the hard state and an incoming snapshot of one Ready are written in one transaction.
//! - The commit index is persisted with (Ready) or before (LightReady) the entries it covers are
//!   applied; the applied index is persisted only through snapshots, together with a commit index
//!   at least as high, so a restart never sees `applied > commit`.
//! - A fresh log starts from a synthetic snapshot at (index 1, term 1) with voters `[1]`.
//! - `apply` is deterministic: the leader stamps `at_ms` into each entry; apply never reads a clock.
//! - One raft entry carries many proposals (an `envelope::Envelope`); a proposal is never split
//!   across entries, so its commands are applied together or not at all.
//! - Waiters are matched by (incarnation nonce, group id), so entries replayed after a restart
//!   never answer a new caller. An undecodable entry is logged and skipped, never a panic.
//! - Storage errors are fatal for the engine (fail-stop); bad input never panics. The only
//!   asserts guard raft invariants (a gap in the appended log).
//!
//! ## Read in this order
//! 1. `lib.rs` (this file): [`StateMachine`], [`Hook`].
//! 2. `config.rs`: [`EngineConfig`] and the raft-rs settings derived from it.
//! 3. `engine.rs`: [`Engine`], [`EngineHandle`], [`EngineStatus`], the bounded input queue.
//! 4. `driver.rs`: the engine thread (startup, batching, the Ready loop, the hook, shutdown);
//!    `driver/apply.rs`: applying entries, conf changes, taking and installing snapshots.
//! 5. `envelope.rs`: the entry payload format and packing.
//! 6. `storage.rs`: the redb store and its write side; `storage/raft_impl.rs`: `raft::Storage`.
//! 7. `error.rs`, `logger.rs` (slog -> tracing bridge, target `raft`).
//!
//! Tests: `driver/tests.rs`, `storage/tests.rs`, `tests/engine.rs` (public API end to end).

mod config;
mod driver;
mod engine;
mod envelope;
mod error;
mod logger;
mod storage;

pub use config::{Clock, DB_FILE_NAME, EngineConfig};
pub use engine::{Engine, EngineHandle, EngineStatus, ProposeReceiver};
pub use error::{ProposeError, RaftLogError};

/// A deterministic state machine replicated by the log.
pub trait StateMachine: Send + Sync + 'static {
    /// One command; serialized with bincode (serde) into the raft entry. The format is not
    /// self-describing: only append enum variants, and avoid `#[serde(untagged)]`,
    /// `#[serde(flatten)]` and `skip_serializing_if` (bincode cannot decode them).
    type Command: serde::Serialize + serde::de::DeserializeOwned + Send + 'static;
    /// What applying a command returns to the proposer.
    type Output: Send + 'static;
    /// Applies one committed command. `at_ms` is the timestamp the leader stamped into the
    /// entry (never read a clock in apply).
    fn apply(&mut self, at_ms: u64, cmd: Self::Command) -> Self::Output;
    /// Serializes the whole state (used for snapshots and compaction).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state from a snapshot produced by [`StateMachine::snapshot`].
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// Called on the engine thread after every cycle in which entries were applied, and at least
/// once per tick, with write access to the state and the leader's clock (`now_ms`). Returns
/// commands to propose right away (the leader's planner lives here); return an empty `Vec`
/// when there is nothing to do. Called only while this node is the leader.
pub type Hook<M> = Box<dyn FnMut(&mut M, u64) -> Vec<<M as StateMachine>::Command> + Send>;
