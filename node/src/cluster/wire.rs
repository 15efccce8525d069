//! What crosses between nodes. One message type with opaque payloads we encode ourselves
//! (bincode with a size limit): a payload that does not decode is logged and dropped, never a
//! panic, and adding a variant stays compatible (ractor_cluster matches variants by name).

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use troupe_scheduler::{RunSpec, TaskRef};

#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// A Raft message (protobuf bytes) for this server's engine.
    Raft(Vec<u8>),
    /// [`ExecMsg`] for this node's dispatcher.
    Exec(Vec<u8>),
    /// `Vec<Command>` to propose (fire-and-forget; a follower forwards it to the leader).
    Propose(Vec<u8>),
    /// A lease renewal ([`actors::dispatcher::Held`]), answered with a [`RenewReply`].
    #[rpc]
    Renew(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ExecMsg {
    Run(Vec<RunSpec>),
    Kill(Vec<(TaskRef, u32)>),
    /// Worker groups released in the replicated state: stop their workers. Appended last, so
    /// the variants before it keep their bincode index.
    StopWorkers(Vec<troupe_scheduler::state::GroupKey>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RenewReply {
    /// The answering server is the leader (only the leader's answer renews a lease).
    pub leader: bool,
    /// The node's epoch and status in the answering server's state.
    pub epoch: u64,
    pub up: bool,
    /// The leader's API address, when known (workers forward API calls there).
    pub leader_api: String,
}

/// Largest payload accepted from a peer (well under ractor_cluster's 16 MiB frame limit).
pub const PAYLOAD_BYTES_MAX: usize = 8 << 20;

// A renewal's reports fit a payload with room for its attempts (slots + queue, ~60 bytes each).
const _: () = assert!(troupe_actors::dispatcher::RENEW_REPORT_BYTES * 4 <= PAYLOAD_BYTES_MAX);

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let cfg = bincode::config::standard().with_limit::<PAYLOAD_BYTES_MAX>();
    match bincode::serde::decode_from_slice(bytes, cfg) {
        Ok((v, _)) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, bytes = bytes.len(), "dropping a cluster message that does not decode");
            None
        }
    }
}
