//! TaskRunner: one execution slot. Runs one attempt at a time and reports to the dispatcher.
//!
//! Long attempts run in a spawned task so the runner keeps answering `Kill`. If a runner dies,
//! its kill sender is dropped, which stops the attempt; the dispatcher hears `RunnerUp` from the
//! restarted runner and reports the lost attempt as failed.

use crate::dispatcher::DispatchMsg;
use crate::executor::Executor;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use troupe_scheduler::{AttemptRef, Outcome, Report, RunSpec, TaskRef};

pub enum RunnerMsg {
    Run(Box<RunSpec>),
    Kill(TaskRef, u32),
    /// The spawned attempt ended.
    Done(AttemptRef, Outcome),
    /// Fault injection for supervision tests: the runner panics.
    InjectPanic,
}

pub struct TaskRunner;

pub struct RunnerArgs {
    pub index: usize,
    pub executor: Arc<dyn Executor>,
    pub dispatcher: ActorRef<DispatchMsg>,
}

pub struct RunnerState {
    args: RunnerArgs,
    current: Option<(AttemptRef, tokio::sync::oneshot::Sender<()>)>,
}

impl Actor for TaskRunner {
    type Msg = RunnerMsg;
    type State = RunnerState;
    type Arguments = RunnerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunnerMsg>,
        args: RunnerArgs,
    ) -> Result<RunnerState, ActorProcessingErr> {
        args.dispatcher.cast(DispatchMsg::RunnerUp {
            runner: args.index,
            actor: myself,
        })?;
        Ok(RunnerState {
            args,
            current: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunnerMsg>,
        msg: RunnerMsg,
        st: &mut RunnerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RunnerMsg::Run(spec) => {
                let at = AttemptRef {
                    task: spec.task,
                    attempt: spec.attempt,
                    epoch: spec.epoch,
                };
                if let Some(outcome) = st.args.executor.run_inline(&spec) {
                    return report(st, at, outcome);
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let run = st.args.executor.run(*spec, rx);
                tokio::spawn(async move {
                    let outcome = run.await;
                    let _ = myself.cast(RunnerMsg::Done(at, outcome));
                });
                st.current = Some((at, tx));
            }
            RunnerMsg::Kill(task, attempt) => {
                if st
                    .current
                    .as_ref()
                    .is_some_and(|(a, _)| a.task == task && a.attempt == attempt)
                {
                    if let Some((_, kill)) = st.current.take() {
                        let _ = kill.send(());
                    }
                    // The spawned attempt still reports Done; its result is stale and refused.
                    st.current = None;
                }
            }
            RunnerMsg::Done(at, outcome) => {
                if st.current.as_ref().is_some_and(|(a, _)| *a == at) {
                    st.current = None;
                }
                report(st, at, outcome)?;
            }
            RunnerMsg::InjectPanic => panic!("injected panic in runner {}", st.args.index),
        }
        Ok(())
    }
}

fn report(st: &RunnerState, at: AttemptRef, outcome: Outcome) -> Result<(), ActorProcessingErr> {
    st.args.dispatcher.cast(DispatchMsg::Done {
        runner: st.args.index,
        report: Report { at, outcome },
    })?;
    Ok(())
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for RunnerMsg {}
