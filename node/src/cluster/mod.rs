//! Clustering: servers form a Raft group over ractor_cluster (cookie-authenticated sessions),
//! workers join them, every node renews a lease with the leader, and the leader declares nodes
//! whose lease expired lost.
//!
//! - [`wire`] — the one cluster message type and its payloads (bincode, versioned by variant).
//! - [`membership`] — the ractor_cluster NodeServer and the dialing / reconnect loop.
//! - [`sessions`] — what each session's handshake came to; a node every server refuses.
//! - [`peer`] — the per-node actor that receives Raft messages, runs, proposals and renewals.
//! - [`lease`] — renewals and self-fencing on every node; the leader's lease table.
//! - [`transport`] — raft-log's `Transport` over pg groups.

pub mod lease;
pub mod membership;
pub mod peer;
pub mod sessions;
pub mod stall;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Worker,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub role: Role,
    /// Where this node's cluster transport listens.
    pub listen: SocketAddr,
    /// Cluster addresses of the servers (for a server: the other servers).
    pub join: Vec<SocketAddr>,
    /// Shared secret; a peer with another cookie is refused.
    pub cookie: String,
    /// A node whose lease is not renewed for this long is declared lost.
    pub lease: Duration,
    /// How often a node renews its lease.
    pub renew: Duration,
    /// Mutual TLS between nodes (`None`: plain TCP, cookie only).
    pub tls: Option<tls::TlsFiles>,
    /// A server added to a running group: its Raft id (given, not derived from addresses), and
    /// it starts with an empty log until the leader adds it and sends a snapshot.
    pub join_existing: Option<u64>,
}

impl ClusterConfig {
    /// Every server's cluster address, sorted: a server's Raft id is its position + 1, so all
    /// servers started with the same set agree without coordination.
    pub fn servers(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.join.clone();
        if self.role == Role::Server {
            all.push(self.listen);
        }
        all.sort();
        all.dedup();
        all
    }

    /// This server's Raft id (0 for a worker).
    pub fn raft_id(&self) -> u64 {
        if let Some(id) = self.join_existing {
            return id;
        }
        match self.role {
            Role::Worker => 0,
            Role::Server => self
                .servers()
                .iter()
                .position(|a| *a == self.listen)
                .map(|p| p as u64 + 1)
                .unwrap_or(0),
        }
    }

    pub fn voters(&self) -> Vec<u64> {
        (1..=self.servers().len() as u64).collect()
    }
}

pub fn raft_group(id: u64) -> String {
    format!("troupe.raft.{id}")
}
pub fn exec_group(node: &str) -> String {
    format!("troupe.exec.{node}")
}
pub const SERVERS_GROUP: &str = "troupe.servers";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_follow_the_sorted_server_addresses() {
        let mk = |listen: &str, join: &[&str]| ClusterConfig {
            role: Role::Server,
            listen: listen.parse().unwrap(),
            join: join.iter().map(|j| j.parse().unwrap()).collect(),
            cookie: "c".into(),
            lease: Duration::from_secs(2),
            renew: Duration::from_millis(500),
            tls: None,
            join_existing: None,
        };
        let a = mk("127.0.0.2:7100", &["127.0.0.1:7100", "127.0.0.3:7100"]);
        let b = mk(
            "127.0.0.1:7100",
            &["127.0.0.3:7100", "127.0.0.2:7100", "127.0.0.1:7100"],
        );
        assert_eq!(a.raft_id(), 2);
        assert_eq!(b.raft_id(), 1);
        assert_eq!(a.voters(), vec![1, 2, 3]);
    }
}
