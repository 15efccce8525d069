//! WorkflowInstance: a workflow's presence on its owner node.
//!
//! The DAG rules run inside apply (deterministic, on every server); the instance is the shell
//! around one workflow: it records checkpoints when steps finish (`Command::Checkpoint`, so a
//! restarted or migrated instance knows what it had seen), wakes the clients waiting for the
//! workflow to finish, and stops when the workflow does. It rebuilds from the last checkpoint and
//! the applied state, so a crash loses nothing.

use crate::machine::Machine;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::{Arc, RwLock};
use troupe_raft_log::EngineHandle;
use troupe_scheduler::Command;
use troupe_scheduler::state::{WorkflowId, wf_name};

pub enum InstanceMsg {
    /// Something about the workflow was applied.
    Changed,
    /// The workflow reached a terminal state.
    Finished,
    /// Reply when the workflow is finished (the caller's timeout bounds the wait).
    Wait(RpcReplyPort<()>),
    /// The checkpoint sequence this instance has recorded (for tests and operators).
    Seq(RpcReplyPort<u64>),
    /// Fault injection for supervision tests: the instance panics.
    InjectPanic,
}

/// The registered name of a workflow's instance actor.
pub fn instance_name(id: WorkflowId) -> String {
    format!("troupe.{}", wf_name(id))
}

pub struct WorkflowInstance;

#[derive(Clone)]
pub struct InstanceArgs {
    pub id: WorkflowId,
    pub node: String,
    pub engine: EngineHandle<Machine>,
    pub state: Arc<RwLock<Machine>>,
}

pub struct InstanceState {
    args: InstanceArgs,
    seq: u64,
    steps_seen: usize,
    waiters: Vec<RpcReplyPort<()>>,
}

impl InstanceState {
    /// The last checkpoint sequence in the applied state.
    fn recorded_seq(&self) -> u64 {
        let Ok(m) = self.args.state.read() else {
            return 0;
        };
        m.state
            .workflows
            .get(&self.args.id)
            .and_then(|w| w.checkpoint.as_ref())
            .map(|c| c.seq)
            .unwrap_or(0)
    }

    /// (steps finished, workflow finished, this node owns it), from the applied state.
    fn progress(&self) -> (usize, bool, bool) {
        let Ok(m) = self.args.state.read() else {
            return (0, false, false);
        };
        match m.state.workflows.get(&self.args.id) {
            Some(wf) => (
                wf.steps.iter().filter(|s| s.status.is_terminal()).count(),
                wf.status.is_terminal(),
                wf.owner.as_deref() == Some(self.args.node.as_str()),
            ),
            None => (0, true, false),
        }
    }
}

impl Actor for WorkflowInstance {
    type Msg = InstanceMsg;
    type State = InstanceState;
    type Arguments = InstanceArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<InstanceMsg>,
        args: InstanceArgs,
    ) -> Result<InstanceState, ActorProcessingErr> {
        // Rebuild from the last checkpoint: its sequence and the steps it had seen finished.
        let (seq, steps_seen) = {
            let m = args.state.read().map_err(|_| "state lock poisoned")?;
            let cp = m
                .state
                .workflows
                .get(&args.id)
                .and_then(|w| w.checkpoint.clone());
            cp.map(|c| (c.seq, c.steps.len())).unwrap_or((0, 0))
        };
        Ok(InstanceState {
            args,
            seq,
            steps_seen,
            waiters: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<InstanceMsg>,
        _st: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        // Catch up with whatever was applied while no instance was running.
        me.cast(InstanceMsg::Changed)?;
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        st: &mut InstanceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InstanceMsg::Changed | InstanceMsg::Finished => {
                let (steps_done, finished, owned) = st.progress();
                if !owned && !finished {
                    // The workflow moved to another server (this one was declared lost): its
                    // instance lives there now.
                    st.waiters.clear();
                    me.stop(Some(
                        "the workflow's instance moved to another server".into(),
                    ));
                    return Ok(());
                }
                // Only the owner's instance records checkpoints: one writer.
                if steps_done > st.steps_seen && owned {
                    // After a move this instance's count may lag the state's.
                    st.seq = st.seq.max(st.recorded_seq()) + 1;
                    st.steps_seen = steps_done;
                    let cmd = Command::Checkpoint {
                        wf: st.args.id,
                        seq: st.seq,
                        owner: st.args.node.clone(),
                    };
                    if let Err(e) = st.args.engine.propose_nowait(vec![cmd]) {
                        tracing::debug!(%e, "checkpoint not proposed; the next change retries");
                        st.seq -= 1;
                        st.steps_seen = 0;
                    }
                }
                st.waiters.retain(|w| !w.is_closed());
                if finished {
                    for w in st.waiters.drain(..) {
                        let _ = w.send(());
                    }
                    me.stop(Some("workflow finished".into()));
                }
            }
            InstanceMsg::Wait(reply) => {
                if st.progress().1 {
                    let _ = reply.send(());
                } else {
                    st.waiters.push(reply);
                }
            }
            InstanceMsg::Seq(reply) => {
                let _ = reply.send(st.seq);
            }
            InstanceMsg::InjectPanic => panic!("injected panic in {}", wf_name(st.args.id)),
        }
        Ok(())
    }
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for InstanceMsg {}
