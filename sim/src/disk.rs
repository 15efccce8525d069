//! A server's simulated disk: raft's log, hard state, conf state and the latest snapshot (the
//! state machine's own bytes, `troupe_actors::machine::Machine::snapshot`), behind raft-rs's
//! `Storage` trait. Writes land in a page cache that raft reads at once; a write is durable only
//! once a later sync covers it. A crash keeps only what was synced, so a server that crashes
//! between a write and its sync loses that write, as a real process does without an fsync.
//!
//! Compaction works like raft-log's: a snapshot of the applied state replaces every entry up to
//! its index, and a follower behind it is sent the snapshot (`Storage::snapshot` answers
//! "temporarily unavailable" and records the request when the stored one is too old, and the
//! replica builds a newer one).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::rc::Rc;

/// The log as one side of the disk holds it.
#[derive(Debug, Clone, Default)]
struct Log {
    hs: HardState,
    cs: ConfState,
    /// Index 0: none yet. Entries start right after its index.
    snap: Snapshot,
    entries: Vec<Entry>,
}

/// One write, journaled until a sync makes it durable.
#[derive(Debug, Clone)]
enum Write {
    Append(Vec<Entry>),
    HardState(HardState),
    Commit(u64),
    ConfState(ConfState),
    /// A snapshot the leader sent: it replaces the log.
    Install(Snapshot),
    /// A snapshot of our own applied state: the entries up to its index go.
    Compact(Snapshot),
}

impl Log {
    fn snap_index(&self) -> u64 {
        self.snap.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snap_index() + 1
    }

    fn last(&self) -> u64 {
        self.snap_index() + self.entries.len() as u64
    }

    fn apply(&mut self, w: &Write) {
        match w {
            Write::Append(ents) => {
                let Some(head) = ents.iter().position(|e| e.index >= self.first()) else {
                    return;
                };
                let ents = &ents[head..];
                let keep = (ents[0].index - self.first()) as usize;
                assert!(keep <= self.entries.len(), "a gap in the raft log");
                self.entries.truncate(keep);
                self.entries.extend_from_slice(ents);
            }
            Write::HardState(hs) => self.hs = hs.clone(),
            Write::Commit(c) => self.hs.commit = *c,
            Write::ConfState(cs) => self.cs = cs.clone(),
            Write::Install(s) => {
                let m = s.get_metadata();
                self.entries.clear();
                self.hs.commit = self.hs.commit.max(m.index);
                self.hs.term = self.hs.term.max(m.term);
                self.cs = m.get_conf_state().clone();
                self.snap = s.clone();
            }
            Write::Compact(s) => {
                let index = s.get_metadata().index;
                if index <= self.snap_index() || index > self.last() {
                    return;
                }
                let gone = (index - self.snap_index()) as usize;
                self.entries.drain(..gone);
                self.hs.commit = self.hs.commit.max(index);
                self.snap = s.clone();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Core {
    /// What raft reads: every write, synced or not.
    written: Log,
    /// What survives a crash.
    durable: Log,
    /// Writes since the last sync, in order.
    journal: Vec<Write>,
    /// Writes synced or dropped by a crash so far (the journal's first write has this number).
    base: u64,
    /// The newest index a leader asked a snapshot for (0: none).
    wanted: u64,
}

/// A handle on one server's disk (raft holds one, the replica another).
#[derive(Debug, Clone, Default)]
pub struct Disk(Rc<RefCell<Core>>);

impl Disk {
    pub fn new(voters: &[u64]) -> Self {
        let d = Disk::default();
        {
            let mut c = d.0.borrow_mut();
            c.written.cs = ConfState::from((voters.to_vec(), vec![]));
            c.durable = c.written.clone();
        }
        d
    }

    fn write(&self, w: Write) {
        let mut c = self.0.borrow_mut();
        c.written.apply(&w);
        c.journal.push(w);
    }

    pub fn append(&self, ents: &[Entry]) {
        if !ents.is_empty() {
            self.write(Write::Append(ents.to_vec()));
        }
    }

    pub fn set_hardstate(&self, hs: HardState) {
        self.write(Write::HardState(hs));
    }

    pub fn set_commit(&self, c: u64) {
        self.write(Write::Commit(c));
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.write(Write::ConfState(cs));
    }

    pub fn install(&self, s: Snapshot) {
        self.write(Write::Install(s));
    }

    pub fn compact(&self, s: Snapshot) {
        self.write(Write::Compact(s));
    }

    /// How many writes were made so far (a sync up to this number covers them all).
    pub fn written(&self) -> u64 {
        let c = self.0.borrow();
        c.base + c.journal.len() as u64
    }

    /// Makes every write numbered below `upto` durable (an fsync).
    pub fn sync(&self, upto: u64) {
        let mut c = self.0.borrow_mut();
        let n = (upto.saturating_sub(c.base) as usize).min(c.journal.len());
        let done: Vec<Write> = c.journal.drain(..n).collect();
        c.base += n as u64;
        for w in &done {
            c.durable.apply(w);
        }
    }

    /// A crash: the page cache is gone; returns how many writes were lost.
    pub fn crash(&self) -> usize {
        let mut c = self.0.borrow_mut();
        c.written = c.durable.clone();
        c.wanted = 0;
        let lost = std::mem::take(&mut c.journal).len();
        c.base += lost as u64;
        lost
    }

    pub fn snapshot_meta(&self) -> raft::eraftpb::SnapshotMetadata {
        self.0.borrow().written.snap.get_metadata().clone()
    }

    /// The stored snapshot's state machine bytes.
    pub fn snapshot_data(&self) -> Vec<u8> {
        self.0.borrow().written.snap.get_data().to_vec()
    }

    /// Takes the newest snapshot index a leader asked for (0: none).
    pub fn take_wanted(&self) -> u64 {
        std::mem::take(&mut self.0.borrow_mut().wanted)
    }

    pub fn conf_state(&self) -> ConfState {
        self.0.borrow().written.cs.clone()
    }
}

impl raft::Storage for Disk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.0.borrow();
        Ok(RaftState::new(c.written.hs.clone(), c.written.cs.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let c = self.0.borrow();
        let log = &c.written;
        if low < log.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= log.last() + 1,
            "entries [{low}, {high}) past the log"
        );
        let off = log.first();
        let mut ents = log.entries[(low - off) as usize..(high - off) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.0.borrow();
        let log = &c.written;
        if idx == log.snap_index() {
            return Ok(log.snap.get_metadata().term);
        }
        if idx < log.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > log.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(log.entries[(idx - log.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().written.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().written.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut c = self.0.borrow_mut();
        if c.written.snap_index() < request_index.max(1) {
            c.wanted = c.wanted.max(request_index.max(1));
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(c.written.snap.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_crash_keeps_only_synced_writes() {
        let d = Disk::new(&[1, 2, 3]);
        d.append(&[entry(1, 1), entry(2, 1)]);
        d.sync(d.written());
        d.append(&[entry(3, 1)]);
        assert_eq!(d.last_index().unwrap(), 3);
        assert_eq!(d.crash(), 1);
        assert_eq!(d.last_index().unwrap(), 2);
        assert_eq!(d.term(2).unwrap(), 1);
    }

    #[test]
    fn compaction_keeps_the_snapshot_term_and_refuses_older_entries() {
        let d = Disk::new(&[1]);
        d.append(&[entry(1, 1), entry(2, 2), entry(3, 2)]);
        let mut s = Snapshot::default();
        s.mut_metadata().index = 2;
        s.mut_metadata().term = 2;
        d.compact(s);
        assert_eq!(d.first_index().unwrap(), 3);
        assert_eq!(d.term(2).unwrap(), 2);
        assert!(d.term(1).is_err());
        let ctx = GetEntriesContext::empty(false);
        assert!(d.entries(2, 4, None, ctx).is_err());
        // An older request is served; a newer one is recorded and refused for now.
        assert_eq!(d.snapshot(2, 9).unwrap().get_metadata().index, 2);
        assert!(d.snapshot(3, 9).is_err());
        assert_eq!(d.take_wanted(), 3);
        // Not synced: a crash brings the whole log back.
        d.crash();
        assert_eq!(d.first_index().unwrap(), 1);
        assert_eq!(d.last_index().unwrap(), 0);
    }

    #[test]
    fn an_append_replaces_the_conflicting_tail() {
        let d = Disk::new(&[1]);
        d.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        d.append(&[entry(2, 2)]);
        assert_eq!(d.last_index().unwrap(), 2);
        assert_eq!(d.term(2).unwrap(), 2);
    }
}
