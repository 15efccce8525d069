//! The Raft facade's child spec: the engine's configuration from the node's (clock, seed,
//! chaos-mode disk faults, the cluster's voters and ticks), and the engine hook's effect sink and
//! observers.

use super::Ctx;
use crate::cluster::Role;
use crate::cluster::transport::PgTransport;
use ractor::{Actor, ActorCell};
use std::sync::Arc;
use troupe_actors::facade::{FacadeArgs, RAFT_NAME, RaftFacade};
use troupe_actors::instance::InstanceArgs;
use troupe_actors::machine::{EffectSink, Observer};
use troupe_actors::sink::ActorSink;
use troupe_actors::supervisor::{ChildSpec, Restart};
use troupe_raft_log::EngineConfig;

pub(super) fn raft_spec(ctx: &Ctx) -> ChildSpec {
    let cfg = &ctx.cfg;
    let mut engine_cfg = EngineConfig::new(&cfg.data_dir);
    engine_cfg.fsync = cfg.fsync;
    engine_cfg.snapshot_every_entries = cfg.snapshot_every_entries;
    // Entries are stamped with the node's clock (skewed by `skew-clock` in chaos mode). Ticks
    // and election timeouts keep the unskewed monotonic clock (`EngineConfig::time`, the
    // default): a real skew moves the wall clock, not CLOCK_MONOTONIC, and a node skewed back
    // would otherwise stop ticking for the skew's length. The simulator hands both in
    // (`EngineConfig::with_clock`). With `--seed`, raft-log's draws are seeded too.
    engine_cfg.clock = entry_clock(&ctx.clock);
    engine_cfg.seed = cfg.seed.map(|s| s ^ 0x7261_6674); // its own stream: "raft"
    if cfg.fault_injection {
        // Chaos mode: injectable disk faults, and the whole history kept for `troupe chaos
        // verify` (docs/chaos.md).
        engine_cfg.disk_faults = Some(cfg.chaos.disk.clone());
        engine_cfg.keep_compacted = true;
    }
    if let Some(c) = cfg.cluster.as_ref().filter(|c| c.role == Role::Server) {
        engine_cfg.id = c.raft_id();
        engine_cfg.voters = c.voters();
        engine_cfg.join_existing = c.join_existing.is_some();
        engine_cfg.transport = Some(Arc::new(PgTransport));
        // 50 ms ticks: elections in ~0.5-1 s, heartbeats every 100 ms.
        engine_cfg.tick_ms = 50;
        engine_cfg.election_tick = 10;
        engine_cfg.heartbeat_tick = 2;
    }
    let lease = cfg.cluster.as_ref().map(|c| (ctx.leases.clone(), c.lease));
    let args = Arc::new(FacadeArgs {
        config: engine_cfg,
        node: ctx.node.clone(),
        incarnation: ctx.incarnation,
        strategy: cfg.strategy,
        retain: cfg.retain,
        audit_every: cfg.audit_every,
        lease,
        sink: Box::new(sink_factory(ctx.clone())),
        observers: Box::new(observers(ctx.clone())),
        on_disk_failure: Some(Box::new({
            let fatal = cfg.fatal.clone();
            move |why| fatal.raise(why)
        })),
    });
    ChildSpec::new(RAFT_NAME, Restart::Permanent, move |sup: ActorCell| {
        let args = args.clone();
        async move {
            RaftFacade::spawn_linked(Some(RAFT_NAME.into()), RaftFacade, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}

/// The Raft log's entry clock (wall ms) read from the node's clock.
fn entry_clock(clock: &troupe_clock::SharedClock) -> troupe_raft_log::Clock {
    let clock = clock.clone();
    Arc::new(move || clock.wall_ms())
}

/// The engine hook's observers: alerts (`--notify`) and traces (`--otlp-endpoint`).
fn observers(ctx: Ctx) -> impl Fn() -> Vec<Box<dyn Observer>> + Send + Sync {
    move || {
        let mut v = Vec::new();
        if let Some(n) = &ctx.notifier {
            v.push(n.observer(ctx.node.clone()));
        }
        if let Some(t) = &ctx.tracer {
            v.push(t.observer());
        }
        v
    }
}

fn sink_factory(ctx: Ctx) -> impl Fn() -> Box<dyn EffectSink> + Send + Sync {
    move || {
        let (node, slot) = (ctx.node.clone(), ctx.slot.clone());
        let remote: Option<troupe_actors::sink::Remote> = ctx.cfg.cluster.as_ref().map(|_| {
            Box::new(|node: &str, d: troupe_actors::sink::Delivery| {
                use crate::cluster::wire::ExecMsg;
                if !d.runs.is_empty() {
                    crate::cluster::peer::deliver(node, d.runs);
                }
                if !d.kills.is_empty() {
                    crate::cluster::peer::send_exec(node, ExecMsg::Kill(d.kills));
                }
                if !d.stop_workers.is_empty() {
                    crate::cluster::peer::send_exec(node, ExecMsg::StopWorkers(d.stop_workers));
                }
            }) as troupe_actors::sink::Remote
        });
        Box::new(ActorSink {
            node: node.clone(),
            remote,
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
