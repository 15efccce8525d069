//! [`RedbStorage`]: a durable `raft::Storage` on one redb file.
//!
//! Tables: `raft_entries` (index -> 8-byte little-endian term ++ protobuf `Entry`), `raft_meta`
//! (hard state, conf state, snapshot metadata, truncation point, format version) and
//! `raft_snapshot` (the snapshot image in chunks; see `SNAPSHOT`). The write transactions, the
//! chunked image and the format-1 migration are in `storage/txn.rs`.
//! Reads go to redb; first/last index, terms, the hard state, the conf state and the snapshot
//! metadata are cached in memory (a term is 8 bytes per live entry), so `term()` never touches disk.
//! Every write method is one redb write transaction; `persist` writes the entries, the hard state
//! and an incoming snapshot of one Ready together, with one fsync when `fsync` is on.
//! Invariants (checked at open): `truncated.index <= snapshot.index <= hard_state.commit <= last_index`,
//! and the entries are exactly `truncated.index + 1 ..= last_index` with no gap.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::Message as PbMessage;
use raft::StorageError;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::RaftLogError;

pub(crate) const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
/// Committed entries removed by compaction, kept when `keep_compacted` is on (same layout).
pub(crate) const ARCHIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_archive");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The snapshot image, in chunks of [`SNAP_CHUNK`] bytes keyed 0, 1, ... Apart from `META` on
/// purpose: redb keeps a value inside its B-tree leaf, so a snapshot stored next to the hard
/// state made every Ready's hard-state write copy a leaf as large as the whole state (the
/// cost of each commit grew with the state: format 1).
pub(crate) const SNAPSHOT: TableDefinition<u32, &[u8]> = TableDefinition::new("raft_snapshot");
/// Bytes of one snapshot chunk.
const SNAP_CHUNK: usize = 1 << 20;

const K_FORMAT: &str = "format";
pub(crate) const K_HARD_STATE: &str = "hard_state";
const K_CONF_STATE: &str = "conf_state";
pub(crate) const K_SNAP_META: &str = "snapshot_meta";
/// Where format 1 kept the snapshot image (in `META`); moved to `SNAPSHOT` on open.
const K_SNAP_DATA_V1: &str = "snapshot_data";
const K_TRUNCATED: &str = "truncated";

type EntriesTable<'t> = redb::Table<'t, u64, &'static [u8]>;
type MetaTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;
type TxnResult = Result<(), redb::Error>;

/// Layout version of the tables above. 2: the snapshot image in its own table (format 1 kept
/// it in `META`; a format-1 file is migrated on open, and a build that reads only format 1
/// refuses a format-2 file instead of restoring without its snapshot).
const FORMAT_VERSION: u16 = 2;
/// redb page cache; small on purpose (idle node RSS target is 30 MB).
const CACHE_BYTES: usize = 8 << 20;

/// The redb-backed raft log. Owned by the `RawNode` on the engine thread.
pub(crate) struct RedbStorage {
    /// Shared (weakly) with readers of the committed history (`EngineHandle::read_log`).
    db: std::sync::Arc<Database>,
    /// Injected disk faults (chaos mode).
    faults: Option<std::sync::Arc<crate::DiskFaults>>,
    /// Compaction moves entries to [`ARCHIVE`] instead of deleting them.
    archive: bool,
    path: PathBuf,
    fsync: bool,
    hard_state: HardState,
    conf_state: ConfState,
    snap_meta: SnapshotMetadata,
    /// (index, term) of the entry just before the first stored one.
    truncated: (u64, u64),
    /// `terms[i]` is the term of entry `truncated.0 + 1 + i`.
    terms: VecDeque<u64>,
    /// Highest index raft asked a snapshot for that we could not serve yet (0 = none).
    snapshot_wanted: AtomicU64,
}

fn store_err(e: impl Into<redb::Error>) -> raft::Error {
    let e: redb::Error = e.into();
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

fn other_err(msg: String) -> raft::Error {
    raft::Error::Store(StorageError::Other(msg.into()))
}

fn encode_entry(e: &Entry) -> Result<Vec<u8>, protobuf::ProtobufError> {
    let mut v = Vec::with_capacity(8 + e.compute_size() as usize);
    v.extend_from_slice(&e.term.to_le_bytes());
    e.write_to_vec(&mut v)?;
    Ok(v)
}

fn pair_bytes(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

impl RedbStorage {
    /// Opens or creates the redb file at `path` and loads the cached state.
    /// A fresh file is empty and not initialized; see [`Self::bootstrap`].
    /// `disk`: a simulated disk instead of the file (`EngineConfig::disk`).
    pub(crate) fn open(
        path: &Path,
        fsync: bool,
        disk: Option<&crate::MemDisk>,
    ) -> Result<Self, RaftLogError> {
        let dberr = |e: redb::Error| RaftLogError::from_redb(path, e);
        let corrupt = |detail: String| RaftLogError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let mut builder = redb::Builder::new();
        builder
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true);
        let db = match disk {
            Some(disk) => builder.create_with_backend(disk.backend()),
            None => builder.create(path),
        }
        .map_err(|e| dberr(e.into()))?;
        let txn = db.begin_write().map_err(|e| dberr(e.into()))?;
        txn.open_table(ENTRIES).map_err(|e| dberr(e.into()))?;
        txn.open_table(META).map_err(|e| dberr(e.into()))?;
        txn.open_table(SNAPSHOT).map_err(|e| dberr(e.into()))?;
        txn.commit().map_err(|e| dberr(e.into()))?;
        migrate_v1(&db).map_err(dberr)?;

        let rtxn = db.begin_read().map_err(|e| dberr(e.into()))?;
        let meta = rtxn.open_table(META).map_err(|e| dberr(e.into()))?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, RaftLogError> {
            Ok(meta
                .get(key)
                .map_err(|e| dberr(e.into()))?
                .map(|g| g.value().to_vec()))
        };
        if let Some(f) = get(K_FORMAT)?
            && f != FORMAT_VERSION.to_le_bytes()
        {
            // (A format-1 file was migrated above and says 2 now.)
            return Err(RaftLogError::Incompatible {
                path: path.to_path_buf(),
                detail: format!("raft-log table format {f:?}, this build reads {FORMAT_VERSION}"),
            });
        }
        fn parse<T: PbMessage + Default>(key: &str, bytes: Option<Vec<u8>>) -> Result<T, String> {
            match bytes {
                None => Ok(T::default()),
                Some(b) => T::parse_from_bytes(&b).map_err(|e| format!("bad {key}: {e}")),
            }
        }
        let hard_state: HardState = parse(K_HARD_STATE, get(K_HARD_STATE)?).map_err(corrupt)?;
        let conf_state: ConfState = parse(K_CONF_STATE, get(K_CONF_STATE)?).map_err(corrupt)?;
        let snap_meta: SnapshotMetadata = parse(K_SNAP_META, get(K_SNAP_META)?).map_err(corrupt)?;
        let truncated = match get(K_TRUNCATED)? {
            None => (snap_meta.index, snap_meta.term),
            Some(b) => match (read_u64(&b, 0), read_u64(&b, 8)) {
                (Some(i), Some(t)) if b.len() == 16 => (i, t),
                _ => return Err(corrupt(format!("bad {K_TRUNCATED}: {} bytes", b.len()))),
            },
        };
        drop(meta);

        let mut terms = VecDeque::new();
        let entries = rtxn.open_table(ENTRIES).map_err(|e| dberr(e.into()))?;
        for item in entries
            .range(truncated.0.saturating_add(1)..)
            .map_err(|e| dberr(e.into()))?
        {
            let (k, v) = item.map_err(|e| dberr(e.into()))?;
            let expected = truncated.0 + 1 + terms.len() as u64;
            if k.value() != expected {
                return Err(corrupt(format!(
                    "log gap: expected entry {expected}, found {}",
                    k.value()
                )));
            }
            let term = read_u64(v.value(), 0)
                .ok_or_else(|| corrupt(format!("entry {expected} is truncated")))?;
            terms.push_back(term);
        }
        drop(entries);
        drop(rtxn);

        let store = RedbStorage {
            db: std::sync::Arc::new(db),
            faults: None,
            archive: false,
            path: path.to_path_buf(),
            fsync,
            hard_state,
            conf_state,
            snap_meta,
            truncated,
            terms,
            snapshot_wanted: AtomicU64::new(0),
        };
        let (t, s, c, l) = (
            store.truncated.0,
            store.snap_meta.index,
            store.hard_state.commit,
            store.last(),
        );
        if store.is_initialized() && !(t <= s && s <= c && c <= l) {
            return Err(corrupt(format!(
                "inconsistent indexes: truncated {t}, snapshot {s}, commit {c}, last {l}"
            )));
        }
        Ok(store)
    }

    /// Chaos mode: injected disk faults, and whether compaction archives entries.
    pub(crate) fn set_chaos(
        &mut self,
        faults: Option<std::sync::Arc<crate::DiskFaults>>,
        archive: bool,
    ) {
        self.faults = faults;
        self.archive = archive;
    }

    /// The database, for readers of the committed history on other threads.
    pub(crate) fn database(&self) -> std::sync::Weak<Database> {
        std::sync::Arc::downgrade(&self.db)
    }

    /// True once [`Self::bootstrap`] ran or a snapshot was installed.
    pub(crate) fn is_initialized(&self) -> bool {
        self.conf_state != ConfState::default() || self.snap_meta.index > 0
    }

    /// On a fresh store, writes the synthetic snapshot (index 1, term 1) with `voters` and the
    /// state-machine image `data`, so every node (and any later joiner) starts from a snapshot.
    pub(crate) fn bootstrap(&mut self, voters: &[u64], data: &[u8]) -> Result<(), RaftLogError> {
        if self.is_initialized() {
            return Ok(());
        }
        let mut meta = SnapshotMetadata {
            index: 1,
            term: 1,
            ..Default::default()
        };
        meta.mut_conf_state().set_voters(voters.to_vec());
        let hs = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        self.write_archiving(true, Some(data), |et, mt, _| {
            et.retain(|_, _| false)?;
            mt.insert(K_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
            mt.insert(K_SNAP_META, pb(&meta)?.as_slice())?;
            mt.insert(K_CONF_STATE, pb(meta.get_conf_state())?.as_slice())?;
            mt.insert(K_TRUNCATED, pair_bytes(1, 1).as_slice())?;
            mt.insert(K_HARD_STATE, pb(&hs)?.as_slice())?;
            Ok(())
        })?;
        self.conf_state = meta.get_conf_state().clone();
        self.snap_meta = meta;
        self.hard_state = hs;
        self.truncated = (1, 1);
        self.terms.clear();
        Ok(())
    }

    /// Persists one Ready: an incoming snapshot (replaces the whole log), then `entries`
    /// (replacing any conflicting suffix), then the hard state, in one transaction.
    /// `sync` asks for an fsync (ignored when the store was opened with `fsync = false`).
    pub(crate) fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        snap: Option<&Snapshot>,
        sync: bool,
    ) -> Result<(), RaftLogError> {
        if entries.is_empty() && hs.is_none() && snap.is_none() {
            return Ok(());
        }
        let mut new_hs = hs.cloned().unwrap_or_else(|| self.hard_state.clone());
        let (base, base_len) = match snap {
            Some(s) => {
                let m = s.get_metadata();
                if m.index < self.truncated.0 {
                    return Err(self.storage_error(format!(
                        "snapshot {} is older than the log start {}",
                        m.index, self.truncated.0
                    )));
                }
                new_hs.term = new_hs.term.max(m.term);
                new_hs.commit = new_hs.commit.max(m.index);
                ((m.index, m.term), 0u64)
            }
            None => (self.truncated, self.terms.len() as u64),
        };
        let log_last = base.0 + base_len;
        if let Some(first) = entries.first() {
            assert!(
                first.index > base.0,
                "raft overwrote compacted entries: log starts after {}, append at {}",
                base.0,
                first.index
            );
            assert!(
                first.index <= log_last + 1,
                "raft log gap: last index {log_last}, append at {}",
                first.index
            );
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.index, first.index + i as u64, "non-contiguous append");
            }
        }
        let commit = self.hard_state.commit;
        self.write_archiving(sync, snap.map(|s| s.get_data()), |et, mt, archive| {
            if let Some(s) = snap {
                let m = s.get_metadata();
                if let Some(a) = archive {
                    archive_range(et, a, commit.min(m.index))?;
                }
                et.retain(|_, _| false)?;
                mt.insert(K_SNAP_META, pb(m)?.as_slice())?;
                mt.insert(K_CONF_STATE, pb(m.get_conf_state())?.as_slice())?;
                mt.insert(K_TRUNCATED, pair_bytes(m.index, m.term).as_slice())?;
            }
            if let Some(first) = entries.first() {
                if first.index <= log_last {
                    et.retain_in(first.index.., |_, _| false)?;
                }
                for e in entries {
                    et.insert(e.index, encode_entry(e).map_err(codec)?.as_slice())?;
                }
            }
            mt.insert(K_HARD_STATE, pb(&new_hs)?.as_slice())?;
            Ok(())
        })?;
        if let Some(s) = snap {
            let m = s.get_metadata();
            self.snap_meta = m.clone();
            self.conf_state = m.get_conf_state().clone();
            self.truncated = (m.index, m.term);
            self.terms.clear();
        }
        if let Some(first) = entries.first() {
            self.terms
                .truncate((first.index - self.truncated.0 - 1) as usize);
            self.terms.extend(entries.iter().map(|e| e.term));
        }
        self.hard_state = new_hs;
        Ok(())
    }

    /// Records a new commit index before the entries up to it are applied.
    ///
    /// Written without fsync: the applied index is only persisted through snapshots, which
    /// store `commit >= snapshot index` durably in the same transaction, so a restart can never
    /// see `applied > commit`; a lost commit index is re-derived by raft (learned from the
    /// leader, or a single voter re-commits its whole durable log when it is re-elected).
    pub(crate) fn set_commit(&mut self, commit: u64) -> Result<(), RaftLogError> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.write(false, |_, mt| {
            mt.insert(K_HARD_STATE, pb(&hs)?.as_slice())?;
            Ok(())
        })?;
        self.hard_state = hs;
        Ok(())
    }

    /// Persists the conf state produced by applying a conf change.
    pub(crate) fn set_conf_state(&mut self, cs: ConfState) -> Result<(), RaftLogError> {
        self.write(true, |_, mt| {
            mt.insert(K_CONF_STATE, pb(&cs)?.as_slice())?;
            Ok(())
        })?;
        self.conf_state = cs;
        Ok(())
    }

    /// Stores a snapshot of the applied state (`meta.index` must be applied, hence persisted)
    /// and compacts the log up to `min(compact_to, meta.index)`, in one transaction.
    pub(crate) fn save_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        data: &[u8],
        compact_to: u64,
    ) -> Result<(), RaftLogError> {
        if meta.index <= self.snap_meta.index || meta.index > self.last() {
            return Err(self.storage_error(format!(
                "snapshot at {} outside ({}, {}]",
                meta.index,
                self.snap_meta.index,
                self.last()
            )));
        }
        let compact_to = compact_to.min(meta.index);
        let truncated = if compact_to > self.truncated.0 {
            (
                compact_to,
                self.cached_term(compact_to).unwrap_or(meta.term),
            )
        } else {
            self.truncated
        };
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        let before = self.truncated.0;
        self.write_archiving(true, Some(data), |et, mt, archive| {
            mt.insert(K_SNAP_META, pb(&meta)?.as_slice())?;
            mt.insert(K_TRUNCATED, pair_bytes(truncated.0, truncated.1).as_slice())?;
            mt.insert(K_HARD_STATE, pb(&hs)?.as_slice())?;
            if truncated.0 > before {
                if let Some(a) = archive {
                    archive_range(et, a, truncated.0)?;
                }
                et.retain_in(..=truncated.0, |_, _| false)?;
            }
            Ok(())
        })?;
        let dropped = (truncated.0 - self.truncated.0) as usize;
        self.terms.drain(..dropped.min(self.terms.len()));
        self.truncated = truncated;
        self.snap_meta = meta;
        self.hard_state = hs;
        Ok(())
    }

    /// Deletes the entries `<= idx`. The engine compacts inside [`Self::save_snapshot`]; this is
    /// for keeping slack for lagging followers once there are several voters. Clamped to the snapshot index: entries after the last
    /// snapshot are the only copy of that state and are never dropped.
    #[cfg_attr(not(test), expect(dead_code, reason = "multi-voter slack compaction"))]
    pub(crate) fn compact(&mut self, idx: u64) -> Result<(), RaftLogError> {
        let idx = idx.min(self.snap_meta.index).min(self.last());
        if idx <= self.truncated.0 {
            return Ok(());
        }
        let term = self.cached_term(idx).unwrap_or(self.snap_meta.term);
        self.write_archiving(true, None, |et, mt, archive| {
            if let Some(a) = archive {
                archive_range(et, a, idx)?;
            }
            et.retain_in(..=idx, |_, _| false)?;
            mt.insert(K_TRUNCATED, pair_bytes(idx, term).as_slice())?;
            Ok(())
        })?;
        let dropped = (idx - self.truncated.0) as usize;
        self.terms.drain(..dropped.min(self.terms.len()));
        self.truncated = (idx, term);
        Ok(())
    }

    /// Makes every earlier commit durable (one fsync), whatever `fsync` says. Used at shutdown.
    pub(crate) fn flush(&mut self) -> Result<(), RaftLogError> {
        let hs = self.hard_state.clone();
        self.write_full(Durability::Immediate, None, |_, mt, _| {
            mt.insert(K_HARD_STATE, pb(&hs)?.as_slice())?;
            Ok(())
        })
    }

    pub(crate) fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snap_meta
    }

    /// The stored snapshot image (empty if none).
    pub(crate) fn snapshot_data(&self) -> Result<Vec<u8>, RaftLogError> {
        self.read_snapshot()
            .map_err(|e| self.storage_error(e.to_string()))
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub(crate) fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    pub(crate) fn last(&self) -> u64 {
        self.truncated.0 + self.terms.len() as u64
    }

    /// Takes the index of a snapshot raft asked for but could not get (0 = none).
    pub(crate) fn take_snapshot_request(&self) -> u64 {
        self.snapshot_wanted.swap(0, Ordering::Relaxed)
    }

    fn cached_term(&self, idx: u64) -> Option<u64> {
        if idx == self.truncated.0 {
            return Some(self.truncated.1);
        }
        let off = idx.checked_sub(self.truncated.0 + 1)?;
        self.terms.get(usize::try_from(off).ok()?).copied()
    }

    fn storage_error(&self, detail: String) -> RaftLogError {
        RaftLogError::Storage {
            path: self.path.clone(),
            detail,
        }
    }
}

fn codec(e: protobuf::ProtobufError) -> redb::Error {
    redb::Error::Corrupted(format!("protobuf encoding failed: {e}"))
}

fn pb(m: &impl PbMessage) -> Result<Vec<u8>, redb::Error> {
    m.write_to_bytes().map_err(codec)
}

mod raft_impl;
mod txn;
use txn::{archive_range, migrate_v1};

#[cfg(test)]
mod tests;
