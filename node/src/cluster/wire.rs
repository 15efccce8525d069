//! What crosses between nodes. One message type with opaque payloads we encode ourselves
//! (bincode with a size limit): a payload that does not decode is logged and dropped, never a
//! panic, and adding a variant stays compatible (ractor_cluster matches variants by name).
//!
//! Every frame passes [`crate::chaos::blackhole`] here: with `--fault-injection` an outgoing
//! frame carries the sender's stamp in ractor_cluster's metadata, and an incoming frame that a
//! blackhole partition cuts becomes [`PeerMsg::Blackholed`] (dropped, reply port and all).

use ractor::RpcReplyPort;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use troupe_scheduler::{RunSpec, TaskRef};

pub enum PeerMsg {
    /// A Raft message (protobuf bytes) for this server's engine.
    Raft(Vec<u8>),
    /// [`ExecMsg`] for this node's dispatcher.
    Exec(Vec<u8>),
    /// `Vec<Command>` to propose (fire-and-forget; a follower forwards it to the leader).
    Propose(Vec<u8>),
    /// A lease renewal ([`actors::dispatcher::Held`]), answered with a [`RenewReply`].
    Renew(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Local only, never on the wire: a frame from another node that a blackhole partition
    /// cut (chaos); the peer actor ignores it.
    Blackholed,
}

/// The wire form of [`PeerMsg`] (ractor_cluster's derive: each variant by its name). Same
/// variant names, so the bytes on the wire are what the derive on `PeerMsg` produced before.
#[derive(RactorClusterMessage)]
enum Frame {
    Raft(Vec<u8>),
    Exec(Vec<u8>),
    Propose(Vec<u8>),
    #[rpc]
    Renew(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl ractor::Message for PeerMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        let frame = match self {
            PeerMsg::Raft(b) => Frame::Raft(b),
            PeerMsg::Exec(b) => Frame::Exec(b),
            PeerMsg::Propose(b) => Frame::Propose(b),
            PeerMsg::Renew(b, reply) => Frame::Renew(b, reply),
            PeerMsg::Blackholed => return Err(BoxedDowncastErr),
        };
        let mut msg = ractor::Message::serialize(frame)?;
        if let Some(stamp) = crate::chaos::blackhole::stamp() {
            match &mut msg {
                SerializedMessage::Cast { metadata, .. }
                | SerializedMessage::Call { metadata, .. } => *metadata = Some(stamp),
                SerializedMessage::CallReply(..) => {}
            }
        }
        Ok(msg)
    }

    fn deserialize(msg: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        let dropped = match &msg {
            SerializedMessage::Cast { metadata, .. } | SerializedMessage::Call { metadata, .. } => {
                crate::chaos::blackhole::drops(metadata.as_deref())
            }
            SerializedMessage::CallReply(..) => false,
        };
        let frame = <Frame as ractor::Message>::deserialize(msg)?;
        if dropped {
            // A call's reply port goes with it: no reply is sent, the caller times out.
            return Ok(PeerMsg::Blackholed);
        }
        Ok(match frame {
            Frame::Raft(b) => PeerMsg::Raft(b),
            Frame::Exec(b) => PeerMsg::Exec(b),
            Frame::Propose(b) => PeerMsg::Propose(b),
            Frame::Renew(b, reply) => PeerMsg::Renew(b, reply),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_keep_the_variant_names_of_the_wire() {
        for (msg, name) in [
            (PeerMsg::Raft(vec![1]), "Raft"),
            (PeerMsg::Exec(vec![2]), "Exec"),
            (PeerMsg::Propose(vec![3]), "Propose"),
        ] {
            let s = ractor::Message::serialize(msg).unwrap();
            let SerializedMessage::Cast { variant, .. } = &s else {
                panic!("a cast")
            };
            assert_eq!(variant, name);
            let back = <PeerMsg as ractor::Message>::deserialize(s).unwrap();
            assert!(!matches!(back, PeerMsg::Blackholed));
        }
        let (tx, _rx) = ractor::concurrency::oneshot();
        let s = ractor::Message::serialize(PeerMsg::Renew(vec![4], tx.into())).unwrap();
        assert!(matches!(&s, SerializedMessage::Call { variant, .. } if variant == "Renew"));
        assert!(ractor::Message::serialize(PeerMsg::Blackholed).is_err());
    }
}
