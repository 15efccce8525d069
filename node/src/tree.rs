//! The node's supervision tree:
//!
//! ```text
//! troupe.root (rest-for-one)
//! ├── troupe.raft        RaftFacade: the durable Raft log + state machine
//! ├── troupe.instances   Supervisor (one-for-one) → WorkflowInstance per running workflow
//! ├── troupe.runners     Supervisor (rest-for-one) → Dispatcher,
//! │                      troupe.slots Supervisor (one-for-one) → TaskRunner × slots
//! ├── troupe.monitor     ResourceMonitor: re-reads CPU / memory / NVML GPUs, commits changes
//! └── troupe.api         ApiServer
//! ```
//!
//! Rest-for-one at the root: if the Raft facade restarts, everything after it restarts too (they
//! hold its handle); the dispatcher re-registers the node, which requeues its attempts.

use crate::api::{ApiArgs, ApiServer, AppState};
use crate::config::{NodeConfig, node_id};
use crate::exec::LocalExecutor;
use crate::monitor::{MonitorArgs, ResourceMonitor};
use anyhow::Context;
use ractor::{Actor, ActorCell, ActorRef, SpawnErr, call_t, registry};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use troupe_actors::dispatcher::{DispatchArgs, Dispatcher};
use troupe_actors::executor::Executor;
use troupe_actors::facade::{FacadeArgs, FacadeMsg, RAFT_NAME, RaftFacade};
use troupe_actors::instance::InstanceArgs;
use troupe_actors::machine::{EffectSink, Machine};
use troupe_actors::runner::{RunnerArgs, TaskRunner};
use troupe_actors::sink::{ActorSink, DISPATCHER_NAME, INSTANCES_NAME, instance_spec};
use troupe_actors::supervisor::{
    ChildSpec, Restart, Strategy, Supervisor, SupervisorConfig, SupervisorMsg,
};
use troupe_raft_log::{EngineConfig, EngineHandle};
use troupe_scheduler::NodeInfo;

pub const ROOT_NAME: &str = "troupe.root";
pub const RUNNERS_NAME: &str = "troupe.runners";
pub const API_NAME: &str = "troupe.api";
pub const SLOTS_NAME: &str = "troupe.slots";
pub const MONITOR_NAME: &str = "troupe.monitor";

/// A started node.
pub struct RunningNode {
    pub root: ActorRef<SupervisorMsg>,
    pub join: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
    pub node_id: String,
}

fn spawn_err(e: impl std::fmt::Display) -> SpawnErr {
    SpawnErr::StartupFailed(e.to_string().into())
}

/// The engine handle and state from the Raft facade.
async fn raft() -> Result<(EngineHandle<Machine>, Arc<RwLock<Machine>>), SpawnErr> {
    let facade = registry::where_is(RAFT_NAME)
        .map(ActorRef::<FacadeMsg>::from)
        .ok_or_else(|| spawn_err("the raft facade is not running"))?;
    call_t!(facade, FacadeMsg::Handle, 10_000).map_err(spawn_err)
}

/// Starts the tree; returns once every actor is up and the API listens.
pub async fn start(mut cfg: NodeConfig) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // Absolute, so task paths ($TROUPE_OUTPUT, logs) hold whatever directory a task changes to.
    cfg.data_dir = std::fs::canonicalize(&cfg.data_dir)
        .with_context(|| format!("cannot resolve {}", cfg.data_dir.display()))?;
    let node = node_id(&cfg).context("cannot read or write the node id")?;
    let live_epoch = Arc::new(AtomicU64::new(0));
    let slot: HandleSlot = Arc::new(Mutex::new(None));
    let bound = Arc::new(Mutex::new(None));
    let executor: Arc<dyn Executor> = Arc::new(LocalExecutor {
        data_dir: cfg.data_dir.clone(),
        kill_grace: cfg.kill_grace,
    });

    let mut engine_cfg = EngineConfig::new(&cfg.data_dir);
    engine_cfg.fsync = cfg.fsync;
    engine_cfg.snapshot_every_entries = cfg.snapshot_every_entries;
    let facade_args = Arc::new(FacadeArgs {
        config: engine_cfg,
        node: node.clone(),
        live_epoch: live_epoch.clone(),
        strategy: cfg.strategy,
        sink: Box::new(sink_factory(node.clone(), slot.clone())),
    });
    let raft_spec = ChildSpec::new(RAFT_NAME, Restart::Permanent, move |sup: ActorCell| {
        let args = facade_args.clone();
        async move {
            RaftFacade::spawn_linked(Some(RAFT_NAME.into()), RaftFacade, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    });

    let (inst_node, inst_slot) = (node.clone(), slot.clone());
    let instances_spec =
        ChildSpec::new(INSTANCES_NAME, Restart::Permanent, move |sup: ActorCell| {
            let (node, slot) = (inst_node.clone(), inst_slot.clone());
            async move {
                let (engine, state) = raft().await?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some((engine.clone(), state.clone()));
                }
                // Rebuild: one instance per workflow that is still running.
                let running: Vec<u64> = {
                    let m = state.read().map_err(spawn_err)?;
                    m.state
                        .workflows
                        .values()
                        .filter(|w| !w.status.is_terminal())
                        .map(|w| w.id)
                        .collect()
                };
                let children = running
                    .into_iter()
                    .map(|id| {
                        instance_spec(InstanceArgs {
                            id,
                            node: node.clone(),
                            engine: engine.clone(),
                            state: state.clone(),
                        })
                    })
                    .collect();
                let cfg = SupervisorConfig {
                    strategy: Strategy::OneForOne,
                    max_restarts: 5,
                    period: Duration::from_secs(10),
                    ..Default::default()
                };
                Supervisor::spawn_linked(
                    Some(INSTANCES_NAME.into()),
                    Supervisor,
                    (cfg, children),
                    sup,
                )
                .await
                .map(|(a, _)| a.get_cell())
            }
        });

    let runners_spec = runners_spec(&cfg, node.clone(), live_epoch.clone(), executor);

    let (listen, data_dir, api_node, api_bound, fault_injection) = (
        cfg.listen,
        cfg.data_dir.clone(),
        node.clone(),
        bound.clone(),
        cfg.fault_injection,
    );
    let api_spec = ChildSpec::new(API_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (data_dir, node, bound) = (data_dir.clone(), api_node.clone(), api_bound.clone());
        async move {
            let (engine, state) = raft().await?;
            let app = AppState {
                engine,
                state,
                data_dir,
                node,
                started: std::time::Instant::now(),
                fault_injection,
            };
            ApiServer::spawn_linked(
                Some(API_NAME.into()),
                ApiServer,
                ApiArgs { listen, app, bound },
                sup,
            )
            .await
            .map(|(a, _)| a.get_cell())
        }
    });

    let (mon_node, mon_sim, every) = (
        node.clone(),
        cfg.simulate_gpus.clone(),
        cfg.capacity_refresh,
    );
    let monitor_spec = ChildSpec::new(MONITOR_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (node, simulated) = (mon_node.clone(), mon_sim.clone());
        async move {
            let (engine, _) = raft().await?;
            let args = MonitorArgs {
                node,
                engine,
                simulated,
                every,
            };
            ResourceMonitor::spawn_linked(Some(MONITOR_NAME.into()), ResourceMonitor, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    });

    let root_cfg = SupervisorConfig {
        strategy: Strategy::RestForOne,
        max_restarts: 5,
        period: Duration::from_secs(30),
        ..Default::default()
    };
    let children = vec![
        raft_spec,
        instances_spec,
        runners_spec,
        monitor_spec,
        api_spec,
    ];
    let (root, join) = Supervisor::spawn(Some(ROOT_NAME.into()), Supervisor, (root_cfg, children))
        .await
        .map_err(|e| anyhow::anyhow!("the node did not start: {e}"))?;
    let addr = bound
        .lock()
        .ok()
        .and_then(|b| *b)
        .context("the api did not report its address")?;
    Ok(RunningNode {
        root,
        join,
        addr,
        node_id: node,
    })
}

/// The engine handle and state, published by the instance supervisor's start so the engine
/// hook can build instance arguments without calling an actor from the engine thread.
type HandleSlot = Arc<Mutex<Option<(EngineHandle<Machine>, Arc<RwLock<Machine>>)>>>;

fn sink_factory(node: String, slot: HandleSlot) -> impl Fn() -> Box<dyn EffectSink> + Send + Sync {
    move || {
        let (node, slot) = (node.clone(), slot.clone());
        Box::new(ActorSink {
            instance: Box::new(move |id| {
                let (engine, state) = slot.lock().ok()?.clone()?;
                Some(InstanceArgs {
                    id,
                    node: node.clone(),
                    engine,
                    state,
                })
            }),
        }) as Box<dyn EffectSink>
    }
}

fn runners_spec(
    cfg: &NodeConfig,
    node: String,
    live_epoch: Arc<AtomicU64>,
    executor: Arc<dyn Executor>,
) -> ChildSpec {
    let info = NodeInfo {
        node,
        slots: cfg.slots,
        queue: cfg.queue,
        capacity: Default::default(), // read at each (re)start of the dispatcher
        reserved: cfg.reserve.clone(),
        labels: cfg.labels.clone(),
    };
    let simulated = cfg.simulate_gpus.clone();
    let slots = cfg.slots as usize;
    ChildSpec::new(RUNNERS_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (mut info, live_epoch, executor, simulated) = (
            info.clone(),
            live_epoch.clone(),
            executor.clone(),
            simulated.clone(),
        );
        async move {
            info.capacity = tokio::task::spawn_blocking(move || {
                crate::capacity::discover(simulated.as_deref())
            })
            .await
            .map_err(spawn_err)?;
            let (engine, state) = raft().await?;
            drop(state);
            let dispatch = ChildSpec::new(
                DISPATCHER_NAME,
                Restart::Permanent,
                move |sup: ActorCell| {
                    let args = DispatchArgs {
                        engine: engine.clone(),
                        node: info.clone(),
                        live_epoch: live_epoch.clone(),
                    };
                    async move {
                        Dispatcher::spawn_linked(
                            Some(DISPATCHER_NAME.into()),
                            Dispatcher,
                            args,
                            sup,
                        )
                        .await
                        .map(|(a, _)| a.get_cell())
                    }
                },
            );
            let mut runners = Vec::with_capacity(slots);
            for index in 0..slots {
                let executor = executor.clone();
                runners.push(ChildSpec::new(
                    format!("troupe.runner.{index}"),
                    Restart::Permanent,
                    move |sup: ActorCell| {
                        let executor = executor.clone();
                        async move {
                            let dispatcher = registry::where_is(DISPATCHER_NAME)
                                .map(ActorRef::from)
                                .ok_or_else(|| spawn_err("no dispatcher"))?;
                            let args = RunnerArgs {
                                index,
                                executor,
                                dispatcher,
                            };
                            TaskRunner::spawn_linked(
                                Some(format!("troupe.runner.{index}")),
                                TaskRunner,
                                args,
                                sup,
                            )
                            .await
                            .map(|(a, _)| a.get_cell())
                        }
                    },
                ));
            }
            // A runner restarts alone; the dispatcher restarts with all runners (they report to it).
            let slots_cfg = SupervisorConfig {
                strategy: Strategy::OneForOne,
                max_restarts: 10,
                period: Duration::from_secs(10),
                ..Default::default()
            };
            let children = vec![
                dispatch,
                ChildSpec::supervisor(SLOTS_NAME, Restart::Permanent, slots_cfg, runners),
            ];
            let cfg = SupervisorConfig {
                strategy: Strategy::RestForOne,
                max_restarts: 10,
                period: Duration::from_secs(10),
                ..Default::default()
            };
            Supervisor::spawn_linked(Some(RUNNERS_NAME.into()), Supervisor, (cfg, children), sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}
