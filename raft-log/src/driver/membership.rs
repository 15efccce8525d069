//! Membership changes (part of the engine thread): proposing one `ConfChangeV2` for a caller,
//! answering it once its entry is applied, and what a node does when it was removed.
//!
//! Matching: the entry's context carries (incarnation nonce, sequence number), and the waiter
//! is filed under the index raft gave the entry. When that index is applied, the waiter gets
//! the new voters if the entry is our conf change, and `Dropped` otherwise (raft replaced it by
//! an empty entry because another change was pending, or a new leader overwrote it).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::PoisonError;

use raft::StateRole;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, Message, MessageType,
};

use super::Driver;
use crate::StateMachine;
use crate::engine::{ConfReply, MembershipChange, Shared};
use crate::error::ProposeError;

/// A membership waiter and its answer, sent once the apply batch is published.
pub(super) type ConfAnswer = (ConfReply, Result<Vec<u64>, ProposeError>);

struct ConfWaiter {
    ctx: [u8; 16],
    reply: ConfReply,
}

/// Outstanding membership changes by entry index (at most one in practice).
#[derive(Default)]
pub(super) struct ConfWaiters {
    by_index: BTreeMap<u64, ConfWaiter>,
    next_seq: u64,
}

impl ConfWaiters {
    /// Answers every waiter with `Dropped(why)`.
    pub(super) fn fail_all(&mut self, why: &str) {
        for (_, w) in std::mem::take(&mut self.by_index) {
            let _ = w.reply.send(Err(ProposeError::Dropped(why.into())));
        }
    }
}

fn dropped(why: &str) -> Result<Vec<u64>, ProposeError> {
    Err(ProposeError::Dropped(why.into()))
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

fn names(cs: &ConfState, id: u64) -> bool {
    cs.get_voters().contains(&id) || cs.get_learners().contains(&id)
}

/// Publishes the conf state's members into the status (only when they changed).
pub(super) fn publish_members(s: &Shared, cs: &ConfState) {
    let same = |have: &[u64], now: &[u64]| {
        have.len() == now.len() && now.iter().all(|id| have.binary_search(id).is_ok())
    };
    let mut m = s.members.lock().unwrap_or_else(PoisonError::into_inner);
    if !same(&m.0, cs.get_voters()) || !same(&m.1, cs.get_learners()) {
        *m = (sorted(cs.get_voters()), sorted(cs.get_learners()));
    }
}

impl<M: StateMachine> Driver<M> {
    /// Proposes `change` as a single-change `ConfChangeV2` (leader only). Refused at once
    /// (`Dropped`) while another conf change is pending, which raft would silently ignore.
    pub(super) fn propose_membership(&mut self, change: MembershipChange, reply: ConfReply) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            let _ = reply.send(Err(ProposeError::NotLeader));
            return;
        }
        if raft.has_pending_conf() || !self.confs.by_index.is_empty() {
            let _ = reply.send(dropped(
                "another membership change is still pending (or the new leader has not applied its first entry); retry once it is applied",
            ));
            return;
        }
        let (change_type, node_id) = match change {
            MembershipChange::AddVoter(id) => (ConfChangeType::AddNode, id),
            MembershipChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
            MembershipChange::Remove(id) => (ConfChangeType::RemoveNode, id),
        };
        let mut single = ConfChangeSingle {
            node_id,
            ..Default::default()
        };
        single.set_change_type(change_type);
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.set_transition(ConfChangeTransition::Auto);
        self.confs.next_seq += 1;
        let mut ctx = [0u8; 16];
        ctx[..8].copy_from_slice(&self.incarnation.to_le_bytes());
        ctx[8..].copy_from_slice(&self.confs.next_seq.to_le_bytes());
        if let Err(e) = self.node.propose_conf_change(ctx.to_vec(), cc) {
            let why = match e {
                raft::Error::ProposalDropped => {
                    "raft dropped the membership change (leader transfer in progress?); retry"
                        .into()
                }
                other => format!("raft refused the membership change: {other}"),
            };
            let _ = reply.send(dropped(&why));
            return;
        }
        let raft = &self.node.raft;
        let index = raft.raft_log.last_index();
        if raft.pending_conf_index != index {
            let _ = reply.send(dropped(
                "raft ignored the membership change (another one is pending); retry",
            ));
            return;
        }
        tracing::info!(?change, index, "proposed a raft membership change");
        self.confs.by_index.insert(index, ConfWaiter { ctx, reply });
    }

    /// After entry `e` was applied (`outcome` is the conf change result for conf change
    /// entries): answers the waiter filed under its index, and any left behind.
    pub(super) fn conf_entry_applied(
        &mut self,
        e: &Entry,
        outcome: Option<&Result<ConfState, String>>,
        answers: &mut Vec<ConfAnswer>,
    ) {
        while let Some(entry) = self.confs.by_index.first_entry() {
            if *entry.key() > e.index {
                break;
            }
            let (index, w) = entry.remove_entry();
            let ours = index == e.index
                && e.get_entry_type() == EntryType::EntryConfChangeV2
                && e.get_context() == w.ctx;
            let answer = match outcome.filter(|_| ours) {
                Some(Ok(cs)) => Ok(sorted(cs.get_voters())),
                Some(Err(error)) => Err(ProposeError::Dropped(format!(
                    "raft rejected the membership change: {error}"
                ))),
                None => dropped(
                    "raft ignored the membership change (another change was pending, or the entry was replaced); retry",
                ),
            };
            answers.push((w.reply, answer));
        }
    }

    /// After a conf change was applied: logs this node's removal, and hands leadership over
    /// if this leader is no longer a voter.
    pub(super) fn after_conf_change(&mut self, before: &ConfState, cs: &ConfState) {
        let id = self.cfg.id;
        if names(before, id) && !names(cs, id) {
            tracing::warn!(
                id,
                voters = ?cs.get_voters(),
                "this node was removed from the raft group; it keeps running as a non-member and is no longer sent anything"
            );
        }
        self.hand_over_if_removed();
    }

    /// A leader that is no longer a voter steps down at once, after asking the voter with the
    /// longest matched log to campaign (`MsgTimeoutNow`), so the group is not left waiting for
    /// an election timeout. Called when the conf change is applied (inside the Ready cycle,
    /// before raft's own persist step) and, as a fallback, on every tick.
    ///
    /// Why not `transfer_leader` and stay leader until it completes (as raft-rs leaves it):
    /// raft-rs 0.7 keeps a removed leader leading but drops its own progress, then unwraps that
    /// progress when an append answer or its own persisted entries advance the commit
    /// (`raft.rs` 943 and 1055): the leader panicked and the engine failed stop. The engine
    /// simulator found it (`sim --engine`, leader removals, seed 29 and others). The message
    /// goes straight to the transport: raft-rs refuses (fatal) a follower whose message queue
    /// fills between `ready` and `advance`.
    pub(super) fn hand_over_if_removed(&mut self) {
        // Every tick: only a leader reads (and copies) the voters.
        if self.node.raft.state != StateRole::Leader {
            return;
        }
        let voters = self.node.store().conf_state().get_voters().to_vec();
        if voters.contains(&self.cfg.id) {
            return;
        }
        let raft = &mut self.node.raft;
        let target = raft
            .prs()
            .iter()
            .filter(|(pid, _)| voters.contains(pid))
            .max_by_key(|(pid, pr)| (pr.matched, Reverse(**pid)))
            .map(|(pid, _)| *pid);
        let term = raft.term;
        raft.become_follower(term, raft::INVALID_ID);
        tracing::info!(
            to = target,
            term,
            "this leader is no longer a voter; it stepped down and asked the most caught-up voter to campaign"
        );
        if let Some(to) = target {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgTimeoutNow);
            (m.from, m.to, m.term) = (self.cfg.id, to, term);
            self.send_messages(vec![m]);
        }
    }
}
