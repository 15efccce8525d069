//! The leader's lease table: the last renewal per node, kept in memory (renewals never go
//! through the log). The engine hook reads it to declare nodes lost.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct LeaseTable {
    seen: Mutex<BTreeMap<String, Instant>>,
}

impl LeaseTable {
    pub fn renew(&self, node: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.insert(node.to_string(), Instant::now());
        }
    }

    /// A new leader grants everyone a full lease before judging anyone.
    pub fn grant_all(&self, nodes: impl Iterator<Item = String>) {
        if let Ok(mut s) = self.seen.lock() {
            let now = Instant::now();
            for n in nodes {
                s.insert(n, now);
            }
        }
    }

    /// No renewal for longer than `lease` (a node never seen counts from its grant).
    pub fn expired(&self, node: &str, lease: Duration) -> bool {
        let now = Instant::now();
        self.seen
            .lock()
            .map(|s| s.get(node).is_some_and(|t| now.duration_since(*t) > lease))
            .unwrap_or(false)
    }
}
