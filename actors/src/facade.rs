//! RaftFacade: the actor face of the Raft engine (which runs on its own OS thread).
//!
//! It opens the durable log in `pre_start` (replaying it into the state machine) and closes it
//! when it stops. If it fails, the engine is dropped (which stops its thread and releases the
//! data dir) and the root supervisor restarts it together with everything started after it.

use crate::machine::{EffectSink, HookArgs, Machine, Observer, hook};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::{Arc, RwLock};
use troupe_raft_log::{Engine, EngineConfig, EngineHandle, EngineStatus};

pub const RAFT_NAME: &str = "troupe.raft";

pub enum FacadeMsg {
    /// The engine handle and the shared state (readers take the read lock).
    Handle(RpcReplyPort<(EngineHandle<Machine>, Arc<RwLock<Machine>>)>),
    Status(RpcReplyPort<EngineStatus>),
    /// Fault injection for supervision tests.
    InjectPanic,
    /// Periodic: is the engine thread still running? If it stopped (a fatal storage error, an
    /// undecodable committed entry, a panic in apply), this actor fails, so its supervisor
    /// restarts it (reopening the log) or, once the budget is spent, escalates.
    Watch,
}

/// How often the facade checks that the engine thread runs.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub struct RaftFacade;

pub struct FacadeArgs {
    pub config: EngineConfig,
    pub node: String,
    /// This process start's incarnation (see `NodeInfo::incarnation`).
    pub incarnation: u64,
    pub strategy: troupe_scheduler::placement::Strategy,
    /// Finished workflows are forgotten this long after they end (None: kept).
    pub retain: Option<std::time::Duration>,
    /// How often replicas compare state hashes.
    pub audit_every: std::time::Duration,
    /// Clusters: the leader's lease table and the lease length.
    pub lease: Option<(Arc<crate::leases::LeaseTable>, std::time::Duration)>,
    pub sink: Box<dyn Fn() -> Box<dyn EffectSink> + Send + Sync>,
    /// Made again at each open: watchers of what was applied (alerts, traces).
    pub observers: Box<dyn Fn() -> Vec<Box<dyn Observer>> + Send + Sync>,
    /// Called with the error when the engine stopped because the disk failed (a write or an
    /// fsync of the log failed, the disk is full): the node stops instead of reopening the log
    /// over a disk it cannot trust (fail-stop). Without it the supervisor restarts the facade.
    pub on_disk_failure: Option<Box<dyn Fn(String) + Send + Sync>>,
}

pub struct FacadeState {
    engine: Option<Engine<Machine>>,
    args: Arc<FacadeArgs>,
}

impl Actor for RaftFacade {
    type Msg = FacadeMsg;
    type State = FacadeState;
    type Arguments = Arc<FacadeArgs>;

    async fn pre_start(
        &self,
        me: ActorRef<FacadeMsg>,
        args: Arc<FacadeArgs>,
    ) -> Result<FacadeState, ActorProcessingErr> {
        let open_args = args.clone();
        let engine = tokio::task::spawn_blocking(move || {
            let a = open_args;
            let observers = (a.observers)();
            // Ended attempts are noted from the first entry applied (replay and the node's
            // registration included) when an observer wants them.
            let mut machine = Machine::default();
            machine.attempts.enabled = observers.iter().any(|o| o.wants_attempts());
            let args = HookArgs {
                node: a.node.clone(),
                incarnation: a.incarnation,
                strategy: a.strategy,
                retain: a.retain,
                audit_every: a.audit_every,
                lease: a.lease.clone(),
                observers,
            };
            let h = hook(args, (a.sink)());
            Engine::open(a.config.clone(), machine, h)
        })
        .await??;
        let st = engine.handle().status();
        tracing::info!(applied = st.applied, term = st.term, "raft log open");
        me.send_interval(WATCH_EVERY, || FacadeMsg::Watch);
        Ok(FacadeState {
            engine: Some(engine),
            args,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<FacadeMsg>,
        st: &mut FacadeState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(engine) = st.engine.take() {
            tokio::task::spawn_blocking(move || engine.shutdown()).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<FacadeMsg>,
        msg: FacadeMsg,
        st: &mut FacadeState,
    ) -> Result<(), ActorProcessingErr> {
        let engine = st.engine.as_ref().ok_or("the raft engine is closed")?;
        match msg {
            FacadeMsg::Handle(reply) => {
                let _ = reply.send((engine.handle(), engine.state()));
            }
            FacadeMsg::Status(reply) => {
                let _ = reply.send(engine.handle().status());
            }
            FacadeMsg::InjectPanic => panic!("injected panic in the raft facade"),
            FacadeMsg::Watch => {
                let status = engine.handle().status();
                if !status.running {
                    if let (Some(f), Some(stop)) = (
                        engine.handle().failure().filter(|f| f.disk),
                        st.args.on_disk_failure.as_ref(),
                    ) {
                        tracing::error!(error = %f.message, "the disk under the raft log failed; stopping the node (fail-stop)");
                        stop(format!("the raft log's disk failed: {}", f.message));
                        return Ok(());
                    }
                    tracing::error!(
                        applied = status.applied,
                        "the raft engine thread stopped (see the error above); failing the raft facade so its supervisor acts"
                    );
                    return Err("the raft engine thread stopped".into());
                }
            }
        }
        Ok(())
    }
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for FacadeMsg {}
