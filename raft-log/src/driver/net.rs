//! Talking to peers (part of the engine thread): outbound messages to the [`crate::Transport`],
//! the inbound queue (raft messages into raft, read barriers), and ReadIndex waiters.
//!
//! Read barriers: each `read_index` gets a 16-byte context (incarnation nonce, sequence number)
//! handed to `RawNode::read_index`; raft answers with a `ReadState` in a later Ready (a follower
//! forwards the request to the leader). The waiter is answered once `applied >= index`. raft drops
//! such requests silently (no leader, a leader that has not committed in its term yet, a lost
//! message), so every waiter has a deadline of two election timeouts, and a leader change fails
//! the requests still waiting for their index.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use raft::{ReadState, SnapshotStatus};

use super::Driver;
use crate::StateMachine;
use crate::engine::{Inbound, ReadReply};
use crate::error::{ProposeError, RaftLogError};

/// One outstanding read barrier.
pub(super) struct ReadWaiter {
    reply: ReadReply,
    deadline: Instant,
    /// The leader's commit index at the time of the request, once raft returned it.
    index: Option<u64>,
    /// The leader the request went to.
    leader: u64,
}

/// Outstanding read barriers by sequence number.
#[derive(Default)]
pub(super) struct Reads {
    waiters: BTreeMap<u64, ReadWaiter>,
    next_seq: u64,
}

/// At most this many inbound items are taken per cycle, so proposals and ticks keep their turn.
const NET_BUDGET: usize = 4096;

impl<M: StateMachine> Driver<M> {
    /// Hands raft messages to the transport (dropped without one). A `MsgSnapshot` counts as
    /// delivered once handed over: raft then probes the follower and sends a fresh snapshot if
    /// it never arrived.
    pub(super) fn send_messages(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Some(transport) = self.cfg.transport.clone() else {
            tracing::trace!(
                count = msgs.len(),
                "no raft transport configured; dropping messages"
            );
            for m in &msgs {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.node.report_snapshot(m.to, SnapshotStatus::Failure);
                }
                self.node.report_unreachable(m.to);
            }
            return;
        };
        for m in msgs {
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            match m.write_to_bytes() {
                Ok(bytes) => {
                    if snapshot {
                        tracing::info!(
                            to = m.to,
                            index = m.get_snapshot().get_metadata().index,
                            bytes = bytes.len(),
                            "sending a raft snapshot"
                        );
                    }
                    transport.send(m.to, bytes);
                    if snapshot {
                        self.node.report_snapshot(m.to, SnapshotStatus::Finish);
                    }
                }
                Err(error) => {
                    tracing::error!(to = m.to, %error, "dropping a raft message that does not encode");
                    if snapshot {
                        self.node.report_snapshot(m.to, SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    /// Takes what waits in the inbound queue. (`wake_pending` was cleared when the wake-up
    /// was received, before this drain: an item queued after it sends a new wake-up.)
    pub(super) fn take_inbound(&mut self) -> Result<(), RaftLogError> {
        for _ in 0..NET_BUDGET {
            match self.net_rx.try_recv() {
                Ok(item) => self.on_inbound(item)?,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        Ok(())
    }

    pub(super) fn on_inbound(&mut self, item: Inbound) -> Result<(), RaftLogError> {
        match item {
            Inbound::Msg(m) => self.step_message(m),
            Inbound::Read(reply) => {
                self.start_read(reply);
                Ok(())
            }
        }
    }

    /// Steps one inbound message. raft rejects local message types and responses from unknown
    /// peers (logged). A panic inside raft (a message that violates raft's invariants, which
    /// only a broken peer sends) stops the engine cleanly instead of unwinding the thread.
    fn step_message(&mut self, m: Message) -> Result<(), RaftLogError> {
        let (from, kind) = (m.from, m.get_msg_type());
        let stepped = catch_unwind(AssertUnwindSafe(|| self.node.step(m)));
        self.fix_timeout();
        match stepped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::debug!(from, ?kind, %error, "raft refused a message");
                Ok(())
            }
            Err(_) => Err(RaftLogError::StepPanicked {
                from,
                kind: format!("{kind:?}"),
            }),
        }
    }

    /// Asks raft for a read index (answered through [`Self::on_read_states`]).
    fn start_read(&mut self, reply: ReadReply) {
        let leader = self.node.raft.leader_id;
        if leader == raft::INVALID_ID {
            let _ = reply.send(Err(ProposeError::Dropped(
                "no raft leader is known (election in progress?); retry later".into(),
            )));
            return;
        }
        let reads = &mut self.reads;
        reads.next_seq += 1;
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&self.incarnation.to_le_bytes());
        ctx.extend_from_slice(&reads.next_seq.to_le_bytes());
        let timeout = Duration::from_millis(2 * self.cfg.election_tick as u64 * self.cfg.tick_ms);
        reads.waiters.insert(
            reads.next_seq,
            ReadWaiter {
                reply,
                deadline: self.cfg.time.now() + timeout,
                index: None,
                leader,
            },
        );
        self.node.read_index(ctx);
    }

    /// Records the read indexes raft returned for our requests.
    pub(super) fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let ctx = &rs.request_ctx;
            let ours = ctx.len() == 16 && ctx[..8] == self.incarnation.to_le_bytes();
            let seq = ctx
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            match seq
                .filter(|_| ours)
                .and_then(|s| self.reads.waiters.get_mut(&s))
            {
                Some(w) => w.index = Some(rs.index),
                None => tracing::debug!(index = rs.index, "ignoring an unknown raft read state"),
            }
        }
    }

    /// Answers reads whose index is applied, fails those past their deadline, and those still
    /// waiting for an index from a leader that is no longer the leader.
    pub(super) fn resolve_reads(&mut self) {
        if self.reads.waiters.is_empty() {
            return;
        }
        let now = self.cfg.time.now();
        let (applied, leader) = (self.applied, self.node.raft.leader_id);
        let mut done = Vec::new();
        for (&seq, w) in &self.reads.waiters {
            let answer = match w.index {
                Some(index) if applied >= index => Ok(index),
                None if w.leader != leader => Err(ProposeError::Dropped(
                    "the raft leader changed before confirming the read; retry".into(),
                )),
                _ if now >= w.deadline => Err(ProposeError::Dropped(
                    "the read index was not confirmed in time (no leader, or this node is behind); retry".into(),
                )),
                _ => continue,
            };
            done.push((seq, answer));
        }
        for (seq, answer) in done {
            if let Some(w) = self.reads.waiters.remove(&seq) {
                let _ = w.reply.send(answer);
            }
        }
    }

    /// Fails every outstanding read (shutdown).
    pub(super) fn fail_reads(&mut self, err: ProposeError) {
        for (_, w) in std::mem::take(&mut self.reads.waiters) {
            let _ = w.reply.send(Err(err.clone()));
        }
    }
}
