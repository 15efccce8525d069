//! Reading the committed history back ([`crate::EngineHandle::read_log`]): the archived
//! entries (kept by compaction when `keep_compacted` is on) and the live ones, up to the commit
//! index, decoded into commands. Runs on the caller's thread in a redb read transaction (it
//! does not stop the engine); the engine holds the only strong reference to the database, so
//! a closed engine answers [`RaftLogError::Closed`] instead of keeping the file locked.

use std::path::Path;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, EntryType, HardState, SnapshotMetadata};
use redb::{Database, ReadableDatabase, ReadableTable, TableError};
use serde::de::DeserializeOwned;

use crate::error::RaftLogError;
use crate::storage::{ARCHIVE, ENTRIES, K_HARD_STATE, K_SNAP_META, META, SNAPSHOT};

/// One committed entry: its index and term, the leader's timestamp and the commands in it
/// (none for raft's no-op and configuration entries).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry<C> {
    pub index: u64,
    pub term: u64,
    pub at_ms: u64,
    pub commands: Vec<C>,
}

/// A page of the committed history.
#[derive(Debug, Clone)]
pub struct LogPage<C> {
    /// The lowest index that can be read (archive or live log); history before it is gone.
    pub first_index: u64,
    /// The commit index the page was read against.
    pub commit: u64,
    /// The stored snapshot: its index and image (what a replay starts from when the history
    /// before `first_index` is gone).
    pub snapshot_index: u64,
    /// Entries `from..` in order, at most the number asked for, none past `commit`.
    pub entries: Vec<LogEntry<C>>,
}

pub(crate) fn read<C: DeserializeOwned>(
    db: &Database,
    path: &Path,
    from: u64,
    max: usize,
) -> Result<LogPage<C>, RaftLogError> {
    let dberr = |e: redb::Error| RaftLogError::from_redb(path, e);
    let corrupt = |detail: String| RaftLogError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let txn = db.begin_read().map_err(|e| dberr(e.into()))?;
    let meta = txn.open_table(META).map_err(|e| dberr(e.into()))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, RaftLogError> {
        Ok(meta
            .get(key)
            .map_err(|e| dberr(e.into()))?
            .map(|g| g.value().to_vec()))
    };
    let commit = match get(K_HARD_STATE)? {
        Some(b) => {
            HardState::parse_from_bytes(&b)
                .map_err(|e| corrupt(format!("bad hard state: {e}")))?
                .commit
        }
        None => 0,
    };
    let snapshot_index = match get(K_SNAP_META)? {
        Some(b) => {
            SnapshotMetadata::parse_from_bytes(&b)
                .map_err(|e| corrupt(format!("bad snapshot metadata: {e}")))?
                .index
        }
        None => 0,
    };
    let live = txn.open_table(ENTRIES).map_err(|e| dberr(e.into()))?;
    let archive = match txn.open_table(ARCHIVE) {
        Ok(t) => Some(t),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(dberr(e.into())),
    };
    let first_of =
        |t: &redb::ReadOnlyTable<u64, &'static [u8]>| -> Result<Option<u64>, RaftLogError> {
            Ok(t.first()
                .map_err(|e| dberr(e.into()))?
                .map(|(k, _)| k.value()))
        };
    let live_first = first_of(&live)?;
    let archive_first = match &archive {
        Some(a) => first_of(a)?,
        None => None,
    };
    let first_index = archive_first.or(live_first).unwrap_or(snapshot_index + 1);
    let mut entries = Vec::new();
    let mut next = from.max(first_index);
    for table in archive.iter().chain(std::iter::once(&live)) {
        if entries.len() >= max || next > commit {
            break;
        }
        for row in table.range(next..=commit).map_err(|e| dberr(e.into()))? {
            if entries.len() >= max {
                break;
            }
            let (k, v) = row.map_err(|e| dberr(e.into()))?;
            let index = k.value();
            if index != next {
                // The archive ends where the live log starts; anything else is a hole.
                break;
            }
            entries.push(decode(index, v.value()).map_err(corrupt)?);
            next += 1;
        }
    }
    Ok(LogPage {
        first_index,
        commit,
        snapshot_index,
        entries,
    })
}

/// The stored snapshot image (empty if none), for a replay that starts from it.
pub(crate) fn snapshot(db: &Database, path: &Path) -> Result<(u64, Vec<u8>), RaftLogError> {
    let dberr = |e: redb::Error| RaftLogError::from_redb(path, e);
    let txn = db.begin_read().map_err(|e| dberr(e.into()))?;
    let meta = txn.open_table(META).map_err(|e| dberr(e.into()))?;
    let index = match meta.get(K_SNAP_META).map_err(|e| dberr(e.into()))? {
        Some(b) => SnapshotMetadata::parse_from_bytes(b.value())
            .map(|m| m.index)
            .unwrap_or(0),
        None => 0,
    };
    let chunks = txn.open_table(SNAPSHOT).map_err(|e| dberr(e.into()))?;
    let mut data = Vec::new();
    for row in chunks.iter().map_err(|e| dberr(e.into()))? {
        let (_, v) = row.map_err(|e| dberr(e.into()))?;
        data.extend_from_slice(v.value());
    }
    Ok((index, data))
}

fn decode<C: DeserializeOwned>(index: u64, row: &[u8]) -> Result<LogEntry<C>, String> {
    let e = Entry::parse_from_bytes(row.get(8..).unwrap_or_default())
        .map_err(|e| format!("entry {index} does not decode: {e}"))?;
    let mut out = LogEntry {
        index,
        term: e.term,
        at_ms: 0,
        commands: Vec::new(),
    };
    if e.get_entry_type() == EntryType::EntryNormal && !e.get_data().is_empty() {
        let env = crate::envelope::decode::<C>(e.get_data())
            .map_err(|why| format!("entry {index}: {why}"))?;
        out.at_ms = env.at_ms;
        out.commands = env.groups.into_iter().flat_map(|g| g.cmds).collect();
    }
    Ok(out)
}
