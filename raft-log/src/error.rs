//! Error types: [`RaftLogError`] (opening and running the log) and [`ProposeError`] (proposals).

use std::path::{Path, PathBuf};

/// Why the log could not be opened, or why the engine stopped.
#[derive(thiserror::Error, Debug)]
pub enum RaftLogError {
    /// The redb file is locked by another `Database` (another process, or another engine in this one).
    #[error(
        "data dir {} is in use by another troupe process (its raft log is locked); stop that process or use another data dir",
        dir.display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// The file failed its checksums or holds impossible contents.
    #[error(
        "raft log {} is corrupt: {detail}; restore it from a backup, or move it away to start an empty log",
        path.display()
    )]
    Corrupt {
        /// The redb file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The file was written by another (older or newer) format.
    #[error(
        "raft log {} has an unsupported format ({detail}); open it with the troupe version that wrote it",
        path.display()
    )]
    Incompatible {
        /// The redb file.
        path: PathBuf,
        /// Which format was found.
        detail: String,
    },
    /// An I/O error from the file system.
    #[error("i/o error on {}: {source}; check the disk and the permissions of the data dir", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Any other redb or encoding failure while reading or writing the log.
    #[error("raft log storage error on {}: {detail}; check the disk, then restart the node", path.display())]
    Storage {
        /// The redb file.
        path: PathBuf,
        /// The underlying error.
        detail: String,
    },
    /// raft-rs refused the configuration or the stored state.
    #[error("raft error: {0}; the stored raft state does not fit this version, restore a backup")]
    Raft(String),
    /// raft-rs panicked while stepping a peer's message: the message broke one of raft's
    /// invariants (a broken or incompatible peer), or raft-rs hit a bug of its own. The engine
    /// stops (fail-stop) rather than go on from a state raft left half-updated; the log on disk
    /// is untouched, so a restart replays it.
    #[error(
        "raft panicked on a {kind} message from node {from}; the engine stopped so nothing is applied from a half-updated state. The log on disk is intact: restart the node. If it happens again, check that node {from} runs the same version"
    )]
    StepPanicked {
        /// The sender's Raft id.
        from: u64,
        /// The message type, as raft names it (`MsgAppendResponse`, ...).
        kind: String,
    },
    /// `StateMachine::restore` rejected the stored snapshot.
    #[error(
        "restoring the state machine from the snapshot at index {index} failed: {detail}; the snapshot was written by an incompatible version"
    )]
    Restore {
        /// Raft index of the snapshot.
        index: u64,
        /// The error returned by `restore`.
        detail: String,
    },
    /// The thread building a snapshot died before it produced one (the state machine panicked
    /// while serializing). Compacting without it would lose state, so the engine stops.
    #[error(
        "building the raft snapshot at index {index} failed: {detail}; the engine stopped rather than compact the log without it"
    )]
    SnapshotFailed {
        /// Raft index the snapshot was for.
        index: u64,
        /// What happened.
        detail: String,
    },
    /// A committed entry does not decode (written by a newer version, or corrupt). Applying past
    /// it would let this replica diverge from the others, so the engine stops (fail-stop).
    #[error(
        "committed raft entry {index} cannot be applied: {detail}; the engine stopped rather than skip it (replicas would diverge). Run the troupe version that wrote it, or restore a backup"
    )]
    Undecodable {
        /// Raft index of the entry.
        index: u64,
        /// Why it does not decode.
        detail: String,
    },
    /// An [`crate::EngineConfig`] field is out of range.
    #[error("invalid raft engine config: {0}")]
    Config(String),
    /// The engine thread died before the log was ready (a panic in the state machine, for example).
    #[error("raft engine thread stopped during startup: {0}; see the log above for the cause")]
    Startup(String),
    /// The engine is closed (it stopped, or is being reopened); retry once it runs again.
    #[error("the raft log is closed (the engine stopped or is restarting); retry in a second")]
    Closed,
}

impl RaftLogError {
    /// The disk failed under the log (I/O, a write redb could not complete, a full disk).
    pub fn is_disk(&self) -> bool {
        matches!(self, RaftLogError::Io { .. } | RaftLogError::Storage { .. })
    }

    /// Maps a redb error on the file `path`.
    pub(crate) fn from_redb(path: &Path, err: impl Into<redb::Error>) -> Self {
        let path_buf = path.to_path_buf();
        match err.into() {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                RaftLogError::InUse {
                    dir: path.parent().map(Path::to_path_buf).unwrap_or(path_buf),
                }
            }
            redb::Error::Corrupted(detail) => RaftLogError::Corrupt {
                path: path_buf,
                detail,
            },
            redb::Error::UpgradeRequired(v) => RaftLogError::Incompatible {
                path: path_buf,
                detail: format!("redb file format {v} needs an upgrade"),
            },
            // redb reports a file that is not a redb database as InvalidData.
            redb::Error::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => {
                RaftLogError::Corrupt {
                    path: path_buf,
                    detail: source.to_string(),
                }
            }
            redb::Error::Io(source) => RaftLogError::Io {
                path: path_buf,
                source,
            },
            other => RaftLogError::Storage {
                path: path_buf,
                detail: other.to_string(),
            },
        }
    }
}

/// Why a proposal was not (or may not have been) applied.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// The bounded queue, or raft's uncommitted-size limit, is full. Map it to HTTP 429.
    #[error("raft log is busy (proposal queue full); retry later")]
    Busy,
    /// This node is not the raft leader.
    #[error("this node is not the raft leader; send the request to the leader")]
    NotLeader,
    /// The engine has stopped (shutdown, or a fatal storage error).
    #[error("raft engine is stopped; restart the node")]
    Stopped,
    /// The proposal was rejected or lost; the text says why and what to do.
    #[error("proposal dropped: {0}")]
    Dropped(String),
}
