//! Apply: one committed command changes the state, the same way on every server.

use super::model::*;
use super::workers::*;
use crate::command::*;
use crate::spec::OUTPUT_BYTES_MAX;

impl State {
    /// Applies one committed command. `at_ms` is the leader's timestamp from the entry.
    pub fn apply(&mut self, at_ms: u64, cmd: Command) -> Output {
        let at = at_ms.max(self.sched.stats.last_at_ms);
        self.sched.stats.last_at_ms = at;
        self.sched.stats.commands += 1;
        match cmd {
            Command::RegisterNode(info) => self.register_node(info, at),
            Command::UpdateCapacity { node, capacity } => match self.sched.nodes.get_mut(&node) {
                Some(n) => {
                    n.capacity = capacity;
                    Output::Done
                }
                None => Output::NotFound(format!("no node {node}")),
            },
            Command::NodeLost { node, epoch } => self.node_lost(&node, epoch, at),
            Command::Evict { node } => self.evict(&node, at),
            Command::SetDraining {
                node,
                draining,
                deadline_ms,
            } => match self.sched.nodes.get_mut(&node) {
                Some(n) if n.status != NodeStatus::Down => {
                    n.status = if draining {
                        NodeStatus::Draining
                    } else {
                        NodeStatus::Up
                    };
                    n.drain_deadline_ms = deadline_ms
                        .filter(|_| draining)
                        .map(|d| at.saturating_add(d));
                    Output::Done
                }
                Some(_) => Output::Rejected(format!("node {node} is down")),
                None => Output::NotFound(format!("no node {node}")),
            },
            Command::Submit(sub) => self.submit(*sub, at),
            Command::Assign(list) => self.assign(list, at),
            Command::Started(list) => self.started(list, at),
            Command::Finished(list) => self.finished(list, at),
            Command::Cancel(id) => self.with_wf(id, |s, wf| {
                if wf.status.is_terminal() {
                    return Output::Rejected(format!(
                        "{} already finished ({})",
                        wf.name(),
                        wf.status.name()
                    ));
                }
                s.teardown(wf, at, WfStatus::Cancelled, "cancelled by request".into());
                Output::Done
            }),
            Command::Pause(id) => self.with_wf(id, |s, wf| s.pause(wf, true, at)),
            Command::Resume(id) => self.with_wf(id, |s, wf| s.pause(wf, false, at)),
            Command::Retry(id) => self.with_wf(id, |s, wf| s.retry(wf, at)),
            Command::TimeoutWorkflow(id) => self.with_wf(id, |s, wf| match wf.deadline_ms {
                Some(d) if !wf.status.is_terminal() && d <= at => {
                    let limit = crate::units::format_ms(wf.spec.timeout_ms.unwrap_or_default());
                    s.teardown(
                        wf,
                        at,
                        WfStatus::TimedOut,
                        format!("workflow timeout of {limit} reached"),
                    );
                    Output::Done
                }
                _ => Output::Rejected("not due".into()),
            }),
            Command::Redrive(dlq) => {
                let filter = DlqFilter {
                    ids: vec![dlq],
                    ..Default::default()
                };
                let missing = !self.sched.dlq.contains_key(&dlq);
                match self.redrive_many(&filter, at) {
                    Output::Bulk {
                        applied: 0, notes, ..
                    } if missing => Output::NotFound(notes.join("; ")),
                    Output::Bulk {
                        applied: 0, notes, ..
                    } => Output::Rejected(notes.join("; ")),
                    Output::Bulk { .. } => Output::Done,
                    other => other,
                }
            }
            Command::RedriveMany(filter) => self.redrive_many(&filter, at),
            Command::Collect { retain_ms } => self.collect(at.saturating_sub(retain_ms)),
            Command::Audit { seq } => {
                let hash = self.hash();
                self.audit.hashes.insert(seq, hash);
                while self.audit.hashes.len() > AUDITS_KEPT {
                    self.audit.hashes.pop_first();
                }
                Output::Done
            }
            Command::AuditResult { seq, hash } => {
                // A server that joined (or restored a snapshot) after the audit has no hash.
                if let Some(&mine) = self.audit.hashes.get(&seq) {
                    let same = mine == hash;
                    self.audit.last_checked = Some((seq, same));
                    if !same && self.audit.diverged.is_none() {
                        let why = format!(
                            "replica diverged: at audit {seq} (command {}) this server's state hashes to {mine:016x}, the leader's to {hash:016x}; restore this server from the leader (move its data dir away and let it catch up by snapshot)",
                            self.sched.stats.commands
                        );
                        self.audit.diverged = Some(why.clone());
                        self.sched.effects.push(Effect::Diverged(why));
                    }
                }
                Output::Done
            }
            Command::Discard { filter, reason } => self.discard(&filter, &reason, at),
            Command::ReleaseWorkers(keys) => {
                self.release_idle_workers(keys, at);
                Output::Done
            }
            Command::Checkpoint { wf, seq, owner } => self.with_wf(wf, |_, w| {
                if w.checkpoint.as_ref().is_some_and(|c| c.seq >= seq) {
                    return Output::Rejected(format!(
                        "checkpoint {seq} is not newer than the last one"
                    ));
                }
                let steps = w
                    .steps
                    .iter()
                    .zip(&w.spec.steps)
                    .filter(|(r, _)| r.status.is_terminal())
                    .map(|(r, s)| (s.id.clone(), r.status.name().to_string()))
                    .collect();
                w.checkpoint = Some(Checkpoint {
                    seq,
                    at_ms: at,
                    owner,
                    steps,
                });
                Output::Done
            }),
        }
    }

    /// Forgets finished workflows older than `before_ms` (by their end), with their keys and
    /// dead letters: the replicated state stays bounded over months.
    fn collect(&mut self, before_ms: u64) -> Output {
        let gone: std::collections::BTreeSet<WorkflowId> = self
            .workflows
            .values()
            .filter(|w| w.status.is_terminal() && w.finished_ms.is_some_and(|f| f < before_ms))
            .map(|w| w.id)
            .take(COLLECT_MAX)
            .collect();
        for id in &gone {
            if let Some(key) = self.workflows.remove(id).and_then(|w| w.idempotency_key) {
                self.idempotency.remove(&key);
            }
        }
        if !gone.is_empty() {
            super::model::retain(&mut self.sched.dlq, |_, d| !gone.contains(&d.task.wf));
        }
        Output::Counted {
            accepted: gone.len() as u32,
            refused: 0,
        }
    }

    /// A digest of the replicated state (its snapshot encoding): equal on every server at the
    /// same index.
    pub fn hash(&self) -> u64 {
        let cfg = bincode::config::standard();
        let mut bytes = bincode::serde::encode_to_vec(self, cfg).unwrap_or_default();
        bytes.extend(bincode::serde::encode_to_vec(&self.sched.workers, cfg).unwrap_or_default());
        crate::json::fnv64(&bytes)
    }

    /// Drains the effects of the commands applied so far.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.sched.effects)
    }

    fn with_wf(
        &mut self,
        id: WorkflowId,
        f: impl FnOnce(&mut Sched, &mut Workflow) -> Output,
    ) -> Output {
        match self.workflows.get_mut(&id) {
            Some(wf) => {
                let out = f(&mut self.sched, wf);
                self.sched.effects.push(Effect::Changed(id));
                out
            }
            None => Output::NotFound(format!("no workflow {}", wf_name(id))),
        }
    }

    fn submit(&mut self, sub: Submission, at: u64) -> Output {
        if let Err(why) = sub.spec.check_references() {
            return Output::Rejected(format!("invalid spec: {why}"));
        }
        let known = sub
            .idempotency_key
            .as_ref()
            .and_then(|k| self.idempotency.get(k).map(|e| (k, *e)));
        if let Some((key, (id, digest))) = known {
            return if digest == sub.digest {
                Output::Submitted { id, created: false }
            } else {
                Output::Conflict(format!(
                    "idempotency key {key:?} was already used for {} with a different spec or params; use a new key",
                    wf_name(id)
                ))
            };
        }
        for step in &sub.spec.steps {
            if let Some(why) =
                crate::placement::unschedulable(&step.id, &step.resources, &self.sched.nodes)
            {
                return Output::Rejected(why);
            }
        }
        let mut params = sub.spec.params.clone();
        for (name, value) in sub.params {
            match params.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => {
                    return Output::Rejected(format!(
                        "unknown param {name:?}: declare it in [params]"
                    ));
                }
            }
        }
        self.next_workflow += 1;
        let id = self.next_workflow;
        let deadline_ms = sub.spec.timeout_ms.map(|t| at.saturating_add(t));
        let steps = sub.spec.steps.iter().map(|_| StepRun::new()).collect();
        let mut wf = Workflow {
            id,
            params,
            idempotency_key: sub.idempotency_key.clone(),
            status: WfStatus::Running,
            paused: false,
            reason: None,
            submitted_ms: at,
            finished_ms: None,
            deadline_ms,
            steps,
            checkpoint: None,
            owner: self.pick_owner(None),
            history: Vec::new(),
            history_dropped: 0,
            spec: sub.spec,
        };
        wf.log(at, "submitted");
        if let Some(d) = deadline_ms {
            self.sched.deadlines.insert((d, id));
        }
        if let Some(key) = sub.idempotency_key {
            self.idempotency.insert(key, (id, sub.digest));
        }
        if let Some(owner) = wf.owner.clone() {
            wf.log(at, format!("instance on {owner}"));
            self.sched.effects.push(Effect::Owned { wf: id, owner });
        }
        self.sched.running.insert(id);
        self.sched.advance(&mut wf, at);
        self.workflows.insert(id, wf);
        Output::Submitted { id, created: true }
    }

    fn assign(&mut self, list: Vec<Assignment>, at: u64) -> Output {
        let (mut accepted, mut refused) = (0, 0);
        let mut cache = super::render::LaunchCache::default();
        for a in list {
            if self.assign_one(&a, at, &mut cache) {
                accepted += 1;
            } else {
                refused += 1;
                self.sched.stats.rejected_assignments += 1;
            }
        }
        Output::Counted { accepted, refused }
    }

    fn assign_one(
        &mut self,
        a: &Assignment,
        at: u64,
        cache: &mut super::render::LaunchCache,
    ) -> bool {
        let s = &mut self.sched;
        let Some(node) = s.nodes.get(&a.node) else {
            return false;
        };
        if node.epoch != a.epoch {
            return false;
        }
        let Some(wf) = self.workflows.get_mut(&a.task.wf) else {
            return false;
        };
        if wf.status.is_terminal() || wf.paused {
            return false;
        }
        let Some(run) = wf.steps.get_mut(a.task.step as usize) else {
            return false;
        };
        let Some(task) = run.tasks.get_mut(&a.task.item) else {
            return false;
        };
        let ready = match task.state {
            TaskState::Queued => true,
            TaskState::Waiting { due_ms } => due_ms <= at,
            _ => false,
        };
        if task.attempt != a.attempt || !ready {
            return false;
        }
        let step = &wf.spec.steps[a.task.step as usize];
        let req = &step.resources;
        let group = worker_of(step).map(|w| {
            let key = GroupKey {
                node: a.node.clone(),
                wf: a.task.wf,
                step: a.task.step,
                gpus: a.gpus.clone(),
            };
            (s.workers.admit(node, &key, w), key, w)
        });
        // A worker step's item joins a warm worker's group without taking anything; a new
        // worker takes a credit and the step's resources (for its whole life), like an attempt.
        let takes = match &group {
            Some((Admit::Join, ..)) => false,
            Some((Admit::NewWorker, ..)) => true,
            Some((Admit::No, ..)) => return false,
            None => node.credits() > 0,
        };
        if !takes && group.is_none() {
            return false;
        }
        // Re-check the fit against committed state: a plan made on a stale view is refused here.
        if takes {
            let distinct: std::collections::BTreeSet<&String> = a.gpus.iter().collect();
            let fits = crate::placement::fit(node, req, &Default::default()).is_ok()
                && a.gpus.len() == req.gpu as usize
                && distinct.len() == a.gpus.len()
                && a.gpus.iter().all(|g| {
                    !node.used.gpus.contains(g)
                        && node
                            .capacity
                            .gpus
                            .iter()
                            .any(|x| &x.uuid == g && crate::placement::gpu_matches(x, req))
                });
            if !fits {
                return false;
            }
        }
        let old = std::mem::replace(
            &mut task.state,
            TaskState::Assigned {
                node: a.node.clone(),
                epoch: a.epoch,
                at_ms: at,
                gpus: a.gpus.clone(),
            },
        );
        run.max_attempt = run.max_attempt.max(a.attempt);
        let trace = run.trace.entry(a.task.item).or_default();
        trace.attempt = a.attempt;
        trace.placed += 1;
        trace.node = Some(a.node.clone());
        trace.started_ms = Some(at);
        trace.finished_ms = None;
        let placeholder = Task {
            state: old,
            ..Task::queued(a.attempt)
        };
        s.unlink(a.task, &placeholder, step);
        s.on_node.entry(a.node.clone()).or_default().insert(a.task);
        let mut workers = 0;
        if let Some((_, key, w)) = &group {
            let g = s
                .workers
                .groups
                .entry(key.clone())
                .or_insert_with(|| WorkerGroup {
                    depth: crate::state::worker_depth(w),
                    idle_ms: w.idle_ms,
                    ..Default::default()
                });
            g.tasks += 1;
            g.idle_since_ms = None;
            if takes {
                g.workers += 1;
            }
            workers = g.workers;
        }
        if let (true, Some(n)) = (takes, s.nodes.get_mut(&a.node)) {
            n.assigned += 1;
            n.used.cpu_milli += req.cpu_milli as u64;
            n.used.memory_bytes += req.memory_bytes;
            n.used.gpus.extend(a.gpus.iter().cloned());
            // G6: an assignment never takes a node over its advertised capacity, whatever the
            // planner proposed. (Capacity may shrink below what runs, UpdateCapacity; then only
            // assignments that ask for none of the short resource are accepted.)
            assert!(
                (req.cpu_milli == 0 || n.used.cpu_milli <= n.allocatable_cpu())
                    && (req.memory_bytes == 0 || n.used.memory_bytes <= n.allocatable_memory()),
                "node {} over-committed after assigning {:?}",
                n.id,
                a.task
            );
        }
        match Sched::run_spec_cached(wf, a.task, a.attempt, &a.node, a.epoch, &a.gpus, cache) {
            Ok(mut spec) => {
                spec.set_workers(workers);
                s.effects.push(Effect::Run(Box::new(spec)))
            }
            Err(e) => s.task_failed(wf, a.task, format!("cannot render the step: {e}"), at),
        }
        true
    }

    fn started(&mut self, list: Vec<AttemptRef>, at: u64) -> Output {
        let (mut accepted, mut refused) = (0, 0);
        for r in list {
            if let Some(t) = self
                .workflows
                .get_mut(&r.task.wf)
                .and_then(|w| w.steps.get_mut(r.task.step as usize))
                .filter(|run| {
                    run.tasks
                        .get(&r.task.item)
                        .is_some_and(|t| t.attempt == r.attempt)
                })
                .and_then(|run| run.trace.get_mut(&r.task.item))
            {
                t.started_ms = Some(at);
            }
            match self.live_task(&r) {
                Some(task) => {
                    if let TaskState::Assigned {
                        node, epoch, gpus, ..
                    } = &task.state
                    {
                        let (node, epoch, gpus) = (node.clone(), *epoch, gpus.clone());
                        task.state = TaskState::Running {
                            node,
                            epoch,
                            since_ms: at,
                            gpus,
                        };
                    }
                    accepted += 1;
                }
                None => refused += 1,
            }
        }
        Output::Counted { accepted, refused }
    }

    /// The task an attempt report is about, if the report is current (fencing: task, attempt, epoch).
    fn live_task(&mut self, r: &AttemptRef) -> Option<&mut Task> {
        let wf = self.workflows.get_mut(&r.task.wf)?;
        let task = wf
            .steps
            .get_mut(r.task.step as usize)?
            .tasks
            .get_mut(&r.task.item)?;
        is_live(task, r).then_some(task)
    }

    /// Whether apply would accept this report now (read-only; for re-proposing reports).
    pub fn would_accept(&self, rep: &Report) -> bool {
        let Some(wf) = self.workflows.get(&rep.at.task.wf) else {
            return false;
        };
        wf.steps
            .get(rep.at.task.step as usize)
            .and_then(|r| r.tasks.get(&rep.at.task.item))
            .is_some_and(|task| is_live(task, &rep.at) || is_late_but_safe(wf, task, rep))
    }

    /// A success reported by a node after it was declared lost (it was only slow): accepted if
    /// its task still waits to be placed again, so no other attempt of it has run or runs. The
    /// task takes back the reported attempt's number, and the result counts as that attempt's.
    fn late_but_safe(&mut self, rep: &Report) -> bool {
        let at_ms = self.sched.stats.last_at_ms;
        let Some(wf) = self.workflows.get_mut(&rep.at.task.wf) else {
            return false;
        };
        let i = rep.at.task.step as usize;
        let safe = wf
            .steps
            .get(i)
            .and_then(|r| r.tasks.get(&rep.at.task.item))
            .is_some_and(|task| is_late_but_safe(wf, task, rep));
        if safe {
            if let Some(task) = wf.steps[i].tasks.get_mut(&rep.at.task.item) {
                task.attempt = rep.at.attempt;
            }
            wf.log(
                at_ms,
                format!(
                    "accepted a late result of {} step {} item {} attempt {} from a node declared lost (it had not been placed again)",
                    wf_name(rep.at.task.wf),
                    wf.spec.steps[i].id,
                    rep.at.task.item,
                    rep.at.attempt
                ),
            );
        }
        safe
    }

    fn finished(&mut self, list: Vec<Report>, at: u64) -> Output {
        let (mut accepted, mut refused) = (0, 0);
        for rep in list {
            if self.live_task(&rep.at).is_none() && !self.late_but_safe(&rep) {
                refused += 1;
                self.sched.stats.stale_reports += 1;
                continue;
            }
            accepted += 1;
            let Some(wf) = self.workflows.get_mut(&rep.at.task.wf) else {
                continue;
            };
            match rep.outcome {
                Outcome::Succeeded { output } => match output {
                    Some(o) if o.len() > OUTPUT_BYTES_MAX => {
                        let e = format!(
                            "output is {} bytes; the limit is {OUTPUT_BYTES_MAX} (the 64 KiB output limit)",
                            o.len()
                        );
                        self.sched.task_failed(wf, rep.at.task, e, at)
                    }
                    output => self.sched.task_succeeded(wf, rep.at.task, output, at),
                },
                Outcome::Failed { error } => self.sched.task_failed(wf, rep.at.task, error, at),
                Outcome::FailedRetry { error, retry } => {
                    self.sched
                        .task_failed_with(wf, rep.at.task, error, at, Some(retry))
                }
                Outcome::WorkerBroken { error } => self.sched.worker_broken(wf, &rep.at, error, at),
            }
        }
        Output::Counted { accepted, refused }
    }
}

impl Sched {
    fn pause(&mut self, wf: &mut Workflow, pause: bool, at: u64) -> Output {
        if wf.status.is_terminal() {
            return Output::Rejected(format!(
                "{} already finished ({})",
                wf.name(),
                wf.status.name()
            ));
        }
        if wf.paused == pause {
            return Output::Rejected(format!(
                "{} is already {}",
                wf.name(),
                if pause { "paused" } else { "running" }
            ));
        }
        wf.paused = pause;
        for (i, run) in wf.steps.iter().enumerate() {
            for (item, task) in &run.tasks {
                let r = TaskRef {
                    wf: wf.id,
                    step: i as u16,
                    item: *item,
                };
                match (&task.state, pause) {
                    (TaskState::Queued, true) => {
                        self.queue.remove(&r);
                    }
                    (TaskState::Queued, false) => {
                        self.queue.insert(r);
                    }
                    (TaskState::Waiting { due_ms }, true) => {
                        self.delayed.remove(&(*due_ms, r));
                    }
                    (TaskState::Waiting { due_ms }, false) => {
                        self.delayed.insert((*due_ms, r));
                    }
                    _ => {}
                }
            }
        }
        wf.log(
            at,
            if pause {
                "paused: no new attempts start; running ones finish"
            } else {
                "resumed"
            },
        );
        Output::Done
    }

    fn retry(&mut self, wf: &mut Workflow, at: u64) -> Output {
        if !matches!(
            wf.status,
            WfStatus::Failed | WfStatus::Cancelled | WfStatus::TimedOut
        ) {
            return Output::Rejected(format!(
                "{} is {}; only failed, cancelled or timed-out workflows can be retried",
                wf.name(),
                wf.status.name()
            ));
        }
        let mut reset = Vec::new();
        for (run, spec) in wf.steps.iter_mut().zip(&wf.spec.steps) {
            if matches!(
                run.status,
                StepStatus::Failed | StepStatus::Cancelled | StepStatus::Pending
            ) {
                run.status = StepStatus::Pending;
                run.error = None;
                run.next_item = 0;
                run.failed = 0;
                run.finished_ms = None;
                run.attempt_floor = run.max_attempt;
                // Its dead-lettered items run again with the step: their entries go. Blocked
                // items are looked at again when it starts.
                run.dead.clear();
                run.blocked.clear();
                run.ready.clear();
                reset.push(spec.id.clone());
            }
        }
        let reset_steps: Vec<u16> = wf
            .spec
            .steps
            .iter()
            .enumerate()
            .filter(|(_, st)| reset.contains(&st.id))
            .map(|(i, _)| i as u16)
            .collect();
        super::model::retain(&mut self.dlq, |_, d| {
            !(d.task.wf == wf.id && reset_steps.contains(&d.task.step))
        });
        wf.status = WfStatus::Running;
        self.running.insert(wf.id);
        wf.reason = None;
        wf.finished_ms = None;
        wf.paused = false;
        wf.deadline_ms = wf.spec.timeout_ms.map(|t| at.saturating_add(t));
        if let Some(d) = wf.deadline_ms {
            self.deadlines.insert((d, wf.id));
        }
        wf.log(
            at,
            format!(
                "retry from failure: steps {} run again; finished items are kept",
                reset.join(", ")
            ),
        );
        if let Some(owner) = wf.owner.clone() {
            self.effects.push(Effect::Owned { wf: wf.id, owner });
        }
        self.advance(wf, at);
        Output::Done
    }
}

/// The report's attempt is the task's current one, placed at the reporting epoch (fencing).
fn is_live(task: &Task, r: &AttemptRef) -> bool {
    match &task.state {
        TaskState::Assigned { epoch, .. } | TaskState::Running { epoch, .. } => {
            task.attempt == r.attempt && *epoch == r.epoch
        }
        _ => false,
    }
}

/// A success of exactly the attempt that was requeued when its node was lost, while the task
/// has not been placed again.
fn is_late_but_safe(wf: &Workflow, task: &Task, rep: &Report) -> bool {
    !wf.status.is_terminal()
        && matches!(rep.outcome, Outcome::Succeeded { .. })
        && task.state == TaskState::Queued
        && task.requeued_from == Some((rep.at.epoch, rep.at.attempt))
        && task.attempt == rep.at.attempt + 1
}
