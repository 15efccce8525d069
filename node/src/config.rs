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
    /// This node's injected faults (used only with `fault_injection`). It skews `clock`.
    pub chaos: std::sync::Arc<crate::chaos::Chaos>,
    /// The node's one clock: the system clock plus an offset that only `troupe chaos
    /// skew-clock` sets (0 otherwise). Every lease, timer decision and log entry stamp of
    /// the node reads it (docs/ARCHITECTURE.md, "Time and chance").
    pub clock: std::sync::Arc<troupe_clock::SkewedClock>,
    /// Seed of the node's randomness (incarnation, a new node id); `None`: from the OS.
    /// Hidden `--seed` flag, for tests that want the same draws twice.
    pub seed: Option<u64>,
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
        let clock = troupe_clock::SkewedClock::new(troupe_clock::system());
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
            chaos: std::sync::Arc::new(crate::chaos::Chaos::new(clock.clone())),
            clock,
            seed: None,
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

impl NodeConfig {
    /// The node's clock, shared by its parts.
    pub fn shared_clock(&self) -> troupe_clock::SharedClock {
        self.clock.clone()
    }

    /// The node's random stream: from `seed`, or from the OS.
    pub fn rng(&self) -> troupe_clock::Rng {
        self.seed
            .map(troupe_clock::Rng::new)
            .unwrap_or_else(troupe_clock::Rng::from_os)
    }
}

/// The node's stable id: given, or kept in `data_dir/node-id` (created on first start, drawn
/// from `rng` and the data dir, so two nodes with the same seed still get different ids).
pub fn node_id(cfg: &NodeConfig, rng: &mut troupe_clock::Rng) -> std::io::Result<String> {
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
    let id = new_node_id(rng.next_u64(), &cfg.data_dir);
    std::fs::write(&path, &id)?;
    Ok(id)
}

/// This process start's incarnation (`NodeInfo::incarnation`): a draw from `rng` mixed with
/// the count of starts kept in `data_dir/starts`. It must differ from every earlier start's (the
/// engine hook runs this node's attempts only for the epoch its own incarnation registered), so
/// a seeded node restarted with the same `--seed` still gets a new one.
pub fn incarnation(cfg: &NodeConfig, rng: &mut troupe_clock::Rng) -> std::io::Result<u64> {
    let path = cfg.data_dir.join("starts");
    let before = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let start = before + 1;
    std::fs::write(&path, start.to_string())?;
    Ok(troupe_scheduler::json::mix(&[rng.next_u64(), start]))
}

/// A node id from a random draw and the data dir (FNV-1a of its path).
fn new_node_id(draw: u64, data_dir: &std::path::Path) -> String {
    let dir = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!(
        "node-{:08x}",
        troupe_scheduler::json::mix(&[draw, dir]) as u32
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::Clock;

    #[test]
    fn the_same_seed_gives_the_same_draws_and_distinct_dirs_distinct_ids() {
        let mut cfg = NodeConfig::dev("/tmp/a");
        cfg.seed = Some(42);
        let (mut r1, mut r2) = (cfg.rng(), cfg.rng());
        assert_eq!(r1.next_u64(), r2.next_u64(), "seeded: replayable");
        let draw = cfg.rng().next_u64();
        assert_eq!(
            new_node_id(draw, "/tmp/a".as_ref()),
            new_node_id(draw, "/tmp/a".as_ref())
        );
        assert_ne!(
            new_node_id(draw, "/tmp/a".as_ref()),
            new_node_id(draw, "/tmp/b".as_ref())
        );
        cfg.seed = None;
        assert_ne!(cfg.rng().next_u64(), cfg.rng().next_u64(), "from the OS");
    }

    #[test]
    fn a_seeded_node_gets_a_new_incarnation_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::dev(dir.path());
        cfg.seed = Some(7);
        let first = incarnation(&cfg, &mut cfg.rng()).unwrap();
        let second = incarnation(&cfg, &mut cfg.rng()).unwrap();
        assert_ne!(first, second, "same seed, next start: a new incarnation");
        let other = tempfile::tempdir().unwrap();
        let mut again = NodeConfig::dev(other.path());
        again.seed = Some(7);
        assert_eq!(
            incarnation(&again, &mut again.rng()).unwrap(),
            first,
            "replayable"
        );
    }

    #[test]
    fn chaos_skews_the_nodes_own_clock() {
        let cfg = NodeConfig::dev("/tmp/a");
        let before = cfg.clock.wall_ms();
        cfg.clock.set_offset_ms(60_000);
        assert!(cfg.shared_clock().wall_ms() >= before + 60_000);
        assert!(cfg.chaos.now_ms() >= before + 60_000, "one clock, not two");
    }
}
