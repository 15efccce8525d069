//! Stopping the engine (part of the engine thread, or of a [`crate::Stepper`]): answering
//! everything still outstanding, flushing, recording why it stopped.

use std::sync::atomic::Ordering;

use super::propose::fail_all;
use super::{Driver, Inbox, Proposal};
use crate::StateMachine;
use crate::engine::{Inbound, Input, Shared};
use crate::error::{ProposeError, RaftLogError};

impl<M: StateMachine> Driver<M> {
    /// Answers everything still outstanding, flushes the store and closes it.
    pub(super) fn finish(mut self, result: Result<(), RaftLogError>) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.is_leader.store(false, Ordering::Release);
        let mut lost = 0usize;
        while let Ok(input) = self.rx.try_recv() {
            match input {
                Input::Propose { cmds, reply } => {
                    lost += fail_all::<M>(vec![Proposal { cmds, reply }], ProposeError::Stopped);
                }
                Input::ConfChange { reply, .. } => {
                    let _ = reply.send(Err(ProposeError::Stopped));
                }
                Input::Wake | Input::Stop => {}
            }
        }
        while let Ok(item) = self.net_rx.try_recv() {
            if let Inbound::Read(reply) = item {
                let _ = reply.send(Err(ProposeError::Stopped));
            }
        }
        lost += self.retry.drain(..).map(|p| p.cmds.len()).sum::<usize>();
        self.fail_reads(ProposeError::Stopped);
        self.confs.fail_all(
            "the engine stopped before the membership change was applied; it may be applied after a restart",
        );
        for (_, reply) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(ProposeError::Dropped(
                "the engine stopped before the command was applied; it may be applied after a restart".into(),
            )));
        }
        if lost > 0 {
            tracing::warn!(
                commands = lost,
                "raft engine stopped; dropped queued fire-and-forget commands"
            );
        }
        match result {
            Ok(()) => {
                if let Err(e) = self.node.mut_store().flush() {
                    tracing::error!(error = %e, "flushing the raft log at shutdown failed");
                }
            }
            Err(e) => match self.ready_tx.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                }
                None if e.is_disk() => {
                    tracing::error!(error = %e, "raft engine stopped: the disk failed; the node stops (fail-stop)");
                    self.record_failure(true, &e);
                }
                None => {
                    tracing::error!(error = %e, "raft engine stopped on a fatal error; restart the node");
                    self.record_failure(false, &e);
                }
            },
        }
        self.publish();
        self.shared.is_leader.store(false, Ordering::Release);
        self.shared.leader_id.store(0, Ordering::Release);
        self.shared.running.store(false, Ordering::Release);
        tracing::debug!(applied = self.applied, "raft engine stopped");
    }
}

impl<M: StateMachine> Driver<M> {
    fn record_failure(&self, disk: bool, e: &RaftLogError) {
        if let Ok(mut f) = self.shared.failure.lock() {
            *f = Some(crate::engine::EngineFailure {
                disk,
                message: e.to_string(),
            });
        }
    }
}

impl<M: StateMachine> Inbox<M> {
    pub(super) fn push(&mut self, input: Input<M>, shared: &Shared) {
        match input {
            Input::Propose { cmds, reply } => {
                shared
                    .stats
                    .queued_proposals
                    .fetch_sub(1, Ordering::Relaxed);
                self.batch.push(Proposal { cmds, reply })
            }
            Input::ConfChange { change, reply } => self.confs.push((change, reply)),
            // Cleared before the inbound queue is drained, so at most one wake-up is queued.
            Input::Wake => shared.wake_pending.store(false, Ordering::Release),
            Input::Stop => self.stop = true,
        }
    }
}
