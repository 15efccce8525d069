//! Apply, for nodes: registration (epochs), loss, drains and eviction, and requeueing what a
//! node held as attempt + 1.

use super::model::*;
use super::workers::GroupKey;
use crate::command::*;
use std::collections::BTreeSet;

impl State {
    pub(super) fn register_node(&mut self, info: NodeInfo, at: u64) -> Output {
        // The same registration re-sent (it is sent until it commits) is applied once.
        if self.sched.nodes.get(&info.node).is_some_and(|n| {
            n.incarnation == info.incarnation
                && n.registration == info.registration
                && n.status != NodeStatus::Down
        }) {
            return Output::Done;
        }
        let epoch = self
            .sched
            .nodes
            .get(&info.node)
            .map(|n| n.epoch + 1)
            .unwrap_or(1);
        // An operator's drain survives the node restarting.
        let drain = self
            .sched
            .nodes
            .get(&info.node)
            .filter(|n| n.status == NodeStatus::Draining)
            .map(|n| n.drain_deadline_ms);
        self.sched.nodes.insert(
            info.node.clone(),
            Node {
                id: info.node.clone(),
                epoch,
                status: NodeStatus::Up,
                slots: info.slots.max(1),
                queue: info.queue,
                assigned: 0,
                capacity: info.capacity,
                reserved: info.reserved,
                labels: info.labels,
                used: Default::default(),
                api: info.api,
                raft_id: info.raft_id,
                incarnation: info.incarnation,
                registration: info.registration,
                drain_deadline_ms: drain.flatten(),
            },
        );
        if drain.is_some()
            && let Some(n) = self.sched.nodes.get_mut(&info.node)
        {
            n.status = NodeStatus::Draining;
        }
        // A restarted node gets another chance with the workers that broke there.
        self.sched.workers.broken.retain(|_, on| {
            on.remove(&info.node);
            !on.is_empty()
        });
        // Attempts the node held in an earlier epoch are lost: run them again as attempt + 1.
        self.requeue_node(
            &info.node,
            at,
            &format!("node {} restarted (epoch {epoch})", info.node),
        );
        // A server (re)joining adopts instances that have no live owner.
        self.place_instances(at);
        Output::Done
    }

    /// The server to own a workflow's instance: an up server (a node with a Raft id) owning the
    /// fewest running workflows (ties: the smallest id). `None` while no server is registered.
    pub(super) fn pick_owner(&self, exclude: Option<&str>) -> Option<String> {
        let mut load: std::collections::BTreeMap<&str, usize> = self
            .sched
            .nodes
            .values()
            .filter(|n| {
                n.raft_id != 0 && n.status == NodeStatus::Up && Some(n.id.as_str()) != exclude
            })
            .map(|n| (n.id.as_str(), 0))
            .collect();
        if load.len() <= 1 {
            return load.into_keys().next().map(str::to_string);
        }
        for wf in self
            .sched
            .running
            .iter()
            .filter_map(|id| self.workflows.get(id))
        {
            if let Some(c) = wf.owner.as_deref().and_then(|o| load.get_mut(o)) {
                *c += 1;
            }
        }
        load.into_iter()
            .min_by_key(|(id, n)| (*n, *id))
            .map(|(id, _)| id.to_string())
    }

    /// Gives every running workflow whose instance has no live owner (never placed, or its
    /// server is down) a new owner; the new owner's instance rebuilds from the last checkpoint.
    pub(super) fn place_instances(&mut self, at: u64) {
        let orphans: Vec<WorkflowId> = self
            .sched
            .running
            .iter()
            .filter_map(|id| self.workflows.get(id))
            .filter(|w| match w.owner.as_deref() {
                None => true,
                Some(o) => self
                    .sched
                    .nodes
                    .get(o)
                    .is_none_or(|n| n.status == NodeStatus::Down),
            })
            .map(|w| w.id)
            .collect();
        for id in orphans {
            let Some(to) = self.pick_owner(None) else {
                return;
            };
            let Some(wf) = self.workflows.get_mut(&id) else {
                continue;
            };
            let seq = wf.checkpoint.as_ref().map(|c| c.seq).unwrap_or(0);
            let line = match wf.owner.replace(to.clone()) {
                Some(from) => {
                    format!("instance moved from {from} to {to} (rebuilds from checkpoint {seq})")
                }
                None => format!("instance on {to}"),
            };
            wf.log(at, line);
            self.sched.effects.push(Effect::Owned { wf: id, owner: to });
        }
    }

    pub(super) fn node_lost(&mut self, node: &str, epoch: u64, at: u64) -> Output {
        match self.sched.nodes.get_mut(node) {
            Some(n) if n.epoch == epoch && n.status != NodeStatus::Down => {
                n.status = NodeStatus::Down;
                n.assigned = 0;
                n.used = Default::default();
            }
            Some(_) => {
                return Output::Rejected(format!(
                    "node {node} is not at epoch {epoch} or is already down"
                ));
            }
            None => return Output::NotFound(format!("no node {node}")),
        }
        self.requeue_node(
            node,
            at,
            &format!("node {node} lost (no lease renewal, epoch {epoch})"),
        );
        self.place_instances(at);
        Output::Done
    }

    pub(super) fn evict(&mut self, node: &str, at: u64) -> Output {
        let Some(n) = self.sched.nodes.get(node) else {
            return Output::NotFound(format!("no node {node}"));
        };
        if n.status != NodeStatus::Draining || n.drain_deadline_ms.is_none_or(|d| d > at) {
            return Output::Rejected(format!("node {node} has no drain deadline that passed"));
        }
        // Stop what runs there, then requeue it elsewhere.
        for r in self.sched.on_node.get(node).into_iter().flatten() {
            if let Some(task) = self.task(*r) {
                self.sched.effects.push(Effect::Kill {
                    task: *r,
                    attempt: task.attempt,
                    node: node.to_string(),
                });
            }
        }
        self.requeue_node(node, at, &format!("node {node} drained past its deadline"));
        if let Some(n) = self.sched.nodes.get_mut(node) {
            n.assigned = 0;
            n.used = Default::default();
            n.drain_deadline_ms = None;
        }
        Output::Done
    }

    /// Requeues every attempt placed on `node` as attempt + 1 (not counted as a failure). A task
    /// lost [`LOST_MAX`] times is given up on instead: dead-lettered (or its step fails) as
    /// "lost N times: it may be killing its nodes".
    fn requeue_node(&mut self, node: &str, at: u64, why: &str) {
        // Its workers are gone with its attempts (the callers reset the node's usage).
        self.release_node_workers(node);
        let sched = &mut self.sched;
        // The workflows with a task on the node (its index is emptied: none is live there now).
        let running: BTreeSet<WorkflowId> = sched
            .on_node
            .remove(node)
            .unwrap_or_default()
            .iter()
            .map(|t| t.wf)
            .collect();
        for id in running {
            let Some(wf) = self.workflows.get_mut(&id) else {
                continue;
            };
            let (mut lost, mut give_up) = (0, Vec::new());
            for (i, run) in wf.steps.iter_mut().enumerate() {
                for (item, task) in run.tasks.iter_mut() {
                    let epoch = match &task.state {
                        TaskState::Assigned { node: n, epoch, .. }
                        | TaskState::Running { node: n, epoch, .. }
                            if n == node =>
                        {
                            *epoch
                        }
                        _ => continue,
                    };
                    let r = TaskRef {
                        wf: wf.id,
                        step: i as u16,
                        item: *item,
                    };
                    task.lost += 1;
                    if task.lost >= LOST_MAX {
                        give_up.push((r, task.lost));
                        continue;
                    }
                    task.requeued_from = Some((epoch, task.attempt));
                    task.attempt += 1;
                    task.state = TaskState::Queued;
                    lost += 1;
                    if !wf.paused {
                        sched.queue.insert(r);
                    }
                }
            }
            if lost > 0 {
                wf.log(
                    at,
                    format!("{why}: {lost} attempt(s) requeued as attempt + 1"),
                );
                sched.effects.push(Effect::Changed(wf.id));
            }
            for (r, n) in give_up {
                sched.task_failed_for_good(
                    wf,
                    r,
                    format!("lost {n} times with its node ({why}): it may be killing its nodes"),
                    at,
                );
                if wf.status.is_terminal() {
                    break;
                }
            }
        }
    }

    /// The RunSpec of an attempt that is placed and live (to send it again after a lost delivery).
    pub fn run_spec_of(&self, task: TaskRef, attempt: u32) -> Option<RunSpec> {
        let wf = self.workflows.get(&task.wf)?;
        let t = wf.steps.get(task.step as usize)?.tasks.get(&task.item)?;
        let (node, gpus) = t.state.placement()?;
        let epoch = match &t.state {
            TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } => *epoch,
            _ => return None,
        };
        if t.attempt != attempt {
            return None;
        }
        let mut spec = Sched::run_spec(wf, task, attempt, node, epoch, gpus).ok()?;
        spec.set_workers(self.sched.workers.workers_in(&GroupKey {
            node: node.to_string(),
            wf: task.wf,
            step: task.step,
            gpus: gpus.to_vec(),
        }));
        Some(spec)
    }
}
