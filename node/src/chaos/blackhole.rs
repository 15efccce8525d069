//! The silent partition: a node cut from some peers keeps its cluster sessions, and every
//! cluster frame ([`crate::cluster::wire::PeerMsg`]: Raft, Exec, Propose, Renew) between them
//! is dropped, so both sides see silence (no answers, no refused connections) and react as they
//! would to a real blackhole: leases expire, check-quorum deposes a leader, the majority elects
//! a new one.
//!
//! Where frames are dropped: a frame is serialized only when it goes to another process, and
//! deserialized only when it comes from one (`PeerMsg`'s `ractor::Message` impl in `wire`). On a
//! node with `--fault-injection`, every outgoing frame carries a small stamp in ractor_cluster's
//! per-message metadata: the sender's node id and, while it is partitioned, the nodes it is cut
//! from. The receiving node drops a frame before any actor sees it when
//!
//! - the sender's stamp says the sender is cut from the receiver (the sender's partition: its
//!   outgoing frames are discarded on arrival, so a call to a cut peer times out as it would in
//!   a real blackhole, rather than failing at once), or
//! - the receiver is partitioned from the sender (its own partition: incoming frames), or
//! - the frame has no stamp (a node without `--fault-injection`) and the receiver is cut from
//!   every node.
//!
//! A dropped call's reply port is dropped with it: ractor_cluster sends no reply, the caller's
//! timeout runs out. ractor_cluster's own control frames (handshake, pg membership) are not
//! touched, so the sessions stay up. A frame of a node that is not this release (no stamp,
//! metadata it cannot read) is never dropped for the sender's partition.

use super::Chaos;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// The first byte of a stamp; another value is not ours (ignored).
const STAMP_V1: u8 = 1;

/// This process's node id and fault state, registered at start with `--fault-injection`. One
/// node per process (the `troupe` binary); a second registration is ignored.
static HERE: OnceLock<(String, Arc<Chaos>)> = OnceLock::new();

/// Enables the blackhole for this process's node (`--fault-injection` only).
pub fn register(node: &str, chaos: Arc<Chaos>) {
    if HERE.set((node.to_string(), chaos)).is_err() {
        tracing::warn!(
            node,
            "a second node in this process asked for chaos partitions; only the first has them"
        );
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stamp {
    /// The sender's node id.
    from: String,
    /// The sender's blackhole partition, if one is in force.
    cut: Option<Cut>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Cut {
    All,
    Nodes(Vec<String>),
}

/// The metadata for a frame leaving this process (`None`: no stamp, chaos is off).
pub fn stamp() -> Option<Vec<u8>> {
    let (node, chaos) = HERE.get()?;
    Some(encode_stamp(node, chaos))
}

fn encode_stamp(node: &str, chaos: &Chaos) -> Vec<u8> {
    let stamp = Stamp {
        from: node.to_string(),
        cut: chaos.blackhole().map(|c| match c {
            None => Cut::All,
            Some(nodes) => Cut::Nodes(nodes),
        }),
    };
    let mut out = vec![STAMP_V1];
    out.extend(crate::cluster::wire::encode(&stamp));
    out
}

fn decode_stamp(meta: Option<&[u8]>) -> Option<Stamp> {
    let (&v, rest) = meta?.split_first()?;
    if v != STAMP_V1 {
        return None;
    }
    let cfg = bincode::config::standard().with_limit::<4096>();
    bincode::serde::decode_from_slice(rest, cfg)
        .ok()
        .map(|(s, _)| s)
}

/// Whether a frame that arrived from another process with this metadata is dropped (counted).
pub fn drops(meta: Option<&[u8]>) -> bool {
    let Some((node, chaos)) = HERE.get() else {
        return false;
    };
    let drop = judge(node, chaos, meta);
    if drop {
        chaos.count_dropped_frame();
    }
    drop
}

fn judge(me: &str, chaos: &Chaos, meta: Option<&[u8]>) -> bool {
    let stamp = decode_stamp(meta);
    let sender_cut = match stamp.as_ref().and_then(|s| s.cut.as_ref()) {
        Some(Cut::All) => true,
        Some(Cut::Nodes(nodes)) => nodes.iter().any(|n| n == me),
        None => false,
    };
    sender_cut || chaos.blackholes(stamp.as_ref().map(|s| s.from.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::fault::{FaultRequest, Kind, PartitionMode};

    fn partition(from: Option<Vec<&str>>, mode: Option<PartitionMode>) -> Arc<Chaos> {
        let c = Arc::new(Chaos::default());
        let req = FaultRequest {
            kind: Kind::Partition,
            node: "n1".into(),
            from: from.map(|f| f.into_iter().map(String::from).collect()),
            mode,
            api: None,
            for_ms: 60_000,
            delay_ms: None,
            skew_ms: None,
        };
        c.inject(&req, std::env::temp_dir()).unwrap();
        c
    }

    #[tokio::test]
    async fn frames_between_cut_nodes_are_dropped_both_ways_and_others_pass() {
        let quiet = Chaos::default();
        // n1 is cut from n2 (not n3).
        let n1 = partition(Some(vec!["n2"]), None);
        let from_n1 = encode_stamp("n1", &n1);
        let from_n2 = encode_stamp("n2", &quiet);
        let from_n3 = encode_stamp("n3", &quiet);
        // n1's outgoing frames: dropped at n2, delivered at n3.
        assert!(judge("n2", &quiet, Some(&from_n1)));
        assert!(!judge("n3", &quiet, Some(&from_n1)));
        // n1's incoming frames: from n2 dropped, from n3 delivered.
        assert!(judge("n1", &n1, Some(&from_n2)));
        assert!(!judge("n1", &n1, Some(&from_n3)));
        // An unstamped frame: its sender is unknown, kept unless cut from every node.
        assert!(!judge("n1", &n1, None));
        let all = partition(None, None);
        assert!(judge("n1", &all, None));
        assert!(judge("n1", &all, Some(&from_n3)));
        assert!(judge("n3", &quiet, Some(&encode_stamp("n1", &all))));
        // No partition: nothing dropped; metadata that is not a stamp is ignored.
        assert!(!judge("n2", &quiet, Some(&from_n3)));
        assert!(!judge("n2", &quiet, Some(&[9, 9, 9])));
        assert!(!judge("n2", &quiet, Some(&[])));
    }

    #[tokio::test]
    async fn a_reset_partition_drops_no_frames() {
        let quiet = Chaos::default();
        let n1 = partition(None, Some(PartitionMode::Reset));
        assert!(!judge("n2", &quiet, Some(&encode_stamp("n1", &n1))));
        assert!(!judge("n1", &n1, Some(&encode_stamp("n2", &quiet))));
    }
}
