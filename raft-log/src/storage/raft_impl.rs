//! The read side: `raft::Storage` for [`RedbStorage`].

use std::sync::atomic::Ordering;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use redb::ReadableDatabase;

use super::{ENTRIES, RedbStorage, other_err, store_err};

impl Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            // raft documents a panic here; refusing is the non-panicking equivalent.
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(ENTRIES).map_err(store_err)?;
        let mut out: Vec<Entry> = Vec::with_capacity((high - low).min(256) as usize);
        let mut size = 0u64;
        let mut truncated_by_size = false;
        for item in table.range(low..high).map_err(store_err)? {
            let (k, v) = item.map_err(store_err)?;
            let expected = low + out.len() as u64;
            if k.value() != expected {
                return Err(other_err(format!(
                    "raft log entry {expected} is missing from {}",
                    self.path.display()
                )));
            }
            let body = v.value().get(8..).unwrap_or_default();
            // Same rule as raft::util::limit_size (the protobuf size is the stored size).
            let len = body.len() as u64;
            if !out.is_empty() && max_size.is_some_and(|max| size.saturating_add(len) > max) {
                truncated_by_size = true;
                break;
            }
            size = size.saturating_add(len);
            out.push(Entry::parse_from_bytes(body)?);
        }
        if !truncated_by_size && out.len() as u64 != high - low {
            return Err(other_err(format!(
                "raft log entries {low}..{high} are incomplete in {}",
                self.path.display()
            )));
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.cached_term(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // raft drops a snapshot whose conf state does not name the recipient: a node added
        // after the stored snapshot needs a newer one (the leader applied its addition).
        let cs = self.snap_meta.get_conf_state();
        let names_to = cs
            .get_voters()
            .iter()
            .chain(cs.get_learners())
            .chain(cs.get_voters_outgoing())
            .any(|&id| id == to);
        let wanted = if names_to {
            request_index
        } else {
            request_index.max(self.snap_meta.index + 1)
        };
        if self.snap_meta.index < wanted {
            self.snapshot_wanted.fetch_max(wanted, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let data = self.read_snapshot().map_err(store_err)?;
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snap_meta.clone());
        snap.set_data(data.into());
        Ok(snap)
    }
}
