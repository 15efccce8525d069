//! The payload of one raft entry, laid out like raft-log's `Envelope` (raft-log/src/envelope.rs:
//! `{ v, at_ms, origin, groups }`, bincode 2 `config::standard()` with a 64 MiB limit, serde).
//! That type is private to raft-log, so it is mirrored here: the leader stamps `at_ms` when it
//! proposes and every replica applies the entry's commands with that time; `origin` is the
//! proposing replica's incarnation, so only it answers the group's waiter.

use serde::{Deserialize, Serialize};
use troupe_scheduler::Command;

/// raft-log's `ENVELOPE_VERSION`.
pub const ENTRY_VERSION: u16 = 1;
/// raft-log's `MAX_ENTRY_BYTES`.
pub const ENTRY_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub v: u16,
    pub at_ms: u64,
    pub origin: u64,
    pub groups: Vec<Group>,
}

/// One proposal: its commands apply in order; their outputs go to waiter `id` (0: nobody).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: u64,
    pub cmds: Vec<Command>,
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<ENTRY_BYTES_MAX>,
> {
    bincode::config::standard().with_limit::<ENTRY_BYTES_MAX>()
}

pub fn encode(e: &Entry) -> Vec<u8> {
    bincode::serde::encode_to_vec(e, config()).expect("scheduler commands always encode")
}

/// Decodes an entry; an entry that does not decode (or has trailing bytes) is an error, and the
/// simulator fails the run (the real engine fails stop).
pub fn decode(bytes: &[u8]) -> Result<Entry, String> {
    let (e, used): (Entry, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| format!("undecodable entry: {e}"))?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the entry",
            bytes.len() - used
        ));
    }
    if e.v != ENTRY_VERSION {
        return Err(format!("unsupported entry version {}", e.v));
    }
    Ok(e)
}
