//! The scheduler state machine as the Raft log drives it, and the leader's hook.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use troupe_raft_log::StateMachine;
use troupe_scheduler::placement::Strategy;
use troupe_scheduler::{Command, Effect, Output, Planner, RunSpec, State, TaskRef, WorkflowId};

/// `troupe_scheduler::State` behind the Raft log's `StateMachine` trait.
#[derive(Default)]
pub struct Machine {
    pub state: State,
}

impl StateMachine for Machine {
    type Command = Command;
    type Output = Output;

    fn apply(&mut self, at_ms: u64, cmd: Command) -> Output {
        self.state.apply(at_ms, cmd)
    }

    fn snapshot(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(&self.state, bincode::config::standard()).unwrap_or_default()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let (state, _) = bincode::serde::decode_from_slice(data, bincode::config::standard())
            .map_err(|e| format!("snapshot does not decode: {e}"))?;
        self.state = state;
        Ok(())
    }
}

/// Where the effects of applied commands go (the actor side implements it).
pub trait EffectSink: Send + 'static {
    fn run(&mut self, specs: Vec<RunSpec>);
    fn kill(&mut self, kills: Vec<(TaskRef, u32)>);
    fn workflows(
        &mut self,
        created: Vec<WorkflowId>,
        changed: Vec<WorkflowId>,
        finished: Vec<WorkflowId>,
    );
}

/// The engine hook: route effects to this node's actors, then plan (leader only).
///
/// `live_epoch` is the epoch this process registered its node under (0 until then). Effects of
/// entries replayed at start-up belong to an earlier epoch: they are dropped, because the
/// registration requeues those attempts as attempt + 1 (running them again here would run them
/// twice).
pub fn hook(
    node: String,
    live_epoch: Arc<AtomicU64>,
    strategy: Strategy,
    mut sink: Box<dyn EffectSink>,
) -> troupe_raft_log::Hook<Machine> {
    let mut planner = Planner::with_strategy(strategy);
    Box::new(move |m: &mut Machine, now_ms: u64| {
        let effects = m.state.take_effects();
        let epoch = live_epoch.load(Ordering::Acquire);
        if !effects.is_empty() && epoch != 0 {
            route(&node, epoch, effects, sink.as_mut());
        }
        planner.plan(&m.state, now_ms)
    })
}

fn route(node: &str, epoch: u64, effects: Vec<Effect>, sink: &mut dyn EffectSink) {
    let mut runs = Vec::new();
    let mut kills = Vec::new();
    let (mut created, mut changed, mut finished) = (Vec::new(), BTreeSet::new(), Vec::new());
    for e in effects {
        match e {
            Effect::Run(spec) if spec.node == node && spec.epoch == epoch => runs.push(*spec),
            Effect::Kill {
                task,
                attempt,
                node: n,
            } if n == node => kills.push((task, attempt)),
            Effect::Created(id) => created.push(id),
            Effect::Changed(id) => {
                changed.insert(id);
            }
            Effect::Finished(id) => finished.push(id),
            _ => {}
        }
    }
    if !kills.is_empty() {
        sink.kill(kills);
    }
    if !runs.is_empty() {
        sink.run(runs);
    }
    if !(created.is_empty() && changed.is_empty() && finished.is_empty()) {
        sink.workflows(created, changed.into_iter().collect(), finished);
    }
}
