//! The node's supervision tree. The embedded single node (`troupe dev`):
//!
//! ```text
//! troupe.root (rest-for-one)
//! ├── troupe.raft        RaftFacade: the durable Raft log + state machine
//! ├── troupe.instances   Supervisor (one-for-one) → WorkflowInstance per running workflow
//! ├── troupe.api         ApiServer
//! ├── troupe.runners     Supervisor (rest-for-one) → troupe.workers (WorkerHost: pools of
//! │                      warm worker processes), Dispatcher,
//! │                      troupe.slots Supervisor (one-for-one) → TaskRunner × slots
//! └── troupe.monitor     ResourceMonitor: re-reads CPU / memory / NVML GPUs, commits changes
//! ```
//!
//! A cluster server puts `troupe.membership` (ractor_cluster sessions) first and adds
//! `troupe.peer` after the Raft facade and `troupe.lease` last; a worker has no Raft facade, no
//! instances and no monitor, and its API forwards to the leader.
//!
//! Rest-for-one at the root: if the Raft facade restarts, everything after it restarts too (they
//! hold its handle); the dispatcher re-registers the node, which requeues its attempts.

use crate::api::{ApiArgs, ApiServer, AppState, Route};
use crate::cluster::lease::{LeaseArgs, LeaseKeeper, LeaseTable};
use crate::cluster::membership::{Membership, MembershipArgs};
use crate::cluster::peer::{PeerActor, PeerArgs};
use crate::cluster::upstream::RemoteUpstream;
use crate::cluster::{ClusterConfig, Role};
use crate::config::{NodeConfig, incarnation, node_id};
use crate::exec::LocalExecutor;
use crate::exec::worker::{HostArgs, WORKERS_NAME, WorkerHost};
use crate::monitor::{MonitorArgs, ResourceMonitor};
use anyhow::Context;
use ractor::{Actor, ActorCell, ActorRef, SpawnErr, call_t, registry};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use troupe_actors::dispatcher::{DispatchArgs, Dispatcher};
use troupe_actors::executor::Executor;
use troupe_actors::facade::{FacadeMsg, RAFT_NAME};
use troupe_actors::instance::InstanceArgs;
use troupe_actors::machine::Machine;
use troupe_actors::runner::{RunnerArgs, TaskRunner};
use troupe_actors::sink::{DISPATCHER_NAME, INSTANCES_NAME, instance_spec};
use troupe_actors::supervisor::{
    ChildSpec, Restart, Strategy, Supervisor, SupervisorConfig, SupervisorMsg,
};
use troupe_actors::upstream::{LocalUpstream, Upstream};
use troupe_raft_log::EngineHandle;
use troupe_scheduler::NodeInfo;

mod engine;
use engine::raft_spec;

pub const ROOT_NAME: &str = "troupe.root";
pub const RUNNERS_NAME: &str = "troupe.runners";
pub const API_NAME: &str = "troupe.api";
pub const SLOTS_NAME: &str = "troupe.slots";
pub const MONITOR_NAME: &str = "troupe.monitor";
pub const PEER_NAME: &str = "troupe.peer";
pub const MEMBERSHIP_NAME: &str = "troupe.membership";
pub const LEASE_NAME: &str = "troupe.lease";

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

type RaftHandle = (EngineHandle<Machine>, Arc<RwLock<Machine>>);

/// What the child specs share.
#[derive(Clone)]
struct Ctx {
    cfg: Arc<NodeConfig>,
    node: String,
    /// Random per process start (see `NodeInfo::incarnation`).
    incarnation: u64,
    /// The node's clock (`NodeConfig::clock`): every actor that judges time gets it.
    clock: troupe_clock::SharedClock,
    bound: Arc<Mutex<Option<SocketAddr>>>,
    /// The engine handle and state, published by the instance supervisor's start so the engine
    /// hook can build instance arguments without calling an actor from the engine thread.
    slot: Arc<Mutex<Option<RaftHandle>>>,
    leases: Arc<LeaseTable>,
    leader_api: Arc<Mutex<String>>,
    /// The alert queues and their sending tasks (`--notify`).
    notifier: Option<crate::notify::Notifier>,
    /// The span exporter (`--otlp-endpoint`).
    tracer: Option<crate::otel::Tracer>,
}

impl Ctx {
    fn role(&self) -> Option<Role> {
        self.cfg.cluster.as_ref().map(|c| c.role)
    }
}

/// Starts the tree; returns once every actor is up and the API listens.
pub async fn start(mut cfg: NodeConfig) -> anyhow::Result<RunningNode> {
    crate::capacity::enable_failpoints(cfg.fault_injection);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // Private to the node's user, also when it was created before (or by hand).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", cfg.data_dir.display()))?;
    }
    // Absolute, so task paths ($TROUPE_OUTPUT, logs) hold whatever directory a task changes to.
    cfg.data_dir = std::fs::canonicalize(&cfg.data_dir)
        .with_context(|| format!("cannot resolve {}", cfg.data_dir.display()))?;
    if let Some(c) = &cfg.cluster {
        cfg.raft_id = c.raft_id();
        if c.role == Role::Server && c.join_existing.is_none() && cfg.raft_id == 0 {
            anyhow::bail!("--listen {} is not among the servers", c.listen);
        }
    }
    // The node's randomness: one seeded stream (`--seed`) or the OS; a fork per use, so a
    // node id drawn on a first start does not shift the draws after it.
    let mut rng = cfg.rng();
    let node = node_id(&cfg, &mut rng.fork()).context("cannot read or write the node id")?;
    let incarnation = incarnation(&cfg, &mut rng.fork()).with_context(|| {
        format!(
            "cannot count this start in {}/starts",
            cfg.data_dir.display()
        )
    })?;
    if cfg.fault_injection {
        crate::chaos::process::write_pid_file(&cfg.data_dir)
            .with_context(|| format!("cannot write {}/node.pid", cfg.data_dir.display()))?;
        // Blackhole partitions: this node's cluster frames carry its stamp (docs/chaos.md).
        crate::chaos::blackhole::register(&node, cfg.chaos.clone());
    }
    let reaped = crate::exec::reap_orphans(&cfg.data_dir, &node);
    if reaped > 0 {
        tracing::warn!(
            reaped,
            "killed processes left by attempts of this node's previous run"
        );
    }
    if let Some(retain) = cfg.retain {
        tokio::spawn(crate::janitor::run(cfg.data_dir.join("logs"), retain));
    }
    let ctx = Ctx {
        node: node.clone(),
        incarnation,
        clock: cfg.shared_clock(),
        bound: Arc::new(Mutex::new(None)),
        slot: Arc::new(Mutex::new(None)),
        leases: Arc::new(LeaseTable::new(cfg.shared_clock())),
        leader_api: Arc::new(Mutex::new(String::new())),
        notifier: None,
        tracer: None,
        cfg: Arc::new(cfg),
    };
    let mut ctx = ctx;
    if let Some(n) = &ctx.cfg.notify {
        if ctx.role() == Some(Role::Worker) {
            tracing::warn!("--notify: a worker sends no alerts (the leading server does)");
        } else {
            ctx.notifier = Some(crate::notify::Notifier::start(n));
        }
    }
    if let Some(o) = &ctx.cfg.otel {
        // Workers export nothing but pass TRACEPARENT to their tasks.
        let mut o = o.clone();
        if o.cluster.is_empty() {
            // The embedded node's id is kept in its data dir: one name per `troupe dev` state.
            o.cluster = match ctx.role() {
                None => node.clone(),
                Some(_) => "troupe".into(),
            };
        }
        ctx.tracer = Some(crate::otel::Tracer::start(&o, &node));
    }
    let children = match ctx.role() {
        None => vec![
            raft_spec(&ctx),
            instances_spec(&ctx),
            api_spec(&ctx),
            runners_spec(&ctx),
            monitor_spec(&ctx),
        ],
        Some(Role::Server) => vec![
            membership_spec(&ctx),
            raft_spec(&ctx),
            peer_spec(&ctx),
            instances_spec(&ctx),
            api_spec(&ctx),
            runners_spec(&ctx),
            monitor_spec(&ctx),
            lease_spec(&ctx),
        ],
        Some(Role::Worker) => vec![
            membership_spec(&ctx),
            peer_spec(&ctx),
            api_spec(&ctx),
            runners_spec(&ctx),
            lease_spec(&ctx),
        ],
    };
    let root_cfg = SupervisorConfig {
        strategy: Strategy::RestForOne,
        max_restarts: 5,
        period: Duration::from_secs(30),
        clock: ctx.clock.clone(),
        ..Default::default()
    };
    let (root, join) = Supervisor::spawn(Some(ROOT_NAME.into()), Supervisor, (root_cfg, children))
        .await
        .map_err(|e| anyhow::anyhow!("the node did not start: {e}"))?;
    let addr = ctx
        .bound
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

fn membership_spec(ctx: &Ctx) -> ChildSpec {
    let (cluster, node, fatal) = (
        ctx.cfg.cluster.clone().expect("cluster mode"),
        ctx.node.clone(),
        ctx.cfg.fatal.clone(),
    );
    let chaos = ctx.cfg.fault_injection.then(|| ctx.cfg.chaos.clone());
    let clock = ctx.clock.clone();
    ChildSpec::new(
        MEMBERSHIP_NAME,
        Restart::Permanent,
        move |sup: ActorCell| {
            let args = MembershipArgs {
                chaos: chaos.clone(),
                cluster: cluster.clone(),
                node: node.clone(),
                fatal: fatal.clone(),
                clock: clock.clone(),
            };
            async move {
                Membership::spawn_linked(Some(MEMBERSHIP_NAME.into()), Membership, args, sup)
                    .await
                    .map(|(a, _)| a.get_cell())
            }
        },
    )
}

fn peer_spec(ctx: &Ctx) -> ChildSpec {
    let (node, leases, raft_id, server) = (
        ctx.node.clone(),
        ctx.leases.clone(),
        ctx.cfg.raft_id,
        ctx.role() == Some(Role::Server),
    );
    let clock = ctx.clock.clone();
    ChildSpec::new(PEER_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (node, leases, clock) = (node.clone(), leases.clone(), clock.clone());
        async move {
            let engine = if server { Some(raft().await?.0) } else { None };
            let args = PeerArgs {
                leading: None,
                stalls: None,
                node,
                raft_id,
                engine,
                leases,
                clock,
            };
            PeerActor::spawn_linked(Some(PEER_NAME.into()), PeerActor, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}

fn lease_spec(ctx: &Ctx) -> ChildSpec {
    let c: ClusterConfig = ctx.cfg.cluster.clone().expect("cluster mode");
    let (leader_api, clock) = (ctx.leader_api.clone(), ctx.clock.clone());
    ChildSpec::new(LEASE_NAME, Restart::Permanent, move |sup: ActorCell| {
        let args = LeaseArgs {
            renew: c.renew,
            lease: c.lease,
            leader_api: leader_api.clone(),
            clock: clock.clone(),
        };
        async move {
            LeaseKeeper::spawn_linked(Some(LEASE_NAME.into()), LeaseKeeper, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}

fn instances_spec(ctx: &Ctx) -> ChildSpec {
    let (node, slot, clock) = (ctx.node.clone(), ctx.slot.clone(), ctx.clock.clone());
    ChildSpec::new(INSTANCES_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (node, slot, clock) = (node.clone(), slot.clone(), clock.clone());
        async move {
            let (engine, state) = raft().await?;
            if let Ok(mut s) = slot.lock() {
                *s = Some((engine.clone(), state.clone()));
            }
            // Rebuild: one instance per running workflow this server owns.
            let running: Vec<u64> = {
                let m = state.read().map_err(spawn_err)?;
                m.state
                    .workflows
                    .values()
                    .filter(|w| {
                        !w.status.is_terminal() && w.owner.as_deref() == Some(node.as_str())
                    })
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
                clock,
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
    })
}

fn api_spec(ctx: &Ctx) -> ChildSpec {
    let ctx = ctx.clone();
    ChildSpec::new(API_NAME, Restart::Permanent, move |sup: ActorCell| {
        let ctx = ctx.clone();
        async move {
            let cfg = &ctx.cfg;
            let outbound = crate::api::Outbound::new(cfg.api_tls.as_ref());
            let chaos = crate::api::ChaosApi {
                node: ctx.node.clone(),
                data_dir: cfg.data_dir.clone(),
                enabled: cfg.fault_injection,
                chaos: cfg.chaos.clone(),
                outbound: outbound.clone(),
                raft: None,
                leader_api: None,
            };
            let router = if ctx.role() == Some(Role::Worker) {
                crate::api::proxy_router(crate::api::WorkerApi {
                    node: ctx.node.clone(),
                    data_dir: cfg.data_dir.clone(),
                    leader_api: ctx.leader_api.clone(),
                    auth: cfg.api_auth.clone(),
                    outbound,
                    chaos: crate::api::ChaosApi {
                        leader_api: Some(ctx.leader_api.clone()),
                        ..chaos
                    },
                })
            } else {
                let (engine, state) = raft().await?;
                let route: Arc<dyn Fn() -> Route + Send + Sync> = if cfg.cluster.is_some() {
                    let (engine, state) = (engine.clone(), state.clone());
                    Arc::new(move || {
                        let st = engine.status();
                        if st.is_leader {
                            return Route::Here;
                        }
                        let m = state.read().unwrap_or_else(|e| e.into_inner());
                        match m.state.sched.nodes.values().find(|n| {
                            st.leader_id != 0 && n.raft_id == st.leader_id && !n.api.is_empty()
                        }) {
                            Some(n) => Route::To(n.api.clone()),
                            None => Route::Unknown,
                        }
                    })
                } else {
                    Arc::new(|| Route::Here)
                };
                let chaos = crate::api::ChaosApi {
                    raft: Some((engine.clone(), state.clone())),
                    ..chaos
                };
                let app = AppState {
                    engine,
                    state,
                    data_dir: cfg.data_dir.clone(),
                    node: ctx.node.clone(),
                    started: std::time::Instant::now(),
                    fault_injection: cfg.fault_injection,
                    linearizable: cfg.cluster.is_some(),
                    route,
                    auth: cfg.api_auth.clone(),
                    outbound,
                    chaos,
                };
                crate::api::router(app)
            };
            // A partition with `api` leaves every route unanswered (outermost layer).
            let router = if cfg.fault_injection {
                router.layer(axum::middleware::from_fn_with_state(
                    cfg.chaos.clone(),
                    crate::api::cut_api,
                ))
            } else {
                router
            };
            let args = ApiArgs {
                listen: cfg.listen,
                router,
                data_dir: cfg.data_dir.clone(),
                bound: ctx.bound.clone(),
                header_timeout: cfg.api_header_timeout,
                tls: cfg.api_tls.as_ref().map(|t| t.acceptor.clone()),
            };
            ApiServer::spawn_linked(Some(API_NAME.into()), ApiServer, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}

fn monitor_spec(ctx: &Ctx) -> ChildSpec {
    let (node, simulated, every) = (
        ctx.node.clone(),
        ctx.cfg.simulate_gpus.clone(),
        ctx.cfg.capacity_refresh,
    );
    ChildSpec::new(MONITOR_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (node, simulated) = (node.clone(), simulated.clone());
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
    })
}

/// `troupe.workers`: the pools of warm worker processes (`node/src/exec/worker/`).
fn workers_spec(ctx: &Ctx) -> ChildSpec {
    let (node, data_dir, slots) = (
        ctx.node.clone(),
        ctx.cfg.data_dir.clone(),
        ctx.cfg.slots as usize,
    );
    let clock = ctx.clock.clone();
    ChildSpec::new(WORKERS_NAME, Restart::Permanent, move |sup: ActorCell| {
        let args = HostArgs {
            node: node.clone(),
            data_dir: data_dir.clone(),
            slots,
            clock: clock.clone(),
        };
        async move {
            WorkerHost::spawn_linked(Some(WORKERS_NAME.into()), WorkerHost, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}

fn runners_spec(ctx: &Ctx) -> ChildSpec {
    let cfg = &ctx.cfg;
    let info = NodeInfo {
        node: ctx.node.clone(),
        api: String::new(), // set at each start, once the API is bound
        raft_id: cfg.raft_id,
        incarnation: ctx.incarnation,
        registration: 0, // set by the upstream for each registration
        slots: cfg.slots,
        queue: cfg.queue,
        capacity: Default::default(), // read at each (re)start of the dispatcher
        reserved: cfg.reserve.clone(),
        labels: cfg.labels.clone(),
    };
    let executor: Arc<dyn Executor> = Arc::new(LocalExecutor {
        data_dir: cfg.data_dir.clone(),
        kill_grace: cfg.kill_grace,
        max_log_bytes: cfg.max_log_bytes,
        clock: ctx.clock.clone(),
    });
    let ctx = ctx.clone();
    ChildSpec::new(RUNNERS_NAME, Restart::Permanent, move |sup: ActorCell| {
        let (mut info, ctx, executor) = (info.clone(), ctx.clone(), executor.clone());
        async move {
            let simulated = ctx.cfg.simulate_gpus.clone();
            info.capacity = tokio::task::spawn_blocking(move || {
                crate::capacity::discover(simulated.as_deref())
            })
            .await
            .map_err(spawn_err)?;
            info.api = ctx
                .bound
                .lock()
                .ok()
                .and_then(|b| *b)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let upstream: Arc<dyn Upstream> = match ctx.role() {
                Some(Role::Worker) => Arc::new(RemoteUpstream(ctx.clock.clone())),
                _ => Arc::new(LocalUpstream(raft().await?.0, ctx.clock.clone())),
            };
            let clock = ctx.clock.clone();
            let dispatch = ChildSpec::new(
                DISPATCHER_NAME,
                Restart::Permanent,
                move |sup: ActorCell| {
                    let args = DispatchArgs {
                        upstream: upstream.clone(),
                        node: info.clone(),
                        clock: clock.clone(),
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
            let slots = ctx.cfg.slots as usize;
            let workers = workers_spec(&ctx);
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
                clock: ctx.clock.clone(),
                ..Default::default()
            };
            // The worker host first: if it restarts, the dispatcher after it restarts and
            // registers the node again, which requeues what the host's workers held.
            let children = vec![
                workers,
                dispatch,
                ChildSpec::supervisor(SLOTS_NAME, Restart::Permanent, slots_cfg, runners),
            ];
            let cfg = SupervisorConfig {
                strategy: Strategy::RestForOne,
                max_restarts: 10,
                period: Duration::from_secs(10),
                clock: ctx.clock.clone(),
                ..Default::default()
            };
            Supervisor::spawn_linked(Some(RUNNERS_NAME.into()), Supervisor, (cfg, children), sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}
