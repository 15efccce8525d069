//! raft-log's on-disk table format, read from a stopped node's `raft.redb`, for the upgrade step
//! of the rolling restart (fault matrix row 12): the fixture `chaos-tests/fixtures/format1/`
//! (written by the previous release) is format 1, the snapshot image in `raft_meta` under
//! `snapshot_data`; format 2 keeps it in chunks in its own table (`raft-log/src/storage.rs`).

use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;

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
