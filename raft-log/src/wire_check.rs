//! A pre-check of protobuf bytes from peers, run before they reach the `protobuf` 2.28 decoder.
//!
//! Why this exists: raft-rs 0.7 (the newest release) needs `protobuf` 2.x, even with its
//! `prost-codec` feature, and every `protobuf` before 3.7.2 is flagged by RUSTSEC-2024-0437
//! (CVE-2025-53605: uncontrolled recursion, a stack overflow, when skipping nested unknown
//! groups). We cannot upgrade, so inbound bytes are checked here first. 2.28 itself skips a
//! group with a loop and refuses a group nested in it ("unexpected wire type", see
//! `deeply_nested_groups_are_refused`), so this is defense in depth: it holds whatever the
//! decoder does, and it is the mitigation recorded with the advisory's exception in `deny.toml`.
//!
//! Why it is hand-written: it is a schema-aware walk of the wire format, not a decoder. It
//! knows which fields of the `eraftpb` messages are themselves messages (the only places the
//! decoder descends) and refuses any group tag (wire types 3 and 4) at every level the decoder
//! reads; `eraftpb` is proto3 and declares no groups, so no valid message has one. It also
//! refuses anything over a byte bound, truncated fields and invalid wire types. Its own
//! recursion follows the static schema (at most 4 levels), never the input.

use std::fmt;

/// The largest raft message accepted from a peer: the node's transport frame limit (96 MiB),
/// which bounds a snapshot sent in one `MsgSnapshot`.
pub const MESSAGE_BYTES_MAX: usize = 96 << 20;

/// The `eraftpb` messages checked, each with the fields that are messages themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schema {
    /// `eraftpb.Message`: `entries` (7) are `Entry`, `snapshot` (9) is a `Snapshot`.
    Message,
    /// `eraftpb.Entry`: no message fields.
    Entry,
    /// `eraftpb.Snapshot`: `metadata` (2) is a `SnapshotMetadata`.
    Snapshot,
    /// `eraftpb.SnapshotMetadata`: `conf_state` (1) is a `ConfState`.
    SnapshotMetadata,
    /// `eraftpb.ConfState`: no message fields.
    ConfState,
    /// `eraftpb.ConfChange`: no message fields.
    ConfChange,
    /// `eraftpb.ConfChangeV2`: `changes` (2) are `ConfChangeSingle`.
    ConfChangeV2,
    /// `eraftpb.ConfChangeSingle`: no message fields.
    ConfChangeSingle,
}

impl Schema {
    /// The schema of field `field` when it holds a message.
    fn nested(self, field: u32) -> Option<Schema> {
        match (self, field) {
            (Schema::Message, 7) => Some(Schema::Entry),
            (Schema::Message, 9) => Some(Schema::Snapshot),
            (Schema::Snapshot, 2) => Some(Schema::SnapshotMetadata),
            (Schema::SnapshotMetadata, 1) => Some(Schema::ConfState),
            (Schema::ConfChangeV2, 2) => Some(Schema::ConfChangeSingle),
            _ => None,
        }
    }
}

/// Why bytes were refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireCheckError {
    /// Over [`MESSAGE_BYTES_MAX`].
    TooLarge {
        /// Size of the input.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// A group tag (wire type 3 or 4): `eraftpb` has no groups, and nested groups are what
    /// overflows the stack of the vulnerable decoders.
    Group {
        /// The message the tag was found in.
        schema: Schema,
        /// Its field number.
        field: u32,
        /// Byte offset of the tag in the input.
        offset: usize,
    },
    /// Wire type 6 or 7, or field number 0.
    BadTag {
        /// Byte offset of the tag in the input.
        offset: usize,
    },
    /// A varint, fixed-width value or length-delimited field runs past the end of its message.
    Truncated {
        /// Byte offset where the field started.
        offset: usize,
    },
}

impl fmt::Display for WireCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireCheckError::TooLarge { bytes, max } => {
                write!(
                    f,
                    "protobuf input of {bytes} bytes is over the {max}-byte limit"
                )
            }
            WireCheckError::Group {
                schema,
                field,
                offset,
            } => write!(
                f,
                "protobuf group tag (field {field} of {schema:?}, byte {offset}) refused: eraftpb \
                 has no groups (guard against RUSTSEC-2024-0437)"
            ),
            WireCheckError::BadTag { offset } => {
                write!(f, "invalid protobuf tag at byte {offset}")
            }
            WireCheckError::Truncated { offset } => {
                write!(f, "truncated protobuf field at byte {offset}")
            }
        }
    }
}

impl std::error::Error for WireCheckError {}

/// Checks `bytes` as an encoded `schema` before it is handed to `protobuf`.
pub(crate) fn check(schema: Schema, bytes: &[u8]) -> Result<(), WireCheckError> {
    check_within(schema, bytes, MESSAGE_BYTES_MAX)
}

/// [`check`] with another byte bound (tests).
fn check_within(schema: Schema, bytes: &[u8], max: usize) -> Result<(), WireCheckError> {
    if bytes.len() > max {
        return Err(WireCheckError::TooLarge {
            bytes: bytes.len(),
            max,
        });
    }
    walk(schema, bytes, 0)
}

/// Walks the fields of one message in `buf`, which starts at `base` in the whole input.
fn walk(schema: Schema, buf: &[u8], base: usize) -> Result<(), WireCheckError> {
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let at = base + start;
        let tag = varint(buf, &mut pos).ok_or(WireCheckError::Truncated { offset: at })?;
        let field = u32::try_from(tag >> 3).map_err(|_| WireCheckError::BadTag { offset: at })?;
        if field == 0 {
            return Err(WireCheckError::BadTag { offset: at });
        }
        match tag & 7 {
            0 => {
                varint(buf, &mut pos).ok_or(WireCheckError::Truncated { offset: at })?;
            }
            1 => skip(buf, &mut pos, 8).ok_or(WireCheckError::Truncated { offset: at })?,
            5 => skip(buf, &mut pos, 4).ok_or(WireCheckError::Truncated { offset: at })?,
            2 => {
                let len = varint(buf, &mut pos)
                    .and_then(|l| usize::try_from(l).ok())
                    .ok_or(WireCheckError::Truncated { offset: at })?;
                let body_at = pos;
                skip(buf, &mut pos, len).ok_or(WireCheckError::Truncated { offset: at })?;
                if let Some(inner) = schema.nested(field) {
                    walk(inner, &buf[body_at..pos], base + body_at)?;
                }
            }
            3 | 4 => {
                return Err(WireCheckError::Group {
                    schema,
                    field,
                    offset: at,
                });
            }
            _ => return Err(WireCheckError::BadTag { offset: at }),
        }
    }
    Ok(())
}

/// Reads a varint (at most 10 bytes) at `*pos`, advancing it.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Advances `*pos` by `n` bytes if they are there.
fn skip(buf: &[u8], pos: &mut usize, n: usize) -> Option<()> {
    let end = pos.checked_add(n).filter(|&e| e <= buf.len())?;
    *pos = end;
    Some(())
}

#[cfg(test)]
mod tests;
