//! raft-log's `Transport` over ractor_cluster: a Raft message for server `to` is cast to the
//! members of pg group `troupe.raft.<to>` (the peer actor of that server). Casts never block;
//! raft tolerates the losses of a dropped session.

use super::raft_group;
use super::wire::PeerMsg;
use ractor::{ActorRef, pg};
use troupe_raft_log::Transport;

pub struct PgTransport;

impl Transport for PgTransport {
    fn send(&self, to: u64, msg: Vec<u8>) {
        let members = pg::get_members(&raft_group(to));
        match members.first() {
            Some(cell) => {
                let _ = ActorRef::<PeerMsg>::from(cell.clone()).cast(PeerMsg::Raft(msg));
            }
            None => tracing::trace!(to, "no session to raft peer; message dropped"),
        }
    }
}
