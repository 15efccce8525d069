//! Worker steps: long-lived worker processes fed items in batches over JSON lines
//! (`docs/workflow-spec.md`, "Worker steps").
//!
//! ```text
//! troupe.runners
//! ├── troupe.workers     WorkerHost: one Pool actor per (workflow, step, argv, env, GPUs) here
//! │   └── Pool           its worker processes (each run by a task that reports to the pool)
//! ├── troupe.dispatcher  hands `Launch::Worker` attempts to troupe.workers
//! └── troupe.slots       TaskRunners (everything else)
//! ```
//!
//! The host supervises its pools: reports pass through it, so when a pool crashes the host
//! fails the attempts that pool still held (retries apply) and the next submit starts a new
//! pool. If the host itself restarts, rest-for-one restarts the dispatcher after it, which
//! registers the node again and so requeues everything it held.

mod pool;
mod process;
mod protocol;

use pool::{Pool, PoolArgs, PoolMsg};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use troupe_actors::dispatcher::DispatchMsg;
use troupe_actors::sink::DISPATCHER_NAME;
use troupe_actors::workers::WorkerHostMsg;
use troupe_scheduler::{AttemptRef, Launch, Outcome, Report, RunSpec, WorkflowId};

pub use troupe_actors::workers::WORKERS_NAME;

/// The pools of one worker step share argv, env and GPUs: (workflow, step, argv, env, GPUs). A
/// step with `gpu` resources gets one pool per GPU set its attempts were placed on, so a worker
/// is pinned to its GPUs (`CUDA_VISIBLE_DEVICES`) from start to exit and only serves attempts
/// placed on them.
type PoolKey = (
    WorkflowId,
    u16,
    Vec<String>,
    Vec<(String, String)>,
    Vec<String>,
);

pub struct HostArgs {
    pub node: String,
    pub data_dir: PathBuf,
    /// Worker processes per step when the step sets no `max_workers`.
    pub slots: usize,
    /// The node's clock, handed to every pool (its timers read it).
    pub clock: troupe_clock::SharedClock,
}

pub struct WorkerHost;

struct PoolEntry {
    key: PoolKey,
    actor: ActorRef<PoolMsg>,
    /// Attempts submitted to it and not reported yet.
    held: HashSet<AttemptRef>,
}

pub struct HostState {
    a: HostArgs,
    pools: HashMap<PoolKey, u64>,
    by_id: HashMap<u64, PoolEntry>,
    by_actor: HashMap<ActorId, u64>,
    next_id: u64,
}

impl Actor for WorkerHost {
    type Msg = WorkerHostMsg;
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerHostMsg>,
        a: HostArgs,
    ) -> Result<HostState, ActorProcessingErr> {
        Ok(HostState {
            a,
            pools: HashMap::new(),
            by_id: HashMap::new(),
            by_actor: HashMap::new(),
            next_id: 1,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerHostMsg>,
        msg: WorkerHostMsg,
        st: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerHostMsg::Submit(specs) => st.submit(&me, specs).await,
            WorkerHostMsg::Kill(kills) => {
                for e in st.by_id.values_mut() {
                    e.held.retain(|a| !kills.contains(&(a.task, a.attempt)));
                    let _ = e.actor.cast(PoolMsg::Kill(kills.clone()));
                }
            }
            WorkerHostMsg::StopAll => {
                for e in st.by_id.values_mut() {
                    e.held.clear();
                    let _ = e.actor.cast(PoolMsg::StopAll);
                }
            }
            WorkerHostMsg::StopGroups(groups) => {
                for e in st.by_id.values() {
                    let released = groups.iter().any(|g| {
                        g.node == st.a.node
                            && g.wf == e.key.0
                            && g.step == e.key.1
                            && g.gpus == e.key.4
                    });
                    if released {
                        // The replicated state released the group: nothing of it is live here.
                        e.actor.stop(Some("its worker group was released".into()));
                    }
                }
            }
            WorkerHostMsg::WorkflowsEnded(ended) => {
                for e in st.by_id.values() {
                    if ended.contains(&e.key.0) {
                        // Its attempts were all reported or killed with the workflow; the
                        // pool's post_stop stops its workers.
                        e.actor.stop(Some("its workflow ended".into()));
                    }
                }
            }
            WorkerHostMsg::Done(id, reports) => {
                let Some(e) = st.by_id.get_mut(&id) else {
                    return Ok(());
                };
                let reports: Vec<Report> = reports
                    .into_iter()
                    .filter(|r| e.held.remove(&r.at))
                    .collect();
                to_dispatcher(reports);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<WorkerHostMsg>,
        evt: SupervisionEvent,
        st: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why): (ActorCell, Option<String>) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, e) => (cell, Some(e.to_string())),
            _ => return Ok(()),
        };
        let Some(id) = st.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let Some(e) = st.by_id.remove(&id) else {
            return Ok(());
        };
        st.pools.remove(&e.key);
        let error = match why {
            Some(w) => format!("the node's worker pool for this step crashed: {w}"),
            None => "the node's worker pool for this step stopped".to_string(),
        };
        if why_logged(&e, &error) {
            to_dispatcher(
                e.held
                    .into_iter()
                    .map(|at| Report {
                        at,
                        outcome: Outcome::Failed {
                            error: error.clone(),
                        },
                    })
                    .collect(),
            );
        }
        Ok(())
    }
}

fn why_logged(e: &PoolEntry, error: &str) -> bool {
    if !e.held.is_empty() {
        tracing::warn!(held = e.held.len(), %error, "worker pool ended with attempts in flight");
    }
    !e.held.is_empty()
}

fn to_dispatcher(reports: Vec<Report>) {
    if reports.is_empty() {
        return;
    }
    if let Some(d) = ractor::registry::where_is(DISPATCHER_NAME).map(ActorRef::<DispatchMsg>::from)
    {
        let _ = d.cast(DispatchMsg::WorkerDone(reports));
    }
}

impl HostState {
    async fn submit(&mut self, me: &ActorRef<WorkerHostMsg>, specs: Vec<RunSpec>) {
        let mut groups: Vec<(PoolKey, Vec<RunSpec>)> = Vec::new();
        for s in specs {
            let Launch::Worker { launch, .. } = &s.launch else {
                continue;
            };
            // The items of one assignment share one launch (`Arc`): compare by pointer first.
            let same = |k: &PoolKey, first: &RunSpec| {
                k.0 == s.task.wf
                    && k.1 == s.task.step
                    && k.4 == s.gpus
                    && match &first.launch {
                        Launch::Worker { launch: l, .. } => {
                            std::sync::Arc::ptr_eq(l, launch)
                                || (l.argv == launch.argv && l.env == launch.env)
                        }
                        _ => false,
                    }
            };
            match groups.iter_mut().find(|(k, v)| same(k, &v[0])) {
                Some((_, v)) => v.push(s),
                None => {
                    let key = (
                        s.task.wf,
                        s.task.step,
                        launch.argv.clone(),
                        launch.env.clone(),
                        s.gpus.clone(),
                    );
                    groups.push((key, vec![s]))
                }
            }
        }
        for (key, specs) in groups {
            let id = match self.pools.get(&key) {
                Some(id) => *id,
                None => match self.spawn_pool(me, &key, &specs[0]).await {
                    Ok(id) => id,
                    Err(e) => {
                        to_dispatcher(
                            specs
                                .iter()
                                .map(|s| Report {
                                    at: at_of(s),
                                    outcome: Outcome::Failed {
                                        error: format!("cannot start a worker pool: {e}"),
                                    },
                                })
                                .collect(),
                        );
                        continue;
                    }
                },
            };
            let Some(e) = self.by_id.get_mut(&id) else {
                continue;
            };
            e.held.extend(specs.iter().map(at_of));
            let _ = e.actor.cast(PoolMsg::Submit(specs));
        }
    }

    async fn spawn_pool(
        &mut self,
        me: &ActorRef<WorkerHostMsg>,
        key: &PoolKey,
        first: &RunSpec,
    ) -> Result<u64, String> {
        let Launch::Worker { launch, workers } = &first.launch else {
            return Err("not a worker step".into());
        };
        let (argv, env, worker) = (&launch.argv, &launch.env, &launch.worker);
        let id = self.next_id;
        self.next_id += 1;
        // Where the step's attempt logs would be: `logs/<workflow>/<step>`.
        let log_dir = self
            .a
            .data_dir
            .join("logs")
            .join(&first.workflow)
            .join(&first.step_id);
        // The replicated state says how many workers the group holds (each with its credit
        // and resources); a spec from before groups existed says 0.
        let cap = match *workers {
            0 if worker.max_workers > 0 => worker.max_workers as usize,
            0 => self.a.slots,
            n => n as usize,
        };
        let args = PoolArgs {
            label: format!("{}/{}", first.workflow, first.step_id),
            node: self.a.node.clone(),
            argv: argv.clone(),
            // Traces on: the worker processes run under the step's span.
            env: env
                .iter()
                .cloned()
                .chain(
                    crate::otel::worker_traceparent(&first.workflow, first.task.step)
                        .map(|tp| ("TRACEPARENT".to_string(), tp)),
                )
                .collect(),
            worker: worker.clone(),
            timeout_ms: first.timeout_ms,
            gpus: first.gpus.clone(),
            log_dir,
            cap,
            host: me.clone(),
            id,
            clock: self.a.clock.clone(),
        };
        let (actor, _) = Pool::spawn_linked(None, Pool, args, me.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.by_actor.insert(actor.get_id(), id);
        self.pools.insert(key.clone(), id);
        self.by_id.insert(
            id,
            PoolEntry {
                key: key.clone(),
                actor,
                held: HashSet::new(),
            },
        );
        Ok(id)
    }
}

fn at_of(s: &RunSpec) -> AttemptRef {
    AttemptRef {
        task: s.task,
        attempt: s.attempt,
        epoch: s.epoch,
    }
}
