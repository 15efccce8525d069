//! Linearizable status reads, as the API serves them in a cluster (`linearize` in
//! node/src/api/handlers.rs): the leader asks raft for a ReadIndex (it confirms with a quorum
//! that it still leads), and answers once its state has applied up to that index. A deposed
//! leader cannot confirm: its reads are answered `Indeterminate` when it steps down, and the
//! client may try again.

use crate::net::{Addr, Payload, Reply};
use crate::replica::{Cx, Replica};
use raft::ReadState;
use std::collections::BTreeMap;
use troupe_scheduler::WorkflowId;

#[derive(Debug, Default)]
pub struct Reads {
    /// op -> (client, workflow): asked, not yet confirmed.
    asked: BTreeMap<u64, (Addr, WorkflowId)>,
    /// (read index, op) -> (client, workflow): confirmed by a quorum.
    confirmed: BTreeMap<(u64, u64), (Addr, WorkflowId)>,
}

impl Replica {
    pub(crate) fn on_read(&mut self, from: Addr, op: u64, wf: WorkflowId, cx: &mut Cx) {
        let me = Addr::Replica(self.id);
        let leads = self.is_leader();
        let Some(node) = self.node.as_mut().filter(|_| leads) else {
            let leader = self.node.as_ref().map_or(0, |n| n.raft.leader_id);
            let reply = Reply::NotLeader { leader };
            cx.net.send(cx.now, me, from, Payload::Reply { op, reply });
            return;
        };
        node.read_index(op.to_le_bytes().to_vec());
        self.reads.asked.insert(op, (from, wf));
    }

    /// Raft confirmed these reads at these indexes.
    pub(crate) fn confirmed(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(op) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()).map(u64::from_le_bytes)
            else {
                continue;
            };
            if let Some(w) = self.reads.asked.remove(&op) {
                self.reads.confirmed.insert((rs.index, op), w);
            }
        }
    }

    /// Answers the confirmed reads whose index the state has applied.
    pub(crate) fn answer_reads(&mut self, cx: &mut Cx) {
        let me = Addr::Replica(self.id);
        while let Some((&(index, op), &(to, wf))) = self.reads.confirmed.first_key_value() {
            if index > self.applied {
                break;
            }
            self.reads.confirmed.remove(&(index, op));
            cx.checks.count("read answered");
            let status = self.state.workflows.get(&wf).map(|w| w.status);
            let reply = Reply::Status(status);
            cx.net.send(cx.now, me, to, Payload::Reply { op, reply });
        }
    }

    /// Stepped down: reads not yet confirmed never will be.
    pub(crate) fn drop_reads(&mut self, cx: &mut Cx) {
        let me = Addr::Replica(self.id);
        for (op, (to, _)) in std::mem::take(&mut self.reads.asked) {
            let reply = Reply::Indeterminate;
            cx.net.send(cx.now, me, to, Payload::Reply { op, reply });
        }
    }
}
