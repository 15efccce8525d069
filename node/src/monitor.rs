//! ResourceMonitor: reads the node's capacity again every `capacity_refresh` (off the actor
//! threads) and commits a change (a GPU appeared or vanished, a cgroup limit moved). Usage and
//! free GPU memory are not committed: placement works on advertised capacity minus what the
//! node's live attempts hold.

use crate::capacity::discover;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Duration;
use troupe_actors::machine::Machine;
use troupe_raft_log::EngineHandle;
use troupe_scheduler::Command;
use troupe_scheduler::placement::Gpu;

pub enum MonitorMsg {
    Refresh,
}

pub struct ResourceMonitor;

pub struct MonitorArgs {
    pub node: String,
    pub engine: EngineHandle<Machine>,
    pub simulated: Option<Vec<Gpu>>,
    pub every: Duration,
}

impl Actor for ResourceMonitor {
    type Msg = MonitorMsg;
    type State = MonitorArgs;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<MonitorMsg>,
        args: MonitorArgs,
    ) -> Result<MonitorArgs, ActorProcessingErr> {
        me.send_interval(args.every, || MonitorMsg::Refresh);
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<MonitorMsg>,
        _msg: MonitorMsg,
        st: &mut MonitorArgs,
    ) -> Result<(), ActorProcessingErr> {
        let simulated = st.simulated.clone();
        let capacity = tokio::task::spawn_blocking(move || discover(simulated.as_deref())).await?;
        let changed = {
            let m = st.engine.state();
            let m = m.read().map_err(|_| "state lock poisoned")?;
            m.state
                .sched
                .nodes
                .get(&st.node)
                .is_some_and(|n| n.capacity != capacity)
        };
        if changed {
            tracing::info!(
                cpu_milli = capacity.cpu_milli,
                memory = capacity.memory_bytes,
                gpus = capacity.gpus.len(),
                "capacity changed"
            );
            // Busy: the next refresh tries again.
            let _ = st.engine.propose_nowait(vec![Command::UpdateCapacity {
                node: st.node.clone(),
                capacity,
            }]);
        }
        Ok(())
    }
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for MonitorMsg {}
