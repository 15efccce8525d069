//! Node configuration (flags of `troupe dev` / `troupe node`), with units in the names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use troupe_scheduler::placement::{Gpu, Reserve, Strategy};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Raft log, snapshots, task logs, node id.
    pub data_dir: PathBuf,
    /// API address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Attempts this node runs at once.
    pub slots: u32,
    /// Attempts it may hold queued beyond `slots`.
    pub queue: u32,
    /// fsync every Raft write before acknowledging (off only for throwaway runs).
    pub fsync: bool,
    /// Time between SIGTERM and SIGKILL when an attempt is stopped.
    pub kill_grace: Duration,
    /// Snapshot the state and compact the log every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Stable node id; read from (or written to) `data_dir/node-id` when not given.
    pub node_id: Option<String>,
    /// Serve the chaos API (`/v1/chaos/...`: panics, faults, verify); chaos drills only.
    pub fault_injection: bool,
    /// This node's injected faults (used only with `fault_injection`).
    pub chaos: std::sync::Arc<crate::chaos::Chaos>,
    /// Made-up GPUs instead of NVML (tests and demos only; see `capacity::parse_simulated`).
    pub simulate_gpus: Option<Vec<Gpu>>,
    /// Capacity kept back from scheduling.
    pub reserve: Reserve,
    /// Labels steps can require (`node_labels = { zone = "a" }`).
    pub labels: BTreeMap<String, String>,
    /// How the planner scores feasible nodes.
    pub strategy: Strategy,
    /// Cluster mode (`troupe node`); `None` is the embedded single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// This node's Raft id (1 for the embedded single node; 0 for a worker).
    pub raft_id: u64,
    /// How often capacity is read again (GPUs appearing or vanishing, cgroup limits moving).
    pub capacity_refresh: Duration,
    /// An API connection must send a request's headers within this long, also between the
    /// requests of a kept-alive connection (an idle connection is closed after it).
    pub api_header_timeout: Duration,
    /// Finished workflows (with their idempotency keys and dead letters) and task logs are
    /// deleted this long after the workflow ended (None: kept forever).
    pub retain: Option<Duration>,
    /// How often the leader has the servers compare a hash of their applied state.
    pub audit_every: Duration,
    /// Most bytes kept of each attempt's stdout and stderr logs (the tail, marked as cut).
    pub max_log_bytes: u64,
    /// API tokens with roles (`--tokens`); without a file the API is open.
    pub api_auth: crate::api::Auth,
    /// Serve the API over HTTPS (`--api-tls-cert`, `--api-tls-key`, `--api-tls-ca`).
    pub api_tls: Option<crate::api::ApiTls>,
    /// Raised when the node cannot go on (every server refused its cookie); the process that
    /// runs the node waits on it and exits with the reason.
    pub fatal: crate::fatal::Fatal,
    /// Alert webhooks (`--notify`); sent by the leader only.
    pub notify: Option<crate::notify::NotifyConfig>,
    /// OpenTelemetry traces (`--otlp-endpoint`); exported by the leader.
    pub otel: Option<crate::otel::OtelConfig>,
}

impl NodeConfig {
    pub fn dev(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:7070".parse().expect("static address"),
            slots: default_slots(),
            queue: 256,
            fsync: true,
            kill_grace: Duration::from_secs(5),
            snapshot_every_entries: 1_000,
            node_id: None,
            fault_injection: false,
            chaos: Default::default(),
            simulate_gpus: None,
            reserve: Reserve::default(),
            labels: BTreeMap::new(),
            strategy: Strategy::BinPack,
            api_header_timeout: Duration::from_secs(30),
            retain: Some(Duration::from_secs(7 * 24 * 3600)),
            audit_every: Duration::from_secs(60),
            max_log_bytes: 64 << 20,
            capacity_refresh: Duration::from_secs(5),
            raft_id: 1,
            cluster: None,
            api_auth: crate::api::Auth::open(),
            api_tls: None,
            fatal: Default::default(),
            notify: None,
            otel: None,
        }
    }
}

/// The node's stable id: given, or kept in `data_dir/node-id` (created on first start).
pub fn node_id(cfg: &NodeConfig) -> std::io::Result<String> {
    if let Some(id) = &cfg.node_id {
        return Ok(id.clone());
    }
    let path = cfg.data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default() as u64
        ^ ((std::process::id() as u64) << 32);
    let id = format!("node-{:08x}", troupe_scheduler::json::mix(&[seed]) as u32);
    std::fs::write(&path, &id)?;
    Ok(id)
}

/// Attempts a node runs at once by default: 4 per CPU core (at least 4). A node's cores must be
/// able to run what it starts: 256 processes on 2 cores starved the node's own threads (lease
/// renewals, apply) until it fenced itself, and the next node got the same load. Builtin
/// handlers are not slowed by it: the queue (256) keeps a node's credits for placement.
pub fn default_slots() -> u32 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    (4 * cores).max(4)
}
