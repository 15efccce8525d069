//! Packing queued proposals into raft entries and proposing them (part of the engine thread).

use raft::StateRole;

use super::{Driver, Proposal};
use crate::StateMachine;
use crate::envelope::{self, ENVELOPE_VERSION, Envelope, Group};
use crate::error::ProposeError;

impl<M: StateMachine> Driver<M> {
    /// Packs proposals into entries of at most `max_entry_commands` commands and proposes them.
    /// On a follower, waiters get `NotLeader` (their outputs could not be routed back) and
    /// fire-and-forget proposals go to raft, which forwards them to the leader.
    pub(super) fn propose_batch(&mut self, mut batch: Vec<Proposal<M>>) {
        if self.node.raft.state != StateRole::Leader {
            batch.retain_mut(|p| match p.reply.take() {
                Some(reply) => {
                    let _ = reply.send(Err(ProposeError::NotLeader));
                    false
                }
                None => true,
            });
            if batch.is_empty() {
                return;
            }
            if self.node.raft.leader_id == raft::INVALID_ID {
                // raft would drop them (and log it every cycle): keep them for the next try.
                self.retry.extend(batch);
                return;
            }
        }
        let at_ms = (self.cfg.clock)();
        let mut refused = false;
        for chunk in envelope::pack(batch, self.cfg.max_entry_commands, |p| p.cmds.len()) {
            let mut waiters = Vec::new();
            let mut groups = Vec::with_capacity(chunk.len());
            for p in chunk {
                let id = match p.reply {
                    Some(reply) => {
                        self.next_id += 1;
                        waiters.push((self.next_id, reply));
                        self.next_id
                    }
                    None => 0,
                };
                groups.push(Group { id, cmds: p.cmds });
            }
            let env = Envelope {
                v: ENVELOPE_VERSION,
                at_ms,
                origin: self.incarnation,
                groups,
            };
            // Once raft refused an entry, refuse the rest of the batch too, so retried
            // fire-and-forget commands keep their order.
            let result = if refused {
                Err(ProposeError::Busy)
            } else {
                envelope::encode(&env)
                    .map_err(ProposeError::Dropped)
                    .and_then(|data| {
                        self.node.propose(Vec::new(), data).map_err(|e| match e {
                            raft::Error::ProposalDropped => ProposeError::Busy,
                            other => {
                                ProposeError::Dropped(format!("raft refused the entry: {other}"))
                            }
                        })
                    })
            };
            refused |= result == Err(ProposeError::Busy);
            match result {
                Ok(()) => {
                    self.pending.extend(waiters);
                    self.time_commit();
                }
                Err(err) => {
                    for (_, reply) in waiters {
                        let _ = reply.send(Err(err.clone()));
                    }
                    let orphans = env.groups.into_iter().filter(|g| g.id == 0);
                    if err == ProposeError::Busy {
                        self.retry.extend(orphans.map(|g| Proposal {
                            cmds: g.cmds,
                            reply: None,
                        }));
                    } else {
                        let lost: usize = orphans.map(|g| g.cmds.len()).sum();
                        if lost > 0 {
                            tracing::error!(commands = lost, error = %err, "dropped fire-and-forget commands");
                        }
                    }
                }
            }
        }
    }
}

impl<M: StateMachine> Driver<M> {
    /// Starts timing the entry just proposed (leader only: a follower forwards it).
    fn time_commit(&mut self) {
        if self.node.raft.state != StateRole::Leader {
            return;
        }
        if self.inflight.len() >= super::INFLIGHT_MAX {
            self.inflight.pop_front();
        }
        let index = self.node.raft.raft_log.last_index();
        self.inflight.push_back((index, self.cfg.time.now()));
    }

    /// Observes the commit latency of every timed entry up to `applied`.
    pub(super) fn commit_timed(&mut self) {
        let now = self.cfg.time.now();
        while let Some(&(index, at)) = self.inflight.front() {
            if index > self.applied {
                break;
            }
            let took = now.saturating_duration_since(at);
            self.shared.stats.commit_latency.observe(took);
            self.inflight.pop_front();
        }
    }
}

/// Sends `err` to every waiter; returns how many fire-and-forget commands were lost.
pub(super) fn fail_all<M: StateMachine>(batch: Vec<Proposal<M>>, err: ProposeError) -> usize {
    let mut lost = 0;
    for p in batch {
        match p.reply {
            Some(reply) => {
                let _ = reply.send(Err(err.clone()));
            }
            None => lost += p.cmds.len(),
        }
    }
    lost
}
