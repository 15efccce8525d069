//! The leader's lease judge, on simulated time: a node that sent no renewal for `lease_ms` is
//! proposed lost (once per (node, epoch)). A new leader first grants every node a full lease,
//! like actors/src/leases.rs (which reads `Instant`, so it is not reused here).

use std::collections::{BTreeMap, BTreeSet};
use troupe_scheduler::state::NodeStatus;
use troupe_scheduler::{Command, State};

#[derive(Debug, Default)]
pub struct Judge {
    pub lease_ms: u64,
    seen: BTreeMap<String, u64>,
    proposed: BTreeSet<(String, u64)>,
    /// The epoch each node got its lease at (a node that registered again gets a full lease).
    granted: BTreeMap<String, u64>,
    leading: bool,
}

impl Judge {
    pub fn new(lease_ms: u64) -> Self {
        Judge {
            lease_ms,
            ..Default::default()
        }
    }

    pub fn renew(&mut self, node: &str, now_ms: u64) {
        self.seen.insert(node.to_string(), now_ms);
    }

    /// A follower judges nothing; when it leads again it starts from fresh leases.
    pub fn follow(&mut self) {
        self.leading = false;
    }

    pub fn judge(&mut self, state: &State, now_ms: u64) -> Vec<Command> {
        if !self.leading {
            self.leading = true;
            self.proposed.clear();
            for id in state.sched.nodes.keys() {
                self.seen.insert(id.clone(), now_ms);
            }
        }
        let mut out = Vec::new();
        for n in state.sched.nodes.values() {
            if n.status == NodeStatus::Down {
                continue;
            }
            if self.granted.insert(n.id.clone(), n.epoch) != Some(n.epoch) {
                self.seen.insert(n.id.clone(), now_ms);
            }
            let last = *self.seen.entry(n.id.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(last) > self.lease_ms
                && self.proposed.insert((n.id.clone(), n.epoch))
            {
                out.push(Command::NodeLost {
                    node: n.id.clone(),
                    epoch: n.epoch,
                });
            }
        }
        out
    }
}
