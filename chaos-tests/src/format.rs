//! The previous release's on-disk formats, for the upgrade step of the rolling restart (fault
//! matrix row 12): [`downgrade_snapshot`] rewrites a stopped node's `raft.redb` as a build of
//! 2026-12-03 wrote it: the snapshot image in layout version 2 (`actors/src/machine.rs`: the
//! version, then the state; version 3 appends the warm worker table), stored in raft-log's table
//! format 1 (the image in `raft_meta` under `snapshot_data`; format 2 keeps it in chunks in its
//! own table, `raft-log/src/storage.rs`). Started again, the node (this build) migrates the
//! table format on open, restores the image through its version-2 path and replays its log.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// raft-log's snapshot table (storage format 2, `raft-log/src/storage.rs`): the state-machine
/// image in chunks of 1 MiB keyed 0, 1, ...
const SNAPSHOT: TableDefinition<u32, &[u8]> = TableDefinition::new("raft_snapshot");
/// raft-log's meta table; in format 1 it also held the image.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// raft-log's table format in `raft_meta` (`format`, a u16 LE).
pub fn table_format(data_dir: &Path) -> Result<u16, String> {
    let db = Database::open(data_dir.join("raft.redb")).map_err(|e| format!("open: {e}"))?;
    let r = db.begin_read().map_err(|e| e.to_string())?;
    let t = r.open_table(META).map_err(|e| e.to_string())?;
    let f = t
        .get("format")
        .map_err(|e| e.to_string())?
        .ok_or("no format")?;
    match f.value() {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        other => Err(format!("format is {} bytes", other.len())),
    }
}

/// Rewrites `data_dir/raft.redb`'s snapshot image from version 3 to version 2 (the node must be
/// stopped). Returns the image's sizes (v3 bytes, v2 bytes).
pub fn downgrade_snapshot(data_dir: &Path) -> Result<(usize, usize), String> {
    let db = Database::open(data_dir.join("raft.redb")).map_err(|e| format!("open: {e}"))?;
    let mut image = Vec::new();
    {
        let r = db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        for item in t.iter().map_err(|e| e.to_string())? {
            image.extend_from_slice(item.map_err(|e| e.to_string())?.1.value());
        }
    }
    let (version, body) = match image.as_slice() {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return Err("no snapshot in the store".into()),
    };
    if version != 3 {
        return Err(format!("snapshot is version {version}, not 3"));
    }
    let (_, used): (troupe_scheduler::State, usize) =
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| format!("decode the state: {e}"))?;
    let mut v2 = 2u16.to_le_bytes().to_vec();
    v2.extend_from_slice(&body[..used]);
    let w = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = w.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        t.retain(|_, _| false).map_err(|e| e.to_string())?;
        let mut m = w.open_table(META).map_err(|e| e.to_string())?;
        m.insert("snapshot_data", v2.as_slice())
            .map_err(|e| e.to_string())?;
        m.insert("format", 1u16.to_le_bytes().as_slice())
            .map_err(|e| e.to_string())?;
    }
    w.commit().map_err(|e| e.to_string())?;
    Ok((image.len(), v2.len()))
}
