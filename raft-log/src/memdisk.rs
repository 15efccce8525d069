//! [`MemDisk`]: a simulated disk under the real redb store, for the simulator and tests.
//!
//! redb reaches its file only through a `redb::StorageBackend` (`len`, `read`, `set_len`,
//! `write`, `sync_data`), and `Builder::create_with_backend` takes any implementation. This one
//! keeps the bytes in memory twice: what reads see (every write, as a page cache holds it) and
//! what survives a crash (the bytes as of the last successful `sync_data`). Writes and length
//! changes since the last sync are journaled; a sync replays them onto the durable copy. So the
//! whole of raft-log's storage code runs unchanged (its transactions, its `Durability::None`
//! commits of the commit index, redb's own commit protocol and its repair on open), and:
//! - a crash ([`MemDisk::crash`]) keeps only what was synced: every unsynced write is lost,
//!   and the next open sees the file as a machine that lost power would leave it;
//! - [`MemDisk::fail_next_syncs`] makes the next syncs fail with an I/O error, after which
//!   the engine stops (fail-stop, as in production: `RaftLogError::is_disk`).
//!
//! What it does not model: a crash that keeps some unsynced writes and not others (a real
//! kernel may have flushed any subset of dirty pages), torn writes inside a page, corrupted
//! reads, a full disk. Those would test redb's recovery more than raft-log; they are left out.
//!
//! A crash also kills the backends handed out before it: the crashed process's database may
//! still be dropped afterwards (its close writes a header and syncs), and those writes must
//! not reach the disk the restarted node opens. Call [`MemDisk::crash`] first, then drop the
//! engine (a [`crate::Stepper`]).

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A simulated disk holding one redb file. Cheap to clone: clones share the disk.
#[derive(Clone, Default)]
pub struct MemDisk(Arc<Mutex<Inner>>);

/// What a [`MemDisk`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemDiskStats {
    pub syncs: u64,
    pub failed_syncs: u64,
    pub crashes: u64,
    /// Writes (and length changes) that a crash lost, over all crashes.
    pub lost_writes: u64,
    pub bytes_written: u64,
}

#[derive(Default)]
struct Inner {
    /// What reads see: every write, synced or not.
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Changes since the last successful sync, in order.
    journal: Vec<Change>,
    /// Bumped by each crash: backends of an older generation belong to a crashed process.
    generation: u64,
    /// The next this many syncs fail.
    fail_syncs: u64,
    stats: MemDiskStats,
}

enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
        Change::Write { offset, data } => {
            let (start, end) = (*offset as usize, *offset as usize + data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
    }
}

impl MemDisk {
    /// An empty disk (a fresh log is created on it at the first open).
    pub fn new() -> Self {
        MemDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A backend for one open of the database.
    pub(crate) fn backend(&self) -> MemBackend {
        MemBackend {
            disk: self.clone(),
            generation: self.lock().generation,
        }
    }

    /// The machine loses power: unsynced writes are gone, and the backends of the databases
    /// open on it are dead (what they write later is discarded). Returns the writes lost.
    pub fn crash(&self) -> u64 {
        let mut d = self.lock();
        let lost = d.journal.len() as u64;
        d.journal.clear();
        d.live = d.durable.clone();
        d.generation += 1;
        d.fail_syncs = 0;
        d.stats.crashes += 1;
        d.stats.lost_writes += lost;
        lost
    }

    /// The next `n` syncs fail with an I/O error (0 disarms). A crash disarms too.
    pub fn fail_next_syncs(&self, n: u64) {
        self.lock().fail_syncs = n;
    }

    /// Writes made since the last successful sync.
    pub fn unsynced(&self) -> u64 {
        self.lock().journal.len() as u64
    }

    pub fn stats(&self) -> MemDiskStats {
        self.lock().stats
    }
}

impl fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.lock();
        f.debug_struct("MemDisk")
            .field("bytes", &d.live.len())
            .field("unsynced", &d.journal.len())
            .field("generation", &d.generation)
            .finish_non_exhaustive()
    }
}

/// One open database's view of a [`MemDisk`].
pub(crate) struct MemBackend {
    disk: MemDisk,
    generation: u64,
}

impl fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemBackend")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl MemBackend {
    /// The disk, unless a crash made this backend's process a dead one.
    fn alive(&self) -> Option<MutexGuard<'_, Inner>> {
        let d = self.disk.lock();
        (d.generation == self.generation).then_some(d)
    }

    fn change(&self, change: Change) {
        if let Some(mut d) = self.alive() {
            if let Change::Write { data, .. } = &change {
                d.stats.bytes_written += data.len() as u64;
            }
            apply(&mut d.live, &change);
            d.journal.push(change);
        }
    }
}

impl redb::StorageBackend for MemBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.disk.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let d = self.disk.lock();
        let start = offset as usize;
        let Some(bytes) = d.live.get(start..start + out.len()) else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "simulated disk: read of {} bytes at {offset} past its end ({})",
                    out.len(),
                    d.live.len()
                ),
            ));
        };
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.change(Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let Some(mut d) = self.alive() else {
            return Ok(());
        };
        if d.fail_syncs > 0 {
            d.fail_syncs -= 1;
            d.stats.failed_syncs += 1;
            return Err(io::Error::other("injected fsync failure (simulated disk)"));
        }
        let journal = std::mem::take(&mut d.journal);
        for change in &journal {
            apply(&mut d.durable, change);
        }
        d.stats.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.change(Change::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RedbStorage;
    use raft::Storage;
    use raft::eraftpb::{Entry, HardState};
    use std::path::Path;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range
            .map(|index| Entry {
                index,
                term: 2,
                data: vec![index as u8; 64].into(),
                ..Default::default()
            })
            .collect()
    }

    fn open(disk: &MemDisk) -> RedbStorage {
        RedbStorage::open(Path::new("sim/raft.redb"), true, Some(disk)).unwrap()
    }

    #[test]
    fn the_real_store_on_it_keeps_only_synced_writes_across_a_crash() {
        let disk = MemDisk::new();
        let mut s = open(&disk);
        s.bootstrap(&[1], b"image").unwrap();
        let hs = |commit| HardState {
            term: 2,
            vote: 1,
            commit,
            ..Default::default()
        };
        s.persist(&entries(2..=4), Some(&hs(1)), None, true)
            .unwrap();
        assert_eq!(disk.unsynced(), 0);
        // Not synced: raft's own choice for a Ready that only moves the commit index, and the
        // engine's `set_commit`.
        s.persist(&entries(5..=6), None, None, false).unwrap();
        s.set_commit(4).unwrap();
        assert_eq!(s.last_index().unwrap(), 6);
        // (redb keeps a non-durable commit's pages in its own buffer, or writes them without
        // a sync: either way the crash, which also ends the process holding that buffer,
        // loses them.)
        disk.crash();
        drop(s);
        let s = open(&disk);
        assert_eq!(s.last_index().unwrap(), 4, "the unsynced entries are gone");
        assert_eq!(s.hard_state().commit, 1, "so is the unsynced commit index");
        assert_eq!(s.snapshot_data().unwrap(), b"image");
        assert_eq!(disk.stats().crashes, 1);
    }

    #[test]
    fn a_failed_sync_is_a_disk_error_and_what_it_covered_is_lost_in_a_crash() {
        let disk = MemDisk::new();
        let mut s = open(&disk);
        s.bootstrap(&[1], b"image").unwrap();
        disk.fail_next_syncs(1);
        let err = s.persist(&entries(2..=3), None, None, true).unwrap_err();
        assert!(err.is_disk(), "{err}");
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
        assert_eq!(disk.stats().failed_syncs, 1);
        disk.crash();
        drop(s);
        let s = open(&disk);
        assert_eq!(s.last_index().unwrap(), 1);
    }

    #[test]
    fn a_crashed_process_cannot_write_to_the_disk_its_successor_opens() {
        let disk = MemDisk::new();
        let mut s = open(&disk);
        s.bootstrap(&[1], b"image").unwrap();
        disk.crash();
        // The dead process's database goes on writing (and its close syncs): all discarded.
        let _ = s.persist(&entries(2..=3), None, None, true);
        drop(s);
        assert_eq!(disk.unsynced(), 0);
        let s = open(&disk);
        assert_eq!(s.last_index().unwrap(), 1);
    }
}
