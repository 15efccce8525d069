//! # troupe-raft-log: the durable, replicated command log behind the scheduler
//!
//! A raft log (tikv `raft` 0.7, `RawNode`) persisted in one redb file that drives a generic
//! [`StateMachine`]. The default is a single voter (raft id 1), elected at open.
//!
//! ## Several voters
//! Give each member its own [`EngineConfig::id`], the same [`EngineConfig::voters`] (3 or 5)
//! and a [`Transport`]. Outbound messages go to `Transport::send(to, bytes)` from the engine
//! thread; the receiving node hands the bytes to [`EngineHandle::step`] (bounded queue, drops
//! when full, never blocks; raft copes with loss). Elections run on ticks (pre-vote and
//! check-quorum on); [`Engine::open`] returns once the locally committed log is replayed,
//! without waiting for a leader. [`EngineStatus`] says who leads (`leader_id`).
//! - Proposals with a waiter ([`EngineHandle::propose`]) need the leader (`NotLeader`
//!   elsewhere). Fire-and-forget ones ([`EngineHandle::propose_nowait`]) may be made on any
//!   member: raft forwards them to the leader (at most once: a leader change can lose them).
//! - [`EngineHandle::read_index`] is a linearizable read barrier on any member (raft
//!   ReadIndex): once it resolves, the local state holds every write committed before the call.
//! - The [`Hook`] runs on every member; only the leader's returned commands are proposed.
//! - A member behind the leader's compacted log gets the leader's latest stored snapshot in a
//!   `MsgSnapshot` (one message: keep state machine snapshots well below the transport's frame
//!   limit).
//!
//! ## Membership changes
//! [`EngineHandle::change_membership`] (leader only) proposes one [`MembershipChange`] as a
//! raft `ConfChangeV2` and resolves once it is applied. Committed conf changes (v2 and v1) are
//! applied on every member and the conf state is persisted; [`EngineStatus`] shows `voters`
//! and `learners`. A new node opens with [`EngineConfig::join_existing`]: its fresh log stays
//! empty until the leader adds it and sends a snapshot that includes it in its conf state (the
//! leader takes a fresh one when its stored snapshot predates the change). raft silently
//! replaces a conf change proposed while another is pending by an empty entry: the waiter
//! then gets `Dropped`. A removed node keeps running as a non-member (it is no longer sent
//! anything); a leader that removed itself hands leadership to the most up-to-date voter.
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
//! - A fresh log starts from a synthetic snapshot at (index 1, term 1) with the configured
//!   voters, so members that join later can start empty and catch up by snapshot.
//! - `apply` is deterministic: the proposer stamps `at_ms` into each entry (the leader, or a
//!   follower forwarding a fire-and-forget proposal); apply never reads a clock.
//! - One raft entry carries many proposals (an `envelope::Envelope`); a proposal is never split
//!   across entries, so its commands are applied together or not at all.
//! - Waiters are matched by (incarnation nonce, group id), so entries replayed after a restart
//!   never answer a new caller. An undecodable entry is logged and skipped, never a panic.
//! - Storage errors are fatal for the engine (fail-stop); bad input never panics. The only
//!   asserts guard raft invariants (a gap in the appended log). Undecodable network bytes are
//!   logged and dropped; a decodable message that makes raft-rs panic (only a broken peer
//!   sends one) stops the engine like a storage error.
//!
//! ## Read in this order
//! 1. `lib.rs` (this file): [`StateMachine`], [`Hook`], [`Transport`].
//! 2. `config.rs`: [`EngineConfig`] and the raft-rs settings derived from it.
//! 3. `engine.rs`: [`Engine`], [`EngineHandle`], [`EngineStatus`], the bounded input queues.
//! 4. `driver.rs`: the engine thread (startup, the Ready loop, the hook, shutdown);
//!    `driver/propose.rs`: packing proposals into entries; `driver/net.rs`: outbound and
//!    inbound raft messages, read barriers; `driver/apply.rs`: applying entries, conf changes,
//!    taking and installing snapshots; `driver/membership.rs`: proposing membership changes,
//!    answering them, a removed leader's hand-over.
//! 5. `envelope.rs`: the entry payload format and packing.
//! 6. `storage.rs`: the redb store and its write side; `storage/raft_impl.rs`: `raft::Storage`.
//! 7. `error.rs`, `logger.rs` (slog -> tracing bridge, target `raft`), `stats.rs` (queue depth,
//!    commit and fsync latency histograms, snapshot size: [`EngineStats`], for an exporter).
//!
//! Tests: `driver/tests.rs`, `storage/tests.rs`, `tests/engine.rs` (public API end to end,
//! single voter), `tests/cluster.rs` (three engines over the in-memory transport of
//! `tests/common`), `tests/membership.rs` (joining, promoting, removing members).

mod config;
mod driver;
mod engine;
mod envelope;
mod error;
mod faults;
#[cfg(test)]
mod fuzz;
mod history;
mod logger;
mod memdisk;
pub mod stats;
mod storage;
mod wire_check;

pub use config::{Clock, DB_FILE_NAME, EngineConfig};
pub use driver::Stepper;
pub use engine::{
    Engine, EngineFailure, EngineHandle, EngineStatus, MembershipChange, MembershipReceiver,
    ProposeReceiver, ReadReceiver,
};
pub use error::{ProposeError, RaftLogError};
pub use faults::{DiskFaults, FSYNC_DELAY_MAX_MS};
pub use history::{LogEntry, LogPage};
pub use memdisk::{MemDisk, MemDiskStats};
pub use stats::{EngineStats, HistogramSnapshot, LatencyHistogram};
pub use wire_check::MESSAGE_BYTES_MAX;

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
    /// A copy of the state as of now, serialized later on the snapshot thread: the engine
    /// thread only takes the copy, so heartbeats and apply go on while a snapshot of a large
    /// state is built. The default serializes right here; a state whose clone is cheap
    /// (persistent maps) returns a clone and serializes it in the closure. The bytes must be
    /// what [`StateMachine::snapshot`] would have returned at this point.
    fn snapshot_image(&self) -> SnapshotImage {
        let bytes = self.snapshot();
        Box::new(move || bytes)
    }
    /// Replaces the whole state from a snapshot produced by [`StateMachine::snapshot`].
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
    /// Where in the log the state is: called with the index of each entry before its commands
    /// are applied, and with the snapshot's index right after a restore. The default ignores
    /// it; the simulator's checks key what they record on it (`sim/src/engine/checked.rs`).
    fn at_index(&mut self, _index: u64) {}
}

/// Builds a snapshot's bytes; run on the `troupe-snapshot` thread.
pub type SnapshotImage = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// Called on the engine thread of every member (leader or not) after every cycle in which
/// entries were applied, and at least once per tick, with write access to the state, this
/// node's clock (`now_ms`) and whether this node is the raft leader right now. Followers use it
/// to drain effects of applied commands. Returns commands to propose right away (the leader's
/// planner lives here); they are proposed only when `is_leader`, and discarded otherwise.
/// Return an empty `Vec` when there is nothing to do.
pub type Hook<M> = Box<dyn FnMut(&mut M, u64, bool) -> Vec<<M as StateMachine>::Command> + Send>;

/// Outbound raft messages of a multi-voter group. Called on the engine thread: must not block
/// (queue or cast and return). Delivery may lose, duplicate or reorder messages (raft copes);
/// the receiving node passes the bytes to [`EngineHandle::step`].
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` (the protobuf bytes of a `raft::eraftpb::Message`) to raft node `to`.
    fn send(&self, to: u64, msg: Vec<u8>);
}
