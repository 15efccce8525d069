//! Delivers applied effects to this node's actors, found by registered name (a restarted actor
//! has a new id, its name stays). Casts only: the engine thread never waits on an actor.

use crate::dispatcher::DispatchMsg;
use crate::instance::{InstanceArgs, InstanceMsg, WorkflowInstance, instance_name};
use crate::machine::EffectSink;
use crate::supervisor::{ChildSpec, Restart, SupervisorMsg};
use ractor::{Actor, ActorRef, registry};
use troupe_scheduler::state::GroupKey;
use troupe_scheduler::{RunSpec, TaskRef, WorkflowId};

pub const DISPATCHER_NAME: &str = "troupe.dispatcher";
pub const INSTANCES_NAME: &str = "troupe.instances";

/// What the leader delivers to another node (clusters).
#[derive(Default)]
pub struct Delivery {
    pub runs: Vec<RunSpec>,
    pub kills: Vec<(TaskRef, u32)>,
    /// Worker groups released: stop their workers.
    pub stop_workers: Vec<GroupKey>,
}

/// Delivers to another node (clusters).
pub type Remote = Box<dyn Fn(&str, Delivery) + Send>;

pub struct ActorSink {
    /// This node.
    pub node: String,
    /// How to reach other nodes (`None`: the embedded single node has no others).
    pub remote: Option<Remote>,
    /// Everything an instance needs but its id (engine handle, state, node).
    pub instance: Box<dyn Fn(WorkflowId) -> Option<InstanceArgs> + Send>,
}

fn dispatcher() -> Option<ActorRef<DispatchMsg>> {
    registry::where_is(DISPATCHER_NAME).map(ActorRef::from)
}

/// The child spec of one workflow's instance (transient: it stops when the workflow finishes).
pub fn instance_spec(args: InstanceArgs) -> ChildSpec {
    let name = instance_name(args.id);
    ChildSpec::new(name.clone(), Restart::Transient, move |sup| {
        let (name, args) = (name.clone(), args.clone());
        async move {
            WorkflowInstance::spawn_linked(Some(name), WorkflowInstance, args, sup)
                .await
                .map(|(a, _)| a.get_cell())
        }
    })
}

impl EffectSink for ActorSink {
    fn run(&mut self, specs: Vec<RunSpec>) {
        let mut by_node: std::collections::BTreeMap<String, Vec<RunSpec>> = Default::default();
        for s in specs {
            by_node.entry(s.node.clone()).or_default().push(s);
        }
        for (node, specs) in by_node {
            if node == self.node {
                match dispatcher() {
                    Some(d) => {
                        let _ = d.cast(DispatchMsg::Run(specs));
                    }
                    // The dispatcher restarts by re-registering the node, which requeues these attempts.
                    None => tracing::warn!(
                        n = specs.len(),
                        "no dispatcher: attempts wait for the node to re-register"
                    ),
                }
            } else if let Some(remote) = &self.remote {
                let runs = specs;
                remote(
                    &node,
                    Delivery {
                        runs,
                        ..Default::default()
                    },
                );
            }
        }
    }

    fn kill(&mut self, kills: Vec<(String, TaskRef, u32)>) {
        let mut by_node: std::collections::BTreeMap<String, Vec<(TaskRef, u32)>> =
            Default::default();
        for (node, t, a) in kills {
            by_node.entry(node).or_default().push((t, a));
        }
        for (node, kills) in by_node {
            if node == self.node {
                if let Some(d) = dispatcher() {
                    let _ = d.cast(DispatchMsg::Kill(kills));
                }
            } else if let Some(remote) = &self.remote {
                remote(
                    &node,
                    Delivery {
                        kills,
                        ..Default::default()
                    },
                );
            }
        }
    }

    fn stop_workers(&mut self, groups: Vec<GroupKey>) {
        let mut by_node: std::collections::BTreeMap<String, Vec<GroupKey>> = Default::default();
        for g in groups {
            by_node.entry(g.node.clone()).or_default().push(g);
        }
        for (node, stop_workers) in by_node {
            if node == self.node {
                crate::workers::stop_groups(stop_workers);
            } else if let Some(remote) = &self.remote {
                remote(
                    &node,
                    Delivery {
                        stop_workers,
                        ..Default::default()
                    },
                );
            }
        }
    }

    fn workflows(
        &mut self,
        created: Vec<WorkflowId>,
        changed: Vec<WorkflowId>,
        finished: Vec<WorkflowId>,
    ) {
        if let Some(sup) = registry::where_is(INSTANCES_NAME).map(ActorRef::<SupervisorMsg>::from) {
            for id in created {
                if let Some(args) = (self.instance)(id) {
                    let (tx, _rx) = tokio::sync::oneshot::channel();
                    let _ = sup.cast(SupervisorMsg::StartChild(instance_spec(args), tx.into()));
                }
            }
        }
        if !finished.is_empty()
            && let Some(w) = registry::where_is(crate::workers::WORKERS_NAME)
                .map(ActorRef::<crate::workers::WorkerHostMsg>::from)
        {
            // Their worker processes have nothing left to score here.
            let _ = w.cast(crate::workers::WorkerHostMsg::WorkflowsEnded(
                finished.clone(),
            ));
        }
        for (ids, finished) in [(changed, false), (finished, true)] {
            for id in ids {
                if let Some(a) =
                    registry::where_is(instance_name(id)).map(ActorRef::<InstanceMsg>::from)
                {
                    let _ = a.cast(if finished {
                        InstanceMsg::Finished
                    } else {
                        InstanceMsg::Changed
                    });
                }
            }
        }
    }
}
