//! The previous snapshot format, for the upgrade step of the rolling restart (fault matrix row
//! 12): [`downgrade_snapshot`] rewrites the snapshot in a stopped node's `raft.redb` in layout
//! version 2 (`actors/src/machine.rs`: the version, then the state; version 3 appends the warm
//! worker table), which is what a build before version 3 wrote. Started again, the node (this
//! build) restores it through its version-2 path and replays its log after it.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// raft-log's snapshot table (storage format 2, `raft-log/src/storage.rs`): the state-machine
/// image in chunks of 1 MiB keyed 0, 1, ...
const SNAPSHOT: TableDefinition<u32, &[u8]> = TableDefinition::new("raft_snapshot");
const CHUNK: usize = 1 << 20;

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
        for (i, chunk) in v2.chunks(CHUNK).enumerate() {
            t.insert(i as u32, chunk).map_err(|e| e.to_string())?;
        }
    }
    w.commit().map_err(|e| e.to_string())?;
    Ok((image.len(), v2.len()))
}
