//! Scrape-time collectors: the applied state and the Raft engine ([`StateCollector`]), and this
//! process's counters ([`ProcessCollector`]). The state is copied into plain rows under its
//! read lock (what `troupe status` reads), then encoded without the lock.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;
use troupe_actors::machine::Machine;
use troupe_actors::metrics::{LEASES, OTHER, STEP_SERIES_MAX, StepCounters};
use troupe_raft_log::{EngineStatus, HistogramSnapshot};
use troupe_scheduler::state::{NodeStatus, TaskState, WfStatus};

type Labels = Vec<(&'static str, String)>;
type Fmt = Result<(), std::fmt::Error>;

const STATUSES: [WfStatus; 6] = [
    WfStatus::Running,
    WfStatus::Succeeded,
    WfStatus::Degraded,
    WfStatus::Failed,
    WfStatus::Cancelled,
    WfStatus::TimedOut,
];

/// Per `(workflow name, step id)`, summed over workflows with that name.
#[derive(Debug, Default, Clone, Copy)]
struct StepRow {
    /// Live tasks of running workflows, by state.
    queued: u64,
    waiting: u64,
    assigned: u64,
    running: u64,
    /// Lane items of running workflows waiting for room in the step's window.
    window: u64,
    /// Items behind an upstream dead letter (every retained workflow).
    blocked: u64,
    /// Items of this step in the dead-letter queue (every retained workflow).
    dead: u64,
}

#[derive(Debug)]
struct NodeRow {
    id: String,
    status: &'static str,
    slots: u32,
    attempts: u32,
    cpu: [u64; 3],
    memory: [u64; 3],
    /// (index, uuid, model, memory bytes, in use)
    gpus: Vec<(u32, String, String, u64, bool)>,
}

/// The numbers of one scrape, copied out of the state and the engine.
#[derive(Debug)]
pub struct StateCollector {
    status: EngineStatus,
    queue_depth: u64,
    busy: u64,
    snapshot_bytes: u64,
    commit: HistogramSnapshot,
    fsync: HistogramSnapshot,
    workflows: Vec<(&'static str, u64)>,
    dlq: u64,
    steps: Vec<(String, String, StepRow)>,
    counters: Vec<(String, String, StepCounters)>,
    duration: HistogramSnapshot,
    queue_wait: HistogramSnapshot,
    nodes: Vec<NodeRow>,
    assignments_refused: u64,
    stale_reports: u64,
}

impl StateCollector {
    pub fn new(app: &crate::api::AppState) -> Self {
        let stats = app.engine.stats();
        let m = app.state.read().unwrap_or_else(|e| e.into_inner());
        let mut c = StateCollector {
            status: app.engine.status(),
            queue_depth: stats.proposal_queue_depth(),
            busy: stats.busy_total(),
            snapshot_bytes: stats.snapshot_bytes(),
            commit: stats.commit_latency.snapshot(),
            fsync: stats.fsync_latency.snapshot(),
            workflows: Vec::new(),
            dlq: m.state.sched.dlq.len() as u64,
            steps: steps(&m),
            counters: m.metrics.rows(),
            duration: m.metrics.duration.snapshot(),
            queue_wait: m.metrics.queue_wait.snapshot(),
            nodes: nodes(&m),
            assignments_refused: m.state.sched.stats.rejected_assignments,
            stale_reports: m.state.sched.stats.stale_reports,
        };
        let mut by_status = [0u64; STATUSES.len()];
        for w in m.state.workflows.values() {
            if let Some(i) = STATUSES.iter().position(|s| *s == w.status) {
                by_status[i] += 1;
            }
        }
        c.workflows = STATUSES
            .iter()
            .zip(by_status)
            .map(|(s, n)| (s.name(), n))
            .collect();
        c
    }
}

fn steps(m: &Machine) -> Vec<(String, String, StepRow)> {
    let mut rows: BTreeMap<(String, String), StepRow> = BTreeMap::new();
    for w in m.state.workflows.values() {
        let running = !w.status.is_terminal();
        for (spec, run) in w.spec.steps.iter().zip(&w.steps) {
            if !running && run.blocked.is_empty() && run.dead.is_empty() {
                continue;
            }
            let mut key = (w.spec.name.clone(), spec.id.clone());
            if !rows.contains_key(&key) && rows.len() >= STEP_SERIES_MAX {
                key = (OTHER.to_string(), OTHER.to_string());
            }
            let r = rows.entry(key).or_default();
            r.blocked += run.blocked.len() as u64;
            r.dead += run.dead.len() as u64;
            if !running {
                continue;
            }
            r.window += run.ready.len() as u64;
            for t in run.tasks.values() {
                match t.state {
                    TaskState::Queued => r.queued += 1,
                    TaskState::Waiting { .. } => r.waiting += 1,
                    TaskState::Assigned { .. } => r.assigned += 1,
                    TaskState::Running { .. } => r.running += 1,
                }
            }
        }
    }
    rows.into_iter().map(|((w, s), r)| (w, s, r)).collect()
}

fn nodes(m: &Machine) -> Vec<NodeRow> {
    m.state
        .sched
        .nodes
        .values()
        .map(|n| NodeRow {
            id: n.id.clone(),
            status: match n.status {
                NodeStatus::Up => "up",
                NodeStatus::Draining => "draining",
                NodeStatus::Down => "down",
            },
            slots: n.slots,
            attempts: n.assigned,
            cpu: [n.capacity.cpu_milli, n.allocatable_cpu(), n.used.cpu_milli],
            memory: [
                n.capacity.memory_bytes,
                n.capacity
                    .memory_bytes
                    .saturating_sub(n.reserved.memory_bytes),
                n.used.memory_bytes,
            ],
            gpus: n
                .capacity
                .gpus
                .iter()
                .map(|g| {
                    (
                        g.index,
                        g.uuid.clone(),
                        g.model.clone(),
                        g.memory_bytes,
                        n.used.gpus.contains(&g.uuid),
                    )
                })
                .collect(),
        })
        .collect()
}

/// One gauge family with labels.
fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> Fmt {
    let mut me = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        me.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Fmt {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Fmt {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, f64>(&v, None)
}

fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> Fmt {
    let mut me = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        me.encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, f64>(&v, None)?;
    }
    Ok(())
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &HistogramSnapshot) -> Fmt {
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
}

fn step_labels(w: &str, s: &str) -> Labels {
    vec![("workflow", w.to_string()), ("step", s.to_string())]
}

impl StateCollector {
    fn encode_raft(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let st = &self.status;
        gauge(enc, "raft_term", "Current Raft term", st.term as f64)?;
        gauge(
            enc,
            "raft_commit_index",
            "Raft commit index",
            st.commit as f64,
        )?;
        gauge(
            enc,
            "raft_applied_index",
            "Index of the last applied Raft entry",
            st.applied as f64,
        )?;
        gauge(
            enc,
            "raft_last_index",
            "Index of the last entry in the Raft log",
            st.last_index as f64,
        )?;
        gauge(
            enc,
            "raft_snapshot_index",
            "Index of the latest Raft snapshot",
            st.snapshot_index as f64,
        )?;
        gauge(
            enc,
            "raft_leader",
            "1 if this server is the Raft leader",
            f64::from(u8::from(st.is_leader)),
        )?;
        gauge(
            enc,
            "raft_leader_id",
            "Raft id of the leader as this server knows it (0: none)",
            st.leader_id as f64,
        )?;
        gauge(
            enc,
            "raft_voters",
            "Voters of the applied Raft configuration",
            st.voters.len() as f64,
        )?;
        gauge(
            enc,
            "raft_proposal_queue_depth",
            "Proposals queued for the Raft engine thread, held retries included",
            self.queue_depth as f64,
        )?;
        gauge(
            enc,
            "raft_snapshot_size_bytes",
            "Size of the latest stored Raft snapshot",
            self.snapshot_bytes as f64,
        )?;
        counter(
            enc,
            "raft_commands_applied",
            "Commands applied since the engine opened (replay included)",
            st.commands_applied,
        )?;
        counter(
            enc,
            "raft_proposals_refused_busy",
            "Proposals refused because the engine queue was full",
            self.busy,
        )?;
        histogram(
            enc,
            "raft_commit_latency_seconds",
            "From proposing an entry to applying it, on the leader",
            &self.commit,
        )?;
        histogram(
            enc,
            "raft_fsync_duration_seconds",
            "Durable (fsynced) writes of the Raft log, one per Ready that needs one",
            &self.fsync,
        )
    }

    fn encode_work(&self, enc: &mut DescriptorEncoder) -> Fmt {
        gauges(
            enc,
            "workflows",
            "Retained workflows by status (the applied state)",
            self.workflows
                .iter()
                .map(|(s, n)| (vec![("status", s.to_string())], *n as f64)),
        )?;
        gauge(
            enc,
            "dlq_entries",
            "Dead letters in the queue",
            self.dlq as f64,
        )?;
        let rows = &self.steps;
        gauges(
            enc,
            "step_tasks",
            "Live tasks of running workflows by step and state (queued: ready to place; waiting: retry backoff)",
            rows.iter().flat_map(|(w, s, r)| {
                [
                    ("queued", r.queued),
                    ("waiting", r.waiting),
                    ("assigned", r.assigned),
                    ("running", r.running),
                ]
                .into_iter()
                .map(move |(state, n)| {
                    let mut l = step_labels(w, s);
                    l.push(("state", state.to_string()));
                    (l, n as f64)
                })
            }),
        )?;
        gauges(
            enc,
            "step_queue_depth",
            "Work of running workflows waiting to be placed: tasks ready to place plus lane items waiting for room in the step's window",
            rows.iter()
                .map(|(w, s, r)| (step_labels(w, s), (r.queued + r.window) as f64)),
        )?;
        gauges(
            enc,
            "step_blocked_items",
            "Items waiting behind an upstream dead letter",
            rows.iter()
                .map(|(w, s, r)| (step_labels(w, s), r.blocked as f64)),
        )?;
        gauges(
            enc,
            "step_dead_lettered_items",
            "Items of the step in the dead-letter queue",
            rows.iter()
                .map(|(w, s, r)| (step_labels(w, s), r.dead as f64)),
        )?;
        self.encode_tasks(enc)
    }

    fn encode_tasks(&self, enc: &mut DescriptorEncoder) -> Fmt {
        type Pick = fn(&StepCounters) -> u64;
        let families: [(&str, &str, Pick); 5] = [
            ("tasks_started", "Attempts started, by step", |c| c.started),
            (
                "tasks_succeeded",
                "Items a step finished successfully",
                |c| c.succeeded,
            ),
            (
                "tasks_failed",
                "Failed attempts (each retry's failure counts)",
                |c| c.failed,
            ),
            ("tasks_retried", "Failed attempts given another try", |c| {
                c.retried
            }),
            (
                "tasks_dead_lettered",
                "Items sent to the dead-letter queue",
                |c| c.dead_lettered,
            ),
        ];
        for (name, help, pick) in families {
            counters(
                enc,
                name,
                help,
                self.counters
                    .iter()
                    .map(|(w, s, c)| (step_labels(w, s), pick(c))),
            )?;
        }
        histogram(
            enc,
            "task_duration_seconds",
            "From an attempt's start to its accepted result (log time)",
            &self.duration,
        )?;
        histogram(
            enc,
            "task_queue_wait_seconds",
            "From an attempt's placement to its start (the node's queue and process start; log time)",
            &self.queue_wait,
        )?;
        counter(
            enc,
            "assignments_refused",
            "Placements apply refused (the state changed between plan and apply)",
            self.assignments_refused,
        )?;
        counter(
            enc,
            "stale_reports_refused",
            "Reports fenced off (not for the current attempt and epoch)",
            self.stale_reports,
        )
    }

    fn encode_nodes(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let node = |n: &NodeRow| vec![("node", n.id.clone())];
        gauges(
            enc,
            "node_up",
            "Registered nodes by status (1 for the node's current status)",
            self.nodes.iter().map(|n| {
                let mut l = node(n);
                l.push(("status", n.status.to_string()));
                (l, 1.0)
            }),
        )?;
        gauges(
            enc,
            "node_slots",
            "Attempts a node runs at once",
            self.nodes.iter().map(|n| (node(n), f64::from(n.slots))),
        )?;
        gauges(
            enc,
            "node_attempts",
            "Attempts placed on a node",
            self.nodes.iter().map(|n| (node(n), f64::from(n.attempts))),
        )?;
        for (i, what) in ["capacity", "allocatable", "allocated"].iter().enumerate() {
            gauges(
                enc,
                &format!("node_cpu_{what}_cores"),
                &format!("CPU cores: {what}"),
                self.nodes
                    .iter()
                    .map(|n| (node(n), n.cpu[i] as f64 / 1000.0)),
            )?;
            gauges(
                enc,
                &format!("node_memory_{what}_bytes"),
                &format!("Memory: {what}"),
                self.nodes.iter().map(|n| (node(n), n.memory[i] as f64)),
            )?;
        }
        let gpu = |n: &NodeRow, g: &(u32, String, String, u64, bool)| {
            vec![
                ("node", n.id.clone()),
                ("index", g.0.to_string()),
                ("uuid", g.1.clone()),
                ("model", g.2.clone()),
            ]
        };
        gauges(
            enc,
            "node_gpu_memory_bytes",
            "Memory of each GPU of a node",
            self.nodes
                .iter()
                .flat_map(|n| n.gpus.iter().map(move |g| (gpu(n, g), g.3 as f64))),
        )?;
        gauges(
            enc,
            "node_gpu_allocated",
            "1 if a live attempt holds the GPU",
            self.nodes.iter().flat_map(|n| {
                n.gpus
                    .iter()
                    .map(move |g| (gpu(n, g), f64::from(u8::from(g.4))))
            }),
        )
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        self.encode_raft(&mut enc)?;
        self.encode_work(&mut enc)?;
        self.encode_nodes(&mut enc)
    }
}

/// This process's own counters (every node, workers included).
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let (renewed, expired, fenced) = LEASES.get();
        gauges(
            &mut enc,
            "build_info",
            "The troupe version of this process",
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;
        counter(
            &mut enc,
            "lease_renewals",
            "Lease renewals this node accepted as the leader",
            renewed,
        )?;
        counter(
            &mut enc,
            "lease_expirations",
            "Nodes this node declared lost as the leader (lease expired)",
            expired,
        )?;
        counter(
            &mut enc,
            "fences",
            "Times this node fenced itself (its lease lapsed or the leader disowned its epoch)",
            fenced,
        )?;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            &mut enc,
            "alerts_delivered",
            "Alert webhooks a receiver accepted (--notify)",
            load(&crate::notify::deliver::DELIVERED),
        )?;
        counter(
            &mut enc,
            "alerts_failed",
            "Alert webhooks given up on after their last try",
            load(&crate::notify::deliver::FAILED),
        )?;
        counter(
            &mut enc,
            "alerts_dropped",
            "Alert webhooks dropped because a receiver's queue was full",
            load(&crate::notify::deliver::DROPPED),
        )?;
        counter(
            &mut enc,
            "trace_exports_dropped",
            "Spans dropped (export queue full or tries spent; --otlp-endpoint)",
            load(&crate::otel::export::DROPPED),
        )
    }
}
