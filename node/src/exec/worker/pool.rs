//! A worker pool: the long-lived worker processes of one worker step on this node, and the
//! attempts waiting for them. It batches attempts (`batch`, `max_wait`), keeps at most one batch
//! in flight and one queued per worker, starts workers up to its cap as work waits, and owns
//! every timing rule: startup timeout, the step's `timeout` per batch, idle stop, restart
//! backoff and the restart budget. A worker that exits, hangs or breaks the protocol fails the
//! attempts it had in flight (the step's retries apply) and is started again with backoff.

use super::process::{self, Launch, Wiring};
use super::protocol::{self, TaskLine};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use troupe_actors::workers::WorkerHostMsg;
use troupe_scheduler::spec::WorkerSpec;
use troupe_scheduler::{AttemptRef, Json, Outcome, Report, RunSpec, TaskRef};

/// Failed starts in a row (a worker that died before answering a batch) after which the step's
/// worker is broken on this node: its attempts fail at once instead.
pub const RESTARTS_MAX: u32 = 5;
/// Backoff before restarting: 200 ms, doubling, at most 5 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(5))
}

pub enum PoolMsg {
    Submit(Vec<RunSpec>),
    Kill(Vec<(TaskRef, u32)>),
    StopAll,
    Ready(usize),
    Answered(usize, Vec<(String, Outcome)>),
    /// The worker printed something that is not the protocol.
    Broke(usize, String),
    /// The worker process ended (or could not start).
    Exited(usize, String),
    Tick,
}

impl ractor::Message for PoolMsg {}

pub struct PoolArgs {
    pub label: String,
    pub node: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub worker: WorkerSpec,
    pub timeout_ms: Option<u64>,
    pub gpus: Vec<String>,
    /// Where the workers' stderr logs go: `<dir>/worker-K.err`.
    pub log_dir: PathBuf,
    /// Most worker processes (the step's `max_workers`, or the node's slots).
    pub cap: usize,
    /// The host, which passes reports on (and fails what a crashed pool held).
    pub host: ActorRef<WorkerHostMsg>,
    pub id: u64,
    /// The node's clock: every timing rule below reads `now` from it.
    pub clock: troupe_clock::SharedClock,
}

struct Waiting {
    at: AttemptRef,
    id: String,
    item: Option<Json>,
    input: Option<Json>,
    /// The attempt span's W3C context, when traces are on.
    traceparent: Option<String>,
    since: Instant,
}

struct Worker {
    tx: mpsc::Sender<String>,
    stop: Option<oneshot::Sender<()>>,
    started: Instant,
    ready: bool,
    /// Batches written and not answered, oldest first: the ids of each, and when it was
    /// written (the batch timeout runs from when it became the oldest).
    outstanding: VecDeque<(Vec<String>, Instant)>,
    last_busy: Instant,
    answered_one: bool,
}

pub struct PoolState {
    a: PoolArgs,
    waiting: VecDeque<Waiting>,
    /// Attempts in flight, by the id the worker sees.
    in_flight: HashMap<String, AttemptRef>,
    workers: BTreeMap<usize, Worker>,
    next_worker: usize,
    failures: u32,
    restart_at: Option<Instant>,
    broken: Option<String>,
    last_activity: Instant,
    armed_until: Option<Instant>,
}

pub struct Pool;

impl Actor for Pool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<PoolMsg>,
        a: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        Ok(PoolState {
            last_activity: a.clock.now(),
            a,
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            workers: BTreeMap::new(),
            next_worker: 0,
            failures: 0,
            restart_at: None,
            broken: None,
            armed_until: None,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<PoolMsg>,
        st: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        for w in st.workers.values_mut() {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<PoolMsg>,
        msg: PoolMsg,
        st: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let now = st.a.clock.now();
        match msg {
            PoolMsg::Submit(specs) => {
                st.last_activity = now;
                for s in specs {
                    // The group grows as the replicated state gives it workers.
                    if let troupe_scheduler::Launch::Worker { workers, .. } = &s.launch {
                        st.a.cap = st.a.cap.max(*workers as usize);
                    }
                    let id = format!("{}/{}/{}@{}", s.workflow, s.step_id, s.task.item, s.attempt);
                    let traceparent = crate::otel::attempt_traceparent(&s);
                    st.waiting.push_back(Waiting {
                        at: AttemptRef {
                            task: s.task,
                            attempt: s.attempt,
                            epoch: s.epoch,
                        },
                        id,
                        item: s.item,
                        input: s.input,
                        traceparent,
                        since: now,
                    });
                }
            }
            PoolMsg::Kill(kills) => {
                st.waiting
                    .retain(|w| !kills.contains(&(w.at.task, w.at.attempt)));
                st.in_flight
                    .retain(|_, at| !kills.contains(&(at.task, at.attempt)));
            }
            PoolMsg::StopAll => {
                st.waiting.clear();
                st.in_flight.clear();
                let all: Vec<usize> = st.workers.keys().copied().collect();
                for k in all {
                    st.stop_worker(k);
                }
            }
            PoolMsg::Ready(k) => {
                if let Some(w) = st.workers.get_mut(&k) {
                    w.ready = true;
                    w.last_busy = now;
                }
            }
            PoolMsg::Answered(k, results) => st.answered(k, results, now),
            PoolMsg::Broke(k, why) => {
                st.worker_failed(k, &format!("broke the protocol: {why}"), now);
            }
            PoolMsg::Exited(k, why) => st.worker_failed(k, &why, now),
            PoolMsg::Tick => {
                if st.armed_until.is_some_and(|t| t <= now) {
                    st.armed_until = None;
                }
                st.check_timers(now);
                if st.is_done(now) {
                    me.stop(Some("idle".into()));
                    return Ok(());
                }
            }
        }
        st.pump(&me, now);
        st.arm(&me, now);
        Ok(())
    }
}

impl PoolState {
    fn report(&self, reports: Vec<Report>) {
        if !reports.is_empty() {
            let _ = self.a.host.cast(WorkerHostMsg::Done(self.a.id, reports));
        }
    }

    fn fail_ids(&mut self, ids: &[String], error: &str) {
        let broken = self.broken.is_some();
        let reports = ids
            .iter()
            .filter_map(|id| self.in_flight.remove(id))
            .map(|at| Report {
                at,
                outcome: if broken {
                    Outcome::WorkerBroken {
                        error: error.to_string(),
                    }
                } else {
                    Outcome::Failed {
                        error: error.to_string(),
                    }
                },
            })
            .collect();
        self.report(reports);
    }

    fn answered(&mut self, k: usize, results: Vec<(String, Outcome)>, now: Instant) {
        let Some(w) = self.workers.get_mut(&k) else {
            return;
        };
        let Some((ids, _)) = w.outstanding.pop_front() else {
            self.worker_failed(
                k,
                "broke the protocol: answered a batch it was not sent",
                now,
            );
            return;
        };
        w.last_busy = now;
        w.answered_one = true;
        if let Some((_, since)) = w.outstanding.front_mut() {
            *since = now;
        }
        self.failures = 0;
        self.last_activity = now;
        let mut by_id: HashMap<String, Outcome> = results.into_iter().collect();
        let mut reports = Vec::with_capacity(ids.len());
        for id in &ids {
            let Some(at) = self.in_flight.remove(id) else {
                continue; // killed meanwhile
            };
            let outcome = by_id.remove(id).unwrap_or_else(|| Outcome::Failed {
                error: format!("the worker's answer to its batch had no result for task {id:?}"),
            });
            reports.push(Report { at, outcome });
        }
        if !by_id.is_empty() {
            tracing::warn!(pool = %self.a.label, extra = by_id.len(), "worker answered tasks it was not sent in that batch; ignored");
        }
        self.report(reports);
    }

    /// A worker is gone (exited, hung, broke the protocol): its in-flight attempts fail, and it
    /// is started again after a backoff, unless the restart budget is spent.
    fn worker_failed(&mut self, k: usize, why: &str, now: Instant) {
        let Some(mut w) = self.workers.remove(&k) else {
            return;
        };
        if let Some(stop) = w.stop.take() {
            let _ = stop.send(());
        }
        let error = format!(
            "worker {k} of {} on node {} {why}",
            self.a.label, self.a.node
        );
        tracing::warn!(pool = %self.a.label, worker = k, %why, "worker failed");
        let ids: Vec<String> = w.outstanding.drain(..).flat_map(|(ids, _)| ids).collect();
        if !w.answered_one {
            self.failures += 1;
        }
        if self.failures >= RESTARTS_MAX {
            let why = format!(
                "the worker of {} is broken on node {}: {} starts in a row failed; last: {why}",
                self.a.label, self.a.node, self.failures
            );
            tracing::error!(pool = %self.a.label, %why, "worker broken");
            self.broken = Some(why);
        } else {
            self.restart_at = Some(now + backoff(self.failures));
        }
        // Failed as broken once the budget is spent: the scheduler sends the step elsewhere.
        self.fail_ids(&ids, &error);
    }

    fn stop_worker(&mut self, k: usize) {
        if let Some(mut w) = self.workers.remove(&k)
            && let Some(stop) = w.stop.take()
        {
            let _ = stop.send(());
        }
    }

    fn check_timers(&mut self, now: Instant) {
        let startup = Duration::from_millis(self.a.worker.startup_timeout_ms);
        let batch = self.a.timeout_ms.map(Duration::from_millis);
        let idle = Duration::from_millis(self.a.worker.idle_ms);
        let mut failed = Vec::new();
        let mut idle_ones = Vec::new();
        for (k, w) in &self.workers {
            if !w.ready && now.duration_since(w.started) >= startup {
                failed.push((
                    *k,
                    format!("did not print {{\"ready\": true}} within {}", fmt(startup)),
                ));
            } else if let (Some(limit), Some((_, since))) = (batch, w.outstanding.front())
                && now.duration_since(*since) >= limit
            {
                failed.push((
                    *k,
                    format!(
                        "did not answer a batch within the step's timeout of {}",
                        fmt(limit)
                    ),
                ));
            } else if w.ready && w.outstanding.is_empty() && now.duration_since(w.last_busy) >= idle
            {
                idle_ones.push(*k);
            }
        }
        for (k, why) in failed {
            self.worker_failed(k, &why, now);
        }
        for k in idle_ones {
            self.stop_worker(k);
        }
    }

    fn is_done(&self, now: Instant) -> bool {
        self.workers.is_empty()
            && self.waiting.is_empty()
            && self.in_flight.is_empty()
            && now.duration_since(self.last_activity)
                >= Duration::from_millis(self.a.worker.idle_ms)
    }

    fn queued_tasks(&self) -> usize {
        self.waiting.len() + self.in_flight.len()
    }

    /// Starts workers while work waits, fills ready workers with batches.
    fn pump(&mut self, me: &ActorRef<PoolMsg>, now: Instant) {
        if let Some(why) = self.broken.clone() {
            let reports: Vec<Report> = self
                .waiting
                .drain(..)
                .map(|w| Report {
                    at: w.at,
                    outcome: Outcome::WorkerBroken { error: why.clone() },
                })
                .collect();
            self.report(reports);
            return;
        }
        let batch = self.a.worker.batch as usize;
        let want = self.queued_tasks().div_ceil(batch).min(self.a.cap.max(1));
        if self.restart_at.is_none_or(|t| t <= now) {
            self.restart_at = None;
            while self.workers.len() < want {
                self.start_worker(me, now);
            }
        }
        let max_wait = Duration::from_millis(self.a.worker.max_wait_ms);
        let ready: Vec<usize> = self
            .workers
            .iter()
            .filter(|(_, w)| w.ready && w.outstanding.len() < 2)
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            while !self.waiting.is_empty() {
                let full = self.waiting.len() >= batch;
                let due = self
                    .waiting
                    .front()
                    .is_some_and(|f| now.duration_since(f.since) >= max_wait);
                let Some(w) = self.workers.get(&k) else { break };
                if w.outstanding.len() >= 2 || !(full || due) {
                    break;
                }
                self.send_batch(k, batch, now);
            }
        }
    }

    fn send_batch(&mut self, k: usize, batch: usize, now: Instant) {
        // At the tail (fewer tasks than a batch for each worker that can take one) the tasks are
        // shared out, so one worker does not score a whole batch while another idles.
        let takers = self
            .workers
            .values()
            .filter(|w| w.ready && w.outstanding.len() < 2)
            .count()
            .max(1);
        let n = batch.min(self.waiting.len().div_ceil(takers)).max(1);
        let tasks: Vec<Waiting> = self.waiting.drain(..n).collect();
        let line = protocol::request(
            &tasks
                .iter()
                .map(|t| TaskLine {
                    id: &t.id,
                    attempt: t.at.attempt,
                    item: t.item.as_ref(),
                    input: t.input.as_ref(),
                    traceparent: t.traceparent.as_deref(),
                })
                .collect::<Vec<_>>(),
        );
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        for t in tasks {
            self.in_flight.insert(t.id, t.at);
        }
        let Some(w) = self.workers.get_mut(&k) else {
            return;
        };
        w.last_busy = now;
        w.outstanding.push_back((ids.clone(), now));
        match w.tx.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.worker_failed(k, "stopped reading its requests", now);
            }
            // The process has ended and its `Exited` (with the exit code and the last of its
            // stderr) is on its way: it fails this batch too, with the reason that explains it.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn start_worker(&mut self, me: &ActorRef<PoolMsg>, now: Instant) {
        let k = self.next_worker;
        self.next_worker += 1;
        let (tx, requests) = mpsc::channel(2);
        let (stop_tx, stop) = oneshot::channel();
        let mut env = self.a.env.clone();
        for (key, v) in [
            ("TROUPE_NODE", self.a.node.clone()),
            ("TROUPE_WORKER", k.to_string()),
            ("TROUPE_STEP", self.a.label.clone()),
            ("CUDA_VISIBLE_DEVICES", self.a.gpus.join(",")),
            ("TROUPE_GPUS", self.a.gpus.join(",")),
        ] {
            env.push((key.to_string(), v));
        }
        let launch = Launch {
            argv: self.a.argv.clone(),
            env,
            stderr_log: self.a.log_dir.join(format!("worker-{k}.err")),
            line_max: process::line_max(self.a.worker.batch),
        };
        let wiring = Wiring {
            worker: k,
            pool: me.clone(),
            requests,
            stop,
        };
        tokio::spawn(process::run(launch, wiring));
        self.workers.insert(
            k,
            Worker {
                tx,
                stop: Some(stop_tx),
                started: now,
                ready: false,
                outstanding: VecDeque::new(),
                last_busy: now,
                answered_one: false,
            },
        );
    }

    /// Schedules the next tick: the soonest of a batch's max_wait, a restart, a timeout check
    /// (every 250 ms while workers exist) and the idle stop.
    fn arm(&mut self, me: &ActorRef<PoolMsg>, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if let Some(f) = self.waiting.front() {
            at(f.since + Duration::from_millis(self.a.worker.max_wait_ms));
        }
        if let Some(t) = self.restart_at {
            at(t);
        }
        if !self.workers.is_empty() {
            at(now + Duration::from_millis(250));
        } else {
            at(self.last_activity + Duration::from_millis(self.a.worker.idle_ms));
        }
        let Some(t) = next else { return };
        let t = t.max(now);
        if self.armed_until.is_some_and(|a| a <= t) {
            return;
        }
        self.armed_until = Some(t);
        let me = me.clone();
        me.send_after(t - now, || PoolMsg::Tick);
    }
}

fn fmt(d: Duration) -> String {
    troupe_scheduler::units::format_ms(d.as_millis() as u64)
}
