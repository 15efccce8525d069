//! Dispatcher: this node's bounded runner queue.
//!
//! It receives the attempts the leader placed here (one cast per applied batch), hands them to
//! idle TaskRunners, and batches `Started` / `Finished` reports into proposals (group commit:
//! one proposal per flush, not one per task). On start it registers the node, which bumps the
//! node's epoch and requeues whatever an earlier incarnation of this node was running.

use crate::runner::RunnerMsg;
use crate::upstream::Upstream;
use crate::workers::{WORKERS_NAME, WorkerHostMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use troupe_scheduler::{AttemptRef, Command, NodeInfo, Outcome, Report, RunSpec, TaskRef};

/// Reports are flushed after this delay, or at once when this many are buffered. Each flush
/// becomes its own Raft entry and, mostly, its own durable write (one fdatasync, ~0.4 ms here):
/// at 1 ms and 512 a 200,000-item warm step made 1,093 of them and spent 0.43 s in fdatasync;
/// at 3 ms and 2,048 it makes ~330 (docs/benchmarks.md). A report waits at most 3 ms more.
const FLUSH_AFTER: Duration = Duration::from_millis(3);
const FLUSH_AT: usize = 2048;
/// Finished reports are kept this long (and at most this many) to be sent again with lease
/// renewals, in case the proposal carrying them was lost with a leader.
const RECENT_FOR: Duration = Duration::from_secs(10);
const RECENT_MAX: usize = 4096;
/// Most bytes of reports (outputs and errors) one lease renewal carries; the rest waits for the
/// next renewal. Well under the cluster payload limit, so a renewal always decodes.
pub const RENEW_REPORT_BYTES: usize = 1 << 20;

/// Whether a report remembered `at` is too old to send again at `now`.
fn aged_out(at: std::time::Instant, now: std::time::Instant) -> bool {
    now.saturating_duration_since(at) > RECENT_FOR
}

/// The size a report adds to a renewal (its output or error, plus a fixed part).
fn report_bytes(r: &Report) -> usize {
    64 + match &r.outcome {
        Outcome::Succeeded { output } => output.as_ref().map_or(0, |o| o.len()),
        Outcome::Failed { error }
        | Outcome::FailedRetry { error, .. }
        | Outcome::WorkerBroken { error } => error.len(),
    }
}

pub enum DispatchMsg {
    Run(Vec<RunSpec>),
    Kill(Vec<(TaskRef, u32)>),
    Done {
        runner: usize,
        report: Report,
    },
    RunnerUp {
        runner: usize,
        actor: ActorRef<RunnerMsg>,
    },
    /// Reports of worker-step attempts, from the worker host.
    WorkerDone(Vec<Report>),
    Flush,
    Stats(RpcReplyPort<DispatchStats>),
    /// Fault injection for supervision tests: the dispatcher panics.
    InjectPanic,
    /// For lease renewals: this node's epoch, the attempts it holds (queued or running) and the
    /// reports of the last seconds (sent again until they are applied: reports are idempotent).
    Held(RpcReplyPort<Held>),
    /// Self-fencing: the lease could not be renewed. Stop every attempt, take no new work, and
    /// register again (a new epoch) once the servers answer.
    Fence,
    /// The re-registration after a fence committed.
    Registered(Result<u64, String>),
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub node: String,
    pub epoch: u64,
    pub attempts: Vec<AttemptRef>,
    pub recent: Vec<Report>,
}

#[derive(Debug, Clone, Default)]
pub struct DispatchStats {
    pub queued: usize,
    pub busy: usize,
    pub runners: usize,
    pub epoch: u64,
    pub reports_pending: usize,
}

pub struct DispatchArgs {
    pub upstream: Arc<dyn Upstream>,
    pub node: NodeInfo,
    /// The node's clock: how old a finished report is (`RECENT_FOR`).
    pub clock: troupe_clock::SharedClock,
}

pub struct Dispatcher;

pub struct DispatchState {
    upstream: Arc<dyn Upstream>,
    clock: troupe_clock::SharedClock,
    info: NodeInfo,
    fenced: bool,
    recent: VecDeque<(std::time::Instant, Report)>,
    /// The attempts in `recent`, for O(1) duplicate checks on the hot path.
    recent_keys: HashSet<AttemptRef>,
    epoch: u64,
    /// Placed attempts waiting for a runner, in task order (workflow, item, step): a document
    /// already deep in a pipeline runs before new documents, as in the leader's ready queue.
    queue: BTreeMap<(TaskRef, u32), RunSpec>,
    runners: Vec<Option<ActorRef<RunnerMsg>>>,
    busy: Vec<Option<AttemptRef>>,
    idle: Vec<usize>,
    /// Attempts of worker steps handed to the worker host, not yet reported.
    in_workers: HashSet<AttemptRef>,
    started: Vec<AttemptRef>,
    finished: Vec<Report>,
    flush_armed: bool,
}

impl Actor for Dispatcher {
    type Msg = DispatchMsg;
    type State = DispatchState;
    type Arguments = DispatchArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<DispatchMsg>,
        args: DispatchArgs,
    ) -> Result<DispatchState, ActorProcessingErr> {
        let node = args.node.node.clone();
        let epoch = args.upstream.register(args.node.clone()).await?;
        tracing::info!(%node, epoch, "node registered");
        Ok(DispatchState {
            upstream: args.upstream,
            clock: args.clock,
            info: args.node,
            fenced: false,
            recent: VecDeque::new(),
            recent_keys: HashSet::new(),
            epoch,
            queue: BTreeMap::new(),
            runners: Vec::new(),
            busy: Vec::new(),
            idle: Vec::new(),
            in_workers: HashSet::new(),
            started: Vec::new(),
            finished: Vec::new(),
            flush_armed: false,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<DispatchMsg>,
        msg: DispatchMsg,
        st: &mut DispatchState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatchMsg::Run(specs) => {
                // Only this node's live epoch, never while fenced; a run sent again
                // (reconciliation, a second leader) for an attempt this node holds or just
                // finished is a no-op.
                let mut to_workers = Vec::new();
                for s in specs {
                    let at = AttemptRef {
                        task: s.task,
                        attempt: s.attempt,
                        epoch: s.epoch,
                    };
                    if st.fenced
                        || s.epoch != st.epoch
                        || st.recent_keys.contains(&at)
                        || st.holds(&at)
                    {
                        continue;
                    }
                    if matches!(s.launch, troupe_scheduler::Launch::Worker { .. }) {
                        // Held from here on, so the same run later in this message is a no-op.
                        st.in_workers.insert(at);
                        to_workers.push(s);
                    } else {
                        st.queue.insert((s.task, s.attempt), s);
                    }
                }
                st.hand_to_workers(to_workers);
                st.pump();
            }
            DispatchMsg::Kill(kills) => {
                let worker_kills: Vec<(TaskRef, u32)> = kills
                    .iter()
                    .filter(|(t, a)| {
                        let before = st.in_workers.len();
                        st.in_workers.retain(|w| !(w.task == *t && w.attempt == *a));
                        st.in_workers.len() != before
                    })
                    .copied()
                    .collect();
                if !worker_kills.is_empty() {
                    cast_workers(WorkerHostMsg::Kill(worker_kills));
                }
                for (task, attempt) in kills {
                    st.queue.remove(&(task, attempt));
                    for (i, b) in st.busy.iter().enumerate() {
                        let holds = b.is_some_and(|a| a.task == task && a.attempt == attempt);

                        if let (true, Some(r)) = (holds, &st.runners[i]) {
                            let _ = r.cast(RunnerMsg::Kill(task, attempt));
                        }
                    }
                }
            }
            DispatchMsg::Done { runner, report } => {
                if st.busy.get(runner).copied().flatten() == Some(report.at) {
                    st.busy[runner] = None;
                    st.idle.push(runner);
                }
                if st.fenced || report.at.epoch != st.epoch {
                    // Stopped by a fence (or from before it): registering again requeues these
                    // attempts as attempt + 1; reporting them would count them as failures.
                    st.pump();
                    return Ok(());
                }
                st.remember(&report);
                st.finished.push(report);
                st.pump();
            }
            DispatchMsg::RunnerUp { runner, actor } => {
                if st.runners.len() <= runner {
                    st.runners.resize(runner + 1, None);
                    st.busy.resize(runner + 1, None);
                }
                if let Some(lost) = st.busy[runner].take() {
                    tracing::warn!(runner, ?lost, "runner restarted while running an attempt");
                    let outcome = Outcome::Failed {
                        error: "the task runner crashed while running this attempt".into(),
                    };
                    let report = Report { at: lost, outcome };
                    st.remember(&report);
                    st.finished.push(report);
                }
                st.idle.retain(|&i| i != runner);
                st.runners[runner] = Some(actor);
                st.idle.push(runner);
                st.pump();
            }
            DispatchMsg::WorkerDone(reports) => {
                for report in reports {
                    if !st.in_workers.remove(&report.at) || st.fenced || report.at.epoch != st.epoch
                    {
                        // Killed, fenced or from an earlier epoch: see `Done`.
                        continue;
                    }
                    st.remember(&report);
                    st.finished.push(report);
                }
            }
            DispatchMsg::Flush => {
                st.flush_armed = false;
                st.flush();
            }
            DispatchMsg::InjectPanic => panic!("injected panic in the dispatcher"),
            DispatchMsg::Held(reply) => {
                let now = st.clock.now();
                while st.recent.front().is_some_and(|(t, _)| aged_out(*t, now)) {
                    if let Some((_, r)) = st.recent.pop_front() {
                        st.recent_keys.remove(&r.at);
                    }
                }
                let mut attempts: Vec<AttemptRef> = st.busy.iter().flatten().copied().collect();
                attempts.extend(st.in_workers.iter().copied());
                attempts.extend(st.queue.values().map(|s| AttemptRef {
                    task: s.task,
                    attempt: s.attempt,
                    epoch: s.epoch,
                }));
                let _ = reply.send(Held {
                    node: st.info.node.clone(),
                    epoch: if st.fenced { 0 } else { st.epoch },
                    attempts,
                    recent: {
                        let mut budget = RENEW_REPORT_BYTES;
                        st.recent
                            .iter()
                            .map(|(_, r)| r)
                            .take_while(|r| {
                                let b = report_bytes(r);
                                let fits = b <= budget;
                                budget = budget.saturating_sub(b);
                                fits
                            })
                            .cloned()
                            .collect()
                    },
                });
            }
            DispatchMsg::Fence => {
                if !st.fenced {
                    tracing::warn!(
                        epoch = st.epoch,
                        "lease lost: stopping every attempt (self-fencing)"
                    );
                    st.fenced = true;
                    st.queue.clear();
                    st.in_workers.clear();
                    cast_workers(WorkerHostMsg::StopAll);
                    for (i, b) in st.busy.iter().enumerate() {
                        if let (Some(a), Some(r)) = (b, &st.runners[i]) {
                            let _ = r.cast(RunnerMsg::Kill(a.task, a.attempt));
                        }
                    }
                    let (upstream, info, me) = (st.upstream.clone(), st.info.clone(), me.clone());
                    tokio::spawn(async move {
                        let r = upstream.register(info).await;
                        let _ = me.cast(DispatchMsg::Registered(r));
                    });
                }
            }
            DispatchMsg::Registered(Ok(epoch)) => {
                tracing::info!(epoch, "registered again after a fence");
                st.epoch = epoch;
                st.fenced = false;
            }
            DispatchMsg::Registered(Err(e)) => {
                tracing::warn!(%e, "re-registration failed; retrying");
                let (upstream, info, me) = (st.upstream.clone(), st.info.clone(), me.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let r = upstream.register(info).await;
                    let _ = me.cast(DispatchMsg::Registered(r));
                });
            }
            DispatchMsg::Stats(reply) => {
                let _ = reply.send(DispatchStats {
                    queued: st.queue.len(),
                    busy: st.busy.iter().filter(|b| b.is_some()).count(),
                    runners: st.runners.iter().filter(|r| r.is_some()).count(),
                    epoch: st.epoch,
                    reports_pending: st.finished.len(),
                });
            }
        }
        if st.finished.len() >= FLUSH_AT {
            st.flush();
        }
        let pending = !st.finished.is_empty() || !st.started.is_empty();
        if pending && !st.flush_armed {
            st.flush_armed = true;
            me.send_after(FLUSH_AFTER, || DispatchMsg::Flush);
        }
        Ok(())
    }
}

/// Sends to the worker host; false when there is none (it is restarting).
fn cast_workers(msg: WorkerHostMsg) -> bool {
    ractor::registry::where_is(WORKERS_NAME)
        .map(ActorRef::<WorkerHostMsg>::from)
        .is_some_and(|w| w.cast(msg).is_ok())
}

impl DispatchState {
    /// Whether this node holds the attempt now (running, queued or in a worker pool).
    fn holds(&self, at: &AttemptRef) -> bool {
        self.in_workers.contains(at)
            || self.busy.iter().any(|b| b.as_ref() == Some(at))
            || self
                .queue
                .get(&(at.task, at.attempt))
                .is_some_and(|q| q.epoch == at.epoch)
    }

    /// Hands worker-step attempts to the worker host. They are not reported `Started`: they
    /// wait in their pool's queue for a batch, so "handed over" says nothing the assignment did
    /// not, and it would be one more log entry per item on the warm path, whose bound is log
    /// entries per item. Until its report such an attempt is `assigned` in the log; the node's
    /// renewals list it as held (`in_workers`), so reconciliation does not send it again.
    fn hand_to_workers(&mut self, specs: Vec<RunSpec>) {
        if specs.is_empty() {
            return;
        }
        let ats: Vec<AttemptRef> = specs
            .iter()
            .map(|s| AttemptRef {
                task: s.task,
                attempt: s.attempt,
                epoch: s.epoch,
            })
            .collect();
        if !cast_workers(WorkerHostMsg::Submit(specs)) {
            for at in ats {
                self.in_workers.remove(&at);
                self.finished.push(Report {
                    at,
                    outcome: Outcome::Failed {
                        error: "the node's worker host is unavailable (restarting)".into(),
                    },
                });
            }
        }
    }

    /// Keeps a finished report for re-sending with renewals (bounded by count and age).
    fn remember(&mut self, report: &Report) {
        self.recent.push_back((self.clock.now(), report.clone()));
        self.recent_keys.insert(report.at);
        if self.recent.len() > RECENT_MAX
            && let Some((_, old)) = self.recent.pop_front()
        {
            self.recent_keys.remove(&old.at);
        }
    }

    fn pump(&mut self) {
        while !self.queue.is_empty() {
            let Some(i) = self.idle.pop() else { return };
            let Some(runner) = self.runners[i].clone() else {
                continue;
            };
            let (_, spec) = self.queue.pop_first().expect("queue is not empty");
            let at = AttemptRef {
                task: spec.task,
                attempt: spec.attempt,
                epoch: spec.epoch,
            };
            if runner.cast(RunnerMsg::Run(Box::new(spec))).is_err() {
                // The runner is gone; its RunnerUp will come back when it restarts.
                self.runners[i] = None;
                self.finished.push(Report {
                    at,
                    outcome: Outcome::Failed {
                        error: "task runner unavailable".into(),
                    },
                });
                continue;
            }
            self.busy[i] = Some(at);
            self.started.push(at);
        }
    }

    fn flush(&mut self) {
        if self.finished.is_empty() && self.started.is_empty() {
            return;
        }
        let finished = std::mem::take(&mut self.finished);
        let mut started = std::mem::take(&mut self.started);
        // A start is worth recording only if the attempt has not already finished.
        let done: HashSet<AttemptRef> = finished.iter().map(|f| f.at).collect();
        started.retain(|s| !done.contains(s));
        let mut cmds = Vec::with_capacity(2);
        if !started.is_empty() {
            cmds.push(Command::Started(started.clone()));
        }
        if !finished.is_empty() {
            cmds.push(Command::Finished(finished.clone()));
        }
        if let Err(e) = self.upstream.report(cmds) {
            // Busy: keep the reports and try again at the next flush.
            tracing::debug!(%e, "reports not proposed yet");
            self.finished = finished;
            self.started = started;
        }
    }
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for DispatchMsg {}
