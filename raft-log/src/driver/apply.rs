//! Applying committed entries, installing and taking snapshots (part of the engine thread).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use protobuf::Message as PbMessage;
use raft::Storage;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Snapshot, SnapshotMetadata,
};

use super::{Answer, Driver, raft_err, read_lock, write_lock};
use crate::StateMachine;
use crate::envelope::{self, Envelope};
use crate::error::RaftLogError;
use crate::wire_check::{self, Schema};

/// A snapshot may start only after 10 times its last cost has passed since it (10 % of the
/// engine thread's time at most).
const SNAPSHOT_COST_SHARE: u32 = 10;
/// Snapshots cheaper than this are never held back.
const SNAPSHOT_COST_PACED: std::time::Duration = std::time::Duration::from_millis(20);

impl<M: StateMachine> Driver<M> {
    /// A snapshot sent by the leader (`MsgSnapshot`, to a follower that is behind the leader's
    /// compacted log): replaces the whole state. Already persisted by the caller.
    pub(super) fn install_snapshot(&mut self, s: &Snapshot) -> Result<(), RaftLogError> {
        let index = s.get_metadata().index;
        {
            let mut machine = write_lock(&self.state);
            machine
                .restore(s.get_data())
                .map_err(|detail| RaftLogError::Restore { index, detail })?;
            machine.at_index(index);
        }
        self.applied = index;
        self.inflight.clear();
        self.shared
            .stats
            .snapshot_bytes
            .store(s.get_data().len() as u64, Ordering::Relaxed);
        let cs = s.get_metadata().get_conf_state();
        tracing::info!(index, voters = ?cs.get_voters(), learners = ?cs.get_learners(), "installed a raft snapshot from the leader");
        Ok(())
    }

    /// Applies committed entries under one write lock, then answers the waiters.
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<bool, RaftLogError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(false);
        };
        let state = Arc::clone(&self.state);
        let mut replies = Vec::new();
        let mut conf_answers = Vec::new();
        let mut commands = 0u64;
        {
            let mut machine = write_lock(&state);
            for e in &entries {
                let outcome = match e.get_entry_type() {
                    // An empty normal entry is a new leader's no-op (or a conf change raft
                    // ignored): nothing to apply.
                    EntryType::EntryNormal if e.get_data().is_empty() => None,
                    EntryType::EntryNormal => {
                        commands += self.apply_normal(&mut machine, e, &mut replies)?;
                        None
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        Some(self.apply_conf_change(e)?)
                    }
                };
                self.conf_entry_applied(e, outcome.as_ref(), &mut conf_answers);
                self.applied = e.index;
            }
        }
        debug_assert_eq!(self.applied, last);
        self.commit_timed();
        self.shared
            .commands_applied
            .fetch_add(commands, Ordering::Release);
        // Publish first, so a caller that got its outputs sees a status that includes them.
        self.publish();
        for (reply, outputs) in replies {
            let _ = reply.send(Ok(outputs));
        }
        for (reply, answer) in conf_answers {
            let _ = reply.send(answer);
        }
        Ok(true)
    }

    fn apply_normal(
        &mut self,
        machine: &mut M,
        e: &Entry,
        replies: &mut Vec<Answer<M::Output>>,
    ) -> Result<u64, RaftLogError> {
        let env: Envelope<M::Command> =
            envelope::decode(e.get_data()).map_err(|detail| RaftLogError::Undecodable {
                index: e.index,
                detail,
            })?;
        let mine = env.origin == self.incarnation;
        let mut count = 0u64;
        machine.at_index(e.index);
        for group in env.groups {
            count += group.cmds.len() as u64;
            let waiter = if mine && group.id != 0 {
                self.pending.remove(&group.id)
            } else {
                None
            };
            match waiter {
                Some(reply) => {
                    let outputs = group
                        .cmds
                        .into_iter()
                        .map(|cmd| machine.apply(env.at_ms, cmd))
                        .collect();
                    replies.push((reply, outputs));
                }
                None => {
                    for cmd in group.cmds {
                        machine.apply(env.at_ms, cmd);
                    }
                }
            }
        }
        Ok(count)
    }

    /// Applies a conf change entry (v1 or v2) to raft and persists the new conf state. An
    /// invalid one (refused by the wire pre-check, undecodable, or refused by raft) is logged
    /// and skipped: `Ok(Err(why))`. Its bytes came from a peer inside an entry, so they get the
    /// same pre-check as a raft message (`wire_check`).
    fn apply_conf_change(&mut self, e: &Entry) -> Result<Result<ConfState, String>, RaftLogError> {
        let result = if e.get_entry_type() == EntryType::EntryConfChange {
            wire_check::check(Schema::ConfChange, e.get_data())
                .map_err(|err| err.to_string())
                .and_then(|()| {
                    ConfChange::parse_from_bytes(e.get_data()).map_err(|err| err.to_string())
                })
                .and_then(|cc| {
                    self.node
                        .apply_conf_change(&cc)
                        .map_err(|err| err.to_string())
                })
        } else {
            wire_check::check(Schema::ConfChangeV2, e.get_data())
                .map_err(|err| err.to_string())
                .and_then(|()| {
                    ConfChangeV2::parse_from_bytes(e.get_data()).map_err(|err| err.to_string())
                })
                .and_then(|cc| {
                    self.node
                        .apply_conf_change(&cc)
                        .map_err(|err| err.to_string())
                })
        };
        match result {
            Ok(cs) => {
                tracing::info!(index = e.index, voters = ?cs.get_voters(), learners = ?cs.get_learners(), "applied a raft conf change");
                let before = self.node.store().conf_state().clone();
                self.node.mut_store().set_conf_state(cs.clone())?;
                self.after_conf_change(&before, &cs);
                Ok(Ok(cs))
            }
            Err(error) => {
                tracing::error!(index = e.index, %error, "skipping an invalid raft conf change");
                Ok(Err(error))
            }
        }
    }

    /// Snapshots the state machine at `applied` and compacts the log when due, or when raft
    /// asked for a newer snapshot than the stored one. The engine thread only takes a copy of
    /// the state ([`StateMachine::snapshot_image`]); the `troupe-snapshot` thread serializes it,
    /// and a later cycle stores it and compacts ([`Self::finish_snapshot`]).
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), RaftLogError> {
        if self.building.is_some() {
            return self.finish_snapshot();
        }
        let store = self.node.store();
        let snap_index = store.snapshot_metadata().index;
        let behind = self.applied.saturating_sub(snap_index);
        // Snapshots of a large state are paced by what they cost: at most a tenth of the time
        // goes to building them (unless the log grew 100 intervals past the last one).
        // A snapshot raft asks for (a follower behind the log) is never held back.
        let now = self.cfg.time.now();
        let paced = self.last_snapshot.is_some_and(|(at, cost)| {
            cost >= SNAPSHOT_COST_PACED
                && now.saturating_duration_since(at) < cost * SNAPSHOT_COST_SHARE
                && behind < self.cfg.snapshot_every_entries.saturating_mul(100)
        });
        let wanted = store.take_snapshot_request();
        let due = (behind >= self.cfg.snapshot_every_entries && !paced)
            || (wanted > snap_index && self.applied >= wanted);
        if !due || self.applied <= snap_index {
            return Ok(());
        }
        let meta = SnapshotMetadata {
            index: self.applied,
            term: store.term(self.applied).map_err(raft_err)?,
            conf_state: Some(store.conf_state().clone()).into(),
            ..Default::default()
        };
        let started = now;
        let image = read_lock(&self.state).snapshot_image();
        let copied = self.cfg.time.now().saturating_duration_since(started);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let index = meta.index;
        if self.snapshot_thread {
            std::thread::Builder::new()
                .name("troupe-snapshot".into())
                .spawn(move || {
                    let _ = tx.send(image());
                })
                .map_err(|e| RaftLogError::SnapshotFailed {
                    index,
                    detail: format!("cannot start the snapshot thread: {e}"),
                })?;
        } else {
            // No threads (a `Stepper`): built here, stored by a later cycle all the same.
            let _ = tx.send(image());
        }
        tracing::debug!(
            index,
            copy_ms = copied.as_millis() as u64,
            "raft snapshot started"
        );
        self.building = Some(Building { meta, started, rx });
        Ok(())
    }

    /// Stores the snapshot the snapshot thread built, once it is ready, and compacts the log.
    /// A snapshot the leader installed meanwhile supersedes it (it is then dropped).
    fn finish_snapshot(&mut self) -> Result<(), RaftLogError> {
        let Some(b) = self.building.as_ref() else {
            return Ok(());
        };
        let image = match b.rx.try_recv() {
            Ok(image) => image,
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(RaftLogError::SnapshotFailed {
                    index: b.meta.index,
                    detail: "the state machine panicked while serializing".into(),
                });
            }
        };
        let Some(Building { meta, started, .. }) = self.building.take() else {
            return Ok(());
        };
        let index = meta.index;
        if index <= self.node.store().snapshot_metadata().index {
            tracing::debug!(index, "raft snapshot superseded by a newer one; dropped");
            return Ok(());
        }
        let clock = self.cfg.time.clone();
        let (bytes, built) = (image.len(), clock.now().saturating_duration_since(started));
        let saving = clock.now();
        self.node.mut_store().save_snapshot(meta, &image, index)?;
        self.shared
            .stats
            .snapshot_bytes
            .store(bytes as u64, Ordering::Relaxed);
        let done = clock.now();
        self.last_snapshot = Some((done, done.saturating_duration_since(started)));
        tracing::debug!(
            index,
            bytes,
            built_ms = built.as_millis() as u64,
            save_ms = done.saturating_duration_since(saving).as_millis() as u64,
            "raft snapshot taken, log compacted"
        );
        Ok(())
    }
}

/// A snapshot being built off the engine thread.
pub(super) struct Building {
    meta: SnapshotMetadata,
    started: Instant,
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
}
