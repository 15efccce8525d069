//! A replica's Ready loop with asynchronous persistence, its snapshots and compaction.
//!
//! Each Ready is handled as raft-log's driver does: its messages go out, a snapshot it carries
//! is installed, its committed entries are applied, its entries and hard state are written,
//! then (`advance_append_async`) the replica moves on while the write is synced. The sync
//! completes `sync_ms` later; only then are the Ready's persisted messages (votes, append
//! answers) sent and raft told (`on_persist_ready`). A server that crashes before the sync
//! loses the write, and nobody was told it had it.
//!
//! Every `snap_every` applied entries (or when a leader needs a snapshot for a follower behind
//! the log) the replica snapshots its state with the real state machine
//! (`troupe_actors::machine::Machine`, the bytes raft-log stores) and compacts the log up to
//! it; a follower that receives it restores it with `Machine::restore`.

use crate::disk::Disk;
use crate::net::{Addr, Payload, Reply};
use crate::replica::{Cx, Replica};
use raft::eraftpb::{Message, MessageType, Snapshot, SnapshotMetadata};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};
use troupe_actors::machine::Machine;
use troupe_raft_log::StateMachine;
use troupe_scheduler::State;

/// The most Readies handled in one drive (raft produces a bounded number; this only bounds
/// the loop).
const READIES_MAX: usize = 1_000;

/// A Ready written and not yet synced.
#[derive(Debug)]
pub struct Inflight {
    number: u64,
    due_ms: u64,
    /// The disk's write count after this Ready's writes.
    writes: u64,
    /// Sent once the writes are durable.
    msgs: Vec<Message>,
}

/// The state a snapshot holds, decoded by the real state machine.
pub fn restore(data: &[u8]) -> Result<State, String> {
    let mut m = Machine::default();
    m.restore(data)?;
    Ok(m.state)
}

/// The bytes raft-log stores for a snapshot of `state` (the engine's own path).
fn snapshot_bytes(state: &State) -> Vec<u8> {
    let m = Machine {
        state: state.clone(),
        ..Default::default()
    };
    (m.snapshot_image())()
}

/// Sends raft messages. Like raft-log's driver, a `MsgSnapshot` counts as delivered once handed
/// to the network: if it is lost, raft probes the follower and sends a fresh one.
fn send(node: &mut RawNode<Disk>, cx: &mut Cx, me: Addr, msgs: Vec<Message>) {
    for m in msgs {
        let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
        cx.net
            .send(cx.now, me, Addr::Replica(to), Payload::Raft(Box::new(m)));
        if snapshot {
            node.report_snapshot(to, SnapshotStatus::Finish);
        }
    }
}

impl Replica {
    /// Completes due syncs and handles Readies until raft has none.
    pub fn drive(&mut self, cx: &mut Cx) {
        let Some(mut node) = self.node.take() else {
            return;
        };
        let me = Addr::Replica(self.id);
        if !self.complete_syncs(&mut node, cx) {
            return self.fail_stop(cx);
        }
        for _ in 0..READIES_MAX {
            if !node.has_ready() {
                break;
            }
            let mut rd = node.ready();
            send(&mut node, cx, me, rd.take_messages());
            self.confirmed(rd.take_read_states());
            if !rd.snapshot().is_empty() {
                self.install(rd.snapshot().clone(), cx);
            }
            let leader = node.raft.state == StateRole::Leader;
            self.apply(rd.take_committed_entries(), leader, cx);
            self.disk.append(rd.entries());
            if let Some(hs) = rd.hs() {
                self.disk.set_hardstate(hs.clone());
            }
            let due_ms = cx.now + self.sync_ms;
            self.inflight.push_back(Inflight {
                number: rd.number(),
                due_ms,
                writes: self.disk.written(),
                msgs: rd.take_persisted_messages(),
            });
            node.advance_append_async(rd);
            if !self.complete_syncs(&mut node, cx) {
                return self.fail_stop(cx);
            }
        }
        self.answer_reads(cx);
        self.maybe_snapshot(&node, cx);
        let leader = node.raft.state == StateRole::Leader;
        let term = node.raft.term;
        self.node = Some(node);
        if leader {
            cx.checks.leader(cx.now, term, self.id);
        }
        self.on_role(leader, term, cx);
    }

    /// Syncs the writes of every due Ready and sends what waited on them. False: the sync
    /// failed (a disk fault), and the server must stop.
    fn complete_syncs(&mut self, node: &mut RawNode<Disk>, cx: &mut Cx) -> bool {
        let me = Addr::Replica(self.id);
        let mut last = None;
        while self.inflight.front().is_some_and(|f| f.due_ms <= cx.now) {
            let Some(f) = self.inflight.pop_front() else {
                break;
            };
            if self.disk_fault {
                return false;
            }
            self.disk.sync(f.writes);
            send(node, cx, me, f.msgs);
            last = Some(f.number);
        }
        if let Some(n) = last {
            node.on_persist_ready(n);
        }
        // Applied, as raft counts it, cannot pass what is persisted here (an installed
        // snapshot counts once its write is synced).
        let log = &node.raft.raft_log;
        let to = self.applied.min(log.persisted).min(log.committed);
        if to > log.applied {
            node.advance_apply_to(to);
        }
        true
    }

    /// An fsync failed: the server stops, as raft-log's engine does on a storage error.
    fn fail_stop(&mut self, cx: &mut Cx) {
        let lost = self.crash();
        cx.checks.count("sync failed");
        cx.trace.line(
            cx.now,
            format_args!(
                "r{} sync fails: stops, {lost} unsynced writes lost",
                self.id
            ),
        );
    }

    /// A snapshot the leader sent (this replica is behind its compacted log).
    fn install(&mut self, snap: Snapshot, cx: &mut Cx) {
        let index = snap.get_metadata().index;
        match restore(snap.get_data()) {
            Ok(state) => {
                self.state = state;
                self.applied = index;
                cx.checks.count("snapshot installed");
                cx.trace.line(
                    cx.now,
                    format_args!("r{} installs snapshot {index}", self.id),
                );
                cx.checks.hash_at(cx.now, self.id, index, self.state.hash());
            }
            Err(why) => cx.checks.fail(
                cx.now,
                format!("r{}: snapshot {index} does not restore: {why}", self.id),
            ),
        }
        self.disk.install(snap);
    }

    /// Snapshots the applied state and compacts the log when due (like raft-log's
    /// `maybe_snapshot`: every `snap_every` entries, or when a leader asked for a newer one).
    fn maybe_snapshot(&mut self, node: &RawNode<Disk>, cx: &mut Cx) {
        let stored = self.disk.snapshot_meta().index;
        let wanted = self.disk.take_wanted();
        let due =
            self.applied >= stored + self.snap_every || (wanted > stored && self.applied >= wanted);
        if !due || self.applied <= stored {
            return;
        }
        let Ok(term) = node.store().term(self.applied) else {
            return;
        };
        let mut snap = Snapshot::default();
        snap.set_data(snapshot_bytes(&self.state).into());
        snap.set_metadata(SnapshotMetadata {
            index: self.applied,
            term,
            conf_state: Some(self.disk.conf_state()).into(),
            ..Default::default()
        });
        self.disk.compact(snap);
        cx.checks.count("snapshot taken");
        cx.trace.line(
            cx.now,
            format_args!("r{} snapshots at {} and compacts", self.id, self.applied),
        );
    }

    fn on_role(&mut self, leader: bool, term: u64, cx: &mut Cx) {
        match (leader, self.leader_since.is_some()) {
            (true, false) => {
                self.leader_since = Some(cx.now + self.skew_ms);
                cx.checks.count("leader elected");
                cx.trace
                    .line(cx.now, format_args!("r{} leads term {term}", self.id));
            }
            (false, true) => {
                self.leader_since = None;
                self.planner.reset();
                self.judge.follow();
                cx.trace.line(
                    cx.now,
                    format_args!("r{} steps down (term {term})", self.id),
                );
                self.drop_reads(cx);
                let me = Addr::Replica(self.id);
                for (_, (to, op)) in std::mem::take(&mut self.pending) {
                    let reply = Reply::Indeterminate;
                    cx.net.send(cx.now, me, to, Payload::Reply { op, reply });
                }
            }
            _ => {}
        }
    }
}
